//! The worker: takes tasks from the ventilator, runs them on a backend, sends results to
//! the sink and credit back to the ventilator.
//!
//! Sockets: `tasks`, a DEALER connected to the ventilator's ROUTER (`tcp://localhost:5557`),
//! and `results`, a DEALER connected to the sink's ROUTER (`tcp://localhost:5558`), both
//! with the worker's name as routing id. An executor thread owns the backend and runs tasks
//! while this thread keeps talking (heartbeats, new tasks); it wakes this thread over an
//! inproc PAIR when outcomes are ready. The worker does not know which backend it drives.

use crate::backend::{Backend, Outcome};
use crate::batch::{Job, Task};
use crate::logging::RateLimited;
use crate::protocol::{Done, Message, Status, TaskResult, WorkerInfo, MAX_ITEMS_PER_MESSAGE};
use crate::shutdown::Shutdown;
use crate::sockets;
use crate::ventilator::Heartbeat;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything a worker needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The ventilator's tasks endpoint.
    pub ventilator: String,
    /// The sink's results endpoint.
    pub sink: String,
    /// Unique name: routing id on both sockets and the name in reports.
    pub name: String,
    /// Leave after the first batch completes.
    pub exit_when_done: bool,
    pub heartbeat: Heartbeat,
}

/// What a worker did, for tests and logs.
#[derive(Debug, Clone, Default)]
pub struct WorkerSummary {
    pub tasks: u64,
    pub batches: u64,
    pub rejected: u64,
}

/// A default worker name: host, process id and an index, unique across a cluster.
pub fn default_name(index: usize) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{index}", std::process::id())
}

/// Tasks from one message of the ventilator, as the executor receives them.
struct Chunk {
    batch: u64,
    job: Job,
    tasks: Vec<Task>,
}

/// Outcomes to forward, tagged with their batch.
type Outcomes = Vec<(u64, Outcome)>;

static INPROC_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs a worker until told to leave, Ctrl-C, or `shutdown`.
pub fn run(
    ctx: &zmq::Context,
    config: WorkerConfig,
    backend: Box<dyn Backend>,
    shutdown: &Shutdown,
) -> anyhow::Result<WorkerSummary> {
    let info = WorkerInfo {
        name: config.name.clone(),
        backend: backend.kind().to_owned(),
        adapter: backend.adapter(),
        window_hint: backend.window_hint(),
    };
    let id = config.name.as_bytes();
    let tasks = sockets::connect(
        ctx,
        zmq::DEALER,
        "tasks",
        &config.ventilator,
        "--ventilator",
        Some(id),
    )?;
    let results = sockets::connect(
        ctx,
        zmq::DEALER,
        "results",
        &config.sink,
        "--sink",
        Some(id),
    )?;
    // Goodbyes and credit for a ventilator that is gone need not hold up the exit.
    tasks.set_linger(200)?;

    let wake_endpoint = format!(
        "inproc://conquer-worker-{}",
        INPROC_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let wake = ctx.socket(zmq::PAIR).context("creating the wake socket")?;
    wake.bind(&wake_endpoint)
        .context("binding the wake socket")?;
    let (chunk_tx, chunk_rx) = mpsc::channel::<Chunk>();
    let (outcome_tx, outcome_rx) = mpsc::channel::<Outcomes>();
    let stop = Arc::new(AtomicBool::new(false));
    let failure = Arc::new(Mutex::new(None));
    let executor = {
        let ctx = ctx.clone();
        let stop = stop.clone();
        let failure = failure.clone();
        let thread_name = std::thread::current()
            .name()
            .map_or_else(|| "executor".to_owned(), |n| format!("{n}-exec"));
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                execute(
                    &ctx,
                    &wake_endpoint,
                    backend,
                    chunk_rx,
                    outcome_tx,
                    &stop,
                    &failure,
                )
            })
            .context("starting the executor thread")?
    };

    log::info!(
        "worker {} ({}{}) connecting to {} and {}",
        info.name,
        info.backend,
        if info.adapter.is_empty() {
            String::new()
        } else {
            format!(" on {}", info.adapter)
        },
        config.ventilator,
        config.sink
    );
    let mut io = Io {
        info,
        tasks,
        results,
        summary: WorkerSummary::default(),
        reject_log: RateLimited::new(5, Duration::from_secs(1)),
        in_flight: 0,
    };
    let outcome = io.serve(&config, &wake, &chunk_tx, &outcome_rx, &failure, shutdown);
    // Leaving: stop the executor after its current task and tell the ventilator, so the
    // tasks this worker held go to others at once.
    stop.store(true, Ordering::SeqCst);
    drop(chunk_tx);
    let _ = io.tasks.send(Message::Bye.encode(), zmq::DONTWAIT);
    if executor.join().is_err() {
        log::error!("the executor thread panicked");
    }
    outcome.map(|()| io.summary)
}

struct Io {
    info: WorkerInfo,
    tasks: zmq::Socket,
    results: zmq::Socket,
    summary: WorkerSummary,
    reject_log: RateLimited,
    /// Tasks handed to the executor and not yet reported.
    in_flight: usize,
}

impl Io {
    fn serve(
        &mut self,
        config: &WorkerConfig,
        wake: &zmq::Socket,
        chunk_tx: &mpsc::Sender<Chunk>,
        outcome_rx: &mpsc::Receiver<Outcomes>,
        failure: &Mutex<Option<String>>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let hello = Message::Hello(self.info.clone()).encode();
        let interval = config.heartbeat.interval;
        let mut next_hello = Instant::now();
        let mut last_from_ventilator = Instant::now();
        let mut warned_silence = false;
        loop {
            if shutdown.is_requested() {
                bail!("interrupted");
            }
            let now = Instant::now();
            if now >= next_hello {
                // The greeting doubles as heartbeat, so a restarted ventilator learns of us.
                let _ = self.tasks.send(hello.as_slice(), zmq::DONTWAIT);
                next_hello = now + interval;
                let silent = last_from_ventilator.elapsed();
                if silent > config.heartbeat.timeout() && !warned_silence {
                    log::warn!(
                        "no word from the ventilator at {} for {:.1} s; still trying",
                        config.ventilator,
                        silent.as_secs_f64()
                    );
                    warned_silence = true;
                }
            }
            let timeout = next_hello
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let mut items = [
                self.tasks.as_poll_item(zmq::POLLIN),
                wake.as_poll_item(zmq::POLLIN),
            ];
            zmq::poll(&mut items, timeout.as_millis() as i64).context("polling sockets")?;
            let (tasks_ready, wake_ready) = (items[0].is_readable(), items[1].is_readable());
            if wake_ready {
                while wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
                self.forward(outcome_rx)?;
                if let Some(reason) = failure.lock().ok().and_then(|f| f.clone()) {
                    bail!("{reason}; this worker leaves so its tasks go to other workers");
                }
            }
            if !tasks_ready {
                continue;
            }
            loop {
                let frames = match self.tasks.recv_multipart(zmq::DONTWAIT) {
                    Ok(frames) => frames,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(e).context("receiving on the tasks socket"),
                };
                last_from_ventilator = Instant::now();
                if warned_silence {
                    log::info!("the ventilator is back");
                    warned_silence = false;
                }
                let decoded = match <[Vec<u8>; 1]>::try_from(frames) {
                    Ok([frame]) => Message::decode(&frame).map_err(|e| e.to_string()),
                    Err(frames) => Err(format!("{} frames, expected 1", frames.len())),
                };
                match decoded {
                    Ok(Message::Tasks { batch, job, tasks }) => {
                        self.in_flight += tasks.len();
                        if chunk_tx.send(Chunk { batch, job, tasks }).is_err() {
                            bail!("the executor thread stopped unexpectedly");
                        }
                    }
                    Ok(Message::Heartbeat { .. }) => {}
                    Ok(Message::End { batch, shutdown }) => {
                        self.summary.batches += 1;
                        if shutdown || config.exit_when_done {
                            log::info!("batch {batch:016x} complete; leaving as asked");
                            return Ok(());
                        }
                        log::info!("batch {batch:016x} complete; waiting for the next");
                    }
                    Ok(other) => self.reject(format!("unexpected {} message", other.kind_name())),
                    Err(why) => self.reject(why),
                }
            }
        }
    }

    fn reject(&mut self, why: String) {
        self.summary.rejected += 1;
        self.reject_log
            .warn(|| format!("dropped a message from the ventilator: {why}"));
    }

    /// Sends ready outcomes: results to the sink first, then credit to the ventilator.
    fn forward(&mut self, outcome_rx: &mpsc::Receiver<Outcomes>) -> anyhow::Result<()> {
        let mut by_batch: BTreeMap<u64, Vec<Outcome>> = BTreeMap::new();
        while let Ok(outcomes) = outcome_rx.try_recv() {
            for (batch, outcome) in outcomes {
                by_batch.entry(batch).or_default().push(outcome);
            }
        }
        for (batch, outcomes) in by_batch {
            self.in_flight = self.in_flight.saturating_sub(outcomes.len());
            for chunk in outcomes.chunks(MAX_ITEMS_PER_MESSAGE) {
                let results: Vec<TaskResult> = chunk
                    .iter()
                    .filter(|o| o.status != Status::Failed)
                    .map(|o| TaskResult {
                        id: o.task.id,
                        workload_ms: o.task.workload_ms,
                        status: o.status,
                        wall_us: o.wall_us,
                        kernel_us: o.kernel_us,
                        checksum: o.checksum,
                    })
                    .collect();
                self.summary.tasks += results.len() as u64;
                if !results.is_empty() {
                    let message = Message::Results {
                        batch,
                        worker: self.info.clone(),
                        results,
                    };
                    // Blocking send: if the sink is away, ZeroMQ queues up to the HWM; beyond
                    // it we wait rather than drop a result.
                    self.results
                        .send(message.encode(), 0)
                        .context("sending results to the sink")?;
                }
                let done: Vec<Done> = chunk
                    .iter()
                    .map(|o| Done {
                        id: o.task.id,
                        status: o.status,
                        wall_us: o.wall_us,
                    })
                    .collect();
                let _ = self
                    .tasks
                    .send(Message::Done { batch, done }.encode(), zmq::DONTWAIT);
            }
        }
        Ok(())
    }
}

/// Longest a finished outcome waits in the executor for company before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// Most outcomes gathered before they are sent regardless.
const FLUSH_COUNT: usize = 1024;

/// The executor thread: feeds queued tasks to the backend and hands outcomes back in
/// groups, as soon as a task took noticeable time or nothing else is queued, so that credit
/// returns promptly for long tasks and zero-work tasks travel in bulk. If the backend
/// becomes unusable it records why and stops; the I/O thread then leaves.
fn execute(
    ctx: &zmq::Context,
    wake_endpoint: &str,
    mut backend: Box<dyn Backend>,
    chunks: mpsc::Receiver<Chunk>,
    outcome_tx: mpsc::Sender<Outcomes>,
    stop: &AtomicBool,
    failure: &Mutex<Option<String>>,
) {
    let wake = match ctx
        .socket(zmq::PAIR)
        .and_then(|s| s.connect(wake_endpoint).map(|()| s))
    {
        Ok(socket) => socket,
        Err(e) => {
            log::error!("executor cannot reach its worker: {e}");
            return;
        }
    };
    let mut buffer: Outcomes = Vec::new();
    let mut last_flush = Instant::now();
    let flush = |buffer: &mut Outcomes, last_flush: &mut Instant| {
        if !buffer.is_empty() && outcome_tx.send(std::mem::take(buffer)).is_ok() {
            // A wake already queued is as good as a new one.
            let _ = wake.send(&b""[..], zmq::DONTWAIT);
        }
        *last_flush = Instant::now();
    };
    let mut stash: Option<Chunk> = None;
    loop {
        let chunk = match stash.take() {
            Some(chunk) => chunk,
            None => match chunks.recv() {
                Ok(chunk) => chunk,
                Err(_) => return,
            },
        };
        let (batch, job) = (chunk.batch, chunk.job);
        let mut current = chunk.tasks.into_iter();
        // Tasks of the same batch and job keep flowing into one `run`, so a pipelined
        // backend never drains between messages from the ventilator.
        let mut next = || -> Option<Task> {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            loop {
                if let Some(task) = current.next() {
                    return Some(task);
                }
                match chunks.try_recv() {
                    Ok(more) if more.batch == batch && more.job == job => {
                        current = more.tasks.into_iter()
                    }
                    Ok(other) => {
                        stash = Some(other);
                        return None;
                    }
                    Err(_) => return None,
                }
            }
        };
        backend.run(&job, &mut next, &mut |outcome| {
            buffer.push((batch, outcome));
            if outcome.wall_us >= 200
                || buffer.len() >= FLUSH_COUNT
                || last_flush.elapsed() >= FLUSH_AFTER
            {
                flush(&mut buffer, &mut last_flush);
            }
        });
        flush(&mut buffer, &mut last_flush);
        if let Err(reason) = backend.healthy() {
            log::error!("{reason}");
            if let Ok(mut failure) = failure.lock() {
                *failure = Some(reason);
            }
            let _ = wake.send(&b""[..], zmq::DONTWAIT);
            return;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}
