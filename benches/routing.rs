//! Routing decision latency for 2k-token chat prompts, split into tokenize / look-up / score,
//! with 100 and 1,000 workers, for cold prompts (never seen) and warm chat turns (the history
//! was seen in the previous turn). Prints its figures; `cargo bench --bench routing`.
//!
//! Uses the real DeepSeek tokenizer (fetched by scripts/setup.sh into target/fixtures) and a
//! router started by the library on static workers (the test kit's `routers::spawn`), so
//! "look-up" and "score" are measured where they run, on the fleet actor's thread, and "route"
//! is the whole round trip through the fleet handle. No request goes through HTTP, so the
//! router's own load term stays zero for every worker, as the bench intends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cache_router::tokenize::{ChatMessage, ModelTokenizer, PromptTokenizer};
use cache_router::{FleetHandle, RouterConfig};
use cache_router_core::policy::{PolicyConfig, PolicyKind};
use cache_router_core::protocol::{BlockHash, Body, Envelope, WorkerId, WorkerInfo};
use cache_router_core::routing::RouteRequest;
use cache_router_testkit::{routers, small_mode, tokenizer};

/// DeepSeek-V3-style template: BOS, system text, `<｜User｜>`/`<｜Assistant｜>` turns, each
/// assistant turn closed by EOS (a special token, so the piece cache splits there).
const DEEPSEEK: &str = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}";

const WORDS: &[&str] = &[
    "router",
    "cache",
    "prefix",
    "block",
    "token",
    "worker",
    "latency",
    "throughput",
    "model",
    "request",
    "session",
    "history",
    "document",
    "retrieval",
    "answer",
    "question",
    "system",
    "engine",
    "memory",
    "queue",
    "batch",
    "decode",
    "prefill",
    "policy",
    "cost",
    "load",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "by",
    "as",
    "it",
    "Kubernetes",
    "GPU",
    "vLLM",
    "NATS",
    "stream",
    "snapshot",
    "replay",
    "digest",
    "epoch",
];

fn text(rng: &mut StdRng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(if rng.random_bool(0.08) { '\n' } else { ' ' });
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        if rng.random_bool(0.05) {
            s.push_str(&format!(" {}", rng.random_range(0..100_000)));
        }
    }
    s
}

/// A conversation of ~2k tokens: system prompt + alternating turns.
fn conversation(rng: &mut StdRng, turns: usize) -> Vec<ChatMessage> {
    let mut v = vec![ChatMessage::text("system", text(rng, 120))];
    for t in 0..turns {
        let role = if t % 2 == 0 { "user" } else { "assistant" };
        v.push(ChatMessage::text(role, text(rng, 140)));
    }
    v
}

fn bench_tokenizer() -> ModelTokenizer {
    let dir = tokenizer::deepseek_dir();
    let template =
        std::env::temp_dir().join(format!("cr-bench-template-{}.jinja", std::process::id()));
    std::fs::write(&template, DEEPSEEK).unwrap();
    let config = dir.join("tokenizer_config.json");
    let tok = ModelTokenizer::from_files(
        &dir.join("tokenizer.json"),
        config.is_file().then_some(config.as_path()),
        Some(&template),
    )
    .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", dir.display()))
    .with_model("bench", 16);
    let _ = std::fs::remove_file(&template);
    tok
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn show(name: &str, v: &mut [Duration]) -> String {
    format!(
        "{name} p50 {:>8.1?} p99 {:>8.1?}",
        pct(v, 0.5),
        pct(v, 0.99)
    )
}

#[derive(Default)]
struct Samples {
    tokenize: Vec<Duration>,
    lookup: Vec<Duration>,
    score: Vec<Duration>,
    route: Vec<Duration>,
    total: Vec<Duration>,
    tokenizer_only: Vec<Duration>,
    tokens: usize,
}

fn main() {
    let small = small_mode();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fleets: &[usize] = if small { &[10] } else { &[100, 1000] };
    let samples = if small { 20 } else { 1000 };
    println!(
        "routing bench ({} mode): 2k-token chat prompts, DeepSeek tokenizer, cache-aware policy",
        if small { "small/test" } else { "full" }
    );
    for &workers in fleets {
        rt.block_on(run(workers, samples));
    }
}

/// Stores `blocks` (a root chain) on `worker` as its `seq`-th event, as stream message
/// `*stream_seq + 1`; returns once the fleet actor applied it.
async fn store(
    h: &FleetHandle,
    stream_seq: &mut u64,
    worker: WorkerId,
    seq: u64,
    blocks: Vec<BlockHash>,
) {
    *stream_seq += 1;
    let body = Body::Stored {
        blocks,
        parent: None,
    };
    h.apply(*stream_seq, Envelope::new(worker, 1, seq, 0, body))
        .await
        .expect("the router runs");
}

async fn run(workers: usize, samples: usize) {
    let tok = Arc::new(bench_tokenizer());
    let mut rng = StdRng::seed_from_u64(7);
    let infos: Vec<WorkerInfo> = (0..workers)
        .map(|i| WorkerInfo {
            id: format!("w{i:04}").as_str().into(),
            // Never contacted: one port per worker (a registry URL is host:port only).
            url: format!("http://127.0.0.1:{}", 10_000 + i),
            model: "bench".into(),
            block_size: 16,
            epoch: 1,
        })
        .collect();
    // The router only needs a tokenizer for its HTTP paths, which the bench does not use.
    let mut models = cache_router::tokenize::Models::new();
    models.insert("bench".into(), tok.clone() as Arc<dyn PromptTokenizer>);
    let mut config = RouterConfig::new(models);
    config.static_workers = infos;
    config.policy = PolicyKind::CacheAware;
    config.policy_config = PolicyConfig::default();
    config.speculation = None;
    config.max_index_entries = None;
    let router = routers::spawn(config).await;
    let h = router.fleet().clone();
    let mut stream_seq = 0;
    // Background population: every worker holds ~20 other conversations' blocks (~2.5k
    // entries each), so look-ups run against a realistic index.
    for i in 0..workers {
        let id = WorkerId(format!("w{i:04}"));
        for k in 0..20 {
            let conv = conversation(&mut rng, 6);
            let ids = tok.encode_chat(&conv).unwrap();
            let mut hs = Vec::new();
            tok.block_hashes(&ids, &mut hs);
            store(&h, &mut stream_seq, id.clone(), k + 1, hs).await;
        }
    }
    let entries = h.stats().await.unwrap().index.entries;

    let mut cold = Samples::default();
    let mut warm = Samples::default();
    for s in 0..samples {
        let s_seq = 101 + s as u64;
        // Cold: a conversation never seen (10 turns ≈ 2k tokens).
        let conv = conversation(&mut rng, 10);
        let rendered = tok.render_chat(&conv, true).unwrap();
        let t0 = Instant::now();
        let only = tok.encode_uncached(&rendered, false).unwrap();
        cold.tokenizer_only.push(t0.elapsed());
        cold.tokens = only.len();
        // The measured path below starts with a cold piece cache for this conversation.
        let route = |conv: &Vec<ChatMessage>, out: &mut Samples| {
            let t0 = Instant::now();
            let ids = tok.encode_chat(conv).unwrap();
            let mut hashes = Vec::with_capacity(ids.len() / 16 + 1);
            tok.block_hashes(&ids, &mut hashes);
            let t1 = Instant::now();
            out.tokenize.push(t1 - t0);
            (hashes, t0, t1)
        };
        let (hashes, t0, t1) = route(&conv, &mut cold);
        let o = h
            .route(RouteRequest {
                model: "bench".into(),
                hashes: hashes.clone(),
                dry_run: false,
                max_candidates: 3,
                now_ms: 0,
                now: Instant::now(),
            })
            .await
            .unwrap();
        cold.route.push(t1.elapsed());
        cold.lookup.push(o.lookup);
        cold.score.push(o.score);
        cold.total.push(t0.elapsed());
        // The chosen worker now holds this conversation (as its Stored event would say).
        let w = o.chosen().unwrap().worker.clone();
        store(&h, &mut stream_seq, w, s_seq, hashes).await;
        // Warm: the next turn of the same chat (assistant reply + a new user message).
        let mut next = conv.clone();
        next.push(ChatMessage::text("assistant", text(&mut rng, 60)));
        next.push(ChatMessage::text("user", text(&mut rng, 40)));
        let (hashes, t0, t1) = route(&next, &mut warm);
        let o = h
            .route(RouteRequest {
                model: "bench".into(),
                hashes,
                dry_run: false,
                max_candidates: 3,
                now_ms: 0,
                now: Instant::now(),
            })
            .await
            .unwrap();
        warm.route.push(t1.elapsed());
        warm.lookup.push(o.lookup);
        warm.score.push(o.score);
        warm.total.push(t0.elapsed());
        if s == 0 {
            warm.tokens = o.blocks * 16;
        }
    }
    println!(
        "[{workers} workers, {entries} index entries] prompt ≈ {} tokens (cold), ≈ {} (warm turn)",
        cold.tokens, warm.tokens
    );
    let tok_only = pct(&mut cold.tokenizer_only, 0.5);
    for (name, s) in [("cold", &mut cold), ("warm", &mut warm)] {
        println!(
            "  {name}: {} | {} | {} | {} | {}",
            show("tokenize", &mut s.tokenize),
            show("lookup", &mut s.lookup),
            show("score", &mut s.score),
            show("route round trip", &mut s.route),
            show("TOTAL", &mut s.total),
        );
    }
    let cold_p50 = pct(&mut cold.total, 0.5);
    println!(
        "  tokenizer alone on the cold prompt: p50 {:.1?}; cold total / tokenizer = {:.2}x (target <= 1.2x); warm total p99 {:.1?} (target <= 0.3 ms)",
        tok_only,
        cold_p50.as_secs_f64() / tok_only.as_secs_f64(),
        pct(&mut warm.total, 0.99),
    );
    router.stop().await.expect("the router stops");
}
