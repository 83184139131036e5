//! The sink: collects results, counts each task once, and reports the batch.
//!
//! Socket: `results`, a ROUTER bound on `tcp://*:5558`. Workers' DEALERs send results here;
//! the ventilator's DEALER announces the batch here (which starts the clock) and hears back
//! which task ids the sink holds, so it can hand lost tasks to other workers. The sink
//! keeps one bit per task; a second result for a held task is a duplicate, dropped and
//! counted. It never talks to workers and never decides who computes what.

use crate::batch::ideal_ms;
use crate::logging::RateLimited;
use crate::protocol::{Message, Status, WorkerInfo, MAX_ITEMS_PER_MESSAGE};
use crate::report::{Report, ResultsFile, ResultsFormat, WorkerReport};
use crate::shutdown::Shutdown;
use crate::sockets;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Everything a sink needs.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The `results` ROUTER's bind endpoint.
    pub bind: String,
    /// Where to write one record per task, if anywhere.
    pub results: Option<(PathBuf, ResultsFormat)>,
    /// How long to wait for the ventilator's last counters once every task is held.
    pub final_stats_wait: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            bind: "tcp://*:5558".into(),
            results: None,
            final_stats_wait: Duration::from_secs(1),
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
    started: Instant,
    /// The ventilator's routing id: where `held` and `complete` go.
    ventilator: Vec<u8>,
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
}

#[derive(Default)]
struct Tally {
    backend: String,
    adapter: String,
    tasks: u64,
    busy_us: u64,
    kernel_us: u64,
}

impl Sink {
    pub fn bind(ctx: &zmq::Context, config: SinkConfig) -> anyhow::Result<Sink> {
        let (socket, endpoint) =
            sockets::bind(ctx, zmq::ROUTER, "results", &config.bind, "--bind")?;
        socket.set_router_mandatory(true)?;
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
        let mut results_file = match &self.config.results {
            Some((path, format)) => Some(ResultsFile::create(path, *format)?),
            None => None,
        };
        let mut batch: Option<BatchState> = None;
        let mut workers: BTreeMap<String, Tally> = BTreeMap::new();
        let mut duplicates = 0u64;
        let mut rejected = 0u64;
        let mut mismatches = 0u64;
        // Measured task times, the basis of the ideal when tasks are computed rather than
        // slept (their nominal milliseconds then say little about how long they take).
        let mut measured_total_us = 0u64;
        let mut measured_longest_us = 0u32;
        let mut ventilator_counts = (0u64, 0u64); // (redispatched, rejected)
        let mut final_counts = false;
        let mut reject_log = RateLimited::new(5, Duration::from_secs(1));
        let mut newly_held: Vec<u32> = Vec::new();
        log::info!("waiting for a batch on {}", self.endpoint);

        loop {
            if shutdown.is_requested() {
                bail!("interrupted");
            }
            if let Some(b) = &batch {
                if let Some(finished) = b.finished {
                    if final_counts || finished.elapsed() >= self.config.final_stats_wait {
                        if !final_counts {
                            log::warn!("the ventilator did not send its final counters; reporting the last ones it sent");
                        }
                        break;
                    }
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
                let mut reject = |peer: &[u8], why: String| {
                    rejected += 1;
                    let peer = sockets::peer_name(peer);
                    reject_log.warn(|| format!("dropped a message from {peer}: {why}"));
                };
                let [peer, payload] = match <[Vec<u8>; 2]>::try_from(frames) {
                    Ok(pair) => pair,
                    Err(frames) => {
                        let peer = frames.first().cloned().unwrap_or_default();
                        reject(
                            &peer,
                            format!("{} frames, expected 1", frames.len().saturating_sub(1)),
                        );
                        continue;
                    }
                };
                let message = match Message::decode(&payload) {
                    Ok(m) => m,
                    Err(e) => {
                        reject(&peer, e.to_string());
                        continue;
                    }
                };
                match message {
                    Message::Batch {
                        batch: id,
                        task_count,
                        expected_ms,
                        longest_ms,
                        ..
                    } => match &mut batch {
                        None => {
                            log::info!("batch {id:016x}: {task_count} tasks, {expected_ms} ms expected; clock started");
                            let task_count = task_count as usize;
                            batch = Some(BatchState {
                                id,
                                task_count,
                                expected_ms,
                                longest_ms,
                                held: vec![0; task_count.div_ceil(64)],
                                held_count: 0,
                                started: Instant::now(),
                                ventilator: peer.clone(),
                                finished: None,
                            });
                            send(&self.socket, &peer, &Message::BatchAck { batch: id });
                        }
                        Some(b) if b.id == id => {
                            // The ventilator restarted: tell it what we already hold.
                            b.ventilator = peer.clone();
                            send(&self.socket, &peer, &Message::BatchAck { batch: id });
                            let ids: Vec<u32> = (0..b.task_count)
                                .filter(|&i| b.is_held(i))
                                .map(|i| i as u32)
                                .collect();
                            send_held(&self.socket, &peer, id, &ids);
                        }
                        Some(b) => reject(
                            &peer,
                            format!(
                                "batch {id:016x} announced while batch {:016x} is in progress",
                                b.id
                            ),
                        ),
                    },
                    Message::Results {
                        batch: id,
                        worker,
                        results,
                    } => {
                        let Some(b) = batch.as_mut().filter(|b| b.id == id) else {
                            reject(&peer, format!("results for batch {id:016x}, which this sink is not collecting"));
                            continue;
                        };
                        if let Some(bad) = results.iter().find(|r| r.id as usize >= b.task_count) {
                            reject(
                                &peer,
                                format!(
                                    "result for task {} of a {}-task batch",
                                    bad.id, b.task_count
                                ),
                            );
                            continue;
                        }
                        let tally = tally_for(&mut workers, &worker);
                        for r in &results {
                            if r.status == Status::Failed {
                                continue; // the ventilator hands it to another worker
                            }
                            if b.is_held(r.id as usize) {
                                duplicates += 1;
                                continue;
                            }
                            b.set_held(r.id as usize);
                            newly_held.push(r.id);
                            tally.tasks += 1;
                            tally.busy_us += u64::from(r.wall_us);
                            measured_total_us += u64::from(r.wall_us);
                            measured_longest_us = measured_longest_us.max(r.wall_us);
                            tally.kernel_us += u64::from(r.kernel_us);
                            if r.status == Status::Mismatch {
                                mismatches += 1;
                                log::error!(
                                    "task {} from {}: result does not match the CPU reference",
                                    r.id,
                                    worker.name
                                );
                            }
                            if let Some(file) = results_file.as_mut() {
                                file.record(&worker.name, r)?;
                            }
                        }
                    }
                    Message::Stats {
                        batch: id,
                        redispatched,
                        rejected: vent_rejected,
                        last,
                    } if batch.as_ref().is_some_and(|b| b.id == id) => {
                        ventilator_counts = (redispatched, vent_rejected);
                        final_counts |= last;
                    }
                    other => reject(&peer, format!("unexpected {} message", other.kind_name())),
                }
            }
            if let Some(b) = batch.as_mut() {
                if !newly_held.is_empty() {
                    if let Some(file) = results_file.as_mut() {
                        file.flush()?;
                    }
                    send_held(&self.socket, &b.ventilator, b.id, &newly_held);
                    newly_held.clear();
                }
                if b.finished.is_none() && b.held_count == b.task_count {
                    b.finished = Some(Instant::now());
                    log::info!("all {} results held", b.task_count);
                    send(
                        &self.socket,
                        &b.ventilator,
                        &Message::Complete { batch: b.id },
                    );
                }
            }
        }

        let Some(b) = batch else {
            bail!("no batch was collected");
        };
        let finished = b.finished.unwrap_or_else(Instant::now);
        let elapsed_ms = finished.duration_since(b.started).as_secs_f64() * 1000.0;
        let worker_reports: Vec<WorkerReport> = workers
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
        let slept = worker_reports.iter().all(|w| w.backend == "sleep");
        let (ideal, ideal_basis) = if slept {
            (
                ideal_ms(b.expected_ms, b.longest_ms, worker_reports.len()),
                "workload",
            )
        } else {
            let share = measured_total_us as f64 / 1000.0 / worker_reports.len().max(1) as f64;
            (
                share.max(f64::from(measured_longest_us) / 1000.0),
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
            duplicates,
            redispatched: ventilator_counts.0,
            rejected: rejected + ventilator_counts.1,
            mismatches,
            workers: worker_reports,
        })
    }
}

fn tally_for<'a>(workers: &'a mut BTreeMap<String, Tally>, worker: &WorkerInfo) -> &'a mut Tally {
    let tally = workers.entry(worker.name.clone()).or_default();
    if tally.backend.is_empty() {
        tally.backend = worker.backend.clone();
        tally.adapter = worker.adapter.clone();
    }
    tally
}

fn send(socket: &zmq::Socket, peer: &[u8], message: &Message) {
    if let Err(e) = socket.send_multipart([peer, message.encode().as_slice()], zmq::DONTWAIT) {
        log::warn!(
            "cannot send {} to {}: {e}",
            message.kind_name(),
            sockets::peer_name(peer)
        );
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
            started: Instant::now(),
            ventilator: vec![],
            finished: None,
        };
        b.set_held(129);
        b.set_held(0);
        assert!(b.is_held(129) && b.is_held(0) && !b.is_held(64));
        assert_eq!(b.held_count, 2);
    }
}
