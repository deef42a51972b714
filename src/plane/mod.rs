//! The router's event plane: restore the newest snapshot, replay the stream after it, and
//! keep the fleet actor fed from NATS.
//!
//! One task per concern, all stopped by one cancellation token:
//! - [`consume`]: the event stream, in order, in batches, into the actor;
//! - [`resync`]: fetching a worker's whole set when the fleet asks for it;
//! - [`registry_watch`]: the registry bucket (workers joining, leaving, expiring);
//! - [`load_watch`]: load reports on core NATS;
//! - [`snapshots`]: periodic snapshots, and the final one on shutdown;
//! - [`router_load`]: this router's in-flight report out, the other routers' in.
//!
//! Readiness: the plane marks the fleet ready once it has applied the stream up to where it
//! stood at start and has read the registry.

mod consume;
mod load_watch;
mod registry_watch;
mod resync;
mod router_load;
mod snapshots;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use cache_router_bus::{snapshot_store, BusError, Infra, NatsArgs, StreamArgs};
use cache_router_core::fleet::{Fleet, FleetConfig, ResyncCause, ResyncNeeded};
use cache_router_core::protocol::WorkerId;

use crate::fleet_actor::{self, ActorParts, ActorThread, FleetHandle};
use crate::metrics::PlaneMetrics;

/// Event plane settings.
#[derive(Clone, Debug)]
pub(crate) struct PlaneConfig {
    pub(crate) nats: NatsArgs,
    pub(crate) limits: StreamArgs,
    /// Write a snapshot after this many applied stream messages...
    pub(crate) snapshot_every: u64,
    /// ...or after this long, whichever comes first (only if something changed).
    pub(crate) snapshot_interval: Duration,
    /// Give up on one resync attempt after this long (then retry with backoff).
    pub(crate) resync_timeout: Duration,
    /// This router's id in load reports.
    pub(crate) router_id: WorkerId,
    /// How often to publish this router's in-flight load; zero turns load sharing off.
    pub(crate) load_share_interval: Duration,
    /// The hosts registry entries may name.
    pub(crate) allowed_worker_hosts: crate::worker_url::AllowList,
}

/// The running event plane and the fleet actor it feeds.
#[derive(Debug)]
pub(crate) struct EventPlane {
    handle: FleetHandle,
    actor: ActorThread,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    infra: Infra,
    metrics: Arc<PlaneMetrics>,
}

impl EventPlane {
    pub(crate) fn handle(&self) -> FleetHandle {
        self.handle.clone()
    }

    /// Stops every task (if the token was not cancelled yet), waits up to `grace` for them,
    /// writes a final snapshot and stops the actor.
    pub(crate) async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        if tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("event plane tasks did not stop within {grace:?}");
            self.tasks.abort_all();
        }
        if let Err(e) = snapshots::write(&self.handle, &self.infra, &self.metrics).await {
            tracing::warn!("final snapshot failed: {e}");
        }
        self.actor.stop().await;
    }
}

/// Starts the event plane on `client`: creates the infrastructure, restores the newest
/// snapshot, starts the fleet actor over it, replays the stream after it, and keeps consuming
/// until `shutdown`.
pub(crate) async fn start(
    client: Client,
    config: &PlaneConfig,
    fleet_config: FleetConfig,
    parts: impl FnOnce(mpsc::UnboundedSender<ResyncNeeded>) -> ActorParts,
    metrics: Arc<PlaneMetrics>,
    shutdown: CancellationToken,
) -> Result<EventPlane, BusError> {
    let started = Instant::now();
    let subjects = config.nats.subjects();
    let infra =
        cache_router_bus::infra::wait_for_infra(&client, &subjects, &config.limits, &shutdown)
            .await
            .ok_or_else(|| BusError::Config("stopped before JetStream was usable".into()))?;

    let (fleet, mut needs) = restore(&infra, fleet_config).await;
    let info = infra
        .stream
        .get_info()
        .await
        .map_err(|e| BusError::js("stream info", e))?;
    let start_seq = fleet.applied_stream_seq() + 1;
    let mut fleet = fleet;
    if fleet.applied_stream_seq() > 0 && info.state.first_sequence > start_seq {
        tracing::warn!(
            first = info.state.first_sequence,
            needed = start_seq,
            "the stream no longer holds every message after the snapshot; resyncing all workers"
        );
        needs.extend(fleet.resync_all(ResyncCause::Restore));
    }
    let tail_at_start = info.state.last_sequence;

    let (resync_tx, resync_rx) = mpsc::unbounded_channel::<ResyncNeeded>();
    for n in needs {
        let _ = resync_tx.send(n);
    }
    let (handle, actor) = fleet_actor::spawn(fleet, parts(resync_tx))
        .map_err(|e| BusError::Config(format!("cannot start the fleet actor: {e}")))?;

    let (registry_loaded, registry_loaded_rx) = tokio::sync::watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(ready_when_caught_up(
        handle.clone(),
        actor.ready_setter(),
        tail_at_start,
        registry_loaded_rx,
        started,
        metrics.clone(),
    ));
    tasks.spawn(consume::run(
        infra.clone(),
        subjects.clone(),
        start_seq,
        tail_at_start,
        handle.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(resync::run(
        client.clone(),
        subjects.clone(),
        config.resync_timeout,
        resync_rx,
        handle.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(registry_watch::run(
        registry_watch::RegistryWatch {
            client: client.clone(),
            kv: infra.registry.clone(),
            allowed: config.allowed_worker_hosts.clone(),
            ttl: config.limits.registry_ttl,
            handle: handle.clone(),
            loaded: registry_loaded,
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));
    if !config.load_share_interval.is_zero() {
        tasks.spawn(router_load::publish(
            client.clone(),
            subjects.clone(),
            config.router_id.clone(),
            config.load_share_interval,
            handle.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(router_load::watch(
            client.clone(),
            subjects.clone(),
            config.router_id.clone(),
            handle.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(load_watch::run(
        client,
        subjects,
        handle.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(snapshots::run(
        infra.clone(),
        config.snapshot_every,
        config.snapshot_interval,
        handle.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    Ok(EventPlane {
        handle,
        actor,
        tasks,
        shutdown,
        infra,
        metrics,
    })
}

/// The newest snapshot as a fleet (and the resyncs it needs), or an empty fleet.
async fn restore(infra: &Infra, config: FleetConfig) -> (Fleet, Vec<ResyncNeeded>) {
    match snapshot_store::load(&infra.snapshots).await {
        Ok(Some(snap)) => {
            let workers = snap.workers.len();
            let seq = snap.stream_seq;
            let (f, n) = Fleet::restore(config, snap);
            tracing::info!(
                workers,
                stream_seq = seq,
                entries = f.index().stats().entries,
                "restored snapshot"
            );
            (f, n)
        }
        Ok(None) => (Fleet::new(config), Vec::new()),
        Err(e) => {
            tracing::warn!("cannot use snapshot, replaying the whole stream: {e}");
            (Fleet::new(config), Vec::new())
        }
    }
}

/// Marks the fleet ready once it applied the stream up to `tail_at_start` and knows every
/// registered worker (the registry's history is delivered): before that, a request could get
/// `503 no_workers` from a router that merely has not read the registry yet.
async fn ready_when_caught_up(
    handle: FleetHandle,
    ready: fleet_actor::ReadySetter,
    tail_at_start: u64,
    mut registry_loaded: tokio::sync::watch::Receiver<bool>,
    started: Instant,
    metrics: Arc<PlaneMetrics>,
) {
    if handle.wait_applied(tail_at_start).await.is_err() {
        return;
    }
    if registry_loaded.wait_for(|&l| l).await.is_err() {
        return;
    }
    let ms = started.elapsed().as_millis() as i64;
    metrics.recovery_ms.set(ms.max(1));
    ready.set();
    tracing::info!(
        stream_seq = handle.applied_stream_seq(),
        recovery_ms = ms,
        "ready: caught up with the event stream"
    );
}
