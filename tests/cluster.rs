//! Cluster faults under streaming traffic: a 3-node NATS JetStream cluster of containers on a
//! private Docker network (event stream, registry and snapshots replicated 3 times), two
//! routers, four mock vLLM engines each with its reporter (those on the host, reaching the
//! nodes on their published loopback ports), and streamed completions through both routers
//! the whole time.
//!
//! One scenario after another on the same fleet: a node killed then restarted; a node cut off
//! the network then healed; all three nodes restarted in turn; a router crashed and started
//! again while a node is down. After each: no client request failed, and both routers' views
//! of every worker equal the engines' caches. The time each took to converge, and the
//! restarted router's time to ready, are printed. Needs Docker and the locally built
//! `cache-router/nats` image (`bash docker/build.sh`); without them the test says so and
//! checks nothing (in CI, `CACHE_ROUTER_TEST_NATS=docker` makes that a failure).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use cache_router::{RouterConfig, RunningRouter};
use cache_router_testkit::cluster::NatsCluster;
use cache_router_testkit::engines::{
    start_engine, start_reporter, Engine, EngineSpec, ReporterSpec,
};
use cache_router_testkit::nats::{self, Backend};
use cache_router_testkit::traffic::{stream_completions, StreamCounts, Traffic};
use cache_router_testkit::{eventually, http_client, routers};

const ENGINES: usize = 4;
/// How long a fault lasts under traffic before it is repaired.
const FAULT: Duration = Duration::from_secs(3);

const ADMIN: &str = "cluster-admin";

fn router_config(urls: &str, id: &str) -> RouterConfig {
    let mut c = routers::nats_router_config(urls);
    c.admin_token = Some(ADMIN.into());
    let n = c.nats.as_mut().unwrap();
    n.limits.nats_replicas = 3;
    n.router_id = id.to_owned();
    // The registry TTL must outlast a node's leader election.
    n.limits.registry_ttl = Duration::from_secs(5);
    c
}

/// Both routers' views of every worker equal the engines' caches.
async fn converged(
    a: &RunningRouter,
    b: &RunningRouter,
    engines: &[Engine],
    traffic: &Mutex<Traffic>,
) -> bool {
    let t = traffic.lock().await;
    for (i, e) in engines.iter().enumerate() {
        let want = t.expected(e);
        for r in [a, b] {
            match r.fleet().worker_blocks(&format!("engine-{i}")).await {
                Ok(got) if got == want => {}
                _ => return false,
            }
        }
    }
    true
}

/// Waits until [`converged`]; on timeout, says what each router holds against each engine.
async fn converge(
    what: &str,
    a: &RunningRouter,
    b: &RunningRouter,
    engines: &[Engine],
    traffic: &Mutex<Traffic>,
) -> Duration {
    let started = Instant::now();
    let deadline = started + cache_router_testkit::patience();
    while Instant::now() < deadline {
        if converged(a, b, engines, traffic).await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = traffic.lock().await;
    let mut report = String::new();
    for (i, e) in engines.iter().enumerate() {
        let id = format!("engine-{i}");
        let want = t.expected(e);
        for (name, r) in [("a", a), ("b", b)] {
            let got = r.fleet().worker_blocks(&id).await.unwrap_or_default();
            let view = r.fleet().worker(&id).await.ok().flatten();
            report.push_str(&format!(
                "  router {name} {id}: holds {} of {} blocks ({} in common); epoch {:?} seq {:?} resyncing {:?}\n",
                got.len(),
                want.len(),
                got.iter().filter(|b| want.binary_search(b).is_ok()).count(),
                view.as_ref().map(|v| v.epoch),
                view.as_ref().map(|v| v.last_seq),
                view.as_ref().map(|v| v.resyncing),
            ));
        }
    }
    for (name, r) in [("a", a), ("b", b)] {
        if let Ok(s) = r.fleet().stats().await {
            report.push_str(&format!(
                "  router {name}: stream seq {}, counters {:?}\n",
                r.fleet().applied_stream_seq(),
                s.counters
            ));
        }
    }
    panic!(
        "not {what} within {:?}:\n{report}",
        cache_router_testkit::patience()
    );
}

#[derive(Debug)]
struct Outcome {
    scenario: &'static str,
    sent: u64,
    failed: u64,
    converged_after: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_faults_under_streaming_traffic() {
    if nats::backend() != Backend::Container {
        eprintln!(
            "cluster scenarios need Docker and cache-router/nats (bash docker/build.sh): not run"
        );
        return;
    }
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let a = routers::spawn(router_config(&urls, "router-a")).await;
    let mut b = routers::spawn(router_config(&urls, "router-b")).await;
    let mut engines = Vec::new();
    let mut reporters = Vec::new();
    for i in 0..ENGINES {
        let e = start_engine(EngineSpec {
            num_blocks: 64,
            ..EngineSpec::default()
        })
        .await
        .unwrap();
        let spec = ReporterSpec {
            registry_ttl: Duration::from_secs(5),
            extra_args: vec!["--nats-replicas".into(), "3".into()],
            ..ReporterSpec::new(&format!("engine-{i}"))
        };
        reporters.push(start_reporter(&urls, &e, &spec));
        engines.push(e);
    }
    eventually("both routers see every engine", || async {
        let mut ok = true;
        for r in [&a, &b] {
            ok &= r
                .fleet()
                .stats()
                .await
                .is_ok_and(|s| s.registered == ENGINES);
        }
        ok
    })
    .await;

    let router_urls = Arc::new(Mutex::new(vec![a.url().to_owned(), b.url().to_owned()]));
    let traffic = Arc::new(Mutex::new(Traffic::new(11)));
    let counts = Arc::new(StreamCounts::default());
    let stop = CancellationToken::new();
    let load = tokio::spawn(stream_completions(
        router_urls.clone(),
        traffic.clone(),
        counts.clone(),
        stop.clone(),
    ));
    eventually("traffic flows", || async {
        counts.sent.load(Ordering::Relaxed) >= 50
    })
    .await;

    let mut outcomes = Vec::new();
    let mut last = (0, 0);
    let mut record = |scenario, took, outcomes: &mut Vec<Outcome>| {
        let (sent, failed) = (
            counts.sent.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        outcomes.push(Outcome {
            scenario,
            sent: sent - last.0,
            failed: failed - last.1,
            converged_after: took,
        });
        last = (sent, failed);
    };

    // 1. A node crashes under traffic and comes back.
    cluster.kill(0);
    tokio::time::sleep(FAULT).await; // the fault lasts while traffic runs
    cluster.start_node(0);
    let took = converge("converged after a node restart", &a, &b, &engines, &traffic).await;
    record("node killed, restarted", took, &mut outcomes);

    // 2. A node is cut off the network (from peers and clients) and healed.
    cluster.partition(1);
    tokio::time::sleep(FAULT).await;
    cluster.heal(1);
    let took = converge("converged after a partition", &a, &b, &engines, &traffic).await;
    record("node partitioned, healed", took, &mut outcomes);

    // 3. A rolling restart of every node.
    for i in 0..cluster.len() {
        cluster.kill(i);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.start_node(i);
    }
    let took = converge(
        "converged after a rolling restart",
        &a,
        &b,
        &engines,
        &traffic,
    )
    .await;
    record("rolling restart of 3 nodes", took, &mut outcomes);

    // 4. A router crashes while a node is down, and starts again from snapshot + replay.
    cluster.kill(2);
    router_urls.lock().await.retain(|u| u != b.url());
    // The traffic sends one request at a time: two more sent means none is still on B, so
    // the crash fails no client request (a crash does fail those in flight on it).
    let sent = counts.sent.load(Ordering::Relaxed);
    eventually("B's last request finished", || async {
        counts.sent.load(Ordering::Relaxed) >= sent + 2
    })
    .await;
    b.abort().await;
    let started = Instant::now();
    b = routers::spawn(router_config(&urls, "router-b")).await;
    b.fleet().wait_ready().await.unwrap();
    let ready_after = started.elapsed();
    router_urls.lock().await.push(b.url().to_owned());
    cluster.start_node(2);
    let took = converge(
        "converged after a router restart",
        &a,
        &b,
        &engines,
        &traffic,
    )
    .await;
    record(
        "router crashed + restarted, a node down",
        took,
        &mut outcomes,
    );

    stop.cancel();
    load.await.unwrap();
    // 5. Both routers hold the same index, worker by worker: their /admin/index digests
    //    agree, and so do the block lists behind them.
    let digests = |r: &RunningRouter| {
        let url = format!("{}/admin/index", r.url());
        async move {
            let v: serde_json::Value = http_client()
                .get(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["workers"].clone()
        }
    };
    let (da, db) = (digests(&a).await, digests(&b).await);
    assert_eq!(da.as_object().map(|m| m.len()), Some(ENGINES), "{da}");
    assert_eq!(da, db, "the routers' /admin/index digests differ");
    for i in 0..ENGINES {
        let id = format!("engine-{i}");
        assert_eq!(
            a.fleet().worker_blocks(&id).await.unwrap(),
            b.fleet().worker_blocks(&id).await.unwrap(),
            "{id}: the two routers disagree"
        );
    }

    println!(
        "{:<42} {:>6} {:>7} {:>13}",
        "scenario", "sent", "failed", "converged in"
    );
    for o in &outcomes {
        println!(
            "{:<42} {:>6} {:>7} {:>11.0}ms",
            o.scenario,
            o.sent,
            o.failed,
            o.converged_after.as_secs_f64() * 1e3
        );
    }
    println!(
        "restarted router ready in {:.0} ms",
        ready_after.as_secs_f64() * 1e3
    );
    for o in &outcomes {
        assert_eq!(
            o.failed,
            0,
            "{}: client requests failed, e.g. {:?}",
            o.scenario,
            counts.examples.lock().unwrap()
        );
        assert!(o.sent > 0, "{}: no traffic", o.scenario);
    }
    drop(reporters);
}
