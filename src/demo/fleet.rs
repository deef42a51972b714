//! Starts the demo's fleet: its own nats-server (JetStream), then N mock engines with a
//! worker-reporter beside each.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::children::{Children, TIER_ENGINE, TIER_NATS, TIER_REPORTER};
use super::procs::{self, free_port, http_ok, Proc};
use super::{DemoArgs, DemoError, MODEL};

/// One live engine + reporter pair.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) id: String,
    pub(super) url: String,
}

/// NATS with JetStream in its own store directory under `logs`; returns its URL.
pub(super) async fn start_nats(
    nats_bin: &Path,
    logs: &Path,
    children: &mut Children,
    cancel: &CancellationToken,
) -> Result<String, DemoError> {
    let store = logs.join("jetstream");
    let _ = std::fs::remove_dir_all(&store);
    let port = children
        .start_bound(
            "nats-server",
            TIER_NATS,
            nats_bin,
            logs,
            cancel,
            || {
                let port = free_port()?;
                let argv = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]
                    .iter()
                    .map(|a| a.to_string())
                    .chain([store.display().to_string()])
                    .collect();
                Ok((port, argv))
            },
            |port| procs::accepts(([127, 0, 0, 1], port).into()),
        )
        .await?;
    Ok(format!("nats://127.0.0.1:{port}"))
}

/// What starting the engines and reporters needs.
pub(super) struct FleetSetup<'a> {
    pub(super) args: &'a DemoArgs,
    /// This binary (engines are `cache-router mock-worker`).
    pub(super) me: &'a Path,
    pub(super) reporter_bin: &'a Path,
    pub(super) logs: &'a Path,
    pub(super) nats_url: &'a str,
    pub(super) block_size: u64,
    pub(super) client: &'a reqwest::Client,
}

/// Starts `--workers` engines, each ready before its reporter starts.
pub(super) async fn start_workers(
    s: &FleetSetup<'_>,
    children: &mut Children,
    cancel: &CancellationToken,
) -> Result<Vec<Worker>, DemoError> {
    let mut workers = Vec::new();
    for i in 0..s.args.workers {
        let (hp, ep, rp) = start_engine(s, i, children, cancel).await?;
        let url = format!("http://127.0.0.1:{hp}");
        let id = format!("worker-{i}");
        let argv: Vec<String> = vec![
            "--worker-id".into(),
            id.clone(),
            "--engine-url".into(),
            url.clone(),
            "--model".into(),
            MODEL.into(),
            "--block-size".into(),
            s.block_size.to_string(),
            "--zmq-endpoint".into(),
            format!("tcp://127.0.0.1:{ep}"),
            "--zmq-replay-endpoint".into(),
            format!("tcp://127.0.0.1:{rp}"),
            "--nats".into(),
            s.nats_url.to_owned(),
            "--digest-interval".into(),
            format!("{}ms", s.args.digest_interval.as_millis()),
        ];
        let reporter = Proc::spawn(
            &format!("reporter-{i}"),
            TIER_REPORTER,
            s.reporter_bin,
            &argv,
            s.logs,
        )?;
        children.procs.push(reporter);
        workers.push(Worker { id, url });
    }
    Ok(workers)
}

/// One mock engine; returns its HTTP, KV-events and replay ports.
async fn start_engine(
    s: &FleetSetup<'_>,
    i: usize,
    children: &mut Children,
    cancel: &CancellationToken,
) -> Result<(u16, u16, u16), DemoError> {
    let t = &s.args.timing;
    let model_dir = s.args.model_dir.display().to_string();
    children
        .start_bound(
            &format!("engine-{i}"),
            TIER_ENGINE,
            s.me,
            s.logs,
            cancel,
            || {
                let (hp, ep, rp) = (free_port()?, free_port()?, free_port()?);
                let argv = vec![
                    "mock-worker".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{hp}"),
                    "--model".into(),
                    MODEL.into(),
                    "--model-dir".into(),
                    model_dir.clone(),
                    "--num-blocks".into(),
                    s.args.num_blocks.to_string(),
                    "--block-size".into(),
                    s.block_size.to_string(),
                    "--speedup".into(),
                    s.args.speedup.to_string(),
                    "--prefill-overhead-ms".into(),
                    t.prefill_overhead_ms.to_string(),
                    "--prefill-ms-per-token".into(),
                    t.prefill_ms_per_token.to_string(),
                    "--decode-ms-per-token".into(),
                    t.decode_ms_per_token.to_string(),
                    "--decode-ms-per-seq".into(),
                    t.decode_ms_per_seq.to_string(),
                    "--kv-events-endpoint".into(),
                    format!("tcp://127.0.0.1:{ep}"),
                    "--kv-replay-endpoint".into(),
                    format!("tcp://127.0.0.1:{rp}"),
                ];
                Ok(((hp, ep, rp), argv))
            },
            |(hp, _, _)| {
                let client = s.client.clone();
                async move { http_ok(&client, &format!("http://127.0.0.1:{hp}/health")).await }
            },
        )
        .await
}

/// Resets every engine's prefix cache (cold caches for the next policy); the reset reaches
/// the router as `AllBlocksCleared` like any event.
pub(super) async fn reset_caches(
    client: &reqwest::Client,
    workers: &[Worker],
) -> Result<(), DemoError> {
    for w in workers {
        let url = format!("{}/reset_prefix_cache", w.url);
        let resp = client
            .post(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => return Err(DemoError::Setup(format!("POST {url}: {}", r.status()))),
            Err(e) => return Err(DemoError::Setup(format!("POST {url}: {e}"))),
        }
    }
    Ok(())
}
