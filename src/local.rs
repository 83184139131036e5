//! The one-process runner behind `conquer run`: a sink, a ventilator and N workers as
//! threads of this process, talking ZeroMQ over loopback TCP on ephemeral ports, exactly
//! as separate processes would. It owns no socket itself; each role binds or connects its
//! own, and a failure in any role stops the others.

use crate::backend::Backend;
use crate::report::Report;
use crate::shutdown::Shutdown;
use crate::sink::{Sink, SinkConfig};
use crate::ventilator::{Heartbeat, Ventilator, VentilatorConfig};
use crate::worker::{self, WorkerConfig};
use anyhow::{anyhow, Context};
use std::thread::JoinHandle;

/// A one-process run: the ventilator's and sink's settings (their endpoints are replaced
/// by loopback ones) and the backends of the workers, one each.
pub struct LocalRun {
    pub ventilator: VentilatorConfig,
    pub sink: SinkConfig,
    pub backends: Vec<Box<dyn Backend>>,
    pub heartbeat: Heartbeat,
    /// How long after the start each worker joins (benchmarks of late joiners); missing
    /// entries join at once. The ventilator waits for `ventilator.wait_workers` of them,
    /// or for all when that is 0.
    pub join_delays: Vec<std::time::Duration>,
}

impl LocalRun {
    /// A run of `ventilator`'s batch on one worker per backend, joining at once, with the
    /// ventilator's heartbeat and a default sink.
    pub fn new(ventilator: VentilatorConfig, backends: Vec<Box<dyn Backend>>) -> LocalRun {
        LocalRun {
            heartbeat: ventilator.heartbeat,
            ventilator,
            sink: SinkConfig::default(),
            backends,
            join_delays: Vec::new(),
        }
    }
}

/// Runs the batch and returns the sink's report.
pub fn run(mut run: LocalRun, shutdown: &Shutdown) -> anyhow::Result<Report> {
    let ctx = zmq::Context::new();
    let workers = run.backends.len();
    if workers == 0 {
        return Err(anyhow!("--workers must be at least 1"));
    }
    run.sink.bind = "tcp://127.0.0.1:*".into();
    let sink = Sink::bind(&ctx, run.sink)?;
    run.ventilator.bind = "tcp://127.0.0.1:*".into();
    run.ventilator.sink = sink.endpoint().to_owned();
    if run.ventilator.wait_workers == 0 || run.ventilator.wait_workers > workers {
        run.ventilator.wait_workers = workers;
    }
    run.ventilator.shutdown_workers = true;
    run.ventilator.announce = false;
    run.ventilator.heartbeat = run.heartbeat;
    let ventilator = Ventilator::bind(&ctx, run.ventilator)?;
    let tasks_endpoint = ventilator.endpoint().to_owned();
    let results_endpoint = sink.endpoint().to_owned();

    let sink_thread = spawn("sink", shutdown, move |s| sink.run(s))?;
    let vent_thread = spawn("ventilator", shutdown, move |s| {
        ventilator.run(s).map(|_| ())
    })?;
    let mut worker_threads = Vec::with_capacity(workers);
    for (index, backend) in run.backends.into_iter().enumerate() {
        let config = WorkerConfig {
            ventilator: tasks_endpoint.clone(),
            sink: results_endpoint.clone(),
            name: format!("worker-{}", index + 1),
            exit_when_done: true,
            heartbeat: run.heartbeat,
        };
        let ctx = ctx.clone();
        let name = config.name.clone();
        let delay = run.join_delays.get(index).copied().unwrap_or_default();
        worker_threads.push(spawn(&name, shutdown, move |s| {
            std::thread::sleep(delay); // the scenario: this worker joins late
            worker::run(&ctx, config, backend, s).map(|_| ())
        })?);
    }

    let report = join(sink_thread);
    let vent = join(vent_thread);
    // Workers leave when the ventilator ends the batch; if it failed, stop them here.
    if report.is_err() || vent.is_err() {
        shutdown.request();
    }
    let mut worker_error = None;
    for handle in worker_threads {
        if let Err(e) = join(handle) {
            worker_error.get_or_insert(e);
        }
    }
    vent?;
    let report = report?;
    if let Some(e) = worker_error {
        return Err(e);
    }
    Ok(report)
}

fn spawn<T: Send + 'static>(
    name: &str,
    shutdown: &Shutdown,
    body: impl FnOnce(&Shutdown) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>> {
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = body(&shutdown);
            if result.is_err() {
                // One role failing must not leave the others waiting for it.
                shutdown.request();
            }
            result
        })
        .with_context(|| format!("starting the {name} thread"))
}

fn join<T>(handle: JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    let name = handle.thread().name().unwrap_or("role").to_owned();
    handle
        .join()
        .map_err(|_| anyhow!("the {name} thread panicked"))?
        .with_context(|| format!("{name} failed"))
}
