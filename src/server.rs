//! The router as a library: a validated [`RouterConfig`], [`Router::start`] (the fleet actor,
//! fed by the event plane or by static workers) and [`Router::serve`] on a bound listener
//! until a shutdown token fires. `cache-router serve` parses flags into a config and calls
//! [`serve`]; tests, benches and the reporter's harness start routers the same way, in three
//! lines, through [`Router::spawn`].

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use cache_router_bus::{BusError, NatsArgs, StreamArgs};
use cache_router_core::fleet::{Fleet, FleetConfig};
use cache_router_core::index::IndexConfig;
use cache_router_core::liveness::{EjectionPolicy, Liveness};
use cache_router_core::policy::{PolicyConfig, PolicyKind};
use cache_router_core::protocol::{WorkerId, WorkerInfo};
use cache_router_core::routing::RoutingSetup;

use crate::fleet_actor::{self, ActorParts, ActorThread, FleetHandle};
use crate::http::listener::ConnectionLimits;
use crate::http::{self, AdminToken, AppState, TokenizeGate};
use crate::metrics::{BadMessage, RouterMetrics};
use crate::plane::{self, EventPlane, PlaneConfig};
use crate::proxy::{InFlight, Proxy, ProxyConfig};
use crate::tokenize::Models;
use crate::worker_url::AllowList;

/// The event plane's settings (the router runs on static workers without them).
#[derive(Clone, Debug)]
pub struct NatsConfig {
    pub nats: NatsArgs,
    pub limits: StreamArgs,
    /// Write a snapshot every this many applied stream messages...
    pub snapshot_every: u64,
    /// ...or this often (when anything changed).
    pub snapshot_interval: Duration,
    /// Timeout of one resync attempt.
    pub resync_timeout: Duration,
    /// This router's id in the load reports routers exchange (`[A-Za-z0-9_-]`).
    pub router_id: String,
    /// How often this router publishes its in-flight load for the others; zero turns load
    /// sharing off. Another router's report counts for four intervals (at least 1 s).
    pub load_share_interval: Duration,
}

impl NatsConfig {
    /// Defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            nats: NatsArgs::for_url(url),
            limits: StreamArgs::default(),
            snapshot_every: 100_000,
            snapshot_interval: Duration::from_secs(30),
            resync_timeout: Duration::from_secs(5),
            router_id: format!("router-{}", std::process::id()),
            load_share_interval: Duration::from_millis(250),
        }
    }
}

/// Everything a router needs, validated by [`RouterConfig::validate`].
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Tokenizers by served model name (a request's `model` selects one).
    pub models: Models,
    /// Workers configured without reporters.
    pub static_workers: Vec<WorkerInfo>,
    /// The event plane; None runs on `static_workers` only.
    pub nats: Option<NatsConfig>,
    pub policy: PolicyKind,
    pub policy_config: PolicyConfig,
    /// Speculation: `(max recorded positions, TTL, stride)`; None disables it.
    pub speculation: Option<(u64, Duration, usize)>,
    pub proxy: ProxyConfig,
    /// When the proxy ejects a failing worker, and for how long.
    pub ejection: EjectionPolicy,
    /// The hosts workers may be on (registry entries and static workers); empty allows any.
    pub allowed_worker_hosts: AllowList,
    /// Bearer token for `/admin/*`; None disables them.
    pub admin_token: Option<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Prompts with more tokens get 400 (checked on the body's size before tokenizing, and on
    /// the token count after).
    pub max_prompt_tokens: usize,
    /// Client connections: header-read (and keep-alive idle) timeout, and a cap.
    pub connection_limits: ConnectionLimits,
    /// Worker slots tracked for in-flight accounting and liveness.
    pub max_workers: usize,
    /// Memory bound of the index in (worker, block) entries; None for no bound.
    pub max_index_entries: Option<usize>,
    /// Bytes of messages buffered, all workers together, while resyncs are pending; past it
    /// a worker's buffer is dropped and its resync starts over.
    pub max_resync_buffer_bytes: usize,
    /// Long prompts tokenizing at once (default: one per core).
    pub tokenize_slots: Option<usize>,
    /// How long to drain on shutdown before giving up.
    pub shutdown_grace: Duration,
}

impl RouterConfig {
    /// Defaults around `models`: no workers, no NATS, the approx policy (no events to read).
    pub fn new(models: Models) -> Self {
        let routing = RoutingSetup::default();
        RouterConfig {
            models,
            static_workers: Vec::new(),
            nats: None,
            policy: PolicyKind::Approx,
            policy_config: PolicyConfig::default(),
            speculation: routing.speculation,
            proxy: ProxyConfig::default(),
            ejection: EjectionPolicy::default(),
            allowed_worker_hosts: AllowList::default(),
            admin_token: None,
            max_body_bytes: 8 << 20,
            max_prompt_tokens: 131_072,
            connection_limits: ConnectionLimits::default(),
            max_workers: 4096,
            max_index_entries: Some(50_000_000),
            max_resync_buffer_bytes: FleetConfig::default().max_buffered_bytes,
            tokenize_slots: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Checks everything before anything starts.
    pub fn validate(&self) -> Result<(), RouterError> {
        let bad = |m: &str| Err(RouterError::Config(m.to_owned()));
        if self.models.is_empty() {
            return bad("no model: give at least one tokenizer");
        }
        if self.nats.is_none() && self.static_workers.is_empty() {
            return bad("give --nats (reporters register workers) or at least one --worker ID=URL");
        }
        if self.max_workers == 0 || self.proxy.max_attempts == 0 || self.max_prompt_tokens == 0 {
            return bad("--max-workers, --max-attempts and --max-prompt-tokens must be positive");
        }
        if self.max_index_entries == Some(0) {
            return bad("the index bound must be positive (or none)");
        }
        for w in &self.static_workers {
            w.id.validate()
                .map_err(|e| RouterError::Config(e.to_string()))?;
            self.allowed_worker_hosts
                .check(&w.url)
                .map_err(|e| RouterError::Config(format!("worker {}: {e}", w.id)))?;
            if !self.models.contains_key(&w.model) {
                return Err(RouterError::Config(format!(
                    "worker {} serves model {:?}, which has no tokenizer",
                    w.id, w.model
                )));
            }
        }
        if let Some(n) = &self.nats {
            n.nats.validate()?;
            if n.snapshot_every == 0 || n.snapshot_interval.is_zero() {
                return bad("--snapshot-every and --snapshot-interval must be positive");
            }
            if n.resync_timeout.is_zero() {
                return bad("--resync-timeout must be positive");
            }
            n.limits.validate()?;
            WorkerId(n.router_id.clone())
                .validate()
                .map_err(|e| RouterError::Config(format!("--router-id: {e}")))?;
        }
        Ok(())
    }

    fn routing(&self) -> RoutingSetup {
        let share = self
            .nats
            .as_ref()
            .map_or(Duration::ZERO, |n| n.load_share_interval);
        RoutingSetup {
            policy: self.policy,
            config: self.policy_config.clone(),
            speculation: self.speculation,
            peer_load_ttl: (share * 4).max(Duration::from_secs(1)),
        }
    }

    fn fleet(&self) -> FleetConfig {
        FleetConfig {
            index: IndexConfig {
                max_entries: self.max_index_entries.unwrap_or(usize::MAX),
            },
            max_buffered_bytes: self.max_resync_buffer_bytes,
            ..FleetConfig::default()
        }
    }
}

/// Why a router could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A configuration error: the binary exits with a usage error.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where the fleet's state comes from.
#[derive(Debug)]
enum Source {
    Nats(Box<EventPlane>, async_nats::Client),
    Static(ActorThread),
}

/// A started router, ready to serve.
#[derive(Debug)]
pub struct Router {
    state: AppState,
    source: Source,
    grace: Duration,
    limits: ConnectionLimits,
}

impl Router {
    /// Validates `config`, starts the fleet actor (restoring from the newest snapshot and
    /// replaying the stream when NATS is configured; the first NATS connection is retried
    /// until it succeeds) and registers the static workers.
    pub async fn start(config: RouterConfig) -> Result<Router, RouterError> {
        config.validate()?;
        let inflight = InFlight::new(config.max_workers);
        let liveness = Arc::new(Liveness::new(
            config.max_workers,
            config.ejection,
            crate::clock::now(),
        ));
        let metrics = Arc::new(RouterMetrics::new(inflight.clone()));
        let parts = |resyncs| ActorParts {
            routing: config.routing().build(),
            loads: Arc::new(inflight.clone()),
            liveness: liveness.clone(),
            resyncs,
        };
        tracing::info!(
            nats = config
                .nats
                .as_ref()
                .and_then(|n| n.nats.url.as_deref())
                .unwrap_or("none (static workers)"),
            models = ?config.models.keys().collect::<Vec<_>>(),
            policy = %config.policy,
            "starting router"
        );
        let (fleet, source) = match &config.nats {
            Some(n) => {
                let client = cache_router_bus::connect(&n.nats, "cache-router").await?;
                let plane_config = PlaneConfig {
                    nats: n.nats.clone(),
                    limits: n.limits.clone(),
                    snapshot_every: n.snapshot_every,
                    snapshot_interval: n.snapshot_interval,
                    resync_timeout: n.resync_timeout,
                    router_id: WorkerId(n.router_id.clone()),
                    load_share_interval: n.load_share_interval,
                    allowed_worker_hosts: config.allowed_worker_hosts.clone(),
                };
                let plane = plane::start(
                    client.clone(),
                    &plane_config,
                    config.fleet(),
                    parts,
                    metrics.plane.clone(),
                    CancellationToken::new(),
                )
                .await?;
                (plane.handle(), Source::Nats(Box::new(plane), client))
            }
            None => {
                // No event plane: nothing asks for resyncs.
                let (resyncs, _) = tokio::sync::mpsc::unbounded_channel();
                let (fleet, actor) =
                    fleet_actor::spawn(Fleet::new(config.fleet()), parts(resyncs))?;
                actor.ready_setter().set();
                (fleet, Source::Static(actor))
            }
        };
        for w in &config.static_workers {
            fleet
                .register(w.clone())
                .await
                .map_err(|e| RouterError::Config(e.to_string()))?;
        }
        let tokenize_gate = config
            .tokenize_slots
            .map_or_else(TokenizeGate::per_core, TokenizeGate::new)
            .with_gauges(
                metrics.http.tokenize_lane_normal.clone(),
                metrics.http.tokenize_lane_huge.clone(),
            );
        let state = AppState {
            fleet,
            models: Arc::new(config.models.clone()),
            proxy: Proxy::new(config.proxy.clone(), liveness)?,
            inflight,
            metrics,
            admin_token: config.admin_token.as_deref().map(AdminToken::new),
            max_body_bytes: config.max_body_bytes,
            max_prompt_tokens: config.max_prompt_tokens,
            tokenize_gate,
        };
        Ok(Router {
            state,
            source,
            grace: config.shutdown_grace,
            limits: config.connection_limits,
        })
    }

    /// The fleet actor's handle (read-only views, readiness).
    pub fn fleet(&self) -> FleetHandle {
        self.state.fleet.clone()
    }

    /// Counters of the event plane.
    pub fn counters(&self) -> RouterCounters {
        RouterCounters {
            metrics: self.state.metrics.clone(),
        }
    }

    /// Serves HTTP on `listener` until `shutdown`, then drains: open requests get the grace
    /// period, the event plane writes a final snapshot, the actor stops.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), RouterError> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "router listening");
        }
        // Not spawned: dropping this future (an aborted router) drops the server with it.
        let server = http::listener::serve(
            listener,
            http::app(self.state.clone()),
            self.limits,
            self.state.metrics.http.clone(),
            shutdown.clone(),
        );
        tokio::pin!(server);
        let ended = tokio::select! {
            r = &mut server => {
                if let Err(e) = r {
                    tracing::warn!("http server: {e}");
                }
                true
            }
            _ = shutdown.cancelled() => false,
        };
        tracing::info!("shutting down (grace {:?})", self.grace);
        if !ended {
            match tokio::time::timeout(self.grace, &mut server).await {
                Ok(Err(e)) => tracing::warn!("http server: {e}"),
                Err(_) => tracing::warn!("http server did not drain within the grace period"),
                Ok(Ok(())) => {}
            }
        }
        match self.source {
            Source::Nats(plane, client) => {
                plane.shutdown(self.grace).await;
                let _ = tokio::time::timeout(self.grace, client.drain()).await;
            }
            Source::Static(actor) => actor.stop().await,
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Starts a router and serves it on `listener` in a task; the returned handle stops it
    /// when dropped.
    pub async fn spawn(
        config: RouterConfig,
        listener: TcpListener,
    ) -> Result<RunningRouter, RouterError> {
        let url = format!("http://{}", listener.local_addr()?);
        let router = Router::start(config).await?;
        let fleet = router.fleet();
        let counters = router.counters();
        let token = CancellationToken::new();
        let task = tokio::spawn(router.serve(listener, token.clone()));
        Ok(RunningRouter {
            url,
            fleet,
            counters,
            stop: Some(token.drop_guard()),
            task: Some(task),
        })
    }
}

/// Starts a router from `config` and serves it on `listener` until `shutdown` (the binary's
/// whole job). A shutdown while the first NATS connection is still being retried ends it
/// cleanly.
pub async fn serve(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    let router = tokio::select! {
        r = Router::start(config) => r?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    router.serve(listener, shutdown).await
}

/// A router serving in a background task (see [`Router::spawn`]). Dropping it starts the
/// router's graceful stop.
#[derive(Debug)]
pub struct RunningRouter {
    url: String,
    fleet: FleetHandle,
    counters: RouterCounters,
    stop: Option<DropGuard>,
    task: Option<JoinHandle<Result<(), RouterError>>>,
}

impl RunningRouter {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn fleet(&self) -> &FleetHandle {
        &self.fleet
    }

    pub fn counters(&self) -> &RouterCounters {
        &self.counters
    }

    /// Ends the router at once, without draining or writing a final snapshot: what a crash
    /// leaves behind (tests of recovery).
    pub async fn abort(mut self) {
        if let Some(guard) = self.stop.take() {
            guard.disarm();
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Stops the router and waits for its drain (final snapshot included).
    pub async fn stop(mut self) -> Result<(), RouterError> {
        drop(self.stop.take());
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// Read access to a router's event-plane counters (tests, benches).
#[derive(Clone, Debug)]
pub struct RouterCounters {
    metrics: Arc<RouterMetrics>,
}

impl RouterCounters {
    /// Stream messages replayed before ready.
    pub fn replayed(&self) -> u64 {
        self.metrics.plane.replayed.get()
    }

    /// Milliseconds from start to ready (0 until ready).
    pub fn recovery_ms(&self) -> u64 {
        u64::try_from(self.metrics.plane.recovery_ms.get()).unwrap_or(0)
    }

    pub fn stream_messages(&self) -> u64 {
        self.metrics.plane.stream_messages.get()
    }

    pub fn load_messages(&self) -> u64 {
        self.metrics.plane.load_messages.get()
    }

    /// Registry entries refused (malformed, naming another worker, a bad or disallowed URL).
    pub fn registry_rejections(&self) -> u64 {
        self.metrics.plane.registry_rejections()
    }

    /// Undecodable stream messages.
    pub fn malformed(&self) -> u64 {
        self.metrics.plane.bad_messages(BadMessage::Malformed)
    }

    pub fn unknown_version(&self) -> u64 {
        self.metrics.plane.bad_messages(BadMessage::UnknownVersion)
    }

    /// Messages on another worker's subject.
    pub fn subject_mismatch(&self) -> u64 {
        self.metrics.plane.bad_messages(BadMessage::SubjectMismatch)
    }
}
