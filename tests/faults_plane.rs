//! Hostile publishers and control-plane faults against a real router on a real nats-server:
//! whoever can publish on the fleet's subjects or write its registry, an index pushed past its
//! memory bound, a resync that never answers, a router restarted under traffic. Each test
//! reproduces one finding of the fault campaign and asserts what the router does instead.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use cache_router::{AllowList, RouterConfig, RunningRouter};
use cache_router_bus::publisher::Publisher;
use cache_router_bus::{registry, NatsArgs, StreamArgs, Subjects};
use cache_router_core::fleet::ResyncCause;
use cache_router_core::prom_text;
use cache_router_core::protocol::{BlockHash, Body, Envelope, Load, WorkerInfo};
use cache_router_testkit::engines::{start_engine, start_reporter, EngineSpec, ReporterSpec};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::traffic::Traffic;
use cache_router_testkit::{eventually, http_client, patience, routers, MODEL};

const TTL: Duration = Duration::from_millis(600);

async fn client(url: &str, name: &str) -> async_nats::Client {
    cache_router_bus::connect(&NatsArgs::for_url(url), name)
        .await
        .unwrap()
}

/// A worker that publishes through the real publisher (and answers resyncs when asked).
async fn worker(url: &str, id: &str) -> Publisher {
    let c = client(url, id).await;
    cache_router_bus::ensure_infra(&c, &Subjects::new("kvr"), &StreamArgs::default())
        .await
        .unwrap();
    Publisher::new(
        c,
        Subjects::new("kvr"),
        id.into(),
        1,
        Duration::from_secs(5),
    )
    .unwrap()
}

/// Keeps `id` registered at `url` in the registry until the token is cancelled.
async fn register(nats: &str, id: &str, url: &str) -> CancellationToken {
    let c = client(nats, "registrar").await;
    let infra = cache_router_bus::ensure_infra(&c, &Subjects::new("kvr"), &StreamArgs::default())
        .await
        .unwrap();
    let token = CancellationToken::new();
    let info = WorkerInfo {
        id: id.into(),
        url: url.to_owned(),
        model: MODEL.into(),
        block_size: 16,
        epoch: 1,
    };
    tokio::spawn(registry::keep_registered(
        infra.registry,
        info,
        TTL,
        TTL / 3,
        || true,
        token.clone(),
    ));
    token
}

/// Publishes `env` on `subject` through JetStream, as anyone with publish rights can, and
/// returns its stream sequence.
async fn forge(js: &jetstream::Context, subject: String, env: &Envelope) -> u64 {
    js.publish(subject, env.encode().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn metrics(router: &RunningRouter) -> String {
    http_client()
        .get(format!("{}/metrics", router.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn sample(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    prom_text::samples(text)
        .find(|s| s.name == name && label.is_none_or(|(k, v)| s.label(k) == Some(v)))
        .map_or(0.0, |s| s.value)
}

async fn wait_applied(router: &RunningRouter, seq: u64) {
    tokio::time::timeout(patience(), router.fleet().wait_applied(seq))
        .await
        .unwrap_or_else(|_| panic!("the router did not apply the stream up to {seq}"))
        .unwrap();
}

/// Two 100k-block chains against a 100k-entry bound. Eviction used to rescan the worker's
/// whole log per evicted block: `/route` and `/metrics` did not answer for minutes. Now the
/// stream is applied, the bound holds, and routing answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_pushed_twice_past_its_bound_keeps_routing() {
    let nats = NatsServer::start();
    let mut config = routers::nats_router_config(&nats.url());
    config.max_index_entries = Some(100_000);
    let router = routers::spawn(config).await;
    let _reg = register(&nats.url(), "w1", "http://127.0.0.1:9").await;
    let w = worker(&nats.url(), "w1").await;
    let started = Instant::now();
    let mut last = 0;
    for chain in 0..2u64 {
        let mut parent = None;
        for part in 0..100u64 {
            let blocks: Vec<BlockHash> = (0..1000)
                .map(|i| BlockHash((chain + 1) << 40 | (part * 1000 + i + 1)))
                .collect();
            let next = blocks.last().copied();
            last = w
                .publish(Body::Stored { blocks, parent })
                .await
                .unwrap()
                .stream_seq
                .unwrap();
            parent = next;
        }
    }
    wait_applied(&router, last).await;
    let applied_in = started.elapsed();
    let stats = router.fleet().stats().await.unwrap();
    assert!(stats.index.entries <= 100_000, "{:?}", stats.index);
    assert!(stats.index.evictions >= 100_000, "{:?}", stats.index);
    let http = http_client();
    let t = Instant::now();
    let r = http
        .post(format!("{}/route", router.url()))
        .json(&json!({"model": MODEL, "prompt": (100..400).collect::<Vec<u32>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let routed_in = t.elapsed();
    let m = metrics(&router).await;
    assert!(sample(&m, "cache_router_index_evictions_total", None) >= 100_000.0);
    println!(
        "200k blocks applied against a 100k bound in {applied_in:?} ({} evicted, {} log entries \
         examined); /route then answered in {routed_in:?}",
        stats.index.evictions, stats.index.evict_scanned
    );
}

/// One forged sequence number 10^12 ahead used to start an endless resync loop. Now the
/// forged message is dropped after the one resync it causes, the index stays exactly the
/// worker's set, and a burst of forgeries costs a few paced resyncs, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sequence_jump_costs_a_resync_not_a_loop() {
    let nats = NatsServer::start();
    let router = routers::nats_router(&nats.url()).await;
    let h = router.fleet().clone();
    let w = worker(&nats.url(), "w1").await;
    let serving = CancellationToken::new();
    w.serve_resync(serving.clone()).await.unwrap();
    let js = jetstream::new(client(&nats.url(), "forger").await);
    let subject = Subjects::new("kvr").events(&"w1".into());
    let stored = |b: u64| Body::Stored {
        blocks: vec![BlockHash(b)],
        parent: None,
    };
    for b in 1..=20 {
        w.publish(stored(b)).await.unwrap();
    }
    let forged = Envelope::new("w1".into(), 1, 1_000_000_000_000, 0, stored(666));
    forge(&js, subject.clone(), &forged).await;
    let mut last = 0;
    for b in 21..=40 {
        last = w.publish(stored(b)).await.unwrap().stream_seq.unwrap();
    }
    wait_applied(&router, last).await;
    let truth = || async { w.ground_truth().await.2.sorted_blocks() };
    eventually("the router holds exactly the worker's set", || async {
        h.worker_blocks("w1").await.unwrap() == truth().await
    })
    .await;
    let c = h.stats().await.unwrap().counters;
    assert!(!h
        .worker_blocks("w1")
        .await
        .unwrap()
        .contains(&BlockHash(666)));
    assert_eq!(c.resyncs(ResyncCause::Gap), 1, "{c:?}");
    assert_eq!(c.ahead_dropped, 1, "{c:?}");

    // A burst: 30 forged jumps, each followed by a real message.
    for k in 0..30u64 {
        let f = Envelope::new("w1".into(), 1, 2_000_000_000_000 + k, 0, stored(700 + k));
        forge(&js, subject.clone(), &f).await;
        last = w
            .publish(stored(100 + k))
            .await
            .unwrap()
            .stream_seq
            .unwrap();
    }
    wait_applied(&router, last).await;
    eventually("exact again after the burst", || async {
        h.worker_blocks("w1").await.unwrap() == truth().await
    })
    .await;
    let c = h.stats().await.unwrap().counters;
    let burst_resyncs = c.resyncs(ResyncCause::Gap) - 1;
    println!(
        "30 forged jumps cost {burst_resyncs} resyncs ({} forged messages dropped)",
        c.ahead_dropped
    );
    assert!(burst_resyncs < 10, "{c:?}");
    serving.cancel();
}

/// Events from 33,000 invented worker ids used to take all 32,767 worker slots, so a real
/// worker registering afterwards never became routable. Ids nobody registered are held in a
/// small quarantine (1,024) and purged; the real worker gets a slot and serves traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_worker_ids_cannot_take_a_real_workers_slot() {
    let nats = NatsServer::start();
    let router = routers::nats_router(&nats.url()).await;
    let h = router.fleet().clone();
    let js = jetstream::new(client(&nats.url(), "forger").await);
    let subjects = Subjects::new("kvr");
    let mut acks = Vec::with_capacity(1000);
    let mut last = 0;
    for i in 0..33_000u64 {
        let id = format!("fake-{i}");
        let env = Envelope::new(
            id.as_str().into(),
            1,
            1,
            0,
            Body::Stored {
                blocks: vec![BlockHash(i + 1)],
                parent: None,
            },
        );
        acks.push(
            js.publish(
                subjects.events(&id.as_str().into()),
                env.encode().unwrap().into(),
            )
            .await
            .unwrap(),
        );
        // JetStream bounds the acks in flight: collect them a thousand at a time.
        if acks.len() == 1000 || i == 32_999 {
            for a in acks.drain(..) {
                last = last.max(a.await.unwrap().sequence);
            }
        }
    }
    wait_applied(&router, last).await;
    let s = h.stats().await.unwrap();
    assert!(s.workers <= 1024, "{} workers hold slots", s.workers);
    // Each invented id is held in the quarantine, was purged from it, or was dropped.
    let c = &s.counters;
    assert_eq!(
        c.unregistered_dropped + c.unregistered_purged + s.workers as u64,
        33_000,
        "{c:?}"
    );

    let engine = start_engine(EngineSpec::default()).await.unwrap();
    let _reporter = start_reporter(&nats.url(), &engine, &ReporterSpec::new("real"));
    eventually("the real worker is registered", || async {
        h.worker("real")
            .await
            .unwrap()
            .is_some_and(|w| w.info.is_some())
    })
    .await;
    let mut traffic = Traffic::new(5);
    traffic.send(router.url(), 3).await;
    eventually("the router's view of the real worker is exact", || async {
        h.worker_blocks("real").await.unwrap() == traffic.expected(&engine)
    })
    .await;
    let took = eventually("the invented ids are purged", || async {
        h.stats().await.unwrap().workers == 1
    })
    .await;
    let s = h.stats().await.unwrap();
    println!(
        "33,000 invented ids: {} dropped at the quarantine, {} purged (within {took:?} of the \
         real worker serving)",
        s.counters.unregistered_dropped, s.counters.unregistered_purged
    );
    assert!(s.counters.unregistered_purged >= 1000);
}

/// The resync buffer was bounded by message count only: 100,000 messages of any size. Now it
/// is bounded in bytes: a worker whose resync does not answer while big messages pile up loses
/// its buffer and starts over, and the router's buffered bytes stay under the budget; once the
/// reporter answers, the view is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resync_buffer_is_bounded_in_bytes() {
    let nats = NatsServer::start();
    let budget = 1 << 20;
    let mut config = routers::nats_router_config(&nats.url());
    config.max_resync_buffer_bytes = budget;
    let router = routers::spawn(config).await;
    let h = router.fleet().clone();
    let _reg = register(&nats.url(), "w1", "http://127.0.0.1:9").await;
    let w = worker(&nats.url(), "w1").await;
    w.publish(Body::Stored {
        blocks: vec![BlockHash(1)],
        parent: None,
    })
    .await
    .unwrap();
    // A lost message: the router needs a resync, which nobody answers yet.
    w.lose_next(1);
    w.publish(Body::Stored {
        blocks: vec![BlockHash(2)],
        parent: None,
    })
    .await
    .unwrap();
    let mut last = 0;
    for m in 0..40u64 {
        let blocks = (0..4000)
            .map(|i| BlockHash(1_000_000 * (m + 1) + i))
            .collect();
        let r = w
            .publish(Body::Stored {
                blocks,
                parent: None,
            })
            .await
            .unwrap();
        last = r.stream_seq.unwrap();
        let s = h.stats().await.unwrap();
        assert!(
            s.resync_buffered_bytes <= budget,
            "{} bytes buffered",
            s.resync_buffered_bytes
        );
    }
    wait_applied(&router, last).await;
    let s = h.stats().await.unwrap();
    assert!(s.resync_buffered_bytes <= budget);
    assert!(s.counters.buffer_dropped > 0, "{:?}", s.counters);
    assert!(s.counters.resyncs(ResyncCause::BufferOverflow) > 0);
    let m = metrics(&router).await;
    assert!(
        sample(
            &m,
            "cache_router_event_drops_total",
            Some(("reason", "resync_buffer_overflow"))
        ) > 0.0
    );
    // The reporter answers at last: the router converges.
    let serving = CancellationToken::new();
    w.serve_resync(serving.clone()).await.unwrap();
    eventually("exact after the reporter answers", || async {
        h.worker_blocks("w1").await.unwrap() == w.ground_truth().await.2.sorted_blocks()
    })
    .await;
    println!(
        "40 messages of 4,000 blocks against a {budget}-byte buffer: {} dropped, {} overflow \
         resyncs",
        s.counters.buffer_dropped,
        s.counters.resyncs(ResyncCause::BufferOverflow)
    );
    serving.cancel();
}

/// A registry entry whose URL carries a path and query (`/internal/admin?target=`) took 71 of
/// 100 requests, with the client's key. Now such entries are refused and counted, and with
/// `--allow-worker-host` so is any host outside the list; a proper entry still registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_entries_that_are_not_an_allowed_host_port_are_refused() {
    let nats = NatsServer::start();
    let mut config: RouterConfig = routers::nats_router_config(&nats.url());
    config.allowed_worker_hosts =
        AllowList::parse(&["127.0.0.0/8".to_owned(), "*.engines.internal".to_owned()]).unwrap();
    let router = routers::spawn(config).await;
    let h = router.fleet().clone();
    let _evil = register(
        &nats.url(),
        "evil",
        "http://127.0.0.1:9/internal/admin?target=",
    )
    .await;
    let _creds = register(&nats.url(), "creds", "http://user:pw@127.0.0.1:9").await;
    let _away = register(&nats.url(), "away", "http://203.0.113.7:8000").await;
    let _good = register(&nats.url(), "good", "http://127.0.0.1:9").await;
    let _named = register(&nats.url(), "named", "http://gpu-7.engines.internal:8000").await;
    eventually("the good entries are registered", || async {
        let good = h
            .worker("good")
            .await
            .unwrap()
            .is_some_and(|w| w.info.is_some());
        let named = h
            .worker("named")
            .await
            .unwrap()
            .is_some_and(|w| w.info.is_some());
        good && named
    })
    .await;
    eventually("the bad entries are counted", || async {
        let m = metrics(&router).await;
        sample(
            &m,
            "cache_router_registry_rejected_total",
            Some(("reason", "url")),
        ) >= 2.0
            && sample(
                &m,
                "cache_router_registry_rejected_total",
                Some(("reason", "host_not_allowed")),
            ) >= 1.0
    })
    .await;
    for id in ["evil", "creds", "away"] {
        assert!(
            h.worker(id).await.unwrap().and_then(|w| w.info).is_none(),
            "{id} must not be routable"
        );
    }
}

/// `kvr.load.<x>` carrying another worker's id in the envelope moved 30 of 30 picks. Now the
/// envelope must name the subject's worker: the forged report is counted and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_report_naming_another_worker_is_dropped() {
    let nats = NatsServer::start();
    let router = routers::nats_router(&nats.url()).await;
    let h = router.fleet().clone();
    let _a = register(&nats.url(), "wa", "http://127.0.0.1:9").await;
    let _b = register(&nats.url(), "wb", "http://127.0.0.1:10").await;
    let wb = worker(&nats.url(), "wb").await;
    wb.publish_load(Load {
        running: 1,
        ..Load::default()
    })
    .await
    .unwrap();
    eventually("wb's own report applies", || async {
        h.worker("wb")
            .await
            .unwrap()
            .and_then(|w| w.reported_load)
            .is_some_and(|l| l.running == 1)
    })
    .await;
    let c = client(&nats.url(), "forger").await;
    let forged = Envelope::new(
        "wb".into(),
        1,
        0,
        0,
        Body::Load(Load {
            running: 500,
            waiting: 500,
            ..Load::default()
        }),
    );
    c.publish("kvr.load.wa", forged.encode().unwrap().into())
        .await
        .unwrap();
    c.flush().await.unwrap();
    eventually("the forged report is counted", || async {
        router.counters().subject_mismatch() >= 1
    })
    .await;
    let load = h.worker("wb").await.unwrap().and_then(|w| w.reported_load);
    assert_eq!(
        load.map(|l| l.running),
        Some(1),
        "wb's load was not overwritten"
    );
    assert!(h
        .worker("wa")
        .await
        .unwrap()
        .and_then(|w| w.reported_load)
        .is_none());
}

/// A router restarted under traffic used to answer 503 `no_workers` until it had read the
/// registry. Requests that arrive before it is ready now wait for it (briefly) instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_right_after_a_restart_wait_for_the_registry_instead_of_503() {
    let nats = NatsServer::start();
    let mut engines = Vec::new();
    let mut reporters = Vec::new();
    for i in 0..2 {
        let e = start_engine(EngineSpec::default()).await.unwrap();
        reporters.push(start_reporter(
            &nats.url(),
            &e,
            &ReporterSpec::new(&format!("w{i}")),
        ));
        engines.push(e);
    }
    let first = routers::nats_router(&nats.url()).await;
    let fh = first.fleet().clone();
    eventually("both workers registered", || async {
        fh.stats().await.unwrap().registered == 2
    })
    .await;
    let mut traffic = Traffic::new(9);
    traffic.send(first.url(), 10).await;
    first.abort().await;

    let second = routers::nats_router(&nats.url()).await;
    let http = http_client();
    let sends = (0..20).map(|_| {
        let tokens = traffic.next_prompt();
        let (http, url) = (http.clone(), format!("{}/v1/completions", second.url()));
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"model": MODEL, "prompt": tokens, "max_tokens": 2}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for s in sends.collect::<Vec<_>>() {
        statuses.push(s.await.unwrap());
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    println!(
        "20 requests sent the moment the restarted router bound: all 200 (ready after {} ms)",
        second.counters().recovery_ms()
    );
}
