//! `--suite backends`: the seed batch on one worker of every backend present.

use super::table::Table;
use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct BackendRow {
    pub backend: String,
    pub adapter: String,
    pub tasks: u64,
    pub units_per_ms: u32,
    pub elapsed_ms: Spread,
    pub kernel_ms: Spread,
    /// (busy - kernel) per task, where kernel time is measured.
    pub overhead_us_per_task: Spread,
    pub speedup_vs_sleep: f64,
    /// Why this backend has no figures here (empty when it ran).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unavailable: String,
}

/// A backend's name as `--backend` spells it.
pub(super) fn kind_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Auto => "auto",
        BackendKind::Gpu => "gpu",
        BackendKind::Software => "software",
        BackendKind::Cpu => "cpu",
        BackendKind::Sleep => "sleep",
    }
}

/// A backend asked for alone that this machine lacks: an error before any suite runs (the
/// scaling suite would run for minutes first).
pub(super) fn refuse_missing_alone(args: &BenchArgs) -> anyhow::Result<()> {
    if let [kind] = args.backends[..] {
        let (_, options) = compute_setup(args);
        if let Err(e) = crate::backend::build(kind, &options) {
            return Err(e.context(format!(
                "bench --backends {}: not available on this machine",
                kind_name(kind)
            )));
        }
    }
    Ok(())
}

pub(super) fn backends(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<BackendRow>> {
    let (tasks, max_ms) = if args.quick { (20, 10) } else { (100, 100) };
    let batch = Batch::generate(tasks, 1, max_ms, args.seed)?;
    let (job, options) = compute_setup(args);
    let mut rows: Vec<BackendRow> = Vec::new();
    for &kind in &args.backends {
        // Probe once. Asked for alone, a backend this machine lacks is an error; among
        // several, its row says why it has no figures.
        if let Err(e) = crate::backend::build(kind, &options) {
            if args.backends.len() == 1 {
                return Err(e.context(format!(
                    "bench --backends {}: not available on this machine",
                    kind_name(kind)
                )));
            }
            log::warn!("backends: {} not available: {e:#}", kind_name(kind));
            rows.push(BackendRow {
                backend: kind_name(kind).to_owned(),
                adapter: String::new(),
                tasks: batch.len() as u64,
                units_per_ms: job.units_per_ms,
                elapsed_ms: Spread::of(&[]),
                kernel_ms: Spread::of(&[]),
                overhead_us_per_task: Spread::of(&[]),
                speedup_vs_sleep: 0.0,
                // The first clause names what is missing; `conquer info` has the rest.
                unavailable: format!("{e:#}")
                    .split(" (adapters found")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
                    + " (see `conquer info`)",
            });
            continue;
        }
        let mut elapsed = Vec::new();
        let mut kernel = Vec::new();
        let mut overhead = Vec::new();
        let mut adapter = String::new();
        let mut name = String::new();
        for r in 0..repeat {
            progress.step(format!("backends: {kind:?} ({}/{repeat})", r + 1));
            let backend = crate::backend::build(kind, &options)?;
            adapter = backend.adapter();
            name = backend.kind().to_owned();
            let report = run_job(
                batch.clone(),
                Order::LongestFirst,
                job,
                vec![backend],
                shutdown,
            )
            .with_context(|| format!("backends run on {kind:?}"))?;
            let w = report.workers.first().context("no worker reported")?;
            elapsed.push(report.elapsed_ms);
            kernel.push(w.kernel_ms);
            let measured_kernel = if w.kernel_ms > 0.0 {
                w.kernel_ms
            } else {
                w.busy_ms
            };
            overhead.push((w.busy_ms - measured_kernel).max(0.0) * 1000.0 / report.tasks as f64);
            progress.done();
        }
        log::info!("backends: {name} done");
        rows.push(BackendRow {
            backend: name,
            adapter,
            tasks: batch.len() as u64,
            units_per_ms: job.units_per_ms,
            elapsed_ms: Spread::of(&elapsed),
            kernel_ms: Spread::of(&kernel),
            overhead_us_per_task: Spread::of(&overhead),
            speedup_vs_sleep: 0.0,
            unavailable: String::new(),
        });
    }
    if let Some(sleep_ms) = rows
        .iter()
        .find(|r| r.backend == "sleep")
        .map(|r| r.elapsed_ms.median)
    {
        for row in rows.iter_mut().filter(|r| r.unavailable.is_empty()) {
            row.speedup_vs_sleep = sleep_ms / row.elapsed_ms.median;
        }
    }
    Ok(rows)
}

pub(super) fn table(rows: &[BackendRow]) -> Table {
    let first = &rows[0];
    let mut t = Table::new(
        format!(
            "Backends: {} tasks on one worker, spin at {} units/ms",
            first.tasks, first.units_per_ms
        ),
        &[
            "backend",
            "adapter",
            "elapsed ms>",
            "kernel ms>",
            "overhead µs/task>",
            "speed-up vs sleep>",
        ],
    );
    for row in rows {
        if !row.unavailable.is_empty() {
            t.row(vec![
                row.backend.clone(),
                format!("not available: {}", row.unavailable),
            ]);
            continue;
        }
        t.row(vec![
            row.backend.clone(),
            if row.adapter.is_empty() {
                "-".into()
            } else {
                row.adapter.clone()
            },
            row.elapsed_ms.cell(0),
            row.kernel_ms.cell(1),
            row.overhead_us_per_task.cell(0),
            format!("{:.2}", row.speedup_vs_sleep),
        ]);
    }
    t
}
