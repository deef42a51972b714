//! `GET /ready` and `GET /metrics` (`/health` is a constant in the app).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::AppState;
use crate::metrics::CONTENT_TYPE;

/// Ready = the event stream is replayed and at least one worker is registered.
pub(super) async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if !s.fleet.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "replaying the event stream\n",
        );
    }
    let registered = s.fleet.stats().await.map_or(0, |f| f.registered);
    if registered == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no live worker\n");
    }
    (StatusCode::OK, "ready\n")
}

pub(super) async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let fleet = s.fleet.stats().await.ok();
    let text = s
        .metrics
        .render(fleet, s.fleet.is_ready(), s.fleet.applied_stream_seq());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}
