//! The worker registry: a JetStream KV bucket with one JSON [`WorkerInfo`] per worker.
//!
//! A reporter registers its worker and re-puts the entry every third of the TTL; the router
//! watches the bucket and treats an entry that was not refreshed within the TTL (or was
//! deleted) as a worker that left: it is purged from the index and from routing. Liveness is
//! judged from each entry's age rather than from server-side expiry markers, so it works the
//! same on every nats-server version.

use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::BusError;
use crate::protocol::WorkerInfo;

/// Writes `info` once (returns an error if that fails), then keeps it fresh every `ttl / 3`
/// until `shutdown`, when it deletes the entry so routers stop routing at once.
pub async fn register(
    kv: kv::Store,
    info: WorkerInfo,
    ttl: Duration,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, BusError> {
    info.id.validate()?;
    let value = serde_json::to_vec(&info).map_err(|e| BusError::Config(e.to_string()))?;
    let key = info.id.0.clone();
    kv.put(&key, value.clone().into())
        .await
        .map_err(|e| BusError::js("register worker", e))?;
    tracing::info!(worker = %info.id, url = %info.url, "registered");
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(10)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = kv.put(&key, value.clone().into()).await {
                        tracing::warn!(worker = %key, "registry refresh failed: {e}");
                    }
                }
            }
        }
        match kv.delete(&key).await {
            Ok(()) => tracing::info!(worker = %key, "deregistered"),
            Err(e) => {
                tracing::warn!(worker = %key, "deregistration failed (entry will expire): {e}")
            }
        }
    }))
}
