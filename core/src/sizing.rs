//! How many invocations one GPU dispatch gets: learned from how long dispatches take, so a
//! cheap kernel is not launch-bound (a million `search` keys took 12 µs on an H200, so a
//! fixed million a dispatch left the card waiting on launches) and a dear one stays under
//! the driver's watchdog.
//!
//! A [`Sizer`] per kernel starts small and, after each task, grows toward dispatches of
//! about [`SizingConfig::target_us`], at most eightfold at a time, never to a size it
//! predicts would pass half the bound ([`SizingConfig::bound_us`]); a dispatch that ran past
//! the bound shrinks the next ones to half of it at once. `--dispatch-invocations` caps it.
//! Sans-I/O: the backend hands it the time it measured (device timestamps, or wall time
//! where the adapter has none).

/// The sizer's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizingConfig {
    /// Most invocations in one dispatch (`--dispatch-invocations`, and the device's own
    /// limit).
    pub cap: u32,
    /// Invocations of the first dispatches, before anything is measured.
    pub start: u32,
    /// A dispatch should take at least about this long, in µs.
    pub target_us: f64,
    /// No dispatch may take longer than this, in µs (`--max-dispatch-ms`).
    pub bound_us: f64,
    /// Sizes are whole multiples of this (a kernel's workgroup).
    pub granule: u32,
}

/// Dispatches of at least about 1 ms: launches then cost a few percent at most.
pub const TARGET_US: f64 = 1_000.0;
/// The first dispatches: small enough for a dear kernel on a slow adapter.
pub const START: u32 = 1 << 16;
/// How much larger the next dispatches may be than the last, at most.
const GROWTH: f64 = 8.0;

impl SizingConfig {
    /// The usual limits under `cap` and `bound_us`, in whole `granule`s.
    pub fn new(cap: u32, bound_us: f64, granule: u32) -> SizingConfig {
        let granule = granule.max(1);
        let cap = (cap / granule).max(1) * granule;
        SizingConfig {
            cap,
            start: START.min(cap),
            target_us: TARGET_US.min(bound_us / 4.0),
            bound_us,
            granule,
        }
    }

    /// `size` in whole granules, within the cap: at least one granule.
    fn round(&self, size: f64) -> u32 {
        let granule = f64::from(self.granule);
        let granules = (size / granule).floor().max(1.0);
        (granules * granule).min(f64::from(self.cap)) as u32
    }
}

/// One kernel's dispatch size.
#[derive(Debug, Clone)]
pub struct Sizer {
    config: SizingConfig,
    size: u32,
}

impl Sizer {
    pub fn new(config: SizingConfig) -> Sizer {
        Sizer {
            size: config.round(f64::from(config.start)),
            config,
        }
    }

    /// Invocations for each of the next dispatches.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A task ran `invocations` in `dispatches` dispatches of at most `per` invocations
    /// each (the size it was given, or less where the caller capped it), and they took `us`
    /// in all.
    ///
    /// Only full dispatches of the current size make it grow: a small task's time is
    /// mostly its fixed costs, and a task sent before the size last changed speaks of
    /// another size. Any dispatch past the bound shrinks it, from the largest dispatch's
    /// invocations, whatever the size was.
    pub fn observe(&mut self, per: u32, invocations: u64, dispatches: u32, us: f64) {
        if per == 0 || invocations == 0 || dispatches == 0 || !(us.is_finite() && us > 0.0) {
            return;
        }
        let per_dispatch = us / f64::from(dispatches);
        let largest = invocations.min(u64::from(per)) as f64;
        let size = f64::from(self.size);
        let next = if per_dispatch > self.config.bound_us {
            // Too long for the watchdog: half the bound, at the rate just seen.
            (largest * self.config.bound_us / 2.0 / per_dispatch).min(size)
        } else if per == self.size
            && invocations >= u64::from(per)
            && per_dispatch < self.config.target_us
        {
            // Full dispatches ran short: larger, toward twice the target, never predicted
            // past half the bound.
            let by_target = size * 2.0 * self.config.target_us / per_dispatch;
            let by_bound = size * self.config.bound_us / 2.0 / per_dispatch;
            by_target.min(by_bound).min(size * GROWTH)
        } else {
            return;
        };
        self.size = self.config.round(next);
    }
}

/// A dispatch fills a device when it runs at least this share of the best rate measured.
pub const FILL_SHARE: f64 = 0.8;
/// The fill measurement stops at dispatches this long, in µs: past it, larger ones only
/// take longer.
pub const FILL_LONGEST_US: f64 = 2_000.0;

/// How many invocations a device needs in one dispatch to run near its full rate: from
/// dispatches of doubling sizes (`(invocations, µs)`, in the order run), the smallest whose
/// rate is at least [`FILL_SHARE`] of the best. Below it a device holds idle lanes (or a
/// dispatch is mostly its launch), so work handed to it in smaller pieces undersells it.
/// 0 when nothing was measured.
pub fn fill(samples: &[(u32, f64)]) -> u32 {
    let rate = |&(n, us): &(u32, f64)| {
        if us.is_finite() && us > 0.0 {
            f64::from(n) / us
        } else {
            0.0
        }
    };
    let best = samples.iter().map(rate).fold(0.0, f64::max);
    if best <= 0.0 {
        return 0;
    }
    samples
        .iter()
        .filter(|s| rate(s) >= FILL_SHARE * best)
        .map(|&(n, _)| n)
        .min()
        .unwrap_or(0)
}

/// Whether the fill measurement may stop after `samples`: the last dispatch ran long, or
/// the last two doublings gained under a tenth each (the rate has levelled off).
pub fn fill_measured(samples: &[(u32, f64)]) -> bool {
    let rate = |&(n, us): &(u32, f64)| f64::from(n) / us.max(1e-3);
    match samples {
        [.., (_, us)] if *us >= FILL_LONGEST_US => true,
        [.., a, b, c] => rate(b) < 1.1 * rate(a) && rate(c) < 1.1 * rate(b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A device where a dispatch of `k` invocations takes `overhead + k * cost` µs, and a
    /// task `fixed` µs more (read-back, where the time is the task's wall time): the time a
    /// task of `invocations` takes at the sizer's size, its dispatches and its largest
    /// dispatch's time.
    fn run(
        sizer: &Sizer,
        invocations: u64,
        overhead: f64,
        cost: f64,
        fixed: f64,
    ) -> (u32, f64, f64) {
        let size = u64::from(sizer.size());
        let dispatches = invocations.div_ceil(size).min(u64::from(u32::MAX));
        let full = overhead + size.min(invocations) as f64 * cost;
        // Every dispatch's overhead, and every invocation's cost.
        let us = fixed + dispatches as f64 * overhead + invocations as f64 * cost;
        (dispatches as u32, us, full)
    }

    proptest! {
        /// From any start, on a device of any cost, the size stays within its limits, no
        /// dispatch runs past the bound once one was measured, a slow one shrinks the next
        /// at once, and large tasks bring dispatches to the target (or the cap).
        #[test]
        fn dispatches_grow_to_the_target_stay_under_the_bound_and_back_off(
            start in 1u32..=1 << 26,
            cap in 64u32..=1 << 28,
            bound_ms in 5.0f64..2000.0,
            overhead in 1.0f64..200.0,
            cost in 1e-6f64..100.0,
            fixed in prop_oneof![Just(0.0f64), 0.0f64..50_000.0],
            tasks in proptest::collection::vec(1u64..1 << 34, 1..60),
            granule in prop_oneof![Just(1u32), Just(64), Just(256), Just(1024)],
        ) {
            let bound_us = bound_ms * 1e3;
            let mut config = SizingConfig::new(cap, bound_us, granule);
            config.start = start;
            let cap = config.cap;
            let mut sizer = Sizer::new(config);
            // Once a full dispatch of the size in use was measured, none runs past the
            // bound (where launches alone leave room).
            let mut measured = false;
            for &invocations in &tasks {
                let (dispatches, us, full) = run(&sizer, invocations, overhead, cost, fixed);
                prop_assert!(sizer.size() >= 1 && sizer.size() <= cap);
                prop_assert_eq!(sizer.size() % granule.min(cap), 0);
                // (One workgroup is the least a dispatch can be.)
                if measured && overhead < bound_us / 4.0 && sizer.size() > granule {
                    prop_assert!(full <= bound_us, "a dispatch of {} took {full} µs", sizer.size());
                }
                let before = sizer.size();
                measured |= invocations >= u64::from(before);
                sizer.observe(before, invocations, dispatches, us);
                if full > bound_us {
                    prop_assert!(sizer.size() < before || before <= granule, "no back-off after {full} µs");
                }
            }
            // Large tasks, enough of them: the dispatches reach the target or the cap.
            for _ in 0..20 {
                let invocations = u64::from(cap) * 64;
                let size = sizer.size();
                let (dispatches, us, _) = run(&sizer, invocations, overhead, cost, fixed);
                sizer.observe(size, invocations, dispatches, us);
            }
            let full = overhead + f64::from(sizer.size()) * cost;
            // The task's fixed time counts toward its dispatches' (wall time): measured so,
            // they may look long enough before they are.
            let seen = full + fixed / (u64::from(cap) * 64).div_ceil(u64::from(sizer.size())) as f64;
            prop_assert!(
                sizer.size() == cap || seen >= config.target_us || sizer.size() <= granule,
                "stuck at {} invocations taking {full} µs",
                sizer.size()
            );
            if overhead < bound_us / 4.0 && sizer.size() > granule {
                prop_assert!(full <= bound_us);
            }
        }
    }

    #[test]
    fn a_cheap_kernel_grows_eightfold_a_task_and_a_dear_one_shrinks_at_once() {
        let mut sizer = Sizer::new(SizingConfig::new(1 << 30, 100_000.0, 1));
        assert_eq!(sizer.size(), START);
        // 65,536 invocations in 12 µs: eight times as many next.
        sizer.observe(START, 1 << 20, 16, 16.0 * 12.0);
        assert_eq!(sizer.size(), START * 8);
        // A dispatch of 300 ms: past the 100 ms bound, the next ones take about 50 ms.
        let size = sizer.size();
        sizer.observe(size, u64::from(size), 1, 300_000.0);
        assert_eq!(sizer.size(), size / 6);
        // A small task's time is mostly fixed costs: it says nothing of full dispatches,
        // however long it took (within the bound).
        let size = sizer.size();
        sizer.observe(size, 10, 1, 30_000.0);
        assert_eq!(sizer.size(), size);
        // Nor does a task sent at another size (one in flight when it changed, or one the
        // caller capped, as a warm-up does).
        sizer.observe(64, 1 << 20, 1 << 14, 100.0);
        assert_eq!(sizer.size(), size);
    }

    /// A device of `lanes` lanes running waves of `cost` µs each, every dispatch `overhead`
    /// µs more: dispatches of 2^8, 2^9, ... invocations until the measurement stops.
    fn measure(lanes: u32, cost: f64, overhead: f64) -> Vec<(u32, f64)> {
        let mut samples = Vec::new();
        let mut n = 256u32;
        while !fill_measured(&samples) && n <= 1 << 26 {
            let waves = f64::from(n.div_ceil(lanes));
            samples.push((n, overhead + waves * cost));
            n *= 2;
        }
        samples
    }

    #[test]
    fn a_device_fills_at_its_lanes_where_dispatches_cost_nothing_more() {
        // Kernel time only (no launch in it): the fill is within a factor of two of the
        // device's lanes, an H200's ~270,000 resident threads among them.
        for lanes in [1024, 16_384, 270_336] {
            let samples = measure(lanes, 50.0, 0.0);
            let fill = fill(&samples);
            assert!(
                fill >= lanes / 2 && fill <= lanes.next_power_of_two(),
                "{lanes} lanes: fill {fill} from {samples:?}"
            );
        }
        // Nothing measured: no fill.
        assert_eq!(fill(&[]), 0);
        assert_eq!(fill(&[(1024, 0.0)]), 0);
    }

    proptest! {
        /// Whatever the device, the fill is one of the sizes measured, runs at 0.8 of the
        /// best rate at least, and no smaller size measured does; the measurement stops
        /// where the rate levels off or a dispatch runs long, or at the largest size.
        #[test]
        fn the_fill_is_the_smallest_size_near_the_best_rate(
            lanes in 1u32..1 << 20,
            cost in 0.01f64..5_000.0,
            overhead in 0.0f64..500.0,
        ) {
            let samples = measure(lanes, cost, overhead);
            let largest = samples.last().map(|s| s.0);
            prop_assert!(fill_measured(&samples) || largest == Some(1 << 26), "{:?}", samples);
            // Stopped at the first sample that says so, not later.
            prop_assert!(!fill_measured(&samples[..samples.len() - 1]), "{:?}", samples);
            let fill = fill(&samples);
            let rate = |n: u32| {
                let (_, us) = samples.iter().find(|s| s.0 == n).unwrap();
                f64::from(n) / us
            };
            let best = samples.iter().map(|s| rate(s.0)).fold(0.0, f64::max);
            prop_assert!(rate(fill) >= FILL_SHARE * best);
            for &(n, _) in samples.iter().filter(|s| s.0 < fill) {
                prop_assert!(rate(n) < FILL_SHARE * best);
            }
        }
    }
}
