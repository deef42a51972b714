//! End to end through the router: two mock vLLM engines, each with its own reporter on a real
//! nats-server, and the router's HTTP app in-process with NATS discovery and the cache-aware
//! policy. A repeated prompt must go back to the engine that cached it, and hit its cache.

use serde_json::Value;

use cache_router::proxy::WORKER_HEADER;
use cache_router::FleetHandle;
use cache_router_core::prom_text;
use cache_router_testkit::engines::{
    start_engine, start_reporter, Engine, EngineSpec, ReporterSpec,
};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::{eventually, routers, BLOCK_SIZE as BS, MODEL};

async fn registered_workers(fleet: &FleetHandle) -> usize {
    fleet.stats().await.map_or(0, |s| s.registered)
}

/// POSTs a completion through the router; returns the serving worker and the response body.
async fn complete(http: &reqwest::Client, router: &str, prompt: &str) -> (String, Value) {
    let resp = http
        .post(format!("{router}/v1/completions"))
        .json(&serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let worker = resp
        .headers()
        .get(WORKER_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    (worker.expect("the router names the serving worker"), body)
}

/// The engine's `vllm:prefix_cache_hits_total` from its /metrics.
async fn metric_hits(http: &reqwest::Client, engine: &Engine) -> f64 {
    let text = http
        .get(format!("{}/metrics", engine.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    prom_text::sum(&text, "vllm:prefix_cache_hits_total")
        .expect("vllm:prefix_cache_hits_total in the engine's /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_lands_on_the_same_engine_and_hits_its_cache() {
    let nats = NatsServer::start();
    let running = routers::nats_router(&nats.url()).await;
    let (router, fleet) = (running.url().to_owned(), running.fleet().clone());
    let spec = || EngineSpec {
        num_blocks: 2000,
        replay: false,
        ..EngineSpec::default()
    };
    let engines = [
        ("w1", start_engine(spec()).await.unwrap()),
        ("w2", start_engine(spec()).await.unwrap()),
    ];
    let _reporters: Vec<_> = engines
        .iter()
        .map(|(id, e)| {
            let rs = ReporterSpec {
                replay: false,
                ..ReporterSpec::new(id)
            };
            start_reporter(&nats.url(), e, &rs)
        })
        .collect();

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually(
        "both workers are registered and the router is ready",
        || async {
            let ready = http
                .get(format!("{router}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            ready && registered_workers(&fleet).await == 2
        },
    )
    .await;

    let prompt: String = (0..30)
        .map(|i| {
            format!(
                "Paragraph {i} describes item {} in the inventory list. ",
                i * 7 + 3
            )
        })
        .collect();

    let (first, body) = complete(&http, &router, &prompt).await;
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert!(
        prompt_tokens >= 250,
        "prompt is only {prompt_tokens} tokens"
    );
    let full_blocks = prompt_tokens / BS;
    let engine = |id: &str| {
        &engines
            .iter()
            .find(|(w, _)| *w == id)
            .expect("known worker")
            .1
    };

    // The first request's blocks reach the router's index through ZMQ → reporter → NATS.
    eventually(
        "the router's index holds the first request's blocks",
        || async { fleet.worker_blocks(&first).await.map_or(0, |b| b.len()) >= full_blocks },
    )
    .await;

    let stats_before: Vec<_> = engines.iter().map(|(_, e)| e.mock.engine.stats()).collect();
    let metric_before = metric_hits(&http, engine(&first)).await;

    let (second, body) = complete(&http, &router, &prompt).await;
    assert_eq!(
        second, first,
        "the repeated request must go to the engine that cached it"
    );

    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    assert!(cached > 0, "no cached tokens reported: {body}");
    for ((id, e), before) in engines.iter().zip(&stats_before) {
        let after = e.mock.engine.stats();
        if *id == first {
            assert!(
                after.prefix_cache_hits_tokens > before.prefix_cache_hits_tokens,
                "{id}: prefix cache hits did not go up ({} -> {})",
                before.prefix_cache_hits_tokens,
                after.prefix_cache_hits_tokens
            );
        } else {
            assert_eq!(
                after.prefix_cache_hits_tokens, before.prefix_cache_hits_tokens,
                "{id} served nothing"
            );
        }
    }
    let metric_after = metric_hits(&http, engine(&first)).await;
    assert!(
        metric_after > metric_before,
        "vllm:prefix_cache_hits_total did not go up ({metric_before} -> {metric_after})"
    );
}
