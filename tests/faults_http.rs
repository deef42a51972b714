//! Hostile and careless clients against a real router on loopback: slow and idle connections,
//! more connections than allowed, huge prompts and bodies, and the admin token. Each test
//! reproduces one finding of the fault campaign and asserts what the router does instead.
//!
//! Raw TCP where the attack is below HTTP (slowloris, a declared length that is never sent);
//! reqwest everywhere else. The engine behind the router is the kit's mock vLLM engine.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use cache_router::{ConnectionLimits, RouterConfig, RunningRouter};
use cache_router_core::prom_text;
use cache_router_testkit::engines::{start_engine, Engine, EngineSpec};
use cache_router_testkit::{
    eventually, http_client, patience, routers, tokenizer, BLOCK_SIZE, MODEL,
};

/// A router over one mock engine, with `edit` applied to its configuration.
async fn router_with(edit: impl FnOnce(&mut RouterConfig)) -> (RunningRouter, Engine) {
    let engine = start_engine(EngineSpec::default()).await.unwrap();
    let mut config = RouterConfig::new(tokenizer::models(MODEL, BLOCK_SIZE));
    config.static_workers = vec![routers::worker("w1", engine.url(), MODEL)];
    edit(&mut config);
    (routers::spawn(config).await, engine)
}

fn addr(router: &RunningRouter) -> String {
    router.url().trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes the connection (Ok(bytes read)), within the kit's patience.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(patience(), stream.read_to_end(&mut got))
        .await
        .expect("the router closes the connection")
        .ok();
    got
}

/// Sends `GET path` on an open keep-alive connection and reads one response (the router's
/// small responses carry a Content-Length). Returns the status and the body.
async fn get_on(stream: &mut TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: router\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(patience(), stream.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status, body);
            }
        }
    }
}

/// A slowloris client (headers a byte now and then, never finished), one that connects and
/// sends nothing, and an idle keep-alive connection are all closed after the header-read
/// timeout; before, all three stayed open until the process ran out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_silent_and_idle_connections_are_closed_after_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let (router, _engine) = router_with(|c| {
        c.connection_limits = ConnectionLimits {
            header_read_timeout: timeout,
            ..ConnectionLimits::default()
        }
    })
    .await;
    let addr = addr(&router);

    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: r\r\nX-A: ")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let (status, _) = get_on(&mut idle, "/health").await;
    assert_eq!(status, 200);

    let started = Instant::now();
    // The slowloris keeps dribbling until the router hangs up.
    let dribble = async {
        loop {
            if slow.write_all(b"a").await.is_err() {
                break;
            }
            let mut b = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {} // a 408 before the close
                Err(_) => {}
            }
        }
    };
    tokio::time::timeout(patience(), dribble)
        .await
        .expect("the slowloris connection is closed");
    let silent_got = read_to_close(&mut silent).await;
    let idle_got = read_to_close(&mut idle).await;
    println!(
        "slowloris, silent and idle connections all closed {:?} after a {timeout:?} header timeout",
        started.elapsed()
    );
    // Whatever the router said before closing, it answered no request on them.
    for got in [silent_got, idle_got] {
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("200 OK"), "{text}");
    }
}

/// Past `--max-connections` a new connection is closed at once and counted, the open ones are
/// served, and a slot frees when one of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_and_slots_free_on_close() {
    let (router, _engine) = router_with(|c| {
        c.connection_limits = ConnectionLimits {
            max_connections: 4,
            ..ConnectionLimits::default()
        }
    })
    .await;
    let addr = addr(&router);
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(get_on(&mut s, "/health").await.0, 200);
        open.push(s);
    }
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    // It may be refused before or after the request is written; either way no answer.
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
        .await;
    let got = read_to_close(&mut extra).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    let (status, metrics) = get_on(&mut open[0], "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        prom_text::unlabelled(&metrics, "cache_router_connections_refused_total"),
        Some(1.0)
    );

    drop(open.pop());
    eventually("a new connection is served once one closed", || async {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            return false;
        };
        let _ = s
            .write_all(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
            .await;
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
            Ok(Ok(n)) if n > 0 && b.starts_with(b"HTTP/1.1 200")
        )
    })
    .await;
}

/// A declared `Content-Length` over `--max-body-bytes` is answered 413 before a byte of the
/// body is sent (before, the router read the body up to the limit first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_content_length_is_refused_before_the_body_is_read() {
    let (router, engine) = router_with(|c| c.max_body_bytes = 1 << 20).await;
    let mut s = TcpStream::connect(addr(&router)).await.unwrap();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n\
          Content-Length: 100000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"error\"") {
        let n = tokio::time::timeout(patience(), s.read(&mut chunk))
            .await
            .expect("an answer without sending the body")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("invalid_request_error"), "{text}");
    assert_eq!(engine.mock.engine.stats().prefix_cache_queries_tokens, 0);
}

/// `--max-prompt-tokens`: a prompt with more tokens is a 400 in OpenAI's shape naming the
/// field; a body far larger than the limit could hold is refused before tokenizing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_max_prompt_tokens_are_400_and_huge_ones_are_not_tokenized() {
    let (router, engine) = router_with(|c| c.max_prompt_tokens = 1000).await;
    let http = http_client();
    let post = |path: &'static str, body: Value| {
        let http = http.clone();
        let url = format!("{}{path}", router.url());
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let ids: Vec<u32> = (0..1500).map(|i| 100 + i % 20_000).collect();
    let (status, err) = post(
        "/v1/completions",
        json!({"model": MODEL, "prompt": ids, "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(err["error"]["param"], "prompt");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1500 tokens"));

    // 100 KB of text: more bytes than 1000 tokens could ever take (32 bytes a token).
    let text = "lorem ipsum dolor sit amet ".repeat(4000);
    let (status, err) = post(
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": text}]}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "messages");
    assert!(err["error"]["message"].as_str().unwrap().contains("bytes"));

    // Under the limit still works.
    let ids: Vec<u32> = (0..200).map(|i| 100 + i).collect();
    let (status, _) = post(
        "/v1/completions",
        json!({"model": MODEL, "prompt": ids, "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(engine.mock.engine.stats().prefix_cache_queries_tokens > 0);
}

fn queue(metrics: &str, lane: &str) -> f64 {
    prom_text::samples(metrics)
        .find(|s| s.name == "cache_router_tokenize_queue" && s.label("lane") == Some(lane))
        .map_or(0.0, |s| s.value)
}

/// Four multi-megabyte prompts used to take both tokenizer slots while a 6 KB prompt waited
/// behind them for 25 s. Huge prompts now queue in their own lane: the 6 KB prompt is answered
/// while they are all still queued or tokenizing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_prompt_does_not_queue_behind_huge_ones() {
    let (router, _engine) = router_with(|c| {
        c.max_prompt_tokens = 4_000_000;
        c.max_body_bytes = 16 << 20;
        c.tokenize_slots = Some(2);
    })
    .await;
    let http = http_client();
    let huge_text = "The quick brown fox jumps over the lazy dog; ".repeat(2 << 20 >> 5);
    let huge = Arc::new(json!({"model": MODEL, "prompt": huge_text}).to_string());
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url, body, done) = (
            http.clone(),
            format!("{}/route", router.url()),
            huge.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body((*body).clone())
                .timeout(patience() * 4)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let metrics_url = format!("{}/metrics", router.url());
    eventually("all four huge prompts are in the huge lane", || async {
        let m = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        queue(&m, "huge") == 4.0
    })
    .await;
    let normal = "Summarize the following notes about the quarterly review. ".repeat(100);
    let started = Instant::now();
    let r = http
        .post(format!("{}/route", router.url()))
        .json(&json!({"model": MODEL, "prompt": normal}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    let huge_done_then = done.load(Ordering::SeqCst);
    println!(
        "a {} KB prompt answered in {took:?} while {} of 4 huge ({} MB) prompts had finished",
        normal.len() / 1024,
        huge_done_then,
        huge.len() >> 20
    );
    assert!(
        huge_done_then <= 1,
        "the normal prompt waited for {huge_done_then} huge ones"
    );
    for t in tasks {
        t.await.unwrap();
    }
    let m = http
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(queue(&m, "huge"), 0.0);
}

/// Lines the child writes to stderr, read on a thread.
fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills the child when dropped (a failing test must not leave a router behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cache-router serve --admin-token-file`: the token is read from the file (not the process
/// list), and only the exact token opens `/admin/*` (compared in constant time; a prefix or an
/// extension of it is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_comes_from_a_file_and_only_the_exact_token_opens_admin() {
    let engine = start_engine(EngineSpec::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("cr-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cache-router"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model", MODEL])
        .arg("--tokenizer")
        .arg(tokenizer::tokenizer_file())
        .args(["--worker", &format!("w1={}", engine.url())])
        .arg("--admin-token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let child = Killed(child);
    let deadline = Instant::now() + patience();
    let addr = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the router says where it listens");
        if line.contains("router listening") {
            let at = line.find("addr=").expect("addr in the log line") + 5;
            break line[at..].split_whitespace().next().unwrap().to_owned();
        }
    };
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.0.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"));

    let http = http_client();
    let admin = |token: Option<&'static str>| {
        let mut r = http.get(format!("http://{addr}/admin/workers"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(admin(None).await, 401);
    assert_eq!(admin(Some("s3cret-admin-toke")).await, 401, "a prefix");
    assert_eq!(
        admin(Some("s3cret-admin-token-")).await,
        401,
        "an extension"
    );
    assert_eq!(admin(Some("S3CRET-ADMIN-TOKEN")).await, 401);
    assert_eq!(admin(Some("s3cret-admin-token")).await, 200);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
