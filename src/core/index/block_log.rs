//! A worker's reverse index as an append-only log.
//!
//! Inserting a block appends its hash (a sequential write, no hashing, no cache miss);
//! removing one only decrements a counter. The forward map stays the truth: a log entry counts
//! only while the forward map says this worker holds that block. Stale entries (removed blocks)
//! and duplicates (a block removed and stored again before a compaction) are dropped by
//! [`BlockLog::compact`], which the index runs once the appends since the last compaction
//! exceed the live count, so its cost is amortized O(1) per append and the log stays within
//! about twice the live count. This halves the random memory accesses per block event against
//! a per-worker hash set, and uses 8 bytes per live entry plus slack instead of ~15.

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct BlockLog {
    log: Vec<u64>,
    live: usize,
    appended: usize,
}

impl BlockLog {
    /// Live entries (what the forward map says this worker holds).
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    pub(crate) fn push(&mut self, b: u64) {
        self.log.push(b);
        self.live += 1;
        self.appended += 1;
    }

    pub(crate) fn note_removed(&mut self) {
        self.live -= 1;
    }

    /// True when enough was appended since the last compaction to pay for one.
    pub(crate) fn wants_compaction(&self) -> bool {
        self.appended > self.live.max(64)
    }

    /// Raw entries: a superset of the live blocks, possibly with duplicates.
    pub(crate) fn raw(&self) -> &[u64] {
        &self.log
    }

    /// Takes the raw log and forgets everything.
    pub(crate) fn take(&mut self) -> Vec<u64> {
        self.live = 0;
        self.appended = 0;
        std::mem::take(&mut self.log)
    }

    /// Keeps exactly the live entries, once each. `held(b)` asks the forward map.
    pub(crate) fn compact(&mut self, held: impl Fn(u64) -> bool) {
        self.log.retain(|&b| held(b));
        if self.log.len() > self.live {
            // Duplicates are rare (a block re-stored within one window): only then sort.
            self.log.sort_unstable();
            self.log.dedup();
        }
        debug_assert_eq!(self.log.len(), self.live);
        self.appended = 0;
        if self.log.capacity() > 4 * self.log.len().max(16) {
            self.log.shrink_to(2 * self.log.len());
        }
    }

    pub(crate) fn capacity_bytes(&self) -> usize {
        self.log.capacity() * std::mem::size_of::<u64>()
    }
}
