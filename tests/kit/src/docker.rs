//! What the kit needs from Docker: whether an engine answers and an image is built, the
//! images' names, and a way to drive testcontainers' blocking API from async tests.
//!
//! No image is ever pulled: `docker/build.sh` builds `cache-router/{nats,router,reporter}`
//! locally, and `CACHE_ROUTER_IMAGE_TAG` (default `dev`) names the tag.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The tag of the locally built images.
pub fn image_tag() -> String {
    std::env::var("CACHE_ROUTER_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "dev".to_owned())
}

/// `cache-router/nats`, the image `docker/build.sh` makes from the nats-server binary.
pub const NATS_IMAGE: &str = "cache-router/nats";

/// Runs `f` on a fresh OS thread and returns its result. testcontainers' blocking API runs
/// its own tokio runtime, which must not start (or be dropped) on a thread that is already
/// inside one, as every async test's thread is.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Runs `args` with the docker CLI within `limit`; true on success.
fn docker_ok(args: &[&str], limit: Duration) -> bool {
    let Ok(mut child) = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Whether a Docker engine answers (`docker info` within 10 s); asked once per process.
pub fn engine_answers() -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    *ANSWERS.get_or_init(|| docker_ok(&["info"], Duration::from_secs(10)))
}

/// Whether `image:tag` exists locally.
pub fn image_present(image: &str, tag: &str) -> bool {
    engine_answers()
        && docker_ok(
            &["image", "inspect", &format!("{image}:{tag}")],
            Duration::from_secs(10),
        )
}

/// A name unique to this process and call, for containers and networks of one test.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port that was free a moment ago (for a container's fixed host port, which must
/// survive its restarts). Another process can take it before Docker binds it; callers retry
/// on "port is already allocated".
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until a NATS server answers on `127.0.0.1:port` (its `INFO` line: Docker's port
/// proxy accepts connections before the server in the container does), at most `limit`.
pub fn wait_for_nats(port: u16, limit: Duration) -> bool {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        ) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() && &buf == b"INFO" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
