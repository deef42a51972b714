//! The discrete-event loop: requests arrive, the policy routes them with the router's own
//! view (the index fed by the workers' events, plus the router's in-flight accounting), and
//! simulated engines prefill, decode and emit cache events back into the index.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::kv_cache::{Admission, KvCache};
use super::timing::TimingModel;
use super::workload::Workload;
use super::SimResult;
use crate::index::{Index, IndexConfig, LookupScratch, WorkerIdx};
use crate::policy::{Candidate, Decision, Policy, PolicyConfig, PolicyKind, WorkerLoad};
use crate::protocol::Body;

/// Fleet shape for one simulation.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub workers: usize,
    pub capacity_blocks: usize,
    pub timing: TimingModel,
    pub policy: PolicyConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Request `i` arrives at the router.
    Arrive(usize),
    /// Worker `w` finished prefilling request `i`: first token.
    PrefillDone(usize, usize),
    /// Worker `w` finished decoding request `i`.
    DecodeDone(usize, usize),
}

/// Time in microseconds, integral so the heap orders events exactly and reproducibly.
type Micros = u64;

fn us(ms: f64) -> Micros {
    (ms * 1000.0).round().max(0.0) as Micros
}

struct SimWorker {
    cache: KvCache,
    queue: VecDeque<usize>,
    prefilling: Option<(usize, Admission)>,
    decoding: usize,
    prefill_tokens: u64,
}

/// What the router knows about request `i` while it is in flight.
#[derive(Clone, Copy, Default)]
struct Flight {
    worker: usize,
    est_uncached_blocks: f64,
    arrival: Micros,
    /// False when the prompt alone exceeds the cache: it ran uncached and pins nothing.
    admitted: bool,
}

struct Sim<'a> {
    workload: &'a Workload,
    fleet: &'a FleetConfig,
    now: Micros,
    heap: BinaryHeap<Reverse<(Micros, u64, Event)>>,
    seq: u64,
    workers: Vec<SimWorker>,
    index: Index,
    policy: Policy,
    flights: Vec<Flight>,
    /// Router-side load per worker: (uncached prefill blocks, decoding requests, in flight).
    load: Vec<WorkerLoad>,
    hit_blocks: u64,
    total_blocks: u64,
    ttfts_ms: Vec<f64>,
    finished: usize,
    last_done: Micros,
    events: Vec<Body>,
}

/// Runs `workload` through a fleet routed by `kind`.
pub fn simulate(workload: &Workload, fleet: &FleetConfig, kind: PolicyKind) -> SimResult {
    let n = workload.requests.len();
    let mut sim = Sim {
        workload,
        fleet,
        now: 0,
        heap: BinaryHeap::with_capacity(n),
        seq: 0,
        workers: (0..fleet.workers)
            .map(|_| SimWorker {
                cache: KvCache::new(fleet.capacity_blocks),
                queue: VecDeque::new(),
                prefilling: None,
                decoding: 0,
                prefill_tokens: 0,
            })
            .collect(),
        index: Index::new(IndexConfig::default()),
        policy: Policy::new(kind, fleet.policy.clone()),
        flights: vec![Flight::default(); n],
        load: vec![WorkerLoad::default(); fleet.workers],
        hit_blocks: 0,
        total_blocks: 0,
        ttfts_ms: Vec::with_capacity(n),
        finished: 0,
        last_done: 0,
        events: Vec::new(),
    };
    for (i, r) in workload.requests.iter().enumerate() {
        sim.push(us(r.arrival_ms), Event::Arrive(i));
    }
    sim.run();
    sim.result(kind)
}

impl Sim<'_> {
    fn push(&mut self, at: Micros, ev: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn run(&mut self) {
        let mut scratch = LookupScratch::default();
        let mut decision = Decision::default();
        let mut candidates: Vec<Candidate> = Vec::with_capacity(self.workers.len());
        while let Some(Reverse((at, _, ev))) = self.heap.pop() {
            self.now = at;
            match ev {
                Event::Arrive(i) => {
                    let w = self.route(i, &mut scratch, &mut decision, &mut candidates);
                    self.workers[w].queue.push_back(i);
                    self.try_start_prefill(w);
                }
                Event::PrefillDone(w, i) => self.prefill_done(w, i),
                Event::DecodeDone(w, i) => self.decode_done(w, i),
            }
        }
    }

    fn route(
        &mut self,
        i: usize,
        scratch: &mut LookupScratch,
        decision: &mut Decision,
        candidates: &mut Vec<Candidate>,
    ) -> usize {
        let req = &self.workload.requests[i];
        candidates.clear();
        candidates.extend(self.load.iter().enumerate().map(|(w, load)| Candidate {
            worker: WorkerIdx::new(w as u32).expect("fleet fits worker slots"),
            load: *load,
        }));
        let overlaps: &[_] = if self.policy.kind().uses_index() {
            self.index.longest_prefix(&req.blocks, scratch)
        } else {
            &[]
        };
        let now_ms = self.now / 1000;
        self.policy
            .choose(&req.blocks, candidates, overlaps, now_ms, decision);
        let chosen = decision.chosen_scored().expect("fleet is not empty");
        self.policy
            .observe_routed(chosen.worker, &req.blocks, now_ms);
        let w = chosen.worker.get();
        // The router's estimate of the prefill it just queued (what the live router knows).
        let est = (req.blocks.len() as f64 - f64::from(chosen.overlap)).max(0.0);
        self.flights[i] = Flight {
            worker: w,
            est_uncached_blocks: est,
            arrival: self.now,
            admitted: false,
        };
        let l = &mut self.load[w];
        l.prefill_blocks += est;
        l.requests += 1;
        w
    }

    fn try_start_prefill(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        if worker.prefilling.is_some() {
            return;
        }
        let Some(&i) = worker.queue.front() else {
            return;
        };
        let req = &self.workload.requests[i];
        self.events.clear();
        let Some(adm) = worker.cache.admit(&req.blocks, &mut self.events) else {
            // Pinned blocks leave no room: wait for a decode to finish (or never, if the
            // request alone exceeds the cache; then it runs uncached below).
            if worker.decoding > 0 || worker.cache.pinned() > 0 {
                return;
            }
            worker.queue.pop_front();
            let adm = Admission {
                hit_blocks: 0,
                new_blocks: 0,
            };
            self.start_prefill(w, i, adm);
            return;
        };
        worker.queue.pop_front();
        self.flights[i].admitted = true;
        let wi = WorkerIdx::new(w as u32).expect("fleet fits worker slots");
        for ev in self.events.drain(..) {
            self.index.apply(wi, &ev);
        }
        self.start_prefill(w, i, adm);
    }

    fn start_prefill(&mut self, w: usize, i: usize, adm: Admission) {
        let req = &self.workload.requests[i];
        let bs = self.workload.block_size;
        let cached_tokens = (adm.hit_blocks as u64 * bs).min(req.input_tokens);
        let uncached = req.input_tokens.saturating_sub(cached_tokens).max(1);
        self.hit_blocks += adm.hit_blocks as u64;
        self.total_blocks += req.blocks.len() as u64;
        let worker = &mut self.workers[w];
        worker.prefill_tokens += uncached;
        let done = self.now
            + us(self
                .fleet
                .timing
                .prefill_ms(req.input_tokens, cached_tokens));
        worker.prefilling = Some((i, adm));
        self.push(done, Event::PrefillDone(w, i));
    }

    fn prefill_done(&mut self, w: usize, i: usize) {
        let req = &self.workload.requests[i];
        let (_, adm) = self.workers[w].prefilling.take().expect("prefilling");
        if adm.new_blocks > 0 {
            if let Some(ev) = KvCache::stored_event(&req.blocks, &adm) {
                let wi = WorkerIdx::new(w as u32).expect("fleet fits worker slots");
                self.index.apply(wi, &ev);
            }
        }
        let f = &self.flights[i];
        self.ttfts_ms.push((self.now - f.arrival) as f64 / 1000.0);
        let l = &mut self.load[w];
        l.prefill_blocks = (l.prefill_blocks - f.est_uncached_blocks).max(0.0);
        l.decode_requests += 1.0;
        let worker = &mut self.workers[w];
        worker.decoding += 1;
        let done = self.now
            + us(self
                .fleet
                .timing
                .decode_ms(req.output_tokens, worker.decoding));
        self.push(done, Event::DecodeDone(w, i));
        self.try_start_prefill(w);
    }

    fn decode_done(&mut self, w: usize, i: usize) {
        let req = &self.workload.requests[i];
        let worker = &mut self.workers[w];
        worker.decoding -= 1;
        if self.flights[i].admitted {
            worker.cache.release(&req.blocks);
        }
        let l = &mut self.load[w];
        l.decode_requests = (l.decode_requests - 1.0).max(0.0);
        l.requests = l.requests.saturating_sub(1);
        self.finished += 1;
        self.last_done = self.last_done.max(self.now);
        debug_assert_eq!(self.flights[i].worker, w);
        self.try_start_prefill(w);
    }

    /// Blocks on which the router's index and the engines' caches disagree (0 when every
    /// event was applied as emitted).
    fn index_mismatches(&self) -> usize {
        let mut diff = 0;
        for (w, worker) in self.workers.iter().enumerate() {
            let wi = WorkerIdx::new(w as u32).expect("fleet fits worker slots");
            let held: std::collections::HashSet<_> = self.index.worker_block_iter(wi).collect();
            diff += worker.cache.blocks().filter(|b| !held.contains(b)).count();
            diff += held.iter().filter(|b| !worker.cache.contains(**b)).count();
        }
        diff
    }

    fn result(mut self, kind: PolicyKind) -> SimResult {
        self.ttfts_ms.sort_by(f64::total_cmp);
        let q = |p: f64| -> f64 {
            if self.ttfts_ms.is_empty() {
                return 0.0;
            }
            let idx = ((self.ttfts_ms.len() as f64 - 1.0) * p).round() as usize;
            self.ttfts_ms[idx]
        };
        let first_arrival = self
            .workload
            .requests
            .first()
            .map_or(0, |r| us(r.arrival_ms));
        let span_s = (self.last_done.saturating_sub(first_arrival)) as f64 / 1e6;
        let per_worker: Vec<u64> = self.workers.iter().map(|w| w.prefill_tokens).collect();
        let mean = per_worker.iter().sum::<u64>() as f64 / per_worker.len().max(1) as f64;
        let max = per_worker.iter().copied().max().unwrap_or(0) as f64;
        SimResult {
            policy: kind.name().to_string(),
            workload: self.workload.name.clone(),
            workers: self.workers.len(),
            capacity_blocks: self.fleet.capacity_blocks,
            requests: self.finished,
            hit_rate: if self.total_blocks == 0 {
                0.0
            } else {
                self.hit_blocks as f64 / self.total_blocks as f64
            },
            ttft_mean_ms: self.ttfts_ms.iter().sum::<f64>() / self.ttfts_ms.len().max(1) as f64,
            ttft_p50_ms: q(0.5),
            ttft_p99_ms: q(0.99),
            throughput_rps: if span_s > 0.0 {
                self.finished as f64 / span_s
            } else {
                0.0
            },
            imbalance: if mean > 0.0 { max / mean } else { 1.0 },
            prefill_tokens_per_worker: per_worker,
            evictions: self.workers.iter().map(|w| w.cache.evictions()).sum(),
            index_entries: self.index.stats().entries,
            index_mismatches: self.index_mismatches(),
            ttft_cdf_ms: std::mem::take(&mut self.ttfts_ms),
        }
    }
}
