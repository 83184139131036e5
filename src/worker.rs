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

use crate::backend::{micros, Abandon, Backend, Outcome, Work};
use crate::batch::{Job, Task};
use crate::driver;
use crate::flow::{Chunk, Finished, Flow, FlowCommand, FlowConfig, FlowEvent};
use crate::heartbeat::Heartbeat;
use crate::protocol::WorkerInfo;
use crate::shutdown::Shutdown;
use crate::sockets;
use anyhow::Context;
use conquer_core::pieces::{self, Pieces};
use std::cell::RefCell;
use std::collections::HashSet;
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
    /// With `exit_when_done`: leave if no batch is heard of within this long (it may have
    /// ended before this worker arrived); `None` waits for ever.
    pub batch_wait: Option<Duration>,
    /// Say at default verbosity when connected and ready (off for the many workers of
    /// one `conquer run`, where the run speaks for them).
    pub announce: bool,
    pub heartbeat: Heartbeat,
    /// The secret it presents to the ventilator and the sink.
    pub access: crate::auth::Access,
    /// The largest task input or output it sends or accepts (`--max-payload`).
    pub max_payload: u64,
    /// Compress task inputs or outputs it sends when that pays and the peer speaks LZ4
    /// (false with `--no-compress`, which also asks peers for raw).
    pub compress: bool,
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

/// What the executor thread tells the I/O thread.
enum Outcomes {
    Finished(Vec<Finished>),
    /// The backend cannot run this batch's job.
    Declined {
        batch: u64,
        reason: String,
    },
    /// The backend now runs on something else (`auto` turned to an adapter for a data
    /// batch): greetings and results name it from now on.
    Running {
        backend: String,
        adapter: String,
        fill: u32,
    },
}

/// Sends a results message without waiting: outputs as frames after the message's own
/// (moved to libzmq, never copied), or one frame when there are none. On `EAGAIN` nothing
/// was sent and the message is whole again, for a later try.
fn send_results(socket: &zmq::Socket, message: &mut crate::protocol::Message) -> zmq::Result<()> {
    let crate::protocol::Message::Results {
        batch,
        worker,
        results,
    } = message
    else {
        return socket.send(message.encode(), zmq::DONTWAIT);
    };
    // Outputs compressed when the worker speaks a codec (none with `--no-compress`).
    let compress = worker.codecs & crate::protocol::CODEC_LZ4 != 0;
    let Some((head, parts)) =
        crate::protocol::Message::encode_results_split(*batch, worker, results, compress)
    else {
        return socket.send(message.encode(), zmq::DONTWAIT);
    };
    if let Err(e) = socket.send(head, zmq::SNDMORE | zmq::DONTWAIT) {
        crate::protocol::Message::restore_outputs(results, parts);
        return Err(e);
    }
    // The first frame taken, the rest of the message is too (parts travel together).
    let last = parts.len() - 1;
    for (n, part) in parts.into_iter().enumerate() {
        let more = if n < last { zmq::SNDMORE } else { 0 };
        let bytes = part.output.len();
        let frame = part.into_frame();
        crate::protocol::count_sent(false, frame.len(), bytes);
        socket.send(frame, more | zmq::DONTWAIT)?;
    }
    Ok(())
}

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
    let name = crate::auth::truncated(name, crate::auth::NAME_IN_ID);
    format!("{name}/{session:016x}").into_bytes()
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
    /// Which batch is over (its tasks are abandoned), shared with the executor.
    abandon: Arc<Abandon>,
    failure: Arc<Mutex<Option<String>>>,
    /// The executor's end of the wake PAIR: closed by the I/O thread when it leaves without
    /// waiting for the executor, so the ZeroMQ context can end while a task still runs.
    executor_wake: ExecutorWake,
    executor: std::thread::JoinHandle<()>,
}

/// The executor's wake socket, shared so the I/O thread can close it (see [`Worker`]).
type ExecutorWake = Arc<Mutex<Option<zmq::Socket>>>;

/// Wakes the I/O thread, never waiting; nothing once the socket was closed.
fn wake_io(wake: &Mutex<Option<zmq::Socket>>) {
    if let Ok(socket) = wake.lock() {
        if let Some(socket) = socket.as_ref() {
            // A wake already queued is as good as a new one.
            let _ = socket.send(&b""[..], zmq::DONTWAIT);
        }
    }
}

/// How long a worker leaving after its batch (asked to) waits for its executor to wind
/// down before it says goodbye regardless: a backend stuck in a kernel must not keep it.
const EXECUTOR_GRACE: Duration = Duration::from_secs(2);

/// Waits up to `grace` for the executor thread; `false` if it is still running (it is then
/// left behind: the process ends without it).
fn join_within(executor: std::thread::JoinHandle<()>, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while !executor.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        // Polling a thread's end: std offers no timed join.
        std::thread::sleep(Duration::from_millis(5));
    }
    if executor.join().is_err() {
        log::error!("the executor thread panicked");
    }
    true
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
            codecs: crate::protocol::codecs(config.compress),
            fill: backend.fill(),
        };
        let id = routing_id(&info.name, info.session);
        let user = crate::auth::worker_user(&info.name);
        let caller = sockets::Caller {
            identity: Some(&id),
            access: &config.access,
            user: &user,
            max_payload: config.max_payload,
        };
        let tasks = sockets::connect(
            ctx,
            zmq::DEALER,
            "tasks",
            &config.ventilator,
            "--ventilator",
            &caller,
        )?;
        let results =
            sockets::connect(ctx, zmq::DEALER, "results", &config.sink, "--sink", &caller)?;
        // A peer that refuses this worker's credentials ends it with the reason, where
        // ZeroMQ alone would redial forever.
        let monitors = [
            crate::auth::watch(ctx, &tasks)?,
            crate::auth::watch(ctx, &results)?,
        ];
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
        let executor_wake = ctx
            .socket(zmq::PAIR)
            .and_then(|s| {
                s.set_linger(0)?;
                s.connect(&wake_endpoint).map(|()| s)
            })
            .context("connecting the executor's wake socket")?;
        let executor_wake: ExecutorWake = Arc::new(Mutex::new(Some(executor_wake)));
        let (chunk_tx, chunk_rx) = mpsc::channel::<Chunk>();
        let (outcome_tx, outcome_rx) = mpsc::channel::<Outcomes>();
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let abandon = Arc::new(Abandon::default());
        let mut backend = backend;
        backend.stop_with(stop.clone());
        backend.abandon_with(abandon.flag());
        let executor = {
            let wake = executor_wake.clone();
            let stop = stop.clone();
            let abandon = abandon.clone();
            let failure = failure.clone();
            let thread_name = format!("{}-exec", config.name);
            let max_payload = config.max_payload;
            std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || {
                    execute(
                        &wake,
                        backend,
                        chunk_rx,
                        outcome_tx,
                        Shared {
                            stop: &stop,
                            abandon: &abandon,
                            failure: &failure,
                            max_payload,
                        },
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
        crate::events::emit(&crate::events::Note::Connecting {
            sink: config.sink.clone(),
            ventilator: config.ventilator.clone(),
        });
        Ok(Worker {
            io: Io {
                info,
                tasks,
                results,
                max_payload: config.max_payload,
                monitors,
            },
            config,
            wake,
            chunk_tx,
            outcome_rx,
            stop,
            abandon,
            failure,
            executor_wake,
            executor,
        })
    }

    /// Serves batches until told to leave, Ctrl-C, or `shutdown`.
    pub fn serve(self, shutdown: &Shutdown) -> anyhow::Result<WorkerSummary> {
        let Worker {
            config,
            io,
            wake,
            chunk_tx,
            outcome_rx,
            stop,
            abandon,
            failure,
            executor_wake,
            executor,
        } = self;
        let mut flow = Flow::new(
            FlowConfig {
                info: io.info.clone(),
                heartbeat: config.heartbeat,
                ventilator: config.ventilator.clone(),
                sink: config.sink.clone(),
                announce: config.announce,
                exit_when_done: config.exit_when_done,
                batch_wait: config.batch_wait,
                max_payload: config.max_payload,
            },
            Instant::now(),
        );
        let outcome = driver::run(&mut Pump {
            config: &config,
            io: &io,
            wake: &wake,
            chunk_tx: &chunk_tx,
            outcome_rx: &outcome_rx,
            abandon: &abandon,
            failure: &failure,
            flow: &mut flow,
            shutdown,
        });
        // Leaving: stop the executor and tell the ventilator, so the tasks this worker held
        // go to others at once. Leaving because the batch is over (asked to), the goodbye
        // waits for the executor (a while): the ventilator of a job that ended with chunks
        // out takes it to mean this worker is idle. Otherwise (Ctrl-C, SIGTERM, a refusal)
        // nothing waits for it: a kernel, a CPU task or a sleep in hand is left behind,
        // its task handed back by the goodbye, and the process ends without it.
        stop.store(true, Ordering::SeqCst);
        drop(chunk_tx);
        if outcome.is_ok() {
            if !join_within(executor, EXECUTOR_GRACE) {
                log::warn!(
                    "the task in hand did not stop within {} s; leaving it behind",
                    EXECUTOR_GRACE.as_secs()
                );
            }
            let _ = io.tasks.send(Flow::goodbye().encode(), zmq::DONTWAIT);
        } else {
            let _ = io.tasks.send(Flow::goodbye().encode(), zmq::DONTWAIT);
            if !join_within(executor, Duration::ZERO) {
                log::debug!("leaving without waiting for the task in hand");
            }
        }
        // The executor's socket closes here, whether or not it still runs, so the ZeroMQ
        // context can end.
        if let Ok(mut wake) = executor_wake.lock() {
            wake.take();
        }
        let counters = flow.counters();
        outcome.map(|()| WorkerSummary {
            tasks: counters.tasks,
            batches: counters.batches,
            rejected: counters.rejected,
        })
    }
}

struct Io {
    info: WorkerInfo,
    tasks: zmq::Socket,
    results: zmq::Socket,
    /// The worker's `--max-payload`.
    max_payload: u64,
    /// Failed handshakes of `tasks` and `results`.
    monitors: [zmq::Socket; 2],
}

/// The worker's host for the [`driver`]: both peers' sockets and the executor bring the
/// flow's events and carry out its commands. No send here ever waits.
struct Pump<'a> {
    config: &'a WorkerConfig,
    io: &'a Io,
    wake: &'a zmq::Socket,
    chunk_tx: &'a mpsc::Sender<Chunk>,
    outcome_rx: &'a mpsc::Receiver<Outcomes>,
    abandon: &'a Abandon,
    failure: &'a Mutex<Option<String>>,
    flow: &'a mut Flow,
    shutdown: &'a Shutdown,
}

/// Longest the pump sleeps in one poll, so a shutdown request is seen promptly.
const MAX_POLL: Duration = Duration::from_millis(100);

impl driver::Host for Pump<'_> {
    type Machine = Flow;
    type Error = anyhow::Error;

    fn machine(&mut self) -> &mut Flow {
        self.flow
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Carries out the flow's commands in order; over when the worker is to leave.
    fn carry_out(
        &mut self,
        commands: &mut Vec<FlowCommand>,
        failed: &mut Vec<FlowEvent>,
    ) -> anyhow::Result<driver::Progress> {
        let mut end = None;
        // Once the sink's queue refuses a delivery, the later ones wait behind it.
        let mut sink_full = false;
        for command in commands.drain(..) {
            match command {
                FlowCommand::Deliver(delivery) if sink_full => {
                    failed.push(FlowEvent::Undelivered(delivery));
                }
                FlowCommand::ToVentilator(message) => {
                    let _ = self.io.tasks.send(message.encode(), zmq::DONTWAIT);
                }
                FlowCommand::ToSink(message) => {
                    let _ = self.io.results.send(message.encode(), zmq::DONTWAIT);
                }
                FlowCommand::Deliver(mut delivery) => {
                    if let Some(results) = delivery.results.as_mut() {
                        // Never waits: a full queue keeps the delivery, and its credit, for
                        // a moment later.
                        match send_results(&self.io.results, results) {
                            Ok(()) => {}
                            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                                sink_full = true;
                                failed.push(FlowEvent::Undelivered(delivery));
                                continue;
                            }
                            Err(e) => {
                                end =
                                    Some(Err(anyhow::anyhow!("sending results to the sink: {e}")));
                                continue;
                            }
                        }
                    }
                    let _ = self.io.tasks.send(delivery.done.encode(), zmq::DONTWAIT);
                }
                FlowCommand::Abandon(batch) => self.abandon.batch_over(batch),
                FlowCommand::Yield { batch, id } => self.abandon.ask_yield(batch, id),
                FlowCommand::Run(chunk) => {
                    self.abandon.batch_again(chunk.batch);
                    if self.chunk_tx.send(chunk).is_err() {
                        end = Some(Err(anyhow::anyhow!(
                            "the executor thread stopped unexpectedly"
                        )));
                    }
                }
                FlowCommand::Leave => end = Some(Ok(())),
                FlowCommand::Stop(why) => end = Some(Err(anyhow::Error::new(why))),
                FlowCommand::Note(note) => crate::events::emit(&note),
            }
        }
        match end {
            None => Ok(driver::Progress::Going),
            Some(Ok(())) => Ok(driver::Progress::Over),
            Some(Err(e)) => Err(e),
        }
    }
}

impl driver::Transport for Pump<'_> {
    fn check(&mut self) -> anyhow::Result<()> {
        Ok(self.shutdown.check()?)
    }

    /// Polls both peers' sockets and the executor's wake-ups until the deadline, at most
    /// [`MAX_POLL`]; a handshake refused by either peer ends the worker with the reason.
    /// What the executor finished comes first, then the sink's messages, then the
    /// ventilator's.
    fn receive(&mut self, deadline: Instant, events: &mut Vec<FlowEvent>) -> anyhow::Result<()> {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(MAX_POLL);
        let mut items = [
            self.io.tasks.as_poll_item(zmq::POLLIN),
            self.wake.as_poll_item(zmq::POLLIN),
            self.io.results.as_poll_item(zmq::POLLIN),
            self.io.monitors[0].as_poll_item(zmq::POLLIN),
            self.io.monitors[1].as_poll_item(zmq::POLLIN),
        ];
        sockets::poll(&mut items, wait.as_millis() as i64, "the worker's sockets")?;
        for (monitor, (peer, endpoint)) in self.io.monitors.iter().zip([
            ("ventilator", &self.config.ventilator),
            ("sink", &self.config.sink),
        ]) {
            let refused = crate::auth::refusal(crate::auth::failures(monitor), peer);
            if let Some(failure) = refused {
                anyhow::bail!(crate::auth::refusal_message(
                    failure,
                    peer,
                    endpoint,
                    &self.config.access
                ));
            }
        }
        if items[1].is_readable() {
            while self.wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
            let mut finished = Vec::new();
            while let Ok(outcomes) = self.outcome_rx.try_recv() {
                match outcomes {
                    Outcomes::Finished(outcomes) => finished.extend(outcomes),
                    Outcomes::Declined { batch, reason } => {
                        events.push(FlowEvent::Declined { batch, reason })
                    }
                    Outcomes::Running {
                        backend,
                        adapter,
                        fill,
                    } => events.push(FlowEvent::Running {
                        backend,
                        adapter,
                        fill,
                    }),
                }
            }
            if !finished.is_empty() {
                events.push(FlowEvent::Finished(finished));
            }
            if let Some(reason) = self.failure.lock().ok().and_then(|f| f.clone()) {
                events.push(FlowEvent::ExecutorFailed(reason));
            }
        }
        let max_payload = self.io.max_payload;
        if items[2].is_readable() {
            sockets::drain(
                &self.io.results,
                false,
                "the results socket",
                max_payload,
                |inbound| {
                    events.push(FlowEvent::FromSink(inbound.message));
                    Ok(())
                },
            )?;
        }
        if items[0].is_readable() {
            sockets::drain(
                &self.io.tasks,
                false,
                "the tasks socket",
                max_payload,
                |inbound| {
                    events.push(FlowEvent::FromVentilator(inbound.message));
                    Ok(())
                },
            )?;
        }
        Ok(())
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

/// Test hook: with `CONQUER_TEST_FAULT=corrupt-output`, this worker flips one bit of every
/// output it computes, as a faulty card or driver would: what `--replicate` must catch.
fn corrupts_outputs() -> bool {
    std::env::var(FAULT_VAR).is_ok_and(|v| v == "corrupt-output")
}

/// A task this long (µs) is sent on at once: its credit matters more than company.
const FLUSH_AT_US: u32 = 200;
/// Outcomes between two looks at the clock for FLUSH_AFTER.
const FLUSH_CHECK_EVERY: usize = 16;
/// Most outcomes gathered before they are sent regardless.
const FLUSH_COUNT: usize = 1024;

/// What the executor shares with the worker's I/O thread: the stop flag, which batch is
/// over, and why the backend failed.
struct Shared<'a> {
    stop: &'a AtomicBool,
    abandon: &'a Abandon,
    failure: &'a Mutex<Option<String>>,
    /// The worker's `--max-payload`: a task whose output would pass it is not run.
    max_payload: u64,
}

/// The executor thread: feeds queued tasks to the backend and hands outcomes back in
/// groups, as soon as a task took noticeable time or nothing else is queued, so that credit
/// returns promptly for long tasks and zero-work tasks travel in bulk. If the backend
/// becomes unusable it records why and stops; the I/O thread then leaves.
fn execute(
    wake: &Mutex<Option<zmq::Socket>>,
    mut backend: Box<dyn Backend>,
    chunks: mpsc::Receiver<Chunk>,
    outcome_tx: mpsc::Sender<Outcomes>,
    shared: Shared,
) {
    let Shared {
        stop,
        abandon,
        failure,
        max_payload,
    } = shared;
    let mut buffer: Vec<Finished> = Vec::new();
    let mut last_flush = Instant::now();
    let flush = |buffer: &mut Vec<Finished>, last_flush: &mut Instant| {
        if !buffer.is_empty()
            && outcome_tx
                .send(Outcomes::Finished(std::mem::take(buffer)))
                .is_ok()
        {
            wake_io(wake);
        }
        *last_flush = Instant::now();
    };
    let mut stash: Option<Chunk> = None;
    // Chunks the ventilator asked to yield (batch, id), kept until their batch is left.
    let cuts: RefCell<HashSet<(u64, u32)>> = RefCell::new(HashSet::new());
    // The wall-clock time shared by the short outcomes of one flush.
    let mut stamp: Option<u64> = None;
    // The job the backend was last prepared for, and whether it accepted it.
    let mut prepared: Option<(u64, Job, bool)> = None;
    // What the backend runs on, as the worker last said.
    let mut running: (&'static str, String, u32) =
        (backend.kind(), backend.adapter(), backend.fill());
    loop {
        let chunk = match stash.take() {
            Some(chunk) => chunk,
            None => match chunks.recv() {
                Ok(chunk) => chunk,
                Err(_) => return,
            },
        };
        let (batch, job) = (chunk.batch, chunk.job);
        if prepared
            .as_ref()
            .is_none_or(|(b, j, _)| (*b, *j) != (batch, job))
        {
            let ready = match backend.prepare(&job, chunk.source.as_deref()) {
                Ok(()) => {
                    let now_running = (backend.kind(), backend.adapter(), backend.fill());
                    if running != now_running {
                        let _ = outcome_tx.send(Outcomes::Running {
                            backend: now_running.0.to_owned(),
                            adapter: now_running.1.clone(),
                            fill: now_running.2,
                        });
                        running = now_running;
                    }
                    true
                }
                Err(reason) => {
                    // Told once per batch; its tasks are dropped here and handed to other
                    // workers by the ventilator.
                    let _ = outcome_tx.send(Outcomes::Declined { batch, reason });
                    wake_io(wake);
                    false
                }
            };
            prepared = Some((batch, job, ready));
        }
        if prepared.as_ref().is_some_and(|(_, _, ready)| !ready) {
            continue;
        }
        let mut current = chunk.tasks.into_iter();
        let mut input = chunk.input;
        let mut in_pieces = chunk.in_pieces;
        // Tasks of a batch that is over are not started: they go back as failed.
        let mut abandoned: Vec<Task> = Vec::new();
        // Tasks beyond this worker's --max-payload are not started either: they fail, and
        // the worker declines the batch.
        let mut oversized: Vec<Work> = Vec::new();
        let mut too_big: Option<String> = None;
        abandon.begin(batch);
        // A divisible job's chunks go to the backend in pieces when their outputs
        // concatenate, so a chunk can yield its tail (`conquer_core::pieces`): the chunks
        // open, with when their first piece went out.
        let splitting = pieces::splits(&job, backend.kind());
        // Pieces no smaller than what fills the device (its fill, in the job's items).
        let least_piece =
            u32::try_from(crate::kernels::items_filling(&job, backend.fill())).unwrap_or(u32::MAX);
        // What a piece should take: short where pieces cost nothing.
        let piece_time = pieces::piece_time(backend.kind());
        let open: RefCell<Vec<(Pieces, Instant)>> = RefCell::new(Vec::new());
        // Chunks a cut completed between two pieces (every piece handed out was back):
        // reported with the next outcome, or when the run ends.
        let cut_short: RefCell<Vec<(Pieces, Instant)>> = RefCell::new(Vec::new());
        cuts.borrow_mut().retain(|&(b, _)| b == batch);
        // Takes the yields the I/O thread heard, and cuts `p` if it is asked to: once (a
        // later run of the same chunk is not cut by an old request).
        let cut_if_asked = |p: &mut Pieces| {
            let mut asked = cuts.borrow_mut();
            asked.extend(abandon.take_yields());
            if asked.remove(&(batch, p.id())) {
                p.cut();
            }
        };
        // Tasks of the same batch and job keep flowing into one `run`, so a pipelined
        // backend never drains between messages from the ventilator.
        let mut next = || -> Option<Work> {
            let mut chunks_open = open.borrow_mut();
            for (p, _) in chunks_open.iter_mut() {
                cut_if_asked(p);
            }
            let stopping = stop.load(Ordering::SeqCst);
            let over = abandon.is_over(batch);
            for (p, _) in chunks_open.iter_mut() {
                if over {
                    p.abandon();
                } else if stopping {
                    // What the pieces done cover is reported; the rest goes to others.
                    p.cut();
                }
            }
            // Chunks that need nothing more from the backend go out with the next outcome.
            let mut at = 0;
            while at < chunks_open.len() {
                if chunks_open[at].0.is_complete() {
                    cut_short.borrow_mut().push(chunks_open.remove(at));
                } else {
                    at += 1;
                }
            }
            if stopping {
                return None;
            }
            if over {
                abandoned.extend(current.by_ref());
                // Tasks of the batch queued before its end; a new run of it (heard after
                // the end) clears `is_over` and is left to run.
                while abandon.is_over(batch) {
                    match chunks.try_recv() {
                        Ok(more) if more.batch == batch => abandoned.extend(more.tasks),
                        Ok(other) => {
                            stash = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                return None;
            }
            // The next piece of the chunk in hand, if it has one.
            if let Some(piece) = chunks_open.last_mut().and_then(|(p, _)| p.next_piece()) {
                return Some(piece);
            }
            loop {
                if let Some(task) = current.next() {
                    let work = match input.take() {
                        Some((name, input)) => Work { task, name, input },
                        None => Work::from(task),
                    };
                    match crate::backend::fits(&job, &work, max_payload) {
                        Ok(()) if splitting && in_pieces && work.task.items > 1 => {
                            let mut p = Pieces::new(&job, work)
                                .taking(piece_time)
                                .at_least(least_piece);
                            cut_if_asked(&mut p);
                            let first = p.next_piece();
                            chunks_open.push((p, Instant::now()));
                            return first;
                        }
                        Ok(()) => return Some(work),
                        Err(why) => {
                            log::error!("{why}");
                            too_big.get_or_insert(why);
                            oversized.push(work);
                            continue;
                        }
                    }
                }
                match chunks.try_recv() {
                    Ok(more) if more.batch == batch && more.job == job => {
                        current = more.tasks.into_iter();
                        input = more.input;
                        in_pieces = more.in_pieces;
                    }
                    Ok(other) => {
                        stash = Some(other);
                        return None;
                    }
                    Err(_) => return None,
                }
            }
        };
        let corrupt = corrupts_outputs();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if fault_injected() {
                panic!("injected fault ({FAULT_VAR}=panic)");
            }
            let mut emit = |mut outcome: Outcome| {
                if corrupt {
                    if let Some(byte) = outcome.output.last_mut() {
                        *byte ^= 1;
                    }
                }
                // The wall clock is read once per flush for short tasks, which go out within
                // FLUSH_AFTER: a clock read per zero-work task is a tenth of its cost.
                let finished_unix_ms = match stamp {
                    Some(ms) if outcome.wall_us < FLUSH_AT_US => ms,
                    _ => *stamp.insert(unix_ms()),
                };
                let wall_us = outcome.wall_us;
                buffer.push(Finished {
                    batch,
                    outcome,
                    finished_unix_ms,
                });
                // The clock is read every few outcomes only: for zero-work tasks a read per
                // task costs as much as the task.
                if wall_us >= FLUSH_AT_US
                    || buffer.len() >= FLUSH_COUNT
                    || (buffer.len() % FLUSH_CHECK_EVERY == 0
                        && last_flush.elapsed() >= FLUSH_AFTER)
                {
                    flush(&mut buffer, &mut last_flush);
                    stamp = None;
                }
            };
            backend.run(&job, &mut next, &mut |outcome| {
                for (p, started) in cut_short.take() {
                    emit(p.outcome(micros(started.elapsed())));
                }
                // A piece goes into its chunk; the chunk goes out once all of it is back.
                let mut chunks_open = open.borrow_mut();
                let Some(at) = chunks_open
                    .iter()
                    .position(|(p, _)| outcome.task.is_chunk() && p.owns(&outcome.task))
                else {
                    drop(chunks_open);
                    return emit(outcome);
                };
                chunks_open[at].0.piece_done(outcome);
                // A yield heard while the piece ran ends the chunk here, not a piece later.
                cut_if_asked(&mut chunks_open[at].0);
                if chunks_open[at].0.is_complete() {
                    let (p, started) = chunks_open.remove(at);
                    drop(chunks_open);
                    emit(p.outcome(micros(started.elapsed())));
                }
            });
            for (p, started) in cut_short.take() {
                emit(p.outcome(micros(started.elapsed())));
            }
            // A backend owes an outcome for every piece it took; a chunk still open here
            // lost some, and fails whole.
            for (mut p, started) in open.take() {
                p.abandon();
                emit(p.outcome(micros(started.elapsed())));
            }
        }));
        let refused = abandoned.into_iter().map(Work::from).chain(oversized);
        for work in refused {
            buffer.push(Finished {
                batch,
                outcome: Outcome::failed(work, 0),
                finished_unix_ms: unix_ms(),
            });
        }
        flush(&mut buffer, &mut last_flush);
        if let Some(reason) = too_big.or_else(|| backend.take_decline()) {
            // The tasks it failed go to other workers; this one takes no more of the batch.
            let _ = outcome_tx.send(Outcomes::Declined { batch, reason });
            wake_io(wake);
            prepared = Some((batch, job, false));
        }
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
            wake_io(wake);
            return;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}
