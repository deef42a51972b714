//! Index tests: targeted cases plus a property test against a naive model.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn w(i: u32) -> WorkerIdx {
    WorkerIdx::new(i).unwrap()
}

fn hs(v: &[u64]) -> Vec<BlockHash> {
    v.iter().map(|&x| BlockHash(x)).collect()
}

fn overlaps(idx: &Index, req: &[u64]) -> Vec<(u32, u32)> {
    let mut scratch = LookupScratch::default();
    idx.longest_prefix(&hs(req), &mut scratch)
        .iter()
        .map(|o| (o.worker.get() as u32, o.blocks))
        .collect()
}

#[test]
fn longest_prefix_per_worker() {
    let mut idx = Index::default();
    idx.apply_stored(w(0), None, &hs(&[1, 2, 3, 4]));
    idx.apply_stored(w(1), None, &hs(&[1, 2]));
    idx.apply_stored(w(2), None, &hs(&[9]));
    assert_eq!(overlaps(&idx, &[1, 2, 3, 4, 5]), vec![(0, 4), (1, 2)]);
    assert_eq!(overlaps(&idx, &[9, 1]), vec![(2, 1)]);
    assert_eq!(overlaps(&idx, &[7, 1, 2]), vec![]);
    assert_eq!(overlaps(&idx, &[]), vec![]);
}

#[test]
fn interior_removal_is_exact() {
    // Worker 0 holds 1..=6, then loses block 3 but keeps 4..=6: its overlap must stop at 2,
    // even though it still holds the request's later blocks (galloping alone would say 6).
    let mut idx = Index::default();
    idx.apply_stored(w(0), None, &hs(&[1, 2, 3, 4, 5, 6]));
    idx.apply_removed(w(0), &hs(&[3]));
    assert_eq!(overlaps(&idx, &[1, 2, 3, 4, 5, 6]), vec![(0, 2)]);
    // Putting 3 back makes the worker closed again and the prefix whole.
    idx.apply_stored(w(0), Some(BlockHash(2)), &hs(&[3]));
    assert_eq!(idx.workers[0].orphans, 0);
    assert!(idx.workers[0].closed());
    assert_eq!(overlaps(&idx, &[1, 2, 3, 4, 5, 6]), vec![(0, 6)]);
}

#[test]
fn child_before_parent_is_adopted() {
    let mut idx = Index::default();
    idx.apply_stored(w(0), Some(BlockHash(1)), &hs(&[2, 3]));
    assert_eq!(idx.workers[0].orphans, 1);
    assert_eq!(overlaps(&idx, &[1, 2, 3]), vec![]);
    idx.apply_stored(w(0), None, &hs(&[1]));
    assert_eq!(idx.workers[0].orphans, 0);
    assert_eq!(overlaps(&idx, &[1, 2, 3]), vec![(0, 3)]);
    idx.apply_removed(w(0), &hs(&[2]));
    assert_eq!(overlaps(&idx, &[1, 2, 3]), vec![(0, 1)]);
}

#[test]
fn clear_purge_replace_touch_only_that_worker() {
    let mut idx = Index::default();
    idx.apply_stored(w(0), None, &hs(&[1, 2, 3]));
    idx.apply_stored(w(1), None, &hs(&[1, 2]));
    idx.apply_cleared(w(0));
    assert_eq!(overlaps(&idx, &[1, 2, 3]), vec![(1, 2)]);
    assert_eq!(idx.stats().entries, 2);
    idx.replace_worker(
        w(0),
        &[
            (BlockHash(1), None),
            (BlockHash(2), Some(BlockHash(1))),
            (BlockHash(3), Some(BlockHash(2))),
        ],
    );
    assert_eq!(overlaps(&idx, &[1, 2, 3]), vec![(0, 3), (1, 2)]);
    assert_eq!(idx.worker_digest(w(0)), Digest::of([1, 2, 3]));
    idx.purge_worker(w(1));
    assert_eq!(overlaps(&idx, &[1, 2, 3]), vec![(0, 3)]);
    assert_eq!(idx.stats().entries, 3);
    assert_eq!(idx.stats().distinct_blocks, 3);
}

#[test]
fn duplicates_do_not_double_count() {
    let mut idx = Index::default();
    idx.apply_stored(w(0), None, &hs(&[1, 2]));
    idx.apply_stored(w(0), None, &hs(&[1, 2]));
    assert_eq!(idx.stats().entries, 2);
    assert_eq!(idx.worker_digest(w(0)), Digest::of([1, 2]));
    idx.apply_removed(w(0), &hs(&[5]));
    assert_eq!(idx.worker_digest(w(0)), Digest::of([1, 2]));
}

#[test]
fn memory_bound_evicts_leaves_and_counts_them() {
    let mut idx = Index::new(IndexConfig { max_entries: 100 });
    // Worker 0: one long chain of 80; worker 1: 40 chains of one block each.
    let chain: Vec<u64> = (1..=80).collect();
    idx.apply_stored(w(0), None, &hs(&chain));
    for i in 0..40 {
        idx.apply_stored(w(1), None, &hs(&[10_000 + i]));
    }
    let stats = idx.stats();
    assert!(stats.entries <= 100, "bound holds: {stats:?}");
    assert!(stats.evictions >= 20, "evictions counted: {stats:?}");
    // The chain lost only its tail: what is left is still a whole prefix.
    let o = overlaps(&idx, &chain);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].1 as usize, idx.worker_blocks(w(0)));
    // The digest still describes what the worker reported.
    assert_eq!(idx.worker_digest(w(0)), Digest::of(chain.iter().copied()));
    // Removing an evicted block keeps the digest in step with the worker.
    idx.apply_removed(w(0), &hs(&[80]));
    assert_eq!(idx.worker_digest(w(0)), Digest::of(1..=79));
}

/// Two long chains against a bound they overflow twice over: eviction takes whole suffixes,
/// each call does a bounded amount of work, and the total is one lap of the log plus one step
/// per evicted entry (it used to rescan the worker's whole log for each block of a chain:
/// 10^10 steps for two 100k-block chains, minutes of a stalled fleet thread).
#[test]
fn evicting_long_chains_costs_time_proportional_to_what_is_evicted() {
    const N: u64 = 100_000;
    let mut idx = Index::new(IndexConfig {
        max_entries: N as usize,
    });
    let a: Vec<u64> = (1..=N).collect();
    let b: Vec<u64> = (N + 1..=2 * N).collect();
    let work = |idx: &Index| {
        let s = idx.stats();
        s.evict_scanned + s.evictions
    };
    // One call's budget: EVICT_WORK steps, or four per entry over the bound.
    let budget =
        |idx: &Index| (EVICT_WORK as u64).max(4 * (idx.stats().entries as u64).saturating_sub(N));
    idx.apply_stored(w(0), None, &hs(&a));
    // Stored in 1,000-block messages, as a reporter sends them: the overshoot stays within a
    // few messages while the scan looks for the first leaf.
    for part in b.chunks(1000) {
        let parent = (part[0] > N + 1).then(|| part[0] - 1);
        let before = (work(&idx), budget(&idx) + 4 * part.len() as u64);
        idx.apply_stored(w(0), parent.map(BlockHash), &hs(part));
        assert!(work(&idx) - before.0 <= before.1, "one call, one budget");
        assert!(
            idx.stats().entries <= N as usize + 8_000,
            "{:?}",
            idx.stats()
        );
    }
    let mut calls = 0;
    while idx.stats().entries > N as usize {
        let before = (work(&idx), budget(&idx));
        idx.maintain();
        assert!(work(&idx) - before.0 <= before.1, "one call, one budget");
        calls += 1;
        assert!(calls < 100, "the bound is never reached: {:?}", idx.stats());
    }
    let stats = idx.stats();
    assert!(stats.evictions >= N, "{stats:?}");
    assert!(
        stats.evict_scanned <= 2 * N + 1,
        "eviction examined {} log entries (the log holds {}) to evict {}",
        stats.evict_scanned,
        2 * N,
        stats.evictions
    );
    // What is left of each chain is one whole prefix of it: no holes.
    let resident: std::collections::HashSet<u64> =
        idx.worker_block_iter(w(0)).map(|x| x.0).collect();
    for chain in [&a, &b] {
        let prefix = overlaps(&idx, chain).first().map_or(0, |o| o.1 as usize);
        let held = chain.iter().filter(|x| resident.contains(x)).count();
        assert_eq!(
            prefix, held,
            "the chain lost a suffix, not blocks in between"
        );
    }
}

#[test]
fn many_holders_spill_and_galloping_splits_them() {
    let mut idx = Index::default();
    let chain: Vec<u64> = (1..=64).collect();
    for i in 0..200u32 {
        // Worker i holds the first (i % 64) + 1 blocks.
        let len = (i as usize % 64) + 1;
        idx.apply_stored(w(i), None, &hs(&chain[..len]));
    }
    let o = overlaps(&idx, &chain);
    assert_eq!(o.len(), 200);
    for (wi, blocks) in o {
        assert_eq!(blocks as usize, (wi as usize % 64) + 1);
    }
}

/// The naive model: per worker a set, overlap by a linear walk.
#[derive(Default)]
struct Naive {
    sets: BTreeMap<u32, BTreeSet<u64>>,
}

impl Naive {
    fn overlaps(&self, req: &[u64]) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        for (&wi, set) in &self.sets {
            let k = req.iter().take_while(|h| set.contains(h)).count();
            if k > 0 {
                v.push((wi, k as u32));
            }
        }
        v
    }
}

#[derive(Debug, Clone)]
enum Op {
    Store(u32, Option<u64>, Vec<u64>),
    Remove(u32, Vec<u64>),
    Clear(u32),
    Purge(u32),
    Replace(u32, Vec<(u64, Option<u64>)>),
    Maintain,
}

/// Blocks come from a small tree: block ids 1..=30, parent of b is b / 2 (0 = root), so
/// random ops produce chains, shared prefixes, interior removals and orphans.
fn parent_of(b: u64) -> Option<u64> {
    (b / 2 > 0).then_some(b / 2)
}

fn chain_to(b: u64) -> Vec<u64> {
    let mut v = vec![b];
    let mut x = b;
    while let Some(p) = parent_of(x) {
        v.push(p);
        x = p;
    }
    v.reverse();
    v
}

fn arb_op() -> impl Strategy<Value = Op> {
    let worker = 0u32..5;
    let block = 1u64..31;
    prop_oneof![
        6 => (worker.clone(), block.clone(), 0usize..4).prop_map(|(w, b, skip)| {
            // A suffix of b's chain, with its real parent (or None if it starts at the root).
            let chain = chain_to(b);
            let skip = skip.min(chain.len() - 1);
            let parent = (skip > 0).then(|| chain[skip - 1]);
            Op::Store(w, parent, chain[skip..].to_vec())
        }),
        4 => (worker.clone(), proptest::collection::vec(block.clone(), 1..4))
            .prop_map(|(w, b)| Op::Remove(w, b)),
        1 => worker.clone().prop_map(Op::Clear),
        1 => worker.clone().prop_map(Op::Purge),
        1 => (worker, proptest::collection::btree_set(block, 0..10)).prop_map(|(w, set)| {
            Op::Replace(w, set.into_iter().map(|b| (b, parent_of(b))).collect())
        }),
        1 => Just(Op::Maintain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_matches_naive_model(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let mut idx = Index::default();
        let mut naive = Naive::default();
        for op in ops {
            match op {
                Op::Store(wi, parent, blocks) => {
                    idx.apply_stored(w(wi), parent.map(BlockHash), &hs(&blocks));
                    naive.sets.entry(wi).or_default().extend(blocks);
                }
                Op::Remove(wi, blocks) => {
                    idx.apply_removed(w(wi), &hs(&blocks));
                    let set = naive.sets.entry(wi).or_default();
                    for b in blocks { set.remove(&b); }
                }
                Op::Clear(wi) => {
                    idx.apply_cleared(w(wi));
                    naive.sets.entry(wi).or_default().clear();
                }
                Op::Purge(wi) => {
                    idx.purge_worker(w(wi));
                    naive.sets.remove(&wi);
                }
                Op::Replace(wi, set) => {
                    let set_h: Vec<_> = set.iter().map(|&(b, p)| (BlockHash(b), p.map(BlockHash))).collect();
                    idx.replace_worker(w(wi), &set_h);
                    naive.sets.insert(wi, set.iter().map(|&(b, _)| b).collect());
                }
                Op::Maintain => { idx.maintain(); }
            }
            // Every request shape: each leaf's chain, plus chains with a foreign block.
            for leaf in 1..=30u64 {
                let req = chain_to(leaf);
                prop_assert_eq!(overlaps(&idx, &req), naive.overlaps(&req), "request {:?}", req);
            }
            for (&wi, set) in &naive.sets {
                prop_assert_eq!(idx.worker_blocks(w(wi)), set.len());
                prop_assert_eq!(idx.worker_digest(w(wi)), Digest::of(set.iter().copied()));
                // Closure counts are exact whenever not marked stale.
                let ws = &idx.workers[wi as usize];
                if !ws.stale {
                    let orphans = set.iter().filter(|&&b| parent_of(b).is_some_and(|p| !set.contains(&p))).count();
                    prop_assert_eq!(ws.orphans as usize, orphans, "worker {} set {:?}", wi, set);
                }
            }
            let total: usize = naive.sets.values().map(|s| s.len()).sum();
            prop_assert_eq!(idx.stats().entries, total);
        }
    }
}

/// Long random runs with heavy store/remove churn on few blocks, so the reverse logs fill
/// with stale and duplicate entries and compact many times; the index must keep matching the
/// naive model on look-ups, counts, digests and each worker's block list.
#[test]
fn log_compaction_under_churn_matches_naive_model() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(11);
    let mut idx = Index::default();
    let mut naive = Naive::default();
    for step in 0..20_000 {
        let wi = rng.random_range(0..3u32);
        let b = rng.random_range(1..31u64);
        if rng.random_bool(0.55) {
            let chain = chain_to(b);
            idx.apply_stored(w(wi), None, &hs(&chain));
            naive.sets.entry(wi).or_default().extend(chain);
        } else {
            idx.apply_removed(w(wi), &hs(&[b]));
            naive.sets.entry(wi).or_default().remove(&b);
        }
        if step % 97 == 0 {
            idx.maintain();
            for leaf in 1..=30u64 {
                let req = chain_to(leaf);
                assert_eq!(overlaps(&idx, &req), naive.overlaps(&req), "step {step}");
            }
            for (&wi, set) in &naive.sets {
                let mut got: Vec<u64> = idx.worker_block_iter(w(wi)).map(|b| b.0).collect();
                got.sort_unstable();
                assert_eq!(got, set.iter().copied().collect::<Vec<_>>(), "step {step}");
                assert_eq!(idx.worker_blocks(w(wi)), set.len());
                assert_eq!(idx.worker_digest(w(wi)), Digest::of(set.iter().copied()));
            }
        }
    }
    // The logs stayed bounded: at most ~2x live plus the compaction threshold.
    for ws in &idx.workers {
        assert!(
            ws.blocks.raw().len() <= 2 * ws.blocks.live() + 65,
            "{}",
            ws.blocks.raw().len()
        );
    }
}
