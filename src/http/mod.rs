//! The router's HTTP surface: the OpenAI endpoints (proxied with streaming), the dry-run
//! `/route`, `/v1/models`, `/health`, `/ready`, `/metrics` and bearer-protected admin views.
//!
//! One concern per file: [`completions`] (parse → tokenize → route → proxy), [`dry_run`],
//! [`models`], [`health`] (health, readiness, metrics), [`admin`] (the bearer layer and the
//! views), [`tokenize_gate`] (long prompts wait for a core), [`listener`] (the accept loop,
//! bounded in connections and time).

mod admin;
mod completions;
mod dry_run;
mod health;
pub(crate) mod listener;
mod models;
mod tokenize_gate;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::fleet_actor::FleetHandle;
use crate::metrics::RouterMetrics;
use crate::openai::{ApiError, Endpoint};
use crate::proxy::{InFlight, Proxy};
use crate::tokenize::Models;

pub(crate) use admin::AdminToken;
pub(crate) use tokenize_gate::TokenizeGate;

/// Shared state of the handlers (cheap to clone: handles and `Arc`s).
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub(crate) fleet: FleetHandle,
    pub(crate) models: Arc<Models>,
    pub(crate) proxy: Proxy,
    pub(crate) inflight: InFlight,
    pub(crate) metrics: Arc<RouterMetrics>,
    /// Bearer token for `/admin/*`; None disables them.
    pub(crate) admin_token: Option<AdminToken>,
    /// Larger request bodies get 413.
    pub(crate) max_body_bytes: usize,
    /// Longer prompts get 400.
    pub(crate) max_prompt_tokens: usize,
    /// Long prompts tokenize at most one per core at a time.
    pub(crate) tokenize_gate: TokenizeGate,
}

/// The router's axum app.
pub(crate) fn app(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/workers", get(admin::workers))
        .route("/admin/index", get(admin::index))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/v1/models", get(models::list))
        .route(
            "/v1/completions",
            post(|State(s): State<AppState>, req: Request| async move {
                completions::proxy(&s, Endpoint::Completions, req).await
            }),
        )
        .route(
            "/v1/chat/completions",
            post(|State(s): State<AppState>, req: Request| async move {
                completions::proxy(&s, Endpoint::ChatCompletions, req).await
            }),
        )
        .route(
            "/route",
            post(|State(s): State<AppState>, req: Request| async move {
                dry_run::route(&s, req).await
            }),
        )
        .merge(admin)
        .fallback(|| async { ApiError::not_found("no such route").into_response() })
        .with_state(state)
}

/// Disables Nagle's algorithm on an accepted connection (the mock engine's server; the
/// router's own accept loop is [`listener`]).
pub(crate) fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}
