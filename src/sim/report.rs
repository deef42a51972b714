//! Outputs of `cache-router sim`: a table for people, JSON for scripts, a PNG for the README.

use std::path::Path;

use plotters::prelude::*;

use cache_router_core::sim::SimResult;

/// Renders results as an aligned text table.
pub fn table(results: &[SimResult]) -> String {
    let mut s = format!(
        "{:<14} {:>9} {:>12} {:>12} {:>12} {:>11} {:>10} {:>10}\n",
        "policy",
        "hit_rate",
        "ttft_mean",
        "ttft_p50",
        "ttft_p99",
        "thru_rps",
        "imbalance",
        "evictions"
    );
    for r in results {
        s.push_str(&format!(
            "{:<14} {:>8.1}% {:>10.1}ms {:>10.1}ms {:>10.1}ms {:>11.3} {:>10.2} {:>10}\n",
            r.policy,
            r.hit_rate * 100.0,
            r.ttft_mean_ms,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.throughput_rps,
            r.imbalance,
            r.evictions
        ));
    }
    s
}

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw plot {path}: {msg}")]
pub struct PlotError {
    pub path: String,
    pub msg: String,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws two panels: block hit rate per policy, and the TTFT distribution (CDF) per policy.
pub fn plot(results: &[SimResult], title: &str, path: &Path) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    crate::plot::register_embedded_font();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(450);

    let n = results.len();
    let mut bars = ChartBuilder::on(&left)
        .caption("block hit rate", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..100.0)
        .map_err(|e| err(&e))?;
    bars.configure_mesh()
        .disable_x_mesh()
        .y_desc("% of prompt blocks")
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => {
                results.get(*i).map_or(String::new(), |r| r.policy.clone())
            }
            _ => String::new(),
        })
        .draw()
        .map_err(|e| err(&e))?;
    bars.draw_series(results.iter().enumerate().map(|(i, r)| {
        let c = COLORS[i % COLORS.len()];
        Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), r.hit_rate * 100.0),
            ],
            c.filled(),
        )
    }))
    .map_err(|e| err(&e))?;

    let max_ttft = results
        .iter()
        .filter_map(|r| {
            r.ttft_cdf_ms
                .get(r.ttft_cdf_ms.len().saturating_sub(1) * 99 / 100)
        })
        .fold(1.0f64, |a, &b| a.max(b));
    let mut cdf = ChartBuilder::on(&right)
        .caption(
            "TTFT distribution (CDF, up to the worst p99)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ttft * 1.05, 0.0..1.0)
        .map_err(|e| err(&e))?;
    cdf.configure_mesh()
        .x_desc("TTFT (ms)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in results.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let len = r.ttft_cdf_ms.len().max(1) as f64;
        // At most ~500 points per curve keeps the PNG light.
        let step = (r.ttft_cdf_ms.len() / 500).max(1);
        let pts = r
            .ttft_cdf_ms
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(k, &t)| (t, (k + 1) as f64 / len));
        cdf.draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(r.policy.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
