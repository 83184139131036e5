//! The sink: collects results, counts each task once, and reports the batch.
//!
//! Socket: `results`, a ROUTER bound on `tcp://*:5558`. Workers' DEALERs send results here;
//! the ventilator's DEALER announces the batch here (the first announcement starts the
//! clock; repeats are its heartbeat) and hears back which task ids the sink holds, so it can
//! hand lost tasks to other workers. The sink keeps one bit per task; a second result for a
//! held task is a duplicate, dropped and counted. With `--results` every result is written
//! and synced to disk before the ventilator hears it is held, so `--resume` after a crash
//! loses nothing and counts nothing twice. Workers greet the sink (`join`) before they
//! ask the ventilator for tasks; the sink welcomes them, or refuses a second live worker
//! with the same name, a worker that mistook it for a ventilator, and a second ventilator
//! while a batch is in progress, each with the reason. It never sends a worker tasks.

use crate::batch::ideal_ms;
use crate::heartbeat::{check_name, Heartbeat};
use crate::logging::RateLimited;
use crate::protocol::{
    Message, RefusalKind, Status, TaskResult, WorkerInfo, MAX_ITEMS_PER_MESSAGE,
};
use crate::report::{
    BatchHeader, RecoveredResults, Report, ResultsFile, ResultsFormat, WorkerReport,
};
use crate::shutdown::{Interrupted, Shutdown};
use crate::sockets;
use anyhow::bail;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Everything a sink needs.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The `results` ROUTER's bind endpoint.
    pub bind: String,
    /// Where to write one record per task, if anywhere.
    pub results: Option<(PathBuf, ResultsFormat)>,
    /// Continue the batch recorded in the results file instead of starting it afresh.
    pub resume: bool,
    /// Replace a results file that already holds records (without it, such a file is
    /// refused rather than wiped).
    pub overwrite: bool,
    /// Liveness of workers' greetings: a worker silent this long gives up its name.
    pub heartbeat: Heartbeat,
    /// How long to wait for the ventilator's last counters once every task is held.
    pub final_stats_wait: Duration,
    /// Show a progress bar (tasks held, rate, ETA) on stderr; for terminals.
    pub progress: bool,
    /// Records when each task is held, for latency benchmarks.
    pub timeline: Option<std::sync::Arc<crate::timeline::Timeline>>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            bind: "tcp://*:5558".into(),
            results: None,
            resume: false,
            overwrite: false,
            heartbeat: Heartbeat::default(),
            final_stats_wait: Duration::from_secs(1),
            progress: false,
            timeline: None,
        }
    }
}

/// A sink with its results file open and its socket bound.
pub struct Sink {
    config: SinkConfig,
    socket: zmq::Socket,
    endpoint: String,
    file: Option<ResultsFile>,
    recovered: Option<RecoveredResults>,
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

/// A batch as the ventilator announces it.
struct Announced {
    id: u64,
    session: u64,
    started_unix_ms: u64,
    task_count: u32,
    expected_ms: u64,
    longest_ms: u32,
    verifies: bool,
}

/// A day in ms: a batch start further back than this is taken for a clock error.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// A worker that greeted this sink: who holds the name, and since when it is silent.
struct Peer {
    routing_id: Vec<u8>,
    session: u64,
    last_seen: Instant,
}

/// Most worker names remembered at once; silent ones are forgotten first.
const MAX_PEERS: usize = 100_000;

struct BatchState {
    id: u64,
    task_count: usize,
    /// Whether the ventilator asked for any verification: checked statuses otherwise
    /// make no sense and are not believed.
    verifies: bool,
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
}

impl BatchState {
    fn header(&self) -> BatchHeader {
        BatchHeader {
            batch: self.id,
            tasks: self.task_count as u32,
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

#[derive(Default)]
struct Tally {
    backend: String,
    adapter: String,
    tasks: u64,
    busy_us: u64,
    kernel_us: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything the sink counts while it runs.
struct Collector {
    batch: Option<BatchState>,
    recovered: Option<RecoveredResults>,
    file: Option<ResultsFile>,
    /// Where results go, for messages that say how to resume.
    results_path: Option<PathBuf>,
    workers: BTreeMap<String, Tally>,
    /// Workers that greeted this sink, by name.
    peers: HashMap<String, Peer>,
    heartbeat: Heartbeat,
    endpoint: String,
    duplicates: u64,
    rejected: u64,
    checked: u64,
    verified: u64,
    mismatches: u64,
    /// Measured task times: the basis of the ideal when tasks are computed, not slept.
    measured_total_us: u64,
    measured_longest_us: u32,
    /// The ventilator's counters: (redispatched, rejected), and whether they are final.
    ventilator_counts: (u64, u64),
    final_counts: bool,
    reject_log: RateLimited,
    refuse_log: RateLimited,
    newly_held: Vec<u32>,
    /// Results that arrived before the batch was announced (workers reconnecting to a
    /// restarted sink flush their queues at once; the ventilator re-announces the batch
    /// within a heartbeat). Replayed on adoption; bounded.
    early: Vec<(Vec<u8>, u64, WorkerInfo, Vec<TaskResult>)>,
    early_count: usize,
    timeline: Option<std::sync::Arc<crate::timeline::Timeline>>,
    progress: Option<indicatif::ProgressBar>,
    show_progress: bool,
}

/// Most results held back while the sink waits to learn its batch (41 bytes each on the
/// wire, about 64 in memory: 64 MiB at most).
const MAX_EARLY_RESULTS: usize = 1 << 20;
/// Most messages held back meanwhile, however few results each carries.
const MAX_EARLY_MESSAGES: usize = 1 << 14;

impl Sink {
    pub fn bind(ctx: &zmq::Context, config: SinkConfig) -> anyhow::Result<Sink> {
        if config.resume && config.results.is_none() {
            bail!("--resume needs --results FILE: the file is what the sink resumes from");
        }
        if config.resume && config.overwrite {
            bail!("--resume and --overwrite contradict each other: continue the results file, or replace it");
        }
        // The results file first: a path that cannot be written fails before anything binds.
        let (file, recovered) = match &config.results {
            None => (None, None),
            Some((path, format)) if config.resume => {
                let (file, recovered) = ResultsFile::resume(path, *format)?;
                match &recovered {
                    Some(r) => log::warn!(
                        "resuming batch {:016x} from {}: {} results already held",
                        r.header.batch,
                        path.display(),
                        r.records.len()
                    ),
                    None => log::warn!(
                        "--resume: {} holds no results yet; starting afresh",
                        path.display()
                    ),
                }
                (Some(file), recovered)
            }
            Some((path, format)) => (
                Some(ResultsFile::create(path, *format, config.overwrite)?),
                None,
            ),
        };
        let (socket, endpoint) =
            sockets::bind(ctx, zmq::ROUTER, "results", &config.bind, "--bind")?;
        socket.set_router_mandatory(true)?;
        // A reconnecting worker takes its name over at once (see the ventilator).
        socket.set_router_handover(true)?;
        Ok(Sink {
            config,
            socket,
            endpoint,
            file,
            recovered,
        })
    }

    /// The endpoint workers and the ventilator connect to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Collects one batch and returns its report. A sink stopped before the batch is
    /// complete says how to finish it.
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<Report> {
        let Sink {
            config,
            socket,
            endpoint,
            file,
            recovered,
        } = self;
        let mut c = Collector {
            batch: None,
            recovered,
            file,
            results_path: config.results.as_ref().map(|(path, _)| path.clone()),
            workers: BTreeMap::new(),
            peers: HashMap::new(),
            heartbeat: config.heartbeat,
            endpoint: endpoint.clone(),
            duplicates: 0,
            rejected: 0,
            checked: 0,
            verified: 0,
            mismatches: 0,
            measured_total_us: 0,
            measured_longest_us: 0,
            ventilator_counts: (0, 0),
            final_counts: false,
            reject_log: RateLimited::new(5, Duration::from_secs(1)),
            refuse_log: RateLimited::new(5, Duration::from_secs(1)),
            newly_held: Vec::new(),
            early: Vec::new(),
            early_count: 0,
            timeline: config.timeline.clone(),
            progress: None,
            show_progress: config.progress,
        };
        if c.recovered
            .as_ref()
            .is_some_and(RecoveredResults::is_complete)
        {
            return c.report_recovered();
        }
        log::info!("waiting for a batch on {endpoint}");
        let outcome = c.collect(&socket, &config, shutdown);
        if let Err(e) = &outcome {
            c.say_how_to_resume(e);
        }
        outcome?;
        c.report()
    }
}

impl Collector {
    fn collect(
        &mut self,
        socket: &zmq::Socket,
        config: &SinkConfig,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let mut next_tick = Instant::now() + config.heartbeat.interval;
        loop {
            shutdown.check()?;
            if let Some(finished) = self.batch.as_ref().and_then(|b| b.finished) {
                if self.final_counts || finished.elapsed() >= config.final_stats_wait {
                    if !self.final_counts {
                        log::warn!("the ventilator did not send its final counters; reporting the last ones it sent");
                    }
                    return Ok(());
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + config.heartbeat.interval;
                self.forget_silent_peers();
            }
            let mut items = [socket.as_poll_item(zmq::POLLIN)];
            sockets::poll(&mut items, 100, "the results socket")?;
            if !items[0].is_readable() {
                continue;
            }
            while let Some(frames) = sockets::recv_multipart_nowait(socket, "the results socket")? {
                let [peer, payload] = match <[Vec<u8>; 2]>::try_from(frames) {
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
                    Ok(message) => self.handle(socket, peer, message)?,
                    Err(e) => self.reject(&peer, e.to_string()),
                }
            }
            self.acknowledge(socket)?;
        }
    }

    /// After a stop mid-batch: what was kept, and the command that finishes the batch.
    fn say_how_to_resume(&self, e: &anyhow::Error) {
        let Some(b) = self.batch.as_ref().filter(|b| b.finished.is_none()) else {
            return;
        };
        let why = if Interrupted::is(e) {
            "interrupted"
        } else {
            "stopped by an error"
        };
        match &self.results_path {
            Some(path) => log::warn!(
                "{why} with {} of {} tasks of batch {:016x} held; they are in {}. To finish the \
                 batch, restart the sink with `conquer sink --results {} --resume` on the same --bind",
                b.held_count,
                b.task_count,
                b.id,
                path.display(),
                path.display()
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

    /// A results file that already holds every task: the batch is over; report it.
    fn report_recovered(mut self) -> anyhow::Result<Report> {
        let Some(recovered) = self.recovered.take() else {
            bail!("no batch was collected");
        };
        let header = recovered.header;
        let task_count = header.tasks as usize;
        let last_unix_ms = recovered
            .records
            .iter()
            .map(|r| r.result.finished_unix_ms)
            .max()
            .unwrap_or(header.started_unix_ms);
        let elapsed = Duration::from_millis(last_unix_ms.saturating_sub(header.started_unix_ms));
        let now = Instant::now();
        let mut b = BatchState {
            id: header.batch,
            task_count,
            verifies: true,
            expected_ms: 0,
            longest_ms: 0,
            held: vec![0; task_count.div_ceil(64)],
            held_count: 0,
            started_unix_ms: header.started_unix_ms,
            started: now.checked_sub(elapsed).unwrap_or(now),
            ventilator: Vec::new(),
            session: 0,
            finished: Some(now),
        };
        for r in &recovered.records {
            let index = r.result.id as usize;
            if !b.is_held(index) {
                b.set_held(index);
                b.expected_ms += u64::from(r.result.workload_ms);
                b.longest_ms = b.longest_ms.max(r.result.workload_ms);
                self.tally(&r.worker, &r.backend, "", &r.result);
            }
        }
        log::warn!(
            "the results file already holds all {task_count} tasks of batch {:016x}: the batch is \
             complete; reporting it from the file (no ventilator needed)",
            header.batch
        );
        self.batch = Some(b);
        self.report()
    }

    /// Forgets workers silent for many heartbeats, so the table stays bounded.
    fn forget_silent_peers(&mut self) {
        let forget_after = self.heartbeat.timeout() * 4;
        self.peers
            .retain(|_, p| p.last_seen.elapsed() < forget_after);
    }

    fn refuse(&mut self, socket: &zmq::Socket, peer: &[u8], kind: RefusalKind, reason: String) {
        self.refuse_log.warn(|| {
            format!(
                "refused {}: {reason}",
                crate::logging::printable(&sockets::peer_name(peer))
            )
        });
        send(socket, peer, &Message::Refused { kind, reason });
    }

    /// A worker's greeting: welcome it, unless another live worker holds its name.
    fn join(&mut self, socket: &zmq::Socket, routing_id: Vec<u8>, info: WorkerInfo) {
        if let Err(why) = check_name(&info.name) {
            self.refuse(socket, &routing_id, RefusalKind::BadName, why);
            return;
        }
        let timeout = self.heartbeat.timeout();
        if let Some(existing) = self.peers.get(&info.name) {
            let clash = existing.session != info.session
                && existing.routing_id != routing_id
                && existing.last_seen.elapsed() < timeout
                // A send to a peer whose connection is gone fails at once.
                && socket
                    .send_multipart(
                        [existing.routing_id.as_slice(), &Message::Welcome.encode()],
                        zmq::DONTWAIT,
                    )
                    .is_ok();
            if clash {
                let reason = format!(
                    "another worker named {:?} is already connected to the sink at {}; give each \
                     worker its own --name (the default, host-pid-N, is unique)",
                    info.name, self.endpoint
                );
                self.refuse(socket, &routing_id, RefusalKind::NameTaken, reason);
                return;
            }
        }
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&info.name) {
            self.forget_silent_peers();
        }
        if self.peers.len() < MAX_PEERS || self.peers.contains_key(&info.name) {
            let known = self.peers.insert(
                info.name.clone(),
                Peer {
                    routing_id: routing_id.clone(),
                    session: info.session,
                    last_seen: Instant::now(),
                },
            );
            if known.is_none() {
                log::debug!(
                    "worker {} joined ({})",
                    crate::logging::printable(&info.name),
                    info.backend
                );
            }
        }
        send(socket, &routing_id, &Message::Welcome);
    }

    fn reject(&mut self, peer: &[u8], why: String) {
        self.rejected += 1;
        let peer = sockets::peer_name(peer);
        self.reject_log
            .warn(|| format!("dropped a message from {peer}: {why}"));
    }

    fn handle(
        &mut self,
        socket: &zmq::Socket,
        peer: Vec<u8>,
        message: Message,
    ) -> anyhow::Result<()> {
        match message {
            Message::Join(info) => self.join(socket, peer, info),
            Message::Hello(info) => {
                let reason = format!(
                    "this looks like a worker that connected its ventilator endpoint to a sink: {} is \
                     conquer's sink (results), not a ventilator; pass the ventilator's endpoint \
                     (port 5557 by default) as --ventilator and this one as --sink",
                    self.endpoint
                );
                let _ = info;
                self.refuse(socket, &peer, RefusalKind::WrongPeer, reason);
            }
            Message::Batch {
                batch: id,
                session,
                started_unix_ms,
                task_count,
                expected_ms,
                longest_ms,
                job,
            } => match &mut self.batch {
                None if task_count == 0 || task_count > crate::batch::MAX_TASKS => {
                    self.reject(&peer, format!("batch {id:016x} of {task_count} tasks"));
                }
                None => self.adopt(
                    socket,
                    peer,
                    Announced {
                        id,
                        session,
                        started_unix_ms,
                        task_count,
                        expected_ms,
                        longest_ms,
                        verifies: job.verify_percent > 0,
                    },
                )?,
                Some(b) if b.id == id => {
                    b.ventilator = peer.clone();
                    if b.session != session {
                        // The ventilator restarted: tell it everything we hold.
                        log::warn!(
                            "the ventilator restarted; sending it the {} results held",
                            b.held_count
                        );
                        b.session = session;
                        send_ack(socket, &peer, b);
                    } else if b.finished.is_some() {
                        // Every task is held: say so again, in case the first word was lost.
                        send(socket, &peer, &Message::Complete { batch: id });
                    } else {
                        // The announcement is the ventilator's heartbeat: answer it, so the
                        // ventilator knows this sink is alive even while no results come.
                        send(socket, &peer, &Message::Heartbeat { batch: id });
                    }
                }
                Some(b) => {
                    let reason = format!(
                        "the sink at {} is busy with batch {:016x} ({} of {} tasks held) and cannot \
                         take batch {id:016x}; to run two batches at once, start another sink \
                         (`conquer sink --bind tcp://*:PORT`) and point this ventilator's --sink at it",
                        self.endpoint, b.id, b.held_count, b.task_count
                    );
                    self.refuse(socket, &peer, RefusalKind::Busy, reason);
                }
            },
            Message::Results {
                batch: id,
                worker,
                results,
            } => self.results(&peer, id, &worker, &results)?,
            Message::Stats {
                batch: id,
                redispatched,
                rejected,
                last,
            } if self.batch.as_ref().is_some_and(|b| b.id == id) => {
                self.ventilator_counts = (redispatched, rejected);
                self.final_counts |= last;
            }
            other => self.reject(&peer, format!("unexpected {} message", other.kind_name())),
        }
        Ok(())
    }

    fn adopt(
        &mut self,
        socket: &zmq::Socket,
        peer: Vec<u8>,
        announced: Announced,
    ) -> anyhow::Result<()> {
        let Announced {
            id,
            session,
            started_unix_ms,
            task_count,
            expected_ms,
            longest_ms,
            verifies,
        } = announced;
        let task_count = task_count as usize;
        // The batch's clock runs from its start at the ventilator, so a sink that joins a
        // batch late (restarted without a results file) reports the true elapsed time. A
        // start in the future or over a day ago (clocks apart) is not believed.
        let now_unix_ms = unix_ms();
        let since = now_unix_ms.saturating_sub(started_unix_ms);
        let (started_unix_ms, started) = if started_unix_ms <= now_unix_ms && since < DAY_MS {
            (
                started_unix_ms,
                Instant::now()
                    .checked_sub(Duration::from_millis(since))
                    .unwrap_or_else(Instant::now),
            )
        } else {
            (now_unix_ms, Instant::now())
        };
        let mut b = BatchState {
            id,
            task_count,
            verifies,
            expected_ms,
            longest_ms,
            held: vec![0; task_count.div_ceil(64)],
            held_count: 0,
            started_unix_ms,
            started,
            ventilator: peer.clone(),
            session,
            finished: None,
        };
        if let Some(recovered) = self.recovered.take() {
            let header = recovered.header;
            if header.batch != id || header.tasks as usize != task_count {
                bail!(
                    "the results file holds batch {:016x} ({} tasks) but the ventilator announces \
                     {id:016x} ({task_count} tasks): resume with the file of this batch, or start \
                     afresh with --overwrite (or another --results file)",
                    header.batch,
                    header.tasks
                );
            }
            // The clock runs from the batch's original start, downtime included.
            let since = unix_ms().saturating_sub(header.started_unix_ms);
            b.started = Instant::now()
                .checked_sub(Duration::from_millis(since))
                .unwrap_or_else(Instant::now);
            b.started_unix_ms = header.started_unix_ms;
            for r in &recovered.records {
                let index = r.result.id as usize;
                if index < task_count && !b.is_held(index) {
                    b.set_held(index);
                    self.tally(&r.worker, &r.backend, "", &r.result);
                }
            }
        } else {
            log::debug!(
                "batch {id:016x}: {task_count} tasks, {expected_ms} ms expected; clock started"
            );
        }
        self.batch = Some(b);
        // Results that came before the announcement count now, so the acknowledgement's
        // list is complete and the ventilator hands out nothing the sink already has.
        for (peer, batch, worker, results) in std::mem::take(&mut self.early) {
            self.results(&peer, batch, &worker, &results)?;
        }
        self.early_count = 0;
        if let Some(file) = self.file.as_mut() {
            file.sync()?;
        }
        self.newly_held.clear();
        if let Some(b) = &self.batch {
            send_ack(socket, &peer, b);
        }
        Ok(())
    }

    fn tally(&mut self, worker: &str, backend: &str, adapter: &str, r: &TaskResult) {
        let tally = self.workers.entry(worker.to_owned()).or_default();
        if tally.backend.is_empty() {
            tally.backend = backend.to_owned();
            tally.adapter = adapter.to_owned();
        }
        tally.tasks += 1;
        tally.busy_us += u64::from(r.wall_us);
        tally.kernel_us += u64::from(r.kernel_us);
        self.measured_total_us += u64::from(r.wall_us);
        self.measured_longest_us = self.measured_longest_us.max(r.wall_us);
        if r.status.checked() {
            self.checked += 1;
        }
        match r.status {
            Status::Mismatch => self.mismatches += 1,
            Status::Verified => self.verified += 1,
            Status::Ok | Status::Failed => {}
        }
    }

    fn results(
        &mut self,
        peer: &[u8],
        id: u64,
        worker: &WorkerInfo,
        results: &[TaskResult],
    ) -> anyhow::Result<()> {
        if results.is_empty() {
            self.reject(peer, "a results message with no results".into());
            return Ok(());
        }
        // Names end up in the report and the results file: printable text only.
        if let Err(why) = check_name(&worker.name)
            .and_then(|()| check_text(&worker.backend))
            .and_then(|()| check_text(&worker.adapter))
        {
            self.reject(peer, format!("results from a worker with {why}"));
            return Ok(());
        }
        if self.batch.is_none() {
            // Held back until the batch is announced, within bounds on results and messages;
            // beyond them dropped and counted (the ventilator hands out again what the sink
            // does not hold once the batch is known).
            if self.early_count + results.len() <= MAX_EARLY_RESULTS
                && self.early.len() < MAX_EARLY_MESSAGES
            {
                self.early_count += results.len();
                self.early
                    .push((peer.to_vec(), id, worker.clone(), results.to_vec()));
            } else {
                self.reject(
                    peer,
                    "results before any batch, beyond what is held back".into(),
                );
            }
            return Ok(());
        }
        let Some(b) = self.batch.as_mut().filter(|b| b.id == id) else {
            self.reject(
                peer,
                format!("results for batch {id:016x}, which this sink is not collecting"),
            );
            return Ok(());
        };
        if let Some(bad) = results.iter().find(|r| r.id as usize >= b.task_count) {
            let why = format!(
                "result for task {} of a {}-task batch",
                bad.id, b.task_count
            );
            self.reject(peer, why);
            return Ok(());
        }
        if !b.verifies {
            if let Some(bad) = results.iter().find(|r| r.status.checked()) {
                let why = format!(
                    "result for task {} claims status {} in a batch that asked for no verification",
                    bad.id,
                    bad.status.as_str()
                );
                self.reject(peer, why);
                return Ok(());
            }
        }
        let mut fresh = Vec::new();
        for r in results {
            if r.status == Status::Failed {
                continue; // the ventilator hands it to another worker
            }
            if b.is_held(r.id as usize) {
                self.duplicates += 1;
                continue;
            }
            b.set_held(r.id as usize);
            self.newly_held.push(r.id);
            if let Some(timeline) = &self.timeline {
                timeline.held(r.id);
            }
            fresh.push(*r);
        }
        log::trace!(
            "{} new of {} from worker {}",
            crate::report::plural(fresh.len() as u64, "result"),
            results.len(),
            crate::logging::printable(&worker.name)
        );
        let header = b.header();
        for r in &fresh {
            self.tally(&worker.name, &worker.backend, &worker.adapter, r);
            if r.status == Status::Mismatch {
                log::error!(
                    "task {} from {}: result does not match the CPU reference",
                    r.id,
                    crate::logging::printable(&worker.name)
                );
            }
            if let Some(file) = self.file.as_mut() {
                file.record(&header, &worker.name, &worker.backend, r)?;
            }
        }
        Ok(())
    }

    /// Makes new results durable, then tells the ventilator they are held.
    fn acknowledge(&mut self, socket: &zmq::Socket) -> anyhow::Result<()> {
        let Some(b) = self.batch.as_mut() else {
            return Ok(());
        };
        if !self.newly_held.is_empty() {
            if let Some(file) = self.file.as_mut() {
                file.sync()?;
            }
            if self.show_progress {
                let bar = self
                    .progress
                    .get_or_insert_with(|| progress_bar(b.task_count as u64));
                bar.set_position(b.held_count as u64);
            }
            send_held(socket, &b.ventilator, b.id, &self.newly_held);
            self.newly_held.clear();
        }
        if b.finished.is_none() && b.held_count == b.task_count {
            b.finished = Some(Instant::now());
            if let Some(bar) = self.progress.take() {
                bar.finish_and_clear();
            }
            log::debug!("all {} results held", b.task_count);
            send(socket, &b.ventilator, &Message::Complete { batch: b.id });
        }
        Ok(())
    }

    fn report(self) -> anyhow::Result<Report> {
        let Some(b) = self.batch else {
            bail!("no batch was collected");
        };
        let finished = b.finished.unwrap_or_else(Instant::now);
        let elapsed_ms = finished.duration_since(b.started).as_secs_f64() * 1000.0;
        let workers: Vec<WorkerReport> = self
            .workers
            .into_iter()
            .filter(|(_, t)| t.tasks > 0)
            .map(|(id, t)| WorkerReport {
                id,
                tasks: t.tasks,
                busy_ms: t.busy_us as f64 / 1000.0,
                kernel_ms: t.kernel_us as f64 / 1000.0,
                backend: t.backend,
                adapter: t.adapter,
            })
            .collect();
        let slept = workers.iter().all(|w| w.backend == "sleep");
        let (ideal, ideal_basis) = if slept {
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
        Ok(Report {
            batch: format!("{:016x}", b.id),
            tasks: b.task_count as u64,
            expected_ms: b.expected_ms,
            longest_ms: b.longest_ms,
            elapsed_ms,
            ideal_ms: ideal,
            ideal_basis: ideal_basis.to_owned(),
            efficiency: if elapsed_ms > 0.0 {
                ideal / elapsed_ms
            } else {
                1.0
            },
            tasks_per_s: if elapsed_ms > 0.0 {
                b.task_count as f64 * 1000.0 / elapsed_ms
            } else {
                0.0
            },
            duplicates: self.duplicates,
            redispatched: self.ventilator_counts.0,
            rejected: self.rejected + self.ventilator_counts.1,
            checked: self.checked,
            verified: self.verified,
            mismatches: self.mismatches,
            workers,
        })
    }
}

/// A progress bar on stderr: tasks held of the batch, rate, time left.
fn progress_bar(tasks: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(tasks),
        indicatif::ProgressDrawTarget::stderr_with_hz(8),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn send_ack(socket: &zmq::Socket, peer: &[u8], b: &BatchState) {
    send(
        socket,
        peer,
        &Message::BatchAck {
            batch: b.id,
            held: b.held_count as u32,
        },
    );
    send_held(socket, peer, b.id, &b.held_ids());
}

fn send(socket: &zmq::Socket, peer: &[u8], message: &Message) {
    match socket.send_multipart([peer, message.encode().as_slice()], zmq::DONTWAIT) {
        Ok(()) => {}
        // The ventilator went away; when it is back it announces the batch and hears
        // everything held then, so nothing is lost by dropping this.
        Err(zmq::Error::EHOSTUNREACH) => {
            log::debug!("ventilator gone; {} not sent", message.kind_name())
        }
        Err(e) => log::warn!(
            "cannot send {} to {}: {e}",
            message.kind_name(),
            sockets::peer_name(peer)
        ),
    }
}

fn send_held(socket: &zmq::Socket, peer: &[u8], batch: u64, ids: &[u32]) {
    for chunk in ids.chunks(MAX_ITEMS_PER_MESSAGE) {
        send(
            socket,
            peer,
            &Message::Held {
                batch,
                ids: chunk.to_vec(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bits_are_per_task() {
        let mut b = BatchState {
            id: 1,
            task_count: 130,
            verifies: false,
            expected_ms: 0,
            longest_ms: 0,
            held: vec![0; 3],
            held_count: 0,
            started_unix_ms: 0,
            started: Instant::now(),
            ventilator: vec![],
            session: 0,
            finished: None,
        };
        b.set_held(129);
        b.set_held(0);
        assert!(b.is_held(129) && b.is_held(0) && !b.is_held(64));
        assert_eq!(b.held_count, 2);
        assert_eq!(b.held_ids(), vec![0, 129]);
    }
}
