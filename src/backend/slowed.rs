//! `--slowdown` for backends that compute: a wrapper that makes any backend N times
//! slower by waiting, after each task, (N - 1) times what the task took, so a test or a
//! benchmark gets a slow compute worker without signals or another machine. The task's
//! reported time includes the wait: the ventilator measures the slowed worker it sees.
//! The sleep backend slows its sleeps itself and is never wrapped.

use super::{micros, Backend, Outcome, Work};
use crate::batch::Job;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a wait looks at the worker's stop flag.
const STOP_CHECK: Duration = Duration::from_millis(5);

pub struct Slowed {
    inner: Box<dyn Backend>,
    /// 3.0: three times slower.
    factor: f64,
    stop: Option<Arc<AtomicBool>>,
}

impl Slowed {
    /// `inner`, `factor` times slower (`factor` above 1; at most 1 changes nothing).
    pub fn new(inner: Box<dyn Backend>, factor: f64) -> Slowed {
        Slowed {
            inner,
            factor,
            stop: None,
        }
    }
}

/// Waits `extra`, ending early when the worker stops.
fn wait(extra: Duration, stop: Option<&AtomicBool>) {
    let until = Instant::now() + extra;
    while Instant::now() < until {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return;
        }
        std::thread::sleep(STOP_CHECK.min(until.saturating_duration_since(Instant::now())));
    }
}

impl Backend for Slowed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn adapter(&self) -> String {
        self.inner.adapter()
    }
    fn window_hint(&self) -> u16 {
        self.inner.window_hint()
    }
    fn fill(&self) -> u32 {
        self.inner.fill()
    }
    fn prepare(&mut self, job: &Job, source: Option<&str>) -> Result<(), String> {
        self.inner.prepare(job, source)
    }
    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        let extra = (self.factor - 1.0).max(0.0);
        let stop = self.stop.clone();
        self.inner.run(job, next, &mut |mut outcome| {
            let start = Instant::now();
            wait(
                Duration::from_secs_f64(f64::from(outcome.wall_us) * extra / 1e6),
                stop.as_deref(),
            );
            outcome.wall_us = outcome.wall_us.saturating_add(micros(start.elapsed()));
            done(outcome);
        });
    }
    fn healthy(&self) -> Result<(), String> {
        self.inner.healthy()
    }
    fn stop_with(&mut self, stop: Arc<AtomicBool>) {
        self.stop = Some(stop.clone());
        self.inner.stop_with(stop);
    }
    fn abandon_with(&mut self, abandon: Arc<AtomicBool>) {
        self.inner.abandon_with(abandon);
    }
    fn take_decline(&mut self) -> Option<String> {
        self.inner.take_decline()
    }
}
