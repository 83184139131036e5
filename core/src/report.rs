//! Reports: what the sink's batch report says (the seed's "Total elapsed time" and more)
//! as data and as text, and what a results file holds of a batch. Writing them is the
//! root package's: this module prints nothing.

use crate::protocol::TaskResult;
use serde::Serialize;
/// One worker's share of a batch, as the sink saw it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct WorkerReport {
    /// The worker's name.
    pub id: String,
    /// Tasks whose results it delivered first (duplicates not counted).
    pub tasks: u64,
    /// Sum of its tasks' wall times on the worker.
    pub busy_ms: f64,
    /// Sum of device kernel times (0 where not measured).
    pub kernel_ms: f64,
    /// Its device's busy share: kernel time over its time present (the batch's start to
    /// its last result); absent where no kernel time is measured (`sleep`). A `cpu`
    /// worker's kernel time is its computation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_share: Option<f64>,
    /// Kernel dispatches its tasks took on the device (0 on `cpu` and `sleep`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dispatches: u64,
    /// Input bytes of the tasks it delivered first, as it received them (data tasks).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input_bytes: u64,
    /// Output bytes of the results it delivered first, uncompressed (data kernels).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_bytes: u64,
    pub backend: String,
    pub adapter: String,
    /// A divisible job: items in the chunks it delivered first, and its measured rate
    /// (those items over its busy time).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub items: u64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub items_per_s: f64,
    /// A divisible job: ms from the job's start to this worker's last result. Less its busy
    /// time, what it spent waiting for chunks (round trips; a worker done early, idle).
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub finished_ms: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// What a report says of a divisible job beyond a batch's figures. Its `ideal_ms` is the
/// job's items over the sum of the workers' measured rates: no split does better with
/// these workers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct JobReport {
    /// Items in the job, and how many the sink holds (fewer when a search stopped early).
    pub items: u64,
    pub held_items: u64,
    /// How chunks were sized (`static`, `fixed`, `adaptive`).
    pub chunking: String,
    /// Chunks handed out (the ventilator's count), and results delivered.
    pub chunks: u64,
    /// Items handed out again after their worker was lost or failed them.
    pub items_redone: u64,
    /// Chunks whose workers yielded their unstarted items in the end game, and those
    /// items (handed to other workers, done once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_cut: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub items_handed_on: u64,
    /// Items in late results for items already held: dropped.
    pub late_items: u64,
    /// A search stopped early (`--hits N`): the hits it asked for, and ms from the result
    /// that completed them to every worker idle (the ventilator's measure; `None` when it
    /// did not say).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hits_wanted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_ms: Option<f64>,
}

/// A task the ventilator gave up on after `--max-attempts` failures.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FailedTask {
    pub id: u32,
    /// A divisible job's chunk: its items (`first..first + items`); 0 items for a task.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub items: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first: u64,
    pub attempts: u32,
    /// The worker that failed it last, and why, as it said.
    pub worker: String,
    pub error: String,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Copies of a replicated task that disagreed (`--replicate`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ReplicaMismatch {
    /// `task 7`, or `items 100..200`.
    pub task: String,
    /// Workers whose copies agreed (the copy kept); empty when no two agreed.
    pub agreed: Vec<String>,
    /// Workers whose copies differed from them.
    pub differing: Vec<String>,
}

/// A worker that got no more of the batch after its copies disagreed with others'.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Quarantined {
    pub worker: String,
    pub reason: String,
}

/// Task inputs (ventilator to workers) and outputs (workers to sink) as they crossed the
/// wire and uncompressed; a ratio is uncompressed over wire (1 when raw, 0 when none).
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct WireReport {
    pub inputs_wire_bytes: u64,
    pub inputs_bytes: u64,
    pub inputs_ratio: f64,
    pub outputs_wire_bytes: u64,
    pub outputs_bytes: u64,
    pub outputs_ratio: f64,
}

impl WireReport {
    /// From `(wire, uncompressed)` byte counts per direction.
    pub fn new(inputs: (u64, u64), outputs: (u64, u64)) -> WireReport {
        let ratio = |(wire, bytes): (u64, u64)| {
            if wire == 0 {
                0.0
            } else {
                bytes as f64 / wire as f64
            }
        };
        WireReport {
            inputs_wire_bytes: inputs.0,
            inputs_bytes: inputs.1,
            inputs_ratio: ratio(inputs),
            outputs_wire_bytes: outputs.0,
            outputs_bytes: outputs.1,
            outputs_ratio: ratio(outputs),
        }
    }

    /// One line for the text report: `inputs 1.0 MB (0.1 MB on the wire, 10.0 : 1), ...`.
    fn line(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        format!(
            "moved: inputs {:.1} MB ({:.1} MB on the wire, {:.1} : 1), outputs {:.1} MB ({:.1} MB on the wire, {:.1} : 1)\n",
            mb(self.inputs_bytes),
            mb(self.inputs_wire_bytes),
            self.inputs_ratio,
            mb(self.outputs_bytes),
            mb(self.outputs_wire_bytes),
            self.outputs_ratio
        )
    }
}

/// A batch's report: what the sink prints and `--json` emits.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Report {
    pub batch: String,
    pub tasks: u64,
    /// Sum of all workloads (the seed's "total expected cost").
    pub expected_ms: u64,
    pub longest_ms: u32,
    /// From batch start at the sink to the last result.
    pub elapsed_ms: f64,
    /// From batch start to everything durable: the last result, the ventilator's last
    /// counters, and what the sink writes after them (the picture, an assembled output).
    /// At least `elapsed_ms`.
    pub finished_ms: f64,
    /// max(total / workers, longest): no schedule does better. Totals are the nominal
    /// workloads when every worker sleeps, else the measured task times.
    pub ideal_ms: f64,
    /// `workload` or `measured`: what `ideal_ms` was computed from.
    pub ideal_basis: String,
    /// ideal / elapsed.
    pub efficiency: f64,
    /// Tasks per second over the batch.
    pub tasks_per_s: f64,
    /// Results that arrived for tasks already held: dropped.
    pub duplicates: u64,
    /// Tasks handed to another worker after their first went away or failed.
    pub redispatched: u64,
    /// Messages dropped as malformed or foreign, at the sink and the ventilator.
    pub rejected: u64,
    /// Handshakes that failed on a guarded socket (wrong or no secret, address not
    /// allowed, dropped mid-handshake), at the sink and the ventilator.
    pub refused: u64,
    /// Results compared with the CPU reference (`--verify`, `--verify-sample`).
    pub checked: u64,
    /// Of those, the ones that matched it.
    pub verified: u64,
    /// Results that disagreed with the CPU reference.
    pub mismatches: u64,
    /// Items compared with the CPU reference one by one (Mandelbrot pixels of checked
    /// bands), and how many differed: any fails the batch.
    pub compared: u64,
    pub differing: u64,
    /// Output files the sink wrote (`--outputs`) in this run.
    pub outputs: u64,
    /// Where they went (`--outputs DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_dir: Option<String>,
    /// Task inputs and outputs on the wire and uncompressed (LZ4 when it pays).
    pub wire: WireReport,
    /// The Mandelbrot picture written when the batch completed (`--image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    /// The search kernel's hits, ascending (empty for other kernels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hits: Vec<u32>,
    /// A divisible job's figures; absent for a task list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobReport>,
    pub workers: Vec<WorkerReport>,
    /// Tasks given up on after `--max-attempts` failures: any fails the batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedTask>,
    /// Tasks run on two workers (or three, to break a tie) and compared (`--replicate`);
    /// the copies that disagreed, and the workers quarantined for it. Any disagreement
    /// fails the batch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicated: u64,
    /// Replicated tasks only one worker could run: held on its copies alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unconfirmed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_mismatches: Vec<ReplicaMismatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
}

/// `1 worker`, `2 workers`.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Hits shown in the text report; `--json` has them all.
const HITS_SHOWN: usize = 8;

/// `3, 17, 42` or `3, 17, … (40 more; …)`: the first [`HITS_SHOWN`] hits of a search.
fn first_few(hits: &[u32]) -> String {
    let shown: Vec<String> = hits.iter().take(HITS_SHOWN).map(u32::to_string).collect();
    let mut s = shown.join(", ");
    if hits.len() > HITS_SHOWN {
        s += &format!(
            ", … ({} more; --json lists them all)",
            hits.len() - HITS_SHOWN
        );
    }
    s
}

/// A rate with sensible precision: whole numbers from 100 up, three significant figures below.
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() || per_s <= 0.0 {
        "0".to_owned()
    } else if per_s >= 100.0 {
        format!("{per_s:.0}")
    } else if per_s >= 10.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.2}")
    }
}

impl FailedTask {
    /// `task 7`, or `items 100..200`.
    pub fn name(&self) -> String {
        if self.items > 0 {
            format!(
                "items {}..{}",
                self.first,
                self.first + u64::from(self.items)
            )
        } else {
            format!("task {}", self.id)
        }
    }
}

impl Report {
    /// Whether the batch's results are good: no mismatch, and no compared pixel that
    /// differs. `Err` says what failed.
    pub fn verdict(&self) -> Result<(), String> {
        if let Some(first) = self.failed.first() {
            return Err(format!(
                "{} failed {} times and was given up on (last on worker {}: {}){}",
                first.name(),
                first.attempts,
                crate::text::printable(&first.worker),
                crate::text::printable(&first.error),
                match self.failed.len() {
                    1 => String::new(),
                    n => format!(", and {} more tasks failed likewise", n - 1),
                }
            ));
        }
        if let Some(first) = self.replica_mismatches.first() {
            return Err(format!(
                "{} of {} replicated tasks had copies that disagree; first {}: {} differ from {}",
                self.replica_mismatches.len(),
                self.replicated,
                first.task,
                crate::text::printable(&first.differing.join(", ")),
                if first.agreed.is_empty() {
                    "each other".to_owned()
                } else {
                    crate::text::printable(&first.agreed.join(", ")).into_owned()
                }
            ));
        }
        if self.mismatches > 0 {
            return Err(format!(
                "{} results did not match the CPU reference",
                self.mismatches
            ));
        }
        crate::kernels::mandelbrot::judge(self.differing, self.compared)
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s += &format!("Total elapsed time: {:.0} msec\n", self.elapsed_ms);
        // Said only where something was written after the last result: the
        // ventilator's last counters alone can add a millisecond on a busy machine.
        let written = match (self.outputs_dir.is_some(), self.picture.is_some()) {
            (true, true) => Some("outputs and picture"),
            (true, false) => Some("outputs"),
            (false, true) => Some("picture"),
            (false, false) => None,
        };
        if let Some(written) = written.filter(|_| self.finished_ms >= self.elapsed_ms + 1.0) {
            s += &format!(
                "Finished, {written} on disk: {:.0} msec (the elapsed time ends at the last result)\n",
                self.finished_ms
            );
        }
        if self.workers.is_empty() {
            // A classic batch: results carry neither worker nor (always) workload.
            s += &format!(
                "{} results, {} per second, rejected {}, refused {}\n",
                self.tasks,
                rate(self.tasks_per_s),
                self.rejected,
                self.refused
            );
            return s;
        }
        let efficiency = if self.ideal_ms > 0.0 {
            format!("efficiency {:.3}", self.efficiency)
        } else {
            "efficiency n/a (no work)".to_owned()
        };
        if let Some(job) = &self.job {
            s += &format!(
                "{} items in {}, ideal {:.0} ms ({}) on {}, {efficiency}, {} items/s\n",
                job.held_items,
                plural(self.tasks, "chunk"),
                self.ideal_ms,
                self.ideal_basis,
                plural(self.workers.len() as u64, "worker"),
                rate(if self.elapsed_ms > 0.0 {
                    job.held_items as f64 * 1000.0 / self.elapsed_ms
                } else {
                    0.0
                })
            );
        } else {
            s += &format!(
                "{}, {} ms expected, ideal {:.0} ms ({}) on {}, {efficiency}, {} tasks/s\n",
                plural(self.tasks, "task"),
                self.expected_ms,
                self.ideal_ms,
                self.ideal_basis,
                plural(self.workers.len() as u64, "worker"),
                rate(self.tasks_per_s)
            );
        }
        s += &format!(
            "duplicates {}, redispatched {}, rejected {}, refused {}",
            self.duplicates, self.redispatched, self.rejected, self.refused
        );
        s += "\n";
        if let Some(job) = &self.job {
            s += &format!(
                "job of {} items ({} held){}: {} chunks, {} items redone, {} late items dropped\n",
                job.items,
                job.held_items,
                if job.chunking.is_empty() {
                    String::new()
                } else {
                    format!(", {} chunking", job.chunking)
                },
                job.chunks,
                job.items_redone,
                job.late_items
            );
            if job.chunks_cut > 0 {
                s += &format!(
                    "{} chunks cut in the end game: {} items handed on to faster workers\n",
                    job.chunks_cut, job.items_handed_on
                );
            }
            if job.hits_wanted > 0 {
                s += &format!("stopped at {} hits", job.hits_wanted);
                if let Some(ms) = job.cancel_ms {
                    s += &format!(", every worker idle {ms:.1} ms after");
                }
                s += "\n";
            }
        }
        if self.checked > 0 {
            s += &format!(
                "verified {} of {} results checked against the CPU reference, mismatches {}\n",
                self.verified, self.checked, self.mismatches
            );
        }
        if self.compared > 0 {
            s += &format!(
                "pixels differing from the CPU reference: {} of {} (exact: any fails)\n",
                self.differing, self.compared,
            );
        }
        if !self.hits.is_empty() {
            s += &format!(
                "{}: {}\n",
                plural(self.hits.len() as u64, "hit"),
                first_few(&self.hits)
            );
        }
        if let Some(dir) = &self.outputs_dir {
            s += &format!(
                "{} written to {}\n",
                plural(self.outputs, "output file"),
                crate::text::printable(dir)
            );
        }
        if let Some(picture) = &self.picture {
            s += &format!("picture written to {}\n", crate::text::printable(picture));
        }
        if self.wire.inputs_bytes + self.wire.outputs_bytes > 0 {
            s += &self.wire.line();
        }
        if self.replicated + self.unconfirmed > 0 {
            s += &format!(
                "replicated {} tasks on a second worker, copies that disagree {}{}\n",
                self.replicated,
                self.replica_mismatches.len(),
                if self.unconfirmed > 0 {
                    format!(", {} only one worker could run", self.unconfirmed)
                } else {
                    String::new()
                }
            );
        }
        for m in &self.replica_mismatches {
            s += &format!(
                "MISMATCH {}: {} differ from {}\n",
                m.task,
                crate::text::printable(&m.differing.join(", ")),
                if m.agreed.is_empty() {
                    "each other".to_owned()
                } else {
                    crate::text::printable(&m.agreed.join(", ")).into_owned()
                }
            );
        }
        for q in &self.quarantined {
            s += &format!(
                "QUARANTINED {}: {}\n",
                crate::text::printable(&q.worker),
                crate::text::printable(&q.reason)
            );
        }
        for f in &self.failed {
            s += &format!(
                "FAILED {}: {} attempts, last on {}: {}\n",
                f.name(),
                f.attempts,
                crate::text::printable(&f.worker),
                crate::text::printable(&f.error)
            );
        }
        s += "\n";
        let name_width = self
            .workers
            .iter()
            .map(|w| crate::text::printable(&w.id).chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        let job = self.job.is_some();
        // Device columns where a worker has a device; bytes where tasks carried data.
        let device = self.workers.iter().any(|w| w.dispatches > 0);
        let data = self
            .workers
            .iter()
            .any(|w| w.input_bytes > 0 || w.output_bytes > 0);
        s += &format!(
            "{:<name_width$}  {:>6}  {}{:>9}  {:>9}  {}{}{:<8}  adapter\n",
            "worker",
            if job { "chunks" } else { "tasks" },
            if job {
                format!("{:>12}  {:>12}  ", "items", "items/s")
            } else {
                String::new()
            },
            "busy ms",
            "kernel ms",
            if device {
                format!("{:>6}  {:>10}  ", "device", "dispatches")
            } else {
                String::new()
            },
            if data {
                format!("{:>9}  {:>9}  ", "in", "out")
            } else {
                String::new()
            },
            "backend"
        );
        for w in &self.workers {
            s += &format!(
                "{:<name_width$}  {:>6}  {}{:>9.1}  {:>9.1}  {}{}{:<8}  {}\n",
                crate::text::printable(&w.id),
                w.tasks,
                if job {
                    format!("{:>12}  {:>12.0}  ", w.items, w.items_per_s)
                } else {
                    String::new()
                },
                w.busy_ms,
                w.kernel_ms,
                if device {
                    let share = w
                        .device_share
                        .map_or_else(|| "-".to_owned(), |d| format!("{:.0}%", 100.0 * d));
                    format!("{share:>6}  {:>10}  ", w.dispatches)
                } else {
                    String::new()
                },
                if data {
                    format!(
                        "{:>9}  {:>9}  ",
                        crate::text::bytes(w.input_bytes),
                        crate::text::bytes(w.output_bytes)
                    )
                } else {
                    String::new()
                },
                crate::text::printable(&w.backend),
                if w.adapter.is_empty() {
                    "-".into()
                } else {
                    crate::text::printable(&w.adapter)
                }
            );
        }
        s
    }
}

/// What every record of a results file says of its batch: enough to resume it, and to
/// report it again once every task is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch: u64,
    pub tasks: u32,
    /// A divisible job's items (0 for a task list, whose `tasks` count).
    pub items: u64,
    /// A search job that stops at this many hits (`--hits`; 0 otherwise).
    pub hits_wanted: u64,
    /// Wall-clock start of the batch at the sink, ms since the Unix epoch.
    pub started_unix_ms: u64,
}

/// One recovered record: the task's result and who delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredRecord {
    pub worker: String,
    pub backend: String,
    pub result: TaskResult,
    /// A search job's hits in this chunk (recorded when it stops at `--hits`).
    pub hits: Vec<u32>,
}

/// What a results file holds of a batch, for `--resume`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredResults {
    pub header: BatchHeader,
    pub records: Vec<RecoveredRecord>,
}

impl RecoveredResults {
    /// Whether the file holds a result for every task of its batch (every item of a
    /// divisible job).
    pub fn is_complete(&self) -> bool {
        if self.header.items > 0 {
            let mut held = crate::intervals::IntervalSet::new();
            let mut hits = std::collections::BTreeSet::new();
            for r in &self.records {
                held.insert(r.result.first..r.result.first + u64::from(r.result.items));
                hits.extend(r.hits.iter().copied());
            }
            let wanted = self.header.hits_wanted;
            return held.covered() == self.header.items
                || (wanted > 0 && hits.len() as u64 >= wanted);
        }
        let mut seen = vec![false; self.header.tasks as usize];
        for r in &self.records {
            if let Some(s) = seen.get_mut(r.result.id as usize) {
                *s = true;
            }
        }
        seen.iter().all(|&s| s)
    }
}
