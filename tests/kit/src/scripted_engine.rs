//! Small in-test inference engines over real loopback HTTP, for the proxy tests.
//!
//! [`Engine::start`] serves one [`Reply`] behaviour with axum on `127.0.0.1:0`; the listener is
//! bound before the server task is spawned, so the engine accepts connections as soon as
//! `start` returns. Every request is recorded (path, headers, body), and the engine reports
//! what it does on an event channel: each SSE chunk as it produces it (with the instant) and
//! when its response stream is dropped (by hyper, when the connection closes) and whether it
//! had finished. [`Engine::start_dying`] is a raw-TCP engine whose server task writes a status
//! line, headers and one chunk, then hangs until [`Engine::kill`] aborts the task, which closes
//! the socket mid-body like a crashed engine.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What an engine answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with the request body, byte for byte, and the request's content type.
    Echo,
    /// `status` with this JSON body.
    Status(StatusCode, &'static str),
    /// 200 `text/event-stream`: events `data: {"k":K}\n\n` for K = 0.. (`count` of them, or
    /// without end when `None`), the first after `first_delay`, then one every `gap`, then
    /// `data: [DONE]\n\n`.
    Sse {
        count: Option<usize>,
        first_delay: Duration,
        gap: Duration,
    },
    /// Waits this long before answering at all, then echoes.
    Slow(Duration),
    /// 200 `text/event-stream` with one event, then nothing ever again.
    Stall,
}

/// What an engine did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SSE chunk `k` was handed to hyper at this instant.
    Produced(usize, Instant),
    /// The response stream was dropped; `completed` when it had yielded its last chunk.
    StreamDropped { completed: bool },
}

/// One request as the engine received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The SSE chunk for event `k`.
pub fn sse_event(k: usize) -> String {
    format!("data: {{\"k\":{k}}}\n\n")
}

pub const SSE_DONE: &str = "data: [DONE]\n\n";

#[derive(Debug)]
struct Shared {
    reply: Reply,
    hits: AtomicUsize,
    recorded: Mutex<Vec<Recorded>>,
    events: mpsc::UnboundedSender<Event>,
}

/// A running in-test engine; dropping it aborts its server task.
#[derive(Debug)]
pub struct Engine {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Engine events, in order.
    pub events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

impl Engine {
    pub async fn start(reply: Reply) -> Engine {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind engine");
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            reply,
            hits: AtomicUsize::new(0),
            recorded: Mutex::new(Vec::new()),
            events: tx,
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("engine serve");
        });
        Engine {
            addr,
            shared,
            events,
            task,
        }
    }

    /// A raw HTTP/1.1 engine: reads one request, answers 200 with `content_type`, chunked,
    /// writes `first_chunk` and then waits, holding the connection, until [`kill`](Self::kill).
    pub async fn start_dying(content_type: &'static str, first_chunk: &'static str) -> Engine {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind engine");
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            reply: Reply::Stall,
            hits: AtomicUsize::new(0),
            recorded: Mutex::new(Vec::new()),
            events: tx,
        });
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // The connection is served inside this task, so aborting it drops the socket.
            let (mut sock, _) = listener.accept().await.expect("accept");
            let request = read_request(&mut sock).await;
            state.hits.fetch_add(1, Ordering::SeqCst);
            state.recorded.lock().unwrap().push(request);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            let chunk = format!("{:x}\r\n{first_chunk}\r\n", first_chunk.len());
            sock.write_all(head.as_bytes()).await.unwrap();
            sock.write_all(chunk.as_bytes()).await.unwrap();
            sock.flush().await.unwrap();
            let _ = state.events.send(Event::Produced(0, Instant::now()));
            std::future::pending::<()>().await;
        });
        Engine {
            addr,
            shared,
            events,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    /// Aborts the server task (for [`start_dying`](Self::start_dying): closes the connection
    /// mid-body).
    pub fn kill(&self) {
        self.task.abort();
    }

    /// The next event, waiting at most `patience`.
    pub async fn next_event(&mut self, patience: Duration) -> Option<Event> {
        tokio::time::timeout(patience, self.events.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request: head up to the blank line, then `content-length` bytes of body.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Recorded {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "client closed before sending a request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_owned();
    let mut headers = HeaderMap::new();
    let mut length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').expect("header line");
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if name == "content-length" {
            length = value.parse().unwrap();
        }
        headers.append(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "client closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    Recorded {
        path,
        headers,
        body: Bytes::copy_from_slice(&buf[head_end..head_end + length]),
    }
}

async fn handle(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    s.recorded.lock().unwrap().push(Recorded {
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: headers.clone(),
        body: body.clone(),
    });
    match s.reply.clone() {
        Reply::Echo => echo(&headers, body),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            echo(&headers, body)
        }
        Reply::Status(status, json) => {
            (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        Reply::Sse {
            count,
            first_delay,
            gap,
        } => sse(s.events.clone(), count, first_delay, gap),
        Reply::Stall => sse(s.events.clone(), Some(1), Duration::ZERO, Duration::MAX),
    }
}

fn echo(headers: &HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".parse().unwrap());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Reports the end of a response stream when hyper drops it (or when it completes).
struct DropSignal {
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl DropSignal {
    fn complete(&mut self) {
        if let Some(events) = self.events.take() {
            let _ = events.send(Event::StreamDropped { completed: true });
        }
    }

    fn send(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            let _ = events.send(Event::StreamDropped { completed: false });
        }
    }
}

/// An SSE body. With `gap == Duration::MAX` it stalls forever after `count` events instead of
/// sending `[DONE]`.
fn sse(
    events: mpsc::UnboundedSender<Event>,
    count: Option<usize>,
    first_delay: Duration,
    gap: Duration,
) -> Response {
    let stall = gap == Duration::MAX;
    let state = (
        0usize,
        DropSignal {
            events: Some(events),
        },
    );
    let stream = futures::stream::unfold(state, move |(k, mut signal)| async move {
        if count.is_some_and(|n| k > n) {
            signal.complete();
            return None;
        }
        if stall && count.is_some_and(|n| k >= n) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(if k == 0 { first_delay } else { gap }).await;
        let chunk = if count == Some(k) {
            SSE_DONE.to_owned()
        } else {
            signal.send(Event::Produced(k, Instant::now()));
            sse_event(k)
        };
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), (k + 1, signal)))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A loopback port with nothing listening: bound, then released. Another process could bind
/// it in between (a tiny race, acceptable in tests).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
