//! `conquer bench --suite simulate`: the real dispatcher in virtual time against simulated
//! workers and the real sink's collector, at sizes no machine here can run for real: up to 10,000
//! workers and a million tasks of the seed's workload (1–100 ms), with heterogeneous speeds
//! (log-normal, plus a few 10× stragglers), per-message latency, and churn (workers joining
//! during the batch, 1 % killed, 1 % frozen). It reports the makespan against the LPT
//! bound and the ideal, what went out again, and the ventilator's real CPU time per task.
//!
//! The dispatcher, the sink's collector and each worker's flow are the real machines;
//! sockets and kernels are not: workers run their tasks as events on one virtual clock, so
//! the figures are the rules' own, free of scheduling noise.

use crate::batch::{Batch, Job, Task};
use crate::chunking::{Plan, Policy};
use crate::collect::{CollectConfig, Collector, SinkCommand, SinkEvent};
use crate::dispatch::{Backup, Command, DispatchConfig, Dispatcher, Event, WorkerId};
use crate::driver;
use crate::flow::{Finished, Flow, FlowCommand, FlowConfig, FlowEvent};
use crate::heartbeat::Heartbeat;
use crate::pieces::{self, Pieces};
use crate::protocol::{Message, Status, WorkerInfo};
use crate::shutdown::{Interrupted, Shutdown};
use crate::work::Work;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// One simulated farm.
#[derive(Debug, Clone, Default)]
pub struct SimSpec {
    pub workers: usize,
    pub tasks: u32,
    /// Joins during the batch, 1 % killed, 1 % frozen.
    pub churn: bool,
    /// One-way latency of every message.
    pub latency: Duration,
    pub seed: u64,
    /// A divisible job instead of the seed's batch: `tasks` items of `item_us` each, carved
    /// by this policy.
    pub chunking: Option<Policy>,
    pub item_us: u32,
    /// The workers' slowness (time per nominal ms), one each, instead of the log-normal
    /// farm of `workers`: a farm with chosen ratios (1 fast and 8 a thousand times slower).
    pub farm: Option<Vec<f64>>,
    /// A divisible job's cost of each item, as a multiple of `item_us`, instead of a
    /// uniform cost: a ramp, or the rows of a picture through the set. Without chunking,
    /// a task list of as many tasks, each declared 1 ms (as `--kernel mandelbrot` declares
    /// its bands) and costing `item_us` times its entry: what the dispatcher cannot know
    /// before a task is done.
    pub costs: Option<std::sync::Arc<Vec<f64>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimRow {
    pub scenario: String,
    pub workers: usize,
    pub tasks: u32,
    pub makespan_s: f64,
    /// List scheduling, longest first, onto the worker that frees up first, with the
    /// workers' real speeds and no latency: what dispatch can hope for.
    pub lpt_s: f64,
    /// Total work over total speed (never below the longest task on the fastest worker).
    pub ideal_s: f64,
    pub efficiency_lpt: f64,
    pub efficiency_ideal: f64,
    pub redispatched: u64,
    pub backups: u64,
    pub duplicates: u64,
    /// Chunks whose workers yielded their tails in the end game.
    pub chunks_cut: u64,
    /// Tasks handed out (redispatches included).
    pub decisions: u64,
    /// The dispatcher's CPU time per task handed out: everything it does, reading the
    /// workers' and the sink's messages included (not decoding them).
    pub cpu_ns_per_task: f64,
    /// Of that, deciding: the ticks that hand tasks out (and run the timers).
    pub cpu_ns_per_decision: f64,
    /// Most queue entries the dispatcher held at once, per task of the batch.
    pub peak_entries_per_task: f64,
    /// Real time the simulation took.
    pub wall_s: f64,
}

/// What arrives or happens, at a virtual time.
#[derive(Debug)]
enum Ev {
    /// A worker's message reaches the ventilator.
    ToVent(usize, Message),
    /// The sink's message reaches the ventilator.
    FromSink(Message),
    /// The ventilator's message reaches a worker (tasks, heartbeats, the end).
    ToWorker(usize, Message),
    /// The sink's message reaches a worker (its welcome).
    SinkToWorker(usize, Message),
    /// A worker's executor finishes the task (or piece) it runs; the number tells a
    /// finish still due from one a yield made stale.
    Finished(usize, u64),
    /// A worker's own deadline (its heartbeat).
    WorkerTick(usize),
    /// A worker's message reaches the sink.
    ToSink(usize, Message),
    /// The ventilator's message reaches the sink.
    VentToSink(Message),
    /// The sink's poll returns: it reads everything that arrived, then ticks.
    SinkWake,
    Join(usize),
    Kill(usize),
    Freeze(usize),
    /// The ventilator's deadline.
    Tick,
    /// The ventilator's poll returns: it reads everything that arrived, then ticks.
    Wake,
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    NotYet,
    Running,
    Killed,
    Frozen,
    Refused,
}

/// A simulated worker: the real worker state machine ([`Flow`]) on the simulated network,
/// with an executor that takes each task's cost at the worker's speed.
struct SimWorker {
    /// Time per nominal ms, as a multiple (1.0 is nominal speed).
    slowness: f64,
    life: Life,
    /// Made when it joins.
    flow: Option<Flow>,
    /// The executor's queue: tasks of the chunks the flow handed it, with their batch and
    /// whether to run them in pieces.
    queue: VecDeque<(u64, Task, bool)>,
    busy: bool,
    /// The front chunk in pieces, as a real worker runs it (`conquer_core::pieces`): the
    /// piece running, and when the chunk started.
    pieces: Option<(Pieces, Task, u64)>,
    /// Chunks the ventilator asked to yield.
    cuts: std::collections::HashSet<u32>,
    /// Counts the executor's starts, so a stale finish is told from a due one.
    runs: u64,
    routing_id: Vec<u8>,
    info: WorkerInfo,
    /// When its flow's next tick is scheduled.
    tick_at: Option<u64>,
}

const INTERVAL: Duration = Duration::from_millis(500);
/// From a message's arrival to the ventilator's poll returning with it.
const POLL_WAKE: Duration = Duration::from_micros(10);
/// The ventilator's routing id at the simulated sink.
const VENTILATOR: &[u8] = b"ventilator";

struct Sim {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    base: Instant,
    d: Dispatcher,
    workers: Vec<SimWorker>,
    latency: u64,
    by_routing_id: std::collections::HashMap<Vec<u8>, usize>,
    /// The real sink state machine, and what reached it since its last wake-up.
    sink: Collector,
    sink_inbox: Vec<SinkEvent>,
    sink_wake_scheduled: bool,
    sink_stopped: Option<String>,
    tick_at: Option<u64>,
    decisions: u64,
    /// Every event the dispatcher was given, with its virtual time.
    trace: Vec<(u64, Event)>,
    complete_at: Option<u64>,
    /// Messages that reached the ventilator since its last wake-up.
    inbox: Vec<Event>,
    wake_scheduled: bool,
    /// When the ventilator first announced the batch: the batch's start.
    start_at: Option<u64>,
    stopped: Option<String>,
    peak_entries: usize,
    events: u64,
    /// A divisible job's cost of an item at nominal speed.
    item_us: u32,
    /// With item costs: their running sums (`prefix[i]` is the cost of items `0..i`).
    prefix: Option<Vec<f64>>,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// What a task (or a chunk of `item_us` items, each costing what `prefix` says) costs at
/// nominal speed, in µs.
fn task_us(task: &Task, item_us: u32, prefix: Option<&[f64]>) -> f64 {
    if task.is_chunk() {
        let items = match prefix {
            Some(p) => {
                let end = (task.first + u64::from(task.items)).min(p.len() as u64 - 1);
                p[end as usize] - p[task.first.min(end) as usize]
            }
            None => f64::from(task.items),
        };
        items * f64::from(item_us)
    } else if let Some(p) = prefix {
        let id = (task.id as usize).min(p.len().saturating_sub(2));
        (p[id + 1] - p[id]) * f64::from(item_us)
    } else {
        f64::from(task.workload_ms) * 1e3
    }
}

impl Sim {
    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn after(&mut self, delay: u64, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    /// A message for the ventilator: read at its next wake-up, with whatever else arrived.
    fn deliver(&mut self, event: Event) {
        self.inbox.push(event);
        if !self.wake_scheduled {
            self.wake_scheduled = true;
            self.after(ns(POLL_WAKE), Ev::Wake);
        }
    }

    /// The ventilator's pump: every message that arrived, each one's commands carried out
    /// before the next, then a tick (the driver's round). Every event is recorded for the
    /// CPU replay.
    fn vent(&mut self, events: Vec<Event>) {
        driver::round(self, events).unwrap_or_else(|never| match never {});
        let deadline = ns(self.d.next_deadline().saturating_duration_since(self.base));
        if self.tick_at.is_none_or(|t| deadline < t || t <= self.now) {
            self.tick_at = Some(deadline.max(self.now + 1));
            self.at(deadline.max(self.now + 1), Ev::Tick);
        }
    }

    /// A message for the sink: read at its next wake-up, with whatever else arrived.
    fn deliver_to_sink(&mut self, event: SinkEvent) {
        self.sink_inbox.push(event);
        if !self.sink_wake_scheduled {
            self.sink_wake_scheduled = true;
            self.after(ns(POLL_WAKE), Ev::SinkWake);
        }
    }

    fn worker_index(&self, id: WorkerId) -> usize {
        self.by_routing_id[&self.d.worker(id).routing_id]
    }

    /// Worker `w`'s flow handles `event`; its commands go out on the simulated network or
    /// to its executor, and its next tick is scheduled.
    fn flow(&mut self, w: usize, event: FlowEvent) {
        if self.workers[w].life != Life::Running || self.workers[w].flow.is_none() {
            return;
        }
        driver::deliver(&mut WorkerHost { sim: self, w }, event)
            .unwrap_or_else(|never| match never {});
        let Some(flow) = &self.workers[w].flow else {
            return;
        };
        let deadline = ns(flow.next_deadline().saturating_duration_since(self.base));
        let worker = &mut self.workers[w];
        if worker.tick_at.is_none_or(|t| deadline < t || t <= self.now) {
            let at = deadline.max(self.now + 1);
            worker.tick_at = Some(at);
            self.after(at - self.now, Ev::WorkerTick(w));
        }
    }

    fn start_next(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        if worker.busy || worker.life != Life::Running {
            return;
        }
        let Some(&(_, task, in_pieces)) = worker.queue.front() else {
            return;
        };
        // A chunk runs in pieces, as on a real worker: its first piece now.
        let job = *self.d.job();
        let task = if in_pieces && task.items > 1 && pieces::splits(&job, &worker.info.backend) {
            let mut p = Pieces::new(&job, Work::from(task))
                .taking(pieces::piece_time(&worker.info.backend));
            if worker.cuts.contains(&task.id) {
                p.cut();
            }
            let Some(piece) = p.next_piece() else {
                return;
            };
            worker.pieces = Some((p, piece.task, self.now));
            piece.task
        } else {
            task
        };
        self.run_task(w, task);
    }

    /// Worker `w`'s executor runs `task` (a task, a chunk, or a chunk's piece).
    fn run_task(&mut self, w: usize, task: Task) {
        let worker = &mut self.workers[w];
        worker.busy = true;
        worker.runs += 1;
        let run =
            (task_us(&task, self.item_us, self.prefix.as_deref()) * 1e3 * worker.slowness) as u64;
        let runs = worker.runs;
        self.after(run.max(1), Ev::Finished(w, runs));
    }

    fn step(&mut self, ev: Ev) {
        self.events += 1;
        match ev {
            Ev::ToVent(w, message) => {
                if self.workers[w].life == Life::Refused {
                    return;
                }
                let routing_id = self.workers[w].routing_id.clone();
                self.deliver(Event::FromWorker {
                    routing_id,
                    message,
                });
            }
            Ev::FromSink(message) => self.deliver(Event::FromSink(message)),
            Ev::ToWorker(w, message) => {
                if let Message::Refused { .. } = message {
                    self.workers[w].life = Life::Refused;
                    return;
                }
                self.flow(w, FlowEvent::FromVentilator(Ok(message)));
            }
            Ev::SinkToWorker(w, message) => self.flow(w, FlowEvent::FromSink(Ok(message))),
            Ev::Finished(w, runs) => {
                if self.workers[w].life != Life::Running || self.workers[w].runs != runs {
                    return;
                }
                let (item_us, now) = (self.item_us, self.now);
                let worker = &mut self.workers[w];
                worker.busy = false;
                let outcome = if let Some((mut p, piece, started)) = worker.pieces.take() {
                    let wall_us =
                        (task_us(&piece, item_us, self.prefix.as_deref()) * worker.slowness) as u32;
                    p.piece_done(crate::backend::Outcome {
                        task: piece,
                        status: Status::Ok,
                        wall_us,
                        ..Default::default()
                    });
                    if worker.cuts.contains(&p.id()) {
                        p.cut();
                    }
                    if let Some(next) = p.next_piece() {
                        worker.pieces = Some((p, next.task, started));
                        self.run_task(w, next.task);
                        return;
                    }
                    Some(p.outcome(((now - started) / 1000) as u32))
                } else {
                    None
                };
                let Some((batch, task, _)) = worker.queue.pop_front() else {
                    return;
                };
                let outcome = outcome.unwrap_or_else(|| {
                    let wall_us =
                        (task_us(&task, item_us, self.prefix.as_deref()) * worker.slowness) as u32;
                    crate::backend::Outcome {
                        task,
                        status: Status::Ok,
                        wall_us,
                        ..Default::default()
                    }
                });
                let finished = Finished {
                    batch,
                    outcome,
                    finished_unix_ms: 0,
                };
                self.flow(w, FlowEvent::Finished(vec![finished]));
                self.start_next(w);
            }
            Ev::WorkerTick(w) => {
                if self.workers[w].tick_at == Some(self.now) {
                    self.workers[w].tick_at = None;
                }
                self.flow(w, FlowEvent::Tick);
            }
            Ev::ToSink(w, message) => {
                let routing_id = self.workers[w].routing_id.clone();
                self.deliver_to_sink(SinkEvent::FromPeer {
                    routing_id,
                    message,
                });
            }
            Ev::VentToSink(message) => self.deliver_to_sink(SinkEvent::FromPeer {
                routing_id: VENTILATOR.to_vec(),
                message,
            }),
            Ev::SinkWake => {
                self.sink_wake_scheduled = false;
                let events = std::mem::take(&mut self.sink_inbox);
                driver::round(&mut SinkHost(self), events).unwrap_or_else(|never| match never {});
            }
            Ev::Join(w) => {
                let now = self.base + Duration::from_nanos(self.now);
                let worker = &mut self.workers[w];
                worker.life = Life::Running;
                let config = FlowConfig {
                    info: worker.info.clone(),
                    heartbeat: Heartbeat {
                        interval: INTERVAL,
                        liveness: 5,
                    },
                    ventilator: "tcp://sim:5557".into(),
                    sink: "tcp://sim:5558".into(),
                    announce: false,
                    exit_when_done: false,
                    batch_wait: None,
                    max_payload: crate::protocol::MAX_MAX_PAYLOAD,
                };
                worker.flow = Some(Flow::new(config, now));
                self.flow(w, FlowEvent::Tick);
            }
            Ev::Kill(w) => {
                if self.workers[w].life == Life::Running {
                    self.workers[w].life = Life::Killed;
                }
            }
            Ev::Freeze(w) => {
                if self.workers[w].life == Life::Running {
                    self.workers[w].life = Life::Frozen;
                }
            }
            Ev::Tick => {
                if self.tick_at == Some(self.now) {
                    self.tick_at = None;
                }
                self.vent(Vec::new());
            }
            Ev::Wake => {
                self.wake_scheduled = false;
                let events = std::mem::take(&mut self.inbox);
                self.vent(events);
            }
        }
        if self.events % 65_536 == 0 {
            self.peak_entries = self.peak_entries.max(self.d.queue_entries());
        }
    }
}

/// The simulated ventilator: the dispatcher's commands go out on the simulated network.
impl driver::Host for Sim {
    type Machine = Dispatcher;
    type Error = std::convert::Infallible;

    fn machine(&mut self) -> &mut Dispatcher {
        &mut self.d
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn carry_out(
        &mut self,
        commands: &mut Vec<Command>,
        failed: &mut Vec<Event>,
    ) -> Result<driver::Progress, std::convert::Infallible> {
        for command in commands.drain(..) {
            match command {
                Command::ToWorker { worker, message } => {
                    let w = self.worker_index(worker);
                    match self.workers[w].life {
                        Life::Killed | Life::Refused => failed.push(Event::Unreachable(worker)),
                        _ => self.after(self.latency, Ev::ToWorker(w, message)),
                    }
                }
                Command::Tasks {
                    worker,
                    tasks,
                    in_pieces,
                    ..
                } => {
                    let w = self.worker_index(worker);
                    self.decisions += tasks.len() as u64;
                    match self.workers[w].life {
                        Life::Killed | Life::Refused => failed.push(Event::Unreachable(worker)),
                        _ => {
                            let message = Message::Tasks {
                                batch: self.d.batch_id(),
                                job: *self.d.job(),
                                tasks,
                                in_pieces,
                            };
                            self.after(self.latency, Ev::ToWorker(w, message))
                        }
                    }
                }
                Command::Reply {
                    routing_id,
                    message,
                } => {
                    if let Some(&w) = self.by_routing_id.get(&routing_id) {
                        self.after(self.latency, Ev::ToWorker(w, message));
                    }
                }
                Command::ToSink(message) => {
                    if let Message::Batch { .. } = message {
                        self.start_at.get_or_insert(self.now);
                    }
                    self.after(self.latency, Ev::VentToSink(message))
                }
                Command::Complete => self.complete_at = Some(self.now),
                Command::Stop(why) => self.stopped = Some(why.to_string()),
                Command::Note(_) | Command::Observed(_) => {}
            }
        }
        Ok(driver::Progress::Going)
    }

    fn record(&mut self, event: &Event) {
        self.trace.push((self.now, event.clone()));
    }
}
/// A simulated worker: its flow's commands go out on the simulated network or to its
/// executor.
struct WorkerHost<'a> {
    sim: &'a mut Sim,
    w: usize,
}

impl driver::Host for WorkerHost<'_> {
    type Machine = Flow;
    type Error = std::convert::Infallible;

    fn machine(&mut self) -> &mut Flow {
        // `Sim::flow` makes a host only for a worker that has its flow, and nothing here
        // takes it away.
        self.sim.workers[self.w]
            .flow
            .as_mut()
            .expect("a simulated worker's host is made only while it has its flow")
    }

    fn now(&self) -> Instant {
        self.sim.base + Duration::from_nanos(self.sim.now)
    }

    /// Nothing sent fails here: the simulated network drops what a dead peer would not read.
    fn carry_out(
        &mut self,
        commands: &mut Vec<FlowCommand>,
        _failed: &mut Vec<FlowEvent>,
    ) -> Result<driver::Progress, std::convert::Infallible> {
        for command in commands.drain(..) {
            match command {
                FlowCommand::ToVentilator(message) => self
                    .sim
                    .after(self.sim.latency, Ev::ToVent(self.w, message)),
                FlowCommand::ToSink(message) => self
                    .sim
                    .after(self.sim.latency, Ev::ToSink(self.w, message)),
                FlowCommand::Deliver(delivery) => {
                    if let Some(results) = delivery.results {
                        self.sim
                            .after(self.sim.latency, Ev::ToSink(self.w, results));
                    }
                    self.sim
                        .after(self.sim.latency, Ev::ToVent(self.w, delivery.done));
                }
                FlowCommand::Run(chunk) => {
                    let (batch, in_pieces) = (chunk.batch, chunk.in_pieces);
                    let worker = &mut self.sim.workers[self.w];
                    worker
                        .queue
                        .extend(chunk.tasks.into_iter().map(|t| (batch, t, in_pieces)));
                    self.sim.start_next(self.w);
                }
                FlowCommand::Yield { id, .. } => {
                    let worker = &mut self.sim.workers[self.w];
                    worker.cuts.insert(id);
                    if let Some((p, _, _)) = worker.pieces.as_mut().filter(|(p, ..)| p.id() == id) {
                        p.cut();
                    }
                }
                FlowCommand::Abandon(batch) => {
                    // The task running finishes (and is reported); the rest are dropped.
                    let worker = &mut self.sim.workers[self.w];
                    let running = usize::from(worker.busy);
                    let mut i = 0;
                    worker.queue.retain(|&(b, _, _)| {
                        i += 1;
                        i <= running || b != batch
                    });
                }
                FlowCommand::Leave | FlowCommand::Stop(_) => {
                    self.sim.workers[self.w].life = Life::Killed;
                }
                FlowCommand::Note(_) => {}
            }
        }
        Ok(driver::Progress::Going)
    }
}

/// The simulated sink: the collector's messages go out on the simulated network; records
/// and syncs cost nothing.
struct SinkHost<'a>(&'a mut Sim);

impl driver::Host for SinkHost<'_> {
    type Machine = Collector;
    type Error = std::convert::Infallible;

    fn machine(&mut self) -> &mut Collector {
        &mut self.0.sink
    }

    fn now(&self) -> Instant {
        self.0.base + Duration::from_nanos(self.0.now)
    }

    fn carry_out(
        &mut self,
        commands: &mut Vec<SinkCommand>,
        _failed: &mut Vec<SinkEvent>,
    ) -> Result<driver::Progress, std::convert::Infallible> {
        for command in commands.drain(..) {
            match command {
                SinkCommand::Send { to, message } if to == VENTILATOR => {
                    self.0.after(self.0.latency, Ev::FromSink(message))
                }
                // Welcomes and refusals to workers.
                SinkCommand::Send { to, message } => {
                    if let Some(&w) = self.0.by_routing_id.get(&to) {
                        self.0.after(self.0.latency, Ev::SinkToWorker(w, message));
                    }
                }
                // Records and syncs: nothing to simulate.
                SinkCommand::Record { .. }
                | SinkCommand::Sync
                | SinkCommand::Finished
                | SinkCommand::Note(_) => {}
                SinkCommand::Stop(why) => self.0.sink_stopped = Some(why.to_string()),
            }
        }
        Ok(driver::Progress::Going)
    }
}

/// Box–Muller: one standard normal draw.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// [`lpt_ms_s`] of whole-ms workloads.
#[cfg(test)]
fn lpt_s(workloads: &[u32], slowness: &[f64]) -> f64 {
    let ms: Vec<f64> = workloads.iter().map(|&w| f64::from(w)).collect();
    lpt_ms_s(&ms, slowness)
}

/// List scheduling, longest first, onto whichever worker frees up first: tasks that take
/// these ms at nominal speed.
fn lpt_ms_s(workloads_ms: &[f64], slowness: &[f64]) -> f64 {
    let mut sorted = workloads_ms.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut free: BinaryHeap<Reverse<(u64, usize)>> =
        (0..slowness.len()).map(|w| Reverse((0, w))).collect();
    let mut makespan = 0;
    for w in sorted {
        let Some(Reverse((at, worker))) = free.pop() else {
            break;
        };
        let end = at + (w * 1e6 * slowness[worker]) as u64;
        makespan = makespan.max(end);
        free.push(Reverse((end, worker)));
    }
    makespan as f64 / 1e9
}

/// The dispatcher's own CPU time for a run: its recorded events fed again, in order, to a
/// fresh dispatcher in one timed loop (the state machine is deterministic, so it makes the
/// same decisions; the counters prove it). Nothing of the simulation is in the figure.
fn replay(
    config: DispatchConfig,
    base: Instant,
    trace: Vec<(u64, Event)>,
    expected: crate::dispatch::Counters,
) -> anyhow::Result<(Duration, Duration)> {
    let mut d = Dispatcher::new(config, base, 0);
    let mut out = Vec::new();
    let mut deciding = Duration::ZERO;
    let started = Instant::now();
    for (at, event) in trace {
        let at = base + Duration::from_nanos(at);
        if let Event::Tick = event {
            let tick = Instant::now();
            d.handle(at, event, &mut out);
            deciding += tick.elapsed();
        } else {
            d.handle(at, event, &mut out);
        }
        out.clear();
    }
    let cpu = started.elapsed();
    if d.counters() != expected {
        anyhow::bail!(
            "the replayed dispatcher diverged: {:?} against {expected:?}",
            d.counters()
        );
    }
    Ok((cpu, deciding))
}

/// Runs one simulated farm to completion.
pub fn simulate(spec: &SimSpec) -> anyhow::Result<SimRow> {
    simulate_until(spec, &Shutdown::new())
}

/// Runs one simulated farm to completion, or until `shutdown` is requested (then it
/// returns [`Interrupted`]): a farm of 10,000 workers runs for seconds of wall time.
pub fn simulate_until(spec: &SimSpec, shutdown: &Shutdown) -> anyhow::Result<SimRow> {
    let wall = Instant::now();
    let batch = match (spec.chunking, &spec.costs) {
        (Some(_), _) => Batch { tasks: Vec::new() },
        // Bands: equal declared workloads, their costs known only once done.
        (None, Some(costs)) => Batch {
            tasks: (0..costs.len() as u32)
                .map(|id| Task {
                    id,
                    workload_ms: 1,
                    ..Default::default()
                })
                .collect(),
        },
        (None, None) => Batch::generate(spec.tasks, 1, 100, spec.seed)?,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5eed);
    let initial = spec.farm.as_ref().map_or(spec.workers, Vec::len);
    // Speeds: log-normal spread (σ 0.3) and one 10× straggler per thousand workers.
    let stragglers = if initial >= 10 {
        initial.div_ceil(1000)
    } else {
        0
    };
    let joiners = if spec.churn { initial / 50 } else { 0 };
    let total = initial + joiners;
    let slowness: Vec<f64> = match &spec.farm {
        Some(farm) => farm.clone(),
        None => (0..total)
            .map(|w| {
                let s = (0.3 * normal(&mut rng)).exp();
                if w < stragglers {
                    s * 10.0
                } else {
                    s
                }
            })
            .collect(),
    };
    let prefix: Option<Vec<f64>> = spec.costs.as_ref().map(|costs| {
        std::iter::once(0.0)
            .chain(costs.iter().scan(0.0, |sum, c| {
                *sum += c;
                Some(*sum)
            }))
            .collect()
    });
    // What each task of a list takes at nominal speed: its workload, or what its entry in
    // `costs` says.
    let true_ms: Vec<f64> = batch
        .tasks
        .iter()
        .map(|t| task_us(t, spec.item_us, prefix.as_deref()) / 1e3)
        .collect();
    let work_ms: f64 = match spec.chunking {
        Some(_) => {
            let items = prefix
                .as_ref()
                .and_then(|p| p.last().copied())
                .unwrap_or(f64::from(spec.tasks));
            items * f64::from(spec.item_us) / 1e3
        }
        None => true_ms.iter().sum(),
    };
    let speed: f64 = slowness[..initial].iter().map(|s| 1.0 / s).sum();
    let fastest = slowness[..initial]
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let longest_ms = true_ms.iter().copied().fold(0.0, f64::max);
    let ideal_s = (work_ms / speed).max(longest_ms * fastest) / 1e3;
    // A job divides to the item: its bound is the ideal.
    let lpt = match spec.chunking {
        Some(_) => ideal_s,
        None => lpt_ms_s(&true_ms, &slowness[..initial]),
    };

    let (n, job, plan) = match spec.chunking {
        Some(policy) => {
            let mut constants = [0; crate::kernels::CONSTANTS];
            constants[0] = spec.item_us;
            let job = Job {
                items: u64::from(spec.tasks),
                constants,
                ..Job::default()
            };
            let plan = Plan {
                policy,
                items: job.items,
                max_chunk: u32::MAX,
                nominal_us: f64::from(spec.item_us),
            };
            (spec.tasks as usize, job, Some(plan))
        }
        None => (batch.len(), Job::default(), None),
    };
    let dispatch = DispatchConfig {
        batch_id: 1,
        session: 1,
        order: batch.dispatch_order(crate::batch::Order::LongestFirst, spec.seed),
        tasks: batch.tasks.clone(),
        job,
        expected_ms: batch.expected_ms(),
        longest_ms: batch.longest_ms(),
        wait_workers: initial,
        wait_timeout: Duration::from_secs(3600),
        window: 2,
        max_window: 2048,
        heartbeat: Heartbeat {
            interval: INTERVAL,
            liveness: 5,
        },
        backup: Backup::default(),
        sink_timeout: Duration::from_secs(3600),
        resume: false,
        shutdown_workers: true,
        endpoint: "tcp://sim:5557".into(),
        sink: "tcp://sim:5558".into(),
        fixed_workers: 0,
        chunking: plan,
        max_attempts: crate::ventilator::DEFAULT_MAX_ATTEMPTS,
        names: Vec::new(),
        observe: false,
        framing: Default::default(),
    };
    let base = Instant::now();
    let mut sim = Sim {
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        base,
        d: Dispatcher::new(dispatch.clone(), base, 0),
        workers: Vec::with_capacity(total),
        latency: ns(spec.latency),
        by_routing_id: std::collections::HashMap::with_capacity(total),
        sink: Collector::new(
            CollectConfig {
                heartbeat: Heartbeat {
                    interval: INTERVAL,
                    liveness: 5,
                },
                final_stats_wait: Duration::from_secs(1),
                endpoint: "tcp://sim:5558".into(),
                results_path: None,
                resume_advice: None,
                codecs: crate::protocol::CODEC_LZ4,
            },
            None,
            base,
            0,
        ),
        sink_inbox: Vec::new(),
        sink_wake_scheduled: false,
        sink_stopped: None,
        tick_at: None,
        decisions: 0,
        trace: Vec::new(),
        complete_at: None,
        inbox: Vec::new(),
        wake_scheduled: false,
        start_at: None,
        stopped: None,
        peak_entries: 0,
        events: 0,
        item_us: spec.item_us,
        prefix,
    };
    for (w, &s) in slowness.iter().enumerate() {
        let name = format!("sim-{w}");
        let routing_id = name.clone().into_bytes();
        sim.by_routing_id.insert(routing_id.clone(), w);
        sim.workers.push(SimWorker {
            slowness: s,
            life: Life::NotYet,
            flow: None,
            queue: VecDeque::new(),
            busy: false,
            pieces: None,
            cuts: Default::default(),
            runs: 0,
            tick_at: None,
            routing_id,
            info: WorkerInfo {
                name,
                session: w as u64,
                backend: "sleep".into(),
                adapter: String::new(),
                window_hint: 1,
                codecs: 0,
                fill: 0,
            },
        });
    }
    // Everyone joins within the first 100 ms; the batch starts when all have.
    for w in 0..initial {
        let at = rng.random_range(0..ns(Duration::from_millis(100)));
        sim.at(at, Ev::Join(w));
    }
    if spec.churn {
        // Joins, kills and freezes spread over the first half of the expected makespan.
        let span = ns(Duration::from_secs_f64(lpt / 2.0)).max(1);
        for w in initial..total {
            let at = rng.random_range(0..span);
            sim.at(at, Ev::Join(w));
        }
        let hit = initial / 100;
        for k in 0..2 * hit {
            // Never the stragglers: they are measured on their own.
            let w = stragglers + rng.random_range(0..initial - stragglers);
            let at = rng.random_range(0..span);
            sim.at(at, if k < hit { Ev::Kill(w) } else { Ev::Freeze(w) });
        }
    }
    sim.vent(Vec::new());
    let limit = ns(Duration::from_secs_f64(lpt * 100.0 + 3600.0));
    let mut popped: u64 = 0;
    while let Some(Reverse(q)) = sim.queue.pop() {
        popped += 1;
        if popped % 65_536 == 0 && shutdown.is_requested() {
            return Err(Interrupted.into());
        }
        sim.now = q.at;
        if sim.now > limit {
            anyhow::bail!("the simulated batch did not finish within 100 times its LPT bound");
        }
        sim.step(q.ev);
        if let Some(why) = &sim.stopped {
            anyhow::bail!("the simulated ventilator stopped: {why}");
        }
        if let Some(why) = &sim.sink_stopped {
            anyhow::bail!("the simulated sink stopped: {why}");
        }
        if sim.complete_at.is_some() {
            break;
        }
    }
    let Some(done_at) = sim.complete_at else {
        anyhow::bail!("the simulated batch ran out of events before it was complete");
    };
    let held = sim.sink.progress().map_or(0, |(held, _)| held);
    if held != n {
        anyhow::bail!("the simulated sink holds {held} of {n} results at the end");
    }
    let counters = sim.d.counters();
    let duplicates = sim.sink.duplicates();
    let (cpu, deciding) = replay(dispatch, base, std::mem::take(&mut sim.trace), counters)?;
    // The batch starts when every initial worker has joined and it is announced.
    let makespan_s = (done_at - sim.start_at.unwrap_or(0)) as f64 / 1e9;
    Ok(SimRow {
        scenario: if let Some(policy) = spec.chunking {
            format!(
                "{} job{}",
                policy.name(),
                if spec.churn { ", churn" } else { "" }
            )
        } else if spec.churn {
            format!(
                "churn: +{joiners} joining, {} killed, {} frozen",
                initial / 100,
                initial / 100
            )
        } else {
            "no churn".into()
        },
        workers: initial,
        tasks: spec.tasks,
        makespan_s,
        lpt_s: lpt,
        ideal_s,
        efficiency_lpt: lpt / makespan_s,
        efficiency_ideal: ideal_s / makespan_s,
        redispatched: counters.redispatched,
        backups: counters.backups,
        duplicates,
        chunks_cut: counters.chunks_cut,
        decisions: sim.decisions,
        cpu_ns_per_task: cpu.as_nanos() as f64 / sim.decisions.max(1) as f64,
        cpu_ns_per_decision: deciding.as_nanos() as f64 / sim.decisions.max(1) as f64,
        peak_entries_per_task: sim.peak_entries as f64 / n.max(1) as f64,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

/// What each of `items` items costs (a multiple of the nominal) when they are the pixels
/// of the default Mandelbrot view (200 x 100, 500 iterations at most) stretched over the
/// job: one plus the pixel's iterations, from the CPU reference. Along the job the cost
/// swings from 1 (outside the set) to 501 (inside) and back, row after row.
pub fn mandelbrot_profile(items: usize) -> Vec<f64> {
    let (width, height) = (200u32, 100u32);
    let Ok(view) = crate::kernels::mandelbrot::View::new(width, height, 500, 1, (-0.5, 0.0), 3.0)
    else {
        return vec![1.0; items];
    };
    let pixels = (width * height) as usize;
    let costs: Vec<f64> = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .map(|(x, y)| 1.0 + f64::from(view.count(x, y)))
        .collect();
    (0..items)
        .map(|i| costs[i * pixels / items.max(1)])
        .collect()
}

/// What each row of a `rows`-row picture of the default Mandelbrot view costs (a multiple
/// of the nominal), as the items of a job that carves rows (`--kernel mandelbrot`): the
/// mean over the row's pixels (of a 256 x 256 rendering, 500 iterations at most, its
/// rows stretched over `rows`) of one plus their iterations. Rows outside the set cost a
/// few, rows through its middle a hundred and more.
pub fn mandelbrot_rows_profile(rows: u32) -> Vec<f64> {
    let side = 256u32;
    let Ok(view) = crate::kernels::mandelbrot::View::new(side, side, 500, 1, (-0.5, 0.0), 3.0)
    else {
        return vec![1.0; rows as usize];
    };
    let costs: Vec<f64> = (0..side)
        .map(|y| {
            let sum: f64 = (0..side).map(|x| 1.0 + f64::from(view.count(x, y))).sum();
            sum / f64::from(side)
        })
        .collect();
    (0..rows)
        .map(|r| costs[(u64::from(r) * u64::from(side) / u64::from(rows.max(1))) as usize])
        .collect()
}

/// The farms of the rows' runs: the fast worker alone, with one and two workers four
/// times slower (the software adapter beside cpu workers on a small box), and with eight
/// thirty times slower (a GPU beside cpu workers).
fn row_farms() -> Vec<(&'static str, Vec<f64>)> {
    vec![
        ("1 fast", vec![1.0]),
        ("1 fast + 1 slow (4x)", fast_with(1, 4.0)),
        ("1 fast + 2 slow (4x)", fast_with(2, 4.0)),
        ("1 fast + 8 slow (30x)", fast_with(8, 30.0)),
    ]
}

/// A fast worker (nominal speed) and `n` workers `slowness` times slower: a farm's
/// slowness per worker.
fn fast_with(n: usize, slowness: f64) -> Vec<f64> {
    std::iter::once(1.0)
        .chain(std::iter::repeat_n(slowness, n))
        .collect()
}

/// The farms of the uneven-farm rows: one fast worker alone, then with slower ones
/// (slowness per worker).
fn uneven_farms() -> Vec<(&'static str, Vec<f64>)> {
    vec![
        ("1 fast", vec![1.0]),
        ("1 fast + 1 slow (100x)", fast_with(1, 100.0)),
        ("1 fast + 8 slow (100x)", fast_with(8, 100.0)),
        ("1 fast + 64 slow (1000x)", fast_with(64, 1000.0)),
    ]
}

/// The suite: efficiency from 1 to 10,000 workers without churn, then 10,000 with it;
/// then an adaptive job whose items cost what the pixels of a Mandelbrot view do, on one
/// fast worker alone and with slower ones added (their makespans must not grow).
pub(super) fn suite(
    quick: bool,
    progress: &super::Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<SimRow>> {
    let simulate = |spec: &SimSpec| simulate_until(spec, shutdown);
    let (tasks, counts): (u32, &[usize]) = if quick {
        (20_000, &[1, 10, 100])
    } else {
        (1_000_000, &[1, 10, 100, 1_000, 10_000])
    };
    let latency = Duration::from_micros(200);
    let mut rows = Vec::new();
    for &workers in counts {
        progress.step(format!("simulate: {workers} workers"));
        rows.push(simulate(&SimSpec {
            workers,
            tasks,
            churn: false,
            latency,
            seed: 1,
            chunking: None,
            item_us: 0,
            farm: None,
            costs: None,
        })?);
        progress.done();
    }
    let most = counts[counts.len() - 1];
    progress.step(format!("simulate: {most} workers with churn"));
    rows.push(simulate(&SimSpec {
        workers: most,
        tasks,
        churn: true,
        latency,
        seed: 1,
        chunking: None,
        item_us: 0,
        farm: None,
        costs: None,
    })?);
    progress.done();
    // A divisible job on the largest farm: what carving a chunk costs among many workers.
    let job_items: u64 = if quick { 200_000 } else { 10_000_000 };
    progress.step(format!("simulate: {most} workers, adaptive job"));
    let mut row = simulate(&SimSpec {
        workers: most,
        tasks: job_items as u32,
        churn: false,
        latency,
        seed: 1,
        chunking: Some(Policy::Adaptive(Duration::from_millis(200))),
        item_us: 1000,
        farm: None,
        costs: None,
    })?;
    row.scenario = "adaptive job, uniform costs".into();
    rows.push(row);
    progress.done();
    let items = if quick { 20_000 } else { 200_000 };
    let on = |farm: Vec<f64>, spec: SimSpec| SimSpec {
        workers: farm.len(),
        farm: Some(farm),
        ..spec
    };
    let mandelbrot_job = SimSpec {
        workers: 0,
        tasks: items as u32,
        churn: false,
        latency,
        seed: 1,
        chunking: Some(Policy::Adaptive(Duration::from_millis(200))),
        item_us: 25,
        farm: None,
        costs: Some(std::sync::Arc::new(mandelbrot_profile(items))),
    };
    // A picture's rows as the items, each about a millisecond on the fast worker: what a
    // chunk's yield in the end game is for.
    let picture = 2048;
    let rows_job = SimSpec {
        tasks: picture,
        chunking: Some(Policy::Adaptive(Duration::from_millis(100))),
        item_us: 20,
        costs: Some(std::sync::Arc::new(mandelbrot_rows_profile(picture))),
        ..mandelbrot_job.clone()
    };
    // The same picture as a task list of bands of 16 rows (`--kernel mandelbrot`): each
    // declared alike, their costs known only once done.
    let bands = SimSpec {
        tasks: picture / BAND_ROWS,
        chunking: None,
        item_us: 20 * BAND_ROWS,
        costs: Some(std::sync::Arc::new(mandelbrot_rows_profile(
            picture / BAND_ROWS,
        ))),
        ..mandelbrot_job.clone()
    };
    let runs = uneven_farms()
        .into_iter()
        .map(|(label, farm)| {
            (
                "adaptive job, Mandelbrot costs",
                label,
                on(farm, mandelbrot_job.clone()),
            )
        })
        .chain(row_farms().into_iter().map(|(label, farm)| {
            (
                "adaptive job, Mandelbrot rows",
                label,
                on(farm, rows_job.clone()),
            )
        }))
        .chain(row_farms().into_iter().map(|(label, farm)| {
            (
                "bands (a task list), Mandelbrot rows",
                label,
                on(farm, bands.clone()),
            )
        }));
    for (what, label, spec) in runs {
        progress.step(format!("simulate: {what}, {label}"));
        let mut row = simulate(&spec)?;
        row.scenario = format!("{what}: {label}");
        rows.push(row);
        progress.done();
    }
    Ok(rows)
}

/// Rows in a band of the simulated task list (`--band-rows`' default).
const BAND_ROWS: u32 = 16;

/// The table, with each target stated as met or not.
pub(super) fn table(rows: &[SimRow]) -> super::table::Table {
    let mut t = super::table::Table::new(
        "Simulated farm: the real dispatcher in virtual time, 200 µs one-way latency",
        &[
            "scenario",
            "workers>",
            "tasks>",
            "makespan s>",
            "LPT bound s>",
            "ideal s>",
            "of LPT>",
            "of ideal>",
            "redispatched>",
            "backups>",
            "duplicates>",
            "chunks cut>",
            "CPU ns/task, all>",
            "of which deciding>",
            "peak entries/task>",
        ],
    );
    for r in rows {
        t.row(vec![
            r.scenario.clone(),
            r.workers.to_string(),
            r.tasks.to_string(),
            format!("{:.3}", r.makespan_s),
            format!("{:.3}", r.lpt_s),
            format!("{:.3}", r.ideal_s),
            format!("{:.4}", r.efficiency_lpt),
            format!("{:.4}", r.efficiency_ideal),
            r.redispatched.to_string(),
            r.backups.to_string(),
            r.duplicates.to_string(),
            r.chunks_cut.to_string(),
            format!("{:.0}", r.cpu_ns_per_task),
            format!("{:.0}", r.cpu_ns_per_decision),
            format!("{:.2}", r.peak_entries_per_task),
        ]);
    }
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    if let Some(big) = rows
        .iter()
        .filter(|r| r.scenario == "no churn")
        .max_by_key(|r| r.workers)
    {
        t.note(format!(
            "≥ 0.99 of the LPT bound without churn at {} workers: {} ({:.4})",
            big.workers,
            verdict(big.efficiency_lpt >= 0.99),
            big.efficiency_lpt
        ));
        t.note(format!(
            "≤ 1 µs of ventilator CPU per dispatch decision at {} workers: {} ({:.0} ns); with the \
             handling of every message that feeds it, {:.0} ns per task ({})",
            big.workers,
            verdict(big.cpu_ns_per_decision <= 1000.0),
            big.cpu_ns_per_decision,
            big.cpu_ns_per_task,
            if big.cpu_ns_per_task <= 1000.0 {
                "also within 1 µs"
            } else {
                "above 1 µs"
            }
        ));
    }
    if let Some(churn) = rows.iter().find(|r| r.scenario != "no churn") {
        t.note(format!(
            "≥ 0.95 of the LPT bound (of the workers present at the start) with churn: {} ({:.4})",
            verdict(churn.efficiency_lpt >= 0.95),
            churn.efficiency_lpt
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_stop_ends_a_long_simulation_as_interrupted() {
        // `conquer bench --suite simulate` under `timeout` or systemd: a SIGTERM must end
        // a farm of thousands of workers, not wait for it to finish.
        let shutdown = Shutdown::new();
        shutdown.request();
        let spec = SimSpec {
            workers: 100,
            tasks: 200_000,
            churn: false,
            latency: Duration::from_micros(200),
            seed: 1,
            chunking: None,
            item_us: 0,
            farm: None,
            costs: None,
        };
        let err = simulate_until(&spec, &shutdown).expect_err("a requested stop ends the run");
        assert!(Interrupted::is(&err), "{err:#}");
    }

    #[test]
    fn a_small_farm_finishes_near_its_bound_and_churn_loses_nothing() {
        let calm = simulate(&SimSpec {
            workers: 20,
            tasks: 2_000,
            churn: false,
            latency: Duration::from_micros(200),
            seed: 3,
            chunking: None,
            item_us: 0,
            farm: None,
            costs: None,
        })
        .expect("the calm farm finishes");
        assert!(calm.efficiency_lpt > 0.9, "{calm:?}");
        assert_eq!(calm.duplicates, 0, "{calm:?}");
        assert!(calm.decisions >= 2_000);
        let rough = simulate(&SimSpec {
            workers: 200,
            tasks: 5_000,
            churn: true,
            latency: Duration::from_micros(200),
            seed: 3,
            chunking: None,
            item_us: 0,
            farm: None,
            costs: None,
        })
        .expect("the churning farm finishes with every result held");
        assert!(
            rough.redispatched > 0,
            "killed and frozen workers' tasks go out again: {rough:?}"
        );
    }

    /// A divisible job through the real dispatcher and sink: whatever the policy and
    /// whatever dies or freezes, every item is held (the sink counts by items) and the job
    /// completes; adaptive chunks balance log-normal speeds.
    #[test]
    fn a_simulated_job_holds_every_item_under_churn_and_adaptive_balances_it() {
        for policy in [
            Policy::Static,
            Policy::Fixed(0),
            Policy::Adaptive(Duration::from_millis(200)),
        ] {
            for seed in 1..4 {
                let row = simulate(&SimSpec {
                    workers: 100,
                    tasks: 200_000,
                    churn: true,
                    latency: Duration::from_micros(200),
                    seed,
                    chunking: Some(policy),
                    item_us: 1000,
                    farm: None,
                    costs: None,
                })
                .unwrap_or_else(|e| panic!("{policy:?}, seed {seed}: {e}"));
                assert!(row.decisions > 0, "{row:?}");
            }
        }
        let calm = simulate(&SimSpec {
            workers: 100,
            tasks: 200_000,
            churn: false,
            latency: Duration::from_micros(200),
            seed: 1,
            chunking: Some(Policy::Adaptive(Duration::from_millis(200))),
            item_us: 1000,
            farm: None,
            costs: None,
        })
        .expect("the calm job finishes");
        assert!(calm.efficiency_ideal > 0.9, "{calm:?}");
    }

    fn mandelbrot_costs() -> &'static [f64] {
        static COSTS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
        COSTS.get_or_init(|| mandelbrot_profile(20_000))
    }

    /// The default Mandelbrot view's cost in 128 bands of rows, computed once.
    fn mandelbrot_bands() -> &'static [f64] {
        static COSTS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
        COSTS.get_or_init(|| mandelbrot_profile(128))
    }

    /// The makespan of `spec`'s farm in s, the rest of it as given (200 µs latency, no
    /// churn): one place for what the promise's tests run.
    fn makespan(farm: Vec<f64>, spec: SimSpec) -> f64 {
        run_of(farm, spec).makespan_s
    }

    /// [`makespan`]'s whole row.
    fn run_of(farm: Vec<f64>, spec: SimSpec) -> SimRow {
        simulate(&SimSpec {
            workers: farm.len(),
            farm: Some(farm),
            churn: false,
            latency: Duration::from_micros(200),
            ..spec
        })
        .unwrap_or_else(|e| panic!("the simulated batch did not finish: {e}"))
    }

    /// A 20,000-item adaptive job on `farm` (slowness per worker) with these item costs.
    fn job_on(farm: Vec<f64>, costs: &std::sync::Arc<Vec<f64>>, seed: u64) -> f64 {
        let spec = SimSpec {
            tasks: costs.len() as u32,
            seed,
            chunking: Some(Policy::Adaptive(Duration::from_millis(200))),
            item_us: 250,
            costs: Some(costs.clone()),
            ..SimSpec::default()
        };
        makespan(farm, spec)
    }

    /// Sixty-four workers a thousand times slower than the fast one, on the pixels of a
    /// Mandelbrot view: slow workers taking over each other's last items must leave the
    /// fast worker its copy of them, and the job ends within the allowance of the fast
    /// worker alone (it ended 5 % past it when three takeovers of any workers used up a
    /// task's copies).
    #[test]
    fn sixty_four_workers_a_thousand_times_slower_leave_the_fast_one_its_copies() {
        let costs = std::sync::Arc::new(mandelbrot_costs().to_vec());
        // As the simulate suite runs it: 25 µs an item at nominal cost.
        let on = |farm: Vec<f64>| {
            simulate(&SimSpec {
                workers: farm.len(),
                tasks: costs.len() as u32,
                churn: false,
                latency: Duration::from_micros(200),
                seed: 1,
                chunking: Some(Policy::Adaptive(Duration::from_millis(200))),
                item_us: 25,
                farm: Some(farm),
                costs: Some(costs.clone()),
            })
            .expect("the simulated job finishes")
            .makespan_s
        };
        let alone = on(vec![1.0]);
        let with = on(std::iter::once(1.0)
            .chain(std::iter::repeat_n(1000.0, 64))
            .collect());
        assert!(
            with <= alone * 1.02 + 0.2,
            "{with:.3} s with the slow workers, {alone:.3} s without"
        );
    }

    /// The farms the promise's property tests compare: the fastest worker (slowness 1),
    /// alone or with up to two others, and the same farm with 1 to 61 workers added; each
    /// other worker up to 1,000 times slower (10 to a power drawn from 0 to 3).
    fn drawn_farms() -> impl proptest::strategy::Strategy<Value = (Vec<f64>, Vec<f64>)> {
        use proptest::strategy::Strategy;
        let powers = |n: std::ops::Range<usize>| proptest::collection::vec(0.0f64..3.0, n);
        (powers(0..3), powers(1..62)).prop_map(|(base, extra)| {
            let slowness = |e: &f64| 10f64.powf(*e);
            let farm: Vec<f64> = std::iter::once(1.0)
                .chain(base.iter().map(slowness))
                .collect();
            let larger = farm
                .iter()
                .copied()
                .chain(extra.iter().map(slowness))
                .collect();
            (farm, larger)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// The promise: adding workers, however slow (up to 1,000 times slower than the
        /// fastest), to a farm (the fastest worker, alone or with a few others) never makes
        /// a job finish later than that farm without them, beyond one chunk of the
        /// fastest worker's time (200 ms) and 2 %, whatever the items cost along the job:
        /// uniform, a ramp, a band through the set, a thousandfold step, a random profile
        /// of up to six stretches between 1 and 1,000, stepped or ramped, or the pixels of
        /// the default Mandelbrot view.
        #[test]
        fn adding_slow_workers_never_slows_a_job(
            (farm, larger) in drawn_farms(),
            profile in 0u8..7,
            stretches in proptest::collection::vec(0.0f64..3.0, 1..7),
            seed in 1u64..1000,
        ) {
            let items = 20_000usize;
            let costs: Vec<f64> = match profile {
                // Random stretches, stepped, or ramped from one to the next.
                4 | 5 => stretched(&stretches, items, profile == 5),
                // The pixels of the default Mandelbrot view, as the reference counts their
                // iterations.
                6 => mandelbrot_costs().to_vec(),
                p => (0..items)
                    .map(|i| {
                        let at = i as f64 / items as f64;
                        match p {
                            0 => 1.0,
                            1 => 1.0 + 99.0 * at,
                            // A band through the set: a hundredfold dearer in the middle fifth.
                            2 => if (0.4..0.6).contains(&at) { 100.0 } else { 1.0 },
                            // A step at two thirds, a thousandfold.
                            _ => if at >= 2.0 / 3.0 { 1000.0 } else { 1.0 },
                        }
                    })
                    .collect(),
            };
            let costs = std::sync::Arc::new(costs);
            let without = job_on(farm.clone(), &costs, seed);
            let with = job_on(larger.clone(), &costs, seed);
            let allowance = without * 0.02 + 0.2;
            proptest::prop_assert!(
                with <= without + allowance,
                "{with:.3} s on {} workers against {without:.3} s on {farm:?} (profile {profile}, \
                 stretches {stretches:?})",
                larger.len()
            );
        }
    }

    /// A 400-task list (1 to 100 ms each) on `farm` (slowness per worker).
    fn list_on(farm: Vec<f64>, seed: u64) -> f64 {
        let spec = SimSpec {
            tasks: 400,
            seed,
            ..SimSpec::default()
        };
        makespan(farm, spec)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// The same promise for a task list: adding workers up to 1,000 times slower never
        /// makes the batch end later than without them, beyond one task's time on the
        /// fastest worker (100 ms) and 2 %.
        #[test]
        fn adding_slow_workers_never_slows_a_task_list(
            (farm, larger) in drawn_farms(),
            seed in 1u64..1000,
        ) {
            let without = list_on(farm.clone(), seed);
            let with = list_on(larger.clone(), seed);
            proptest::prop_assert!(
                with <= without * 1.02 + 0.1,
                "{with:.3} s on {} workers against {without:.3} s on {farm:?}",
                larger.len()
            );
        }
    }

    /// A list of bands declared alike, costing `profile` normalised to a mean band of 10 ms
    /// at nominal speed.
    fn bands(profile: &[f64], seed: u64) -> SimSpec {
        let mean = profile.iter().sum::<f64>() / profile.len() as f64;
        let costs: Vec<f64> = profile.iter().map(|c| c / mean).collect();
        SimSpec {
            tasks: costs.len() as u32,
            seed,
            item_us: 10_000,
            costs: Some(std::sync::Arc::new(costs)),
            ..SimSpec::default()
        }
    }

    /// [`bands`] on `farm` (slowness per worker): the makespan, in s.
    fn bands_on(farm: Vec<f64>, profile: &[f64], seed: u64) -> f64 {
        makespan(farm, bands(profile, seed))
    }

    /// The promise for a list of bands: `with` (the larger farm's makespan) no later than
    /// `without` plus 2 % and the mean band on the fastest worker (10 ms).
    fn within_allowance(with: f64, without: f64, farms: &str) {
        assert!(
            with <= without * 1.02 + 0.010,
            "{with:.3} s against {without:.3} s ({farms})"
        );
    }

    /// Costs of `n` items (or bands) in stretches of equal length, each 10 to the given
    /// power: stepped, or `ramped` from each stretch's power to the next's.
    fn stretched(stretches: &[f64], n: usize, ramped: bool) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let x = i as f64 / n as f64 * stretches.len() as f64;
                let k = (i * stretches.len() / n).min(stretches.len() - 1);
                let here = stretches[k];
                let next = stretches
                    .get(k + 1)
                    .copied()
                    .filter(|_| ramped)
                    .unwrap_or(here);
                10f64.powf(here + (next - here) * (x - k as f64))
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("CONQUER_PROMISE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]

        /// The promise for a list of bands declared alike (as `--kernel mandelbrot`
        /// declares them) that cost what their rows cost: adding workers up to 1,000 times
        /// slower never makes the batch end later than without them, beyond the dearest
        /// band on the fastest worker and 2 %. No dispatcher can promise less before the
        /// bands are run: whichever worker is left the dearest band last runs it after the
        /// rest. The costs: random stretches between 1 and 1,000, stepped or ramped from
        /// one to the next, or the rows of the default Mandelbrot view.
        /// `CONQUER_PROMISE_CASES` runs more cases than the 256 of the suite.
        #[test]
        fn adding_slow_workers_never_slows_a_list_of_uneven_bands(
            (farm, larger) in drawn_farms(),
            profile in 0u8..3,
            stretches in proptest::collection::vec(0.0f64..3.0, 1..7),
            seed in 1u64..1000,
        ) {
            let n = 128usize;
            let costs: Vec<f64> = match profile {
                0 => mandelbrot_bands().to_vec(),
                p => stretched(&stretches, n, p == 2),
            };
            // `bands` makes the mean band 10 ms on the fastest worker.
            let mean = costs.iter().sum::<f64>() / n as f64;
            let dearest = costs.iter().copied().fold(0.0, f64::max) / mean * 0.010;
            let without = bands_on(farm.clone(), &costs, seed);
            let with = bands_on(larger.clone(), &costs, seed);
            proptest::prop_assert!(
                with <= without * 1.02 + dearest,
                "{with:.3} s on {} workers against {without:.3} s on {farm:?} (dearest band \
                 {dearest:.3} s; profile {profile}, stretches {stretches:?})",
                larger.len()
            );
        }
    }

    /// Bands dearer along the list, a hundredfold from first to last, on a fast worker
    /// and two 250 times slower: theirs, taken while bands were cheap, run late into the
    /// dear ones and are copied in the end game. Each copy must go out as the fast worker
    /// falls idle, not at the next tail probe (20 ms each: 3.7 % of this batch).
    #[test]
    fn slow_workers_on_a_ramp_of_bands_cost_the_fast_one_no_idle_time() {
        let ramp: Vec<f64> = (0..128)
            .map(|i| 1.0 + 99.0 * f64::from(i) / 128.0)
            .collect();
        let alone = bands_on(vec![1.0], &ramp, 896);
        let with = bands_on(vec![1.0, 250.0, 260.0], &ramp, 896);
        within_allowance(with, alone, "with two slow workers, alone");
    }

    /// Workers alike but one 180 times slower, on bands whose first quarter and last half
    /// cost hundreds of times the second quarter: the slow one, measured on one cheap band,
    /// takes a dear one. Measured against the others' smoothed paces (taken on dear bands)
    /// its band looked no slower there than on an idle fast worker, and it was left to the
    /// backup rule (2.4 s); the paces on the cheapest band each ran say it is 180 times
    /// slower, and the band is copied at once.
    #[test]
    fn a_slow_workers_dear_band_is_copied_though_it_was_measured_on_a_cheap_one() {
        let profile = stretched(&[2.387, 0.0, 2.791, 2.489], 128, false);
        let two = bands_on(vec![1.0, 1.0], &profile, 980);
        let mut farm = vec![1.0; 35];
        farm[16] = 180.0;
        let with = bands_on(farm, &profile, 980);
        within_allowance(with, two, "35 workers, two");
    }

    /// A hundredfold band through the middle fifth of the list, on the fast worker and two
    /// some 300 times slower, then with 57 more of every speed from 1.2 to 900 times slower:
    /// in the end game the idle workers ordered by their smoothed paces put those measured
    /// on cheap bands first, and they took the dear bands over from slower holders and used
    /// up the copies the fast one needed (1.624 s against 1.302). Ordered by their paces on
    /// the cheapest band each ran, the fast worker chooses first.
    #[test]
    fn in_the_end_game_the_workers_fastest_on_their_cheapest_band_choose_first() {
        let profile: Vec<f64> = (0..128)
            .map(|i| {
                if (0.4..0.6).contains(&(f64::from(i) / 128.0)) {
                    100.0
                } else {
                    1.0
                }
            })
            .collect();
        let slowness = |e: &f64| 10f64.powf(*e);
        let farm: Vec<f64> = std::iter::once(1.0)
            .chain([2.5524694067776723, 2.465605625670359].iter().map(slowness))
            .collect();
        let extra = [
            0.694667081850773,
            1.6224607264299291,
            0.27489224360821085,
            0.8702973934280824,
            2.5180090154403727,
            1.0211187431885467,
            2.864394006753741,
            1.3217967021310204,
            0.8899746085106948,
            2.59218173324204,
            0.47632618026332607,
            0.4070134380830961,
            2.4119275799075375,
            2.1802525645860866,
            2.8496583883711217,
            2.636105655124698,
            1.8823577204145785,
            1.478019956236483,
            1.859609549117659,
            2.1964850025122047,
            1.911134063526163,
            2.9561078955450113,
            0.9864795007788087,
            0.06714293930378123,
            1.8311781183739317,
            1.3762591440012948,
            2.936670357460428,
            2.5534122803096624,
            1.4795127149880187,
            2.2576239030444696,
            2.5210478480238114,
            1.8083346768987212,
            1.9887954119967368,
            1.7800732329334898,
            0.8209487482382669,
            0.2843445621595604,
            1.4592456796937354,
            0.3872305797474782,
            1.349128822394569,
            0.2596682480504118,
            1.4594860636563487,
            2.720208530527438,
            2.5863377774651997,
            2.5377121520678454,
            1.7871503929355828,
            0.2601005922818256,
            0.26781608516292077,
            2.432961187450478,
            2.5930779546579164,
            1.6751316695508405,
            0.6591617043846392,
            1.5841683424151325,
            2.079507184920038,
            2.617744016262894,
            1.3363275190672803,
            2.019043251483491,
            2.4740363774801333,
        ];
        let without = bands_on(farm.clone(), &profile, 833);
        let larger: Vec<f64> = farm.into_iter().chain(extra.iter().map(slowness)).collect();
        let with = bands_on(larger, &profile, 833);
        within_allowance(with, without, "with 57 more workers, without");
    }

    /// Thirty-three workers alike, on bands whose first quarter and last quarter cost about
    /// 250 times the middle: the one whose first band came from the middle looks 250 times
    /// faster than the others until it reaches the dear bands itself. Its first band far
    /// over its pace must let the others take tasks again at once, not at the next
    /// heartbeat (500 ms here, most of the batch).
    #[test]
    fn workers_alike_measured_on_unequal_first_tasks_are_not_left_waiting() {
        let profile = stretched(&[2.39, 0.0, 0.0, 2.49], 128, false);
        let row = run_of(vec![1.0; 33], bands(&profile, 1));
        assert!(
            row.makespan_s < 2.0 * row.lpt_s,
            "{:.3} s against {:.3} s by LPT",
            row.makespan_s,
            row.lpt_s
        );
    }

    #[test]
    fn lpt_on_equal_workers_is_the_classic_schedule() {
        // 3, 3, 2, 2, 2 on two workers: longest first gives 3+2+2 / 3+2 = 7.
        assert!((lpt_s(&[2, 3, 2, 3, 2], &[1.0, 1.0]) - 0.007).abs() < 1e-9);
    }
}
