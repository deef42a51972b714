//! The stale-cache timeline as a PNG (drawn as `src/sim/report.rs` draws): the router's
//! believed overlap for a prompt on one worker against what the engine really holds, with the
//! loss window, the reporter's digest ticks, the recovery and its bound.

use std::path::Path;

use plotters::prelude::*;

/// One point: seconds since losses started, the router's overlap for P on X, the blocks of P
/// X really holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub(crate) t: f64,
    pub(crate) believed: u32,
    pub(crate) real: u32,
}

/// What one tail-loss trial looked like; times in seconds since losses started.
#[derive(Debug)]
pub(crate) struct Timeline<'a> {
    pub(crate) title: String,
    /// P's length in blocks (both lines start there: checked just before losses started).
    pub(crate) blocks: u32,
    pub(crate) samples: &'a [Sample],
    pub(crate) loss_end: f64,
    pub(crate) digests: &'a [f64],
    pub(crate) recovered: Option<f64>,
    /// Where the recovery had to happen by.
    pub(crate) bound: f64,
    pub(crate) bound_label: String,
}

/// Step points of one series, from `t0` to `t1`.
fn steps(samples: &[Sample], t1: f64, f: fn(&Sample) -> u32) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = Vec::new();
    for s in samples {
        if let Some(&(_, last)) = pts.last() {
            pts.push((s.t, last));
        }
        pts.push((s.t, f64::from(f(s))));
    }
    if let Some(&(_, last)) = pts.last() {
        pts.push((t1, last));
    }
    pts
}

impl Timeline<'_> {
    /// Draws the PNG. Text is set in the router's embedded font (plotters' `ab_glyph` path has
    /// no system fonts), registered here first.
    pub(crate) fn draw(&self, path: &Path) -> Result<(), String> {
        cache_router::plot::register_embedded_font();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let full = f64::from(self.blocks);
        let t_max = self.samples.last().map_or(1.0, |s| s.t).max(self.bound) * 1.06;
        let t_min = -0.05 * t_max;
        let y_max = full * 1.3;
        let root = BitMapBackend::new(path, (1100, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(t_min..t_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("seconds since X's KV events started being lost")
            .y_desc("blocks of prompt P on worker X")
            .draw()
            .map_err(|e| err(&e))?;

        let red = RGBColor(214, 39, 40);
        chart
            .draw_series([Rectangle::new(
                [
                    (self.loss_end, 0.0),
                    (self.recovered.unwrap_or(t_max), full),
                ],
                red.mix(0.08).filled(),
            )])
            .map_err(|e| err(&e))?
            .label("stale window: the router sends P to X, which lacks it")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], red.mix(0.15).filled())
            });
        chart
            .draw_series([Rectangle::new(
                [(0.0, 0.0), (self.loss_end.max(t_max / 300.0), y_max)],
                red.mix(0.6).filled(),
            )])
            .map_err(|e| err(&e))?
            .label(format!(
                "events lost (100%, {:.0} ms): X evicts P",
                self.loss_end * 1e3
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], red.mix(0.6).filled())
            });

        let mut samples = vec![Sample {
            t: t_min,
            believed: self.blocks,
            real: self.blocks,
        }];
        samples.extend_from_slice(self.samples);
        let blue = RGBColor(31, 119, 180);
        let orange = RGBColor(255, 127, 14);
        chart
            .draw_series(LineSeries::new(
                steps(&samples, t_max, |s| s.believed),
                blue.stroke_width(3),
            ))
            .map_err(|e| err(&e))?
            .label("router's overlap for P on X (/route every 10 ms)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(3))
            });
        chart
            .draw_series(LineSeries::new(
                steps(&samples, t_max, |s| s.real),
                orange.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("blocks of P the engine really holds")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2))
            });

        let purple = RGBColor(148, 103, 189);
        chart
            .draw_series(
                self.digests
                    .iter()
                    .filter(|&&d| d >= t_min && d <= t_max)
                    .map(|&d| {
                        PathElement::new(
                            vec![(d, full * 1.04), (d, full * 1.14)],
                            purple.stroke_width(3),
                        )
                    }),
            )
            .map_err(|e| err(&e))?
            .label("X's digest ticks (tail probe, then digest)")
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x + 10, y - 6), (x + 10, y + 6)],
                    purple.stroke_width(3),
                )
            });
        let gray = RGBColor(90, 90, 90);
        chart
            .draw_series([PathElement::new(
                vec![(self.bound, 0.0), (self.bound, y_max)],
                gray.stroke_width(1),
            )])
            .map_err(|e| err(&e))?
            .label(self.bound_label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], gray.stroke_width(1))
            });
        if let Some(r) = self.recovered {
            let green = RGBColor(44, 160, 44);
            chart
                .draw_series([PathElement::new(
                    vec![(r, 0.0), (r, y_max)],
                    green.stroke_width(2),
                )])
                .map_err(|e| err(&e))?
                .label(format!(
                    "router's view right again, {:.0} ms after losses stopped",
                    (r - self.loss_end) * 1e3
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], green.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}
