//! `--suite throughput`: zero-work tasks per second through the pipeline, next to the
//! plain libzmq PUSH/PULL pipeline on the same machine.

use super::table::Table;
use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    pub pipeline: String,
    pub workers: u32,
    pub tasks: u32,
    pub tasks_per_s: Spread,
    /// Against the run without a secret in the same repetition (the runs alternate, so a
    /// slow spell of the machine hits both): only on the run with one.
    pub paired_ratio: Option<Spread>,
}

pub(super) fn throughput(
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
    let secret = BenchSecret::new()?;
    let mut ours = Vec::new();
    let mut guarded = Vec::new();
    let mut watched = Vec::new();
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
        let ventilator = VentilatorConfig {
            order: Order::Given,
            ..VentilatorConfig::local(batch.clone(), Job::default())
        };
        let report = local::run(
            LocalRun {
                access: secret.access.clone(),
                ..LocalRun::new(ventilator, sleep_backends(workers))
            },
            shutdown,
        )
        .context("throughput run with a secret")?;
        guarded.push(report.tasks_per_s);
        progress.done();
        let extras = Extras {
            http_scrape: true,
            ..Extras::default()
        };
        let report = run_with(
            batch.clone(),
            Order::Given,
            Job::default(),
            sleep_backends(workers),
            &extras,
            shutdown,
        )
        .context("throughput run with --http")?;
        watched.push(report.tasks_per_s);
        progress.done();
        let elapsed = super::plain::Plain {
            payload: 0,
            tasks,
            workers,
            unbounded: true,
        }
        .run()
        .context("plain PUSH/PULL run")?;
        plain.push(f64::from(tasks) / elapsed.as_secs_f64());
        progress.done();
    }
    let ratios: Vec<f64> = guarded.iter().zip(&ours).map(|(g, o)| g / o).collect();
    let watched_ratios: Vec<f64> = watched.iter().zip(&ours).map(|(w, o)| w / o).collect();
    Ok(vec![
        ThroughputRow {
            pipeline: "conquer (credit, full protocol)".into(),
            workers,
            tasks,
            tasks_per_s: Spread::of(&ours),
            paired_ratio: None,
        },
        ThroughputRow {
            pipeline: "conquer with --secret-file (PLAIN, ZAP)".into(),
            workers,
            tasks,
            tasks_per_s: Spread::of(&guarded),
            paired_ratio: Some(Spread::of(&ratios)),
        },
        ThroughputRow {
            pipeline: "conquer with --http: /metrics every 100 ms, the page open".into(),
            workers,
            tasks,
            tasks_per_s: Spread::of(&watched),
            paired_ratio: Some(Spread::of(&watched_ratios)),
        },
        ThroughputRow {
            pipeline: "plain libzmq PUSH/PULL".into(),
            workers,
            tasks,
            tasks_per_s: Spread::of(&plain),
            paired_ratio: None,
        },
    ])
}

/// A secret made for one benchmark run in a private temporary folder, removed after.
struct BenchSecret {
    access: crate::auth::Access,
    dir: std::path::PathBuf,
}

impl BenchSecret {
    fn new() -> anyhow::Result<BenchSecret> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "conquer-bench-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Removed on drop from here on, whatever fails next.
        let mut made = BenchSecret {
            access: crate::auth::Access::default(),
            dir,
        };
        let path = made.dir.join("secret");
        crate::auth::Secret::create(&path, false)?;
        made.access.secret = Some(crate::auth::Secret::load(&path)?);
        Ok(made)
    }
}

impl Drop for BenchSecret {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn table(rows: &[ThroughputRow]) -> Table {
    let mut t = Table::new(
        "Throughput: zero-work tasks on loopback",
        &[
            "pipeline",
            "workers>",
            "tasks>",
            "tasks/s>",
            "÷ plain conquer, same repetition>",
        ],
    );
    for row in rows {
        t.row(vec![
            row.pipeline.clone(),
            row.workers.to_string(),
            row.tasks.to_string(),
            row.tasks_per_s.cell(0),
            row.paired_ratio
                .as_ref()
                .map_or_else(String::new, |r| r.cell(3)),
        ]);
    }
    t
}
