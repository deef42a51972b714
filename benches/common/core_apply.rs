//! The core bench's `index_apply` part: a replayable stream of block events over the shared-prefix
//! world, applied and timed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cache_router_core::index::{Index, WorkerIdx};
use cache_router_core::protocol::BlockHash;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use stats_alloc::INSTRUMENTED_SYSTEM;

use super::{fresh_chain, widx, Plan, Rng, World, DOC_LEN, LIVE_CAP};

#[derive(Clone, Copy, Debug)]
struct Event {
    w: WorkerIdx,
    stored: bool,
    parent: Option<BlockHash>,
    start: u32,
    end: u32,
}

/// A block-event stream that leaves the index as it found it, so it can be replayed.
#[derive(Debug, Default)]
struct Stream {
    events: Vec<Event>,
    blocks: Vec<BlockHash>,
    stored: usize,
}

impl Stream {
    fn push(&mut self, w: usize, stored: bool, parent: Option<BlockHash>, blocks: &[BlockHash]) {
        let start = self.blocks.len() as u32;
        self.blocks.extend_from_slice(blocks);
        self.events.push(Event {
            w: widx(w),
            stored,
            parent,
            start,
            end: self.blocks.len() as u32,
        });
        if stored {
            self.stored += blocks.len();
        }
    }

    fn block_events(&self) -> usize {
        self.blocks.len()
    }

    fn apply(&self, idx: &mut Index) {
        for e in &self.events {
            let b = &self.blocks[e.start as usize..e.end as usize];
            if e.stored {
                idx.apply_stored(e.w, e.parent, b);
            } else {
                idx.apply_removed(e.w, b);
            }
        }
    }
}

/// Blocks a worker stored during the stream and has not removed yet (one Stored event).
#[derive(Debug)]
struct Live {
    blocks: Vec<BlockHash>,
    ext: Option<(usize, usize)>,
}

/// Random workers store 16-64 block chains on top of what they hold: half the time a fresh
/// continuation branching off a held block of one of their conversations, half the time the
/// next blocks of a document they hold a prefix of (blocks other workers also hold, so the
/// holder sets grow and spill). They remove leaf-first in events of 8-32 blocks, most recent
/// chain first, never holding more than `LIVE_CAP` extra blocks; at the end everything
/// stored is removed, so the index returns to its starting state.
fn make_stream(world: &mut World, target: usize) -> Stream {
    let mut rng = Rng(99);
    let workers = world.holdings.len();
    let mut live: Vec<Vec<Live>> = (0..workers).map(|_| Vec::new()).collect();
    let mut live_n = vec![0usize; workers];
    let mut ext: HashSet<(usize, usize, usize)> = HashSet::new();
    let mut st = Stream::default();
    let mut buf = Vec::with_capacity(64);
    let remove = |w: usize,
                  live: &mut Vec<Live>,
                  live_n: &mut usize,
                  ext: &mut HashSet<_>,
                  st: &mut Stream,
                  rng: &mut Rng| {
        let l = live.last_mut().expect("something live");
        let k = rng.range(8, 32).min(l.blocks.len());
        let mut chunk = l.blocks.split_off(l.blocks.len() - k);
        chunk.reverse(); // leaf first
        st.push(w, false, None, &chunk);
        *live_n -= k;
        if l.blocks.is_empty() {
            if let Some((s, d)) = l.ext {
                ext.remove(&(w, s, d));
            }
            live.pop();
        }
    };
    while st.block_events() < target {
        let w = rng.below(workers);
        if live_n[w] > 0 && (live_n[w] >= LIVE_CAP || rng.chance(0.5)) {
            remove(w, &mut live[w], &mut live_n[w], &mut ext, &mut st, &mut rng);
            continue;
        }
        let h = &world.holdings[w];
        let (s, d, len) = h[rng.below(h.len())];
        let k = rng.range(16, 64);
        buf.clear();
        let (parent, e) = if len < DOC_LEN && !ext.contains(&(w, s, d)) && rng.chance(0.5) {
            buf.extend_from_slice(&world.corpus.doc(s, d)[len..(len + k).min(DOC_LEN)]);
            ext.insert((w, s, d));
            (world.corpus.parent_at(s, d, len), Some((s, d)))
        } else {
            let parent = world.corpus.parent_at(s, d, rng.range(0, len));
            fresh_chain(parent.0, k, &mut world.next_id, &mut buf);
            (parent, None)
        };
        st.push(w, true, Some(parent), &buf);
        live_n[w] += buf.len();
        live[w].push(Live {
            blocks: buf.clone(),
            ext: e,
        });
    }
    for w in 0..workers {
        while live_n[w] > 0 {
            remove(w, &mut live[w], &mut live_n[w], &mut ext, &mut st, &mut rng);
        }
    }
    st
}

pub(crate) fn bench_apply(c: &mut Criterion, worlds: &mut [(&str, &mut World)], plan: Plan) {
    let mut g = c.benchmark_group("index_apply");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(if plan.small { 1 } else { 6 }));
    for (name, world) in worlds.iter_mut() {
        let stream = make_stream(world, plan.stream_events);
        let idx = &mut world.idx;
        let before = idx.stats();
        let n = stream.block_events();
        let stored_events = stream.events.iter().filter(|e| e.stored).count();
        // One untimed pass settles table capacities; then a few timed passes, printed.
        stream.apply(idx);
        assert_eq!(
            idx.stats().entries,
            before.entries,
            "the stream is net zero"
        );
        let passes = if plan.small { 1 } else { 3 };
        let allocs0 = INSTRUMENTED_SYSTEM.stats().allocations;
        let t0 = Instant::now();
        for _ in 0..passes {
            stream.apply(idx);
        }
        let el = t0.elapsed();
        let allocs = INSTRUMENTED_SYSTEM.stats().allocations - allocs0;
        println!(
            "[apply] {name}: {} resident entries; stream of {} events ({} Stored, {} Removed) = {n} block events \
             ({} stored, {} removed); {passes} timed passes: {:.2} M block events/s ({:.1} ns/block event), \
             {:.3} allocations per block event",
            before.entries,
            stream.events.len(),
            stored_events,
            stream.events.len() - stored_events,
            stream.stored,
            n - stream.stored,
            (n * passes) as f64 / el.as_secs_f64() / 1e6,
            el.as_nanos() as f64 / (n * passes) as f64,
            allocs as f64 / (n * passes) as f64,
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("block_events", name), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    stream.apply(idx);
                }
                t0.elapsed()
            })
        });
        assert_eq!(
            idx.stats().entries,
            before.entries,
            "the stream is net zero"
        );
    }
    g.finish();
}
