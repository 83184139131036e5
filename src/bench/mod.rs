//! `conquer bench`: reproducible comparisons on loopback, printed as Markdown tables (or
//! JSON). Each suite runs the real pipeline through `local`, repeated, and reports medians
//! with their min–max spread. Plain libzmq PUSH/PULL is measured in the same run as the
//! baseline for throughput. Benchmarks report numbers; they assert nothing. Plots (SVG)
//! of scaling, the backend comparison, the simulated farms and the chunking farms go to
//! `--out` with the tables.

mod backends;
mod chunking;
mod device;
mod dispatch;
mod faults;
mod kernels;
mod latency;
mod plain;
mod plot;
mod scaling;
pub mod simulate;
mod table;
mod throughput;

pub use backends::BackendRow;
pub use device::{DeviceRow, OPS_PER_ROUND};
pub use dispatch::{capacity_ideal_ms, DispatchRow};
pub use latency::LatencyRow;
pub use scaling::ScalingRow;
pub use throughput::ThroughputRow;

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
    /// Data kernels per backend (Mandelbrot megapixels/s, search keys/s) and payloads of
    /// 64 KiB, 1 MiB and 16 MiB through the pipeline next to plain PUSH/PULL.
    Kernels,
    /// Divisible jobs: static, fixed and adaptive chunks on unequal farms (sleep 1/2/4/8, a
    /// 1 : 100 pair, software + cpu, 1,000 simulated workers), and a search stopped early.
    Chunking,
}

impl Suite {
    /// Every suite, in the order they are reported.
    pub const ALL: [Suite; 10] = [
        Suite::Scaling,
        Suite::Backends,
        Suite::Dispatch,
        Suite::Throughput,
        Suite::Latency,
        Suite::Faults,
        Suite::Simulate,
        Suite::Device,
        Suite::Kernels,
        Suite::Chunking,
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
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::batch::MAX_TASKS)))]
    pub throughput_tasks: u32,
    /// Backends the backends suite compares. One absent here gets a row saying why; asked
    /// for alone, an absent backend is an error.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendKind::Sleep, BackendKind::Cpu, BackendKind::Software, BackendKind::Gpu])]
    pub backends: Vec<BackendKind>,
    /// Spin work units per ms in the compute suites (the same default as `run`; `conquer
    /// calibrate` gives the figure at which one ms is one CPU core's ms).
    #[arg(long, default_value_t = crate::kernels::spin::DEFAULT_UNITS_PER_MS, value_parser = clap::value_parser!(u32).range(1..))]
    pub units_per_ms: u32,
    /// The adapter's ceiling for 32-bit operations in Gop/s, to rate spin against: its
    /// issue rate (on NVIDIA, SMs x 128 lanes x clock), which no operation mix passes.
    #[arg(long, value_name = "GOPS", value_parser = parse_gops)]
    pub int_peak_gops: Option<f64>,
    /// The process's `--max-payload` (a global flag), for the roles the suites run.
    #[arg(skip = crate::protocol::DEFAULT_MAX_PAYLOAD)]
    pub max_payload: u64,
    /// Scaling suite: run every batch with the live view on (`--http`), `/metrics` scraped
    /// every 100 ms and `/api/status` read twice a second (as the page does), to compare
    /// with a run without.
    #[arg(long)]
    pub http_scrape: bool,
    /// Scaling suite: write each run's timeline (a Chrome trace, as `--timeline`) into DIR.
    #[arg(long, value_name = "DIR")]
    pub timelines: Option<std::path::PathBuf>,
    /// Kernels suite: the Mandelbrot image, WIDTHxHEIGHT (--quick makes it 320x180).
    #[arg(long, value_name = "WxH", default_value = "1920x1080", value_parser = parse_size)]
    pub mandelbrot: (u32, u32),
    /// Kernels suite: Mandelbrot's iteration limit.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_iter: u32,
    /// Kernels suite: keys the search kernel tries (16 tasks).
    #[arg(long, default_value_t = 1 << 26, value_parser = clap::value_parser!(u32).range(16..))]
    pub search_keys: u32,
    /// Chunking suite: how long an adaptive chunk should take, in ms.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub chunk_ms: u64,
}

/// Parses `WIDTHxHEIGHT`, each side 1 to the Mandelbrot kernel's largest.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    use crate::kernels::mandelbrot::MAX_SIDE;
    let bad = || {
        format!(
            "{text:?}: give the size as WIDTHxHEIGHT, each side 1 to {MAX_SIDE}, such as 1920x1080"
        )
    };
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |s: &str| {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_SIDE).contains(n))
            .ok_or_else(bad)
    };
    Ok((side(w)?, side(h)?))
}

/// Parses `--int-peak-gops`: a positive, finite rate.
fn parse_gops(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|g| g.is_finite() && *g > 0.0)
        .ok_or_else(|| {
            format!("{text:?}: give the ceiling in Gop/s, a positive number such as 67700")
        })
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
    pub kernels: kernels::KernelsResults,
    pub chunking: chunking::ChunkingResults,
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
        kernels: kernels::KernelsResults::default(),
        chunking: chunking::ChunkingResults::default(),
    };
    // The output folder is made first: one that cannot be is an error before the suites
    // run, not after.
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out {}: cannot create the output folder", dir.display()))?;
    }
    if args.suite.contains(&Suite::Backends) {
        backends::refuse_missing_alone(&args)?;
    }
    let progress = Progress::new(&args, repeat);
    for suite in &args.suite {
        match suite {
            Suite::Scaling => {
                results.scaling = scaling::scaling(&args, repeat, &progress, shutdown)?
            }
            Suite::Throughput => {
                results.throughput = throughput::throughput(&args, repeat, &progress, shutdown)?
            }
            Suite::Backends => {
                results.backends = backends::backends(&args, repeat, &progress, shutdown)?
            }
            Suite::Device => results.device = device::device(&args, repeat, &progress, shutdown)?,
            Suite::Dispatch => {
                results.dispatch = dispatch::dispatch(&args, repeat, &progress, shutdown)?
            }
            Suite::Latency => {
                results.latency = latency::latency(&args, repeat, &progress, shutdown)?
            }
            Suite::Faults => {
                results.faults = faults::faults(args.quick, repeat, &progress, shutdown)?
            }
            Suite::Simulate => results.simulate = simulate::suite(args.quick, &progress, shutdown)?,
            Suite::Kernels => {
                results.kernels = kernels::kernels(&args, repeat, &progress, shutdown)?
            }
            Suite::Chunking => {
                results.chunking = chunking::chunking(&args, repeat, &progress, shutdown)?
            }
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
        let farm: Vec<&chunking::ChunkRow> = results
            .chunking
            .farms
            .iter()
            .filter(|r| r.farm == "sleep 1/2/4/8" && !r.busy_ms.is_empty())
            .collect();
        if !farm.is_empty() {
            let title = format!("busy time per worker, sleep 1/2/4/8: {when}");
            plot::chunking(&farm, &title, &dir.join("chunking.svg"))?;
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
                Suite::Throughput => 4 * r,
                Suite::Backends => args.backends.len() as u64 * r,
                Suite::Dispatch => 6 * r,
                Suite::Latency => 3 * r,
                Suite::Faults => 4 * r,
                Suite::Simulate => 6,
                Suite::Device => 1,
                Suite::Kernels => 12 * r,
                Suite::Chunking => 9 * r + 3 + u64::from(repeat.max(5)),
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

/// What a benchmark run adds to a plain one.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The live view on, scraped every 100 ms.
    pub http_scrape: bool,
    /// Write the run's timeline here.
    pub timeline: Option<std::path::PathBuf>,
}

/// Runs one batch of `job` in-process with `extras` and returns the sink's report.
pub fn run_with(
    batch: Batch,
    order: Order,
    job: Job,
    backends: Vec<Box<dyn Backend>>,
    extras: &Extras,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    let ventilator = VentilatorConfig {
        order,
        http: extras.http_scrape.then(|| "127.0.0.1:0".to_owned()),
        ..VentilatorConfig::local(batch, job)
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = extras.http_scrape.then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let Ok(address) = rx.recv() else {
                return;
            };
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(1)))
                .build()
                .into();
            // A Prometheus scraper every 100 ms, and the page open (it reads the status
            // twice a second).
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = agent.get(&format!("http://{address}/metrics")).call();
                if round % 5 == 0 {
                    let _ = agent.get(&format!("http://{address}/api/status")).call();
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let report = local::run(
        LocalRun {
            sink: SinkConfig {
                trace: extras.timeline.clone(),
                ..SinkConfig::default()
            },
            http_endpoint: extras.http_scrape.then_some(tx),
            ..LocalRun::new(ventilator, backends)
        },
        shutdown,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(scraper) = scraper {
        let _ = scraper.join();
    }
    report
}

/// The spin job and backend options the compute suites share.
fn compute_setup(args: &BenchArgs) -> (Job, crate::backend::BackendOptions) {
    let job = Job {
        kernel: 0,
        units_per_ms: args.units_per_ms,
        verify_percent: 0,
        ..Job::default()
    };
    let options = crate::backend::BackendOptions {
        slowdown: 1.0,
        ..Default::default()
    };
    (job, options)
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

/// The results as Markdown tables, one per suite that ran, all through one renderer
/// (`bench/table.rs`).
pub fn markdown(r: &BenchResults) -> String {
    let m = &r.machine;
    let mut s = format!(
        "Measured {} on {} ({} cores, {}), libzmq {}; `{}`; median of {} (min–max).\n\n",
        m.date, m.host, m.cores, m.cpu, m.libzmq, r.command, r.repeat
    );
    let tables = [
        (!r.scaling.is_empty()).then(|| scaling::table(&r.scaling)),
        (!r.backends.is_empty()).then(|| backends::table(&r.backends)),
        (!r.device.is_empty()).then(|| device::table(&r.device)),
        (!r.dispatch.is_empty()).then(|| dispatch::table(&r.dispatch)),
        (!r.latency.is_empty()).then(|| latency::table(&r.latency)),
        (!r.throughput.is_empty()).then(|| throughput::table(&r.throughput)),
        (!r.faults.is_empty()).then(|| faults::table(&r.faults)),
        (!r.simulate.is_empty()).then(|| simulate::table(&r.simulate)),
    ];
    for t in tables.into_iter().flatten() {
        s += &t.markdown();
    }
    if !r.kernels.compute.is_empty() || !r.kernels.payload.is_empty() {
        for t in kernels::tables(&r.kernels) {
            s += &t.markdown();
        }
    }
    if !r.chunking.farms.is_empty() {
        for t in chunking::tables(&r.chunking) {
            s += &t.markdown();
        }
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
