//! The thread that owns the [`Fleet`] (index included) and the routing state, and the
//! [`FleetHandle`] everything else reaches it through.
//!
//! One owner means no lock: events, resyncs, registry changes, queries and routing decisions
//! are commands on one channel, applied in order on a plain OS thread, so CPU-heavy work never
//! blocks the async runtime and a decision always sees a consistent index. The event plane
//! ([`crate::bus::ingest`]) feeds it from NATS; [`spawn_static`] runs it without NATS for fleets
//! of statically configured workers.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use crate::bus::ingest::IngestMetrics;
use crate::fleet::{Fleet, FleetConfig, ResyncNeeded};
use crate::protocol::{Envelope, Load, WorkerId, WorkerInfo};
use crate::routing::{LoadSource, RouteOutcome, RouteRequest, RoutingState};

pub(crate) type Query = Box<dyn FnOnce(&mut Fleet) + Send>;

pub(crate) enum Cmd {
    /// Stream-ordered messages; `None` marks a message that was skipped (undecodable).
    Apply(Vec<(u64, Option<Envelope>)>),
    ResyncDone(SyncResult),
    Register(WorkerInfo),
    Deregister(WorkerId),
    Load(WorkerId, Load),
    Query(Query),
    /// Decide where a request goes.
    Route(RouteRequest, oneshot::Sender<RouteOutcome>),
    /// Ends the owner thread (other handles may still exist; their queries then return None).
    Stop,
}

/// A clonable handle to the fleet's owner thread.
#[derive(Clone, Debug)]
pub struct FleetHandle {
    pub(crate) tx: mpsc::Sender<Cmd>,
    pub(crate) applied: watch::Receiver<u64>,
    pub(crate) ready: watch::Receiver<bool>,
    pub(crate) metrics: Arc<IngestMetrics>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Apply(_) => "Apply",
            Cmd::ResyncDone(_) => "ResyncDone",
            Cmd::Register(_) => "Register",
            Cmd::Deregister(_) => "Deregister",
            Cmd::Load(..) => "Load",
            Cmd::Query(_) => "Query",
            Cmd::Route(..) => "Route",
            Cmd::Stop => "Stop",
        })
    }
}

impl FleetHandle {
    /// Runs `f` on the fleet's thread and returns its result; None if the event plane stopped.
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Fleet) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let q: Query = Box::new(move |fleet| {
            let _ = tx.send(f(fleet));
        });
        self.tx.send(Cmd::Query(q)).await.ok()?;
        rx.await.ok()
    }

    /// Routes a request on the owner thread; None if the owner stopped.
    pub async fn route(&self, req: RouteRequest) -> Option<RouteOutcome> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Route(req, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Registers a worker (static fleets, tools).
    pub async fn register(&self, info: WorkerInfo) {
        let _ = self.tx.send(Cmd::Register(info)).await;
    }

    /// The last stream sequence applied.
    pub fn applied_stream_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the stream has been applied up to `stream_seq`.
    pub async fn wait_applied(&self, stream_seq: u64) {
        let mut rx = self.applied.clone();
        let _ = rx.wait_for(|&s| s >= stream_seq).await;
    }

    /// True once the router replayed the stream up to where it stood at start.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub async fn wait_ready(&self) {
        let mut rx = self.ready.clone();
        let _ = rx.wait_for(|&r| r).await;
    }

    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }
}

/// The owner thread and the channels the event plane drives it with.
#[derive(Debug)]
pub(crate) struct Owner {
    pub(crate) handle: FleetHandle,
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) ready_tx: watch::Sender<bool>,
}

/// Starts the owner thread over `fleet`. Resyncs the fleet asks for go to `resync_tx`.
pub(crate) fn spawn(
    fleet: Fleet,
    routing: RoutingState,
    loads: Arc<dyn LoadSource>,
    metrics: Arc<IngestMetrics>,
    resync_tx: mpsc::UnboundedSender<ResyncNeeded>,
) -> std::io::Result<Owner> {
    let (tx, rx) = mpsc::channel::<Cmd>(1024);
    let (applied_tx, applied_rx) = watch::channel(fleet.applied_stream_seq());
    let (ready_tx, ready_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("fleet-owner".into())
        .spawn(move || own_fleet(fleet, routing, loads, rx, applied_tx, resync_tx))?;
    Ok(Owner {
        handle: FleetHandle {
            tx,
            applied: applied_rx,
            ready: ready_rx,
            metrics,
        },
        thread,
        ready_tx,
    })
}

/// A fleet of statically configured workers, with no event plane: ready at once; routing uses
/// router-local state only (speculation, or the `approx` policy's history).
#[derive(Debug)]
pub struct StaticFleet {
    handle: FleetHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a static fleet of `workers`.
pub async fn spawn_static(
    config: FleetConfig,
    routing: RoutingState,
    loads: Arc<dyn LoadSource>,
    workers: Vec<WorkerInfo>,
) -> std::io::Result<StaticFleet> {
    let (resync_tx, _resync_rx) = mpsc::unbounded_channel();
    let owner = spawn(
        Fleet::new(config),
        routing,
        loads,
        Arc::new(IngestMetrics::default()),
        resync_tx,
    )?;
    for w in workers {
        owner.handle.register(w).await;
    }
    let _ = owner.ready_tx.send(true);
    Ok(StaticFleet {
        handle: owner.handle,
        thread: Some(owner.thread),
    })
}

impl StaticFleet {
    pub fn handle(&self) -> FleetHandle {
        self.handle.clone()
    }

    /// Stops the owner thread.
    pub async fn shutdown(mut self) {
        let _ = self.handle.tx.send(Cmd::Stop).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// The fleet's owner loop (a plain thread).
fn own_fleet(
    mut fleet: Fleet,
    mut routing: RoutingState,
    loads: Arc<dyn LoadSource>,
    mut rx: mpsc::Receiver<Cmd>,
    applied: watch::Sender<u64>,
    resync_tx: mpsc::UnboundedSender<ResyncNeeded>,
) {
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Apply(batch) => {
                for (seq, env) in batch {
                    match env {
                        Some(env) => {
                            if let Some(need) = fleet.apply(seq, env) {
                                let _ = resync_tx.send(need);
                            }
                        }
                        None => fleet.note_stream_seq(seq),
                    }
                }
                fleet.maintain();
                applied.send_replace(fleet.applied_stream_seq());
            }
            Cmd::ResyncDone(r) => {
                let took = r.started.elapsed();
                if let Some(need) = fleet.resync_done(&r.worker, r.epoch, r.seq, &r.entries) {
                    let _ = resync_tx.send(need);
                }
                tracing::info!(
                    worker = %r.worker,
                    blocks = r.entries.len(),
                    as_of_seq = r.seq,
                    took_ms = took.as_millis() as u64,
                    "resync applied"
                );
            }
            Cmd::Register(info) => fleet.register(info),
            Cmd::Deregister(id) => {
                if let Some(slot) = fleet.deregister(&id) {
                    routing.forget_worker(slot);
                    tracing::info!(worker = %id, "worker left: purged from the index");
                }
            }
            Cmd::Load(id, load) => fleet.update_load(&id, load),
            Cmd::Query(q) => q(&mut fleet),
            Cmd::Route(req, reply) => {
                let _ = reply.send(routing.route(&fleet, loads.as_ref(), &req));
            }
            Cmd::Stop => break,
        }
    }
}

/// A fetched resync.
pub(crate) struct SyncResult {
    pub(crate) worker: WorkerId,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) entries: Vec<(
        crate::protocol::BlockHash,
        Option<crate::protocol::BlockHash>,
    )>,
    pub(crate) started: Instant,
}
