//! `worker-reporter`: the sidecar beside one unmodified vLLM/SGLang engine. It turns the
//! engine's native KV events (msgpack over ZMQ) and its `/metrics` load into cache-router's
//! protocol on NATS, and keeps the worker registered while the engine is alive.
//!
//! It links only the core (`cache-router-core`: protocol, hashing, the KV-event codec, the
//! sequencer) and the shared transports (`cache-router-bus`: NATS, ZMQ) — no HTTP server,
//! tokenizer or plotting.
//!
//! - [`args`]: the flags.
//! - `mirror`: engine block hash → our chained hash, and the set the engine holds (I/O-free).
//! - `events`: the event loop around the core's sequencer (replay on gaps, tail probes,
//!   restarts, digests).
//! - `load`: `/metrics` scrapes → load reports.
//! - [`run`] / [`spawn`]: everything above, plus the registry entry, until shutdown.

pub mod args;
mod events;
mod load;
mod mirror;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_router_bus::publisher::Publisher;
use cache_router_bus::zmq::{EventSubscriber, ZmqError};
use cache_router_bus::BusError;
use cache_router_core::protocol::{WorkerId, WorkerInfo};
use cache_router_core::sequencer::Sequencer;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use args::ReporterArgs;
pub use events::ReporterStats;
pub use load::parse as parse_load;

use events::EventLoop;
use load::now_ms;
use mirror::Mirror;

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Zmq(#[from] ZmqError),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Runs until `shutdown`, then deregisters.
pub async fn run(args: ReporterArgs, shutdown: CancellationToken) -> Result<(), ReporterError> {
    run_with(args, shutdown, Arc::default()).await
}

/// A reporter running in a task; dropping it stops the reporter.
#[derive(Debug)]
pub struct Reporter {
    stats: Arc<ReporterStats>,
    stop: Option<DropGuard>,
    task: Option<JoinHandle<Result<(), ReporterError>>>,
}

impl Reporter {
    pub fn stats(&self) -> &ReporterStats {
        &self.stats
    }

    /// Stops the reporter (it deregisters its worker) and waits for it.
    pub async fn stop(mut self) -> Result<(), ReporterError> {
        drop(self.stop.take());
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// Starts a reporter in a task (tests, benches).
pub fn spawn(args: ReporterArgs) -> Reporter {
    let stats: Arc<ReporterStats> = Arc::default();
    let token = CancellationToken::new();
    let task = tokio::spawn(run_with(args, token.clone(), stats.clone()));
    Reporter {
        stats,
        stop: Some(token.drop_guard()),
        task: Some(task),
    }
}

async fn run_with(
    args: ReporterArgs,
    shutdown: CancellationToken,
    stats: Arc<ReporterStats>,
) -> Result<(), ReporterError> {
    args.validate()?;
    let worker = WorkerId(args.worker_id.clone());
    let client = cache_router_bus::connect(&args.nats, "worker-reporter").await?;
    let subjects = args.nats.subjects();
    let Some(infra) =
        cache_router_bus::infra::wait_for_infra(&client, &subjects, &args.stream, &shutdown).await
    else {
        return Ok(());
    };
    let epoch = now_ms();
    let publisher = Publisher::new(client, subjects, worker.clone(), epoch, args.nats.timeout())?;
    let resync = publisher.serve_resync(shutdown.clone()).await?;
    let sub = EventSubscriber::open(&args.zmq_endpoint, args.zmq_bind, &args.zmq_topic).await?;
    let http = reqwest::Client::builder()
        .timeout(args.engine_timeout)
        .build()?;
    let engine_ok_ms = Arc::new(AtomicU64::new(0));
    tracing::info!(%worker, engine = %args.engine_url, zmq = %args.zmq_endpoint, "reporting");

    let events = tokio::spawn(
        EventLoop {
            mirror: Mirror::new(
                args.model.clone(),
                args.block_size as usize,
                args.max_mirror_entries,
            ),
            publisher: publisher.clone(),
            replay: args.zmq_replay_endpoint.clone(),
            timeout: args.engine_timeout,
            sequencer: Sequencer::new(),
            stats,
        }
        .run(sub, args.digest_interval, shutdown.clone()),
    );
    let load = tokio::spawn(load::run(
        http,
        args.engine_url.clone(),
        publisher.clone(),
        args.load_interval,
        engine_ok_ms.clone(),
        shutdown.clone(),
    ));
    let info = WorkerInfo {
        id: worker.clone(),
        url: args
            .advertise_url
            .clone()
            .unwrap_or_else(|| args.engine_url.clone()),
        model: args.model.clone(),
        block_size: args.block_size,
        epoch,
    };
    let ttl = args.stream.registry_ttl.max(Duration::from_millis(30));
    let ttl_ms = ttl.as_millis() as u64;
    // Registered while the engine answered a scrape within the TTL: a dead engine's entry
    // lapses even though this sidecar lives.
    let alive = move || now_ms().saturating_sub(engine_ok_ms.load(Ordering::Relaxed)) < ttl_ms;
    let registry = tokio::spawn(cache_router_bus::registry::keep_registered(
        infra.registry.clone(),
        info,
        ttl,
        args.load_interval,
        alive,
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    for task in [events, load, registry, resync] {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    tracing::info!(%worker, "stopped");
    Ok(())
}
