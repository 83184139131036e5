//! `--suite dispatch`: the Guide's PUSH/PULL against credit dispatch on the same workers:
//! all joined, staggered joins, a slow worker.

use super::table::Table;
use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct DispatchRow {
    pub scenario: String,
    pub dispatch: String,
    /// Makespan from the sink's start of batch to its last result.
    pub makespan_ms: Spread,
    /// The best makespan the workers' join times and speeds allow.
    pub ideal_ms: f64,
    pub efficiency: Spread,
    /// Tasks each worker did, in worker order, from the median run.
    pub tasks_per_worker: Vec<u64>,
}

/// The smallest makespan `workers` can reach on `work_ms` of work when worker i joins at
/// `joins[i]` ms and runs at `speeds[i]` (1 = nominal, 1/3 = three times slower): the time
/// at which their combined capacity covers the work, and no less than the longest task on
/// the fastest worker.
pub fn capacity_ideal_ms(work_ms: f64, longest_ms: f64, joins: &[f64], speeds: &[f64]) -> f64 {
    let capacity = |t: f64| -> f64 {
        joins
            .iter()
            .zip(speeds)
            .map(|(j, s)| (t - j).max(0.0) * s)
            .sum()
    };
    let (mut lo, mut hi) = (
        0.0,
        work_ms + joins.iter().cloned().fold(0.0, f64::max) + 1.0,
    );
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if capacity(mid) >= work_ms {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let fastest = speeds.iter().cloned().fold(0.0, f64::max);
    hi.max(longest_ms / fastest)
}

pub(super) fn dispatch(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<DispatchRow>> {
    let (tasks, max_ms) = if args.quick { (40, 20) } else { (100, 100) };
    let batch = Batch::generate(tasks, 1, max_ms, args.seed)?;
    let stagger_ms = if args.quick { 50.0 } else { 200.0 };
    let scenarios: [(&str, [f64; 4], [f64; 4], usize); 3] = [
        ("all 4 joined", [0.0; 4], [1.0; 4], 4),
        (
            "joining one by one",
            [0.0, stagger_ms, 2.0 * stagger_ms, 3.0 * stagger_ms],
            [1.0; 4],
            1,
        ),
        (
            "one of 4 three times slower",
            [0.0; 4],
            [1.0, 1.0, 1.0, 1.0 / 3.0],
            4,
        ),
    ];
    let mut rows = Vec::new();
    for (name, joins, speeds, wait) in scenarios {
        let ideal = capacity_ideal_ms(
            batch.expected_ms() as f64,
            f64::from(batch.longest_ms()),
            &joins,
            &speeds,
        );
        let backends = || -> Vec<Box<dyn Backend>> {
            speeds
                .iter()
                .map(|s| Box::new(Sleep::new(1.0 / s)) as Box<dyn Backend>)
                .collect()
        };
        let delays: Vec<Duration> = joins
            .iter()
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .collect();
        for mode in ["classic PUSH/PULL", "credit"] {
            let mut runs: Vec<(f64, Vec<u64>)> = Vec::new();
            for r in 0..repeat {
                progress.step(format!("dispatch: {name}, {mode} ({}/{repeat})", r + 1));
                let run = if mode == "credit" {
                    let report = local::run(
                        LocalRun {
                            join_delays: delays.clone(),
                            ..LocalRun::new(
                                VentilatorConfig {
                                    wait_workers: wait,
                                    ..VentilatorConfig::local(batch.clone(), Job::default())
                                },
                                backends(),
                            )
                        },
                        shutdown,
                    )?;
                    // Workers are named worker-1..N; report them in that order.
                    let per_worker = (1..=4)
                        .map(|i| {
                            report
                                .workers
                                .iter()
                                .find(|w| w.id == format!("worker-{i}"))
                                .map_or(0, |w| w.tasks)
                        })
                        .collect();
                    (report.elapsed_ms, per_worker)
                } else {
                    let workers = backends().into_iter().zip(delays.iter().copied()).collect();
                    let (report, per_worker) = crate::classic::run_local(
                        batch.clone(),
                        Order::LongestFirst,
                        workers,
                        wait,
                        shutdown,
                    )?;
                    (report.elapsed_ms, per_worker)
                };
                runs.push(run);
                progress.done();
            }
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let makespans: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let efficiencies: Vec<f64> = makespans.iter().map(|m| ideal / m).collect();
            log::info!("dispatch: {name}, {mode} done");
            rows.push(DispatchRow {
                scenario: name.to_owned(),
                dispatch: mode.to_owned(),
                makespan_ms: Spread::of(&makespans),
                ideal_ms: ideal,
                efficiency: Spread::of(&efficiencies),
                tasks_per_worker: runs[runs.len() / 2].1.clone(),
            });
        }
    }
    Ok(rows)
}

pub(super) fn table(rows: &[DispatchRow]) -> Table {
    let mut t = Table::new(
        "Dispatch: classic PUSH/PULL against credit, 4 sleep workers",
        &[
            "scenario",
            "dispatch",
            "makespan ms>",
            "ideal ms>",
            "efficiency>",
            "tasks per worker",
        ],
    );
    for row in rows {
        let per: Vec<String> = row.tasks_per_worker.iter().map(u64::to_string).collect();
        t.row(vec![
            row.scenario.clone(),
            row.dispatch.clone(),
            row.makespan_ms.cell(0),
            format!("{:.0}", row.ideal_ms),
            row.efficiency.cell(3),
            per.join(" / "),
        ]);
    }
    t
}
