//! Scalability of routing decisions (`cargo bench --bench scale`): bursts of 1,000 concurrent
//! `POST /route` requests at 100 and at 1,000 workers, as the issue asks (decision latency
//! p50/p95/p99 and throughput, beside the seed prototype's p50 28.42 ms / p99 63.80 ms). Prints
//! client-side latency, throughput (requests / wall time of the burst) and the router's own
//! decision time (`/route`'s `timings_us`: tokenize + look-up + score); draws the latency CDFs
//! to `docs/img/scale.png`.
//!
//! Per fleet size, on a fresh `nats-server` (127.0.0.1, random port):
//! - the router runs in-process on its own runtime, started through the library
//!   (`Router::spawn`) as `cache-router serve --nats URL --model deepseek --model-dir
//!   target/fixtures/deepseek --chat-template T` starts it (event plane, registry discovery,
//!   the fleet actor, cache-aware policy, the axum app on 127.0.0.1:0) with the real DeepSeek
//!   tokenizer and a DeepSeek-V3-style template;
//! - N mock reporters do what worker-reporter does: register in the KV registry and keep the
//!   entry fresh, answer resyncs, report load, publish BlockStored events and a digest. Caches
//!   are real text tokenized and hashed as the router does: a shared system prompt and 24 chat
//!   histories (~1.1k tokens) per worker. The bench waits until the router applied the last
//!   stream sequence, lists every worker and answers `/ready`, and checks its index against
//!   the reporters' ground truth;
//! - a warm-up burst opens the client's keep-alive connections and plays the warm
//!   conversations' previous turn (so the router's piece cache holds their history, as in
//!   production); then 5 measured bursts (the median by wall time is reported) and 200
//!   requests one at a time (service time without queueing). A burst is 1,000 reqwest tasks
//!   released by one barrier: 50% the next turn of a conversation one worker holds, 25% a new
//!   chat on the shared system prompt, 25% a cold completion (1.2k-1.6k tokens each). Every
//!   answer must be 200; a warm turn must go to the worker holding its history, overlapping
//!   all of it; a new chat must overlap the system prompt; a cold prompt nothing.
//!
//! Client, router and nats-server share the machine. Under `cargo test` (no `--bench`),
//! `--test` or `CACHE_ROUTER_BENCH_SMALL=1`: 5 and 20 workers, 50 concurrent requests, one
//! measured burst, the plot under `target/`; the checks stay. Everything binds 127.0.0.1,
//! request counts are fixed, every phase is time-bounded, and the run stops by itself.

mod common;

#[path = "common/scale_extra.rs"]
mod extra;
#[path = "common/scale_requests.rs"]
mod requests;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cache_router::tokenize::{ChatMessage, ModelTokenizer, Models};
use cache_router::{NatsConfig, RouterConfig, RunningRouter};
use cache_router_bus::publisher::Publisher;
use cache_router_bus::{registry, NatsArgs, StreamArgs};
use cache_router_core::policy::{PolicyConfig, PolicyKind};
use cache_router_core::protocol::{BlockHash, Body, Load, WorkerId, WorkerInfo};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::{eventually, routers, small_mode, tokenizer};
use common::{ms, router_metric, within};
use requests::{check, pretokenized, requests, Kind, Reply, Req, Timings};

const MODEL: &str = "deepseek";
const BLOCK_SIZE: usize = 16;
/// The seed prototype's p50 and p99 (100 workers, 1,000 concurrent routing requests), in ms.
const PROTOTYPE_MS: (f64, f64) = (28.42, 63.80);
/// `serve`'s defaults for `--max-workers` and `--max-index-entries`.
const MAX_WORKERS: usize = 4096;
const MAX_INDEX_ENTRIES: usize = 50_000_000;
const GRACE: Duration = Duration::from_secs(10);
/// Open files besides two sockets per concurrent request (NATS, JetStream store, stdio).
const FD_MARGIN: u64 = 256;

/// DeepSeek-V3-style chat template (the fixture's tokenizer_config.json has none): BOS, system
/// text, `<｜User｜>`/`<｜Assistant｜>` turns, assistant turns closed by EOS.
const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}";

static WORDS: LazyLock<Vec<&str>> = LazyLock::new(|| {
    "the a of to and in is for with on that by as it we you should could when which because \
     after before every router cache prefix block token worker latency throughput model request \
     session history document retrieval answer question system engine memory queue batch decode \
     prefill policy cost load Kubernetes GPU vLLM NATS stream snapshot replay digest epoch \
     customer invoice shipment warehouse contract refund schedule explain summarize compare \
     translate review deploy measure error"
        .split_whitespace()
        .collect()
});

/// Sizes of the run.
#[derive(Clone, Debug)]
struct Plan {
    small: bool,
    fleets: Vec<usize>,
    concurrency: usize,
    /// Measured bursts per fleet size, after one warm-up burst.
    runs: usize,
    /// Requests then sent one at a time (service time without queueing).
    sequential: usize,
    histories_per_worker: usize,
    /// Distinct messages the histories are assembled from.
    pool_messages: usize,
    /// Bound on each phase.
    limit: Duration,
}

impl Plan {
    fn new() -> Plan {
        let small = small_mode();
        let (fleets, concurrency, runs, sequential, histories_per_worker, pool_messages) = if small
        {
            (vec![5, 20], 50, 1, 20, 6, 150)
        } else {
            (vec![100, 1000], 1000, 5, 200, 24, 3000)
        };
        let limit = Duration::from_secs(300);
        Plan {
            small,
            fleets,
            concurrency,
            runs,
            sequential,
            histories_per_worker,
            pool_messages,
            limit,
        }
    }
}

fn text(rng: &mut StdRng, words: usize) -> String {
    let mut s = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            s.push(if rng.random_bool(0.06) { '\n' } else { ' ' });
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        if rng.random_bool(0.04) {
            s.push_str(&format!(" {}", rng.random_range(0..100_000)));
        }
    }
    s
}

/// What caches are made of: one system prompt and a pool of messages the histories are
/// assembled from (so building 24,000 histories tokenizes each message once).
#[derive(Debug)]
struct Corpus {
    system: String,
    pool: Vec<String>,
}

impl Corpus {
    fn new(messages: usize) -> Corpus {
        let mut rng = StdRng::seed_from_u64(42);
        let system = format!("You are the support assistant. {}", text(&mut rng, 250));
        let pool = (0..messages)
            .map(|_| {
                let words = rng.random_range(60..120);
                text(&mut rng, words)
            })
            .collect();
        Corpus { system, pool }
    }

    /// The system prompt, then pool messages alternating user/assistant.
    fn history(&self, msgs: &[u32]) -> Vec<ChatMessage> {
        let mut v = vec![ChatMessage::text("system", self.system.clone())];
        for (i, &m) in msgs.iter().enumerate() {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            v.push(ChatMessage::text(role, self.pool[m as usize].clone()));
        }
        v
    }
}

/// A conversation a worker holds: its messages (pool indices) and its prompt's full blocks.
#[derive(Debug)]
struct History {
    msgs: Vec<u32>,
    hashes: Vec<BlockHash>,
}

#[derive(Debug)]
struct WorkerContent {
    id: WorkerId,
    histories: Vec<History>,
}

impl WorkerContent {
    /// One BlockStored per history: the part of its chain not held yet (the system prompt goes
    /// out with the first history), parented on the held prefix.
    fn events(&self) -> Vec<Body> {
        let mut held = HashSet::new();
        let mut out = Vec::new();
        for h in &self.histories {
            let k = h.hashes.iter().take_while(|b| held.contains(*b)).count();
            if k < h.hashes.len() {
                held.extend(h.hashes[k..].iter().copied());
                let parent = k.checked_sub(1).map(|i| h.hashes[i]);
                let blocks = h.hashes[k..].to_vec();
                out.push(Body::Stored { blocks, parent });
            }
        }
        out
    }
}

/// The tokenizer as `serve --model-dir DIR --chat-template T --block-size 16` loads it.
fn tokenizer(template: &Path) -> ModelTokenizer {
    let dir = tokenizer::deepseek_dir();
    ModelTokenizer::from_model_dir(&dir, Some(template))
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", dir.display()))
        .with_model(MODEL, BLOCK_SIZE)
}

fn hashes(tok: &ModelTokenizer, msgs: &[ChatMessage]) -> Vec<BlockHash> {
    let ids = tok.encode_chat(msgs).expect("tokenize a chat");
    let mut out = Vec::with_capacity(ids.len() / BLOCK_SIZE);
    tok.block_hashes(&ids, &mut out);
    out
}

/// Every worker's histories (7 messages after the system prompt), tokenized on all cores.
fn build_fleet(tok: &ModelTokenizer, corpus: &Corpus, plan: &Plan, n: usize) -> Vec<WorkerContent> {
    let worker = |w: usize| {
        let mut rng = StdRng::seed_from_u64(1_000 + w as u64);
        let pool = corpus.pool.len() as u32;
        let histories = (0..plan.histories_per_worker)
            .map(|_| {
                let msgs: Vec<u32> = (0..7).map(|_| rng.random_range(0..pool)).collect();
                let hashes = hashes(tok, &corpus.history(&msgs));
                History { msgs, hashes }
            })
            .collect();
        let id = WorkerId(format!("w{w:04}"));
        WorkerContent { id, histories }
    };
    let (worker, ids) = (&worker, (0..n).collect::<Vec<_>>());
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks(n.div_ceil(threads).max(1))
            .map(|c| s.spawn(move || c.iter().map(|&w| worker(w)).collect::<Vec<_>>()))
            .collect();
        let parts = parts
            .into_iter()
            .map(|p| p.join().expect("tokenizer thread"));
        parts.flatten().collect()
    })
}

/// Starts the router as `serve --nats URL --policy cache-aware` does (its other flags at their
/// defaults), on the current (the router's) runtime.
async fn start_router(nats_url: &str, tok: ModelTokenizer) -> RunningRouter {
    let mut models = Models::new();
    models.insert(MODEL.into(), Arc::new(tok));
    let mut config = RouterConfig::new(models);
    config.nats = Some(NatsConfig::new(nats_url));
    config.policy = PolicyKind::CacheAware;
    config.policy_config = PolicyConfig::default();
    config.max_workers = MAX_WORKERS;
    config.max_index_entries = Some(MAX_INDEX_ENTRIES);
    config.shutdown_grace = GRACE;
    // A/B knob for the tokenize gate (default: one slot per core).
    config.tokenize_slots = std::env::var("SCALE_TOKENIZE_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok());
    routers::spawn(config).await
}

/// Mock reporters, all workers at once on one shared NATS connection, doing what
/// worker-reporter does: answer resyncs, register (refreshed until `token`), report load,
/// publish the cache's BlockStored events (each awaiting its JetStream ack) and a digest.
/// Returns the publishers, their background tasks, the last stream sequence and the messages.
async fn start_reporters(
    nats_url: &str,
    fleet: &[WorkerContent],
    token: &CancellationToken,
) -> (Vec<Publisher>, Vec<JoinHandle<()>>, u64, u64) {
    let args = NatsArgs::for_url(nats_url);
    let conn = cache_router_bus::connect(&args, "mock-reporters")
        .await
        .expect("connect");
    let limits = StreamArgs::default();
    let infra = cache_router_bus::ensure_infra(&conn, &args.subjects(), &limits).await;
    let kv = infra.expect("NATS infrastructure").registry;
    let ttl = limits.registry_ttl;
    let mut publishers = Vec::new();
    let mut starts = Vec::new();
    for (i, w) in fleet.iter().enumerate() {
        let (subjects, id) = (args.subjects(), w.id.clone());
        let p = Publisher::new(conn.clone(), subjects, id.clone(), 1, GRACE).expect("worker id");
        publishers.push(p.clone());
        // Never contacted: /route only decides. One port per worker (a registry URL is
        // host:port only).
        let url = format!("http://127.0.0.1:{}", 10_000 + i);
        let (model, block_size) = (MODEL.to_owned(), BLOCK_SIZE as u32);
        let info = WorkerInfo {
            id,
            url,
            model,
            block_size,
            epoch: 1,
        };
        let (kv, token, events) = (kv.clone(), token.clone(), w.events());
        starts.push(tokio::spawn(async move {
            let resync = p.serve_resync(token.clone()).await.expect("serve resyncs");
            // Always alive: the entry is written at once and refreshed every third of the TTL.
            let alive = || true;
            let reg = registry::keep_registered(kv, info, ttl, ttl / 3, alive, token);
            let reg = tokio::spawn(reg);
            p.publish_load(Load::default()).await.expect("publish load");
            let (mut last, msgs) = (0, events.len() as u64 + 1);
            for body in events {
                let seq = p.publish(body).await.expect("publish").stream_seq;
                last = seq.unwrap_or(0).max(last);
            }
            let seq = p.publish_digest().await.expect("digest").stream_seq;
            (vec![resync, reg], seq.unwrap_or(0).max(last), msgs)
        }));
    }
    let (mut tasks, mut last, mut msgs) = (Vec::new(), 0, 0);
    for s in starts {
        let (t, l, m) = s.await.expect("reporter start");
        tasks.extend(t);
        (last, msgs) = (last.max(l), msgs + m);
    }
    (publishers, tasks, last, msgs)
}

/// Waits until the router applied the stream, lists every worker and answers /ready; checks
/// its index against the reporters' ground truth. Returns the index's entries.
async fn wait_router(
    r: &RunningRouter,
    pubs: &[Publisher],
    last_seq: u64,
    http: &reqwest::Client,
    limit: Duration,
) -> usize {
    let (fleet, n) = (r.fleet(), pubs.len());
    within(limit, "apply the stream", fleet.wait_applied(last_seq))
        .await
        .expect("router running");
    eventually("every worker is registered", || async move {
        fleet.stats().await.is_ok_and(|s| s.registered == n)
    })
    .await;
    let ready = &format!("{}/ready", r.url());
    eventually("the router answers /ready", || async move {
        let resp = http.get(ready.as_str()).send().await;
        resp.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let stats = fleet.stats().await.expect("router running");
    let (entries, counters) = (stats.index.entries, stats.counters);
    let mut truth = 0;
    for p in pubs {
        truth += p.ground_truth().await.2.len();
    }
    assert_eq!(
        entries, truth,
        "index entries vs the reporters' ground truth"
    );
    // Every worker's digest was compared with the index: a mismatch would start a resync.
    assert_eq!(counters.resyncs_total(), 0, "{counters:?}");
    assert_eq!(
        (counters.duplicates, counters.no_slot),
        (0, 0),
        "{counters:?}"
    );
    entries
}

#[derive(Debug)]
struct Sample {
    kind: Kind,
    start: Instant,
    done: Instant,
    bytes: usize,
    reply: Reply,
}

/// Sends `reqs` all at once (tasks released by a barrier); every answer must pass [`check`].
async fn burst(http: &reqwest::Client, url: &str, reqs: Vec<Req>, limit: Duration) -> Vec<Sample> {
    let gate = Arc::new(Barrier::new(reqs.len() + 1));
    let tasks: Vec<JoinHandle<Result<Sample, String>>> = reqs
        .into_iter()
        .map(|req| {
            let (http, url, gate) = (http.clone(), url.to_owned(), gate.clone());
            tokio::spawn(async move {
                gate.wait().await;
                let start = Instant::now();
                let send = http.post(&url).header("content-type", "application/json");
                let resp = send.body(req.body.clone()).send().await;
                let resp = resp.map_err(|e| format!("{}: {e}", req.kind.name()))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
                let done = Instant::now();
                let reply = check(&req, status, &body)?;
                let (kind, bytes) = (req.kind, body.len());
                Ok(Sample {
                    kind,
                    start,
                    done,
                    bytes,
                    reply,
                })
            })
        })
        .collect();
    gate.wait().await;
    let results = within(limit, "burst", futures::future::join_all(tasks)).await;
    let (ok, failed): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(|r| r.expect("request task"))
        .partition(Result::is_ok);
    let failed: Vec<String> = failed.into_iter().filter_map(Result::err).collect();
    let n = ok.len() + failed.len();
    let first = &failed[..failed.len().min(3)];
    assert!(
        failed.is_empty(),
        "{} of {n} requests failed; first: {first:?}",
        failed.len()
    );
    ok.into_iter().filter_map(Result::ok).collect()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile of sorted `v` (nearest rank).
fn pct(v: &[f64], q: f64) -> f64 {
    let i = ((v.len().max(1) - 1) as f64 * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// A latency in ms, readable.
fn show(v: f64) -> String {
    match v {
        v if v < 1.0 => format!("{:.0} µs", v * 1e3),
        v if v < 10.0 => format!("{v:.2} ms"),
        v => format!("{v:.1} ms"),
    }
}

fn p50_99(v: &[f64]) -> String {
    format!("p50 {} p99 {}", show(pct(v, 0.5)), show(pct(v, 0.99)))
}

/// Threads of this process (the router's blocking pool grows under a burst).
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("Threads:"));
    line.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// One burst's figures; latencies in ms, sorted.
#[derive(Debug)]
struct RunStats {
    wall: Duration,
    client: Vec<f64>,
    decision: Vec<f64>,
    queue: Vec<f64>,
    tokenize: Vec<f64>,
    lookup: Vec<f64>,
    score: Vec<f64>,
    /// Per kind: client latencies and mean prompt tokens.
    by_kind: Vec<(Kind, Vec<f64>, f64)>,
    reply_kb: f64,
    threads: usize,
}

impl RunStats {
    fn new(s: &[Sample]) -> RunStats {
        let us = |f: fn(&Timings) -> u64| {
            sorted(
                s.iter()
                    .map(|s| f(&s.reply.timings_us) as f64 / 1e3)
                    .collect(),
            )
        };
        let client = |k: Option<Kind>| {
            let of = s.iter().filter(|s| k.is_none_or(|k| s.kind == k));
            sorted(of.map(|s| ms(s.done - s.start)).collect())
        };
        let tokens = |k: Kind| {
            let of: Vec<_> = s.iter().filter(|s| s.kind == k).collect();
            of.iter().map(|s| s.reply.tokens as f64).sum::<f64>() / of.len().max(1) as f64
        };
        let first = s.iter().map(|s| s.start).min().expect("a sample");
        let last = s.iter().map(|s| s.done).max().expect("a sample");
        let kinds = [Kind::Warm, Kind::NewChat, Kind::Cold];
        RunStats {
            wall: last - first,
            client: client(None),
            decision: us(|t| t.tokenize + t.lookup + t.score),
            queue: us(|t| t.queue),
            tokenize: us(|t| t.tokenize),
            lookup: us(|t| t.lookup),
            score: us(|t| t.score),
            by_kind: kinds.map(|k| (k, client(Some(k)), tokens(k))).into(),
            reply_kb: s.iter().map(|s| s.bytes as f64).sum::<f64>() / s.len() as f64 / 1e3,
            threads: threads(),
        }
    }

    fn throughput(&self) -> f64 {
        self.client.len() as f64 / self.wall.as_secs_f64()
    }

    fn line(&self) -> String {
        let c = &self.client;
        let q = |p| show(pct(c, p));
        format!(
            "{} requests in {:.0} ms, {:.0} req/s; client p50 {} p95 {} p99 {} max {}; \
             decision {}; {} threads after",
            c.len(),
            ms(self.wall),
            self.throughput(),
            q(0.5),
            q(0.95),
            q(0.99),
            q(1.0),
            p50_99(&self.decision),
            self.threads
        )
    }
}

/// One fleet size's result.
#[derive(Debug)]
struct FleetResult {
    workers: usize,
    entries: usize,
    concurrency: usize,
    median: RunStats,
    sequential: RunStats,
    /// The same burst with token-id prompts: the routing path without the tokenizer.
    pretokenized: RunStats,
}

/// Everything for one fleet size: content, NATS, router, reporters, bursts.
fn run_fleet(
    plan: &Plan,
    n: usize,
    corpus: &Corpus,
    template: &Path,
    bench: &Runtime,
) -> FleetResult {
    let tag = format!("[{n} workers]");
    let tok = tokenizer(template);
    let t = Instant::now();
    let fleet = build_fleet(&tok, corpus, plan, n);
    let system = || ChatMessage::text("system", corpus.system.clone());
    let a = hashes(&tok, &[system(), ChatMessage::text("user", "alpha")]);
    let b = hashes(&tok, &[system(), ChatMessage::text("user", "omega")]);
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count() as u32;
    let histories = n * plan.histories_per_worker;
    let blocks = fleet
        .iter()
        .flat_map(|w| &w.histories)
        .map(|h| h.hashes.len())
        .sum::<usize>();
    println!(
        "{tag} caches: {histories} chat histories of ~{} blocks, the first {shared} the shared \
         system prompt, tokenized in {:.1} s",
        blocks / histories,
        t.elapsed().as_secs_f64()
    );
    let server = NatsServer::start();
    let router_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("router")
        .build()
        .expect("router runtime");
    let router = router_rt.block_on(start_router(&server.url(), tokenizer(template)));
    let result = bench.block_on(async {
        let url = format!("{}/route", router.url());
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(plan.concurrency)
            .timeout(plan.limit)
            .build()
            .expect("HTTP client");
        let (t, token) = (Instant::now(), CancellationToken::new());
        let (pubs, tasks, last_seq, msgs) = start_reporters(&server.url(), &fleet, &token).await;
        let published = ms(t.elapsed());
        let entries = wait_router(&router, &pubs, last_seq, &http, plan.limit).await;
        println!(
            "{tag} {n} mock reporters registered and published {msgs} messages in {published:.0} \
             ms; the router applied them and was ready after {:.0} ms; its index: {entries} \
             entries (= the reporters' ground truth), no resync",
            ms(t.elapsed())
        );
        let h = plan.histories_per_worker;
        let active: Vec<_> = (0..plan.concurrency / 2)
            .map(|i| (i % n, (i / n) % h))
            .collect();
        let mut runs = Vec::new();
        for b in 0..=plan.runs {
            let reqs = requests(corpus, &fleet, &active, plan.concurrency, shared, b as u64);
            let stats = RunStats::new(&burst(&http, &url, reqs, plan.limit).await);
            let name = if b == 0 {
                "warm-up".into()
            } else {
                format!("run {b}")
            };
            println!("{tag} {name}: {}", stats.line());
            runs.push(stats);
        }
        let mut one = Vec::new();
        for req in requests(corpus, &fleet, &active, plan.sequential, shared, 1_000) {
            one.extend(burst(&http, &url, vec![req], plan.limit).await);
        }
        let sequential = RunStats::new(&one);
        println!("{tag} one at a time: {}", sequential.line());
        let mut pre = Vec::new();
        for b in 1..=plan.runs {
            let reqs = pretokenized(&tok, corpus, &fleet, &active, plan.concurrency, b as u64);
            pre.push(RunStats::new(&burst(&http, &url, reqs, plan.limit).await));
        }
        pre.sort_by_key(|r| r.wall);
        let pretokenized = pre.swap_remove(pre.len() / 2);
        println!("{tag} token-id prompts (no tokenizing), median burst: {}", pretokenized.line());
        let snaps = router_metric(&http, router.url(), "cache_router_snapshots_written_total");
        let snaps = snaps.await as u64;
        token.cancel();
        for t in tasks {
            let _ = tokio::time::timeout(GRACE, t).await;
        }
        runs.remove(0);
        runs.sort_by_key(|r| r.wall);
        let m = runs.swap_remove(runs.len() / 2);
        println!("{tag} median run: {}", m.line());
        let (t, l, sc) = (p50_99(&m.tokenize), p50_99(&m.lookup), p50_99(&m.score));
        let (q, kb) = (p50_99(&m.queue), m.reply_kb);
        println!(
            "{tag}   router-side: queue for a tokenizer slot {q}; tokenize {t} + look-up {l} + score {sc}; /route answers \
             {kb:.1} KB (every candidate); router snapshots so far: {snaps}"
        );
        for (k, lat, tokens) in &m.by_kind {
            let (name, len) = (k.name(), lat.len());
            println!(
                "{tag}   {name} (n={len}, ~{tokens:.0} tokens): client {}",
                p50_99(lat)
            );
        }
        println!(
            "{tag} correct: every answer 200; every warm turn went to the worker holding its \
             history (overlap >= its blocks); new chats overlapped the {shared}-block system \
             prompt; cold prompts nothing"
        );
        let concurrency = plan.concurrency;
        FleetResult {
            workers: n,
            entries,
            concurrency,
            median: m,
            sequential,
            pretokenized,
        }
    });
    router_rt.block_on(async move {
        let stopped = within(plan.limit, "router shutdown", router.stop()).await;
        stopped.expect("the router stops");
    });
    router_rt.shutdown_timeout(GRACE);
    result
}

/// The table cells every row shares: index entries, concurrency, throughput and the client
/// latency percentiles (p50, p95, p99, max) of one burst.
fn client_cells(r: &FleetResult, m: &RunStats) -> String {
    let c = |q| show(pct(&m.client, q));
    format!(
        "{} | {} | {:.0} req/s | {} | {} | {} | {}",
        r.entries,
        r.concurrency,
        m.throughput(),
        c(0.5),
        c(0.95),
        c(0.99),
        c(1.0)
    )
}

fn table(results: &[FleetResult]) {
    println!(
        "\n| workers | index entries | concurrent | throughput | client p50 | p95 | p99 | max | \
         decision p50 / p99 | one at a time p50 / p99 | vs prototype p50 / p99 |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    let (p50, p99) = PROTOTYPE_MS;
    for r in results {
        let (m, s) = (&r.median, &r.sequential);
        let q = |v: &[f64]| format!("{} / {}", show(pct(v, 0.5)), show(pct(v, 0.99)));
        println!(
            "| {} | {} | {} | {} | {:.1}× / {:.1}× |",
            r.workers,
            client_cells(r, m),
            q(&m.decision),
            q(&s.client),
            pct(&m.client, 0.5) / p50,
            pct(&m.client, 0.99) / p99
        );
    }
    for r in results {
        let m = &r.pretokenized;
        println!(
            "| {} (token-id prompts) | {} | {} / {} | | {:.2}× / {:.2}× |",
            r.workers,
            client_cells(r, m),
            show(pct(&m.decision, 0.5)),
            show(pct(&m.decision, 0.99)),
            pct(&m.client, 0.5) / p50,
            pct(&m.client, 0.99) / p99
        );
    }
    println!("| prototype | | 1000 | | {p50} ms | | {p99} ms | | | | |");
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,cache_router_bus=error,cache_router::plane=error")
    });
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = subscriber.with_writer(std::io::stderr).try_init();
    let mut plan = Plan::new();
    println!(
        "scale bench ({} sizes, {} CPUs): {:?} workers, {} concurrent POST /route per burst, \
         1 warm-up + {} measured bursts, then {} one at a time",
        if plan.small { "small/test" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        plan.fleets,
        plan.concurrency,
        plan.runs,
        plan.sequential
    );
    plan.concurrency = extra::fit_fd_limit(plan.concurrency);
    let template = std::env::temp_dir().join(format!("cr-scale-{}.jinja", std::process::id()));
    std::fs::write(&template, TEMPLATE).expect("write the chat template");
    let corpus = Corpus::new(plan.pool_messages);
    let bench = Runtime::new().expect("bench runtime");
    let started = Instant::now();
    let results: Vec<FleetResult> = plan
        .fleets
        .iter()
        .map(|&n| run_fleet(&plan, n, &corpus, &template, &bench))
        .collect();
    let _ = std::fs::remove_file(&template);
    table(&results);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = match std::env::var_os("CARGO_TARGET_DIR") {
        _ if !plan.small => root.join("docs/img/scale.png"),
        Some(t) => root.join(t).join("bench-scale-small.png"),
        None => root.join("target/bench-scale-small.png"),
    };
    let _ = std::fs::create_dir_all(path.parent().expect("a directory"));
    match extra::plot(&results, &path) {
        Ok(()) => println!("\nlatency CDFs written to {}", path.display()),
        Err(e) => println!("\nWARNING: no plot: {e}"),
    }
    println!(
        "scale bench done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
