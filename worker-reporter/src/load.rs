//! The engine's load from its Prometheus `/metrics` text.
//!
//! A tiny hand-written parser rather than a crate: we read four gauges by name from the text
//! exposition format (`name{labels} value`), and the parser crates on crates.io are either
//! unmaintained or pull in a full client library for this. Lines we do not need are ignored,
//! so unknown or malformed metrics never fail a scrape.

use cache_router::protocol::Load;

/// Metric names per engine: vLLM (current and pre-0.10 names) and SGLang.
const RUNNING: &[&str] = &["vllm:num_requests_running", "sglang:num_running_reqs"];
const WAITING: &[&str] = &["vllm:num_requests_waiting", "sglang:num_queue_reqs"];
const USAGE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];

/// Sums a metric over its label sets (an engine may report one series per model or DP rank).
fn sum(text: &str, names: &[&str]) -> Option<f64> {
    for name in names {
        let mut found = None;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || !line.starts_with(name) {
                continue;
            }
            let rest = &line[name.len()..];
            let rest = if rest.starts_with('{') {
                match rest.find('}') {
                    Some(end) => &rest[end + 1..],
                    None => continue,
                }
            } else if rest.starts_with(' ') {
                rest
            } else {
                continue; // a longer name with this prefix
            };
            if let Some(v) = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                *found.get_or_insert(0.0) += v;
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `num_gpu_blocks` from vLLM's `vllm:cache_config_info{...,num_gpu_blocks="N",...} 1`.
fn num_gpu_blocks(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))?;
    let at = line.find("num_gpu_blocks=\"")? + "num_gpu_blocks=\"".len();
    let end = line[at..].find('"')?;
    line[at..at + end].parse().ok()
}

/// The load, or `None` when the text has none of the running/waiting gauges (not an engine).
pub fn parse(text: &str) -> Option<Load> {
    let running = sum(text, RUNNING);
    let waiting = sum(text, WAITING);
    if running.is_none() && waiting.is_none() {
        return None;
    }
    Some(Load {
        running: running.unwrap_or(0.0).max(0.0) as u32,
        waiting: waiting.unwrap_or(0.0).max(0.0) as u32,
        kv_usage: sum(text, USAGE).unwrap_or(0.0).clamp(0.0, 1.0) as f32,
        num_blocks: num_gpu_blocks(text),
    })
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
