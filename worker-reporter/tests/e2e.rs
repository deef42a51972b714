//! End to end: mock vLLM engine (ZMQ PUB + replay ROUTER, vLLM's wire format) → this
//! reporter → a real nats-server → a router's event plane → index. The router's view of the
//! worker must equal the engine's cache, translated to our hashes, through evictions, a
//! cleared cache, dropped events and an engine restart. Everything comes from the shared test
//! kit.

use cache_router::{FleetHandle, RunningRouter};
use cache_router_core::protocol::BlockHash;
use cache_router_testkit::engines::{
    start_engine, start_reporter, Engine, EngineSpec, ReporterSpec,
};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::traffic::Traffic;
use cache_router_testkit::{eventually, routers};

const WORKER: &str = "w1";

async fn start_router(url: &str) -> RunningRouter {
    routers::nats_router(url).await
}

fn engine_spec(drop_fraction: f64, replay: bool) -> EngineSpec {
    EngineSpec {
        drop_fraction,
        replay,
        ..EngineSpec::default()
    }
}

fn reporter(replay: bool) -> ReporterSpec {
    ReporterSpec {
        replay,
        ..ReporterSpec::new(WORKER)
    }
}

async fn router_view(h: &FleetHandle) -> Vec<BlockHash> {
    h.worker_blocks(WORKER).await.unwrap()
}

async fn router_epoch(h: &FleetHandle) -> Option<u64> {
    h.worker(WORKER).await.unwrap().map(|w| w.epoch)
}

/// Waits until the router's view equals the engine's cache (state converges asynchronously).
async fn converge(h: &FleetHandle, t: &Traffic, engine: &Engine, what: &str) {
    eventually(
        &format!("{what}: the router's view equals the engine's cache"),
        || async { router_view(h).await == t.expected(engine) },
    )
    .await;
}

/// Waits until the reporter's first message reached the router (its SUB is connected).
async fn wait_for_worker(h: &FleetHandle) {
    eventually("the reporter reached the router", || async {
        router_epoch(h).await.is_some()
    })
    .await;
}

async fn registered(h: &FleetHandle) -> bool {
    h.worker(WORKER)
        .await
        .unwrap()
        .is_some_and(|w| w.is_registered())
}

async fn wait_registered(h: &FleetHandle, want: bool, what: &str) {
    eventually(what, || async { registered(h).await == want }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_equals_engine_cache_through_evictions_and_a_cleared_cache() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet();
    let engine = start_engine(engine_spec(0.0, true)).await.unwrap();
    let _rep = start_reporter(&nats.url(), &engine, &reporter(true));
    wait_for_worker(h).await;
    let mut t = Traffic::new(1);
    t.send(engine.url(), 40).await;
    // More distinct blocks than the cache holds: the engine must have evicted.
    assert!(
        t.ours.len() > 48,
        "only {} distinct blocks sent",
        t.ours.len()
    );
    converge(h, &t, &engine, "after evictions").await;
    assert!(!router_view(h).await.is_empty());

    let resp = reqwest::Client::new()
        .post(format!("{}/reset_prefix_cache", engine.url()))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(engine.mock.engine.cached_hashes().is_empty());
    converge(h, &t, &engine, "after reset_prefix_cache").await;
    t.send(engine.url(), 5).await;
    converge(h, &t, &engine, "after refilling").await;
}

/// Batches the engine drops on its PUB socket (30% here) are fetched from its replay socket:
/// the router's view still equals the engine's cache, and it got there by replay alone — the
/// reporter never gave up on the stream (no new epoch, no resync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_events_are_recovered_by_replay() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet();
    let engine = start_engine(engine_spec(0.3, true)).await.unwrap();
    let rep = start_reporter(&nats.url(), &engine, &reporter(true));
    // The first live batch after connecting may itself be dropped: wait for any message
    // (load or digest) rather than an event.
    wait_for_worker(h).await;
    let epoch = router_epoch(h).await.unwrap();
    let mut t = Traffic::new(2);
    t.send(engine.url(), 40).await;
    converge(h, &t, &engine, "after 30% of batches were dropped").await;
    let dropped = engine.mock.drop.as_ref().unwrap().dropped();
    assert!(
        dropped > 0,
        "the engine dropped no batch: nothing was tested"
    );
    let stats = rep.stats();
    assert!(
        stats.replayed() >= dropped,
        "{dropped} batches dropped, only {} replayed",
        stats.replayed()
    );
    assert_eq!(
        stats.resyncs(),
        0,
        "recovered by replay, not by a new epoch"
    );
    assert_eq!(stats.restarts(), 0);
    assert_eq!(
        router_epoch(h).await,
        Some(epoch),
        "the worker's epoch never changed"
    );
    let resyncs = h.stats().await.unwrap().counters.resyncs_total();
    assert_eq!(resyncs, 0, "the router never resynced the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_starts_a_new_epoch() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet();
    let engine = start_engine(engine_spec(0.0, true)).await.unwrap();
    let _rep = start_reporter(&nats.url(), &engine, &reporter(true));
    wait_for_worker(h).await;
    let mut t = Traffic::new(3);
    t.send(engine.url(), 10).await;
    converge(h, &t, &engine, "before restart").await;
    let before = router_epoch(h).await.unwrap();

    let ports = engine.ports;
    engine.stop().await;
    // The same ports again: the reporter reconnects to the new engine. The old sockets may
    // take a moment to release their ports.
    let deadline = std::time::Instant::now() + cache_router_testkit::patience();
    let engine2 = loop {
        let spec = EngineSpec {
            ports: Some(ports),
            ..engine_spec(0.0, true)
        };
        match start_engine(spec).await {
            Ok(e) => break e,
            Err(e) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let _ = e;
            }
            Err(e) => panic!("cannot restart the engine on its ports: {e}"),
        }
    };
    t.send(engine2.url(), 6).await;
    converge(h, &t, &engine2, "after restart").await;
    assert!(
        router_epoch(h).await.unwrap() > before,
        "a restart must start a new epoch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_deleted_on_shutdown_and_lapses_when_the_engine_dies() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet();
    let engine = start_engine(engine_spec(0.0, true)).await.unwrap();
    let rep = start_reporter(&nats.url(), &engine, &reporter(true));
    wait_registered(h, true, "the reporter should register a live engine").await;
    rep.stop().await.unwrap();
    wait_registered(h, false, "a stopped reporter should deregister").await;

    let _rep = start_reporter(&nats.url(), &engine, &reporter(true));
    wait_registered(h, true, "the restarted reporter should register again").await;
    engine.stop().await;
    wait_registered(
        h,
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
    let router = start_router(&nats.url()).await;
    let h = router.fleet();
    let engine = start_engine(engine_spec(0.3, false)).await.unwrap();
    let rep = start_reporter(&nats.url(), &engine, &reporter(false));
    wait_for_worker(h).await;
    let first = router_epoch(h).await.unwrap();
    let mut t = Traffic::new(4);
    t.send(engine.url(), 40).await;
    eventually("a new epoch after a gap without replay", || async {
        router_epoch(h).await != Some(first)
    })
    .await;
    assert!(rep.stats().resyncs() > 0);
    let known: std::collections::HashSet<_> = t.ours.values().copied().collect();
    let view = router_view(h).await;
    assert!(
        view.iter().all(|b| known.contains(b)),
        "the router holds blocks no prompt made"
    );
}
