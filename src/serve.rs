//! `cache-router serve`: flags, validation, binding, and the run loop with graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use std::path::PathBuf;
use std::sync::Arc;

use cache_router::bus::ingest::{self, IngestConfig};
use cache_router::bus::{self, NatsArgs, StreamArgs};
use cache_router::fleet::FleetConfig;
use cache_router::http::{self, inflight::InFlight, proxy, routes};
use cache_router::index::IndexConfig;
use cache_router::owner;
use cache_router::policy::{PolicyConfig, PolicyKind};
use cache_router::protocol::{WorkerId, WorkerInfo};
use cache_router::routing::{LoadSource, RoutingSetup};
use cache_router::tokenize::ModelTokenizer;

/// Flags of `cache-router serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address for HTTP (OpenAI endpoints, /route, health, readiness, metrics).
    #[arg(long, env = "CACHE_ROUTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// A static worker, `ID=URL` or `ID=URL,model=NAME` (repeatable), for fleets without
    /// reporters; without `model=` it serves `--model`.
    #[arg(long = "worker", value_name = "ID=URL[,model=NAME]")]
    pub(crate) workers: Vec<String>,
    /// Another served model with its own tokenizer, `NAME=DIR` (a model directory; repeatable).
    /// The request's `model` selects the tokenizer.
    #[arg(long = "extra-model", value_name = "NAME=DIR")]
    pub(crate) extra_models: Vec<String>,
    /// Model name the tokenizer serves (requests name it in `model`).
    #[arg(long, env = "CACHE_ROUTER_MODEL")]
    pub(crate) model: String,
    /// A HF `tokenizer.json` for the model.
    #[arg(
        long,
        env = "CACHE_ROUTER_TOKENIZER",
        required_unless_present = "model_dir"
    )]
    pub(crate) tokenizer: Option<PathBuf>,
    /// A model directory (tokenizer.json, tokenizer_config.json with its chat_template).
    #[arg(long, env = "CACHE_ROUTER_MODEL_DIR", conflicts_with = "tokenizer")]
    pub(crate) model_dir: Option<PathBuf>,
    /// A Jinja chat template overriding the model's.
    #[arg(long, env = "CACHE_ROUTER_CHAT_TEMPLATE")]
    pub(crate) chat_template: Option<PathBuf>,
    /// Tokens per KV block of the engines.
    #[arg(long, env = "CACHE_ROUTER_BLOCK_SIZE", default_value_t = 16)]
    pub(crate) block_size: usize,
    /// Routing policy (default: cache-aware with --nats, approx without).
    #[arg(long, value_enum, env = "CACHE_ROUTER_POLICY")]
    pub(crate) policy: Option<PolicyKind>,
    #[command(flatten)]
    pub(crate) policy_config: PolicyConfig,
    /// Bearer token for /admin/*; unset disables them.
    #[arg(long, env = "CACHE_ROUTER_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// Larger request bodies get 413.
    #[arg(long, env = "CACHE_ROUTER_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub(crate) max_body_bytes: usize,
    /// Worker slots tracked for in-flight accounting and health.
    #[arg(long, env = "CACHE_ROUTER_MAX_WORKERS", default_value_t = 4096)]
    pub(crate) max_workers: usize,
    /// Engine connect timeout, in milliseconds.
    #[arg(long, env = "CACHE_ROUTER_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    pub(crate) connect_timeout_ms: u64,
    /// Time allowed until the engine's response headers, in milliseconds.
    #[arg(
        long,
        env = "CACHE_ROUTER_FIRST_BYTE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub(crate) first_byte_timeout_ms: u64,
    /// Longest gap between body chunks, in milliseconds.
    #[arg(long, env = "CACHE_ROUTER_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub(crate) idle_timeout_ms: u64,
    /// Workers tried per request (connect errors and 5xx before any byte retry the next).
    #[arg(long, env = "CACHE_ROUTER_MAX_ATTEMPTS", default_value_t = 3)]
    pub(crate) max_attempts: u32,
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) limits: StreamArgs,
    /// Write a snapshot every this many applied stream messages.
    #[arg(long, env = "CACHE_ROUTER_SNAPSHOT_EVERY", default_value_t = 100_000)]
    pub(crate) snapshot_every: u64,
    /// ...or every this many seconds (when anything changed).
    #[arg(long, env = "CACHE_ROUTER_SNAPSHOT_INTERVAL_S", default_value_t = 30)]
    pub(crate) snapshot_interval_s: u64,
    /// Timeout of one resync attempt, in milliseconds.
    #[arg(long, env = "CACHE_ROUTER_RESYNC_TIMEOUT_MS", default_value_t = 5000)]
    pub(crate) resync_timeout_ms: u64,
    /// Memory bound of the index, in (worker, block) entries (0 = unbounded).
    #[arg(
        long,
        env = "CACHE_ROUTER_MAX_INDEX_ENTRIES",
        default_value_t = 50_000_000
    )]
    pub(crate) max_index_entries: usize,
    /// Seconds to drain on SIGTERM/SIGINT before exiting anyway.
    #[arg(long, env = "CACHE_ROUTER_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub(crate) shutdown_grace_s: u64,
}

impl ServeArgs {
    fn validate(&self) -> Result<(), String> {
        self.nats.validate().map_err(|e| e.to_string())?;
        self.static_workers()?;
        if self.nats.url.is_none() && self.workers.is_empty() {
            return Err(
                "give --nats (reporters register workers) or at least one --worker ID=URL".into(),
            );
        }
        if self.block_size == 0 || self.max_workers == 0 || self.max_attempts == 0 {
            return Err("--block-size, --max-workers and --max-attempts must be positive".into());
        }
        if self.model.is_empty() {
            return Err("--model must not be empty".into());
        }
        if self.snapshot_every == 0 || self.snapshot_interval_s == 0 {
            return Err("--snapshot-every and --snapshot-interval-s must be positive".into());
        }
        if self.resync_timeout_ms == 0 {
            return Err("--resync-timeout-ms must be positive".into());
        }
        if self.limits.registry_ttl_ms < 100 {
            return Err("--registry-ttl-ms must be at least 100".into());
        }
        Ok(())
    }

    fn static_workers(&self) -> Result<Vec<WorkerInfo>, String> {
        self.workers
            .iter()
            .map(|w| {
                let (id, rest) = w
                    .split_once('=')
                    .ok_or_else(|| format!("--worker {w:?}: expected ID=URL[,model=NAME]"))?;
                let (url, model) = match rest.split_once(",model=") {
                    Some((url, model)) if !model.is_empty() => (url, model.to_owned()),
                    Some(_) => return Err(format!("--worker {w:?}: empty model name")),
                    None => (rest, self.model.clone()),
                };
                let id = WorkerId(id.to_owned());
                id.validate().map_err(|e| format!("--worker {w:?}: {e}"))?;
                if !url.starts_with("http://") {
                    return Err(format!(
                        "--worker {w:?}: URL must start with http:// (this build proxies to \
                         engines over plain HTTP; TLS to engines is not built in)"
                    ));
                }
                Ok(WorkerInfo {
                    id,
                    url: url.trim_end_matches('/').to_owned(),
                    model,
                    block_size: self.block_size as u32,
                    epoch: 0,
                })
            })
            .collect()
    }

    fn routing(&self) -> RoutingSetup {
        let default = if self.nats.url.is_some() {
            PolicyKind::CacheAware
        } else {
            PolicyKind::Approx
        };
        RoutingSetup {
            policy: self.policy.unwrap_or(default),
            config: self.policy_config.clone(),
            ..RoutingSetup::default()
        }
    }

    fn load_models(&self) -> anyhow::Result<routes::Models> {
        let tok = match (&self.model_dir, &self.tokenizer) {
            (Some(dir), _) => ModelTokenizer::from_model_dir(dir, self.chat_template.as_deref())?,
            (None, Some(path)) => {
                ModelTokenizer::from_files(path, None, self.chat_template.as_deref())?
            }
            (None, None) => anyhow::bail!("--tokenizer or --model-dir is required"),
        };
        let tok = tok.with_model(self.model.clone(), self.block_size);
        let mut models = routes::Models::new();
        models.insert(self.model.clone(), Arc::new(tok));
        for spec in &self.extra_models {
            let (name, dir) = spec
                .split_once('=')
                .filter(|(n, d)| !n.is_empty() && !d.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--extra-model {spec:?}: expected NAME=DIR"))?;
            if models.contains_key(name) {
                anyhow::bail!("--extra-model {name:?} is given twice");
            }
            let tok = ModelTokenizer::from_model_dir(std::path::Path::new(dir), None)
                .map_err(|e| anyhow::anyhow!("--extra-model {name}: {e}"))?
                .with_model(name, self.block_size);
            models.insert(name.to_owned(), Arc::new(tok));
        }
        Ok(models)
    }

    fn proxy_config(&self) -> proxy::ProxyConfig {
        proxy::ProxyConfig {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            first_byte_timeout: Duration::from_millis(self.first_byte_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_attempts: self.max_attempts,
            ..proxy::ProxyConfig::default()
        }
    }

    fn ingest_config(&self, loads: Arc<dyn LoadSource>) -> IngestConfig {
        IngestConfig {
            nats: self.nats.clone(),
            limits: self.limits.clone(),
            fleet: FleetConfig {
                index: IndexConfig {
                    max_entries: match self.max_index_entries {
                        0 => usize::MAX,
                        n => n,
                    },
                },
                ..FleetConfig::default()
            },
            snapshot_every: self.snapshot_every,
            snapshot_interval: Duration::from_secs(self.snapshot_interval_s),
            resync_timeout: Duration::from_millis(self.resync_timeout_ms),
            routing: self.routing(),
            loads,
        }
    }
}

pub(crate) fn main(args: ServeArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("error: invalid configuration: {e}");
        return ExitCode::from(crate::EX_USAGE);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        match run(args, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Loads the tokenizer, starts the fleet (event plane or static), serves HTTP until
/// `shutdown`, then drains.
async fn run(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(args.shutdown_grace_s);
    let models = args.load_models()?;
    let inflight = InFlight::new(args.max_workers);
    let loads: Arc<dyn LoadSource> = Arc::new(inflight.clone());
    tracing::info!(
        nats = args.nats.url.as_deref().unwrap_or("none (static workers)"),
        listen = %listener.local_addr()?,
        model = %args.model,
        policy = ?args.routing().policy,
        "starting router"
    );
    let static_workers = args.static_workers().map_err(anyhow::Error::msg)?;
    enum Plane {
        Nats(Box<ingest::EventPlane>, async_nats::Client),
        Static(owner::StaticFleet),
    }
    let plane = if args.nats.url.is_some() {
        let client = tokio::select! {
            c = bus::connect(&args.nats, "cache-router") => c?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let plane =
            ingest::start(client.clone(), args.ingest_config(loads), shutdown.clone()).await?;
        for w in static_workers {
            plane.handle().register(w).await;
        }
        Plane::Nats(Box::new(plane), client)
    } else {
        let fleet = owner::spawn_static(
            args.ingest_config(loads.clone()).fleet,
            args.routing().build(),
            loads,
            static_workers,
        )
        .await?;
        Plane::Static(fleet)
    };
    let fleet = match &plane {
        Plane::Nats(p, _) => p.handle(),
        Plane::Static(f) => f.handle(),
    };
    let mut state = http::AppState::new(fleet, models, inflight);
    state.proxy = proxy::Proxy::new(args.proxy_config(), args.max_workers)?;
    state.admin_token = args.admin_token.clone();
    state.max_body_bytes = args.max_body_bytes;
    let server = tokio::spawn(http::serve(listener, http::app(state), shutdown.clone()));
    shutdown.cancelled().await;
    tracing::info!("shutting down (grace {grace:?})");
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Err(e))) => tracing::warn!("http server: {e}"),
        Err(_) => tracing::warn!("http server did not drain within the grace period"),
        _ => {}
    }
    match plane {
        Plane::Nats(plane, client) => {
            plane.shutdown(grace).await;
            let _ = tokio::time::timeout(grace, client.drain()).await;
        }
        Plane::Static(f) => f.shutdown().await,
    }
    tracing::info!("stopped");
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
pub(crate) async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut v = vec!["serve", "--model", "m", "--tokenizer", "t.json"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().serve
    }

    #[test]
    fn static_workers_parse_with_optional_model() {
        let a = parse(&[
            "--worker",
            "a=http://127.0.0.1:1/",
            "--worker",
            "b=http://h:2,model=qwen",
        ]);
        let w = a.static_workers().unwrap();
        assert_eq!(w[0].url, "http://127.0.0.1:1");
        assert_eq!(w[0].model, "m");
        assert_eq!(w[1].model, "qwen");
        assert_eq!(
            a.routing().policy,
            PolicyKind::Approx,
            "no NATS: approx by default"
        );
        assert!(a.validate().is_ok());
        for bad in [
            "nourl",
            "a.b=http://x",
            "a=ftp://x",
            "a=https://x",
            "a=http://x,model=",
        ] {
            assert!(parse(&["--worker", bad]).validate().is_err(), "{bad}");
        }
        assert!(
            parse(&[]).validate().is_err(),
            "neither --nats nor --worker"
        );
        let n = parse(&["--nats", "nats://127.0.0.1:4222"]);
        assert!(n.validate().is_ok());
        assert_eq!(n.routing().policy, PolicyKind::CacheAware);
    }
}
