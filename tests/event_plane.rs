//! End to end through a real nats-server: publishers → JetStream → router ingest → index.
//! Each test starts its own server on a free port with its own store directory.

mod common;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use cache_router::bus::ingest::{self, EventPlane, FleetHandle, IngestConfig};
use cache_router::bus::publisher::{Publisher, Receipt};
use cache_router::bus::{self, registry, NatsArgs, StreamArgs};
use cache_router::fleet::ResyncCause;
use cache_router::protocol::{BlockHash, Body, Envelope, Load, WorkerId, WorkerInfo};
use common::nats::NatsServer;

const PATIENCE: Duration = Duration::from_secs(30);

fn config(url: &str) -> IngestConfig {
    let mut c = IngestConfig::new(NatsArgs::for_url(url));
    c.snapshot_every = 100;
    c.snapshot_interval = Duration::from_millis(500);
    c.resync_timeout = Duration::from_secs(2);
    c.limits = StreamArgs {
        registry_ttl_ms: 600,
        ..StreamArgs::default()
    };
    c
}

async fn start_router(url: &str) -> (EventPlane, CancellationToken) {
    let token = CancellationToken::new();
    let client = bus::connect(&NatsArgs::for_url(url), "test-router")
        .await
        .unwrap();
    let plane = ingest::start(client, config(url), token.clone())
        .await
        .unwrap();
    (plane, token)
}

struct Worker {
    publisher: Publisher,
    token: CancellationToken,
    held: Vec<u64>,
    rng: StdRng,
}

impl Worker {
    async fn start(url: &str, id: &str, epoch: u64, seed: u64) -> Worker {
        let client = bus::connect(&NatsArgs::for_url(url), id).await.unwrap();
        // The stream must exist before the first publish (the router may not have started).
        bus::ensure_infra(&client, &bus::Subjects::new("kvr"), &StreamArgs::default())
            .await
            .unwrap();
        let publisher = Publisher::new(
            client,
            bus::Subjects::new("kvr"),
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
    let id = WorkerId::from(id);
    h.query(move |f| f.worker_blocks(&id)).await.unwrap()
}

/// Polls `cond` until it holds or `PATIENCE` runs out (state that converges asynchronously).
async fn eventually<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < PATIENCE,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

async fn converged(h: &FleetHandle, w: &Worker, id: &str) -> bool {
    router_view(h, id).await == w.truth().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_reach_the_index_in_order() {
    let nats = NatsServer::start();
    let (plane, _t) = start_router(&nats.url()).await;
    let h = plane.handle();
    let mut a = Worker::start(&nats.url(), "wa", 1, 1).await;
    let mut b = Worker::start(&nats.url(), "wb", 1, 2).await;
    let (ra, rb) = tokio::join!(a.publish_random(300), b.publish_random(300));
    h.wait_applied(ra.stream_seq.unwrap().max(rb.stream_seq.unwrap()))
        .await;
    assert_eq!(router_view(&h, "wa").await, a.truth().await);
    assert_eq!(router_view(&h, "wb").await, b.truth().await);
    assert!(!a.truth().await.is_empty());
    let c = h.query(|f| f.counters().clone()).await.unwrap();
    assert_eq!(c.applied, 600);
    assert_eq!(
        c.resyncs_total(),
        0,
        "in-order delivery needs no resync: {c:?}"
    );
    assert_eq!(c.duplicates, 0);
    plane.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_event_and_a_lying_digest_each_resync_to_equality() {
    let nats = NatsServer::start();
    let (plane, _t) = start_router(&nats.url()).await;
    let h = plane.handle();
    let mut w = Worker::start(&nats.url(), "w1", 7, 3).await;
    let r = w.publish_random(100).await;
    h.wait_applied(r.stream_seq.unwrap()).await;
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
    let c = h.query(|f| f.counters().clone()).await.unwrap();
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
    let c = h.query(|f| f.counters().clone()).await.unwrap();
    assert_eq!(c.resyncs(ResyncCause::DigestMismatch), 1, "{c:?}");
    assert_eq!(c.digest_mismatches, 1);
    println!("digest fault -> index equal again: {digest_recovery:?}");

    // A truthful digest afterwards matches and starts nothing.
    let r = w.publisher.publish_digest().await.unwrap();
    h.wait_applied(r.stream_seq.unwrap()).await;
    let c = h.query(|f| f.counters().clone()).await.unwrap();
    assert_eq!(c.digests_ok, 1);
    assert_eq!(c.resyncs_total(), 2);
    plane.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_snapshot_plus_tail_and_a_second_router_converges() {
    let nats = NatsServer::start();
    let mut a = Worker::start(&nats.url(), "wa", 1, 4).await;
    let mut b = Worker::start(&nats.url(), "wb", 1, 5).await;
    let (plane, _t) = start_router(&nats.url()).await;
    let h = plane.handle();
    a.publish_random(250).await;
    let r = b.publish_random(250).await;
    h.wait_applied(r.stream_seq.unwrap()).await;
    // Stopping writes a final snapshot at the applied position.
    plane.shutdown(Duration::from_secs(5)).await;

    // Events keep coming while no router runs: the tail after the snapshot.
    a.publish_random(60).await;
    let r = b.publish_random(40).await;
    let tail_end = r.stream_seq.unwrap();

    let (plane2, _t2) = start_router(&nats.url()).await;
    let h2 = plane2.handle();
    h2.wait_ready().await;
    assert!(h2.applied_stream_seq() >= tail_end);
    assert_eq!(router_view(&h2, "wa").await, a.truth().await);
    assert_eq!(router_view(&h2, "wb").await, b.truth().await);
    let m = h2.metrics().snapshot();
    assert_eq!(
        m.replayed, 100,
        "only the tail after the snapshot is replayed: {m:?}"
    );
    let c = h2.query(|f| f.counters().clone()).await.unwrap();
    assert_eq!(c.resyncs_total(), 0, "{c:?}");
    println!(
        "restart: ready in {} ms, replayed {} messages",
        m.recovery_ms, m.replayed
    );

    // A second router started later, beside the first, converges to the same index.
    let r = a.publish_random(30).await;
    let (plane3, _t3) = start_router(&nats.url()).await;
    let h3 = plane3.handle();
    h3.wait_applied(r.stream_seq.unwrap()).await;
    h2.wait_applied(r.stream_seq.unwrap()).await;
    for id in ["wa", "wb"] {
        assert_eq!(router_view(&h3, id).await, router_view(&h2, id).await);
    }
    assert_eq!(router_view(&h3, "wa").await, a.truth().await);
    plane3.shutdown(Duration::from_secs(5)).await;
    plane2.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_while_publishing_ends_equal() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let (plane, _t) = start_router(&url).await;
    let h = plane.handle();
    let mut w = Worker::start(&url, "w1", 1, 6).await;
    w.publish_random(100).await;

    let stop = CancellationToken::new();
    let publishing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.is_cancelled() {
                let body = w.next_event();
                match w.publisher.publish(body).await {
                    Ok(_) => ok += 1,
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                if ok >= 400 {
                    break;
                }
            }
            (w, ok, failed)
        })
    };
    // Bounce the server mid-stream (same store dir, same port).
    eventually("some events flow before the bounce", || async {
        h.applied_stream_seq() >= 150
    })
    .await;
    nats.stop();
    nats.restart();
    let (w, ok, failed) = publishing.await.unwrap();
    stop.cancel();
    println!("published {ok} events, {failed} failed during the bounce");
    // A digest after the storm makes any divergence visible and repaired.
    let r = w.publisher.publish_digest().await.unwrap();
    h.wait_applied(r.stream_seq.unwrap()).await;
    let took = eventually("router equals ground truth after the bounce", || {
        converged(&h, &w, "w1")
    })
    .await;
    println!("converged {took:?} after the final digest");
    plane.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_version_messages_are_counted_and_skipped() {
    let nats = NatsServer::start();
    let (plane, _t) = start_router(&nats.url()).await;
    let h = plane.handle();
    let client = bus::connect(&NatsArgs::for_url(nats.url()), "raw")
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
    h.wait_applied(last).await;
    let m = h.metrics().snapshot();
    assert_eq!(m.malformed, 1, "{m:?}");
    assert_eq!(m.unknown_version, 1, "{m:?}");
    assert_eq!(m.subject_mismatch, 1, "{m:?}");
    assert_eq!(router_view(&h, "w1").await, vec![BlockHash(5)]);
    assert!(router_view(&h, "w2").await.is_empty());
    plane.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_liveness_and_load_reports() {
    let nats = NatsServer::start();
    let (plane, _t) = start_router(&nats.url()).await;
    let h = plane.handle();
    let client = bus::connect(&NatsArgs::for_url(nats.url()), "reporter")
        .await
        .unwrap();
    let infra = bus::ensure_infra(&client, &bus::Subjects::new("kvr"), &StreamArgs::default())
        .await
        .unwrap();
    let info = |id: &str| WorkerInfo {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        model: "m".into(),
        block_size: 16,
        epoch: 1,
    };
    let ttl = Duration::from_millis(600);
    let graceful = CancellationToken::new();
    let reg_a = registry::register(infra.registry.clone(), info("wa"), ttl, graceful.clone())
        .await
        .unwrap();
    let reg_b = registry::register(
        infra.registry.clone(),
        info("wb"),
        ttl,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let known = |id: &'static str| {
        let h = h.clone();
        async move {
            let id = WorkerId::from(id);
            h.query(move |f| f.worker(&id).and_then(|e| e.info.clone()))
                .await
                .unwrap()
        }
    };
    eventually("both workers registered", || async {
        known("wa").await.is_some() && known("wb").await.is_some()
    })
    .await;
    assert_eq!(known("wa").await.unwrap().url, "http://127.0.0.1:9/wa");

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
        let id = WorkerId::from("wa");
        h.query(move |f| f.worker(&id).and_then(|e| e.load.clone()))
            .await
            .flatten()
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
    plane.shutdown(Duration::from_secs(5)).await;
}
