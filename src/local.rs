//! The one-process runner behind `conquer run`: a sink, a ventilator and N workers as
//! threads of this process, talking ZeroMQ over loopback TCP on ephemeral ports, exactly
//! as separate processes would. It owns no socket itself; each role binds or connects its
//! own. Every worker connects before any thread starts, so one that cannot start (out of
//! file descriptors, say) fails the run at once with its error. Once running, a failing
//! worker leaves as a separate one would (the others take its tasks); a failing ventilator
//! or sink, or the loss of every worker, stops the rest.

use crate::backend::Backend;
use crate::heartbeat::Heartbeat;
use crate::logging::speaking_as;
use crate::report::Report;
use crate::shutdown::{Interrupted, Shutdown};
use crate::sink::{Sink, SinkConfig};
use crate::ventilator::{Ventilator, VentilatorConfig};
use crate::worker::{Worker, WorkerConfig};
use anyhow::{anyhow, Context};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    pub join_delays: Vec<Duration>,
    /// Told the ventilator's tasks endpoint once it is bound (benchmarks that add peers).
    pub tasks_endpoint: Option<std::sync::mpsc::Sender<String>>,
    /// Told the live view's address once it listens (`ventilator.http`), for scrapers.
    pub http_endpoint: Option<std::sync::mpsc::Sender<String>>,
    /// The secret every role presents and demands: `--secret-file`, or the one `conquer run`
    /// makes for each run. None by default here (benchmarks choose).
    pub access: crate::auth::Access,
    /// Given the sink's report as soon as the batch is complete, before the live view's
    /// `--http-linger` ends: `conquer run` prints it there rather than after the linger.
    pub on_report: Option<OnReport>,
}

/// What [`LocalRun::on_report`] does with the report (print it, say).
pub type OnReport = Box<dyn FnOnce(&mut Report) -> anyhow::Result<()> + Send>;

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
            tasks_endpoint: None,
            http_endpoint: None,
            access: crate::auth::Access::default(),
            on_report: None,
        }
    }
}

/// Runs the batch and returns the sink's report.
pub fn run(mut run: LocalRun, shutdown: &Shutdown) -> anyhow::Result<Report> {
    // A context each for the sink and the ventilator: with a secret, each runs its own
    // authentication handler, and libzmq allows one per context.
    let sink_ctx = zmq::Context::new();
    let vent_ctx = zmq::Context::new();
    let workers = run.backends.len();
    // The sink hears workers' greetings with the run's liveness.
    run.sink.heartbeat = run.heartbeat;
    if workers == 0 {
        return Err(anyhow!("--workers must be at least 1"));
    }
    make_room_for(workers)?;
    run.sink.bind = "tcp://127.0.0.1:*".into();
    run.sink.access = run.access.clone();
    // Every role of the run takes the same payloads.
    let (max_payload, compress) = (run.sink.max_payload, run.sink.compress);
    run.ventilator.max_payload = max_payload;
    run.ventilator.compress = compress;
    let results = run
        .sink
        .results
        .as_ref()
        .map(|(path, _)| path.display().to_string());
    let sink = speaking_as("sink", || Sink::bind(&sink_ctx, run.sink))?;
    if let Some(held) = sink.holds_whole_batch() {
        // `--resume` on a file that holds the whole batch: the file is the report, and no
        // ventilator or worker needs to start.
        match run.ventilator.batch_id {
            Some(batch) if batch != held => anyhow::bail!(
                "the results file {} holds all of batch {held:016x}, but this run's batch is \
                 {batch:016x}: give another --results file, or --overwrite to replace it",
                results.unwrap_or_default()
            ),
            _ => {
                let mut report = sink.run(shutdown)?;
                if let Some(on_report) = run.on_report {
                    on_report(&mut report)?;
                }
                return Ok(report);
            }
        }
    }
    run.ventilator.bind = "tcp://127.0.0.1:*".into();
    run.ventilator.sink = sink.endpoint().to_owned();
    run.ventilator.fixed_workers = workers;
    if run.ventilator.wait_workers == 0 || run.ventilator.wait_workers > workers {
        run.ventilator.wait_workers = workers;
    }
    run.ventilator.shutdown_workers = true;
    run.ventilator.announce = false;
    run.ventilator.heartbeat = run.heartbeat;
    run.ventilator.access = run.access.clone();
    let ventilator = speaking_as("ventilator", || Ventilator::bind(&vent_ctx, run.ventilator))?;
    let tasks_endpoint = ventilator.endpoint().to_owned();
    if let Some(tx) = &run.tasks_endpoint {
        let _ = tx.send(tasks_endpoint.clone());
    }
    if let (Some(tx), Some(address)) = (&run.http_endpoint, ventilator.http_address()) {
        let _ = tx.send(address.to_owned());
    }
    let results_endpoint = sink.endpoint().to_owned();

    // Every worker connects before anything runs: one that cannot start fails the run now.
    let mut connected = Vec::with_capacity(workers);
    let mut worker_ctx = zmq::Context::new();
    for (index, backend) in run.backends.into_iter().enumerate() {
        if index > 0 && index % WORKERS_PER_CONTEXT == 0 {
            worker_ctx = zmq::Context::new();
        }
        let config = WorkerConfig {
            ventilator: tasks_endpoint.clone(),
            sink: results_endpoint.clone(),
            name: format!("worker-{}", index + 1),
            exit_when_done: true,
            batch_wait: None,
            announce: false,
            heartbeat: run.heartbeat,
            access: run.access.clone(),
            max_payload,
            compress,
        };
        let name = config.name.clone();
        let worker = speaking_as(&name, || Worker::connect(&worker_ctx, config, backend))
            .with_context(|| format!("starting {name} of {workers}"))?;
        connected.push((name, worker));
    }

    let sink_thread = spawn("sink", shutdown, move |s| sink.run(s))?;
    let vent_thread = spawn("ventilator", shutdown, move |s| {
        ventilator.run(s).map(|_| ())
    })?;
    let mut worker_threads = Vec::with_capacity(workers);
    let standing = Arc::new(AtomicUsize::new(workers));
    // The workers stop with the run, and on their own once the batch is over: one the
    // ventilator's end did not reach (declared gone for a silence as the batch ended)
    // would otherwise wait for a ventilator that is gone.
    let workers_stop = shutdown.child();
    for (index, (name, worker)) in connected.into_iter().enumerate() {
        let delay = run.join_delays.get(index).copied().unwrap_or_default();
        let standing = standing.clone();
        let whole_run = shutdown.clone();
        worker_threads.push(spawn(&name, &workers_stop, move |s| {
            std::thread::sleep(delay); // the scenario: this worker joins late
            let outcome = worker.serve(s).map(|_| ());
            if let Err(e) = &outcome {
                // A stop asked for (Ctrl-C) is said once, by the run, not by each worker.
                if !is_interruption(e) {
                    log::error!("{e:#}");
                }
                // The others carry on with its tasks, as separate workers would; only when
                // none is left is the run over. A worker stopped (Ctrl-C, or the batch over
                // without its end reaching it) failed nothing: the caller's token, which
                // may run more batches after this one, is not stopped for it.
                if !is_interruption(e) && standing.fetch_sub(1, Ordering::SeqCst) == 1 {
                    whole_run.request();
                }
            }
            Ok(outcome)
        })?);
    }

    let mut report = join(sink_thread);
    if let (Ok(r), Some(on_report)) = (report.as_mut(), run.on_report) {
        // The batch is complete: said now, while the ventilator may keep the live view up.
        if let Err(e) = on_report(r) {
            report = Err(e);
        }
    }
    let vent = join(vent_thread);
    // Workers leave when the ventilator ends the batch; if it failed, stop them here.
    if report.is_err() || vent.is_err() {
        shutdown.request();
    }
    // Those still there a heartbeat timeout after the end missed it: stop them.
    let grace = Instant::now() + run.heartbeat.timeout();
    while worker_threads.iter().any(|t| !t.is_finished()) && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(10));
    }
    if worker_threads.iter().any(|t| !t.is_finished()) {
        log::debug!("stopping the workers the batch's end did not reach");
        workers_stop.request();
    }
    let mut errors = Vec::new();
    for handle in worker_threads {
        match join(handle) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => errors.push(e),
        }
    }
    let report = match (report, vent) {
        // The batch is complete: a worker that failed along the way (logged above) lost
        // nothing, since the others took its tasks.
        (Ok(report), Ok(())) => return Ok(report),
        (report, vent) => {
            errors.extend(vent.err());
            errors.extend(report.err());
            errors
        }
    };
    // One role failing stops the others, which then report being interrupted: name the
    // failure that started it, unless Ctrl-C did.
    let cause = report
        .iter()
        .position(|e| !is_interruption(e))
        .unwrap_or_default();
    Err(report
        .into_iter()
        .nth(cause)
        .unwrap_or_else(|| anyhow!("the run failed")))
}

/// Whether an error is only a role stopping because it was asked to.
fn is_interruption(e: &anyhow::Error) -> bool {
    Interrupted::is(e)
}

/// Sockets each worker of a one-process run opens: tasks, results, the two ends of its
/// wake pair, and both ends of the monitors that watch tasks and results for refusals.
const SOCKETS_PER_WORKER: usize = 8;
/// File descriptors each worker costs: a mailbox per socket, the two TCP connections on
/// both ends, and some to spare.
const FDS_PER_WORKER: u64 = 16;

/// A ZeroMQ context holds at most 1023 sockets (ZMQ_MAX_SOCKETS, which the zmq crate
/// does not let us raise); workers are spread over contexts of this many each.
const WORKERS_PER_CONTEXT: usize = 1000 / SOCKETS_PER_WORKER;

/// Raises this process's open-file limit (up to the hard limit) so that `workers` fit in
/// one process.
fn make_room_for(workers: usize) -> anyhow::Result<()> {
    let need = workers as u64 * FDS_PER_WORKER + 256;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(()); // cannot tell; the sockets say so if they run out
    }
    if limit.rlim_cur >= need {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: need.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 || raised.rlim_cur < need {
        anyhow::bail!(
            "{workers} workers in one process need about {need} open files, but this process may \
             open at most {} (ulimit -Hn); raise the limit, run fewer --workers, or run workers as \
             separate `conquer worker` processes",
            limit.rlim_max
        );
    }
    Ok(())
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
