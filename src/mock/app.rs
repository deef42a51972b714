//! The mock's axum app: vLLM's OpenAI endpoints with dummy output, plus its admin and
//! metrics endpoints.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::engine::MockEngine;
use super::{metrics, MockError, MockWorkerArgs};
use crate::openai::ApiError;
use crate::openai::{self, Endpoint, Input};
use crate::tokenize::{ChatMessage, ModelTokenizer};
use cache_router_core::kv_events::KvEventBatch;

/// The dummy text of one output token.
const TOKEN_TEXT: &str = " token";
/// `max_tokens` when the request gives none.
const DEFAULT_MAX_TOKENS: u64 = 16;

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub model: String,
    pub tokenizer: ModelTokenizer,
    pub engine: Arc<MockEngine>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(model: String, tokenizer: ModelTokenizer, engine: Arc<MockEngine>) -> Arc<Self> {
        Arc::new(AppState {
            model,
            tokenizer,
            engine,
            next_id: AtomicU64::new(1),
        })
    }

    /// Validates `args`, loads the tokenizer and builds the engine.
    pub fn from_args(
        args: &MockWorkerArgs,
        events: Option<UnboundedSender<KvEventBatch>>,
    ) -> Result<Arc<Self>, MockError> {
        args.validate()?;
        let tokenizer = args.load_tokenizer()?;
        let engine = MockEngine::new(
            args.num_blocks,
            args.block_size,
            args.timing.clone().into(),
            args.speedup,
            events,
        );
        Ok(Self::new(args.model.clone(), tokenizer, engine))
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.model,
            "object": "model",
            "created": unix_secs(),
            "owned_by": "vllm",
            "root": st.model,
            "parent": null,
            "max_model_len": st.engine.capacity() * st.engine.block_size(),
        }],
    }))
}

async fn reset_prefix_cache(State(st): State<Arc<AppState>>) -> StatusCode {
    st.engine.reset_prefix_cache();
    StatusCode::OK
}

async fn metrics_handler(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&st.model, &st.engine.stats()),
    )
        .into_response()
}

async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    generate(st, Endpoint::Completions, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    generate(st, Endpoint::ChatCompletions, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn max_tokens(body: &Value, endpoint: Endpoint) -> Result<u64, ApiError> {
    let keys: &[&str] = match endpoint {
        Endpoint::Completions => &["max_tokens"],
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
    };
    for key in keys {
        match body.get(key) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v.as_u64().ok_or_else(|| {
                    ApiError::bad_param(*key, format!("`{key}` must be a non-negative integer"))
                })
            }
        }
    }
    Ok(DEFAULT_MAX_TOKENS)
}

/// What one request asks for.
#[derive(Debug)]
struct Job {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    max_tokens: u64,
    include_usage: bool,
}

impl Job {
    fn chunk(&self, text: &str, first: bool, finish: Option<&str>) -> Value {
        match self.endpoint {
            Endpoint::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null,
                             "finish_reason": finish, "stop_reason": null}],
            }),
            Endpoint::ChatCompletions => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({"content": text})
                };
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null,
                                 "finish_reason": finish, "stop_reason": null}],
                })
            }
        }
    }

    fn usage(prompt: usize, cached: usize, completion: u64) -> Value {
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt as u64 + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    fn full(&self, prompt: usize, cached: usize) -> Value {
        let text = TOKEN_TEXT.repeat(self.max_tokens as usize);
        let usage = Self::usage(prompt, cached, self.max_tokens);
        match self.endpoint {
            Endpoint::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null,
                             "finish_reason": "length", "stop_reason": null}],
                "usage": usage,
            }),
            Endpoint::ChatCompletions => json!({
                "id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0,
                             "message": {"role": "assistant", "content": text},
                             "logprobs": null, "finish_reason": "length", "stop_reason": null}],
                "usage": usage,
            }),
        }
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

async fn generate(
    st: Arc<AppState>,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Response, ApiError> {
    let parsed = openai::parse(endpoint, body)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    let max_tokens = max_tokens(&value, endpoint)?;
    let include_usage = value
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tokens = match parsed.input {
        Input::Text(s) => st
            .tokenizer
            .encode_prompt(&s)
            .map_err(|e| ApiError::bad_param("prompt", e.to_string()))?,
        Input::Tokens(t) => t,
        Input::Chat(messages) => {
            let msgs: Vec<ChatMessage> = messages
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(|e| ApiError::bad_param("messages", format!("bad message: {e}")))?;
            st.tokenizer
                .encode_chat(&msgs)
                .map_err(|e| ApiError::bad_param("messages", e.to_string()))?
        }
    };
    if tokens.is_empty() {
        return Err(ApiError::bad_param("prompt", "the prompt is empty"));
    }
    if !st.engine.fits(tokens.len()) {
        return Err(ApiError::bad_request(format!(
            "the prompt ({} tokens) does not fit the KV cache ({} blocks of {})",
            tokens.len(),
            st.engine.capacity(),
            st.engine.block_size()
        )));
    }
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let job = Job {
        endpoint,
        id: match endpoint {
            Endpoint::Completions => format!("cmpl-mock-{n}"),
            Endpoint::ChatCompletions => format!("chatcmpl-mock-{n}"),
        },
        created: unix_secs(),
        model: parsed.model,
        max_tokens,
        include_usage,
    };
    let engine = Arc::clone(&st.engine);
    if !parsed.stream {
        let lease = engine.admit(&tokens).await;
        engine.prefill(&lease).await;
        for _ in 1..job.max_tokens {
            engine.decode_step().await;
        }
        let body = job.full(lease.prompt_tokens, lease.cached_tokens);
        drop(lease);
        return Ok(Json(body).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let lease = engine.admit(&tokens).await;
        engine.prefill(&lease).await;
        for i in 0..job.max_tokens {
            if i > 0 {
                engine.decode_step().await;
            }
            let finish = (i + 1 == job.max_tokens).then_some("length");
            if tx
                .send(sse(&job.chunk(TOKEN_TEXT, i == 0, finish)))
                .await
                .is_err()
            {
                return; // the client went away; the lease is released on drop
            }
        }
        if job.include_usage {
            let mut v = job.chunk("", false, None);
            v["choices"] = json!([]);
            v["usage"] = Job::usage(lease.prompt_tokens, lease.cached_tokens, job.max_tokens);
            let _ = tx.send(sse(&v)).await;
        }
        drop(lease);
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
