//! `cache-router demo` end to end, as a user runs it: the real binaries (nats-server, mock
//! engines, worker-reporters, routers) as child processes on loopback, a small workload, the
//! comparison table, the PNGs, and a clean shutdown — also when interrupted with SIGINT.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cache-router");

/// The reporter binary sits beside ours when the workspace is built (`cargo test --workspace`);
/// build it when only this package was.
fn ensure_reporter() {
    let reporter = Path::new(BIN).with_file_name("worker-reporter");
    if reporter.is_file() {
        return;
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "worker-reporter"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p worker-reporter");
    assert!(status.success(), "cargo build -p worker-reporter failed");
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cr-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn demo(out: &Path, extra: &[&str]) -> Command {
    ensure_reporter();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "demo",
        "--workers",
        "2",
        "--num-blocks",
        "400",
        "--sessions",
        "4",
        "--turns",
        "3",
        "--rag-requests",
        "12",
        "--documents",
        "4",
        "--speedup",
        "10",
        "--shutdown-grace-s",
        "5",
        "--out",
    ])
    .arg(out)
    .arg("--model-dir")
    .arg(cache_router_testkit::tokenizer::deepseek_dir())
    .args(extra)
    .stdin(Stdio::null());
    cmd
}

#[test]
fn demo_compares_policies_live_and_stops_every_child() {
    let out = out_dir("full");
    let json = out.join("results.json");
    let o = demo(
        &out,
        &["--policy", "cache-aware,round-robin,least-loaded", "--json"],
    )
    .arg(&json)
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "demo failed\n{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let live = v["live"].as_array().unwrap();
    let names: Vec<&str> = live.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["cache-aware", "round-robin", "least-loaded"]);
    // 4 sessions x 3 turns + 12 RAG requests, every one answered through the router.
    for r in live {
        assert_eq!(r["requests"], 24, "{r}");
        assert_eq!(v["failed"][r["policy"].as_str().unwrap()], 0);
        assert!(r["ttft_p50_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(r["prefill_tokens_per_worker"].as_array().unwrap().len(), 2);
        assert!(r.get("evictions").is_none(), "not measured live: {r}");
    }
    // Chats re-send their history and RAG documents repeat: the engines report cached tokens.
    assert!(live[0]["hit_rate"].as_f64().unwrap() > 0.2, "{}", live[0]);
    assert_eq!(v["sim"].as_array().unwrap().len(), 3);
    for png in ["demo-chat-rag.png", "demo-chat-rag-sim.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
    assert!(
        stdout.contains("policy") && stdout.contains("hit_rate"),
        "{stdout}"
    );
    // nats + 2 engines + 2 reporters still running at the end; all exit on SIGTERM.
    assert!(
        stdout.contains(
            "stopped 5 child processes: 5 exited cleanly on SIGTERM, 0 killed, 0 had already exited"
        ),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A demo process that is stopped when the test ends, whatever happens.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child")
    }
}

impl Drop for KillOnDrop {
    /// SIGTERM first, so the demo stops its own children; SIGKILL if it does not exit.
    fn drop(&mut self) {
        let Some(mut c) = self.0.take() else { return };
        if c.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn ctrl_c_stops_every_child_cleanly() {
    let out = out_dir("sigint");
    // Slow arrivals (several seconds of replay), so the interrupt lands mid-replay.
    let child = demo(
        &out,
        &["--policy", "cache-aware", "--rate", "0.2", "--no-sim"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Killed if the test fails before it is waited for: no demo outlives the test.
    let mut child = KillOnDrop(Some(child));
    let stdout = child.get().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // Wait for the replay to start (the router is up and traffic flows).
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no replay progress; output so far:\n{}", seen.join("\n")));
        let started = line.contains("[cache-aware]") && line.contains("done");
        seen.push(line);
        if started {
            break;
        }
    }
    kill(Pid::from_raw(child.get().id() as i32), Signal::SIGINT).unwrap();
    let status = child.get().wait().unwrap();
    seen.extend(rx.iter());
    let text = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(
        text.contains("interrupted: stopping every child process"),
        "{text}"
    );
    // nats + 2 engines + 2 reporters + the router: every one exits on SIGTERM.
    assert!(
        text.contains(
            "stopped 6 child processes: 6 exited cleanly on SIGTERM, 0 killed, 0 had already exited"
        ),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
