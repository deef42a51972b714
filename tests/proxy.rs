//! The proxy over real loopback HTTP: a client (reqwest) → a tiny axum app mounting
//! `Proxy::forward` → in-test engines (`common::engine`). Waiting is always a bounded poll of
//! an observable condition or an awaited event, never a fixed sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use cache_router::proxy::{
    EngineAuth, InFlight, Outgoing, Proxy, ProxyConfig, Target, WORKER_HEADER,
};
use cache_router::EjectionPolicy;
use cache_router_core::backoff::Backoff;
use cache_router_core::index::WorkerIdx;
use cache_router_core::liveness::Liveness;
use cache_router_core::policy::WorkerLoad;
use cache_router_testkit::eventually;
use cache_router_testkit::scripted_engine::{
    closed_port, sse_event, Engine, Event, Reply, SSE_DONE,
};

/// Uncached prefill blocks the test router charges every request.
const UNCACHED: u32 = 7;
const PATIENCE: Duration = Duration::from_secs(10);
/// Consecutive failures that eject a worker in these tests.
const EJECT_AFTER: u32 = 3;
const PATH: &str = "/v1/chat/completions";

fn w(i: u32) -> WorkerIdx {
    WorkerIdx::new(i).unwrap()
}

fn load(prefill: f64, decoding: f64, requests: u32) -> WorkerLoad {
    WorkerLoad {
        prefill_blocks: prefill,
        decode_requests: decoding,
        requests,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Waits for the engine's `StreamDropped` event, skipping the others.
async fn stream_dropped(engine: &mut Engine) -> bool {
    loop {
        match engine.next_event(PATIENCE).await {
            Some(Event::StreamDropped { completed }) => return completed,
            Some(Event::Produced(..)) => {}
            None => panic!("the engine never saw its response stream dropped"),
        }
    }
}

#[derive(Clone)]
struct AppState {
    proxy: Proxy,
    inflight: InFlight,
    targets: Arc<Vec<Target>>,
}

async fn route(State(s): State<AppState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // Streaming unless the body says `"stream": false` (most tests send `{}`).
    let streaming = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["stream"].as_bool())
        .unwrap_or(true);
    match s
        .proxy
        .forward(
            &s.targets,
            Outgoing {
                path,
                body,
                headers: &headers,
                streaming,
            },
            &s.inflight,
            |_| UNCACHED,
        )
        .await
    {
        Ok(forwarded) => forwarded.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The proxy mounted in an axum app on loopback; target `i` is worker `i`, id `engine-i`.
struct TestRouter {
    addr: std::net::SocketAddr,
    proxy: Proxy,
    inflight: InFlight,
    /// The failure record the proxy writes (routing reads it in the router).
    liveness: Arc<Liveness>,
    targets: Arc<Vec<Target>>,
    task: JoinHandle<()>,
}

impl TestRouter {
    async fn start(urls: &[String], cfg: ProxyConfig) -> TestRouter {
        let targets: Arc<Vec<Target>> = Arc::new(
            urls.iter()
                .enumerate()
                .map(|(i, u)| Target::new(w(i as u32), format!("engine-{i}"), u.clone()))
                .collect(),
        );
        let liveness = Arc::new(Liveness::new(
            16,
            EjectionPolicy {
                failures_to_eject: EJECT_AFTER,
                backoff: Backoff {
                    initial: Duration::from_secs(60),
                    max: Duration::from_secs(600),
                },
            },
            Instant::now(),
        ));
        let proxy = Proxy::new(cfg, liveness.clone()).unwrap();
        let inflight = InFlight::new(16);
        let state = AppState {
            proxy: proxy.clone(),
            inflight: inflight.clone(),
            targets: Arc::clone(&targets),
        };
        let app = Router::new()
            .fallback(route)
            .layer(DefaultBodyLimit::disable())
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestRouter {
            addr,
            proxy,
            inflight,
            liveness,
            targets,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        client()
            .post(self.url(PATH))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("the router answers")
    }

    fn failures(&self, worker: WorkerIdx) -> u32 {
        self.liveness
            .of(worker, Instant::now())
            .consecutive_failures
    }

    fn idle(&self) -> bool {
        self.inflight
            .snapshot()
            .iter()
            .all(|(_, l)| *l == WorkerLoad::default())
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits a response body into SSE events (`"data: ...\n\n"`) as the bytes arrive.
struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next non-empty event, `Ok(None)` at a clean end, `Err` on a transport error.
    async fn next(&mut self) -> Result<Option<String>, reqwest::Error> {
        loop {
            while let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..i + 2).collect();
                let event = String::from_utf8(event).unwrap();
                if !event.trim().is_empty() {
                    return Ok(Some(event.trim_start_matches('\n').to_owned()));
                }
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => {
                    assert!(self.buf.is_empty(), "trailing partial event");
                    return Ok(None);
                }
            }
        }
    }
}

fn error_event(event: &str) -> serde_json::Value {
    let json = event
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("not a data event: {event:?}"));
    serde_json::from_str(json.trim()).unwrap()
}

async fn error_json(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let e = &json["error"];
    assert!(e["message"].is_string(), "{json}");
    assert!(e["type"].is_string(), "{json}");
    assert!(e["param"].is_null(), "{json}");
    json
}

/// SSE chunks reach the client as the engine produces them: event 0 arrives before the engine
/// has even produced event 2; the in-flight accounting goes prefill → decoding → released.
#[tokio::test]
async fn streaming_passes_chunks_through_as_they_are_produced() {
    let mut engine = Engine::start(Reply::Sse {
        count: Some(5),
        first_delay: Duration::from_millis(300),
        gap: Duration::from_millis(100),
    })
    .await;
    let router = TestRouter::start(&[engine.url()], ProxyConfig::default()).await;

    let resp = client()
        .post(router.url(PATH))
        .header(header::ACCEPT, "text/event-stream")
        .body(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[WORKER_HEADER], "engine-0");
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
    assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());

    // Headers are here but the engine has not produced a chunk: the request is prefilling.
    let before_first = router.inflight.load(w(0));
    assert!(
        engine.events.try_recv().is_err(),
        "chunk 0 was produced before the load was read; the machine is too slow for this test"
    );
    assert_eq!(before_first, load(f64::from(UNCACHED), 0.0, 1));

    let mut reader = SseReader::new(resp);
    let mut events = Vec::new();
    let mut arrived = Vec::new();
    let first = reader.next().await.unwrap().expect("event 0");
    arrived.push(Instant::now());
    events.push(first);
    assert_eq!(
        router.inflight.load(w(0)),
        load(0.0, 1.0, 1),
        "decoding after the first byte"
    );
    while let Some(event) = reader.next().await.unwrap() {
        arrived.push(Instant::now());
        events.push(event);
    }
    let mut expected: Vec<String> = (0..5).map(sse_event).collect();
    expected.push(SSE_DONE.to_owned());
    assert_eq!(events, expected);

    let mut produced = Vec::new();
    while produced.len() < 5 {
        match engine.next_event(PATIENCE).await {
            Some(Event::Produced(k, at)) => {
                assert_eq!(k, produced.len());
                produced.push(at);
            }
            other => panic!("expected Produced, got {other:?}"),
        }
    }
    assert!(
        arrived[0] < produced[2],
        "event 0 reached the client only after event 2 was produced: buffered"
    );
    for k in 0..5 {
        assert!(arrived[k] >= produced[k]);
    }
    assert!(
        arrived[4] - arrived[0] >= Duration::from_millis(300),
        "events arrived together: {:?}",
        arrived[4] - arrived[0]
    );
    assert!(stream_dropped(&mut engine).await, "engine stream completed");
    eventually("in-flight released", || async { router.idle() }).await;
    assert_eq!(router.failures(w(0)), 0);
}

/// Non-streaming bodies come back byte for byte (non-ASCII, non-UTF-8, several MiB), the engine
/// receives exactly the client's bytes, path and query, and only the forwarded headers.
#[tokio::test]
async fn non_streaming_bodies_are_byte_identical() {
    let engine = Engine::start(Reply::Echo).await;
    let router = TestRouter::start(&[engine.url()], ProxyConfig::default()).await;

    let small =
        r#"{"model":"m","messages":[{"role":"user","content":"héllo wörld — 世界 🚀 \u0000"}]}"#
            .as_bytes()
            .to_vec();
    let mut large = String::from(r#"{"model":"m","prompt":""#);
    while large.len() < 3 << 20 {
        large.push_str("Grüße, 你好, こんにちは, Привет, 🚀🦀 — ");
    }
    large.push_str(r#""}"#);
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_001).collect();

    for (i, body) in [small, large.into_bytes(), binary].into_iter().enumerate() {
        let resp = client()
            .post(router.url("/v1/completions?trace=1"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, "Bearer sk-test")
            .header(header::COOKIE, "session=secret")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "body {i}");
        assert_eq!(resp.headers()[WORKER_HEADER], "engine-0");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let got = resp.bytes().await.unwrap();
        assert!(
            got == body,
            "body {i}: {} bytes back for {}",
            got.len(),
            body.len()
        );

        let seen = engine.recorded().pop().unwrap();
        assert!(seen.body == body, "body {i} reached the engine altered");
        assert_eq!(seen.path, "/v1/completions?trace=1");
        assert!(
            seen.headers.get(header::AUTHORIZATION).is_none(),
            "the client's key stays in the router by default"
        );
        assert!(seen.headers.get(header::COOKIE).is_none());
    }
    assert_eq!(engine.hits(), 3);
    eventually("in-flight released", || async { router.idle() }).await;
}

/// Whose `Authorization` an engine sees: none by default, the configured engine key
/// (`--engine-api-key`) in place of the client's, or the client's own only when asked
/// (`--forward-client-auth`). A registry entry pointing at an attacker's host must not be
/// handed the clients' keys.
#[tokio::test]
async fn engines_see_the_engine_key_not_the_clients_unless_forwarding_is_asked() {
    for (auth, expected) in [
        (EngineAuth::None, None),
        (
            EngineAuth::key("engine-secret").unwrap(),
            Some("Bearer engine-secret"),
        ),
        (EngineAuth::ForwardClient, Some("Bearer sk-client")),
    ] {
        let engine = Engine::start(Reply::Echo).await;
        let cfg = ProxyConfig {
            engine_auth: auth.clone(),
            ..ProxyConfig::default()
        };
        let router = TestRouter::start(&[engine.url()], cfg).await;
        let resp = client()
            .post(router.url("/v1/completions"))
            .header(header::AUTHORIZATION, "Bearer sk-client")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let seen = engine.recorded().pop().unwrap();
        let got: Vec<&str> = seen
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>(), "{auth:?}");
    }
}

/// A client reading one chunk and hanging up releases the in-flight count, and the engine's
/// connection is closed (its response stream is dropped unfinished).
#[tokio::test]
async fn client_disconnect_mid_stream_releases_inflight_and_closes_engine_connection() {
    let mut engine = Engine::start(Reply::Sse {
        count: None,
        first_delay: Duration::ZERO,
        gap: Duration::from_millis(20),
    })
    .await;
    let router = TestRouter::start(&[engine.url()], ProxyConfig::default()).await;

    let mut resp = router.post(r#"{"stream":true}"#).await;
    let chunk = resp.chunk().await.unwrap().expect("a first chunk");
    assert!(chunk.starts_with(b"data: "));
    assert_eq!(router.inflight.load(w(0)), load(0.0, 1.0, 1));
    drop(resp);

    eventually("in-flight released after the client left", || async {
        router.inflight.load(w(0)) == WorkerLoad::default()
    })
    .await;
    assert!(!stream_dropped(&mut engine).await, "dropped before its end");
    assert_eq!(
        router.failures(w(0)),
        0,
        "a client leaving is not the engine's fault"
    );
}

/// A client giving up before the engine's headers releases the prefill it was charged.
#[tokio::test]
async fn client_gone_before_headers_releases_inflight() {
    let engine = Engine::start(Reply::Slow(Duration::from_secs(30))).await;
    let router = TestRouter::start(&[engine.url()], ProxyConfig::default()).await;
    let attempt = client()
        .post(router.url(PATH))
        .body("{}")
        .timeout(Duration::from_millis(300))
        .send();
    // The request is charged while the engine thinks.
    let watch = async {
        eventually("request counted", || async {
            router.inflight.load(w(0)).requests == 1
        })
        .await;
        assert_eq!(
            router.inflight.load(w(0)),
            load(f64::from(UNCACHED), 0.0, 1)
        );
    };
    let (result, ()) = tokio::join!(attempt, watch);
    assert!(result.unwrap_err().is_timeout());
    eventually("in-flight released", || async { router.idle() }).await;
}

/// An SSE engine dying mid-stream: the client gets the chunks sent so far, then an OpenAI error
/// event and a clean end (no `[DONE]`); nothing stays counted; the failure is recorded.
#[tokio::test]
async fn engine_killed_mid_sse_stream_ends_with_an_error_event() {
    let first: &'static str = "data: {\"k\":0}\n\n";
    let engine = Engine::start_dying("text/event-stream", first).await;
    let router = TestRouter::start(&[engine.url()], ProxyConfig::default()).await;

    let resp = router.post(r#"{"stream":true}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut reader = SseReader::new(resp);
    assert_eq!(reader.next().await.unwrap().as_deref(), Some(first));
    assert_eq!(router.inflight.load(w(0)), load(0.0, 1.0, 1));

    engine.kill();
    let event = reader.next().await.unwrap().expect("an error event");
    let json = error_event(&event);
    assert_eq!(json["error"]["type"], "upstream_error", "{json}");
    assert_eq!(json["error"]["code"], "upstream_stream_error", "{json}");
    assert_eq!(reader.next().await.unwrap(), None, "then a clean end");

    eventually("in-flight released", || async { router.idle() }).await;
    assert_eq!(router.failures(w(0)), 1);
}

/// A non-SSE engine dying mid-body: the client's body read fails (the truncated body is not
/// passed off as complete) and nothing stays counted.
#[tokio::test]
async fn engine_killed_mid_json_body_aborts_the_client_body() {
    let engine = Engine::start_dying("application/json", "{\"partial\":").await;
    let router = TestRouter::start(&[engine.url()], ProxyConfig::default()).await;

    let mut resp = router.post("{}").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let chunk = resp.chunk().await.unwrap().expect("the first chunk");
    assert_eq!(&chunk[..], b"{\"partial\":");
    engine.kill();
    let end = resp.chunk().await;
    assert!(end.is_err(), "expected a body error, got {end:?}");
    eventually("in-flight released", || async { router.idle() }).await;
}

/// An engine that stops sending mid-stream is cut off after `idle_timeout`.
#[tokio::test]
async fn stalled_stream_hits_the_idle_timeout() {
    let engine = Engine::start(Reply::Stall).await;
    let cfg = ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let router = TestRouter::start(&[engine.url()], cfg).await;

    let started = Instant::now();
    let mut reader = SseReader::new(router.post(r#"{"stream":true}"#).await);
    assert_eq!(reader.next().await.unwrap(), Some(sse_event(0)));
    let json = error_event(&reader.next().await.unwrap().expect("an error event"));
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stalled"),
        "{json}"
    );
    assert_eq!(reader.next().await.unwrap(), None);
    assert!(started.elapsed() >= Duration::from_millis(300));
    eventually("in-flight released", || async { router.idle() }).await;
}

/// A refused connection fails over to the next target.
#[tokio::test]
async fn connection_refused_fails_over_to_the_next_target() {
    let engine = Engine::start(Reply::Echo).await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let router = TestRouter::start(&[dead, engine.url()], ProxyConfig::default()).await;

    let resp = router.post(r#"{"x":1}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[WORKER_HEADER], "engine-1");
    assert_eq!(resp.bytes().await.unwrap(), r#"{"x":1}"#);
    assert_eq!(engine.hits(), 1);
    assert_eq!(router.failures(w(0)), 1);
    assert_eq!(router.failures(w(1)), 0);
    eventually("in-flight released", || async { router.idle() }).await;
}

/// A 5xx before any byte fails over; the same body reaches the second engine.
#[tokio::test]
async fn server_error_before_any_byte_fails_over() {
    let failing = Engine::start(Reply::Status(
        StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"error":"boom"}"#,
    ))
    .await;
    let good = Engine::start(Reply::Echo).await;
    let router = TestRouter::start(&[failing.url(), good.url()], ProxyConfig::default()).await;

    let resp = router.post(r#"{"y":2}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[WORKER_HEADER], "engine-1");
    assert_eq!(resp.bytes().await.unwrap(), r#"{"y":2}"#);
    assert_eq!((failing.hits(), good.hits()), (1, 1));
    assert_eq!(failing.recorded()[0].body, good.recorded()[0].body);
    eventually("in-flight released", || async { router.idle() }).await;
}

/// A 4xx is the engine's verdict on the request: passed through unchanged, not retried, and
/// not held against the engine.
#[tokio::test]
async fn client_error_is_passed_through_and_not_retried() {
    let body =
        r#"{"object":"error","message":"context too long","type":"BadRequestError","code":400}"#;
    let rejecting = Engine::start(Reply::Status(StatusCode::BAD_REQUEST, body)).await;
    let good = Engine::start(Reply::Echo).await;
    let router = TestRouter::start(&[rejecting.url(), good.url()], ProxyConfig::default()).await;

    let resp = router.post("{}").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()[WORKER_HEADER], "engine-0");
    assert_eq!(resp.bytes().await.unwrap(), body);
    assert_eq!((rejecting.hits(), good.hits()), (1, 0));
    assert_eq!(router.failures(w(0)), 0);
    eventually("in-flight released", || async { router.idle() }).await;
}

/// No headers within `first_byte_timeout` fails over; when every target times out the client
/// gets a 504 in OpenAI's shape.
#[tokio::test]
async fn slow_headers_time_out_and_fail_over() {
    let slow = Engine::start(Reply::Slow(Duration::from_secs(30))).await;
    let good = Engine::start(Reply::Echo).await;
    let cfg = ProxyConfig {
        first_byte_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let router = TestRouter::start(&[slow.url(), good.url()], cfg.clone()).await;
    let resp = router.post("{}").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[WORKER_HEADER], "engine-1");
    resp.bytes().await.unwrap();

    let slow2 = Engine::start(Reply::Slow(Duration::from_secs(30))).await;
    let router = TestRouter::start(&[slow.url(), slow2.url()], cfg).await;
    let resp = router.post("{}").await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let json = error_json(resp).await;
    assert_eq!(json["error"]["code"], "upstream_timeout");
    eventually("in-flight released", || async { router.idle() }).await;
}

/// A non-streaming request gets the (longer) generation timeout, and one that runs out is a
/// 504 at once: the engine took it, and running the generation again elsewhere would double
/// its cost. Streaming requests fail over on their first-byte timeout (the test above).
#[tokio::test]
async fn a_non_streaming_request_that_times_out_is_not_retried() {
    let slow = Engine::start(Reply::Slow(Duration::from_secs(30))).await;
    let good = Engine::start(Reply::Echo).await;
    let cfg = ProxyConfig {
        first_byte_timeout: Duration::from_millis(100),
        generation_timeout: Duration::from_millis(400),
        ..ProxyConfig::default()
    };
    let router = TestRouter::start(&[slow.url(), good.url()], cfg).await;
    let started = Instant::now();
    let resp = router.post(r#"{"stream":false}"#).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited the generation timeout, not the first-byte one"
    );
    assert_eq!(error_json(resp).await["error"]["code"], "upstream_timeout");
    assert_eq!(slow.hits(), 1);
    assert_eq!(good.hits(), 0, "not run a second time elsewhere");
    eventually("in-flight released", || async { router.idle() }).await;
}

/// Every attempt failing answers 502 in OpenAI's shape, without addresses, after at most
/// `max_attempts` attempts.
#[tokio::test]
async fn all_attempts_failing_is_a_bounded_502() {
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(Engine::start(Reply::Status(StatusCode::SERVICE_UNAVAILABLE, "{}")).await);
    }
    let cfg = ProxyConfig {
        max_attempts: 2,
        ..ProxyConfig::default()
    };
    let urls: Vec<String> = engines.iter().map(Engine::url).collect();
    let router = TestRouter::start(&urls, cfg).await;

    let resp = router.post("{}").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let json = error_json(resp).await;
    assert_eq!(json["error"]["type"], "upstream_error");
    assert_eq!(json["error"]["code"], "upstream_unavailable");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("engine-0") && message.contains("engine-1"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "{message}");
    let hits: Vec<usize> = engines.iter().map(Engine::hits).collect();
    assert_eq!(hits, [1, 1, 0]);
    eventually("in-flight released", || async { router.idle() }).await;
}

/// No targets at all is a 503 in OpenAI's shape.
#[tokio::test]
async fn no_targets_is_a_503() {
    let router = TestRouter::start(&[], ProxyConfig::default()).await;
    let resp = router.post("{}").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        error_json(resp).await["error"]["type"],
        "service_unavailable"
    );
}

/// Consecutive failures eject a worker in the shared liveness record (which routing reads:
/// the router then ranks it last, see `a_failing_worker_is_ejected_and_route_stops_ranking_it`
/// in `http_router.rs`); the proxy itself still tries whatever targets it is given, and a
/// success clears the record.
#[tokio::test]
async fn repeated_failures_eject_a_worker_in_the_shared_record() {
    let failing = Engine::start(Reply::Status(StatusCode::INTERNAL_SERVER_ERROR, "{}")).await;
    let good = Engine::start(Reply::Echo).await;
    let router = TestRouter::start(&[failing.url(), good.url()], ProxyConfig::default()).await;

    for i in 0..EJECT_AFTER {
        assert!(
            !router.liveness.is_ejected(w(0), Instant::now()),
            "round {i}"
        );
        let resp = router.post("{}").await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "failed over to the good engine"
        );
        assert_eq!(resp.headers()[WORKER_HEADER], "engine-1");
    }
    assert_eq!(failing.hits(), EJECT_AFTER as usize);
    assert!(router.liveness.is_ejected(w(0), Instant::now()));
    assert!(!router.liveness.is_ejected(w(1), Instant::now()));
    assert_eq!(router.liveness.of(w(0), Instant::now()).ejections, 1);

    // Given only the ejected target, the proxy tries it rather than refusing.
    let only_ejected = [router.targets[0].clone()];
    let result = router
        .proxy
        .forward(
            &only_ejected,
            Outgoing {
                path: PATH,
                body: Bytes::from_static(b"{}"),
                headers: &HeaderMap::new(),
                streaming: true,
            },
            &router.inflight,
            |_| UNCACHED,
        )
        .await;
    assert_eq!(result.unwrap_err().status(), StatusCode::BAD_GATEWAY);
    assert_eq!(failing.hits(), EJECT_AFTER as usize + 1);

    // A success clears the record.
    router.liveness.record_success(w(0));
    assert!(!router.liveness.is_ejected(w(0), Instant::now()));
    eventually("in-flight released", || async { router.idle() }).await;
}
