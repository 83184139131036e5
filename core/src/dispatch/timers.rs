//! One table of what is due when: each timer the dispatcher keeps, armed at an instant or
//! not, and the earliest, which is the pump's poll timeout. Ticks fire what is due; no
//! timer lives in a loose field.

use std::time::Instant;

/// What the dispatcher waits for without any message arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The heartbeat's round: liveness both ways, stragglers, the sink's silence, the
    /// batch announced again.
    Beat,
    /// In the tail: holders probed, the end game (more often than a heartbeat).
    Probe,
    /// While announcing: the reminder that the sink has not answered.
    Nag,
    /// While draining a job's abandoned chunks: the most it waits.
    Drain,
    /// Workers waiting as outpaced look again: the soonest a worker they wait on has run
    /// its task in hand twice what was predicted of it, if it still holds it.
    Recheck,
    /// In a task list's tail: the end game for workers a report left idle just after it
    /// ran.
    EndGame,
}

const TIMERS: usize = 6;

impl Timer {
    fn index(self) -> usize {
        match self {
            Timer::Beat => 0,
            Timer::Probe => 1,
            Timer::Nag => 2,
            Timer::Drain => 3,
            Timer::Recheck => 4,
            Timer::EndGame => 5,
        }
    }
}

/// The table: an instant per armed timer.
#[derive(Debug, Clone, Default)]
pub(super) struct Timers {
    at: [Option<Instant>; TIMERS],
}

impl Timers {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer.index()] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer.index()]
    }

    /// Whether `timer` is armed and due at `now`.
    pub(super) fn due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| now >= at)
    }

    /// The earliest of `timers` that is armed.
    pub(super) fn earliest(&self, timers: &[Timer]) -> Option<Instant> {
        timers.iter().filter_map(|&t| self.get(t)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_armed_timer_is_due_first_and_a_stopped_one_never() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut timers = Timers::default();
        assert_eq!(timers.earliest(&[Timer::Beat, Timer::Probe]), None);
        timers.set(Timer::Beat, ms(100));
        timers.set(Timer::Probe, ms(20));
        timers.set(Timer::Nag, ms(5));
        assert_eq!(timers.earliest(&[Timer::Beat, Timer::Probe]), Some(ms(20)));
        assert!(!timers.due(Timer::Probe, ms(19)) && timers.due(Timer::Probe, ms(20)));
        timers.stop(Timer::Nag);
        assert!(!timers.due(Timer::Nag, ms(1000)));
        assert_eq!(
            timers.earliest(&[Timer::Beat, Timer::Nag, Timer::Drain]),
            Some(ms(100))
        );
    }
}
