//! `--suite device`: each compute adapter on its own: spin throughput and the per-task
//! overhead of the backend.

use super::table::Table;
use super::*;
use crate::shutdown::Interrupted;

#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    pub adapter: String,
    pub class: String,
    /// Spin: invocations per timed task, hash rounds per second from device timestamps
    /// (wall clock where the adapter has none).
    pub spin_invocations: u32,
    pub spin_rounds_per_s: Spread,
    /// 32-bit integer operations per second at 8 per hash round.
    pub int_gops: f64,
    pub fraction_of_peak: Option<f64>,
    /// Zero-work tasks straight through the backend, one in flight and several.
    pub overhead_us_1_in_flight: Spread,
    pub overhead_us_in_flight: Spread,
    pub slots: usize,
}

/// Integer operations in one spin hash round: two multiplies, three shifts, three xors.
pub const OPS_PER_ROUND: f64 = 8.0;

pub(super) fn device(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<DeviceRow>> {
    progress.step("device");
    use crate::backend::gpu::{adapters, AdapterClass, Gpu, GpuConfig};
    use crate::backend::Outcome;
    let adapters = adapters();
    let mut rows = Vec::new();
    for adapter in &adapters {
        let info = adapter.get_info();
        let Some(class) = AdapterClass::of(info.device_type) else {
            continue;
        };
        // Enough work to dwarf launch costs: ~0.3 G rounds on CPU adapters, ~69 G on GPUs.
        let invocations: u32 = match (class, args.quick) {
            (AdapterClass::Software, true) => 1 << 14,
            (AdapterClass::Software, false) => 1 << 20,
            (AdapterClass::Hardware, true) => 1 << 22,
            (AdapterClass::Hardware, false) => 1 << 28,
        };
        let slots = 4;
        let mut gpu = Gpu::new(
            adapter,
            GpuConfig {
                slots,
                ..GpuConfig::default()
            },
        )
        .with_context(|| format!("opening {}", info.name))?;
        let timed = gpu.has_timestamps();
        let spin_job = Job {
            kernel: 0,
            units_per_ms: invocations,
            verify_percent: 0,
            ..Job::default()
        };
        let run = |gpu: &mut Gpu, job: &Job, tasks: Vec<Task>| -> anyhow::Result<Vec<Outcome>> {
            let mut queue = tasks.into_iter();
            let mut outcomes = Vec::new();
            gpu.run(
                job,
                &mut || queue.next().map(crate::backend::Work::from),
                &mut |o| outcomes.push(o),
            );
            if let Some(bad) = outcomes.iter().find(|o| o.status != Status::Ok) {
                bail!("task {} failed on {}", bad.task.id, info.name);
            }
            Ok(outcomes)
        };
        let mut rates = Vec::new();
        for r in 0..repeat {
            if shutdown.is_requested() {
                return Err(Interrupted.into());
            }
            let outcome = run(
                &mut gpu,
                &spin_job,
                vec![Task {
                    id: r,
                    workload_ms: 1,
                    ..Default::default()
                }],
            )?;
            let us = if timed {
                outcome[0].kernel_us
            } else {
                outcome[0].wall_us
            };
            rates.push(
                f64::from(invocations) * f64::from(crate::kernels::spin::ROUNDS)
                    / (f64::from(us.max(1)) / 1e6),
            );
        }
        let zero = Job {
            kernel: 0,
            units_per_ms: 0,
            verify_percent: 0,
            ..Job::default()
        };
        let n: u32 = if args.quick { 50 } else { 2000 };
        let tasks = || {
            (0..n)
                .map(|id| Task {
                    id,
                    workload_ms: 0,
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        };
        let per_task = |gpu: &mut Gpu| -> anyhow::Result<f64> {
            let start = Instant::now();
            run(gpu, &zero, tasks())?;
            Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
        };
        let mut one = Gpu::new(
            adapter,
            GpuConfig {
                slots: 1,
                ..GpuConfig::default()
            },
        )?;
        let mut overhead_1 = Vec::new();
        let mut overhead_n = Vec::new();
        for _ in 0..repeat {
            overhead_1.push(per_task(&mut one)?);
            overhead_n.push(per_task(&mut gpu)?);
        }
        let spread = Spread::of(&rates);
        let int_gops = spread.median * OPS_PER_ROUND / 1e9;
        rows.push(DeviceRow {
            adapter: format!("{} ({:?})", info.name, info.backend),
            class: format!("{class:?}").to_lowercase(),
            spin_invocations: invocations,
            spin_rounds_per_s: spread,
            int_gops,
            fraction_of_peak: args.int_peak_gops.map(|peak| int_gops / peak),
            overhead_us_1_in_flight: Spread::of(&overhead_1),
            overhead_us_in_flight: Spread::of(&overhead_n),
            slots,
        });
    }
    progress.done();
    Ok(rows)
}

/// A fraction of the ceiling as the table shows it: a percentage, never past 100 %. A
/// measurement over the ceiling says the ceiling given is wrong, not that the card beat it.
fn of_ceiling(fraction: Option<f64>) -> String {
    match fraction {
        None => "-".to_owned(),
        Some(f) if f > 1.0 => format!(
            "over it ({:.0}%): --int-peak-gops is too low for this card",
            f * 100.0
        ),
        Some(f) => format!("{:.0}%", f * 100.0),
    }
}

pub(super) fn table(rows: &[DeviceRow]) -> Table {
    let mut t = Table::new(
        "Device: spin throughput and per-task overhead",
        &[
            "adapter",
            "class",
            "spin G rounds/s>",
            "int32 Gop/s>",
            "of ceiling>",
            "zero-work µs/task, 1 in flight>",
            "µs/task, slots in flight>",
        ],
    );
    for row in rows {
        let spin = Spread {
            median: row.spin_rounds_per_s.median / 1e9,
            min: row.spin_rounds_per_s.min / 1e9,
            max: row.spin_rounds_per_s.max / 1e9,
        };
        t.row(vec![
            row.adapter.clone(),
            row.class.clone(),
            spin.cell(2),
            format!("{:.0}", row.int_gops),
            of_ceiling(row.fraction_of_peak),
            row.overhead_us_1_in_flight.cell(0),
            format!("{} ({})", row.overhead_us_in_flight.cell(0), row.slots),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_past_the_ceiling_blames_the_ceiling() {
        assert_eq!(of_ceiling(None), "-");
        assert_eq!(of_ceiling(Some(0.846)), "85%");
        assert!(of_ceiling(Some(1.69)).starts_with("over it (169%)"));
    }
}
