//! One policy's round of the demo: a fresh router with that policy, settled on the fleet,
//! then the whole workload replayed through it.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use cache_router_core::policy::PolicyKind;
use cache_router_core::prom_text;
use cache_router_core::sim::workload::Workload;

use super::children::{Children, TIER_ROUTER};
use super::procs::{free_port, http_ok};
use super::traffic::{self, Replay, ReplayConfig};
use super::{DemoArgs, DemoError, MODEL};

/// What a round needs besides the policy.
pub(super) struct RoundSetup<'a> {
    pub(super) args: &'a DemoArgs,
    pub(super) me: &'a Path,
    pub(super) logs: &'a Path,
    pub(super) nats_url: &'a str,
    pub(super) block_size: u64,
    pub(super) workers: usize,
    pub(super) client: &'a reqwest::Client,
}

/// Starts a router with `policy` (owned by `children`, so an interrupt stops it like the
/// others), waits until it sees every worker and an empty index, and replays `workload`.
pub(super) async fn run(
    s: &RoundSetup<'_>,
    policy: PolicyKind,
    workload: &Workload,
    children: &mut Children,
    cancel: &CancellationToken,
) -> Result<Replay, DemoError> {
    let n = s.workers;
    let port = children
        .start_bound(
            &format!("router-{}", policy.name()),
            TIER_ROUTER,
            s.me,
            s.logs,
            cancel,
            || {
                let port = free_port()?;
                Ok((
                    port,
                    router_args(s.args, policy, port, s.nats_url, s.block_size),
                ))
            },
            |port| {
                let client = s.client.clone();
                async move { router_settled(&client, &format!("http://127.0.0.1:{port}"), n).await }
            },
        )
        .await?;
    let router_url = format!("http://127.0.0.1:{port}");
    println!(
        "policy {}: router on {router_url} sees {n} workers and an empty index",
        policy.name(),
    );
    let cfg = ReplayConfig {
        url: router_url,
        model: MODEL.into(),
        block_size: s.block_size,
        speedup: s.args.speedup,
        max_inflight: s.args.max_inflight,
        timeout: Duration::from_secs(120),
        label: policy.name().into(),
    };
    Ok(traffic::replay(s.client, &cfg, workload, cancel).await)
}

fn router_args(args: &DemoArgs, policy: PolicyKind, port: u16, nats: &str, bs: u64) -> Vec<String> {
    let c = &args.policy_config;
    vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--nats".into(),
        nats.into(),
        "--model".into(),
        MODEL.into(),
        "--model-dir".into(),
        args.model_dir.display().to_string(),
        "--block-size".into(),
        bs.to_string(),
        "--policy".into(),
        policy.name().into(),
        "--w-uncached".into(),
        c.uncached_weight.to_string(),
        "--w-prefill".into(),
        c.prefill_weight.to_string(),
        "--w-decode".into(),
        c.decode_weight.to_string(),
        "--temperature".into(),
        c.temperature.to_string(),
        "--approx-ttl".into(),
        format!("{}ms", c.approx_ttl.as_millis()),
        "--approx-threshold".into(),
        c.approx_threshold.to_string(),
        "--approx-balance-abs".into(),
        c.approx_balance_abs.to_string(),
        "--policy-seed".into(),
        c.seed.to_string(),
        // Less than the demo waits: the router drains, then exits by itself.
        "--shutdown-grace".into(),
        format!(
            "{}ms",
            (args.shutdown_grace / 3)
                .max(Duration::from_secs(1))
                .as_millis()
        ),
    ]
}

/// Ready, every worker registered (a candidate of a dry-run decision), and the index empty
/// (the previous policy's blocks were cleared by the engines' resets).
async fn router_settled(client: &reqwest::Client, url: &str, workers: usize) -> bool {
    if !http_ok(client, &format!("{url}/ready")).await {
        return false;
    }
    let probe = serde_json::json!({"model": MODEL, "prompt": [1, 2, 3]});
    let candidates = match client
        .post(format!("{url}/route"))
        .json(&probe)
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["candidates"].as_array().map(Vec::len)),
        _ => None,
    };
    if candidates != Some(workers) {
        return false;
    }
    let Ok(resp) = client
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    else {
        return false;
    };
    let Ok(text) = resp.text().await else {
        return false;
    };
    prom_text::unlabelled(&text, "cache_router_index_entries") == Some(0.0)
}
