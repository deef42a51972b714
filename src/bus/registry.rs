//! The worker registry: a JetStream KV bucket with one JSON [`WorkerInfo`] per worker.
//!
//! A worker stays registered while something keeps rewriting its entry (every third of the
//! TTL); the router treats an entry not refreshed within the TTL, or deleted, as a worker that
//! left. Liveness is judged from each entry's age rather than from server-side expiry markers,
//! so it works the same on every nats-server version.

use std::time::Duration;

use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

use cache_router_core::protocol::WorkerInfo;

/// Keeps `info` registered while `alive()` holds, checked every `check_every`: the entry is
/// written at once when alive, rewritten every `ttl / 3`, left to lapse while not alive (so
/// routers stop sending to a dead engine even though its sidecar lives), and deleted on
/// `shutdown` so routers stop at once.
pub async fn keep_registered(
    kv: kv::Store,
    info: WorkerInfo,
    ttl: Duration,
    check_every: Duration,
    alive: impl Fn() -> bool,
    shutdown: CancellationToken,
) {
    let key = info.id.0.clone();
    let value = match serde_json::to_vec(&info) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("cannot encode registry entry: {e}");
            return;
        }
    };
    let refresh = (ttl / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(check_every.min(refresh).max(Duration::from_millis(1)));
    let mut registered = false;
    let mut last_put = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !alive() {
            if registered {
                tracing::warn!(worker = %info.id, "engine not answering; letting the registration lapse");
                registered = false;
            }
            continue;
        }
        if registered && last_put.elapsed() < refresh {
            continue;
        }
        match kv.put(&key, value.clone().into()).await {
            Ok(_) => {
                last_put = tokio::time::Instant::now();
                if !registered {
                    tracing::info!(worker = %info.id, url = %info.url, "registered");
                }
                registered = true;
            }
            Err(e) => tracing::warn!(worker = %info.id, "registry refresh failed: {e}"),
        }
    }
    match kv.delete(&key).await {
        Ok(()) => tracing::info!(worker = %key, "deregistered"),
        Err(e) => {
            tracing::warn!(worker = %key, "deregistration failed (the entry will lapse): {e}")
        }
    }
}
