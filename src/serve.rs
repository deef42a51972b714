//! `cache-router serve`: flags, validation, binding, and the run loop with graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use cache_router::bus::ingest::{self, IngestConfig};
use cache_router::bus::{self, NatsArgs, StreamArgs};
use cache_router::fleet::FleetConfig;
use cache_router::http;
use cache_router::index::IndexConfig;

/// Flags of `cache-router serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address for HTTP (health, readiness, metrics).
    #[arg(long, env = "CACHE_ROUTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
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

    fn ingest_config(&self) -> IngestConfig {
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
            ..IngestConfig::new(self.nats.clone())
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

/// Connects, starts the event plane and the HTTP server, and runs until `shutdown`.
async fn run(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(args.shutdown_grace_s);
    tracing::info!(nats = %args.nats.url, listen = %listener.local_addr()?, "starting router");
    let client = tokio::select! {
        c = bus::connect(&args.nats, "cache-router") => c?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let plane = ingest::start(client.clone(), args.ingest_config(), shutdown.clone()).await?;
    let app = http::app(http::AppState {
        fleet: plane.handle(),
    });
    let server = tokio::spawn(http::serve(listener, app, shutdown.clone()));
    shutdown.cancelled().await;
    tracing::info!("shutting down (grace {grace:?})");
    plane.shutdown(grace).await;
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Err(e))) => tracing::warn!("http server: {e}"),
        Err(_) => tracing::warn!("http server did not stop within the grace period"),
        _ => {}
    }
    let _ = tokio::time::timeout(grace, client.drain()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn signal_shutdown(token: CancellationToken) {
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
