//! Bearer-protected admin views. The token check is a layer over every `/admin/*` route, so a
//! new view cannot forget it.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::openai::ApiError;

/// Lets a request through only with `Authorization: Bearer <admin token>`; without a
/// configured token the views do not exist (404).
pub(super) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match authorized(state.admin_token.as_deref(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn authorized(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
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

/// `GET /admin/workers`: each worker with its registry entry, load, block count, the
/// router's own in-flight count and the proxy's liveness record.
pub(super) async fn workers(State(state): State<AppState>) -> Response {
    let workers = state.fleet.workers().await.unwrap_or_default();
    let workers: Vec<_> = workers
        .into_iter()
        .map(|w| {
            let ours = state.inflight.load(w.slot);
            json!({
                "id": w.id,
                "url": w.info.as_ref().map(|i| i.url.clone()),
                "model": w.info.as_ref().map(|i| i.model.clone()),
                "epoch": w.epoch,
                "last_seq": w.last_seq,
                "resyncing": w.resyncing,
                "blocks": w.blocks,
                "reported_load": w.reported_load,
                "in_flight": {"requests": ours.requests, "prefill_blocks": ours.prefill_blocks, "decoding": ours.decode_requests},
                "liveness": {
                    "consecutive_failures": w.liveness.consecutive_failures,
                    "ejections": w.liveness.ejections,
                    "ejected_for_ms": w.liveness.ejected_for.map(|d| d.as_millis() as u64),
                },
            })
        })
        .collect();
    Json(json!({ "workers": workers })).into_response()
}

/// `GET /admin/index`: index and fleet counters, and each worker's digest (block count and
/// an order-independent checksum, in hex): two routers on one stream must show the same.
pub(super) async fn index(State(state): State<AppState>) -> Response {
    let stats = state.fleet.stats().await.unwrap_or_default();
    let digests: serde_json::Map<String, serde_json::Value> = stats
        .digests
        .iter()
        .map(|(id, d)| {
            (
                id.clone(),
                json!({"blocks": d.block_count, "checksum": format!("{:016x}", d.checksum)}),
            )
        })
        .collect();
    Json(json!({
        "workers": digests,
        "entries": stats.index.entries,
        "distinct_blocks": stats.index.distinct_blocks,
        "evictions": stats.index.evictions,
        "unclosed_workers": stats.index.unclosed_workers,
        "heap_bytes": stats.index_heap_bytes,
        "fleet": stats.counters,
        "stream_seq": state.fleet.applied_stream_seq(),
    }))
    .into_response()
}
