//! `--suite scaling`: the seed batch on 1, 2, 4 … N workers of each backend, elapsed
//! against the ideal.

use super::table::Table;
use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    pub workers: u32,
    pub backend: String,
    pub tasks: usize,
    pub expected_ms: u64,
    pub ideal_ms: f64,
    pub elapsed_ms: Spread,
    pub efficiency: Spread,
}

pub(super) fn scaling(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<ScalingRow>> {
    let (tasks, max_ms) = if args.quick { (20, 10) } else { (100, 100) };
    let batch = Batch::generate(tasks, 1, max_ms, args.seed)?;
    let (job, options) = compute_setup(args);
    if let Some(dir) = &args.timelines {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (--timelines)", dir.display()))?;
    }
    let mut rows = Vec::new();
    for &kind in &args.scaling_backends {
        if kind != BackendKind::Sleep {
            if let Err(e) = crate::backend::build(kind, &options) {
                log::info!("scaling: {kind:?} not present: {e:#}");
                continue;
            }
        }
        for &workers in &args.workers {
            if workers == 0 {
                bail!("--workers counts must be at least 1");
            }
            let mut elapsed = Vec::new();
            let mut efficiency = Vec::new();
            let mut ideal = 0.0;
            let mut name = String::new();
            for r in 0..repeat {
                progress.step(format!(
                    "scaling: {kind:?} on {workers} workers ({}/{repeat})",
                    r + 1
                ));
                let backends = (0..workers)
                    .map(|_| crate::backend::build(kind, &options))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                name = backends[0].kind().to_owned();
                let extras = Extras {
                    http_scrape: args.http_scrape,
                    timeline: args
                        .timelines
                        .as_ref()
                        .map(|dir| dir.join(format!("scaling-{name}-{workers}w-{}.json", r + 1))),
                };
                let report = run_with(
                    batch.clone(),
                    Order::LongestFirst,
                    job,
                    backends,
                    &extras,
                    shutdown,
                )
                .with_context(|| format!("scaling run on {workers} workers"))?;
                elapsed.push(report.elapsed_ms);
                efficiency.push(report.efficiency);
                ideal = report.ideal_ms;
                progress.done();
            }
            log::info!("scaling: {name} on {workers} workers done");
            rows.push(ScalingRow {
                workers,
                backend: name,
                tasks: batch.len(),
                expected_ms: batch.expected_ms(),
                ideal_ms: ideal,
                elapsed_ms: Spread::of(&elapsed),
                efficiency: Spread::of(&efficiency),
            });
        }
    }
    Ok(rows)
}

pub(super) fn table(rows: &[ScalingRow]) -> Table {
    let first = &rows[0];
    let mut t = Table::new(
        format!(
            "Scaling: {} tasks, {} ms expected, longest first",
            first.tasks, first.expected_ms
        ),
        &[
            "workers>",
            "backend",
            "ideal ms>",
            "elapsed ms>",
            "efficiency>",
        ],
    );
    for row in rows {
        t.row(vec![
            row.workers.to_string(),
            row.backend.clone(),
            format!("{:.0}", row.ideal_ms),
            row.elapsed_ms.cell(0),
            row.efficiency.cell(3),
        ]);
    }
    t
}
