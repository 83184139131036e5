//! The `sleep` backend: the seed's simulation. Each task sleeps its workload in milliseconds
//! (times a slowdown factor, to emulate a slower box) and computes nothing.

use super::{micros, Backend, Outcome, Work};
use crate::batch::{Job, Task};
use crate::protocol::Status;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Sleep {
    /// Multiplies every workload: 3.0 makes this worker three times slower than nominal.
    slowdown: f64,
    /// Set while the task in hand belongs to a batch that is over: the sleep ends early.
    abandon: Option<Arc<AtomicBool>>,
    /// Test hook: with `CONQUER_FAULT=fail-task:ID`, task ID always fails, as a task with
    /// a bug in its input would on every worker.
    fail_task: Option<u32>,
}

impl Sleep {
    pub fn new(slowdown: f64) -> Self {
        let fail_task = std::env::var("CONQUER_FAULT")
            .ok()
            .and_then(|f| f.strip_prefix("fail-task:")?.parse().ok());
        Sleep {
            slowdown,
            abandon: None,
            fail_task,
        }
    }
}

impl Backend for Sleep {
    fn kind(&self) -> &'static str {
        "sleep"
    }

    fn abandon_with(&mut self, abandon: Arc<AtomicBool>) {
        self.abandon = Some(abandon);
    }

    fn prepare(&mut self, job: &Job, _source: Option<&str>) -> Result<(), String> {
        // Sleeping stands in for millisecond work only: a data batch's outputs would be
        // invented, and no backend returns outputs it did not compute.
        match crate::kernels::Kernel::from_id(job.kernel) {
            Some(crate::kernels::Kernel::Spin) => Ok(()),
            other => Err(format!(
                "the sleep backend computes nothing, so it cannot run the {} kernel's data batch: \
                 start this worker with --backend gpu or software{}",
                other.map_or("unknown", |k| k.name()),
                // The cpu backend runs the built-in kernels' references, not a user's WGSL.
                if other.is_some_and(|k| k != crate::kernels::Kernel::User) {
                    " (or cpu)"
                } else {
                    ""
                }
            )),
        }
    }

    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        while let Some(Work { task, name, .. }) = next() {
            if self.fail_task == Some(task.id) && !task.is_chunk() {
                let work = Work {
                    task,
                    name,
                    input: Vec::new(),
                };
                let why = format!("task {} fails by design (CONQUER_FAULT=fail-task)", task.id);
                done(Outcome::failed(work, 0).because(why));
                continue;
            }
            // A zero-work task sleeps nothing and takes under a microsecond: no clock reads.
            let nominal_us = nominal_us(job, &task);
            let wall_us = if nominal_us > 0.0 {
                let start = Instant::now();
                let us = nominal_us * self.slowdown;
                let deadline = start + Duration::from_secs_f64(us / 1e6);
                if !sleep_until(deadline, self.abandon.as_deref()) {
                    done(Outcome::failed(
                        Work {
                            task,
                            name,
                            input: Vec::new(),
                        },
                        micros(start.elapsed()),
                    ));
                    continue;
                }
                micros(start.elapsed())
            } else {
                0
            };
            done(Outcome {
                task,
                status: Status::Ok,
                wall_us,
                name,
                ..Outcome::default()
            });
        }
    }
}

/// What a task costs at nominal speed, in µs: its workload, or for a chunk of a divisible
/// spin job its items at the job's µs per item (`--item-us`, `constants[0]`).
fn nominal_us(job: &Job, task: &Task) -> f64 {
    if task.is_chunk() {
        f64::from(task.items) * f64::from(job.constants[0])
    } else {
        f64::from(task.workload_ms) * 1000.0
    }
}

/// Timer wake-ups overshoot by 0.1-0.3 ms on common kernels and VMs; over a batch of short
/// tasks that adds up to percent-level error. Sleep to just before the deadline, then yield
/// until it, so a task takes its nominal time to within a few microseconds.
const OVERSHOOT_MARGIN: Duration = Duration::from_micros(400);

/// How often a sleep looks at its abandon flag.
const ABANDON_CHECK: Duration = Duration::from_millis(2);

/// Sleeps until `deadline`; `false` if `abandon` was set first (looked at every
/// [`ABANDON_CHECK`]).
fn sleep_until(deadline: Instant, abandon: Option<&AtomicBool>) -> bool {
    let abandoned = || abandon.is_some_and(|a| a.load(Ordering::Relaxed));
    loop {
        let now = Instant::now();
        if deadline <= now + OVERSHOOT_MARGIN {
            break;
        }
        if abandoned() {
            return false;
        }
        let slice = (deadline - now - OVERSHOOT_MARGIN).min(if abandon.is_some() {
            ABANDON_CHECK
        } else {
            Duration::MAX
        });
        std::thread::sleep(slice);
    }
    while Instant::now() < deadline {
        std::thread::yield_now();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Task;

    #[test]
    fn sleeps_at_least_the_workload_and_reports_every_task() {
        let mut backend = Sleep::new(1.0);
        let tasks = [
            Task {
                id: 0,
                workload_ms: 3,
                ..Default::default()
            },
            Task {
                id: 1,
                workload_ms: 0,
                ..Default::default()
            },
        ];
        let mut outcomes = Vec::new();
        let mut queue = tasks.into_iter();
        backend.run(
            &Job::default(),
            &mut || queue.next().map(Work::from),
            &mut |o| outcomes.push(o),
        );
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes[0].wall_us >= 3000, "{outcomes:?}");
        assert!(
            outcomes[1].wall_us < 1000,
            "zero work does not sleep: {outcomes:?}"
        );
        assert!(outcomes.iter().all(|o| o.status == Status::Ok));
    }

    #[test]
    fn slowdown_scales_the_sleep() {
        let mut backend = Sleep::new(3.0);
        let mut wall = 0;
        let mut queue = std::iter::once(Task {
            id: 0,
            workload_ms: 2,
            ..Default::default()
        });
        backend.run(
            &Job::default(),
            &mut || queue.next().map(Work::from),
            &mut |o| wall = o.wall_us,
        );
        assert!(wall >= 6000, "{wall}");
    }
}
