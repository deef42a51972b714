//! `cache-router mock-worker`: a simulator of one vLLM server for demos and tests.
//!
//! It serves vLLM's OpenAI endpoints (`/v1/completions`, `/v1/chat/completions`, streaming or
//! not, with dummy output), `/v1/models`, `/health`, `/reset_prefix_cache` and `/metrics`
//! (vLLM's metric names), delays responses by the shared [`TimingModel`], keeps a paged
//! prefix cache ([`KvCache`], keyed by *engine* block hashes that differ from the router's)
//! and emits vLLM-native KV events ([`KvEventBatch`]) on a channel the ZMQ publisher drains.
//!
//! [`TimingModel`]: cache_router_core::sim::timing::TimingModel
//! [`KvCache`]: cache_router_core::sim::kv_cache::KvCache
//! [`KvEventBatch`]: cache_router_core::kv_events::KvEventBatch

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::flags::TimingArgs;
use crate::tokenize::{ModelTokenizer, TokenizeError};

pub mod app;
pub mod engine;
mod kv;
pub mod metrics;

pub use app::{router, AppState};
pub use engine::{engine_block_hashes, Lease, MockEngine, ENGINE_HASH_SEED};

/// Flags of `cache-router mock-worker`.
#[derive(Clone, Debug, clap::Args)]
pub struct MockWorkerArgs {
    /// Address to serve the OpenAI API on.
    #[arg(
        long,
        env = "CACHE_ROUTER_MOCK_LISTEN",
        default_value = "127.0.0.1:8001"
    )]
    pub listen: SocketAddr,
    /// Model name served (`/v1/models`, metric labels).
    #[arg(long, env = "CACHE_ROUTER_MOCK_MODEL", default_value = "mock-model")]
    pub model: String,
    /// A HF `tokenizer.json` for the model.
    #[arg(
        long,
        env = "CACHE_ROUTER_TOKENIZER",
        required_unless_present = "model_dir"
    )]
    pub tokenizer: Option<PathBuf>,
    /// A model directory (tokenizer.json, tokenizer_config.json with its chat_template).
    #[arg(long, env = "CACHE_ROUTER_MODEL_DIR", conflicts_with = "tokenizer")]
    pub model_dir: Option<PathBuf>,
    /// A Jinja chat template overriding the model's.
    #[arg(long, env = "CACHE_ROUTER_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// KV cache capacity in blocks (vLLM's `num_gpu_blocks`).
    #[arg(long, env = "CACHE_ROUTER_MOCK_NUM_BLOCKS", default_value_t = 2000)]
    pub num_blocks: usize,
    /// Tokens per KV block.
    #[arg(long, env = "CACHE_ROUTER_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Divides every simulated delay (e.g. 10 runs ten times faster than the model).
    #[arg(long, env = "CACHE_ROUTER_MOCK_SPEEDUP", default_value_t = 1.0)]
    pub speedup: f64,
    #[command(flatten)]
    pub timing: TimingArgs,
    /// ZMQ endpoint to publish KV events on (vLLM's `endpoint`, e.g. `tcp://*:5557`).
    #[arg(long, env = "CACHE_ROUTER_MOCK_KV_EVENTS_ENDPOINT")]
    pub kv_events_endpoint: Option<String>,
    /// ZMQ ROUTER endpoint serving replay requests (vLLM's `replay_endpoint`).
    #[arg(long, env = "CACHE_ROUTER_MOCK_KV_REPLAY_ENDPOINT")]
    pub kv_replay_endpoint: Option<String>,
    /// Topic frame of published KV events.
    #[arg(long, env = "CACHE_ROUTER_MOCK_KV_TOPIC", default_value = "")]
    pub kv_topic: String,
    /// Fraction of KV event batches to drop (to exercise gap detection), 0..1.
    #[arg(
        long,
        env = "CACHE_ROUTER_MOCK_KV_DROP_FRACTION",
        default_value_t = 0.0
    )]
    pub kv_drop_fraction: f64,
    /// Seed of the drop decisions (the same seed loses the same batches).
    #[arg(long, env = "CACHE_ROUTER_MOCK_KV_DROP_SEED", default_value_t = 0)]
    pub kv_drop_seed: u64,
    /// Engine steps kept for replay (vLLM's `buffer_steps`).
    #[arg(
        long,
        env = "CACHE_ROUTER_MOCK_KV_REPLAY_BUFFER_STEPS",
        default_value_t = 10_000
    )]
    pub kv_replay_buffer_steps: usize,
}

/// Why the mock worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot load the tokenizer: {0}")]
    Tokenizer(#[from] TokenizeError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

impl MockWorkerArgs {
    /// Checks the numeric flags.
    pub fn validate(&self) -> Result<(), MockError> {
        if self.block_size == 0 {
            return Err(MockError::Config("--block-size must be at least 1".into()));
        }
        if self.num_blocks == 0 {
            return Err(MockError::Config("--num-blocks must be at least 1".into()));
        }
        if !(self.speedup.is_finite() && self.speedup > 0.0) {
            return Err(MockError::Config(
                "--speedup must be a positive number".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.kv_drop_fraction) {
            return Err(MockError::Config(
                "--kv-drop-fraction must be within 0..1".into(),
            ));
        }
        Ok(())
    }

    /// Loads the tokenizer named by `--model-dir` or `--tokenizer`.
    pub fn load_tokenizer(&self) -> Result<ModelTokenizer, MockError> {
        let tok = match (&self.model_dir, &self.tokenizer) {
            (Some(dir), _) => ModelTokenizer::from_model_dir(dir, self.chat_template.as_deref())?,
            (None, Some(path)) => {
                ModelTokenizer::from_files(path, None, self.chat_template.as_deref())?
            }
            (None, None) => {
                return Err(MockError::Config(
                    "--tokenizer or --model-dir is required".into(),
                ))
            }
        };
        Ok(tok.with_model(self.model.clone(), self.block_size))
    }
}

/// A started mock worker: its HTTP app on a bound listener and, when configured, its KV-event
/// publisher (the sockets are bound before this returns).
#[derive(Debug)]
pub struct MockWorker {
    state: Arc<AppState>,
    kv: Option<kv::KvPublisher>,
    listener: tokio::net::TcpListener,
    url: String,
}

impl MockWorker {
    /// Validates `args`, loads the tokenizer, binds the KV-event sockets (stopped by
    /// `shutdown`) and builds the engine.
    pub async fn start(
        args: &MockWorkerArgs,
        listener: tokio::net::TcpListener,
        shutdown: &CancellationToken,
    ) -> Result<MockWorker, MockError> {
        args.validate()?;
        let kv = kv::start_kv_publisher(args, shutdown.clone()).await?;
        let state = AppState::from_args(args, kv.as_ref().map(|k| k.events.clone()))?;
        let url = format!("http://{}", listener.local_addr()?);
        Ok(MockWorker {
            state,
            kv,
            listener,
            url,
        })
    }

    /// Serves until `shutdown`, then waits for the KV publisher to stop.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), MockError> {
        tracing::info!(url = %self.url, model = %self.state.model, "mock worker listening");
        use axum::serve::ListenerExt;
        let served = axum::serve(
            self.listener.tap_io(crate::http::set_nodelay),
            router(self.state),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
        if let Some(kv) = self.kv {
            shutdown.cancel();
            let _ = kv.task.await;
        }
        Ok(served?)
    }

    /// Serves in a task; the returned handle stops the worker when dropped.
    pub fn spawn(self, shutdown: CancellationToken) -> RunningMock {
        let running = RunningMock {
            url: self.url.clone(),
            engine: self.state.engine.clone(),
            kv_events_endpoint: self.kv.as_ref().and_then(|k| k.events_endpoint.clone()),
            kv_replay_endpoint: self.kv.as_ref().and_then(|k| k.replay_endpoint.clone()),
            drop: self.kv.as_ref().map(|k| k.drop.clone()),
            stop: Some(shutdown.clone().drop_guard()),
            task: None,
        };
        RunningMock {
            task: Some(tokio::spawn(self.serve(shutdown))),
            ..running
        }
    }
}

/// A mock worker serving in a task (see [`MockWorker::spawn`]).
#[derive(Debug)]
pub struct RunningMock {
    pub url: String,
    /// The simulated engine (its cache, stats and reset).
    pub engine: Arc<MockEngine>,
    /// The KV-events PUB endpoint as bound (port resolved).
    pub kv_events_endpoint: Option<String>,
    /// The replay ROUTER endpoint as bound.
    pub kv_replay_endpoint: Option<String>,
    /// The publisher's live drop fraction.
    pub drop: Option<cache_router_bus::zmq::DropControl>,
    stop: Option<tokio_util::sync::DropGuard>,
    task: Option<tokio::task::JoinHandle<Result<(), MockError>>>,
}

impl RunningMock {
    /// Stops the worker (HTTP and KV sockets) and waits for it.
    pub async fn stop(mut self) -> Result<(), MockError> {
        drop(self.stop.take());
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// `cache-router mock-worker`: starts and serves until `shutdown`.
pub async fn run(
    args: MockWorkerArgs,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MockError> {
    MockWorker::start(&args, listener, &shutdown)
        .await?
        .serve(shutdown)
        .await
}
