//! Proxy overhead on loopback: the same requests sent straight to a trivial engine, through
//! cache-router, and through nginx proxying the same engine, measured in one run; prints
//! throughput, latency percentiles and the ratios. `cargo bench --bench proxy`
//! (nginx from Debian's package: `scripts/install-nginx.sh`; skipped with a note if absent).
//!
//! Everything binds 127.0.0.1, request counts are fixed, and the run stops by itself. The load
//! generator shares the 2 cores with the servers, so compare the ratios, not the absolutes.
//! Full runs also draw `docs/img/proxy.png` (throughput and latency CDFs); small runs (under
//! `cargo test`) draw it under `target/`.

#[path = "common/proxy_plot.rs"]
mod proxy_plot;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::routing::post;

use cache_router::{RouterConfig, RunningRouter};
use cache_router_core::policy::{PolicyConfig, PolicyKind};
use cache_router_testkit::{eventually, routers, small_mode, tokenizer};

const REPLY: &str = r#"{"id":"cmpl-1","object":"text_completion","created":0,"model":"m","choices":[{"index":0,"text":" hello world","finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;
const BODY: &str =
    r#"{"model":"m","prompt":"Write one short sentence about caches and routers.","max_tokens":2}"#;

async fn engine() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/v1/completions",
        post(|| async { ([("content-type", "application/json")], REPLY) }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

/// cache-router in front of the engine: the library router on one static worker, cache-aware,
/// speculation off, the real tokenizer for model "m". Dropping the handle stops it.
async fn router(engine_url: &str) -> RunningRouter {
    let mut config = RouterConfig::new(tokenizer::models("m", 16));
    config.static_workers = vec![routers::worker("engine", engine_url, "m")];
    config.policy = PolicyKind::CacheAware;
    config.policy_config = PolicyConfig::default();
    config.speculation = None;
    config.max_workers = 16;
    config.max_index_entries = None;
    routers::spawn(config).await
}

struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

async fn nginx(engine_url: &str) -> Option<(String, Nginx)> {
    let bin = nginx_bin()?;
    let upstream = engine_url.trim_start_matches("http://");
    // nginx cannot report a kernel-chosen port: take a free one (a small race, fine here).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = std::env::temp_dir().join(format!("cr-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
           upstream engine {{ server {upstream}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://engine;\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut guard = Nginx { child, dir };
    // Ready when it accepts connections; an nginx that exits instead (a bad configuration, the
    // port taken) is skipped like a missing one.
    let mut exited = false;
    eventually("nginx accepts connections or exits", || {
        exited |= matches!(guard.child.try_wait(), Ok(Some(_)));
        let done = exited;
        async move {
            done || tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        }
    })
    .await;
    (!exited).then(|| (format!("http://127.0.0.1:{port}"), guard))
}

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// Every measured request's latency, sorted (for the plot's CDF).
    lat: Vec<Duration>,
}

async fn load(url: &str, total: usize, concurrency: usize) -> Run {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let target = format!("{url}/v1/completions");
    // Warm-up.
    for _ in 0..50 {
        let r = client
            .post(&target)
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{target}: {}", r.status());
        r.bytes().await.unwrap();
    }
    let started = Instant::now();
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, target) = (client.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let r = client
                    .post(&target)
                    .header("content-type", "application/json")
                    .body(BODY)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                let b = r.bytes().await.unwrap();
                assert_eq!(b.len(), REPLY.len());
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    Run {
        rps: lat.len() as f64 / secs,
        p50: lat[lat.len() / 2],
        p99: lat[(lat.len() - 1) * 99 / 100],
        lat,
    }
}

fn main() {
    let small = small_mode();
    let (total, conc) = if small { (400, 8) } else { (40_000, 32) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = engine().await;
        let router = router(&e).await;
        let r = router.url().to_owned();
        let ng = nginx(&e).await;
        println!("proxy bench: {total} requests, {conc} concurrent connections, 2 cores shared by client and servers");
        let mut rows = vec![("direct", load(&e, total, conc).await), ("cache-router", load(&r, total, conc).await)];
        match &ng {
            Some((url, _)) => rows.push(("nginx", load(url, total, conc).await)),
            None => println!("nginx: not installed, skipped (scripts/install-nginx.sh installs Debian's)"),
        }
        let direct = (rows[0].1.rps, rows[0].1.p50);
        for (name, run) in &rows {
            println!(
                "  {name:<13} {:>8.0} req/s ({:.2}x direct)  p50 {:>7.1?} (+{:>6.1?} vs direct)  p99 {:>7.1?}",
                run.rps,
                run.rps / direct.0,
                run.p50,
                run.p50.saturating_sub(direct.1),
                run.p99,
            );
        }
        if let [_, (_, ours), (_, theirs)] = &rows[..] {
            println!(
                "  cache-router / nginx: throughput {:.2}x, p50 latency {:.2}x",
                ours.rps / theirs.rps,
                ours.p50.as_secs_f64() / theirs.p50.as_secs_f64()
            );
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let path = match std::env::var_os("CARGO_TARGET_DIR") {
            _ if !small => root.join("docs/img/proxy.png"),
            Some(t) => root.join(t).join("bench-proxy-small.png"),
            None => root.join("target/bench-proxy-small.png"),
        };
        let _ = std::fs::create_dir_all(path.parent().expect("a directory"));
        let title =
            format!("proxy overhead on loopback: {total} requests, {conc} concurrent, 2 cores");
        match proxy_plot::plot(&rows, &title, &path) {
            Ok(()) => println!("plot written to {}", path.display()),
            Err(e) => println!("WARNING: no plot: {e}"),
        }
        router.stop().await.expect("the router stops");
    });
}
