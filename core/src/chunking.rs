//! Divisible jobs: one job of N items carved, while it runs, into chunks sized to each
//! worker's measured speed.
//!
//! A [`Carver`] holds the items not yet handed out (a few ranges: the whole job at first,
//! and the gaps a resumed sink leaves) and answers one question: how many items should this
//! worker get now? The answer is a [`Policy`]:
//!
//! - `static`: an equal split, one chunk per worker (the size fixed from the workers there
//!   at the first carve; a tail given back in the end game is shared by rate, at most a
//!   worker's share of half of what is left);
//! - `fixed`: chunks of one size (`--chunk-items`, else an eighth of an equal split);
//! - `adaptive`: a small probe first; then chunks sized to take `--chunk-ms` at the
//!   worker's measured rate (growing at most twofold from one chunk to the next), shrinking
//!   toward the end by weighted factoring (a worker's chunk is at most its share, by rate,
//!   of half of what is left: Hummel et al.'s factoring with Cariño and Banicescu's
//!   weights), so every worker finishes within about one small chunk of the others.
//!
//! Rates are items per second, measured from the wall time a worker reports for each chunk
//! and smoothed so that long chunks weigh more than short ones. No socket, clock or thread:
//! the dispatcher feeds it, the simulator and tests drive it directly.

use std::collections::BTreeMap;
use std::time::Duration;

/// How chunks are sized (`--chunking`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// One equal chunk per worker.
    Static,
    /// Chunks of this many items (0: an eighth of an equal split).
    Fixed(u64),
    /// Chunks that take this long at each worker's measured rate, shrinking at the end.
    Adaptive(Duration),
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Static => "static",
            Policy::Fixed(_) => "fixed",
            Policy::Adaptive(_) => "adaptive",
        }
    }
}

/// A divisible job as the carver sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub policy: Policy,
    /// Items in the job.
    pub items: u64,
    /// Most items in one chunk: what one task message, output or kernel dispatch can take.
    pub max_chunk: u32,
    /// What an item is expected to cost at nominal speed, in µs (a sleep job's
    /// `--item-us`); 0 when unknown (computed kernels). It sizes no chunk (a worker's own
    /// rate does); the dispatcher uses it to expect a first chunk's duration.
    pub nominal_us: f64,
}

/// A probe is a ten-thousandth of an equal share of the job, at least one item: a worker a
/// hundred times slower than the others then spends about 1 % of the job's time on it.
const PROBE_FRACTION: u64 = 10_000;

/// Chunks never shrink below this fraction of `--chunk-ms` at the worker's rate: the
/// factoring tail stops where a round trip would start to cost more than the balance gains.
const MIN_CHUNK_FRACTION: f64 = 1.0 / 32.0;

/// A worker's measured speed: items and µs of its recent chunks, decayed by half per
/// chunk, so the rate is a time-weighted mean that follows a worker that changes speed.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    items: f64,
    us: f64,
    /// Items of its last chunk: the next is at most [`GROWTH`] times as large (three items
    /// after a one-item chunk, which two could not stretch across a one-item hole), so a rate
    /// measured on cheap items (the edge of a picture) is not bet on expensive ones all
    /// at once.
    last: u64,
}

/// A worker's next chunk is queued behind the one it holds only while the job has at
/// least this many `--chunk-ms` left at the farm's pace.
const AHEAD_TARGETS: f64 = 8.0;

/// Chunks are queued ahead only on a farm whose workers' rates are within this factor.
const EVEN_FARM: f64 = 2.0;

/// How much larger than its last chunk a worker's next chunk may be.
const GROWTH: u64 = 2;

impl Rate {
    fn per_s(&self) -> Option<f64> {
        (self.us > 0.0).then(|| self.items * 1e6 / self.us)
    }
}

/// The workers that may take chunks, and their measured rates in order: what sizing a
/// chunk asks of the farm (how many, the slowest and fastest measured, their sum), kept
/// as workers join, leave and report, so a carve costs O(log workers), not a pass over
/// them.
#[derive(Debug, Clone, Default)]
struct Farm {
    /// By worker slot.
    live: Vec<bool>,
    count: usize,
    /// Live workers' measured rates (items per second, as bits: positive floats order as
    /// their bits do), each with how many have it.
    known: BTreeMap<u64, u32>,
    known_count: usize,
    known_sum: f64,
}

impl Farm {
    fn is_live(&self, worker: usize) -> bool {
        self.live.get(worker).copied().unwrap_or(false)
    }

    fn add_rate(&mut self, rate: f64) {
        *self.known.entry(rate.to_bits()).or_insert(0) += 1;
        self.known_count += 1;
        self.known_sum += rate;
    }

    fn remove_rate(&mut self, rate: f64) {
        if let Some(n) = self.known.get_mut(&rate.to_bits()) {
            *n -= 1;
            if *n == 0 {
                self.known.remove(&rate.to_bits());
            }
            self.known_count -= 1;
            // Sums of floats drift as they are added and taken away: none left, none owed.
            self.known_sum = if self.known_count == 0 {
                0.0
            } else {
                self.known_sum - rate
            };
        }
    }

    fn slowest(&self) -> f64 {
        self.known
            .keys()
            .next()
            .map_or(f64::INFINITY, |&b| f64::from_bits(b))
    }

    /// Whether more than one live worker is measured at `rate` or faster; looks at the
    /// fastest two at most (a chunk is sent in O(log workers)).
    fn several_at_least(&self, rate: f64) -> bool {
        let mut seen = 0;
        for (_, &n) in self.known.range(rate.max(0.0).to_bits()..).rev() {
            seen += n;
            if seen > 1 {
                return true;
            }
        }
        false
    }

    fn fastest(&self) -> f64 {
        self.known
            .keys()
            .next_back()
            .map_or(0.0, |&b| f64::from_bits(b))
    }

    /// The farm's rate: measured workers at their rates, the rest at the slowest measured
    /// (their share is then not given away to the fast); at least `rate`.
    fn total_rate(&self, rate: f64) -> f64 {
        let unmeasured = (self.count - self.known_count) as f64;
        let slowest = self.slowest();
        let guessed = if unmeasured > 0.0 {
            unmeasured * slowest
        } else {
            0.0
        };
        (self.known_sum + guessed).max(rate)
    }
}

/// What is left of a job and how fast each worker eats it.
#[derive(Debug, Clone)]
pub struct Carver {
    plan: Plan,
    /// Items not handed out yet: start to end of each range, in order (a B-tree, so taking
    /// out what a sink holds costs O(log n) per range, however fragmented the job).
    free: BTreeMap<u64, u64>,
    left: u64,
    /// By worker slot (the dispatcher's ids).
    rates: Vec<Rate>,
    farm: Farm,
    /// The size of every chunk under `static` and `fixed`, fixed at the first carve.
    size: Option<u64>,
    carved: u64,
    /// Where ranges given back begin and end: a chunk never reaches across one into the
    /// next free range (what lies between is out with other workers, not held).
    fences: std::collections::BTreeSet<u64>,
    /// By worker slot: the fewest items of an adaptive chunk, the items that fill its
    /// device (0 for a worker without one).
    floors: Vec<u64>,
}

impl Carver {
    pub fn new(plan: Plan) -> Carver {
        let free = if plan.items > 0 {
            BTreeMap::from([(0, plan.items)])
        } else {
            BTreeMap::new()
        };
        Carver {
            left: plan.items,
            plan,
            free,
            rates: Vec::new(),
            farm: Farm::default(),
            size: None,
            carved: 0,
            fences: std::collections::BTreeSet::new(),
            floors: Vec::new(),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Items not handed out yet.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Chunks carved so far.
    pub fn carved(&self) -> u64 {
        self.carved
    }

    /// A worker's measured rate in items per second, once it finished a chunk.
    pub fn rate(&self, worker: usize) -> Option<f64> {
        self.rates.get(worker).and_then(Rate::per_s)
    }

    /// `worker` may take chunks: it joined, or came back.
    pub fn join(&mut self, worker: usize) {
        if self.farm.is_live(worker) {
            return;
        }
        if self.farm.live.len() <= worker {
            self.farm.live.resize(worker + 1, false);
        }
        self.farm.live[worker] = true;
        self.farm.count += 1;
        if let Some(rate) = self.rate(worker) {
            self.farm.add_rate(rate);
        }
    }

    /// `worker`'s device runs near its full rate only on `items` or more at once (a GPU's
    /// fill, in the job's items): its adaptive chunks, probes included, are no smaller.
    /// Below that a chunk's time is launches and round trips, and the rate measured on it
    /// undersells the device.
    pub fn set_floor(&mut self, worker: usize, items: u64) {
        if self.floors.len() <= worker {
            self.floors.resize(worker + 1, 0);
        }
        self.floors[worker] = items;
    }

    /// `worker` takes no more chunks: it is gone.
    pub fn leave(&mut self, worker: usize) {
        if !self.farm.is_live(worker) {
            return;
        }
        self.farm.live[worker] = false;
        self.farm.count -= 1;
        if let Some(rate) = self.rate(worker) {
            self.farm.remove_rate(rate);
        }
    }

    /// Workers that may take chunks.
    pub fn workers(&self) -> usize {
        self.farm.count
    }

    /// Whether `worker` is the farm's fastest by a clear margin: measured, live, and no
    /// other live worker measured at more than `1 / margin` of its rate.
    pub fn clearly_fastest(&self, worker: usize, margin: f64) -> bool {
        self.farm.is_live(worker)
            && self
                .rate(worker)
                .is_some_and(|rate| !self.farm.several_at_least(rate / margin))
    }

    /// Takes items out of what is left without carving them (a resumed sink holds them).
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // The free range that starts before `start` and reaches into it, and those that
        // start within it.
        let before = self
            .free
            .range(..start)
            .next_back()
            .filter(|(_, &b)| b > start)
            .map(|(&a, &b)| (a, b));
        let within: Vec<(u64, u64)> = self.free.range(start..end).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in before.into_iter().chain(within) {
            self.free.remove(&a);
            self.left -= b.min(end) - a.max(start);
            if a < start {
                self.free.insert(a, start);
            }
            if b > end {
                self.free.insert(end, b);
            }
        }
    }

    /// Items handed out before come back to be carved again (the tail a worker gave up):
    /// `start..end` must not overlap what is free.
    pub fn give_back(&mut self, start: u64, end: u64) {
        self.give_back_tail(&[(start, end)]);
    }

    /// The ranges of one tail come back, in order (a chunk's items after its cut, less
    /// those the sink holds): fenced at the tail's two ends only, so a chunk carved from it
    /// never reaches into a chunk out beside it, yet may cross the items held inside it as
    /// any chunk crosses a short gap (fenced at every gap, a tail over one-item holes would
    /// be carved one item a chunk). No range may overlap what is free.
    pub fn give_back_tail(&mut self, ranges: &[(u64, u64)]) {
        let ranges: Vec<(u64, u64)> = ranges.iter().copied().filter(|&(a, b)| a < b).collect();
        let (Some(&(start, _)), Some(&(_, end))) = (ranges.first(), ranges.last()) else {
            return;
        };
        for &(a, b) in &ranges {
            debug_assert!(
                self.free
                    .range(..b)
                    .next_back()
                    .is_none_or(|(_, &e)| e <= a),
                "items {a}..{b} given back overlap free ones"
            );
            self.free.insert(a, b);
            self.left += b - a;
        }
        self.fences.insert(start);
        self.fences.insert(end);
    }

    /// What is left to carve, replaced (after a sink restart, from what it holds and what
    /// is out).
    pub fn set_free(&mut self, free: &[(u64, u64)]) {
        self.free = free.iter().copied().filter(|&(a, b)| a < b).collect();
        self.left = self.free.iter().map(|(&a, &b)| b - a).sum();
    }

    /// A chunk finished: `items` in `wall_us` on `worker`.
    pub fn learn(&mut self, worker: usize, items: u32, wall_us: u32) {
        if items == 0 {
            return;
        }
        if self.rates.len() <= worker {
            self.rates.resize(worker + 1, Rate::default());
        }
        let live = self.farm.is_live(worker);
        if let (true, Some(old)) = (live, self.rate(worker)) {
            self.farm.remove_rate(old);
        }
        let r = &mut self.rates[worker];
        r.last = u64::from(items);
        r.items = r.items * 0.5 + f64::from(items);
        r.us = r.us * 0.5 + f64::from(wall_us.max(1));
        if let (true, Some(new)) = (live, self.rate(worker)) {
            self.farm.add_rate(new);
        }
    }

    /// The next chunk for `worker`, `(first item, items)`, or `None` when nothing is left.
    /// The farm is the workers that [joined](Carver::join) and did not leave; `worker`
    /// counts among them.
    ///
    /// A chunk starts at the first free item and spans at most the size the policy wants.
    /// It reaches across an item range that is not free (held at the sink, or out) to the
    /// next free one only while that gap is no longer than the free items it has taken, so
    /// at most half of a chunk is work done before, and a job cut into many small pieces
    /// (by ranges a peer invented, say) is still carved into chunks of useful size.
    pub fn carve(&mut self, worker: usize) -> Option<(u64, u32)> {
        let (&start, _) = self.free.iter().next()?;
        let want = self
            .size_for(worker)
            .clamp(1, u64::from(self.plan.max_chunk.max(1)));
        let (mut at, mut taken) = (start, 0u64);
        while let Some((&a, &b)) = self.free.range(at..).next() {
            let fenced = a > at && self.fences.range(at..=a).next().is_some();
            if a - start >= want || (taken > 0 && (a - at > taken || fenced)) {
                break;
            }
            let take = (b - a).min(want - (a - start));
            self.free.remove(&a);
            if a + take < b {
                self.free.insert(a + take, b);
            }
            taken += take;
            at = a + take;
        }
        self.left -= taken;
        self.carved += 1;
        Some((start, (at - start) as u32))
    }

    /// Items `worker` should get now under the policy.
    fn size_for(&mut self, worker: usize) -> u64 {
        let n = self.n(worker);
        let size = match self.plan.policy {
            Policy::Static => *self.size.get_or_insert(self.plan.items.div_ceil(n)),
            Policy::Fixed(items) => *self.size.get_or_insert(if items > 0 {
                items
            } else {
                self.plan.items.div_ceil(8 * n)
            }),
            Policy::Adaptive(target) => return self.adaptive(worker, target),
        };
        // Under `static`, tails given back in the end game are shared by rate: one carved
        // whole (an equal split's size) for the idle worker is the next idle worker's to
        // ask back (on a 1/2/4/8 farm, tails went back and forth between workers). A
        // `fixed` chunk is small already.
        let fixed = matches!(self.plan.policy, Policy::Fixed(_));
        match (fixed || self.fences.is_empty(), self.rate(worker)) {
            (false, Some(rate)) => {
                let share = self.left as f64 * rate / (2.0 * self.farm.total_rate(rate));
                size.min((share as u64).max(1))
            }
            _ => size,
        }
    }

    /// Whether `worker`, holding a chunk, may be carved its next one now, to queue behind
    /// it (pipelined: the worker never idles for a round trip between chunks). Only under
    /// `adaptive`, on a farm whose measured workers all run within twice each other's rate,
    /// and while the job has at least eight chunk times left at the farm's pace. Near the
    /// end chunks shrink and one in hand is enough; and beside much slower workers a second
    /// chunk in hand is a second chance to hold dear items at the end, which measured worse
    /// than the round trip it saves. A worker alone queues to the end: no other could take
    /// the items it holds, and each round trip is time it idles.
    pub fn may_queue(&self, worker: usize) -> bool {
        let Policy::Adaptive(target) = self.plan.policy else {
            return false;
        };
        let Some(rate) = self.rate(worker) else {
            return false;
        };
        let farm = &self.farm;
        let alone = farm.count == 1 && farm.is_live(worker);
        farm.known_count == farm.count
            && farm.slowest() * EVEN_FARM >= farm.fastest()
            && (alone
                || self.left as f64 / farm.total_rate(rate) >= AHEAD_TARGETS * target.as_secs_f64())
    }

    /// Workers in the farm, `worker` counted if it did not join: at least one.
    fn n(&self, worker: usize) -> u64 {
        let outside = usize::from(!self.farm.is_live(worker));
        (self.farm.count + outside).max(1) as u64
    }

    fn adaptive(&self, worker: usize, target: Duration) -> u64 {
        let target_s = target.as_secs_f64().max(1e-3);
        // A device's fill, but never past half an equal share of what is left: a fill
        // measured long (wall time on an adapter without timestamps) or claimed by a
        // peer must not take the job from the others, nor the end its weighted factoring.
        let fill = self
            .floors
            .get(worker)
            .copied()
            .unwrap_or(0)
            .min(self.left.div_ceil(2 * self.n(worker)));
        let Some(rate) = self.rate(worker) else {
            // A probe: a sliver of an equal share, whatever an item is said to cost (a
            // worker may be a hundred times slower than nominal, and its probe must not
            // outlast the job). The chunks after it grow to the target at the rate it
            // measures, doubling at most (from one item, to three), so a tiny probe costs a
            // few round trips.
            return (self.left / (PROBE_FRACTION * self.n(worker)))
                .max(fill)
                .max(1);
        };
        let total_rate = self.farm.total_rate(rate);
        let by_time = rate * target_s;
        let share = self.left as f64 * rate / (2.0 * total_rate);
        let floor = rate * target_s * MIN_CHUNK_FRACTION;
        let size = by_time.min(share).max(floor).max(1.0) as u64;
        let last = self.rates.get(worker).map_or(1, |r| r.last.max(1));
        // After a one-item chunk (a probe handed on, or one cut by one-item holes), two
        // items would not reach across a hole to the next free item: each chunk would be
        // one item again, and one-item holes would shred the job into as many chunks.
        let growth_cap = last.saturating_mul(GROWTH).max(GROWTH + 1);
        size.min(growth_cap).max(fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(policy: Policy, items: u64) -> Plan {
        Plan {
            policy,
            items,
            max_chunk: u32::MAX,
            nominal_us: 0.0,
        }
    }

    /// Runs a farm of workers of the given speeds (items per second) in virtual time: each
    /// asks for a chunk when idle. Returns (makespan, ideal, chunks, every chunk).
    fn simulate(policy: Policy, items: u64, speeds: &[f64]) -> (f64, f64, u64, Vec<(u64, u32)>) {
        let mut carver = Carver::new(plan(policy, items));
        (0..speeds.len()).for_each(|w| carver.join(w));
        let mut free_at = vec![0.0f64; speeds.len()];
        let mut chunks = Vec::new();
        loop {
            // The worker idle first asks next.
            let (w, &t) = free_at
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .expect("workers");
            let Some((first, n)) = carver.carve(w) else {
                break;
            };
            let secs = f64::from(n) / speeds[w];
            carver.learn(w, n, (secs * 1e6) as u32);
            free_at[w] = t + secs;
            chunks.push((first, n));
        }
        let makespan = free_at.iter().copied().fold(0.0, f64::max);
        let ideal = items as f64 / speeds.iter().sum::<f64>();
        (makespan, ideal, carver.carved(), chunks)
    }

    #[test]
    fn adaptive_balances_a_farm_of_unequal_workers() {
        let speeds = [8000.0, 4000.0, 2000.0, 1000.0];
        let (makespan, ideal, chunks, _) = simulate(
            Policy::Adaptive(Duration::from_millis(200)),
            1_000_000,
            &speeds,
        );
        assert!(ideal / makespan > 0.97, "efficiency {}", ideal / makespan);
        // Far fewer chunks than items: a chunk is hundreds of milliseconds of work.
        assert!(chunks < 2000, "{chunks} chunks");
        let (makespan, ideal, _, _) = simulate(Policy::Static, 1_000_000, &speeds);
        assert!(
            ideal / makespan < 0.6,
            "static is not balanced: {}",
            ideal / makespan
        );
    }

    #[test]
    fn a_worker_a_hundred_times_slower_costs_little() {
        let (makespan, ideal, _, _) = simulate(
            Policy::Adaptive(Duration::from_millis(200)),
            2_000_000,
            &[100_000.0, 1000.0],
        );
        assert!(ideal / makespan > 0.95, "efficiency {}", ideal / makespan);
    }

    #[test]
    fn under_static_a_tail_given_back_is_shared_by_rate_not_carved_whole() {
        let mut c = Carver::new(plan(Policy::Static, 1000));
        c.join(0);
        c.join(1);
        assert_eq!(c.carve(0), Some((0, 500)));
        assert_eq!(c.carve(1), Some((500, 500)));
        // Worker 0 three times as fast as worker 1.
        c.learn(0, 100, 1_000);
        c.learn(1, 100, 3_000);
        // Worker 1 yields the 400 items it has not started: the idle worker 0 gets its
        // share by rate of half of them, 150, not all 400 (which worker 1, idle next,
        // would ask back).
        c.give_back(600, 1000);
        assert_eq!(c.carve(0), Some((600, 150)));
        // And worker 1 its share of half of the 250 left: 31.
        assert_eq!(c.carve(1), Some((750, 31)));
    }

    #[test]
    fn a_tail_given_back_over_one_item_holes_is_carved_in_chunks_of_useful_size() {
        // A chunk of 0..1,000 cut at 100, the sink holding every other item after it: its
        // tail comes back as 450 one-item ranges.
        let mut carver = Carver::new(plan(Policy::Adaptive(Duration::from_millis(100)), 1_000));
        carver.join(0);
        carver.remove(0, 1_000);
        let tail: Vec<(u64, u64)> = (0..450).map(|k| (101 + 2 * k, 102 + 2 * k)).collect();
        carver.give_back_tail(&tail);
        carver.learn(0, 100, 10_000);
        let mut chunks = Vec::new();
        while let Some((first, items)) = carver.carve(0) {
            carver.learn(0, items, items * 100);
            chunks.push((first, items));
        }
        assert!(chunks.len() < 20, "{} chunks: {chunks:?}", chunks.len());
        assert!(chunks
            .iter()
            .all(|&(first, items)| first >= 101 && first + u64::from(items) <= 1_000));
    }

    #[test]
    fn one_item_holes_after_a_one_item_chunk_do_not_shred_the_job() {
        // Held items alternate with free ones from item 1,000 (ranges a peer forged), and
        // the worker's last chunk was one item (its probe, handed on).
        let mut carver = Carver::new(plan(Policy::Adaptive(Duration::from_millis(100)), 20_000));
        carver.join(0);
        carver.remove(0, 1_001);
        for k in 1..9_000 {
            carver.remove(1_000 + 2 * k, 1_001 + 2 * k);
        }
        carver.learn(0, 1, 100);
        let mut chunks = 0;
        while let Some((_, items)) = carver.carve(0) {
            carver.learn(0, items, items * 100);
            chunks += 1;
        }
        assert!(chunks < 100, "{chunks} chunks");
    }

    #[test]
    fn removed_items_are_never_carved() {
        let mut carver = Carver::new(plan(Policy::Fixed(7), 100));
        carver.remove(10, 20);
        carver.remove(95, 200);
        assert_eq!(carver.left(), 85);
        let mut seen = Vec::new();
        carver.join(0);
        while let Some((first, n)) = carver.carve(0) {
            seen.extend(first..first + u64::from(n));
        }
        let want: Vec<u64> = (0..10).chain(20..95).collect();
        assert_eq!(seen, want);
    }

    proptest! {
        /// Whatever the policy, speeds and limit, the chunks cover every item exactly once,
        /// each within the limit.
        #[test]
        fn chunks_cover_every_item_once(
            policy in prop_oneof![
                Just(Policy::Static),
                (0u64..50).prop_map(Policy::Fixed),
                (1u64..500).prop_map(|ms| Policy::Adaptive(Duration::from_millis(ms))),
            ],
            items in 1u64..5000,
            speeds in proptest::collection::vec(1.0f64..1e5, 1..6),
            max_chunk in 1u32..2000,
            // Devices' fills, past the job and the limit too (a peer may claim any).
            floors in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..10_000, Just(u64::MAX)], 6),
        ) {
            let mut carver = Carver::new(Plan { max_chunk, ..plan(policy, items) });
            (0..speeds.len()).for_each(|w| {
                carver.join(w);
                carver.set_floor(w, floors[w]);
            });
            let mut next = 0u64;
            let mut turn = 0;
            while let Some((first, n)) = carver.carve(turn % speeds.len()) {
                let w = turn % speeds.len();
                prop_assert_eq!(first, next);
                prop_assert!(n >= 1 && n <= max_chunk);
                // An adaptive chunk is at least its worker's floor, within the limit, half an
                // equal share and what is left.
                if matches!(policy, Policy::Adaptive(_)) {
                    let left = items - next;
                    let share = left.div_ceil(2 * speeds.len() as u64);
                    let least = floors[w].min(share).min(u64::from(max_chunk)).min(left);
                    prop_assert!(u64::from(n) >= least, "{} under {}", n, least);
                }
                next += u64::from(n);
                carver.learn(w, n, (f64::from(n) / speeds[w] * 1e6) as u32);
                turn += 1;
            }
            prop_assert_eq!(next, items);
            prop_assert_eq!(carver.left(), 0);
        }

        /// Only a worker measured more than `margin` times faster than every other live one
        /// is clearly the fastest (it runs its chunks whole).
        #[test]
        fn the_clearly_fastest_worker_is_faster_than_every_other_by_the_margin(
            rates in proptest::collection::vec(1u32..10_000, 1..8),
        ) {
            let mut carver = Carver::new(plan(Policy::Adaptive(Duration::from_millis(100)), 1 << 40));
            for (w, &rate) in rates.iter().enumerate() {
                carver.join(w);
                // `rate` items in a second.
                carver.learn(w, rate, 1_000_000);
            }
            for w in 0..rates.len() {
                let mine = carver.rate(w).unwrap();
                let expected = (0..rates.len())
                    .filter(|&o| o != w)
                    .all(|o| carver.rate(o).unwrap() < mine / 4.0);
                prop_assert_eq!(carver.clearly_fastest(w, 4.0), expected, "{:?}, worker {}", rates, w);
            }
            // Not measured: never the clearly fastest.
            carver.join(rates.len());
            prop_assert!(!carver.clearly_fastest(rates.len(), 4.0));
        }

        /// Tails given back (chunks cut in the end game) are carved each on its own: a
        /// chunk never reaches across what lies between them (items out with workers).
        #[test]
        fn tails_given_back_are_carved_without_reaching_across_chunks_out(
            cuts in proptest::collection::vec((1u64..100, proptest::bool::ANY), 1..8),
            size in 1u64..300,
        ) {
            let mut carver = Carver::new(plan(Policy::Fixed(100), 100 * cuts.len() as u64));
            carver.join(0);
            let chunks: Vec<(u64, u32)> = std::iter::from_fn(|| carver.carve(0)).collect();
            prop_assert_eq!(chunks.len(), cuts.len());
            let mut tails = Vec::new();
            for (&(first, _), &(at, cut)) in chunks.iter().zip(&cuts) {
                if cut {
                    carver.give_back(first + at, first + 100);
                    tails.push((first + at, first + 100));
                }
            }
            // Measured, so the tails go in chunks of about `size` items or fewer.
            carver.learn(0, size as u32, 100_000);
            let mut carved = 0;
            while let Some((first, n)) = carver.carve(0) {
                let end = first + u64::from(n);
                carved += u64::from(n);
                prop_assert!(
                    tails.iter().any(|&(a, b)| a <= first && end <= b),
                    "chunk {}..{} is not within one tail of {:?}", first, end, tails
                );
            }
            prop_assert_eq!(carved, tails.iter().map(|&(a, b)| b - a).sum::<u64>());
            prop_assert_eq!(carver.left(), 0);
        }

        /// What the carver keeps of the farm as workers join, leave and report is what a
        /// pass over the live workers would find.
        #[test]
        fn the_farm_kept_as_it_changes_is_the_farm_counted_afresh(
            ops in proptest::collection::vec((0u8..3, 0usize..12, 1u32..10_000, 1u32..1_000_000), 0..300),
        ) {
            let mut carver = Carver::new(plan(Policy::Adaptive(Duration::from_millis(100)), 1_000_000));
            let mut live = std::collections::BTreeSet::new();
            for (op, w, items, us) in ops {
                match op {
                    0 => {
                        carver.join(w);
                        live.insert(w);
                    }
                    1 => {
                        carver.leave(w);
                        live.remove(&w);
                    }
                    _ => carver.learn(w, items, us),
                }
                let rates: Vec<f64> = live.iter().filter_map(|&w| carver.rate(w)).collect();
                let farm = &carver.farm;
                prop_assert_eq!(farm.count, live.len());
                prop_assert_eq!(farm.known_count, rates.len());
                let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
                let fastest = rates.iter().copied().fold(0.0, f64::max);
                prop_assert_eq!(farm.slowest(), slowest);
                prop_assert_eq!(farm.fastest(), fastest);
                let sum: f64 = rates.iter().sum();
                prop_assert!((farm.known_sum - sum).abs() <= 1e-9 * sum.max(1.0), "{} against {}", farm.known_sum, sum);
                for &w in &live {
                    let rate = carver.rate(w).unwrap_or(1.0);
                    let unmeasured = (live.len() - rates.len()) as f64;
                    let want = (sum + if unmeasured > 0.0 { unmeasured * slowest } else { 0.0 }).max(rate);
                    let got = farm.total_rate(rate);
                    prop_assert!((got - want).abs() <= 1e-9 * want.max(1.0) || got == want);
                }
            }
        }
    }
}
