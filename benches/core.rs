//! Benchmarks of the cache index (`cargo bench --bench core`).
//!
//! - `index_apply`: block events applied per second (Stored chains of 16-64 blocks under shared
//!   prefixes, Removed leaf-first), on a cache-resident index and on the 10 M-entry one.
//! - `longest_prefix`: a 512-block look-up against 1,000 workers and 10 M resident (worker,
//!   block) entries: a full hit on a few workers, a hot document held partially by many, a
//!   shared system prompt followed by new content, and a cold miss. Besides criterion's mean,
//!   p50/p99 of 100k individually timed look-ups are printed (`[lookup latency]` lines).
//! - Memory per (worker, block) entry, printed (`[memory]` lines) for a "mostly unique blocks"
//!   and a "shared prefixes" layout, as `Index::heap_bytes()` and as live bytes counted by the
//!   global allocator (plus the RSS delta, which also includes malloc's per-chunk overhead).
//!
//! Under `cargo test --benches`, `cargo bench -- --test`, or with `CACHE_ROUTER_BENCH_SMALL=1`,
//! every data set is shrunk (a few thousand entries) so the run takes seconds.
//! The counting allocator stays installed for the whole binary, so every allocation in the
//! timed loops also pays its few atomic increments; `[apply]` prints how many there are.

#[path = "common/core_apply.rs"]
mod apply;

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_router_core::hashing::{chain_ids, namespace_seed};
use cache_router_core::index::{Index, IndexConfig, LookupScratch, Overlap, WorkerIdx};
use cache_router_core::protocol::BlockHash;
use cache_router_testkit::small_mode;
use criterion::{BenchmarkId, Criterion, Throughput};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Blocks in a system prompt (a root chain shared by many workers).
const SYS_LEN: usize = 32;
/// Blocks in a document that follows a system prompt.
const DOC_LEN: usize = 448;
/// Blocks in a look-up request.
const REQ_LEN: usize = 512;
/// The request's own blocks after a system prompt and a document.
const QUESTION_LEN: usize = REQ_LEN - SYS_LEN - DOC_LEN;
/// Workers that hold a planted request in full.
const FULL_HOLDERS: usize = 4;
/// Private 512-block chains held by `FULL_HOLDERS` workers each (the "full hit" case).
const PRIVATE_CHAINS: usize = 16;
/// Most blocks a worker has stored during the apply stream and not yet removed.
const LIVE_CAP: usize = 256;

/// Data-set sizes.
#[derive(Clone, Copy, Debug)]
struct Scale {
    workers: usize,
    per_worker: usize,
    n_sys: usize,
    docs_per_sys: usize,
}

/// Everything the run does, at full or test size.
#[derive(Clone, Copy, Debug)]
struct Plan {
    small: bool,
    big: Scale,
    resident: Scale,
    stream_events: usize,
    lookups: usize,
}

impl Plan {
    fn from_env() -> Plan {
        let small = small_mode();
        if small {
            let s = Scale {
                workers: 24,
                per_worker: 1_500,
                n_sys: 4,
                docs_per_sys: 8,
            };
            Plan {
                small,
                big: s,
                resident: s,
                stream_events: 20_000,
                lookups: 1_000,
            }
        } else {
            Plan {
                small,
                big: Scale {
                    workers: 1_000,
                    per_worker: 10_000,
                    n_sys: 16,
                    docs_per_sys: 64,
                },
                resident: Scale {
                    workers: 100,
                    per_worker: 2_000,
                    n_sys: 16,
                    docs_per_sys: 64,
                },
                stream_events: 1_000_000,
                lookups: 100_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness.

/// splitmix64: deterministic and allocation-free.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Zipf-distributed ranks `0..n` (rank 0 most popular).
#[derive(Debug)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let w: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let cdf = w
            .iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect();
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

fn widx(w: usize) -> WorkerIdx {
    WorkerIdx::new(w as u32).expect("worker slot in range")
}

/// Appends `len` fresh blocks chained from `parent` (unique by construction: fresh ids).
fn fresh_chain(parent: u64, len: usize, next_id: &mut u64, out: &mut Vec<BlockHash>) {
    let ids = *next_id..*next_id + len as u64;
    *next_id += len as u64;
    let mut prev = parent;
    for id in ids {
        let start = out.len();
        chain_ids(prev, &[id], out);
        prev = out[start].0;
    }
}

/// `12.3M`, `45k`, `678`.
fn human(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn live_heap_bytes() -> i64 {
    let s = INSTRUMENTED_SYSTEM.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn live_allocations() -> i64 {
    let s = INSTRUMENTED_SYSTEM.stats();
    s.allocations as i64 - s.deallocations as i64
}

/// Resident set size from /proc (0 where unavailable).
fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Prints bytes per entry, three ways, for an index built between the two snapshots.
fn report_memory(label: &str, idx: &Index, before: (i64, i64, i64), build: Duration) {
    let (heap0, allocs0, rss0) = before;
    let st = idx.stats();
    let entries = st.entries as f64;
    let counted = (live_heap_bytes() - heap0) as f64;
    let rss = (rss_bytes() - rss0) as f64;
    println!(
        "[memory] {label}: {} entries, {} distinct blocks ({:.2} holders/block), built in {:.2?} \
         ({:.1} M entries/s)",
        st.entries,
        st.distinct_blocks,
        entries / st.distinct_blocks.max(1) as f64,
        build,
        entries / build.as_secs_f64() / 1e6,
    );
    println!(
        "[memory] {label}: heap_bytes() estimate {:.1} MB = {:.1} B/entry; counting allocator \
         {:.1} MB = {:.1} B/entry ({} live allocations); RSS delta {:.1} MB = {:.1} B/entry",
        idx.heap_bytes() as f64 / 1e6,
        idx.heap_bytes() as f64 / entries,
        counted / 1e6,
        counted / entries,
        live_allocations() - allocs0,
        rss / 1e6,
        rss / entries,
    );
}

fn snapshot() -> (i64, i64, i64) {
    (live_heap_bytes(), live_allocations(), rss_bytes())
}

// ---------------------------------------------------------------------------------------------
// "Mostly unique blocks" layout.

/// Every worker holds one shared 32-block system prompt, then its own conversations: chains of
/// 16-64 fresh blocks hanging off the prompt or off one of its earlier conversations (a
/// multi-turn branch). Prefix-closed, so every worker stays on the galloping path.
fn memory_unique(scale: Scale) {
    let mut rng = Rng(7);
    let mut next_id = 1u64 << 62;
    let mut sys = Vec::with_capacity(SYS_LEN);
    fresh_chain(
        namespace_seed("bench/unique", None),
        SYS_LEN,
        &mut next_id,
        &mut sys,
    );
    let mut chain = Vec::with_capacity(64);
    let mut last_chain = Vec::with_capacity(64);
    let distinct = SYS_LEN + scale.workers * (scale.per_worker - SYS_LEN);

    let before = snapshot();
    let t0 = Instant::now();
    let mut idx = Index::with_capacity(IndexConfig::default(), distinct);
    for w in 0..scale.workers {
        let wi = widx(w);
        idx.apply_stored(wi, None, &sys);
        let mut held = SYS_LEN;
        last_chain.clear();
        while held < scale.per_worker {
            let len = rng.range(16, 64).min(scale.per_worker - held);
            let parent = if last_chain.is_empty() || rng.chance(0.5) {
                sys[SYS_LEN - 1]
            } else {
                last_chain[rng.below(last_chain.len())]
            };
            chain.clear();
            fresh_chain(parent.0, len, &mut next_id, &mut chain);
            idx.apply_stored(wi, Some(parent), &chain);
            held += len;
            std::mem::swap(&mut chain, &mut last_chain);
        }
    }
    let build = t0.elapsed();
    report_memory("mostly unique blocks", &idx, before, build);
}

// ---------------------------------------------------------------------------------------------
// "Shared prefixes" layout, used by the look-up and apply benches.

/// The shared content: system prompts (roots) and documents (each after one prompt).
#[derive(Debug)]
struct Corpus {
    sys: Vec<Vec<BlockHash>>,
    /// `docs[s * docs_per_sys + d]`, chained from the last block of `sys[s]`.
    docs: Vec<Vec<BlockHash>>,
    docs_per_sys: usize,
}

impl Corpus {
    fn new(scale: Scale, seed: u64, next_id: &mut u64) -> Corpus {
        let root = namespace_seed("bench/shared", None) ^ seed;
        let mut sys = Vec::new();
        let mut docs = Vec::new();
        for _ in 0..scale.n_sys {
            let mut s = Vec::with_capacity(SYS_LEN);
            fresh_chain(root, SYS_LEN, next_id, &mut s);
            for _ in 0..scale.docs_per_sys {
                let mut d = Vec::with_capacity(DOC_LEN);
                fresh_chain(s[SYS_LEN - 1].0, DOC_LEN, next_id, &mut d);
                docs.push(d);
            }
            sys.push(s);
        }
        Corpus {
            sys,
            docs,
            docs_per_sys: scale.docs_per_sys,
        }
    }
    fn doc(&self, s: usize, d: usize) -> &[BlockHash] {
        &self.docs[s * self.docs_per_sys + d]
    }
    /// The block a continuation after `len` document blocks chains from.
    fn parent_at(&self, s: usize, d: usize, len: usize) -> BlockHash {
        if len == 0 {
            self.sys[s][SYS_LEN - 1]
        } else {
            self.doc(s, d)[len - 1]
        }
    }
}

/// One conversation a worker holds: system prompt `s`, the first `len` blocks of document
/// `d`, then its own continuation.
#[derive(Clone, Copy, Debug)]
struct Path {
    s: usize,
    d: usize,
    len: usize,
    tail: Tail,
}

#[derive(Clone, Copy, Debug)]
enum Tail {
    /// `n` fresh blocks only this worker holds.
    Fresh(usize),
    /// The planted question `q` (shared by the `FULL_HOLDERS` workers of that hot request).
    Planted(usize),
}

/// The 10 M-entry index and what the benches need to know about it.
#[derive(Debug)]
struct World {
    idx: Index,
    corpus: Corpus,
    /// Per worker: (system prompt, document, document blocks held), at the build's end.
    holdings: Vec<Vec<(usize, usize, usize)>>,
    /// Look-up cases: (name, what it builds, requests).
    cases: Vec<(&'static str, String, Vec<Vec<BlockHash>>)>,
    next_id: u64,
}

/// The hot (system prompt, document) pairs whose 512-block requests `FULL_HOLDERS` workers
/// hold in full; with Zipf popularity these are also the most widely, partially held ones.
fn hot_pairs(scale: Scale) -> Vec<(usize, usize)> {
    vec![(0, 0), (0, 1), (1, 0), (scale.n_sys.min(3) - 1, 0)]
}

impl World {
    /// Builds the shared-prefix index. Workers pick conversations with Zipf-popular system
    /// prompts (s = 1.0) and documents (s = 0.8), hold a uniformly random prefix of the
    /// document (evicted leaf-first) and a fresh 16-64 block continuation, until each holds
    /// `per_worker` entries.
    fn build(scale: Scale, label: &str, plant: bool) -> World {
        let mut rng = Rng(42);
        let mut next_id = 1u64 << 60;
        let corpus = Corpus::new(scale, 0, &mut next_id);
        let zsys = Zipf::new(scale.n_sys, 1.0);
        let zdoc = Zipf::new(scale.docs_per_sys, 0.8);

        // The planted questions (hot requests) and private chains.
        let hot = if plant { hot_pairs(scale) } else { Vec::new() };
        let questions: Vec<Vec<BlockHash>> = hot
            .iter()
            .map(|&(s, d)| {
                let mut q = Vec::with_capacity(QUESTION_LEN);
                fresh_chain(
                    corpus.parent_at(s, d, DOC_LEN).0,
                    QUESTION_LEN,
                    &mut next_id,
                    &mut q,
                );
                q
            })
            .collect();
        let private: Vec<Vec<BlockHash>> = (0..if plant { PRIVATE_CHAINS } else { 0 })
            .map(|i| {
                let mut c = Vec::with_capacity(REQ_LEN);
                let seed = namespace_seed("bench/private", Some(&i.to_string()));
                fresh_chain(seed, REQ_LEN, &mut next_id, &mut c);
                c
            })
            .collect();

        // Plan every worker's conversations first, so the block map can be sized exactly.
        let mut plans: Vec<Vec<Path>> = Vec::with_capacity(scale.workers);
        let mut holdings = Vec::with_capacity(scale.workers);
        let mut max_len = vec![0usize; scale.n_sys * scale.docs_per_sys];
        let mut sys_touched = vec![false; scale.n_sys];
        let mut fresh_blocks = 0usize;
        for w in 0..scale.workers {
            let mut plan = Vec::new();
            let mut sys_held = vec![false; scale.n_sys];
            let mut doc_len: HashMap<(usize, usize), usize> = HashMap::new();
            let mut held = 0usize;
            // Counts what `p` adds to the worker; trims a fresh tail so it ends at `per_worker`.
            let mut account = |mut p: Path, held: &mut usize, fresh: &mut usize| {
                if !sys_held[p.s] {
                    sys_held[p.s] = true;
                    *held += SYS_LEN;
                }
                let cur = doc_len.entry((p.s, p.d)).or_insert(0);
                if p.len > *cur {
                    *held += p.len - *cur;
                    *cur = p.len;
                }
                match &mut p.tail {
                    Tail::Fresh(n) => {
                        *n = (*n).min(scale.per_worker.saturating_sub(*held));
                        *held += *n;
                        *fresh += *n;
                    }
                    Tail::Planted(_) => *held += QUESTION_LEN,
                }
                p
            };
            for (q, &(s, d)) in hot.iter().enumerate() {
                // Spread the full holders of each hot request across the fleet.
                let planted = (0..FULL_HOLDERS)
                    .any(|k| (k * scale.workers / FULL_HOLDERS + q * 7) % scale.workers == w);
                if planted {
                    let p = Path {
                        s,
                        d,
                        len: DOC_LEN,
                        tail: Tail::Planted(q),
                    };
                    plan.push(account(p, &mut held, &mut fresh_blocks));
                }
            }
            while held < scale.per_worker {
                let p = Path {
                    s: zsys.sample(&mut rng),
                    d: zdoc.sample(&mut rng),
                    len: rng.range(0, DOC_LEN),
                    tail: Tail::Fresh(rng.range(16, 64)),
                };
                plan.push(account(p, &mut held, &mut fresh_blocks));
            }
            for (s, touched) in sys_held.iter().enumerate() {
                sys_touched[s] |= touched;
            }
            let mut h: Vec<(usize, usize, usize)> =
                doc_len.into_iter().map(|((s, d), l)| (s, d, l)).collect();
            h.sort_unstable();
            for &(s, d, l) in &h {
                let m = &mut max_len[s * scale.docs_per_sys + d];
                *m = (*m).max(l);
            }
            holdings.push(h);
            plans.push(plan);
        }
        let distinct = sys_touched.iter().filter(|&&t| t).count() * SYS_LEN
            + max_len.iter().sum::<usize>()
            + fresh_blocks
            + questions.len() * QUESTION_LEN
            + private.len() * REQ_LEN;

        // Build. Each conversation arrives as the Stored events an engine would send: only
        // the blocks the worker did not hold yet, with their parent.
        let mut chain = Vec::with_capacity(64);
        let mut sys_held = vec![false; scale.n_sys];
        let mut doc_len = vec![0usize; scale.n_sys * scale.docs_per_sys];
        let before = snapshot();
        let t0 = Instant::now();
        let mut idx = Index::with_capacity(IndexConfig::default(), distinct);
        for (w, plan) in plans.iter().enumerate() {
            let wi = widx(w);
            sys_held.iter_mut().for_each(|x| *x = false);
            doc_len.iter_mut().for_each(|x| *x = 0);
            for p in plan {
                if !sys_held[p.s] {
                    sys_held[p.s] = true;
                    idx.apply_stored(wi, None, &corpus.sys[p.s]);
                }
                let cur = &mut doc_len[p.s * scale.docs_per_sys + p.d];
                if p.len > *cur {
                    let parent = corpus.parent_at(p.s, p.d, *cur);
                    idx.apply_stored(wi, Some(parent), &corpus.doc(p.s, p.d)[*cur..p.len]);
                    *cur = p.len;
                }
                let parent = corpus.parent_at(p.s, p.d, p.len);
                match p.tail {
                    Tail::Fresh(0) => {}
                    Tail::Fresh(n) => {
                        chain.clear();
                        fresh_chain(parent.0, n, &mut next_id, &mut chain);
                        idx.apply_stored(wi, Some(parent), &chain);
                    }
                    Tail::Planted(q) => idx.apply_stored(wi, Some(parent), &questions[q]),
                }
            }
        }
        for (i, c) in private.iter().enumerate() {
            for k in 0..FULL_HOLDERS {
                idx.apply_stored(
                    widx((k * scale.workers / FULL_HOLDERS + i * 13 + 1) % scale.workers),
                    None,
                    c,
                );
            }
        }
        let build = t0.elapsed();
        if plant {
            report_memory(label, &idx, before, build);
            assert_eq!(
                idx.stats().distinct_blocks,
                distinct,
                "planned distinct blocks"
            );
        }
        drop(plans);

        let mut world = World {
            idx,
            corpus,
            holdings,
            cases: Vec::new(),
            next_id,
        };
        if plant {
            world.make_cases(&hot, &questions, private);
        }
        world
    }

    fn make_cases(
        &mut self,
        hot: &[(usize, usize)],
        questions: &[Vec<BlockHash>],
        private: Vec<Vec<BlockHash>>,
    ) {
        let c = &self.corpus;
        let full_hit = private;
        let hot_doc: Vec<Vec<BlockHash>> = hot
            .iter()
            .zip(questions)
            .map(|(&(s, d), q)| [&c.sys[s][..], c.doc(s, d), q].concat())
            .collect();
        let sys_then_new: Vec<Vec<BlockHash>> = (0..c.sys.len().min(4))
            .map(|s| {
                let mut r = c.sys[s].clone();
                fresh_chain(
                    r[SYS_LEN - 1].0,
                    REQ_LEN - SYS_LEN,
                    &mut self.next_id,
                    &mut r,
                );
                r
            })
            .collect();
        let cold: Vec<Vec<BlockHash>> = (0..16)
            .map(|_| {
                let mut r = Vec::with_capacity(REQ_LEN);
                fresh_chain(
                    namespace_seed("bench/cold", None),
                    REQ_LEN,
                    &mut self.next_id,
                    &mut r,
                );
                r
            })
            .collect();
        self.cases = vec![
            (
                "full_hit_few",
                format!("{PRIVATE_CHAINS} private 512-block chains, each held in full by {FULL_HOLDERS} workers and no one else"),
                full_hit,
            ),
            (
                "hot_doc_partial_many",
                "hot system prompt + hot document (480 blocks) + a planted 32-block question: \
                 4 workers hold all 512, most of the fleet holds the prompt and a prefix of the document"
                    .to_string(),
                hot_doc,
            ),
            (
                "sys_prompt_then_new",
                "one of the 4 most popular system prompts (32 blocks) + 480 fresh blocks".to_string(),
                sys_then_new,
            ),
            ("cold_miss", "512 fresh blocks (first block unknown)".to_string(), cold),
        ];
    }
}

// ---------------------------------------------------------------------------------------------
// Look-ups.

fn describe_results(idx: &Index, reqs: &[Vec<BlockHash>]) -> String {
    let mut scratch = LookupScratch::default();
    let (mut workers, mut full, mut blocks) = (0usize, 0usize, 0u64);
    let mut overlaps: Vec<u32> = Vec::new();
    for r in reqs {
        let out: &[Overlap] = idx.longest_prefix(r, &mut scratch);
        workers += out.len();
        full += out.iter().filter(|o| o.blocks as usize == REQ_LEN).count();
        blocks += out.iter().map(|o| u64::from(o.blocks)).sum::<u64>();
        overlaps.extend(out.iter().map(|o| o.blocks));
    }
    overlaps.sort_unstable();
    let n = reqs.len() as f64;
    let q = |p: f64| {
        overlaps
            .get(((overlaps.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "{} requests; per request {:.1} workers matched, {:.1} hold all 512; overlap blocks \
         min/p50/max {}/{}/{} (mean {:.0})",
        reqs.len(),
        workers as f64 / n,
        full as f64 / n,
        q(0.0),
        q(0.5),
        q(1.0),
        blocks as f64 / overlaps.len().max(1) as f64,
    )
}

fn timer_overhead(n: usize) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            t0.elapsed()
        })
        .collect();
    t.sort_unstable();
    t[t.len() / 2]
}

fn print_latency(case: &str, idx: &Index, reqs: &[Vec<BlockHash>], n: usize) {
    let mut scratch = LookupScratch::default();
    for r in reqs.iter().cycle().take(n / 10 + reqs.len()) {
        black_box(idx.longest_prefix(r, &mut scratch).len());
    }
    let mut t: Vec<Duration> = Vec::with_capacity(n);
    for r in reqs.iter().cycle().take(n) {
        let t0 = Instant::now();
        let out = idx.longest_prefix(black_box(r), &mut scratch);
        black_box(out.len());
        t.push(t0.elapsed());
    }
    let mean = t.iter().sum::<Duration>() / n as u32;
    t.sort_unstable();
    let p = |q: f64| t[((n - 1) as f64 * q) as usize];
    println!(
        "[lookup latency] {case}: {n} timed look-ups: p50 {:.2?}  p99 {:.2?}  p99.9 {:.2?}  max {:.2?}  mean {:.2?}",
        p(0.50),
        p(0.99),
        p(0.999),
        t[n - 1],
        mean,
    );
}

fn bench_longest_prefix(c: &mut Criterion, world: &World, plan: Plan) {
    let st = world.idx.stats();
    println!(
        "[lookup] index: {} workers ({} not prefix-closed), {} entries, {} distinct blocks; \
         request {REQ_LEN} blocks; Instant::now()+elapsed() overhead p50 {:.0?} (included in \
         the figures below)",
        world.holdings.len(),
        st.unclosed_workers,
        st.entries,
        st.distinct_blocks,
        timer_overhead(10_000),
    );
    for (name, what, reqs) in &world.cases {
        println!("[lookup] {name}: {what}");
        println!("[lookup] {name}: {}", describe_results(&world.idx, reqs));
        print_latency(name, &world.idx, reqs, plan.lookups);
    }

    let mut g = c.benchmark_group("longest_prefix");
    g.throughput(Throughput::Elements(1))
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, _, reqs) in &world.cases {
        let mut scratch = LookupScratch::default();
        let mut i = 0usize;
        g.bench_function(
            BenchmarkId::new(*name, format!("{}_entries", human(st.entries))),
            |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let r = &reqs[i % reqs.len()];
                    black_box(world.idx.longest_prefix(black_box(r), &mut scratch).len())
                })
            },
        );
    }
    g.finish();
}

fn main() {
    let plan = Plan::from_env();
    let mut c = Criterion::default().configure_from_args();
    println!(
        "[setup] {} mode: {} workers x {} entries; available parallelism {}",
        if plan.small { "small (test)" } else { "full" },
        plan.big.workers,
        plan.big.per_worker,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    memory_unique(plan.big);
    let mut big = World::build(plan.big, "shared prefixes", true);
    bench_longest_prefix(&mut c, &big, plan);

    let mut resident = World::build(plan.resident, "resident", false);
    let big_name = format!("{}_resident", human(big.idx.stats().entries));
    let resident_name = format!("{}_resident", human(resident.idx.stats().entries));
    apply::bench_apply(
        &mut c,
        &mut [
            (resident_name.as_str(), &mut resident),
            (big_name.as_str(), &mut big),
        ],
        plan,
    );
    c.final_summary();
}
