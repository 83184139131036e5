//! The worker's rules as a state machine: greet the sink before asking for tasks, stop
//! taking tasks while the sink is silent, pass tasks to the executor, and send each
//! finished task's result to the sink before its credit goes back to the ventilator.
//!
//! No socket, clock, file or thread in here (CI greps for them). The worker's pump feeds
//! [`Flow::handle`] what its two peers and its executor said, send failures and ticks, and
//! carries out the [`FlowCommand`]s in order. A result the sink's queue cannot take now is
//! kept, in order, and its credit with it: nothing is dropped and nothing blocks the loop.

use crate::batch::{Job, Task};
use crate::heartbeat::Heartbeat;
use crate::protocol::{
    Done, Message, Status, TaskResult, WorkerInfo, MAX_ITEMS_PER_MESSAGE, RESULTS_BYTES_PER_MESSAGE,
};
use crate::text::{printable, RateLimited, TASK_TARGET};
use crate::work::Outcome;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Heartbeat timeouts without a word from the sink after which a worker stops taking
/// tasks: generous, since a sink working through a backlog answers late.
const SINK_LOSS_TIMEOUTS: u32 = 2;
/// How soon a delivery the sink's queue refused is tried again.
const RETRY: Duration = Duration::from_millis(5);

/// A result's bytes on the wire besides its output, name and error: its fixed fields (71
/// bytes) and the lengths' prefixes, rounded up.
const RESULT_FIXED_BYTES: usize = 80;

/// Tasks from one message of the ventilator, as the executor receives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub batch: u64,
    pub job: Job,
    pub tasks: Vec<Task>,
    /// A data task's input name and bytes (a [`Message::Data`] carries one task).
    pub input: Option<(String, Vec<u8>)>,
    /// The user kernel's source for `job.source`, when the ventilator sent it.
    pub source: Option<std::sync::Arc<str>>,
    /// Run its chunks in pieces, where their outputs allow (the ventilator may ask for
    /// their tails).
    pub in_pieces: bool,
}

/// User kernel sources a worker keeps (by hash), the most recent ones.
const KEPT_SOURCES: usize = 8;

/// An outcome to forward, with its batch and when it was known (worker's wall clock).
#[derive(Debug, Clone)]
pub struct Finished {
    pub batch: u64,
    pub outcome: Outcome,
    pub finished_unix_ms: u64,
}

#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub info: WorkerInfo,
    pub heartbeat: Heartbeat,
    /// The peers' endpoints, for messages only.
    pub ventilator: String,
    pub sink: String,
    /// Say at default verbosity when ready.
    pub announce: bool,
    /// Leave after the first batch completes.
    pub exit_when_done: bool,
    /// With `exit_when_done`: how long to wait for a batch before leaving without one (it
    /// may have ended before this worker arrived); `None` waits for ever.
    pub batch_wait: Option<Duration>,
    /// Largest output a result may carry (`--max-payload`): a larger one could not reach
    /// the sink, so its task fails here, saying why.
    pub max_payload: u64,
}

/// What happened, as the pump saw it.
#[derive(Debug, Clone)]
pub enum FlowEvent {
    /// A message from the ventilator, or why a frame was not one.
    FromVentilator(Result<Message, String>),
    /// A message from the sink, or why a frame was not one.
    FromSink(Result<Message, String>),
    /// Tasks the executor finished.
    Finished(Vec<Finished>),
    /// The executor can run nothing more (a panic, a lost device).
    ExecutorFailed(String),
    /// The backend cannot run this batch's kernel: the ventilator is told, once.
    Declined { batch: u64, reason: String },
    /// The backend runs on something else now (`auto` for a data batch): greetings and
    /// results say so from here on.
    Running {
        backend: String,
        adapter: String,
        fill: u32,
    },
    /// A delivery's results found the sink's queue full: neither was sent.
    Undelivered(Delivery),
    /// The pump has read everything waiting, or a deadline passed.
    Tick,
}

/// Results for the sink and the credit that may follow them.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// None when every task of it failed (nothing for the sink).
    pub results: Option<Message>,
    pub done: Message,
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowCommand {
    ToVentilator(Message),
    /// To the sink, never waiting; dropped if its queue is full (greetings only).
    ToSink(Message),
    /// Results to the sink, then the credit to the ventilator; if the sink's queue is full,
    /// neither is sent and the delivery comes back as [`FlowEvent::Undelivered`].
    Deliver(Delivery),
    /// Tasks for the executor.
    Run(Chunk),
    /// The batch is over: tasks of it still queued or running are abandoned (a divisible
    /// job can end with chunks out; a finished batch has none).
    Abandon(u64),
    /// Cut chunk `id` of `batch` at the end of the piece in hand (or before its first
    /// piece, if queued) and report what is done: the ventilator hands out the rest.
    Yield {
        batch: u64,
        id: u32,
    },
    /// The batch is complete and the worker was asked to leave.
    Leave,
    /// The worker cannot go on.
    Stop(FlowStop),
    /// Something observed, for `--events` (ready, waiting for a peer, a batch over).
    Note(crate::events::Note),
}

/// Why a worker stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowStop {
    #[error("the ventilator at {ventilator} refused this worker: {reason}")]
    RefusedByVentilator { ventilator: String, reason: String },
    #[error("the sink at {sink} refused this worker: {reason}")]
    RefusedBySink { sink: String, reason: String },
    #[error("{0}; this worker leaves so its tasks go to other workers")]
    ExecutorFailed(String),
    /// Asked to leave after one batch, it heard of none in time.
    #[error(
        "no batch reached this worker within {waited:?} (--wait-timeout): its batch may have \
         ended before it arrived, or no ventilator runs at {ventilator}; leaving, as \
         --exit-when-done asks"
    )]
    NoBatch {
        ventilator: String,
        waited: Duration,
    },
}

/// Where a worker stands with its sink, which decides whether it may ask for tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkLink {
    /// Greeting the sink; no tasks asked for yet.
    Joining,
    /// The sink answers: greet the ventilator and take tasks.
    Welcomed,
    /// The sink stopped answering: the ventilator was told goodbye until it is back.
    Lost,
}

/// A worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub tasks: u64,
    pub batches: u64,
    pub rejected: u64,
}

/// The flow state of one worker.
pub struct Flow {
    config: FlowConfig,
    link: SinkLink,
    started: Instant,
    next_beat: Instant,
    last_from_sink: Instant,
    /// The codecs the sink said it takes outputs in (its welcome).
    sink_codecs: u8,
    said_sink_wait: bool,
    last_from_ventilator: Instant,
    hello_since: Option<Instant>,
    heard_ventilator: bool,
    warned_silence: bool,
    warned_unverifiable: bool,
    /// User kernel sources by hash, oldest first.
    sources: VecDeque<(u64, std::sync::Arc<str>)>,
    /// The batch the ventilator last said is running (its heartbeats name it).
    current_batch: Option<u64>,
    /// Batches this worker declined, with why (said again to a ventilator that sends
    /// their tasks anyway, such as one restarted since, and with every greeting while the
    /// batch runs).
    declined: Vec<(u64, String)>,
    /// Deliveries waiting for room in the sink's queue, oldest first.
    outbox: VecDeque<Delivery>,
    /// Deliveries put back since the last retry: the next one goes in behind them, so the
    /// outbox keeps the order they were first sent in.
    put_back: usize,
    retry_at: Option<Instant>,
    counters: FlowCounters,
    /// Input bytes of the data tasks in hand, by (batch, task): what their results say
    /// this worker received.
    inputs: HashMap<(u64, u32), u32>,
    reject_log: RateLimited,
    /// The ventilator named a batch (a task, a heartbeat, an end).
    seen_batch: bool,
    over: bool,
}

impl Flow {
    pub fn new(config: FlowConfig, now: Instant) -> Flow {
        Flow {
            config,
            link: SinkLink::Joining,
            started: now,
            next_beat: now,
            last_from_sink: now,
            sink_codecs: 0,
            said_sink_wait: false,
            last_from_ventilator: now,
            hello_since: None,
            heard_ventilator: false,
            warned_silence: false,
            warned_unverifiable: false,
            sources: VecDeque::new(),
            declined: Vec::new(),
            current_batch: None,
            outbox: VecDeque::new(),
            put_back: 0,
            retry_at: None,
            counters: FlowCounters::default(),
            inputs: HashMap::new(),
            reject_log: RateLimited::new(5, Duration::from_secs(1)),
            seen_batch: false,
            over: false,
        }
    }

    pub fn counters(&self) -> FlowCounters {
        self.counters
    }

    pub fn link(&self) -> SinkLink {
        self.link
    }

    /// Deliveries waiting for the sink's queue.
    pub fn waiting_deliveries(&self) -> usize {
        self.outbox.len()
    }

    /// When the next tick is due without any message.
    pub fn next_deadline(&self) -> Instant {
        match self.retry_at {
            Some(at) => at.min(self.next_beat),
            None => self.next_beat,
        }
    }

    /// The goodbye to send when the worker leaves for any reason.
    pub fn goodbye() -> Message {
        Message::Bye
    }

    pub fn handle(&mut self, now: Instant, event: FlowEvent, out: &mut Vec<FlowCommand>) {
        if self.over {
            return;
        }
        match event {
            FlowEvent::FromVentilator(message) => self.ventilator_message(now, message, out),
            FlowEvent::FromSink(message) => self.sink_message(now, message, out),
            FlowEvent::Finished(finished) => self.finished(finished, out),
            FlowEvent::ExecutorFailed(reason) => self.stop(FlowStop::ExecutorFailed(reason), out),
            FlowEvent::Running {
                backend,
                adapter,
                fill,
            } => {
                self.config.info.backend = backend;
                self.config.info.adapter = adapter;
                self.config.info.fill = fill;
            }
            FlowEvent::Declined { batch, reason } => {
                self.current_batch = Some(batch);
                if !self.declined.iter().any(|(b, _)| *b == batch) {
                    log::warn!("declining batch {batch:016x}: {reason}");
                    if self.declined.len() == KEPT_SOURCES {
                        self.declined.remove(0);
                    }
                    self.declined.push((batch, reason.clone()));
                    out.push(FlowCommand::ToVentilator(Message::Decline {
                        batch,
                        reason,
                    }));
                }
            }
            FlowEvent::Undelivered(delivery) => {
                // Back in front of anything finished after it, behind those put back before.
                let at = self.put_back.min(self.outbox.len());
                self.outbox.insert(at, delivery);
                self.put_back += 1;
                self.retry_at = Some(now + RETRY);
            }
            FlowEvent::Tick => self.tick(now, out),
        }
    }

    fn stop(&mut self, why: FlowStop, out: &mut Vec<FlowCommand>) {
        self.over = true;
        out.push(FlowCommand::Stop(why));
    }

    fn hello(&self) -> Message {
        Message::Hello(self.config.info.clone())
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<FlowCommand>) {
        if let Some(wait) = self
            .config
            .batch_wait
            .filter(|_| self.config.exit_when_done)
        {
            if !self.seen_batch && now.saturating_duration_since(self.started) >= wait {
                let ventilator = self.config.ventilator.clone();
                return self.stop(
                    FlowStop::NoBatch {
                        ventilator,
                        waited: wait,
                    },
                    out,
                );
            }
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
            self.put_back = 0;
            // Everything waiting goes again, in order; the pump hands back, in order, the
            // first the sink's queue refuses and every one after it.
            let waiting: Vec<Delivery> = self.outbox.drain(..).collect();
            out.extend(waiting.into_iter().map(FlowCommand::Deliver));
        }
        if now < self.next_beat {
            return;
        }
        let interval = self.config.heartbeat.interval;
        let timeout = self.config.heartbeat.timeout();
        self.next_beat = now + interval;
        // The greetings double as heartbeats, so a restarted peer learns of us.
        out.push(FlowCommand::ToSink(Message::Join(self.config.info.clone())));
        match self.link {
            SinkLink::Welcomed => {
                out.push(FlowCommand::ToVentilator(self.hello()));
                // A decline is said again with every greeting while its batch runs: one lost
                // on a full queue would leave the tasks this worker dropped assigned to it.
                if let Some((batch, reason)) = self
                    .declined
                    .iter()
                    .find(|(b, _)| Some(*b) == self.current_batch)
                {
                    out.push(FlowCommand::ToVentilator(Message::Decline {
                        batch: *batch,
                        reason: reason.clone(),
                    }));
                }
                let silent = now.saturating_duration_since(self.last_from_sink);
                if silent > timeout * SINK_LOSS_TIMEOUTS {
                    log::warn!(
                        "the sink at {} has not answered for {:.1} s; not taking tasks until it does \
                         (the ventilator hands this worker's tasks to others)",
                        self.config.sink,
                        silent.as_secs_f64()
                    );
                    out.push(FlowCommand::ToVentilator(Message::Bye));
                    self.link = SinkLink::Lost;
                }
            }
            SinkLink::Joining | SinkLink::Lost => {
                if !self.said_sink_wait && now.saturating_duration_since(self.started) > timeout {
                    log::warn!(
                        "waiting for the sink at {} to answer (is `conquer sink` running there? \
                         check --sink); no tasks are taken until it does",
                        self.config.sink
                    );
                    self.said_sink_wait = true;
                    out.push(FlowCommand::Note(crate::events::Note::Waiting {
                        peer: "sink".into(),
                        endpoint: self.config.sink.clone(),
                    }));
                }
            }
        }
        if let Some(since) = self.hello_since {
            let silent = now
                .saturating_duration_since(self.last_from_ventilator)
                .min(now.saturating_duration_since(since));
            if silent > timeout && !self.warned_silence {
                log::info!(
                    "waiting for the ventilator at {} (no word for {:.1} s; still trying)",
                    self.config.ventilator,
                    silent.as_secs_f64()
                );
                self.warned_silence = true;
                out.push(FlowCommand::Note(crate::events::Note::Waiting {
                    peer: "ventilator".into(),
                    endpoint: self.config.ventilator.clone(),
                }));
            }
        }
    }

    fn reject(&mut self, now: Instant, why: String) {
        self.counters.rejected += 1;
        self.reject_log
            .warn_at(now, || format!("dropped a message from a peer: {why}"));
    }

    fn sink_message(
        &mut self,
        now: Instant,
        message: Result<Message, String>,
        out: &mut Vec<FlowCommand>,
    ) {
        match message {
            Ok(Message::Welcome { codecs }) => {
                self.last_from_sink = now;
                // Outputs go in a codec both ends speak (raw when none).
                self.sink_codecs = codecs;
                if self.link == SinkLink::Welcomed {
                    return;
                }
                if self.link == SinkLink::Lost {
                    log::warn!(
                        "the sink at {} answers again; taking tasks",
                        self.config.sink
                    );
                } else {
                    log::debug!("the sink at {} welcomed this worker", self.config.sink);
                }
                self.link = SinkLink::Welcomed;
                self.said_sink_wait = false;
                self.hello_since.get_or_insert(now);
                out.push(FlowCommand::ToVentilator(self.hello()));
            }
            Ok(Message::Refused { reason, .. }) => {
                let sink = self.config.sink.clone();
                self.stop(FlowStop::RefusedBySink { sink, reason }, out)
            }
            Ok(other) => {
                let why = format!("unexpected {} message from the sink", other.kind_name());
                self.reject(now, why)
            }
            Err(why) => self.reject(now, format!("from the sink: {why}")),
        }
    }

    fn ventilator_message(
        &mut self,
        now: Instant,
        message: Result<Message, String>,
        out: &mut Vec<FlowCommand>,
    ) {
        self.last_from_ventilator = now;
        if self.warned_silence {
            log::info!("the ventilator at {} is back", self.config.ventilator);
            self.warned_silence = false;
        }
        if !self.heard_ventilator && message.is_ok() {
            self.heard_ventilator = true;
            let info = &self.config.info;
            let line = format!(
                "worker {} ready ({}{}): connected to the ventilator at {} and the sink at {}",
                printable(&info.name),
                info.backend,
                if info.adapter.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", info.adapter)
                },
                self.config.ventilator,
                self.config.sink
            );
            if self.config.announce {
                log::info!("{line}");
            } else {
                log::debug!("{line}");
            }
            out.push(FlowCommand::Note(crate::events::Note::Ready {
                backend: Some(info.backend.clone()),
            }));
        }
        if matches!(
            &message,
            Ok(Message::Tasks { .. }
                | Message::Data { .. }
                | Message::Kernel { .. }
                | Message::End { .. })
                | Ok(Message::Heartbeat { batch: 1.. })
        ) {
            self.seen_batch = true;
        }
        let declined = match &message {
            Ok(Message::Tasks { batch, .. } | Message::Data { batch, .. }) => {
                self.declined.iter().find(|(b, _)| b == batch).cloned()
            }
            _ => None,
        };
        if let Some((batch, reason)) = declined {
            out.push(FlowCommand::ToVentilator(Message::Decline {
                batch,
                reason,
            }));
            return;
        }
        match message {
            Ok(Message::Tasks {
                batch,
                job,
                tasks,
                in_pieces,
            }) => {
                // A data batch: sleep declines it, and `auto` runs it on a compute backend.
                if job.verify_percent > 0
                    && self.config.info.backend == "sleep"
                    && !crate::kernels::is_data(&job)
                    && !self.warned_unverifiable
                {
                    log::warn!(
                        "batch {batch:016x} asks for verification, but this worker's sleep backend \
                         computes nothing to check; its results count as unchecked"
                    );
                    self.warned_unverifiable = true;
                }
                let source = self.source(&job);
                out.push(FlowCommand::Run(Chunk {
                    batch,
                    job,
                    tasks,
                    input: None,
                    source,
                    in_pieces,
                }));
            }
            Ok(Message::Data {
                batch,
                job,
                task,
                name,
                input,
            }) => {
                let source = self.source(&job);
                let bytes = u32::try_from(input.len()).unwrap_or(u32::MAX);
                self.inputs.insert((batch, task.id), bytes);
                out.push(FlowCommand::Run(Chunk {
                    batch,
                    job,
                    tasks: vec![task],
                    input: Some((name, input)),
                    source,
                    in_pieces: false,
                }));
            }
            Ok(Message::Kernel { source, .. }) => {
                let hash = crate::kernels::fnv1a(source.as_bytes());
                if !self.sources.iter().any(|(h, _)| *h == hash) {
                    if self.sources.len() == KEPT_SOURCES {
                        self.sources.pop_front();
                    }
                    self.sources.push_back((hash, source.into()));
                }
            }
            Ok(Message::Heartbeat { batch }) => {
                self.current_batch = (batch != 0).then_some(batch);
                if batch != 0 {
                    // Inputs of a batch left without its end heard (a ventilator restarted
                    // on another) are not kept for results that will not come.
                    self.inputs.retain(|(b, _), _| *b == batch);
                }
            }
            Ok(Message::Yield { batch, id, .. }) => out.push(FlowCommand::Yield { batch, id }),
            Ok(Message::End { batch, shutdown }) => {
                self.current_batch = None;
                self.counters.batches += 1;
                self.inputs.retain(|(b, _), _| *b != batch);
                out.push(FlowCommand::Abandon(batch));
                out.push(FlowCommand::Note(crate::events::Note::BatchEnd {
                    batch: crate::events::batch_name(batch),
                }));
                if shutdown || self.config.exit_when_done {
                    log::debug!("batch {batch:016x} complete; leaving as asked");
                    self.over = true;
                    out.push(FlowCommand::Leave);
                } else {
                    log::info!("batch {batch:016x} complete; waiting for the next");
                }
            }
            Ok(Message::Refused { reason, .. }) => {
                let ventilator = self.config.ventilator.clone();
                self.stop(FlowStop::RefusedByVentilator { ventilator, reason }, out)
            }
            Ok(other) => {
                let why = format!("unexpected {} message", other.kind_name());
                self.reject(now, why)
            }
            Err(why) => self.reject(now, why),
        }
    }

    /// The user kernel source a job names, if this worker was sent it.
    fn source(&self, job: &Job) -> Option<std::sync::Arc<str>> {
        (job.source != 0)
            .then(|| {
                self.sources
                    .iter()
                    .find(|(h, _)| *h == job.source)
                    .map(|(_, s)| s.clone())
            })
            .flatten()
    }

    /// Finished tasks: results to the sink first, then credit to the ventilator, per batch
    /// and in messages of bounded size (count, and output bytes).
    fn finished(&mut self, finished: Vec<Finished>, out: &mut Vec<FlowCommand>) {
        let mut by_batch: BTreeMap<u64, Vec<Finished>> = BTreeMap::new();
        for f in finished {
            by_batch.entry(f.batch).or_default().push(f);
        }
        for (batch, outcomes) in by_batch {
            // Messages of at most MAX_ITEMS_PER_MESSAGE outcomes and, past the first output,
            // RESULTS_BYTES_PER_MESSAGE output bytes.
            let mut outcomes = outcomes;
            for f in &mut outcomes {
                let o = &mut f.outcome;
                if o.output.len() as u64 > self.config.max_payload {
                    log::error!(
                        "task {}: its output of {} bytes is over --max-payload {}: failed (give \
                         every role the same, large enough --max-payload)",
                        o.task.id,
                        o.output.len(),
                        self.config.max_payload
                    );
                    o.status = Status::Failed;
                    o.error = format!(
                        "its output of {} bytes is over the worker's --max-payload {}",
                        o.output.len(),
                        self.config.max_payload
                    );
                    o.output = Vec::new();
                }
            }
            // Each message stays within one payload and its envelope: outputs and names
            // counted, with room for each result's fixed fields.
            let budget = RESULTS_BYTES_PER_MESSAGE.min(self.config.max_payload as usize);
            let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
            let (mut start, mut bytes) = (0, 0);
            for (i, f) in outcomes.iter().enumerate() {
                let size = f.outcome.output.len()
                    + f.outcome.name.len()
                    + f.outcome.error.len()
                    + RESULT_FIXED_BYTES;
                if i > start && (i - start == MAX_ITEMS_PER_MESSAGE || bytes + size > budget) {
                    groups.push(start..i);
                    (start, bytes) = (i, 0);
                }
                bytes += size;
            }
            if start < outcomes.len() {
                groups.push(start..outcomes.len());
            }
            for range in groups {
                let chunk = &mut outcomes[range];
                // Failed ones too: the sink keeps why, for a task it is told to give up on.
                let results: Vec<TaskResult> = chunk
                    .iter_mut()
                    .map(|f| {
                        let o = &mut f.outcome;
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
                            name: std::mem::take(&mut o.name),
                            // Moved, not copied: an output may be many megabytes.
                            output: std::mem::take(&mut o.output),
                            differing: o.differing,
                            first: o.task.first,
                            items: o.task.items,
                            error: std::mem::take(&mut o.error),
                            dispatches: o.dispatches,
                            input_bytes: self.inputs.remove(&(batch, o.task.id)).unwrap_or(0),
                        }
                    })
                    .collect();
                for r in &results {
                    log::trace!(
                        target: TASK_TARGET,
                        "task {} of batch {batch:016x}: {} in {} µs",
                        r.id,
                        r.status.as_str(),
                        r.wall_us
                    );
                }
                self.counters.tasks += results
                    .iter()
                    .filter(|r| r.status != Status::Failed)
                    .count() as u64;
                // The outputs moved into the results: their sizes from there.
                let done: Vec<Done> = chunk
                    .iter()
                    .zip(&results)
                    .map(|(f, r)| Done {
                        id: f.outcome.task.id,
                        status: f.outcome.status,
                        wall_us: f.outcome.wall_us,
                        kernel_us: f.outcome.kernel_us,
                        items: f.outcome.task.items,
                        dispatches: f.outcome.dispatches,
                        output_bytes: u32::try_from(r.output.len()).unwrap_or(u32::MAX),
                    })
                    .collect();
                let delivery = Delivery {
                    results: (!results.is_empty()).then(|| Message::Results {
                        batch,
                        worker: WorkerInfo {
                            codecs: self.config.info.codecs & self.sink_codecs,
                            ..self.config.info.clone()
                        },
                        results,
                    }),
                    done: Message::Done { batch, done },
                };
                if self.outbox.is_empty() {
                    out.push(FlowCommand::Deliver(delivery));
                } else {
                    // Behind the deliveries already waiting, in order.
                    self.outbox.push_back(delivery);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
