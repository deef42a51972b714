//! `/metrics` in Prometheus text format, with vLLM's metric names.

use std::fmt::Write;

use super::engine::EngineStats;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders `stats` for `model`.
pub fn render(model: &str, stats: &EngineStats) -> String {
    let m = escape(model);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, extra: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{model_name=\"{m}\"{extra}}} {value}");
    };
    metric(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        "",
        stats.running.to_string(),
    );
    metric(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        "",
        stats.waiting.to_string(),
    );
    metric(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        "",
        stats.usage.to_string(),
    );
    metric(
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage. 1 means 100 percent usage.",
        "",
        stats.usage.to_string(),
    );
    metric(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        "",
        stats.prefix_cache_queries_tokens.to_string(),
    );
    metric(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        "",
        stats.prefix_cache_hits_tokens.to_string(),
    );
    metric(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig.",
        &format!(
            ",block_size=\"{}\",num_gpu_blocks=\"{}\",enable_prefix_caching=\"True\"",
            stats.block_size, stats.num_blocks
        ),
        "1".to_string(),
    );
    out
}
