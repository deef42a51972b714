//! Forwards one OpenAI request to a chosen engine and streams its answer back.
//!
//! [`Proxy::forward`] tries the targets in the caller's preference order. An attempt fails
//! over to the next target when nothing has reached the client yet: the connection failed, the
//! response headers did not arrive within `first_byte_timeout`, or the engine answered 5xx.
//! A 4xx is the engine's verdict on the request and is passed through as is. Once a
//! response is chosen its body is a stream of the engine's chunks passed through as they
//! arrive (nothing is buffered, so SSE simply flows), owning the request's in-flight
//! [`Guard`]: the first chunk moves the request from prefill to decoding, and the end of the
//! stream, an engine error, an idle timeout or the client going away (axum drops the body,
//! which drops the engine response and closes that connection) releases it.
//!
//! [`WorkerHealth`] counts consecutive failures per worker: after `failures_to_down` in a row a
//! worker is skipped for `down_for`, then tried again; one success clears it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

use crate::http::error::ApiError;
use crate::http::inflight::{Guard, InFlight};
use crate::index::WorkerIdx;

/// Response header naming the worker that served a request.
pub const WORKER_HEADER: &str = "x-cache-router-worker";

/// Request headers passed on to the engine (everything else is dropped).
const FORWARDED_REQUEST_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "authorization",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// Hop-by-hop response headers never passed back (plus any named by `Connection`).
/// `content-length` is dropped too: the body is always re-streamed.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
];

/// Timeouts and retry bounds of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// TCP connect to an engine.
    pub connect_timeout: Duration,
    /// From sending the request to the engine's response headers. Engines answer a
    /// non-streaming request's headers only once generation is done, so for those this bounds
    /// the whole generation (and a timeout fails over, re-running the request elsewhere).
    pub first_byte_timeout: Duration,
    /// Longest gap between two body chunks (and from the headers to the first chunk).
    pub idle_timeout: Duration,
    /// Targets tried per request, at most (at least 1).
    pub max_attempts: u32,
    /// Consecutive failures after which a worker is considered down.
    pub failures_to_down: u32,
    /// How long a down worker is skipped before it is tried again.
    pub down_for: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_attempts: 3,
            failures_to_down: 3,
            down_for: Duration::from_secs(10),
        }
    }
}

/// One engine a request may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub worker: WorkerIdx,
    /// The worker's id, reported in [`WORKER_HEADER`] and in logs.
    pub id: String,
    /// `http://host:port`, without the API path (a trailing `/` is tolerated).
    pub base_url: String,
}

impl Target {
    pub fn new(worker: WorkerIdx, id: impl Into<String>, base_url: impl Into<String>) -> Target {
        Target {
            worker,
            id: id.into(),
            base_url: base_url.into(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }
}

/// The engine's answer, ready to return from a handler.
#[derive(Debug)]
pub struct Forwarded {
    /// The worker that answered.
    pub worker: WorkerIdx,
    /// The engine's status (also in `response`).
    pub status: StatusCode,
    /// Attempts made, this one included (1 when the first target answered).
    pub attempts: u32,
    /// Status, headers and a streaming body owning the request's in-flight guard.
    pub response: Response,
}

impl IntoResponse for Forwarded {
    fn into_response(self) -> Response {
        self.response
    }
}

/// The HTTP client side of the router.
#[derive(Clone, Debug)]
pub struct Proxy {
    client: reqwest::Client,
    cfg: ProxyConfig,
    health: Arc<WorkerHealth>,
}

impl Proxy {
    /// A proxy with a pooled keep-alive HTTP/1 client that ignores proxy environment
    /// variables, follows no redirects and never retries by itself, and health tracking for
    /// worker slots `0..max_workers`.
    pub fn new(cfg: ProxyConfig, max_workers: usize) -> Result<Proxy, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .http1_only()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .build()?;
        let health = Arc::new(WorkerHealth::new(
            max_workers,
            cfg.failures_to_down,
            cfg.down_for,
        ));
        Ok(Proxy {
            client,
            cfg,
            health,
        })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Per-worker failure tracking (shared with the response streams).
    pub fn health(&self) -> &WorkerHealth {
        &self.health
    }

    /// POSTs `body` (unchanged) to `{target.base_url}{path}` for the first target that
    /// answers, in order, skipping targets [`WorkerHealth`] has down unless all of them are,
    /// and making at most `max_attempts` attempts. `path` may carry a query string.
    /// `uncached_blocks(target)` is the prefill the request causes there, for [`InFlight`].
    ///
    /// Errors: no targets → 503; every attempt timed out before headers → 504; otherwise
    /// every attempt failed → 502.
    pub async fn forward(
        &self,
        targets: &[Target],
        path: &str,
        body: Bytes,
        headers: &HeaderMap,
        inflight: &InFlight,
        uncached_blocks: impl Fn(&Target) -> u32,
    ) -> Result<Forwarded, ApiError> {
        let now = Instant::now();
        let mut order: Vec<&Target> = targets
            .iter()
            .filter(|t| !self.health.is_down(t.worker, now))
            .collect();
        if order.is_empty() {
            // Everyone is cooling off: trying beats refusing outright.
            order = targets.iter().collect();
        }
        if order.is_empty() {
            return Err(ApiError::no_workers(
                "no worker is available for this request",
            ));
        }
        order.truncate(self.cfg.max_attempts.max(1) as usize);

        let request_headers = forwarded_headers(headers);
        let mut failures: Vec<(&Target, Failure)> = Vec::new();
        for (attempt, target) in order.iter().enumerate() {
            let guard = inflight.begin(target.worker, uncached_blocks(target));
            let url = target.url(path);
            let send = self
                .client
                .post(&url)
                .headers(request_headers.clone())
                .body(body.clone())
                .send();
            let failure = match tokio::time::timeout(self.cfg.first_byte_timeout, send).await {
                Err(_) => Failure::Timeout(self.cfg.first_byte_timeout),
                Ok(Err(e)) => Failure::Request(e),
                Ok(Ok(resp)) if resp.status().is_server_error() => Failure::Status(resp.status()),
                Ok(Ok(resp)) => {
                    self.health.record_success(target.worker);
                    return Ok(self.respond(target, resp, guard, attempt as u32 + 1));
                }
            };
            drop(guard);
            let marked_down = self.health.record_failure(target.worker, Instant::now());
            tracing::warn!(
                worker = %target.id,
                %url,
                attempt = attempt + 1,
                marked_down,
                error = %failure.detail(),
                "engine attempt failed"
            );
            failures.push((target, failure));
        }
        Err(final_error(&failures))
    }

    fn respond(
        &self,
        target: &Target,
        resp: reqwest::Response,
        guard: Guard,
        attempts: u32,
    ) -> Forwarded {
        let status = resp.status();
        let mut headers = response_headers(resp.headers());
        let worker_value = HeaderValue::from_str(&target.id)
            .unwrap_or_else(|_| HeaderValue::from(target.worker.get()));
        headers.insert(HeaderName::from_static(WORKER_HEADER), worker_value);
        let sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let stream = Passthrough {
            inner: Some(Box::pin(resp.bytes_stream())),
            guard: Some(guard),
            idle: Box::pin(tokio::time::sleep(self.cfg.idle_timeout)),
            idle_timeout: self.cfg.idle_timeout,
            health: Arc::clone(&self.health),
            worker: target.worker,
            worker_id: target.id.clone(),
            sse,
            pending: None,
        };
        let mut response = Response::new(Body::from_stream(stream));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Forwarded {
            worker: target.worker,
            status,
            attempts,
            response,
        }
    }
}

/// Why one attempt failed over.
#[derive(Debug)]
enum Failure {
    Timeout(Duration),
    Request(reqwest::Error),
    Status(StatusCode),
}

impl Failure {
    /// For the client: no URLs, addresses or internals.
    fn summary(&self) -> String {
        match self {
            Failure::Timeout(d) => format!("no response within {d:?}"),
            Failure::Request(e) if e.is_connect() => "connection failed".into(),
            Failure::Request(e) if e.is_timeout() => "timed out".into(),
            Failure::Request(_) => "connection lost before a response".into(),
            Failure::Status(s) => format!("answered {s}"),
        }
    }

    /// For the log: the whole error chain.
    fn detail(&self) -> String {
        match self {
            Failure::Request(e) => error_chain(e),
            other => other.summary(),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn final_error(failures: &[(&Target, Failure)]) -> ApiError {
    let all_timeouts = failures
        .iter()
        .all(|(_, f)| matches!(f, Failure::Timeout(_)));
    let what: Vec<String> = failures
        .iter()
        .map(|(t, f)| format!("{}: {}", t.id, f.summary()))
        .collect();
    let message = format!(
        "{} attempt(s) at an inference engine failed ({})",
        failures.len(),
        what.join("; ")
    );
    if all_timeouts {
        ApiError::upstream_timeout(message)
    } else {
        ApiError::upstream_unavailable(message)
    }
}

fn forwarded_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in incoming.get_all(name) {
            out.append(HeaderName::from_static(name), value.clone());
        }
    }
    if !out.contains_key(header::CONTENT_TYPE) {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    out
}

fn response_headers(engine: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = engine
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(engine.len() + 1);
    for (name, value) in engine {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named_by_connection.iter().any(|c| c == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the engine sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the engine connection failed mid-response: {0}")]
    Engine(#[source] reqwest::Error),
}

type ChunkStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The engine's body, chunk by chunk, owning the request's in-flight guard.
struct Passthrough {
    /// `None` once finished (ended, failed or timed out).
    inner: Option<ChunkStream>,
    guard: Option<Guard>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    health: Arc<WorkerHealth>,
    worker: WorkerIdx,
    worker_id: String,
    /// The engine answered `text/event-stream`: failures are reported in-band as an error
    /// event (what OpenAI clients read), then the stream ends.
    sse: bool,
    /// The error to end a non-SSE stream with, after nothing else.
    pending: Option<BodyError>,
}

impl Passthrough {
    fn finish(&mut self) {
        self.inner = None;
        self.guard = None;
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        tracing::warn!(worker = %self.worker_id, error = %error_chain(&e), "engine response cut short");
        self.health.record_failure(self.worker, Instant::now());
        self.finish();
        if self.sse {
            let message = match &e {
                BodyError::Idle(d) => format!("the inference engine stalled for {d:?}"),
                BodyError::Engine(_) => "the inference engine failed mid-response".to_owned(),
            };
            let event = serde_json::json!({
                "error": {
                    "message": message,
                    "type": "upstream_error",
                    "param": null,
                    "code": "upstream_stream_error",
                }
            });
            // The leading blank line terminates any event the engine left half-written.
            Poll::Ready(Some(Ok(Bytes::from(format!("\n\ndata: {event}\n\n")))))
        } else {
            Poll::Ready(Some(Err(e)))
        }
    }
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("worker", &self.worker_id)
            .field("finished", &self.inner.is_none())
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Stream for Passthrough {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(e) = this.pending.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // Data already there wins over the idle timer (a slow client is not a stalled engine).
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if !chunk.is_empty() {
                    if let Some(g) = this.guard.as_mut() {
                        g.first_byte();
                    }
                }
                let deadline = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(e))) => return this.fail(BodyError::Engine(e)),
            Poll::Ready(None) => {
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match this.idle.as_mut().poll(cx) {
            Poll::Ready(()) => this.fail(BodyError::Idle(this.idle_timeout)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        if self.inner.is_some() {
            tracing::debug!(worker = %self.worker_id, "client went away mid-response");
        }
    }
}

/// Consecutive failures per worker slot, lock-free. After `failures_to_down` failures in a
/// row a worker is down for `down_for`; when that passes it is tried again, and one more
/// failure puts it straight back down (the count is only cleared by a success).
#[derive(Debug)]
pub struct WorkerHealth {
    slots: Box<[HealthSlot]>,
    /// Origin of the `down_until` offsets.
    epoch: Instant,
    failures_to_down: u32,
    down_for: Duration,
}

#[derive(Debug, Default)]
struct HealthSlot {
    failures: AtomicU32,
    /// Nanoseconds after `epoch` until which the worker is down; 0 when up.
    down_until: AtomicU64,
}

impl WorkerHealth {
    /// Tracks slots `0..max_workers` (others always count as up). Instants passed to the
    /// methods should not precede this call.
    pub fn new(max_workers: usize, failures_to_down: u32, down_for: Duration) -> WorkerHealth {
        WorkerHealth {
            slots: (0..max_workers).map(|_| HealthSlot::default()).collect(),
            epoch: Instant::now(),
            failures_to_down: failures_to_down.max(1),
            down_for,
        }
    }

    fn offset(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a failed attempt at `w` at `now`; true when this failure put it down.
    pub fn record_failure(&self, w: WorkerIdx, now: Instant) -> bool {
        let Some(slot) = self.slots.get(w.get()) else {
            return false;
        };
        let n = slot
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < self.failures_to_down {
            return false;
        }
        let until = self
            .offset(now)
            .saturating_add(u64::try_from(self.down_for.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        slot.down_until.fetch_max(until, Ordering::Relaxed);
        true
    }

    /// Records a good answer from `w`: it is up with a clean record.
    pub fn record_success(&self, w: WorkerIdx) {
        if let Some(slot) = self.slots.get(w.get()) {
            slot.failures.store(0, Ordering::Relaxed);
            slot.down_until.store(0, Ordering::Relaxed);
        }
    }

    /// Is `w` cooling off at `now`?
    pub fn is_down(&self, w: WorkerIdx, now: Instant) -> bool {
        self.slots
            .get(w.get())
            .is_some_and(|s| self.offset(now) < s.down_until.load(Ordering::Relaxed))
    }

    /// Failures since `w`'s last success.
    pub fn consecutive_failures(&self, w: WorkerIdx) -> u32 {
        self.slots
            .get(w.get())
            .map_or(0, |s| s.failures.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u32) -> WorkerIdx {
        WorkerIdx::new(i).unwrap()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn down_after_n_consecutive_failures_for_the_cool_off() {
        let h = WorkerHealth::new(4, 3, 10 * SEC);
        let t0 = Instant::now();
        assert!(!h.record_failure(w(1), t0));
        assert!(!h.record_failure(w(1), t0 + SEC));
        assert!(!h.is_down(w(1), t0 + SEC));
        assert!(h.record_failure(w(1), t0 + 2 * SEC));
        assert!(h.is_down(w(1), t0 + 2 * SEC));
        assert!(h.is_down(w(1), t0 + 11 * SEC));
        assert!(!h.is_down(w(1), t0 + 12 * SEC), "cool-off over");
        assert!(!h.is_down(w(0), t0 + 2 * SEC), "others unaffected");
        assert_eq!(h.consecutive_failures(w(1)), 3);
    }

    #[test]
    fn success_resets_and_half_open_failure_trips_again() {
        let h = WorkerHealth::new(2, 2, 5 * SEC);
        let t0 = Instant::now();
        h.record_failure(w(0), t0);
        h.record_success(w(0));
        assert!(!h.record_failure(w(0), t0 + SEC), "count restarted");
        assert!(h.record_failure(w(0), t0 + 2 * SEC));
        assert!(h.is_down(w(0), t0 + 3 * SEC));
        // Past the cool-off the worker is tried; one more failure puts it down again.
        assert!(!h.is_down(w(0), t0 + 8 * SEC));
        assert!(h.record_failure(w(0), t0 + 8 * SEC));
        assert!(h.is_down(w(0), t0 + 12 * SEC));
        assert!(!h.is_down(w(0), t0 + 13 * SEC));
        // A success clears the cool-off at once.
        h.record_failure(w(0), t0 + 14 * SEC);
        assert!(h.is_down(w(0), t0 + 15 * SEC));
        h.record_success(w(0));
        assert!(!h.is_down(w(0), t0 + 15 * SEC));
        assert_eq!(h.consecutive_failures(w(0)), 0);
    }

    #[test]
    fn slots_past_capacity_are_always_up() {
        let h = WorkerHealth::new(1, 1, SEC);
        let t0 = Instant::now();
        assert!(!h.record_failure(w(7), t0));
        assert!(!h.is_down(w(7), t0));
        assert_eq!(h.consecutive_failures(w(7)), 0);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut engine = HeaderMap::new();
        engine.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        engine.insert("keep-alive", "timeout=5".parse().unwrap());
        engine.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        engine.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        engine.insert("x-secret-hop", "1".parse().unwrap());
        engine.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        engine.append("x-multi", "a".parse().unwrap());
        engine.append("x-multi", "b".parse().unwrap());
        let out = response_headers(&engine);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-multi"]);
        assert_eq!(out.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn only_known_request_headers_are_forwarded() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        incoming.insert(header::ACCEPT, "text/event-stream".parse().unwrap());
        incoming.insert(header::HOST, "router:8000".parse().unwrap());
        incoming.insert(header::COOKIE, "a=b".parse().unwrap());
        incoming.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        let out = forwarded_headers(&incoming);
        assert_eq!(out[header::AUTHORIZATION], "Bearer k");
        assert_eq!(out[header::ACCEPT], "text/event-stream");
        assert_eq!(out[header::CONTENT_TYPE], "application/json", "defaulted");
        assert!(!out.contains_key(header::HOST));
        assert!(!out.contains_key(header::COOKIE));
        assert!(!out.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn final_error_is_504_only_when_every_attempt_timed_out() {
        let a = Target::new(w(0), "a", "http://127.0.0.1:1");
        let b = Target::new(w(1), "b", "http://127.0.0.1:2");
        let timeouts = [(&a, Failure::Timeout(SEC)), (&b, Failure::Timeout(SEC))];
        assert_eq!(final_error(&timeouts).status(), StatusCode::GATEWAY_TIMEOUT);
        let mixed = [
            (&a, Failure::Timeout(SEC)),
            (&b, Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)),
        ];
        let e = final_error(&mixed);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.message().contains("b: answered 500"), "{}", e.message());
        assert!(!e.message().contains("127.0.0.1"), "no addresses leak");
    }

    #[test]
    fn target_url_joins_base_and_path() {
        let t = Target::new(w(0), "x", "http://h:1/");
        assert_eq!(t.url("/v1/completions"), "http://h:1/v1/completions");
    }
}
