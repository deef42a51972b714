//! End to end through the whole router on a real socket: the real DeepSeek tokenizer, the
//! fleet actor, the policy, the proxy, and small scripted engines over loopback. Routers are
//! started through the library (`Router::spawn`).

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use cache_router::tokenize::{ModelTokenizer, Models, TokenizerConfig};
use cache_router::{RouterConfig, RunningRouter};
use cache_router_core::policy::PolicyKind;
use cache_router_core::protocol::{Body, Envelope, Load};
use cache_router_testkit::scripted_engine::{Engine, Reply};
use cache_router_testkit::{eventually, routers, tokenizer};

const MODEL: &str = "deepseek-test";
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const ADMIN: &str = "tok";

fn model_tokenizer() -> ModelTokenizer {
    let tok = tokenizers::Tokenizer::from_file(tokenizer::tokenizer_file()).unwrap();
    ModelTokenizer::new(
        tok,
        TokenizerConfig::default(),
        Some((CHATML.into(), "chatml".into())),
    )
    .unwrap()
    .with_model(MODEL, 16)
}

struct Router {
    running: RunningRouter,
    base: String,
    client: reqwest::Client,
}

async fn start_router(engines: &[(&str, &Engine)], policy: PolicyKind) -> Router {
    let with_model: Vec<(&str, &Engine, &str)> =
        engines.iter().map(|(id, e)| (*id, *e, MODEL)).collect();
    start_router_models(&with_model, policy).await
}

async fn start_router_models(engines: &[(&str, &Engine, &str)], policy: PolicyKind) -> Router {
    let mut models = Models::new();
    for (_, _, model) in engines {
        models.insert(
            (*model).into(),
            std::sync::Arc::new(model_tokenizer().with_model(*model, 16)),
        );
    }
    let mut config = RouterConfig::new(models);
    config.static_workers = engines
        .iter()
        .map(|(id, e, model)| routers::worker(id, &e.url(), model))
        .collect();
    config.policy = policy;
    config.speculation = Some((100_000, Duration::from_secs(60), 1));
    config.max_body_bytes = 64 * 1024;
    config.admin_token = Some(ADMIN.into());
    let running = routers::spawn(config).await;
    Router {
        base: running.url().to_owned(),
        running,
        client: cache_router_testkit::http_client(),
    }
}

impl Router {
    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Option<String>, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        let worker = r
            .headers()
            .get("x-cache-router-worker")
            .map(|v| v.to_str().unwrap().to_owned());
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, worker, v)
    }

    /// `/admin/workers`, as an operator reads it.
    async fn admin_workers(&self) -> Value {
        self.client
            .get(format!("{}/admin/workers", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The router's own in-flight requests to worker `id` (from `/admin/workers`).
    async fn in_flight(&self, id: &str) -> u64 {
        let v = self.admin_workers().await;
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .and_then(|w| w["in_flight"]["requests"].as_u64())
            .unwrap()
    }

    async fn stop(self) {
        self.running.stop().await.unwrap();
    }
}

fn long_prompt(topic: &str) -> String {
    format!("{topic}: ")
        + &"The quick brown fox jumps over the lazy dog again and again. ".repeat(30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_prefix_sticks_to_its_worker_and_a_new_prefix_goes_to_least_cost() {
    let a = Engine::start(Reply::Echo).await;
    let b = Engine::start(Reply::Echo).await;
    let r = start_router(&[("a", &a), ("b", &b)], PolicyKind::CacheAware).await;
    let req = json!({"model": MODEL, "prompt": long_prompt("alpha"), "max_tokens": 4});
    let (s, first, echoed) = r.post("/v1/completions", &req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(echoed, req, "the engine got the original body");
    let first = first.unwrap();
    // The repeat goes where the prefix now lives (speculation until events confirm it).
    for _ in 0..5 {
        let (s, w, _) = r.post("/v1/completions", &req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(w.as_deref(), Some(first.as_str()));
    }
    // /route explains it: the chosen worker holds every block of the prompt.
    let (s, _, d) = r.post("/route", &req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["chosen"]["worker"], first);
    let blocks = d["blocks"].as_u64().unwrap();
    assert!(blocks >= 20, "{d}");
    assert_eq!(d["chosen"]["overlap"].as_u64(), Some(blocks));
    assert_eq!(d["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(d["policy"], "cache-aware");
    // A new prefix goes to the least-cost worker: the one not loaded by a long stream.
    let other = if first == "a" { "b" } else { "a" };
    // The worker holding alpha reports being busy (as its reporter's load report would).
    r.running
        .fleet()
        .report_load(
            &first,
            Load {
                running: 500,
                waiting: 0,
                kv_usage: 0.5,
                num_blocks: None,
            },
        )
        .await
        .unwrap();
    let (s, w, _) = r
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": long_prompt("beta")}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(w.as_deref(), Some(other));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_the_index_learned_from_events_is_routed_to_its_holder() {
    let a = Engine::start(Reply::Echo).await;
    let b = Engine::start(Reply::Echo).await;
    let r = start_router(&[("a", &a), ("b", &b)], PolicyKind::CacheAware).await;
    let messages = json!([
        {"role": "system", "content": "You are a careful assistant. ".repeat(20)},
        {"role": "user", "content": "Summarize the history of the printing press in detail."}
    ]);
    // Worker b reports (as its reporter would) that it stored this chat's blocks.
    let tok = model_tokenizer();
    let msgs: Vec<cache_router::tokenize::ChatMessage> =
        serde_json::from_value(messages.clone()).unwrap();
    let ids = tok.encode_chat(&msgs).unwrap();
    let mut hashes = Vec::new();
    tok.block_hashes(&ids, &mut hashes);
    assert!(hashes.len() > 5);
    let stored = hashes.clone();
    r.running
        .fleet()
        .apply(
            1,
            Envelope::new(
                "b".into(),
                1,
                1,
                0,
                Body::Stored {
                    blocks: stored,
                    parent: None,
                },
            ),
        )
        .await
        .unwrap();
    let req = json!({"model": MODEL, "messages": messages, "stream": false});
    let (s, _, d) = r.post("/route", &req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["chosen"]["worker"], "b", "{d}");
    assert_eq!(d["chosen"]["overlap"].as_u64(), Some(hashes.len() as u64));
    let (s, w, _) = r.post("/v1/chat/completions", &req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(w.as_deref(), Some("b"));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving() {
    let a = Engine::start(Reply::Echo).await;
    let r = start_router(&[("a", &a)], PolicyKind::Approx).await;
    let raw = |body: Vec<u8>| {
        let c = r.client.clone();
        let url = format!("{}/v1/completions", r.base);
        async move {
            let resp = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "malformed JSON"),
        (br#"{"prompt":"x"}"#.to_vec(), 400, "model"),
        (br#"{"model":"deepseek-test"}"#.to_vec(), 400, "prompt"),
        (
            br#"{"model":"deepseek-test","prompt":7}"#.to_vec(),
            400,
            "prompt",
        ),
        (
            br#"{"model":"deepseek-test","prompt":"x","stream":"yes"}"#.to_vec(),
            400,
            "stream",
        ),
        (br#"{"model":"other","prompt":"x"}"#.to_vec(), 404, "other"),
        (
            format!(
                r#"{{"model":"deepseek-test","prompt":"{}"}}"#,
                "x".repeat(100_000)
            )
            .into_bytes(),
            413,
            "exceeds the limit",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, v) = raw(body).await;
        assert_eq!(s, status, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "{msg:?} should mention {needle:?}"
        );
        assert!(v["error"]["type"].is_string());
    }
    // Still serving, and nothing leaked into the in-flight counts.
    let (s, w, _) = r
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "hello"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(w.as_deref(), Some("a"));
    assert_eq!(r.in_flight("a").await, 0);
    // Models and admin views.
    let models: Value = r
        .client
        .get(format!("{}/v1/models", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    let denied = r
        .client
        .get(format!("{}/admin/workers", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    let admin = r.admin_workers().await;
    assert_eq!(admin["workers"][0]["id"], "a");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chat_passes_through_the_router() {
    let a = Engine::start(Reply::Sse {
        count: Some(5),
        first_delay: Duration::ZERO,
        gap: Duration::from_millis(20),
    })
    .await;
    let r = start_router(&[("a", &a)], PolicyKind::CacheAware).await;
    let resp = r
        .client
        .post(format!("{}/v1/chat/completions", r.base))
        .json(&json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    for k in 0..5 {
        assert!(text.contains(&format!("\"k\":{k}")), "{text}");
    }
    assert!(text.contains("[DONE]"));
    // The guard is released once the body finished.
    eventually(
        "the streamed request leaves the in-flight count",
        || async { r.in_flight("a").await == 0 },
    )
    .await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_in_the_request_selects_its_tokenizer_and_its_workers() {
    let a = Engine::start(Reply::Echo).await;
    let b = Engine::start(Reply::Echo).await;
    let r = start_router_models(
        &[("a", &a, MODEL), ("b", &b, "second-model")],
        PolicyKind::CacheAware,
    )
    .await;
    let models: Value = r
        .client
        .get(format!("{}/v1/models", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL, "second-model"]);
    for _ in 0..4 {
        let (s, w, _) = r
            .post(
                "/v1/completions",
                &json!({"model": "second-model", "prompt": long_prompt("x")}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(w.as_deref(), Some("b"));
        let (s, w, _) = r
            .post(
                "/v1/completions",
                &json!({"model": MODEL, "prompt": long_prompt("x")}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(w.as_deref(), Some("a"));
    }
    // Same text, different model: different hash namespaces, so no cross-model overlap.
    let (_, _, d) = r
        .post(
            "/route",
            &json!({"model": "second-model", "prompt": long_prompt("x")}),
        )
        .await;
    assert_eq!(d["candidates"].as_array().unwrap().len(), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_needs_a_live_worker() {
    let e = Engine::start(Reply::Echo).await;
    let r = start_router(&[("a", &e)], PolicyKind::Approx).await;
    let get = |path: &'static str| {
        let (c, base) = (r.client.clone(), r.base.clone());
        async move {
            c.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/ready").await, 200);
    r.running.fleet().deregister("a").await.unwrap();
    assert_eq!(get("/health").await, 200);
    assert_eq!(get("/ready").await, 503, "caught up but no worker");
    r.running
        .fleet()
        .register(routers::worker("late", &e.url(), MODEL))
        .await
        .unwrap();
    assert_eq!(get("/ready").await, 200);
    r.stop().await;
}

/// One liveness record for routing and the proxy: a worker whose engine refuses connections
/// is ejected by the failed attempt (the request fails over and succeeds), and from then on
/// `/route` does not rank it, though it still holds the prompt's whole prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_is_ejected_and_route_stops_ranking_it() {
    let ok = Engine::start(Reply::Echo).await;
    let dead_url = format!(
        "http://127.0.0.1:{}",
        cache_router_testkit::scripted_engine::closed_port()
    );
    let mut models = Models::new();
    models.insert(MODEL.into(), std::sync::Arc::new(model_tokenizer()));
    let mut config = RouterConfig::new(models);
    config.static_workers = vec![
        routers::worker("dead", &dead_url, MODEL),
        routers::worker("ok", &ok.url(), MODEL),
    ];
    config.policy = PolicyKind::CacheAware;
    config.speculation = None;
    config.admin_token = Some(ADMIN.into());
    config.ejection.failures_to_eject = 1;
    let running = routers::spawn(config).await;
    let r = Router {
        base: running.url().to_owned(),
        running,
        client: cache_router_testkit::http_client(),
    };
    // The dead worker holds the prompt's prefix, so it is ranked first.
    let prompt = long_prompt("gamma");
    let tok = model_tokenizer();
    let ids = tok.encode_prompt(&prompt).unwrap();
    let mut hashes = Vec::new();
    tok.block_hashes(&ids, &mut hashes);
    r.running
        .fleet()
        .apply(
            1,
            Envelope::new(
                "dead".into(),
                1,
                1,
                0,
                Body::Stored {
                    blocks: hashes,
                    parent: None,
                },
            ),
        )
        .await
        .unwrap();
    let req = json!({"model": MODEL, "prompt": prompt});
    let (_, _, d) = r.post("/route", &req).await;
    assert_eq!(d["chosen"]["worker"], "dead", "{d}");

    let (s, w, _) = r.post("/v1/completions", &req).await;
    assert_eq!(s, StatusCode::OK, "failed over");
    assert_eq!(w.as_deref(), Some("ok"));

    let (_, _, d) = r.post("/route", &req).await;
    let ranked: Vec<&str> = d["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["worker"].as_str().unwrap())
        .collect();
    assert_eq!(ranked, ["ok"], "the ejected worker is not ranked: {d}");
    let admin = r.admin_workers().await;
    let dead = &admin["workers"][0];
    assert_eq!(dead["id"], "dead");
    assert_eq!(dead["liveness"]["ejections"], 1, "{admin}");
    assert!(dead["liveness"]["ejected_for_ms"].as_u64().unwrap() > 0);
    r.stop().await;
}
