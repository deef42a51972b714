//! `POST /v1/completions` and `/v1/chat/completions`: parse → tokenize → hash → route (on
//! the fleet actor) → proxy. [`decide`] is shared with the dry-run `/route`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use cache_router_core::index::WorkerIdx;
use cache_router_core::routing::{RouteOutcome, RouteRequest};

use super::AppState;
use crate::openai::{self, ApiError, Endpoint, Input};
use crate::proxy::{Outgoing, Target};

/// Bodies up to this size are tokenized on the async worker itself.
const INLINE_TOKENIZE_BYTES: usize = 4096;

/// Bytes of prompt text per token that no real tokenizer exceeds on average (see `decide`).
const BYTES_PER_TOKEN_CEILING: usize = 32;

/// How long a request that arrives before the router is ready (still replaying the stream or
/// reading the registry, right after a restart) waits for it rather than failing.
const READY_HOLD: Duration = Duration::from_secs(5);

/// A parsed, tokenized, routed request.
pub(super) struct Routed {
    pub(super) outcome: RouteOutcome,
    /// Tokenizing and hashing only.
    pub(super) tokenize: Duration,
    /// Waiting for a tokenizer slot and a blocking thread.
    pub(super) queued: Duration,
    pub(super) tokens: usize,
    /// The request asked for a streamed answer.
    pub(super) stream: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) async fn read_body(
    state: &AppState,
    req: Request,
) -> Result<(HeaderMap, bytes::Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return Err(ApiError::payload_too_large(state.max_body_bytes));
    }
    let bytes = to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| ApiError::payload_too_large(state.max_body_bytes))?;
    Ok((parts.headers, bytes))
}

/// Parses, tokenizes and routes `body`; `dry_run` ranks every candidate and records nothing.
pub(super) async fn decide(
    state: &AppState,
    endpoint: Endpoint,
    body: &[u8],
    dry_run: bool,
) -> Result<Routed, ApiError> {
    let parsed = openai::parse(endpoint, body)?;
    // Byte-level BPE makes at least one byte of text per token, and no real token is longer
    // than a few dozen bytes: a body this much larger than the token limit cannot fit, and
    // is refused before the tokenizer spends seconds on it.
    let max = state.max_prompt_tokens;
    if body.len() > max.saturating_mul(BYTES_PER_TOKEN_CEILING) {
        return Err(ApiError::bad_param(
            endpoint.prompt_field(),
            format!(
                "the prompt is {} bytes: far more than --max-prompt-tokens {max} allows",
                body.len()
            ),
        ));
    }
    if !dry_run && !state.fleet.is_ready() {
        let _ = tokio::time::timeout(READY_HOLD, state.fleet.wait_ready()).await;
    }
    let tok = state
        .models
        .get(&parsed.model)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(&parsed.model))?;
    let started = Instant::now();
    // Tokenizing a long cold prompt takes milliseconds: keep those off the async workers.
    // Short prompts (microseconds) run inline; the hand-off would cost more than the work.
    let input = parsed.input;
    let stream = parsed.stream;
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
        // The slot moves into the blocking task: a client that disconnects meanwhile must not
        // free it early. Huge prompts queue in their own lane, so they never hold up the rest.
        let slot = state.tokenize_gate.acquire(body.len()).await;
        state.metrics.http.decision.queue.observe(started.elapsed());
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
    let (tokens, hashes) =
        result.map_err(|e| ApiError::bad_request(format!("cannot tokenize the request: {e}")))?;
    if tokens > max {
        return Err(ApiError::bad_param(
            endpoint.prompt_field(),
            format!("the prompt has {tokens} tokens, more than --max-prompt-tokens {max}"),
        ));
    }
    let outcome = state
        .fleet
        .route(RouteRequest {
            model: parsed.model,
            hashes,
            dry_run,
            now_ms: now_ms(),
            now: crate::clock::now(),
            max_candidates: if dry_run {
                0
            } else {
                state.proxy.config().max_attempts as usize
            },
        })
        .await
        .map_err(ApiError::internal)?;
    let d = &state.metrics.http.decision;
    d.tokenize.observe(tokenize);
    d.lookup.observe(outcome.lookup);
    d.score.observe(outcome.score);
    Ok(Routed {
        outcome,
        tokenize,
        queued,
        tokens,
        stream,
    })
}

/// Proxies a completion to the best worker (failing over to the next ones).
pub(super) async fn proxy(state: &AppState, endpoint: Endpoint, req: Request) -> Response {
    let route = match endpoint {
        Endpoint::Completions => "completions",
        Endpoint::ChatCompletions => "chat_completions",
    };
    let m = &state.metrics.http;
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
        m.request_blocks.inc_by(o.blocks as u64);
        m.overlap_blocks.inc_by(u64::from(o.candidates[0].overlap));
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
                Outgoing {
                    path: endpoint.path(),
                    body,
                    headers: &headers,
                    streaming: routed.stream,
                },
                &state.inflight,
                |t| blocks.saturating_sub(overlaps.get(&t.worker).copied().unwrap_or(0)),
            )
            .await
            .inspect_err(|_| {
                m.proxy_errors.inc();
            })?;
        match o.candidates.iter().find(|c| c.slot == fwd.worker) {
            Some(c) => m.served_by(&c.worker.0),
            None => m.served_by(&fwd.worker.get().to_string()),
        }
        Ok(fwd.into_response())
    }
    .await;
    let resp = result.unwrap_or_else(|e: ApiError| e.into_response());
    m.count(route, resp.status().as_u16());
    resp
}
