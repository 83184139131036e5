//! The ventilator's rules as a state machine: who holds which task, who has credit, when a
//! worker is gone, when a task goes out again, and when the batch is complete.
//!
//! No socket, clock, file or thread in here (CI greps for them). The ventilator's pump
//! feeds [`Dispatcher::handle`] decoded messages, send failures and ticks, each with the
//! time it happened, and carries out the [`Command`]s that come back, in order. A send that
//! fails comes back as an event before the pump reads anything else; a tick comes after the
//! pump has read everything waiting. Tests and the simulator drive it on a fake clock.
//!
//! Costs: a task handed out, reported or held costs O(1); losing a worker costs what it
//! held; a tick costs one look at each worker (heartbeats, silence), never at each task.

use crate::batch::{Job, Task};
use crate::chunking::{Carver, Plan, Policy};
use crate::claims::{clashes, name_taken, Claims, Holder};
use crate::heartbeat::Heartbeat;
use crate::intervals::IntervalSet;
use crate::protocol::{Done, Message, RefusalKind, Status, WorkerInfo, MAX_ITEMS_PER_MESSAGE};
use crate::text::{printable, RateLimited};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

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

/// Most tasks a worker's own window hint (a GPU's pipeline depth) can earn it; a peer that
/// asks for more gets this many. `--window` above it wins.
pub const MAX_HINTED_WINDOW: u32 = 16;
/// How often, in a batch's tail, the ventilator checks that the workers holding its last
/// tasks are still connected.
pub const TAIL_PROBE: Duration = Duration::from_millis(20);
/// How often a ventilator waiting for workers repeats what it waits for.
const WAIT_REMINDER: Duration = Duration::from_secs(5);
/// Most times the end game hands one task over: a faster worker idle later may take a
/// task a slower one took first; a task never goes back to a worker it was taken from.
const MAX_TAKEOVERS: u8 = 3;
/// Heartbeat timeouts a task reported done may wait for the sink to hold it, while the sink
/// answers, before its worker is taken to be delivering results nowhere.
const UNDELIVERED_TIMEOUTS: u32 = 4;
/// Heartbeat intervals of silence after which a worker's tasks are backed up (it is
/// declared gone only after `liveness` intervals).
const SILENT_BACKUP_BEATS: u32 = 3;
/// How long a ventilator with unfinished tasks and no workers waits between reminders.
const IDLE_REMINDER: Duration = Duration::from_secs(5);
/// When a ventilator waiting for the sink's acknowledgement first says so.
const FIRST_SINK_NAG: Duration = Duration::from_secs(2);
/// And how often after that.
const SINK_NAG: Duration = Duration::from_secs(5);

/// What the dispatcher needs to know of its batch and settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub batch_id: u64,
    /// Random per ventilator process: tells the sink a restarted ventilator from a repeat.
    pub session: u64,
    /// The batch's tasks, indexed by id.
    pub tasks: Vec<Task>,
    /// Task ids in the order they are first handed out.
    pub order: Vec<u32>,
    pub job: Job,
    pub expected_ms: u64,
    pub longest_ms: u32,
    /// Workers to wait for before the batch starts; 0 starts at once.
    pub wait_workers: usize,
    /// How long to wait for them, and for the sink's acknowledgement.
    pub wait_timeout: Duration,
    pub window: u32,
    pub max_window: u32,
    pub heartbeat: Heartbeat,
    pub backup: Backup,
    pub sink_timeout: Duration,
    /// Continue a batch the sink already holds results of.
    pub resume: bool,
    /// Ask workers to exit when the batch is complete.
    pub shutdown_workers: bool,
    /// Where workers connect and where the sink is, for messages only.
    pub endpoint: String,
    pub sink: String,
    /// The farm is exactly this many workers (a one-process run): once every one of them
    /// declined the batch's kernel, nothing can run it and the batch stops. 0: workers may
    /// still join, so the ventilator waits for one that can.
    pub fixed_workers: usize,
    /// A divisible job: its tasks are chunks carved as workers ask (`tasks` and `order`
    /// start empty). `None` for a task list.
    pub chunking: Option<Plan>,
    /// Tries a task gets (`--max-attempts`): after this many failures it is handed out no
    /// more, and the sink counts it failed.
    pub max_attempts: u32,
    /// Digests of the tasks' input names, by id (a job's one input: one), announced so
    /// the sink can check the name each result carries; empty without named inputs.
    pub names: Vec<u64>,
    /// Whether a live view watches: the dispatcher then says what it observes as
    /// [`Command::Observed`].
    pub observe: bool,
    /// How tasks travel: a user kernel's source first, inputs one task a message,
    /// compressed or not.
    pub framing: Framing,
}

/// How tasks travel to a worker (the pump frames what the dispatcher says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framing {
    /// The batch has a user kernel: its source goes to each worker before its first task,
    /// and again after each greeting.
    pub kernel: bool,
    /// Tasks carry input files: one task a message.
    pub inputs: bool,
    /// Inputs may travel compressed to a worker that speaks LZ4 (not `--no-compress`).
    pub compress: bool,
}

/// A worker, by its place in the dispatcher's table (stable for the batch).
pub type WorkerId = u32;

/// What happened, as the pump saw it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A decoded message on the tasks socket from the peer with this routing id.
    FromWorker {
        routing_id: Vec<u8>,
        message: Message,
    },
    /// A decoded message from the sink.
    FromSink(Message),
    /// A frame that was not one of our messages (the pump could not decode it).
    Rejected { peer: String, why: String },
    /// Sending to this worker failed: it is not connected.
    Unreachable(WorkerId),
    /// Tasks sent to this worker came back: its queue is full. They are taken back.
    Bounced {
        worker: WorkerId,
        tasks: Vec<Task>,
        again: Vec<bool>,
    },
    /// The pump has handled everything waiting (or a deadline passed): run what is due and
    /// hand out tasks.
    Tick,
    /// Handshakes refused by authentication so far (a running total), for the report.
    Refused(u64),
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A message to a worker; if it is not connected, answer with [`Event::Unreachable`].
    ToWorker { worker: WorkerId, message: Message },
    /// Tasks for a worker, in one message; answer a full queue with [`Event::Bounced`]
    /// carrying them back, a lost connection with [`Event::Unreachable`]. `again` marks
    /// those handed out before. With `kernel`, the batch's kernel source goes first (a
    /// full queue then bounces the tasks too); with `compress`, inputs may travel
    /// compressed. A batch with inputs has one task a command ([`Framing`]).
    Tasks {
        worker: WorkerId,
        tasks: Vec<Task>,
        again: Vec<bool>,
        kernel: bool,
        compress: bool,
    },
    /// A message to a peer that is not (or no longer) a worker of ours: refusals.
    Reply {
        routing_id: Vec<u8>,
        message: Message,
    },
    /// A message to the sink (never waits; the batch is announced again every heartbeat).
    ToSink(Message),
    /// The sink holds every result; the final counters and `End`s have been issued.
    Complete,
    /// The batch cannot go on.
    Stop(Stopped),
    /// Something observed, for `--events` (phase changes, workers joining and lost, the
    /// count of workers waited for).
    Note(crate::events::Note),
    /// Something the live view counts (only with [`DispatchConfig::observe`]).
    Observed(Observed),
}

/// What the dispatcher tells a live view, as it happens: the view keeps its tallies from
/// these and reads the rest from a [`Snapshot`], never the dispatcher itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// A live worker of the batch reported these tasks, each with its items (a chunk's;
    /// one for a task of a list).
    Reported {
        worker: WorkerId,
        done: Vec<Done>,
        items: Vec<u64>,
    },
    /// The sink holds these tasks or chunks (some perhaps said before).
    Held { ids: Vec<u32> },
    /// The sink's side of the batch, as it last said.
    SinkSide(crate::protocol::SinkSide),
    /// A worker was declared gone (silent, left, unreachable, refused, set aside): what it
    /// held went to others.
    Lost { worker: WorkerId },
    /// A worker declared gone was heard again and takes tasks in its old place.
    Back { worker: WorkerId },
}

/// Why a batch stopped before it was complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Stopped {
    #[error(
        "timed out after {waited:.1} s waiting for {want} ({ready} ready): start workers with \
         `conquer worker --ventilator tcp://HOST:PORT --sink tcp://HOST:PORT` against {endpoint}, or \
         lower --wait-workers / raise --wait-timeout"
    )]
    NoWorkers {
        waited: f64,
        want: String,
        ready: usize,
        endpoint: String,
    },
    #[error("timed out after {waited:.1} s waiting for the sink at {sink}: start `conquer sink` there or pass --sink")]
    NoSink { waited: f64, sink: String },
    #[error(
        "the sink already holds {held} results of batch {batch:016x}: pass --resume to finish that \
         batch, or start a new sink (`conquer sink --overwrite` on its results file) to run it afresh"
    )]
    SinkHoldsResults { held: u32, batch: u64 },
    #[error("the sink at {sink} refused the batch: {reason}")]
    SinkRefused { sink: String, reason: String },
    #[error("no worker can run this batch: all {workers} declined it; the last said: {reason}")]
    AllDeclined { workers: usize, reason: String },
    #[error(
        "no word from the sink at {sink} for {silent:.0} s (--sink-timeout): it is gone or \
         unreachable; {held} of {tasks} tasks are held there. Start it again (with --results F \
         --resume if it wrote results) and restart this ventilator with --resume"
    )]
    SinkSilent {
        sink: String,
        silent: f64,
        held: usize,
        tasks: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `wait_workers` workers.
    Waiting,
    /// The batch is announced; waiting for the sink's acknowledgement (`holding`: how many
    /// results it already holds, whose ids must arrive before dispatch begins).
    Announcing {
        holding: Option<usize>,
    },
    Dispatching,
    /// A divisible job ended while chunks were out (a search found its hits): the workers
    /// were told to abandon them; waiting until none holds one, or `until`.
    Draining {
        since: Instant,
        until: Instant,
    },
    /// Complete or stopped: nothing more happens.
    Over,
}

const NO_OWNER: u32 = u32::MAX;

/// A worker's speed as a multiple of nominal (1.0 until it reports).
fn speed_of(worker: &WorkerSlot) -> f64 {
    worker.us_per_ms.map_or(1.0, |r| 1000.0 / r.max(1e-3))
}

/// What carving a chunk for a worker came to.
enum Carved {
    Chunk(u32),
    /// Not for this worker now (it holds a chunk, or is stalled).
    NotNow,
    /// The job is all handed out.
    Nothing,
}

/// Whether a worker may take a task now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credit {
    Yes,
    /// Not now, and not until it reports (or it is gone, or stalled).
    None,
    /// Not while tasks are this scarce: it may again when tasks are requeued.
    Scarce,
}

/// A worker as the dispatcher sees it.
#[derive(Debug, Clone)]
pub struct WorkerSlot {
    pub routing_id: Vec<u8>,
    pub info: WorkerInfo,
    pub alive: bool,
    last_seen: Instant,
    /// Tasks assigned and not yet reported: what its credit is spent on.
    pub assigned: u32,
    /// Sum of their workloads.
    assigned_ms: u64,
    /// Tasks it reported done whose results the sink has not said it holds. Credit spent
    /// on them comes back on the report, but a worker whose reports run this far ahead of
    /// its results (past [`Dispatcher::unheld_cap`]) gets no task until the sink catches
    /// up: a peer that says "done" and never delivers swallows a window, not the batch.
    unheld: u32,
    /// Tasks handed to it, in order, with when: what it may still hold (entries go stale
    /// when a task is held or handed elsewhere, and are dropped from the front). Losing the
    /// worker costs what it held, not a scan of the batch; its oldest task tells whether it
    /// straggles.
    given: VecDeque<(Instant, u32)>,
    /// Measured wall time per nominal ms of workload (smoothed), from its reports.
    us_per_ms: Option<f64>,
    /// A task of its was given to another worker as a backup: no new tasks until it
    /// reports again.
    pub stalled: bool,
    /// The stall came from silence, not from a task held too long: it ends when the
    /// worker is heard again.
    stalled_silent: bool,
    /// When it last reported a task it held: a worker runs its tasks one after another, so
    /// a queued task's time starts no earlier than this.
    last_report: Instant,
    /// Turned away (its results never reached the sink): its greetings are not believed.
    pub refused: bool,
    /// It cannot run this batch's kernel (said so with `decline`): it gets none of its
    /// tasks, and its greetings do not bring it back.
    pub declined: bool,
    /// Whether it ever reported a task done: until then it is on probation and gets no
    /// more than `--window` tasks of a zero-work stream, so a flood of peers that greet and
    /// vanish costs a few tasks each.
    proven: bool,
    /// In the ready queue (may have credit).
    queued: bool,
    /// Where its tasks of the dispatch call in progress are collected.
    outgoing: Option<u32>,
    /// In the tail queue (dropped from the ready queue while tasks were scarce).
    in_tail: bool,
    /// In the waiting list (idle while every queued copy excluded it).
    in_waiting: bool,
    /// Sent the batch's kernel source since it last greeted (a greeting may follow a
    /// reconnect, which drops what was queued to the old connection).
    has_kernel: bool,
}

impl WorkerSlot {
    /// When anything was last heard from it.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    fn new(routing_id: Vec<u8>, info: WorkerInfo, now: Instant) -> WorkerSlot {
        WorkerSlot {
            routing_id,
            info,
            alive: true,
            last_seen: now,
            assigned: 0,
            assigned_ms: 0,
            unheld: 0,
            given: VecDeque::new(),
            us_per_ms: None,
            stalled: false,
            stalled_silent: false,
            last_report: now,
            refused: false,
            declined: false,
            proven: false,
            queued: false,
            in_tail: false,
            in_waiting: false,
            has_kernel: false,
            outgoing: None,
        }
    }
}

/// The dispatch state of one batch.
pub struct Dispatcher {
    config: DispatchConfig,
    phase: Phase,
    state: Vec<TaskState>,
    owner: Vec<u32>,
    /// Task ids to hand out; requeued tasks go to the front. May hold ids no longer
    /// pending (held through a late result): those are skipped when reached.
    pending: VecDeque<u32>,
    /// Tasks in the `Pending` or `Requeued` state (the queue may also hold stale entries).
    pending_count: usize,
    /// Their workloads, summed.
    pending_ms: u64,
    /// Workloads assigned to live workers and not yet reported, summed.
    assigned_ms: u64,
    /// Live workers' speeds (nominal ms per ms: 1.0 until a worker's reports say
    /// otherwise), summed; recomputed every heartbeat so rounding never drifts.
    speed: f64,
    held: usize,
    workers: Vec<WorkerSlot>,
    by_routing_id: HashMap<Vec<u8>, WorkerId>,
    /// Live workers by name: a newcomer's name is checked without a scan.
    by_name: HashMap<String, WorkerId>,
    alive: usize,
    /// Workers that may have credit, in turn: handing out a task costs O(1), not a look at
    /// every worker. A worker leaves it when it has no credit and comes back when it may
    /// (a report frees a task, it joins, a stall ends).
    ready: VecDeque<WorkerId>,
    /// Workers that left `ready` because tasks were scarce (the tail rule, a zero-work
    /// share): they come back when tasks are requeued and more are pending than workers
    /// live (until then each gets more when it reports).
    tail: Vec<WorkerId>,
    /// Idle workers that left `ready` because every copy queued for `--replicate`
    /// excluded them: they come back when any task is requeued or a copy queued.
    waiting: Vec<WorkerId>,
    /// Workers whose message of this dispatch call is full: back in the queue after it.
    deferred: Vec<WorkerId>,
    /// Newcomers whose name a live worker holds ([`crate::claims`]): admitted if that
    /// worker turns out to be gone (the heartbeat sent to it fails), refused otherwise.
    claims: Claims<WorkerId>,
    /// Dispatch has begun (the sink acknowledged the batch).
    dispatching: bool,
    redispatched: u64,
    rejected: u64,
    refused: u64,
    backups: u64,
    /// Tasks in the order workers reported them done, with when and by whom: the oldest
    /// still not held tells of a worker whose results go nowhere.
    reported_log: VecDeque<(Instant, u32, u32)>,
    /// After a sink restart: how many held results it announced, and since when we wait for
    /// their ids before handing out again every task it does not hold.
    resync: Option<(usize, Instant)>,
    started: Instant,
    /// Wall-clock ms at `started` (set when the batch is announced).
    started_unix_ms: u64,
    /// `started` in wall-clock terms: (an instant, the Unix ms at that instant).
    unix_base: (Instant, u64),
    next_beat: Instant,
    next_probe: Instant,
    heard_from_sink: Instant,
    sink_silence_said: bool,
    idle_since: Option<Instant>,
    /// Workers that declined the batch (they cannot run its kernel).
    declines: usize,
    last_said: Option<(usize, Instant)>,
    /// Observations not yet handed out, and the phase last said.
    notes: Vec<crate::events::Note>,
    observed: Vec<Observed>,
    said_phase: Option<&'static str>,
    next_nag: Instant,
    reject_log: RateLimited,
    refuse_log: RateLimited,
    /// Workers lost or backed up: summarised when many go at once.
    gone_log: RateLimited,
    /// A divisible job: what is left to carve, and each worker's rate.
    carver: Option<Carver>,
    /// Every chunk carved, by first item (chunks are disjoint): a range the sink holds
    /// names the chunks it covers.
    chunk_at: BTreeMap<u64, u32>,
    /// Items the sink says it holds (a divisible job).
    covered: IntervalSet,
    /// `held-items` messages heard since the sink's acknowledgement: a divisible job's
    /// count for the acknowledgement's `held` (ranges, not tasks).
    ranges_heard: usize,
    /// Items of chunks handed out again after their worker was lost or failed them.
    items_redone: u64,
    /// A divisible job that ended with chunks out: how long until every worker was idle.
    drained: Option<Duration>,
    /// Chunks found held, not yet taken by the live view.
    /// Failures so far of tasks that failed (by index): only those, so a batch that fails
    /// nothing costs nothing here.
    failures: HashMap<u32, u32>,
    /// Tasks given up on (`--max-attempts` failures) that the sink has not yet said it
    /// holds: told again every heartbeat.
    gave_up: Vec<u32>,
    /// Workers' failures, logged at a bounded rate.
    fail_log: RateLimited,
    /// How often each task was handed over in the end game (at most [`MAX_TAKEOVERS`]).
    taken_over: HashMap<u32, u8>,
    /// Workers a task was taken from while they still ran it (a backup, a takeover): they
    /// never take it over again, and their late report of it, once, measures their speed.
    ran_by: HashMap<u32, Vec<WorkerId>>,
    /// Tasks the sink asked to run again (`--replicate`), with the workers whose copies it
    /// has: they are handed out from `replicas`, first to a worker not among them.
    exclude: HashMap<u32, Vec<String>>,
    replicas: VecDeque<u32>,
    replica_set: std::collections::HashSet<u32>,
}

/// Replicas looked at for one worker before it is left to others.
const REPLICA_SCAN: usize = 64;

/// The in-flight task the end game would take over.
#[derive(Clone, Copy)]
struct LastToFinish {
    index: usize,
    /// Its holder's predicted time left, in µs.
    left_us: f64,
    /// How long its holder has run it, in µs.
    running_us: f64,
}

/// Counters for the summary and the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub workers_seen: usize,
    pub redispatched: u64,
    pub rejected: u64,
    /// Handshakes refused by authentication.
    pub refused: u64,
    pub backups: u64,
    pub held: usize,
    /// A divisible job's chunks handed out, and items handed out again.
    pub chunks: u64,
    pub items_redone: u64,
}

/// Where the dispatcher stands, as plain data: what a live view reads besides the
/// [`Observed`] commands, taken when it asks (about twice a second).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub batch: u64,
    pub phase: &'static str,
    pub over: bool,
    pub tasks: usize,
    pub pending: usize,
    /// A divisible job's items held and its items in all; `None` for a task list.
    pub items: Option<(u64, u64)>,
    /// Nominal work pending or out, in ms.
    pub work_left_ms: u64,
    pub counters: Counters,
    /// By slot.
    pub workers: Vec<WorkerView>,
}

/// A worker in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub name: String,
    pub backend: String,
    pub adapter: String,
    pub alive: bool,
    /// Tasks it holds.
    pub assigned: u32,
    pub last_seen: Instant,
}

impl Dispatcher {
    /// Where it stands now, for a live view.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            batch: self.batch_id(),
            phase: self.phase_name(),
            over: self.is_over(),
            tasks: self.len(),
            pending: self.pending_count(),
            items: self.items_progress(),
            work_left_ms: self.work_left_ms(),
            counters: self.counters(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerView {
                    name: w.info.name.clone(),
                    backend: w.info.backend.clone(),
                    adapter: w.info.adapter.clone(),
                    alive: w.alive,
                    assigned: w.assigned,
                    last_seen: w.last_seen,
                })
                .collect(),
        }
    }

    /// A dispatcher for one batch; `now` and `unix_ms` are the same moment on the pump's
    /// monotonic and wall clocks (the wall clock only stamps the batch's start).
    pub fn new(config: DispatchConfig, now: Instant, unix_ms: u64) -> Dispatcher {
        let n = config.tasks.len();
        let pending: VecDeque<u32> = config.order.iter().copied().collect();
        Dispatcher {
            phase: Phase::Waiting,
            state: vec![TaskState::Pending; n],
            owner: vec![NO_OWNER; n],
            pending_count: pending.len(),
            pending_ms: config.tasks.iter().map(|t| u64::from(t.workload_ms)).sum(),
            assigned_ms: 0,
            speed: 0.0,
            pending,
            held: 0,
            workers: Vec::new(),
            by_routing_id: HashMap::new(),
            by_name: HashMap::new(),
            alive: 0,
            ready: VecDeque::new(),
            tail: Vec::new(),
            waiting: Vec::new(),
            deferred: Vec::new(),
            claims: Claims::default(),
            dispatching: false,
            redispatched: 0,
            rejected: 0,
            refused: 0,
            backups: 0,
            reported_log: VecDeque::new(),
            resync: None,
            started: now,
            started_unix_ms: unix_ms,
            unix_base: (now, unix_ms),
            next_beat: now,
            next_probe: now,
            heard_from_sink: now,
            sink_silence_said: false,
            idle_since: None,
            declines: 0,
            last_said: None,
            notes: Vec::new(),
            observed: Vec::new(),
            said_phase: None,
            next_nag: now,
            reject_log: RateLimited::new(5, Duration::from_secs(1)),
            refuse_log: RateLimited::new(5, Duration::from_secs(1)),
            gone_log: RateLimited::new(5, Duration::from_secs(1)),
            carver: config.chunking.map(Carver::new),
            chunk_at: BTreeMap::new(),
            covered: IntervalSet::new(),
            ranges_heard: 0,
            items_redone: 0,
            drained: None,
            failures: HashMap::new(),
            gave_up: Vec::new(),
            fail_log: RateLimited::new(5, Duration::from_secs(1)),
            taken_over: HashMap::new(),
            ran_by: HashMap::new(),
            exclude: HashMap::new(),
            replicas: VecDeque::new(),
            replica_set: std::collections::HashSet::new(),
            config,
        }
    }

    /// Handles one event at `now`, appending what to do to `out`.
    pub fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Command>) {
        if self.phase == Phase::Over {
            self.after_the_batch(event);
            out.extend(self.observed.drain(..).map(Command::Observed));
            return;
        }
        self.act(now, event, out);
        let phase = self.phase_name();
        if self.said_phase != Some(phase) {
            self.said_phase = Some(phase);
            self.note(crate::events::Note::Phase {
                phase: phase.to_owned(),
            });
        }
        out.extend(self.notes.drain(..).map(Command::Note));
        out.extend(self.observed.drain(..).map(Command::Observed));
    }

    /// After the batch nothing is dispatched; a live view still hears workers' last reports
    /// and the sink's side (it lingers while the sink writes the picture).
    fn after_the_batch(&mut self, event: Event) {
        let batch_id = self.config.batch_id;
        match event {
            Event::FromWorker {
                routing_id,
                message: Message::Done { batch, done },
            } if batch == batch_id && self.config.observe => {
                let Some(&slot) = self.by_routing_id.get(&routing_id) else {
                    return;
                };
                if self.workers[slot as usize].alive {
                    let items = done.iter().map(|d| self.task_items(d.id)).collect();
                    self.observe(Observed::Reported {
                        worker: slot,
                        done,
                        items,
                    });
                }
            }
            Event::FromSink(Message::SinkSide { batch, side }) if batch == batch_id => {
                self.observe(Observed::SinkSide(side))
            }
            _ => {}
        }
    }

    /// Keeps what the live view counts for the commands of this event, if one watches.
    fn observe(&mut self, observed: Observed) {
        if self.config.observe {
            self.observed.push(observed);
        }
    }

    /// Keeps an observation for the commands of this event.
    fn note(&mut self, note: crate::events::Note) {
        self.notes.push(note);
    }

    /// A worker's state as the ventilator sees it changed.
    fn note_worker(&mut self, slot: WorkerId, state: &str, silent: Option<Duration>) {
        let name = self.workers[slot as usize].info.name.clone();
        self.note(crate::events::Note::Worker {
            name,
            state: state.to_owned(),
            silent_ms: silent.map(|d| d.as_millis() as u64),
        });
    }

    fn act(&mut self, now: Instant, event: Event, out: &mut Vec<Command>) {
        match event {
            Event::FromWorker {
                routing_id,
                message,
            } => {
                self.settle_claims(now, out);
                self.on_worker(now, routing_id, message, out)
            }
            Event::FromSink(message) => {
                self.settle_claims(now, out);
                self.on_sink(now, message, out)
            }
            Event::Rejected { peer, why } => self.reject_at(now, &peer, why),
            Event::Unreachable(worker) => self.unreachable(now, worker, out),
            Event::Bounced {
                worker,
                tasks,
                again,
            } => self.bounced(worker, &tasks, &again),
            Event::Tick => {
                self.settle_claims(now, out);
                self.tick(now, out)
            }
            Event::Refused(total) => self.refused = self.refused.max(total),
        }
        if let Phase::Draining { since, until } = self.phase {
            let idle = !self.workers.iter().any(|w| w.alive && w.assigned > 0);
            if idle || now >= until {
                if idle {
                    self.drained = Some(now.duration_since(since));
                } else {
                    // Not a time to idle: the report says nothing rather than this wait.
                    log::warn!(
                        "workers still hold chunks {:.1} s after the job ended; not waiting for them",
                        now.duration_since(since).as_secs_f64()
                    );
                }
                self.complete(out);
            }
        }
    }

    /// The earliest time something is due without any message arriving: the pump's poll
    /// timeout.
    pub fn next_deadline(&self) -> Instant {
        let mut at = self.next_beat;
        if let Phase::Draining { until, .. } = self.phase {
            at = at.min(until);
        }
        if self.phase == Phase::Dispatching && self.in_tail() && self.held < self.len() {
            at = at.min(self.next_probe);
        }
        at
    }

    /// Whether the sink acknowledged the batch and tasks began to go out.
    pub fn has_dispatched(&self) -> bool {
        self.dispatching
    }

    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    pub fn len(&self) -> usize {
        self.config.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.config.tasks.is_empty()
    }

    pub fn batch_id(&self) -> u64 {
        self.config.batch_id
    }

    pub fn job(&self) -> &Job {
        &self.config.job
    }

    pub fn worker(&self, id: WorkerId) -> &WorkerSlot {
        &self.workers[id as usize]
    }

    /// The worker with this routing id, if it greeted this ventilator.
    pub fn worker_id(&self, routing_id: &[u8]) -> Option<WorkerId> {
        self.by_routing_id.get(routing_id).copied()
    }

    /// Where the batch stands, in a word (for the live view).
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Waiting => "waiting",
            Phase::Announcing { .. } => "announcing",
            Phase::Dispatching => "dispatching",
            Phase::Draining { .. } => "draining",
            Phase::Over => "over",
        }
    }

    pub fn workers(&self) -> &[WorkerSlot] {
        &self.workers
    }

    pub fn alive_workers(&self) -> usize {
        self.alive
    }

    pub fn task_state(&self, id: u32) -> TaskState {
        self.state[id as usize]
    }

    /// The worker holding task `id`, if one does.
    pub fn owner(&self, id: u32) -> Option<WorkerId> {
        let o = self.owner[id as usize];
        (o != NO_OWNER).then_some(o)
    }

    pub fn pending_count(&self) -> usize {
        self.pending_count
    }

    /// A divisible job's items: (held by the sink, in all); None for a task list.
    pub fn items_progress(&self) -> Option<(u64, u64)> {
        let carver = self.carver.as_ref()?;
        Some((self.covered.covered(), carver.plan().items))
    }

    /// Nominal work (ms of workload) of the tasks not yet done: pending, requeued and out
    /// with a worker. What a task list's ETA is made from.
    pub fn work_left_ms(&self) -> u64 {
        self.pending_ms + self.assigned_ms
    }

    /// The items chunk `id` covers (0 for a task of a task list, or an unknown id).
    pub fn task_items(&self, id: u32) -> u64 {
        self.config
            .tasks
            .get(id as usize)
            .map_or(0, |t| u64::from(t.items))
    }

    pub fn counters(&self) -> Counters {
        Counters {
            workers_seen: self.workers.len(),
            redispatched: self.redispatched,
            rejected: self.rejected,
            refused: self.refused,
            backups: self.backups,
            held: self.held,
            chunks: self.carver.as_ref().map_or(0, Carver::carved),
            items_redone: self.items_redone,
        }
    }

    /// Checks the running sums against the tables they summarise (tests only: it scans).
    #[cfg(test)]
    pub(crate) fn audit(&self) -> Result<(), String> {
        let mut pending_ms = 0;
        let mut assigned_ms = 0;
        for (i, task) in self.config.tasks.iter().enumerate() {
            match self.state[i] {
                TaskState::Pending | TaskState::Requeued => {
                    pending_ms += u64::from(task.workload_ms)
                }
                TaskState::Assigned => assigned_ms += u64::from(task.workload_ms),
                _ => {}
            }
        }
        let alive = self.workers.iter().filter(|w| w.alive).count();
        let speed: f64 = self.workers.iter().filter(|w| w.alive).map(speed_of).sum();
        let per_worker: u64 = self
            .workers
            .iter()
            .filter(|w| w.alive)
            .map(|w| w.assigned_ms)
            .sum();
        if (pending_ms, assigned_ms, alive) != (self.pending_ms, self.assigned_ms, self.alive)
            || per_worker != assigned_ms
            || (speed - self.speed).abs() > 1e-6 * speed.max(1.0)
        {
            return Err(format!(
                "sums drifted: pending_ms {pending_ms} vs {}, assigned_ms {assigned_ms} vs {} \
                 (workers {per_worker}), alive {alive} vs {}, speed {speed} vs {}",
                self.pending_ms, self.assigned_ms, self.alive, self.speed
            ));
        }
        // The carver sizes chunks for the live workers: the same ones.
        if let Some(carver) = &self.carver {
            if carver.workers() != alive {
                return Err(format!(
                    "the carver counts {} workers, {alive} are alive",
                    carver.workers()
                ));
            }
        }
        Ok(())
    }

    /// Entries in the queues that grow with events rather than with the batch: the
    /// pending queue, the reported log and each worker's list of tasks given. Each is
    /// pruned so that it stays within a small multiple of the batch and the workers.
    pub fn queue_entries(&self) -> usize {
        self.pending.len()
            + self.reported_log.len()
            + self.ready.len()
            + self.tail.len()
            + self.waiting.len()
            + self.workers.iter().map(|w| w.given.len()).sum::<usize>()
    }

    fn batch_message(&self) -> Message {
        Message::Batch {
            batch: self.config.batch_id,
            session: self.config.session,
            started_unix_ms: self.started_unix_ms,
            // A divisible job's chunks are counted by items (the job's), not by tasks.
            task_count: if self.carver.is_some() {
                0
            } else {
                self.len() as u32
            },
            expected_ms: self.config.expected_ms,
            longest_ms: self.config.longest_ms,
            job: self.config.job,
            names: self.config.names.clone(),
        }
    }

    fn stats(&self, last: bool) -> Message {
        Message::Stats {
            batch: self.config.batch_id,
            redispatched: self.redispatched,
            rejected: self.rejected,
            refused: self.refused,
            chunks: self.carver.as_ref().map_or(0, Carver::carved),
            items_redone: self.items_redone,
            cancel_us: self.drained.map_or(0, |d| d.as_micros().max(1) as u64),
            // Counted where inputs are sent: the ventilator's pump fills them in.
            inputs_wire: 0,
            inputs: 0,
            last,
        }
    }

    fn heartbeat(&self) -> Message {
        Message::Heartbeat {
            batch: self.config.batch_id,
        }
    }

    // ---- phases -------------------------------------------------------------------------

    fn tick(&mut self, now: Instant, out: &mut Vec<Command>) {
        match self.phase {
            Phase::Waiting => self.tick_waiting(now, out),
            Phase::Announcing { .. } => self.tick_announcing(now, out),
            Phase::Dispatching => self.tick_dispatching(now, out),
            Phase::Draining { .. } | Phase::Over => {}
        }
    }

    fn tick_waiting(&mut self, now: Instant, out: &mut Vec<Command>) {
        let want = self.config.wait_workers;
        if now >= self.next_beat {
            self.next_beat = now + self.config.heartbeat.interval;
            self.heartbeat_workers(out);
            self.expire_silent_workers(now);
        }
        let ready = self.alive;
        if ready >= want {
            if want > 0 {
                log::info!("{ready} of {want} workers ready; starting the batch");
            }
            self.announce(now, out);
            return;
        }
        if self.last_said.is_none_or(|(n, _)| n != ready) {
            self.note(crate::events::Note::Workers {
                ready,
                wanted: want,
            });
        }
        let due = self
            .last_said
            .is_none_or(|(n, at)| n != ready || now.duration_since(at) >= WAIT_REMINDER);
        if due {
            log::info!(
                "waiting for {}: {ready} ready (workers connect to {})",
                crate::report::plural(want as u64, "worker"),
                self.config.endpoint
            );
            self.last_said = Some((ready, now));
        }
        let waited = now.duration_since(self.started);
        if waited >= self.config.wait_timeout {
            self.stop(
                Stopped::NoWorkers {
                    waited: waited.as_secs_f64(),
                    want: crate::report::plural(want as u64, "worker"),
                    ready,
                    endpoint: self.config.endpoint.clone(),
                },
                out,
            );
        }
    }

    /// The batch starts now, when it is first announced: waiting for workers is not part
    /// of its elapsed time.
    fn announce(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.started = now;
        self.started_unix_ms =
            self.unix_base.1 + now.duration_since(self.unix_base.0).as_millis() as u64;
        self.phase = Phase::Announcing { holding: None };
        self.next_nag = now + FIRST_SINK_NAG;
        self.heard_from_sink = now;
        out.push(Command::ToSink(self.batch_message()));
    }

    fn tick_announcing(&mut self, now: Instant, out: &mut Vec<Command>) {
        if let Phase::Announcing {
            holding: Some(holding),
        } = self.phase
        {
            if self.acks_heard() >= holding {
                log::debug!("dispatching {} tasks", self.len() - self.held);
                self.phase = Phase::Dispatching;
                self.dispatching = true;
                self.heard_from_sink = now;
                self.tick_dispatching(now, out);
                return;
            }
        }
        if now >= self.next_beat {
            self.next_beat = now + self.config.heartbeat.interval;
            self.heartbeat_workers(out);
            self.expire_silent_workers(now);
            out.push(Command::ToSink(self.batch_message()));
        }
        if now >= self.next_nag {
            log::warn!(
                "waiting for the sink at {} to acknowledge the batch (is `conquer sink` running there?)",
                self.config.sink
            );
            self.next_nag = now + SINK_NAG;
        }
        let waited = now.duration_since(self.started);
        if waited >= self.config.wait_timeout {
            self.stop(
                Stopped::NoSink {
                    waited: waited.as_secs_f64(),
                    sink: self.config.sink.clone(),
                },
                out,
            );
        }
    }

    fn tick_dispatching(&mut self, now: Instant, out: &mut Vec<Command>) {
        // What is due first, so no task goes to a worker about to be declared gone.
        if now >= self.next_beat {
            self.next_beat = now + self.config.heartbeat.interval;
            if !self.every_heartbeat(now, out) {
                return;
            }
        }
        self.dispatch(now, out);
        // In the tail (nothing left to hand out), a worker that vanished holding tasks
        // holds up the batch: look for such workers often, not once a heartbeat. And an
        // idle worker that would finish a slow one's task sooner takes it over.
        if self.in_tail() && now >= self.next_probe {
            self.next_probe = now + TAIL_PROBE;
            self.probe_holders(out);
            self.end_game(now, out);
        }
    }

    /// Once a heartbeat interval: liveness both ways, stragglers, the sink's silence.
    /// False when the batch stopped.
    fn every_heartbeat(&mut self, now: Instant, out: &mut Vec<Command>) -> bool {
        self.speed = self.workers.iter().filter(|w| w.alive).map(speed_of).sum();
        self.heartbeat_workers(out);
        self.expire_silent_workers(now);
        self.finish_resync_if_stale(now);
        self.back_up_stragglers(now);
        self.prune_reported_log();
        let silent = now.duration_since(self.heard_from_sink);
        // Results a worker reports done that never reach a sink that answers: the worker's
        // way to the sink is broken. Name it and hand its tasks on.
        if silent < self.config.heartbeat.timeout() {
            self.refuse_undelivering_workers(now, out);
        }
        // The sink answers every announcement; silence while workers report tasks done
        // means it is gone or unreachable.
        if silent > self.config.sink_timeout {
            let stop = Stopped::SinkSilent {
                sink: self.config.sink.clone(),
                silent: silent.as_secs_f64(),
                held: self.held,
                tasks: self.len(),
            };
            self.stop(stop, out);
            return false;
        }
        // Tasks reported and not yet held are at the front of the pruned log.
        if !self.reported_log.is_empty()
            && !self.sink_silence_said
            && silent > self.config.heartbeat.timeout() * 2
        {
            log::warn!(
                "no word from the sink at {} for {:.0} s while workers report results; is it \
                 running? (restart it with --resume to keep what it wrote)",
                self.config.sink,
                silent.as_secs_f64()
            );
            self.sink_silence_said = true;
        }
        // Re-announcing the batch is the sink's heartbeat: a restarted sink learns the
        // batch from it and answers with what it holds.
        out.push(Command::ToSink(self.batch_message()));
        // Tasks given up on, until the sink holds them (a message may have been lost to a
        // restart).
        self.gave_up
            .retain(|&index| self.state[index as usize] != TaskState::Held);
        for &index in &self.gave_up {
            out.push(Command::ToSink(self.gave_up_message(index as usize)));
        }
        out.push(Command::ToSink(self.stats(false)));
        if self.alive == 0 && self.held < self.len() {
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) >= IDLE_REMINDER {
                log::warn!(
                    "no workers connected{}; {} of {} tasks not finished (start workers against {})",
                    if self.declines > 0 {
                        format!(
                            " that can run this batch's kernel ({} declined it)",
                            self.declines
                        )
                    } else {
                        String::new()
                    },
                    self.len() - self.held,
                    self.len(),
                    self.config.endpoint
                );
                self.idle_since = Some(now);
            }
        } else {
            self.idle_since = None;
        }
        true
    }

    fn stop(&mut self, why: Stopped, out: &mut Vec<Command>) {
        self.phase = Phase::Over;
        out.push(Command::Stop(why));
    }

    /// The sink holds everything: give it the final counters and release the workers.
    fn complete(&mut self, out: &mut Vec<Command>) {
        let ended = matches!(self.phase, Phase::Draining { .. });
        self.phase = Phase::Over;
        out.push(Command::ToSink(self.stats(true)));
        if !ended {
            self.end_workers(out);
        }
        log::info!(
            "batch {:016x} complete: {} tasks, {} redispatched, {} rejected",
            self.config.batch_id,
            self.len(),
            self.redispatched,
            self.rejected
        );
        out.push(Command::Complete);
    }

    /// Tells every worker the batch is over: they abandon what they hold of it. Workers
    /// that declined the batch are released too (they wait for its end).
    fn end_workers(&self, out: &mut Vec<Command>) {
        let end = Message::End {
            batch: self.config.batch_id,
            shutdown: self.config.shutdown_workers,
        };
        for (id, worker) in self.workers.iter().enumerate() {
            if worker.alive || worker.declined {
                out.push(Command::ToWorker {
                    worker: id as WorkerId,
                    message: end.clone(),
                });
            }
        }
    }

    /// The sink holds all it needs. A divisible job may end with chunks still out (a
    /// search stops at its hits; a backup's twin): the workers are told at once, and the
    /// batch completes once none holds a chunk, so the report can say how long that took.
    fn sink_complete(&mut self, now: Instant, out: &mut Vec<Command>) {
        let out_there = self.workers.iter().any(|w| w.alive && w.assigned > 0);
        if self.carver.is_none() || !out_there {
            // A job that ended early with no chunk out: every worker was idle already.
            let early = self.carver.as_ref().is_some_and(|c| c.left() > 0);
            if early {
                self.drained = Some(Duration::ZERO);
            }
            self.complete(out);
            return;
        }
        log::info!("the job is done with chunks still out; telling the workers to abandon them");
        self.end_workers(out);
        self.phase = Phase::Draining {
            since: now,
            until: now + self.config.heartbeat.timeout(),
        };
    }

    // ---- the sink -----------------------------------------------------------------------

    fn on_sink(&mut self, now: Instant, message: Message, out: &mut Vec<Command>) {
        let batch_id = self.config.batch_id;
        let announced = !matches!(self.phase, Phase::Waiting);
        if announced {
            self.heard_from_sink = now;
            if self.sink_silence_said {
                log::info!("the sink is answering again");
                self.sink_silence_said = false;
            }
        }
        match message {
            Message::Refused { reason, .. } if announced => {
                let sink = self.config.sink.clone();
                self.stop(Stopped::SinkRefused { sink, reason }, out);
            }
            Message::BatchAck { batch, held } if announced && batch == batch_id => {
                match self.phase {
                    Phase::Announcing { .. } => {
                        if held > 0 && !self.config.resume {
                            self.stop(Stopped::SinkHoldsResults { held, batch }, out);
                            return;
                        }
                        if held > 0 {
                            log::warn!(
                                "resuming batch {batch:016x}: the sink holds {held} results"
                            );
                            self.note(crate::events::Note::Batch {
                                batch: crate::events::batch_name(batch),
                                tasks: self.len() as u64,
                                held: u64::from(held),
                            });
                        }
                        self.phase = Phase::Announcing {
                            holding: Some(held as usize),
                        };
                    }
                    _ => self.sink_restarted(now, held),
                }
            }
            Message::Held { batch, ids }
                if announced && batch == batch_id && self.carver.is_none() =>
            {
                self.mark_held(now, &ids)
            }
            Message::HeldItems { batch, ranges }
                if announced && batch == batch_id && self.carver.is_some() =>
            {
                self.held_items(now, &ranges)
            }
            Message::Complete { batch }
                if batch == batch_id && self.phase == Phase::Dispatching =>
            {
                self.sink_complete(now, out)
            }
            Message::Heartbeat { batch } if announced && batch == batch_id => {}
            Message::Again {
                batch,
                id,
                first,
                items,
                exclude,
            } if announced && batch == batch_id => self.again(now, id, first, items, exclude),
            Message::Quarantine {
                batch,
                worker,
                reason,
            } if announced && batch == batch_id => {
                let slot = self.by_name.get(&worker).copied().or_else(|| {
                    (0..self.workers.len() as WorkerId)
                        .find(|&w| self.workers[w as usize].info.name == worker)
                });
                if let Some(slot) = slot.filter(|&w| !self.workers[w as usize].declined) {
                    log::warn!(
                        "worker {} is quarantined for this batch: {}; it gets none of its tasks",
                        printable(&worker),
                        printable(&reason)
                    );
                    self.note_worker(slot, "quarantined", None);
                    self.set_aside(slot, now, &reason, out);
                }
            }
            // The live view's: nothing to dispatch.
            Message::SinkSide { batch, side } if batch == batch_id => {
                self.observe(Observed::SinkSide(side))
            }
            Message::SinkSide { .. } => {}
            other => self.reject_at(
                now,
                "sink",
                format!(
                    "unexpected {} message (batch mismatch or wrong direction)",
                    other.kind_name()
                ),
            ),
        }
    }

    /// The sink acknowledged the batch again: it restarted and holds only `held` results
    /// (from its results file, or none). Everything we believed held is in doubt until the
    /// sink lists it; what it does not list is handed out again.
    fn sink_restarted(&mut self, now: Instant, held: u32) {
        log::warn!("the sink restarted holding {held} results; re-checking the batch against it");
        for s in self.state.iter_mut() {
            if *s == TaskState::Held {
                *s = TaskState::Reported;
            }
        }
        self.held = 0;
        self.covered = IntervalSet::new();
        self.ranges_heard = 0;
        // What is in doubt now is the resync's to settle: no worker is to blame for results
        // a restarted sink lost.
        self.reported_log.clear();
        self.resync = Some((held as usize, now));
        self.finish_resync_if_complete();
    }

    fn finish_resync_if_complete(&mut self) {
        if let Some((expected, _)) = self.resync {
            if self.acks_heard() >= expected {
                self.resync = None;
                self.requeue_unconfirmed();
            }
        }
    }

    /// If the sink's list never completes (it lost messages, or restarted again), stop
    /// waiting for it after a few heartbeats.
    fn finish_resync_if_stale(&mut self, now: Instant) {
        if let Some((_, since)) = self.resync {
            if now.duration_since(since) > self.config.heartbeat.timeout() {
                self.resync = None;
                self.requeue_unconfirmed();
            }
        }
    }

    /// Hands out again every task reported done whose result the sink does not hold.
    fn requeue_unconfirmed(&mut self) {
        let mut count = 0;
        for index in (0..self.len()).rev() {
            if self.state[index] == TaskState::Reported {
                self.requeue(index);
                count += 1;
            }
        }
        if count > 0 {
            log::warn!("handing out {count} tasks again whose results the sink does not hold");
        }
        self.recarve_unheld();
    }

    /// A divisible job after the sink restarted: every item neither held by it nor in a
    /// chunk still to be (re)done goes back to the carver, so items a previous sink held
    /// (and a fresh one lost) are carved again.
    fn recarve_unheld(&mut self) {
        let Some(items) = self.carver.as_ref().map(|c| c.plan().items) else {
            return;
        };
        let mut taken = self.covered.clone();
        for (index, task) in self.config.tasks.iter().enumerate() {
            if self.state[index] != TaskState::Held {
                let (a, b) = task.range();
                taken.insert(a..b);
            }
        }
        let free: Vec<(u64, u64)> = taken
            .gaps(items)
            .into_iter()
            .map(|r| (r.start, r.end))
            .collect();
        if let Some(carver) = self.carver.as_mut() {
            carver.set_free(&free);
        }
    }

    /// Nothing is left to hand out: the batch's tail, where a worker that vanished holding
    /// tasks holds up the batch.
    fn in_tail(&self) -> bool {
        self.pending_count == 0 && self.carver.as_ref().is_none_or(|c| c.left() == 0)
    }

    /// What the sink's acknowledgement counts: held tasks, or a divisible job's
    /// `held-items` messages.
    fn acks_heard(&self) -> usize {
        if self.carver.is_some() {
            self.ranges_heard
        } else {
            self.held
        }
    }

    /// The sink holds these items (a divisible job): they are never carved, and every
    /// chunk they cover is held, whoever carved it.
    fn held_items(&mut self, now: Instant, ranges: &[(u64, u64)]) {
        self.ranges_heard += 1;
        let items = self.carver.as_ref().map_or(0, |c| c.plan().items);
        let mut ids = Vec::new();
        for &(start, end) in ranges {
            if end > items {
                let why = format!("sink holds items {start}..{end} of a {items}-item job");
                self.reject_at(now, "sink", why);
                continue;
            }
            self.covered.insert(start..end);
            if let Some(carver) = self.carver.as_mut() {
                carver.remove(start, end);
            }
            // The chunk that holds `start` (chunks are disjoint) and those that begin
            // within the range.
            let before = self
                .chunk_at
                .range(..=start)
                .next_back()
                .map(|(&f, &id)| (f, id));
            let within = self.chunk_at.range(start + 1..end).map(|(&f, &id)| (f, id));
            for (_, id) in before.into_iter().chain(within) {
                let (a, b) = self.config.tasks[id as usize].range();
                if self.covered.contains_all(a..b) {
                    ids.push(id);
                }
            }
        }
        // Chunks stay in `chunk_at` once held: a restarted sink lists its ranges again, and
        // they must find the chunks they cover then too.
        self.mark_held(now, &ids);
    }

    fn mark_held(&mut self, now: Instant, ids: &[u32]) {
        if self.config.observe && !ids.is_empty() {
            self.observe(Observed::Held { ids: ids.to_vec() });
        }
        for &id in ids {
            let index = id as usize;
            if index >= self.len() {
                let why = format!("sink holds task {id} of a {}-task batch", self.len());
                self.reject_at(now, "sink", why);
                continue;
            }
            match self.state[index] {
                TaskState::Held => continue,
                TaskState::Assigned => {
                    let slot = self.owner[index];
                    self.release(slot, index);
                }
                TaskState::Pending | TaskState::Requeued => {
                    self.pending_count -= 1;
                    self.pending_ms -= u64::from(self.config.tasks[index].workload_ms);
                }
                TaskState::Reported => self.results_arrived(self.owner[index]),
            }
            self.state[index] = TaskState::Held;
            self.exclude.remove(&id);
            self.held += 1;
        }
        self.finish_resync_if_complete();
    }

    // ---- workers ------------------------------------------------------------------------

    fn on_worker(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        message: Message,
        out: &mut Vec<Command>,
    ) {
        let batch_id = self.config.batch_id;
        match message {
            Message::Hello(info) => self.hello(now, routing_id, info, out),
            Message::Join(_) => {
                let reason = format!(
                    "this looks like a worker that connected its sink endpoint to a ventilator: {} is \
                     conquer's ventilator (tasks), not a sink; pass the sink's endpoint (port 5558 by \
                     default) as --sink and this one as --ventilator",
                    self.config.endpoint
                );
                self.refuse(now, routing_id, RefusalKind::WrongPeer, reason, out);
            }
            Message::Done { batch, done } if batch == batch_id => {
                self.done(now, &routing_id, &done, out)
            }
            Message::Done { batch, .. } => {
                // Credit for another batch (perhaps a worker's leftovers from the last one):
                // it proves the worker alive, and is counted as foreign.
                if let Some(&slot) = self.by_routing_id.get(&routing_id) {
                    self.workers[slot as usize].last_seen = now;
                }
                let peer = crate::text::peer_name(&routing_id);
                self.reject_at(
                    now,
                    &peer,
                    format!("credit for batch {batch:016x}, not this one"),
                );
            }
            Message::Bye => self.bye(now, &routing_id),
            Message::Decline { batch, reason } if batch == batch_id => {
                self.decline(now, &routing_id, &reason, out)
            }
            other => {
                let peer = crate::text::peer_name(&routing_id);
                let why = format!(
                    "unexpected {} message on the tasks socket",
                    other.kind_name()
                );
                self.reject_at(now, &peer, why);
            }
        }
    }

    fn reject_at(&mut self, now: Instant, peer: &str, why: String) {
        self.rejected += 1;
        self.reject_log
            .warn_at(now, || format!("dropped a message from {peer}: {why}"));
    }

    fn refuse(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        kind: RefusalKind,
        reason: String,
        out: &mut Vec<Command>,
    ) {
        let peer = printable(&crate::text::peer_name(&routing_id)).into_owned();
        self.refuse_log
            .warn_at(now, || format!("refused {peer}: {reason}"));
        out.push(Command::Reply {
            routing_id,
            message: Message::Refused { kind, reason },
        });
    }

    fn hello(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        info: WorkerInfo,
        out: &mut Vec<Command>,
    ) {
        if let Err(why) = crate::heartbeat::check_name(&info.name) {
            self.refuse(now, routing_id, RefusalKind::BadName, why, out);
            return;
        }
        match self.by_routing_id.get(&routing_id).copied() {
            Some(slot) if self.workers[slot as usize].refused => {
                let reason = format!(
                    "worker {:?} was turned away: its results did not reach the sink; restart it with a \
                     working --sink",
                    self.workers[slot as usize].info.name
                );
                self.refuse(now, routing_id, RefusalKind::ResultsLost, reason, out);
            }
            Some(slot) if self.workers[slot as usize].declined => {
                self.workers[slot as usize].last_seen = now;
            }
            Some(slot) => {
                let worker = &mut self.workers[slot as usize];
                worker.last_seen = now;
                // The routing id carries the name and session: a greeting may update what
                // the worker runs on, never who it is.
                worker.info.backend = info.backend;
                worker.info.adapter = info.adapter;
                worker.info.window_hint = info.window_hint;
                worker.info.codecs = info.codecs;
                worker.has_kernel = false;
                if worker.alive && worker.stalled && worker.stalled_silent {
                    // Heard again after a silence that cost it its tasks: it may take more.
                    worker.stalled = false;
                    worker.stalled_silent = false;
                    self.enqueue(slot);
                    return;
                }
                if !worker.alive {
                    log::debug!("worker {} is back", printable(&worker.info.name));
                    worker.alive = true;
                    worker.assigned = 0;
                    worker.assigned_ms = 0;
                    worker.stalled = false;
                    worker.stalled_silent = false;
                    self.alive += 1;
                    self.speed += speed_of(&self.workers[slot as usize]);
                    let name = self.workers[slot as usize].info.name.clone();
                    self.by_name.insert(name, slot);
                    self.observe(Observed::Back { worker: slot });
                    if let Some(carver) = self.carver.as_mut() {
                        carver.join(slot as usize);
                    }
                    self.enqueue(slot);
                    out.push(Command::ToWorker {
                        worker: slot,
                        message: self.heartbeat(),
                    });
                }
            }
            None => {
                if self.claims.is_waiting(&routing_id) {
                    return; // its first greeting is being settled
                }
                // Another live worker under the same name (a second process given the same
                // --name) is refused; one whose connection is gone gives its name up. Which
                // it is, the heartbeat sent to it now tells: `Unreachable` comes back at
                // once if its connection is gone.
                let namesake = self.by_name.get(&info.name).copied().filter(|&w| {
                    let w = &self.workers[w as usize];
                    let holder = Holder {
                        session: w.info.session,
                        routing_id: &w.routing_id,
                        live: w.alive,
                    };
                    clashes(holder, info.session, &routing_id)
                });
                if let Some(old) = namesake {
                    out.push(Command::ToWorker {
                        worker: old as WorkerId,
                        message: self.heartbeat(),
                    });
                    self.claims.wait(old, routing_id, info);
                    return;
                }
                self.admit(routing_id, info, now, out);
            }
        }
    }

    fn admit(
        &mut self,
        routing_id: Vec<u8>,
        info: WorkerInfo,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        log::debug!(
            "worker {} joined ({}{}{})",
            printable(&info.name),
            info.backend,
            if info.adapter.is_empty() { "" } else { " on " },
            info.adapter
        );
        let slot = self.workers.len() as WorkerId;
        self.by_routing_id.insert(routing_id.clone(), slot);
        self.by_name.insert(info.name.clone(), slot);
        self.workers.push(WorkerSlot::new(routing_id, info, now));
        if let Some(carver) = self.carver.as_mut() {
            carver.join(self.workers.len() - 1);
        }
        self.note_worker(slot, "joined", None);
        self.alive += 1;
        self.speed += 1.0;
        self.enqueue(slot);
        out.push(Command::ToWorker {
            worker: slot,
            message: self.heartbeat(),
        });
    }

    /// Newcomers whose namesake answered no `Unreachable` are refused: the name is taken.
    /// (Those whose namesake was gone were admitted when it was lost.)
    fn settle_claims(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.claims.is_empty() {
            return;
        }
        for claim in self.claims.settle() {
            let reason = name_taken(&claim.info.name, "ventilator", &self.config.endpoint);
            let peer = printable(&crate::text::peer_name(&claim.routing_id)).into_owned();
            self.refuse_log
                .warn_at(now, || format!("refused {peer}: {reason}"));
            out.push(Command::Reply {
                routing_id: claim.routing_id,
                message: Message::Refused {
                    kind: RefusalKind::NameTaken,
                    reason,
                },
            });
        }
    }

    fn unreachable(&mut self, now: Instant, worker: WorkerId, out: &mut Vec<Command>) {
        if (worker as usize) < self.workers.len() && self.workers[worker as usize].alive {
            self.note_worker(worker, "unreachable", None);
            self.lose_worker(worker, now);
        }
        // Newcomers waiting on this worker's name take it now.
        for claim in self.claims.holder_gone(&worker) {
            if !self.by_routing_id.contains_key(&claim.routing_id) {
                self.admit(claim.routing_id, claim.info, now, out);
            }
        }
    }

    fn done(&mut self, now: Instant, routing_id: &[u8], done: &[Done], out: &mut Vec<Command>) {
        let Some(&slot) = self.by_routing_id.get(routing_id) else {
            // A worker of this batch that has not greeted this ventilator yet (it restarted):
            // its hello follows within a heartbeat, and the sink's word decides what is done.
            log::debug!(
                "credit from {} before its hello; ignored",
                crate::text::peer_name(routing_id)
            );
            return;
        };
        let s = slot as usize;
        self.workers[s].last_seen = now;
        if !self.workers[s].alive {
            // Declared gone already and its tasks handed on; its results still reach the
            // sink, which drops the duplicates.
            return;
        }
        if self.config.observe {
            let items = done.iter().map(|d| self.task_items(d.id)).collect();
            self.observe(Observed::Reported {
                worker: slot,
                done: done.to_vec(),
                items,
            });
        }
        for d in done {
            let Some(index) = usize::try_from(d.id).ok().filter(|&i| i < self.len()) else {
                let peer = crate::text::peer_name(routing_id);
                let why = format!("credit for task {} of a {}-task batch", d.id, self.len());
                self.reject_at(now, &peer, why);
                continue;
            };
            if self.state[index] != TaskState::Assigned || self.owner[index] != slot {
                // Already reported, or handed to another worker as a backup: a report of a
                // task it was given still proves the worker works, and ends its stall; and
                // says how fast it is (a worker whose every task outlives the backup bound
                // would otherwise never be measured, and be backed up forever).
                let ran = self.ran_by.get_mut(&d.id).and_then(|by| {
                    let at = by.iter().position(|&w| w == slot)?;
                    Some(by.swap_remove(at))
                });
                if ran.is_some() && d.status != Status::Failed {
                    self.learn_rate(s, self.config.tasks[index].workload_ms, d.wall_us);
                }
                if let (Some(carver), Some(_), Status::Ok | Status::Verified) =
                    (self.carver.as_mut(), ran, d.status)
                {
                    carver.learn(s, self.config.tasks[index].items, d.wall_us);
                }
                if self.workers[s].stalled {
                    self.workers[s].stalled = false;
                    self.workers[s].stalled_silent = false;
                    self.enqueue(slot);
                }
                continue;
            }
            self.release(slot, index);
            // Only a report that frees a task it held proves the worker and ends a stall.
            let worker = &mut self.workers[s];
            worker.stalled = false;
            worker.proven = true;
            worker.last_report = now;
            self.enqueue(slot);
            self.learn_rate(s, self.config.tasks[index].workload_ms, d.wall_us);
            if let (Some(carver), Status::Ok | Status::Verified) = (self.carver.as_mut(), d.status)
            {
                carver.learn(s, self.config.tasks[index].items, d.wall_us);
            }
            if d.status == Status::Failed {
                self.failed(now, slot, index, out);
            } else {
                self.state[index] = TaskState::Reported;
                self.workers[s].unheld += 1;
                self.reported_log.push_back((now, index as u32, slot));
            }
        }
    }

    /// `slot` failed the task at `index`: it goes to another worker, or, at its
    /// `--max-attempts`th failure, nowhere: the sink is told to count it failed.
    fn failed(&mut self, now: Instant, slot: WorkerId, index: usize, out: &mut Vec<Command>) {
        let failures = self.failures.entry(index as u32).or_insert(0);
        *failures += 1;
        let failures = *failures;
        let name = printable(&self.workers[slot as usize].info.name).into_owned();
        let task = self.config.tasks[index];
        if failures < self.config.max_attempts {
            self.fail_log.warn_at(now, || {
                format!(
                    "worker {name} failed task {} (failure {failures} of at most {}); handing it \
                     to another worker",
                    task.id, self.config.max_attempts
                )
            });
            self.requeue(index);
            return;
        }
        log::error!(
            "task {} failed {failures} times, last on worker {name}: giving it up (--max-attempts \
             {}); the batch will fail",
            task.id,
            self.config.max_attempts
        );
        // Waiting for the sink's word, like a task reported done, but nobody's.
        self.state[index] = TaskState::Reported;
        self.owner[index] = NO_OWNER;
        self.gave_up.push(index as u32);
        out.push(Command::ToSink(self.gave_up_message(index)));
    }

    fn gave_up_message(&self, index: usize) -> Message {
        let task = self.config.tasks[index];
        Message::GaveUp {
            batch: self.config.batch_id,
            id: task.id,
            first: task.first,
            items: task.items,
            attempts: self.failures.get(&(index as u32)).copied().unwrap_or(0),
        }
    }

    /// The end game: nothing is left to hand out, so an idle worker whose measured speed
    /// would finish the task predicted to end last sooner than the worker that holds it
    /// (by a fifth at least) gets a copy of it. The first result wins, as with backups;
    /// the holder is not stalled. The fastest idle workers choose first, and a task taken
    /// over goes again only to a worker predicted to finish it a fifth sooner than its
    /// taker, at most [`MAX_TAKEOVERS`] times: duplicated work stays bounded (a few
    /// copies of the last tasks), and is counted as redispatched.
    fn end_game(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.alive < 2 {
            return;
        }
        let mut idle: Vec<usize> = (0..self.workers.len())
            .filter(|&s| self.workers[s].alive && self.workers[s].assigned == 0)
            .collect();
        // Fastest first: a slower worker taking the last task first would keep a faster
        // one, idle a moment later, waiting on it. Unmeasured workers last.
        let chunks = self.carver.is_some();
        let pace = |s: usize| -> f64 {
            let measured = if chunks {
                self.carver
                    .as_ref()
                    .and_then(|c| c.rate(s))
                    .map(|r| 1.0 / r.max(1e-9))
            } else {
                self.workers[s].us_per_ms
            };
            measured.unwrap_or(f64::INFINITY)
        };
        idle.sort_by(|&a, &b| pace(a).total_cmp(&pace(b)));
        for slot in idle {
            let w = &self.workers[slot];
            if !w.alive
                || w.declined
                || w.stalled
                || w.assigned > 0
                || w.unheld >= self.unheld_cap(slot)
            {
                continue;
            }
            let Some(last) = self.last_to_finish(now, slot) else {
                return;
            };
            let index = last.index;
            // A copy the sink asked for never goes back to a worker whose copy it has, nor
            // a task to a worker it was taken from (its copy still runs there).
            if self
                .exclude
                .get(&(index as u32))
                .is_some_and(|names| names.contains(&self.workers[slot].info.name))
                || self
                    .ran_by
                    .get(&(index as u32))
                    .is_some_and(|by| by.contains(&(slot as WorkerId)))
            {
                continue;
            }
            let Some(mine_us) = self.predict_us(slot, index) else {
                continue;
            };
            // What the holder has spent on it bounds what it costs: the taker needs at
            // least that, scaled by the two workers' measured speeds (a rate measured on
            // cheap items says nothing of a dear chunk). A holder not measured yet may be
            // slow or its task dear: once it has run twice what the taker predicts for
            // itself, the taker's prediction stands (a copy costs an idle worker's time).
            let mine_us = match self.predict_us(self.owner[index] as usize, index) {
                Some(holder_us) => mine_us.max(last.running_us * mine_us / holder_us.max(1.0)),
                None if last.running_us > 2.0 * mine_us => mine_us,
                None => continue,
            };
            if mine_us >= last.left_us * 0.8 {
                continue;
            }
            let holder_left_us = last.left_us;
            let task = self.config.tasks[index];
            let holder = self.owner[index];
            log::debug!(
                "end game: {} takes over task {} from {} ({:.0} ms against {:.0} ms left)",
                printable(&self.workers[slot].info.name),
                task.id,
                printable(&self.workers[holder as usize].info.name),
                mine_us / 1000.0,
                holder_left_us / 1000.0
            );
            self.release(holder, index);
            self.ran_by.entry(index as u32).or_default().push(holder);
            self.owner[index] = slot as WorkerId;
            self.assigned_ms += u64::from(task.workload_ms);
            let worker = &mut self.workers[slot];
            worker.given.push_back((now, index as u32));
            worker.assigned += 1;
            worker.assigned_ms += u64::from(task.workload_ms);
            self.redispatched += 1;
            self.items_redone += u64::from(task.items);
            *self.taken_over.entry(index as u32).or_insert(0) += 1;
            self.send_tasks(slot as WorkerId, vec![task], vec![true], out);
        }
    }

    /// Among tasks other workers hold and that were not taken over [`MAX_TAKEOVERS`] times
    /// yet, the one whose holder is predicted to finish last, with how long it has left, in µs (tasks queued
    /// on a worker run one after another from its last report).
    fn last_to_finish(&self, now: Instant, except: usize) -> Option<LastToFinish> {
        let mut last: Option<LastToFinish> = None;
        for (h, holder) in self.workers.iter().enumerate() {
            if h == except || !holder.alive || holder.assigned == 0 {
                continue;
            }
            // Its tasks run one after another from its last report.
            let mut at = now
                .saturating_duration_since(holder.last_report)
                .as_secs_f64()
                * -1e6;
            for &(given, index) in &holder.given {
                let i = index as usize;
                if self.state[i] != TaskState::Assigned || self.owner[i] != h as WorkerId {
                    continue;
                }
                let since = now.saturating_duration_since(given.max(holder.last_report));
                let took = self
                    .predict_us(h, i)
                    .unwrap_or_else(|| f64::from(self.config.tasks[i].workload_ms) * 1000.0);
                let start = at.max(-since.as_secs_f64() * 1e6);
                // A task past its prediction is taken to need as long again as it has
                // run: costs vary along a job, and a miss means this part is dearer.
                let running = (-start).max(0.0);
                at = start + took.max(2.0 * running);
                let takeovers = self.taken_over.get(&index).copied().unwrap_or(0);
                if takeovers < MAX_TAKEOVERS && last.is_none_or(|l| at > l.left_us) {
                    last = Some(LastToFinish {
                        index: i,
                        left_us: at,
                        running_us: running,
                    });
                }
            }
        }
        last
    }

    /// How long `slot` would take over the task at `index`, by its measured speed: a
    /// chunk's items at its rate, a task's workload at its µs per ms. `None` until it has
    /// reported one.
    fn predict_us(&self, slot: usize, index: usize) -> Option<f64> {
        let task = self.config.tasks[index];
        if task.is_chunk() {
            let rate = self.carver.as_ref()?.rate(slot)?;
            (rate > 0.0).then(|| f64::from(task.items) * 1e6 / rate)
        } else {
            let us_per_ms = self.workers[slot].us_per_ms?;
            Some(us_per_ms * f64::from(task.workload_ms))
        }
    }

    /// The sink wants a task run once more, by a worker not in `exclude` (`--replicate`):
    /// unless such a worker runs it already, it goes to the replicas' queue, which a
    /// worker named in `exclude` takes from only when no other live worker could.
    /// Idempotent: the sink repeats itself until it holds the task.
    fn again(&mut self, now: Instant, id: u32, first: u64, items: u32, exclude: Vec<String>) {
        let index = if self.carver.is_some() {
            match self.chunk_at.get(&first) {
                Some(&id) if self.config.tasks[id as usize].items == items => id as usize,
                _ => {
                    let why = format!(
                        "asked to run items {first}..{} again, not a chunk",
                        first + u64::from(items)
                    );
                    self.reject_at(now, "sink", why);
                    return;
                }
            }
        } else if (id as usize) < self.len() {
            id as usize
        } else {
            let why = format!(
                "asked to run task {id} of a {}-task batch again",
                self.len()
            );
            self.reject_at(now, "sink", why);
            return;
        };
        let excluded = |slot: u32| {
            self.workers
                .get(slot as usize)
                .is_some_and(|w| exclude.contains(&w.info.name))
        };
        let requeue = match self.state[index] {
            TaskState::Held => false,
            TaskState::Pending | TaskState::Requeued => false,
            TaskState::Assigned => excluded(self.owner[index]),
            TaskState::Reported => self.owner[index] == NO_OWNER || excluded(self.owner[index]),
        };
        self.exclude.insert(index as u32, exclude);
        if requeue {
            if self.state[index] == TaskState::Assigned {
                let owner = self.owner[index];
                self.release(owner, index);
            }
            self.requeue(index);
        } else if matches!(self.state[index], TaskState::Pending | TaskState::Requeued) {
            // Waiting in the main queue (its worker was lost): moved to the replicas'.
            self.queue_replica(index as u32);
        }
    }

    /// A copy the sink asked for waits in `replicas`; its entry in the main queue, if any,
    /// is skipped there. Workers waiting in the tail look again: one may have gone there
    /// idle because every copy then queued excluded it, and this one may not.
    fn queue_replica(&mut self, index: u32) {
        if self.replica_set.insert(index) {
            self.replicas.push_back(index);
            self.wake_waiting();
        }
    }

    /// A replica `slot` may run now, with its place in the queue: among the first few, one
    /// it is not excluded from; else the first, if no live, unstalled worker is free of its
    /// exclusion. Drops stale entries from the front.
    fn replica_for(&mut self, slot: usize) -> Option<(usize, u32)> {
        while let Some(&index) = self.replicas.front() {
            if matches!(
                self.state[index as usize],
                TaskState::Pending | TaskState::Requeued
            ) {
                break;
            }
            self.replicas.pop_front();
            self.replica_set.remove(&index);
        }
        let name = &self.workers[slot].info.name;
        let excluded = |index: u32| {
            self.exclude
                .get(&index)
                .is_some_and(|names| names.contains(name))
        };
        let live =
            |index: usize| matches!(self.state[index], TaskState::Pending | TaskState::Requeued);
        if let Some((pos, &index)) = self
            .replicas
            .iter()
            .enumerate()
            .take(REPLICA_SCAN)
            .find(|&(_, &index)| live(index as usize) && !excluded(index))
        {
            return Some((pos, index));
        }
        let &first = self.replicas.front()?;
        let exclude = self.exclude.get(&first).map_or(&[][..], Vec::as_slice);
        // A worker waiting for the sink to catch up will take it soon; a stalled one
        // (its task backed up, it does not report) may never.
        let someone_else = self.workers.iter().any(|worker| {
            worker.alive
                && !worker.declined
                && !worker.stalled
                && !exclude.contains(&worker.info.name)
        });
        (!someone_else).then_some((0, first))
    }

    /// A worker cannot run this batch's kernel: what it holds goes to others, and it gets
    /// nothing more of this batch (it stays known, so its greetings do not revive it).
    fn decline(&mut self, now: Instant, routing_id: &[u8], reason: &str, out: &mut Vec<Command>) {
        let Some(&slot) = self.by_routing_id.get(routing_id) else {
            return;
        };
        let worker = &mut self.workers[slot as usize];
        worker.last_seen = now;
        if worker.declined {
            return;
        }
        log::warn!(
            "worker {} cannot run this batch: {}; it gets none of its tasks",
            printable(&worker.info.name),
            printable(reason)
        );
        self.note_worker(slot, "declined", None);
        self.set_aside(slot, now, reason, out);
    }

    /// `slot` gets nothing more of this batch (it declined, or was quarantined): what it
    /// holds goes to others; once every worker of a fixed farm is set aside, the batch
    /// stops.
    fn set_aside(&mut self, slot: WorkerId, now: Instant, reason: &str, out: &mut Vec<Command>) {
        self.declines += 1;
        self.lose_worker(slot, now);
        self.workers[slot as usize].declined = true;
        let workers = self.config.fixed_workers;
        if workers > 0 && self.declines >= workers {
            let reason = reason.to_owned();
            self.stop(Stopped::AllDeclined { workers, reason }, out);
        }
    }

    fn bye(&mut self, now: Instant, routing_id: &[u8]) {
        if let Some(&slot) = self.by_routing_id.get(routing_id) {
            if self.workers[slot as usize].alive {
                log::debug!(
                    "worker {} left",
                    printable(&self.workers[slot as usize].info.name)
                );
                self.note_worker(slot, "left", None);
                self.lose_worker(slot, now);
            }
        }
    }

    /// Frees the credit a task held at its owner.
    fn release(&mut self, slot: WorkerId, index: usize) {
        let workload = u64::from(self.config.tasks[index].workload_ms);
        let worker = &mut self.workers[slot as usize];
        if worker.alive {
            worker.assigned = worker.assigned.saturating_sub(1);
            let freed = workload.min(worker.assigned_ms);
            worker.assigned_ms -= freed;
            self.assigned_ms -= freed;
        }
        self.enqueue(slot);
    }

    /// A task `slot` reported is no longer waiting for the sink (held, or handed out
    /// again): one less against its cap, and it may take tasks again below it.
    fn results_arrived(&mut self, slot: WorkerId) {
        let Some(worker) = self.workers.get_mut(slot as usize) else {
            return;
        };
        // Saturating: tasks a restarted sink put in doubt were not counted against anyone.
        worker.unheld = worker.unheld.saturating_sub(1);
        if worker.unheld < self.unheld_cap(slot as usize) {
            self.enqueue(slot);
        }
    }

    /// How many of its reported tasks a worker may have waiting for the sink before it
    /// gets no more: twice the most it may hold, so a worker whose results reach the sink
    /// a round trip after its reports never meets it.
    fn unheld_cap(&self, slot: usize) -> u32 {
        let worker = &self.workers[slot];
        let hinted = u32::from(worker.info.window_hint).min(MAX_HINTED_WINDOW);
        // Tasks that cost nothing stream up to the larger cap (see `credit`).
        let streaming = worker.proven && self.config.longest_ms == 0 && self.carver.is_none();
        let window =
            self.config
                .window
                .max(hinted)
                .max(if streaming { self.config.max_window } else { 0 });
        window.saturating_mul(2).max(2)
    }

    /// Puts a worker in the ready queue if it may take tasks and is not there yet.
    fn enqueue(&mut self, slot: WorkerId) {
        let w = &mut self.workers[slot as usize];
        if w.alive && !w.stalled && !w.queued {
            w.queued = true;
            self.ready.push_back(slot);
        }
    }

    fn requeue(&mut self, index: usize) {
        if self.state[index] == TaskState::Reported {
            self.results_arrived(self.owner[index]);
        }
        // A copy the sink asked for keeps its exclusions however it comes back (a lost or
        // stalled worker, a full queue).
        if self.exclude.contains_key(&(index as u32)) {
            self.queue_replica(index as u32);
        }
        self.pending_count += 1;
        self.pending_ms += u64::from(self.config.tasks[index].workload_ms);
        self.state[index] = TaskState::Requeued;
        self.owner[index] = NO_OWNER;
        self.pending.push_front(index as u32);
        self.wake_waiting();
        // Tasks are no longer scarce: workers set aside for the tail may take more.
        if !self.tail.is_empty() && self.pending_count > self.alive {
            for slot in std::mem::take(&mut self.tail) {
                self.workers[slot as usize].in_tail = false;
                self.enqueue(slot);
            }
        }
    }

    /// Idle workers that waited for a copy they may run look again. Each leaves the list
    /// as it is woken, so a run of requeues costs one wake per waiting worker.
    fn wake_waiting(&mut self) {
        for slot in std::mem::take(&mut self.waiting) {
            self.workers[slot as usize].in_waiting = false;
            self.enqueue(slot);
        }
    }

    /// A worker is gone: every task it held that the sink does not hold goes to others.
    /// Costs what the worker was given and not yet seen held, never a scan of the batch.
    fn lose_worker(&mut self, slot: WorkerId, now: Instant) {
        let s = slot as usize;
        if self.workers[s].alive {
            self.observe(Observed::Lost { worker: slot });
            if self.by_name.get(&self.workers[s].info.name) == Some(&slot) {
                self.by_name.remove(&self.workers[s].info.name);
            }
            self.alive -= 1;
            self.speed -= speed_of(&self.workers[s]);
            self.assigned_ms -= self.workers[s].assigned_ms;
        }
        self.workers[s].alive = false;
        if let Some(carver) = self.carver.as_mut() {
            carver.leave(s);
        }
        self.workers[s].assigned = 0;
        self.workers[s].assigned_ms = 0;
        self.workers[s].unheld = 0;
        let given = std::mem::take(&mut self.workers[s].given);
        let mut handed_on = 0;
        // Backwards, so the requeued tasks keep their dispatch order at the front.
        for &(_, index) in given.iter().rev() {
            let i = index as usize;
            if self.owner[i] == slot
                && matches!(self.state[i], TaskState::Assigned | TaskState::Reported)
            {
                self.requeue(i);
                handed_on += 1;
            }
        }
        if matches!(self.phase, Phase::Draining { .. }) {
            // The job is over; workers leaving now are expected.
            return;
        }
        let name = printable(&self.workers[s].info.name).into_owned();
        self.gone_log.warn_at(now, || {
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
        let sample = f64::from(wall_us).max(1.0) / f64::from(workload_ms);
        let before = speed_of(&self.workers[slot]);
        let rate = &mut self.workers[slot].us_per_ms;
        *rate = Some(rate.map_or(sample, |r| r * 0.8 + sample * 0.2));
        self.speed += speed_of(&self.workers[slot]) - before;
    }

    /// How long, in µs, the work not yet done takes the live workers at their measured
    /// speeds: a task queued behind others on a worker that cannot finish them within this
    /// would end the batch late (a straggler's second task), so it is not queued there.
    fn horizon_us(&self) -> f64 {
        (self.pending_ms + self.assigned_ms) as f64 * 1000.0 / self.speed.max(1e-9)
    }

    /// How long `slot` may hold a task of `workload_ms` before another worker is given a
    /// backup: `factor` times what its measured speed predicts (nominal speed until it
    /// reports), plus the slack.
    fn straggle_bound(&self, slot: usize, workload_ms: u32) -> Duration {
        let us_per_ms = self.workers[slot].us_per_ms.unwrap_or(1000.0).max(1000.0);
        let expected_us = us_per_ms * f64::from(workload_ms) * self.config.backup.factor;
        self.config.backup.slack + Duration::from_secs_f64(expected_us.min(1e12) / 1e6)
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
    /// each worker's oldest task only. A chunk of a divisible job is backed up only when
    /// its worker falls silent: one that heartbeats is left to the end game (a stuck GPU
    /// task ends at the worker's `--task-timeout`).
    fn back_up_stragglers(&mut self, now: Instant) {
        if self.alive < 2 {
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
            // Silence short of the liveness timeout: a worker that missed a few heartbeats
            // while holding tasks is likely frozen; its tasks start elsewhere now rather
            // than when it is declared gone.
            let silent = now.saturating_duration_since(self.workers[slot].last_seen);
            let quiet = silent > self.config.heartbeat.interval * SILENT_BACKUP_BEATS;
            let i = index as usize;
            let bound = self.straggle_bound(slot, self.config.tasks[i].workload_ms);
            // A queued task waited behind the ones before it: its time runs from the later
            // of when it was given and the worker's last report.
            let since = given_at.max(self.workers[slot].last_report);
            let held_for = now.saturating_duration_since(since);
            // A chunk past its prediction on a worker that heartbeats is dear, not lost:
            // items vary in cost along a job, so a copy would only repeat the same dear
            // items. The end game moves it once nothing else is left to hand out.
            let straggling = self.state[i] == TaskState::Assigned
                && held_for > bound
                && !self.config.tasks[i].is_chunk();
            if !straggling && !quiet {
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
            if held.is_empty() {
                continue;
            }
            self.workers[slot].stalled = true;
            self.workers[slot].stalled_silent = !straggling;
            let mut count = 0;
            for &index in held.iter().rev() {
                // A task bounced and given again appears twice in the list: once is enough.
                let i = index as usize;
                if self.owner[i] == slot as u32 && self.state[i] == TaskState::Assigned {
                    self.release(slot as WorkerId, i);
                    self.ran_by.entry(index).or_default().push(slot as WorkerId);
                    self.requeue(i);
                    count += 1;
                }
            }
            self.backups += count;
            let name = printable(&self.workers[slot].info.name).into_owned();
            let why = if straggling {
                format!(
                    "has held task {index} for {:.1} s (bound {:.1} s)",
                    held_for.as_secs_f64(),
                    bound.as_secs_f64()
                )
            } else {
                format!("has been silent for {:.1} s", silent.as_secs_f64())
            };
            self.gone_log.warn_at(now, || {
                format!(
                    "worker {name} {why}; handing its {count} unreported tasks to other workers as \
                     backups"
                )
            });
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
    fn refuse_undelivering_workers(&mut self, now: Instant, out: &mut Vec<Command>) {
        let bound = self.config.heartbeat.timeout() * UNDELIVERED_TIMEOUTS;
        // A worker at its cap of undelivered reports is given one timeout, not four: its
        // reports have outrun its results by a window's worth already.
        let capped_bound = self.config.heartbeat.timeout();
        let mut stale: Vec<(u32, u32)> = Vec::new();
        let mut count = |slot: u32| match stale.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, n)) => *n += 1,
            None => stale.push((slot, 1)),
        };
        for &(at, index, slot) in &self.reported_log {
            let age = now.saturating_duration_since(at);
            if age < capped_bound {
                break;
            }
            let i = index as usize;
            if age < bound
                && self.state[i] == TaskState::Reported
                && self.owner[i] == slot
                && self.workers[slot as usize].unheld >= self.unheld_cap(slot as usize)
            {
                count(slot);
            }
        }
        while let Some(&(at, index, slot)) = self.reported_log.front() {
            if now.saturating_duration_since(at) < bound {
                break;
            }
            self.reported_log.pop_front();
            let i = index as usize;
            if self.state[i] == TaskState::Reported && self.owner[i] == slot {
                count(slot);
            }
        }
        for (slot, count) in stale {
            let s = slot as usize;
            if !self.workers[s].alive {
                continue;
            }
            let name = self.workers[s].info.name.clone();
            let reason = format!(
                "worker {name:?} reported {count} tasks done whose results have not reached the sink at \
                 {} after {:.0} s, while the sink answers the ventilator; check the worker's --sink \
                 (its tasks go to other workers)",
                self.config.sink,
                bound.as_secs_f64()
            );
            log::warn!("{}", printable(&reason));
            self.workers[s].refused = true;
            out.push(Command::ToWorker {
                worker: slot,
                message: Message::Refused {
                    kind: RefusalKind::ResultsLost,
                    reason,
                },
            });
            self.note_worker(slot, "refused", None);
            self.lose_worker(slot, now);
        }
    }

    fn heartbeat_workers(&self, out: &mut Vec<Command>) {
        let beat = self.heartbeat();
        for (id, w) in self.workers.iter().enumerate() {
            // A worker that declined still hears the ventilator: it is not gone.
            if w.alive || w.declined {
                out.push(Command::ToWorker {
                    worker: id as WorkerId,
                    message: beat.clone(),
                });
            }
        }
    }

    /// A heartbeat to every live worker that holds tasks: one whose connection is gone
    /// fails at once and its tasks go to others.
    fn probe_holders(&self, out: &mut Vec<Command>) {
        let beat = self.heartbeat();
        for (id, w) in self.workers.iter().enumerate() {
            if w.alive && w.assigned > 0 {
                out.push(Command::ToWorker {
                    worker: id as WorkerId,
                    message: beat.clone(),
                });
            }
        }
    }

    fn expire_silent_workers(&mut self, now: Instant) {
        let timeout = self.config.heartbeat.timeout();
        for slot in 0..self.workers.len() {
            let silent = now.saturating_duration_since(self.workers[slot].last_seen);
            if self.workers[slot].alive && silent > timeout {
                let name = printable(&self.workers[slot].info.name).into_owned();
                self.gone_log.warn_at(now, || {
                    format!(
                        "worker {name} silent for {:.1} s; declaring it gone",
                        silent.as_secs_f64()
                    )
                });
                self.note_worker(slot as WorkerId, "silent", Some(silent));
                self.lose_worker(slot as WorkerId, now);
            }
        }
    }

    // ---- handing out ----------------------------------------------------------------------

    /// Tasks whose send found the worker's queue full: taken back as they were.
    fn bounced(&mut self, slot: WorkerId, tasks: &[Task], again: &[bool]) {
        // The kernel's source may have bounced with them: it goes again.
        if let Some(w) = self.workers.get_mut(slot as usize) {
            w.has_kernel = false;
        }
        for (task, &was_requeued) in tasks.iter().zip(again).rev() {
            let index = task.id as usize;
            if index >= self.len()
                || self.owner[index] != slot
                || self.state[index] != TaskState::Assigned
            {
                continue;
            }
            self.release(slot, index);
            self.state[index] = if was_requeued {
                self.redispatched = self.redispatched.saturating_sub(1);
                TaskState::Requeued
            } else {
                TaskState::Pending
            };
            self.owner[index] = NO_OWNER;
            self.pending.push_front(task.id);
            self.pending_count += 1;
            self.pending_ms += u64::from(self.config.tasks[index].workload_ms);
        }
    }

    /// Whether `slot` may take `task` now, and if not, whether only because tasks are
    /// scarce. A worker always gets a task when it has none. Beyond that it may hold up to
    /// its window (so it never waits a round trip between tasks), but only while more tasks
    /// are pending than there are workers: near the end of a batch the last tasks wait
    /// here for whichever worker frees up first, instead of queueing behind a busy one
    /// while another idles. Tasks that cost nothing stream up to the larger cap, since
    /// they cannot make a tail.
    ///
    /// Whatever a worker asks for, it never holds more than its window (its pipeline depth,
    /// capped at [`MAX_HINTED_WINDOW`] or `--window` if larger), and never more than its
    /// share of what is left; a worker whose task was backed up gets nothing until it
    /// reports again.
    fn credit(&self, slot: usize, task: &Task) -> Credit {
        let worker = &self.workers[slot];
        if !worker.alive || worker.stalled || worker.unheld >= self.unheld_cap(slot) {
            return Credit::None;
        }
        if worker.assigned == 0 {
            return Credit::Yes;
        }
        if worker.assigned_ms + u64::from(task.workload_ms) == 0 {
            let cap = if worker.proven {
                self.config.max_window
            } else {
                self.config.window
            };
            if worker.assigned >= cap {
                return Credit::None;
            }
            let share = self.pending_count.div_ceil(self.alive.max(1));
            return if (worker.assigned as usize) < share.max(1) {
                Credit::Yes
            } else {
                Credit::Scarce
            };
        }
        let hinted = u32::from(worker.info.window_hint).min(MAX_HINTED_WINDOW);
        let window = self.config.window.max(hinted);
        if worker.assigned >= window {
            return Credit::None;
        }
        if self.pending_count <= self.alive {
            return Credit::Scarce;
        }
        // Nominal speed until its reports say otherwise.
        let us_per_ms = worker.us_per_ms.unwrap_or(1000.0);
        // Queued behind what it holds, the task must end within the batch's horizon.
        let finish_us = (worker.assigned_ms + u64::from(task.workload_ms)) as f64 * us_per_ms;
        if finish_us <= self.horizon_us() {
            Credit::Yes
        } else {
            Credit::None
        }
    }

    /// A new chunk of a divisible job for `slot`, queued first. A worker is carved a chunk
    /// when it holds none, and, with a window of two or more, its next one while it holds
    /// one, on an even farm far from the job's end (`Carver::may_queue`): the next chunk
    /// then waits in its queue, so it never idles for a round trip between chunks.
    fn carve(&mut self, slot: usize) -> Carved {
        let worker = &self.workers[slot];
        let window = self
            .config
            .window
            .max(u32::from(worker.info.window_hint).min(MAX_HINTED_WINDOW));
        if !worker.alive
            || worker.stalled
            || worker.assigned > 1
            || (worker.assigned == 1 && window < 2)
            || worker.unheld >= self.unheld_cap(slot)
        {
            return Carved::NotNow;
        }
        let held_one = worker.assigned == 1;
        let Some(carver) = self.carver.as_mut() else {
            return Carved::Nothing;
        };
        if held_one && !carver.may_queue(slot) {
            return Carved::NotNow;
        }
        let Some((first, items)) = carver.carve(slot) else {
            return Carved::Nothing;
        };
        // Its workload is what it should take on this worker, in ms (what the backup rule
        // measures it by); the target until the worker's rate is known.
        let plan = *carver.plan();
        let expected_ms = match (carver.rate(slot), plan.policy) {
            (Some(rate), _) => f64::from(items) * 1000.0 / rate,
            (None, _) if plan.nominal_us > 0.0 => f64::from(items) * plan.nominal_us / 1000.0,
            (None, Policy::Adaptive(target)) => target.as_secs_f64() * 1000.0,
            (None, _) => 1000.0,
        };
        let id = self.config.tasks.len() as u32;
        let task = Task {
            id,
            workload_ms: expected_ms
                .ceil()
                .clamp(1.0, f64::from(crate::batch::MAX_WORKLOAD_MS))
                as u32,
            first,
            items,
        };
        self.config.tasks.push(task);
        self.state.push(TaskState::Pending);
        self.owner.push(NO_OWNER);
        self.chunk_at.insert(first, id);
        self.pending.push_front(id);
        self.pending_count += 1;
        self.pending_ms += u64::from(task.workload_ms);
        Carved::Chunk(id)
    }

    /// The next task still pending, without removing it.
    fn peek_pending(&mut self) -> Option<u32> {
        while let Some(&id) = self.pending.front() {
            // A copy the sink asked for goes out from `replicas` only, to a worker it
            // does not exclude.
            if matches!(
                self.state[id as usize],
                TaskState::Pending | TaskState::Requeued
            ) && !self.replica_set.contains(&id)
            {
                return Some(id);
            }
            self.pending.pop_front();
        }
        None
    }

    /// Hands out tasks to the workers in the ready queue, one task per worker per turn, so
    /// the longest tasks spread across workers; then one message per worker. A worker
    /// without credit leaves the queue; the cost is one queue step per task handed out,
    /// plus one per worker that leaves.
    fn dispatch(&mut self, now: Instant, out: &mut Vec<Command>) {
        let mut batches: Vec<(WorkerId, Vec<Task>, Vec<bool>)> = Vec::new();
        while self.pending_count > 0 || self.carver.as_ref().is_some_and(|c| c.left() > 0) {
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            let s = slot as usize;
            self.workers[s].queued = false;
            let replica = self.replica_for(s);
            let mut carved = false;
            let id = match replica.map(|(_, id)| id).or_else(|| self.peek_pending()) {
                Some(id) => id,
                None => match self.carve(s) {
                    Carved::Chunk(id) => {
                        carved = true;
                        id
                    }
                    // Back in the queue when its chunk is reported.
                    Carved::NotNow => continue,
                    // Copies wait for other workers: this one waits for a task or a copy
                    // it may run.
                    Carved::Nothing if !self.replicas.is_empty() => {
                        if !self.workers[s].in_waiting {
                            self.workers[s].in_waiting = true;
                            self.waiting.push(slot);
                        }
                        continue;
                    }
                    Carved::Nothing => {
                        self.enqueue(slot);
                        break;
                    }
                },
            };
            let task = self.config.tasks[id as usize];
            // A chunk carved for this worker was carved by its own rules (`carve`).
            let credit = if carved {
                Credit::Yes
            } else {
                self.credit(s, &task)
            };
            match credit {
                Credit::None => continue,
                Credit::Scarce => {
                    if !self.workers[s].in_tail {
                        self.workers[s].in_tail = true;
                        self.tail.push(slot);
                    }
                    continue;
                }
                Credit::Yes => {}
            }
            let b = match self.workers[s].outgoing {
                Some(b) => b as usize,
                None => {
                    batches.push((slot, Vec::new(), Vec::new()));
                    self.workers[s].outgoing = Some(batches.len() as u32 - 1);
                    batches.len() - 1
                }
            };
            if batches[b].1.len() >= MAX_ITEMS_PER_MESSAGE {
                // A full message this call; its turn comes again on the next.
                self.deferred.push(slot);
                continue;
            }
            match replica {
                Some((pos, index)) => {
                    self.replicas.remove(pos);
                    self.replica_set.remove(&index);
                }
                None => {
                    self.pending.pop_front();
                }
            }
            self.pending_count -= 1;
            self.pending_ms -= u64::from(task.workload_ms);
            self.assigned_ms += u64::from(task.workload_ms);
            let again = self.state[id as usize] == TaskState::Requeued;
            if again {
                self.items_redone += u64::from(task.items);
            }
            batches[b].2.push(again);
            self.state[id as usize] = TaskState::Assigned;
            self.owner[id as usize] = slot;
            let worker = &mut self.workers[s];
            worker.given.push_back((now, id));
            worker.assigned += 1;
            worker.assigned_ms += u64::from(task.workload_ms);
            batches[b].1.push(task);
            self.enqueue(slot);
        }
        // Workers set aside for a full message go back for the next call.
        for slot in std::mem::take(&mut self.deferred) {
            self.enqueue(slot);
        }
        for (worker, tasks, again) in batches {
            self.workers[worker as usize].outgoing = None;
            self.redispatched += again.iter().filter(|&&a| a).count() as u64;
            self.send_tasks(worker, tasks, again, out);
        }
    }

    /// Tasks for `worker`, framed as [`Framing`] says: the kernel's source first if it has
    /// not had it since it greeted, one task a command when tasks carry inputs.
    fn send_tasks(
        &mut self,
        worker: WorkerId,
        tasks: Vec<Task>,
        again: Vec<bool>,
        out: &mut Vec<Command>,
    ) {
        let framing = self.config.framing;
        let w = &mut self.workers[worker as usize];
        let kernel = framing.kernel && !w.has_kernel;
        w.has_kernel |= framing.kernel;
        let compress = framing.compress && w.info.codecs & crate::protocol::CODEC_LZ4 != 0;
        if framing.inputs {
            for (n, (task, again)) in tasks.into_iter().zip(again).enumerate() {
                out.push(Command::Tasks {
                    worker,
                    tasks: vec![task],
                    again: vec![again],
                    kernel: kernel && n == 0,
                    compress,
                });
            }
        } else {
            out.push(Command::Tasks {
                worker,
                tasks,
                again,
                kernel,
                compress,
            });
        }
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
