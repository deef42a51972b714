//! `POST /route`: the decision as JSON, nothing proxied or recorded.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::completions::{decide, read_body};
use super::AppState;
use crate::openai::{ApiError, Endpoint};

pub(super) async fn route(state: &AppState, req: Request) -> Response {
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
    state.metrics.http.count("route", resp.status().as_u16());
    resp
}
