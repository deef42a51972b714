//! Parts of the scale bench that are not the measurement: the open-files limit and the plot.

use std::path::Path;

use plotters::prelude::*;

use super::{pct, FleetResult, FD_MARGIN, PROTOTYPE_MS};

/// Soft and hard `RLIMIT_NOFILE`, from /proc/self/limits.
fn nofile() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let mut v = line
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(u64::MAX));
    Some((v.next()?, v.next()?))
}

/// Makes room for `concurrency` client sockets and as many server sockets: raises the soft
/// limit towards the hard one with util-linux's `prlimit` when needed (no `unsafe` here), else
/// caps the concurrency and says so. Returns the concurrency to use.
pub(crate) fn fit_fd_limit(concurrency: usize) -> usize {
    let need = 2 * concurrency as u64 + FD_MARGIN;
    let Some((soft, hard)) = nofile() else {
        return concurrency;
    };
    if soft >= need {
        return concurrency;
    }
    let (pid, arg) = (std::process::id(), format!("--nofile={}:", need.min(hard)));
    let cmd = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &arg])
        .status();
    let soft = nofile().map_or(soft, |l| l.0);
    if soft >= need {
        println!("raised the open-files soft limit to {soft} ({need} needed)");
        return concurrency;
    }
    let fit = (soft.saturating_sub(FD_MARGIN) / 2).max(1) as usize;
    let why = match cmd {
        Ok(s) if s.success() => format!("the hard limit is {hard}"),
        Ok(s) => format!("prlimit failed ({s})"),
        Err(e) => format!("cannot run prlimit: {e}"),
    };
    println!(
        "WARNING: {concurrency} concurrent requests need ~{need} open files; the soft limit is \
         {soft} and {why}: concurrency capped at {fit} (run `ulimit -n {need}` first)"
    );
    fit
}

/// Latency CDFs (log-scale x) per fleet size, client round trip and router decision, with the
/// prototype's p50/p99 as points. Text is set in the router's embedded font (plotters'
/// `ab_glyph` path has no system fonts), registered here first.
pub(crate) fn plot(results: &[FleetResult], path: &Path) -> Result<(), String> {
    cache_router::plot::register_embedded_font();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let lo = results
        .iter()
        .map(|r| r.median.decision[0])
        .fold(1.0, f64::min);
    let hi = results.iter().map(|r| pct(&r.median.client, 1.0));
    let hi = hi.fold(PROTOTYPE_MS.1, f64::max);
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let c = results.first().map_or(0, |r| r.concurrency);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("POST /route, {c} at once (median burst)"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo.max(0.005) * 0.8..hi * 1.25).log_scale(), 0.0..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    for (i, r) in results.iter().enumerate() {
        let c = colors[i % colors.len()];
        let curves = [
            (&r.median.client, "client round trip", 3),
            (&r.median.decision, "router decision", 1),
        ];
        for (v, what, width) in curves {
            let len = v.len() as f64;
            let pts = v
                .iter()
                .enumerate()
                .map(|(k, &x)| (x, (k + 1) as f64 / len));
            let style = c.stroke_width(width);
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(|e| err(&e))?
                .label(format!("{what}, {} workers", r.workers))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    let points = [(PROTOTYPE_MS.0, 0.5), (PROTOTYPE_MS.1, 0.99)];
    chart
        .draw_series(points.map(|p| Circle::new(p, 6, BLACK.filled())))
        .map_err(|e| err(&e))?
        .label("prototype p50 / p99 (100 workers)")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
