//! # cache-router-testkit
//!
//! The one test kit every suite and bench of the workspace shares (a dev-dependency only):
//! - [`nats`]: a real `nats-server` with JetStream per test, in a container of the locally
//!   built image where Docker runs, else a local process ([`docker`] says which and why);
//! - [`cluster`]: a 3-node JetStream cluster of containers on a private network, whose nodes
//!   can be killed, restarted, partitioned and healed;
//! - [`routers`]: routers started through the library's [`cache_router::Router`];
//! - [`engines`]: mock vLLM engines (HTTP + ZMQ KV events) and reporters beside them;
//! - [`scripted_engine`]: tiny scripted HTTP engines for the proxy's edge cases;
//! - [`tokenizer`]: the real tokenizer fixture;
//! - [`traffic`]: token-id prompts whose blocks the test can map from engine to router hashes;
//! - [`eventually`] / [`assert_eventually!`]: waiting for state that converges
//!   asynchronously, with one patience setting (`CACHE_ROUTER_TEST_PATIENCE`, seconds).
//!
//! No fixed sleep stands in for an awaitable event here: what can be awaited is awaited, what
//! converges is polled with a deadline.

pub mod cluster;
pub mod docker;
pub mod engines;
pub mod nats;
pub mod routers;
pub mod scripted_engine;
pub mod tokenizer;
pub mod traffic;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The model every kit engine and router serves.
pub const MODEL: &str = "mock-model";
/// Tokens per KV block of kit engines and routers.
pub const BLOCK_SIZE: usize = 16;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// How long converging state may take before a test fails: `CACHE_ROUTER_TEST_PATIENCE`
/// seconds (default 30; raise it on a slow machine).
pub fn patience() -> Duration {
    std::env::var("CACHE_ROUTER_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(30), Duration::from_secs_f64)
}

/// How often [`eventually`] polls.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds and returns how long that took; panics naming `what` after
/// [`patience`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let deadline = start + patience();
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {:?} waiting until {what}",
            patience()
        );
        tokio::time::sleep(POLL).await;
    }
    start.elapsed()
}

/// Asserts that an async condition becomes true within the kit's patience:
/// `assert_eventually!(router_sees(&h, 3).await, "the router sees 3 workers")`.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($what:tt)+) => {
        $crate::eventually(&format!($($what)+), || async { $cond }).await
    };
}

/// Small (test) sizes for the bench binaries: under `cargo test` (no `--bench` argument), with
/// criterion's `--test` or `--list`, or when `CACHE_ROUTER_BENCH_SMALL` is set to anything but
/// "" or "0". CI runs the benches this way so they finish in seconds while still checking
/// their own results.
pub fn small_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let env_small =
        std::env::var("CACHE_ROUTER_BENCH_SMALL").is_ok_and(|v| !v.is_empty() && v != "0");
    env_small || has("--test") || has("--list") || !has("--bench")
}

/// An HTTP client for tests: no proxy from the environment, short connect timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client builds")
}
