//! `--suite latency`: per-task time from dispatch to the sink, as percentiles.

use super::table::Table;
use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    pub batch: String,
    pub workers: u32,
    /// What was measured: dispatch-to-sink time, minus each task's nominal workload when
    /// the tasks sleep (so only the pipeline's own delay remains).
    pub measure: String,
    pub tasks: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(super) fn latency(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<LatencyRow>> {
    let (seed_tasks, zero_tasks) = if args.quick {
        (20, 2_000)
    } else {
        (100, 20_000)
    };
    let seed_batch = Batch::generate(seed_tasks, 1, 100, args.seed)?;
    // (batch, its description, workers, window, subtract the workload?)
    let cases = [
        (
            seed_batch.clone(),
            format!("seed: {seed_tasks} tasks of 1-100 ms"),
            4u32,
            2u32,
            false,
        ),
        (
            seed_batch,
            format!("seed: {seed_tasks} tasks of 1-100 ms"),
            4,
            1,
            true,
        ),
        (
            Batch::generate(zero_tasks, 0, 0, args.seed)?,
            format!("{zero_tasks} zero-work tasks"),
            2,
            2,
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (batch, name, workers, window, minus_workload) in cases {
        let measure = if minus_workload {
            format!(
                "dispatch to sink minus workload, --window {window} (no wait behind another task)"
            )
        } else {
            format!("dispatch to sink, --window {window}")
        };
        let mut samples = Vec::new();
        for r in 0..repeat {
            progress.step(format!("latency: {name} ({}/{repeat})", r + 1));
            let timeline = std::sync::Arc::new(crate::timeline::Timeline::new(batch.len()));
            run_traced(
                batch.clone(),
                Order::LongestFirst,
                Job::default(),
                window,
                sleep_backends(workers),
                Some(timeline.clone()),
                shutdown,
            )?;
            for (id, us) in timeline.latencies_us() {
                let workload_us = f64::from(batch.tasks[id as usize].workload_ms) * 1000.0;
                samples.push(if minus_workload {
                    (us - workload_us).max(0.0)
                } else {
                    us
                });
            }
            progress.done();
        }
        samples.sort_by(f64::total_cmp);
        rows.push(LatencyRow {
            batch: name,
            workers,
            measure,
            tasks: batch.len(),
            p50_us: percentile(&samples, 50.0),
            p90_us: percentile(&samples, 90.0),
            p99_us: percentile(&samples, 99.0),
            max_us: samples.last().copied().unwrap_or(f64::NAN),
        });
    }
    Ok(rows)
}

pub(super) fn table(rows: &[LatencyRow]) -> Table {
    let mut t = Table::new(
        "Latency per task, all repetitions pooled",
        &[
            "batch", "workers>", "measure", "p50 µs>", "p90 µs>", "p99 µs>", "max µs>",
        ],
    );
    for row in rows {
        t.row(vec![
            row.batch.clone(),
            row.workers.to_string(),
            row.measure.clone(),
            format!("{:.0}", row.p50_us),
            format!("{:.0}", row.p90_us),
            format!("{:.0}", row.p99_us),
            format!("{:.0}", row.max_us),
        ]);
    }
    t
}
