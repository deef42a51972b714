//! The index under memory pressure: ingest pushes it twice past its bound (`--max-index-entries`)
//! while routing look-ups go on, as on the fleet actor's thread, where a routing decision waits
//! behind whatever apply call is running.
//!
//! Two shapes:
//! - `chats`: 16 workers storing 1,000-block chains (16k-token prompts) round-robin;
//! - `two long chains`: one worker, two chains as long as the bound, in 1,000-block messages
//!   (the fault campaign's case: eviction used to rescan the worker's whole log per evicted
//!   block, and `/route` did not answer for minutes).
//!
//! Printed per shape: apply throughput (entries/s), the duration of each apply call (what a
//! routing decision can wait behind: p50, p99, max), a look-up's latency between the calls,
//! evictions, and log entries examined per eviction. Checked: the bound holds after each call
//! within a few messages (while a scan looks for leaves, each call's work grows with the
//! overshoot), and eviction examines at most one lap of the log plus a step per
//! evicted entry. Full mode: 1 M and 100 k bounds; small mode (`cargo test`, CI): 20 k and 10 k.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_router_core::index::{Index, IndexConfig, LookupScratch, WorkerIdx};
use cache_router_core::protocol::BlockHash;

const CHAIN: usize = 1_000;

fn widx(w: usize) -> WorkerIdx {
    WorkerIdx::new(w as u32).expect("a valid slot")
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Shape {
    name: &'static str,
    bound: usize,
    workers: usize,
    /// Blocks per chain (a chain is stored in `CHAIN`-block messages).
    chain_len: usize,
}

fn run(shape: &Shape) {
    let mut idx = Index::new(IndexConfig {
        max_entries: shape.bound,
    });
    let mut scratch = LookupScratch::default();
    let total = 2 * shape.bound;
    let mut applied = 0usize;
    let mut next_id = 1u64;
    let mut calls = Vec::new();
    let mut lookups = Vec::new();
    let mut chains: Vec<Vec<BlockHash>> = Vec::new();
    let mut worker = 0usize;
    let started = Instant::now();
    while applied < total {
        let mut chain = Vec::with_capacity(shape.chain_len);
        let mut parent = None;
        let mut done = 0;
        while done < shape.chain_len && applied < total {
            let n = CHAIN.min(shape.chain_len - done);
            let blocks: Vec<BlockHash> = (0..n)
                .map(|_| {
                    next_id += 1;
                    BlockHash(next_id)
                })
                .collect();
            let t = Instant::now();
            idx.apply_stored(widx(worker), parent, &blocks);
            idx.maintain();
            calls.push(t.elapsed());
            parent = blocks.last().copied();
            chain.extend_from_slice(&blocks);
            applied += n;
            done += n;
            assert!(
                idx.stats().entries <= shape.bound + 8 * CHAIN,
                "{}: {} entries against a bound of {}",
                shape.name,
                idx.stats().entries,
                shape.bound
            );
            // A routing look-up between apply calls: the first 64 blocks of a recent chain.
            if let Some(c) = chains.last() {
                let probe = &c[..c.len().min(64)];
                let t = Instant::now();
                black_box(idx.longest_prefix(probe, &mut scratch).len());
                lookups.push(t.elapsed());
            }
        }
        chains.push(chain);
        if chains.len() > 64 {
            chains.remove(0);
        }
        worker = (worker + 1) % shape.workers;
    }
    let wall = started.elapsed();
    calls.sort_unstable();
    lookups.sort_unstable();
    let s = idx.stats();
    println!(
        "[eviction] {}: {} entries into a {} bound over {} workers in {wall:.2?} ({:.2} M entries/s)",
        shape.name,
        total,
        shape.bound,
        shape.workers,
        total as f64 / wall.as_secs_f64() / 1e6
    );
    println!(
        "[eviction] {}: apply call (a decision's wait) p50 {:?} p99 {:?} max {:?}; look-up p50 {:?} p99 {:?} max {:?}",
        shape.name,
        pct(&calls, 0.5),
        pct(&calls, 0.99),
        pct(&calls, 1.0),
        pct(&lookups, 0.5),
        pct(&lookups, 0.99),
        pct(&lookups, 1.0),
    );
    println!(
        "[eviction] {}: {} resident, {} evicted, {} log entries examined ({:.2} per eviction)",
        shape.name,
        s.entries,
        s.evictions,
        s.evict_scanned,
        s.evict_scanned as f64 / s.evictions.max(1) as f64
    );
    assert!(s.entries <= shape.bound, "the bound holds at the end");
    assert!(s.evictions as usize >= total - shape.bound);
    assert!(
        s.evict_scanned <= (total + s.evictions as usize) as u64,
        "eviction examined {} log entries for {} evictions",
        s.evict_scanned,
        s.evictions
    );
}

fn main() {
    let small = cache_router_testkit::small_mode();
    let (chat_bound, long_bound) = if small {
        (20_000, 10_000)
    } else {
        (1_000_000, 100_000)
    };
    println!(
        "eviction bench ({} mode)",
        if small { "small (test)" } else { "full" }
    );
    run(&Shape {
        name: "chats",
        bound: chat_bound,
        workers: 16,
        chain_len: CHAIN,
    });
    run(&Shape {
        name: "two long chains",
        bound: long_bound,
        workers: 1,
        chain_len: long_bound,
    });
}
