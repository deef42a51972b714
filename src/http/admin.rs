//! Bearer-protected admin views. The token check is a layer over every `/admin/*` route, so a
//! new view cannot forget it.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::openai::ApiError;

/// The admin bearer token, kept only as its SHA-256: a request's token is hashed and the
/// digests compared in constant time, so neither where the tokens differ nor the secret's
/// length shows in the time an answer takes.
#[derive(Clone)]
pub(crate) struct AdminToken([u8; 32]);

impl AdminToken {
    pub(crate) fn new(secret: &str) -> Self {
        AdminToken(Sha256::digest(secret.as_bytes()).into())
    }

    fn matches(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Lets a request through only with `Authorization: Bearer <admin token>`; without a
/// configured token the views do not exist (404).
pub(super) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match authorized(state.admin_token.as_ref(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn authorized(token: Option<&AdminToken>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::not_found(
            "admin views are disabled (no --admin-token)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| token.matches(g)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn only_the_exact_token_passes() {
        let t = AdminToken::new("s3cret");
        assert!(authorized(Some(&t), &bearer("Bearer s3cret")).is_ok());
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret ",
            "Bearer S3cret",
            "s3cret",
            "Basic s3cret",
        ] {
            assert!(authorized(Some(&t), &bearer(bad)).is_err(), "{bad}");
        }
        assert!(authorized(Some(&t), &HeaderMap::new()).is_err());
        let off = authorized(None, &bearer("Bearer s3cret")).unwrap_err();
        assert_eq!(off.status(), axum::http::StatusCode::NOT_FOUND);
        assert!(!format!("{t:?}").contains("s3cret"), "never logged");
    }
}
