//! The mock engine (`cache-router mock-worker`) end to end over real HTTP on 127.0.0.1 with
//! the real tokenizer fixture: vLLM's API, metrics and KV events.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_util::sync::CancellationToken;

use cache_router::mock::{engine_block_hashes, router, AppState, MockEngine, MockWorkerArgs};
use cache_router_core::kv_events::{EngineHash, KvEvent, KvEventBatch};
use cache_router_core::prom_text;

fn tokenizer_dir() -> PathBuf {
    cache_router_testkit::tokenizer::deepseek_dir()
}

struct Mock {
    base: String,
    state: Arc<AppState>,
    events: UnboundedReceiver<KvEventBatch>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(num_blocks: usize) -> Mock {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: MockWorkerArgs,
    }
    let dir = tokenizer_dir();
    let cli = Cli::try_parse_from([
        "mock".to_string(),
        "--model-dir".into(),
        dir.display().to_string(),
        "--chat-template".into(),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/templates/deepseek.jinja"
        )
        .into(),
        "--num-blocks".into(),
        num_blocks.to_string(),
        "--speedup".into(),
        "1e12".into(),
    ])
    .unwrap();
    let (tx, rx) = unbounded_channel();
    let state = AppState::from_args(&cli.args, Some(tx)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let app = router(Arc::clone(&state));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Mock {
        base,
        state,
        events: rx,
        client: reqwest::Client::new(),
        shutdown,
    }
}

impl Mock {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        prom_text::sum(&text, name).unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    }

    fn drain(&mut self) -> Vec<KvEvent> {
        let mut out = Vec::new();
        while let Ok(b) = self.events.try_recv() {
            out.extend(b.events);
        }
        out
    }
}

fn long_prompt(tag: &str) -> String {
    format!(
        "{tag} {}",
        (0..80)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[tokio::test]
async fn completion_usage_and_prefix_hits() {
    let m = start(2000).await;
    let body = json!({"model": "mock-model", "prompt": long_prompt("a"), "max_tokens": 5});
    let (status, v) = m.post("/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], " token".repeat(5));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 32);
    assert_eq!(v["usage"]["total_tokens"], prompt + 5);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let hits0 = m.metric("vllm:prefix_cache_hits_total").await;

    let (_, v) = m.post("/v1/completions", body).await;
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached > 0 && cached % 16 == 0 && cached <= prompt);
    let hits1 = m.metric("vllm:prefix_cache_hits_total").await;
    assert_eq!(hits1 - hits0, cached as f64);
    assert_eq!(
        m.metric("vllm:prefix_cache_queries_total").await,
        2.0 * prompt as f64
    );
    assert!(m.metric("vllm:kv_cache_usage_perc").await > 0.0);
    assert_eq!(m.metric("vllm:num_requests_running").await, 0.0);
    assert_eq!(m.metric("vllm:cache_config_info").await, 1.0);

    // Token-id prompts and chat.
    let (status, v) = m
        .post(
            "/v1/completions",
            json!({"model": "mock-model", "prompt": [1, 2, 3]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let (status, v) = m
        .post(
            "/v1/chat/completions",
            json!({"model": "mock-model", "max_completion_tokens": 2,
                   "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], " token token");
}

#[tokio::test]
async fn streaming_yields_chunks_and_done() {
    let m = start(2000).await;
    for (path, body) in [
        (
            "/v1/completions",
            json!({"model": "mock-model", "prompt": "hi there", "max_tokens": 4, "stream": true}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "mock-model", "max_tokens": 4, "stream": true,
                   "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let r = m
            .client
            .post(format!("{}{path}", m.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap();
        let data: Vec<&str> = text
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| s.strip_prefix("data: ").expect("SSE data line"))
            .collect();
        assert_eq!(data.len(), 5, "{text}");
        assert_eq!(data[4], "[DONE]");
        let last: Value = serde_json::from_str(data[3]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }
}

#[tokio::test]
async fn events_stored_chained_and_removed_on_eviction() {
    // 8 blocks of 16: a ~6-block prompt, then a different one, forces evictions.
    let mut m = start(8).await;
    let ids_a: Vec<u32> = (1000..1100).collect(); // 100 tokens: 6 full blocks
    let (s, _) = m
        .post(
            "/v1/completions",
            json!({"model": "m", "prompt": ids_a, "max_tokens": 1}),
        )
        .await;
    assert_eq!(s, 200);
    let ev = m.drain();
    let [KvEvent::BlockStored(st)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(st.block_hashes.len(), 6);
    assert_eq!(st.token_ids, ids_a[..96].to_vec());
    assert_eq!(st.parent_block_hash, None);
    assert_eq!(st.block_size, 16);
    assert_eq!(st.medium.as_deref(), Some("GPU"));
    let want: Vec<EngineHash> = engine_block_hashes(&ids_a, 16)
        .into_iter()
        .map(EngineHash::Int)
        .collect();
    assert_eq!(st.block_hashes, want);
    // Engine hashes are not the router's.
    let mut ours = Vec::new();
    m.state.tokenizer.block_hashes(&ids_a, &mut ours);
    assert!(ours.iter().all(|h| !want.contains(&EngineHash::Int(h.0))));

    // Extending the prompt chains onto the cached prefix.
    let mut ids_b = ids_a[..96].to_vec();
    ids_b.extend(5000..5020); // +1 full block
    m.post(
        "/v1/completions",
        json!({"model": "m", "prompt": ids_b, "max_tokens": 1}),
    )
    .await;
    let ev = m.drain();
    let [KvEvent::BlockStored(st)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(st.parent_block_hash, Some(want[5].clone()));
    assert_eq!(st.block_hashes.len(), 1);
    assert_eq!(st.token_ids, ids_b[96..112].to_vec());

    // A disjoint 4-block prompt must evict 3 of the 7 cached blocks.
    let ids_c: Vec<u32> = (7000..7064).collect();
    m.post(
        "/v1/completions",
        json!({"model": "m", "prompt": ids_c, "max_tokens": 1}),
    )
    .await;
    let ev = m.drain();
    let removed: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            KvEvent::BlockRemoved(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(removed.len(), 3, "{ev:?}");
    assert!(removed.iter().all(|r| r.block_hashes.len() == 1));
    assert!(matches!(ev.last(), Some(KvEvent::BlockStored(s)) if s.block_hashes.len() == 4));
    assert_eq!(m.state.engine.cached_hashes().len(), 8);

    // reset_prefix_cache drops everything unpinned.
    let r = m
        .client
        .post(format!("{}/reset_prefix_cache", m.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(m.drain(), vec![KvEvent::AllBlocksCleared]);
    assert!(m.state.engine.cached_hashes().is_empty());
}

#[tokio::test]
async fn bad_input_is_400() {
    let m = start(4).await;
    let r = m
        .client
        .post(format!("{}/v1/completions", m.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (s, _) = m
        .post(
            "/v1/completions",
            json!({"model": "m", "prompt": "x", "max_tokens": -1}),
        )
        .await;
    assert_eq!(s, 400);
    // Larger than the whole cache: rejected rather than queued forever.
    let ids: Vec<u32> = (0..200).collect();
    let (s, _) = m
        .post("/v1/completions", json!({"model": "m", "prompt": ids}))
        .await;
    assert_eq!(s, 400);
    let r = m
        .client
        .get(format!("{}/health", m.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = m
        .client
        .get(format!("{}/v1/models", m.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], "mock-model");
}

#[tokio::test]
async fn waits_for_room_then_runs() {
    let engine = MockEngine::new(4, 16, Default::default(), 1e12, None);
    let a: Vec<u32> = (0..64).collect();
    let b: Vec<u32> = (100..164).collect();
    let lease = engine.admit(&a).await;
    let e2 = Arc::clone(&engine);
    let waiter = tokio::spawn(async move { e2.admit(&b).await.cached_tokens });
    // Spin until the second request is queued (it cannot fit while `a` is pinned).
    while engine.stats().waiting == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(engine.stats().running, 1);
    drop(lease);
    assert_eq!(waiter.await.unwrap(), 0);
    let s = engine.stats();
    assert_eq!((s.running, s.waiting), (0, 0));
}

/// The mock's batches, with the engine-specific hash and timestamp swapped for the fixture's,
/// are byte for byte what vLLM 0.33 wrote for the same cache change.
#[tokio::test]
async fn engine_batches_match_vllms_bytes() {
    use cache_router_core::kv_events::{encode_batch, Layout};
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/vllm-kv-events/v0.33.0/"
    );
    let fixture = |name: &str| std::fs::read(format!("{dir}{name}.msgpack")).unwrap();
    let (tx, mut rx) = unbounded_channel();
    let engine = MockEngine::new(4, 16, Default::default(), 1e12, Some(tx));
    let tokens: Vec<u32> = (1000..1016).collect();
    drop(engine.admit(&tokens).await);
    let mut stored = rx.recv().await.unwrap();
    let want =
        cache_router_core::kv_events::decode_batch(&fixture("01-stored-1block-root")).unwrap();
    stored.ts = want.ts;
    match (&mut stored.events[..], &want.events[..]) {
        ([KvEvent::BlockStored(got)], [KvEvent::BlockStored(w)]) => {
            assert_ne!(
                got.block_hashes, w.block_hashes,
                "the mock's hashes are its own"
            );
            got.block_hashes.clone_from(&w.block_hashes);
        }
        other => panic!("expected one BlockStored each, got {other:?}"),
    }
    assert_eq!(
        encode_batch(&stored, Layout::Maps),
        fixture("01-stored-1block-root")
    );

    engine.reset_prefix_cache();
    let mut cleared = rx.recv().await.unwrap();
    cleared.ts = cache_router_core::kv_events::decode_batch(&fixture("14-all-blocks-cleared"))
        .unwrap()
        .ts;
    assert_eq!(
        encode_batch(&cleared, Layout::Maps),
        fixture("14-all-blocks-cleared")
    );
}
