//! The stale-cache window (`cargo bench -p worker-reporter --bench stale_cache`): KV events are
//! lost on purpose; the bench counts false hits (decisions that send a prompt to a worker that
//! no longer holds it) and measures how long the router's view stays wrong.
//!
//! Mock vLLM engines (64 blocks of 16 tokens, ZMQ KV events with a replay socket), a
//! `worker-reporter` beside each (digest interval 2 s; 1 s in small mode), a real
//! nats-server and the router in-process (cache-aware, speculation off). Losses are switched
//! on and off at run time on an engine's publisher ([`DropControl`]); a dropped batch still
//! goes to the replay buffer, as with `--kv-drop-fraction`. Ground truth is the in-process
//! engine's own cache.
//!
//! - **A, tail loss, quiet** (the hard case: no later batch reveals the gap): a prompt P is
//!   cached on worker X and seen by the router; X's events are then dropped (100%) while prompts
//!   sent straight to X make it evict P; losses stop and nothing more happens. `/route` for P is
//!   polled every 10 ms for at most 15 s: a decision choosing X with an overlap X no longer
//!   holds is a false hit. Recovered = the router's view of X equals the engine's cache (the
//!   reporter's tail probe, at each digest tick while the stream is quiet). The trials cache P
//!   at 0, 0.2, .. 0.8 digest intervals after one of X's digest ticks (seen on NATS); right
//!   after a tick is the worst case, as the next one is a whole interval away. Each trial must
//!   recover within the digest interval plus a 500 ms margin. (Before the reporter's fix, a
//!   live batch since the previous tick skipped the probe, so a tail lost right after a tick
//!   waited two intervals: this scenario failed, in small mode too.)
//! - **A', tail loss, then traffic**: the same loss, then P is sent through the router at
//!   once: a real false hit (the engine reports 0 cached tokens), whose batch reveals the gap,
//!   which the reporter fills from the replay socket; recovery is timed from the end of the
//!   losses, and two more requests for P follow it (hits).
//! - **B, random loss under traffic**: requests through the router over shared prefixes, with
//!   0% (baseline: propagation lag only) and 30% of live batches lost on every engine. False
//!   hits are counted on the `/route` decision taken just before each request (against the
//!   engine's cache) and on the proxied request (engine `cached_tokens` below the predicted
//!   overlap); then the time from the last answer until every engine's cache equals the
//!   router's view.
//! - **C, no replay socket**: tail loss on an engine whose reporter has no replay endpoint:
//!   nothing can repair the view while the stream is quiet; the next batch shows a gap and the
//!   reporter starts a new epoch from its mirror, which itself missed the lost events.
//!
//! Printed: a table (scenario, loss, digest interval, false hits, recovery, pass/fail) and, in
//! full mode, `docs/img/stale-cache.png`: the router's believed overlap on X against the
//! engine's real holding over the slowest A trial.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use cache_router::mock::engine_block_hashes;
use cache_router_bus::zmq::DropControl;
use cache_router_core::hashing::{block_hashes, namespace_seed};
use cache_router_core::protocol::BlockHash;
use cache_router_testkit::engines::{
    engine_cache_as_ours, start_engine, start_reporter, Engine, EngineSpec, ReporterSpec,
};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::{assert_eventually, eventually, http_client, BLOCK_SIZE as BS, MODEL};
use support::timeline::{Sample, Timeline};
use support::{Clock, Decision, EventTap, Router, POLL};
use worker_reporter::Reporter;

const NUM_BLOCKS: usize = 64;
const P_BLOCKS: usize = 20;
const FILLER_BLOCKS: usize = 40;
/// Allowed on top of the digest interval.
const MARGIN: Duration = Duration::from_millis(500);
/// The prototype gave up after this long.
const GIVE_UP: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
struct Plan {
    small: bool,
    digest: Duration,
    /// Per tail-loss trial: when P is cached after a digest tick, in digest intervals.
    tail_phases: &'static [f64],
    requests: usize,
    /// How long scenario C watches a quiet stream.
    no_replay_watch: Duration,
}

impl Plan {
    fn new(small: bool) -> Plan {
        if small {
            Plan {
                small,
                digest: Duration::from_secs(1),
                tail_phases: &[0.0],
                requests: 40,
                no_replay_watch: Duration::from_secs(1),
            }
        } else {
            Plan {
                small,
                digest: Duration::from_secs(2),
                tail_phases: &[0.0, 0.2, 0.4, 0.6, 0.8],
                requests: 300,
                no_replay_watch: GIVE_UP,
            }
        }
    }

    fn bound(&self) -> Duration {
        self.digest + MARGIN
    }
}

/// One engine, its publisher's drop control and its reporter.
struct Node {
    id: String,
    engine: Engine,
    drop: DropControl,
    reporter: Reporter,
}

/// An engine (with the publisher's [`DropControl`]) and a reporter with the given digest
/// interval.
async fn start_node(nats: &str, id: &str, replay: bool, digest: Duration) -> Node {
    let spec = EngineSpec {
        num_blocks: NUM_BLOCKS,
        replay,
        ..EngineSpec::default()
    };
    let engine = start_engine(spec).await.expect("a mock engine starts");
    let reporter = ReporterSpec {
        digest_interval: digest,
        replay,
        ..ReporterSpec::new(id)
    };
    let reporter = start_reporter(nats, &engine, &reporter);
    let drop = engine.mock.drop.clone();
    Node {
        id: id.into(),
        drop: drop.expect("the engine publishes KV events"),
        engine,
        reporter,
    }
}

/// A router, its engines, and engine hash → our hash for every block the bench sent.
struct Fleet {
    _server: NatsServer,
    nats: String,
    router: Router,
    nodes: Vec<Node>,
    http: reqwest::Client,
    ours: HashMap<u64, BlockHash>,
    rng: StdRng,
}

impl Fleet {
    async fn start(ids: &[&str], replay: bool, digest: Duration, seed: u64) -> Fleet {
        let nats = NatsServer::start();
        let router = Router::start(&nats.url()).await;
        let mut nodes = Vec::new();
        for id in ids {
            nodes.push(start_node(&nats.url(), id, replay, digest).await);
        }
        let http = http_client();
        router.wait_for_workers(&http, ids.len()).await;
        Fleet {
            nats: nats.url(),
            _server: nats,
            router,
            nodes,
            http,
            ours: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Stops the router, then every reporter and engine, and waits for each.
    async fn stop(self) {
        self.router.stop().await;
        for n in self.nodes {
            n.reporter.stop().await.expect("the reporter stops");
            n.engine.stop().await;
        }
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("a known node")
    }

    /// Token ids sharing no block with anything sent before; remembers their hashes.
    fn fresh(&mut self, blocks: usize) -> Vec<u32> {
        let t: Vec<u32> = (0..blocks * BS + 5)
            .map(|_| self.rng.random_range(1_000..30_000))
            .collect();
        self.learn(&t);
        t
    }

    fn learn(&mut self, tokens: &[u32]) {
        let engine = engine_block_hashes(tokens, BS);
        let ours = block_hashes(namespace_seed(MODEL, None), tokens, BS);
        self.ours.extend(engine.into_iter().zip(ours));
    }

    /// Sends a prompt straight to one engine (not through the router).
    async fn direct(&self, id: &str, tokens: &[u32]) {
        let resp = self
            .http
            .post(format!("{}/v1/completions", self.node(id).engine.url()))
            .json(&body(tokens))
            .send()
            .await
            .expect("direct completion");
        assert!(resp.status().is_success(), "direct: {}", resp.status());
    }

    /// (phantom, missing): blocks the router believes `id` holds that its engine does not,
    /// and the reverse.
    async fn divergence(&self, id: &str) -> (usize, usize) {
        let router: HashSet<BlockHash> = self
            .router
            .fleet
            .worker_blocks(id)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let engine: HashSet<BlockHash> = engine_cache_as_ours(&self.node(id).engine, &self.ours)
            .into_iter()
            .collect();
        (
            router.difference(&engine).count(),
            engine.difference(&router).count(),
        )
    }

    async fn agrees(&self, id: &str) -> bool {
        self.divergence(id).await == (0, 0)
    }

    /// The worker's epoch at the router, once it is not resyncing.
    async fn epoch(&self, id: &str) -> Option<u64> {
        let w = self.router.fleet.worker(id).await.ok().flatten();
        w.filter(|w| !w.resyncing).map(|w| w.epoch)
    }
}

fn body(tokens: &[u32]) -> serde_json::Value {
    json!({"model": MODEL, "prompt": tokens, "max_tokens": 2})
}

/// Leading blocks of `tokens` the engine holds right now (what a request would hit).
fn engine_prefix(engine: &Engine, tokens: &[u32]) -> u32 {
    let cached = engine.mock.engine.cached_hashes();
    engine_block_hashes(tokens, BS)
        .iter()
        .take_while(|h| cached.binary_search(h).is_ok())
        .count() as u32
}

#[derive(Debug, Default)]
struct TailTrial {
    x: String,
    /// When P was cached, after X's last digest tick (None: whenever).
    phase: Option<Duration>,
    /// Digest ticks of X after losses stopped, up to and including the one that repaired
    /// the view.
    ticks_to_repair: usize,
    /// X's digest ticks, in seconds since losses started.
    digests: Vec<f64>,
    /// Batches dropped while losses were on.
    dropped: u64,
    fillers: usize,
    /// The loss window, from switching losses on to switching them off.
    loss: Duration,
    /// The router's overlap for X on P when losses stopped.
    believed_at_end: u32,
    polls: u32,
    false_dry: u32,
    requests: u32,
    false_proxied: u32,
    recovery: Option<Duration>,
    samples: Vec<Sample>,
    blocks: u32,
}

impl Fleet {
    /// Caches P on `x` (`phase` after one of its reporter's digest ticks, when given), loses
    /// every event of `x` while `x` evicts P, then watches `/route` (or, with `requests > 0`,
    /// sends P through the router that many times) until the router's view of `x` equals its
    /// engine, or `watch` passes.
    async fn tail_loss(
        &mut self,
        x: &str,
        requests: u32,
        watch: Duration,
        phase: Option<Duration>,
    ) -> TailTrial {
        let tap = EventTap::start(&self.nats, x).await;
        let p = self.fresh(P_BLOCKS);
        let pb = body(&p);
        if let Some(after) = phase {
            tap.next_digest().await;
            tokio::time::sleep(after).await;
        }
        self.direct(x, &p).await;
        assert_eventually!(
            self.router.route(&self.http, &pb).await.overlap(x) as usize == P_BLOCKS
                && self.agrees(x).await,
            "the router sees P on {x}"
        );
        let mut trial = TailTrial {
            x: x.into(),
            phase,
            blocks: P_BLOCKS as u32,
            ..TailTrial::default()
        };
        let start = Instant::now();
        let node = self.node(x);
        let dropped_before = node.drop.dropped();
        node.drop.set_fraction(1.0);
        trial.samples.push(Sample {
            t: 0.0,
            believed: P_BLOCKS as u32,
            real: engine_prefix(&node.engine, &p),
        });
        while engine_prefix(&self.node(x).engine, &p) > 0 {
            assert!(trial.fillers < 20, "{x} still holds P");
            let f = self.fresh(FILLER_BLOCKS);
            self.direct(x, &f).await;
            trial.fillers += 1;
            let d = self.router.route(&self.http, &pb).await;
            trial.samples.push(Sample {
                t: start.elapsed().as_secs_f64(),
                believed: d.overlap(x),
                real: engine_prefix(&self.node(x).engine, &p),
            });
        }
        // Each filler is one engine step, so one batch; wait until the publisher has
        // dropped them all before losses stop (else the last one could still go out live).
        let node = self.node(x);
        let want = dropped_before + trial.fillers as u64;
        assert_eventually!(
            node.drop.dropped() >= want,
            "the publisher dropped {want} batches"
        );
        node.drop.set_fraction(0.0);
        let t0 = Instant::now();
        trial.loss = start.elapsed();
        trial.dropped = node.drop.dropped() - dropped_before;

        loop {
            let elapsed = t0.elapsed();
            let d = self.router.route(&self.http, &pb).await;
            let real = engine_prefix(&self.node(x).engine, &p);
            let believed = d.overlap(x);
            if trial.polls == 0 {
                trial.believed_at_end = believed;
            }
            trial.polls += 1;
            if d.chosen == x && believed > real {
                trial.false_dry += 1;
            }
            trial.samples.push(Sample {
                t: start.elapsed().as_secs_f64(),
                believed,
                real,
            });
            if trial.requests < requests.min(1) {
                // The first request after the loss; the rest follow the recovery.
                trial.requests += 1;
                if self.proxied_false_hit(&pb, &d).await {
                    trial.false_proxied += 1;
                }
            } else if believed == real && self.agrees(x).await {
                trial.recovery = Some(elapsed);
                let loss_end = trial.loss.as_secs_f64();
                let repaired = loss_end + elapsed.as_secs_f64();
                trial.ticks_to_repair = tap
                    .digests(start)
                    .iter()
                    .filter(|&&d| d > loss_end && d <= repaired)
                    .count();
                break;
            }
            if elapsed > watch {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        while trial.requests < requests {
            let d = self.router.route(&self.http, &pb).await;
            trial.requests += 1;
            if self.proxied_false_hit(&pb, &d).await {
                trial.false_proxied += 1;
            }
        }
        trial.digests = tap.digests(start);
        trial
    }

    /// Sends `body` through the router: was the worker's cache hit by less than `predicted`
    /// (the `/route` decision just before) said it held?
    async fn proxied_false_hit(&self, body: &serde_json::Value, predicted: &Decision) -> bool {
        let s = self.router.complete(&self.http, body).await;
        predicted.overlap(&s.worker) as u64 > s.cached_tokens / BS as u64
    }
}

#[derive(Debug, Default)]
struct TrafficRun {
    loss: f64,
    requests: u32,
    /// Decisions that predicted an overlap on the chosen worker.
    predicted: u32,
    false_dry: u32,
    false_proxied: u32,
    dropped: u64,
    /// Per worker: time from the last answer until the router's view equals the engine.
    recovery: Vec<(String, Option<Duration>)>,
}

impl TrafficRun {
    fn worst(&self) -> Option<Duration> {
        self.recovery
            .iter()
            .map(|(_, r)| *r)
            .try_fold(Duration::ZERO, |a, r| r.map(|r| a.max(r)))
    }
}

impl Fleet {
    /// `requests` through the router, one at a time, over 10 shared 6-block prefixes with a
    /// fresh suffix, with `loss` of every engine's live batches dropped.
    async fn traffic(&mut self, loss: f64, requests: u32) -> TrafficRun {
        let prefixes: Vec<Vec<u32>> = (0..10).map(|_| self.fresh(6)[..6 * BS].to_vec()).collect();
        let mut run = TrafficRun {
            loss,
            requests,
            ..TrafficRun::default()
        };
        let dropped_before: u64 = self.nodes.iter().map(|n| n.drop.dropped()).sum();
        for n in &self.nodes {
            n.drop.set_fraction(loss);
        }
        for _ in 0..requests {
            let mut tokens = prefixes[self.rng.random_range(0..prefixes.len())].clone();
            let suffix = self.rng.random_range(1..=6);
            tokens.extend(self.fresh(suffix));
            self.learn(&tokens);
            let b = body(&tokens);
            let d = self.router.route(&self.http, &b).await;
            let predicted = d.overlap(&d.chosen);
            if predicted > 0 {
                run.predicted += 1;
            }
            if predicted > engine_prefix(&self.node(&d.chosen).engine, &tokens) {
                run.false_dry += 1;
            }
            if self.proxied_false_hit(&b, &d).await {
                run.false_proxied += 1;
            }
        }
        let end = Instant::now();
        for n in &self.nodes {
            n.drop.set_fraction(0.0);
        }
        run.dropped = self.nodes.iter().map(|n| n.drop.dropped()).sum::<u64>() - dropped_before;
        let mut pending: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        while !pending.is_empty() && end.elapsed() < GIVE_UP {
            let mut still = Vec::new();
            for id in pending {
                if self.agrees(&id).await {
                    run.recovery.push((id, Some(end.elapsed())));
                } else {
                    still.push(id);
                }
            }
            pending = still;
            tokio::time::sleep(POLL).await;
        }
        run.recovery
            .extend(pending.into_iter().map(|id| (id, None)));
        run.recovery.sort();
        run
    }
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn recovery(r: Option<Duration>) -> String {
    r.map_or_else(|| "NOT RECOVERED".into(), ms)
}

fn verdict(r: Option<Duration>, bound: Duration) -> &'static str {
    match r {
        Some(r) if r <= bound => "pass",
        _ => "FAIL",
    }
}

fn main() {
    support::init_tracing();
    let plan = Plan::new(support::small_mode());
    println!(
        "stale_cache bench ({} mode): digest interval {} ms, margin {} ms, give up after {} s",
        if plan.small { "small/test" } else { "full" },
        plan.digest.as_millis(),
        MARGIN.as_millis(),
        GIVE_UP.as_secs()
    );
    support::runtime().block_on(run(plan));
}

async fn run(plan: Plan) {
    let clock = Clock::start();
    let bound = plan.bound();
    let mut rows: Vec<[String; 7]> = Vec::new();

    let mut fleet = Fleet::start(&["w1", "w2", "w3"], true, plan.digest, 1).await;
    println!(
        "{} fleet: 3 mock engines x {NUM_BLOCKS} blocks of {BS} tokens with replay sockets, \
         3 reporters, router (cache-aware, speculation off)",
        clock.stamp()
    );

    // A: tail loss, quiet. P is cached at a chosen phase after X's digest tick: right after
    // one is the worst case (the next tick is a whole interval away).
    let mut trials = Vec::new();
    for (i, &phase) in plan.tail_phases.iter().enumerate() {
        let x = fleet.nodes[i % fleet.nodes.len()].id.clone();
        let after = plan.digest.mul_f64(phase);
        let t = fleet.tail_loss(&x, 0, GIVE_UP, Some(after)).await;
        println!(
            "{} A#{} tail loss on {x}, P cached {} after a digest tick: {} fillers evicted P, {} \
             batches dropped in {}; router still believed {}/{} blocks; {} false hits in {} \
             /route polls; recovered after {} (by digest tick #{} after the loss)",
            clock.stamp(),
            i + 1,
            ms(after),
            t.fillers,
            t.dropped,
            ms(t.loss),
            t.believed_at_end,
            t.blocks,
            t.false_dry,
            t.polls,
            recovery(t.recovery),
            t.ticks_to_repair
        );
        trials.push(t);
    }
    let worst = trials
        .iter()
        .map(|t| t.recovery)
        .try_fold(Duration::ZERO, |a, r| r.map(|r| a.max(r)));
    let all: Vec<String> = trials.iter().map(|t| recovery(t.recovery)).collect();
    rows.push([
        format!(
            "A: tail loss, quiet ({} trial{})",
            trials.len(),
            if trials.len() == 1 { "" } else { "s" }
        ),
        "100% of X's batches during eviction".into(),
        format!("{} ms", plan.digest.as_millis()),
        format!(
            "{} / {} polls",
            trials.iter().map(|t| t.false_dry).sum::<u32>(),
            trials.iter().map(|t| t.polls).sum::<u32>()
        ),
        "-".into(),
        format!("max {} ({})", recovery(worst), all.join(", ")),
        verdict(worst, bound).into(),
    ]);

    // A': the same loss, then real requests.
    let x = fleet.nodes[0].id.clone();
    let t = fleet.tail_loss(&x, 3, GIVE_UP, None).await;
    println!(
        "{} A' tail loss on {x}, then P through the router at once and twice more after the \
         recovery: {} of {} were false hits (the engine's cached_tokens below the overlap the \
         router predicted); view right again {} after losses stopped",
        clock.stamp(),
        t.false_proxied,
        t.requests,
        recovery(t.recovery)
    );
    rows.push([
        "A': tail loss, then traffic".into(),
        "100% of X's batches during eviction".into(),
        format!("{} ms", plan.digest.as_millis()),
        format!("{} / {} decisions", t.false_dry, t.polls),
        format!("{} / {} requests", t.false_proxied, t.requests),
        recovery(t.recovery),
        verdict(t.recovery, bound).into(),
    ]);
    let a_prime = t;

    // B: random loss under traffic.
    let mut traffic = Vec::new();
    for loss in [0.0, 0.3] {
        let r = fleet.traffic(loss, plan.requests as u32).await;
        println!(
            "{} B loss {:.0}%: {} requests ({} predicted a cached prefix), {} batches dropped; \
             false hits: {} decisions, {} proxied; after the last answer: {}",
            clock.stamp(),
            loss * 100.0,
            r.requests,
            r.predicted,
            r.dropped,
            r.false_dry,
            r.false_proxied,
            r.recovery
                .iter()
                .map(|(w, d)| format!("{w} {}", recovery(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows.push([
            format!("B: random loss under traffic ({} requests)", r.requests),
            format!("{:.0}% of every engine's batches", loss * 100.0),
            format!("{} ms", plan.digest.as_millis()),
            format!("{} / {} decisions", r.false_dry, r.requests),
            format!("{} / {} requests", r.false_proxied, r.requests),
            format!("{} (slowest worker)", recovery(r.worst())),
            verdict(r.worst(), bound).into(),
        ]);
        traffic.push(r);
    }
    fleet.stop().await;

    // C: no replay socket.
    let mut bare = Fleet::start(&["w1", "w2"], false, plan.digest, 2).await;
    println!(
        "{} fleet: 2 mock engines without replay sockets, reporters without replay",
        clock.stamp()
    );
    let x = bare.nodes[0].id.clone();
    let epoch_before = bare.epoch(&x).await;
    assert!(epoch_before.is_some(), "{x} has no epoch at the router");
    let c = bare.tail_loss(&x, 0, plan.no_replay_watch, None).await;
    let (phantom_quiet, missing_quiet) = bare.divergence(&x).await;
    println!(
        "{} C tail loss on {x} without replay: {} false hits in {} /route polls; after {}: {} \
         ({phantom_quiet} phantom blocks, {missing_quiet} missing in the router's view)",
        clock.stamp(),
        c.false_dry,
        c.polls,
        ms(plan.no_replay_watch),
        recovery(c.recovery),
    );
    // The next batch reveals the gap: the reporter starts a new epoch from its mirror.
    let p2 = bare.fresh(2);
    bare.direct(&x, &p2).await;
    let resynced = eventually(
        &format!("the router has a new epoch for {x} after a gap without replay"),
        || async {
            let e = bare.epoch(&x).await;
            e.is_some() && e != epoch_before
        },
    )
    .await;
    let (phantom, missing) = bare.divergence(&x).await;
    println!(
        "{} C next batch on {x}: gap, new epoch; the router had resynced from the reporter's \
         mirror {} after the engine answered; its view still differs from the engine: {phantom} phantom, {missing} \
         missing blocks (the mirror missed the lost events too)",
        clock.stamp(),
        ms(resynced)
    );
    rows.push([
        "C: tail loss, no replay socket".into(),
        "100% of X's batches during eviction".into(),
        format!("{} ms", plan.digest.as_millis()),
        format!("{} / {} polls", c.false_dry, c.polls),
        "-".into(),
        format!(
            "{} in {} s; next batch: new epoch, {phantom} phantom / {missing} missing blocks remain",
            recovery(c.recovery),
            plan.no_replay_watch.as_secs()
        ),
        "expected (no replay)".into(),
    ]);
    bare.stop().await;

    println!();
    println!("| scenario | loss | digest interval | false hits (dry-run) | false hits (proxied) | recovery | ≤ digest + {} ms |", MARGIN.as_millis());
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("| {} |", r.join(" | "));
    }
    println!();

    if !plan.small {
        let slowest = trials
            .iter()
            .max_by_key(|t| t.recovery.unwrap_or(Duration::MAX))
            .expect("a trial");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let path = root.join("docs/img/stale-cache.png");
        let timeline = Timeline {
            title: format!(
                "Tail loss on {}{}: the router's view vs the engine (digest interval {} ms)",
                slowest.x,
                slowest.phase.map_or(String::new(), |p| format!(
                    ", P cached {} after a digest tick",
                    ms(p)
                )),
                plan.digest.as_millis()
            ),
            blocks: slowest.blocks,
            samples: &slowest.samples,
            loss_end: slowest.loss.as_secs_f64(),
            digests: &slowest.digests,
            recovered: slowest.recovery.map(|r| (slowest.loss + r).as_secs_f64()),
            bound: (slowest.loss + bound).as_secs_f64(),
            bound_label: format!(
                "bound: end of losses + digest interval + {} ms",
                MARGIN.as_millis()
            ),
        };
        match timeline.draw(&path) {
            Ok(()) => println!("timeline (slowest A trial): {}", path.display()),
            Err(e) => println!("timeline not drawn: {e}"),
        }
    }

    // The bench's own checks.
    for (i, t) in trials.iter().enumerate() {
        assert!(
            t.recovery.is_some_and(|r| r <= bound),
            "A#{}: the router's view of {} was not right within the digest interval + margin \
             ({}): {}",
            i + 1,
            t.x,
            ms(bound),
            recovery(t.recovery)
        );
    }
    assert!(
        a_prime.recovery.is_some_and(|r| r <= bound),
        "A': not recovered within {}: {}",
        ms(bound),
        recovery(a_prime.recovery)
    );
    assert_eq!(
        a_prime.false_proxied, 1,
        "A': the first request after a tail loss is a false hit, the ones after the recovery \
         are not"
    );
    for r in &traffic {
        assert!(
            r.worst().is_some_and(|w| w <= bound),
            "B at {:.0}% loss: not every engine's view right within {}: {:?}",
            r.loss * 100.0,
            ms(bound),
            r.recovery
        );
    }
    println!(
        "stale_cache: every scenario with replay recovered within the digest interval + {} ms",
        MARGIN.as_millis()
    );
}
