//! Load sharing between the routers of one fleet: each publishes what it has in flight to each
//! worker a few times a second on core NATS (`<prefix>.router-load.<router>`, not stored), and
//! counts the others' reports beside its own in-flight accounting and the engines' reports.
//! Without it, N routers each see the same idle worker as least loaded and all pile onto it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use cache_router_bus::{retry, Subjects};
use cache_router_core::backoff::Backoff;
use cache_router_core::protocol::{decode_versioned, RouterLoad, WorkerId, PROTOCOL_VERSION};

use crate::fleet_actor::{Command, FleetHandle};
use crate::metrics::{BadMessage, PlaneMetrics};

/// Publishes this router's in-flight report every `every` until `shutdown`.
pub(super) async fn publish(
    client: Client,
    subjects: Subjects,
    router: WorkerId,
    every: Duration,
    handle: FleetHandle,
    shutdown: CancellationToken,
) {
    let subject = subjects.router_load(&router);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(workers) = handle.in_flight().await else {
            break;
        };
        let report = RouterLoad {
            version: PROTOCOL_VERSION,
            router: router.clone(),
            ts_ms: now_ms(),
            workers,
        };
        match rmp_serde::to_vec(&report) {
            Ok(bytes) => {
                if let Err(e) = client.publish(subject.clone(), bytes.into()).await {
                    tracing::debug!("publish router load: {e}");
                }
            }
            Err(e) => tracing::warn!("encode router load: {e}"),
        }
    }
}

/// Applies the other routers' reports until `shutdown`.
pub(super) async fn watch(
    client: Client,
    subjects: Subjects,
    me: WorkerId,
    handle: FleetHandle,
    metrics: Arc<PlaneMetrics>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut sub = loop {
        match client.subscribe(subjects.router_load_all()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("cannot subscribe to router load reports: {e}; retrying");
                if !retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await {
                    return;
                }
            }
        }
    };
    let prefix = subjects.router_load_all().trim_end_matches('*').to_owned();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let report: RouterLoad = match decode_versioned(&msg.payload) {
            Ok(r) => r,
            Err(_) => {
                metrics.bad_message(BadMessage::Malformed);
                continue;
            }
        };
        // A report names its own router: another subject's is forged.
        if msg.subject.strip_prefix(prefix.as_str()) != Some(report.router.0.as_str())
            || report.router.validate().is_err()
        {
            metrics.bad_message(BadMessage::SubjectMismatch);
            continue;
        }
        if report.router == me {
            continue;
        }
        metrics.router_load_messages.inc();
        let at = crate::clock::now();
        if handle.send(Command::PeerLoad(report, at)).await.is_err() {
            break;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
