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

mod children;
mod fleet;
mod procs;
mod report;
mod round;
mod traffic;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::flags::{duration, policy_kind, PolicyArgs, TimingArgs};
use cache_router_core::policy::PolicyKind;
use cache_router_core::sim::workload::{self, GeneratorConfig, Workload};
use cache_router_core::sim::{self, SimResult};
use children::{Children, TIER_ROUTER};
use procs::locate;

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
        value_parser = policy_kind(),
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
    pub timing: TimingArgs,
    #[command(flatten)]
    pub policy_config: PolicyArgs,
    /// Requests in flight at most from the generator.
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
    /// Reporters' digest interval (anti-entropy), e.g. 2s (a bare number is milliseconds).
    #[arg(
        long = "digest-interval",
        alias = "digest-interval-ms",
        default_value = "2s",
        value_parser = duration::ms
    )]
    pub digest_interval: Duration,
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
    /// How long each child gets to exit after SIGTERM before it is killed, e.g. 10s (a bare
    /// number is seconds).
    #[arg(
        long = "shutdown-grace",
        alias = "shutdown-grace-s",
        default_value = "10s",
        value_parser = duration::secs
    )]
    pub shutdown_grace: Duration,
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
    Plot(#[from] crate::sim::report::PlotError),
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
        if self.max_inflight == 0 || self.output_tokens == 0 || self.digest_interval.is_zero() {
            return bad("--max-inflight, --output-tokens and --digest-interval must be positive");
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
    let result = run_rounds(&args, &workload, &logs, &mut children, &cancel, &force).await;
    if matches!(result, Err(DemoError::Cancelled)) {
        println!("interrupted: stopping every child process (again to kill them)");
    }
    children.stop_all(args.shutdown_grace, &force).await;
    result
}

/// Starts the fleet, runs one round per policy, prints and writes the comparison.
async fn run_rounds(
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

    let nats_url = fleet::start_nats(&nats_bin, logs, children, cancel).await?;
    println!("nats-server (JetStream) on {nats_url}");
    let setup = fleet::FleetSetup {
        args,
        me: &me,
        reporter_bin: &reporter_bin,
        logs,
        nats_url: &nats_url,
        block_size: bs,
        client: &client,
    };
    let workers = fleet::start_workers(&setup, children, cancel).await?;
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
    let round = round::RoundSetup {
        args,
        me: &me,
        logs,
        nats_url: &nats_url,
        block_size: bs,
        workers: workers.len(),
        client: &client,
    };
    let mut results = Vec::new();
    let mut failed = serde_json::Map::new();
    let mut total_failed = 0;
    for (k, &policy) in args.policy.iter().enumerate() {
        fleet::reset_caches(&client, &workers).await?;
        print!("[{}/{}] ", k + 1, args.policy.len());
        let replay = round::run(&round, policy, workload, children, cancel).await?;
        if replay.interrupted || cancel.is_cancelled() {
            return Err(DemoError::Cancelled);
        }
        // A reporter or engine that died mid-run would make the numbers meaningless.
        children.check_all()?;
        children
            .stop_tier(TIER_ROUTER, args.shutdown_grace, force)
            .await;
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
    print!("{}", report::table(&results));
    let mut predicted = Vec::new();
    if !args.no_sim {
        let fleet = sim::FleetConfig {
            workers: workers.len(),
            capacity_blocks: args.num_blocks,
            timing: args.timing.clone().into(),
            policy: args.policy_config.clone().into(),
        };
        predicted = args
            .policy
            .iter()
            .map(|&p| sim::simulate(workload, &fleet, p))
            .collect();
        println!("\n== `cache-router sim` prediction for the same workload and fleet");
        print!("{}", report::table(&predicted));
    }
    // Results before plots: a plotting error must not lose them.
    if let Some(path) = &args.json {
        report::write_json(path, &results, &predicted, &failed)?;
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
    report::plots(&args.out, slug, &title, &results, &predicted)?;
    if total_failed > 0 {
        return Err(DemoError::Failed(total_failed));
    }
    Ok(results)
}
