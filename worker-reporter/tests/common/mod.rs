//! The harness shared by the reporter's end-to-end tests: a real nats-server, mock vLLM
//! engines with ZMQ KV events, and in-process reporters.
#![allow(dead_code)]

#[path = "../../../tests/common/nats.rs"]
pub(crate) mod nats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cache_router::mock::kv::start_kv_publisher;
use cache_router::mock::{serve, AppState, MockWorkerArgs};
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
    };
    (engine, (hp, ep, rp))
}

pub(crate) fn start_reporter(
    nats: &str,
    worker: &str,
    engine: &str,
    ports: (u16, u16, u16),
    replay: bool,
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
        "300ms".into(),
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
