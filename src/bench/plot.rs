//! Plots of benchmark results as SVG (plotters, no font files needed): scaling (elapsed
//! against ideal, and efficiency), the backend comparison, the simulated farms and the
//! chunking farms. Drawing only; the numbers
//! come from the suites.

use super::{BackendRow, ScalingRow};
use anyhow::{anyhow, Context};
use plotters::prelude::*;
use std::path::Path;

fn err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {what}: {e:?}")
}

/// Efficiency against worker count, one line per backend, with the min–max spread and the
/// 0.98 target, and a title that says what was measured where.
pub fn scaling(rows: &[ScalingRow], title: &str, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err("scaling"))?;
    let max_workers = rows.iter().map(|r| r.workers).max().unwrap_or(1);
    // The axis ends a quarter step past the largest worker count measured, not a doubling.
    let x_min = -0.25;
    let x_max = f64::from(max_workers).log2() + 0.25;
    let y_min = rows
        .iter()
        .map(|r| r.efficiency.min)
        .fold(0.9_f64, f64::min)
        .max(0.0)
        - 0.02;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x_min..x_max, y_min..1.005f64)
        .map_err(err("scaling"))?;
    chart
        .configure_mesh()
        .x_desc("workers")
        .y_desc("efficiency (ideal / elapsed)")
        .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
        .x_labels((f64::from(max_workers).log2() as usize).max(1) + 1)
        .draw()
        .map_err(err("scaling"))?;
    chart
        .draw_series(LineSeries::new(
            [(x_min, 0.98), (x_max, 0.98)],
            RED.mix(0.6).stroke_width(1),
        ))
        .map_err(err("scaling"))?
        .label("target 0.98")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.6)));
    let palette = [BLUE, GREEN, MAGENTA, CYAN, BLACK];
    let mut backends: Vec<&str> = rows.iter().map(|r| r.backend.as_str()).collect();
    backends.dedup();
    for (i, backend) in backends.iter().enumerate() {
        let color = palette[i % palette.len()];
        let points: Vec<(f64, &ScalingRow)> = rows
            .iter()
            .filter(|r| r.backend == *backend)
            .map(|r| (f64::from(r.workers).log2(), r))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(x, r)| (*x, r.efficiency.median)),
                color.stroke_width(2),
            ))
            .map_err(err("scaling"))?
            .label(*backend)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|(x, r)| {
                ErrorBar::new_vertical(
                    *x,
                    r.efficiency.min,
                    r.efficiency.median,
                    r.efficiency.max,
                    color.filled(),
                    8,
                )
            }))
            .map_err(err("scaling"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err("scaling"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// Elapsed time of the same batch on each backend, as horizontal bars with the min–max.
pub fn backends(rows: &[BackendRow], title: &str, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 120 + 60 * rows.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err("backends"))?;
    let x_max = rows.iter().map(|r| r.elapsed_ms.max).fold(1.0, f64::max) * 1.1;
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..x_max, -0.5f64..n - 0.5)
        .map_err(err("backends"))?;
    let names: Vec<String> = rows.iter().map(|r| r.backend.clone()).collect();
    chart
        .configure_mesh()
        .x_desc("elapsed ms (one worker)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(rows.len())
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .draw()
        .map_err(err("backends"))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let y = i as f64;
            Rectangle::new(
                [(0.0, y - 0.3), (r.elapsed_ms.median, y + 0.3)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(err("backends"))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            ErrorBar::new_horizontal(
                i as f64,
                r.elapsed_ms.min,
                r.elapsed_ms.median,
                r.elapsed_ms.max,
                BLACK.filled(),
                8,
            )
        }))
        .map_err(err("backends"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// The simulated farm: efficiency against the LPT bound and the ideal, by worker count
/// (log scale), without churn, with the 0.99 target.
pub fn simulate(rows: &[super::simulate::SimRow], title: &str, path: &Path) -> anyhow::Result<()> {
    let calm: Vec<&super::simulate::SimRow> =
        rows.iter().filter(|r| r.scenario == "no churn").collect();
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err("simulate"))?;
    let max_workers = calm.iter().map(|r| r.workers).max().unwrap_or(1) as f64;
    let x_max = max_workers.log10() + 0.25;
    let y_min = calm
        .iter()
        .map(|r| r.efficiency_ideal.min(r.efficiency_lpt))
        .fold(0.9_f64, f64::min)
        - 0.02;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.25f64..x_max, y_min..1.01f64)
        .map_err(err("simulate"))?;
    chart
        .configure_mesh()
        .x_desc("workers")
        .y_desc("efficiency (bound / makespan)")
        .x_label_formatter(&|x| format!("{}", 10f64.powf(*x).round()))
        .x_labels(max_workers.log10() as usize + 1)
        .draw()
        .map_err(err("simulate"))?;
    chart
        .draw_series(LineSeries::new(
            [(-0.25, 0.99), (x_max, 0.99)],
            RED.mix(0.6).stroke_width(1),
        ))
        .map_err(err("simulate"))?
        .label("target 0.99 of LPT")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.6)));
    type Pick = fn(&super::simulate::SimRow) -> f64;
    let lines: [(&str, RGBColor, Pick); 2] = [
        ("against the LPT bound", BLUE, |r| r.efficiency_lpt),
        ("against the ideal", GREEN, |r| r.efficiency_ideal),
    ];
    for (label, color, pick) in lines {
        let points: Vec<(f64, f64)> = calm
            .iter()
            .map(|r| ((r.workers as f64).log10(), pick(r)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err("simulate"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err("simulate"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err("simulate"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// Per-worker time on one farm under each policy: busy (solid) and up to its last result
/// (light), one group of bars per policy, so an unbalanced split shows as ragged ends.
pub fn chunking(
    rows: &[&super::chunking::ChunkRow],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let workers = rows.iter().map(|r| r.busy_ms.len()).max().unwrap_or(1);
    let bars = rows.len() * (workers + 1);
    let root = SVGBackend::new(path, (720, 100 + 22 * bars as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err("chunking"))?;
    let x_max = rows
        .iter()
        .flat_map(|r| r.finished_ms.iter().chain(&r.busy_ms))
        .copied()
        .fold(1.0, f64::max)
        * 1.05;
    // From the top: the first policy's workers in order, a gap, the next policy's.
    let slot = |g: usize, w: usize| bars - 1 - (g * (workers + 1) + w);
    let mut labels = vec![String::new(); bars];
    for (g, r) in rows.iter().enumerate() {
        for w in 0..r.busy_ms.len() {
            labels[slot(g, w)] = format!("{} w{}", r.policy, w + 1);
        }
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(110)
        .build_cartesian_2d(0f64..x_max, -0.5f64..bars as f64 - 0.5)
        .map_err(err("chunking"))?;
    chart
        .configure_mesh()
        .x_desc("ms from the job's start (solid: busy; light: until its last result)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(bars)
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .draw()
        .map_err(err("chunking"))?;
    let palette = [BLUE, GREEN, MAGENTA];
    for (g, r) in rows.iter().enumerate() {
        let color = palette[g % palette.len()];
        let at = |w: usize| slot(g, w) as f64;
        chart
            .draw_series(r.finished_ms.iter().enumerate().map(|(w, &ms)| {
                Rectangle::new(
                    [(0.0, at(w) - 0.35), (ms, at(w) + 0.35)],
                    color.mix(0.25).filled(),
                )
            }))
            .map_err(err("chunking"))?;
        chart
            .draw_series(r.busy_ms.iter().enumerate().map(|(w, &ms)| {
                Rectangle::new(
                    [(0.0, at(w) - 0.35), (ms, at(w) + 0.35)],
                    color.mix(0.8).filled(),
                )
            }))
            .map_err(err("chunking"))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}
