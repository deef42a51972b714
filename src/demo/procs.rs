//! Child processes of the demo: spawn with logs to files, wait for readiness, stop with
//! SIGTERM and a grace period (SIGKILL after it).
//!
//! Children run in their own process group so a Ctrl-C in the terminal reaches only the demo,
//! which then stops them in order (router, reporters, engines, NATS) and waits for each: every
//! child gets to shut down cleanly (reporters deregister their workers, the router drains).
//! `kill_on_drop` is the backstop if the demo itself dies of a panic.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::DemoError;
use cache_router_core::backoff::Backoff;

/// One running child.
#[derive(Debug)]
pub(super) struct Proc {
    pub name: String,
    /// Children stop tier by tier, highest first (router, reporters, engines, NATS), so each
    /// can still reach what it depends on while it shuts down.
    pub tier: u8,
    pub log: PathBuf,
    child: Child,
}

/// How a child ended when the demo stopped it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stopped {
    /// Exited after SIGTERM within the grace period.
    Clean,
    /// Killed: the grace period ran out, or the user asked twice.
    Killed,
    /// Had already exited (crashed) before the demo stopped it.
    Dead(String),
}

/// Environment variables the children keep; everything else is dropped so that a user's
/// `CACHE_ROUTER_*`, `ZMQ_*` or `ADVERTISE_URL` settings cannot reconfigure the demo's fleet.
const KEEP_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "CACHE_ROUTER_LOG",
    "RUST_LOG",
];

impl Proc {
    /// Starts `bin args…` with stdout and stderr appended to `logs/<name>.log`.
    pub(super) fn spawn(
        name: &str,
        tier: u8,
        bin: &Path,
        args: &[String],
        logs: &Path,
    ) -> Result<Proc, DemoError> {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", log.display())))?;
        let err_file = file
            .try_clone()
            .map_err(|e| DemoError::Setup(format!("cannot open {}: {e}", log.display())))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_clear()
            .envs(
                KEEP_ENV
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
            )
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            DemoError::Setup(format!("cannot start {name} ({}): {e}", bin.display()))
        })?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Proc {
            name: name.to_string(),
            tier,
            log,
            child,
        })
    }

    /// Fails if the child has already exited (it crashed, e.g. on a bad flag or a port taken).
    pub(super) fn check_alive(&mut self) -> Result<(), DemoError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(DemoError::ChildExited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.display().to_string(),
                tail: tail(&self.log, 8),
            }),
            Err(e) => Err(DemoError::Setup(format!("{}: {e}", self.name))),
        }
    }

    /// SIGTERM, then up to `grace` for a clean exit (cut short by `force`), then SIGKILL.
    pub(super) async fn stop(mut self, grace: Duration, force: &CancellationToken) -> Stopped {
        if let Ok(Some(status)) = self.child.try_wait() {
            tracing::warn!(name = %self.name, %status, log = %self.log.display(), "had already exited");
            return Stopped::Dead(status.to_string());
        }
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let exited = tokio::select! {
            r = tokio::time::timeout(grace, self.child.wait()) => matches!(r, Ok(Ok(_))),
            _ = force.cancelled() => false,
        };
        if exited {
            tracing::debug!(name = %self.name, "stopped");
            return Stopped::Clean;
        }
        tracing::warn!(name = %self.name, "did not stop within {grace:?} (or asked twice); killing it");
        let _ = self.child.kill().await;
        Stopped::Killed
    }
}

/// The last `n` lines of a log file, for error messages.
pub(super) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback port free right now (the child binds it a moment later; another process could
/// take it in between, which the readiness check then reports).
pub(super) fn free_port() -> Result<u16, DemoError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| DemoError::Setup(format!("cannot find a free port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| DemoError::Setup(format!("cannot find a free port: {e}")))?
        .port())
}

/// Polls until `ready()` says yes, any child dies, the deadline passes or the demo is
/// cancelled. `procs.last()` is the child being waited for. Readiness is an observable fact
/// (a port accepts, an endpoint answers), so this polls rather than sleeping a fixed time.
pub(super) async fn wait_ready<F, Fut>(
    what: &str,
    procs: &mut [Proc],
    timeout: Duration,
    cancel: &CancellationToken,
    mut ready: F,
) -> Result<(), DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    // Polls quickly at first, then every 100 ms.
    let polls = Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(100),
    };
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        if ready().await {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if Instant::now() > deadline {
            let (log, tail) = procs.last().map_or_else(Default::default, |p| {
                (p.log.display().to_string(), self::tail(&p.log, 8))
            });
            return Err(DemoError::NotReady {
                what: what.to_string(),
                log,
                tail,
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(polls.delay(attempt)) => {},
            _ = cancel.cancelled() => return Err(DemoError::Cancelled),
        }
    }
}

/// Whether something accepts TCP connections at `addr`.
pub(super) async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Whether `GET url` answers 2xx.
pub(super) async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    matches!(
        client.get(url).timeout(Duration::from_secs(2)).send().await,
        Ok(r) if r.status().is_success()
    )
}

/// Finds a program: an explicit path, else next to the running executable (cargo puts every
/// binary of the workspace in one directory), else `PATH`.
pub(super) fn locate(explicit: Option<&Path>, name: &str) -> Result<PathBuf, DemoError> {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(DemoError::Setup(format!("{} does not exist", p.display())))
        };
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
        // Under `cargo test` the executable sits in target/<profile>/deps.
        if let Some(p) = dir.parent().map(|d| d.join(name)).filter(|p| p.is_file()) {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            DemoError::Setup(format!(
                "cannot find `{name}` (next to this binary or on PATH); build it with \
                 `cargo build --release --workspace` or pass its path"
            ))
        })
}
