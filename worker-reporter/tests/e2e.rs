//! End to end: mock vLLM engine (ZMQ PUB + replay ROUTER, vLLM's wire format) → this
//! reporter → a real nats-server → the router's ingest → index. The router's view of the
//! worker must equal the engine's cache, translated to our hashes, through evictions, a
//! cleared cache, dropped events and an engine restart.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use cache_router::bus::ingest::{self, FleetHandle, IngestConfig};
use cache_router::bus::{self, NatsArgs, StreamArgs};
use cache_router::hashing::{block_hashes, namespace_seed};
use cache_router::mock::engine_block_hashes;
use cache_router::protocol::{BlockHash, WorkerId};
use common::nats::NatsServer;
use common::{
    engine_cache_as_ours, start_engine, start_reporter, wait_until, Engine, BS, MODEL, PATIENCE,
};

const WORKER: &str = "w1";

async fn start_router(url: &str) -> (FleetHandle, CancellationToken) {
    let mut c = IngestConfig::new(NatsArgs::for_url(url));
    c.resync_timeout = Duration::from_secs(2);
    c.limits = StreamArgs {
        registry_ttl_ms: 600,
        ..StreamArgs::default()
    };
    let token = CancellationToken::new();
    let client = bus::connect(&NatsArgs::for_url(url), "test-router")
        .await
        .unwrap();
    let plane = ingest::start(client, c, token.clone()).await.unwrap();
    let h = plane.handle();
    std::mem::forget(plane);
    (h, token)
}

/// Sends prompts as token ids and remembers engine hash → our hash for every full block.
struct Traffic {
    http: reqwest::Client,
    rng: StdRng,
    prefixes: Vec<Vec<u32>>,
    ours: HashMap<u64, BlockHash>,
}

impl Traffic {
    fn new(seed: u64) -> Traffic {
        let mut rng = StdRng::seed_from_u64(seed);
        let prefixes = (0..4)
            .map(|_| (0..BS * 2).map(|_| rng.random_range(100..30_000)).collect())
            .collect();
        Traffic {
            http: reqwest::Client::new(),
            rng,
            prefixes,
            ours: HashMap::new(),
        }
    }

    async fn send(&mut self, engine: &str, n: usize) {
        for _ in 0..n {
            let mut tokens = self.prefixes[self.rng.random_range(0..4)].clone();
            let extra = self.rng.random_range(1..5) * BS + self.rng.random_range(0..BS);
            tokens.extend((0..extra).map(|_| self.rng.random_range(100..30_000u32)));
            let engine_hashes = engine_block_hashes(&tokens, BS);
            let our = block_hashes(namespace_seed(MODEL, None), &tokens, BS);
            self.ours.extend(engine_hashes.into_iter().zip(our));
            let resp = self
                .http
                .post(format!("{engine}/v1/completions"))
                .json(&serde_json::json!({"model": MODEL, "prompt": tokens, "max_tokens": 2}))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        }
    }

    /// The engine's cache in our hashes, sorted.
    fn expected(&self, engine: &Engine) -> Vec<BlockHash> {
        engine_cache_as_ours(engine, &self.ours)
    }
}

async fn router_view(h: &FleetHandle) -> Vec<BlockHash> {
    let id = WorkerId::from(WORKER);
    let mut v = h.query(move |f| f.worker_blocks(&id)).await.unwrap();
    v.sort();
    v
}

async fn router_epoch(h: &FleetHandle) -> Option<u64> {
    let id = WorkerId::from(WORKER);
    h.query(move |f| f.worker(&id).map(|w| w.epoch))
        .await
        .unwrap()
}

/// Polls until the router's view equals the engine's cache (state converges asynchronously).
async fn converge(h: &FleetHandle, t: &Traffic, engine: &Engine, what: &str) {
    let start = Instant::now();
    loop {
        let want = t.expected(engine);
        let got = router_view(h).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: router holds {} blocks, engine {} ({} in common)",
            got.len(),
            want.len(),
            got.iter().filter(|b| want.binary_search(b).is_ok()).count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the reporter's first message reached the router (its SUB is connected).
async fn wait_for_worker(h: &FleetHandle) {
    wait_until("the reporter reached the router", || async {
        router_epoch(h).await.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_equals_engine_cache_through_evictions_and_a_cleared_cache() {
    let nats = NatsServer::start();
    let (h, _rt) = start_router(&nats.url()).await;
    let (engine, ports) = start_engine(48, 0.0, true, None).await;
    let _rep = start_reporter(&nats.url(), WORKER, &engine.url, ports, true);
    wait_for_worker(&h).await;
    let mut t = Traffic::new(1);
    t.send(&engine.url, 40).await;
    // More distinct blocks than the cache holds: the engine must have evicted.
    assert!(
        t.ours.len() > 48,
        "only {} distinct blocks sent",
        t.ours.len()
    );
    converge(&h, &t, &engine, "after evictions").await;
    assert!(!router_view(&h).await.is_empty());

    let resp = reqwest::Client::new()
        .post(format!("{}/reset_prefix_cache", engine.url))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(engine.state.engine.cached_hashes().is_empty());
    converge(&h, &t, &engine, "after reset_prefix_cache").await;
    t.send(&engine.url, 5).await;
    converge(&h, &t, &engine, "after refilling").await;
    engine.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_events_are_recovered_by_replay() {
    let nats = NatsServer::start();
    let (h, _rt) = start_router(&nats.url()).await;
    let (engine, ports) = start_engine(48, 0.3, true, None).await;
    let _rep = start_reporter(&nats.url(), WORKER, &engine.url, ports, true);
    // The first live batch after connecting may itself be dropped: wait for any message
    // (load or digest) rather than an event.
    wait_for_worker(&h).await;
    let mut t = Traffic::new(2);
    t.send(&engine.url, 40).await;
    converge(&h, &t, &engine, "after 30% of batches were dropped").await;
    engine.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_starts_a_new_epoch() {
    let nats = NatsServer::start();
    let (h, _rt) = start_router(&nats.url()).await;
    let (engine, ports) = start_engine(48, 0.0, true, None).await;
    let _rep = start_reporter(&nats.url(), WORKER, &engine.url, ports, true);
    wait_for_worker(&h).await;
    let mut t = Traffic::new(3);
    t.send(&engine.url, 10).await;
    converge(&h, &t, &engine, "before restart").await;
    let before = router_epoch(&h).await.unwrap();

    engine.token.cancel();
    // Let the old sockets close before the new engine binds the same ports.
    let (engine2, _) = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let attempt = tokio::spawn(start_engine(48, 0.0, true, Some(ports))).await;
        if let Ok(e) = attempt {
            break e;
        }
    };
    t.send(&engine2.url, 6).await;
    converge(&h, &t, &engine2, "after restart").await;
    assert!(
        router_epoch(&h).await.unwrap() > before,
        "a restart must start a new epoch"
    );
    engine2.token.cancel();
}

async fn registered(h: &FleetHandle) -> bool {
    let id = WorkerId::from(WORKER);
    h.query(move |f| f.worker(&id).is_some_and(|w| w.info.is_some()))
        .await
        .unwrap()
}

async fn wait_registered(h: &FleetHandle, want: bool, what: &str) {
    wait_until(what, || async { registered(h).await == want }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_deleted_on_shutdown_and_lapses_when_the_engine_dies() {
    let nats = NatsServer::start();
    let (h, _rt) = start_router(&nats.url()).await;
    let (engine, ports) = start_engine(48, 0.0, true, None).await;
    let rep = start_reporter(&nats.url(), WORKER, &engine.url, ports, true);
    wait_registered(&h, true, "the reporter should register a live engine").await;
    rep.cancel();
    wait_registered(&h, false, "a stopped reporter should deregister").await;

    let _rep = start_reporter(&nats.url(), WORKER, &engine.url, ports, true);
    wait_registered(&h, true, "the restarted reporter should register again").await;
    engine.token.cancel();
    wait_registered(
        &h,
        false,
        "the registration should lapse once the engine is gone",
    )
    .await;
}

/// Without a replay socket lost batches cannot be fetched: the reporter starts a new epoch
/// and the router resyncs from the reporter's mirror. (The mirror then lacks what the lost
/// batches said — vLLM has no API to list its cache — so only the epoch and the soundness
/// of what is reported can be asserted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_events_without_replay_start_a_new_epoch() {
    let nats = NatsServer::start();
    let (h, _rt) = start_router(&nats.url()).await;
    let (engine, ports) = start_engine(48, 0.3, false, None).await;
    let _rep = start_reporter(&nats.url(), WORKER, &engine.url, ports, false);
    wait_for_worker(&h).await;
    let first = router_epoch(&h).await.unwrap();
    let mut t = Traffic::new(4);
    t.send(&engine.url, 40).await;
    wait_until("a new epoch after a gap without replay", || async {
        router_epoch(&h).await != Some(first)
    })
    .await;
    let known: std::collections::HashSet<_> = t.ours.values().copied().collect();
    let view = router_view(&h).await;
    assert!(
        view.iter().all(|b| known.contains(b)),
        "the router holds blocks no prompt made"
    );
    engine.token.cancel();
}
