//! The memory bound: which entries go when the index holds more than `max_entries`, at a
//! cost proportional to what goes.

use std::collections::HashMap;

use super::holders::Spill;
use super::{BlockRec, IdBuild, Index, WorkerIdx, NO_PARENT};

/// Steps (log entries examined plus entries evicted) one [`Index`] call spends keeping its
/// memory bound, unless it overshoots by more: a few milliseconds.
pub const EVICT_WORK: usize = 4_096;

/// What one eviction pass over a worker did.
#[derive(Debug, Default)]
struct EvictPass {
    evicted: usize,
    /// A whole lap of the worker's log found no leaf.
    no_leaf: bool,
}

impl Index {
    /// Keeps the entries under `max_entries`: past it, evicts down to 99% of it, from the
    /// workers holding most, leaves first. One call does at most [`EVICT_WORK`] steps (log
    /// entries examined plus entries evicted), or four per entry over the bound if that is
    /// more, so one message never holds the fleet's thread, and routing, for more than a few
    /// milliseconds; the next calls (each apply, each [`Index::maintain`]) go on where it
    /// stopped.
    pub(super) fn enforce_bound(&mut self) {
        if self.entries <= self.config.max_entries {
            return;
        }
        let target = self.config.max_entries - self.config.max_entries / 100;
        // More work when the index overshoots further (a long scan for leaves while messages
        // keep arriving): the overshoot then stays within a few messages.
        let over = self.entries - self.config.max_entries;
        let mut work = EVICT_WORK.max(over.saturating_mul(4));
        while self.entries > target && work > 0 {
            let Some((wi, _)) = self
                .workers
                .iter()
                .enumerate()
                .filter(|(_, ws)| ws.blocks.live() > 0)
                .max_by_key(|(_, ws)| ws.blocks.live())
            else {
                return;
            };
            let want = self.entries - target;
            let pass = self.evict_leaves(wi, want, &mut work);
            if pass.no_leaf && pass.evicted == 0 {
                // A whole lap of the log found no leaf: only possible with stale child
                // counts. Take any blocks rather than loop forever.
                let w = WorkerIdx::new(wi as u32).expect("existing slot");
                let take = want.min(work);
                let any: Vec<u64> = self.worker_block_iter(w).map(|b| b.0).take(take).collect();
                work = work.saturating_sub(take.max(1));
                let mut evicted = 0;
                for b in any {
                    if self.remove_entry(w, b, false) {
                        self.workers[wi].evicted += 1;
                        self.evictions += 1;
                        evicted += 1;
                    }
                }
                if evicted == 0 {
                    return;
                }
            }
        }
    }

    /// Evicts up to `want` of worker `wi`'s blocks, leaves first, spending at most `work`
    /// steps. After each leaf it climbs to the parent, which is usually a leaf now, so a chain
    /// goes suffix by suffix; a climb cut short by `want` or `work` resumes at the next call,
    /// and the scan for leaves resumes where the last one stopped. Over a worker's whole log
    /// the cost is one lap of scanning plus one step per evicted entry (it used to be one
    /// rescan of the log per evicted block: minutes for a 100k-block chain).
    fn evict_leaves(&mut self, wi: usize, want: usize, work: &mut usize) -> EvictPass {
        let slot = wi as u16;
        let w = WorkerIdx::new(wi as u32).expect("existing slot");
        let is_leaf = |blocks: &HashMap<u64, BlockRec, IdBuild>, spill: &Spill, b: u64| {
            blocks
                .get(&b)
                .and_then(|r| r.holders.get(spill, slot))
                .is_some_and(|h| h.children == 0)
        };
        let mut pass = EvictPass::default();
        // Log entries examined since the last leaf: a whole lap of them means there is none.
        let mut fruitless = 0usize;
        while pass.evicted < want && *work > 0 {
            let resume = self.workers[wi]
                .evict_climb
                .take()
                .filter(|&b| is_leaf(&self.blocks, &self.spill, b));
            let leaf = match resume {
                Some(b) => b,
                None => {
                    let ws = &mut self.workers[wi];
                    let len = ws.blocks.raw().len();
                    if len == 0 || fruitless >= len {
                        pass.no_leaf = true;
                        return pass;
                    }
                    let pos = if ws.evict_cursor < len {
                        ws.evict_cursor
                    } else {
                        0
                    };
                    let b = ws.blocks.raw()[pos];
                    ws.evict_cursor = pos + 1;
                    self.evict_scanned += 1;
                    *work -= 1;
                    fruitless += 1;
                    if !is_leaf(&self.blocks, &self.spill, b) {
                        continue;
                    }
                    fruitless = 0;
                    b
                }
            };
            let mut x = leaf;
            loop {
                if pass.evicted >= want || *work == 0 {
                    self.workers[wi].evict_climb = Some(x);
                    break;
                }
                let parent = self.blocks.get(&x).map_or(NO_PARENT, |r| r.parent);
                if !self.remove_entry(w, x, false) {
                    break;
                }
                self.workers[wi].evicted += 1;
                self.evictions += 1;
                pass.evicted += 1;
                *work -= 1;
                if parent == NO_PARENT || !is_leaf(&self.blocks, &self.spill, parent) {
                    break;
                }
                x = parent;
            }
        }
        pass
    }
}
