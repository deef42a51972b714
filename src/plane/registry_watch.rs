//! Follows the registry bucket: entries register workers; deletions and entries older than
//! the TTL deregister them (purged from the index and from routing).
//!
//! Liveness is judged from each entry's age (the server's write time) rather than from
//! server-side expiry markers, so it works the same on every nats-server version. A watch that
//! fails is re-created with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use cache_router_bus::retry;
use cache_router_core::backoff::Backoff;
use cache_router_core::protocol::{WorkerId, WorkerInfo};

use crate::fleet_actor::{Command, FleetHandle};
use crate::metrics::PlaneMetrics;

pub(super) async fn run(
    kv: kv::Store,
    ttl: Duration,
    handle: FleetHandle,
    metrics: Arc<PlaneMetrics>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut last_seen: HashMap<WorkerId, Instant> = HashMap::new();
    let mut sweep = tokio::time::interval((ttl / 4).max(Duration::from_millis(10)));
    'outer: while !shutdown.is_cancelled() {
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch the registry: {e}; retrying");
                retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                continue;
            }
        };
        attempt = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                _ = sweep.tick() => {
                    let now = Instant::now();
                    let expired: Vec<WorkerId> = last_seen
                        .iter()
                        .filter(|(_, &t)| now.duration_since(t) > ttl)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in expired {
                        last_seen.remove(&id);
                        tracing::warn!(worker = %id, "registry entry expired");
                        let _ = handle.send(Command::Deregister(id)).await;
                    }
                }
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            tracing::warn!("registry watch error: {e}; re-watching");
                            retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                            continue 'outer;
                        }
                        None => {
                            retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                            continue 'outer;
                        }
                    };
                    let id = WorkerId(entry.key.clone());
                    match entry.operation {
                        kv::Operation::Put => {
                            let Some(info) = parse(&entry, &id, &metrics) else { continue };
                            // Age by the server's write time, so a stale entry found at start
                            // does not look fresh.
                            let age = (time::OffsetDateTime::now_utc() - entry.created)
                                .try_into()
                                .unwrap_or(Duration::ZERO);
                            if age > ttl {
                                continue;
                            }
                            last_seen.insert(id, Instant::now() - age);
                            let _ = handle.send(Command::Register(info)).await;
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            last_seen.remove(&id);
                            let _ = handle.send(Command::Deregister(id)).await;
                        }
                    }
                }
            }
        }
    }
}

/// A registry entry's worker, if the entry is well-formed and names its own key.
fn parse(entry: &kv::Entry, id: &WorkerId, metrics: &PlaneMetrics) -> Option<WorkerInfo> {
    let info: WorkerInfo = match serde_json::from_slice(&entry.value) {
        Ok(i) => i,
        Err(e) => {
            metrics.registry_errors.inc();
            tracing::warn!(key = %entry.key, "bad registry entry: {e}");
            return None;
        }
    };
    if &info.id != id || info.id.validate().is_err() {
        metrics.registry_errors.inc();
        tracing::warn!(key = %entry.key, "registry entry names another worker");
        return None;
    }
    Some(info)
}
