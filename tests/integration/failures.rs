//! Failing backends inside a real pipeline (threads, loopback sockets): a failed task goes
//! to another worker, a wrong result is caught by `--verify` and reported, never counted as
//! good.

use conquer::backend::{sleep::Sleep, Backend, Outcome, Verifier, Work};
use conquer::batch::{Batch, Job, Order};
use conquer::local::{self, LocalRun};
use conquer::protocol::Status;
use conquer::shutdown::Shutdown;
use conquer::ventilator::{Heartbeat, VentilatorConfig};
use std::collections::HashSet;
use std::time::Duration;

/// Fails every task whose id is a multiple of 5 the first time it sees it (a shader error,
/// say); computes a wrong checksum for ids that are multiples of 7 when `lie` is set.
struct Flaky {
    seen: HashSet<u32>,
    lie: bool,
}

impl Backend for Flaky {
    fn kind(&self) -> &'static str {
        "cpu"
    }
    fn prepare(&mut self, _job: &Job, _source: Option<&str>) -> Result<(), String> {
        Ok(())
    }
    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        while let Some(Work { task, .. }) = next() {
            let first_time = self.seen.insert(task.id);
            let output = conquer::kernels::reference(job, task, &[])
                .unwrap()
                .unwrap();
            let reference = conquer::kernels::checksum(job, &output);
            let (status, checksum) = if task.id % 5 == 0 && first_time {
                (Status::Failed, 0)
            } else if self.lie && task.id % 7 == 0 {
                (Status::Ok, reference ^ 1)
            } else {
                (Status::Ok, reference)
            };
            done(Outcome {
                task,
                status,
                wall_us: 10,
                checksum,
                ..Outcome::default()
            });
        }
    }
}

fn run(backends: Vec<Box<dyn Backend>>, tasks: u32, verify: bool) -> conquer::report::Report {
    let heartbeat = Heartbeat {
        interval: Duration::from_millis(100),
        liveness: 5,
    };
    let ventilator = VentilatorConfig {
        order: Order::Given,
        max_window: 64,
        heartbeat,
        ..VentilatorConfig::local(
            Batch::generate(tasks, 0, 2, 3).unwrap(),
            Job {
                kernel: 0,
                units_per_ms: 50,
                verify_percent: if verify { 100 } else { 0 },
                ..Job::default()
            },
        )
    };
    local::run(LocalRun::new(ventilator, backends), &Shutdown::new()).expect("the batch completes")
}

#[test]
fn a_failed_task_is_handed_on_and_counted_once() {
    let flaky = Box::new(Flaky {
        seen: HashSet::new(),
        lie: false,
    });
    let report = run(vec![flaky, Box::new(Sleep::new(1.0))], 100, false);
    assert_eq!(report.tasks, 100);
    // A duplicate comes only from a task handed out again (the end game may hand one on).
    assert!(report.duplicates <= report.redispatched, "{report:?}");
    let delivered: u64 = report.workers.iter().map(|w| w.tasks).sum();
    assert_eq!(delivered, 100, "{report:?}");
    // Each multiple of 5 that reached the flaky worker failed once and was redispatched.
    assert!(
        report.redispatched >= 1 && report.redispatched <= 20,
        "{report:?}"
    );
}

#[test]
fn verify_marks_wrong_results_as_mismatches() {
    let liar = Box::new(Verifier::new(Box::new(Flaky {
        seen: HashSet::new(),
        lie: true,
    })));
    let report = run(vec![liar], 50, true);
    // Ids 0, 7, 14, ..., 49: eight wrong checksums, every one caught.
    assert_eq!(report.mismatches, 8, "{report:?}");
    assert_eq!(report.tasks, 50);

    let unverified = Box::new(Verifier::new(Box::new(Flaky {
        seen: HashSet::new(),
        lie: true,
    })));
    assert_eq!(
        run(vec![unverified], 50, false).mismatches,
        0,
        "only checked when asked"
    );
}

/// Runs one task, fails it, and then reports its device lost.
struct Lost {
    lost: bool,
}

impl Backend for Lost {
    fn kind(&self) -> &'static str {
        "gpu"
    }
    fn prepare(&mut self, _job: &Job, _source: Option<&str>) -> Result<(), String> {
        Ok(())
    }
    fn run(
        &mut self,
        _job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        if let Some(work) = next() {
            self.lost = true;
            done(Outcome::failed(work, 1));
        }
    }
    fn healthy(&self) -> Result<(), String> {
        if self.lost {
            Err("the device was lost".into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_worker_whose_device_is_lost_leaves_and_the_others_finish_the_batch() {
    let report = run(
        vec![Box::new(Lost { lost: false }), Box::new(Sleep::new(1.0))],
        60,
        false,
    );
    assert_eq!(report.tasks, 60);
    assert_eq!(
        report.workers.len(),
        1,
        "only the healthy worker delivered: {report:?}"
    );
    assert_eq!(report.workers[0].tasks, 60);
    assert!(report.redispatched >= 1, "{report:?}");
}

#[test]
fn when_every_worker_is_lost_the_run_fails_naming_why() {
    let heartbeat = Heartbeat {
        interval: Duration::from_millis(100),
        liveness: 5,
    };
    let ventilator = VentilatorConfig {
        heartbeat,
        ..VentilatorConfig::local(Batch::generate(10, 0, 2, 3).unwrap(), Job::default())
    };
    let error = local::run(
        LocalRun::new(ventilator, vec![Box::new(Lost { lost: false })]),
        &Shutdown::new(),
    )
    .expect_err("no worker is left");
    assert!(
        format!("{error:#}").contains("the device was lost"),
        "{error:#}"
    );
}
