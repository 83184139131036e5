//! The sink: collects results, counts each task once, and reports the batch.
//!
//! Socket: `results`, a ROUTER bound on `tcp://*:5558`. Workers' DEALERs send results here;
//! the ventilator's DEALER announces the batch here (the first announcement starts the
//! clock; repeats are its heartbeat) and hears back which task ids the sink holds, so it can
//! hand lost tasks to other workers. The sink keeps one bit per task; a second result for a
//! held task is a duplicate, dropped and counted. With `--results` every result is written
//! and synced to disk before the ventilator hears it is held, so `--resume` after a crash
//! loses nothing and counts nothing twice. The sink never talks to workers.

use crate::batch::ideal_ms;
use crate::logging::RateLimited;
use crate::protocol::{Message, Status, TaskResult, WorkerInfo, MAX_ITEMS_PER_MESSAGE};
use crate::report::{Report, ResultsFile, ResultsFormat, WorkerReport};
use crate::shutdown::Shutdown;
use crate::sockets;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
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
            final_stats_wait: Duration::from_secs(1),
            progress: false,
            timeline: None,
        }
    }
}

/// A sink with its socket bound.
pub struct Sink {
    config: SinkConfig,
    socket: zmq::Socket,
    endpoint: String,
}

struct BatchState {
    id: u64,
    task_count: usize,
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

use crate::report::RecoveredResults as Recovered;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything the sink counts while it runs.
struct Collector {
    batch: Option<BatchState>,
    recovered: Option<Recovered>,
    file: Option<ResultsFile>,
    workers: BTreeMap<String, Tally>,
    duplicates: u64,
    rejected: u64,
    mismatches: u64,
    /// Measured task times: the basis of the ideal when tasks are computed, not slept.
    measured_total_us: u64,
    measured_longest_us: u32,
    /// The ventilator's counters: (redispatched, rejected), and whether they are final.
    ventilator_counts: (u64, u64),
    final_counts: bool,
    reject_log: RateLimited,
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

/// Most results held back while the sink waits to learn its batch.
const MAX_EARLY_RESULTS: usize = 1 << 20;

impl Sink {
    pub fn bind(ctx: &zmq::Context, config: SinkConfig) -> anyhow::Result<Sink> {
        if config.resume && config.results.is_none() {
            bail!("--resume needs --results FILE: the file is what the sink resumes from");
        }
        let (socket, endpoint) =
            sockets::bind(ctx, zmq::ROUTER, "results", &config.bind, "--bind")?;
        socket.set_router_mandatory(true)?;
        // A reconnecting worker takes its name over at once (see the ventilator).
        socket.set_router_handover(true)?;
        Ok(Sink {
            config,
            socket,
            endpoint,
        })
    }

    /// The endpoint workers and the ventilator connect to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Collects one batch and returns its report.
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<Report> {
        let mut c = Collector {
            batch: None,
            recovered: None,
            file: None,
            workers: BTreeMap::new(),
            duplicates: 0,
            rejected: 0,
            mismatches: 0,
            measured_total_us: 0,
            measured_longest_us: 0,
            ventilator_counts: (0, 0),
            final_counts: false,
            reject_log: RateLimited::new(5, Duration::from_secs(1)),
            newly_held: Vec::new(),
            early: Vec::new(),
            early_count: 0,
            timeline: self.config.timeline.clone(),
            progress: None,
            show_progress: self.config.progress,
        };
        if let Some((path, format)) = &self.config.results {
            if self.config.resume && path.exists() {
                let (file, recovered) = ResultsFile::resume(path, *format)?;
                match recovered {
                    Some(r) => {
                        log::warn!(
                            "resuming batch {:016x} from {}: {} results already held",
                            r.batch,
                            path.display(),
                            r.records.len()
                        );
                        c.recovered = Some(r);
                    }
                    None => log::warn!("--resume: {} holds no results yet", path.display()),
                }
                c.file = Some(file);
            } else {
                if self.config.resume {
                    log::warn!(
                        "--resume: {} does not exist yet; starting afresh",
                        path.display()
                    );
                }
                c.file = Some(ResultsFile::create(path, *format)?);
            }
        }
        log::info!("waiting for a batch on {}", self.endpoint);

        loop {
            if shutdown.is_requested() {
                bail!("interrupted");
            }
            if let Some(finished) = c.batch.as_ref().and_then(|b| b.finished) {
                if c.final_counts || finished.elapsed() >= self.config.final_stats_wait {
                    if !c.final_counts {
                        log::warn!("the ventilator did not send its final counters; reporting the last ones it sent");
                    }
                    break;
                }
            }
            let mut items = [self.socket.as_poll_item(zmq::POLLIN)];
            zmq::poll(&mut items, 100).context("polling the results socket")?;
            if !items[0].is_readable() {
                continue;
            }
            loop {
                let frames = match self.socket.recv_multipart(zmq::DONTWAIT) {
                    Ok(frames) => frames,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(e).context("receiving on the results socket"),
                };
                let [peer, payload] = match <[Vec<u8>; 2]>::try_from(frames) {
                    Ok(pair) => pair,
                    Err(frames) => {
                        let peer = frames.first().cloned().unwrap_or_default();
                        c.reject(
                            &peer,
                            format!("{} frames, expected 1", frames.len().saturating_sub(1)),
                        );
                        continue;
                    }
                };
                match Message::decode(&payload) {
                    Ok(message) => c.handle(&self.socket, peer, message)?,
                    Err(e) => c.reject(&peer, e.to_string()),
                }
            }
            c.acknowledge(&self.socket)?;
        }
        c.report()
    }
}

impl Collector {
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
            Message::Batch {
                batch: id,
                session,
                task_count,
                expected_ms,
                longest_ms,
                ..
            } => {
                match &mut self.batch {
                    None => self.adopt(
                        socket,
                        peer,
                        id,
                        session,
                        task_count,
                        expected_ms,
                        longest_ms,
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
                        }
                    }
                    Some(b) => {
                        let current = b.id;
                        self.reject(
                        &peer,
                        format!("batch {id:016x} announced while batch {current:016x} is in progress"),
                    );
                    }
                }
            }
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

    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        socket: &zmq::Socket,
        peer: Vec<u8>,
        id: u64,
        session: u64,
        task_count: u32,
        expected_ms: u64,
        longest_ms: u32,
    ) -> anyhow::Result<()> {
        let task_count = task_count as usize;
        let mut b = BatchState {
            id,
            task_count,
            expected_ms,
            longest_ms,
            held: vec![0; task_count.div_ceil(64)],
            held_count: 0,
            started_unix_ms: unix_ms(),
            started: Instant::now(),
            ventilator: peer.clone(),
            session,
            finished: None,
        };
        if let Some(recovered) = self.recovered.take() {
            if recovered.batch != id {
                bail!(
                    "the results file holds batch {:016x} but the ventilator announces {id:016x}: \
                     resume with the file of this batch, or start without --resume",
                    recovered.batch
                );
            }
            // The clock runs from the batch's original start, downtime included.
            let since = unix_ms().saturating_sub(recovered.started_unix_ms);
            b.started = Instant::now()
                .checked_sub(Duration::from_millis(since))
                .unwrap_or_else(Instant::now);
            b.started_unix_ms = recovered.started_unix_ms;
            for (task, worker, r) in &recovered.records {
                let index = *task as usize;
                if index < task_count && !b.is_held(index) {
                    b.set_held(index);
                    self.tally(worker, "", "", r);
                }
            }
        } else {
            log::info!(
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
        if r.status == Status::Mismatch {
            self.mismatches += 1;
        }
    }

    fn results(
        &mut self,
        peer: &[u8],
        id: u64,
        worker: &WorkerInfo,
        results: &[TaskResult],
    ) -> anyhow::Result<()> {
        if self.batch.is_none() && self.early_count + results.len() <= MAX_EARLY_RESULTS {
            self.early_count += results.len();
            self.early
                .push((peer.to_vec(), id, worker.clone(), results.to_vec()));
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
        let started_unix_ms = b.started_unix_ms;
        for r in &fresh {
            self.tally(&worker.name, &worker.backend, &worker.adapter, r);
            if r.status == Status::Mismatch {
                log::error!(
                    "task {} from {}: result does not match the CPU reference",
                    r.id,
                    worker.name
                );
            }
            if let Some(file) = self.file.as_mut() {
                file.record(id, started_unix_ms, &worker.name, r)?;
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
            log::info!("all {} results held", b.task_count);
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
