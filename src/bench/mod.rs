//! `conquer bench`: reproducible comparisons on loopback, printed as Markdown tables (or
//! JSON). Each suite runs the real pipeline through `local`, repeated, and reports medians
//! with their min–max spread. Plain libzmq PUSH/PULL is measured in the same run as the
//! baseline for throughput. Benchmarks report numbers; they assert nothing. Plots (SVG)
//! of scaling and of the backend comparison go to `--out` with the tables.

mod faults;
mod plot;
pub mod simulate;

use crate::backend::sleep::Sleep;
use crate::backend::Backend;
use crate::backend::BackendKind;
use crate::batch::{Batch, Job, Order, Task};
use crate::local::{self, LocalRun};
use crate::protocol::Status;
use crate::report::Report;
use crate::shutdown::Shutdown;
use crate::sink::SinkConfig;
use crate::ventilator::VentilatorConfig;
use anyhow::{bail, Context};
use serde::Serialize;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A benchmark suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// The seed batch on 1, 2, 4 … N sleep workers: elapsed against ideal.
    Scaling,
    /// Zero-work tasks per second through the pipeline, next to plain PUSH/PULL.
    Throughput,
    /// The seed batch on one worker of every backend present: sleep, cpu, software, gpu.
    Backends,
    /// Each compute adapter on its own: spin throughput and per-task overhead.
    Device,
    /// Classic PUSH/PULL against credit dispatch: all joined, staggered joins, a slow worker.
    Dispatch,
    /// Per-task latency from dispatch to the sink: p50, p90, p99.
    Latency,
    /// Misbehaving peers: a straggler that heartbeats, a flood of fake workers.
    Faults,
    /// The real dispatcher in virtual time: 1 to 10,000 simulated workers, a million tasks.
    Simulate,
}

impl Suite {
    /// Every suite, in the order they are reported.
    pub const ALL: [Suite; 8] = [
        Suite::Scaling,
        Suite::Backends,
        Suite::Dispatch,
        Suite::Throughput,
        Suite::Latency,
        Suite::Faults,
        Suite::Simulate,
        Suite::Device,
    ];
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Suites to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Suite::ALL)]
    pub suite: Vec<Suite>,
    /// Repetitions of every measurement; tables show the median and min–max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Small sizes and one repetition: a structure check for CI, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Print the results as one JSON object instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Also write bench.md and bench.json (and plots) into this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
    /// Seed of the benchmark batches.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker counts for the scaling suite.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2, 4, 8, 16])]
    pub workers: Vec<u32>,
    /// Backends the scaling suite runs (gpu and software only where present).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendKind::Sleep, BackendKind::Software, BackendKind::Gpu])]
    pub scaling_backends: Vec<BackendKind>,
    /// Zero-work tasks in the throughput suite.
    #[arg(long, default_value_t = 200_000)]
    pub throughput_tasks: u32,
    /// Backends the backends suite compares. One absent here gets a row saying why; asked
    /// for alone, an absent backend is an error.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendKind::Sleep, BackendKind::Cpu, BackendKind::Software, BackendKind::Gpu])]
    pub backends: Vec<BackendKind>,
    /// Spin work units per ms in the compute suites (the same default as `run`; `conquer
    /// calibrate` gives the figure at which one ms is one CPU core's ms).
    #[arg(long, default_value_t = crate::kernels::spin::DEFAULT_UNITS_PER_MS)]
    pub units_per_ms: u32,
    /// The adapter's peak 32-bit integer throughput in Gop/s, to rate spin against.
    #[arg(long, value_name = "GOPS")]
    pub int_peak_gops: Option<f64>,
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Spread {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn cell(&self, decimals: usize) -> String {
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

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

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    pub pipeline: String,
    pub workers: u32,
    pub tasks: u32,
    pub tasks_per_s: Spread,
}

/// Where the numbers came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub host: String,
    pub cpu: String,
    pub cores: usize,
    pub libzmq: String,
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    pub machine: Machine,
    pub command: String,
    pub repeat: u32,
    pub scaling: Vec<ScalingRow>,
    pub throughput: Vec<ThroughputRow>,
    pub backends: Vec<BackendRow>,
    pub device: Vec<DeviceRow>,
    pub dispatch: Vec<DispatchRow>,
    pub latency: Vec<LatencyRow>,
    pub faults: Vec<faults::FaultRow>,
    pub simulate: Vec<simulate::SimRow>,
}

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

pub fn run(args: BenchArgs, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let repeat = if args.quick { 1 } else { args.repeat };
    let mut results = BenchResults {
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        repeat,
        scaling: Vec::new(),
        throughput: Vec::new(),
        backends: Vec::new(),
        device: Vec::new(),
        dispatch: Vec::new(),
        latency: Vec::new(),
        faults: Vec::new(),
        simulate: Vec::new(),
    };
    let progress = Progress::new(&args, repeat);
    for suite in &args.suite {
        match suite {
            Suite::Scaling => results.scaling = scaling(&args, repeat, &progress, shutdown)?,
            Suite::Throughput => {
                results.throughput = throughput(&args, repeat, &progress, shutdown)?
            }
            Suite::Backends => results.backends = backends(&args, repeat, &progress, shutdown)?,
            Suite::Device => results.device = device(&args, repeat, &progress)?,
            Suite::Dispatch => results.dispatch = dispatch(&args, repeat, &progress, shutdown)?,
            Suite::Latency => results.latency = latency(&args, repeat, &progress, shutdown)?,
            Suite::Faults => {
                results.faults = faults::faults(args.quick, repeat, &progress, shutdown)?
            }
            Suite::Simulate => results.simulate = simulate::suite(args.quick, &progress)?,
        }
    }
    progress.finish();
    let json = serde_json::to_string_pretty(&results)?;
    let md = markdown(&results);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        for (name, text) in [("bench.json", &json), ("bench.md", &md)] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let m = &results.machine;
        let when = format!("{}, {} ({} cores)", m.date, m.cpu, m.cores);
        if !results.scaling.is_empty() {
            let first = &results.scaling[0];
            let title = format!(
                "{} tasks, {} ms expected, longest first: {when}",
                first.tasks, first.expected_ms
            );
            plot::scaling(&results.scaling, &title, &dir.join("scaling.svg"))?;
        }
        if !results.backends.is_empty() {
            let title = format!("the same batch on one worker per backend: {when}");
            let ran: Vec<BackendRow> = results
                .backends
                .iter()
                .filter(|r| r.unavailable.is_empty())
                .cloned()
                .collect();
            if !ran.is_empty() {
                plot::backends(&ran, &title, &dir.join("backends.svg"))?;
            }
        }
        if !results.simulate.is_empty() {
            let title = format!(
                "simulated farm, {} tasks: efficiency against worker count",
                results.simulate[0].tasks
            );
            plot::simulate(&results.simulate, &title, &dir.join("simulate.svg"))?;
        }
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{md}");
    }
    Ok(0)
}

/// A progress bar on stderr when it is a terminal; silent otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(args: &BenchArgs, repeat: u32) -> Progress {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress { bar: None };
        }
        let r = u64::from(repeat);
        let runs: u64 = args
            .suite
            .iter()
            .map(|suite| match suite {
                Suite::Scaling => (args.workers.len() * args.scaling_backends.len()) as u64 * r,
                Suite::Throughput => 2 * r,
                Suite::Backends => args.backends.len() as u64 * r,
                Suite::Dispatch => 6 * r,
                Suite::Latency => 3 * r,
                Suite::Faults => 4 * r,
                Suite::Simulate => 6,
                Suite::Device => 1,
            })
            .sum();
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(runs),
            indicatif::ProgressDrawTarget::stderr_with_hz(4),
        );
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {elapsed}  {msg}")
        {
            bar.set_style(style);
        }
        Progress { bar: Some(bar) }
    }

    /// Says what runs now.
    fn step(&self, what: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(bar) = &self.bar {
            bar.set_message(what);
        }
    }

    /// One run done.
    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn sleep_backends(n: u32) -> Vec<Box<dyn Backend>> {
    (0..n)
        .map(|_| Box::new(Sleep::new(1.0)) as Box<dyn Backend>)
        .collect()
}

/// Runs one batch in-process and returns the sink's report.
pub fn run_batch(
    batch: Batch,
    order: Order,
    backends: Vec<Box<dyn Backend>>,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    run_job(batch, order, Job::default(), backends, shutdown)
}

/// Runs one batch of `job` in-process and returns the sink's report.
pub fn run_job(
    batch: Batch,
    order: Order,
    job: Job,
    backends: Vec<Box<dyn Backend>>,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    run_traced(batch, order, job, 2, backends, None, shutdown)
}

/// Runs one batch in-process, recording each task's dispatch and arrival in `timeline`.
pub fn run_traced(
    batch: Batch,
    order: Order,
    job: Job,
    window: u32,
    backends: Vec<Box<dyn Backend>>,
    timeline: Option<std::sync::Arc<crate::timeline::Timeline>>,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    let ventilator = VentilatorConfig {
        order,
        window,
        timeline: timeline.clone(),
        ..VentilatorConfig::local(batch, job)
    };
    local::run(
        LocalRun {
            sink: SinkConfig {
                timeline,
                ..SinkConfig::default()
            },
            ..LocalRun::new(ventilator, backends)
        },
        shutdown,
    )
}

/// The spin job and backend options the compute suites share.
fn compute_setup(args: &BenchArgs) -> (Job, crate::backend::BackendOptions) {
    let job = Job {
        kernel: 0,
        units_per_ms: args.units_per_ms,
        verify_percent: 0,
    };
    let options = crate::backend::BackendOptions {
        slowdown: 1.0,
        ..Default::default()
    };
    (job, options)
}

fn scaling(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<ScalingRow>> {
    let (tasks, max_ms) = if args.quick { (20, 10) } else { (100, 100) };
    let batch = Batch::generate(tasks, 1, max_ms, args.seed)?;
    let (job, options) = compute_setup(args);
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
                let report = run_job(batch.clone(), Order::LongestFirst, job, backends, shutdown)
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency(
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

fn throughput(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<ThroughputRow>> {
    let tasks = if args.quick {
        20_000
    } else {
        args.throughput_tasks
    };
    let workers = 2;
    let batch = Batch::generate(tasks, 0, 0, args.seed)?;
    let mut ours = Vec::new();
    let mut plain = Vec::new();
    for r in 0..repeat {
        progress.step(format!("throughput ({}/{repeat})", r + 1));
        let report = run_batch(
            batch.clone(),
            Order::Given,
            sleep_backends(workers),
            shutdown,
        )
        .context("throughput run")?;
        ours.push(report.tasks_per_s);
        progress.done();
        let elapsed = plain_push_pull(tasks, workers).context("plain PUSH/PULL run")?;
        plain.push(f64::from(tasks) / elapsed.as_secs_f64());
        progress.done();
    }
    Ok(vec![
        ThroughputRow {
            pipeline: "conquer (credit, full protocol)".into(),
            workers,
            tasks,
            tasks_per_s: Spread::of(&ours),
        },
        ThroughputRow {
            pipeline: "plain libzmq PUSH/PULL".into(),
            workers,
            tasks,
            tasks_per_s: Spread::of(&plain),
        },
    ])
}

/// A backend's name as `--backend` spells it.
fn kind_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Auto => "auto",
        BackendKind::Gpu => "gpu",
        BackendKind::Software => "software",
        BackendKind::Cpu => "cpu",
        BackendKind::Sleep => "sleep",
    }
}

fn backends(
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

fn dispatch(
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

/// Integer operations in one spin hash round: two multiplies, three shifts, three xors.
pub const OPS_PER_ROUND: f64 = 8.0;

fn device(args: &BenchArgs, repeat: u32, progress: &Progress) -> anyhow::Result<Vec<DeviceRow>> {
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
        };
        let run = |gpu: &mut Gpu, job: &Job, tasks: Vec<Task>| -> anyhow::Result<Vec<Outcome>> {
            let mut queue = tasks.into_iter();
            let mut outcomes = Vec::new();
            gpu.run(job, &mut || queue.next(), &mut |o| outcomes.push(o));
            if let Some(bad) = outcomes.iter().find(|o| o.status != Status::Ok) {
                bail!("task {} failed on {}", bad.task.id, info.name);
            }
            Ok(outcomes)
        };
        let mut rates = Vec::new();
        for r in 0..repeat {
            let outcome = run(
                &mut gpu,
                &spin_job,
                vec![Task {
                    id: r,
                    workload_ms: 1,
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
        };
        let n: u32 = if args.quick { 50 } else { 2000 };
        let tasks = || {
            (0..n)
                .map(|id| Task { id, workload_ms: 0 })
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

/// The Guide's pipeline stripped to the sockets: PUSH empty tasks to `workers` threads that
/// PULL them and PUSH empty results to a PULL sink. Times first send to last result, after
/// every worker has shown it is connected (so no slow-joiner skew).
pub fn plain_push_pull(tasks: u32, workers: u32) -> anyhow::Result<Duration> {
    let ctx = zmq::Context::new();
    let vent = ctx.socket(zmq::PUSH)?;
    vent.set_sndhwm(0)?;
    vent.bind("tcp://127.0.0.1:*")?;
    let vent_ep = vent
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("bad endpoint"))?;
    let sink = ctx.socket(zmq::PULL)?;
    sink.set_rcvhwm(0)?;
    sink.bind("tcp://127.0.0.1:*")?;
    let sink_ep = sink
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("bad endpoint"))?;
    let mut threads = Vec::new();
    for _ in 0..workers {
        let ctx = ctx.clone();
        let (vent_ep, sink_ep) = (vent_ep.clone(), sink_ep.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let from = ctx.socket(zmq::PULL)?;
            from.connect(&vent_ep)?;
            let to = ctx.socket(zmq::PUSH)?;
            to.connect(&sink_ep)?;
            to.send(&b"ready"[..], 0)?;
            loop {
                let task = from.recv_bytes(0)?;
                if task == b"END" {
                    return Ok(());
                }
                to.send(&b""[..], 0)?;
            }
        }));
    }
    for _ in 0..workers {
        sink.recv_bytes(0)?;
    }
    // Each worker's PULL may still be completing its handshake with the PUSH side; a
    // short grace keeps the first burst from going to one worker only.
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    for _ in 0..tasks {
        vent.send(&b""[..], 0)?;
    }
    for _ in 0..tasks {
        sink.recv_bytes(0)?;
    }
    let elapsed = start.elapsed();
    for _ in 0..workers {
        vent.send(&b"END"[..], 0)?;
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("plain worker panicked"))??;
    }
    Ok(elapsed)
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let (a, b, c) = zmq::version();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        host,
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        libzmq: format!("{a}.{b}.{c}"),
        date,
    }
}

/// The results as Markdown tables.
pub fn markdown(r: &BenchResults) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Measured {} on {} ({} cores, {}), libzmq {}; `{}`; median of {} (min–max).\n",
        m.date, m.host, m.cores, m.cpu, m.libzmq, r.command, r.repeat
    );
    if !r.scaling.is_empty() {
        let first = &r.scaling[0];
        let _ = writeln!(
            s,
            "### Scaling: {} tasks, {} ms expected, longest first\n",
            first.tasks, first.expected_ms
        );
        s += "| workers | backend | ideal ms | elapsed ms | efficiency |\n";
        s += "|---:|---|---:|---:|---:|\n";
        for row in &r.scaling {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} |",
                row.workers,
                row.backend,
                row.ideal_ms,
                row.elapsed_ms.cell(0),
                row.efficiency.cell(3)
            );
        }
        s += "\n";
    }
    if !r.backends.is_empty() {
        let first = &r.backends[0];
        let _ = writeln!(
            s,
            "### Backends: {} tasks on one worker, spin at {} units/ms\n",
            first.tasks, first.units_per_ms
        );
        s += "| backend | adapter | elapsed ms | kernel ms | overhead µs/task | speed-up vs sleep |\n";
        s += "|---|---|---:|---:|---:|---:|\n";
        for row in &r.backends {
            if !row.unavailable.is_empty() {
                let _ = writeln!(
                    s,
                    "| {} | not available: {} | - | - | - | - |",
                    row.backend,
                    row.unavailable.replace('|', "/")
                );
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2} |",
                row.backend,
                if row.adapter.is_empty() {
                    "-"
                } else {
                    &row.adapter
                },
                row.elapsed_ms.cell(0),
                row.kernel_ms.cell(1),
                row.overhead_us_per_task.cell(0),
                row.speedup_vs_sleep
            );
        }
        s += "\n";
    }
    if !r.device.is_empty() {
        let _ = writeln!(s, "### Device: spin throughput and per-task overhead\n");
        s += "| adapter | class | spin G rounds/s | int32 Gop/s | of peak | zero-work µs/task, 1 in flight | µs/task, slots in flight |\n";
        s += "|---|---|---:|---:|---:|---:|---:|\n";
        for row in &r.device {
            let spin = Spread {
                median: row.spin_rounds_per_s.median / 1e9,
                min: row.spin_rounds_per_s.min / 1e9,
                max: row.spin_rounds_per_s.max / 1e9,
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {} | {} ({}) |",
                row.adapter,
                row.class,
                spin.cell(2),
                row.int_gops,
                row.fraction_of_peak
                    .map_or("-".to_owned(), |f| format!("{:.0}%", f * 100.0)),
                row.overhead_us_1_in_flight.cell(0),
                row.overhead_us_in_flight.cell(0),
                row.slots
            );
        }
        s += "\n";
    }
    if !r.dispatch.is_empty() {
        let _ = writeln!(
            s,
            "### Dispatch: classic PUSH/PULL against credit, 4 sleep workers\n"
        );
        s += "| scenario | dispatch | makespan ms | ideal ms | efficiency | tasks per worker |\n";
        s += "|---|---|---:|---:|---:|---|\n";
        for row in &r.dispatch {
            let per: Vec<String> = row.tasks_per_worker.iter().map(u64::to_string).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {} |",
                row.scenario,
                row.dispatch,
                row.makespan_ms.cell(0),
                row.ideal_ms,
                row.efficiency.cell(3),
                per.join(" / ")
            );
        }
        s += "\n";
    }
    if !r.latency.is_empty() {
        let _ = writeln!(s, "### Latency per task, all repetitions pooled\n");
        s += "| batch | workers | measure | p50 µs | p90 µs | p99 µs | max µs |\n";
        s += "|---|---:|---|---:|---:|---:|---:|\n";
        for row in &r.latency {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                row.batch, row.workers, row.measure, row.p50_us, row.p90_us, row.p99_us, row.max_us
            );
        }
        s += "\n";
    }
    if !r.throughput.is_empty() {
        let _ = writeln!(s, "### Throughput: zero-work tasks on loopback\n");
        s += "| pipeline | workers | tasks | tasks/s |\n|---|---:|---:|---:|\n";
        for row in &r.throughput {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                row.pipeline,
                row.workers,
                row.tasks,
                row.tasks_per_s.cell(0)
            );
        }
        s += "\n";
    }
    if !r.faults.is_empty() {
        let _ = writeln!(s, "### Faults: misbehaving peers\n");
        s += "| scenario | defence | tasks | measured against ms | elapsed ms | ratio | redispatched |\n";
        s += "|---|---|---:|---:|---:|---:|---:|\n";
        for row in &r.faults {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {} | {} |",
                row.scenario,
                row.defence,
                row.tasks,
                row.ideal_ms,
                row.elapsed_ms.cell(0),
                row.ratio.cell(2),
                row.redispatched.cell(0)
            );
        }
        s += "\n";
    }
    if !r.simulate.is_empty() {
        s += &simulate::markdown(&r.simulate);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_ideal_accounts_for_joins_and_speeds() {
        // Four equal workers from the start: the share.
        assert!((capacity_ideal_ms(400.0, 10.0, &[0.0; 4], &[1.0; 4]) - 100.0).abs() < 1e-6);
        // One joins 100 ms late: three carry 300 ms alone, then four share the last 100.
        let t = capacity_ideal_ms(400.0, 10.0, &[0.0, 0.0, 0.0, 100.0], &[1.0; 4]);
        assert!((t - 125.0).abs() < 1e-6, "{t}");
        // Done before the late one joins: it adds nothing.
        let t = capacity_ideal_ms(240.0, 10.0, &[0.0, 0.0, 0.0, 100.0], &[1.0; 4]);
        assert!((t - 80.0).abs() < 1e-6, "{t}");
        // A third-speed worker adds a third of a worker.
        let t = capacity_ideal_ms(310.0, 10.0, &[0.0; 4], &[1.0, 1.0, 1.0, 1.0 / 3.0]);
        assert!((t - 93.0).abs() < 1e-6, "{t}");
        // Never below the longest task.
        assert_eq!(capacity_ideal_ms(10.0, 50.0, &[0.0; 4], &[1.0; 4]), 50.0);
    }

    #[test]
    fn spread_takes_the_median_and_extremes() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert!(Spread::of(&[]).median.is_nan());
    }
}
