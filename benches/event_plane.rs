//! End-to-end benchmarks of the event plane through a real `nats-server` with JetStream
//! (`cargo bench --bench event_plane`). No criterion: each phase is one bounded run whose
//! figures are printed (`[ingest]`, `[recovery]` lines).
//!
//! - **ingest**: one router (the library's `Router::spawn` on NATS) and 100 publishers
//!   (`w000`..`w099`, one [`Publisher`] each) publishing at full speed: Stored chains of 16
//!   blocks (a new root chain or the extension of a held chain) and, once a worker holds 512
//!   blocks, Removed of 16 leaves, so the index stays bounded. Each worker publishes serially (every publish awaits its
//!   JetStream ack, as a reporter does) and all 100 workers publish concurrently. The 100
//!   publishers share one NATS connection (`CACHE_ROUTER_BENCH_CLIENTS=N` for N, round-robin):
//!   on 2 cores shared by nats-server, the router and the publishers, that leaves the most CPU
//!   to the first two (one sweep: ~68 k msgs/s on 1 connection, ~59 k on 4, ~42 k on 100, where
//!   100 connection tasks each flush per message). In production each reporter has its own
//!   connection on its own machine, so its cost is not the router's. 2 M block events in
//!   125 k messages by default (`CACHE_ROUTER_BENCH_INGEST_EVENTS=N`). Printed: block events and
//!   messages applied by the router per second, from the first publish to
//!   `wait_applied(last stream seq)`; publisher-side ack throughput and ack latency; a sampled
//!   publish→applied latency. Then the router's view of several workers is checked against
//!   each publisher's ground truth.
//! - **recovery**: ~1 M resident blocks (100 workers, Stored chains of 64 blocks) applied by
//!   router A, which is shut down (writing its final snapshot to the object store); then a
//!   10 k-message tail (Stored/Removed of 16 blocks) is published while no router runs, and
//!   router B is started (`Router::spawn`, which makes its own NATS connection): the time from
//!   calling it to `wait_ready()` is the recovery time (target: <= 1 s). B's index is checked
//!   against the ground truth. A's snapshot is read back from the object store: it must cover
//!   every message A applied. The breakdown times, on the same snapshot, the first connection
//!   of a fresh client (`connect` returns at once with `retry_on_initial_connect`; the
//!   connection is made in the background, so the first request waits for it), the
//!   infrastructure look-up, fetching the object, decoding it and `Fleet::restore`; the rest of
//!   the recovery time is the tail replay (plus the stream-info call and task start-up).
//!
//! Under `cargo test --all-targets` (no `--bench` argument), with `--test`, or with
//! `CACHE_ROUTER_BENCH_SMALL=1`, every size is shrunk (5 publishers, 2 k block events, 10 k
//! resident blocks) so the run takes seconds in a debug build; the correctness checks stay.
//! Every server binds 127.0.0.1 on a port it picks; every loop is bounded in count and time.

mod common;
#[path = "common/event_chains.rs"]
mod event_chains;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use cache_router::tokenize::{Models, PromptTokenizer};
use cache_router::{FleetHandle, NatsConfig, Router, RouterConfig, RunningRouter};
use cache_router_bus::publisher::Publisher;
use cache_router_bus::snapshot_store::{self, SNAPSHOT_OBJECT};
use cache_router_bus::{Infra, NatsArgs, StreamArgs, Subjects};
use cache_router_core::fleet::{Fleet, FleetConfig, Snapshot};
use cache_router_core::protocol::{BlockHash, Body, WorkerId};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::{http_client, small_mode};
use common::{ms, router_metric, within};
use event_chains::Chains;

/// One in this many publishes per worker is followed to the router (publish→applied latency).
const PROBE_EVERY: usize = 8;
/// Grace for the router's drain on shutdown (HTTP, then the event plane's tasks).
const GRACE: Duration = Duration::from_secs(10);
/// Timeout of one publish ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Repetitions of each step of the recovery breakdown (the median is printed).
const BREAKDOWN_REPS: usize = 3;

/// A positive integer from the environment.
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// Sizes of the run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    small: bool,
    /// NATS connections the publishers share (round-robin).
    clients: usize,
    ingest_workers: usize,
    ingest_block_events: usize,
    ingest_chain: usize,
    /// Most blocks one worker holds during ingest.
    ingest_cap: usize,
    rec_workers: usize,
    rec_resident: usize,
    rec_chain: usize,
    rec_tail_msgs: usize,
    tail_chain: usize,
    /// Workers whose router view is compared block by block with the ground truth.
    check_workers: usize,
    /// Upper bound on each phase.
    phase_limit: Duration,
}

impl Plan {
    fn from_env() -> Plan {
        let small = small_mode();
        let clients = env_usize("CACHE_ROUTER_BENCH_CLIENTS");
        if small {
            Plan {
                small,
                clients: clients.unwrap_or(2),
                ingest_workers: 5,
                ingest_block_events: 2_000,
                ingest_chain: 16,
                ingest_cap: 128,
                rec_workers: 5,
                rec_resident: 10_000,
                rec_chain: 64,
                rec_tail_msgs: 200,
                tail_chain: 16,
                check_workers: 5,
                phase_limit: Duration::from_secs(120),
            }
        } else {
            Plan {
                small,
                clients: clients.unwrap_or(1),
                ingest_workers: 100,
                ingest_block_events: env_usize("CACHE_ROUTER_BENCH_INGEST_EVENTS")
                    .unwrap_or(2_000_000),
                ingest_chain: 16,
                ingest_cap: 512,
                rec_workers: 100,
                rec_resident: 1_000_000,
                rec_chain: 64,
                rec_tail_msgs: 10_000,
                tail_chain: 16,
                check_workers: 10,
                phase_limit: Duration::from_secs(300),
            }
        }
    }
}

#[derive(Debug)]
struct Worker {
    id: WorkerId,
    publisher: Publisher,
    chains: Chains,
}

async fn connect(url: &str, name: &str) -> Client {
    cache_router_bus::connect(&NatsArgs::for_url(url), name)
        .await
        .unwrap_or_else(|e| panic!("connect {name} to {url}: {e}"))
}

/// `n` workers `w000`.. sharing `clients` connections; the event stream is created first.
async fn make_workers(url: &str, n: usize, clients: usize, seed: u64) -> Vec<Worker> {
    let mut conns = Vec::new();
    for i in 0..clients.min(n).max(1) {
        conns.push(connect(url, &format!("bench-publishers-{i}")).await);
    }
    infra(&conns[0]).await;
    (0..n)
        .map(|i| {
            let id = WorkerId(format!("w{i:03}"));
            let publisher = Publisher::new(
                conns[i % conns.len()].clone(),
                Subjects::new("kvr"),
                id.clone(),
                1,
                ACK_TIMEOUT,
            )
            .expect("valid worker id");
            Worker {
                id,
                publisher,
                chains: Chains::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)),
            }
        })
        .collect()
}

/// What one publishing run did.
#[derive(Debug, Default)]
struct Run {
    msgs: u64,
    block_events: u64,
    stored_msgs: u64,
    last_stream_seq: u64,
    /// Per publish: call → JetStream ack, in microseconds.
    ack_us: Vec<u64>,
    /// Sampled: publish call → applied by the router (or acked, if that came later).
    e2e_us: Vec<u64>,
    /// When the first publish was allowed to start.
    t0: Option<Instant>,
    /// First publish → last ack.
    publish_elapsed: Duration,
    /// Whether the deadline cut the run short.
    cut_short: bool,
}

/// Every worker publishes `per_worker` events serially (each awaits its ack), all workers
/// concurrently, starting together. With `probe`, one in `PROBE_EVERY` publishes is followed
/// until the router applied it.
async fn publish_all(
    workers: Vec<Worker>,
    per_worker: usize,
    probe: Option<FleetHandle>,
    deadline: Instant,
) -> (Vec<Worker>, Run) {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(workers.len() + 1));
    type Done = (Worker, Run, Vec<JoinHandle<u64>>);
    let tasks: Vec<JoinHandle<Done>> = workers
        .into_iter()
        .map(|mut w| {
            let start = start.clone();
            let probe = probe.clone();
            tokio::spawn(async move {
                let mut run = Run {
                    ack_us: Vec::with_capacity(per_worker),
                    ..Run::default()
                };
                let mut probes = Vec::new();
                start.wait().await;
                for i in 0..per_worker {
                    if Instant::now() >= deadline {
                        run.cut_short = true;
                        break;
                    }
                    let body = w.chains.next_event();
                    let (blocks, stored) = match &body {
                        Body::Stored { blocks, .. } => (blocks.len(), true),
                        Body::Removed { blocks } => (blocks.len(), false),
                        _ => (1, false),
                    };
                    let t = Instant::now();
                    let receipt = w
                        .publisher
                        .publish(body)
                        .await
                        .unwrap_or_else(|e| panic!("{} publish: {e}", w.id));
                    run.ack_us.push(t.elapsed().as_micros() as u64);
                    let seq = receipt.stream_seq.expect("nothing is deliberately lost");
                    run.msgs += 1;
                    run.block_events += blocks as u64;
                    run.stored_msgs += u64::from(stored);
                    run.last_stream_seq = run.last_stream_seq.max(seq);
                    if let Some(h) = probe.as_ref().filter(|_| i % PROBE_EVERY == 0) {
                        let h = h.clone();
                        probes.push(tokio::spawn(async move {
                            h.wait_applied(seq).await.expect("router running");
                            t.elapsed().as_micros() as u64
                        }));
                    }
                }
                (w, run, probes)
            })
        })
        .collect();
    start.wait().await;
    let t0 = Instant::now();
    let mut total = Run {
        t0: Some(t0),
        ..Run::default()
    };
    let mut workers = Vec::new();
    let mut probes = Vec::new();
    for t in tasks {
        let (w, run, p) = t.await.expect("publisher task");
        total.msgs += run.msgs;
        total.block_events += run.block_events;
        total.stored_msgs += run.stored_msgs;
        total.last_stream_seq = total.last_stream_seq.max(run.last_stream_seq);
        total.ack_us.extend(run.ack_us);
        total.cut_short |= run.cut_short;
        workers.push(w);
        probes.extend(p);
    }
    total.publish_elapsed = t0.elapsed();
    let left = deadline.saturating_duration_since(Instant::now());
    for p in probes {
        match tokio::time::timeout(left, p).await {
            Ok(Ok(us)) => total.e2e_us.push(us),
            _ => break,
        }
    }
    (workers, total)
}

fn percentiles(v: &mut [u64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        at(0.5),
        at(0.99),
        at(1.0),
        v.len()
    )
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// The router's model table needs an entry; this bench never sends it a prompt.
#[derive(Debug)]
struct NoPrompts;

impl PromptTokenizer for NoPrompts {
    fn encode_prompt(&self, _: &str) -> Result<Vec<u32>, String> {
        Err("the event_plane bench sends no prompts".into())
    }

    fn encode_chat(&self, _: &[Value]) -> Result<Vec<u32>, String> {
        Err("the event_plane bench sends no prompts".into())
    }

    fn block_hashes(&self, _: &[u32], _: &mut Vec<BlockHash>) {}
}

/// A router as `cache-router serve --nats URL` wires it with its defaults (snapshot every
/// 100 k messages or 30 s, unbounded index here as in the fleet's own default).
fn router_config(url: &str) -> RouterConfig {
    let mut models = Models::new();
    models.insert(
        "bench".into(),
        Arc::new(NoPrompts) as Arc<dyn PromptTokenizer>,
    );
    let mut config = RouterConfig::new(models);
    config.nats = Some(NatsConfig::new(url));
    config.max_index_entries = None;
    config.shutdown_grace = GRACE;
    config
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a router")
}

async fn start_router(url: &str, name: &str) -> RunningRouter {
    Router::spawn(router_config(url), bind().await)
        .await
        .unwrap_or_else(|e| panic!("start router {name}: {e}"))
}

/// The fleet's JetStream objects (created if missing), as the routers and reporters see them.
async fn infra(client: &Client) -> Infra {
    cache_router_bus::ensure_infra(client, &Subjects::new("kvr"), &StreamArgs::default())
        .await
        .expect("the NATS infrastructure")
}

/// The router's view of `w` equals the publisher's mirror; returns the worker's block count.
async fn check_worker(h: &FleetHandle, w: &Worker) -> usize {
    let truth = w.publisher.ground_truth().await.2.sorted_blocks();
    let view = h.worker_blocks(&w.id.0).await.expect("router running");
    assert_eq!(
        view.len(),
        truth.len(),
        "{}: router holds {} blocks, the worker {}",
        w.id,
        view.len(),
        truth.len()
    );
    assert!(
        view == truth,
        "{}: router view differs from the worker",
        w.id
    );
    truth.len()
}

/// Total resident blocks over all workers' mirrors.
async fn truth_total(workers: &[Worker]) -> usize {
    let mut n = 0;
    for w in workers {
        n += w.publisher.ground_truth().await.2.len();
    }
    n
}

/// Checks `checks` workers spread over the fleet, the index's entry count and the counters.
async fn check_router(h: &FleetHandle, workers: &[Worker], checks: usize) -> usize {
    let step = (workers.len() / checks.max(1)).max(1);
    let mut checked = 0;
    for w in workers.iter().step_by(step).take(checks) {
        check_worker(h, w).await;
        checked += 1;
    }
    let stats = h.stats().await.expect("router running");
    let truth = truth_total(workers).await;
    assert_eq!(
        stats.index.entries, truth,
        "index entries vs ground truth total"
    );
    let c = stats.counters;
    assert_eq!(c.resyncs_total(), 0, "no resync expected: {c:?}");
    assert_eq!(c.duplicates, 0, "{c:?}");
    assert_eq!(c.no_slot, 0, "{c:?}");
    checked
}

async fn ingest_phase(plan: Plan) {
    let deadline = Instant::now() + plan.phase_limit;
    let server = NatsServer::start();
    let url = server.url();
    let router = start_router(&url, "bench-router").await;
    let h = router.fleet().clone();
    within(plan.phase_limit, "empty router ready", h.wait_ready())
        .await
        .expect("router running");

    let mut workers = make_workers(&url, plan.ingest_workers, plan.clients, 1).await;
    for w in &mut workers {
        w.chains.len = plan.ingest_chain;
        w.chains.cap = plan.ingest_cap;
    }
    let per_worker = plan
        .ingest_block_events
        .div_ceil(plan.ingest_chain * plan.ingest_workers);
    println!(
        "[ingest] {} publishers on {} NATS connection(s), {} events each of {} blocks \
         (Stored chains / Removed leaves, <= {} held blocks per worker), each publish awaits \
         its ack, all workers concurrently",
        plan.ingest_workers,
        plan.clients.min(plan.ingest_workers),
        per_worker,
        plan.ingest_chain,
        plan.ingest_cap
    );
    let (workers, run) = publish_all(workers, per_worker, Some(h.clone()), deadline).await;
    let t0 = run.t0.expect("started");
    within(
        deadline.saturating_duration_since(Instant::now()),
        "router applies the last event",
        h.wait_applied(run.last_stream_seq),
    )
    .await
    .expect("router running");
    let e2e = t0.elapsed();
    let fleet = h.stats().await.expect("router running");
    let (c, stats) = (fleet.counters, fleet.index);
    assert_eq!(c.applied, run.msgs, "messages applied vs published: {c:?}");
    assert_eq!(c.block_events, run.block_events, "block events: {c:?}");
    if run.cut_short {
        println!("[ingest] WARNING: the time bound cut publishing short");
    }
    println!(
        "[ingest] router: {} block events in {} messages ({} Stored, {} Removed) applied in \
         {:.0} ms (first publish → wait_applied(seq {})): {:.0} block events/s, {:.0} msgs/s",
        c.block_events,
        c.applied,
        run.stored_msgs,
        run.msgs - run.stored_msgs,
        ms(e2e),
        run.last_stream_seq,
        rate(c.block_events, e2e),
        rate(c.applied, e2e)
    );
    println!(
        "[ingest] publishers: {} acks in {:.0} ms: {:.0} acks/s ({:.0} block events/s); \
         router caught up {:.1} ms after the last ack",
        run.msgs,
        ms(run.publish_elapsed),
        rate(run.msgs, run.publish_elapsed),
        rate(run.block_events, run.publish_elapsed),
        ms(e2e.saturating_sub(run.publish_elapsed))
    );
    let (mut acks, mut e2es) = (run.ack_us, run.e2e_us);
    println!("[ingest] ack latency: {}", percentiles(&mut acks));
    println!(
        "[ingest] publish → applied by the router (1 in {PROBE_EVERY} sampled, >= its ack): {}",
        percentiles(&mut e2es)
    );
    let checked = check_router(&h, &workers, plan.check_workers).await;
    println!(
        "[ingest] correct: {checked} workers' router views equal their ground truth; index \
         entries {} = ground truth total, distinct blocks {}, no resync or duplicate",
        stats.entries, stats.distinct_blocks
    );
    within(plan.phase_limit, "router shutdown", router.stop())
        .await
        .expect("the router stops");
    drop(server);
}

/// Median of `reps` timings of `f`, and its last result.
async fn median_of<T, F, Fut>(reps: usize, mut f: F) -> (Duration, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let r = f().await;
        times.push(t.elapsed());
        last = Some(r);
    }
    times.sort_unstable();
    (times[times.len() / 2], last.expect("at least one rep"))
}

async fn recovery_phase(plan: Plan) {
    let deadline = Instant::now() + plan.phase_limit;
    let server = NatsServer::start();
    let url = server.url();
    let mut workers = make_workers(&url, plan.rec_workers, plan.clients, 2).await;
    let per_worker = plan
        .rec_resident
        .div_ceil(plan.rec_chain * plan.rec_workers);
    for w in &mut workers {
        w.chains.len = plan.rec_chain;
        w.chains.cap = per_worker * plan.rec_chain;
    }

    // Router A applies the resident set, then stops, writing its final snapshot.
    let router_a = start_router(&url, "bench-router-a").await;
    let ha = router_a.fleet().clone();
    let (mut workers, build) = publish_all(workers, per_worker, None, deadline).await;
    assert!(
        !build.cut_short,
        "the time bound cut the resident build short"
    );
    within(
        deadline.saturating_duration_since(Instant::now()),
        "router A applies the resident set",
        ha.wait_applied(build.last_stream_seq),
    )
    .await
    .expect("router running");
    let built = build.t0.expect("started").elapsed();
    let checked_a = check_router(&ha, &workers, plan.check_workers).await;
    let resident_total = truth_total(&workers).await;
    println!(
        "[recovery] built: {} workers × {} Stored events of {} blocks = {} resident blocks, \
         applied by router A {:.0} ms after the first publish ({:.0} acks/s); {} workers \
         checked",
        plan.rec_workers,
        per_worker,
        plan.rec_chain,
        resident_total,
        ms(built),
        rate(build.msgs, build.publish_elapsed),
        checked_a
    );
    // A's counters live on its /metrics, gone once it stops: the periodic snapshots are read
    // before, the final one is read back from the object store after.
    let http = http_client();
    let periodic = router_metric(
        &http,
        router_a.url(),
        "cache_router_snapshots_written_total",
    );
    let periodic = periodic.await as u64;
    let applied_a = ha.applied_stream_seq();
    let t = Instant::now();
    within(plan.phase_limit, "router A shutdown", router_a.stop())
        .await
        .expect("router A stops");
    let shutdown_a = t.elapsed();
    let (snapshot_bytes, final_seq) = stored_snapshot(&url).await;
    assert_eq!(
        final_seq, applied_a,
        "A's final snapshot covers every message it applied"
    );
    assert!(snapshot_bytes > 0, "an empty snapshot object");
    // The periodic ones, plus the final one written on stop and found above.
    let snapshots_written = periodic + 1;
    println!(
        "[recovery] router A shut down in {:.0} ms: snapshots_written {}, final snapshot {} \
         bytes ({:.1} MB, {:.1} bytes per resident block)",
        ms(shutdown_a),
        snapshots_written,
        snapshot_bytes,
        snapshot_bytes as f64 / 1e6,
        snapshot_bytes as f64 / resident_total.max(1) as f64
    );

    // The tail, published while no router runs.
    for w in &mut workers {
        w.chains.len = plan.tail_chain;
        w.chains.cap = w.chains.held;
    }
    let tail_per_worker = plan.rec_tail_msgs.div_ceil(plan.rec_workers);
    let (workers, tail) = publish_all(workers, tail_per_worker, None, deadline).await;
    assert!(!tail.cut_short, "the time bound cut the tail short");
    println!(
        "[recovery] tail: {} messages ({} Stored, {} Removed, {} block events) published in \
         {:.0} ms with no router running",
        tail.msgs,
        tail.stored_msgs,
        tail.msgs - tail.stored_msgs,
        tail.block_events,
        ms(tail.publish_elapsed)
    );

    // Router B: start (its own fresh NATS client included) → ready. What the connect call of
    // a fresh client costs alone is timed just before, on a client dropped at once.
    let t = Instant::now();
    drop(connect(&url, "bench-connect-call").await);
    let connect_time = t.elapsed();
    let (config, listener) = (router_config(&url), bind().await);
    let t = Instant::now();
    let router_b = Router::spawn(config, listener)
        .await
        .expect("start router B");
    let start_returned = t.elapsed();
    let hb = router_b.fleet().clone();
    within(plan.phase_limit, "router B ready", hb.wait_ready())
        .await
        .expect("router running");
    let ready = t.elapsed();
    let mb = router_b.counters().clone();
    assert!(hb.applied_stream_seq() >= tail.last_stream_seq);
    assert_eq!(
        mb.replayed(),
        tail.msgs,
        "only the tail is replayed (recovery_ms {})",
        mb.recovery_ms()
    );
    let checked = check_router(&hb, &workers, plan.check_workers).await;
    let verdict = if ready <= Duration::from_secs(1) {
        "within"
    } else {
        "OVER"
    };
    println!(
        "[recovery] router B: start → ready {:.0} ms ({verdict} the 1 s target; Router::spawn \
         returned after {:.0} ms; a fresh client's connect call {:.1} ms); metrics: \
         recovery_ms {}, replayed {}",
        ms(ready),
        ms(start_returned),
        ms(connect_time),
        mb.recovery_ms(),
        mb.replayed()
    );
    println!(
        "[recovery] correct: B's index entries = ground truth total ({resident_total}); \
         {checked} workers' views equal their ground truth; no resync"
    );

    // Breakdown, on the same snapshot (B has written none yet).
    let (t_conn, _) = median_of(BREAKDOWN_REPS, || async {
        let c = connect(&url, "bench-breakdown-connect").await;
        c.flush().await.expect("first flush");
    })
    .await;
    let client = connect(&url, "bench-breakdown").await;
    client.flush().await.expect("first flush");
    let (t_infra, infra) = median_of(BREAKDOWN_REPS, || infra(&client)).await;
    let (t_fetch, bytes) = median_of(BREAKDOWN_REPS, || async {
        let mut obj = infra
            .snapshots
            .get(SNAPSHOT_OBJECT)
            .await
            .expect("snapshot object");
        let mut bytes = Vec::new();
        obj.read_to_end(&mut bytes).await.expect("snapshot body");
        bytes
    })
    .await;
    assert_eq!(bytes.len(), snapshot_bytes, "B read A's snapshot");
    let (t_decode, snap) = median_of(BREAKDOWN_REPS, || async {
        Snapshot::decode(&bytes).expect("decode")
    })
    .await;
    let (t_load, _) = median_of(BREAKDOWN_REPS, || async {
        snapshot_store::load(&infra.snapshots).await.expect("load")
    })
    .await;
    let mut restore_times = Vec::new();
    for _ in 0..BREAKDOWN_REPS {
        let s = snap.clone();
        let t = Instant::now();
        let (fleet, needs) = Fleet::restore(FleetConfig::default(), s);
        restore_times.push(t.elapsed());
        assert!(needs.is_empty());
        assert_eq!(fleet.index().stats().entries, snap_entries(&snap));
        drop(fleet); // outside the timing: a start does not drop its fleet
    }
    restore_times.sort_unstable();
    let t_restore = restore_times[restore_times.len() / 2];
    let accounted = t_conn + t_infra + t_load + t_restore;
    let rest = ready.saturating_sub(accounted);
    println!(
        "[recovery] breakdown (median of {BREAKDOWN_REPS}): first connection of a fresh client \
         (connect → first flush) {:.1} ms + ensure_infra {:.1} ms + snapshot_store::load {:.1} ms \
         (fetch {:.1} ms of {:.1} MB + decode {:.1} ms) + Fleet::restore {:.1} ms = {:.1} ms; \
         the remaining {:.1} ms of start → ready is the replay of {} tail messages (+ stream \
         info, task start-up): ~{:.0} msgs/s",
        ms(t_conn),
        ms(t_infra),
        ms(t_load),
        ms(t_fetch),
        bytes.len() as f64 / 1e6,
        ms(t_decode),
        ms(t_restore),
        ms(accounted),
        ms(rest),
        mb.replayed(),
        rate(mb.replayed(), rest)
    );
    drop(snap);
    within(plan.phase_limit, "router B shutdown", router_b.stop())
        .await
        .expect("router B stops");
    drop(server);
}

/// The size of the snapshot object in the store and the stream sequence it covers, read on a
/// client of its own (closed before returning).
async fn stored_snapshot(url: &str) -> (usize, u64) {
    let client = connect(url, "bench-snapshot-check").await;
    let store = infra(&client).await.snapshots;
    let info = store
        .info(SNAPSHOT_OBJECT)
        .await
        .expect("a snapshot object");
    let snap = snapshot_store::load(&store)
        .await
        .expect("read the snapshot");
    let snap = snap.expect("a snapshot was written");
    (info.size, snap.stream_seq)
}

fn snap_entries(s: &Snapshot) -> usize {
    s.workers.iter().map(|w| w.entries.len()).sum()
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The connection-state lines of clients outliving their server are noise here.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,cache_router_bus=error,cache_router::plane=warn",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let plan = Plan::from_env();
    println!(
        "event_plane bench ({} sizes; {} CPUs)",
        if plan.small { "small/test" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let t = Instant::now();
    rt.block_on(ingest_phase(plan));
    let t_ingest = t.elapsed();
    let t = Instant::now();
    rt.block_on(recovery_phase(plan));
    println!(
        "event_plane bench done: ingest phase {:.1} s, recovery phase {:.1} s",
        t_ingest.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
