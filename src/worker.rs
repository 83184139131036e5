//! The worker: takes tasks from the ventilator, runs them on a backend, sends results to
//! the sink and credit back to the ventilator.
//!
//! Sockets: `tasks`, a DEALER connected to the ventilator's ROUTER (`tcp://localhost:5557`),
//! and `results`, a DEALER connected to the sink's ROUTER (`tcp://localhost:5558`), both
//! with the worker's name and a per-run session as routing id. A worker first greets the
//! sink (`join`) and asks the ventilator for tasks only once the sink has welcomed it, so a
//! worker with a wrong `--sink` never takes tasks it cannot deliver; if the sink falls
//! silent it says goodbye to the ventilator until the sink answers again. A refusal from
//! either peer (name taken, endpoints swapped) ends the worker with the reason. An executor
//! thread owns the backend and runs tasks while this thread keeps talking (heartbeats, new
//! tasks); it wakes this thread over an inproc PAIR when outcomes are ready. The worker
//! does not know which backend it drives.

use crate::backend::{Backend, Outcome};
use crate::batch::{Job, Task};
use crate::heartbeat::Heartbeat;
use crate::logging::RateLimited;
use crate::protocol::{Done, Message, Status, TaskResult, WorkerInfo, MAX_ITEMS_PER_MESSAGE};
use crate::shutdown::Shutdown;
use crate::sockets;
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
    /// Say at default verbosity when connected and ready (off for the many workers of
    /// one `conquer run`, where the run speaks for them).
    pub announce: bool,
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

/// An outcome to forward, with its batch and when it was known (worker's wall clock).
struct Finished {
    batch: u64,
    outcome: Outcome,
    finished_unix_ms: u64,
}

type Outcomes = Vec<Finished>;

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The routing id a worker uses on both sockets: its name (cut to fit ZeroMQ's 255-byte
/// limit) and its session, so two workers that share a name never take over each other's
/// connection while a reconnect of the same worker takes its own back.
fn routing_id(name: &str, session: u64) -> Vec<u8> {
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}/{session:016x}", &name[..end]).into_bytes()
}

static INPROC_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs a worker until told to leave, Ctrl-C, or `shutdown`.
pub fn run(
    ctx: &zmq::Context,
    config: WorkerConfig,
    backend: Box<dyn Backend>,
    shutdown: &Shutdown,
) -> anyhow::Result<WorkerSummary> {
    Worker::connect(ctx, config, backend)?.serve(shutdown)
}

/// A worker with its sockets connected and its executor thread started, not yet talking.
/// Everything that can fail at start (sockets, file descriptors, threads) fails here, so a
/// one-process run can start every worker before any of them works.
pub struct Worker {
    config: WorkerConfig,
    io: Io,
    wake: zmq::Socket,
    chunk_tx: mpsc::Sender<Chunk>,
    outcome_rx: mpsc::Receiver<Outcomes>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    executor: std::thread::JoinHandle<()>,
}

impl Worker {
    /// Connects the sockets and starts the executor thread.
    pub fn connect(
        ctx: &zmq::Context,
        config: WorkerConfig,
        backend: Box<dyn Backend>,
    ) -> anyhow::Result<Worker> {
        crate::heartbeat::check_name(&config.name)
            .map_err(|why| anyhow::anyhow!("--name: {why}"))?;
        let info = WorkerInfo {
            name: config.name.clone(),
            session: rand::random(),
            backend: backend.kind().to_owned(),
            adapter: backend.adapter(),
            window_hint: backend.window_hint(),
        };
        let id = routing_id(&info.name, info.session);
        let tasks = sockets::connect(
            ctx,
            zmq::DEALER,
            "tasks",
            &config.ventilator,
            "--ventilator",
            Some(&id),
        )?;
        let results = sockets::connect(
            ctx,
            zmq::DEALER,
            "results",
            &config.sink,
            "--sink",
            Some(&id),
        )?;
        // Goodbyes and credit for a ventilator that is gone need not hold up the exit.
        tasks.set_linger(200)?;

        let wake_endpoint = format!(
            "inproc://conquer-worker-{}",
            INPROC_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let wake = ctx.socket(zmq::PAIR).context("creating the wake socket")?;
        wake.set_linger(0)?;
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
            let thread_name = format!("{}-exec", config.name);
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
        log::debug!(
            "worker {} ({}{}) connecting to the sink at {}, then the ventilator at {}",
            crate::logging::printable(&info.name),
            info.backend,
            if info.adapter.is_empty() {
                String::new()
            } else {
                format!(" on {}", info.adapter)
            },
            config.sink,
            config.ventilator
        );
        Ok(Worker {
            io: Io {
                info,
                tasks,
                results,
                summary: WorkerSummary::default(),
                reject_log: RateLimited::new(5, Duration::from_secs(1)),
                warned_unverifiable: false,
            },
            config,
            wake,
            chunk_tx,
            outcome_rx,
            stop,
            failure,
            executor,
        })
    }

    /// Serves batches until told to leave, Ctrl-C, or `shutdown`.
    pub fn serve(self, shutdown: &Shutdown) -> anyhow::Result<WorkerSummary> {
        let Worker {
            config,
            mut io,
            wake,
            chunk_tx,
            outcome_rx,
            stop,
            failure,
            executor,
        } = self;
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
}

struct Io {
    info: WorkerInfo,
    tasks: zmq::Socket,
    results: zmq::Socket,
    summary: WorkerSummary,
    reject_log: RateLimited,
    /// Said once: the batch asks for verification this backend cannot give.
    warned_unverifiable: bool,
}

/// Where a worker stands with its sink, which decides whether it may ask for tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkLink {
    /// Greeting the sink; no tasks asked for yet.
    Joining,
    /// The sink answers: greet the ventilator and take tasks.
    Welcomed,
    /// The sink stopped answering: the ventilator was told goodbye until it is back.
    Lost,
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
        let join = Message::Join(self.info.clone()).encode();
        let interval = config.heartbeat.interval;
        let timeout = config.heartbeat.timeout();
        let mut next_beat = Instant::now();
        let started = Instant::now();
        let mut link = SinkLink::Joining;
        let mut last_from_sink = Instant::now();
        let mut said_sink_wait = false;
        let mut last_from_ventilator = Instant::now();
        let mut hello_since: Option<Instant> = None;
        let mut heard_ventilator = false;
        let mut warned_silence = false;
        loop {
            shutdown.check()?;
            let now = Instant::now();
            if now >= next_beat {
                next_beat = now + interval;
                // The greetings double as heartbeats, so a restarted peer learns of us.
                let _ = self.results.send(join.as_slice(), zmq::DONTWAIT);
                // Whatever the sink said meanwhile counts before its silence is judged.
                if self.drain_sink(config, &hello, &mut link, &mut last_from_sink)? {
                    said_sink_wait = false;
                    hello_since.get_or_insert_with(Instant::now);
                }
                match link {
                    SinkLink::Welcomed => {
                        let _ = self.tasks.send(hello.as_slice(), zmq::DONTWAIT);
                        if last_from_sink.elapsed() > timeout * SINK_LOSS_TIMEOUTS {
                            log::warn!(
                                "the sink at {} has not answered for {:.1} s; not taking tasks until it does \
                                 (the ventilator hands this worker's tasks to others)",
                                config.sink,
                                last_from_sink.elapsed().as_secs_f64()
                            );
                            let _ = self.tasks.send(Message::Bye.encode(), zmq::DONTWAIT);
                            link = SinkLink::Lost;
                        }
                    }
                    SinkLink::Joining | SinkLink::Lost => {
                        if !said_sink_wait && started.elapsed() > timeout {
                            log::warn!(
                                "waiting for the sink at {} to answer (is `conquer sink` running there? \
                                 check --sink); no tasks are taken until it does",
                                config.sink
                            );
                            said_sink_wait = true;
                        }
                    }
                }
                if let Some(since) = hello_since {
                    let silent = last_from_ventilator.elapsed().min(since.elapsed());
                    if silent > timeout && !warned_silence {
                        log::info!(
                            "waiting for the ventilator at {} (no word for {:.1} s; still trying)",
                            config.ventilator,
                            silent.as_secs_f64()
                        );
                        warned_silence = true;
                    }
                }
            }
            let wait = next_beat
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let mut items = [
                self.tasks.as_poll_item(zmq::POLLIN),
                wake.as_poll_item(zmq::POLLIN),
                self.results.as_poll_item(zmq::POLLIN),
            ];
            sockets::poll(&mut items, wait.as_millis() as i64, "the worker's sockets")?;
            let (tasks_ready, wake_ready, sink_ready) = (
                items[0].is_readable(),
                items[1].is_readable(),
                items[2].is_readable(),
            );
            if wake_ready {
                while wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
                self.forward(outcome_rx)?;
                if let Some(reason) = failure.lock().ok().and_then(|f| f.clone()) {
                    bail!("{reason}; this worker leaves so its tasks go to other workers");
                }
            }
            if sink_ready && self.drain_sink(config, &hello, &mut link, &mut last_from_sink)? {
                said_sink_wait = false;
                hello_since.get_or_insert_with(Instant::now);
            }
            if !tasks_ready {
                continue;
            }
            while let Some(frames) =
                sockets::recv_multipart_nowait(&self.tasks, "the tasks socket")?
            {
                last_from_ventilator = Instant::now();
                if warned_silence {
                    log::info!("the ventilator at {} is back", config.ventilator);
                    warned_silence = false;
                }
                let decoded = decode_single(frames);
                if !heard_ventilator && decoded.is_ok() {
                    heard_ventilator = true;
                    let line = format!(
                        "worker {} ready ({}{}): connected to the ventilator at {} and the sink at {}",
                        crate::logging::printable(&self.info.name),
                        self.info.backend,
                        if self.info.adapter.is_empty() {
                            String::new()
                        } else {
                            format!(" on {}", self.info.adapter)
                        },
                        config.ventilator,
                        config.sink
                    );
                    if config.announce {
                        log::info!("{line}");
                    } else {
                        log::debug!("{line}");
                    }
                }
                match decoded {
                    Ok(Message::Tasks { batch, job, tasks }) => {
                        if job.verify_percent > 0
                            && self.info.backend == "sleep"
                            && !self.warned_unverifiable
                        {
                            log::warn!(
                                "batch {batch:016x} asks for verification, but this worker's sleep backend \
                                 computes nothing to check; its results count as unchecked"
                            );
                            self.warned_unverifiable = true;
                        }
                        if chunk_tx.send(Chunk { batch, job, tasks }).is_err() {
                            bail!("the executor thread stopped unexpectedly");
                        }
                    }
                    Ok(Message::Heartbeat { .. }) => {}
                    Ok(Message::End { batch, shutdown }) => {
                        self.summary.batches += 1;
                        if shutdown || config.exit_when_done {
                            log::debug!("batch {batch:016x} complete; leaving as asked");
                            return Ok(());
                        }
                        log::info!("batch {batch:016x} complete; waiting for the next");
                    }
                    Ok(Message::Refused { reason, .. }) => {
                        bail!(
                            "the ventilator at {} refused this worker: {reason}",
                            config.ventilator
                        )
                    }
                    Ok(other) => self.reject(format!("unexpected {} message", other.kind_name())),
                    Err(why) => self.reject(why),
                }
            }
        }
    }

    /// Everything the sink sent that is waiting. Returns whether it welcomed this worker anew.
    fn drain_sink(
        &mut self,
        config: &WorkerConfig,
        hello: &[u8],
        link: &mut SinkLink,
        last_from_sink: &mut Instant,
    ) -> anyhow::Result<bool> {
        let mut welcomed = false;
        while let Some(frames) =
            sockets::recv_multipart_nowait(&self.results, "the results socket")?
        {
            welcomed |= self.heard_from_sink(frames, config, hello, link, last_from_sink)?;
        }
        Ok(welcomed)
    }

    /// One message from the sink. Returns whether it welcomed this worker anew.
    fn heard_from_sink(
        &mut self,
        frames: Vec<Vec<u8>>,
        config: &WorkerConfig,
        hello: &[u8],
        link: &mut SinkLink,
        last_from_sink: &mut Instant,
    ) -> anyhow::Result<bool> {
        match decode_single(frames) {
            Ok(Message::Welcome) => {
                *last_from_sink = Instant::now();
                if *link == SinkLink::Welcomed {
                    return Ok(false);
                }
                if *link == SinkLink::Lost {
                    log::warn!("the sink at {} answers again; taking tasks", config.sink);
                } else {
                    log::debug!("the sink at {} welcomed this worker", config.sink);
                }
                *link = SinkLink::Welcomed;
                let _ = self.tasks.send(hello, zmq::DONTWAIT);
                Ok(true)
            }
            Ok(Message::Refused { reason, .. }) => {
                bail!("the sink at {} refused this worker: {reason}", config.sink)
            }
            Ok(other) => {
                self.reject(format!(
                    "unexpected {} message from the sink",
                    other.kind_name()
                ));
                Ok(false)
            }
            Err(why) => {
                self.reject(format!("from the sink: {why}"));
                Ok(false)
            }
        }
    }

    fn reject(&mut self, why: String) {
        self.summary.rejected += 1;
        self.reject_log
            .warn(|| format!("dropped a message from a peer: {why}"));
    }

    /// Sends ready outcomes: results to the sink first, then credit to the ventilator.
    fn forward(&mut self, outcome_rx: &mpsc::Receiver<Outcomes>) -> anyhow::Result<()> {
        let mut by_batch: BTreeMap<u64, Vec<Finished>> = BTreeMap::new();
        while let Ok(outcomes) = outcome_rx.try_recv() {
            for finished in outcomes {
                by_batch.entry(finished.batch).or_default().push(finished);
            }
        }
        for (batch, outcomes) in by_batch {
            for chunk in outcomes.chunks(MAX_ITEMS_PER_MESSAGE) {
                let results: Vec<TaskResult> = chunk
                    .iter()
                    .filter(|f| f.outcome.status != Status::Failed)
                    .map(|f| {
                        let o = &f.outcome;
                        TaskResult {
                            id: o.task.id,
                            workload_ms: o.task.workload_ms,
                            status: o.status,
                            wall_us: o.wall_us,
                            kernel_us: o.kernel_us,
                            checksum: o.checksum,
                            started_unix_ms: f
                                .finished_unix_ms
                                .saturating_sub(u64::from(o.wall_us) / 1000),
                            finished_unix_ms: f.finished_unix_ms,
                        }
                    })
                    .collect();
                for r in &results {
                    log::trace!(
                        target: crate::logging::TASK_TARGET,
                        "task {} of batch {batch:016x}: {} in {} µs",
                        r.id,
                        r.status.as_str(),
                        r.wall_us
                    );
                }
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
                    .map(|f| Done {
                        id: f.outcome.task.id,
                        status: f.outcome.status,
                        wall_us: f.outcome.wall_us,
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

/// The one frame of a message from a DEALER's peer, decoded.
fn decode_single(frames: Vec<Vec<u8>>) -> Result<Message, String> {
    match <[Vec<u8>; 1]>::try_from(frames) {
        Ok([frame]) => Message::decode(&frame).map_err(|e| e.to_string()),
        Err(frames) => Err(format!("{} frames, expected 1", frames.len())),
    }
}

/// Longest a finished outcome waits in the executor for company before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// Test hook: set to `panic` to make the task thread panic on its first task, as a broken
/// backend would.
const FAULT_VAR: &str = "CONQUER_TEST_FAULT";

fn fault_injected() -> bool {
    std::env::var(FAULT_VAR).is_ok_and(|v| v == "panic")
}

/// Heartbeat timeouts without a word from the sink after which a worker stops taking
/// tasks: generous, since a sink working through a backlog answers late.
const SINK_LOSS_TIMEOUTS: u32 = 2;
/// A task this long (µs) is sent on at once: its credit matters more than company.
const FLUSH_AT_US: u32 = 200;
/// Outcomes between two looks at the clock for FLUSH_AFTER.
const FLUSH_CHECK_EVERY: usize = 16;
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
    let wake = match ctx.socket(zmq::PAIR).and_then(|s| {
        s.set_linger(0)?;
        s.connect(wake_endpoint).map(|()| s)
    }) {
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
    // The wall-clock time shared by the short outcomes of one flush.
    let mut stamp: Option<u64> = None;
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
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if fault_injected() {
                panic!("injected fault ({FAULT_VAR}=panic)");
            }
            backend.run(&job, &mut next, &mut |outcome| {
                // The wall clock is read once per flush for short tasks, which go out within
                // FLUSH_AFTER: a clock read per zero-work task is a tenth of its cost.
                let finished_unix_ms = match stamp {
                    Some(ms) if outcome.wall_us < FLUSH_AT_US => ms,
                    _ => *stamp.insert(unix_ms()),
                };
                buffer.push(Finished {
                    batch,
                    outcome,
                    finished_unix_ms,
                });
                // The clock is read every few outcomes only: for zero-work tasks a read per
                // task costs as much as the task.
                if outcome.wall_us >= FLUSH_AT_US
                    || buffer.len() >= FLUSH_COUNT
                    || (buffer.len() % FLUSH_CHECK_EVERY == 0
                        && last_flush.elapsed() >= FLUSH_AFTER)
                {
                    flush(&mut buffer, &mut last_flush);
                    stamp = None;
                }
            })
        }));
        flush(&mut buffer, &mut last_flush);
        // The next run starts with a fresh clock reading, not this one's.
        stamp = None;
        // A panic in the task thread or a backend that can run nothing more takes the whole
        // worker out (goodbye, non-zero exit): never a zombie that heartbeats on its tasks.
        let broken = match ran {
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                Some(format!("the task thread panicked: {what}"))
            }
            Ok(()) => backend.healthy().err(),
        };
        if let Some(reason) = broken {
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
