//! Mock vLLM engines (the real `cache-router mock-worker` code: HTTP, prefix cache, vLLM's
//! KV-event wire format over ZMQ with replay) and worker-reporters beside them.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cache_router::mock::{MockWorker, MockWorkerArgs, RunningMock};
use cache_router_core::protocol::BlockHash;
pub use worker_reporter::Reporter;
use worker_reporter::ReporterArgs;

use crate::{tokenizer, BLOCK_SIZE, MODEL};

#[derive(Parser)]
struct MockCli {
    #[command(flatten)]
    args: MockWorkerArgs,
}

/// How to start a mock engine.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    pub num_blocks: usize,
    /// Fraction of KV-event batches not sent live (still kept for replay).
    pub drop_fraction: f64,
    /// Serve the replay socket.
    pub replay: bool,
    /// Reuse the HTTP, events and replay ports of a previous engine (a restart).
    pub ports: Option<EnginePorts>,
    /// Divides every simulated delay.
    pub speedup: f64,
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            num_blocks: 48,
            drop_fraction: 0.0,
            replay: true,
            ports: None,
            speedup: 10_000.0,
        }
    }
}

/// An engine's HTTP, KV-events and replay ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnginePorts {
    pub http: u16,
    pub events: u16,
    pub replay: u16,
}

/// A running mock engine; dropping it stops it.
#[derive(Debug)]
pub struct Engine {
    pub mock: RunningMock,
    pub ports: EnginePorts,
}

impl Engine {
    pub fn url(&self) -> &str {
        &self.mock.url
    }

    /// Stops the engine and waits until its sockets are closed.
    pub async fn stop(self) {
        let _ = self.mock.stop().await;
    }
}

fn port_of(endpoint: Option<&str>) -> u16 {
    endpoint
        .and_then(|e| e.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Starts a mock engine of [`MODEL`] with the real tokenizer on loopback.
pub async fn start_engine(spec: EngineSpec) -> std::io::Result<Engine> {
    let p = spec.ports.unwrap_or(EnginePorts {
        http: 0,
        events: 0,
        replay: 0,
    });
    let mut argv = vec![
        "mock".to_string(),
        "--model".into(),
        MODEL.into(),
        "--tokenizer".into(),
        tokenizer::tokenizer_file().display().to_string(),
        "--num-blocks".into(),
        spec.num_blocks.to_string(),
        "--block-size".into(),
        BLOCK_SIZE.to_string(),
        "--speedup".into(),
        spec.speedup.to_string(),
        "--kv-events-endpoint".into(),
        format!("tcp://127.0.0.1:{}", p.events),
        "--kv-drop-fraction".into(),
        spec.drop_fraction.to_string(),
    ];
    if spec.replay {
        argv.extend([
            "--kv-replay-endpoint".into(),
            format!("tcp://127.0.0.1:{}", p.replay),
        ]);
    }
    let args = MockCli::parse_from(argv).args;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", p.http)).await?;
    let http = listener.local_addr()?.port();
    let token = CancellationToken::new();
    let worker = MockWorker::start(&args, listener, &token)
        .await
        .map_err(std::io::Error::other)?;
    let mock = worker.spawn(token);
    let ports = EnginePorts {
        http,
        events: port_of(mock.kv_events_endpoint.as_deref()),
        replay: port_of(mock.kv_replay_endpoint.as_deref()),
    };
    Ok(Engine { mock, ports })
}

/// How to start a reporter beside an engine.
#[derive(Clone, Debug)]
pub struct ReporterSpec {
    pub worker: String,
    pub digest_interval: Duration,
    /// Use the engine's replay socket.
    pub replay: bool,
    /// How long the registry entry lives unrefreshed.
    pub registry_ttl: Duration,
    /// More flags, e.g. `--nats-replicas 3`.
    pub extra_args: Vec<String>,
}

impl ReporterSpec {
    /// A reporter for `worker` with a 300 ms digest interval and replay.
    pub fn new(worker: &str) -> Self {
        ReporterSpec {
            worker: worker.to_owned(),
            digest_interval: Duration::from_millis(300),
            replay: true,
            registry_ttl: Duration::from_millis(600),
            extra_args: Vec::new(),
        }
    }
}

/// Starts a reporter for `engine` on `nats` (100 ms load scrapes).
pub fn start_reporter(nats: &str, engine: &Engine, spec: &ReporterSpec) -> Reporter {
    let mut argv = vec![
        "worker-reporter".to_string(),
        "--worker-id".into(),
        spec.worker.clone(),
        "--engine-url".into(),
        engine.url().to_owned(),
        "--model".into(),
        MODEL.into(),
        "--block-size".into(),
        BLOCK_SIZE.to_string(),
        "--zmq-endpoint".into(),
        format!("tcp://127.0.0.1:{}", engine.ports.events),
        "--nats".into(),
        nats.into(),
        "--digest-interval".into(),
        format!("{}ms", spec.digest_interval.as_millis()),
        "--load-interval".into(),
        "100ms".into(),
        "--registry-ttl".into(),
        format!("{}ms", spec.registry_ttl.as_millis()),
    ];
    if spec.replay {
        argv.extend([
            "--zmq-replay-endpoint".into(),
            format!("tcp://127.0.0.1:{}", engine.ports.replay),
        ]);
    }
    argv.extend(spec.extra_args.iter().cloned());
    worker_reporter::spawn(ReporterArgs::parse_from(argv))
}

/// The engine's cached blocks in our hashes, sorted, through the engine hash → our hash map a
/// test keeps for every prompt it sent.
pub fn engine_cache_as_ours(engine: &Engine, ours: &HashMap<u64, BlockHash>) -> Vec<BlockHash> {
    let mut v: Vec<_> = engine
        .mock
        .engine
        .cached_hashes()
        .iter()
        .map(|h| *ours.get(h).expect("engine block from a prompt we sent"))
        .collect();
    v.sort();
    v
}
