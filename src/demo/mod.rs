//! `cache-router demo`: the whole system on one machine, compared policy by policy.
//!
//! It starts its own `nats-server` (JetStream), N mock vLLM engines (`cache-router
//! mock-worker`, each publishing vLLM-format KV events over ZMQ) with a `worker-reporter`
//! beside each, then, for each policy in turn, a fresh router (`cache-router serve --policy
//! P`), and replays one workload through the router's OpenAI endpoint. Engine caches are reset
//! between policies (the reset travels engine → reporter → NATS → router like any event), so
//! every policy sees the same workload on cold caches. Everything runs as real child processes
//! talking over loopback; the demo only orchestrates and measures.
//!
//! The workload is the simulator's (a chat + RAG mix by default, or a Mooncake trace), so the
//! same run also prints what `cache-router sim` predicts for the same setting.
//!
//! Times are *model time*: the engines run `--speedup` times faster than the modelled GPU, and
//! the client's wall-clock TTFTs are multiplied back by it to be comparable with the simulator.

pub mod procs;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::policy::{PolicyConfig, PolicyKind};
use crate::sim::timing::TimingModel;
use crate::sim::workload::{self, GeneratorConfig, Workload};
use crate::sim::{self, SimResult};
use procs::{free_port, http_ok, locate, Proc, Stopped};
use traffic::{Replay, ReplayConfig};

const MODEL: &str = "mock-model";

/// Flags of `cache-router demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Mock engines, each with its own worker-reporter.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// KV cache blocks per engine (small enough that the working set does not fit one engine).
    #[arg(long, default_value_t = 1200)]
    pub num_blocks: usize,
    /// Tokens per KV block (engines, reporters and router agree on it). With --trace, the
    /// trace's own block size is used instead.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Policies to compare, comma-separated, run one after another on the same workload.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cache-aware,round-robin,least-loaded"
    )]
    pub policy: Vec<PolicyKind>,
    /// Replay a Mooncake-format trace instead of the built-in chat + RAG mix.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Tokens per trace hash id (512 in Mooncake's release).
    #[arg(long, default_value_t = 512)]
    pub trace_block_size: u64,
    /// Compress the trace's time by this factor (as `cache-router sim --time-scale`).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Replay only the first N requests (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_requests: usize,
    /// chat: sessions (each `--turns` turns sharing one system prompt).
    #[arg(long, default_value_t = 48)]
    pub sessions: usize,
    /// chat: turns per session.
    #[arg(long, default_value_t = 6)]
    pub turns: usize,
    /// rag: requests over a Zipf-popular pool of `--documents` documents.
    #[arg(long, default_value_t = 300)]
    pub rag_requests: usize,
    /// rag: documents in the pool.
    #[arg(long, default_value_t = 60)]
    pub documents: usize,
    /// Arrivals per second of model time, for chat and for RAG each.
    #[arg(long, default_value_t = 6.0)]
    pub rate: f64,
    /// Output tokens per request.
    #[arg(long, default_value_t = 24)]
    pub output_tokens: u64,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Engines run this many times faster than the modelled GPU (wall time = model time /
    /// speedup); reported times are model time.
    #[arg(long, default_value_t = 4.0)]
    pub speedup: f64,
    #[command(flatten)]
    pub timing: TimingModel,
    #[command(flatten)]
    pub policy_config: PolicyConfig,
    /// Requests in flight at most from the generator.
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
    /// Reporters' digest interval (anti-entropy), in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub digest_interval_ms: u64,
    /// Where the PNG plots and the children's logs go.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Model directory (tokenizer.json + tokenizer_config.json) for router and engines.
    #[arg(
        long,
        env = "CACHE_ROUTER_MODEL_DIR",
        default_value = "target/fixtures/deepseek"
    )]
    pub model_dir: PathBuf,
    /// nats-server binary (default: from PATH).
    #[arg(long, env = "NATS_SERVER_BIN")]
    pub nats_server: Option<PathBuf>,
    /// worker-reporter binary (default: next to this binary, else PATH).
    #[arg(long, env = "WORKER_REPORTER_BIN")]
    pub reporter_bin: Option<PathBuf>,
    /// Seconds each child gets to exit after SIGTERM before it is killed.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_s: u64,
    /// Skip the simulator's prediction for the same setting.
    #[arg(long)]
    pub no_sim: bool,
    /// Also write the results as JSON here (`{"live": [...], "sim": [...], "failed": {...}}`).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("setup: {0}")]
    Setup(String),
    #[error("{name} exited early ({status}); see {log}:\n{tail}")]
    ChildExited {
        name: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("{what} did not become ready; see {log}:\n{tail}")]
    NotReady {
        what: String,
        log: String,
        tail: String,
    },
    #[error("interrupted")]
    Cancelled,
    #[error("{0} requests failed (see the lines above and the logs)")]
    Failed(u64),
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    #[error(transparent)]
    Plot(#[from] sim::report::PlotError),
    #[error("cannot write {path}: {msg}")]
    Output { path: String, msg: String },
}

impl DemoArgs {
    /// Checks the flags before anything starts.
    pub fn validate(&self) -> Result<(), DemoError> {
        let bad = |m: &str| Err(DemoError::Config(m.to_string()));
        if self.workers == 0 || self.workers > 64 {
            return bad("--workers must be in 1..=64 (each is two processes)");
        }
        if self.num_blocks == 0 || self.block_size == 0 || self.trace_block_size == 0 {
            return bad("--num-blocks and block sizes must be positive");
        }
        if self.policy.is_empty() {
            return bad("--policy needs at least one policy");
        }
        for (name, v) in [
            ("--speedup", self.speedup),
            ("--rate", self.rate),
            ("--time-scale", self.time_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(DemoError::Config(format!(
                    "{name} must be positive, got {v}"
                )));
            }
        }
        if self.max_inflight == 0 || self.output_tokens == 0 || self.digest_interval_ms == 0 {
            return bad(
                "--max-inflight, --output-tokens and --digest-interval-ms must be positive",
            );
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(p) = self.policy.iter().find(|p| !seen.insert(**p)) {
            return Err(DemoError::Config(format!(
                "--policy names {} twice",
                p.name()
            )));
        }
        if self.trace.is_none() && self.sessions * self.turns + self.rag_requests == 0 {
            return bad("the workload is empty (--sessions/--turns/--rag-requests)");
        }
        if !self.model_dir.join("tokenizer.json").is_file() {
            return Err(DemoError::Config(format!(
                "{} has no tokenizer.json (run scripts/setup.sh, or pass --model-dir)",
                self.model_dir.display()
            )));
        }
        Ok(())
    }

    fn engine_block_size(&self) -> u64 {
        if self.trace.is_some() {
            self.trace_block_size
        } else {
            self.block_size as u64
        }
    }

    /// The workload: the trace, or chat and RAG merged by arrival time.
    pub fn workload(&self) -> Result<Workload, DemoError> {
        let mut w = match &self.trace {
            Some(path) => workload::load_mooncake(path, self.trace_block_size, self.time_scale)?,
            None => {
                let g = GeneratorConfig {
                    seed: self.seed,
                    block_size: self.block_size as u64,
                    rate: self.rate,
                    sessions: self.sessions,
                    turns: self.turns,
                    output_tokens: self.output_tokens,
                    documents: self.documents,
                    rag_requests: self.rag_requests,
                    ..GeneratorConfig::default()
                };
                let mut chat = workload::generate_chat(&g);
                let rag = workload::generate_rag(&g);
                chat.requests.extend(rag.requests);
                chat.requests
                    .sort_by(|a, b| a.arrival_ms.total_cmp(&b.arrival_ms));
                Workload {
                    name: "chat+rag".into(),
                    block_size: g.block_size,
                    requests: chat.requests,
                }
            }
        };
        if self.max_requests > 0 {
            w.requests.truncate(self.max_requests);
        }
        if let (Some(a), Some(b)) = (w.requests.first(), w.requests.last()) {
            let hours = (b.arrival_ms - a.arrival_ms) / self.speedup / 3.6e6;
            if !(hours.is_finite() && hours <= 24.0) {
                return Err(DemoError::Config(format!(
                    "the replay would take {hours:.1} hours of wall time; raise --time-scale or \
                     --speedup, or pass --max-requests"
                )));
            }
        }
        let bs = w.block_size;
        let cap = self.num_blocks as u64 * bs;
        let before = w.requests.len();
        // A prompt larger than one engine's whole cache cannot be served by any engine.
        w.requests.retain(|r| r.input_tokens < cap);
        if w.requests.len() < before {
            tracing::warn!(
                dropped = before - w.requests.len(),
                "requests longer than one engine's KV cache were left out"
            );
        }
        Ok(w)
    }
}

/// Every child process of the demo.
#[derive(Debug, Default)]
struct Children {
    procs: Vec<Proc>,
}

/// Tiers: stopped highest first.
const TIER_NATS: u8 = 0;
const TIER_ENGINE: u8 = 1;
const TIER_REPORTER: u8 = 2;
const TIER_ROUTER: u8 = 3;

/// How many times a child that binds ports is started with fresh ports before giving up.
const START_ATTEMPTS: u32 = 3;

impl Children {
    /// Fails if any child has died.
    fn check_all(&mut self) -> Result<(), DemoError> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }

    /// Stops the children of `tier` together.
    async fn stop_tier(
        &mut self,
        tier: u8,
        grace: Duration,
        force: &CancellationToken,
    ) -> Vec<(String, Stopped)> {
        let (now, rest): (Vec<Proc>, Vec<Proc>) = std::mem::take(&mut self.procs)
            .into_iter()
            .partition(|p| p.tier == tier);
        self.procs = rest;
        futures::future::join_all(now.into_iter().map(|p| async move {
            let name = p.name.clone();
            (name, p.stop(grace, force).await)
        }))
        .await
    }

    /// Stops everything, tier by tier (router, reporters, engines, NATS), each tier at once,
    /// and says how each child ended.
    async fn stop_all(&mut self, grace: Duration, force: &CancellationToken) {
        let n = self.procs.len();
        let mut ended = Vec::new();
        while let Some(top) = self.procs.iter().map(|p| p.tier).max() {
            ended.extend(self.stop_tier(top, grace, force).await);
        }
        if n == 0 {
            return;
        }
        let count = |want: fn(&Stopped) -> bool| ended.iter().filter(|(_, s)| want(s)).count();
        let clean = count(|s| *s == Stopped::Clean);
        let killed = count(|s| *s == Stopped::Killed);
        let dead: Vec<String> = ended
            .iter()
            .filter_map(|(name, s)| match s {
                Stopped::Dead(status) => Some(format!("{name} ({status})")),
                _ => None,
            })
            .collect();
        println!(
            "stopped {n} child processes: {clean} exited cleanly on SIGTERM, {killed} killed, {} had \
             already exited{}",
            dead.len(),
            if dead.is_empty() { String::new() } else { format!(": {}", dead.join(", ")) }
        );
    }

    /// Starts a child that binds loopback ports and waits until it is ready. Ports come from
    /// [`free_port`], so another process can take one before the child binds it; a child that
    /// dies while starting is started again with fresh ports.
    #[allow(clippy::too_many_arguments)]
    async fn start_bound<P, A, R, Fut>(
        &mut self,
        name: &str,
        tier: u8,
        bin: &Path,
        logs: &Path,
        cancel: &CancellationToken,
        mut make: A,
        ready: R,
    ) -> Result<P, DemoError>
    where
        P: Clone,
        A: FnMut() -> Result<(P, Vec<String>), DemoError>,
        R: Fn(P) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut attempt = 1;
        loop {
            let (ports, argv) = make()?;
            self.procs.push(Proc::spawn(name, tier, bin, &argv, logs)?);
            let r = procs::wait_ready(name, &mut self.procs, READY_TIMEOUT, cancel, || {
                ready(ports.clone())
            })
            .await;
            match r {
                Ok(()) => return Ok(ports),
                Err(DemoError::ChildExited { name: n, .. })
                    if n == name && attempt < START_ATTEMPTS =>
                {
                    tracing::warn!(
                        name,
                        attempt,
                        "exited while starting (a port taken?); retrying with new ports"
                    );
                    self.procs.pop();
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How long one child may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One live engine + reporter pair's addresses.
#[derive(Debug)]
struct Worker {
    id: String,
    url: String,
}

/// Runs the demo until done or `cancel`; children are stopped either way (`force` cuts their
/// grace period short: a second Ctrl-C).
pub async fn run(
    args: DemoArgs,
    cancel: CancellationToken,
    force: CancellationToken,
) -> Result<Vec<SimResult>, DemoError> {
    args.validate()?;
    let workload = args.workload()?;
    let logs = args.out.join("demo-logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", logs.display())))?;
    let mut children = Children::default();
    let result = run_inner(&args, &workload, &logs, &mut children, &cancel, &force).await;
    if matches!(result, Err(DemoError::Cancelled)) {
        println!("interrupted: stopping every child process (again to kill them)");
    }
    children
        .stop_all(Duration::from_secs(args.shutdown_grace_s), &force)
        .await;
    result
}

async fn run_inner(
    args: &DemoArgs,
    workload: &Workload,
    logs: &Path,
    children: &mut Children,
    cancel: &CancellationToken,
    force: &CancellationToken,
) -> Result<Vec<SimResult>, DemoError> {
    let me = std::env::current_exe()
        .map_err(|e| DemoError::Setup(format!("cannot find this binary: {e}")))?;
    let nats_bin = locate(args.nats_server.as_deref(), "nats-server")?;
    let reporter_bin = locate(args.reporter_bin.as_deref(), "worker-reporter")?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(args.max_inflight)
        .build()
        .map_err(|e| DemoError::Setup(format!("HTTP client: {e}")))?;
    let bs = args.engine_block_size();
    let grace = Duration::from_secs(args.shutdown_grace_s);

    // NATS with JetStream, in its own store directory.
    let store = logs.join("jetstream");
    let _ = std::fs::remove_dir_all(&store);
    let nats_port = children
        .start_bound(
            "nats-server",
            TIER_NATS,
            &nats_bin,
            logs,
            cancel,
            || {
                let port = free_port()?;
                let argv = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]
                    .iter()
                    .map(|a| a.to_string())
                    .chain([store.display().to_string()])
                    .collect();
                Ok((port, argv))
            },
            |port| procs::accepts(([127, 0, 0, 1], port).into()),
        )
        .await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    println!("nats-server (JetStream) on {nats_url}");

    // Engines and their reporters.
    let model_dir = args.model_dir.display().to_string();
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let t = &args.timing;
        let (hp, ep, rp) = children
            .start_bound(
                &format!("engine-{i}"),
                TIER_ENGINE,
                &me,
                logs,
                cancel,
                || {
                    let (hp, ep, rp) = (free_port()?, free_port()?, free_port()?);
                    let argv = vec![
                        "mock-worker".into(),
                        "--listen".into(),
                        format!("127.0.0.1:{hp}"),
                        "--model".into(),
                        MODEL.into(),
                        "--model-dir".into(),
                        model_dir.clone(),
                        "--num-blocks".into(),
                        args.num_blocks.to_string(),
                        "--block-size".into(),
                        bs.to_string(),
                        "--speedup".into(),
                        args.speedup.to_string(),
                        "--prefill-overhead-ms".into(),
                        t.prefill_overhead_ms.to_string(),
                        "--prefill-ms-per-token".into(),
                        t.prefill_ms_per_token.to_string(),
                        "--decode-ms-per-token".into(),
                        t.decode_ms_per_token.to_string(),
                        "--decode-ms-per-seq".into(),
                        t.decode_ms_per_seq.to_string(),
                        "--kv-events-endpoint".into(),
                        format!("tcp://127.0.0.1:{ep}"),
                        "--kv-replay-endpoint".into(),
                        format!("tcp://127.0.0.1:{rp}"),
                    ];
                    Ok(((hp, ep, rp), argv))
                },
                |(hp, _, _)| {
                    let client = client.clone();
                    async move { http_ok(&client, &format!("http://127.0.0.1:{hp}/health")).await }
                },
            )
            .await?;
        let url = format!("http://127.0.0.1:{hp}");
        let id = format!("worker-{i}");
        let argv: Vec<String> = vec![
            "--worker-id".into(),
            id.clone(),
            "--engine-url".into(),
            url.clone(),
            "--model".into(),
            MODEL.into(),
            "--block-size".into(),
            bs.to_string(),
            "--zmq-endpoint".into(),
            format!("tcp://127.0.0.1:{ep}"),
            "--zmq-replay-endpoint".into(),
            format!("tcp://127.0.0.1:{rp}"),
            "--nats".into(),
            nats_url.clone(),
            "--digest-interval".into(),
            format!("{}ms", args.digest_interval_ms),
        ];
        let reporter = Proc::spawn(
            &format!("reporter-{i}"),
            TIER_REPORTER,
            &reporter_bin,
            &argv,
            logs,
        )?;
        children.procs.push(reporter);
        workers.push(Worker { id, url });
    }
    println!(
        "{} mock engines ({} blocks x {} tokens each), each with a worker-reporter; logs in {}",
        workers.len(),
        args.num_blocks,
        bs,
        logs.display()
    );
    println!(
        "workload {}: {} requests, model-time speedup {}x\n",
        workload.name,
        workload.requests.len(),
        args.speedup
    );

    let ids: Vec<String> = workers.iter().map(|w| w.id.clone()).collect();
    let mut results = Vec::new();
    let mut failed = serde_json::Map::new();
    let mut total_failed = 0;
    for (k, &policy) in args.policy.iter().enumerate() {
        // Cold caches for every policy: the reset reaches the router as AllBlocksCleared.
        for w in &workers {
            let url = format!("{}/reset_prefix_cache", w.url);
            let resp = client
                .post(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Err(DemoError::Setup(format!("POST {url}: {}", r.status()))),
                Err(e) => return Err(DemoError::Setup(format!("POST {url}: {e}"))),
            }
        }
        // Owned by `children` while it runs, so an interrupt stops it like the others.
        let n = workers.len();
        let port =
            children
                .start_bound(
                    &format!("router-{}", policy.name()),
                    TIER_ROUTER,
                    &me,
                    logs,
                    cancel,
                    || {
                        let port = free_port()?;
                        Ok((port, router_args(args, policy, port, &nats_url, bs)))
                    },
                    |port| {
                        let client = client.clone();
                        async move {
                            router_settled(&client, &format!("http://127.0.0.1:{port}"), n).await
                        }
                    },
                )
                .await?;
        let router_url = format!("http://127.0.0.1:{port}");
        println!(
            "[{}/{}] policy {}: router on {router_url} sees {n} workers and an empty index",
            k + 1,
            args.policy.len(),
            policy.name(),
        );
        let cfg = ReplayConfig {
            url: router_url,
            model: MODEL.into(),
            block_size: bs,
            speedup: args.speedup,
            max_inflight: args.max_inflight,
            timeout: Duration::from_secs(120),
            label: policy.name().into(),
        };
        let replay: Replay = traffic::replay(&client, &cfg, workload, cancel).await;
        if replay.interrupted || cancel.is_cancelled() {
            return Err(DemoError::Cancelled);
        }
        // A reporter or engine that died mid-run would make the numbers meaningless.
        children.check_all()?;
        children.stop_tier(TIER_ROUTER, grace, force).await;
        failed.insert(policy.name().into(), replay.failures.into());
        total_failed += replay.failures;
        if replay.failures > 0 {
            println!(
                "  {} requests failed, e.g. {}",
                replay.failures,
                replay.errors.first().map_or("", String::as_str)
            );
        }
        let r = traffic::summarize(
            policy.name(),
            &workload.name,
            &ids,
            args.num_blocks,
            bs,
            args.speedup,
            &replay,
        );
        println!(
            "  done in {:.1}s: {} requests, block hit rate {:.1}%, TTFT p50 {:.0} ms\n",
            replay.wall.as_secs_f64(),
            r.requests,
            r.hit_rate * 100.0,
            r.ttft_p50_ms
        );
        results.push(r);
    }

    println!(
        "== live: {} (times in model ms = wall x {})",
        workload.name, args.speedup
    );
    print!("{}", table(&results));
    let mut predicted = Vec::new();
    if !args.no_sim {
        let fleet = sim::FleetConfig {
            workers: workers.len(),
            capacity_blocks: args.num_blocks,
            timing: args.timing.clone(),
            policy: args.policy_config.clone(),
        };
        predicted = args
            .policy
            .iter()
            .map(|&p| sim::simulate(workload, &fleet, p))
            .collect();
        println!("\n== `cache-router sim` prediction for the same workload and fleet");
        print!("{}", table(&predicted));
    }
    // Results before plots: a plotting error must not lose them.
    if let Some(path) = &args.json {
        // The live run does not observe evictions or the index's entries: leave them out
        // rather than report zeros.
        let live: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    for k in ["evictions", "index_entries", "index_mismatches"] {
                        o.remove(k);
                    }
                }
                v
            })
            .collect();
        let v = serde_json::json!({"live": live, "sim": predicted, "failed": failed});
        let out = serde_json::to_string_pretty(&v).unwrap_or_default();
        std::fs::write(path, out).map_err(|e| DemoError::Output {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
    }
    let slug = if args.trace.is_some() {
        "trace"
    } else {
        "chat-rag"
    };
    let title = format!(
        "live demo, {}: {} engines x {} blocks",
        workload.name,
        workers.len(),
        args.num_blocks
    );
    let plot = args.out.join(format!("demo-{slug}.png"));
    sim::report::plot(&results, &title, &plot)?;
    println!("plot written to {}", plot.display());
    if !predicted.is_empty() {
        let plot = args.out.join(format!("demo-{slug}-sim.png"));
        sim::report::plot(&predicted, &format!("simulated, {title}"), &plot)?;
        println!("plot written to {}", plot.display());
    }
    if total_failed > 0 {
        return Err(DemoError::Failed(total_failed));
    }
    Ok(results)
}

fn router_args(args: &DemoArgs, policy: PolicyKind, port: u16, nats: &str, bs: u64) -> Vec<String> {
    let c = &args.policy_config;
    vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--nats".into(),
        nats.into(),
        "--model".into(),
        MODEL.into(),
        "--model-dir".into(),
        args.model_dir.display().to_string(),
        "--block-size".into(),
        bs.to_string(),
        "--policy".into(),
        policy.name().into(),
        "--w-uncached".into(),
        c.uncached_weight.to_string(),
        "--w-prefill".into(),
        c.prefill_weight.to_string(),
        "--w-decode".into(),
        c.decode_weight.to_string(),
        "--temperature".into(),
        c.temperature.to_string(),
        "--approx-ttl-ms".into(),
        c.approx_ttl_ms.to_string(),
        "--approx-threshold".into(),
        c.approx_threshold.to_string(),
        "--approx-balance-abs".into(),
        c.approx_balance_abs.to_string(),
        "--policy-seed".into(),
        c.seed.to_string(),
        // Less than the demo waits: the router drains, then exits by itself.
        "--shutdown-grace-s".into(),
        (args.shutdown_grace_s / 3).max(1).to_string(),
    ]
}

/// Ready, every worker registered (a candidate of a dry-run decision), and the index empty
/// (the previous policy's blocks were cleared by the engines' resets).
async fn router_settled(client: &reqwest::Client, url: &str, workers: usize) -> bool {
    if !http_ok(client, &format!("{url}/ready")).await {
        return false;
    }
    let probe = serde_json::json!({"model": MODEL, "prompt": [1, 2, 3]});
    let candidates = match client
        .post(format!("{url}/route"))
        .json(&probe)
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["candidates"].as_array().map(Vec::len)),
        _ => None,
    };
    if candidates != Some(workers) {
        return false;
    }
    let Ok(resp) = client
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    else {
        return false;
    };
    let Ok(text) = resp.text().await else {
        return false;
    };
    metric(&text, "cache_router_index_entries") == Some(0.0)
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The comparison table: hit rate, TTFT, throughput and imbalance per policy.
pub fn table(results: &[SimResult]) -> String {
    let mut s = format!(
        "{:<14} {:>9} {:>9} {:>11} {:>11} {:>11} {:>12} {:>10}\n",
        "policy",
        "requests",
        "hit_rate",
        "ttft_p50",
        "ttft_p99",
        "ttft_mean",
        "thru_rps",
        "imbalance"
    );
    for r in results {
        s.push_str(&format!(
            "{:<14} {:>9} {:>8.1}% {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>12.2} {:>10.2}\n",
            r.policy,
            r.requests,
            r.hit_rate * 100.0,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.ttft_mean_ms,
            r.throughput_rps,
            r.imbalance
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_reads_unlabelled_samples_only() {
        let text = "# HELP cache_router_workers x\ncache_router_workers 4\n\
                    cache_router_workers_total{a=\"b\"} 9\ncache_router_index_entries 0\n";
        assert_eq!(metric(text, "cache_router_workers"), Some(4.0));
        assert_eq!(metric(text, "cache_router_index_entries"), Some(0.0));
        assert_eq!(metric(text, "cache_router_missing"), None);
    }
}
