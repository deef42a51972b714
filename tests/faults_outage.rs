//! A 30-second NATS outage under streaming traffic: nats-server killed (a crash, its store
//! kept), traffic going on through the router, the server started again.
//!
//! The fault campaign found that a ~10 s outage made every worker unroutable (the registry TTL
//! sweep expired them all while the connection was down: `503 no_workers`), and that the event
//! consumer stayed silent for ~15 s after the reconnect. Now, while NATS is unreachable, the
//! router keeps routing to the workers it knows (registry expiry is suspended until it has been
//! connected for a TTL; the proxy's own failures eject a worker that is really gone), it
//! resumes consuming soon after the reconnect, and converges to the engines' true cache sets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use cache_router_testkit::engines::{start_engine, start_reporter, EngineSpec, ReporterSpec};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::traffic::{stream_completions, StreamCounts, Traffic};
use cache_router_testkit::{eventually, routers};

const ENGINES: usize = 3;
/// How long NATS stays down.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_nats_outage_under_streaming_traffic_fails_under_1_percent_and_converges() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let router = routers::nats_router(&url).await;
    let h = router.fleet().clone();
    let mut engines = Vec::new();
    let mut reporters = Vec::new();
    for i in 0..ENGINES {
        let e = start_engine(EngineSpec::default()).await.unwrap();
        reporters.push(start_reporter(
            &url,
            &e,
            &ReporterSpec::new(&format!("engine-{i}")),
        ));
        engines.push(e);
    }
    eventually("every worker registered", || async {
        h.stats().await.unwrap().registered == ENGINES
    })
    .await;

    let traffic = Arc::new(Mutex::new(Traffic::new(30)));
    let counts = Arc::new(StreamCounts::default());
    let stop = CancellationToken::new();
    let load = tokio::spawn(stream_completions(
        Arc::new(Mutex::new(vec![router.url().to_owned()])),
        traffic.clone(),
        counts.clone(),
        stop.clone(),
    ));
    eventually("traffic flows", || async { counts.sent() >= 50 }).await;

    // The outage: the traffic goes on for its whole length (the fault's duration, not a wait
    // for anything).
    let before = (counts.sent(), counts.failed());
    nats.stop();
    tokio::time::sleep(OUTAGE).await;
    let during = (counts.sent() - before.0, counts.failed() - before.1);
    let seq_before = h.applied_stream_seq();
    nats.restart();
    let back = Instant::now();
    let resumed = eventually("the router consumes again", || async {
        h.applied_stream_seq() > seq_before
    })
    .await;
    eventually("traffic goes on after the outage", || async {
        counts.sent() >= before.0 + during.0 + 50
    })
    .await;
    stop.cancel();
    load.await.unwrap();

    eventually("every worker's view equals its engine's cache", || async {
        let t = traffic.lock().await;
        for (i, e) in engines.iter().enumerate() {
            let got = h.worker_blocks(&format!("engine-{i}")).await.unwrap();
            if got != t.expected(e) {
                return false;
            }
        }
        true
    })
    .await;
    let exact_after = back.elapsed();
    let (sent, failed) = (counts.sent(), counts.failed());
    let stats = h.stats().await.unwrap();
    println!(
        "{OUTAGE:?} NATS outage: {} requests during it, {} failed; overall {sent} sent, {failed} \
         failed ({:.2}%); consuming again {resumed:?} after the server was back, every view \
         exact {:?} after; resyncs {:?}",
        during.0,
        during.1,
        100.0 * failed as f64 / sent as f64,
        exact_after,
        stats.counters.resyncs_started
    );
    assert!(during.0 > 100, "traffic went on during the outage");
    assert!(
        failed * 100 < sent,
        "{failed} of {sent} failed: {:?}",
        counts.examples.lock().unwrap()
    );
    assert_eq!(stats.registered, ENGINES, "no worker expired");
}
