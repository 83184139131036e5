//! `conquer bench`: reproducible comparisons on loopback, printed as Markdown tables (or
//! JSON). Each suite runs the real pipeline through `local`, repeated, and reports medians
//! with their min–max spread. Plain libzmq PUSH/PULL is measured in the same run as the
//! baseline for throughput. Benchmarks report numbers; they assert nothing.

use crate::backend::sleep::Sleep;
use crate::backend::Backend;
use crate::batch::{Batch, Job, Order};
use crate::local::{self, LocalRun};
use crate::report::Report;
use crate::shutdown::Shutdown;
use crate::sink::SinkConfig;
use crate::ventilator::{Heartbeat, VentilatorConfig};
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
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Suites to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Suite::Scaling, Suite::Throughput])]
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
    /// Seed of the benchmark batches.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker counts for the scaling suite.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2, 4, 8, 16])]
    pub workers: Vec<u32>,
    /// Zero-work tasks in the throughput suite.
    #[arg(long, default_value_t = 200_000)]
    pub throughput_tasks: u32,
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
}

pub fn run(args: BenchArgs, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let repeat = if args.quick { 1 } else { args.repeat };
    let mut results = BenchResults {
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        repeat,
        scaling: Vec::new(),
        throughput: Vec::new(),
    };
    for suite in &args.suite {
        match suite {
            Suite::Scaling => results.scaling = scaling(&args, repeat, shutdown)?,
            Suite::Throughput => results.throughput = throughput(&args, repeat, shutdown)?,
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
    } else {
        print!("{}", markdown(&results));
    }
    Ok(0)
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
    let heartbeat = Heartbeat::default();
    let ventilator = VentilatorConfig {
        bind: String::new(),
        sink: String::new(),
        batch,
        order,
        seed: 0,
        job: Job::default(),
        wait_workers: backends.len(),
        wait_timeout: Duration::from_secs(60),
        window: 2,
        max_window: 2048,
        heartbeat,
        shutdown_workers: true,
        batch_id: None,
        announce: false,
    };
    local::run(
        LocalRun {
            ventilator,
            sink: SinkConfig::default(),
            backends,
            heartbeat,
        },
        shutdown,
    )
}

fn scaling(args: &BenchArgs, repeat: u32, shutdown: &Shutdown) -> anyhow::Result<Vec<ScalingRow>> {
    let (tasks, max_ms) = if args.quick { (20, 10) } else { (100, 100) };
    let batch = Batch::generate(tasks, 1, max_ms, args.seed)?;
    let mut rows = Vec::new();
    for &workers in &args.workers {
        if workers == 0 {
            bail!("--workers counts must be at least 1");
        }
        let mut elapsed = Vec::new();
        let mut efficiency = Vec::new();
        let mut ideal = 0.0;
        for _ in 0..repeat {
            let report = run_batch(
                batch.clone(),
                Order::LongestFirst,
                sleep_backends(workers),
                shutdown,
            )
            .with_context(|| format!("scaling run on {workers} workers"))?;
            elapsed.push(report.elapsed_ms);
            efficiency.push(report.efficiency);
            ideal = report.ideal_ms;
        }
        log::info!("scaling: {workers} workers done");
        rows.push(ScalingRow {
            workers,
            backend: "sleep".into(),
            tasks: batch.len(),
            expected_ms: batch.expected_ms(),
            ideal_ms: ideal,
            elapsed_ms: Spread::of(&elapsed),
            efficiency: Spread::of(&efficiency),
        });
    }
    Ok(rows)
}

fn throughput(
    args: &BenchArgs,
    repeat: u32,
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
    for _ in 0..repeat {
        let report = run_batch(
            batch.clone(),
            Order::Given,
            sleep_backends(workers),
            shutdown,
        )
        .context("throughput run")?;
        ours.push(report.tasks_per_s);
        let elapsed = plain_push_pull(tasks, workers).context("plain PUSH/PULL run")?;
        plain.push(f64::from(tasks) / elapsed.as_secs_f64());
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
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_median_and_extremes() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert!(Spread::of(&[]).median.is_nan());
    }
}
