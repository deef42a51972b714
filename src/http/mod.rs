//! The router's HTTP surface. For now: `/health`, `/ready` and `/metrics` over the event
//! plane; the OpenAI proxy and `/route` come with the HTTP issue.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bus::ingest::FleetHandle;
use crate::fleet::ResyncCause;

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub fleet: FleetHandle,
}

/// The router's axum app (testable without a socket via `tower::ServiceExt::oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if s.fleet.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "replaying the event stream\n",
        )
    }
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Serves `app` on a bound listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
