//! What the live view shows (`--http`): the ventilator's pump feeds an [`Observer`] what
//! it sends and what the dispatcher says it observed ([`Observed`]: reports, tasks held,
//! the sink's side, workers lost and back), and publishes a [`FarmStatus`] (the page's and
//! `/api/status`'s JSON) and the Prometheus text a few times a second, from its own tallies
//! and a [`Snapshot`] of the dispatcher. Sans-I/O like the dispatcher: the caller's clock,
//! no socket, no thread; it costs nothing unless `--http` is given.

use crate::dispatch::{Observed, Snapshot, WorkerId};
use crate::protocol::{Done, Status};
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// How far back the task stream reaches.
pub const STREAM_WINDOW: Duration = Duration::from_secs(30);
/// Most bars kept for the stream (a zero-work stream makes millions a second; a lane on
/// a laptop screen shows about a thousand).
const MAX_BARS: usize = 2048;
/// Bars drawn from one report: a worker reports many tasks at once only when they are
/// short, and then the stream cannot tell them apart (its latest ones stand for them).
const BARS_PER_REPORT: usize = 32;
/// A worker that left is dropped from the per-worker metrics after this long.
const FORGET_GONE_AFTER: Duration = Duration::from_secs(60);
/// Samples of throughput and latency kept for the page's chart (at the page's half-second
/// refresh, two minutes).
const SERIES_LEN: usize = 240;
/// Shortest time between two samples (the status is also made at the end).
const SAMPLE_EVERY: Duration = Duration::from_millis(400);
/// A worker not heard from for this many heartbeat intervals shows as silent.
const SILENT_BEATS: u32 = 2;
/// Histogram bucket bounds in seconds: 1 ms to about 2 minutes, doubling.
const BUCKETS: [f64; 18] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384, 32.768, 65.536, 131.072,
];

/// A fixed-bucket histogram in seconds, as Prometheus shows one.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    over: u64,
    sum: f64,
}

impl Histogram {
    /// Counts one observation of `us` microseconds. The bucket comes from the bit length
    /// (bounds are 1 ms doubling), not a search: this runs per task.
    pub fn observe_us(&mut self, us: u64) {
        self.sum += us as f64 / 1e6;
        let q = us.saturating_sub(1) / 1000;
        let i = if q == 0 {
            0
        } else {
            64 - q.leading_zeros() as usize
        };
        match self.counts.get_mut(i) {
            Some(count) => *count += 1,
            None => self.over += 1,
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.over
    }

    /// Counts per bucket, the last for those past every bound.
    fn snapshot(&self) -> [u64; BUCKETS.len() + 1] {
        let mut all = [0; BUCKETS.len() + 1];
        all[..BUCKETS.len()].copy_from_slice(&self.counts);
        all[BUCKETS.len()] = self.over;
        all
    }
}

/// The `q` quantile (0 to 1) in seconds of the observations counted per bucket in
/// `counts` (as [`Histogram::snapshot`] gives them), interpolated within its bucket as
/// Prometheus's `histogram_quantile` does; none of no observations. One past the last
/// bound is that bound.
fn quantile(counts: &[u64; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = BUCKETS.get(i) else {
                return BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    BUCKETS.last().copied()
}

/// The last sample's basis: when, what was held, the latency counts then.
#[derive(Debug, Clone, Copy)]
struct SampleBase {
    at: Instant,
    held: u64,
    latency: [u64; BUCKETS.len() + 1],
}

/// One task's bar in the stream.
#[derive(Debug, Clone, Copy)]
struct Bar {
    worker: WorkerId,
    start: Instant,
    end: Instant,
    status: BarStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BarStatus {
    Ok,
    Failed,
    /// Its worker left with it; another worker does it again.
    Redispatched,
}

/// What the observer adds to the dispatcher's view of a worker.
#[derive(Debug, Clone, Default)]
struct Tally {
    done: u64,
    failed: u64,
    busy_us: u64,
    kernel_us: u64,
    address: String,
    /// When it was first seen (at a status), for its share of the busy time.
    seen_at: Option<Instant>,
    /// When it was declared gone (none while it is alive), to drop it from the metrics
    /// later.
    gone_at: Option<Instant>,
    /// A divisible job: the items of the chunks it finished.
    items: u64,
    /// Task input bytes sent to it, uncompressed and as they crossed the wire.
    input_bytes: u64,
    input_wire_bytes: u64,
    /// Output bytes of the tasks it reported, uncompressed, and the kernel dispatches
    /// they took on its device.
    output_bytes: u64,
    dispatches: u64,
}

/// The live view's state.
pub struct Observer {
    start: Instant,
    /// Per task: who was last sent it (slot + 1; 0 when none holds it) and when (µs since
    /// `start`, saturating).
    sent: Vec<(u32, u64)>,
    bars: VecDeque<Bar>,
    tallies: Vec<Tally>,
    latency: Histogram,
    kernel: Histogram,
    /// Per task: whether the sink was seen holding it (a restarted sink lists its tasks
    /// again; they count once).
    held: Vec<bool>,
    /// Tasks held, each once: never goes down.
    held_count: u64,
    /// Of those, the ones this observer sent (the rate's numerator: a resumed batch's
    /// earlier results do not make it look faster).
    held_sent: u64,
    /// A divisible job: its chunks are numbered as they are carved, so the per-task tables
    /// grow with them.
    grows: bool,
    /// When the first task was sent: the rate's and efficiency's clock.
    first_sent: Option<Instant>,
    /// A divisible job's items held before the first task was sent (a resumed job's):
    /// not counted in its rate.
    items_before: u64,
    /// A task list's nominal work left when the first task was sent: what was done since
    /// over the time since is its work rate.
    work_before: u64,
    ok: u64,
    failed: u64,
    /// Reports of tasks that had been handed to another worker since.
    duplicates: u64,
    /// Tasks sent again while the worker that had them still ran (a backup, a takeover):
    /// the earlier workers (slot + 1), whose report, if first, counts as well as the last
    /// one's would.
    also_sent: std::collections::HashMap<u32, Vec<u32>>,
    /// Throughput and latency over time, and the last sample's basis.
    series: VecDeque<Sample>,
    sampled: Option<SampleBase>,
    /// The sink's side as it last told it.
    sink: Option<crate::protocol::SinkSide>,
}

impl Observer {
    pub fn new(tasks: usize, now: Instant) -> Observer {
        // Written here, element by element, so that their pages are touched now and not
        // one page fault at a time while the batch streams (vec! of zeros maps them lazily).
        let mut sent = Vec::with_capacity(tasks);
        sent.resize(tasks, (u32::MAX, 0));
        sent.fill((0, 0));
        let mut held = Vec::with_capacity(tasks);
        held.resize(tasks, true);
        held.fill(false);
        Observer {
            grows: false,
            start: now,
            sent,
            bars: VecDeque::new(),
            tallies: Vec::new(),
            latency: Histogram::default(),
            kernel: Histogram::default(),
            held,
            held_count: 0,
            held_sent: 0,
            first_sent: None,
            items_before: 0,
            work_before: 0,
            ok: 0,
            failed: 0,
            duplicates: 0,
            also_sent: std::collections::HashMap::new(),
            series: VecDeque::new(),
            sampled: None,
            sink: None,
        }
    }

    /// The sink told its side.
    pub fn sink_side(&mut self, side: &crate::protocol::SinkSide) {
        if self.sink.as_ref() != Some(side) {
            self.sink = Some(side.clone());
        }
    }

    /// Whether the sink said its picture is being written.
    pub fn picture_writing(&self) -> bool {
        self.sink
            .as_ref()
            .is_some_and(|s| s.picture_state == crate::protocol::PictureState::Writing)
    }

    /// Whether the sink's files are done: no picture still to write (or no word from the
    /// sink at all).
    pub fn files_done(&self) -> bool {
        self.sink.as_ref().is_none_or(|s| {
            !matches!(
                s.picture_state,
                crate::protocol::PictureState::Waiting | crate::protocol::PictureState::Writing
            )
        })
    }

    /// Takes a sample of throughput (tasks, or a job's items, held per second) and of the
    /// latency of tasks held since the last one.
    fn sample(&mut self, now: Instant, held: u64) {
        let latency = self.latency.snapshot();
        let Some(base) = self.sampled else {
            // The first: a basis only (from the first send, when there was one).
            if self.first_sent.is_some() {
                self.sampled = Some(SampleBase {
                    at: now,
                    held,
                    latency,
                });
            }
            return;
        };
        let dt = now.saturating_duration_since(base.at);
        if dt < SAMPLE_EVERY {
            return;
        }
        let mut delta = latency;
        for (d, b) in delta.iter_mut().zip(base.latency) {
            *d = d.saturating_sub(b);
        }
        let ms = |q| quantile(&delta, q).map(|s| (s * 1e4).round() / 10.0);
        if self.series.len() == SERIES_LEN {
            self.series.pop_front();
        }
        self.series.push_back(Sample {
            t_s: (now.saturating_duration_since(self.start).as_secs_f64() * 10.0).round() / 10.0,
            per_s: (held.saturating_sub(base.held) as f64 / dt.as_secs_f64()).round(),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
        });
        self.sampled = Some(SampleBase {
            at: now,
            held,
            latency,
        });
    }

    fn tally(&mut self, worker: WorkerId) -> &mut Tally {
        let w = worker as usize;
        if self.tallies.len() <= w {
            self.tallies.resize_with(w + 1, Tally::default);
        }
        &mut self.tallies[w]
    }

    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// Task inputs of `bytes` sent to `worker`, `wire` of them on the wire (compressed).
    pub fn input_sent(&mut self, worker: WorkerId, bytes: usize, wire: usize) {
        let tally = self.tally(worker);
        tally.input_bytes += bytes as u64;
        tally.input_wire_bytes += wire as u64;
    }

    /// Tasks sent to `worker` at `now`. One still out with a worker that is gone is a
    /// redispatch: that attempt becomes a redispatched bar (a backup, sent while the
    /// first worker still runs it, is not).
    pub fn sent(&mut self, now: Instant, worker: WorkerId, ids: impl Iterator<Item = u32>) {
        self.first_sent.get_or_insert(now);
        let at = self.micros(now);
        for id in ids {
            self.make_room(id);
            let Some(slot) = self.sent.get_mut(id as usize) else {
                continue;
            };
            let before = std::mem::replace(slot, (worker + 1, at));
            let alive = |w: u32| {
                self.tallies
                    .get(w as usize)
                    .is_none_or(|t| t.gone_at.is_none())
            };
            if before.0 != 0 && before.0 != worker + 1 && alive(before.0 - 1) {
                self.also_sent.entry(id).or_default().push(before.0);
            }
            if before.0 != 0 && before.0 != worker + 1 && !alive(before.0 - 1) {
                let start = self.start + Duration::from_micros(before.1);
                self.bar(Bar {
                    worker: before.0 - 1,
                    start,
                    end: now,
                    status: BarStatus::Redispatched,
                });
            }
        }
    }

    /// Where a worker's connection comes from (ZeroMQ's Peer-Address).
    pub fn address(&mut self, worker: WorkerId, address: &str) {
        let tally = self.tally(worker);
        if tally.address != address {
            tally.address = address.to_owned();
        }
    }

    /// An observer of a divisible job, whose chunks are numbered as they are carved.
    pub fn for_job(now: Instant) -> Observer {
        Observer {
            grows: true,
            ..Observer::new(0, now)
        }
    }

    /// Room for task `id` in a job's tables.
    fn make_room(&mut self, id: u32) {
        let i = id as usize;
        if self.grows && i >= self.sent.len() {
            self.sent.resize(i + 1, (0, 0));
            self.held.resize(i + 1, false);
        }
    }

    /// What the dispatcher observed.
    pub fn observed(&mut self, now: Instant, observed: Observed) {
        match observed {
            Observed::Reported {
                worker,
                done,
                items,
            } => self.done(now, worker, &done, &items),
            Observed::Held { ids } => self.held(now, &ids),
            Observed::SinkSide(side) => self.sink_side(&side),
            Observed::Lost { worker } => self.lost(now, worker),
            Observed::Back { worker } => self.tally(worker).gone_at = None,
        }
    }

    /// A worker reported tasks finished, each with its items (`items[n]` for `done[n]`; a
    /// chunk's, for a divisible job).
    pub fn done(&mut self, now: Instant, worker: WorkerId, done: &[Done], items: &[u64]) {
        // Runs per report message on the dispatch thread: sums first, one tally update,
        // and bars only for the tasks the stream can show.
        let (mut ok, mut failed, mut busy_us, mut kernel_us) = (0u64, 0u64, 0u64, 0u64);
        let (mut ok_items, mut output_bytes, mut dispatches) = (0u64, 0u64, 0u64);
        let bars_from = done.len().saturating_sub(BARS_PER_REPORT);
        for (n, d) in done.iter().enumerate() {
            let Some(slot) = self.sent.get_mut(d.id as usize) else {
                continue;
            };
            // The last worker sent it, or an earlier one still running it, first to report.
            let earlier = slot.0 != 0
                && slot.0 != worker + 1
                && self
                    .also_sent
                    .get(&d.id)
                    .is_some_and(|by| by.contains(&(worker + 1)));
            if slot.0 != worker + 1 && !earlier {
                self.duplicates += 1;
                continue;
            }
            slot.0 = 0;
            self.also_sent.remove(&d.id);
            let status = if d.status == Status::Failed {
                failed += 1;
                BarStatus::Failed
            } else {
                ok += 1;
                ok_items += items.get(n).copied().unwrap_or(0);
                BarStatus::Ok
            };
            self.kernel.observe_us(u64::from(d.kernel_us));
            busy_us += u64::from(d.wall_us);
            kernel_us += u64::from(d.kernel_us);
            output_bytes += u64::from(d.output_bytes);
            dispatches += u64::from(d.dispatches);
            if n >= bars_from {
                let start = now
                    .checked_sub(Duration::from_micros(u64::from(d.wall_us)))
                    .unwrap_or(now);
                self.bar(Bar {
                    worker,
                    start,
                    end: now,
                    status,
                });
            }
        }
        self.ok += ok;
        self.failed += failed;
        let tally = self.tally(worker);
        tally.done += ok;
        tally.failed += failed;
        tally.busy_us += busy_us;
        tally.kernel_us += kernel_us;
        tally.items += ok_items;
        tally.output_bytes += output_bytes;
        tally.dispatches += dispatches;
    }

    /// The sink holds these tasks. The first time for each: counted, and its latency from
    /// its last send recorded if this observer sent it.
    pub fn held(&mut self, now: Instant, ids: &[u32]) {
        let at = self.micros(now);
        for &id in ids {
            let i = id as usize;
            if self.held.get(i) != Some(&false) {
                continue;
            }
            self.held[i] = true;
            self.held_count += 1;
            // A task this observer never sent (held before a resume) has no latency.
            if self.sent[i].1 > 0 {
                self.held_sent += 1;
                self.latency.observe_us(at.saturating_sub(self.sent[i].1));
            }
        }
    }

    fn bar(&mut self, bar: Bar) {
        if self.bars.len() == MAX_BARS {
            self.bars.pop_front();
        }
        self.bars.push_back(bar);
    }

    /// The dispatcher declared a worker gone: the tasks it held become redispatched bars.
    /// A scan of the batch's tasks, once per worker lost.
    fn lost(&mut self, now: Instant, w: WorkerId) {
        if self.tally(w).gone_at.is_some() {
            return;
        }
        self.tally(w).gone_at = Some(now);
        let mut lost = Vec::new();
        for entry in self.sent.iter_mut() {
            if entry.0 == w + 1 {
                entry.0 = 0;
                lost.push(entry.1);
            }
        }
        for at in lost {
            let start = self.start + Duration::from_micros(at);
            self.bar(Bar {
                worker: w,
                start,
                end: now,
                status: BarStatus::Redispatched,
            });
        }
    }

    /// Where the farm stands: the page's and `/api/status`'s data.
    pub fn status(&mut self, now: Instant, d: &Snapshot, beat: Duration) -> FarmStatus {
        let counters = d.counters;
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        // Rates run from the first task sent, not from the wait for workers.
        let base = self.first_sent.unwrap_or(now);
        let working = now.saturating_duration_since(base).as_secs_f64();
        let tasks = d.tasks;
        let held = usize::try_from(self.held_count).unwrap_or(usize::MAX);
        let pending = d.pending;
        let rate = if working > 0.0 {
            self.held_sent as f64 / working
        } else {
            0.0
        };
        // A job counts in items: its chunks are cut as it runs, so their count grows.
        let (items_held, items) = d.items.unwrap_or((0, 0));
        let work_left = d.work_left_ms;
        if self.first_sent.is_none() {
            self.items_before = items_held;
            self.work_before = work_left;
        }
        let items_rate = if working > 0.0 {
            items_held.saturating_sub(self.items_before) as f64 / working
        } else {
            0.0
        };
        let mut measured = false;
        let mut workers = Vec::new();
        let mut busy_total = 0.0;
        let mut present_total = 0.0;
        let mut alive = 0usize;
        let grows = self.grows;
        for (w, slot) in d.workers.iter().enumerate() {
            let tally = self.tally(w as WorkerId);
            let seen_at = *tally.seen_at.get_or_insert(now);
            // A task list's task counts as one item.
            if !grows {
                tally.items = tally.done;
            }
            let tally = tally.clone();
            let silent = now.saturating_duration_since(slot.last_seen) > beat * SILENT_BEATS;
            let state = if !slot.alive {
                "gone"
            } else if silent {
                "silent"
            } else if slot.assigned > 0 {
                "busy"
            } else {
                "ready"
            };
            if slot.alive {
                alive += 1;
            }
            // The time it was there to work: from the first send (or its arrival) to now
            // (or its loss).
            let from = seen_at.max(base);
            let present = tally
                .gone_at
                .unwrap_or(now)
                .saturating_duration_since(from)
                .as_secs_f64();
            let busy_s = tally.busy_us as f64 / 1e6;
            busy_total += busy_s;
            present_total += present;
            // Busy time is what workers report of tasks done: none until the first.
            let reported = tally.done + tally.failed > 0;
            measured |= reported;
            let kernel_s = tally.kernel_us as f64 / 1e6;
            workers.push(WorkerStatus {
                slot: w,
                name: slot.name.clone(),
                address: tally.address.clone(),
                backend: slot.backend.clone(),
                adapter: slot.adapter.clone(),
                state: state.to_owned(),
                done: tally.done,
                failed: tally.failed,
                holding: slot.assigned,
                busy_share: (reported && present > 0.0).then(|| (busy_s / present).min(1.0)),
                kernel_ms: tally.kernel_us as f64 / 1e3,
                device_share: (kernel_s > 0.0 && present > 0.0)
                    .then(|| (kernel_s / present).min(1.0)),
                items: tally.items,
                input_bytes: tally.input_bytes,
                input_wire_bytes: tally.input_wire_bytes,
                output_bytes: tally.output_bytes,
                dispatches: tally.dispatches,
                items_per_s: if busy_s > 0.0 {
                    tally.items as f64 / busy_s
                } else {
                    0.0
                },
            });
        }
        // A task list's ETA from the work left, at the pace workers did work while busy,
        // times the workers alive: longest first, the first tasks take longest, so the
        // count of tasks left would mislead.
        let work_done = self.work_before.saturating_sub(work_left) as f64;
        let eta = if items > 0 {
            (items_rate > 0.0).then(|| items.saturating_sub(items_held) as f64 / items_rate)
        } else if work_done > 0.0 && busy_total > 0.0 && alive > 0 {
            Some(work_left as f64 / (work_done / busy_total * alive as f64))
        } else {
            (rate > 0.0).then(|| tasks.saturating_sub(held) as f64 / rate)
        };
        let all_held = if items > 0 {
            items_held >= items
        } else {
            held >= tasks
        };
        // The chart covers the batch, not the time the view lingers after it.
        if !d.over {
            let held = if items > 0 {
                items_held
            } else {
                self.held_count
            };
            self.sample(now, held);
        }
        // By name: the page's rows and lanes keep their places as workers come and go.
        workers.sort_by(|a, b| a.name.cmp(&b.name).then(a.slot.cmp(&b.slot)));
        let mut lane = vec![0; workers.len()];
        for (i, w) in workers.iter().enumerate() {
            lane[w.slot] = i;
        }
        let horizon = now.checked_sub(STREAM_WINDOW).unwrap_or(self.start);
        // Milliseconds are all a bar can show; rounded, the JSON is half the size.
        let since = |t: Instant| {
            (t.saturating_duration_since(self.start).as_secs_f64() * 1e3).round() / 1e3
        };
        let bars = self
            .bars
            .iter()
            .filter(|b| b.end >= horizon)
            .map(|b| BarView {
                worker: lane.get(b.worker as usize).copied().unwrap_or(0) as WorkerId,
                start_s: since(b.start),
                end_s: since(b.end),
                status: b.status,
            })
            .collect();
        let writing = self.picture_writing();
        let files_done = self.files_done();
        FarmStatus {
            batch: format!("{:016x}", d.batch),
            phase: if writing {
                "writing picture".to_owned()
            } else {
                d.phase.to_owned()
            },
            tasks,
            held,
            pending,
            in_flight: tasks.saturating_sub(held).saturating_sub(pending),
            elapsed_s: elapsed,
            tasks_per_s: rate,
            items,
            items_held,
            items_per_s: items_rate,
            eta_s: eta,
            work_left_ms: work_left,
            finished: d.over && all_held && files_done,
            efficiency: (measured && present_total > 0.0)
                .then(|| (busy_total / present_total).min(1.0)),
            ok: self.ok,
            failed: self.failed,
            duplicates: self.duplicates,
            redispatched: counters.redispatched,
            rejected: counters.rejected,
            refused: counters.refused,
            backups: counters.backups,
            chunks_cut: counters.chunks_cut,
            items_handed_on: counters.items_handed_on,
            alive,
            workers,
            now_s: elapsed,
            window_s: STREAM_WINDOW.as_secs_f64(),
            bars,
            series: self.series.iter().copied().collect(),
            sink: self.sink.clone(),
            jobs: Vec::new(),
        }
    }

    /// The Prometheus text exposition of `status` and the histograms.
    pub fn metrics(&self, now: Instant, status: &FarmStatus) -> String {
        let mut m = String::with_capacity(4096);
        head(
            &mut m,
            "conquer_tasks_total",
            "counter",
            "Tasks by outcome: held (the sink holds the result), failed (a worker reported a failure; the task went to another).",
        );
        let _ = writeln!(m, "conquer_tasks_total{{status=\"held\"}} {}", status.held);
        let _ = writeln!(
            m,
            "conquer_tasks_total{{status=\"failed\"}} {}",
            status.failed
        );
        let single = [
            (
                "conquer_redispatched_total",
                "counter",
                "Tasks handed to another worker after their first went away or failed.",
                status.redispatched,
            ),
            (
                "conquer_duplicates_total",
                "counter",
                "Reports of tasks the ventilator no longer expected from that worker.",
                status.duplicates,
            ),
            (
                "conquer_rejected_total",
                "counter",
                "Messages dropped by the ventilator as malformed or foreign.",
                status.rejected,
            ),
            (
                "conquer_refused_total",
                "counter",
                "Connections the ventilator refused during the handshake.",
                status.refused,
            ),
            (
                "conquer_backups_total",
                "counter",
                "Backup tasks handed out for stragglers.",
                status.backups,
            ),
            (
                "conquer_chunks_cut_total",
                "counter",
                "Chunks whose workers yielded their unstarted items in the end game.",
                status.chunks_cut,
            ),
            (
                "conquer_items_handed_on_total",
                "counter",
                "Items of chunks cut in the end game, carved again for other workers.",
                status.items_handed_on,
            ),
            (
                "conquer_tasks_pending",
                "gauge",
                "Tasks waiting to be handed out.",
                status.pending as u64,
            ),
            (
                "conquer_tasks_in_flight",
                "gauge",
                "Tasks handed out and not yet held.",
                status.in_flight as u64,
            ),
            (
                "conquer_batch_tasks",
                "gauge",
                "Tasks in the batch (a divisible job: the chunks cut so far).",
                status.tasks as u64,
            ),
            (
                "conquer_job_items",
                "gauge",
                "A divisible job's items (0 for a task list).",
                status.items,
            ),
            (
                "conquer_job_items_held",
                "gauge",
                "Of a divisible job's items, those the sink holds.",
                status.items_held,
            ),
        ];
        for (name, kind, help, value) in single {
            head(&mut m, name, kind, help);
            let _ = writeln!(m, "{name} {value}");
        }
        head(&mut m, "conquer_workers", "gauge", "Workers by state.");
        for state in ["ready", "busy", "silent", "gone"] {
            let n = status.workers.iter().filter(|w| w.state == state).count();
            let _ = writeln!(m, "conquer_workers{{state=\"{state}\"}} {n}");
        }
        wire_metrics(
            &mut m,
            crate::protocol::sent_bytes(),
            crate::protocol::received_bytes(),
        );
        if let Some(side) = &status.sink {
            sink_metrics(&mut m, side);
        }
        histogram(
            &mut m,
            "conquer_task_latency_seconds",
            "From a task's last send to the sink holding its result.",
            &self.latency,
        );
        histogram(
            &mut m,
            "conquer_kernel_seconds",
            "Device time per task (0 on sleep workers).",
            &self.kernel,
        );
        // Per worker, bounded: those gone for a while are dropped.
        let shown: Vec<(&WorkerStatus, &Tally)> = status
            .workers
            .iter()
            .filter_map(|worker| Some((worker, self.tallies.get(worker.slot)?)))
            .filter(|(worker, t)| {
                // A gone worker is dropped after a while, and at once when a worker of the
                // same name took its place (the series would repeat).
                let replaced = status
                    .workers
                    .iter()
                    .any(|o| o.name == worker.name && o.slot > worker.slot);
                t.gone_at.is_none_or(|at| {
                    !replaced && now.saturating_duration_since(at) < FORGET_GONE_AFTER
                })
            })
            .collect();
        let per_worker: [WorkerSeries; 7] = [
            (
                "conquer_worker_tasks_total",
                "Tasks a worker finished.",
                |t| t.done.to_string(),
            ),
            (
                "conquer_worker_busy_seconds_total",
                "Wall time a worker spent on tasks.",
                |t| (t.busy_us as f64 / 1e6).to_string(),
            ),
            (
                "conquer_worker_kernel_seconds_total",
                "Device time a worker spent on tasks.",
                |t| (t.kernel_us as f64 / 1e6).to_string(),
            ),
            (
                "conquer_worker_input_bytes_total",
                "Task input bytes sent to a worker, uncompressed.",
                |t| t.input_bytes.to_string(),
            ),
            (
                "conquer_worker_input_wire_bytes_total",
                "Task input bytes sent to a worker, as they crossed the wire.",
                |t| t.input_wire_bytes.to_string(),
            ),
            (
                "conquer_worker_output_bytes_total",
                "Output bytes of the tasks a worker reported, uncompressed.",
                |t| t.output_bytes.to_string(),
            ),
            (
                "conquer_worker_dispatches_total",
                "Kernel dispatches a worker's tasks took on its device.",
                |t| t.dispatches.to_string(),
            ),
        ];
        for (name, help, value) in per_worker {
            head(&mut m, name, "counter", help);
            for (worker, tally) in &shown {
                let _ = writeln!(
                    m,
                    "{name}{{worker=\"{}\",backend=\"{}\",adapter=\"{}\"}} {}",
                    label(&worker.name),
                    label(&worker.backend),
                    // sleep and cpu run on no device: a label that says so, not "".
                    label(if worker.adapter.is_empty() {
                        "none"
                    } else {
                        &worker.adapter
                    }),
                    value(tally)
                );
            }
        }
        m
    }
}

/// The sink's side as it last told it: its results file, outputs, hits, verification and
/// picture.
fn sink_metrics(m: &mut String, side: &crate::protocol::SinkSide) {
    let counts = [
        (
            "conquer_sink_results_bytes",
            "gauge",
            "Bytes in the sink's results file.",
            side.results_bytes,
        ),
        (
            "conquer_sink_syncs_total",
            "counter",
            "Syncs of the sink's results file and outputs directory.",
            side.syncs,
        ),
        (
            "conquer_sink_outputs_written_total",
            "counter",
            "Output files the sink wrote in this run.",
            side.outputs_written,
        ),
        (
            "conquer_sink_hits",
            "gauge",
            "A search's hits the sink holds.",
            side.hits,
        ),
        (
            "conquer_sink_checked_total",
            "counter",
            "Results checked against the CPU reference (--verify).",
            side.checked,
        ),
        (
            "conquer_sink_mismatches_total",
            "counter",
            "Checked results that differed from the CPU reference.",
            side.mismatches,
        ),
    ];
    for (name, kind, help, value) in counts {
        head(m, name, kind, help);
        let _ = writeln!(m, "{name} {value}");
    }
    let seconds = [
        (
            "conquer_sink_sync_seconds_total",
            "counter",
            "Time the sink spent in those syncs.",
            side.sync_us,
        ),
        (
            "conquer_sink_sync_seconds_max",
            "gauge",
            "The longest of those syncs.",
            side.sync_max_us,
        ),
    ];
    for (name, kind, help, us) in seconds {
        head(m, name, kind, help);
        let _ = writeln!(m, "{name} {}", us as f64 / 1e6);
    }
    head(
        m,
        "conquer_sink_picture",
        "gauge",
        "Where the picture (--image) stands: 1 for its state.",
    );
    let _ = writeln!(
        m,
        "conquer_sink_picture{{state=\"{}\"}} 1",
        side.picture_state.as_str()
    );
}

/// A per-worker series: its name, help text, and how to read its value.
type WorkerSeries = (&'static str, &'static str, fn(&Tally) -> String);

/// Task inputs and outputs by direction, on the wire and uncompressed, and their ratio:
/// inputs as this process sent them (the ventilator), outputs as it received them (a sink
/// in the same process, as in `conquer run`; none for a ventilator alone).
fn wire_metrics(
    m: &mut String,
    sent: crate::protocol::WireBytes,
    received: crate::protocol::WireBytes,
) {
    head(
        m,
        "conquer_payload_bytes_total",
        "counter",
        "Task input bytes sent and output bytes received, on the wire (form=\"wire\", LZ4 when it pays) and uncompressed.",
    );
    let rows = [
        ("inputs", sent.inputs_wire, sent.inputs),
        ("outputs", received.outputs_wire, received.outputs),
    ];
    for (direction, wire, bytes) in rows {
        let _ = writeln!(
            m,
            "conquer_payload_bytes_total{{direction=\"{direction}\",form=\"wire\"}} {wire}"
        );
        let _ = writeln!(
            m,
            "conquer_payload_bytes_total{{direction=\"{direction}\",form=\"uncompressed\"}} {bytes}"
        );
    }
    head(
        m,
        "conquer_payload_compression_ratio",
        "gauge",
        "Uncompressed bytes over bytes on the wire, by direction (1 when raw, 0 before any).",
    );
    for (direction, wire, bytes) in rows {
        let ratio = if wire == 0 {
            0.0
        } else {
            bytes as f64 / wire as f64
        };
        let _ = writeln!(
            m,
            "conquer_payload_compression_ratio{{direction=\"{direction}\"}} {ratio:.3}"
        );
    }
}

fn head(m: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value escaped as the exposition format asks: backslash, quote, newline.
pub fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(m: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, count) in BUCKETS.iter().zip(h.counts) {
        cumulative += count;
        let _ = writeln!(m, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(m, "{name}_bucket{{le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(m, "{name}_sum {}", h.sum);
    let _ = writeln!(m, "{name}_count {}", h.count());
}

/// The farm as the page and `/api/status` show it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FarmStatus {
    pub batch: String,
    pub phase: String,
    pub tasks: usize,
    pub held: usize,
    pub pending: usize,
    pub in_flight: usize,
    pub elapsed_s: f64,
    /// Tasks held per second since the first was sent (only tasks sent in this run).
    pub tasks_per_s: f64,
    /// A divisible job's items (0 for a task list), those the sink holds, and items held
    /// per second since the first chunk was sent. A job's progress and `eta_s` count
    /// these; `tasks` and `held` are then the chunks cut so far.
    #[serde(default)]
    pub items: u64,
    #[serde(default)]
    pub items_held: u64,
    #[serde(default)]
    pub items_per_s: f64,
    /// Seconds left: a job's items left at its items' rate; a task list's nominal work
    /// left (`work_left_ms`) at the pace workers did work while busy, times the workers
    /// alive (absent before the first result).
    pub eta_s: Option<f64>,
    /// A task list's nominal work (ms of workload) not yet done.
    #[serde(default)]
    pub work_left_ms: u64,
    /// The batch is over with every task (or item) held.
    #[serde(default)]
    pub finished: bool,
    /// Busy time of all workers over the time each was there to work (since the first
    /// task was sent, until it left); absent until a worker has reported a task.
    pub efficiency: Option<f64>,
    pub ok: u64,
    pub failed: u64,
    pub duplicates: u64,
    pub redispatched: u64,
    pub rejected: u64,
    pub refused: u64,
    pub backups: u64,
    /// A divisible job's chunks cut in the end game, and the items they handed on to
    /// other workers (done once, not twice).
    #[serde(default)]
    pub chunks_cut: u64,
    #[serde(default)]
    pub items_handed_on: u64,
    /// Workers alive now.
    pub alive: usize,
    pub workers: Vec<WorkerStatus>,
    /// The stream's clock: seconds since the observer started.
    pub now_s: f64,
    pub window_s: f64,
    /// Task bars of the last `window_s` seconds; `worker` indexes `workers`.
    pub bars: Vec<BarView>,
    /// Throughput and latency over time, oldest first, about two a second.
    #[serde(default)]
    pub series: Vec<Sample>,
    /// The sink's side (results file, outputs, hits, verification, picture), as it last
    /// told it; absent until it has.
    #[serde(default)]
    pub sink: Option<crate::protocol::SinkSide>,
    /// A coordinator's jobs (`conquer serve --http`), oldest first; absent for one batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobStatus>,
}

/// A job on a coordinator, as its live view lists it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub name: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    pub priority: u32,
    /// Its tasks (a divisible job's items) and those held so far.
    pub tasks: u64,
    pub held: u64,
    /// Workers serving it now.
    pub workers: usize,
    /// Seconds since it started (to its end, once over); absent while queued.
    pub elapsed_s: Option<f64>,
    pub eta_s: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The last status a job's ventilator observed, for its coordinator to read: where a
/// standalone ventilator publishes to its own live view, a coordinator's job publishes
/// here, and the coordinator shows its jobs together.
#[derive(Debug, Default)]
pub struct Board {
    latest: std::sync::Mutex<Option<std::sync::Arc<FarmStatus>>>,
}

impl Board {
    pub fn put(&self, status: FarmStatus) {
        let status = std::sync::Arc::new(status);
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(status);
        }
    }

    pub fn get(&self) -> Option<std::sync::Arc<FarmStatus>> {
        self.latest.lock().ok()?.clone()
    }
}

/// Throughput and latency between one status and the one before.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds since the observer started (the stream's clock).
    pub t_s: f64,
    /// Tasks (a job's items) held per second.
    pub per_s: f64,
    /// Median and 95th percentile of the latency of tasks held in the interval (send to
    /// held), in ms, interpolated within the histogram's doubling buckets; absent when
    /// none was held.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WorkerStatus {
    /// The dispatcher's slot: what the metrics pair it with.
    #[serde(skip)]
    slot: usize,
    pub name: String,
    /// Where its connection comes from.
    pub address: String,
    pub backend: String,
    pub adapter: String,
    /// `ready`, `busy`, `silent` or `gone`; on a coordinator's page, `job N` for a worker
    /// that left the job shown to serve job N.
    pub state: String,
    pub done: u64,
    pub failed: u64,
    /// Tasks it holds now.
    pub holding: u32,
    /// Share of the time it was there (since the first send, until it left) spent on
    /// tasks; absent until it has reported one.
    pub busy_share: Option<f64>,
    pub kernel_ms: f64,
    /// Share of the time it was there that its device ran its kernels (absent without
    /// device time: sleep and cpu workers).
    #[serde(default)]
    pub device_share: Option<f64>,
    /// Items in the chunks it finished (a task list's tasks, as one item each), and
    /// those over its busy time.
    #[serde(default)]
    pub items: u64,
    #[serde(default)]
    pub items_per_s: f64,
    /// Task input bytes sent to it (a data batch's), uncompressed and on the wire.
    #[serde(default)]
    pub input_bytes: u64,
    #[serde(default)]
    pub input_wire_bytes: u64,
    /// Output bytes of the tasks it reported, uncompressed.
    #[serde(default)]
    pub output_bytes: u64,
    /// Kernel dispatches its tasks took on its device (0 on `cpu` and `sleep`).
    #[serde(default)]
    pub dispatches: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BarView {
    pub worker: WorkerId,
    pub start_s: f64,
    pub end_s: f64,
    pub status: BarStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(id: u32) -> Done {
        Done {
            id,
            status: Status::Ok,
            wall_us: 1000,
            kernel_us: 10,
            items: 0,
            ..Done::default()
        }
    }

    #[test]
    fn a_task_is_held_once_however_often_the_sink_says_so() {
        let t0 = Instant::now();
        let mut o = Observer::new(4, t0);
        o.sent(t0 + Duration::from_millis(1), 0, [0, 1].into_iter());
        o.held(t0 + Duration::from_millis(5), &[0, 1]);
        // A restarted sink lists what it holds again; a resumed one, tasks never sent.
        o.held(t0 + Duration::from_millis(9), &[0, 1, 2]);
        assert_eq!((o.held_count, o.held_sent), (3, 2));
        assert_eq!(o.latency.count(), 2);
        o.held(t0, &[7]); // an id past the batch: ignored
        assert_eq!(o.held_count, 3);
    }

    #[test]
    fn only_a_lost_workers_attempt_shows_as_redispatched() {
        let t0 = Instant::now();
        let mut o = Observer::new(2, t0);
        let t = |ms| t0 + Duration::from_millis(ms);
        o.sent(t(1), 0, [0, 1].into_iter());
        // A backup of task 0 while worker 0 still runs it: no redispatched bar.
        o.sent(t(2), 1, [0].into_iter());
        assert!(o.bars.iter().all(|b| b.status != BarStatus::Redispatched));
        // Worker 0 is lost after a report of task 0, before one of task 1: its attempt at
        // task 1 is redispatched when the dispatcher says so; task 0's report counts.
        o.done(t(3), 0, &[done(0)], &[0]);
        o.observed(t(3), Observed::Lost { worker: 0 });
        o.sent(t(3), 1, [1].into_iter());
        let redispatched: Vec<&Bar> = o
            .bars
            .iter()
            .filter(|b| b.status == BarStatus::Redispatched)
            .collect();
        assert_eq!(redispatched.len(), 1);
        assert_eq!(redispatched[0].worker, 0);
        // Task 0 counts for whichever of its two workers reports it first (worker 0, still
        // running it), the other's report is a duplicate; task 1 for worker 1.
        o.done(t(5), 1, &[done(0), done(1)], &[0, 0]);
        assert_eq!((o.ok, o.duplicates), (2, 1));
        assert_eq!((o.tallies[0].done, o.tallies[1].done), (1, 1));
    }

    /// A task list of `tasks` tasks of 10 ms, and workers greeted in the order given.
    fn farm(tasks: u32, names: &[&str], now: Instant) -> crate::dispatch::Dispatcher {
        use crate::dispatch::{DispatchConfig, Event};
        let config = DispatchConfig {
            batch_id: 7,
            session: 1,
            tasks: (0..tasks)
                .map(|id| crate::batch::Task {
                    id,
                    workload_ms: 10,
                    ..Default::default()
                })
                .collect(),
            order: (0..tasks).collect(),
            job: crate::batch::Job::default(),
            expected_ms: u64::from(tasks) * 10,
            longest_ms: 10,
            wait_workers: 0,
            wait_timeout: Duration::from_secs(60),
            window: 2,
            max_window: 2,
            heartbeat: crate::heartbeat::Heartbeat::default(),
            backup: Default::default(),
            sink_timeout: Duration::from_secs(60),
            resume: false,
            shutdown_workers: false,
            endpoint: "tcp://test:1".into(),
            sink: "tcp://test:2".into(),
            fixed_workers: 0,
            chunking: None,
            max_attempts: 3,
            names: Vec::new(),
            observe: true,
            framing: Default::default(),
        };
        let mut d = crate::dispatch::Dispatcher::new(config, now, 0);
        let mut out = Vec::new();
        for name in names {
            let info = crate::protocol::WorkerInfo {
                name: (*name).into(),
                session: 1,
                backend: "gpu".into(),
                adapter: "card".into(),
                window_hint: 2,
                codecs: 0,
                fill: 0,
            };
            let message = crate::protocol::Message::Hello(info);
            let routing_id = name.as_bytes().to_vec();
            d.handle(
                now,
                Event::FromWorker {
                    routing_id,
                    message,
                },
                &mut out,
            );
        }
        d
    }

    #[test]
    fn workers_are_listed_by_name_with_their_lanes_and_device_share() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let d = farm(4, &["zeta", "alpha", "mid"], t0);
        let slot = |name: &str| d.worker_id(name.as_bytes()).unwrap();
        let mut o = Observer::new(4, t0);
        // The live view looks every half second: the first look sees the workers arrive.
        o.status(t0, &d.snapshot(), Duration::from_secs(1));
        o.sent(t(0), slot("zeta"), [0].into_iter());
        o.input_sent(slot("zeta"), 4096, 1024);
        o.sent(t(0), slot("alpha"), [1].into_iter());
        // A device's tasks say their dispatches; every task its output's bytes.
        let report = |id, kernel_us| Done {
            id,
            status: Status::Ok,
            wall_us: 400_000,
            kernel_us,
            items: 0,
            dispatches: if kernel_us > 0 { 64 } else { 0 },
            output_bytes: 3000,
        };
        o.done(t(500), slot("zeta"), &[report(0, 250_000)], &[0]);
        o.done(t(500), slot("alpha"), &[report(1, 0)], &[0]);
        let s = o.status(t(1000), &d.snapshot(), Duration::from_secs(1));
        let names: Vec<&str> = s.workers.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
        // Each bar's lane is its worker's row.
        let lanes: Vec<&str> = s
            .bars
            .iter()
            .map(|b| s.workers[b.worker as usize].name.as_str())
            .collect();
        assert_eq!(lanes, ["zeta", "alpha"]);
        // Device time over the time it was there (from the first send): 0.25 of 1 s.
        assert_eq!(s.workers[2].device_share, Some(0.25));
        assert_eq!(s.workers[0].device_share, None);
        // The metrics still pair each worker with its own counts.
        let m = o.metrics(t(1000), &s);
        assert!(m.contains("conquer_chunks_cut_total 0"), "{m}");
        // Chunks cut in the end game, as the dispatcher counts them.
        let mut cut = d.snapshot();
        cut.counters.chunks_cut = 3;
        cut.counters.items_handed_on = 70;
        let after = o.status(t(1000), &cut, Duration::from_secs(1));
        assert_eq!((after.chunks_cut, after.items_handed_on), (3, 70));
        let cut_metrics = o.metrics(t(1000), &after);
        assert!(
            cut_metrics.contains("conquer_chunks_cut_total 3"),
            "{cut_metrics}"
        );
        assert!(cut_metrics.contains("conquer_items_handed_on_total 70"));
        assert!(
            m.contains("conquer_worker_kernel_seconds_total{worker=\"zeta\",backend=\"gpu\",adapter=\"card\"} 0.25"),
            "{m}"
        );
        assert!(m.contains(
            "conquer_worker_kernel_seconds_total{worker=\"alpha\",backend=\"gpu\",adapter=\"card\"} 0"
        ));
        // The bytes each moved in: its inputs, uncompressed and on the wire.
        assert_eq!(
            (s.workers[2].input_bytes, s.workers[2].input_wire_bytes),
            (4096, 1024)
        );
        assert_eq!(s.workers[0].input_bytes, 0);
        assert!(m.contains(
            "conquer_worker_input_wire_bytes_total{worker=\"zeta\",backend=\"gpu\",adapter=\"card\"} 1024"
        ));
        // And out: the outputs reported, and the dispatches their kernels took.
        assert_eq!(
            (s.workers[2].output_bytes, s.workers[2].dispatches),
            (3000, 64)
        );
        assert_eq!(
            (s.workers[0].output_bytes, s.workers[0].dispatches),
            (3000, 0)
        );
        assert!(m.contains(
            "conquer_worker_dispatches_total{worker=\"zeta\",backend=\"gpu\",adapter=\"card\"} 64"
        ));
        assert!(m.contains(
            "conquer_worker_output_bytes_total{worker=\"alpha\",backend=\"gpu\",adapter=\"card\"} 3000"
        ));
    }

    #[test]
    fn throughput_and_latency_are_sampled_over_time() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let d = farm(8, &["a"], t0);
        let mut o = Observer::new(8, t0);
        // Nothing sent yet: no basis, no sample.
        o.status(t(100), &d.snapshot(), Duration::from_secs(1));
        o.sent(t(200), 0, 0..8);
        o.status(t(200), &d.snapshot(), Duration::from_secs(1));
        // Four held in the next half second, 3 ms after their send (the 2-4 ms bucket).
        o.held(t(203), &[0, 1, 2, 3]);
        // Too soon for a sample.
        assert!(o
            .status(t(300), &d.snapshot(), Duration::from_secs(1))
            .series
            .is_empty());
        let s = o.status(t(700), &d.snapshot(), Duration::from_secs(1));
        assert_eq!(s.series.len(), 1);
        let first = s.series[0];
        assert_eq!((first.t_s, first.per_s), (0.7, 8.0));
        assert_eq!(first.p50_ms, Some(3.0));
        // A quiet interval: no rate and no latency.
        let s = o.status(t(1200), &d.snapshot(), Duration::from_secs(1));
        assert_eq!(s.series[1].per_s, 0.0);
        assert_eq!(s.series[1].p95_ms, None);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let mut counts = [0u64; BUCKETS.len() + 1];
        assert_eq!(quantile(&counts, 0.5), None);
        counts[0] = 10;
        assert_eq!(quantile(&counts, 0.5), Some(0.0005));
        counts[1] = 10;
        // The 15th of 20 is half way through the 1-2 ms bucket.
        assert_eq!(quantile(&counts, 0.75), Some(0.0015));
        // Past every bound: the last bound.
        counts[BUCKETS.len()] = 100;
        assert_eq!(quantile(&counts, 0.99), BUCKETS.last().copied());
    }

    #[test]
    fn the_page_says_writing_picture_and_is_not_finished_until_it_is_written() {
        use crate::protocol::{PictureState, SinkSide};
        let t0 = Instant::now();
        let d = farm(1, &["a"], t0);
        let mut o = Observer::new(1, t0);
        let side = |picture_state| SinkSide {
            results: "r.csv".into(),
            picture: "m.png".into(),
            picture_state,
            ..SinkSide::default()
        };
        o.sink_side(&side(PictureState::Writing));
        let s = o.status(t0, &d.snapshot(), Duration::from_secs(1));
        assert_eq!(s.phase, "writing picture");
        assert!(!o.files_done());
        assert_eq!(s.sink.as_ref().map(|k| k.results.as_str()), Some("r.csv"));
        let m = o.metrics(t0, &s);
        assert!(
            m.contains("conquer_sink_picture{state=\"writing\"} 1"),
            "{m}"
        );
        o.sink_side(&side(PictureState::Written));
        assert!(o.files_done());
        let s = o.status(t0, &d.snapshot(), Duration::from_secs(1));
        assert_eq!(s.phase, d.phase_name());
    }

    #[test]
    fn buckets_hold_what_their_bounds_say() {
        for (us, bucket) in [
            (0, 0),
            (1000, 0),
            (1001, 1),
            (2000, 1),
            (2001, 2),
            (4000, 2),
            (131_072_000, 17),
        ] {
            let mut h = Histogram::default();
            h.observe_us(us);
            assert_eq!(h.counts[bucket], 1, "{us} µs");
            assert!(us as f64 / 1e6 <= BUCKETS[bucket]);
            assert!(bucket == 0 || us as f64 / 1e6 > BUCKETS[bucket - 1]);
        }
        let mut h = Histogram::default();
        h.observe_us(131_072_001);
        assert_eq!((h.over, h.count()), (1, 1));
    }

    #[test]
    fn payload_bytes_are_exposed_by_direction_and_form_with_their_ratio() {
        let mut m = String::new();
        let sent = crate::protocol::WireBytes {
            inputs_wire: 1000,
            inputs: 50_000,
            ..Default::default()
        };
        let received = crate::protocol::WireBytes {
            outputs_wire: 300,
            outputs: 300,
            ..Default::default()
        };
        wire_metrics(&mut m, sent, received);
        for line in [
            "conquer_payload_bytes_total{direction=\"inputs\",form=\"wire\"} 1000",
            "conquer_payload_bytes_total{direction=\"inputs\",form=\"uncompressed\"} 50000",
            "conquer_payload_bytes_total{direction=\"outputs\",form=\"wire\"} 300",
            "conquer_payload_compression_ratio{direction=\"inputs\"} 50.000",
            "conquer_payload_compression_ratio{direction=\"outputs\"} 1.000",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing from {m}");
        }
    }
}
