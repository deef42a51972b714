//! The engine's load: scraped from its Prometheus `/metrics` and published on core NATS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_router_bus::publisher::Publisher;
use cache_router_core::prom_text;
use cache_router_core::protocol::Load;
use tokio_util::sync::CancellationToken;

/// Metric names per engine: vLLM (current and pre-0.10 names) and SGLang.
const RUNNING: &[&str] = &["vllm:num_requests_running", "sglang:num_running_reqs"];
const WAITING: &[&str] = &["vllm:num_requests_waiting", "sglang:num_queue_reqs"];
const USAGE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];

/// The first of `names` the text has, summed over its label sets.
fn first_sum(text: &str, names: &[&str]) -> Option<f64> {
    names.iter().find_map(|n| prom_text::sum(text, n))
}

/// `num_gpu_blocks` from vLLM's `vllm:cache_config_info{...,num_gpu_blocks="N",...} 1`.
fn num_gpu_blocks(text: &str) -> Option<u64> {
    prom_text::samples(text)
        .find(|s| s.name == "vllm:cache_config_info")?
        .label("num_gpu_blocks")?
        .parse()
        .ok()
}

/// The load, or `None` when the text has none of the running/waiting gauges (not an engine).
pub fn parse(text: &str) -> Option<Load> {
    let running = first_sum(text, RUNNING);
    let waiting = first_sum(text, WAITING);
    if running.is_none() && waiting.is_none() {
        return None;
    }
    Some(Load {
        running: running.unwrap_or(0.0).max(0.0) as u32,
        waiting: waiting.unwrap_or(0.0).max(0.0) as u32,
        kv_usage: first_sum(text, USAGE).unwrap_or(0.0).clamp(0.0, 1.0) as f32,
        num_blocks: num_gpu_blocks(text),
    })
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Scrapes `{engine_url}/metrics` every `every` and publishes the load; `engine_ok_ms` is
/// the wall-clock time of the last scrape the engine answered (the registration follows it).
pub(crate) async fn run(
    http: reqwest::Client,
    engine_url: String,
    publisher: Publisher,
    every: Duration,
    engine_ok_ms: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let url = format!("{}/metrics", engine_url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let text = match http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(r) => r.text().await,
            Err(e) => Err(e),
        };
        match text.map(|t| parse(&t)) {
            Ok(Some(load)) => {
                engine_ok_ms.store(now_ms(), Ordering::Relaxed);
                if failing {
                    tracing::info!(%url, "engine metrics back");
                    failing = false;
                }
                if let Err(e) = publisher.publish_load(load).await {
                    tracing::warn!("publish load: {e}");
                }
            }
            Ok(None) => {
                engine_ok_ms.store(now_ms(), Ordering::Relaxed);
                if !failing {
                    tracing::warn!(%url, "no engine load gauges in /metrics");
                    failing = true;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%url, "engine scrape failed: {e}");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_gauges_summed_over_labels() {
        let text = "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3.0\n\
            vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 2.0\n\
            vllm:num_requests_running_total 99\n\
            vllm:num_requests_waiting{model_name=\"m\"} 4\n\
            vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n\
            vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"2000\"} 1.0\n";
        let l = parse(text).unwrap();
        assert_eq!((l.running, l.waiting, l.num_blocks), (5, 4, Some(2000)));
        assert!((l.kv_usage - 0.25).abs() < 1e-6);
    }

    #[test]
    fn older_vllm_and_sglang_names() {
        let old = "vllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.5\n";
        let l = parse(old).unwrap();
        assert_eq!(l.running, 1);
        assert!((l.kv_usage - 0.5).abs() < 1e-6);
        let sg = "sglang:num_running_reqs{tp_rank=\"0\"} 7\nsglang:num_queue_reqs{tp_rank=\"0\"} 2\nsglang:token_usage 0.1\n";
        let l = parse(sg).unwrap();
        assert_eq!((l.running, l.waiting), (7, 2));
        assert_eq!(parse("go_goroutines 5\n"), None);
    }
}
