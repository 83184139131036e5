//! The sink's rules as a state machine: which batch it serves, which results it holds (one
//! bit per task, each counted once), who may join, and when the batch is complete.
//!
//! No socket, clock, file or thread in here (CI greps for them). The sink's pump feeds
//! [`Collector::handle`] decoded messages, send failures and ticks with the time they
//! happened, and carries out the [`SinkCommand`]s in order: results are recorded, then
//! synced, and only then does the ventilator hear they are held, because the commands come
//! in that order and the pump stops at the first that fails.

use crate::batch::ideal_ms;
use crate::claims::{clashes, name_taken, Claims, Holder};
use crate::heartbeat::{check_name, Heartbeat};
use crate::intervals::IntervalSet;
use crate::protocol::{
    Message, RefusalKind, Status, TaskResult, WorkerInfo, MAX_ITEMS_PER_MESSAGE,
};
use crate::report::{
    BatchHeader, FailedTask, JobReport, Quarantined, RecoveredResults, ReplicaMismatch, Report,
    WorkerReport,
};
use crate::text::{printable, RateLimited};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Most results held back while the sink waits to learn its batch.
pub const MAX_EARLY_RESULTS: usize = 1 << 20;
/// Most messages held back meanwhile, however few results each carries.
pub const MAX_EARLY_MESSAGES: usize = 1 << 14;
/// Most memory results held back meanwhile may take, in bytes: each result's fields, its
/// name, error and output, and each message's worker description, as allocated
/// ([`early_bytes`]). A million results with 255-byte names would take over 400 MB; they
/// stop here.
pub const MAX_EARLY_BYTES: usize = 256 << 20;

/// What a message held back costs in memory: its results' fields and the bytes they and
/// the worker's description point to (capacities, not lengths: what is allocated).
pub fn early_bytes(worker: &WorkerInfo, results: &[TaskResult]) -> usize {
    let strings = worker.name.capacity() + worker.backend.capacity() + worker.adapter.capacity();
    std::mem::size_of::<Early>()
        + strings
        + results
            .iter()
            .map(|r| {
                std::mem::size_of::<TaskResult>()
                    + r.name.capacity()
                    + r.error.capacity()
                    + r.output.capacity()
            })
            .sum::<usize>()
}
/// Most worker names remembered at once; silent ones are forgotten first.
const MAX_PEERS: usize = 100_000;
/// A day in ms: a batch start further back than this is taken for a clock error.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// What the collector needs to know.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// Liveness of workers' greetings: a worker silent this long gives up its name.
    pub heartbeat: Heartbeat,
    /// How long to wait for the ventilator's last counters once every task is held.
    pub final_stats_wait: Duration,
    /// The sink's endpoint, for messages only.
    pub endpoint: String,
    /// Whether results are recorded (a results file): a stop then says how to resume.
    pub results_path: Option<String>,
    /// The command that finishes the batch after a stop, where the sink is not its own
    /// process (`conquer run`); None: restart the sink with `--resume`.
    pub resume_advice: Option<String>,
    /// The codecs it takes outputs in, as its welcome says (`protocol::codecs`).
    pub codecs: u8,
}

/// What happened, as the pump saw it.
#[derive(Debug, Clone)]
pub enum SinkEvent {
    /// A decoded message from the peer with this routing id.
    FromPeer {
        routing_id: Vec<u8>,
        message: Message,
    },
    /// A frame that was not one of our messages.
    Rejected { peer: String, why: String },
    /// A message to this peer could not be sent: its connection is gone.
    Unreachable(Vec<u8>),
    /// The pump has read everything waiting (or its poll timed out).
    Tick,
}

/// What to do, in order; the pump stops at the first command that fails.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkCommand {
    /// A message to a peer, never waiting; a lost connection comes back as
    /// [`SinkEvent::Unreachable`].
    Send { to: Vec<u8>, message: Message },
    /// Results to append to the results file (where there is one).
    Record {
        header: BatchHeader,
        worker: String,
        backend: String,
        results: Vec<TaskResult>,
    },
    /// Make every recorded result durable before the next command.
    Sync,
    /// The batch is complete and its last counters are in (or waited for): report.
    Finished,
    /// The sink cannot go on.
    Stop(SinkStop),
    /// Something observed, for `--events` (a batch adopted, its clock started).
    Note(crate::events::Note),
}

/// Why a sink stopped before its batch was complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkStop {
    #[error(
        "the results file holds batch {file_batch:016x} ({file_tasks} tasks) but the ventilator \
         announces {batch:016x} ({tasks} tasks): resume with the file of this batch, or start \
         afresh with --overwrite (or another --results file)"
    )]
    ResumeMismatch {
        file_batch: u64,
        file_tasks: u32,
        batch: u64,
        tasks: u32,
    },
}

/// A batch as the ventilator announced it.
struct BatchState {
    id: u64,
    task_count: usize,
    /// Whether the ventilator asked for any verification: checked statuses otherwise
    /// make no sense and are not believed.
    verifies: bool,
    /// What the batch's tasks run (default for a batch recovered from a file alone).
    job: crate::batch::Job,
    expected_ms: u64,
    longest_ms: u32,
    held: Vec<u64>,
    held_count: usize,
    /// Start of the batch, wall clock (kept in the results file for a resumed sink).
    started_unix_ms: u64,
    started: Instant,
    /// The ventilator's routing id and run: where `held` and `complete` go.
    ventilator: Vec<u8>,
    session: u64,
    finished: Option<Instant>,
    /// A divisible job: the items held (its results are counted by items, not ids).
    items: Option<IntervalSet>,
    /// Digests of the tasks' input names, by id (a job's one input: one), as the
    /// ventilator announced them; empty for a batch without named inputs.
    names: Vec<u64>,
    /// A search job that stops at this many hits (0: searches the whole keyspace), and
    /// the hits held so far.
    hits_wanted: u64,
    hits: std::collections::BTreeSet<u32>,
}

impl BatchState {
    fn new(id: u64, task_count: usize, job: crate::batch::Job, started: Instant) -> BatchState {
        let search =
            crate::kernels::Kernel::from_id(job.kernel) == Some(crate::kernels::Kernel::Search);
        BatchState {
            id,
            task_count,
            verifies: job.verify_percent > 0,
            job,
            expected_ms: 0,
            longest_ms: 0,
            held: vec![0; task_count.div_ceil(64)],
            held_count: 0,
            started_unix_ms: 0,
            started,
            ventilator: Vec::new(),
            session: 0,
            finished: None,
            items: (job.items > 0).then(IntervalSet::new),
            names: Vec::new(),
            hits_wanted: if search && job.items > 0 {
                u64::from(job.constants[crate::kernels::search::HITS_WANTED])
            } else {
                0
            },
            hits: std::collections::BTreeSet::new(),
        }
    }

    /// Whether every task (every item of a divisible job) is held, or a search has the
    /// hits it asked for.
    fn all_held(&self) -> bool {
        match &self.items {
            Some(items) => {
                items.covered() == self.job.items
                    || (self.hits_wanted > 0 && self.hits.len() as u64 >= self.hits_wanted)
            }
            None => self.held_count == self.task_count,
        }
    }

    fn header(&self) -> BatchHeader {
        BatchHeader {
            batch: self.id,
            tasks: self.task_count as u32,
            items: self.job.items,
            hits_wanted: self.hits_wanted,
            started_unix_ms: self.started_unix_ms,
        }
    }
    fn is_held(&self, id: usize) -> bool {
        self.held[id / 64] & (1 << (id % 64)) != 0
    }
    fn set_held(&mut self, id: usize) {
        self.held[id / 64] |= 1 << (id % 64);
        self.held_count += 1;
    }
    fn held_ids(&self) -> Vec<u32> {
        (0..self.task_count)
            .filter(|&i| self.is_held(i))
            .map(|i| i as u32)
            .collect()
    }
}

/// A worker that greeted this sink: who holds the name, and since when it is silent.
struct Peer {
    routing_id: Vec<u8>,
    session: u64,
    last_seen: Instant,
}

/// A divisible job's counts that only the ventilator knows (its `stats`).
#[derive(Debug, Clone, Copy, Default)]
struct JobCounts {
    chunks: u64,
    items_redone: u64,
    chunks_cut: u64,
    items_handed_on: u64,
    /// From the job's end to every worker idle, µs (a search stopped at its hits).
    cancel_us: u64,
}

#[derive(Default)]
struct Tally {
    backend: String,
    adapter: String,
    tasks: u64,
    items: u64,
    /// Its last result's end, on its clock (ms since the Unix epoch).
    last_unix_ms: u64,
    busy_us: u64,
    kernel_us: u64,
    /// Output bytes of the results it delivered first, uncompressed.
    output_bytes: u64,
    /// Their inputs' bytes as it received them, and the dispatches they took.
    input_bytes: u64,
    dispatches: u64,
}

/// Results that came before their batch was announced.
struct Early {
    peer: Vec<u8>,
    batch: u64,
    worker: WorkerInfo,
    results: Vec<TaskResult>,
}

/// The sink's welcome: it takes outputs in the codecs it speaks (none with
/// `--no-compress`, which asks workers for raw outputs).
fn welcome(codecs: u8) -> Message {
    Message::Welcome { codecs }
}

/// Everything the sink counts while it runs.
pub struct Collector {
    config: CollectConfig,
    batch: Option<BatchState>,
    recovered: Option<RecoveredResults>,
    workers: BTreeMap<String, Tally>,
    /// Workers that greeted this sink, by name.
    peers: HashMap<String, Peer>,
    /// Newcomers whose name a recently heard worker holds ([`crate::claims`]): welcomed if
    /// that worker's connection turns out to be gone, refused otherwise.
    claims: Claims<Vec<u8>>,
    duplicates: u64,
    rejected: u64,
    checked: u64,
    verified: u64,
    mismatches: u64,
    /// Items compared one by one (Mandelbrot pixels of checked bands), and how many of
    /// them differed from the CPU reference.
    compared: u64,
    differing: u64,
    /// Measured task times: the basis of the ideal when tasks are computed, not slept.
    measured_total_us: u64,
    measured_longest_us: u32,
    /// The ventilator's counters: (redispatched, rejected, refused), and whether they are
    /// final.
    ventilator_counts: (u64, u64, u64),
    /// Task input bytes the ventilator sent: (on the wire, uncompressed).
    input_bytes: (u64, u64),
    final_counts: bool,
    reject_log: RateLimited,
    refuse_log: RateLimited,
    newly_held: Vec<u32>,
    /// A divisible job's items newly held, for the ventilator.
    newly_ranges: Vec<(u64, u64)>,
    /// Items in late results of a divisible job, already held: dropped.
    late_items: u64,
    /// The ventilator's count of a divisible job's chunks and items handed out again.
    job_counts: JobCounts,
    /// Results that arrived before the batch was announced (workers reconnecting to a
    /// restarted sink flush their queues at once; the ventilator re-announces the batch
    /// within a heartbeat). Replayed on adoption; bounded in results and in messages.
    early: Vec<Early>,
    early_count: usize,
    /// Memory `early` takes ([`early_bytes`]).
    early_bytes: usize,
    /// `now` and the Unix ms at the same moment: batch starts are wall-clock stamps.
    unix_base: (Instant, u64),
    next_forget: Instant,
    done: bool,
    /// The last failure of each task that failed (keyed by id, or a chunk's first item),
    /// with its worker's name: what the report says of a task given up on. Bounded.
    last_errors: HashMap<u64, (String, String)>,
    /// Tasks the ventilator gave up on (`--max-attempts`), in the order it said so.
    failed: Vec<FailedTask>,
    /// Copies of replicated tasks not yet held (`--replicate`), by task id or chunk's
    /// first item: at most a few per task in flight.
    replicas: HashMap<(u64, u32), Copies>,
    /// Replicated tasks held, the disagreements found, how often each worker was the odd
    /// one out, and the workers quarantined for it.
    replicated: u64,
    /// Replicated tasks only one worker could run (held on its copies alone).
    unconfirmed: u64,
    replica_mismatches: Vec<ReplicaMismatch>,
    blamed: HashMap<String, u32>,
    quarantined: Vec<Quarantined>,
    /// Bytes the copies in `replicas` take.
    replica_bytes: usize,
}

/// The copies in hand of a replicated task not yet held.
#[derive(Debug, Clone)]
struct Copies {
    id: u32,
    first: u64,
    items: u32,
    copies: Vec<Replica>,
}

/// How a replicated task's copies settled.
#[derive(Debug, Clone, Copy)]
enum Settled {
    /// Two workers' copies or more agree: this one's is kept.
    Majority(usize),
    /// Only one worker could run it, and its copies agree.
    Unconfirmed,
    /// No two workers agree (or one worker's own copies differ).
    Undecided,
}

/// One worker's copy of a replicated task.
#[derive(Debug, Clone)]
struct Replica {
    worker: WorkerInfo,
    /// XXH3 of the output, seeded with the checksum: what copies are compared by.
    digest: u64,
    result: TaskResult,
}

/// Most replicated tasks whose copies the sink holds at once, and most bytes of them.
const MAX_REPLICA_TASKS: usize = 65_536;
const MAX_REPLICA_BYTES: usize = 256 << 20;

/// What a task's copies take in memory, as counted against [`MAX_REPLICA_BYTES`].
fn copies_bytes(copies: &[Replica]) -> usize {
    copies
        .iter()
        .map(|c| c.result.output.capacity() + std::mem::size_of::<Replica>())
        .sum()
}

/// A worker whose copies differ from the others' this often gets no more of the batch.
const QUARANTINE_AFTER: u32 = 2;

/// Most failures remembered for the report; beyond, a given-up task's error is unknown.
const MAX_LAST_ERRORS: usize = 65_536;

/// Progress of the batch in hand: (held, tasks).
pub type Progress = Option<(usize, usize)>;

impl Collector {
    /// A collector, with what a results file recovered for `--resume`; `now` and `unix_ms`
    /// are one moment on the pump's monotonic and wall clocks.
    pub fn new(
        config: CollectConfig,
        recovered: Option<RecoveredResults>,
        now: Instant,
        unix_ms: u64,
    ) -> Collector {
        Collector {
            next_forget: now + config.heartbeat.interval,
            config,
            batch: None,
            recovered,
            workers: BTreeMap::new(),
            peers: HashMap::new(),
            claims: Claims::default(),
            duplicates: 0,
            rejected: 0,
            checked: 0,
            verified: 0,
            mismatches: 0,
            compared: 0,
            differing: 0,
            measured_total_us: 0,
            measured_longest_us: 0,
            ventilator_counts: (0, 0, 0),
            input_bytes: (0, 0),
            final_counts: false,
            reject_log: RateLimited::new(5, Duration::from_secs(1)),
            refuse_log: RateLimited::new(5, Duration::from_secs(1)),
            newly_held: Vec::new(),
            newly_ranges: Vec::new(),
            late_items: 0,
            job_counts: JobCounts::default(),
            early: Vec::new(),
            early_count: 0,
            early_bytes: 0,
            unix_base: (now, unix_ms),
            done: false,
            last_errors: HashMap::new(),
            failed: Vec::new(),
            replicas: HashMap::new(),
            replicated: 0,
            unconfirmed: 0,
            replica_mismatches: Vec::new(),
            blamed: HashMap::new(),
            quarantined: Vec::new(),
            replica_bytes: 0,
        }
    }

    /// Whether the results file already holds every task of its batch: nothing to collect.
    pub fn recovered_complete(&self) -> bool {
        self.recovered
            .as_ref()
            .is_some_and(RecoveredResults::is_complete)
    }

    /// (held, tasks) of the batch in hand.
    pub fn progress(&self) -> Progress {
        self.batch.as_ref().map(|b| match &b.items {
            Some(items) => (items.covered() as usize, b.job.items as usize),
            None => (b.held_count, b.task_count),
        })
    }

    /// Messages held back before a batch was announced: (messages, results).
    pub fn early_held_back(&self) -> (usize, usize) {
        (self.early.len(), self.early_count)
    }

    /// Results for tasks already held, dropped and counted.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn is_finished(&self) -> bool {
        self.done
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_base.1 + now.saturating_duration_since(self.unix_base.0).as_millis() as u64
    }

    /// Handles one event at `now`, appending what to do to `out`.
    pub fn handle(&mut self, now: Instant, event: SinkEvent, out: &mut Vec<SinkCommand>) {
        if self.done {
            return;
        }
        match event {
            SinkEvent::FromPeer {
                routing_id,
                message,
            } => {
                self.settle_claims(now, out);
                self.message(now, routing_id, message, out)
            }
            SinkEvent::Rejected { peer, why } => self.reject(now, &peer, why),
            SinkEvent::Unreachable(routing_id) => self.unreachable(now, &routing_id, out),
            SinkEvent::Tick => {
                self.settle_claims(now, out);
                self.tick(now, out)
            }
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<SinkCommand>) {
        if now >= self.next_forget {
            self.next_forget = now + self.config.heartbeat.interval;
            self.forget_silent_peers(now);
        }
        self.acknowledge(now, out);
        if let Some(finished) = self.batch.as_ref().and_then(|b| b.finished) {
            if self.final_counts || now.duration_since(finished) >= self.config.final_stats_wait {
                if !self.final_counts {
                    log::warn!(
                        "the ventilator did not send its final counters; reporting the last ones it sent"
                    );
                }
                self.done = true;
                out.push(SinkCommand::Finished);
            }
        }
    }

    /// When the next tick is due without any message (the pump's poll timeout).
    pub fn next_deadline(&self) -> Instant {
        let mut at = self.next_forget;
        if let Some(finished) = self.batch.as_ref().and_then(|b| b.finished) {
            at = at.min(finished + self.config.final_stats_wait);
        }
        at
    }

    /// After a stop mid-batch: what was kept, and the command that finishes the batch.
    pub fn say_how_to_resume(&self, interrupted: bool) {
        let Some(b) = self.batch.as_ref().filter(|b| b.finished.is_none()) else {
            return;
        };
        let why = if interrupted {
            "interrupted"
        } else {
            "stopped by an error"
        };
        match &self.config.results_path {
            Some(path) => log::warn!(
                "{why} with {} of {} tasks of batch {:016x} held; they are in {path}. To finish the \
                 batch, {}",
                b.held_count,
                b.task_count,
                b.id,
                self.config.resume_advice.clone().unwrap_or_else(|| format!(
                    "restart the sink with `conquer sink --results {path} --resume`, with the same --bind and --secret-file (or --allow)"
                )),
            ),
            None => log::warn!(
                "{why} with {} of {} tasks of batch {:016x} held; nothing was saved (no --results), \
                 so a new sink starts the batch again: run sinks with --results FILE to be able to resume",
                b.held_count,
                b.task_count,
                b.id
            ),
        }
    }

    /// Forgets workers silent for many heartbeats, so the table stays bounded.
    fn forget_silent_peers(&mut self, now: Instant) {
        let forget_after = self.config.heartbeat.timeout() * 4;
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.last_seen) < forget_after);
    }

    fn send(out: &mut Vec<SinkCommand>, to: &[u8], message: Message) {
        out.push(SinkCommand::Send {
            to: to.to_vec(),
            message,
        });
    }

    fn refuse(
        &mut self,
        now: Instant,
        peer: &[u8],
        kind: RefusalKind,
        reason: String,
        out: &mut Vec<SinkCommand>,
    ) {
        let name = printable(&crate::text::peer_name(peer)).into_owned();
        self.refuse_log
            .warn_at(now, || format!("refused {name}: {reason}"));
        Self::send(out, peer, Message::Refused { kind, reason });
    }

    fn reject(&mut self, now: Instant, peer: &str, why: String) {
        self.rejected += 1;
        self.reject_log
            .warn_at(now, || format!("dropped a message from {peer}: {why}"));
    }

    fn reject_peer(&mut self, now: Instant, peer: &[u8], why: String) {
        let name = crate::text::peer_name(peer);
        self.reject(now, &name, why);
    }

    /// A worker's greeting: welcome it, unless another live worker holds its name. Which
    /// the other is, the welcome sent to it now tells: a lost connection comes back as
    /// `Unreachable` before anything else happens.
    fn join(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        info: WorkerInfo,
        out: &mut Vec<SinkCommand>,
    ) {
        if let Err(why) = check_name(&info.name) {
            self.refuse(now, &routing_id, RefusalKind::BadName, why, out);
            return;
        }
        if self.claims.is_waiting(&routing_id) {
            return;
        }
        let timeout = self.config.heartbeat.timeout();
        if let Some(existing) = self.peers.get(&info.name) {
            let holder = Holder {
                session: existing.session,
                routing_id: &existing.routing_id,
                live: now.saturating_duration_since(existing.last_seen) < timeout,
            };
            if clashes(holder, info.session, &routing_id) {
                let old = existing.routing_id.clone();
                Self::send(out, &old, welcome(self.config.codecs));
                self.claims.wait(old, routing_id, info);
                return;
            }
        }
        self.welcome(now, routing_id, info, out);
    }

    fn welcome(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        info: WorkerInfo,
        out: &mut Vec<SinkCommand>,
    ) {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&info.name) {
            self.forget_silent_peers(now);
        }
        if self.peers.len() < MAX_PEERS || self.peers.contains_key(&info.name) {
            let known = self.peers.insert(
                info.name.clone(),
                Peer {
                    routing_id: routing_id.clone(),
                    session: info.session,
                    last_seen: now,
                },
            );
            if known.is_none() {
                log::debug!("worker {} joined ({})", printable(&info.name), info.backend);
            }
        }
        Self::send(out, &routing_id, welcome(self.config.codecs));
    }

    fn unreachable(&mut self, now: Instant, routing_id: &[u8], out: &mut Vec<SinkCommand>) {
        for claim in self.claims.holder_gone(&routing_id.to_vec()) {
            self.welcome(now, claim.routing_id, claim.info, out);
        }
    }

    /// Newcomers whose namesake's connection stood are refused: the name is taken.
    fn settle_claims(&mut self, now: Instant, out: &mut Vec<SinkCommand>) {
        for claim in self.claims.settle() {
            let reason = name_taken(&claim.info.name, "sink", &self.config.endpoint);
            self.refuse(now, &claim.routing_id, RefusalKind::NameTaken, reason, out);
        }
    }

    fn message(
        &mut self,
        now: Instant,
        peer: Vec<u8>,
        message: Message,
        out: &mut Vec<SinkCommand>,
    ) {
        match message {
            Message::Join(info) => self.join(now, peer, info, out),
            Message::Hello(_) => {
                let reason = format!(
                    "this looks like a worker that connected its ventilator endpoint to a sink: {} is \
                     conquer's sink (results), not a ventilator; pass the ventilator's endpoint \
                     (port 5557 by default) as --ventilator and this one as --sink",
                    self.config.endpoint
                );
                self.refuse(now, &peer, RefusalKind::WrongPeer, reason, out);
            }
            Message::Batch {
                batch: id,
                session,
                started_unix_ms,
                task_count,
                expected_ms,
                longest_ms,
                job,
                names,
            } => match &mut self.batch {
                None if (task_count == 0 && job.items == 0)
                    || (task_count > 0 && job.items > 0)
                    || task_count > crate::batch::MAX_TASKS =>
                {
                    self.reject_peer(now, &peer, format!("batch {id:016x} of {task_count} tasks"));
                }
                None => {
                    let announced = Announced {
                        id,
                        session,
                        started_unix_ms,
                        task_count,
                        expected_ms,
                        longest_ms,
                        verifies: job.verify_percent > 0,
                        job,
                        names,
                    };
                    self.adopt(now, peer, announced, out)
                }
                Some(b) if b.id == id => {
                    b.ventilator = peer.clone();
                    b.job = job;
                    if b.session != session {
                        // The ventilator restarted: tell it everything we hold, once it is
                        // all on disk.
                        log::warn!(
                            "the ventilator restarted; sending it the {} results held",
                            b.held_count
                        );
                        b.session = session;
                        out.push(SinkCommand::Sync);
                        ack(out, &peer, b);
                        self.newly_held.clear();
                    } else if b.finished.is_some() {
                        // Every task is held: say so again, in case the first word was lost.
                        Self::send(out, &peer, Message::Complete { batch: id });
                    } else {
                        // The announcement is the ventilator's heartbeat: answer it, so the
                        // ventilator knows this sink is alive even while no results come.
                        Self::send(out, &peer, Message::Heartbeat { batch: id });
                        // Copies still wanted are asked for again (a restarted ventilator
                        // knows nothing of them).
                        self.ask_all_again(&peer, out);
                    }
                }
                Some(b) => {
                    let reason = format!(
                        "the sink at {} is busy with batch {:016x} ({} of {} tasks held) and cannot \
                         take batch {id:016x}; to run two batches at once, start another sink \
                         (`conquer sink --bind tcp://*:PORT`, with the farm's --secret-file) and point this ventilator's --sink at it",
                        self.config.endpoint, b.id, b.held_count, b.task_count
                    );
                    self.refuse(now, &peer, RefusalKind::Busy, reason, out);
                }
            },
            Message::Results {
                batch: id,
                worker,
                results,
            } => self.results(now, &peer, id, worker, results, out),
            Message::GaveUp {
                batch: id,
                id: task,
                first,
                items,
                attempts,
            } if self
                .batch
                .as_ref()
                .is_some_and(|b| b.id == id && b.ventilator == peer) =>
            {
                self.gave_up(now, &peer, task, first, items, attempts, out)
            }
            Message::Stats {
                batch: id,
                redispatched,
                rejected,
                refused,
                chunks,
                items_redone,
                chunks_cut,
                items_handed_on,
                cancel_us,
                inputs_wire,
                inputs,
                last,
            } if self.batch.as_ref().is_some_and(|b| b.id == id) => {
                self.ventilator_counts = (redispatched, rejected, refused);
                self.input_bytes = (inputs_wire, inputs);
                self.job_counts = JobCounts {
                    chunks,
                    items_redone,
                    chunks_cut,
                    items_handed_on,
                    cancel_us,
                };
                self.final_counts |= last;
            }
            other => self.reject_peer(
                now,
                &peer,
                format!("unexpected {} message", other.kind_name()),
            ),
        }
    }

    fn adopt(
        &mut self,
        now: Instant,
        peer: Vec<u8>,
        announced: Announced,
        out: &mut Vec<SinkCommand>,
    ) {
        let Announced {
            id,
            session,
            started_unix_ms,
            task_count,
            expected_ms,
            longest_ms,
            verifies,
            job,
            names,
        } = announced;
        let tasks = task_count as usize;
        // The batch's clock runs from its start at the ventilator, so a sink that joins a
        // batch late (restarted without a results file) reports the true elapsed time. A
        // start in the future or over a day ago (clocks apart) is not believed.
        let now_unix_ms = self.unix_ms(now);
        let since = now_unix_ms.saturating_sub(started_unix_ms);
        let (started_unix_ms, started) = if started_unix_ms <= now_unix_ms && since < DAY_MS {
            (
                started_unix_ms,
                now.checked_sub(Duration::from_millis(since)).unwrap_or(now),
            )
        } else {
            (now_unix_ms, now)
        };
        let mut b = BatchState {
            verifies,
            expected_ms,
            longest_ms,
            started_unix_ms,
            ventilator: peer.clone(),
            session,
            names,
            ..BatchState::new(id, tasks, job, started)
        };
        if let Some(recovered) = self.recovered.take() {
            let header = recovered.header;
            if header.batch != id || header.tasks != task_count || header.items != job.items {
                self.done = true;
                out.push(SinkCommand::Stop(SinkStop::ResumeMismatch {
                    file_batch: header.batch,
                    file_tasks: header.tasks,
                    batch: id,
                    tasks: task_count,
                }));
                return;
            }
            // The clock runs from the batch's original start, downtime included.
            let since = now_unix_ms.saturating_sub(header.started_unix_ms);
            b.started = now.checked_sub(Duration::from_millis(since)).unwrap_or(now);
            b.started_unix_ms = header.started_unix_ms;
            for r in &recovered.records {
                if let Some(items) = b.items.as_mut() {
                    let (first, end) = (r.result.first, r.result.first + u64::from(r.result.items));
                    let new = items.insert(first..end);
                    if new > 0 {
                        self.tally(&r.worker, &r.backend, "", &r.result, new);
                    }
                    b.hits.extend(r.hits.iter().copied());
                    continue;
                }
                let index = r.result.id as usize;
                if index < tasks && !b.is_held(index) {
                    b.set_held(index);
                    self.tally(&r.worker, &r.backend, "", &r.result, 0);
                }
            }
        } else {
            log::debug!("batch {id:016x}: {tasks} tasks, {expected_ms} ms expected; clock started");
        }
        self.batch = Some(b);
        // Results that came before the announcement count now, so the acknowledgement's
        // list is complete and the ventilator hands out nothing the sink already has.
        for early in std::mem::take(&mut self.early) {
            self.results(
                now,
                &early.peer,
                early.batch,
                early.worker,
                early.results,
                out,
            );
        }
        self.early_count = 0;
        self.early_bytes = 0;
        out.push(SinkCommand::Sync);
        self.newly_held.clear();
        if let Some(b) = &self.batch {
            out.push(SinkCommand::Note(crate::events::Note::Batch {
                batch: crate::events::batch_name(b.id),
                tasks: if b.job.items > 0 {
                    b.job.items
                } else {
                    b.task_count as u64
                },
                held: match &b.items {
                    Some(items) => items.covered(),
                    None => b.held_count as u64,
                },
            }));
            ack(out, &peer, b);
        }
    }

    /// Credits `worker` with a result it delivered first: `items` are the items of it the
    /// sink did not hold before (a divisible job), so overlapping ranges count once.
    fn tally(&mut self, worker: &str, backend: &str, adapter: &str, r: &TaskResult, items: u64) {
        let tally = self.workers.entry(worker.to_owned()).or_default();
        if tally.backend.is_empty() {
            tally.backend = backend.to_owned();
            tally.adapter = adapter.to_owned();
        }
        tally.tasks += 1;
        tally.items += items;
        tally.last_unix_ms = tally.last_unix_ms.max(r.finished_unix_ms);
        tally.busy_us += u64::from(r.wall_us);
        tally.kernel_us += u64::from(r.kernel_us);
        tally.output_bytes += r.output.len() as u64;
        tally.input_bytes += u64::from(r.input_bytes);
        tally.dispatches += u64::from(r.dispatches);
        self.measured_total_us += u64::from(r.wall_us);
        self.measured_longest_us = self.measured_longest_us.max(r.wall_us);
        if r.status.checked() {
            self.checked += 1;
        }
        if r.status.checked()
            && self.batch.as_ref().is_some_and(|b| {
                crate::kernels::Kernel::from_id(b.job.kernel)
                    == Some(crate::kernels::Kernel::Mandelbrot)
            })
        {
            self.compared += r.output.len() as u64 / 4;
            self.differing += u64::from(r.differing);
        }
        match r.status {
            Status::Mismatch => self.mismatches += 1,
            Status::Verified => self.verified += 1,
            Status::Ok | Status::Failed => {}
        }
    }

    fn results(
        &mut self,
        now: Instant,
        peer: &[u8],
        id: u64,
        worker: WorkerInfo,
        results: Vec<TaskResult>,
        out: &mut Vec<SinkCommand>,
    ) {
        if results.is_empty() {
            self.reject_peer(now, peer, "a results message with no results".into());
            return;
        }
        // Names end up in the report and the results file: printable text only.
        if let Err(why) = check_name(&worker.name)
            .and_then(|()| check_text(&worker.backend))
            .and_then(|()| check_text(&worker.adapter))
        {
            self.reject_peer(now, peer, format!("results from a worker with {why}"));
            return;
        }
        if self.batch.is_none() {
            // Held back until the batch is announced, within bounds on results and messages;
            // beyond them dropped and counted (the ventilator hands out again what the sink
            // does not hold once the batch is known).
            let bytes = early_bytes(&worker, &results) + peer.len();
            if self.early_count + results.len() <= MAX_EARLY_RESULTS
                && self.early.len() < MAX_EARLY_MESSAGES
                && self.early_bytes + bytes <= MAX_EARLY_BYTES
            {
                self.early_count += results.len();
                self.early_bytes += bytes;
                self.early.push(Early {
                    peer: peer.to_vec(),
                    batch: id,
                    worker,
                    results,
                });
            } else {
                self.reject_peer(
                    now,
                    peer,
                    "results before any batch, beyond what is held back".into(),
                );
            }
            return;
        }
        let Some(b) = self.batch.as_mut().filter(|b| b.id == id) else {
            let why = format!("results for batch {id:016x}, which this sink is not collecting");
            self.reject_peer(now, peer, why);
            return;
        };
        if b.items.is_some() {
            let items = b.job.items;
            let outside =
                |r: &TaskResult| r.items == 0 || r.first.saturating_add(u64::from(r.items)) > items;
            if let Some(bad) = results.iter().find(|r| outside(r)) {
                let why = format!(
                    "result for items {}..{} of a {items}-item job",
                    bad.first,
                    bad.first.saturating_add(u64::from(bad.items))
                );
                self.reject_peer(now, peer, why);
                return;
            }
        } else if let Some(bad) = results
            .iter()
            .find(|r| r.id as usize >= b.task_count || r.items != 0 || r.first != 0)
        {
            let why = format!(
                "result for task {} of a {}-task batch",
                bad.id, b.task_count
            );
            self.reject_peer(now, peer, why);
            return;
        }
        // Outputs are named after the task's input: only the name the batch gave that task
        // is believed, so no worker can have its output written under another's name.
        if !b.names.is_empty() {
            let named = |r: &TaskResult| {
                let expected = if b.items.is_some() {
                    b.names.first()
                } else {
                    b.names.get(r.id as usize)
                };
                r.status == Status::Failed
                    || expected == Some(&crate::protocol::name_digest(&r.name))
            };
            if let Some(bad) = results.iter().find(|r| !named(r)) {
                let why = format!(
                    "result for task {} names the input {:?}, which is not that task's",
                    bad.id,
                    bad.name.escape_debug().to_string()
                );
                self.reject_peer(now, peer, why);
                return;
            }
        }
        if !b.verifies {
            if let Some(bad) = results.iter().find(|r| r.status.checked()) {
                let why = format!(
                    "result for task {} claims status {} in a batch that asked for no verification",
                    bad.id,
                    bad.status.as_str()
                );
                self.reject_peer(now, peer, why);
                return;
            }
        }
        let mut fresh = Vec::with_capacity(results.len());
        // Items each fresh result adds (a divisible job), credited to its worker.
        let mut credited = Vec::with_capacity(results.len());
        let chunks = b.items.is_some();
        // Results of tasks picked for replication (`--replicate`), not held until a second
        // worker's copy agrees.
        let mut to_replicate = Vec::new();
        for r in results {
            if r.status != Status::Failed {
                let key = if chunks { r.first } else { u64::from(r.id) };
                let held = match &b.items {
                    Some(items) => items.contains_all(r.first..r.first + u64::from(r.items)),
                    None => b.is_held(r.id as usize),
                };
                if !held && b.job.replicates(b.id, key) {
                    to_replicate.push(r);
                    continue;
                }
            }
            if r.status == Status::Failed {
                // The ventilator hands it to another worker, or gives it up: then this is
                // the error the report names.
                let key = if chunks { r.first } else { u64::from(r.id) };
                if self.last_errors.len() < MAX_LAST_ERRORS || self.last_errors.contains_key(&key) {
                    let error = if r.error.is_empty() {
                        "no reason given".to_owned()
                    } else {
                        r.error
                    };
                    self.last_errors.insert(key, (worker.name.clone(), error));
                }
                continue;
            }
            if let Some(items) = b.items.as_mut() {
                // Counted by items: a chunk redone after its worker was thought lost, or
                // carved otherwise by a restarted ventilator, adds only what is new.
                let (first, end) = (r.first, r.first + u64::from(r.items));
                let new = items.insert(first..end);
                // Said held either way: a chunk redone after its items were held (a restart
                // lost the word) is then held at the ventilator too.
                self.newly_ranges.push((first, end));
                if new == 0 {
                    self.duplicates += 1;
                    self.late_items += u64::from(r.items);
                    continue;
                }
                self.late_items += u64::from(r.items) - new;
                if b.hits_wanted > 0 {
                    // Distinct keys: a chunk overlapping one held counts its hits once.
                    b.hits.extend(crate::kernels::search::hits(&r.output));
                }
                fresh.push(r);
                credited.push(new);
                continue;
            }
            if b.is_held(r.id as usize) {
                self.duplicates += 1;
                continue;
            }
            b.set_held(r.id as usize);
            self.newly_held.push(r.id);
            fresh.push(r);
            credited.push(0);
        }
        let header = b.header();
        for (r, &items) in fresh.iter().zip(&credited) {
            self.tally(&worker.name, &worker.backend, &worker.adapter, r, items);
            if r.status == Status::Mismatch {
                log::error!(
                    "task {} from {}: result does not match the CPU reference",
                    r.id,
                    printable(&worker.name)
                );
            }
        }
        if !fresh.is_empty() {
            out.push(SinkCommand::Record {
                header,
                worker: worker.name.clone(),
                backend: worker.backend.clone(),
                results: fresh,
            });
        }
        for r in to_replicate {
            self.replicate(now, peer, &worker, r, out);
        }
    }

    /// A copy of a task picked for replication. The first waits for a second from another
    /// worker (the ventilator is asked for one); two from different workers that agree
    /// bit for bit hold the task; two that differ ask for a third, and the majority holds
    /// it while the odd copy's worker is named (named twice: quarantined for the batch).
    /// A copy from a worker that gave one already is no second opinion: the ventilator
    /// sends a copy back to such a worker only when no other can take it, and then the
    /// task is held unconfirmed if the copies agree, or as a mismatch if they do not. A
    /// quarantined worker's copy is not believed.
    fn replicate(
        &mut self,
        now: Instant,
        peer: &[u8],
        worker: &WorkerInfo,
        r: TaskResult,
        out: &mut Vec<SinkCommand>,
    ) {
        let Some(b) = self.batch.as_ref() else {
            return;
        };
        let key = (
            if b.items.is_some() {
                r.first
            } else {
                u64::from(r.id)
            },
            r.items,
        );
        let quarantined = self.quarantined.iter().any(|q| q.worker == worker.name);
        let digest = xxhash_rust::xxh3::xxh3_64_with_seed(&r.output, r.checksum);
        // Copies in hand are bounded in count and bytes: a peer inventing chunk shapes
        // cannot make the sink hold more (the task is asked for again once it is held).
        let size = r.output.capacity() + std::mem::size_of::<Replica>();
        if !self.replicas.contains_key(&key) && self.replicas.len() >= MAX_REPLICA_TASKS
            || self.replica_bytes + size > MAX_REPLICA_BYTES
        {
            let why = format!(
                "a copy of task {} beyond the {MAX_REPLICA_TASKS} tasks or {MAX_REPLICA_BYTES} \
                 bytes of copies the sink holds",
                r.id
            );
            self.reject_peer(now, peer, why);
            return;
        }
        self.replica_bytes += size;
        let entry = self.replicas.entry(key).or_insert_with(|| Copies {
            id: r.id,
            first: r.first,
            items: r.items,
            copies: Vec::new(),
        });
        if quarantined {
            self.ask_again(key, out);
            return;
        }
        let copies = &mut entry.copies;
        let again = copies.iter().any(|c| c.worker.name == worker.name);
        let distinct = {
            let mut names: Vec<&str> = copies.iter().map(|c| c.worker.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.len()
        };
        copies.push(Replica {
            worker: worker.clone(),
            digest,
            result: r,
        });
        let agree = |i: usize| {
            copies
                .iter()
                .filter(|c| c.digest == copies[i].digest)
                .count()
        };
        let settled = if again {
            // No other worker could run it.
            if distinct == 1 && agree(0) == copies.len() {
                Settled::Unconfirmed
            } else {
                Settled::Undecided
            }
        } else {
            match copies.len() {
                0 | 1 => return self.ask_again(key, out),
                2 if copies[0].digest == copies[1].digest => Settled::Majority(0),
                2 => return self.ask_again(key, out),
                _ => match (0..copies.len()).find(|&i| agree(i) >= 2) {
                    Some(i) => Settled::Majority(i),
                    None => Settled::Undecided,
                },
            }
        };
        let Some(Copies { copies, .. }) = self.replicas.remove(&key) else {
            return;
        };
        self.replica_bytes = self.replica_bytes.saturating_sub(copies_bytes(&copies));
        let (keep, agreed, odd) = match settled {
            Settled::Majority(i) => {
                let digest = copies[i].digest;
                let (agreed, odd): (Vec<Replica>, Vec<Replica>) =
                    copies.into_iter().partition(|c| c.digest == digest);
                (agreed[0].clone(), agreed, odd)
            }
            Settled::Unconfirmed => (copies[0].clone(), copies, Vec::new()),
            Settled::Undecided => (copies[0].clone(), Vec::new(), copies),
        };
        self.hold_replicated(keep, settled, &agreed, &odd, out);
    }

    /// Holds a replicated task with the copy kept, and says what the copies showed.
    fn hold_replicated(
        &mut self,
        mut keep: Replica,
        settled: Settled,
        agreed: &[Replica],
        odd: &[Replica],
        out: &mut Vec<SinkCommand>,
    ) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        let chunks = b.items.is_some();
        let new = match b.items.as_mut() {
            Some(items) => {
                let (first, end) = (
                    keep.result.first,
                    keep.result.first + u64::from(keep.result.items),
                );
                self.newly_ranges.push((first, end));
                let new = items.insert(first..end);
                if b.hits_wanted > 0 {
                    b.hits
                        .extend(crate::kernels::search::hits(&keep.result.output));
                }
                new
            }
            None => {
                b.set_held(keep.result.id as usize);
                self.newly_held.push(keep.result.id);
                0
            }
        };
        let header = b.header();
        let task = if chunks {
            format!(
                "items {}..{}",
                keep.result.first,
                keep.result.first + u64::from(keep.result.items)
            )
        } else {
            format!("task {}", keep.result.id)
        };
        // Each worker once, in the order its copies came.
        let names = |copies: &[Replica]| -> Vec<String> {
            let mut names: Vec<String> = Vec::new();
            for c in copies {
                if !names.contains(&c.worker.name) {
                    names.push(c.worker.name.clone());
                }
            }
            names
        };
        match settled {
            Settled::Majority(_) => self.replicated += 1,
            Settled::Unconfirmed => {
                self.unconfirmed += 1;
                log::warn!(
                    "{task}: only {} could run it; held without a second worker's copy",
                    printable(&keep.worker.name)
                );
            }
            Settled::Undecided => {
                // No two workers agree: nobody can be believed; the task fails the batch.
                keep.result.status = Status::Mismatch;
                self.mismatches += 1;
            }
        }
        if !odd.is_empty() {
            let (agreed_names, odd_names) = (names(agreed), names(odd));
            log::error!(
                "{task}: the copies of {} differ from {}",
                printable(&odd_names.join(", ")),
                if agreed_names.is_empty() {
                    "each other".to_owned()
                } else {
                    format!("those of {}", printable(&agreed_names.join(", ")))
                }
            );
            self.replica_mismatches.push(ReplicaMismatch {
                task: task.clone(),
                agreed: agreed_names.clone(),
                differing: odd_names.clone(),
            });
            // The odd one out is to blame when a majority agrees; a worker whose own copies
            // differ, too.
            let blamed: Vec<String> = if agreed_names.is_empty() {
                let mut seen: Vec<String> = Vec::new();
                for c in odd {
                    let inconsistent = odd
                        .iter()
                        .any(|o| o.worker.name == c.worker.name && o.digest != c.digest);
                    if inconsistent && !seen.contains(&c.worker.name) {
                        seen.push(c.worker.name.clone());
                    }
                }
                seen
            } else {
                odd_names
            };
            for name in blamed {
                self.blame(name, &task, out);
            }
        }
        self.tally(
            &keep.worker.name,
            &keep.worker.backend,
            &keep.worker.adapter,
            &keep.result,
            new,
        );
        out.push(SinkCommand::Record {
            header,
            worker: keep.worker.name,
            backend: keep.worker.backend,
            results: vec![keep.result],
        });
    }

    /// One more disagreement of `name`'s: at [`QUARANTINE_AFTER`], it gets no more of the
    /// batch.
    fn blame(&mut self, name: String, task: &str, out: &mut Vec<SinkCommand>) {
        let count = self.blamed.entry(name.clone()).or_insert(0);
        *count += 1;
        if *count != QUARANTINE_AFTER {
            return;
        }
        let reason = format!(
            "its outputs differed from other workers' copies {QUARANTINE_AFTER} times (last: \
             {task}); check its adapter and driver"
        );
        log::error!(
            "quarantining worker {} for this batch: {reason}",
            printable(&name)
        );
        self.quarantined.push(Quarantined {
            worker: name.clone(),
            reason: reason.clone(),
        });
        if let Some(b) = &self.batch {
            Self::send(
                out,
                &b.ventilator,
                Message::Quarantine {
                    batch: b.id,
                    worker: name,
                    reason,
                },
            );
        }
    }

    /// Every copy still wanted, asked for again (the announcement is the ventilator's
    /// heartbeat; a restarted one knows nothing of them). Tasks held meanwhile some other
    /// way (given up on, an overlapping chunk) are forgotten.
    fn ask_all_again(&mut self, ventilator: &[u8], out: &mut Vec<SinkCommand>) {
        let Some(b) = &self.batch else {
            return;
        };
        let held = |&(key, items): &(u64, u32)| match &b.items {
            Some(set) => set.contains_all(key..key + u64::from(items)),
            None => b.is_held(key as usize),
        };
        let mut freed = 0;
        self.replicas.retain(|key, entry| {
            let keep = !held(key);
            if !keep {
                freed += copies_bytes(&entry.copies);
            }
            keep
        });
        self.replica_bytes = self.replica_bytes.saturating_sub(freed);
        let mut keys: Vec<(u64, u32)> = self.replicas.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.again_message(b.id, ventilator, key, out);
        }
    }

    /// Asks the ventilator to run the replicated task `key` once more, on a worker other
    /// than those whose copies are in hand (or who are quarantined).
    fn ask_again(&self, key: (u64, u32), out: &mut Vec<SinkCommand>) {
        if let Some(b) = &self.batch {
            self.again_message(b.id, &b.ventilator, key, out);
        }
    }

    fn again_message(
        &self,
        batch: u64,
        ventilator: &[u8],
        key: (u64, u32),
        out: &mut Vec<SinkCommand>,
    ) {
        let Some(entry) = self.replicas.get(&key) else {
            return;
        };
        let mut exclude: Vec<String> = entry
            .copies
            .iter()
            .map(|c| c.worker.name.clone())
            .chain(self.quarantined.iter().map(|q| q.worker.clone()))
            .collect();
        exclude.sort_unstable();
        exclude.dedup();
        Self::send(
            out,
            ventilator,
            Message::Again {
                batch,
                id: entry.id,
                first: entry.first,
                items: entry.items,
                exclude,
            },
        );
    }

    /// The ventilator gave up on a task after `attempts` failures: it counts as finished,
    /// failed, recorded like a result (so a resumed sink knows it), and fails the batch.
    #[allow(clippy::too_many_arguments)]
    fn gave_up(
        &mut self,
        now: Instant,
        peer: &[u8],
        id: u32,
        first: u64,
        items: u32,
        attempts: u32,
        out: &mut Vec<SinkCommand>,
    ) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        let end = first.saturating_add(u64::from(items));
        let key = if let Some(held) = b.items.as_mut() {
            if items == 0 || end > b.job.items {
                let why = format!(
                    "gave up on items {first}..{end} of a {}-item job",
                    b.job.items
                );
                self.reject_peer(now, peer, why);
                return;
            }
            // Said held either way, so the ventilator stops repeating itself.
            self.newly_ranges.push((first, end));
            if held.insert(first..end) == 0 {
                return;
            }
            first
        } else {
            if id as usize >= b.task_count {
                let why = format!("gave up on task {id} of a {}-task batch", b.task_count);
                self.reject_peer(now, peer, why);
                return;
            }
            if b.is_held(id as usize) {
                self.newly_held.push(id);
                return;
            }
            b.set_held(id as usize);
            self.newly_held.push(id);
            u64::from(id)
        };
        let (worker, error) = self
            .last_errors
            .remove(&key)
            .unwrap_or_else(|| (String::new(), "no error reached the sink".to_owned()));
        log::error!(
            "task {id} failed {attempts} times, last on {}: {}",
            printable(&worker),
            printable(&error)
        );
        let header = b.header();
        let result = TaskResult {
            id,
            status: Status::Failed,
            first,
            items,
            error: error.clone(),
            ..TaskResult::default()
        };
        self.failed.push(FailedTask {
            id,
            first,
            items,
            attempts,
            worker: worker.clone(),
            error,
        });
        out.push(SinkCommand::Record {
            header,
            worker,
            backend: String::new(),
            results: vec![result],
        });
    }

    /// The job of the batch being collected, once announced.
    pub fn job(&self) -> Option<crate::batch::Job> {
        self.batch.as_ref().map(|b| b.job)
    }

    /// For the live view: where the sink's side goes (the ventilator's routing id), the
    /// batch, and the collector's part of it (verification); the pump adds the files.
    pub fn side(&self) -> Option<(&[u8], u64, crate::protocol::SinkSide)> {
        let b = self.batch.as_ref().filter(|b| !b.ventilator.is_empty())?;
        let side = crate::protocol::SinkSide {
            results: self.config.results_path.clone().unwrap_or_default(),
            checked: self.checked,
            verified: self.verified,
            mismatches: self.mismatches,
            ..Default::default()
        };
        Some((&b.ventilator, b.id, side))
    }

    /// New results are made durable, then the ventilator hears they are held.
    fn acknowledge(&mut self, now: Instant, out: &mut Vec<SinkCommand>) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        if !self.newly_held.is_empty() {
            out.push(SinkCommand::Sync);
            let ids = std::mem::take(&mut self.newly_held);
            held(out, &b.ventilator, b.id, &ids);
        }
        if !self.newly_ranges.is_empty() {
            out.push(SinkCommand::Sync);
            let ranges = std::mem::take(&mut self.newly_ranges);
            held_items(out, &b.ventilator, b.id, &ranges);
        }
        if b.finished.is_none() && b.all_held() {
            b.finished = Some(now);
            log::debug!("all {} results held", b.task_count);
            let ventilator = b.ventilator.clone();
            Self::send(out, &ventilator, Message::Complete { batch: b.id });
        }
    }

    /// A results file that already holds every task: the batch is over; its report.
    pub fn report_recovered(mut self, now: Instant) -> Option<Report> {
        let recovered = self.recovered.take()?;
        let header = recovered.header;
        let task_count = header.tasks as usize;
        let last_unix_ms = recovered
            .records
            .iter()
            .map(|r| r.result.finished_unix_ms)
            .max()
            .unwrap_or(header.started_unix_ms);
        let elapsed = Duration::from_millis(last_unix_ms.saturating_sub(header.started_unix_ms));
        let job = crate::batch::Job {
            items: header.items,
            ..crate::batch::Job::default()
        };
        let mut b = BatchState {
            verifies: true,
            started_unix_ms: header.started_unix_ms,
            finished: Some(now),
            ..BatchState::new(
                header.batch,
                task_count,
                job,
                now.checked_sub(elapsed).unwrap_or(now),
            )
        };
        for r in &recovered.records {
            if let Some(items) = b.items.as_mut() {
                let end = r.result.first + u64::from(r.result.items);
                let new = items.insert(r.result.first..end);
                if new > 0 {
                    self.tally(&r.worker, &r.backend, "", &r.result, new);
                }
                continue;
            }
            let index = r.result.id as usize;
            if index < task_count && !b.is_held(index) {
                b.set_held(index);
                b.expected_ms += u64::from(r.result.workload_ms);
                b.longest_ms = b.longest_ms.max(r.result.workload_ms);
                self.tally(&r.worker, &r.backend, "", &r.result, 0);
            }
        }
        log::warn!(
            "the results file already holds all {task_count} tasks of batch {:016x}: the batch is \
             complete; reporting it from the file (no ventilator needed)",
            header.batch
        );
        self.batch = Some(b);
        self.report(now)
    }

    /// The report of the batch collected, if one was.
    pub fn report(self, now: Instant) -> Option<Report> {
        let b = self.batch?;
        let finished = b.finished.unwrap_or(now);
        let elapsed_ms = finished.duration_since(b.started).as_secs_f64() * 1000.0;
        let workers: Vec<WorkerReport> = self
            .workers
            .into_iter()
            .filter(|(_, t)| t.tasks > 0)
            .map(|(id, t)| {
                // Its time present: from the batch's start to its last result.
                let present_ms = t.last_unix_ms.saturating_sub(b.started_unix_ms) as f64;
                WorkerReport {
                    id,
                    tasks: t.tasks,
                    busy_ms: t.busy_us as f64 / 1000.0,
                    kernel_ms: t.kernel_us as f64 / 1000.0,
                    device_share: (t.kernel_us > 0 && present_ms > 0.0)
                        .then(|| (t.kernel_us as f64 / 1000.0 / present_ms).min(1.0)),
                    dispatches: t.dispatches,
                    input_bytes: t.input_bytes,
                    output_bytes: t.output_bytes,
                    backend: t.backend,
                    adapter: t.adapter,
                    items: t.items,
                    items_per_s: if t.busy_us > 0 {
                        t.items as f64 * 1e6 / t.busy_us as f64
                    } else {
                        0.0
                    },
                    finished_ms: if b.items.is_some() { present_ms } else { 0.0 },
                }
            })
            .collect();
        let slept = workers.iter().all(|w| w.backend == "sleep");
        let held_items = b.items.as_ref().map_or(0, IntervalSet::covered);
        let (ideal, ideal_basis) = if b.items.is_some() {
            // Every worker at its measured rate from start to end: no split does better.
            let rates: f64 = workers.iter().map(|w| w.items_per_s).sum();
            let ideal = if rates > 0.0 {
                held_items as f64 * 1000.0 / rates
            } else {
                0.0
            };
            (ideal, "rates")
        } else if slept {
            (
                ideal_ms(b.expected_ms, b.longest_ms, workers.len()),
                "workload",
            )
        } else {
            let share = self.measured_total_us as f64 / 1000.0 / workers.len().max(1) as f64;
            (
                share.max(f64::from(self.measured_longest_us) / 1000.0),
                "measured",
            )
        };
        // A job's tasks are its chunks delivered.
        let tasks = match &b.items {
            Some(_) => workers.iter().map(|w| w.tasks).sum(),
            None => b.task_count as u64,
        };
        Some(Report {
            batch: format!("{:016x}", b.id),
            tasks,
            expected_ms: b.expected_ms,
            longest_ms: b.longest_ms,
            elapsed_ms,
            finished_ms: now.duration_since(b.started).as_secs_f64() * 1000.0,
            ideal_ms: ideal,
            ideal_basis: ideal_basis.to_owned(),
            efficiency: if elapsed_ms > 0.0 {
                ideal / elapsed_ms
            } else {
                1.0
            },
            tasks_per_s: if elapsed_ms > 0.0 {
                tasks as f64 * 1000.0 / elapsed_ms
            } else {
                0.0
            },
            duplicates: self.duplicates,
            redispatched: self.ventilator_counts.0,
            rejected: self.rejected + self.ventilator_counts.1,
            // The sink's own refusals are added by its pump, which holds the gate.
            refused: self.ventilator_counts.2,
            checked: self.checked,
            verified: self.verified,
            mismatches: self.mismatches,
            compared: self.compared,
            differing: self.differing,
            outputs: 0,
            outputs_dir: None,
            wire: crate::report::WireReport::new(self.input_bytes, (0, 0)),
            picture: None,
            hits: Vec::new(),
            job: b.items.as_ref().map(|_| JobReport {
                items: b.job.items,
                held_items,
                chunking: String::new(),
                chunks: self.job_counts.chunks,
                items_redone: self.job_counts.items_redone,
                chunks_cut: self.job_counts.chunks_cut,
                items_handed_on: self.job_counts.items_handed_on,
                late_items: self.late_items,
                hits_wanted: b.hits_wanted,
                cancel_ms: (self.job_counts.cancel_us > 0)
                    .then(|| self.job_counts.cancel_us as f64 / 1000.0),
            }),
            workers,
            failed: self.failed,
            replicated: self.replicated,
            unconfirmed: self.unconfirmed,
            replica_mismatches: self.replica_mismatches,
            quarantined: self.quarantined,
        })
    }
}

/// A batch as the ventilator announces it.
struct Announced {
    id: u64,
    session: u64,
    started_unix_ms: u64,
    task_count: u32,
    expected_ms: u64,
    longest_ms: u32,
    verifies: bool,
    job: crate::batch::Job,
    names: Vec<u64>,
}

/// A worker's backend or adapter name: no control characters.
fn check_text(text: &str) -> Result<(), String> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "the control character {c:?} in {:?}",
            text.escape_debug().to_string()
        )),
        None => Ok(()),
    }
}

fn ack(out: &mut Vec<SinkCommand>, peer: &[u8], b: &BatchState) {
    if let Some(items) = &b.items {
        // A divisible job: `held` counts the `held-items` messages that follow.
        let ranges: Vec<(u64, u64)> = items.ranges().iter().map(|r| (r.start, r.end)).collect();
        Collector::send(
            out,
            peer,
            Message::BatchAck {
                batch: b.id,
                held: ranges.len().div_ceil(MAX_ITEMS_PER_MESSAGE) as u32,
            },
        );
        held_items(out, peer, b.id, &ranges);
        return;
    }
    Collector::send(
        out,
        peer,
        Message::BatchAck {
            batch: b.id,
            held: b.held_count as u32,
        },
    );
    held(out, peer, b.id, &b.held_ids());
}

fn held_items(out: &mut Vec<SinkCommand>, peer: &[u8], batch: u64, ranges: &[(u64, u64)]) {
    for chunk in ranges.chunks(MAX_ITEMS_PER_MESSAGE) {
        Collector::send(
            out,
            peer,
            Message::HeldItems {
                batch,
                ranges: chunk.to_vec(),
            },
        );
    }
}

fn held(out: &mut Vec<SinkCommand>, peer: &[u8], batch: u64, ids: &[u32]) {
    for chunk in ids.chunks(MAX_ITEMS_PER_MESSAGE) {
        Collector::send(
            out,
            peer,
            Message::Held {
                batch,
                ids: chunk.to_vec(),
            },
        );
    }
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;
