//! Routing policies: the cache-aware cost function and the baselines we compare it with.
//!
//! Every policy sees the same input (the request's block hashes, each live worker's load and
//! the index's per-worker overlaps) and is driven identically by the live router and by the
//! offline simulator, so simulated figures predict live ones.
//!
//! `cache-aware`: `cost(w) = a*(blocks - overlap(w)) + b*prefill_load(w) + c*decode_load(w)`,
//! all in units of "blocks of prefill work": the first term is the prefill this request would
//! cause on `w`, the second the prefill already queued there (what this request waits behind),
//! the third a per-running-request charge for decode interference. Minimum wins; ties are
//! broken at random; with `temperature > 0` the pick is a softmax sample over `-cost/T`.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::index::{IdentityHasher, Overlap, WorkerIdx};
use crate::protocol::BlockHash;

/// Which policy routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Minimum of uncached prefill + load, from the event-fed index (the default).
    CacheAware,
    /// Each worker in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Fewest requests in flight.
    LeastLoaded,
    /// Predicts caches from its own routing history (TTL, no events): the SGLang-router way.
    Approx,
}

impl PolicyKind {
    /// Every policy, in the order `--help` lists them.
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::CacheAware,
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoaded,
        PolicyKind::Approx,
    ];

    /// One line for `--help`.
    pub fn describe(self) -> &'static str {
        match self {
            PolicyKind::CacheAware => {
                "Minimum of uncached prefill + load, from the event-fed index (the default)"
            }
            PolicyKind::RoundRobin => "Each worker in turn",
            PolicyKind::Random => "Uniformly at random",
            PolicyKind::LeastLoaded => "Fewest requests in flight",
            PolicyKind::Approx => {
                "Predicts caches from its own routing history (TTL, no events): the SGLang-router way"
            }
        }
    }

    /// The policy's name on the command line and in JSON (`cache-aware`, ...).
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::CacheAware => "cache-aware",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::Approx => "approx",
        }
    }

    /// Does this policy read the event-fed index?
    pub fn uses_index(self) -> bool {
        self == PolicyKind::CacheAware
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown policy {s:?}"))
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Cost weights and knobs (the router's and the simulator's flags fill them in).
#[derive(Clone, Debug, Serialize)]
pub struct PolicyConfig {
    /// Weight `a` on the request's uncached blocks.
    pub uncached_weight: f64,
    /// Weight `b` on the worker's queued prefill blocks.
    pub prefill_weight: f64,
    /// Weight `c` on the worker's running (decoding) requests, in blocks per request.
    pub decode_weight: f64,
    /// Softmax temperature in cost units; 0 picks the minimum.
    pub temperature: f64,
    /// `approx`: how long a routed prefix is assumed cached, in milliseconds.
    pub approx_ttl_ms: u64,
    /// `approx`: route by prefix match only when it covers more than this fraction.
    pub approx_threshold: f64,
    /// `approx`: fall back to least-loaded when max - min in-flight exceeds this.
    pub approx_balance_abs: u32,
    /// Seed for tie-breaks and sampling (reproducible runs).
    pub seed: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            uncached_weight: 1.0,
            prefill_weight: 1.0,
            decode_weight: 1.0,
            temperature: 0.0,
            approx_ttl_ms: 120_000,
            approx_threshold: 0.5,
            approx_balance_abs: 32,
            seed: 0,
        }
    }
}

/// A live worker's load as the policy sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkerLoad {
    /// Uncached prefill blocks queued or running on the worker.
    pub prefill_blocks: f64,
    /// Requests decoding on the worker.
    pub decode_requests: f64,
    /// Requests in flight (any phase).
    pub requests: u32,
}

/// One routable worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub worker: WorkerIdx,
    pub load: WorkerLoad,
}

/// A candidate's score in a decision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scored {
    #[serde(serialize_with = "ser_worker")]
    pub worker: WorkerIdx,
    pub overlap: u32,
    pub cost: f64,
}

fn ser_worker<S: serde::Serializer>(w: &WorkerIdx, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(w.get() as u64)
}

/// What a policy decided; reused across calls to avoid allocation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Decision {
    /// Index into the candidates of the pick, or None when there were no candidates.
    pub chosen: Option<usize>,
    /// Every candidate with its overlap and cost (cost is 0 for policies without one).
    pub scored: Vec<Scored>,
}

impl Decision {
    pub fn chosen_scored(&self) -> Option<Scored> {
        self.chosen.map(|i| self.scored[i])
    }
}

/// A policy instance with its state (round-robin counter, RNG, approx history).
#[derive(Debug)]
pub struct Policy {
    kind: PolicyKind,
    config: PolicyConfig,
    rng: StdRng,
    next_rr: usize,
    approx: ApproxHistory,
    overlap_by_worker: Vec<u32>,
    ties: Vec<usize>,
}

impl Policy {
    pub fn new(kind: PolicyKind, config: PolicyConfig) -> Self {
        Policy {
            kind,
            rng: StdRng::seed_from_u64(config.seed),
            config,
            next_rr: 0,
            approx: ApproxHistory::default(),
            overlap_by_worker: Vec::new(),
            ties: Vec::new(),
        }
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Picks a worker for a request of `hashes` among `candidates`. `overlaps` are the
    /// index's (plus speculation's) per-worker overlaps; policies that do not use the index
    /// ignore them. `now_ms` is the caller's clock (simulated or real).
    pub fn choose(
        &mut self,
        hashes: &[BlockHash],
        candidates: &[Candidate],
        overlaps: &[Overlap],
        now_ms: u64,
        out: &mut Decision,
    ) {
        out.chosen = None;
        out.scored.clear();
        if candidates.is_empty() {
            return;
        }
        // Dense per-slot overlap table (reused): O(candidates + overlaps), no hashing.
        let max_slot = candidates.iter().map(|c| c.worker.get()).max().unwrap_or(0);
        self.overlap_by_worker.clear();
        self.overlap_by_worker.resize(max_slot + 1, 0);
        match self.kind {
            PolicyKind::CacheAware => {
                for o in overlaps {
                    if let Some(slot) = self.overlap_by_worker.get_mut(o.worker.get()) {
                        *slot = (*slot).max(o.blocks);
                    }
                }
            }
            PolicyKind::Approx => {
                self.approx.overlaps(
                    hashes,
                    now_ms,
                    self.config.approx_ttl_ms,
                    &mut self.overlap_by_worker,
                );
            }
            _ => {}
        }
        let n = hashes.len() as f64;
        let cfg = &self.config;
        for c in candidates {
            let overlap = self.overlap_by_worker[c.worker.get()];
            let cost = match self.kind {
                PolicyKind::CacheAware => {
                    cfg.uncached_weight * (n - f64::from(overlap))
                        + cfg.prefill_weight * c.load.prefill_blocks
                        + cfg.decode_weight * c.load.decode_requests
                }
                PolicyKind::LeastLoaded | PolicyKind::Approx => f64::from(c.load.requests),
                PolicyKind::RoundRobin | PolicyKind::Random => 0.0,
            };
            out.scored.push(Scored {
                worker: c.worker,
                overlap,
                cost,
            });
        }
        let pick = match self.kind {
            PolicyKind::RoundRobin => {
                let i = self.next_rr % candidates.len();
                self.next_rr = self.next_rr.wrapping_add(1);
                i
            }
            PolicyKind::Random => self.rng.random_range(0..candidates.len()),
            PolicyKind::Approx => self.approx_pick(hashes.len(), &out.scored),
            PolicyKind::CacheAware if self.config.temperature > 0.0 => {
                softmax_pick(&mut self.rng, &out.scored, self.config.temperature)
            }
            PolicyKind::CacheAware | PolicyKind::LeastLoaded => {
                min_pick(&mut self.rng, &out.scored, &mut self.ties)
            }
        };
        out.chosen = Some(pick);
    }

    /// Tells the policy where a request went, so history-based policies learn from it.
    pub fn observe_routed(&mut self, worker: WorkerIdx, hashes: &[BlockHash], now_ms: u64) {
        if self.kind == PolicyKind::Approx {
            self.approx
                .record(worker, hashes, now_ms, self.config.approx_ttl_ms);
        }
    }

    /// Forgets a worker that left (approx history).
    pub fn forget_worker(&mut self, worker: WorkerIdx) {
        self.approx.forget(worker);
    }

    /// SGLang's rule: balance first, then prefix match above a threshold, else least loaded.
    fn approx_pick(&mut self, blocks: usize, scored: &[Scored]) -> usize {
        let (min_load, max_load) = scored.iter().fold((f64::MAX, 0.0f64), |(lo, hi), s| {
            (lo.min(s.cost), hi.max(s.cost))
        });
        let imbalanced = max_load - min_load > f64::from(self.config.approx_balance_abs);
        if !imbalanced && blocks > 0 {
            let (best, s) = scored
                .iter()
                .enumerate()
                .max_by_key(|(_, s)| s.overlap)
                .expect("non-empty");
            if f64::from(s.overlap) / blocks as f64 > self.config.approx_threshold {
                return best;
            }
        }
        min_pick(&mut self.rng, scored, &mut self.ties)
    }
}

/// Minimum cost, uniform among ties.
fn min_pick(rng: &mut StdRng, scored: &[Scored], ties: &mut Vec<usize>) -> usize {
    let min = scored.iter().map(|s| s.cost).fold(f64::INFINITY, f64::min);
    ties.clear();
    ties.extend(
        scored
            .iter()
            .enumerate()
            .filter(|(_, s)| s.cost <= min + 1e-9)
            .map(|(i, _)| i),
    );
    match ties.len() {
        1 => ties[0],
        n => ties[rng.random_range(0..n)],
    }
}

/// Samples with probability proportional to `exp(-(cost - min) / t)`.
fn softmax_pick(rng: &mut StdRng, scored: &[Scored], t: f64) -> usize {
    let min = scored.iter().map(|s| s.cost).fold(f64::INFINITY, f64::min);
    let total: f64 = scored.iter().map(|s| (-(s.cost - min) / t).exp()).sum();
    let mut x = rng.random::<f64>() * total;
    for (i, s) in scored.iter().enumerate() {
        x -= (-(s.cost - min) / t).exp();
        if x <= 0.0 {
            return i;
        }
    }
    scored.len() - 1
}

/// `approx`'s predicted caches: block hash → (worker, last routed at), expired by TTL.
#[derive(Debug, Default)]
struct ApproxHistory {
    seen: HashMap<u64, Vec<(WorkerIdx, u64)>, std::hash::BuildHasherDefault<IdentityHasher>>,
    records_since_prune: usize,
}

impl ApproxHistory {
    fn record(&mut self, w: WorkerIdx, hashes: &[BlockHash], now: u64, ttl: u64) {
        for h in hashes {
            let list = self.seen.entry(h.0).or_default();
            match list.iter_mut().find(|(x, _)| *x == w) {
                Some(e) => e.1 = now,
                None => list.push((w, now)),
            }
        }
        self.records_since_prune += hashes.len();
        // Amortized pruning keeps memory bounded by what the TTL window routed.
        if self.records_since_prune > self.seen.len().max(1024) {
            self.records_since_prune = 0;
            self.seen.retain(|_, list| {
                list.retain(|(_, t)| now.saturating_sub(*t) <= ttl);
                !list.is_empty()
            });
        }
    }

    fn overlaps(&self, hashes: &[BlockHash], now: u64, ttl: u64, out: &mut [u32]) {
        // Walk the prefix; a worker's overlap ends at its first missing (or expired) block.
        for (i, h) in hashes.iter().enumerate() {
            let Some(list) = self.seen.get(&h.0) else {
                return;
            };
            let mut any = false;
            for &(w, t) in list {
                if now.saturating_sub(t) <= ttl {
                    if let Some(slot) = out.get_mut(w.get()) {
                        if *slot == i as u32 {
                            *slot += 1;
                            any = true;
                        }
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    fn forget(&mut self, w: WorkerIdx) {
        self.seen.retain(|_, list| {
            list.retain(|(x, _)| *x != w);
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u32) -> WorkerIdx {
        WorkerIdx::new(i).unwrap()
    }

    fn cands(loads: &[(f64, f64, u32)]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &(p, d, r))| Candidate {
                worker: w(i as u32),
                load: WorkerLoad {
                    prefill_blocks: p,
                    decode_requests: d,
                    requests: r,
                },
            })
            .collect()
    }

    fn hashes(n: u64) -> Vec<BlockHash> {
        (1..=n).map(BlockHash).collect()
    }

    #[test]
    fn cache_aware_prefers_overlap_until_load_outweighs_it() {
        let mut p = Policy::new(PolicyKind::CacheAware, PolicyConfig::default());
        let mut d = Decision::default();
        let overlaps = [Overlap {
            worker: w(1),
            blocks: 8,
        }];
        p.choose(
            &hashes(10),
            &cands(&[(0.0, 0.0, 0), (3.0, 0.0, 1)]),
            &overlaps,
            0,
            &mut d,
        );
        // w0: 10 uncached; w1: 2 uncached + 3 queued = 5.
        assert_eq!(d.chosen_scored().unwrap().worker, w(1));
        assert_eq!(d.scored[0].cost, 10.0);
        assert_eq!(d.scored[1].cost, 5.0);
        p.choose(
            &hashes(10),
            &cands(&[(0.0, 0.0, 0), (9.0, 0.0, 3)]),
            &overlaps,
            0,
            &mut d,
        );
        assert_eq!(d.chosen_scored().unwrap().worker, w(0));
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut p = Policy::new(PolicyKind::CacheAware, PolicyConfig::default());
        let mut d = Decision::default();
        let mut seen = [0u32; 3];
        for _ in 0..300 {
            p.choose(&hashes(4), &cands(&[(0.0, 0.0, 0); 3]), &[], 0, &mut d);
            seen[d.chosen.unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn softmax_spreads_by_cost() {
        let config = PolicyConfig {
            temperature: 2.0,
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(PolicyKind::CacheAware, config);
        let mut d = Decision::default();
        let mut seen = [0u32; 2];
        for _ in 0..1000 {
            p.choose(
                &hashes(4),
                &cands(&[(0.0, 0.0, 0), (2.0, 0.0, 0)]),
                &[],
                0,
                &mut d,
            );
            seen[d.chosen.unwrap()] += 1;
        }
        // p(w1) = e^-1 / (1 + e^-1) ≈ 0.27.
        assert!(seen[1] > 180 && seen[1] < 360, "{seen:?}");
    }

    #[test]
    fn baselines() {
        let mut d = Decision::default();
        let c = cands(&[(0.0, 0.0, 5), (0.0, 0.0, 1), (0.0, 0.0, 3)]);
        let mut rr = Policy::new(PolicyKind::RoundRobin, PolicyConfig::default());
        let picks: Vec<usize> = (0..4)
            .map(|_| {
                rr.choose(&hashes(1), &c, &[], 0, &mut d);
                d.chosen.unwrap()
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
        let mut ll = Policy::new(PolicyKind::LeastLoaded, PolicyConfig::default());
        ll.choose(&hashes(1), &c, &[], 0, &mut d);
        assert_eq!(d.chosen, Some(1));
        let mut r = Policy::new(PolicyKind::Random, PolicyConfig::default());
        r.choose(&hashes(1), &c, &[], 0, &mut d);
        assert!(d.chosen.unwrap() < 3);
        let mut none = Policy::new(PolicyKind::CacheAware, PolicyConfig::default());
        none.choose(&hashes(1), &[], &[], 0, &mut d);
        assert_eq!(d.chosen, None);
    }

    #[test]
    fn approx_learns_from_history_and_forgets_after_ttl() {
        let config = PolicyConfig {
            approx_ttl_ms: 1000,
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(PolicyKind::Approx, config);
        let mut d = Decision::default();
        let c = cands(&[(0.0, 0.0, 0), (0.0, 0.0, 1)]);
        p.observe_routed(w(1), &hashes(10), 0);
        p.choose(&hashes(10), &c, &[], 500, &mut d);
        assert_eq!(d.chosen, Some(1), "prefix match wins over lower load");
        assert_eq!(d.scored[1].overlap, 10);
        p.choose(&hashes(10), &c, &[], 5000, &mut d);
        assert_eq!(d.chosen, Some(0), "expired history: least loaded");
        assert_eq!(d.scored[1].overlap, 0);
    }
}
