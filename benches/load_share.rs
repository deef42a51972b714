//! Router replicas sharing their in-flight load: two routers on one NATS, four mock vLLM
//! engines with reporters, and a burst of requests that all share one new long prefix, sent
//! alternately to the two routers. Run once with load sharing off (each router counts only its
//! own requests) and once on (each also counts the other's, from its reports), on a fresh
//! prefix each time; prints how the burst spread over the engines (requests per engine,
//! imbalance = max / mean) and the time to first byte. `cargo bench --bench load_share`.
//!
//! Everything binds 127.0.0.1; the request count and every wait are bounded. Checks: every
//! request of both runs succeeds and is counted once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::join_all;

use cache_router::RunningRouter;
use cache_router_testkit::engines::{start_engine, start_reporter, EngineSpec, ReporterSpec};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::{eventually, http_client, routers, small_mode, MODEL};

const ENGINES: usize = 4;

struct Plan {
    requests: usize,
    /// Between two arrivals (alternating routers).
    gap: Duration,
    prefix_words: usize,
    max_tokens: u64,
    speedup: f64,
}

impl Plan {
    fn new(small: bool) -> Plan {
        if small {
            Plan {
                requests: 12,
                gap: Duration::from_millis(40),
                prefix_words: 300,
                max_tokens: 16,
                speedup: 20.0,
            }
        } else {
            Plan {
                requests: 48,
                gap: Duration::from_millis(60),
                prefix_words: 1500,
                max_tokens: 120,
                speedup: 2.0,
            }
        }
    }
}

#[derive(Debug, Default)]
struct Run {
    by_worker: BTreeMap<String, usize>,
    ttft_ms: Vec<f64>,
    cached_tokens: u64,
    failed: usize,
}

async fn router(nats: &str, id: &str, share: Duration) -> RunningRouter {
    let mut c = routers::nats_router_config(nats);
    // As deployed: speculation on, so a burst of one prefix sticks together unless load says
    // otherwise.
    c.speculation = Some((1_000_000, Duration::from_secs(2), 4));
    let n = c.nats.as_mut().unwrap();
    n.router_id = id.to_owned();
    n.load_share_interval = share;
    routers::spawn(c).await
}

/// Sends the burst: request k to router k % 2, `gap` apart, each streamed; returns where each
/// went and its time to first byte.
async fn burst(urls: &[String; 2], plan: &Plan, tag: &str) -> Run {
    let prefix: String = (0..plan.prefix_words)
        .map(|i| format!("w{tag}{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let http = http_client();
    let start = Instant::now();
    let sends = (0..plan.requests).map(|k| {
        let (http, url) = (http.clone(), urls[k % 2].clone());
        let body = serde_json::json!({
            "model": MODEL,
            "prompt": format!("{prefix} question {k}"),
            "max_tokens": plan.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let at = start + plan.gap * k as u32;
        async move {
            tokio::time::sleep_until(at.into()).await;
            let sent = Instant::now();
            let mut resp = http
                .post(format!("{url}/v1/completions"))
                .json(&body)
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .ok()?;
            let worker = resp
                .headers()
                .get("x-cache-router-worker")?
                .to_str()
                .ok()?
                .to_owned();
            let first = resp.chunk().await.ok()??;
            let ttft = sent.elapsed();
            let mut text = String::from_utf8_lossy(&first).into_owned();
            while let Some(c) = resp.chunk().await.ok()? {
                text.push_str(&String::from_utf8_lossy(&c));
            }
            let cached = text
                .lines()
                .rev()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .filter_map(|v| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64())
                .next()
                .unwrap_or(0);
            text.contains("[DONE]").then_some((worker, ttft, cached))
        }
    });
    let mut run = Run::default();
    for r in join_all(sends).await {
        match r {
            Some((w, ttft, cached)) => {
                *run.by_worker.entry(w).or_default() += 1;
                run.ttft_ms.push(ttft.as_secs_f64() * 1e3);
                run.cached_tokens += cached;
            }
            None => run.failed += 1,
        }
    }
    run.ttft_ms.sort_by(f64::total_cmp);
    run
}

fn pct(v: &[f64], p: f64) -> f64 {
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn imbalance(r: &Run, workers: usize) -> f64 {
    let total: usize = r.by_worker.values().sum();
    let max = r.by_worker.values().copied().max().unwrap_or(0);
    max as f64 / (total as f64 / workers as f64)
}

fn main() {
    let small = small_mode();
    let plan = Plan::new(small);
    println!(
        "load_share bench ({}): 2 routers, {ENGINES} engines, {} requests of one new {}-word \
         prefix, {} ms apart, alternating routers",
        if small { "small/test mode" } else { "full" },
        plan.requests,
        plan.prefix_words,
        plan.gap.as_millis()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let nats = NatsServer::start();
        let mut engines = Vec::new();
        let mut reporters = Vec::new();
        for i in 0..ENGINES {
            let e = start_engine(EngineSpec {
                num_blocks: 4000,
                speedup: plan.speedup,
                ..EngineSpec::default()
            })
            .await
            .expect("an engine");
            reporters.push(start_reporter(
                &nats.url(),
                &e,
                &ReporterSpec::new(&format!("engine-{i}")),
            ));
            engines.push(e);
        }
        let mut rows = Vec::new();
        for (label, share) in [
            ("sharing off", Duration::ZERO),
            ("sharing on (250 ms)", Duration::from_millis(250)),
        ] {
            let a = router(&nats.url(), "router-a", share).await;
            let b = router(&nats.url(), "router-b", share).await;
            for r in [&a, &b] {
                eventually("the router sees every engine", || async {
                    r.fleet()
                        .stats()
                        .await
                        .is_ok_and(|s| s.registered == ENGINES)
                })
                .await;
            }
            let urls = [a.url().to_owned(), b.url().to_owned()];
            let run = burst(&urls, &plan, &format!("{}", rows.len())).await;
            assert_eq!(run.failed, 0, "{label}: requests failed");
            assert_eq!(
                run.by_worker.values().sum::<usize>(),
                plan.requests,
                "{label}: every request counted once"
            );
            rows.push((label, run));
            a.stop().await.expect("router a stops");
            b.stop().await.expect("router b stops");
        }
        println!(
            "{:<22} {:>28} {:>10} {:>10} {:>10} {:>13}",
            "", "requests per engine", "imbalance", "TTFT p50", "TTFT p99", "cached tokens"
        );
        for (label, r) in &rows {
            let per: Vec<String> = (0..ENGINES)
                .map(|i| {
                    r.by_worker
                        .get(&format!("engine-{i}"))
                        .copied()
                        .unwrap_or(0)
                        .to_string()
                })
                .collect();
            println!(
                "{:<22} {:>28} {:>10.2} {:>8.0}ms {:>8.0}ms {:>13}",
                label,
                per.join(" / "),
                imbalance(r, ENGINES),
                pct(&r.ttft_ms, 0.5),
                pct(&r.ttft_ms, 0.99),
                r.cached_tokens
            );
        }
        drop(reporters);
    });
}
