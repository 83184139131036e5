//! `--suite chunking`: one divisible job carved by each policy (`static`, `fixed`,
//! `adaptive`) side by side in one run, on farms of unequal workers: four sleep workers
//! at 1, 2, 4 and 8 times nominal time, a pair a hundred times apart, the software adapter
//! beside the CPU on a Mandelbrot job, and the simulated farm of 1,000 log-normal workers
//! through the real dispatcher and sink; then a search job stopped at its first hit, timed
//! from the hit to every worker idle.
//!
//! Efficiency is the report's: the job's items over the sum of the workers' measured rates
//! (the ideal), against the makespan. Overhead is what the workers spent not computing
//! before their last result (waiting for chunks), over that span.

use super::table::Table;
use super::*;
use crate::chunking::{Plan, Policy};
use crate::kernels::{mandelbrot, search, Kernel};

#[derive(Debug, Clone, Serialize)]
pub struct ChunkRow {
    pub farm: String,
    pub policy: String,
    pub workers: usize,
    pub items: u64,
    pub makespan_ms: Spread,
    pub ideal_ms: Spread,
    pub efficiency: Spread,
    pub chunks: Spread,
    /// Share of the workers' time before their last result spent waiting for chunks.
    pub overhead: Spread,
    /// Per worker (in the farm's order), busy and finished ms of the median run.
    pub busy_ms: Vec<f64>,
    pub finished_ms: Vec<f64>,
    /// Why this farm has no figures here (empty when it ran).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unavailable: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CancelRow {
    pub workers: usize,
    pub backend: String,
    pub keys: u64,
    /// From the hit held at the sink (the ventilator told) to every worker idle.
    pub hit_to_idle_ms: Spread,
    /// Keys searched before the stop.
    pub searched: Spread,
}

/// A farm against its fastest worker alone, on the same job in the same run of the suite
/// (issue 24's honest measure: not against rates measured on items of other costs).
#[derive(Debug, Clone, Serialize)]
pub struct AddedRow {
    pub job: String,
    pub farm: String,
    pub workers: usize,
    pub makespan_ms: Spread,
    /// The median makespan over the fastest worker's alone (1.0 for that row).
    pub against_alone: f64,
    /// Chunks cut in the end game, and items redone (chunks) or tasks redispatched
    /// (bands), in the median run.
    pub chunks_cut: u64,
    pub redone: u64,
    /// Why this farm has no figures here (empty when it ran).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unavailable: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ChunkingResults {
    pub added: Vec<AddedRow>,
    pub farms: Vec<ChunkRow>,
    pub simulated: Vec<super::simulate::SimRow>,
    pub cancel: Vec<CancelRow>,
}

/// The three policies, as compared.
fn policies(chunk_ms: u64) -> [Policy; 3] {
    [
        Policy::Static,
        Policy::Fixed(0),
        Policy::Adaptive(Duration::from_millis(chunk_ms)),
    ]
}

/// Builds a farm's backends afresh for each run.
type MakeBackends = Box<dyn Fn() -> anyhow::Result<Vec<Box<dyn Backend>>>>;

/// A farm to run a job on: its name and a way to build its backends.
struct Farm {
    name: String,
    backends: MakeBackends,
    job: Job,
    plan: Plan,
}

fn sleep_farm(name: &str, slowdowns: &[f64], items: u64, item_us: u32) -> Farm {
    let slowdowns = slowdowns.to_vec();
    let mut constants = [0; crate::kernels::CONSTANTS];
    constants[0] = item_us;
    let job = Job {
        items,
        constants,
        ..Job::default()
    };
    Farm {
        name: name.to_owned(),
        backends: Box::new(move || {
            Ok(slowdowns
                .iter()
                .map(|&s| Box::new(Sleep::new(s)) as Box<dyn Backend>)
                .collect())
        }),
        job,
        plan: Plan {
            policy: Policy::Static,
            items,
            max_chunk: u32::MAX,
            nominal_us: f64::from(item_us),
        },
    }
}

fn run_farm(
    farm: &Farm,
    policy: Policy,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<ChunkRow> {
    let plan = Plan {
        policy,
        ..farm.plan
    };
    let mut runs = Vec::new();
    for r in 0..repeat {
        progress.step(format!(
            "chunking: {} {} ({}/{repeat})",
            farm.name,
            policy.name(),
            r + 1
        ));
        let backends = (farm.backends)()?;
        let ventilator = VentilatorConfig {
            chunking: Some(plan),
            ..VentilatorConfig::local(Batch { tasks: Vec::new() }, farm.job)
        };
        let report = local::run(LocalRun::new(ventilator, backends), shutdown)
            .with_context(|| format!("{} with {} chunks", farm.name, policy.name()))?;
        let job = report
            .job
            .clone()
            .context("a job's report says how it went")?;
        if job.held_items != job.items {
            bail!(
                "{} with {} chunks: the sink holds {} of {} items",
                farm.name,
                policy.name(),
                job.held_items,
                job.items
            );
        }
        progress.done();
        runs.push(report);
    }
    let pick = |f: &dyn Fn(&Report) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let overhead = |r: &Report| {
        let span: f64 = r.workers.iter().map(|w| w.finished_ms).sum();
        let busy: f64 = r.workers.iter().map(|w| w.busy_ms).sum();
        if span > 0.0 {
            ((span - busy) / span).max(0.0)
        } else {
            0.0
        }
    };
    // The median run's workers, for the plot.
    let mut by_makespan: Vec<&Report> = runs.iter().collect();
    by_makespan.sort_by(|a, b| a.elapsed_ms.total_cmp(&b.elapsed_ms));
    let median = by_makespan[by_makespan.len() / 2];
    // Workers are `worker-1` … in the farm's order; one that delivered nothing first (its
    // chunk was backed up and the backup won) is not in the report: zero here.
    let n = (farm.backends)().map_or(0, |b| b.len());
    let (mut busy_ms, mut finished_ms) = (vec![0.0; n], vec![0.0; n]);
    for w in &median.workers {
        let index =
            w.id.strip_prefix("worker-")
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| i.checked_sub(1));
        if let Some(i) = index.filter(|&i| i < n) {
            busy_ms[i] = w.busy_ms;
            finished_ms[i] = w.finished_ms;
        }
    }
    Ok(ChunkRow {
        farm: farm.name.clone(),
        policy: policy.name().to_owned(),
        workers: n,
        items: farm.job.items,
        makespan_ms: pick(&|r| r.elapsed_ms),
        ideal_ms: pick(&|r| r.ideal_ms),
        efficiency: pick(&|r| r.efficiency),
        chunks: pick(&|r| r.job.as_ref().map_or(0.0, |j| j.chunks as f64)),
        overhead: pick(&overhead),
        busy_ms,
        finished_ms,
        unavailable: String::new(),
    })
}

pub(super) fn chunking(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<ChunkingResults> {
    let mut results = ChunkingResults::default();
    // Jobs sized so the ideal is about 2 s (0.2 s with --quick). The slow worker's half of
    // a static split would take fifty times that: the backup rule hands it to the fast
    // worker after a few seconds.
    let scale = if args.quick { 0.1 } else { 1.0 };
    let item_us = 100;
    let items =
        |ideal_s: f64, speed: f64| (ideal_s * scale * speed * 1e6 / f64::from(item_us)) as u64;
    let mut farms = vec![
        sleep_farm(
            "sleep 1/2/4/8",
            &[1.0, 2.0, 4.0, 8.0],
            items(2.0, 1.875),
            item_us,
        ),
        sleep_farm("sleep 1:100", &[1.0, 100.0], items(2.0, 1.01), item_us),
    ];
    // The software adapter beside the CPU, on a Mandelbrot job (its rows).
    let (width, height) = if args.quick { (640, 360) } else { (3840, 2160) };
    let view = mandelbrot::View::new(width, height, args.max_iter, 1, (-0.5, 0.0), 3.0)
        .map_err(anyhow::Error::msg)?;
    let mandel = Job {
        kernel: Kernel::Mandelbrot.id(),
        constants: view.constants(),
        items: u64::from(height),
        ..Job::default()
    };
    let options = crate::backend::BackendOptions {
        slowdown: 1.0,
        quiet: true,
        ..Default::default()
    };
    let alone_name = format!("software alone, Mandelbrot {width}x{height}");
    let mixed_name = format!("software + cpu, Mandelbrot {width}x{height}");
    let software = crate::backend::build(BackendKind::Software, &options);
    let plan = Plan {
        policy: Policy::Static,
        items: mandel.items,
        max_chunk: (args.max_payload / (u64::from(width) * 4)).max(1) as u32,
        nominal_us: 0.0,
    };
    match software {
        Ok(_) => {
            // Alone, its "waiting" is what pipelined chunks leave of the round trips.
            let alone = options.clone();
            farms.push(Farm {
                name: alone_name,
                backends: Box::new(move || {
                    Ok(vec![crate::backend::build(BackendKind::Software, &alone)?])
                }),
                job: mandel,
                plan,
            });
            farms.push(Farm {
                name: mixed_name,
                backends: Box::new(move || {
                    Ok(vec![
                        crate::backend::build(BackendKind::Software, &options)?,
                        Box::new(crate::backend::cpu::Cpu) as Box<dyn Backend>,
                    ])
                }),
                job: mandel,
                plan,
            });
        }
        Err(e) => {
            for (name, workers) in [(&alone_name, 1), (&mixed_name, 2)] {
                for policy in policies(args.chunk_ms) {
                    results.farms.push(ChunkRow {
                        farm: name.clone(),
                        policy: policy.name().to_owned(),
                        workers,
                        items: mandel.items,
                        makespan_ms: Spread::of(&[]),
                        ideal_ms: Spread::of(&[]),
                        efficiency: Spread::of(&[]),
                        chunks: Spread::of(&[]),
                        overhead: Spread::of(&[]),
                        busy_ms: Vec::new(),
                        finished_ms: Vec::new(),
                        unavailable: format!("{e:#}"),
                    });
                }
            }
        }
    }
    for farm in &farms {
        for policy in policies(args.chunk_ms) {
            results
                .farms
                .push(run_farm(farm, policy, repeat, progress, shutdown)?);
        }
    }

    results.added = added_workers(args, repeat, progress, shutdown)?;

    // The simulated farm: 1,000 workers, log-normal speeds, 1 ms items.
    let (workers, sim_items) = if args.quick {
        (100, 200_000)
    } else {
        (1_000, 10_000_000)
    };
    for policy in policies(args.chunk_ms) {
        progress.step(format!(
            "chunking: simulated {workers} workers, {}",
            policy.name()
        ));
        results.simulated.push(super::simulate::simulate_until(
            &super::simulate::SimSpec {
                workers,
                tasks: sim_items,
                churn: false,
                latency: Duration::from_micros(200),
                seed: args.seed,
                chunking: Some(policy),
                item_us: 1000,
                farm: None,
                costs: None,
            },
            shutdown,
        )?);
        progress.done();
    }

    // Early cancel: a search job with the first hit wanted, on four cpu workers.
    let keys: u32 = if args.quick { 1 << 26 } else { u32::MAX };
    let space = search::Space::for_chunks(24, keys, 1 << 22, 7).map_err(anyhow::Error::msg)?;
    let mut constants = space.constants();
    constants[search::HITS_WANTED] = 1;
    let find = Job {
        kernel: Kernel::Search.id(),
        constants,
        items: u64::from(keys),
        ..Job::default()
    };
    let (mut idle, mut searched) = (Vec::new(), Vec::new());
    for r in 0..repeat.max(5) {
        progress.step(format!(
            "chunking: search stopped at its hit ({}/{})",
            r + 1,
            repeat.max(5)
        ));
        let ventilator = VentilatorConfig {
            chunking: Some(Plan {
                policy: Policy::Adaptive(Duration::from_millis(args.chunk_ms)),
                items: find.items,
                max_chunk: 1 << 22,
                nominal_us: 0.0,
            }),
            ..VentilatorConfig::local(Batch { tasks: Vec::new() }, find)
        };
        let backends: Vec<Box<dyn Backend>> = (0..4)
            .map(|_| Box::new(crate::backend::cpu::Cpu) as Box<dyn Backend>)
            .collect();
        let report = local::run(LocalRun::new(ventilator, backends), shutdown)
            .context("the search stopped at its hit")?;
        let job = report.job.context("a job's report")?;
        if let Some(ms) = job.cancel_ms {
            idle.push(ms);
        }
        searched.push(job.held_items as f64);
        progress.done();
    }
    results.cancel.push(CancelRow {
        workers: 4,
        backend: "cpu".into(),
        keys: u64::from(keys),
        hit_to_idle_ms: Spread::of(&idle),
        searched: Spread::of(&searched),
    });
    Ok(results)
}

/// Adding workers never slows a job: a Mandelbrot picture (rows of very different costs),
/// adaptive and as bands of 16 rows, on a `cpu` worker alone and with one and eight `cpu`
/// workers twenty times slower (`--slowdown 20`: they wait, so the fast worker keeps its
/// core on a small box), then the software adapter alone and with one and two plain
/// `cpu` workers (issue 24's farms; they share the adapter's cores here).
fn added_workers(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<AddedRow>> {
    let side = if args.quick { 512 } else { 2048 };
    // A job's item is a row; a task list's task a band of 16 rows.
    let by_row = mandelbrot::View::new(side, side, args.max_iter, 1, (-0.5, 0.0), 3.0)
        .map_err(anyhow::Error::msg)?;
    let view = mandelbrot::View::new(side, side, args.max_iter, 16, (-0.5, 0.0), 3.0)
        .map_err(anyhow::Error::msg)?;
    let job = Job {
        kernel: Kernel::Mandelbrot.id(),
        constants: view.constants(),
        ..Job::default()
    };
    let bands = Batch {
        tasks: (0..view.bands())
            .map(|id| Task {
                id,
                workload_ms: 1,
                ..Task::default()
            })
            .collect(),
    };
    let cpu = || Box::new(crate::backend::cpu::Cpu) as Box<dyn Backend>;
    let slow = || {
        Box::new(crate::backend::slowed::Slowed::new(
            Box::new(crate::backend::cpu::Cpu),
            20.0,
        )) as Box<dyn Backend>
    };
    let options = crate::backend::BackendOptions {
        slowdown: 1.0,
        quiet: true,
        ..Default::default()
    };
    let software = crate::backend::build(BackendKind::Software, &options).map(drop);
    type Make = Box<dyn Fn() -> anyhow::Result<Vec<Box<dyn Backend>>>>;
    let mut farms: Vec<(String, usize, Make)> = Vec::new();
    for extra in [0, 1, 8] {
        let name = match extra {
            0 => "cpu".to_owned(),
            n => format!("cpu + {n} cpu (20x slower)"),
        };
        farms.push((
            name,
            1 + extra,
            Box::new(move || {
                Ok(std::iter::once(cpu())
                    .chain((0..extra).map(|_| slow()))
                    .collect())
            }),
        ));
    }
    for extra in [0, 1, 2] {
        let name = match extra {
            0 => "software".to_owned(),
            n => format!("software + {n} cpu"),
        };
        let options = options.clone();
        farms.push((
            name,
            1 + extra,
            Box::new(move || {
                let fast = crate::backend::build(BackendKind::Software, &options)?;
                Ok(std::iter::once(fast)
                    .chain((0..extra).map(|_| cpu()))
                    .collect())
            }),
        ));
    }
    let mut rows = Vec::new();
    for adaptive in [true, false] {
        let label = if adaptive {
            format!("Mandelbrot {side}x{side}, adaptive")
        } else {
            format!("Mandelbrot {side}x{side}, bands of 16 rows")
        };
        let ventilator = || {
            if adaptive {
                let job = Job {
                    items: u64::from(by_row.height),
                    constants: by_row.constants(),
                    ..job
                };
                VentilatorConfig {
                    chunking: Some(Plan {
                        policy: Policy::Adaptive(Duration::from_millis(args.chunk_ms)),
                        items: job.items,
                        max_chunk: (args.max_payload / (u64::from(view.width) * 4)).max(1) as u32,
                        nominal_us: 0.0,
                    }),
                    ..VentilatorConfig::local(Batch { tasks: Vec::new() }, job)
                }
            } else {
                VentilatorConfig::local(bands.clone(), job)
            }
        };
        // The farms take turns, a run each per round, so that what drifts on a shared
        // machine over a minute weighs on each farm alike, not on whichever ran last.
        let mut runs: Vec<Vec<Report>> = vec![Vec::new(); farms.len()];
        for r in 0..repeat {
            for (i, (farm, _, make)) in farms.iter().enumerate() {
                if farm.starts_with("software") && software.is_err() {
                    continue;
                }
                progress.step(format!("chunking: {label}, {farm} ({}/{repeat})", r + 1));
                let report = local::run(LocalRun::new(ventilator(), make()?), shutdown)
                    .with_context(|| format!("{label} on {farm}"))?;
                runs[i].push(report);
                progress.done();
            }
        }
        let mut alone = f64::NAN;
        for ((farm, workers, _), mut runs) in farms.iter().zip(runs) {
            if let (true, Err(e)) = (farm.starts_with("software"), &software) {
                rows.push(AddedRow {
                    job: label.clone(),
                    farm: farm.clone(),
                    workers: *workers,
                    makespan_ms: Spread::of(&[]),
                    against_alone: f64::NAN,
                    chunks_cut: 0,
                    redone: 0,
                    unavailable: format!("{e:#}"),
                });
                continue;
            }
            runs.sort_by(|a, b| a.elapsed_ms.total_cmp(&b.elapsed_ms));
            let median = &runs[runs.len() / 2];
            let makespan = Spread::of(&runs.iter().map(|r| r.elapsed_ms).collect::<Vec<_>>());
            if !farm.contains('+') {
                alone = makespan.median;
            }
            let (chunks_cut, redone) = match &median.job {
                Some(j) => (j.chunks_cut, j.items_redone),
                None => (0, median.redispatched),
            };
            rows.push(AddedRow {
                job: label.clone(),
                farm: farm.clone(),
                workers: *workers,
                against_alone: makespan.median / alone,
                makespan_ms: makespan,
                chunks_cut,
                redone,
                unavailable: String::new(),
            });
        }
    }
    Ok(rows)
}

fn spread(s: &Spread, digits: usize) -> String {
    if s.median.is_nan() {
        return "–".into();
    }
    format!(
        "{:.digits$} ({:.digits$}–{:.digits$})",
        s.median, s.min, s.max
    )
}

/// The table of farms against their fastest worker alone, with the allowance stated as
/// met or not where the added workers leave the fast one its cores.
fn added_table(rows: &[AddedRow]) -> Table {
    let mut t = Table::new(
        "Adding workers never slows a job: each farm against its fastest worker alone",
        &[
            "job",
            "farm",
            "workers>",
            "makespan ms>",
            "against alone>",
            "chunks cut>",
            "redone>",
            "target",
        ],
    );
    for row in rows {
        if !row.unavailable.is_empty() {
            t.row(vec![
                row.job.clone(),
                row.farm.clone(),
                row.workers.to_string(),
                format!("not measured: {}", row.unavailable),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        // The allowance: 2 % (and one small chunk of the fast worker's, inside it here).
        let verdict = if row.farm.starts_with("cpu +") {
            format!(
                "≤ 1.02: {}",
                if row.against_alone <= 1.02 {
                    "met"
                } else {
                    "not met"
                }
            )
        } else {
            String::new()
        };
        t.row(vec![
            row.job.clone(),
            row.farm.clone(),
            row.workers.to_string(),
            spread(&row.makespan_ms, 0),
            format!("{:.3}", row.against_alone),
            row.chunks_cut.to_string(),
            row.redone.to_string(),
            verdict,
        ]);
    }
    t.note(
        "Redone: a job's items computed again by copies (chunks), a task list's tasks \
         redispatched (bands), in the median run. The software rows share the adapter's \
         cores with the cpu workers on a small box: there the cpu workers take capacity \
         as well as add it.",
    );
    t
}

/// The tables, with the targets stated as met or not.
pub(super) fn tables(r: &ChunkingResults) -> Vec<Table> {
    let mut farms = Table::new(
        "Divisible jobs: one job carved by each policy, efficiency against the measured ideal",
        &[
            "farm",
            "policy",
            "workers>",
            "items>",
            "makespan ms>",
            "ideal ms>",
            "efficiency>",
            "chunks>",
            "waiting>",
            "target",
        ],
    );
    for row in &r.farms {
        if !row.unavailable.is_empty() {
            farms.row(vec![
                row.farm.clone(),
                row.policy.clone(),
                row.workers.to_string(),
                row.items.to_string(),
                format!("not measured: {}", row.unavailable),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        let target = match (row.policy.as_str(), row.farm.as_str()) {
            ("adaptive", "sleep 1/2/4/8") => Some(0.95),
            ("adaptive", "sleep 1:100") => Some(0.90),
            _ => None,
        };
        let verdict = match target {
            Some(t) => format!(
                "≥ {t:.2}, overhead < 2 %: {}",
                if row.efficiency.median >= t && row.overhead.median < 0.02 {
                    "met"
                } else {
                    "not met"
                }
            ),
            None => String::new(),
        };
        farms.row(vec![
            row.farm.clone(),
            row.policy.clone(),
            row.workers.to_string(),
            row.items.to_string(),
            spread(&row.makespan_ms, 0),
            spread(&row.ideal_ms, 0),
            spread(&row.efficiency, 3),
            spread(&row.chunks, 0),
            format!("{:.2} %", 100.0 * row.overhead.median),
            verdict,
        ]);
    }
    farms.note(
        "Ideal: the job's items over the sum of the workers' measured rates (items over busy \
         time). Waiting: the share of the workers' time up to their last result spent without \
         a chunk (round trips for chunks), median run.",
    );
    let mut sim = Table::new(
        "Divisible jobs in the simulated farm: the real dispatcher and sink, log-normal speeds, 200 µs latency",
        &["policy", "workers>", "items>", "makespan s>", "ideal s>", "efficiency>", "chunks>"],
    );
    for row in &r.simulated {
        sim.row(vec![
            row.scenario.clone(),
            row.workers.to_string(),
            row.tasks.to_string(),
            format!("{:.2}", row.makespan_s),
            format!("{:.2}", row.ideal_s),
            format!("{:.3}", row.efficiency_ideal),
            row.decisions.to_string(),
        ]);
    }
    let mut cancel = Table::new(
        "Early cancel: a search stopped at its first hit",
        &[
            "workers>",
            "backend",
            "keyspace>",
            "hit to all idle ms>",
            "keys searched>",
        ],
    );
    for row in &r.cancel {
        cancel.row(vec![
            row.workers.to_string(),
            row.backend.clone(),
            row.keys.to_string(),
            format!(
                "median {:.1}, max {:.1}",
                row.hit_to_idle_ms.median, row.hit_to_idle_ms.max
            ),
            spread(&row.searched, 0),
        ]);
    }
    vec![added_table(&r.added), farms, sim, cancel]
}
