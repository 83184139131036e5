//! Fault injection with real processes: workers killed or frozen mid-batch, a sink killed
//! and resumed, floods of malformed messages. In every case each task is counted exactly
//! once, in the report and in the results file.

use crate::util::{self, Proc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[test]
fn workers_killed_with_sigkill_lose_no_task() {
    let util::Cluster {
        sink,
        vent,
        workers,
        results,
        ..
    } = util::Cluster::start(
        &["--tasks", "2000", "--min-ms", "1", "--max-ms", "5"],
        &["k0", "k1", "k2", "k3"],
        &[],
    );
    sink.event("batch");
    // Two kills at random moments in the first ~0.8 s of a ~1.5 s batch.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let first = 100 + u64::from(seed % 300);
    let second = first + 100 + u64::from((seed / 7) % 300);
    eprintln!("killing k0 at {first} ms and k1 at {second} ms");
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(first).saturating_sub(start.elapsed()));
    workers[0].signal("KILL");
    std::thread::sleep(Duration::from_millis(second).saturating_sub(start.elapsed()));
    workers[1].signal("KILL");

    let r = util::completed(sink, 2000, Some(&*results));
    assert!(
        r["redispatched"].as_u64().unwrap() >= 1,
        "the killed workers' tasks went to others: {r}"
    );
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
}

#[test]
fn a_frozen_worker_is_declared_gone_and_its_late_results_are_duplicates() {
    let util::Cluster {
        sink,
        vent,
        workers,
        results,
        ..
    } = util::Cluster::start(
        &["--tasks", "400", "--min-ms", "2", "--max-ms", "8"],
        &["frozen", "steady"],
        &["--heartbeat-ms", "100", "--liveness", "5"],
    );
    let frozen = &workers[0];
    sink.event("batch");
    std::thread::sleep(Duration::from_millis(200)); // the scenario: freeze mid-batch
    frozen.signal("STOP");
    vent.event_where("worker", |e| {
        e["name"] == "frozen" && e["state"] == "silent"
    });
    frozen.signal("CONT");

    let r = util::completed(sink, 400, Some(&*results));
    assert!(r["redispatched"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        r["duplicates"].as_u64().unwrap() >= 1,
        "its late results were dropped as duplicates: {r}"
    );
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
}

#[test]
fn a_killed_sink_resumes_from_its_results_file() {
    let util::Cluster {
        sink,
        vent,
        workers,
        sink_ep,
        results,
        ..
    } = util::Cluster::start(
        &["--tasks", "600", "--min-ms", "2", "--max-ms", "6"],
        &["r1", "r2"],
        &[],
    );
    let resumed = util::kill_and_resume_sink(sink, &sink_ep, &results, &[]);
    // It holds what its file kept when the batch starts again.
    resumed.event_where("batch", |e| e["held"].as_u64() > Some(0));
    util::completed(resumed, 600, Some(&*results));
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    drop(workers);
}

#[test]
fn a_restarted_ventilator_resumes_without_redoing_held_tasks() {
    let batch = [
        "--tasks", "300", "--min-ms", "2", "--max-ms", "6", "--seed", "9",
    ];
    let util::Cluster {
        sink,
        vent,
        workers,
        sink_ep,
        vent_ep,
        results,
    } = util::Cluster::start(&batch, &["v1", "v2"], &[]);
    util::wait_for_lines(&results, 60);
    vent.signal("KILL");
    let _ = vent.finish();

    // The same batch again; without --resume the ventilator refuses to mix it up.
    let mut again = vec![
        "ventilator",
        "--bind",
        &vent_ep,
        "--sink",
        &sink_ep,
        "--wait-workers",
        "2",
    ];
    again.extend(batch);
    let (status, _, log) = Proc::start("vent-again", &again).finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("pass --resume"), "{log}");

    again.push("--resume");
    let resumed = Proc::start("vent-resumed", &again);
    util::completed(sink, 300, Some(&*results));
    let (status, _, log) = resumed.finish();
    assert!(status.success(), "{log}");
    assert!(log.contains("resuming batch"), "{log}");
    drop(workers);
}

#[test]
fn a_million_zero_work_tasks_on_two_worker_processes_complete() {
    let util::Cluster {
        sink,
        vent,
        workers,
        ..
    } = util::Cluster::start(
        &["--tasks", "1000000", "--min-ms", "0", "--max-ms", "0"],
        &["m1", "m2"],
        &[],
    );
    let r = util::completed(sink, 1_000_000, None);
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    // A worker stalled past the backup bound on a loaded machine has its tasks handed out
    // again: a duplicate is only ever a task that went out twice.
    let duplicates = r["duplicates"].as_u64().expect("duplicates");
    let redispatched = r["redispatched"].as_u64().expect("redispatched");
    assert!(duplicates <= redispatched, "{r}\n{log}");
    drop(workers);
}
