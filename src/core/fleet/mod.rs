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
    },
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
    /// Most messages buffered per worker during a resync before the buffer is dropped and the
    /// resync restarted.
    pub max_buffered: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            index: IndexConfig::default(),
            max_buffered: 100_000,
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
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
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

    fn entry_or_insert(&mut self, id: &WorkerId) -> Option<&mut WorkerEntry> {
        if !self.workers.contains_key(id) {
            let idx = match self.free_slots.pop() {
                Some(i) => i,
                None => {
                    let next = self.slot_owner.len();
                    if next > usize::from(MAX_WORKER_SLOT) {
                        return None;
                    }
                    self.slot_owner.push(None);
                    WorkerIdx::new(next as u32).expect("checked above")
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
                },
            );
        }
        self.workers.get_mut(id)
    }

    fn start_resync(&mut self, id: &WorkerId, cause: ResyncCause) -> ResyncNeeded {
        *self
            .counters
            .resyncs_started
            .entry(cause.as_str())
            .or_insert(0) += 1;
        if let Some(e) = self.workers.get_mut(id) {
            e.sync = SyncState::Resyncing {
                buffered: Vec::new(),
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
        let max_buffered = self.config.max_buffered;
        let Some(entry) = self.entry_or_insert(&env.worker) else {
            self.counters.no_slot += 1;
            return None;
        };
        if let SyncState::Resyncing { buffered } = &mut entry.sync {
            if buffered.len() >= max_buffered {
                let dropped = buffered.len() as u64 + 1;
                let id = env.worker.clone();
                self.counters.buffer_dropped += dropped;
                return Some(self.start_resync(&id, ResyncCause::BufferOverflow));
            }
            buffered.push(env);
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
            sync: SyncState::Resyncing { buffered },
            ..
        }) = self.workers.get_mut(id)
        {
            buffered.push(env);
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
        let SyncState::Resyncing { buffered } = std::mem::take(&mut entry.sync) else {
            return None;
        };
        entry.epoch = epoch;
        entry.last_seq = seq;
        let idx = entry.idx;
        self.index.replace_worker(idx, entries);
        self.index.maintain();
        self.counters.resyncs_completed += 1;
        let mut need = None;
        for env in buffered {
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
        match self.entry_or_insert(&id) {
            Some(e) => e.info = Some(info),
            None => self.counters.no_slot += 1,
        }
    }

    /// A worker left (registry entry deleted or expired): forget it entirely. Returns its old
    /// index slot so callers can drop other per-slot state (speculation).
    pub fn deregister(&mut self, id: &WorkerId) -> Option<WorkerIdx> {
        let e = self.workers.remove(id)?;
        self.index.purge_worker(e.idx);
        self.slot_owner[e.idx.get()] = None;
        self.free_slots.push(e.idx);
        Some(e.idx)
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
            let Some(e) = fleet.entry_or_insert(&w.id) else {
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
