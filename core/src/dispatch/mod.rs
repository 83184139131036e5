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
use tasks::{TaskTable, NO_OWNER};
use timers::{Timer, Timers};

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
/// How often at most a report in a batch's tail runs the end game at once (between
/// probes).
const END_GAME_REACT: Duration = Duration::from_millis(1);

/// Most workers left idle within an [`END_GAME_REACT`] that look at its end; the rest wait
/// for the probe. Workers alike report together; at 10,000 workers every idle one looking
/// cost fourteen times the decisions' CPU and eight times the copies.
const END_GAME_DEFERRED: usize = 8;
/// How often a ventilator waiting for workers repeats what it waits for.
const WAIT_REMINDER: Duration = Duration::from_secs(5);
/// Most times the end game hands one task over: a faster worker idle later may take a
/// task a slower one took first; a task never goes back to a worker it was taken from.
const MAX_TAKEOVERS: u8 = 3;
/// How long a chunk's worker has to yield its tail before the end game copies the chunk
/// instead (a worker that cannot cut it finishes it whole): a piece's time, a round trip
/// and the end game's look at the tail, many times over.
const YIELD_GRACE: Duration = Duration::from_millis(250);
/// How much faster by its measured rate a worker must be than another to be judged
/// faster at all: rates measured on items of different costs mislead by more than a
/// fifth.
const CLEAR_MARGIN: f64 = 4.0;
/// The most a piece in hand is expected to outlast its time ([`crate::pieces::piece_time`]) in the end
/// game's choice between a yield and a copy, however far its chunk overran.
const PIECE_OVERRUN_CAP: f64 = 2.0;
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
        /// The worker is to run these chunks in pieces: a faster worker could relieve
        /// it in the end game, by a yield ([`Message::Tasks`]'s `in_pieces`).
        in_pieces: bool,
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
    /// were told to abandon them; waiting until none holds one, or [`Timer::Drain`].
    Draining {
        since: Instant,
    },
    /// Complete or stopped: nothing more happens.
    Over,
}

/// A worker's measured speed as a multiple of nominal; none until it reports. Counted at
/// nominal speed, four cpu workers a thousand times slower than declared, each on its first
/// band, cut the batch's horizon tenfold and held the fast worker to one task at a time,
/// a round trip lost per band.
fn speed_of(worker: &WorkerSlot) -> f64 {
    worker.us_per_ms.map_or(0.0, |r| 1000.0 / r.max(1e-3))
}

/// What carving a chunk for a worker came to.
enum Carved {
    Chunk(u32),
    /// Not for this worker now (it holds a chunk, or is stalled).
    NotNow,
    /// The job is all handed out.
    Nothing,
}

/// How much slower than the other workers on average a worker must be for a task to be
/// held back from it as outpaced ([`Credit::Outpaced`]).
const OUTPACED_MARGIN: f64 = 2.0;

/// Whether a worker may take a task now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credit {
    Yes,
    /// Not now, and not until it reports (or it is gone, or stalled).
    None,
    /// Not while tasks are this scarce: it may again when tasks are requeued.
    Scarce,
    /// Not while the other workers would finish everything left before this one finished
    /// the task: it waits, and looks again when tasks come back, a worker is lost, a report
    /// runs far over its worker's pace, a holder runs past its pace (at this instant,
    /// [`Timer::Recheck`]), and each heartbeat.
    Outpaced(Option<Recheck>),
}

/// When workers waiting as outpaced look again though no message comes: at `at`, if
/// `holder` still holds the task at `index`, having run it past what its pace predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recheck {
    at: Instant,
    holder: WorkerId,
    index: u32,
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
    /// The least wall time per nominal ms any of its reports took: its speed on the
    /// cheapest tasks it ran, which compares workers whose smoothed paces were measured on
    /// tasks of different costs (bands of sky and bands through the set, declared alike).
    best_us_per_ms: Option<f64>,
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
    /// In the waiting list (idle while every queued copy excluded it, or outpaced).
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
            best_us_per_ms: None,
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
    /// Every task (a job's chunks as they are carved), its state and owner, and the queue
    /// of those to hand out.
    tasks: TaskTable,
    /// Workloads assigned to live workers and not yet reported, summed.
    assigned_ms: u64,
    /// Live workers' measured speeds (nominal ms per ms; a worker counts once it has
    /// reported), summed; recomputed every heartbeat so rounding never drifts.
    speed: f64,
    /// Live workers counted in `speed`: those measured.
    measured: usize,
    /// When the end game last ran (a tail probe, or a report at once: [`END_GAME_REACT`]).
    end_game_at: Instant,
    /// A report ran far over its worker's pace since the waiting workers last looked
    /// again; they look again after the reports at hand, at most once an
    /// [`END_GAME_REACT`].
    wake_due: bool,
    /// When a slow report last woke the waiting workers.
    woken_at: Instant,
    /// The holder and task [`Timer::Recheck`] is armed for: the waiting workers look
    /// again when it fires only if that task is still in the holder's hands (one that
    /// reported at its pace changed nothing they look at).
    recheck_on: Option<(WorkerId, u32)>,
    /// Workers a report left idle in a list's tail within [`END_GAME_REACT`] of the last
    /// end game: they look when [`Timer::EndGame`] fires.
    end_game_for: Vec<usize>,
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
    /// excluded them, or because the farm would finish everything left before them
    /// ([`Credit::Outpaced`]): they come back when any task is requeued, a copy queued or
    /// handed out, a worker lost, a report runs far over its worker's pace, and each
    /// heartbeat.
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
    /// What is due when: the heartbeat's round, the tail's probe, the sink's reminder, the
    /// end of a drain.
    timers: Timers,
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
    /// Chunks whose workers were asked to yield their tails, and when: not asked again,
    /// and left to finish (not copied) for [`YIELD_GRACE`].
    yielding: HashMap<u32, Instant>,
    /// Chunks whose holder was told to run them in pieces (so it can cut them).
    in_pieces: std::collections::HashSet<u32>,
    /// Chunks cut short by their workers, and the items that went to others.
    chunks_cut: u64,
    items_handed_on: u64,
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
    /// How long its holder has held it, queued or running, in µs.
    held_us: f64,
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
    /// Chunks whose workers gave up their tails in the end game, and the items that went
    /// to other workers (done once, not twice).
    pub chunks_cut: u64,
    pub items_handed_on: u64,
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
                    // Once the batch is over no worker holds a task of it: copies still
                    // out were abandoned when it ended.
                    assigned: if self.is_over() { 0 } else { w.assigned },
                    last_seen: w.last_seen,
                })
                .collect(),
        }
    }

    /// A dispatcher for one batch; `now` and `unix_ms` are the same moment on the pump's
    /// monotonic and wall clocks (the wall clock only stamps the batch's start).
    pub fn new(mut config: DispatchConfig, now: Instant, unix_ms: u64) -> Dispatcher {
        // The table holds the tasks from here on; the config keeps the rest.
        let tasks = TaskTable::new(std::mem::take(&mut config.tasks), &config.order);
        Dispatcher {
            phase: Phase::Waiting,
            tasks,
            assigned_ms: 0,
            speed: 0.0,
            measured: 0,
            end_game_at: now,
            wake_due: false,
            woken_at: now,
            recheck_on: None,
            end_game_for: Vec::new(),
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
            timers: {
                let mut timers = Timers::default();
                timers.set(Timer::Beat, now);
                timers.set(Timer::Probe, now);
                timers
            },
            heard_from_sink: now,
            sink_silence_said: false,
            idle_since: None,
            declines: 0,
            last_said: None,
            notes: Vec::new(),
            observed: Vec::new(),
            said_phase: None,
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
            yielding: HashMap::new(),
            in_pieces: std::collections::HashSet::new(),
            chunks_cut: 0,
            items_handed_on: 0,
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
        let first = out.len();
        self.act(now, event, out);
        // What the view is told comes before the commands that follow from it: a worker
        // lost before its tasks go to others, so their sends count as redispatches.
        out.splice(first..first, self.observed.drain(..).map(Command::Observed));
        // A timer of a phase left behind is never due again.
        if !matches!(self.phase, Phase::Announcing { .. }) {
            self.timers.stop(Timer::Nag);
        }
        if !matches!(self.phase, Phase::Draining { .. }) {
            self.timers.stop(Timer::Drain);
        }
        let phase = self.phase_name();
        if self.said_phase != Some(phase) {
            self.said_phase = Some(phase);
            self.note(crate::events::Note::Phase {
                phase: phase.to_owned(),
            });
        }
        out.extend(self.notes.drain(..).map(Command::Note));
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
        if let Phase::Draining { since } = self.phase {
            let idle = !self.workers.iter().any(|w| w.alive && w.assigned > 0);
            if idle || self.timers.due(Timer::Drain, now) {
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
        // The probe matters only in the tail, whatever it is armed at; a drain waits for
        // its end only (no heartbeat's round runs then).
        let probing =
            self.phase == Phase::Dispatching && self.in_tail() && self.tasks.held() < self.len();
        let timers: &[Timer] = if matches!(self.phase, Phase::Draining { .. }) {
            &[Timer::Drain]
        } else if probing {
            &[
                Timer::Beat,
                Timer::Nag,
                Timer::Probe,
                Timer::Recheck,
                Timer::EndGame,
            ]
        } else {
            &[Timer::Beat, Timer::Nag, Timer::Recheck, Timer::EndGame]
        };
        self.timers.earliest(timers).unwrap_or(self.unix_base.0)
    }

    /// Whether the sink acknowledged the batch and tasks began to go out.
    pub fn has_dispatched(&self) -> bool {
        self.dispatching
    }

    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.len() == 0
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
        self.tasks.state(id as usize)
    }

    /// The worker holding task `id`, if one does.
    pub fn owner(&self, id: u32) -> Option<WorkerId> {
        let o = self.tasks.owner(id as usize);
        (o != NO_OWNER).then_some(o)
    }

    pub fn pending_count(&self) -> usize {
        self.tasks.pending()
    }

    /// A divisible job's items: (held by the sink, in all); None for a task list.
    pub fn items_progress(&self) -> Option<(u64, u64)> {
        let carver = self.carver.as_ref()?;
        Some((self.covered.covered(), carver.plan().items))
    }

    /// Nominal work (ms of workload) of the tasks not yet done: pending, requeued and out
    /// with a worker. What a task list's ETA is made from.
    pub fn work_left_ms(&self) -> u64 {
        self.tasks.pending_ms() + self.assigned_ms
    }

    /// The items chunk `id` covers (0 for a task of a task list, or an unknown id).
    pub fn task_items(&self, id: u32) -> u64 {
        self.tasks
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
            held: self.tasks.held(),
            chunks: self.carver.as_ref().map_or(0, Carver::carved),
            items_redone: self.items_redone,
            chunks_cut: self.chunks_cut,
            items_handed_on: self.items_handed_on,
        }
    }

    /// Checks the running sums against the tables they summarise (tests only: it scans).
    #[cfg(test)]
    pub(crate) fn audit(&self) -> Result<(), String> {
        self.tasks.audit(|id| self.replica_set.contains(&id))?;
        let assigned_ms: u64 = self
            .tasks
            .in_state(TaskState::Assigned)
            .map(|i| self.tasks.workload_ms(i))
            .sum();
        let alive = self.workers.iter().filter(|w| w.alive).count();
        let speed: f64 = self.workers.iter().filter(|w| w.alive).map(speed_of).sum();
        let measured = self
            .workers
            .iter()
            .filter(|w| w.alive && w.us_per_ms.is_some())
            .count();
        let per_worker: u64 = self
            .workers
            .iter()
            .filter(|w| w.alive)
            .map(|w| w.assigned_ms)
            .sum();
        if (assigned_ms, alive, measured) != (self.assigned_ms, self.alive, self.measured)
            || per_worker != assigned_ms
            || (speed - self.speed).abs() > 1e-6 * speed.max(1.0)
        {
            return Err(format!(
                "sums drifted: assigned_ms {assigned_ms} vs {} (workers {per_worker}), alive \
                 {alive} vs {}, speed {speed} vs {}, measured {measured} vs {}",
                self.assigned_ms, self.alive, self.speed, self.measured
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
        self.tasks.queued()
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
            chunks_cut: self.chunks_cut,
            items_handed_on: self.items_handed_on,
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
        // In the tail (nothing left to hand out), a worker that vanished holding tasks
        // holds up the batch: look for such workers often, not once a heartbeat. And an
        // idle worker that would finish a slow one's task sooner takes it over. After the
        // phase's own round, so a batch that began dispatching in this tick is looked at
        // too.
        if self.phase == Phase::Dispatching && self.in_tail() && self.timers.due(Timer::Probe, now)
        {
            self.timers.set(Timer::Probe, now + TAIL_PROBE);
            self.timers.stop(Timer::EndGame);
            self.end_game_for.clear();
            self.probe_holders(out);
            self.end_game_at = now;
            self.end_game(now, None, out);
        }
        // Workers a report left idle in a list's tail while the end game had just run.
        if self.timers.due(Timer::EndGame, now) {
            self.timers.stop(Timer::EndGame);
            let slots = std::mem::take(&mut self.end_game_for);
            if self.phase == Phase::Dispatching && self.in_tail() {
                self.end_game_at = now;
                self.end_game(now, Some(slots), out);
            }
        }
    }

    fn tick_waiting(&mut self, now: Instant, out: &mut Vec<Command>) {
        let want = self.config.wait_workers;
        if self.timers.due(Timer::Beat, now) {
            self.timers
                .set(Timer::Beat, now + self.config.heartbeat.interval);
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
        self.timers.set(Timer::Nag, now + FIRST_SINK_NAG);
        self.heard_from_sink = now;
        out.push(Command::ToSink(self.batch_message()));
    }

    fn tick_announcing(&mut self, now: Instant, out: &mut Vec<Command>) {
        if let Phase::Announcing {
            holding: Some(holding),
        } = self.phase
        {
            if self.acks_heard() >= holding {
                log::debug!("dispatching {} tasks", self.len() - self.tasks.held());
                self.phase = Phase::Dispatching;
                self.dispatching = true;
                self.heard_from_sink = now;
                self.tick_dispatching(now, out);
                return;
            }
        }
        if self.timers.due(Timer::Beat, now) {
            self.timers
                .set(Timer::Beat, now + self.config.heartbeat.interval);
            self.heartbeat_workers(out);
            self.expire_silent_workers(now);
            out.push(Command::ToSink(self.batch_message()));
        }
        if self.timers.due(Timer::Nag, now) {
            log::warn!(
                "waiting for the sink at {} to acknowledge the batch (is `conquer sink` running there?)",
                self.config.sink
            );
            self.timers.set(Timer::Nag, now + SINK_NAG);
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
        if self.timers.due(Timer::Beat, now) {
            self.timers
                .set(Timer::Beat, now + self.config.heartbeat.interval);
            if !self.every_heartbeat(now, out) {
                return;
            }
        }
        if self.timers.due(Timer::Recheck, now) {
            self.timers.stop(Timer::Recheck);
            if let Some((holder, index)) = self.recheck_on.take() {
                if self.tasks.assigned_to(index as usize, holder) {
                    self.wake_waiting();
                }
            }
        }
        self.dispatch(now, out);
    }

    /// Once a heartbeat interval: liveness both ways, stragglers, the sink's silence.
    /// False when the batch stopped.
    fn every_heartbeat(&mut self, now: Instant, out: &mut Vec<Command>) -> bool {
        self.speed = self.workers.iter().filter(|w| w.alive).map(speed_of).sum();
        // Speeds and stalls changed since: a worker left waiting as outpaced looks again.
        self.wake_waiting();
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
                held: self.tasks.held(),
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
            .retain(|&index| self.tasks.state(index as usize) != TaskState::Held);
        for &index in &self.gave_up {
            out.push(Command::ToSink(self.gave_up_message(index as usize)));
        }
        out.push(Command::ToSink(self.stats(false)));
        if self.alive == 0 && self.tasks.held() < self.len() {
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
                    self.len() - self.tasks.held(),
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
    /// that declined the batch are released too (they wait for its end), and so are those
    /// declared gone: one gone for a silence may still be there (a starved thread, a
    /// paused process), and one told to leave at the end would otherwise wait for it
    /// forever. A worker really gone answers `Unreachable`, which loses nothing now (a
    /// newcomer waiting for its name may be admitted, to no effect).
    fn end_workers(&self, out: &mut Vec<Command>) {
        let end = Message::End {
            batch: self.config.batch_id,
            shutdown: self.config.shutdown_workers,
        };
        for (id, worker) in self.workers.iter().enumerate() {
            if !worker.refused {
                out.push(Command::ToWorker {
                    worker: id as WorkerId,
                    message: end.clone(),
                });
            }
        }
    }
}

mod endgame;
mod handout;
mod replicas;
mod roster;
mod sink;
mod tasks;
mod timers;

#[cfg(test)]
mod tests;
