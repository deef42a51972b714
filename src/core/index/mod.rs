//! The global cache map: which workers hold which block hashes.
//!
//! Plain data, no I/O and no locks: one owner (the router's ingest task, the simulator) applies
//! events through `&mut self`, and readers get a consistent view through `&self`.
//!
//! Layout:
//! - `blocks`: block hash → `BlockRec { parent, holders }`, an identity-hashed flat map (the
//!   keys are already uniform xxh3 values). `holders` packs the set of workers and, per worker,
//!   how many children of this block that worker holds (see [`holders`]).
//! - `workers[w].blocks`: the reverse index, so clearing, purging or replacing a worker costs
//!   time proportional to that worker's blocks only. It is an append-only log checked against
//!   the forward map ([`block_log`]), so a block event costs one random memory access, not two.
//!
//! **Longest prefix.** A worker's overlap with a request is the number of leading request
//! blocks it holds. Engines evict leaves first, so a worker that holds block `k` almost always
//! holds `k-1`; then overlaps are monotone and a galloping search finds each worker's boundary
//! in O(log n) probes instead of n. The index *knows* when that shortcut is exact: per worker
//! it keeps `orphans`, the number of held blocks whose parent it does not hold (maintained from
//! the parent links and per-holder child counts). A worker with no orphans is prefix-closed and
//! the galloping answer is exact; a worker with orphans (or whose counts went stale) is walked
//! linearly. The property test at the bottom checks both paths against a naive model.
//!
//! **Memory bound.** `max_entries` caps resident (worker, block) entries. Past it, the index
//! evicts leaf blocks (never an interior block, so resident prefixes stay whole) of the worker
//! with the most entries, in batches of 1%; each is counted in [`IndexStats::evictions`].
//! Evicted blocks stay in the worker's digest accounting, so anti-entropy compares what the
//! worker *reported*, not what we chose to keep.

mod block_log;
mod block_set;
mod digest;
mod evict;
mod holders;
mod speculative;

pub use block_set::BlockSet;
pub use digest::{digest_term, Digest};
pub use holders::{WorkerIdx, MAX_WORKER_SLOT};
pub use speculative::Speculation;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::protocol::{BlockHash, Body};
use block_log::BlockLog;
pub use evict::EVICT_WORK;
use holders::{Holder, Holders, Spill};

/// Parent value meaning "a chain root" (a real hash of 0 only loses closure precision).
const NO_PARENT: u64 = 0;

/// Hasher for keys that already are uniform 64-bit hashes: pass them through.
#[derive(Default, Clone, Copy, Debug)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys; fold bytes in so it stays a valid hasher.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdBuild = BuildHasherDefault<IdentityHasher>;

#[derive(Clone, Copy, Debug)]
struct BlockRec {
    parent: u64,
    holders: Holders,
}

#[derive(Debug, Default)]
struct WorkerState {
    blocks: BlockLog,
    /// Held blocks whose parent this worker does not hold (exact unless `stale`).
    orphans: u32,
    /// For each parent this worker lacks, how many of its held children are orphans. Sized by
    /// the orphans (rare with leaf-first eviction), and what makes re-inserting a parent exact.
    orphan_parents: HashMap<u64, u32, IdBuild>,
    /// Child counts or `orphans` may be off; cleared by [`Index::maintain`].
    stale: bool,
    /// What the worker reported (stored minus removed), for digests.
    digest: Digest,
    /// Blocks dropped by the memory bound but still in `digest`.
    evicted: u64,
    /// Where the next eviction scan of `blocks` resumes (reset when the log is compacted).
    evict_cursor: usize,
    /// The block an eviction climb stopped at (a leaf then), where the next one resumes.
    evict_climb: Option<u64>,
}

impl WorkerState {
    /// Galloping is exact for this worker.
    fn closed(&self) -> bool {
        self.orphans == 0 && !self.stale
    }
}

/// Index limits.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// Most resident (worker, block) entries; `usize::MAX` for no bound.
    pub max_entries: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            max_entries: usize::MAX,
        }
    }
}

/// Counters the index keeps about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Resident (worker, block) entries.
    pub entries: usize,
    /// Distinct resident block hashes.
    pub distinct_blocks: usize,
    /// Entries dropped by the memory bound.
    pub evictions: u64,
    /// Workers whose closure counts were rebuilt by [`Index::maintain`].
    pub recounts: u64,
    /// Workers holding a block without its parent (or with stale counts): their look-ups walk
    /// block by block instead of galloping.
    pub unclosed_workers: usize,
    /// Log entries the memory bound's eviction examined (its cost: proportional to what it
    /// evicted, not to the square of a worker's blocks).
    pub evict_scanned: u64,
}

/// One worker's overlap with a request: it holds the first `blocks` request blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub worker: WorkerIdx,
    pub blocks: u32,
}

/// Reusable buffers for [`Index::longest_prefix`], so a lookup allocates nothing once warm.
#[derive(Debug, Default)]
pub struct LookupScratch {
    tmp: Vec<u16>,
    exact: Vec<u16>,
    unsure: Vec<u16>,
    out: Vec<Overlap>,
}

/// The cache map. See the module docs.
#[derive(Debug, Default)]
pub struct Index {
    blocks: HashMap<u64, BlockRec, IdBuild>,
    spill: Spill,
    workers: Vec<WorkerState>,
    entries: usize,
    config: IndexConfig,
    evictions: u64,
    recounts: u64,
    evict_scanned: u64,
}

impl Index {
    pub fn new(config: IndexConfig) -> Self {
        Index {
            config,
            ..Index::default()
        }
    }

    /// Pre-sizes the block map for `distinct_blocks` hashes.
    pub fn with_capacity(config: IndexConfig, distinct_blocks: usize) -> Self {
        let mut idx = Index::new(config);
        idx.blocks.reserve(distinct_blocks);
        idx
    }

    fn worker_mut(&mut self, w: WorkerIdx) -> &mut WorkerState {
        if self.workers.len() <= w.get() {
            self.workers.resize_with(w.get() + 1, WorkerState::default);
        }
        &mut self.workers[w.get()]
    }

    fn worker(&self, w: WorkerIdx) -> Option<&WorkerState> {
        self.workers.get(w.get())
    }

    /// Applies a cache event from `w` (the one entry point the live ingest and the simulator
    /// share). `Digest` and `Load` say nothing about residency and are ignored here.
    pub fn apply(&mut self, w: WorkerIdx, body: &Body) {
        match body {
            Body::Stored { blocks, parent } => self.apply_stored(w, *parent, blocks),
            Body::Removed { blocks } => self.apply_removed(w, blocks),
            Body::Cleared => self.apply_cleared(w),
            Body::Digest { .. } | Body::Load(_) => {}
        }
    }

    /// `w` now holds the chain `blocks` (the first one's parent is `parent`).
    pub fn apply_stored(&mut self, w: WorkerIdx, parent: Option<BlockHash>, blocks: &[BlockHash]) {
        self.worker_mut(w);
        let mut prev = parent.map_or(NO_PARENT, |p| p.0);
        for b in blocks {
            self.insert_entry(w, b.0, prev, true);
            prev = b.0;
        }
        self.enforce_bound();
    }

    /// `w` no longer holds `blocks`.
    pub fn apply_removed(&mut self, w: WorkerIdx, blocks: &[BlockHash]) {
        self.worker_mut(w);
        for b in blocks {
            if !self.remove_entry(w, b.0, true) {
                let ws = &mut self.workers[w.get()];
                // Not resident: if the memory bound dropped it, it is still in the digest.
                if ws.evicted > 0 {
                    ws.evicted -= 1;
                    ws.digest.remove(b.0);
                }
            }
        }
    }

    /// `w` dropped its whole cache.
    pub fn apply_cleared(&mut self, w: WorkerIdx) {
        self.worker_mut(w);
        self.drop_worker_blocks(w);
    }

    /// Forgets `w` entirely (it left the fleet); its slot may be reused.
    pub fn purge_worker(&mut self, w: WorkerIdx) {
        if w.get() < self.workers.len() {
            self.drop_worker_blocks(w);
            self.workers[w.get()] = WorkerState::default();
        }
    }

    /// Replaces `w`'s whole view (a resync) with `set`, pairs of (block, parent). Atomic: the
    /// index is never seen half-replaced because the caller holds `&mut self`.
    pub fn replace_worker(&mut self, w: WorkerIdx, set: &[(BlockHash, Option<BlockHash>)]) {
        self.worker_mut(w);
        self.drop_worker_blocks(w);
        for (b, p) in set {
            self.insert_entry(w, b.0, p.map_or(NO_PARENT, |p| p.0), false);
        }
        self.recount(w);
        self.enforce_bound();
    }

    fn drop_worker_blocks(&mut self, w: WorkerIdx) {
        let ws = &mut self.workers[w.get()];
        self.entries -= ws.blocks.live();
        let blocks = ws.blocks.take();
        ws.orphans = 0;
        ws.orphan_parents = HashMap::default();
        ws.stale = false;
        ws.digest = Digest::default();
        ws.evicted = 0;
        let slot = w.get() as u16;
        for b in blocks {
            if let Some(rec) = self.blocks.get_mut(&b) {
                rec.holders.remove(&mut self.spill, slot);
                if rec.holders.is_empty() {
                    self.blocks.remove(&b);
                }
            }
        }
    }

    /// Inserts one entry. With `track`, keeps parent child-counts and orphans exact; without,
    /// the caller recounts afterwards.
    fn insert_entry(&mut self, w: WorkerIdx, b: u64, parent: u64, track: bool) {
        let slot = w.get() as u16;
        let rec = self.blocks.entry(b).or_insert(BlockRec {
            parent,
            holders: Holders::EMPTY,
        });
        if rec.holders.get(&self.spill, slot).is_some() {
            return; // duplicate
        }
        rec.holders.insert(
            &mut self.spill,
            Holder {
                worker: slot,
                children: 0,
            },
        );
        // First writer wins: a chained hash determines its parent, so a later event naming
        // another parent is inconsistent and ignored for closure tracking.
        let parent = rec.parent;
        self.entries += 1;
        let ws = &mut self.workers[w.get()];
        ws.blocks.push(b);
        ws.digest.add(b);
        if ws.blocks.wants_compaction() {
            self.compact_log(w);
        }
        let ws = &mut self.workers[w.get()];
        if !track {
            return;
        }
        // Children of `b` that w already holds stop being orphans.
        if let Some(adopted) = ws.orphan_parents.remove(&b) {
            ws.orphans -= adopted;
            let children = u16::try_from(adopted).unwrap_or_else(|_| {
                ws.stale = true;
                u16::MAX
            });
            if let Some(rec) = self.blocks.get_mut(&b) {
                rec.holders
                    .update(&mut self.spill, slot, |h| h.children = children);
            }
        }
        if parent != NO_PARENT {
            let held_parent = self.bump_children(parent, slot, true);
            if !held_parent {
                let ws = &mut self.workers[w.get()];
                ws.orphans += 1;
                *ws.orphan_parents.entry(parent).or_insert(0) += 1;
            }
        }
    }

    /// Adds or takes one from `slot`'s child count on `parent`; false if `slot` does not hold
    /// `parent`. Marks the worker stale when a count would leave its range.
    fn bump_children(&mut self, parent: u64, slot: u16, up: bool) -> bool {
        let mut out_of_range = false;
        let held = self.blocks.get_mut(&parent).is_some_and(|p| {
            p.holders.update(&mut self.spill, slot, |h| {
                let next = if up {
                    h.children.checked_add(1)
                } else {
                    h.children.checked_sub(1)
                };
                match next {
                    Some(c) => h.children = c,
                    None => out_of_range = true,
                }
            })
        });
        if out_of_range {
            self.workers[slot as usize].stale = true;
        }
        held
    }

    /// Removes one entry; returns false if `w` did not hold `b`.
    fn remove_entry(&mut self, w: WorkerIdx, b: u64, report: bool) -> bool {
        let slot = w.get() as u16;
        let Some(rec) = self.blocks.get_mut(&b) else {
            return false;
        };
        let Some(removed) = rec.holders.remove(&mut self.spill, slot) else {
            return false;
        };
        let parent = rec.parent;
        if rec.holders.is_empty() {
            self.blocks.remove(&b);
        }
        self.entries -= 1;
        let ws = &mut self.workers[w.get()];
        ws.blocks.note_removed();
        if report {
            ws.digest.remove(b);
        }
        if removed.children == u16::MAX {
            ws.stale = true; // saturated count: the real number is unknown
        }
        // Its held children lose their parent.
        if removed.children > 0 {
            ws.orphans += u32::from(removed.children);
            *ws.orphan_parents.entry(b).or_insert(0) += u32::from(removed.children);
        }
        if parent != NO_PARENT && !self.bump_children(parent, slot, false) {
            // `b` itself was an orphan.
            let ws = &mut self.workers[w.get()];
            match ws.orphan_parents.get_mut(&parent) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    ws.orphan_parents.remove(&parent);
                }
                None => ws.stale = true,
            }
            match ws.orphans.checked_sub(1) {
                Some(n) => ws.orphans = n,
                None => ws.stale = true,
            }
        }
        true
    }

    /// Drops `w`'s stale and duplicate log entries.
    fn compact_log(&mut self, w: WorkerIdx) {
        let slot = w.get() as u16;
        let (blocks, spill) = (&self.blocks, &self.spill);
        let ws = &mut self.workers[w.get()];
        ws.blocks.compact(|b| slot_holds(blocks, spill, b, slot));
        ws.evict_cursor = 0;
    }

    /// Rebuilds `w`'s child counts and orphan count from scratch: O(w's blocks).
    fn recount(&mut self, w: WorkerIdx) {
        let slot = w.get() as u16;
        self.compact_log(w);
        let ws = &mut self.workers[w.get()];
        let held = ws.blocks.raw().to_vec();
        for b in &held {
            if let Some(rec) = self.blocks.get_mut(b) {
                rec.holders
                    .update(&mut self.spill, slot, |h| h.children = 0);
            }
        }
        let mut orphans = 0u32;
        let mut orphan_parents = HashMap::default();
        for b in &held {
            let parent = self.blocks.get(b).map_or(NO_PARENT, |r| r.parent);
            if parent == NO_PARENT {
                continue;
            }
            let held_parent = self.blocks.get_mut(&parent).is_some_and(|p| {
                p.holders.update(&mut self.spill, slot, |h| {
                    h.children = h.children.saturating_add(1)
                })
            });
            if !held_parent {
                orphans += 1;
                *orphan_parents.entry(parent).or_insert(0) += 1;
            }
        }
        let ws = &mut self.workers[w.get()];
        ws.orphans = orphans;
        ws.orphan_parents = orphan_parents;
        ws.stale = false;
    }

    /// Rebuilds the closure counts of workers marked stale, so their look-ups can gallop
    /// again. Call it off the hot path (after a batch of events); returns how many it rebuilt.
    pub fn maintain(&mut self) -> usize {
        let stale: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].stale)
            .collect();
        for &i in &stale {
            self.recount(WorkerIdx::new(i as u32).expect("existing slot"));
        }
        self.recounts += stale.len() as u64;
        // A batch that pushed past the memory bound continues evicting here.
        self.enforce_bound();
        stale.len()
    }

    /// Resident blocks of `w`.
    pub fn worker_blocks(&self, w: WorkerIdx) -> usize {
        self.worker(w).map_or(0, |ws| ws.blocks.live())
    }

    /// `w`'s resident blocks, each once (arbitrary order). Off the hot path: it filters the
    /// worker's log against the forward map.
    pub fn worker_block_iter(&self, w: WorkerIdx) -> impl Iterator<Item = BlockHash> + '_ {
        let slot = w.get() as u16;
        let mut v: Vec<u64> = self.worker(w).map_or_else(Vec::new, |ws| {
            ws.blocks
                .raw()
                .iter()
                .copied()
                .filter(|&b| slot_holds(&self.blocks, &self.spill, b, slot))
                .collect()
        });
        if v.len() > self.worker_blocks(w) {
            v.sort_unstable();
            v.dedup();
        }
        v.into_iter().map(BlockHash)
    }

    /// `w`'s resident blocks with their parents (what a snapshot stores).
    pub fn worker_entries(&self, w: WorkerIdx) -> Vec<(BlockHash, Option<BlockHash>)> {
        self.worker_block_iter(w)
            .map(|b| {
                let parent = self.blocks.get(&b.0).map_or(NO_PARENT, |r| r.parent);
                (b, (parent != NO_PARENT).then_some(BlockHash(parent)))
            })
            .collect()
    }

    /// The digest of what `w` reported (what its reporter's `Digest` must equal).
    pub fn worker_digest(&self, w: WorkerIdx) -> Digest {
        self.worker(w).map_or(Digest::default(), |ws| ws.digest)
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            entries: self.entries,
            distinct_blocks: self.blocks.len(),
            evictions: self.evictions,
            recounts: self.recounts,
            evict_scanned: self.evict_scanned,
            unclosed_workers: self.workers.iter().filter(|w| !w.closed()).count(),
        }
    }

    /// Heap bytes held by the index's tables (capacity-based estimate: hashbrown buckets plus
    /// one control byte each, the spill arena and the reverse sets).
    pub fn heap_bytes(&self) -> usize {
        let bucket = |cap: usize, elem: usize| {
            if cap == 0 {
                0
            } else {
                // hashbrown keeps cap <= 7/8 of a power-of-two bucket count.
                let buckets = (cap * 8 / 7).next_power_of_two();
                buckets * (elem + 1)
            }
        };
        bucket(
            self.blocks.capacity(),
            std::mem::size_of::<(u64, BlockRec)>(),
        ) + self.spill.bytes()
            + self
                .workers
                .iter()
                .map(|ws| ws.blocks.capacity_bytes())
                .sum::<usize>()
            + self.workers.capacity() * std::mem::size_of::<WorkerState>()
    }

    /// Per-worker longest held prefix of `hashes`, for every worker holding at least the first
    /// block, in worker order. Allocation-free once `scratch` is warm.
    pub fn longest_prefix<'s>(
        &self,
        hashes: &[BlockHash],
        scratch: &'s mut LookupScratch,
    ) -> &'s [Overlap] {
        scratch.out.clear();
        scratch.exact.clear();
        scratch.unsure.clear();
        let Some(first) = hashes.first().and_then(|h| self.blocks.get(&h.0)) else {
            return &scratch.out;
        };
        first.holders.for_each(&self.spill, |h| {
            if self.workers[h.worker as usize].closed() {
                scratch.exact.push(h.worker);
            } else {
                scratch.unsure.push(h.worker);
            }
        });
        // Sets stay sorted by worker from here on (partitions are stable), which is what lets
        // each probe intersect them with the sorted holder lists by galloping.
        // (Spilled holder lists are already sorted; only an inline pair may need a swap.)
        if !scratch.exact.is_sorted() {
            scratch.exact.sort_unstable();
        }
        if !scratch.unsure.is_sorted() {
            scratch.unsure.sort_unstable();
        }
        let n = hashes.len();
        // Exact workers: gallop 1, 2, 4, ... then bisect where each worker drops out.
        let LookupScratch {
            tmp,
            exact,
            unsure,
            out,
        } = scratch;
        let mut lo = 0usize;
        let mut step = 1usize;
        let mut live: &mut [u16] = exact.as_mut_slice();
        while !live.is_empty() {
            let probe = lo + step;
            if probe >= n {
                self.bisect(hashes, lo, n, live, tmp, out);
                break;
            }
            let split = self.partition_by_holding(hashes[probe], live, tmp);
            let (gone, kept) = live.split_at_mut(split);
            self.bisect(hashes, lo, probe, gone, tmp, out);
            live = kept;
            lo = probe;
            step *= 2;
        }
        // Unsure workers: walk block by block.
        let mut live_len = unsure.len();
        let mut i = 1;
        while live_len > 0 {
            let split = if i < n {
                self.partition_by_holding(hashes[i], &mut unsure[..live_len], tmp)
            } else {
                live_len
            };
            for &w in &unsure[..split] {
                out.push(Overlap {
                    worker: WorkerIdx::new(w.into()).unwrap(),
                    blocks: i as u32,
                });
            }
            unsure.copy_within(split..live_len, 0);
            live_len -= split;
            i += 1;
        }
        out.sort_unstable_by_key(|o| o.worker);
        out
    }

    /// Stably reorders the sorted `set` so workers *not* holding `b` come first (both halves
    /// stay sorted); returns how many those are. Against a spilled (sorted) holder list this
    /// is a galloping merge: O(s log(h/s)) for s candidates and h holders, so a few candidates
    /// deep in a bisection never pay for a block held by a thousand workers.
    fn partition_by_holding(&self, b: BlockHash, set: &mut [u16], tmp: &mut Vec<u16>) -> usize {
        let Some(rec) = self.blocks.get(&b.0) else {
            return set.len();
        };
        let holders = rec.holders;
        tmp.clear();
        let mut split = 0;
        match holders.sorted(&self.spill) {
            None => {
                for i in 0..set.len() {
                    let w = set[i];
                    if holders.get(&self.spill, w).is_some() {
                        tmp.push(w);
                    } else {
                        set[split] = w;
                        split += 1;
                    }
                }
            }
            Some(list) => {
                let mut pos = 0;
                for i in 0..set.len() {
                    let w = set[i];
                    // Nested sets (the usual case) advance in step; gallop only over gaps.
                    if list.get(pos).is_some_and(|h| h.worker < w) {
                        pos += gallop(&list[pos..], w);
                    }
                    if list.get(pos).is_some_and(|h| h.worker == w) {
                        pos += 1;
                        tmp.push(w);
                    } else {
                        set[split] = w;
                        split += 1;
                    }
                }
            }
        }
        set[split..].copy_from_slice(tmp);
        split
    }

    /// Every worker in `set` holds `hashes[lo]` and none holds `hashes[hi]` (or `hi == n`);
    /// under prefix closure, finds each one's last held block by bisection.
    fn bisect(
        &self,
        hashes: &[BlockHash],
        lo: usize,
        hi: usize,
        set: &mut [u16],
        tmp: &mut Vec<u16>,
        out: &mut Vec<Overlap>,
    ) {
        if set.is_empty() {
            return;
        }
        if hi - lo <= 1 {
            for &w in set.iter() {
                out.push(Overlap {
                    worker: WorkerIdx::new(w.into()).unwrap(),
                    blocks: (lo + 1) as u32,
                });
            }
            return;
        }
        let mid = lo + (hi - lo) / 2;
        let split = self.partition_by_holding(hashes[mid], set, tmp);
        let (gone, kept) = set.split_at_mut(split);
        self.bisect(hashes, lo, mid, gone, tmp, out);
        self.bisect(hashes, mid, hi, kept, tmp, out);
    }
}

/// Does worker `slot` hold block `b` according to the forward map? A free function so it can
/// be used while another field of the index is borrowed mutably.
#[inline]
fn slot_holds(blocks: &HashMap<u64, BlockRec, IdBuild>, spill: &Spill, b: u64, slot: u16) -> bool {
    blocks
        .get(&b)
        .is_some_and(|r| r.holders.get(spill, slot).is_some())
}

/// Index of the first holder with `worker >= w` in the sorted `list`, found by exponential
/// then binary search from the front (cheap when the answer is near the front).
#[inline]
fn gallop(list: &[holders::Holder], w: u16) -> usize {
    let mut hi = 1;
    while hi < list.len() && list[hi - 1].worker < w {
        hi *= 2;
    }
    let lo = hi / 2;
    let hi = hi.min(list.len());
    lo + list[lo..hi].partition_point(|h| h.worker < w)
}

#[cfg(test)]
mod tests;
