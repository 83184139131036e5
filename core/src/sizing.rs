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
}

/// Dispatches of at least about 1 ms: launches then cost a few percent at most.
pub const TARGET_US: f64 = 1_000.0;
/// The first dispatches: small enough for a dear kernel on a slow adapter.
pub const START: u32 = 1 << 16;
/// How much larger the next dispatches may be than the last, at most.
const GROWTH: f64 = 8.0;

impl SizingConfig {
    /// The usual limits under `cap` and `bound_us`.
    pub fn new(cap: u32, bound_us: f64) -> SizingConfig {
        SizingConfig {
            cap: cap.max(1),
            start: START.min(cap.max(1)),
            target_us: TARGET_US.min(bound_us / 4.0),
            bound_us,
        }
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
            size: config.start.clamp(1, config.cap.max(1)),
            config,
        }
    }

    /// Invocations for each of the next dispatches.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A task ran `invocations` in `dispatches` dispatches of at most [`Sizer::size`]
    /// each, and they took `us` in all.
    pub fn observe(&mut self, invocations: u64, dispatches: u32, us: f64) {
        if invocations == 0 || dispatches == 0 || !(us.is_finite() && us > 0.0) {
            return;
        }
        let size = f64::from(self.size);
        let per_dispatch = us / f64::from(dispatches);
        // Whatever the task's size, its time per invocation (launches included, so it errs
        // long) says how large a dispatch stays within half the bound.
        let safe = self.config.bound_us / 2.0 / (us / invocations as f64);
        let next = if per_dispatch > self.config.bound_us {
            // Too long for the watchdog: half the bound, at the rate just seen.
            size * self.config.bound_us / 2.0 / per_dispatch
        } else if invocations >= u64::from(self.size) && per_dispatch < self.config.target_us {
            // Full dispatches ran short: larger, toward twice the target, never predicted
            // past half the bound.
            let by_target = size * 2.0 * self.config.target_us / per_dispatch;
            let by_bound = size * self.config.bound_us / 2.0 / per_dispatch;
            by_target.min(by_bound).min(size * GROWTH)
        } else {
            size
        };
        self.size = next.min(safe).clamp(1.0, f64::from(self.config.cap)) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A device where a dispatch of `k` invocations takes `overhead + k * cost` µs: the time
    /// a task of `invocations` takes at the sizer's size, and its dispatches.
    fn run(sizer: &Sizer, invocations: u64, overhead: f64, cost: f64) -> (u32, f64, f64) {
        let size = u64::from(sizer.size());
        let dispatches = invocations.div_ceil(size);
        let full = overhead + size.min(invocations) as f64 * cost;
        // Every dispatch's overhead, and every invocation's cost.
        let us = dispatches as f64 * overhead + invocations as f64 * cost;
        (dispatches.min(u64::from(u32::MAX)) as u32, us, full)
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
            tasks in proptest::collection::vec(1u64..1 << 34, 1..60),
        ) {
            let bound_us = bound_ms * 1e3;
            let mut config = SizingConfig::new(cap, bound_us);
            config.start = start.min(cap);
            let mut sizer = Sizer::new(config);
            let mut measured = false;
            for &invocations in &tasks {
                let (dispatches, us, full) = run(&sizer, invocations, overhead, cost);
                prop_assert!(sizer.size() >= 1 && sizer.size() <= cap);
                if measured && overhead < bound_us / 4.0 {
                    prop_assert!(full <= bound_us, "a dispatch of {} took {full} µs", sizer.size());
                }
                let before = sizer.size();
                sizer.observe(invocations, dispatches, us);
                if full > bound_us {
                    prop_assert!(sizer.size() < before || before == 1, "no back-off after {full} µs");
                }
                measured = true;
            }
            // Large tasks, enough of them: the dispatches reach the target or the cap.
            for _ in 0..20 {
                let invocations = u64::from(cap) * 64;
                let (dispatches, us, _) = run(&sizer, invocations, overhead, cost);
                sizer.observe(invocations, dispatches, us);
            }
            let full = overhead + f64::from(sizer.size()) * cost;
            prop_assert!(
                sizer.size() == cap || full >= config.target_us || sizer.size() == 1,
                "stuck at {} invocations taking {full} µs",
                sizer.size()
            );
            if overhead < bound_us / 4.0 {
                prop_assert!(full <= bound_us);
            }
        }
    }

    #[test]
    fn a_cheap_kernel_grows_eightfold_a_task_and_a_dear_one_shrinks_at_once() {
        let mut sizer = Sizer::new(SizingConfig::new(1 << 30, 100_000.0));
        assert_eq!(sizer.size(), START);
        // 65,536 invocations in 12 µs: eight times as many next.
        sizer.observe(1 << 20, 16, 16.0 * 12.0);
        assert_eq!(sizer.size(), START * 8);
        // A dispatch of 300 ms: past the 100 ms bound, the next ones take about 50 ms.
        let size = sizer.size();
        sizer.observe(u64::from(size), 1, 300_000.0);
        assert_eq!(sizer.size(), size / 6);
        // Small tasks say nothing about larger dispatches.
        let size = sizer.size();
        sizer.observe(10, 1, 5.0);
        assert_eq!(sizer.size(), size);
    }
}
