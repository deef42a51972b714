//! End to end through a real nats-server: publishers → JetStream → the router's event plane
//! → index. Each test starts its own server on a free port with its own store directory, and
//! routers through the library (`Router::spawn`, via the test kit).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use cache_router::{FleetHandle, RunningRouter};
use cache_router_bus::publisher::{Publisher, Receipt};
use cache_router_bus::{registry, NatsArgs, StreamArgs, Subjects};
use cache_router_core::fleet::{FleetCounters, ResyncCause};
use cache_router_core::protocol::{BlockHash, Body, Envelope, Load, WorkerInfo};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::{eventually, routers};

async fn start_router(url: &str) -> RunningRouter {
    routers::nats_router(url).await
}

struct Worker {
    publisher: Publisher,
    token: CancellationToken,
    held: Vec<u64>,
    rng: StdRng,
}

impl Worker {
    async fn start(url: &str, id: &str, epoch: u64, seed: u64) -> Worker {
        let client = cache_router_bus::connect(&NatsArgs::for_url(url), id)
            .await
            .unwrap();
        // The stream must exist before the first publish (the router may not have started).
        cache_router_bus::ensure_infra(&client, &Subjects::new("kvr"), &StreamArgs::default())
            .await
            .unwrap();
        let publisher = Publisher::new(
            client,
            Subjects::new("kvr"),
            id.into(),
            epoch,
            Duration::from_secs(5),
        )
        .unwrap();
        let token = CancellationToken::new();
        publisher.serve_resync(token.clone()).await.unwrap();
        Worker {
            publisher,
            token,
            held: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A plausible random cache event: a new chain under a held block or the root, or the
    /// removal of a few held blocks.
    fn next_event(&mut self) -> Body {
        if self.held.len() > 40 && self.rng.random_bool(0.4) {
            let n = self.rng.random_range(1..4);
            let mut blocks = Vec::new();
            for _ in 0..n {
                let i = self.rng.random_range(0..self.held.len());
                blocks.push(BlockHash(self.held.swap_remove(i)));
            }
            Body::Removed { blocks }
        } else {
            let parent = (!self.held.is_empty() && self.rng.random_bool(0.7))
                .then(|| BlockHash(self.held[self.rng.random_range(0..self.held.len())]));
            let blocks: Vec<BlockHash> = (0..self.rng.random_range(1..6))
                .map(|_| BlockHash(self.rng.random()))
                .collect();
            self.held.extend(blocks.iter().map(|b| b.0));
            Body::Stored { blocks, parent }
        }
    }

    async fn publish_random(&mut self, n: usize) -> Receipt {
        let mut last = None;
        for _ in 0..n {
            let body = self.next_event();
            last = Some(self.publisher.publish(body).await.unwrap());
        }
        last.unwrap()
    }

    async fn truth(&self) -> Vec<BlockHash> {
        self.publisher.ground_truth().await.2.sorted_blocks()
    }
}

async fn router_view(h: &FleetHandle, id: &str) -> Vec<BlockHash> {
    h.worker_blocks(id).await.unwrap()
}

async fn counters(h: &FleetHandle) -> FleetCounters {
    h.stats().await.unwrap().counters
}

async fn converged(h: &FleetHandle, w: &Worker, id: &str) -> bool {
    router_view(h, id).await == w.truth().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_reach_the_index_in_order() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet().clone();
    let mut a = Worker::start(&nats.url(), "wa", 1, 1).await;
    let mut b = Worker::start(&nats.url(), "wb", 1, 2).await;
    let (ra, rb) = tokio::join!(a.publish_random(300), b.publish_random(300));
    h.wait_applied(ra.stream_seq.unwrap().max(rb.stream_seq.unwrap()))
        .await
        .unwrap();
    assert_eq!(router_view(&h, "wa").await, a.truth().await);
    assert_eq!(router_view(&h, "wb").await, b.truth().await);
    assert!(!a.truth().await.is_empty());
    let c = counters(&h).await;
    assert_eq!(c.applied, 600);
    assert_eq!(
        c.resyncs_total(),
        0,
        "in-order delivery needs no resync: {c:?}"
    );
    assert_eq!(c.duplicates, 0);
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_event_and_a_lying_digest_each_resync_to_equality() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet().clone();
    let mut w = Worker::start(&nats.url(), "w1", 7, 3).await;
    let r = w.publish_random(100).await;
    h.wait_applied(r.stream_seq.unwrap()).await.unwrap();
    assert_eq!(router_view(&h, "w1").await, w.truth().await);

    // 1. A message is lost: the next one reveals a sequence gap.
    w.publisher.lose_next(1);
    let body = w.next_event();
    let lost = w.publisher.publish(body).await.unwrap();
    assert_eq!(lost.stream_seq, None);
    let fault = Instant::now();
    w.publish_random(1).await;
    eventually("gap resync restores equality", || converged(&h, &w, "w1")).await;
    let gap_recovery = fault.elapsed();
    let c = counters(&h).await;
    assert_eq!(c.resyncs(ResyncCause::Gap), 1, "{c:?}");
    println!("gap fault -> index equal again: {gap_recovery:?}");

    // 2. The worker's cache changed with no event at all; only its digest tells.
    let victim = w.held.pop().unwrap();
    w.publisher
        .apply_silently(&Body::Removed {
            blocks: vec![BlockHash(victim)],
        })
        .await;
    assert_ne!(router_view(&h, "w1").await, w.truth().await);
    let fault = Instant::now();
    w.publisher.publish_digest().await.unwrap();
    eventually("digest resync restores equality", || {
        converged(&h, &w, "w1")
    })
    .await;
    let digest_recovery = fault.elapsed();
    let c = counters(&h).await;
    assert_eq!(c.resyncs(ResyncCause::DigestMismatch), 1, "{c:?}");
    assert_eq!(c.digest_mismatches, 1);
    println!("digest fault -> index equal again: {digest_recovery:?}");

    // A truthful digest afterwards matches and starts nothing.
    let r = w.publisher.publish_digest().await.unwrap();
    h.wait_applied(r.stream_seq.unwrap()).await.unwrap();
    let c = counters(&h).await;
    assert_eq!(c.digests_ok, 1);
    assert_eq!(c.resyncs_total(), 2);
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_snapshot_plus_tail_and_a_second_router_converges() {
    let nats = NatsServer::start();
    let mut a = Worker::start(&nats.url(), "wa", 1, 4).await;
    let mut b = Worker::start(&nats.url(), "wb", 1, 5).await;
    let router = start_router(&nats.url()).await;
    let h = router.fleet().clone();
    a.publish_random(250).await;
    let r = b.publish_random(250).await;
    h.wait_applied(r.stream_seq.unwrap()).await.unwrap();
    // Stopping writes a final snapshot at the applied position.
    router.stop().await.unwrap();

    // Events keep coming while no router runs: the tail after the snapshot.
    a.publish_random(60).await;
    let r = b.publish_random(40).await;
    let tail_end = r.stream_seq.unwrap();

    let router2 = start_router(&nats.url()).await;
    let h2 = router2.fleet().clone();
    h2.wait_ready().await.unwrap();
    assert!(h2.applied_stream_seq() >= tail_end);
    assert_eq!(router_view(&h2, "wa").await, a.truth().await);
    assert_eq!(router_view(&h2, "wb").await, b.truth().await);
    let m = router2.counters();
    assert_eq!(
        m.replayed(),
        100,
        "only the tail after the snapshot is replayed"
    );
    let c = counters(&h2).await;
    assert_eq!(c.resyncs_total(), 0, "{c:?}");
    println!(
        "restart: ready in {} ms, replayed {} messages",
        m.recovery_ms(),
        m.replayed()
    );

    // A second router started later, beside the first, converges to the same index.
    let r = a.publish_random(30).await;
    let router3 = start_router(&nats.url()).await;
    let h3 = router3.fleet().clone();
    h3.wait_applied(r.stream_seq.unwrap()).await.unwrap();
    h2.wait_applied(r.stream_seq.unwrap()).await.unwrap();
    for id in ["wa", "wb"] {
        assert_eq!(router_view(&h3, id).await, router_view(&h2, id).await);
    }
    assert_eq!(router_view(&h3, "wa").await, a.truth().await);
    router3.stop().await.unwrap();
    router2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_while_publishing_ends_equal() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let router = start_router(&url).await;
    let h = router.fleet().clone();
    let mut w = Worker::start(&url, "w1", 1, 6).await;
    w.publish_random(100).await;

    // Publish 400 more events while the server goes down and comes back; a publish that
    // fails is retried (the batch it belongs to is what the engine would resend).
    const EVENTS: u32 = 400;
    let publishing = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, 0u32);
        let mut pending = None;
        while ok < EVENTS {
            let body = pending.take().unwrap_or_else(|| w.next_event());
            match w.publisher.publish(body.clone()).await {
                Ok(_) => ok += 1,
                Err(_) => {
                    failed += 1;
                    pending = Some(body);
                    // The server is down: wait before the next attempt.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        (w, ok, failed)
    });
    // Bounce the server mid-stream (same store dir, same port).
    eventually("some events flow before the bounce", || async {
        h.applied_stream_seq() >= 150
    })
    .await;
    nats.stop();
    assert!(!nats.is_running(), "the server is down");
    nats.restart();
    let (w, ok, failed) = tokio::time::timeout(cache_router_testkit::patience(), publishing)
        .await
        .expect("publishing finishes after the server is back")
        .unwrap();
    assert_eq!(ok, EVENTS, "every event was published in the end");
    println!("published {ok} events; {failed} attempts failed during the bounce and were retried");
    // A digest after the storm makes any divergence visible and repaired.
    let r = w.publisher.publish_digest().await.unwrap();
    h.wait_applied(r.stream_seq.unwrap()).await.unwrap();
    let took = eventually("router equals ground truth after the bounce", || {
        converged(&h, &w, "w1")
    })
    .await;
    println!("converged {took:?} after the final digest");
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_version_messages_are_counted_and_skipped() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet().clone();
    let client = cache_router_bus::connect(&NatsArgs::for_url(nats.url()), "raw")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let publish = |subject: &'static str, bytes: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, bytes.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        }
    };
    publish("kvr.events.w1", b"not msgpack at all".to_vec()).await;
    let mut v2 = Envelope::new("w1".into(), 1, 1, 0, Body::Cleared);
    v2.version = 2;
    publish("kvr.events.w1", rmp_serde::to_vec(&v2).unwrap()).await;
    // A valid envelope on another worker's subject must not be applied to either.
    let spoof = Envelope::new(
        "w2".into(),
        1,
        1,
        0,
        Body::Stored {
            blocks: vec![BlockHash(66)],
            parent: None,
        },
    );
    publish("kvr.events.w1", spoof.encode().unwrap()).await;
    let good = Envelope::new(
        "w1".into(),
        1,
        1,
        0,
        Body::Stored {
            blocks: vec![BlockHash(5)],
            parent: None,
        },
    );
    let last = publish("kvr.events.w1", good.encode().unwrap()).await;
    h.wait_applied(last).await.unwrap();
    let m = router.counters();
    assert_eq!(m.malformed(), 1);
    assert_eq!(m.unknown_version(), 1);
    assert_eq!(m.subject_mismatch(), 1);
    assert_eq!(router_view(&h, "w1").await, vec![BlockHash(5)]);
    assert!(router_view(&h, "w2").await.is_empty());
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_liveness_and_load_reports() {
    let nats = NatsServer::start();
    let router = start_router(&nats.url()).await;
    let h = router.fleet().clone();
    let client = cache_router_bus::connect(&NatsArgs::for_url(nats.url()), "reporter")
        .await
        .unwrap();
    let infra =
        cache_router_bus::ensure_infra(&client, &Subjects::new("kvr"), &StreamArgs::default())
            .await
            .unwrap();
    let info = |id: &str| WorkerInfo {
        id: id.into(),
        // Registry URLs are `http://host:port` only (a path is refused).
        url: format!("http://127.0.0.1:{}", if id == "wa" { 9 } else { 10 }),
        model: "m".into(),
        block_size: 16,
        epoch: 1,
    };
    let ttl = Duration::from_millis(600);
    let register = |id: &str, token: CancellationToken| {
        tokio::spawn(registry::keep_registered(
            infra.registry.clone(),
            info(id),
            ttl,
            ttl / 3,
            || true,
            token,
        ))
    };
    let graceful = CancellationToken::new();
    let reg_a = register("wa", graceful.clone());
    let reg_b = register("wb", CancellationToken::new());
    let known = |id: &'static str| {
        let h = h.clone();
        async move { h.worker(id).await.unwrap().and_then(|w| w.info) }
    };
    eventually("both workers registered", || async {
        known("wa").await.is_some() && known("wb").await.is_some()
    })
    .await;
    assert_eq!(known("wa").await.unwrap().url, "http://127.0.0.1:9");

    // Load reports (core NATS) reach the worker's entry.
    let mut w = Worker::start(&nats.url(), "wa", 1, 7).await;
    w.publish_random(5).await;
    w.publisher
        .publish_load(Load {
            running: 3,
            waiting: 2,
            kv_usage: 0.25,
            num_blocks: Some(100),
        })
        .await
        .unwrap();
    eventually("load applied", || async {
        h.worker("wa")
            .await
            .unwrap()
            .and_then(|w| w.reported_load)
            .is_some_and(|l| l.running == 3 && l.waiting == 2)
    })
    .await;

    // A clean shutdown deregisters at once and purges the worker's blocks.
    graceful.cancel();
    reg_a.await.unwrap();
    eventually("wa purged on deregistration", || async {
        known("wa").await.is_none()
    })
    .await;
    assert!(router_view(&h, "wa").await.is_empty());

    // A dead reporter stops refreshing: its entry ages past the TTL and it is purged.
    reg_b.abort();
    let took = eventually("wb expired", || async { known("wb").await.is_none() }).await;
    println!("expired worker purged {took:?} after its refresher died (TTL {ttl:?})");
    w.token.cancel();
    router.stop().await.unwrap();
}
