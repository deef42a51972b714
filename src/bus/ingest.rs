//! The router's event plane: consume the stream into the [`Fleet`], fetch resyncs, watch the
//! registry and load, write snapshots, and recover from the newest snapshot on start.
//!
//! The fleet (index included) is owned by one OS thread and reached through a [`FleetHandle`]
//! (commands over a channel, replies over oneshots), so it needs no lock and CPU-heavy work
//! (applying events, look-ups, snapshots) never blocks the async runtime. Every task stops on
//! the shared `CancellationToken`; [`EventPlane::shutdown`] waits for them and writes a final
//! snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use async_nats::Client;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{ensure_infra, snapshot, BusError, Infra, NatsArgs, StreamArgs, Subjects};
use crate::fleet::{Fleet, FleetConfig, ResyncCause, ResyncNeeded};
pub use crate::owner::FleetHandle;
use crate::owner::{self, Cmd, SyncResult};
use crate::protocol::{
    decode_versioned, Body, DecodeError, Envelope, SyncChunk, SyncRequest, WorkerId, WorkerInfo,
    PROTOCOL_VERSION,
};
use crate::routing::{LoadSource, NoLoad, RoutingSetup};

/// Router-side event plane settings.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub nats: NatsArgs,
    pub limits: StreamArgs,
    pub fleet: FleetConfig,
    /// Write a snapshot after this many applied stream messages...
    pub snapshot_every: u64,
    /// ...or after this long, whichever comes first (only if something changed).
    pub snapshot_interval: Duration,
    /// Give up on one resync attempt after this long (then retry with backoff).
    pub resync_timeout: Duration,
    /// How routing decisions are made on the fleet's thread.
    pub routing: RoutingSetup,
    /// The router's in-flight accounting, read by routing decisions.
    pub loads: Arc<dyn LoadSource>,
}

impl IngestConfig {
    pub fn new(nats: NatsArgs) -> Self {
        IngestConfig {
            nats,
            limits: StreamArgs::default(),
            fleet: FleetConfig::default(),
            snapshot_every: 100_000,
            snapshot_interval: Duration::from_secs(30),
            resync_timeout: Duration::from_secs(5),
            routing: RoutingSetup::default(),
            loads: Arc::new(NoLoad),
        }
    }
}

/// Lock-free counters of the event plane (the fleet's own counters live in the fleet).
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub messages: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_version: AtomicU64,
    pub subject_mismatch: AtomicU64,
    pub load_messages: AtomicU64,
    pub registry_errors: AtomicU64,
    pub resync_fetch_ok: AtomicU64,
    pub resync_fetch_failed: AtomicU64,
    /// Duration of the last successful resync fetch, in microseconds.
    pub resync_last_us: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub snapshot_bytes: AtomicU64,
    /// Time from start to ready, in milliseconds (0 until ready).
    pub recovery_ms: AtomicU64,
    /// Messages replayed from the stream before ready.
    pub replayed: AtomicU64,
}

/// A point-in-time copy of [`IngestMetrics`] for tests and JSON views.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct IngestMetricsSnapshot {
    pub messages: u64,
    pub malformed: u64,
    pub unknown_version: u64,
    pub subject_mismatch: u64,
    pub load_messages: u64,
    pub registry_errors: u64,
    pub resync_fetch_ok: u64,
    pub resync_fetch_failed: u64,
    pub resync_last_us: u64,
    pub snapshots_written: u64,
    pub snapshot_bytes: u64,
    pub recovery_ms: u64,
    pub replayed: u64,
}

impl IngestMetrics {
    pub fn snapshot(&self) -> IngestMetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IngestMetricsSnapshot {
            messages: g(&self.messages),
            malformed: g(&self.malformed),
            unknown_version: g(&self.unknown_version),
            subject_mismatch: g(&self.subject_mismatch),
            load_messages: g(&self.load_messages),
            registry_errors: g(&self.registry_errors),
            resync_fetch_ok: g(&self.resync_fetch_ok),
            resync_fetch_failed: g(&self.resync_fetch_failed),
            resync_last_us: g(&self.resync_last_us),
            snapshots_written: g(&self.snapshots_written),
            snapshot_bytes: g(&self.snapshot_bytes),
            recovery_ms: g(&self.recovery_ms),
            replayed: g(&self.replayed),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// The running event plane.
#[derive(Debug)]
pub struct EventPlane {
    handle: FleetHandle,
    tasks: Vec<JoinHandle<()>>,
    owner: Option<std::thread::JoinHandle<()>>,
    shutdown: CancellationToken,
    infra: Infra,
}

impl EventPlane {
    pub fn handle(&self) -> FleetHandle {
        self.handle.clone()
    }

    /// Stops every task (if the token was not cancelled yet), waits up to `grace` for them,
    /// writes a final snapshot and stops the owner thread.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        if tokio::time::timeout(grace, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("event plane tasks did not stop within {grace:?}");
        }
        if let Err(e) = write_snapshot(&self.handle, &self.infra).await {
            tracing::warn!("final snapshot failed: {e}");
        }
        let owner = self.owner.take();
        let _ = self.handle.tx.send(Cmd::Stop).await;
        if let Some(t) = owner {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Starts the event plane on `client`: creates the infrastructure, restores the newest
/// snapshot, replays the stream after it, and keeps consuming until `shutdown`.
pub async fn start(
    client: Client,
    config: IngestConfig,
    shutdown: CancellationToken,
) -> Result<EventPlane, BusError> {
    let started = Instant::now();
    let subjects = config.nats.subjects();
    let infra = ensure_infra(&client, &subjects, &config.limits).await?;
    let metrics = Arc::new(IngestMetrics::default());

    // Restore.
    let (mut fleet, mut needs) = match snapshot::load(&infra.snapshots).await {
        Ok(Some(snap)) => {
            let workers = snap.workers.len();
            let seq = snap.stream_seq;
            let (f, n) = Fleet::restore(config.fleet.clone(), snap);
            tracing::info!(
                workers,
                stream_seq = seq,
                entries = f.index().stats().entries,
                "restored snapshot"
            );
            (f, n)
        }
        Ok(None) => (Fleet::new(config.fleet.clone()), Vec::new()),
        Err(e) => {
            tracing::warn!("cannot use snapshot, replaying the whole stream: {e}");
            (Fleet::new(config.fleet.clone()), Vec::new())
        }
    };
    let info = infra
        .stream
        .get_info()
        .await
        .map_err(|e| BusError::js("stream info", e))?;
    let start_seq = fleet.applied_stream_seq() + 1;
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
    for n in needs.drain(..) {
        let _ = resync_tx.send(n);
    }
    let owner::Owner {
        handle,
        thread: owner,
        ready_tx,
    } = owner::spawn(
        fleet,
        config.routing.build(),
        config.loads.clone(),
        metrics.clone(),
        resync_tx,
    )
    .map_err(|e| BusError::Config(format!("cannot start fleet thread: {e}")))?;

    let mut tasks = Vec::new();
    // Readiness: caught up with the stream's tail as it was at start.
    {
        let h = handle.clone();
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            h.wait_applied(tail_at_start).await;
            let ms = started.elapsed().as_millis() as u64;
            metrics.recovery_ms.store(ms.max(1), Ordering::Relaxed);
            let _ = ready_tx.send(true);
            tracing::info!(
                stream_seq = h.applied_stream_seq(),
                recovery_ms = ms,
                "ready: caught up with the event stream"
            );
        }));
    }
    tasks.push(tokio::spawn(consume(
        infra.clone(),
        subjects.clone(),
        start_seq,
        tail_at_start,
        handle.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(resyncs(
        client.clone(),
        subjects.clone(),
        config.resync_timeout,
        resync_rx,
        handle.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(watch_registry(
        infra.registry.clone(),
        Duration::from_millis(config.limits.registry_ttl_ms),
        handle.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(watch_load(
        client.clone(),
        subjects.clone(),
        handle.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(snapshots(
        infra.clone(),
        config.snapshot_every,
        config.snapshot_interval,
        handle.clone(),
        shutdown.clone(),
    )));
    Ok(EventPlane {
        handle,
        tasks,
        owner: Some(owner),
        shutdown,
        infra,
    })
}

/// Pulls the stream in order from `start_seq`, in batches, into the fleet.
async fn consume(
    infra: Infra,
    subjects: Subjects,
    mut next_seq: u64,
    tail_at_start: u64,
    handle: FleetHandle,
    shutdown: CancellationToken,
) {
    let prefix = subjects.events_all().trim_end_matches('>').to_owned();
    let metrics = handle.metrics.clone();
    let mut attempt = 0u32;
    'outer: while !shutdown.is_cancelled() {
        let consumer = infra
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects.events_all(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: next_seq.max(1),
                },
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("event consumer: {e}; retrying");
                    retry_pause(&mut attempt, &shutdown).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!("cannot create event consumer: {e}; retrying");
                retry_pause(&mut attempt, &shutdown).await;
                continue;
            }
        };
        attempt = 0;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                m = messages.next() => m,
            };
            let mut batch = Vec::new();
            let mut item = first;
            loop {
                match item {
                    Some(Ok(msg)) => match msg.info() {
                        Ok(info) => {
                            let seq = info.stream_sequence;
                            bump(&metrics.messages);
                            if seq <= tail_at_start {
                                bump(&metrics.replayed);
                            }
                            next_seq = seq + 1;
                            let env = decode_event(&msg.subject, &msg.payload, &prefix, &metrics);
                            batch.push((seq, env));
                        }
                        Err(_) => bump(&metrics.malformed),
                    },
                    Some(Err(e)) => {
                        tracing::warn!("event stream error: {e}; recreating the consumer");
                        flush(&handle, &mut batch).await;
                        retry_pause(&mut attempt, &shutdown).await;
                        continue 'outer;
                    }
                    None => {
                        flush(&handle, &mut batch).await;
                        tracing::warn!("event stream ended; recreating the consumer");
                        retry_pause(&mut attempt, &shutdown).await;
                        continue 'outer;
                    }
                }
                if batch.len() >= 512 {
                    break;
                }
                // Take whatever is already buffered without waiting.
                match messages.next().now_or_never() {
                    Some(next) => item = next,
                    None => break,
                }
            }
            flush(&handle, &mut batch).await;
        }
    }
}

async fn flush(handle: &FleetHandle, batch: &mut Vec<(u64, Option<Envelope>)>) {
    if !batch.is_empty() {
        let _ = handle.tx.send(Cmd::Apply(std::mem::take(batch))).await;
    }
}

async fn retry_pause(attempt: &mut u32, shutdown: &CancellationToken) {
    *attempt += 1;
    let d = super::backoff(*attempt as usize);
    tokio::select! {
        _ = shutdown.cancelled() => {},
        _ = tokio::time::sleep(d) => {},
    }
}

/// Decodes one stream message; counts and logs what cannot be applied.
fn decode_event(
    subject: &str,
    payload: &[u8],
    prefix: &str,
    metrics: &IngestMetrics,
) -> Option<Envelope> {
    match Envelope::decode(payload) {
        Ok(env) => {
            if subject.strip_prefix(prefix) != Some(env.worker.0.as_str()) {
                bump(&metrics.subject_mismatch);
                tracing::warn!(subject, worker = %env.worker, "message on another worker's subject: skipped");
                return None;
            }
            if matches!(env.body, Body::Load(_)) {
                // Load belongs on core NATS; harmless here but not sequenced with events.
                return None;
            }
            Some(env)
        }
        Err(e) => {
            match e {
                DecodeError::UnknownVersion(_) => bump(&metrics.unknown_version),
                DecodeError::Malformed(_) => bump(&metrics.malformed),
            }
            tracing::warn!(subject, "skipped undecodable event: {e}");
            None
        }
    }
}

/// Carries out resyncs: one fetch per worker at a time, retried with backoff while the worker
/// still needs it.
async fn resyncs(
    client: Client,
    subjects: Subjects,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<ResyncNeeded>,
    handle: FleetHandle,
    shutdown: CancellationToken,
) {
    let mut in_flight: HashSet<WorkerId> = HashSet::new();
    let mut jobs: JoinSet<(WorkerId, u32, Result<SyncResult, BusError>)> = JoinSet::new();
    let spawn = |jobs: &mut JoinSet<_>, w: WorkerId, attempt: u32| {
        let (client, subjects) = (client.clone(), subjects.clone());
        jobs.spawn(async move {
            if attempt > 0 {
                tokio::time::sleep(super::backoff(attempt as usize)).await;
            }
            let r = fetch_resync(&client, &subjects, &w, timeout).await;
            (w, attempt, r)
        });
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            need = rx.recv() => {
                let Some(need) = need else { break };
                tracing::info!(worker = %need.worker, cause = need.cause.as_str(), "resync needed");
                if in_flight.insert(need.worker.clone()) {
                    spawn(&mut jobs, need.worker, 0);
                }
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                let Ok((w, attempt, r)) = done else { continue };
                match r {
                    Ok(res) => {
                        bump(&handle.metrics.resync_fetch_ok);
                        handle.metrics.resync_last_us.store(res.started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        in_flight.remove(&w);
                        let _ = handle.tx.send(Cmd::ResyncDone(res)).await;
                    }
                    Err(e) => {
                        bump(&handle.metrics.resync_fetch_failed);
                        let w2 = w.clone();
                        let still = handle.query(move |f| f.needs_resync(&w2)).await.unwrap_or(false);
                        if still {
                            tracing::warn!(worker = %w, attempt, "resync failed: {e}; retrying");
                            spawn(&mut jobs, w, attempt + 1);
                        } else {
                            in_flight.remove(&w);
                        }
                    }
                }
            }
        }
    }
    jobs.shutdown().await;
}

/// Asks `w`'s reporter for its full set and collects the chunks.
async fn fetch_resync(
    client: &Client,
    subjects: &Subjects,
    w: &WorkerId,
    timeout: Duration,
) -> Result<SyncResult, BusError> {
    let started = Instant::now();
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BusError::nats("subscribe resync inbox", e))?;
    let req = rmp_serde::to_vec(&SyncRequest {
        version: PROTOCOL_VERSION,
        worker: w.clone(),
    })
    .map_err(crate::protocol::EncodeError::from)?;
    client
        .publish_with_reply(subjects.sync(w), inbox, req.into())
        .await
        .map_err(|e| BusError::nats("publish resync request", e))?;
    let collect = async {
        let mut chunks: HashMap<u32, SyncChunk> = HashMap::new();
        let mut total = None;
        while let Some(msg) = sub.next().await {
            let chunk: SyncChunk = decode_versioned(&msg.payload)?;
            if &chunk.worker != w {
                continue;
            }
            if let Some(first) = chunks.values().next() {
                if (first.epoch, first.seq) != (chunk.epoch, chunk.seq) {
                    return Err(BusError::Config(
                        "resync chunks of different versions".into(),
                    ));
                }
            }
            total = Some(chunk.total);
            chunks.insert(chunk.index, chunk);
            if total == Some(chunks.len() as u32) {
                break;
            }
        }
        if total != Some(chunks.len() as u32) {
            return Err(BusError::nats("resync", "reply stream ended early"));
        }
        let mut ordered: Vec<SyncChunk> = chunks.into_values().collect();
        ordered.sort_by_key(|c| c.index);
        let (epoch, seq) = (ordered[0].epoch, ordered[0].seq);
        let entries = ordered.into_iter().flat_map(|c| c.entries).collect();
        Ok(SyncResult {
            worker: w.clone(),
            epoch,
            seq,
            entries,
            started,
        })
    };
    let r = tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| BusError::Timeout(timeout, "resync reply"))?;
    let _ = sub.unsubscribe().await;
    r
}

/// Follows the registry bucket: entries register workers; deletions and entries older than
/// the TTL deregister them.
async fn watch_registry(
    kv: kv::Store,
    ttl: Duration,
    handle: FleetHandle,
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
                retry_pause(&mut attempt, &shutdown).await;
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
                        let _ = handle.tx.send(Cmd::Deregister(id)).await;
                    }
                }
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            tracing::warn!("registry watch error: {e}; re-watching");
                            continue 'outer;
                        }
                        None => continue 'outer,
                    };
                    let id = WorkerId(entry.key.clone());
                    match entry.operation {
                        kv::Operation::Put => {
                            let info: WorkerInfo = match serde_json::from_slice(&entry.value) {
                                Ok(i) => i,
                                Err(e) => {
                                    bump(&handle.metrics.registry_errors);
                                    tracing::warn!(key = %entry.key, "bad registry entry: {e}");
                                    continue;
                                }
                            };
                            if info.id != id || info.id.validate().is_err() {
                                bump(&handle.metrics.registry_errors);
                                tracing::warn!(key = %entry.key, "registry entry names another worker");
                                continue;
                            }
                            // Age by the server's write time, so a stale entry found at start
                            // does not look fresh.
                            let age = (time::OffsetDateTime::now_utc() - entry.created)
                                .try_into()
                                .unwrap_or(Duration::ZERO);
                            if age > ttl {
                                continue;
                            }
                            last_seen.insert(id, Instant::now() - age);
                            let _ = handle.tx.send(Cmd::Register(info)).await;
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            last_seen.remove(&id);
                            let _ = handle.tx.send(Cmd::Deregister(id)).await;
                        }
                    }
                }
            }
        }
    }
}

/// Applies load reports from core NATS.
async fn watch_load(
    client: Client,
    subjects: Subjects,
    handle: FleetHandle,
    shutdown: CancellationToken,
) {
    let mut sub = match client.subscribe(subjects.load_all()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot subscribe to load reports: {e}");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        match Envelope::decode(&msg.payload) {
            Ok(Envelope {
                worker,
                body: Body::Load(load),
                ..
            }) => {
                bump(&handle.metrics.load_messages);
                let _ = handle.tx.send(Cmd::Load(worker, load)).await;
            }
            Ok(_) => bump(&handle.metrics.malformed),
            Err(DecodeError::UnknownVersion(_)) => bump(&handle.metrics.unknown_version),
            Err(DecodeError::Malformed(_)) => bump(&handle.metrics.malformed),
        }
    }
}

/// Writes a snapshot every `every` applied messages or `interval`, whichever comes first.
async fn snapshots(
    infra: Infra,
    every: u64,
    interval: Duration,
    handle: FleetHandle,
    shutdown: CancellationToken,
) {
    let mut applied = handle.applied.clone();
    let mut last = handle.applied_stream_seq();
    let mut deadline = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {}
            r = applied.wait_for(|&s| s >= last.saturating_add(every.max(1))) => {
                if r.is_err() { break; }
            }
        }
        deadline = tokio::time::Instant::now() + interval;
        let now = handle.applied_stream_seq();
        if now == last {
            continue;
        }
        match write_snapshot(&handle, &infra).await {
            Ok(seq) => last = seq,
            Err(e) => tracing::warn!("snapshot failed: {e}"),
        }
    }
}

/// Takes a snapshot on the owner thread, encodes it off the runtime and stores it; returns the
/// stream sequence it covers.
async fn write_snapshot(handle: &FleetHandle, infra: &Infra) -> Result<u64, BusError> {
    let started = Instant::now();
    let snap = handle
        .query(|f| f.snapshot())
        .await
        .ok_or(BusError::Config("event plane stopped".into()))?;
    let seq = snap.stream_seq;
    let bytes = tokio::task::spawn_blocking(move || snap.encode())
        .await
        .map_err(|e| BusError::Config(e.to_string()))??;
    snapshot::save(&infra.snapshots, &bytes).await?;
    handle
        .metrics
        .snapshots_written
        .fetch_add(1, Ordering::Relaxed);
    handle
        .metrics
        .snapshot_bytes
        .store(bytes.len() as u64, Ordering::Relaxed);
    tracing::info!(
        stream_seq = seq,
        bytes = bytes.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(seq)
}
