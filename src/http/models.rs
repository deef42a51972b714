//! `GET /v1/models`: the union of the registered workers' models.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

pub(super) async fn list(State(state): State<AppState>) -> Response {
    let models = state
        .fleet
        .stats()
        .await
        .map(|s| s.models)
        .unwrap_or_default();
    let data: Vec<Value> = models
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "cache-router"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
