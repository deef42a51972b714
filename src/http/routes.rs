//! The OpenAI-facing routes: parse → tokenize → hash → route (on the fleet's thread) → proxy,
//! plus the dry-run `/route`, `/v1/models` and the admin views.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::inflight::InFlight;
use super::openai::{self, Endpoint, Input};
use super::proxy::Target;
use super::AppState;
use crate::index::WorkerIdx;
use crate::policy::WorkerLoad;
use crate::protocol::BlockHash;
use crate::routing::{LoadSource, RouteOutcome, RouteRequest};

/// What the router needs from a model's tokenizer (implemented by
/// [`crate::tokenize::ModelTokenizer`]; tests may plug in their own).
pub trait PromptTokenizer: Send + Sync + std::fmt::Debug {
    /// Token ids of a plain prompt, as the engine computes them for `/v1/completions`.
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Token ids of a rendered chat, as the engine computes them for `/v1/chat/completions`.
    fn encode_chat(&self, messages: &[Value]) -> Result<Vec<u32>, String>;
    /// Appends the chained block hashes of `ids`.
    fn block_hashes(&self, ids: &[u32], out: &mut Vec<BlockHash>);
}

/// Tokenizers by served model name.
pub type Models = HashMap<String, Arc<dyn PromptTokenizer>>;

/// Lets routing decisions read the proxy's in-flight accounting.
impl LoadSource for InFlight {
    fn load(&self, w: WorkerIdx) -> WorkerLoad {
        InFlight::load(self, w)
    }
}

/// Counters and the decision-latency histogram the routes keep.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// (route, status) → count.
    pub requests: std::sync::Mutex<HashMap<(&'static str, u16), u64>>,
    /// worker id → requests proxied to it.
    pub by_worker: std::sync::Mutex<HashMap<String, u64>>,
    pub tokenize: Histogram,
    /// Time a long prompt waited for a tokenizer slot (see [`TokenizeGate`]).
    pub queue: Histogram,
    pub lookup: Histogram,
    pub score: Histogram,
    pub request_blocks: AtomicU64,
    pub overlap_blocks: AtomicU64,
    pub proxy_errors: AtomicU64,
}

/// A fixed-bucket latency histogram (microsecond buckets), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// Upper bounds of the buckets, in microseconds.
pub const BUCKETS_US: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000,
];

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Prometheus text for this histogram under `name` with extra `labels` (`k="v",`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write as _;
        let mut cum = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        cum += self.counts[BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cum}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{}}} {sum}", labels.trim_end_matches(','));
        let _ = writeln!(
            out,
            "{name}_count{{{}}} {cum}",
            labels.trim_end_matches(',')
        );
    }
}

impl RouteMetrics {
    fn count(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_insert(0) += 1;
        }
    }
}

/// Bodies up to this size are tokenized on the async worker itself.
const INLINE_TOKENIZE_BYTES: usize = 4096;

/// Bounds how many long prompts tokenize at once: one per core.
///
/// Tokenizing is CPU-bound. Without a bound, a burst of long prompts became as many blocking
/// threads, the OS time-sliced them all, and every request finished near the end of the burst
/// (`cargo bench --bench scale`: client p50 at 0.93× the burst's wall time). Queueing them
/// FIFO (tokio's semaphore is fair) instead finishes them in arrival order at the same
/// throughput, and leaves CPU for the fleet's owner thread and the proxy.
#[derive(Clone, Debug)]
pub struct TokenizeGate(Arc<tokio::sync::Semaphore>);

impl TokenizeGate {
    pub fn new(slots: usize) -> Self {
        TokenizeGate(Arc::new(tokio::sync::Semaphore::new(slots.max(1))))
    }

    /// One slot per available core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A parsed, tokenized, routed request.
struct Routed {
    outcome: RouteOutcome,
    /// Tokenizing and hashing only.
    tokenize: Duration,
    /// Waiting for a tokenizer slot and a blocking thread.
    queued: Duration,
    tokens: usize,
}

async fn read_body(state: &AppState, req: Request) -> Result<(HeaderMap, bytes::Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| ApiError::payload_too_large(state.max_body_bytes))?;
    Ok((parts.headers, bytes))
}

async fn decide(
    state: &AppState,
    endpoint: Endpoint,
    body: &[u8],
    dry_run: bool,
) -> Result<Routed, ApiError> {
    let parsed = openai::parse(endpoint, body)?;
    let tok = state
        .models
        .get(&parsed.model)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(&parsed.model))?;
    let started = Instant::now();
    // Tokenizing a long cold prompt takes milliseconds: keep those off the async workers.
    // Short prompts (microseconds) run inline; the hand-off would cost more than the work.
    let input = parsed.input;
    let work = move || {
        let ids = match &input {
            Input::Text(t) => tok.encode_prompt(t),
            Input::Tokens(ids) => Ok(ids.clone()),
            Input::Chat(m) => tok.encode_chat(m),
        }?;
        let mut hashes = Vec::with_capacity(ids.len() / 16 + 1);
        tok.block_hashes(&ids, &mut hashes);
        Ok::<_, String>((ids.len(), hashes))
    };
    let (result, tokenize) = if body.len() <= INLINE_TOKENIZE_BYTES {
        (work(), started.elapsed())
    } else {
        // The semaphore is never closed, so acquiring cannot fail. The slot moves into the
        // blocking task: a client that disconnects meanwhile must not free it early.
        let slot = state.tokenize_gate.0.clone().acquire_owned().await.ok();
        state.route_metrics.queue.observe(started.elapsed());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let t = Instant::now();
            let r = work();
            (r, t.elapsed())
        })
        .await
        .map_err(ApiError::internal)?
    };
    let queued = started.elapsed().saturating_sub(tokenize);
    let (ids, hashes) =
        result.map_err(|e| ApiError::bad_request(format!("cannot tokenize the request: {e}")))?;
    let outcome = state
        .fleet
        .route(RouteRequest {
            model: parsed.model,
            hashes,
            dry_run,
            now_ms: now_ms(),
            max_candidates: if dry_run {
                0
            } else {
                state.proxy.config().max_attempts as usize
            },
        })
        .await
        .ok_or_else(|| ApiError::internal("fleet owner stopped"))?;
    let m = &state.route_metrics;
    m.tokenize.observe(tokenize);
    m.lookup.observe(outcome.lookup);
    m.score.observe(outcome.score);
    Ok(Routed {
        outcome,
        tokenize,
        queued,
        tokens: ids,
    })
}

/// `POST /v1/completions` and `/v1/chat/completions`.
pub(super) async fn proxy_completion(
    state: &AppState,
    endpoint: Endpoint,
    req: Request,
) -> Response {
    let route = match endpoint {
        Endpoint::Completions => "completions",
        Endpoint::ChatCompletions => "chat_completions",
    };
    let result = async {
        let (headers, body) = read_body(state, req).await?;
        let routed = decide(state, endpoint, &body, false).await?;
        let o = &routed.outcome;
        if o.candidates.is_empty() {
            return Err(ApiError::no_workers(format!(
                "no live worker serves model {:?}",
                o.model
            )));
        }
        let m = &state.route_metrics;
        m.request_blocks
            .fetch_add(o.blocks as u64, Ordering::Relaxed);
        m.overlap_blocks
            .fetch_add(u64::from(o.candidates[0].overlap), Ordering::Relaxed);
        let targets: Vec<Target> = o
            .candidates
            .iter()
            .map(|c| Target::new(c.slot, c.worker.0.clone(), c.url.clone()))
            .collect();
        let overlaps: HashMap<WorkerIdx, u32> =
            o.candidates.iter().map(|c| (c.slot, c.overlap)).collect();
        let blocks = o.blocks as u32;
        let fwd = state
            .proxy
            .forward(
                &targets,
                endpoint.path(),
                body,
                &headers,
                &state.inflight,
                |t| blocks.saturating_sub(overlaps.get(&t.worker).copied().unwrap_or(0)),
            )
            .await
            .inspect_err(|_| {
                m.proxy_errors.fetch_add(1, Ordering::Relaxed);
            })?;
        if let Ok(mut by) = m.by_worker.lock() {
            let id = o
                .candidates
                .iter()
                .find(|c| c.slot == fwd.worker)
                .map_or_else(|| fwd.worker.get().to_string(), |c| c.worker.0.clone());
            *by.entry(id).or_insert(0) += 1;
        }
        Ok(fwd.into_response())
    }
    .await;
    let resp = result.unwrap_or_else(|e: ApiError| e.into_response());
    state.route_metrics.count(route, resp.status().as_u16());
    resp
}

/// `POST /route`: the decision as JSON, nothing proxied or recorded.
pub(super) async fn dry_run(state: &AppState, req: Request) -> Response {
    let result = async {
        let (_, body) = read_body(state, req).await?;
        // A chat body has `messages`; anything else is treated as a completion.
        let endpoint = match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.get("messages").is_some() => Endpoint::ChatCompletions,
            _ => Endpoint::Completions,
        };
        let r = decide(state, endpoint, &body, true).await?;
        let o = &r.outcome;
        Ok(Json(json!({
            "policy": o.policy,
            "model": o.model,
            "tokens": r.tokens,
            "blocks": o.blocks,
            "chosen": o.chosen().map(|c| json!({"worker": c.worker, "url": c.url, "overlap": c.overlap, "cost": c.cost})),
            "candidates": o.candidates,
            "timings_us": {
                "queue": r.queued.as_micros() as u64,
                "tokenize": r.tokenize.as_micros() as u64,
                "lookup": o.lookup.as_micros() as u64,
                "score": o.score.as_micros() as u64,
            },
        }))
        .into_response())
    }
    .await;
    let resp = result.unwrap_or_else(|e: ApiError| e.into_response());
    state.route_metrics.count("route", resp.status().as_u16());
    resp
}

/// `GET /v1/models`: the union of the live workers' models.
pub(super) async fn models(State(state): State<AppState>) -> Response {
    let models: BTreeSet<String> = state
        .fleet
        .query(|f| {
            f.workers()
                .filter_map(|(_, e)| e.info.as_ref().map(|i| i.model.clone()))
                .collect()
        })
        .await
        .unwrap_or_default();
    let data: Vec<Value> = models
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "cache-router"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::not_found(
            "admin views are disabled (no --admin-token)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token is a secret.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "missing or wrong admin bearer token",
        ))
    }
}

/// `GET /admin/workers`: each worker with its registry entry, load and block count.
pub(super) async fn admin_workers(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&state, &headers) {
        return e.into_response();
    }
    let inflight = state.inflight.clone();
    let workers = state
        .fleet
        .query(move |f| {
            let mut v: Vec<Value> = f
                .workers()
                .map(|(id, e)| {
                    let ours = inflight.load(e.idx);
                    json!({
                        "id": id,
                        "url": e.info.as_ref().map(|i| i.url.clone()),
                        "model": e.info.as_ref().map(|i| i.model.clone()),
                        "epoch": e.epoch,
                        "last_seq": e.last_seq,
                        "resyncing": e.resyncing(),
                        "blocks": f.index().worker_blocks(e.idx),
                        "reported_load": e.load,
                        "in_flight": {"requests": ours.requests, "prefill_blocks": ours.prefill_blocks, "decoding": ours.decode_requests},
                    })
                })
                .collect();
            v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            v
        })
        .await
        .unwrap_or_default();
    Json(json!({ "workers": workers })).into_response()
}

/// `GET /admin/index`: index and fleet counters.
pub(super) async fn admin_index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&state, &headers) {
        return e.into_response();
    }
    let (stats, counters) = state
        .fleet
        .query(|f| (f.index().stats(), f.counters().clone()))
        .await
        .unwrap_or_default();
    Json(json!({
        "entries": stats.entries,
        "distinct_blocks": stats.distinct_blocks,
        "evictions": stats.evictions,
        "unclosed_workers": stats.unclosed_workers,
        "heap_bytes": state.fleet.query(|f| f.index().heap_bytes()).await,
        "fleet": counters,
        "stream_seq": state.fleet.applied_stream_seq(),
    }))
    .into_response()
}

impl PromptTokenizer for crate::tokenize::ModelTokenizer {
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        crate::tokenize::ModelTokenizer::encode_prompt(self, text).map_err(|e| e.to_string())
    }

    fn encode_chat(&self, messages: &[Value]) -> Result<Vec<u32>, String> {
        let msgs: Vec<crate::tokenize::ChatMessage> = messages
            .iter()
            .map(|m| serde_json::from_value(m.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad message: {e}"))?;
        crate::tokenize::ModelTokenizer::encode_chat(self, &msgs).map_err(|e| e.to_string())
    }

    fn block_hashes(&self, ids: &[u32], out: &mut Vec<BlockHash>) {
        crate::tokenize::ModelTokenizer::block_hashes(self, ids, out)
    }
}
