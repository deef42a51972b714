//! End to end: the `cache-router sim` binary on the shipped Mooncake trace, as a user runs it.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cache-router"))
}

fn trace() -> String {
    format!(
        "{}/testdata/mooncake_trace.jsonl",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn trace_comparison_meets_the_issue_bar() {
    let out = bin()
        .args([
            "sim",
            "--trace",
            &trace(),
            "--workers",
            "8",
            "--capacity-blocks",
            "2000",
        ])
        .args([
            "--policy",
            "cache-aware,round-robin,least-loaded,random,approx",
            "--json",
        ])
        .output()
        .expect("run cache-router sim");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let rows = v.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 5);
    let get = |name: &str| {
        rows.iter()
            .find(|r| r["policy"] == name)
            .expect(name)
            .clone()
    };
    for r in rows {
        for key in [
            "hit_rate",
            "ttft_mean_ms",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "throughput_rps",
            "imbalance",
        ] {
            assert!(r[key].is_number(), "{key} missing in {r}");
        }
        assert_eq!(r["requests"], 3993);
        assert_eq!(r["index_mismatches"], 0);
    }
    let ca = get("cache-aware");
    let rr = get("round-robin");
    let hit = |r: &serde_json::Value| r["hit_rate"].as_f64().unwrap();
    assert!(
        hit(&ca) >= 3.0 * hit(&rr),
        "cache-aware {} vs round-robin {}",
        hit(&ca),
        hit(&rr)
    );
    assert!(
        ca["imbalance"].as_f64().unwrap() <= 1.3,
        "imbalance {}",
        ca["imbalance"]
    );
}

#[test]
fn bad_flags_exit_with_usage_error_and_a_message() {
    let out = bin().args(["sim", "--workers", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workers"));
    let out = bin()
        .args(["sim", "--trace", "/nonexistent/trace.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read trace"));
    let out = bin().args(["sim", "--policy", "fastest"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects unknown policies");
}

#[test]
fn plot_is_written() {
    let dir = std::env::temp_dir().join(format!("cr-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("sim.png");
    let out = bin()
        .args([
            "sim",
            "--workload",
            "rag",
            "--rag-requests",
            "300",
            "--workers",
            "4",
        ])
        .args(["--policy", "cache-aware,round-robin", "--plot"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
