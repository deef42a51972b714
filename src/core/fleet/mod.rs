//! The router's view of its fleet: the cache index plus, per worker, its registry entry, its
//! position in its own message sequence, its sync state and its reported load.
//!
//! This is the consistency logic of the design brief (section 4) as a plain state machine with
//! no I/O: the bus feeds it decoded envelopes in stream order and acts on the resyncs it asks
//! for, so every rule (duplicates, gaps, epochs, digests, buffering during a resync) is unit
//! tested here without NATS.
//!
//! Per worker, messages apply in sequence order: `seq <= last` is a duplicate and is dropped;
//! `seq == last + 1` applies; a skipped sequence number or a newer epoch starts a **resync**:
//! the worker's later messages are buffered (bounded) until the reporter's full set arrives as
//! of some sequence `S`; then the set replaces the worker's view atomically and buffered
//! messages after `S` are applied, so nothing that arrived meanwhile is lost. A `Digest` that
//! differs from the index's view of the worker starts the same resync.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::index::{Index, IndexConfig, WorkerIdx, MAX_WORKER_SLOT};
use crate::protocol::{BlockHash, Body, Envelope, Load, WorkerId, WorkerInfo, PROTOCOL_VERSION};

/// Why a worker's view is being rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResyncCause {
    /// A message's sequence number skipped ahead.
    Gap,
    /// The worker started a new epoch (engine or reporter restart).
    NewEpoch,
    /// The worker's digest disagreed with our view.
    DigestMismatch,
    /// Our view came from a snapshot in which this worker was mid-resync, or the stream no
    /// longer holds the messages after the snapshot.
    Restore,
    /// Too many messages arrived while a resync was pending; the buffer was dropped.
    BufferOverflow,
}

impl ResyncCause {
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncCause::Gap => "gap",
            ResyncCause::NewEpoch => "new_epoch",
            ResyncCause::DigestMismatch => "digest_mismatch",
            ResyncCause::Restore => "restore",
            ResyncCause::BufferOverflow => "buffer_overflow",
        }
    }

    pub const ALL: [ResyncCause; 5] = [
        ResyncCause::Gap,
        ResyncCause::NewEpoch,
        ResyncCause::DigestMismatch,
        ResyncCause::Restore,
        ResyncCause::BufferOverflow,
    ];
}

/// A request to fetch a worker's full set (the bus carries it out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResyncNeeded {
    pub worker: WorkerId,
    pub cause: ResyncCause,
}

#[derive(Clone, Debug, Default)]
enum SyncState {
    #[default]
    InSync,
    Resyncing {
        buffered: Vec<Envelope>,
        /// Estimated bytes of `buffered` (see [`approx_bytes`]).
        bytes: usize,
    },
}

/// A buffered message's memory, estimated: the envelope and its block list.
fn approx_bytes(env: &Envelope) -> usize {
    let blocks = match &env.body {
        Body::Stored { blocks, .. } | Body::Removed { blocks } => blocks.len(),
        _ => 0,
    };
    96 + env.worker.0.len() + 8 * blocks
}

/// One worker as the router knows it.
#[derive(Clone, Debug)]
pub struct WorkerEntry {
    pub idx: WorkerIdx,
    /// Registry entry; a worker known only from events is not routable.
    pub info: Option<WorkerInfo>,
    pub epoch: u64,
    pub last_seq: u64,
    pub load: Option<Load>,
    sync: SyncState,
    /// Unregistered, and already so at the last [`Fleet::purge_unregistered`]: purged at the
    /// next one unless it registers first.
    marked: bool,
}

impl WorkerEntry {
    pub fn resyncing(&self) -> bool {
        matches!(self.sync, SyncState::Resyncing { .. })
    }
}

/// Counters for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetCounters {
    /// Cache messages applied to the index (stored/removed/cleared/digest).
    pub applied: u64,
    /// Block events inside applied messages.
    pub block_events: u64,
    pub duplicates: u64,
    /// Messages of an older epoch than the worker's current one.
    pub stale_epoch: u64,
    pub resyncs_started: HashMap<&'static str, u64>,
    pub resyncs_completed: u64,
    pub digests_ok: u64,
    pub digest_mismatches: u64,
    /// Buffered messages dropped because a resync's buffer overflowed.
    pub buffer_dropped: u64,
    /// Messages dropped because no worker slot was free.
    pub no_slot: u64,
    /// Messages of workers never registered, dropped because `max_unregistered` such
    /// workers already hold slots (ids invented to exhaust the slots).
    pub unregistered_dropped: u64,
    /// Unregistered workers evicted to give a registering worker a slot.
    pub unregistered_evicted: u64,
    /// Unregistered workers purged for staying unregistered ([`Fleet::purge_unregistered`]).
    pub unregistered_purged: u64,
    /// Messages buffered during a resync that were still ahead of the resync's sequence
    /// (not from the worker's real sequence: a forged jump), dropped.
    pub ahead_dropped: u64,
}

impl FleetCounters {
    pub fn resyncs(&self, cause: ResyncCause) -> u64 {
        self.resyncs_started
            .get(cause.as_str())
            .copied()
            .unwrap_or(0)
    }

    pub fn resyncs_total(&self) -> u64 {
        self.resyncs_started.values().sum()
    }
}

/// Fleet limits.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub index: IndexConfig,
    /// Most bytes buffered during resyncs, all workers together: past it the worker whose
    /// message does not fit loses its buffer and starts its resync over (its reporter's set
    /// covers whatever the buffer held).
    pub max_buffered_bytes: usize,
    /// Most workers holding slots without a registry entry (known only from events, or from
    /// a snapshot). A registering worker always gets a slot: one of these gives way.
    pub max_unregistered: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            index: IndexConfig::default(),
            max_buffered_bytes: 64 << 20,
            max_unregistered: 1024,
        }
    }
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Fleet {
    index: Index,
    workers: HashMap<WorkerId, WorkerEntry>,
    slot_owner: Vec<Option<WorkerId>>,
    free_slots: Vec<WorkerIdx>,
    applied_stream_seq: u64,
    counters: FleetCounters,
    config: FleetConfig,
    /// Bytes buffered by all resyncing workers.
    buffered_bytes: usize,
    /// Workers holding a slot without a registry entry.
    unregistered: usize,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Self {
        Fleet {
            index: Index::new(config.index.clone()),
            workers: HashMap::new(),
            slot_owner: Vec::new(),
            free_slots: Vec::new(),
            applied_stream_seq: 0,
            counters: FleetCounters::default(),
            config,
            buffered_bytes: 0,
            unregistered: 0,
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Bytes buffered by resyncing workers (bounded by `max_buffered_bytes`).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    pub fn counters(&self) -> &FleetCounters {
        &self.counters
    }

    /// The stream sequence of the last message applied (what a snapshot covers).
    pub fn applied_stream_seq(&self) -> u64 {
        self.applied_stream_seq
    }

    pub fn worker(&self, id: &WorkerId) -> Option<&WorkerEntry> {
        self.workers.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = (&WorkerId, &WorkerEntry)> {
        self.workers.iter()
    }

    /// The worker owning an index slot.
    pub fn worker_at(&self, idx: WorkerIdx) -> Option<&WorkerId> {
        self.slot_owner.get(idx.get()).and_then(|o| o.as_ref())
    }

    /// Sorted blocks the index holds for `id` (tests and admin views).
    pub fn worker_blocks(&self, id: &WorkerId) -> Vec<BlockHash> {
        let Some(e) = self.workers.get(id) else {
            return Vec::new();
        };
        let mut v: Vec<BlockHash> = self.index.worker_block_iter(e.idx).collect();
        v.sort_unstable();
        v
    }

    /// `id`'s entry, created with a slot if needed. A worker that is not `registering` gets a
    /// slot only while fewer than `max_unregistered` unregistered workers hold one; a
    /// registering worker always gets one, an unregistered worker giving way if needed.
    fn entry_or_insert(&mut self, id: &WorkerId, registering: bool) -> Option<&mut WorkerEntry> {
        if !self.workers.contains_key(id) {
            if !registering && self.unregistered >= self.config.max_unregistered {
                self.counters.unregistered_dropped += 1;
                return None;
            }
            let idx = match self.free_slots.pop() {
                Some(i) => i,
                None => {
                    let next = self.slot_owner.len();
                    if next <= usize::from(MAX_WORKER_SLOT) {
                        self.slot_owner.push(None);
                        WorkerIdx::new(next as u32).expect("checked above")
                    } else if registering {
                        self.evict_unregistered()?
                    } else {
                        return None;
                    }
                }
            };
            self.slot_owner[idx.get()] = Some(id.clone());
            self.workers.insert(
                id.clone(),
                WorkerEntry {
                    idx,
                    info: None,
                    epoch: 0,
                    last_seq: 0,
                    load: None,
                    sync: SyncState::InSync,
                    marked: false,
                },
            );
            self.unregistered += 1;
        }
        self.workers.get_mut(id)
    }

    /// Frees the slot of an unregistered worker (the one holding fewest blocks) for a
    /// registering one.
    fn evict_unregistered(&mut self) -> Option<WorkerIdx> {
        let victim = self
            .workers
            .iter()
            .filter(|(_, e)| e.info.is_none())
            .min_by_key(|(_, e)| self.index.worker_blocks(e.idx))
            .map(|(id, _)| id.clone())?;
        self.counters.unregistered_evicted += 1;
        let idx = self.remove_worker(&victim)?;
        self.free_slots.retain(|&s| s != idx);
        Some(idx)
    }

    fn start_resync(&mut self, id: &WorkerId, cause: ResyncCause) -> ResyncNeeded {
        *self
            .counters
            .resyncs_started
            .entry(cause.as_str())
            .or_insert(0) += 1;
        if let Some(e) = self.workers.get_mut(id) {
            if let SyncState::Resyncing { bytes, .. } = &e.sync {
                self.buffered_bytes -= bytes;
            }
            e.sync = SyncState::Resyncing {
                buffered: Vec::new(),
                bytes: 0,
            };
        }
        ResyncNeeded {
            worker: id.clone(),
            cause,
        }
    }

    /// Applies one message taken from the stream at `stream_seq`. Returns a resync to start,
    /// if this message revealed that our view of its worker is wrong.
    pub fn apply(&mut self, stream_seq: u64, env: Envelope) -> Option<ResyncNeeded> {
        self.applied_stream_seq = self.applied_stream_seq.max(stream_seq);
        self.apply_in_order(env)
    }

    /// Advances the stream position past a message that could not be applied (undecodable),
    /// so readiness and snapshots do not wait for it.
    pub fn note_stream_seq(&mut self, stream_seq: u64) {
        self.applied_stream_seq = self.applied_stream_seq.max(stream_seq);
    }

    fn apply_in_order(&mut self, env: Envelope) -> Option<ResyncNeeded> {
        if let Body::Load(load) = env.body {
            self.update_load(&env.worker, load);
            return None;
        }
        let budget = self.config.max_buffered_bytes;
        let total = self.buffered_bytes;
        let Some(entry) = self.entry_or_insert(&env.worker, false) else {
            self.counters.no_slot += 1;
            return None;
        };
        if let SyncState::Resyncing { buffered, bytes } = &mut entry.sync {
            let size = approx_bytes(&env);
            if total + size > budget {
                let dropped = buffered.len() as u64 + 1;
                let id = env.worker.clone();
                self.counters.buffer_dropped += dropped;
                return Some(self.start_resync(&id, ResyncCause::BufferOverflow));
            }
            buffered.push(env);
            *bytes += size;
            self.buffered_bytes += size;
            return None;
        }
        let fresh = entry.epoch == 0 && entry.last_seq == 0;
        if env.epoch != entry.epoch && !(fresh && env.seq == 1) {
            if env.epoch < entry.epoch {
                self.counters.stale_epoch += 1;
                return None;
            }
            let cause = if fresh {
                ResyncCause::Gap
            } else {
                ResyncCause::NewEpoch
            };
            let id = env.worker.clone();
            let need = self.start_resync(&id, cause);
            self.buffer(&id, env);
            return Some(need);
        }
        if env.epoch == entry.epoch && env.seq <= entry.last_seq {
            self.counters.duplicates += 1;
            return None;
        }
        if env.seq != entry.last_seq + 1 && !(fresh && env.seq == 1) {
            let id = env.worker.clone();
            let need = self.start_resync(&id, ResyncCause::Gap);
            self.buffer(&id, env);
            return Some(need);
        }
        entry.epoch = env.epoch;
        entry.last_seq = env.seq;
        let idx = entry.idx;
        self.counters.applied += 1;
        match &env.body {
            Body::Digest {
                block_count,
                checksum,
            } => {
                let ours = self.index.worker_digest(idx);
                if ours.block_count == *block_count && ours.checksum == *checksum {
                    self.counters.digests_ok += 1;
                } else {
                    self.counters.digest_mismatches += 1;
                    return Some(self.start_resync(&env.worker, ResyncCause::DigestMismatch));
                }
            }
            body => {
                self.counters.block_events += match body {
                    Body::Stored { blocks, .. } | Body::Removed { blocks } => blocks.len() as u64,
                    _ => 1,
                };
                self.index.apply(idx, body);
            }
        }
        None
    }

    fn buffer(&mut self, id: &WorkerId, env: Envelope) {
        if let Some(WorkerEntry {
            sync: SyncState::Resyncing { buffered, bytes },
            ..
        }) = self.workers.get_mut(id)
        {
            let size = approx_bytes(&env);
            buffered.push(env);
            *bytes += size;
            self.buffered_bytes += size;
        }
    }

    /// A resync's full set arrived: replace the worker's view as of `(epoch, seq)` and apply
    /// what was buffered after it. Ignored if the worker is not resyncing (a stale reply).
    pub fn resync_done(
        &mut self,
        id: &WorkerId,
        epoch: u64,
        seq: u64,
        entries: &[(BlockHash, Option<BlockHash>)],
    ) -> Option<ResyncNeeded> {
        let entry = self.workers.get_mut(id)?;
        let SyncState::Resyncing { buffered, bytes } = std::mem::take(&mut entry.sync) else {
            return None;
        };
        self.buffered_bytes -= bytes;
        entry.epoch = epoch;
        entry.last_seq = seq;
        let idx = entry.idx;
        self.index.replace_worker(idx, entries);
        self.index.maintain();
        self.counters.resyncs_completed += 1;
        // What came after the set: messages up to `seq` are in it (dropped as duplicates),
        // the next ones apply in order. One still ahead of the sequence cannot come from the
        // worker — anything it sent after answering carries `seq + 1`, `seq + 2`, … in stream
        // order — so it is dropped rather than allowed to start yet another resync (a forged
        // jump of 10^12 used to loop forever). A later real gap still resyncs, rate-limited.
        let mut need = None;
        for env in buffered {
            let in_this_epoch = self.workers.get(id).map(|e| (e.epoch, e.last_seq));
            if let Some((cur_epoch, last)) = in_this_epoch {
                if env.epoch == cur_epoch && env.seq > last.saturating_add(1) {
                    self.counters.ahead_dropped += 1;
                    continue;
                }
            }
            if let Some(n) = self.apply_in_order(env) {
                need = Some(n);
            }
        }
        need
    }

    /// Is `id` waiting for a resync?
    pub fn needs_resync(&self, id: &WorkerId) -> bool {
        self.workers.get(id).is_some_and(|e| e.resyncing())
    }

    /// A worker's registry entry was written (registration or refresh).
    pub fn register(&mut self, info: WorkerInfo) {
        let id = info.id.clone();
        let mut newly = false;
        match self.entry_or_insert(&id, true) {
            Some(e) => {
                newly = e.info.is_none();
                e.info = Some(info);
            }
            None => self.counters.no_slot += 1,
        }
        if newly {
            self.unregistered -= 1;
        }
    }

    /// A worker left (registry entry deleted or expired): forget it entirely. Returns its old
    /// index slot so callers can drop other per-slot state (speculation).
    pub fn deregister(&mut self, id: &WorkerId) -> Option<WorkerIdx> {
        self.remove_worker(id)
    }

    fn remove_worker(&mut self, id: &WorkerId) -> Option<WorkerIdx> {
        let e = self.workers.remove(id)?;
        if e.info.is_none() {
            self.unregistered -= 1;
        }
        if let SyncState::Resyncing { bytes, .. } = &e.sync {
            self.buffered_bytes -= bytes;
        }
        self.index.purge_worker(e.idx);
        self.slot_owner[e.idx.get()] = None;
        self.free_slots.push(e.idx);
        Some(e.idx)
    }

    /// Purges the workers that hold a slot without a registry entry and already did at the
    /// previous call (the quarantine of ids known only from events), and marks the rest.
    /// The shell calls it once per registry TTL while the registry is readable, so an id
    /// nobody registers is gone within two TTLs, and a real worker whose events arrive just
    /// before its entry is not. Returns the purged ids and the slots they held.
    pub fn purge_unregistered(&mut self) -> Vec<(WorkerId, WorkerIdx)> {
        let mut purge = Vec::new();
        for (id, e) in self.workers.iter_mut() {
            if e.info.is_some() {
                e.marked = false;
            } else if e.marked {
                purge.push(id.clone());
            } else {
                e.marked = true;
            }
        }
        self.counters.unregistered_purged += purge.len() as u64;
        purge
            .into_iter()
            .filter_map(|id| self.remove_worker(&id).map(|slot| (id, slot)))
            .collect()
    }

    pub fn update_load(&mut self, id: &WorkerId, load: Load) {
        if let Some(e) = self.workers.get_mut(id) {
            e.load = Some(load);
        }
    }

    /// Runs deferred index maintenance (closure recounts); call after a batch.
    pub fn maintain(&mut self) {
        self.index.maintain();
    }

    /// Everything needed to rebuild this state elsewhere, as of `applied_stream_seq`.
    pub fn snapshot(&self) -> Snapshot {
        let mut workers: Vec<WorkerSnapshot> = self
            .workers
            .iter()
            .map(|(id, e)| WorkerSnapshot {
                id: id.clone(),
                epoch: e.epoch,
                last_seq: e.last_seq,
                needs_resync: e.resyncing(),
                entries: self.index.worker_entries(e.idx),
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            version: PROTOCOL_VERSION,
            stream_seq: self.applied_stream_seq,
            workers,
        }
    }

    /// Rebuilds a fleet from a snapshot; returns the resyncs to start (workers that were
    /// mid-resync when it was taken).
    pub fn restore(config: FleetConfig, snap: Snapshot) -> (Fleet, Vec<ResyncNeeded>) {
        let mut fleet = Fleet::new(config);
        fleet.applied_stream_seq = snap.stream_seq;
        let mut needs = Vec::new();
        for w in snap.workers {
            let Some(e) = fleet.entry_or_insert(&w.id, true) else {
                fleet.counters.no_slot += 1;
                continue;
            };
            e.epoch = w.epoch;
            e.last_seq = w.last_seq;
            let idx = e.idx;
            fleet.index.replace_worker(idx, &w.entries);
            if w.needs_resync {
                needs.push(fleet.start_resync(&w.id, ResyncCause::Restore));
            }
        }
        (fleet, needs)
    }

    /// Marks every worker for resync (the stream lost messages we needed).
    pub fn resync_all(&mut self, cause: ResyncCause) -> Vec<ResyncNeeded> {
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, e)| !e.resyncing())
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().map(|id| self.start_resync(id, cause)).collect()
    }
}

/// A serialized fleet: per worker its position and resident `(block, parent)` entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u16,
    /// The last stream sequence reflected; replay resumes after it.
    pub stream_seq: u64,
    pub workers: Vec<WorkerSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub id: WorkerId,
    pub epoch: u64,
    pub last_seq: u64,
    pub needs_resync: bool,
    pub entries: Vec<(BlockHash, Option<BlockHash>)>,
}

impl Snapshot {
    pub fn encode(&self) -> Result<Vec<u8>, crate::protocol::EncodeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, crate::protocol::DecodeError> {
        crate::protocol::decode_versioned(bytes)
    }
}

#[cfg(test)]
mod tests;
