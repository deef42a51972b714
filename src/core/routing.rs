//! One routing decision, I/O-free: candidates from the fleet's registry minus the workers the
//! proxy has ejected ([`Liveness`]), overlaps from the index (plus speculation), load from the
//! router's own accounting combined with what workers report, then the policy. It runs on the thread that owns the fleet, so it reads a
//! consistent index without any lock.
//!
//! The outcome ranks every candidate (the pick first, then by cost) so the proxy can retry on
//! the next best worker, and carries the timings of the look-up and scoring steps.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fleet::Fleet;
use crate::index::{LookupScratch, Overlap, Speculation, WorkerIdx};
use crate::liveness::Liveness;
use crate::policy::{Candidate, Decision, Policy, PolicyKind, WorkerLoad};
use crate::protocol::{BlockHash, Load, WorkerId};

/// Where the router's own in-flight accounting comes from (the HTTP layer's counters).
pub trait LoadSource: Send + Sync + std::fmt::Debug {
    fn load(&self, w: WorkerIdx) -> WorkerLoad;
}

/// No in-flight accounting (tools, tests).
#[derive(Debug, Default)]
pub struct NoLoad;

impl LoadSource for NoLoad {
    fn load(&self, _: WorkerIdx) -> WorkerLoad {
        WorkerLoad::default()
    }
}

/// Combines the router's in-flight view with the worker's own report: the router knows the
/// prefill it queued (the worker's report lags), the worker knows requests other routers sent.
pub fn combined_load(ours: WorkerLoad, reported: Option<&Load>) -> WorkerLoad {
    match reported {
        None => ours,
        Some(r) => WorkerLoad {
            prefill_blocks: ours.prefill_blocks,
            decode_requests: ours.decode_requests.max(f64::from(r.running)),
            requests: ours.requests.max(r.running.saturating_add(r.waiting)),
        },
    }
}

/// What the other routers of a fleet have in flight to each worker, from their load reports.
///
/// Without it every router counts only its own requests, so N routers all see the same idle
/// worker as least loaded and pile onto it. Each router's latest report replaces its previous
/// one; a report older than `ttl` (its router stopped or lost NATS) no longer counts. The
/// per-worker totals are kept summed, so a decision reads one slot per candidate.
#[derive(Debug)]
pub struct PeerLoads {
    ttl: Duration,
    reports: std::collections::HashMap<String, PeerReport>,
    /// Sum over the live reports, by worker slot.
    totals: Vec<WorkerLoad>,
    /// When the oldest live report expires (a recount is due then).
    next_expiry: Option<Instant>,
}

#[derive(Debug)]
struct PeerReport {
    at: Instant,
    loads: Vec<(WorkerIdx, WorkerLoad)>,
}

/// Peers' reports kept at most (a fleet has a handful of routers; a flood of fake ids must
/// not grow memory).
pub const MAX_PEER_ROUTERS: usize = 256;

impl PeerLoads {
    pub fn new(ttl: Duration) -> Self {
        PeerLoads {
            ttl,
            reports: std::collections::HashMap::new(),
            totals: Vec::new(),
            next_expiry: None,
        }
    }

    /// Records `router`'s report received at `at`; false when it was refused (too many
    /// routers).
    pub fn update(
        &mut self,
        router: &str,
        at: Instant,
        loads: Vec<(WorkerIdx, WorkerLoad)>,
    ) -> bool {
        if !self.reports.contains_key(router) && self.reports.len() >= MAX_PEER_ROUTERS {
            self.expire(at);
            if self.reports.len() >= MAX_PEER_ROUTERS {
                return false;
            }
        }
        self.reports
            .insert(router.to_owned(), PeerReport { at, loads });
        self.recount(at);
        true
    }

    /// The other routers' load on `w` as of `now`.
    pub fn load(&mut self, w: WorkerIdx, now: Instant) -> WorkerLoad {
        if self.next_expiry.is_some_and(|t| now >= t) {
            self.expire(now);
        }
        self.totals.get(w.get()).copied().unwrap_or_default()
    }

    /// Drops a worker that left from every report.
    pub fn forget_worker(&mut self, w: WorkerIdx) {
        for r in self.reports.values_mut() {
            r.loads.retain(|(x, _)| *x != w);
        }
        if let Some(t) = self.totals.get_mut(w.get()) {
            *t = WorkerLoad::default();
        }
    }

    /// Routers whose reports count at `now`.
    pub fn routers(&self, now: Instant) -> usize {
        self.reports
            .values()
            .filter(|r| now.saturating_duration_since(r.at) < self.ttl)
            .count()
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.reports
            .retain(|_, r| now.saturating_duration_since(r.at) < ttl);
        self.recount(now);
    }

    fn recount(&mut self, now: Instant) {
        for t in &mut self.totals {
            *t = WorkerLoad::default();
        }
        self.next_expiry = None;
        for r in self.reports.values() {
            if now.saturating_duration_since(r.at) >= self.ttl {
                continue;
            }
            let expiry = r.at + self.ttl;
            self.next_expiry = Some(self.next_expiry.map_or(expiry, |e| e.min(expiry)));
            for (w, l) in &r.loads {
                let i = w.get();
                if self.totals.len() <= i {
                    self.totals.resize(i + 1, WorkerLoad::default());
                }
                let t = &mut self.totals[i];
                t.prefill_blocks += l.prefill_blocks;
                t.decode_requests += l.decode_requests;
                t.requests = t.requests.saturating_add(l.requests);
            }
        }
    }
}

/// This router's load plus the other routers'.
fn with_peers(ours: WorkerLoad, peers: WorkerLoad) -> WorkerLoad {
    WorkerLoad {
        prefill_blocks: ours.prefill_blocks + peers.prefill_blocks,
        decode_requests: ours.decode_requests + peers.decode_requests,
        requests: ours.requests.saturating_add(peers.requests),
    }
}

/// What to route.
#[derive(Clone, Debug)]
pub struct RouteRequest {
    pub model: String,
    pub hashes: Vec<BlockHash>,
    /// `/route`: decide without recording speculation or history.
    pub dry_run: bool,
    /// The caller's wall clock, for TTL-based policy state.
    pub now_ms: u64,
    /// The caller's monotonic clock, for ejections.
    pub now: Instant,
    /// Rank at most this many candidates (the proxy needs its attempt budget; `/route` wants
    /// all: 0). Materializing a thousand candidates costs more than choosing among them.
    pub max_candidates: usize,
}

/// One candidate in a decision, best first.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ranked {
    pub worker: WorkerId,
    #[serde(skip)]
    pub slot: WorkerIdx,
    pub url: String,
    /// Leading request blocks the worker holds (confirmed or speculated).
    pub overlap: u32,
    pub cost: f64,
}

/// A decision. Serialized as `/route`'s answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteOutcome {
    pub policy: PolicyKind,
    pub model: String,
    /// Full blocks in the request.
    pub blocks: usize,
    /// Candidates, the pick first, then by increasing cost.
    pub candidates: Vec<Ranked>,
    #[serde(skip)]
    pub lookup: Duration,
    #[serde(skip)]
    pub score: Duration,
}

impl RouteOutcome {
    pub fn chosen(&self) -> Option<&Ranked> {
        self.candidates.first()
    }
}

/// How to build the routing state (cloneable configuration).
#[derive(Clone, Debug)]
pub struct RoutingSetup {
    pub policy: PolicyKind,
    pub config: crate::policy::PolicyConfig,
    /// Speculation: `(max recorded positions, TTL, stride)`; None disables it.
    pub speculation: Option<(u64, Duration, usize)>,
    /// How long another router's in-flight report counts.
    pub peer_load_ttl: Duration,
}

impl Default for RoutingSetup {
    fn default() -> Self {
        RoutingSetup {
            policy: PolicyKind::CacheAware,
            config: crate::policy::PolicyConfig::default(),
            speculation: Some((1_000_000, Duration::from_secs(2), 4)),
            peer_load_ttl: Duration::from_secs(2),
        }
    }
}

impl RoutingSetup {
    pub fn build(&self) -> RoutingState {
        let mut state = RoutingState::new(
            Policy::new(self.policy, self.config.clone()),
            self.speculation
                .map(|(cap, ttl, stride)| Speculation::new(cap, ttl, stride)),
        );
        state.peers = PeerLoads::new(self.peer_load_ttl);
        state
    }
}

/// The decision state that lives with the fleet: policy, speculation and scratch buffers.
#[derive(Debug)]
pub struct RoutingState {
    policy: Policy,
    speculation: Option<Speculation>,
    peers: PeerLoads,
    scratch: LookupScratch,
    overlaps: Vec<Overlap>,
    spec: Vec<(WorkerIdx, u32)>,
    candidates: Vec<Candidate>,
    decision: Decision,
}

impl RoutingState {
    pub fn new(policy: Policy, speculation: Option<Speculation>) -> Self {
        RoutingState {
            policy,
            speculation,
            peers: PeerLoads::new(Duration::from_secs(2)),
            scratch: LookupScratch::default(),
            overlaps: Vec::new(),
            spec: Vec::new(),
            candidates: Vec::new(),
            decision: Decision::default(),
        }
    }

    /// Routes `req` among `fleet`'s registered workers serving `req.model`, leaving out those
    /// `liveness` has ejected unless every one of them is (then trying beats refusing).
    pub fn route(
        &mut self,
        fleet: &Fleet,
        loads: &dyn LoadSource,
        liveness: &Liveness,
        req: &RouteRequest,
    ) -> RouteOutcome {
        let started = Instant::now();
        self.candidates.clear();
        let mut ejected = 0;
        for (_, e) in fleet.workers() {
            if e.info.as_ref().is_some_and(|i| i.model == req.model) {
                if liveness.is_ejected(e.idx, req.now) {
                    ejected += 1;
                    continue;
                }
                let ours = with_peers(loads.load(e.idx), self.peers.load(e.idx, req.now));
                self.candidates.push(Candidate {
                    worker: e.idx,
                    load: combined_load(ours, e.load.as_ref()),
                });
            }
        }
        if self.candidates.is_empty() && ejected > 0 {
            for (_, e) in fleet.workers() {
                if e.info.as_ref().is_some_and(|i| i.model == req.model) {
                    let ours = with_peers(loads.load(e.idx), self.peers.load(e.idx, req.now));
                    self.candidates.push(Candidate {
                        worker: e.idx,
                        load: combined_load(ours, e.load.as_ref()),
                    });
                }
            }
        }
        // Stable candidate order, so ties and round-robin do not depend on hash-map order.
        self.candidates.sort_unstable_by_key(|c| c.worker);
        self.overlaps.clear();
        if self.policy.kind().uses_index() && !self.candidates.is_empty() {
            self.overlaps
                .extend_from_slice(fleet.index().longest_prefix(&req.hashes, &mut self.scratch));
            if let Some(spec) = &self.speculation {
                spec.overlaps(&req.hashes, &mut self.spec);
                for &(w, blocks) in &self.spec {
                    match self.overlaps.iter_mut().find(|o| o.worker == w) {
                        Some(o) => o.blocks = o.blocks.max(blocks),
                        None => self.overlaps.push(Overlap { worker: w, blocks }),
                    }
                }
            }
        }
        let looked_up = Instant::now();
        self.policy.choose(
            &req.hashes,
            &self.candidates,
            &self.overlaps,
            req.now_ms,
            &mut self.decision,
        );
        let chosen = self.decision.chosen;
        // Pick first, then by cost; only the first `k` are ordered and materialized.
        let key = |i: usize, s: &crate::policy::Scored| (Some(i) != chosen, s.cost);
        let mut ranked: Vec<(usize, &crate::policy::Scored)> =
            self.decision.scored.iter().enumerate().collect();
        let k = match req.max_candidates {
            0 => ranked.len(),
            k => k.min(ranked.len()),
        };
        let cmp = |(i, a): &(usize, &crate::policy::Scored),
                   (j, b): &(usize, &crate::policy::Scored)| {
            let (ka, kb) = (key(*i, a), key(*j, b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        };
        if k > 0 && k < ranked.len() {
            ranked.select_nth_unstable_by(k - 1, cmp);
            ranked.truncate(k);
        }
        ranked.sort_by(cmp);
        let candidates: Vec<Ranked> = ranked
            .into_iter()
            .filter_map(|(_, s)| {
                let id = fleet.worker_at(s.worker)?;
                let info = fleet.worker(id)?.info.as_ref()?;
                Some(Ranked {
                    worker: id.clone(),
                    slot: s.worker,
                    url: info.url.clone(),
                    overlap: s.overlap,
                    cost: s.cost,
                })
            })
            .collect();
        if !req.dry_run {
            if let Some(c) = candidates.first() {
                self.policy.observe_routed(c.slot, &req.hashes, req.now_ms);
                if let Some(spec) = &self.speculation {
                    spec.record(c.slot, &req.hashes);
                }
            }
        }
        let scored = Instant::now();
        RouteOutcome {
            policy: self.policy.kind(),
            model: req.model.clone(),
            blocks: req.hashes.len(),
            candidates,
            lookup: looked_up - started,
            score: scored - looked_up,
        }
    }

    /// The other routers' in-flight reports.
    pub fn peers_mut(&mut self) -> &mut PeerLoads {
        &mut self.peers
    }

    /// Forgets per-worker state of a worker that left.
    pub fn forget_worker(&mut self, w: WorkerIdx) {
        self.policy.forget_worker(w);
        self.peers.forget_worker(w);
        if let Some(spec) = &self.speculation {
            spec.forget_worker(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetConfig;
    use crate::liveness::EjectionPolicy;
    use crate::policy::PolicyConfig;
    use crate::protocol::{Body, Envelope, WorkerInfo};

    fn info(id: &str, model: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            url: format!("http://127.0.0.1:9/{id}"),
            model: model.into(),
            block_size: 16,
            epoch: 1,
        }
    }

    fn hs(v: &[u64]) -> Vec<BlockHash> {
        v.iter().map(|&x| BlockHash(x)).collect()
    }

    fn req(model: &str, hashes: &[u64]) -> RouteRequest {
        RouteRequest {
            model: model.into(),
            hashes: hs(hashes),
            dry_run: false,
            now_ms: 0,
            now: Instant::now(),
            max_candidates: 0,
        }
    }

    fn live() -> Liveness {
        Liveness::new(16, EjectionPolicy::default(), Instant::now())
    }

    fn fleet() -> Fleet {
        let mut f = Fleet::new(FleetConfig::default());
        for (id, model) in [("a", "m"), ("b", "m"), ("c", "other")] {
            f.register(info(id, model));
        }
        f
    }

    #[test]
    fn repeated_prefix_goes_where_it_is_cached_and_new_prefix_to_least_cost() {
        let mut f = fleet();
        f.apply(
            1,
            Envelope::new(
                "b".into(),
                1,
                1,
                0,
                Body::Stored {
                    blocks: hs(&[1, 2, 3]),
                    parent: None,
                },
            ),
        );
        let mut r = RoutingState::new(
            Policy::new(PolicyKind::CacheAware, PolicyConfig::default()),
            None,
        );
        let out = r.route(&f, &NoLoad, &live(), &req("m", &[1, 2, 3, 4]));
        let chosen = out.chosen().unwrap();
        assert_eq!(chosen.worker, WorkerId::from("b"));
        assert_eq!(chosen.overlap, 3);
        assert_eq!(out.candidates.len(), 2, "only workers of model m");
        assert_eq!(out.candidates[1].worker, WorkerId::from("a"));
        assert!(out.candidates[1].cost > chosen.cost);
        let out = r.route(&f, &NoLoad, &live(), &req("other", &[1, 2]));
        assert_eq!(out.chosen().unwrap().worker, WorkerId::from("c"));
        let out = r.route(&f, &NoLoad, &live(), &req("unknown", &[1]));
        assert!(out.candidates.is_empty());
        let mut top1 = req("m", &[1, 2, 3, 4]);
        top1.max_candidates = 1;
        let out = r.route(&f, &NoLoad, &live(), &top1);
        assert_eq!(out.candidates.len(), 1);
        assert_eq!(out.candidates[0].worker, WorkerId::from("b"));
    }

    #[test]
    fn speculation_keeps_a_burst_of_a_new_prefix_together() {
        let f = fleet();
        let spec = Speculation::new(10_000, Duration::from_secs(60), 1);
        let mut r = RoutingState::new(
            Policy::new(PolicyKind::CacheAware, PolicyConfig::default()),
            Some(spec),
        );
        let first = r
            .route(&f, &NoLoad, &live(), &req("m", &[7, 8, 9]))
            .chosen()
            .unwrap()
            .worker
            .clone();
        for _ in 0..5 {
            let out = r.route(&f, &NoLoad, &live(), &req("m", &[7, 8, 9]));
            assert_eq!(out.chosen().unwrap().worker, first);
            assert_eq!(out.chosen().unwrap().overlap, 3);
        }
        // A dry run neither records nor changes the outcome.
        let mut dry = req("m", &[5, 6]);
        dry.dry_run = true;
        let a = r.route(&f, &NoLoad, &live(), &dry);
        assert_eq!(a.chosen().unwrap().overlap, 0);
        let b = r.route(&f, &NoLoad, &live(), &dry);
        assert_eq!(b.chosen().unwrap().overlap, 0);
    }

    #[test]
    fn an_ejected_worker_is_not_ranked_unless_every_worker_is() {
        let mut f = fleet();
        f.apply(
            1,
            Envelope::new(
                "b".into(),
                1,
                1,
                0,
                Body::Stored {
                    blocks: hs(&[1, 2, 3]),
                    parent: None,
                },
            ),
        );
        let mut r = RoutingState::new(
            Policy::new(PolicyKind::CacheAware, PolicyConfig::default()),
            None,
        );
        let live = Liveness::new(
            16,
            EjectionPolicy {
                failures_to_eject: 1,
                ..EjectionPolicy::default()
            },
            Instant::now(),
        );
        let b = f.worker(&WorkerId::from("b")).unwrap().idx;
        let a = f.worker(&WorkerId::from("a")).unwrap().idx;
        let q = req("m", &[1, 2, 3, 4]);
        assert!(live.record_failure(b, q.now));
        let out = r.route(&f, &NoLoad, &live, &q);
        let ids: Vec<&str> = out.candidates.iter().map(|c| c.worker.0.as_str()).collect();
        assert_eq!(ids, ["a"], "b holds the prefix but is ejected");
        assert!(live.record_failure(a, q.now));
        let out = r.route(&f, &NoLoad, &live, &q);
        assert_eq!(out.candidates.len(), 2, "all ejected: all are tried");
        assert_eq!(out.chosen().unwrap().worker, WorkerId::from("b"));
    }

    #[test]
    fn peer_loads_sum_across_routers_and_expire() {
        let t0 = Instant::now();
        let mut p = PeerLoads::new(Duration::from_secs(2));
        let (a, b) = (WorkerIdx::new(0).unwrap(), WorkerIdx::new(3).unwrap());
        let l = |r: u32, pf: f64| WorkerLoad {
            prefill_blocks: pf,
            decode_requests: 0.0,
            requests: r,
        };
        assert!(p.update("r1", t0, vec![(a, l(2, 10.0)), (b, l(1, 4.0))]));
        assert!(p.update("r2", t0 + Duration::from_secs(1), vec![(a, l(3, 5.0))]));
        assert_eq!(p.load(a, t0 + Duration::from_secs(1)), l(5, 15.0));
        assert_eq!(p.routers(t0 + Duration::from_secs(1)), 2);
        // r1's newer report replaces its old one.
        assert!(p.update("r1", t0 + Duration::from_secs(1), vec![(b, l(1, 1.0))]));
        assert_eq!(p.load(a, t0 + Duration::from_secs(1)), l(3, 5.0));
        assert_eq!(p.load(b, t0 + Duration::from_secs(1)), l(1, 1.0));
        // Both reports are from t0+1 s: gone at t0+3 s.
        assert_eq!(
            p.load(a, t0 + Duration::from_secs(3)),
            WorkerLoad::default()
        );
        assert_eq!(p.routers(t0 + Duration::from_secs(3)), 0);
        // A departed worker is forgotten.
        p.update("r3", t0 + Duration::from_secs(3), vec![(a, l(1, 1.0))]);
        p.forget_worker(a);
        assert_eq!(
            p.load(a, t0 + Duration::from_secs(3)),
            WorkerLoad::default()
        );
    }

    #[test]
    fn peer_reports_are_bounded() {
        let t0 = Instant::now();
        let mut p = PeerLoads::new(Duration::from_secs(2));
        for i in 0..MAX_PEER_ROUTERS {
            assert!(p.update(&format!("r{i}"), t0, Vec::new()));
        }
        assert!(!p.update("one-too-many", t0, Vec::new()));
        assert!(
            p.update("r0", t0, Vec::new()),
            "a known router still updates"
        );
        // Once the old ones expire there is room again.
        assert!(p.update("late", t0 + Duration::from_secs(5), Vec::new()));
    }

    #[test]
    fn another_routers_in_flight_steers_a_new_prefix_away() {
        let f = fleet();
        let mut r = RoutingState::new(
            Policy::new(PolicyKind::CacheAware, PolicyConfig::default()),
            None,
        );
        let q = req("m", &[1, 2, 3, 4]);
        let first = r
            .route(&f, &NoLoad, &live(), &q)
            .chosen()
            .unwrap()
            .worker
            .clone();
        let slot = f.worker(&first).unwrap().idx;
        // Another router has a long prefill queued on that worker.
        r.peers_mut().update(
            "peer",
            q.now,
            vec![(
                slot,
                WorkerLoad {
                    prefill_blocks: 100.0,
                    decode_requests: 1.0,
                    requests: 1,
                },
            )],
        );
        let second = r
            .route(&f, &NoLoad, &live(), &q)
            .chosen()
            .unwrap()
            .worker
            .clone();
        assert_ne!(first, second, "the peer's load counts");
    }

    #[test]
    fn reported_load_combines_with_ours() {
        let ours = WorkerLoad {
            prefill_blocks: 4.0,
            decode_requests: 1.0,
            requests: 2,
        };
        let reported = Load {
            running: 5,
            waiting: 3,
            kv_usage: 0.5,
            num_blocks: None,
        };
        let c = combined_load(ours, Some(&reported));
        assert_eq!(c.prefill_blocks, 4.0);
        assert_eq!(c.decode_requests, 5.0);
        assert_eq!(c.requests, 8);
        assert_eq!(combined_load(ours, None), ours);
    }
}
