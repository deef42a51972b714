//! The demo's outputs: the comparison table, the JSON file, the PNG plots.

use std::path::Path;

use cache_router_core::sim::SimResult;

use super::DemoError;
use crate::sim::report;

/// The comparison table: hit rate, TTFT, throughput and imbalance per policy.
pub(super) fn table(results: &[SimResult]) -> String {
    let mut s = format!(
        "{:<14} {:>9} {:>9} {:>11} {:>11} {:>11} {:>12} {:>10}\n",
        "policy",
        "requests",
        "hit_rate",
        "ttft_p50",
        "ttft_p99",
        "ttft_mean",
        "thru_rps",
        "imbalance"
    );
    for r in results {
        s.push_str(&format!(
            "{:<14} {:>9} {:>8.1}% {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>12.2} {:>10.2}\n",
            r.policy,
            r.requests,
            r.hit_rate * 100.0,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.ttft_mean_ms,
            r.throughput_rps,
            r.imbalance
        ));
    }
    s
}

/// Writes `{"live": [...], "sim": [...], "failed": {...}}` to `path`. The live run does not
/// observe evictions or the index's entries: they are left out rather than reported as zeros.
pub(super) fn write_json(
    path: &Path,
    live: &[SimResult],
    predicted: &[SimResult],
    failed: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), DemoError> {
    let live: Vec<serde_json::Value> = live
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                for k in ["evictions", "index_entries", "index_mismatches"] {
                    o.remove(k);
                }
            }
            v
        })
        .collect();
    let v = serde_json::json!({"live": live, "sim": predicted, "failed": failed});
    let out = serde_json::to_string_pretty(&v).unwrap_or_default();
    std::fs::write(path, out).map_err(|e| DemoError::Output {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// Draws the live results (and the prediction, when there is one) to `out/demo-<slug>.png`.
pub(super) fn plots(
    out: &Path,
    slug: &str,
    title: &str,
    live: &[SimResult],
    predicted: &[SimResult],
) -> Result<(), DemoError> {
    let plot = out.join(format!("demo-{slug}.png"));
    report::plot(live, title, &plot)?;
    println!("plot written to {}", plot.display());
    if !predicted.is_empty() {
        let plot = out.join(format!("demo-{slug}-sim.png"));
        report::plot(predicted, &format!("simulated, {title}"), &plot)?;
        println!("plot written to {}", plot.display());
    }
    Ok(())
}
