//! Helpers the NATS benches (`event_plane`, `scale`) share. Everything else shared (the
//! small-mode switch, nats-server, routers, the tokenizer fixture) comes from the test kit.

use std::future::Future;
use std::time::Duration;

/// Awaits `f`, failing the bench with `what` if it takes longer than `limit`: every phase of
/// a bench is bounded.
pub(crate) async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

/// Milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One unlabelled sample of a running router's `/metrics` (the event plane's own counters,
/// e.g. `cache_router_snapshots_written_total`, are exposed there and nowhere else).
pub(crate) async fn router_metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let url = format!("{base}/metrics");
    let resp = http.get(&url).send().await;
    let resp = resp.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let text = resp.text().await.expect("the /metrics body");
    cache_router_core::prom_text::unlabelled(&text, name)
        .unwrap_or_else(|| panic!("{url} has no sample {name}"))
}
