//! The proxy bench's plot: throughput per path (with the ratio to direct), and the latency CDFs
//! of the same run.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Run;

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// Two panels: req/s bars labelled with the ratio to the first row (direct), and the latency
/// CDFs (log-scale x, ms) of every row. Text is set in the router's embedded font (plotters'
/// `ab_glyph` path has no system fonts), registered here first.
pub(crate) fn plot(rows: &[(&str, Run)], title: &str, path: &Path) -> Result<(), String> {
    cache_router::plot::register_embedded_font();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(450);

    let n = rows.len();
    let direct = rows.first().map_or(1.0, |r| r.1.rps);
    let top = rows.iter().map(|r| r.1.rps).fold(1.0, f64::max) * 1.2;
    let mut bars = ChartBuilder::on(&left)
        .caption("throughput", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(65)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..top)
        .map_err(|e| err(&e))?;
    bars.configure_mesh()
        .disable_x_mesh()
        .y_desc("requests per second")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_style(("sans-serif", 16))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => rows.get(*i).map_or(String::new(), |r| r.0.to_string()),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| err(&e))?;
    bars.draw_series(rows.iter().enumerate().map(|(i, (_, run))| {
        let lo = (SegmentValue::Exact(i), 0.0);
        let hi = (SegmentValue::Exact(i + 1), run.rps);
        let mut bar = Rectangle::new([lo, hi], COLORS[i % COLORS.len()].filled());
        bar.set_margin(0, 0, 12, 12);
        bar
    }))
    .map_err(|e| err(&e))?;
    let above = Pos::new(HPos::Center, VPos::Bottom);
    let big = TextStyle::from(("sans-serif", 17).into_font()).pos(above);
    let small = TextStyle::from(("sans-serif", 14).into_font()).pos(above);
    bars.draw_series(rows.iter().enumerate().map(|(i, (_, run))| {
        EmptyElement::at((SegmentValue::CenterOf(i), run.rps))
            + Text::new(
                format!("{:.2}x direct", run.rps / direct),
                (0, -22),
                big.clone(),
            )
            + Text::new(format!("{:.0} req/s", run.rps), (0, -4), small.clone())
    }))
    .map_err(|e| err(&e))?;

    let ms = |d: &std::time::Duration| d.as_secs_f64() * 1e3;
    let lo = rows.iter().filter_map(|r| r.1.lat.first()).map(ms);
    let hi = rows.iter().filter_map(|r| r.1.lat.last()).map(ms);
    let (lo, hi) = (lo.fold(f64::MAX, f64::min), hi.fold(0.0, f64::max));
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.01, 1.0) };
    // plotters labels a log axis from its first power of ten on: start just below one.
    let lo = 10f64.powf((lo * 0.9).log10().floor()) * 0.999;
    let mut cdf = ChartBuilder::on(&right)
        .caption("latency distribution (CDF)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi * 1.25).log_scale(), 0.0..1.0)
        .map_err(|e| err(&e))?;
    cdf.configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of requests")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(BLACK.mix(0.04))
        // Enough key points for the 1-9 ticks of each decade; log_label keeps 1, 2 and 5.
        .x_labels(40)
        .x_max_light_lines(1)
        .x_label_formatter(&log_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, run)) in rows.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let len = run.lat.len();
        // At most ~1000 points per curve keeps the PNG light; the last one (the max) stays.
        let ks = (0..len)
            .step_by((len / 1000).max(1))
            .chain(len.checked_sub(1));
        let pts = ks.map(|k| (ms(&run.lat[k]), (k + 1) as f64 / len as f64));
        cdf.draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Labels 1, 2 and 5 times a power of ten (the other ticks stay as grid lines only).
fn log_label(x: &f64) -> String {
    let exp = x.log10().floor();
    let mantissa = (x / 10f64.powf(exp)).round();
    if [1.0, 2.0, 5.0].contains(&mantissa) {
        format!("{x:.*}", (-exp).max(0.0) as usize)
    } else {
        String::new()
    }
}
