//! `conquer bench --suite faults`: what a misbehaving peer costs a batch, with the defences
//! on and (where they can be turned off) off. A straggler that heartbeats (one sleep worker
//! a thousand times slower among four, which holds its first task past any bound), with backup tasks and without; and a flood of
//! fake workers that greet the ventilator and vanish during a zero-work batch, against the
//! same batch without them.

use super::table::Table;
use super::{Progress, Spread};
use crate::backend::{sleep::Sleep, Backend};
use crate::batch::{Batch, Job, Order};
use crate::local::{self, LocalRun};
use crate::protocol::{Message, WorkerInfo};
use crate::shutdown::Shutdown;
use crate::ventilator::{Backup, VentilatorConfig};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    pub scenario: String,
    pub defence: String,
    pub tasks: u32,
    /// The best the healthy workers can do: what the result is measured against.
    pub ideal_ms: f64,
    pub elapsed_ms: Spread,
    /// elapsed / ideal.
    pub ratio: Spread,
    pub redispatched: Spread,
}

/// How much slower the straggler is.
const STRAGGLER_SLOWDOWN: f64 = 1000.0;
/// Fake workers in the flood, and how long each stays before it vanishes.
const FAKES: usize = 3000;
const FAKE_STAY: Duration = Duration::from_millis(100);
/// Sockets per ZeroMQ context (the limit is 1023).
const FAKES_PER_CONTEXT: usize = 900;

pub fn faults(
    quick: bool,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<FaultRow>> {
    let mut rows = Vec::new();
    // A straggler: 4 sleep workers, one 1000 times slower; the ideal is the batch on the
    // three healthy ones.
    let (tasks, max_ms) = if quick { (40, 10) } else { (400, 25) };
    let batch = Batch::generate(tasks, 5, max_ms, 1)?;
    let ideal = crate::batch::ideal_ms(batch.expected_ms(), batch.longest_ms(), 3);
    let defences = [
        (
            "backup tasks (default: 4x its measured speed + 2 s)",
            Backup::default(),
        ),
        (
            "none (--backup-factor 1000 --backup-slack-ms 86400000)",
            Backup {
                factor: 1000.0,
                slack: Duration::from_secs(86_400),
            },
        ),
    ];
    for (defence, backup) in defences {
        let mut elapsed = Vec::new();
        let mut redispatched = Vec::new();
        for r in 0..repeat {
            progress.step(format!(
                "faults: a straggler, {defence} ({}/{repeat})",
                r + 1
            ));
            let backends: Vec<Box<dyn Backend>> = [1.0, 1.0, 1.0, STRAGGLER_SLOWDOWN]
                .into_iter()
                .map(|s| Box::new(Sleep::new(s)) as Box<dyn Backend>)
                .collect();
            let ventilator = VentilatorConfig {
                backup,
                ..VentilatorConfig::local(batch.clone(), Job::default())
            };
            let report = local::run(LocalRun::new(ventilator, backends), shutdown)?;
            elapsed.push(report.elapsed_ms);
            redispatched.push(report.redispatched as f64);
            progress.done();
        }
        rows.push(FaultRow {
            scenario: "one worker of 4 is 1000x slower and heartbeats".into(),
            defence: defence.into(),
            tasks,
            ideal_ms: ideal,
            ratio: Spread::of(&elapsed.iter().map(|e| e / ideal).collect::<Vec<_>>()),
            elapsed_ms: Spread::of(&elapsed),
            redispatched: Spread::of(&redispatched),
        });
    }

    // A flood of fake workers during a zero-work batch.
    let tasks = if quick { 100_000 } else { 2_000_000 };
    let fakes = if quick { 300 } else { FAKES };
    let batch = Batch {
        tasks: (0..tasks)
            .map(|id| crate::batch::Task {
                id,
                workload_ms: 0,
                ..Default::default()
            })
            .collect(),
    };
    let mut baseline = Vec::new();
    for (label, flood) in [("none", 0), ("fake workers join and vanish", fakes)] {
        let mut elapsed = Vec::new();
        let mut redispatched = Vec::new();
        for r in 0..repeat {
            progress.step(format!("faults: {flood} fake workers ({}/{repeat})", r + 1));
            let (tx, rx) = std::sync::mpsc::channel();
            let ventilator = VentilatorConfig {
                order: Order::Given,
                ..VentilatorConfig::local(batch.clone(), Job::default())
            };
            let backends: Vec<Box<dyn Backend>> = (0..2)
                .map(|_| Box::new(Sleep::new(1.0)) as Box<dyn Backend>)
                .collect();
            let run = LocalRun {
                tasks_endpoint: Some(tx),
                ..LocalRun::new(ventilator, backends)
            };
            let flooder = std::thread::Builder::new().name("flood".into()).spawn(
                move || -> anyhow::Result<()> {
                    let Ok(endpoint) = rx.recv() else {
                        return Ok(());
                    };
                    flood_with_fakes(&endpoint, flood)
                },
            )?;
            let started = Instant::now();
            let report = local::run(run, shutdown)?;
            let _ = started;
            flooder
                .join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
            elapsed.push(report.elapsed_ms);
            redispatched.push(report.redispatched as f64);
            progress.done();
        }
        let spread = Spread::of(&elapsed);
        if flood == 0 {
            baseline = elapsed.clone();
        }
        let base = Spread::of(&baseline).median;
        rows.push(FaultRow {
            scenario: format!("{flood} fake workers greet the ventilator during a zero-work batch"),
            defence: if flood == 0 {
                "(the same batch without them)".into()
            } else {
                format!("{label}; losing one costs what it held")
            },
            tasks,
            ideal_ms: base,
            ratio: Spread::of(&elapsed.iter().map(|e| e / base).collect::<Vec<_>>()),
            elapsed_ms: spread,
            redispatched: Spread::of(&redispatched),
        });
    }
    Ok(rows)
}

/// `count` DEALERs that greet the ventilator as workers, stay a moment, and close.
fn flood_with_fakes(endpoint: &str, count: usize) -> anyhow::Result<()> {
    let mut contexts = Vec::new();
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        if i % FAKES_PER_CONTEXT == 0 {
            contexts.push(zmq::Context::new());
        }
        let ctx = contexts
            .last()
            .ok_or_else(|| anyhow::anyhow!("no context"))?;
        let socket = ctx.socket(zmq::DEALER)?;
        socket.set_linger(0)?;
        socket.set_identity(format!("fake-{i}").as_bytes())?;
        socket.connect(endpoint)?;
        let info = WorkerInfo {
            name: format!("fake-{i}"),
            session: i as u64,
            backend: "sleep".into(),
            adapter: String::new(),
            window_hint: 1,
            codecs: 0,
            fill: 0,
        };
        socket.send(Message::Hello(info).encode(), zmq::DONTWAIT)?;
        sockets.push(socket);
    }
    std::thread::sleep(FAKE_STAY);
    drop(sockets);
    Ok(())
}

pub(super) fn table(rows: &[FaultRow]) -> Table {
    let mut t = Table::new(
        "Faults: misbehaving peers",
        &[
            "scenario",
            "defence",
            "tasks>",
            "measured against ms>",
            "elapsed ms>",
            "ratio>",
            "redispatched>",
        ],
    );
    for row in rows {
        t.row(vec![
            row.scenario.clone(),
            row.defence.clone(),
            row.tasks.to_string(),
            format!("{:.0}", row.ideal_ms),
            row.elapsed_ms.cell(0),
            row.ratio.cell(2),
            row.redispatched.cell(0),
        ]);
    }
    t
}
