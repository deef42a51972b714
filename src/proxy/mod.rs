//! Forwards one OpenAI request to a chosen engine and streams its answer back.
//!
//! [`Proxy::forward`] tries the targets in the router's preference order (the workers
//! [`Liveness`] has ejected are already left out by routing). An attempt fails over to the
//! next target when nothing has reached the client yet: the connection failed, the response
//! headers did not arrive within `first_byte_timeout`, or the engine answered 5xx. A 4xx is
//! the engine's verdict on the request and is passed through as is. Every failure and success
//! is recorded in the shared [`Liveness`], the one record routing reads.
//!
//! - [`headers`]: which headers cross the proxy in each direction.
//! - [`passthrough`]: the response body stream, owning the request's in-flight [`Guard`].
//! - [`inflight`]: the per-worker in-flight accounting that is routing's load term.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use cache_router_core::index::WorkerIdx;
use cache_router_core::liveness::Liveness;

use crate::openai::ApiError;

mod headers;
mod inflight;
mod passthrough;

pub use headers::EngineAuth;
use headers::{forwarded_headers, response_headers};
use inflight::Guard;
pub use inflight::InFlight;
use passthrough::Passthrough;

/// Response header naming the worker that served a request.
pub const WORKER_HEADER: &str = "x-cache-router-worker";

/// Timeouts and retry bounds of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// TCP connect to an engine.
    pub connect_timeout: Duration,
    /// From sending a streaming request to the engine's response headers (they come once
    /// the prompt is prefilled); a timeout fails over to the next worker.
    pub first_byte_timeout: Duration,
    /// The same for a non-streaming request, whose headers come only once the whole answer
    /// is generated. A timeout here does not fail over: the engine took the request, and
    /// sending it elsewhere would generate it twice.
    pub generation_timeout: Duration,
    /// Longest gap between two body chunks (and from the headers to the first chunk).
    pub idle_timeout: Duration,
    /// Targets tried per request, at most (at least 1).
    pub max_attempts: u32,
    /// Whose `Authorization` the engines see.
    pub engine_auth: EngineAuth,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(60),
            generation_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            max_attempts: 3,
            engine_auth: EngineAuth::None,
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

/// What [`Proxy::forward`] sends.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The API path (a query string may follow).
    pub path: &'a str,
    /// The client's body, unchanged.
    pub body: Bytes,
    /// The client's headers (only an allow-list crosses; see [`EngineAuth`]).
    pub headers: &'a HeaderMap,
    /// `stream: true`: headers come after prefill, so `first_byte_timeout` applies and a
    /// timeout fails over; otherwise `generation_timeout`, and no failover on timeout.
    pub streaming: bool,
}

/// The engine's answer, ready to return from a handler.
#[derive(Debug)]
pub struct Forwarded {
    /// The worker that answered.
    pub worker: WorkerIdx,
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
    liveness: Arc<Liveness>,
}

impl Proxy {
    /// A proxy with a pooled keep-alive HTTP/1 client that ignores proxy environment
    /// variables, follows no redirects and never retries by itself, recording every attempt's
    /// outcome in `liveness`.
    pub fn new(cfg: ProxyConfig, liveness: Arc<Liveness>) -> Result<Proxy, reqwest::Error> {
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
        Ok(Proxy {
            client,
            cfg,
            liveness,
        })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// POSTs `body` (unchanged) to `{target.base_url}{path}` for the first target that
    /// answers, in order, making at most `max_attempts` attempts. `path` may carry a query string.
    /// `uncached_blocks(target)` is the prefill the request causes there, for [`InFlight`].
    ///
    /// Errors: no targets → 503; every attempt timed out before headers → 504; otherwise
    /// every attempt failed → 502.
    pub async fn forward(
        &self,
        targets: &[Target],
        request: Outgoing<'_>,
        inflight: &InFlight,
        uncached_blocks: impl Fn(&Target) -> u32,
    ) -> Result<Forwarded, ApiError> {
        let Outgoing {
            path,
            body,
            headers,
            streaming,
        } = request;
        let mut order: Vec<&Target> = targets.iter().collect();
        if order.is_empty() {
            return Err(ApiError::no_workers(
                "no worker is available for this request",
            ));
        }
        order.truncate(self.cfg.max_attempts.max(1) as usize);

        let request_headers = forwarded_headers(headers, &self.cfg.engine_auth);
        let wait = if streaming {
            self.cfg.first_byte_timeout
        } else {
            self.cfg.generation_timeout
        };
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
            let failure = match tokio::time::timeout(wait, send).await {
                Err(_) => Failure::Timeout(wait),
                Ok(Err(e)) => Failure::Request(e),
                Ok(Ok(resp)) if resp.status().is_server_error() => Failure::Status(resp.status()),
                Ok(Ok(resp)) => {
                    self.liveness.record_success(target.worker);
                    return Ok(self.respond(target, resp, guard));
                }
            };
            drop(guard);
            let ejected = self
                .liveness
                .record_failure(target.worker, crate::clock::now());
            tracing::warn!(
                worker = %target.id,
                %url,
                attempt = attempt + 1,
                ejected,
                error = %failure.detail(),
                "engine attempt failed"
            );
            let generating = !streaming && matches!(failure, Failure::Timeout(_));
            failures.push((target, failure));
            if generating {
                // The engine took the request and is still generating: a retry elsewhere
                // would run the whole generation again.
                break;
            }
        }
        Err(final_error(&failures))
    }

    fn respond(&self, target: &Target, resp: reqwest::Response, guard: Guard) -> Forwarded {
        let status = resp.status();
        let mut headers = response_headers(resp.headers());
        let worker_value = HeaderValue::from_str(&target.id)
            .unwrap_or_else(|_| HeaderValue::from(target.worker.get()));
        headers.insert(HeaderName::from_static(WORKER_HEADER), worker_value);
        let sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let stream = Passthrough::new(
            Box::pin(resp.bytes_stream()),
            guard,
            self.cfg.idle_timeout,
            Arc::clone(&self.liveness),
            target.worker,
            target.id.clone(),
            sse,
        );
        let mut response = Response::new(Body::from_stream(stream));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Forwarded {
            worker: target.worker,
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

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u32) -> WorkerIdx {
        WorkerIdx::new(i).unwrap()
    }

    const SEC: Duration = Duration::from_secs(1);

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
