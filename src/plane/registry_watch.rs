//! Follows the registry bucket: entries register workers; deletions and entries older than
//! the TTL deregister them (purged from the index and from routing), except while the registry
//! itself is in trouble (the core's [`Leases`] rules). Once the bucket's history is delivered
//! the router knows every live worker (part of readiness).
//!
//! Workers known only from events (ids nobody registered: a forger inventing them to use up
//! the worker slots) are purged once per TTL while the registry is readable; see
//! [`cache_router_core::fleet::Fleet::purge_unregistered`].
//!
//! Liveness is judged from each entry's age (the server's write time) rather than from
//! server-side expiry markers, so it works the same on every nats-server version. A watch that
//! fails, or falls silent while workers should be renewing, is re-created.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use cache_router_bus::retry;
use cache_router_core::backoff::Backoff;
use cache_router_core::leases::Leases;
use cache_router_core::protocol::{WorkerId, WorkerInfo};

use crate::fleet_actor::{Command, FleetHandle};
use crate::metrics::{PlaneMetrics, Rejected};
use crate::worker_url::AllowList;

/// What the registry watch needs.
pub(super) struct RegistryWatch {
    pub(super) client: async_nats::Client,
    pub(super) kv: kv::Store,
    /// The hosts registry entries may name.
    pub(super) allowed: AllowList,
    pub(super) ttl: Duration,
    pub(super) handle: FleetHandle,
    /// Set once the bucket's history is delivered.
    pub(super) loaded: tokio::sync::watch::Sender<bool>,
    pub(super) metrics: Arc<PlaneMetrics>,
}

pub(super) async fn run(watch: RegistryWatch, shutdown: CancellationToken) {
    let RegistryWatch {
        client,
        kv,
        allowed,
        ttl,
        handle,
        loaded,
        metrics,
    } = watch;
    let mut attempt = 0u32;
    let mut leases = Leases::new(ttl);
    let mut sweep = tokio::time::interval((ttl / 4).max(Duration::from_millis(10)));
    let mut said_suspended = false;
    // Workers known only from events are purged once per TTL while the registry is settled.
    let mut last_purge = Instant::now();
    let mut history_loaded = false;
    'outer: while !shutdown.is_cancelled() {
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                leases.unreachable();
                tracing::warn!("cannot watch the registry: {e}; retrying");
                retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                continue;
            }
        };
        attempt = 0;
        leases.watch_restarted(Instant::now());
        // An empty bucket delivers no history: it is loaded at once.
        if kv_is_empty(&kv).await {
            loaded.send_replace(true);
            history_loaded = true;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                _ = sweep.tick() => {
                    let now = Instant::now();
                    if client.connection_state() == async_nats::connection::State::Connected {
                        leases.reachable(now);
                    } else {
                        leases.unreachable();
                    }
                    if history_loaded
                        && leases.settled(now)
                        && now.saturating_duration_since(last_purge) >= ttl
                    {
                        last_purge = now;
                        let _ = handle.send(Command::PurgeUnregistered).await;
                    }
                    if leases.watch_silent(now) {
                        tracing::warn!("the registry watch fell silent; re-watching");
                        continue 'outer;
                    }
                    match leases.lapsed(now) {
                        Ok(lapsed) => {
                            said_suspended = false;
                            for id in lapsed {
                                tracing::warn!(worker = %id, "registry entry expired");
                                let _ = handle.send(Command::Deregister(id)).await;
                            }
                        }
                        Err(why) => {
                            if !said_suspended {
                                tracing::warn!(?why, "registry entries lapsed, but not purged: the workers stay routable");
                                said_suspended = true;
                            }
                            metrics.registry_suspended.inc();
                        }
                    }
                }
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            leases.unreachable();
                            tracing::warn!("registry watch error: {e}; re-watching");
                            retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                            continue 'outer;
                        }
                        None => {
                            leases.unreachable();
                            retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                            continue 'outer;
                        }
                    };
                    let now = Instant::now();
                    leases.reachable(now);
                    if entry.delta == 0 {
                        // The history is delivered: the router knows every live worker.
                        loaded.send_replace(true);
                        history_loaded = true;
                    }
                    let id = WorkerId(entry.key.clone());
                    match entry.operation {
                        kv::Operation::Put => {
                            let Some(info) = parse(&entry, &id, &allowed, &metrics) else {
                                continue;
                            };
                            // Age by the server's write time, so a stale entry found at start
                            // does not look fresh.
                            let age = (time::OffsetDateTime::now_utc() - entry.created)
                                .try_into()
                                .unwrap_or(Duration::ZERO);
                            if leases.renewed(id, age, now) {
                                let _ = handle.send(Command::Register(info)).await;
                            }
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            leases.removed(&id, now);
                            let _ = handle.send(Command::Deregister(id)).await;
                        }
                    }
                }
            }
        }
    }
}

/// Whether the registry bucket holds no entry (asked with a timeout; unknown counts as not
/// empty, so readiness then waits for the history).
async fn kv_is_empty(kv: &kv::Store) -> bool {
    match tokio::time::timeout(Duration::from_secs(2), kv.status()).await {
        Ok(Ok(status)) => status.values() == 0,
        _ => false,
    }
}

/// A registry entry's worker, if the entry is well-formed, names its own key, and points at
/// `http://host:port` on an allowed host. Anything else is counted and logged, never applied:
/// whoever can write the registry must not be able to steer clients elsewhere.
fn parse(
    entry: &kv::Entry,
    id: &WorkerId,
    allowed: &AllowList,
    metrics: &PlaneMetrics,
) -> Option<WorkerInfo> {
    let mut info: WorkerInfo = match serde_json::from_slice(&entry.value) {
        Ok(i) => i,
        Err(e) => {
            metrics.registry_rejected(Rejected::Malformed);
            tracing::warn!(key = %entry.key, "bad registry entry: {e}");
            return None;
        }
    };
    if &info.id != id || info.id.validate().is_err() {
        metrics.registry_rejected(Rejected::OtherWorker);
        tracing::warn!(key = %entry.key, "registry entry names another worker");
        return None;
    }
    match allowed.check(&info.url) {
        Ok(url) => info.url = url,
        Err(e) => {
            metrics.registry_rejected(match e {
                crate::worker_url::BadWorkerUrl::NotAllowed(_) => Rejected::HostNotAllowed,
                _ => Rejected::Url,
            });
            tracing::warn!(key = %entry.key, "registry entry refused: {e}");
            return None;
        }
    }
    Some(info)
}
