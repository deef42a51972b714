//! `cache-router serve`: flags → a validated [`RouterConfig`], bind, [`cache_router::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use cache_router::flags::{duration, policy_kind, ExtraModel, PolicyArgs, StaticWorker};
use cache_router::proxy::EngineAuth;
use cache_router::tokenize::{ModelTokenizer, Models};
use cache_router::{NatsConfig, RouterConfig, RouterError};
use cache_router_bus::{NatsArgs, StreamArgs};
use cache_router_core::backoff::Backoff;
use cache_router_core::liveness::EjectionPolicy;
use cache_router_core::policy::PolicyKind;
use cache_router_core::protocol::WorkerInfo;

/// Flags of `cache-router serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address for HTTP (OpenAI endpoints, /route, health, readiness, metrics).
    #[arg(long, env = "CACHE_ROUTER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A static worker, `ID=URL` or `ID=URL,model=NAME` (repeatable), for fleets without
    /// reporters; without `model=` it serves `--model`.
    #[arg(long = "worker", value_name = "ID=URL[,model=NAME]", value_parser = cache_router::flags::specs::static_worker)]
    workers: Vec<StaticWorker>,
    /// Another served model with its own tokenizer, `NAME=DIR` (a model directory; repeatable).
    /// The request's `model` selects the tokenizer.
    #[arg(long = "extra-model", value_name = "NAME=DIR", value_parser = cache_router::flags::specs::extra_model)]
    extra_models: Vec<ExtraModel>,
    /// Model name the tokenizer serves (requests name it in `model`).
    #[arg(long, env = "CACHE_ROUTER_MODEL")]
    model: String,
    /// A HF `tokenizer.json` for the model.
    #[arg(
        long,
        env = "CACHE_ROUTER_TOKENIZER",
        required_unless_present = "model_dir"
    )]
    tokenizer: Option<PathBuf>,
    /// A model directory (tokenizer.json, tokenizer_config.json with its chat_template).
    #[arg(long, env = "CACHE_ROUTER_MODEL_DIR", conflicts_with = "tokenizer")]
    model_dir: Option<PathBuf>,
    /// A Jinja chat template overriding the model's.
    #[arg(long, env = "CACHE_ROUTER_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
    /// Tokens per KV block of the engines.
    #[arg(long, env = "CACHE_ROUTER_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// Routing policy (default: cache-aware with --nats, approx without).
    #[arg(long, env = "CACHE_ROUTER_POLICY", value_parser = policy_kind())]
    policy: Option<PolicyKind>,
    #[command(flatten)]
    policy_config: PolicyArgs,
    /// Bearer token for /admin/*; unset disables them. Prefer --admin-token-file: a flag's
    /// value shows in the process list.
    #[arg(
        long,
        env = "CACHE_ROUTER_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    admin_token: Option<String>,
    /// A file holding the bearer token for /admin/* (a trailing newline is ignored).
    #[arg(long, env = "CACHE_ROUTER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Larger request bodies get 413 (before the body is read, when Content-Length says so).
    #[arg(long, env = "CACHE_ROUTER_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Prompts with more tokens get 400 (a body too large to fit is refused before it is
    /// tokenized).
    #[arg(
        long,
        env = "CACHE_ROUTER_MAX_PROMPT_TOKENS",
        default_value_t = 131_072
    )]
    max_prompt_tokens: usize,
    /// Time for a client to send a request's headers, also the longest a keep-alive
    /// connection may sit idle, e.g. 30s.
    #[arg(long, env = "CACHE_ROUTER_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = duration::ms)]
    header_read_timeout: Duration,
    /// Client connections open at most; past it a new connection is closed at once.
    #[arg(long, env = "CACHE_ROUTER_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// A host workers may be on: a CIDR network (10.0.0.0/8), an address, a host name or
    /// `*.suffix` (repeatable; comma-separated in the environment). Registry entries naming
    /// another host are refused and counted. Default: any host.
    #[arg(
        long = "allow-worker-host",
        env = "CACHE_ROUTER_ALLOW_WORKER_HOSTS",
        value_delimiter = ','
    )]
    allow_worker_hosts: Vec<String>,
    /// Worker slots tracked for in-flight accounting and liveness.
    #[arg(long, env = "CACHE_ROUTER_MAX_WORKERS", default_value_t = 4096)]
    max_workers: usize,
    /// Engine connect timeout, e.g. 2s (a bare number is milliseconds).
    #[arg(long = "connect-timeout", alias = "connect-timeout-ms", env = "CACHE_ROUTER_CONNECT_TIMEOUT_MS", default_value = "2s", value_parser = duration::ms)]
    connect_timeout: Duration,
    /// Time allowed until the engine's response headers, e.g. 60s (a bare number is
    /// milliseconds).
    #[arg(long = "first-byte-timeout", alias = "first-byte-timeout-ms", env = "CACHE_ROUTER_FIRST_BYTE_TIMEOUT_MS", default_value = "60s", value_parser = duration::ms)]
    first_byte_timeout: Duration,
    /// Time allowed for a non-streaming request's whole answer (its headers come only when
    /// generation is done), e.g. 10m; a timeout is not retried elsewhere.
    #[arg(long, env = "CACHE_ROUTER_GENERATION_TIMEOUT", default_value = "10m", value_parser = duration::ms)]
    generation_timeout: Duration,
    /// The key engines expect: sent as `Authorization: Bearer <key>` to them in place of
    /// whatever the client sent (a client's key never leaves the router by default).
    #[arg(
        long,
        env = "CACHE_ROUTER_ENGINE_API_KEY",
        hide_env_values = true,
        conflicts_with = "forward_client_auth"
    )]
    engine_api_key: Option<String>,
    /// Pass the client's own `Authorization` on to the engine (off by default).
    #[arg(long, env = "CACHE_ROUTER_FORWARD_CLIENT_AUTH")]
    forward_client_auth: bool,
    /// Longest gap between body chunks, e.g. 60s (a bare number is milliseconds).
    #[arg(long = "idle-timeout", alias = "idle-timeout-ms", env = "CACHE_ROUTER_IDLE_TIMEOUT_MS", default_value = "60s", value_parser = duration::ms)]
    idle_timeout: Duration,
    /// Workers tried per request (connect errors and 5xx before any byte retry the next).
    #[arg(long, env = "CACHE_ROUTER_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,
    /// Consecutive failures that eject a worker from routing.
    #[arg(long, env = "CACHE_ROUTER_EJECT_AFTER", default_value_t = 3)]
    eject_after: u32,
    /// How long a first ejection lasts; each further one (without a success between) lasts
    /// twice as long, up to --eject-max.
    #[arg(long, env = "CACHE_ROUTER_EJECT_FOR", default_value = "10s", value_parser = duration::ms)]
    eject_for: Duration,
    /// Longest ejection.
    #[arg(long, env = "CACHE_ROUTER_EJECT_MAX", default_value = "5m", value_parser = duration::ms)]
    eject_max: Duration,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    limits: StreamArgs,
    /// Write a snapshot every this many applied stream messages.
    #[arg(long, env = "CACHE_ROUTER_SNAPSHOT_EVERY", default_value_t = 100_000)]
    snapshot_every: u64,
    /// ...or this often, when anything changed, e.g. 30s (a bare number is seconds).
    #[arg(long = "snapshot-interval", alias = "snapshot-interval-s", env = "CACHE_ROUTER_SNAPSHOT_INTERVAL_S", default_value = "30s", value_parser = duration::secs)]
    snapshot_interval: Duration,
    /// Timeout of one resync attempt, e.g. 5s (a bare number is milliseconds).
    #[arg(long = "resync-timeout", alias = "resync-timeout-ms", env = "CACHE_ROUTER_RESYNC_TIMEOUT_MS", default_value = "5s", value_parser = duration::ms)]
    resync_timeout: Duration,
    /// This router's id in the in-flight reports the routers of a fleet exchange
    /// (`[A-Za-z0-9_-]`; default: the host name, else `router-<pid>`).
    #[arg(long, env = "CACHE_ROUTER_ID")]
    router_id: Option<String>,
    /// How often to publish this router's in-flight load to the other routers, e.g. 250ms;
    /// 0 turns load sharing off.
    #[arg(long, env = "CACHE_ROUTER_LOAD_SHARE_INTERVAL", default_value = "250ms", value_parser = duration::ms)]
    load_share_interval: Duration,
    /// Memory bound of the index, in (worker, block) entries (0 = unbounded).
    #[arg(
        long,
        env = "CACHE_ROUTER_MAX_INDEX_ENTRIES",
        default_value_t = 50_000_000
    )]
    max_index_entries: usize,
    /// Memory for messages buffered while resyncs are pending, all workers together, in
    /// bytes; past it a worker's buffer is dropped and its resync starts over.
    #[arg(
        long,
        env = "CACHE_ROUTER_MAX_RESYNC_BUFFER_BYTES",
        default_value_t = 64 << 20
    )]
    max_resync_buffer_bytes: usize,
    /// How long to drain on SIGTERM/SIGINT before exiting anyway, e.g. 10s (a bare number is
    /// seconds).
    #[arg(long = "shutdown-grace", alias = "shutdown-grace-s", env = "CACHE_ROUTER_SHUTDOWN_GRACE_S", default_value = "10s", value_parser = duration::secs)]
    shutdown_grace: Duration,
}

/// Why `serve` did not start.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// Bad flags: exit 64.
    #[error("invalid configuration: {0}")]
    Usage(String),
    /// A model that would not load.
    #[error("{0}")]
    Model(String),
}

impl ServeArgs {
    fn static_workers(&self) -> Vec<WorkerInfo> {
        self.workers
            .iter()
            .map(|w| WorkerInfo {
                id: w.id.clone(),
                url: w.url.clone(),
                model: w.model.clone().unwrap_or_else(|| self.model.clone()),
                block_size: self.block_size as u32,
                epoch: 0,
            })
            .collect()
    }

    fn policy(&self) -> PolicyKind {
        self.policy.unwrap_or(if self.nats.url.is_some() {
            PolicyKind::CacheAware
        } else {
            PolicyKind::Approx
        })
    }

    fn load_models(&self) -> Result<Models, ServeError> {
        let failed = |what: String| {
            move |e: cache_router::tokenize::TokenizeError| {
                ServeError::Model(format!("{what}: {e}"))
            }
        };
        let tok = match (&self.model_dir, &self.tokenizer) {
            (Some(dir), _) => ModelTokenizer::from_model_dir(dir, self.chat_template.as_deref())
                .map_err(failed(format!("--model-dir {}", dir.display())))?,
            (None, Some(path)) => {
                ModelTokenizer::from_files(path, None, self.chat_template.as_deref())
                    .map_err(failed(format!("--tokenizer {}", path.display())))?
            }
            (None, None) => {
                return Err(ServeError::Usage(
                    "--tokenizer or --model-dir is required".into(),
                ))
            }
        };
        let mut models = Models::new();
        models.insert(
            self.model.clone(),
            Arc::new(tok.with_model(self.model.clone(), self.block_size)),
        );
        for m in &self.extra_models {
            if models.contains_key(&m.name) {
                return Err(ServeError::Usage(format!(
                    "--extra-model {:?} is given twice",
                    m.name
                )));
            }
            let tok = ModelTokenizer::from_model_dir(&m.dir, None)
                .map_err(failed(format!("--extra-model {}", m.name)))?
                .with_model(m.name.clone(), self.block_size);
            models.insert(m.name.clone(), Arc::new(tok));
        }
        Ok(models)
    }

    /// Checks the flags that need no file, then loads the models into a config.
    fn into_config(self) -> Result<RouterConfig, ServeError> {
        if self.block_size == 0 {
            return Err(ServeError::Usage("--block-size must be positive".into()));
        }
        if self.model.is_empty() {
            return Err(ServeError::Usage("--model must not be empty".into()));
        }
        if self.nats.url.is_none() && self.workers.is_empty() {
            return Err(ServeError::Usage(
                "give --nats (reporters register workers) or at least one --worker ID=URL".into(),
            ));
        }
        self.nats
            .validate()
            .map_err(|e| ServeError::Usage(e.to_string()))?;
        if self.eject_after == 0 || self.eject_for.is_zero() || self.eject_max < self.eject_for {
            return Err(ServeError::Usage(
                "--eject-after and --eject-for must be positive, --eject-max at least --eject-for"
                    .into(),
            ));
        }
        let models = self.load_models()?;
        let mut config = RouterConfig::new(models);
        config.static_workers = self.static_workers();
        config.policy = self.policy();
        config.policy_config = self.policy_config.clone().into();
        config.proxy.connect_timeout = self.connect_timeout;
        config.proxy.first_byte_timeout = self.first_byte_timeout;
        config.proxy.idle_timeout = self.idle_timeout;
        config.proxy.generation_timeout = self.generation_timeout;
        config.proxy.engine_auth = match (&self.engine_api_key, self.forward_client_auth) {
            (Some(key), _) => EngineAuth::key(key)
                .map_err(|_| ServeError::Usage("--engine-api-key: not a header value".into()))?,
            (None, true) => EngineAuth::ForwardClient,
            (None, false) => EngineAuth::None,
        };
        config.proxy.max_attempts = self.max_attempts;
        config.ejection = EjectionPolicy {
            failures_to_eject: self.eject_after,
            backoff: Backoff {
                initial: self.eject_for,
                max: self.eject_max,
            },
        };
        config.admin_token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    ServeError::Usage(format!("--admin-token-file {}: {e}", path.display()))
                })?;
                let t = t.trim_end_matches(['\n', '\r']).to_owned();
                if t.is_empty() {
                    return Err(ServeError::Usage(format!(
                        "--admin-token-file {} is empty",
                        path.display()
                    )));
                }
                Some(t)
            }
            (None, None) => None,
        };
        config.max_body_bytes = self.max_body_bytes;
        config.max_prompt_tokens = self.max_prompt_tokens;
        config.connection_limits = cache_router::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
        };
        config.allowed_worker_hosts =
            cache_router::AllowList::parse(&self.allow_worker_hosts).map_err(ServeError::Usage)?;
        config.max_workers = self.max_workers;
        config.max_index_entries = (self.max_index_entries > 0).then_some(self.max_index_entries);
        config.max_resync_buffer_bytes = self.max_resync_buffer_bytes;
        config.shutdown_grace = self.shutdown_grace;
        if self.nats.url.is_some() {
            config.nats = Some(NatsConfig {
                nats: self.nats.clone(),
                limits: self.limits.clone(),
                snapshot_every: self.snapshot_every,
                snapshot_interval: self.snapshot_interval,
                resync_timeout: self.resync_timeout,
                router_id: self.router_id.clone().unwrap_or_else(default_router_id),
                load_share_interval: self.load_share_interval,
            });
        }
        config.validate().map_err(|e| match e {
            RouterError::Config(m) => ServeError::Usage(m),
            other => ServeError::Usage(other.to_string()),
        })?;
        Ok(config)
    }
}

/// The host name (as a container's is), made subject-safe, else `router-<pid>`.
fn default_router_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() {
        format!("router-{}", std::process::id())
    } else {
        id
    }
}

pub(crate) fn main(args: ServeArgs) -> ExitCode {
    let listen = args.listen;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e @ ServeError::Usage(_)) => {
            eprintln!("error: {e}");
            return ExitCode::from(crate::EX_USAGE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(rt) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(cache_router_bus::shutdown::cancel_on_signals(vec![
            shutdown.clone(),
        ]));
        match cache_router::serve(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
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

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut v = vec!["serve", "--model", "m", "--tokenizer", "t.json"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.serve)
    }

    #[test]
    fn static_workers_parse_with_optional_model() {
        let a = parse(&[
            "--worker",
            "a=http://127.0.0.1:1/",
            "--worker",
            "b=http://h:2,model=qwen",
        ])
        .unwrap();
        let w = a.static_workers();
        assert_eq!(w[0].url, "http://127.0.0.1:1");
        assert_eq!(w[0].model, "m");
        assert_eq!(w[1].model, "qwen");
        assert_eq!(a.policy(), PolicyKind::Approx, "no NATS: approx by default");
        for bad in [
            "nourl",
            "a.b=http://x",
            "a=ftp://x",
            "a=https://x",
            "a=http://x,model=",
        ] {
            assert!(parse(&["--worker", bad]).is_err(), "{bad}");
        }
        let n = parse(&["--nats", "nats://127.0.0.1:4222"]).unwrap();
        assert_eq!(n.policy(), PolicyKind::CacheAware);
    }

    #[test]
    fn durations_take_humantime_and_the_old_integer_flags() {
        let a = parse(&["--connect-timeout", "1500ms", "--shutdown-grace", "1m"]).unwrap();
        assert_eq!(a.connect_timeout, Duration::from_millis(1500));
        assert_eq!(a.shutdown_grace, Duration::from_secs(60));
        let old = parse(&[
            "--connect-timeout-ms",
            "1500",
            "--shutdown-grace-s",
            "60",
            "--registry-ttl-ms",
            "600",
            "--snapshot-interval-s",
            "5",
        ])
        .unwrap();
        assert_eq!(old.connect_timeout, Duration::from_millis(1500));
        assert_eq!(old.shutdown_grace, Duration::from_secs(60));
        assert_eq!(old.limits.registry_ttl, Duration::from_millis(600));
        assert_eq!(old.snapshot_interval, Duration::from_secs(5));
        assert!(parse(&["--idle-timeout", "soon"]).is_err());
    }

    #[test]
    fn usage_errors_come_before_loading_the_model() {
        // t.json does not exist: each of these must fail on the flags, not on the file.
        for args in [
            &[][..],
            &["--worker", "a=http://h:1", "--block-size", "0"],
            &["--worker", "a=http://h:1", "--eject-after", "0"],
            &["--nats", "nats://h:1", "--prefix", "a.b"],
        ] {
            let e = parse(args).unwrap().into_config().unwrap_err();
            assert!(matches!(e, ServeError::Usage(_)), "{args:?}: {e}");
        }
        let e = parse(&["--worker", "a=http://h:1"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(matches!(e, ServeError::Model(_)), "{e}");
    }
}
