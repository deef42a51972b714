//! Writes a snapshot of the fleet every `every` applied messages or `interval`, whichever
//! comes first (only when something changed), and on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use cache_router_bus::{snapshot_store, BusError, Infra};

use crate::fleet_actor::FleetHandle;
use crate::metrics::PlaneMetrics;

pub(super) async fn run(
    infra: Infra,
    every: u64,
    interval: Duration,
    handle: FleetHandle,
    metrics: Arc<PlaneMetrics>,
    shutdown: CancellationToken,
) {
    let mut last = handle.applied_stream_seq();
    let mut deadline = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {}
            r = handle.wait_applied(last.saturating_add(every.max(1))) => {
                if r.is_err() { break; }
            }
        }
        deadline = tokio::time::Instant::now() + interval;
        if handle.applied_stream_seq() == last {
            continue;
        }
        match write(&handle, &infra, &metrics).await {
            Ok(seq) => last = seq,
            Err(e) => tracing::warn!("snapshot failed: {e}"),
        }
    }
}

/// Takes a snapshot on the actor's thread, encodes it off the runtime and stores it; returns
/// the stream sequence it covers.
pub(super) async fn write(
    handle: &FleetHandle,
    infra: &Infra,
    metrics: &PlaneMetrics,
) -> Result<u64, BusError> {
    let started = Instant::now();
    let snap = handle
        .snapshot()
        .await
        .map_err(|e| BusError::Config(e.to_string()))?;
    let seq = snap.stream_seq;
    let bytes = tokio::task::spawn_blocking(move || snap.encode())
        .await
        .map_err(|e| BusError::Config(e.to_string()))??;
    snapshot_store::save(&infra.snapshots, &bytes).await?;
    metrics.snapshots_written.inc();
    metrics.snapshot_bytes.set(bytes.len() as i64);
    tracing::info!(
        stream_seq = seq,
        bytes = bytes.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(seq)
}
