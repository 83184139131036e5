//! Per-task timestamps for latency measurements: when the ventilator last sent each task and
//! when the sink first held its result, on one process-wide clock. Off unless a benchmark
//! running every role in one process asks for it; the roles only record, never read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub struct Timeline {
    epoch: Instant,
    /// Nanoseconds since `epoch` + 1 (0 means never).
    sent: Vec<AtomicU64>,
    held: Vec<AtomicU64>,
}

impl Timeline {
    pub fn new(tasks: usize) -> Timeline {
        Timeline {
            epoch: Instant::now(),
            sent: (0..tasks).map(|_| AtomicU64::new(0)).collect(),
            held: (0..tasks).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// The ventilator handed task `id` to a worker (again, if it was redispatched).
    pub fn sent(&self, id: u32) {
        if let Some(slot) = self.sent.get(id as usize) {
            slot.store(self.now(), Ordering::Relaxed);
        }
    }

    /// The sink holds task `id`'s result.
    pub fn held(&self, id: u32) {
        if let Some(slot) = self.held.get(id as usize) {
            slot.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Microseconds from last dispatch to the sink, per task that has both.
    pub fn latencies_us(&self) -> Vec<(u32, f64)> {
        self.sent
            .iter()
            .zip(&self.held)
            .enumerate()
            .filter_map(|(id, (s, h))| {
                let (s, h) = (s.load(Ordering::Relaxed), h.load(Ordering::Relaxed));
                (s > 0 && h >= s).then(|| (id as u32, (h - s) as f64 / 1000.0))
            })
            .collect()
    }
}
