//! The harness shared by the reporter's end-to-end tests: a real nats-server, mock vLLM
//! engines with ZMQ KV events, and in-process reporters.
#![allow(dead_code)]

#[path = "../../../tests/common/nats.rs"]
pub(crate) mod nats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cache_router::bus::ingest::{self, FleetHandle, IngestConfig};
use cache_router::bus::{self, NatsArgs, StreamArgs};
use cache_router::http::{self, inflight::InFlight, routes};
use cache_router::kv_events::zmq::DropControl;
use cache_router::mock::kv::start_kv_publisher;
use cache_router::mock::{serve, AppState, MockWorkerArgs};
use cache_router::policy::{PolicyConfig, PolicyKind};
use cache_router::protocol::BlockHash;
use cache_router::routing::{LoadSource, RoutingSetup};
use cache_router::tokenize::ModelTokenizer;
use worker_reporter::ReporterArgs;

/// How long state may take to converge before a test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
pub(crate) const POLL: Duration = Duration::from_millis(10);

pub(crate) const MODEL: &str = "mock-model";
pub(crate) const BS: usize = 16;

pub(crate) fn tokenizer_file() -> PathBuf {
    let dir = std::env::var_os("CACHE_ROUTER_TOKENIZER_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures/deepseek"),
        PathBuf::from,
    );
    dir.join("tokenizer.json")
}

#[derive(Parser)]
pub(crate) struct MockCli {
    #[command(flatten)]
    args: MockWorkerArgs,
}

pub(crate) struct Engine {
    pub(crate) state: Arc<AppState>,
    pub(crate) url: String,
    pub(crate) token: CancellationToken,
    /// HTTP, KV events and replay ports.
    pub(crate) ports: (u16, u16, u16),
    /// Turns the loss of live KV event batches on and off at run time.
    pub(crate) drop: DropControl,
}

/// Starts a mock engine; `ports` reuses the HTTP, events and replay ports of a previous one.
pub(crate) async fn start_engine(
    num_blocks: usize,
    drop: f64,
    replay: bool,
    ports: Option<(u16, u16, u16)>,
) -> (Engine, (u16, u16, u16)) {
    let (hp, ep, rp) = ports.unwrap_or((0, 0, 0));
    let mut argv = vec![
        "mock".to_string(),
        "--tokenizer".into(),
        tokenizer_file().display().to_string(),
        "--num-blocks".into(),
        num_blocks.to_string(),
        "--block-size".into(),
        BS.to_string(),
        "--speedup".into(),
        "10000".into(),
        "--kv-events-endpoint".into(),
        format!("tcp://127.0.0.1:{ep}"),
        "--kv-drop-fraction".into(),
        drop.to_string(),
    ];
    if replay {
        argv.extend([
            "--kv-replay-endpoint".into(),
            format!("tcp://127.0.0.1:{rp}"),
        ]);
    }
    let args = MockCli::parse_from(argv).args;
    let token = CancellationToken::new();
    let kv = start_kv_publisher(&args, token.clone())
        .await
        .unwrap()
        .unwrap();
    let port_of = |e: &Option<String>| -> u16 {
        e.as_deref()
            .and_then(|e| e.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    let (ep, rp) = (port_of(&kv.events_endpoint), port_of(&kv.replay_endpoint));
    let state = AppState::from_args(&args, Some(kv.events.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", hp))
        .await
        .unwrap();
    let hp = listener.local_addr().unwrap().port();
    tokio::spawn(serve(state.clone(), listener, token.clone()));
    let engine = Engine {
        state,
        url: format!("http://127.0.0.1:{hp}"),
        token,
        ports: (hp, ep, rp),
        drop: kv.drop,
    };
    (engine, (hp, ep, rp))
}

/// A reporter with a 300 ms digest interval.
pub(crate) fn start_reporter(
    nats: &str,
    worker: &str,
    engine: &str,
    ports: (u16, u16, u16),
    replay: bool,
) -> CancellationToken {
    start_reporter_digest(
        nats,
        worker,
        engine,
        ports,
        replay,
        Duration::from_millis(300),
    )
}

pub(crate) fn start_reporter_digest(
    nats: &str,
    worker: &str,
    engine: &str,
    ports: (u16, u16, u16),
    replay: bool,
    digest: Duration,
) -> CancellationToken {
    let mut argv = vec![
        "worker-reporter".to_string(),
        "--worker-id".into(),
        worker.into(),
        "--engine-url".into(),
        engine.into(),
        "--model".into(),
        MODEL.into(),
        "--block-size".into(),
        BS.to_string(),
        "--zmq-endpoint".into(),
        format!("tcp://127.0.0.1:{}", ports.1),
        "--nats".into(),
        nats.into(),
        "--digest-interval".into(),
        format!("{}ms", digest.as_millis()),
        "--load-interval".into(),
        "100ms".into(),
        "--registry-ttl-ms".into(),
        "600".into(),
    ];
    if replay {
        argv.extend([
            "--zmq-replay-endpoint".into(),
            format!("tcp://127.0.0.1:{}", ports.2),
        ]);
    }
    let args = ReporterArgs::parse_from(argv);
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move { worker_reporter::run(args, t).await.unwrap() });
    token
}

/// Polls until `cond` holds (state that converges asynchronously), or fails after `PATIENCE`.
pub(crate) async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The router as `cache-router serve --nats URL --model mock-model --tokenizer ...
/// --block-size 16 --policy cache-aware` wires it, on 127.0.0.1. Speculation is off so every
/// overlap it reports comes from the engines' KV events. Returns its base URL, its fleet and
/// the token that stops it.
pub(crate) async fn start_router(nats: &str) -> (String, FleetHandle, CancellationToken) {
    let inflight = InFlight::new(64);
    let loads: Arc<dyn LoadSource> = Arc::new(inflight.clone());
    let mut config = IngestConfig::new(NatsArgs::for_url(nats));
    config.resync_timeout = Duration::from_secs(2);
    config.limits = StreamArgs {
        registry_ttl_ms: 600,
        ..StreamArgs::default()
    };
    config.routing = RoutingSetup {
        policy: PolicyKind::CacheAware,
        config: PolicyConfig::default(),
        speculation: None,
    };
    config.loads = loads;
    let token = CancellationToken::new();
    let client = bus::connect(&NatsArgs::for_url(nats), "test-router")
        .await
        .expect("router connects to nats");
    let plane = ingest::start(client, config, token.clone())
        .await
        .expect("router's event plane starts");
    let fleet = plane.handle();
    // Stopped by `token`; the plane's own shutdown would wait for a grace period.
    std::mem::forget(plane);

    let tok = ModelTokenizer::from_files(&tokenizer_file(), None, None)
        .expect("tokenizer fixture (bash scripts/setup.sh)")
        .with_model(MODEL, BS);
    let mut models = routes::Models::new();
    models.insert(MODEL.into(), Arc::new(tok));
    let state = http::AppState::new(fleet.clone(), models, inflight);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the router");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    tokio::spawn(http::serve(listener, http::app(state), token.clone()));
    (base, fleet, token)
}

/// The engine's cached blocks in our hashes, sorted, through the engine hash → our hash map a
/// test keeps for every prompt it sent.
pub(crate) fn engine_cache_as_ours(
    engine: &Engine,
    ours: &HashMap<u64, BlockHash>,
) -> Vec<BlockHash> {
    let mut v: Vec<_> = engine
        .state
        .engine
        .cached_hashes()
        .iter()
        .map(|h| *ours.get(h).expect("engine block from a prompt we sent"))
        .collect();
    v.sort();
    v
}
