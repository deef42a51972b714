//! The router's HTTP surface: the OpenAI endpoints (proxied with streaming), the dry-run
//! `/route`, `/v1/models`, `/health`, `/ready`, `/metrics` and bearer-protected admin views.

pub mod error;
pub mod inflight;
pub mod openai;
pub mod proxy;
pub mod routes;

use std::fmt::Write as _;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bus::ingest::FleetHandle;
use crate::fleet::ResyncCause;

/// Shared state of the handlers (cheap to clone: handles and `Arc`s).
#[derive(Clone, Debug)]
pub struct AppState {
    pub fleet: FleetHandle,
    pub models: Arc<routes::Models>,
    pub proxy: proxy::Proxy,
    pub inflight: inflight::InFlight,
    pub route_metrics: Arc<routes::RouteMetrics>,
    /// Bearer token for `/admin/*`; None disables them.
    pub admin_token: Option<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Long prompts tokenize at most one per core at a time.
    pub tokenize_gate: routes::TokenizeGate,
}

impl AppState {
    /// State with default proxy settings and no admin token.
    pub fn new(fleet: FleetHandle, models: routes::Models, inflight: inflight::InFlight) -> Self {
        let max = inflight.capacity();
        AppState {
            fleet,
            models: Arc::new(models),
            proxy: proxy::Proxy::new(proxy::ProxyConfig::default(), max)
                .expect("building an HTTP client without TLS cannot fail"),
            inflight,
            route_metrics: Arc::new(routes::RouteMetrics::default()),
            admin_token: None,
            max_body_bytes: 8 << 20,
            tokenize_gate: routes::TokenizeGate::per_core(),
        }
    }
}

/// The router's axum app (testable without a socket via `tower::ServiceExt::oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(routes::models))
        .route(
            "/v1/completions",
            post(|State(s): State<AppState>, req: Request| async move {
                routes::proxy_completion(&s, openai::Endpoint::Completions, req).await
            }),
        )
        .route(
            "/v1/chat/completions",
            post(|State(s): State<AppState>, req: Request| async move {
                routes::proxy_completion(&s, openai::Endpoint::ChatCompletions, req).await
            }),
        )
        .route(
            "/route",
            post(|State(s): State<AppState>, req: Request| async move {
                routes::dry_run(&s, req).await
            }),
        )
        .route("/admin/workers", get(routes::admin_workers))
        .route("/admin/index", get(routes::admin_index))
        .fallback(|| async { error::ApiError::not_found("no such route").into_response() })
        .with_state(state)
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if !s.fleet.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "replaying the event stream\n",
        );
    }
    // Live = registered (a registry entry, or configured statically).
    let live = s
        .fleet
        .query(|f| f.workers().filter(|(_, e)| e.info.is_some()).count())
        .await
        .unwrap_or(0);
    if live == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no live worker\n");
    }
    (StatusCode::OK, "ready\n")
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let m = s.fleet.metrics().snapshot();
    let fleet = s
        .fleet
        .query(|f| (f.counters().clone(), f.index().stats(), f.workers().count()))
        .await;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "cache_router_ready",
        "gauge",
        "1 once the event stream is replayed",
        &one(u64::from(s.fleet.is_ready())),
    );
    metric(
        "cache_router_stream_seq",
        "gauge",
        "Last event stream sequence applied",
        &one(s.fleet.applied_stream_seq()),
    );
    metric(
        "cache_router_bad_messages_total",
        "counter",
        "Messages skipped because they could not be applied, by reason",
        &[
            ("{reason=\"malformed\"}".into(), m.malformed),
            ("{reason=\"unknown_version\"}".into(), m.unknown_version),
            ("{reason=\"subject_mismatch\"}".into(), m.subject_mismatch),
        ],
    );
    metric(
        "cache_router_stream_messages_total",
        "counter",
        "Event stream messages received",
        &one(m.messages),
    );
    metric(
        "cache_router_recovery_ms",
        "gauge",
        "Milliseconds from start to ready",
        &one(m.recovery_ms),
    );
    metric(
        "cache_router_snapshots_written_total",
        "counter",
        "Snapshots written",
        &one(m.snapshots_written),
    );
    metric(
        "cache_router_snapshot_bytes",
        "gauge",
        "Size of the last snapshot",
        &one(m.snapshot_bytes),
    );
    if let Some((c, stats, workers)) = fleet {
        metric(
            "cache_router_events_applied_total",
            "counter",
            "Cache messages applied to the index",
            &one(c.applied),
        );
        metric(
            "cache_router_block_events_applied_total",
            "counter",
            "Block events applied to the index",
            &one(c.block_events),
        );
        metric(
            "cache_router_duplicates_total",
            "counter",
            "Duplicate messages dropped",
            &one(c.duplicates),
        );
        let by_cause: Vec<(String, u64)> = ResyncCause::ALL
            .iter()
            .map(|cause| {
                (
                    format!("{{cause=\"{}\"}}", cause.as_str()),
                    c.resyncs(*cause),
                )
            })
            .collect();
        metric(
            "cache_router_resyncs_total",
            "counter",
            "Resyncs started, by cause",
            &by_cause,
        );
        metric(
            "cache_router_index_entries",
            "gauge",
            "Resident (worker, block) entries",
            &one(stats.entries as u64),
        );
        metric(
            "cache_router_index_blocks",
            "gauge",
            "Distinct resident blocks",
            &one(stats.distinct_blocks as u64),
        );
        metric(
            "cache_router_index_evictions_total",
            "counter",
            "Entries dropped by the memory bound",
            &one(stats.evictions),
        );
        metric(
            "cache_router_workers",
            "gauge",
            "Workers known to the router",
            &one(workers as u64),
        );
    }
    routes_metrics(&s, &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn routes_metrics(s: &AppState, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &s.route_metrics;
    let _ = writeln!(out, "# HELP cache_router_requests_total HTTP requests by route and status\n# TYPE cache_router_requests_total counter");
    if let Ok(req) = m.requests.lock() {
        let mut v: Vec<_> = req.iter().collect();
        v.sort();
        for ((route, status), n) in v {
            let _ = writeln!(
                out,
                "cache_router_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(out, "# HELP cache_router_worker_requests_total Requests proxied, by worker\n# TYPE cache_router_worker_requests_total counter");
    if let Ok(by) = m.by_worker.lock() {
        let mut v: Vec<_> = by.iter().collect();
        v.sort();
        for (w, n) in v {
            let _ = writeln!(
                out,
                "cache_router_worker_requests_total{{worker=\"{w}\"}} {n}"
            );
        }
    }
    let _ = writeln!(out, "# HELP cache_router_decision_seconds Routing decision latency by phase\n# TYPE cache_router_decision_seconds histogram");
    m.queue
        .render(out, "cache_router_decision_seconds", "phase=\"queue\",");
    m.tokenize
        .render(out, "cache_router_decision_seconds", "phase=\"tokenize\",");
    m.lookup
        .render(out, "cache_router_decision_seconds", "phase=\"lookup\",");
    m.score
        .render(out, "cache_router_decision_seconds", "phase=\"score\",");
    let blocks = m.request_blocks.load(Relaxed);
    let overlap = m.overlap_blocks.load(Relaxed);
    let _ = writeln!(out, "# HELP cache_router_request_blocks_total Full blocks in routed requests\n# TYPE cache_router_request_blocks_total counter\ncache_router_request_blocks_total {blocks}");
    let _ = writeln!(out, "# HELP cache_router_overlap_blocks_total Blocks the chosen worker already held\n# TYPE cache_router_overlap_blocks_total counter\ncache_router_overlap_blocks_total {overlap}");
    let ratio = if blocks == 0 {
        0.0
    } else {
        overlap as f64 / blocks as f64
    };
    let _ = writeln!(out, "# HELP cache_router_hit_ratio Overlap blocks / request blocks since start\n# TYPE cache_router_hit_ratio gauge\ncache_router_hit_ratio {ratio}");
    let _ = writeln!(out, "# HELP cache_router_proxy_errors_total Requests that failed on every attempted worker\n# TYPE cache_router_proxy_errors_total counter\ncache_router_proxy_errors_total {}", m.proxy_errors.load(Relaxed));
    let _ = writeln!(out, "# HELP cache_router_in_flight Requests in flight per worker slot\n# TYPE cache_router_in_flight gauge");
    for (w, load) in s.inflight.snapshot() {
        let _ = writeln!(
            out,
            "cache_router_in_flight{{slot=\"{}\"}} {}",
            w.get(),
            load.requests
        );
    }
}

/// Serves `app` on a bound listener until `shutdown`. Accepted connections get TCP_NODELAY:
/// a streamed response is many small writes, and with Nagle's algorithm each one after the
/// first can wait for the client's delayed ACK (40 ms on Linux), which showed up as a 40 ms
/// TTFT floor under load in the live demo.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener.tap_io(set_nodelay), app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Disables Nagle's algorithm on an accepted connection (see [`serve`]).
pub fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}
