//! The fleet actor: one OS thread owns the [`Fleet`] (index included) and the routing state;
//! everything else reaches it through a [`FleetHandle`] with typed [`Command`]s.
//!
//! One owner means no lock: events, resyncs, registry changes, read-only views and routing
//! decisions are commands on one channel, applied in order, so CPU-heavy work never blocks
//! the async runtime and a decision always sees a consistent index. The event plane
//! ([`crate::plane`]) feeds it from NATS; a static fleet only registers workers. Replies come
//! back on oneshots; a handle whose actor has stopped answers [`FleetOffline`].
//!
//! The thread stops when its [`ActorThread`] guard is dropped or stopped, or when every handle
//! is gone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use cache_router_core::fleet::{Fleet, FleetCounters, ResyncNeeded, Snapshot};
use cache_router_core::index::{Digest, IndexStats, WorkerIdx};
use cache_router_core::liveness::{Liveness, WorkerLiveness};
use cache_router_core::policy::WorkerLoad;
use cache_router_core::protocol::{
    BlockHash, Envelope, Load, RouterLoad, WorkerId, WorkerInFlight, WorkerInfo,
};
use cache_router_core::routing::{LoadSource, RouteOutcome, RouteRequest, RoutingState};

/// Commands are queued at most this deep; senders wait beyond it (backpressure on ingest).
const QUEUE: usize = 1024;

/// The fleet actor is not running any more (shut down, or its thread ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the fleet actor has stopped")]
pub struct FleetOffline;

/// One stream message for [`Command::Apply`]: its stream sequence and the envelope, or None
/// for a message that was counted and skipped (undecodable, forged).
pub(crate) type StreamItem = (u64, Option<Envelope>);

/// A fetched resync: a worker's whole set as of `(epoch, seq)`.
#[derive(Debug)]
pub(crate) struct SyncResult {
    pub(crate) worker: WorkerId,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) entries: Vec<(BlockHash, Option<BlockHash>)>,
    pub(crate) started: Instant,
}

/// What the actor does. Writes come from the event plane, reads from HTTP handlers.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stream-ordered messages.
    Apply(Vec<StreamItem>),
    ResyncDone(SyncResult),
    Register(WorkerInfo),
    Deregister(WorkerId),
    /// Purge workers that stayed unregistered (see [`Fleet::purge_unregistered`]).
    PurgeUnregistered,
    Load(WorkerId, Load),
    /// Decide where a request goes.
    Route(RouteRequest, oneshot::Sender<RouteOutcome>),
    /// Does `worker` still wait for a resync?
    NeedsResync(WorkerId, oneshot::Sender<bool>),
    Snapshot(oneshot::Sender<Snapshot>),
    /// Every worker, with its liveness as of the instant given.
    Workers(Instant, oneshot::Sender<Vec<WorkerView>>),
    WorkerBlocks(WorkerId, oneshot::Sender<Vec<BlockHash>>),
    Stats(oneshot::Sender<FleetStats>),
    /// Another router's in-flight report, received at the instant given.
    PeerLoad(RouterLoad, Instant),
    /// What this router has in flight, per registered worker (for its own report).
    InFlight(oneshot::Sender<Vec<WorkerInFlight>>),
    /// Ends the thread.
    Stop,
}

/// One worker as `/admin/workers` and tests see it.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub id: WorkerId,
    pub slot: WorkerIdx,
    /// The registry entry (or static configuration); None for a worker known only from events.
    pub info: Option<WorkerInfo>,
    pub epoch: u64,
    pub last_seq: u64,
    pub resyncing: bool,
    /// Blocks the index holds for it.
    pub blocks: usize,
    pub reported_load: Option<Load>,
    /// The proxy's record of its failures.
    pub liveness: WorkerLiveness,
}

impl WorkerView {
    /// Registered (or static): eligible for traffic.
    pub fn is_registered(&self) -> bool {
        self.info.is_some()
    }
}

/// Counters and sizes of the fleet and its index.
#[derive(Clone, Debug, Default)]
pub struct FleetStats {
    pub counters: FleetCounters,
    pub index: IndexStats,
    /// Estimated heap bytes of the index's tables.
    pub index_heap_bytes: usize,
    /// Workers known (registered or seen in events).
    pub workers: usize,
    /// Registered workers.
    pub registered: usize,
    /// Bytes buffered while resyncs are pending.
    pub resync_buffered_bytes: usize,
    /// Models served by registered workers.
    pub models: BTreeSet<String>,
    /// Each known worker's index digest (block count, order-independent checksum), by id:
    /// two routers fed by the same stream must agree on every one.
    pub digests: std::collections::BTreeMap<String, Digest>,
}

/// A clonable handle to the fleet actor.
#[derive(Clone, Debug)]
pub struct FleetHandle {
    tx: mpsc::Sender<Command>,
    applied: watch::Receiver<u64>,
    ready: watch::Receiver<bool>,
}

impl FleetHandle {
    async fn ask<R>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, FleetOffline> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(cmd(tx)).await.map_err(|_| FleetOffline)?;
        rx.await.map_err(|_| FleetOffline)
    }

    pub(crate) async fn send(&self, cmd: Command) -> Result<(), FleetOffline> {
        self.tx.send(cmd).await.map_err(|_| FleetOffline)
    }

    /// Decides where a request goes (what `/route` and the proxy do after tokenizing): the
    /// candidates ranked, with the look-up and scoring times. Unless `req.dry_run`, the
    /// decision is recorded (speculation, the `approx` policy's history).
    pub async fn route(&self, req: RouteRequest) -> Result<RouteOutcome, FleetOffline> {
        self.ask(|tx| Command::Route(req, tx)).await
    }

    pub(crate) async fn needs_resync(&self, worker: WorkerId) -> Result<bool, FleetOffline> {
        self.ask(|tx| Command::NeedsResync(worker, tx)).await
    }

    pub(crate) async fn snapshot(&self) -> Result<Snapshot, FleetOffline> {
        self.ask(Command::Snapshot).await
    }

    /// Registers a worker, as a registry entry would (routers without NATS, tools, tests).
    pub async fn register(&self, info: WorkerInfo) -> Result<(), FleetOffline> {
        self.send(Command::Register(info)).await
    }

    /// Removes a worker and purges its blocks, as an expired registry entry would.
    pub async fn deregister(&self, id: &str) -> Result<(), FleetOffline> {
        self.send(Command::Deregister(WorkerId(id.to_owned())))
            .await
    }

    /// Applies one cache message as if it were stream message `stream_seq` (routers fed by
    /// another event source, tools, tests); returns once it is applied.
    pub async fn apply(&self, stream_seq: u64, env: Envelope) -> Result<(), FleetOffline> {
        self.send(Command::Apply(vec![(stream_seq, Some(env))]))
            .await?;
        self.wait_applied(stream_seq).await
    }

    /// Records a worker's reported load, as a load report on NATS would.
    pub async fn report_load(&self, id: &str, load: Load) -> Result<(), FleetOffline> {
        self.send(Command::Load(WorkerId(id.to_owned()), load))
            .await
    }

    /// Every known worker, sorted by id.
    pub async fn workers(&self) -> Result<Vec<WorkerView>, FleetOffline> {
        let now = crate::clock::now();
        self.ask(|tx| Command::Workers(now, tx)).await
    }

    /// One worker, if known.
    pub async fn worker(&self, id: &str) -> Result<Option<WorkerView>, FleetOffline> {
        Ok(self.workers().await?.into_iter().find(|w| w.id.0 == id))
    }

    /// The blocks the index holds for `id`, sorted (empty for an unknown worker).
    pub async fn worker_blocks(&self, id: &str) -> Result<Vec<BlockHash>, FleetOffline> {
        self.ask(|tx| Command::WorkerBlocks(WorkerId(id.to_owned()), tx))
            .await
    }

    /// Counters and sizes.
    pub async fn stats(&self) -> Result<FleetStats, FleetOffline> {
        self.ask(Command::Stats).await
    }

    /// What this router has in flight, per registered worker with anything in flight.
    pub(crate) async fn in_flight(&self) -> Result<Vec<WorkerInFlight>, FleetOffline> {
        self.ask(Command::InFlight).await
    }

    /// The last stream sequence applied.
    pub fn applied_stream_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the stream has been applied up to `stream_seq`.
    pub async fn wait_applied(&self, stream_seq: u64) -> Result<(), FleetOffline> {
        let mut rx = self.applied.clone();
        rx.wait_for(|&s| s >= stream_seq)
            .await
            .map(|_| ())
            .map_err(|_| FleetOffline)
    }

    /// True once the router replayed the stream up to where it stood at start.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until [`is_ready`](Self::is_ready).
    pub async fn wait_ready(&self) -> Result<(), FleetOffline> {
        let mut rx = self.ready.clone();
        rx.wait_for(|&r| r)
            .await
            .map(|_| ())
            .map_err(|_| FleetOffline)
    }
}

/// The running actor thread. Dropping it asks the thread to stop (without waiting);
/// [`stop`](ActorThread::stop) also waits for it.
#[derive(Debug)]
pub(crate) struct ActorThread {
    tx: mpsc::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    ready: Arc<watch::Sender<bool>>,
}

/// Marks the fleet ready (caught up with the stream, or static), from any task.
#[derive(Clone, Debug)]
pub(crate) struct ReadySetter(Arc<watch::Sender<bool>>);

impl ReadySetter {
    pub(crate) fn set(&self) {
        self.0.send_replace(true);
    }
}

impl ActorThread {
    pub(crate) fn ready_setter(&self) -> ReadySetter {
        ReadySetter(self.ready.clone())
    }

    /// Stops the thread and waits for it (off the async workers).
    pub(crate) async fn stop(mut self) {
        let _ = self.tx.send(Command::Stop).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for ActorThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Best effort: a full queue still drains to Stop once the handles stop sending.
            let _ = self.tx.try_send(Command::Stop);
        }
    }
}

/// What the actor needs besides the fleet.
#[derive(Debug)]
pub(crate) struct ActorParts {
    pub(crate) routing: RoutingState,
    /// The router's in-flight accounting.
    pub(crate) loads: Arc<dyn LoadSource>,
    /// The proxy's ejections (shared: the proxy writes, routing and views read).
    pub(crate) liveness: Arc<Liveness>,
    /// Where the resyncs the fleet asks for go (the event plane's resync task).
    pub(crate) resyncs: mpsc::UnboundedSender<ResyncNeeded>,
}

/// Starts the actor thread over `fleet`.
pub(crate) fn spawn(
    fleet: Fleet,
    parts: ActorParts,
) -> std::io::Result<(FleetHandle, ActorThread)> {
    let (tx, rx) = mpsc::channel::<Command>(QUEUE);
    let (applied_tx, applied_rx) = watch::channel(fleet.applied_stream_seq());
    let (ready_tx, ready_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("fleet-actor".into())
        .spawn(move || {
            Actor {
                fleet,
                parts,
                applied: applied_tx,
            }
            .run(rx)
        })?;
    let handle = FleetHandle {
        tx: tx.clone(),
        applied: applied_rx,
        ready: ready_rx,
    };
    Ok((
        handle,
        ActorThread {
            tx,
            thread: Some(thread),
            ready: Arc::new(ready_tx),
        },
    ))
}

struct Actor {
    fleet: Fleet,
    parts: ActorParts,
    applied: watch::Sender<u64>,
}

impl Actor {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            if !self.handle(cmd) {
                break;
            }
        }
    }

    /// Applies one command; false to stop.
    fn handle(&mut self, cmd: Command) -> bool {
        let fleet = &mut self.fleet;
        match cmd {
            Command::Apply(batch) => {
                for (seq, env) in batch {
                    match env {
                        Some(env) => {
                            if let Some(need) = fleet.apply(seq, env) {
                                let _ = self.parts.resyncs.send(need);
                            }
                        }
                        None => fleet.note_stream_seq(seq),
                    }
                }
                fleet.maintain();
                self.applied.send_replace(fleet.applied_stream_seq());
            }
            Command::ResyncDone(r) => {
                let took = r.started.elapsed();
                if let Some(need) = fleet.resync_done(&r.worker, r.epoch, r.seq, &r.entries) {
                    let _ = self.parts.resyncs.send(need);
                }
                tracing::info!(
                    worker = %r.worker,
                    blocks = r.entries.len(),
                    as_of_seq = r.seq,
                    took_ms = took.as_millis() as u64,
                    "resync applied"
                );
            }
            Command::Register(info) => fleet.register(info),
            Command::Deregister(id) => {
                if let Some(slot) = fleet.deregister(&id) {
                    self.parts.routing.forget_worker(slot);
                    self.parts.liveness.forget(slot);
                    tracing::info!(worker = %id, "worker left: purged from the index");
                }
            }
            Command::PurgeUnregistered => {
                let purged = fleet.purge_unregistered();
                for (id, slot) in &purged {
                    self.parts.routing.forget_worker(*slot);
                    self.parts.liveness.forget(*slot);
                    tracing::debug!(worker = %id, "never registered: purged");
                }
                if !purged.is_empty() {
                    tracing::warn!(
                        purged = purged.len(),
                        "purged workers known only from events (no registry entry)"
                    );
                }
            }
            Command::Load(id, load) => fleet.update_load(&id, load),
            Command::Route(req, reply) => {
                let outcome = self.parts.routing.route(
                    fleet,
                    self.parts.loads.as_ref(),
                    &self.parts.liveness,
                    &req,
                );
                let _ = reply.send(outcome);
            }
            Command::NeedsResync(id, reply) => {
                let _ = reply.send(fleet.needs_resync(&id));
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(fleet.snapshot());
            }
            Command::Workers(now, reply) => {
                let _ = reply.send(self.workers(now));
            }
            Command::WorkerBlocks(id, reply) => {
                let mut blocks = fleet.worker_blocks(&id);
                blocks.sort_unstable();
                let _ = reply.send(blocks);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::PeerLoad(report, at) => self.peer_load(report, at),
            Command::InFlight(reply) => {
                let _ = reply.send(self.in_flight());
            }
            Command::Stop => return false,
        }
        true
    }

    fn peer_load(&mut self, report: RouterLoad, at: Instant) {
        let loads = report
            .workers
            .iter()
            .filter_map(|w| {
                let slot = self.fleet.worker(&w.worker)?.idx;
                let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
                Some((
                    slot,
                    WorkerLoad {
                        prefill_blocks: finite(w.prefill_blocks),
                        decode_requests: finite(w.decoding),
                        requests: w.requests,
                    },
                ))
            })
            .collect();
        if !self
            .parts
            .routing
            .peers_mut()
            .update(&report.router.0, at, loads)
        {
            tracing::warn!(router = %report.router, "too many routers report load: ignored");
        }
    }

    fn in_flight(&self) -> Vec<WorkerInFlight> {
        self.fleet
            .workers()
            .filter(|(_, e)| e.info.is_some())
            .filter_map(|(id, e)| {
                let l = self.parts.loads.load(e.idx);
                (l.requests > 0).then(|| WorkerInFlight {
                    worker: id.clone(),
                    requests: l.requests,
                    prefill_blocks: l.prefill_blocks,
                    decoding: l.decode_requests,
                })
            })
            .collect()
    }

    fn workers(&self, now: Instant) -> Vec<WorkerView> {
        let mut v: Vec<WorkerView> = self
            .fleet
            .workers()
            .map(|(id, e)| WorkerView {
                id: id.clone(),
                slot: e.idx,
                info: e.info.clone(),
                epoch: e.epoch,
                last_seq: e.last_seq,
                resyncing: e.resyncing(),
                blocks: self.fleet.index().worker_blocks(e.idx),
                reported_load: e.load.clone(),
                liveness: self.parts.liveness.of(e.idx, now),
            })
            .collect();
        v.sort_by(|a, b| a.id.0.cmp(&b.id.0));
        v
    }

    fn stats(&self) -> FleetStats {
        let f = &self.fleet;
        let registered: Vec<&WorkerInfo> =
            f.workers().filter_map(|(_, e)| e.info.as_ref()).collect();
        FleetStats {
            counters: f.counters().clone(),
            index: f.index().stats(),
            index_heap_bytes: f.index().heap_bytes(),
            workers: f.workers().count(),
            registered: registered.len(),
            resync_buffered_bytes: f.buffered_bytes(),
            models: registered.iter().map(|i| i.model.clone()).collect(),
            digests: f
                .workers()
                .map(|(id, e)| (id.0.clone(), f.index().worker_digest(e.idx)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cache_router_core::backoff::Backoff;
    use cache_router_core::fleet::FleetConfig;
    use cache_router_core::liveness::EjectionPolicy;
    use cache_router_core::policy::PolicyKind;
    use cache_router_core::protocol::BlockHash;
    use cache_router_core::routing::{NoLoad, RoutingSetup};

    use super::*;

    fn info(id: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            url: format!("http://127.0.0.1:9/{id}"),
            model: "m".into(),
            block_size: 16,
            epoch: 1,
        }
    }

    async fn ranked(h: &FleetHandle) -> Vec<String> {
        let out = h
            .route(RouteRequest {
                model: "m".into(),
                hashes: vec![BlockHash(1), BlockHash(2)],
                dry_run: true,
                now_ms: 0,
                now: crate::clock::now(),
                max_candidates: 0,
            })
            .await
            .unwrap();
        out.candidates.into_iter().map(|c| c.worker.0).collect()
    }

    /// The proxy records failures in the same `Liveness` routing reads: an ejected worker
    /// leaves the ranking for 10 s, then 20 s after its next failure, and a success clears it.
    #[tokio::test(start_paused = true)]
    async fn ejections_double_on_the_paused_clock_and_routing_follows_them() {
        let liveness = Arc::new(Liveness::new(
            8,
            EjectionPolicy {
                failures_to_eject: 1,
                backoff: Backoff {
                    initial: Duration::from_secs(10),
                    max: Duration::from_secs(300),
                },
            },
            crate::clock::now(),
        ));
        let (resyncs, _rx) = mpsc::unbounded_channel();
        let routing = RoutingSetup {
            policy: PolicyKind::RoundRobin,
            speculation: None,
            ..RoutingSetup::default()
        };
        let (h, actor) = spawn(
            Fleet::new(FleetConfig::default()),
            ActorParts {
                routing: routing.build(),
                loads: Arc::new(NoLoad),
                liveness: liveness.clone(),
                resyncs,
            },
        )
        .unwrap();
        h.register(info("a")).await.unwrap();
        h.register(info("b")).await.unwrap();
        let a = h.worker("a").await.unwrap().unwrap().slot;
        let mut both = ranked(&h).await;
        both.sort();
        assert_eq!(both, ["a", "b"]);

        assert!(liveness.record_failure(a, crate::clock::now()));
        assert_eq!(ranked(&h).await, ["b"], "ejected: not ranked");
        let view = h.worker("a").await.unwrap().unwrap();
        assert_eq!(view.liveness.ejected_for, Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(ranked(&h).await, ["b"]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(ranked(&h).await.len(), 2, "the first ejection lasts 10 s");

        assert!(
            liveness.record_failure(a, crate::clock::now()),
            "fails again"
        );
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(ranked(&h).await, ["b"], "the second ejection lasts 20 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(ranked(&h).await.len(), 2);

        assert!(liveness.record_failure(a, crate::clock::now()));
        liveness.record_success(a);
        assert_eq!(ranked(&h).await.len(), 2, "a success clears the ejection");
        assert_eq!(h.worker("a").await.unwrap().unwrap().liveness.ejections, 0);
        actor.stop().await;
    }
}
