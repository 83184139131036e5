//! The ventilator: makes a batch, waits for workers, and hands out tasks on credit.
//!
//! Sockets: `tasks`, a ROUTER bound on `tcp://*:5557` that workers' DEALERs connect to
//! (greetings, heartbeats, credit and tasks all travel here); `sink`, a DEALER connected to
//! the sink's ROUTER (`tcp://localhost:5558`) that announces the batch and hears which
//! tasks the sink holds. A task is finished only when the sink holds its result: tasks of a
//! worker that leaves, goes silent or fails them go back to the front of the queue.
//! The ventilator never sees results and never writes to stdout except through `report`.

use crate::batch::{Batch, Job, Order, Task};
use crate::logging::RateLimited;
use crate::protocol::{Message, RefusalKind, Status, WorkerInfo, MAX_ITEMS_PER_MESSAGE};
use crate::shutdown::{Interrupted, Shutdown};
use crate::sockets;
use anyhow::{bail, Context};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use crate::heartbeat::Heartbeat;

/// Everything a ventilator needs to run one batch.
#[derive(Debug, Clone)]
pub struct VentilatorConfig {
    /// Where workers connect: the `tasks` ROUTER's bind endpoint.
    pub bind: String,
    /// The sink's endpoint, which this ventilator connects to.
    pub sink: String,
    pub batch: Batch,
    pub order: Order,
    /// Seed for `--order shuffle`.
    pub seed: u64,
    pub job: Job,
    /// Workers to wait for before the batch starts; 0 starts at once.
    pub wait_workers: usize,
    /// How long to wait for them (and for the sink) before giving up.
    pub wait_timeout: Duration,
    /// Tasks a worker may hold at once (more if the worker asks for a deeper pipeline).
    pub window: u32,
    /// Cap on tasks a worker may hold when tasks cost nothing (zero-millisecond workloads).
    pub max_window: u32,
    pub heartbeat: Heartbeat,
    /// Tell workers to exit when the batch is complete.
    pub shutdown_workers: bool,
    /// Batch id; by default a hash of the tasks and the job, so a restarted ventilator
    /// announces the same batch again.
    pub batch_id: Option<u64>,
    /// Continue a batch the sink already holds results of (after a ventilator restart).
    pub resume: bool,
    /// Print the seed's "Total expected cost" line on stdout (off when the report does).
    pub announce: bool,
    /// Records when each task is sent, for latency benchmarks.
    pub timeline: Option<std::sync::Arc<crate::timeline::Timeline>>,
    /// When a task held too long is given to another worker as a backup.
    pub backup: Backup,
    /// Longest silence from the sink, during a batch, before the ventilator gives up.
    pub sink_timeout: Duration,
}

/// Backup tasks for stragglers: a task held longer than `factor` times what its worker's
/// measured speed predicts, plus `slack`, is handed to another worker too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backup {
    pub factor: f64,
    pub slack: Duration,
}

impl Default for Backup {
    fn default() -> Self {
        Backup {
            factor: 4.0,
            slack: Duration::from_secs(2),
        }
    }
}

/// How long a ventilator waits for a sink that does not answer during a batch.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(60);

impl VentilatorConfig {
    /// Settings for running `batch` inside one process (`conquer run`, benchmarks, tests):
    /// endpoints and worker count are filled in by `local::run`; the rest are the defaults.
    pub fn local(batch: Batch, job: Job) -> VentilatorConfig {
        VentilatorConfig {
            bind: String::new(),
            sink: String::new(),
            batch,
            order: Order::LongestFirst,
            seed: 0,
            job,
            wait_workers: 0,
            wait_timeout: Duration::from_secs(60),
            window: 2,
            max_window: 2048,
            heartbeat: Heartbeat::default(),
            shutdown_workers: true,
            batch_id: None,
            resume: false,
            announce: false,
            timeline: None,
            backup: Backup::default(),
            sink_timeout: DEFAULT_SINK_TIMEOUT,
        }
    }
}

/// What the ventilator saw, for tests and logs.
#[derive(Debug, Clone, Default)]
pub struct VentilatorSummary {
    pub batch: u64,
    pub workers_seen: usize,
    pub redispatched: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    /// Waiting in the queue to be handed out.
    Pending,
    /// Waiting to be handed out again: the worker that had it left, failed it, or its
    /// result was lost with a sink.
    Requeued,
    /// Held by a worker, counted against its credit.
    Assigned,
    /// The worker says it is done; not finished until the sink holds the result.
    Reported,
    /// The sink holds the result: finished.
    Held,
}

const NO_OWNER: u32 = u32::MAX;
/// Most tasks a worker's own window hint (a GPU's pipeline depth) can earn it; a peer that
/// asks for more gets this many. `--window` above it wins.
const MAX_HINTED_WINDOW: u32 = 16;
/// How often, in a batch's tail, the ventilator checks that the workers holding its last
/// tasks are still connected.
const TAIL_PROBE: Duration = Duration::from_millis(20);
/// How often a ventilator waiting for workers repeats what it waits for.
const WAIT_REMINDER: Duration = Duration::from_secs(5);
/// Heartbeat timeouts a task reported done may wait for the sink to hold it, while the sink
/// answers, before its worker is taken to be delivering results nowhere.
const UNDELIVERED_TIMEOUTS: u32 = 4;

struct WorkerSlot {
    routing_id: Vec<u8>,
    info: WorkerInfo,
    alive: bool,
    last_seen: Instant,
    /// Tasks assigned and not yet reported: what its credit is spent on.
    assigned: u32,
    /// Sum of their workloads.
    assigned_ms: u64,
    /// Tasks handed to it, in order, with when: what it may still hold (entries go stale
    /// when a task is held or handed elsewhere, and are dropped from the front). Losing the
    /// worker costs what it held, not a scan of the batch; its oldest task tells whether it
    /// straggles.
    given: VecDeque<(Instant, u32)>,
    /// Measured wall time per nominal ms of workload (smoothed), from its reports.
    us_per_ms: Option<f64>,
    /// A task of its was given to another worker as a backup: no new tasks until it
    /// reports again.
    stalled: bool,
    /// When it last reported a task it held: a worker runs its tasks one after another, so
    /// a queued task's time starts no earlier than this.
    last_report: Instant,
    /// Turned away (its results never reached the sink): its greetings are not believed.
    refused: bool,
    /// Whether it ever reported a task done: until then it is on probation and gets no
    /// more than `--window` tasks of a zero-work stream, so a flood of peers that greet and
    /// vanish costs a few tasks each.
    proven: bool,
}

impl WorkerSlot {
    fn new(routing_id: Vec<u8>, info: WorkerInfo) -> WorkerSlot {
        WorkerSlot {
            routing_id,
            info,
            alive: true,
            last_seen: Instant::now(),
            assigned: 0,
            assigned_ms: 0,
            given: VecDeque::new(),
            us_per_ms: None,
            stalled: false,
            proven: false,
            last_report: Instant::now(),
            refused: false,
        }
    }
}

/// A ventilator with its socket bound, ready to run.
pub struct Ventilator {
    config: VentilatorConfig,
    tasks_socket: zmq::Socket,
    sink_socket: zmq::Socket,
    endpoint: String,
}

impl Ventilator {
    /// Binds the tasks socket and connects to the sink; nothing is sent yet.
    pub fn bind(ctx: &zmq::Context, config: VentilatorConfig) -> anyhow::Result<Ventilator> {
        if config.window == 0 {
            bail!("--window must be at least 1");
        }
        // Both endpoints are checked before either socket exists.
        sockets::check_endpoint(&config.bind, "--bind", true)?;
        sockets::check_endpoint(&config.sink, "--sink", false)?;
        let longest = config.batch.longest_ms();
        if crate::kernels::spin::invocations(longest, config.job.units_per_ms).is_none() {
            bail!(
                "the longest task ({longest} ms) at --units-per-ms {} needs more than 2^32 shader \
                 invocations on compute backends; lower --units-per-ms, or shorten the longest task \
                 (--max-ms, or the tasks file)",
                config.job.units_per_ms
            );
        }
        let (tasks_socket, endpoint) =
            sockets::bind(ctx, zmq::ROUTER, "tasks", &config.bind, "--bind")?;
        // Sending to a worker that has gone fails at once instead of vanishing silently.
        tasks_socket.set_router_mandatory(true)?;
        // A worker that reconnects (after a network cut the old connection may linger until
        // ZMTP heartbeats close it) takes its name over at once rather than being ignored.
        tasks_socket.set_router_handover(true)?;
        let sink_socket = sockets::connect(ctx, zmq::DEALER, "sink", &config.sink, "--sink", None)?;
        Ok(Ventilator {
            config,
            tasks_socket,
            sink_socket,
            endpoint,
        })
    }

    /// The endpoint workers can connect to (port filled in).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs the batch until the sink says it holds every result.
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<VentilatorSummary> {
        let batch_id = self
            .config
            .batch_id
            .unwrap_or_else(|| self.config.batch.id(&self.config.job));
        let order = self
            .config
            .batch
            .dispatch_order(self.config.order, self.config.seed);
        let n = self.config.batch.len();
        let mut state = Dispatcher {
            tasks: self.config.batch.tasks.clone(),
            state: vec![TaskState::Pending; n],
            owner: vec![NO_OWNER; n],
            pending: order.into(),
            pending_count: n,
            held: 0,
            workers: Vec::new(),
            by_routing_id: HashMap::new(),
            next_worker: 0,
            redispatched: 0,
            rejected: 0,
            reject_log: RateLimited::new(5, Duration::from_secs(1)),
            batch_id,
            session: rand::random(),
            started_unix_ms: crate::worker::unix_ms(),
            timeline: self.config.timeline.clone(),
            job: self.config.job,
            resync: None,
            window: self.config.window,
            max_window: self.config.max_window.max(self.config.window),
            heartbeat: self.config.heartbeat,
            reported_log: VecDeque::new(),
            endpoint: self.endpoint.clone(),
            refuse_log: RateLimited::new(5, Duration::from_secs(1)),
            gone_log: RateLimited::new(5, Duration::from_secs(1)),
            backup: self.config.backup,
            backups: 0,
        };
        let expected_ms = self.config.batch.expected_ms();
        if self.config.announce {
            crate::report::print_expected_cost(expected_ms);
        }
        log::debug!(
            "batch {batch_id:016x}: {n} tasks, {expected_ms} ms expected, workers connect to {}",
            self.endpoint
        );

        self.wait_for_workers(&mut state, shutdown)?;
        self.announce_batch(&mut state, shutdown)?;
        if let Err(e) = self.dispatch_until_complete(&mut state, shutdown) {
            let why = if Interrupted::is(&e) {
                "interrupted"
            } else {
                "stopped by an error"
            };
            log::warn!(
                "{why} mid-batch {batch_id:016x} with {} of {n} tasks held at the sink; to continue \
                 where the sink stands, restart this ventilator with the same batch flags and --resume",
                state.held
            );
            return Err(e);
        }
        Ok(VentilatorSummary {
            batch: batch_id,
            workers_seen: state.workers.len(),
            redispatched: state.redispatched,
            rejected: state.rejected,
        })
    }

    fn wait_for_workers(&self, state: &mut Dispatcher, shutdown: &Shutdown) -> anyhow::Result<()> {
        let want = self.config.wait_workers;
        if want == 0 {
            return Ok(());
        }
        let start = Instant::now();
        let mut last_said: Option<(usize, Instant)> = None;
        let mut next_beat = Instant::now();
        loop {
            let ready = state.alive_workers();
            if ready >= want {
                log::info!("{ready} of {want} workers ready; starting the batch");
                return Ok(());
            }
            // Say what we wait for when it changes, and at least every few seconds.
            let due = last_said.is_none_or(|(n, at)| n != ready || at.elapsed() >= WAIT_REMINDER);
            if due {
                log::info!(
                    "waiting for {}: {ready} ready (workers connect to {})",
                    crate::report::plural(want as u64, "worker"),
                    self.endpoint
                );
                last_said = Some((ready, Instant::now()));
            }
            if start.elapsed() >= self.config.wait_timeout {
                bail!(
                    "timed out after {:.1} s waiting for {} ({ready} ready): start workers with \
                     `conquer worker --ventilator tcp://HOST:PORT --sink tcp://HOST:PORT` against {}, or lower \
                     --wait-workers / raise --wait-timeout",
                    self.config.wait_timeout.as_secs_f64(),
                    crate::report::plural(want as u64, "worker"),
                    self.endpoint
                );
            }
            shutdown.check()?;
            let mut items = [self.tasks_socket.as_poll_item(zmq::POLLIN)];
            sockets::poll(&mut items, 100, "the tasks socket")?;
            if items[0].is_readable() {
                state.drain_workers(&self.tasks_socket)?;
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + self.config.heartbeat.interval;
                state.heartbeat_workers(&self.tasks_socket);
            }
            state.expire_silent_workers(&self.tasks_socket);
        }
    }

    fn batch_message(&self, state: &Dispatcher) -> anyhow::Result<Message> {
        Ok(Message::Batch {
            batch: state.batch_id,
            session: state.session,
            started_unix_ms: state.started_unix_ms,
            task_count: u32::try_from(state.tasks.len()).context("batch too large")?,
            expected_ms: self.config.batch.expected_ms(),
            longest_ms: self.config.batch.longest_ms(),
            job: state.job,
        })
    }

    /// Announces the batch and waits for the sink's acknowledgement and, when it already
    /// holds results (a resumed batch), for the list of them, so none is dispatched again.
    fn announce_batch(&self, state: &mut Dispatcher, shutdown: &Shutdown) -> anyhow::Result<()> {
        // The batch starts now, when it is first announced: waiting for workers is not part
        // of its elapsed time.
        state.started_unix_ms = crate::worker::unix_ms();
        self.sink_socket
            .send(self.batch_message(state)?.encode(), 0)
            .context("sending the batch to the sink")?;
        let start = Instant::now();
        let mut next_nag = Duration::from_secs(2);
        let mut holding: Option<usize> = None;
        loop {
            if let Some(held) = holding {
                if state.held >= held {
                    log::debug!("dispatching {} tasks", state.tasks.len() - state.held);
                    return Ok(());
                }
            }
            shutdown.check()?;
            let mut items = [
                self.sink_socket.as_poll_item(zmq::POLLIN),
                self.tasks_socket.as_poll_item(zmq::POLLIN),
            ];
            sockets::poll(&mut items, 100, "the sink socket")?;
            if items[1].is_readable() {
                state.drain_workers(&self.tasks_socket)?;
            }
            if items[0].is_readable() {
                while let Some(frame) = recv_nowait(&self.sink_socket)? {
                    match Message::decode(&frame) {
                        Ok(Message::BatchAck { batch, held }) if batch == state.batch_id => {
                            if held > 0 && !self.config.resume {
                                bail!(
                                    "the sink already holds {held} results of batch {batch:016x}: pass --resume \
                                     to finish that batch, or start a new sink (`conquer sink --overwrite` on \
                                     its results file) to run it afresh"
                                );
                            }
                            if held > 0 {
                                log::warn!(
                                    "resuming batch {batch:016x}: the sink holds {held} results"
                                );
                            }
                            holding = Some(held as usize);
                        }
                        Ok(Message::Held { batch, ids }) if batch == state.batch_id => {
                            state.mark_held(&ids)
                        }
                        Ok(Message::Heartbeat { batch }) if batch == state.batch_id => {}
                        Ok(Message::Refused { reason, .. }) => {
                            bail!(
                                "the sink at {} refused the batch: {reason}",
                                self.config.sink
                            )
                        }
                        other => state.reject_from_sink(other),
                    }
                }
            }
            if start.elapsed() >= next_nag {
                log::warn!(
                    "waiting for the sink at {} to acknowledge the batch (is `conquer sink` running there?)",
                    self.config.sink
                );
                next_nag += Duration::from_secs(5);
            }
            if start.elapsed() >= self.config.wait_timeout {
                bail!(
                    "timed out after {:.1} s waiting for the sink at {}: start `conquer sink` there or pass --sink",
                    self.config.wait_timeout.as_secs_f64(),
                    self.config.sink
                );
            }
        }
    }

    fn dispatch_until_complete(
        &self,
        state: &mut Dispatcher,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let interval = self.config.heartbeat.interval;
        let mut next_tick = Instant::now() + interval;
        let mut idle_since: Option<Instant> = None;
        let mut heard_from_sink = Instant::now();
        let mut sink_silence_said = false;
        let mut next_probe = Instant::now();
        loop {
            shutdown.check()?;
            state.dispatch(&self.tasks_socket);
            // In the tail (nothing left to hand out), a worker that vanished holding tasks
            // holds up the batch: look for such workers often, not once a heartbeat.
            if state.pending_count == 0 && Instant::now() >= next_probe {
                next_probe = Instant::now() + TAIL_PROBE;
                state.probe_holders(&self.tasks_socket);
            }
            let timeout = next_tick.saturating_duration_since(Instant::now()).min(
                if state.pending_count == 0 {
                    TAIL_PROBE
                } else {
                    Duration::from_millis(100)
                },
            );
            let mut items = [
                self.tasks_socket.as_poll_item(zmq::POLLIN),
                self.sink_socket.as_poll_item(zmq::POLLIN),
            ];
            sockets::poll(
                &mut items,
                timeout.as_millis() as i64,
                "the ventilator's sockets",
            )?;
            if items[0].is_readable() {
                state.drain_workers(&self.tasks_socket)?;
            }
            if items[1].is_readable() {
                heard_from_sink = Instant::now();
                if sink_silence_said {
                    log::info!("the sink is answering again");
                    sink_silence_said = false;
                }
                while let Some(frame) = recv_nowait(&self.sink_socket)? {
                    match Message::decode(&frame) {
                        Ok(Message::Held { batch, ids }) if batch == state.batch_id => {
                            state.mark_held(&ids)
                        }
                        Ok(Message::Complete { batch }) if batch == state.batch_id => {
                            self.finish(state)?;
                            return Ok(());
                        }
                        Ok(Message::BatchAck { batch, held }) if batch == state.batch_id => {
                            state.sink_restarted(held)
                        }
                        Ok(Message::Heartbeat { batch }) if batch == state.batch_id => {}
                        Ok(Message::Refused { reason, .. }) => {
                            bail!(
                                "the sink at {} refused the batch: {reason}",
                                self.config.sink
                            )
                        }
                        other => state.reject_from_sink(other),
                    }
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + interval;
                state.heartbeat_workers(&self.tasks_socket);
                state.expire_silent_workers(&self.tasks_socket);
                state.finish_resync_if_stale();
                state.back_up_stragglers();
                state.prune_reported_log();
                // Results a worker reports done that never reach a sink that answers: the
                // worker's way to the sink is broken. Name it and hand its tasks on.
                if heard_from_sink.elapsed() < self.config.heartbeat.timeout() {
                    state.refuse_undelivering_workers(&self.tasks_socket, &self.config.sink);
                }
                // The sink answers every announcement; silence while workers report tasks
                // done means it is gone or unreachable.
                if heard_from_sink.elapsed() > self.config.sink_timeout {
                    bail!(
                        "no word from the sink at {} for {:.0} s (--sink-timeout): it is gone or \
                         unreachable; {} of {} tasks are held there. Start it again (with --results F \
                         --resume if it wrote results) and restart this ventilator with --resume",
                        self.config.sink,
                        heard_from_sink.elapsed().as_secs_f64(),
                        state.held,
                        state.tasks.len()
                    );
                }
                // Tasks reported and not yet held are at the front of the pruned log.
                let reported = !state.reported_log.is_empty();
                if reported
                    && !sink_silence_said
                    && heard_from_sink.elapsed() > self.config.heartbeat.timeout() * 2
                {
                    log::warn!(
                        "no word from the sink at {} for {:.0} s while workers report results; \
                         is it running? (restart it with --resume to keep what it wrote)",
                        self.config.sink,
                        heard_from_sink.elapsed().as_secs_f64()
                    );
                    sink_silence_said = true;
                }
                // Re-announcing the batch is the sink's heartbeat: a restarted sink learns
                // the batch from it and answers with what it holds.
                let _ = self
                    .sink_socket
                    .send(self.batch_message(state)?.encode(), zmq::DONTWAIT);
                let stats = state.stats(false);
                let _ = self.sink_socket.send(stats.encode(), zmq::DONTWAIT);
                if state.alive_workers() == 0 && state.held < state.tasks.len() {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(5) {
                        log::warn!(
                            "no workers connected; {} of {} tasks not finished (start workers against {})",
                            state.tasks.len() - state.held,
                            state.tasks.len(),
                            self.endpoint
                        );
                        idle_since = Some(Instant::now());
                    }
                } else {
                    idle_since = None;
                }
            }
        }
    }

    /// The sink holds everything: give it the final counters and release the workers.
    fn finish(&self, state: &mut Dispatcher) -> anyhow::Result<()> {
        self.sink_socket
            .send(state.stats(true).encode(), 0)
            .context("sending final counters to the sink")?;
        let end = Message::End {
            batch: state.batch_id,
            shutdown: self.config.shutdown_workers,
        }
        .encode();
        for worker in state.workers.iter().filter(|w| w.alive) {
            let _ = self.tasks_socket.send_multipart(
                [worker.routing_id.as_slice(), end.as_slice()],
                zmq::DONTWAIT,
            );
        }
        log::info!(
            "batch {:016x} complete: {} tasks, {} redispatched, {} rejected",
            state.batch_id,
            state.tasks.len(),
            state.redispatched,
            state.rejected
        );
        Ok(())
    }
}

/// One frame from a DEALER without blocking; `None` when nothing is waiting.
fn recv_nowait(socket: &zmq::Socket) -> anyhow::Result<Option<Vec<u8>>> {
    match sockets::recv_multipart_nowait(socket, "the sink socket")? {
        Some(mut frames) if frames.len() == 1 => Ok(frames.pop()),
        // Our peers send single frames; a multi-frame message is foreign: hand back
        // something that fails to decode so the caller counts it.
        Some(_) => Ok(Some(Vec::new())),
        None => Ok(None),
    }
}

/// The dispatch state: who holds which task, and who has credit.
struct Dispatcher {
    tasks: Vec<Task>,
    state: Vec<TaskState>,
    owner: Vec<u32>,
    /// Task ids in dispatch order; redispatched tasks go to the front. May contain ids that
    /// are no longer pending (held via a late result); those are skipped when popped.
    pending: VecDeque<u32>,
    /// Tasks in the `Pending` state (the queue may also hold stale entries).
    pending_count: usize,
    held: usize,
    workers: Vec<WorkerSlot>,
    by_routing_id: HashMap<Vec<u8>, usize>,
    next_worker: usize,
    redispatched: u64,
    rejected: u64,
    reject_log: RateLimited,
    batch_id: u64,
    /// Random per run: lets the sink tell a restarted ventilator from a repeated announcement.
    session: u64,
    /// When this ventilator started the batch, ms since the epoch (travels with it).
    started_unix_ms: u64,
    timeline: Option<std::sync::Arc<crate::timeline::Timeline>>,
    job: Job,
    /// After a sink restart: how many held results it announced, and since when we wait for
    /// their ids before handing out again every task it does not hold.
    resync: Option<(usize, Instant)>,
    window: u32,
    max_window: u32,
    heartbeat: Heartbeat,
    /// Tasks in the order workers reported them done, with when and by whom: the oldest
    /// still not held tells of a worker whose results go nowhere.
    reported_log: VecDeque<(Instant, u32, u32)>,
    /// The tasks endpoint, for messages to peers.
    endpoint: String,
    refuse_log: RateLimited,
    /// Workers lost or backed up: summarised when many go at once.
    gone_log: RateLimited,
    backup: Backup,
    /// Tasks given to another worker as backups for a straggler.
    backups: u64,
}

impl Dispatcher {
    fn alive_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.alive).count()
    }

    fn stats(&self, last: bool) -> Message {
        Message::Stats {
            batch: self.batch_id,
            redispatched: self.redispatched,
            rejected: self.rejected,
            last,
        }
    }

    fn reject(&mut self, peer: &[u8], why: String) {
        self.rejected += 1;
        let peer = sockets::peer_name(peer);
        self.reject_log
            .warn(|| format!("dropped a message from {peer}: {why}"));
    }

    fn reject_from_sink(&mut self, decoded: Result<Message, crate::protocol::DecodeError>) {
        let why = match decoded {
            Ok(m) => format!(
                "unexpected {} message (batch mismatch or wrong direction)",
                m.kind_name()
            ),
            Err(e) => e.to_string(),
        };
        self.reject(b"sink", why);
    }

    /// Reads every waiting message on the tasks socket.
    fn drain_workers(&mut self, socket: &zmq::Socket) -> anyhow::Result<()> {
        loop {
            let Some(frames) = sockets::recv_multipart_nowait(socket, "the tasks socket")? else {
                return Ok(());
            };
            let [routing_id, payload] = match <[Vec<u8>; 2]>::try_from(frames) {
                Ok(pair) => pair,
                Err(frames) => {
                    let peer = frames.first().cloned().unwrap_or_default();
                    self.reject(
                        &peer,
                        format!("{} frames, expected 1", frames.len().saturating_sub(1)),
                    );
                    continue;
                }
            };
            match Message::decode(&payload) {
                Ok(Message::Hello(info)) => self.hello(socket, routing_id, info),
                Ok(Message::Join(_)) => {
                    let reason = format!(
                        "this looks like a worker that connected its sink endpoint to a ventilator: {} is \
                         conquer's ventilator (tasks), not a sink; pass the sink's endpoint (port 5558 by \
                         default) as --sink and this one as --ventilator",
                        self.endpoint
                    );
                    self.refuse(socket, &routing_id, RefusalKind::WrongPeer, reason);
                }
                Ok(Message::Done { batch, done }) if batch == self.batch_id => {
                    self.done(&routing_id, &done)
                }
                Ok(Message::Done { batch, .. }) => {
                    // Credit for another batch (perhaps a worker's leftovers from the last
                    // one): it proves the worker alive, and is counted as foreign.
                    self.touch(&routing_id);
                    self.reject(
                        &routing_id,
                        format!("credit for batch {batch:016x}, not this one"),
                    );
                }
                Ok(Message::Bye) => self.bye(&routing_id),
                Ok(other) => self.reject(
                    &routing_id,
                    format!(
                        "unexpected {} message on the tasks socket",
                        other.kind_name()
                    ),
                ),
                Err(e) => self.reject(&routing_id, e.to_string()),
            }
        }
    }

    fn touch(&mut self, routing_id: &[u8]) {
        if let Some(&slot) = self.by_routing_id.get(routing_id) {
            self.workers[slot].last_seen = Instant::now();
        }
    }

    fn refuse(
        &mut self,
        socket: &zmq::Socket,
        routing_id: &[u8],
        kind: RefusalKind,
        reason: String,
    ) {
        let peer = crate::logging::printable(&sockets::peer_name(routing_id)).into_owned();
        self.refuse_log.warn(|| format!("refused {peer}: {reason}"));
        let _ = send_to(
            socket,
            routing_id,
            &Message::Refused { kind, reason }.encode(),
        );
    }

    fn hello(&mut self, socket: &zmq::Socket, routing_id: Vec<u8>, info: WorkerInfo) {
        if let Err(why) = crate::heartbeat::check_name(&info.name) {
            self.refuse(socket, &routing_id, RefusalKind::BadName, why);
            return;
        }
        let beat = Message::Heartbeat {
            batch: self.batch_id,
        }
        .encode();
        match self.by_routing_id.get(&routing_id) {
            Some(&slot) if self.workers[slot].refused => {
                let reason = format!(
                    "worker {:?} was turned away: its results did not reach the sink; restart it with a \
                     working --sink",
                    self.workers[slot].info.name
                );
                self.refuse(socket, &routing_id, RefusalKind::ResultsLost, reason);
            }
            Some(&slot) => {
                let worker = &mut self.workers[slot];
                worker.last_seen = Instant::now();
                if !worker.alive {
                    log::debug!("worker {} is back", crate::logging::printable(&info.name));
                    worker.alive = true;
                    worker.assigned = 0;
                    worker.assigned_ms = 0;
                    worker.stalled = false;
                    let _ = send_to(socket, &routing_id, &beat);
                }
                worker.info = info;
            }
            None => {
                // Another live worker under the same name (a second process given the same
                // --name) is refused; one whose connection is gone gives its name up.
                let namesake = self.workers.iter().position(|w| {
                    w.alive && w.info.name == info.name && w.info.session != info.session
                });
                if let Some(old) = namesake {
                    if send_to(socket, &self.workers[old].routing_id, &beat) == SendOutcome::Gone {
                        self.lose_worker(old);
                    } else {
                        let reason = format!(
                            "another worker named {:?} is already connected to the ventilator at {}; give \
                             each worker its own --name (the default, host-pid-N, is unique)",
                            info.name, self.endpoint
                        );
                        self.refuse(socket, &routing_id, RefusalKind::NameTaken, reason);
                        return;
                    }
                }
                log::debug!(
                    "worker {} joined ({}{}{})",
                    crate::logging::printable(&info.name),
                    info.backend,
                    if info.adapter.is_empty() { "" } else { " on " },
                    info.adapter
                );
                let _ = send_to(socket, &routing_id, &beat);
                self.by_routing_id
                    .insert(routing_id.clone(), self.workers.len());
                self.workers.push(WorkerSlot::new(routing_id, info));
            }
        }
    }

    /// Drops the front of the reported log while it names tasks no longer waiting for the
    /// sink, so the log holds only what is in doubt, not every task of the batch.
    fn prune_reported_log(&mut self) {
        while let Some(&(_, index, slot)) = self.reported_log.front() {
            let i = index as usize;
            if self.state[i] == TaskState::Reported && self.owner[i] == slot {
                break;
            }
            self.reported_log.pop_front();
        }
    }

    /// Workers whose reported-done tasks have not reached the sink (which answers) within
    /// the bound: told why and dropped, their tasks handed to others.
    fn refuse_undelivering_workers(&mut self, socket: &zmq::Socket, sink: &str) {
        let bound = self.heartbeat.timeout() * UNDELIVERED_TIMEOUTS;
        let mut stale: Vec<(u32, u32)> = Vec::new();
        while let Some(&(at, index, slot)) = self.reported_log.front() {
            if at.elapsed() < bound {
                break;
            }
            self.reported_log.pop_front();
            let i = index as usize;
            if self.state[i] == TaskState::Reported && self.owner[i] == slot {
                match stale.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, n)) => *n += 1,
                    None => stale.push((slot, 1)),
                }
            }
        }
        for (slot, count) in stale {
            let slot = slot as usize;
            if !self.workers[slot].alive {
                continue;
            }
            let name = self.workers[slot].info.name.clone();
            let reason = format!(
                "worker {name:?} reported {count} tasks done whose results have not reached the sink at \
                 {sink} after {:.0} s, while the sink answers the ventilator; check the worker's --sink \
                 (its tasks go to other workers)",
                bound.as_secs_f64()
            );
            log::warn!("{}", crate::logging::printable(&reason));
            self.workers[slot].refused = true;
            let routing_id = self.workers[slot].routing_id.clone();
            let _ = send_to(
                socket,
                &routing_id,
                &Message::Refused {
                    kind: RefusalKind::ResultsLost,
                    reason,
                }
                .encode(),
            );
            self.lose_worker(slot);
        }
    }

    fn done(&mut self, routing_id: &[u8], done: &[crate::protocol::Done]) {
        let Some(&slot) = self.by_routing_id.get(routing_id) else {
            // A worker of this batch that has not greeted this ventilator yet (it restarted):
            // its hello follows within a heartbeat, and the sink's word decides what is done.
            log::debug!(
                "credit from {} before its hello; ignored",
                sockets::peer_name(routing_id)
            );
            return;
        };
        // One clock read per message, not per task.
        let now = Instant::now();
        self.workers[slot].last_seen = now;
        if !self.workers[slot].alive {
            // Declared gone already and its tasks handed on; its results still reach the
            // sink, which drops the duplicates.
            return;
        }
        for d in done {
            let Some(index) = usize::try_from(d.id).ok().filter(|&i| i < self.tasks.len()) else {
                self.reject(
                    routing_id,
                    format!(
                        "credit for task {} of a {}-task batch",
                        d.id,
                        self.tasks.len()
                    ),
                );
                continue;
            };
            if self.state[index] != TaskState::Assigned || self.owner[index] != slot as u32 {
                continue; // already reported or handed to another worker
            }
            self.release(slot, index);
            // Only a report that frees a task it held proves the worker and ends a stall.
            let worker = &mut self.workers[slot];
            worker.stalled = false;
            worker.proven = true;
            worker.last_report = now;
            self.learn_rate(slot, self.tasks[index].workload_ms, d.wall_us);
            if d.status == Status::Failed {
                log::warn!(
                    "worker {} failed task {}; handing it to another worker",
                    self.workers[slot].info.name,
                    d.id
                );
                self.requeue(index);
            } else {
                self.state[index] = TaskState::Reported;
                self.reported_log
                    .push_back((now, index as u32, slot as u32));
            }
        }
    }

    fn bye(&mut self, routing_id: &[u8]) {
        if let Some(&slot) = self.by_routing_id.get(routing_id) {
            if self.workers[slot].alive {
                log::debug!(
                    "worker {} left",
                    crate::logging::printable(&self.workers[slot].info.name)
                );
                self.lose_worker(slot);
            }
        }
    }

    /// Frees the credit a task held at its owner.
    fn release(&mut self, slot: usize, index: usize) {
        let worker = &mut self.workers[slot];
        worker.assigned = worker.assigned.saturating_sub(1);
        worker.assigned_ms = worker
            .assigned_ms
            .saturating_sub(u64::from(self.tasks[index].workload_ms));
    }

    fn requeue(&mut self, index: usize) {
        self.pending_count += 1;
        self.state[index] = TaskState::Requeued;
        self.owner[index] = NO_OWNER;
        self.pending.push_front(index as u32);
    }

    /// A worker is gone: every task it held that the sink does not hold goes to others.
    /// Costs what the worker was given and not yet seen held, never a scan of the batch.
    fn lose_worker(&mut self, slot: usize) {
        self.workers[slot].alive = false;
        self.workers[slot].assigned = 0;
        self.workers[slot].assigned_ms = 0;
        let given = std::mem::take(&mut self.workers[slot].given);
        let mut handed_on = 0;
        // Backwards, so the requeued tasks keep their dispatch order at the front.
        for &(_, index) in given.iter().rev() {
            let i = index as usize;
            if self.owner[i] == slot as u32
                && matches!(self.state[i], TaskState::Assigned | TaskState::Reported)
            {
                self.requeue(i);
                handed_on += 1;
            }
        }
        let name = crate::logging::printable(&self.workers[slot].info.name).into_owned();
        self.gone_log.warn(|| {
            format!(
                "worker {name} is gone; handing its {handed_on} unfinished tasks to other workers"
            )
        });
    }

    /// Folds a report's wall time into the worker's measured speed.
    fn learn_rate(&mut self, slot: usize, workload_ms: u32, wall_us: u32) {
        if workload_ms == 0 {
            return;
        }
        let sample = f64::from(wall_us) / f64::from(workload_ms);
        let rate = &mut self.workers[slot].us_per_ms;
        *rate = Some(rate.map_or(sample, |r| r * 0.8 + sample * 0.2));
    }

    /// How long `slot` may hold a task of `workload_ms` before another worker is given a
    /// backup: `factor` times what its measured speed predicts (nominal speed until it
    /// reports), plus the slack.
    fn straggle_bound(&self, slot: usize, workload_ms: u32) -> Duration {
        let us_per_ms = self.workers[slot].us_per_ms.unwrap_or(1000.0).max(1000.0);
        let expected_us = us_per_ms * f64::from(workload_ms) * self.backup.factor;
        self.backup.slack + Duration::from_secs_f64(expected_us.min(1e12) / 1e6)
    }

    /// Drops the front entries of a worker's list that no longer name a task it holds.
    fn prune_given(&mut self, slot: usize) {
        while let Some(&(_, index)) = self.workers[slot].given.front() {
            let i = index as usize;
            let ours = self.owner[i] == slot as u32
                && matches!(self.state[i], TaskState::Assigned | TaskState::Reported);
            if ours {
                break;
            }
            self.workers[slot].given.pop_front();
        }
    }

    /// A task held far longer than its worker's speed predicts, by a worker that still
    /// heartbeats (a straggler, or a worker whose task thread is stuck), is handed to
    /// another worker as a backup, as MapReduce does: the first result wins and the other
    /// is a duplicate. The straggler gets no new tasks until it reports again. Looks at
    /// each worker's oldest task only.
    fn back_up_stragglers(&mut self) {
        if self.alive_workers() < 2 {
            return;
        }
        for slot in 0..self.workers.len() {
            if !self.workers[slot].alive {
                continue;
            }
            self.prune_given(slot);
            let Some(&(given_at, index)) = self.workers[slot].given.front() else {
                continue;
            };
            let i = index as usize;
            if self.state[i] != TaskState::Assigned {
                continue;
            }
            let bound = self.straggle_bound(slot, self.tasks[i].workload_ms);
            // A queued task waited behind the ones before it: its time runs from the later
            // of when it was given and the worker's last report.
            let since = given_at.max(self.workers[slot].last_report);
            if since.elapsed() <= bound {
                continue;
            }
            // Every task it still holds unreported goes out again, oldest first.
            let held: Vec<u32> = self.workers[slot]
                .given
                .iter()
                .map(|&(_, index)| index)
                .filter(|&index| {
                    self.owner[index as usize] == slot as u32
                        && self.state[index as usize] == TaskState::Assigned
                })
                .collect();
            for &index in held.iter().rev() {
                self.release(slot, index as usize);
                self.requeue(index as usize);
            }
            self.workers[slot].stalled = true;
            self.backups += held.len() as u64;
            let name = crate::logging::printable(&self.workers[slot].info.name).into_owned();
            let count = held.len();
            self.gone_log.warn(|| {
                format!(
                    "worker {name} has held task {index} for {:.1} s (bound {:.1} s) while it heartbeats; \
                     handing its {count} unreported tasks to other workers as backups",
                    since.elapsed().as_secs_f64(),
                    bound.as_secs_f64()
                )
            });
        }
    }

    /// The sink acknowledged the batch again: it restarted and holds only `held` results
    /// (from its results file, or none). Everything we believed held is in doubt until the
    /// sink lists it; what it does not list is handed out again.
    fn sink_restarted(&mut self, held: u32) {
        log::warn!("the sink restarted holding {held} results; re-checking the batch against it");
        for index in 0..self.tasks.len() {
            if self.state[index] == TaskState::Held {
                self.state[index] = TaskState::Reported;
            }
        }
        self.held = 0;
        // What is in doubt now is the resync's to settle: no worker is to blame for results
        // a restarted sink lost.
        self.reported_log.clear();
        self.resync = Some((held as usize, Instant::now()));
        self.finish_resync_if_complete();
    }

    fn finish_resync_if_complete(&mut self) {
        if let Some((expected, _)) = self.resync {
            if self.held >= expected {
                self.resync = None;
                self.requeue_unconfirmed();
            }
        }
    }

    /// If the sink's list never completes (it lost messages, or restarted again), stop
    /// waiting for it after a few heartbeats.
    fn finish_resync_if_stale(&mut self) {
        if let Some((_, since)) = self.resync {
            if since.elapsed() > self.heartbeat.timeout() {
                self.resync = None;
                self.requeue_unconfirmed();
            }
        }
    }

    /// Hands out again every task reported done whose result the sink does not hold.
    fn requeue_unconfirmed(&mut self) {
        let mut count = 0;
        for index in (0..self.tasks.len()).rev() {
            if self.state[index] == TaskState::Reported {
                self.requeue(index);
                count += 1;
            }
        }
        if count > 0 {
            log::warn!("handing out {count} tasks again whose results the sink does not hold");
        }
    }

    fn mark_held(&mut self, ids: &[u32]) {
        for &id in ids {
            let index = id as usize;
            if index >= self.tasks.len() {
                self.reject(
                    b"sink",
                    format!("sink holds task {id} of a {}-task batch", self.tasks.len()),
                );
                continue;
            }
            match self.state[index] {
                TaskState::Held => continue,
                TaskState::Assigned => {
                    let slot = self.owner[index] as usize;
                    self.release(slot, index);
                }
                TaskState::Pending | TaskState::Requeued => self.pending_count -= 1,
                TaskState::Reported => {}
            }
            self.state[index] = TaskState::Held;
            self.held += 1;
        }
        self.finish_resync_if_complete();
    }

    fn heartbeat_workers(&mut self, socket: &zmq::Socket) {
        let beat = Message::Heartbeat {
            batch: self.batch_id,
        }
        .encode();
        for slot in 0..self.workers.len() {
            if self.workers[slot].alive
                && send_to(socket, &self.workers[slot].routing_id, &beat) == SendOutcome::Gone
            {
                self.lose_worker(slot);
            }
        }
    }

    /// Sends a heartbeat to every live worker that holds tasks: one whose connection is
    /// gone fails at once (ROUTER_MANDATORY) and its tasks go to others.
    fn probe_holders(&mut self, socket: &zmq::Socket) {
        let beat = Message::Heartbeat {
            batch: self.batch_id,
        }
        .encode();
        for slot in 0..self.workers.len() {
            if self.workers[slot].alive
                && self.workers[slot].assigned > 0
                && send_to(socket, &self.workers[slot].routing_id, &beat) == SendOutcome::Gone
            {
                self.lose_worker(slot);
            }
        }
    }

    fn expire_silent_workers(&mut self, _socket: &zmq::Socket) {
        let timeout = self.heartbeat.timeout();
        for slot in 0..self.workers.len() {
            if self.workers[slot].alive && self.workers[slot].last_seen.elapsed() > timeout {
                let name = crate::logging::printable(&self.workers[slot].info.name).into_owned();
                let silent = self.workers[slot].last_seen.elapsed().as_secs_f64();
                self.gone_log
                    .warn(|| format!("worker {name} silent for {silent:.1} s; declaring it gone"));
                self.lose_worker(slot);
            }
        }
    }

    /// Whether `slot` may take `task` now. A worker always gets a task when it has none.
    /// Beyond that it may hold up to its window (so it never waits a round trip between
    /// tasks), but only while more tasks are pending than there are workers: near the end
    /// of a batch the last tasks wait here for whichever worker frees up first, instead of
    /// queueing behind a busy one while another idles. Tasks that cost nothing stream up to
    /// the larger cap, since they cannot make a tail.
    ///
    /// Whatever a worker asks for, it never holds more than its window (its pipeline depth,
    /// capped at [`MAX_HINTED_WINDOW`] or `--window` if larger), and never more than its
    /// share of what is left; a worker whose task was backed up gets nothing until it
    /// reports again.
    fn has_credit(&self, slot: usize, task: &Task, alive: usize) -> bool {
        let worker = &self.workers[slot];
        if worker.stalled {
            return false;
        }
        if worker.assigned == 0 {
            return true;
        }
        if worker.assigned_ms + u64::from(task.workload_ms) == 0 {
            let cap = if worker.proven {
                self.max_window
            } else {
                self.window
            };
            let share = self.pending_count.div_ceil(alive.max(1));
            return worker.assigned < cap && (worker.assigned as usize) < share.max(1);
        }
        let hinted = u32::from(worker.info.window_hint).min(MAX_HINTED_WINDOW);
        let window = self.window.max(hinted);
        worker.assigned < window && self.pending_count > alive
    }

    /// The next task still pending, without removing it.
    fn peek_pending(&mut self) -> Option<u32> {
        while let Some(&id) = self.pending.front() {
            if matches!(
                self.state[id as usize],
                TaskState::Pending | TaskState::Requeued
            ) {
                return Some(id);
            }
            self.pending.pop_front();
        }
        None
    }

    /// Hands out tasks to every worker with credit, one task per worker per round, so the
    /// longest tasks spread across workers; then one message per worker.
    fn dispatch(&mut self, socket: &zmq::Socket) {
        let slots = self.workers.len();
        if slots == 0 || self.pending_count == 0 {
            return;
        }
        // The workers that may take tasks, starting with a different one each call; each
        // round gives each of them one task, and a worker without credit drops out, so the
        // cost is one look at each worker per call plus one per task handed out.
        let mut entries: Vec<Outgoing> = (0..slots)
            .map(|step| (self.next_worker + step) % slots)
            .filter(|&slot| self.workers[slot].alive && !self.workers[slot].stalled)
            .map(|slot| Outgoing {
                slot,
                tasks: Vec::new(),
                again: Vec::new(),
            })
            .collect();
        let alive = self.alive_workers();
        let now = Instant::now();
        let mut active: Vec<usize> = (0..entries.len()).collect();
        'rounds: while !active.is_empty() {
            let mut still = Vec::with_capacity(active.len());
            for &e in &active {
                let slot = entries[e].slot;
                if entries[e].tasks.len() >= MAX_ITEMS_PER_MESSAGE {
                    continue;
                }
                let Some(id) = self.peek_pending() else {
                    break 'rounds;
                };
                let task = self.tasks[id as usize];
                if !self.has_credit(slot, &task, alive) {
                    continue;
                }
                self.pending.pop_front();
                self.pending_count -= 1;
                entries[e]
                    .again
                    .push(self.state[id as usize] == TaskState::Requeued);
                self.state[id as usize] = TaskState::Assigned;
                self.owner[id as usize] = slot as u32;
                self.workers[slot].given.push_back((now, id));
                self.workers[slot].assigned += 1;
                self.workers[slot].assigned_ms += u64::from(task.workload_ms);
                entries[e].tasks.push(task);
                still.push(e);
            }
            active = still;
        }
        self.next_worker = (self.next_worker + 1) % slots;
        for Outgoing { slot, tasks, again } in entries {
            if tasks.is_empty() {
                continue;
            }
            let message = Message::encode_tasks(self.batch_id, &self.job, &tasks);
            match send_to(socket, &self.workers[slot].routing_id, &message) {
                SendOutcome::Sent => {
                    log::trace!(
                        "sent {} to worker {}",
                        crate::report::plural(tasks.len() as u64, "task"),
                        crate::logging::printable(&self.workers[slot].info.name)
                    );
                    self.redispatched += again.iter().filter(|&&a| a).count() as u64;
                    if let Some(timeline) = &self.timeline {
                        tasks.iter().for_each(|t| timeline.sent(t.id));
                    }
                }
                SendOutcome::Gone => self.lose_worker(slot),
                SendOutcome::Busy => {
                    // Its queue is full: take the tasks back as they were.
                    for (task, &was_requeued) in tasks.iter().zip(&again).rev() {
                        let index = task.id as usize;
                        self.release(slot, index);
                        self.state[index] = if was_requeued {
                            TaskState::Requeued
                        } else {
                            TaskState::Pending
                        };
                        self.owner[index] = NO_OWNER;
                        self.pending.push_front(task.id);
                        self.pending_count += 1;
                    }
                }
            }
        }
    }
}

/// Tasks one dispatch call hands one worker, and which of them go out again.
struct Outgoing {
    slot: usize,
    tasks: Vec<Task>,
    again: Vec<bool>,
}

#[derive(Debug, PartialEq, Eq)]
enum SendOutcome {
    Sent,
    /// The peer is not connected (ROUTER_MANDATORY): it is gone.
    Gone,
    /// The peer's queue is full: try again later.
    Busy,
}

fn send_to(socket: &zmq::Socket, routing_id: &[u8], payload: &[u8]) -> SendOutcome {
    match socket.send_multipart([routing_id, payload], zmq::DONTWAIT) {
        Ok(()) => SendOutcome::Sent,
        Err(zmq::Error::EHOSTUNREACH) => SendOutcome::Gone,
        Err(zmq::Error::EAGAIN) => SendOutcome::Busy,
        Err(e) => {
            log::warn!("sending to worker {}: {e}", sockets::peer_name(routing_id));
            SendOutcome::Busy
        }
    }
}
