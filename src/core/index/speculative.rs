//! Speculative entries: "we just routed this prefix to w, so w will hold it shortly".
//!
//! Between routing a request and the worker's `Stored` event (tens to hundreds of
//! milliseconds), a burst of requests with the same new prefix would otherwise scatter over
//! the fleet. The router records its guess here, in a moka cache whose entries expire after a
//! TTL; the policy takes `max(confirmed overlap, speculative overlap)` per worker, so a
//! confirmed event supersedes a guess and an unconfirmed guess simply lapses. The ingest path
//! never touches this cache, which keeps event application at full speed.
//!
//! To keep inserts cheap for long prompts, a guess records the hash at every `stride`-th block
//! and at the last block (a chained hash names its whole prefix), so a look-up probes those
//! positions and its answer is exact at recorded positions and rounded down between them.

use std::time::Duration;

use moka::sync::Cache;

use super::{IdBuild, WorkerIdx};
use crate::protocol::BlockHash;

/// Workers guessed to hold one prefix position; rarely more than one or two.
#[derive(Clone, Debug, Default)]
struct WorkerList(Vec<WorkerIdx>);

/// The speculative store. Cheap to clone (moka caches are shared handles).
#[derive(Clone, Debug)]
pub struct Speculation {
    cache: Cache<u64, WorkerList, IdBuild>,
    stride: usize,
}

impl Speculation {
    /// `capacity` bounds the number of recorded prefix positions; `ttl` is how long an
    /// unconfirmed guess lives.
    pub fn new(capacity: u64, ttl: Duration, stride: usize) -> Self {
        Speculation {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build_with_hasher(IdBuild::default()),
            stride: stride.max(1),
        }
    }

    fn positions(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let stride = self.stride;
        (0..n).filter(move |i| (i + 1) % stride == 0 || i + 1 == n)
    }

    /// Records that `hashes` (a request's blocks) were routed to `w`.
    pub fn record(&self, w: WorkerIdx, hashes: &[BlockHash]) {
        for i in self.positions(hashes.len()) {
            let key = hashes[i].0;
            let mut list = self.cache.get(&key).unwrap_or_default();
            if !list.0.contains(&w) {
                list.0.push(w);
                self.cache.insert(key, list);
            }
        }
    }

    /// Adds each worker's speculative overlap with `hashes` to `out` as `(worker, blocks)`,
    /// longest recorded position per worker; a worker appears at most once.
    pub fn overlaps(&self, hashes: &[BlockHash], out: &mut Vec<(WorkerIdx, u32)>) {
        out.clear();
        // Longest first, so the first time a worker shows up is its best position.
        let positions: Vec<usize> = self.positions(hashes.len()).collect();
        for &i in positions.iter().rev() {
            if let Some(list) = self.cache.get(&hashes[i].0) {
                for &w in &list.0 {
                    if !out.iter().any(|(x, _)| *x == w) {
                        out.push((w, (i + 1) as u32));
                    }
                }
            }
        }
    }

    /// Forgets every guess about `w` (it left the fleet or was marked down).
    pub fn forget_worker(&self, w: WorkerIdx) {
        // Rare; a full pass is fine.
        for (k, mut list) in self.cache.iter() {
            if list.0.contains(&w) {
                list.0.retain(|x| *x != w);
                if list.0.is_empty() {
                    self.cache.invalidate(&*k);
                } else {
                    self.cache.insert(*k, list);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: u64) -> Vec<BlockHash> {
        (1..=n).map(|i| BlockHash(i * 1000)).collect()
    }

    #[test]
    fn records_and_reports_longest_position() {
        let spec = Speculation::new(1000, Duration::from_secs(60), 4);
        let w = WorkerIdx::new(3).unwrap();
        let h = hashes(10);
        spec.record(w, &h);
        let mut out = Vec::new();
        spec.overlaps(&h, &mut out);
        assert_eq!(out, vec![(w, 10)]);
        // A longer request sharing the first 9 blocks: rounded down to the stride position 8.
        let mut longer = h[..9].to_vec();
        longer.push(BlockHash(7));
        longer.push(BlockHash(8));
        spec.overlaps(&longer, &mut out);
        assert_eq!(out, vec![(w, 8)]);
        spec.forget_worker(w);
        spec.overlaps(&h, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn guesses_expire() {
        let spec = Speculation::new(1000, Duration::from_millis(1), 1);
        let w = WorkerIdx::new(0).unwrap();
        let h = hashes(3);
        spec.record(w, &h);
        // moka's clock is monotonic wall time; wait past the TTL for the real expiry path.
        std::thread::sleep(Duration::from_millis(20));
        let mut out = Vec::new();
        spec.overlaps(&h, &mut out);
        assert!(out.is_empty(), "expired guesses must not count: {out:?}");
    }
}
