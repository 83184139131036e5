//! The operator's usual mistakes, walked through end to end with the real executable: each
//! ends with a clear message and the right exit code, or with correct behaviour. Numbers in
//! the test names follow the "no silent surprises" list in the README's "When you get it
//! wrong" section.

use crate::util::{self, report, Proc};
use conquer::protocol::{Done, Message, RefusalKind, Status, WorkerInfo};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Runs `conquer ARGS` at default verbosity to its end.
fn conquer(args: &[&str]) -> (ExitStatus, String, String) {
    Proc::start_quiet("conquer", args).finish()
}

/// Runs `conquer -v ARGS` to its end.
fn conquer_v(args: &[&str]) -> (ExitStatus, String, String) {
    Proc::start("conquer", args).finish()
}

fn assert_fails_with(outcome: &(ExitStatus, String, String), code: i32, words: &[&str]) {
    let (status, stdout, log) = outcome;
    assert_eq!(status.code(), Some(code), "stdout: {stdout}\nlog: {log}");
    for w in words {
        assert!(log.contains(w), "missing {w:?} in:\n{log}");
    }
}

/// Runs `conquer -v ARGS`, which must fail (1) saying `words` before any socket binds.
fn fails_before_binding(args: &[&str], words: &[&str]) {
    let outcome = conquer_v(args);
    assert_fails_with(&outcome, 1, words);
    assert!(
        !outcome.2.contains("listening"),
        "bound first: {}",
        outcome.2
    );
}

/// Waits until `path` holds at least `lines` lines: an event, not a fixed sleep.
fn wait_for_lines(path: &std::path::Path, lines: usize) {
    let deadline = Instant::now() + util::PATIENCE;
    while std::fs::read_to_string(path).map_or(0, |t| t.lines().count()) < lines {
        assert!(
            Instant::now() < deadline,
            "{} never held {lines} lines",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn m01_a_sink_refuses_to_wipe_a_results_file_and_overwrite_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.csv");
    let old = "earlier results\n".repeat(301);
    std::fs::write(&path, &old).unwrap();
    let file = path.to_str().unwrap();
    let bind = ["sink", "--bind", "tcp://127.0.0.1:0", "--results", file];
    let refused = conquer_v(&bind);
    assert_fails_with(&refused, 1, &["conquer: error:", "--resume", "--overwrite"]);
    assert!(
        !refused.2.contains("listening"),
        "refused before binding: {}",
        refused.2
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        old,
        "nothing wiped"
    );

    let mut args = bind.to_vec();
    args.push("--overwrite");
    let sink = Proc::start("sink", &args);
    sink.endpoint("results");
    assert!(std::fs::read_to_string(&path).unwrap().len() < old.len());
}

#[test]
fn m01_a_sink_interrupted_mid_batch_says_how_to_resume() {
    let util::Cluster {
        sink,
        workers,
        vent,
        results,
        ..
    } = util::Cluster::start(
        &["--tasks", "40", "--min-ms", "100", "--max-ms", "100"],
        &["slow"],
        &[],
    );
    wait_for_lines(&results, 1);
    sink.signal("INT");
    let outcome = sink.finish();
    assert_fails_with(&outcome, 130, &["--resume", "results.jsonl"]);
    drop((vent, workers));
}

#[test]
fn m02_each_record_says_when_its_task_ran_and_on_which_worker() {
    let util::Cluster {
        sink,
        vent,
        workers,
        results,
        ..
    } = util::Cluster::start(
        &["--tasks", "12", "--min-ms", "20", "--max-ms", "60"],
        &["t1", "t2"],
        &[],
    );
    util::completed(sink, 12, Some(&*results));
    let text = std::fs::read_to_string(&*results).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut starts = std::collections::BTreeSet::new();
    for r in &records {
        let start = r["started_unix_ms"].as_u64().unwrap();
        let end = r["finished_unix_ms"].as_u64().unwrap();
        let workload = r["workload_ms"].as_u64().unwrap();
        assert!(end >= start + workload.saturating_sub(1), "{r}");
        assert!(end <= start + workload + 1000, "{r}");
        assert!(
            start >= r["batch_started_unix_ms"].as_u64().unwrap() - 1000,
            "{r}"
        );
        assert!(["t1", "t2"].contains(&r["worker"].as_str().unwrap()), "{r}");
        assert_eq!(r["backend"], "sleep");
        starts.insert(start);
    }
    assert!(
        starts.len() > 2,
        "tasks have their own start times: {starts:?}"
    );
    drop((vent, workers));
}

#[test]
fn m03_a_record_with_an_out_of_range_task_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jsonl");
    let record = |task: u64| {
        format!(
            "{{\"batch\":\"00000000000000ab\",\"batch_tasks\":10,\"batch_started_unix_ms\":1,\"task\":{task},\
             \"worker\":\"w\",\"backend\":\"sleep\",\"workload_ms\":1,\"started_unix_ms\":1,\
             \"finished_unix_ms\":2,\"wall_us\":1000,\"kernel_us\":0,\"checksum\":\"0\",\"status\":\"ok\"}}\n"
        )
    };
    // Task 2^32 + 3 would read as task 3 through a truncating cast.
    std::fs::write(&path, record(1) + &record((1 << 32) + 3)).unwrap();
    let outcome = conquer_v(&[
        "sink",
        "--bind",
        "tcp://127.0.0.1:0",
        "--results",
        path.to_str().unwrap(),
        "--resume",
    ]);
    assert_fails_with(&outcome, 1, &["line 2"]);
}

#[test]
fn m04_verify_reports_what_it_checked_and_is_refused_where_nothing_is_computed() {
    let (status, stdout, log) = conquer(&[
        "run",
        "--backend",
        "cpu",
        "--workers",
        "2",
        "--tasks",
        "10",
        "--min-ms",
        "1",
        "--max-ms",
        "3",
        "--verify",
        "--json",
    ]);
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(
        (&r["checked"], &r["verified"], &r["mismatches"]),
        (&10.into(), &10.into(), &0.into()),
        "{r}"
    );

    let (status, stdout, log) = conquer(&[
        "run",
        "--backend",
        "cpu",
        "--tasks",
        "40",
        "--max-ms",
        "2",
        "--verify-sample",
        "50",
    ]);
    assert!(status.success(), "{log}");
    assert!(stdout.contains("verified "), "{stdout}");
    assert!(
        stdout.contains(" results checked against the CPU reference"),
        "{stdout}"
    );

    let refused = conquer(&["run", "--backend", "sleep", "--verify", "--tasks", "3"]);
    assert_fails_with(
        &refused,
        1,
        &["--verify", "computes nothing", "--backend cpu"],
    );
}

#[test]
fn m05_a_sink_resumed_on_a_finished_batch_reports_it_and_exits() {
    let util::Cluster {
        sink,
        vent,
        workers,
        results,
        ..
    } = util::Cluster::start(&["--tasks", "20", "--max-ms", "5"], &["f1", "f2"], &[]);
    util::completed(sink, 20, Some(&*results));
    drop((vent, workers));
    // The first sink finished; a second one resumed on its file has nothing to wait for.
    let again = Proc::start(
        "sink-again",
        &[
            "sink",
            "--bind",
            "tcp://127.0.0.1:0",
            "--json",
            "--results",
            results.to_str().unwrap(),
            "--resume",
        ],
    );
    let r = util::completed(again, 20, None);
    assert_eq!(r["duplicates"], 0);
}

#[test]
fn m06_a_second_worker_with_a_taken_name_is_refused_at_once() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "20",
            "--min-ms",
            "50",
            "--max-ms",
            "50",
            "--wait-workers",
            "1",
        ],
    );
    let first = util::worker("twin", &vent_ep, &sink_ep, &["--exit-when-done"]);
    sink.event("batch");
    let started = Instant::now();
    let second = util::worker("twin", &vent_ep, &sink_ep, &["--exit-when-done"]);
    let outcome = second.finish();
    assert_fails_with(
        &outcome,
        1,
        &["refused", "another worker named \"twin\"", "--name"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );
    let r = util::completed(sink, 20, None);
    assert_eq!(r["workers"].as_array().unwrap().len(), 1, "{r}");
    drop((vent, first));
}

#[test]
fn m07_a_worker_with_a_wrong_sink_takes_no_tasks_and_says_so() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "10",
            "--wait-workers",
            "1",
            "--wait-timeout",
            "3",
        ],
    );
    let nowhere = util::free_endpoint();
    let lost = util::worker(
        "lost",
        &vent_ep,
        &nowhere,
        &["--heartbeat-ms", "100", "--liveness", "3"],
    );
    lost.event_where("waiting", |e| e["peer"] == "sink");
    let outcome = vent.finish();
    assert_fails_with(&outcome, 1, &["timed out", "(0 ready)"]);
    drop((sink, lost));
}

/// A worker that joins the sink and takes tasks (asking for `window_hint` at once),
/// reports them done to the ventilator, and never delivers a result. Returns the refusal it
/// finally got and how many tasks it was given.
pub(crate) fn ack_only_worker(
    sink_ep: &str,
    vent_ep: &str,
    window_hint: u16,
    took_tasks: std::sync::mpsc::Sender<()>,
) -> (String, usize) {
    let me = util::RawWorker::join(
        sink_ep,
        vent_ep,
        WorkerInfo {
            name: "ackonly".into(),
            session: 7,
            backend: "sleep".into(),
            adapter: String::new(),
            window_hint,
            codecs: 0,
            fill: 0,
        },
    );
    let deadline = Instant::now() + util::PATIENCE;
    let mut told = false;
    let mut given = 0;
    while Instant::now() < deadline {
        me.beat();
        for message in me.heard_from_ventilator() {
            match message {
                Message::Tasks {
                    batch, tasks: got, ..
                } => {
                    given += got.len();
                    let done = got
                        .iter()
                        .map(|t| Done {
                            id: t.id,
                            status: Status::Ok,
                            wall_us: 1,
                            kernel_us: 0,
                            items: t.items,
                            ..Done::default()
                        })
                        .collect();
                    me.tasks
                        .send(Message::Done { batch, done }.encode(), 0)
                        .unwrap();
                    if !told {
                        took_tasks.send(()).unwrap();
                        told = true;
                    }
                }
                Message::Refused { kind, reason } => {
                    assert_eq!(kind, RefusalKind::ResultsLost);
                    return (reason, given);
                }
                _ => {}
            }
        }
    }
    panic!("the ventilator never named the worker whose results go nowhere");
}

#[test]
fn m07_a_worker_whose_results_never_reach_the_sink_is_named_and_its_tasks_handed_on() {
    let (sink, sink_ep) = util::sink(&[]);
    let beat = ["--heartbeat-ms", "100", "--liveness", "3"];
    let mut vent_args = vec![
        "--tasks",
        "10",
        "--min-ms",
        "5",
        "--max-ms",
        "5",
        "--wait-workers",
        "1",
    ];
    vent_args.extend(beat);
    let (vent, vent_ep) = util::ventilator(&sink_ep, &vent_args);
    let (tx, rx) = std::sync::mpsc::channel();
    let fake = {
        let (sink_ep, vent_ep) = (sink_ep.clone(), vent_ep.clone());
        std::thread::spawn(move || ack_only_worker(&sink_ep, &vent_ep, 1, tx))
    };
    rx.recv_timeout(util::PATIENCE)
        .expect("the fake worker took tasks");
    let mut honest_args = vec!["--exit-when-done"];
    honest_args.extend(beat);
    let honest = util::worker("honest", &vent_ep, &sink_ep, &honest_args);
    let r = util::completed(sink, 10, None);
    let by: Vec<&str> = r["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["honest"], "{r}");
    let (reason, _) = fake.join().unwrap();
    assert!(reason.contains("have not reached the sink"), "{reason}");
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("ackonly"),
        "the ventilator names the worker: {log}"
    );
    drop(honest);
}

#[test]
fn m08_a_worker_with_swapped_endpoints_is_told_so_on_both_sides() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(&sink_ep, &["--tasks", "5", "--wait-workers", "1"]);
    let swapped = util::worker("swapped", &sink_ep, &vent_ep, &[]);
    let outcome = swapped.finish();
    assert_fails_with(
        &outcome,
        1,
        &["looks like a worker that connected its sink endpoint to a ventilator"],
    );
    // The ventilator says so before it answers: its log holds it now.
    let log = vent.interrupt();
    let said = log
        .lines()
        .find(|l| l.contains("looks like a worker that connected"))
        .unwrap_or_else(|| panic!("the ventilator did not say so:\n{log}"));
    assert!(said.contains("--sink"), "{said}");
    drop(sink);
}

#[test]
fn m09_a_second_ventilator_is_told_the_sink_is_busy_with_another_batch() {
    let util::Cluster {
        sink,
        vent,
        workers,
        sink_ep,
        ..
    } = util::Cluster::start(
        &["--tasks", "20", "--min-ms", "50", "--max-ms", "50"],
        &["b1"],
        &[],
    );
    sink.event("batch");
    let (second, _) = util::ventilator(
        &sink_ep,
        &["--tasks", "5", "--seed", "2", "--wait-workers", "0"],
    );
    let outcome = second.finish();
    assert_fails_with(&outcome, 1, &["busy with batch", "another sink"]);
    util::completed(sink, 20, None);
    drop((vent, workers));
}

#[test]
fn m10_one_process_runs_512_workers() {
    let (status, stdout, log) = conquer(&[
        "run",
        "--workers",
        "512",
        "--tasks",
        "1024",
        "--min-ms",
        "0",
        "--max-ms",
        "2",
        "--backend",
        "sleep",
        "--json",
    ]);
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(util::delivered(&r), 1024, "{r}");
}

#[test]
fn m10_a_run_whose_workers_cannot_start_fails_at_once_with_the_reason() {
    let bin = util::binary();
    let script = format!(
        "ulimit -n 128; exec {} run --workers 200 --backend sleep",
        bin.display()
    );
    let started = Instant::now();
    let outcome = Proc::program("run", "sh", &["-c", &script]).finish();
    assert_fails_with(&outcome, 1, &["200 workers", "open files"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "at once, not after a timeout"
    );
}

#[test]
fn m11_checkable_mistakes_fail_before_anything_binds() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["run", "--results", "/nonexistent/dir/x.csv"],
            "cannot create results file",
        ),
        (&["ventilator", "--sink", "tcp://127.0.0.1:70000"], "70000"),
        (&["ventilator", "--bind", "tcp://*:-1"], "-1"),
        (&["ventilator", "--wait-timeout", "1e300"], "--wait-timeout"),
        (&["worker", "--name", "line1\nline2"], "--name"),
    ];
    for (args, words) in cases {
        let outcome = conquer_v(args);
        assert_fails_with(&outcome, 1, &[words, "conquer: error:"]);
        assert!(
            !outcome.2.contains("listening"),
            "{args:?} bound first: {}",
            outcome.2
        );
        assert!(outcome.1.is_empty(), "{args:?} printed: {}", outcome.1);
    }
}

#[test]
fn m12_auto_says_which_backend_it_took_and_why_at_default_verbosity() {
    let (vent, sink) = (util::free_endpoint(), util::free_endpoint());
    let worker = Proc::start_quiet(
        "auto",
        &[
            "worker",
            "--backend",
            "auto",
            "--ventilator",
            &vent,
            "--sink",
            &sink,
        ],
    );
    // The backend is decided before the worker connects.
    worker.event("connecting");
    let log = worker.interrupt();
    let line = log
        .lines()
        .find(|l| l.contains("backend auto: "))
        .unwrap_or_else(|| panic!("no word on the backend auto took:\n{log}"));
    assert!(line.contains("using"), "{line}");
}

#[test]
fn m12_bench_of_a_missing_backend_fails_or_says_not_available() {
    let (_, info, _) = conquer(&["info"]);
    if info.contains("auto: adapter") {
        // This machine has a hardware GPU: the trap cannot arise here.
        let (status, _, log) = conquer(&[
            "bench",
            "--suite",
            "backends",
            "--backends",
            "gpu",
            "--quick",
        ]);
        assert!(status.success(), "{log}");
        return;
    }
    let alone = conquer(&[
        "bench",
        "--suite",
        "backends",
        "--backends",
        "gpu",
        "--quick",
    ]);
    assert_fails_with(&alone, 1, &["--backends gpu", "not available"]);
    let (status, stdout, log) = conquer(&[
        "bench",
        "--suite",
        "backends",
        "--backends",
        "sleep,gpu",
        "--quick",
    ]);
    assert!(status.success(), "{log}");
    assert!(stdout.contains("| gpu | not available: "), "{stdout}");
}

#[test]
fn m13_waiting_is_said_at_default_verbosity() {
    let (vent_ep, sink_ep) = (util::free_endpoint(), util::free_endpoint());
    let sink = Proc::start_quiet("sink", &["sink", "--bind", &sink_ep]);
    let vent = Proc::start_quiet(
        "vent",
        &[
            "ventilator",
            "--bind",
            &vent_ep,
            "--sink",
            &sink_ep,
            "--wait-workers",
            "2",
            "--tasks",
            "4",
        ],
    );
    vent.event_where("workers", |e| e["ready"] == 0 && e["wanted"] == 2);
    let w = Proc::start_quiet(
        "w",
        &[
            "worker",
            "--backend",
            "sleep",
            "--ventilator",
            &vent_ep,
            "--sink",
            &sink_ep,
        ],
    );
    w.event_where("ready", |e| e["backend"] == "sleep");
    vent.event_where("workers", |e| e["ready"] == 1 && e["wanted"] == 2);
    // A worker whose ventilator is not there says so.
    let lonely = Proc::start_quiet(
        "lonely",
        &[
            "worker",
            "--backend",
            "sleep",
            "--ventilator",
            &util::free_endpoint(),
            "--sink",
            &sink_ep,
            "--heartbeat-ms",
            "100",
            "--liveness",
            "3",
        ],
    );
    lonely.event_where("waiting", |e| e["peer"] == "ventilator");
    // Each said it at default verbosity.
    let said: [(Proc, &[&str]); 3] = [
        (
            vent,
            &[
                "waiting for 2 workers: 0 ready",
                "waiting for 2 workers: 1 ready",
            ],
        ),
        (w, &["ready (sleep): connected to the ventilator"]),
        (lonely, &["waiting for the ventilator at"]),
    ];
    for (who, lines) in said {
        let name = who.name.clone();
        let log = who.interrupt();
        for line in lines {
            assert!(log.contains(line), "{name} did not say {line:?}:\n{log}");
        }
    }
    drop(sink);
}

/// `2026-11-28T10:00:00.123Z`: 24 characters of RFC 3339 UTC with milliseconds.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn m14_log_lines_carry_a_utc_timestamp_the_role_and_the_name() {
    let (vent_ep, sink_ep) = (util::free_endpoint(), util::free_endpoint());
    let worker = Proc::start(
        "w9",
        &[
            "-vv",
            "worker",
            "--name",
            "w9",
            "--backend",
            "auto",
            "--ventilator",
            &vent_ep,
            "--sink",
            &sink_ep,
            "--heartbeat-ms",
            "100",
            "--liveness",
            "3",
        ],
    );
    worker.event_where("waiting", |e| e["peer"] == "sink");
    // Killed, so that every line it wrote is one of its log's.
    worker.signal("KILL");
    let log = worker.finish().2;
    for line in log.lines() {
        let (stamp, rest) = line.split_at(24.min(line.len()));
        assert!(is_timestamp(stamp), "no timestamp: {line}");
        let rest = rest.trim_start();
        let rest = rest.split_once(' ').map_or("", |(_, r)| r).trim_start();
        assert!(rest.starts_with("worker w9: "), "no role and name: {line}");
        assert!(
            !rest.contains("[wgpu") && !rest.contains("[naga"),
            "third-party line: {line}"
        );
    }
    let sink = Proc::start("sink", &["sink", "--bind", "tcp://127.0.0.1:0"]);
    sink.event("listening");
    let log = sink.interrupt();
    let line = log
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("no word of the socket listening:\n{log}"));
    assert!(line.contains(" sink: "), "{line}");
}

#[test]
fn m15_ctrl_c_exits_130_in_every_role_and_phase() {
    for _ in 0..8 {
        let sink = Proc::start("sink", &["sink", "--bind", "tcp://127.0.0.1:0"]);
        sink.event("ready");
        sink.signal("INT");
        let (status, _, log) = sink.finish();
        assert_eq!(status.code(), Some(130), "{log}");
        assert!(!log.contains("Interrupted system call"), "{log}");
    }
    let (_, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(&sink_ep, &["--wait-workers", "3"]);
    vent.event_where("workers", |e| e["wanted"] == 3);
    vent.signal("INT");
    assert_eq!(vent.finish().0.code(), Some(130));
    let w = util::worker("w", &vent_ep, &util::free_endpoint(), &[]);
    w.event("connecting");
    w.signal("INT");
    assert_eq!(w.finish().0.code(), Some(130));
    let run = Proc::start(
        "run",
        &["run", "--tasks", "40", "--min-ms", "100", "--max-ms", "100"],
    );
    run.event("batch");
    run.signal("INT");
    assert_eq!(run.finish().0.code(), Some(130));
}

#[test]
fn m16_calibrate_measures_one_core_and_every_command_shares_the_default() {
    let (status, stdout, log) =
        conquer(&["calibrate", "--rounds", "1", "--round-ms", "20", "--json"]);
    assert!(status.success(), "{log}");
    let c: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(c["kernel"], "spin");
    assert!(c["units_per_ms"].as_u64().unwrap() > 0, "{c}");
    let default = format!(
        "[default: {}]",
        conquer::kernels::spin::DEFAULT_UNITS_PER_MS
    );
    for command in ["run", "ventilator", "bench"] {
        let (_, help, _) = conquer(&[command, "--help"]);
        let line = help
            .lines()
            .skip_while(|l| !l.contains("--units-per-ms"))
            .take(8)
            .collect::<String>();
        assert!(line.contains(&default), "{command}: {line}");
    }
}

#[test]
fn m17_connecting_sockets_redial_within_a_quarter_second() {
    let ctx = zmq::Context::new();
    let socket = conquer::sockets::connect(
        &ctx,
        zmq::PULL,
        "tasks",
        &util::free_endpoint(),
        "--ventilator",
        &conquer::sockets::Caller {
            identity: None,
            access: &conquer::auth::Access::default(),
            user: "worker:test",
            max_payload: conquer::protocol::DEFAULT_MAX_PAYLOAD,
        },
    )
    .unwrap();
    assert!(socket.get_reconnect_ivl_max().unwrap() <= 250);
    assert!(socket.get_reconnect_ivl().unwrap() <= 100);
}

#[test]
fn m18_a_classic_ventilator_waits_for_enter_on_a_pipe_and_the_sink_counts_any_message() {
    let (vent_ep, sink_ep, control) = (
        util::free_endpoint(),
        util::free_endpoint(),
        util::free_endpoint(),
    );
    let sink = Proc::start(
        "classic-sink",
        &[
            "sink",
            "--classic",
            "--bind",
            &sink_ep,
            "--control-bind",
            &control,
            "--tasks",
            "6",
        ],
    );
    sink.event("listening");
    let mut vent = Proc::start_with_stdin(
        "classic-vent",
        &[
            "ventilator",
            "--classic",
            "--bind",
            &vent_ep,
            "--sink",
            &sink_ep,
            "--wait-workers",
            "0",
            "--tasks",
            "5",
            "--max-ms",
            "2",
        ],
    );
    let worker = Proc::start(
        "classic-worker",
        &[
            "worker",
            "--classic",
            "--backend",
            "sleep",
            "--ventilator",
            &vent_ep,
            "--sink",
            &sink_ep,
            "--control",
            &control,
        ],
    );
    vent.event("listening");
    assert!(
        !sink.events().iter().any(|e| e["event"] == "batch"),
        "the ventilator waits for Enter"
    );
    vent.type_line("");
    // Five results from the worker, and one message a Guide sink would count too.
    let ctx = zmq::Context::new();
    let stranger = ctx.socket(zmq::PUSH).unwrap();
    stranger.set_linger(2000).unwrap();
    stranger.connect(&sink_ep).unwrap();
    sink.event("batch");
    stranger.send(&b"not a workload"[..], 0).unwrap();
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    assert!(stdout.contains("6 results"), "{stdout}");
    let (status, stdout, log) = vent.finish();
    assert!(status.success(), "{log}");
    assert!(
        stdout.contains("Press Enter when the workers are ready"),
        "{stdout}"
    );
    assert!(stdout.contains("Sending tasks to workers..."), "{stdout}");
    drop(worker);
}

#[test]
fn m19_bare_conquer_runs_the_default_batch_and_counts_workers_in_words() {
    let (status, stdout, log) = conquer(&[]);
    assert!(status.success(), "{log}");
    assert!(stdout.contains("Total elapsed time"), "{stdout}");
    assert!(stdout.contains(" on 4 workers,"), "{stdout}");
    let (status, stdout, log) =
        conquer(&["run", "--workers", "1", "--tasks", "3", "--max-ms", "2"]);
    assert!(status.success(), "{log}");
    assert!(stdout.contains(" on 1 worker,"), "{stdout}");
    let (_, _, log) = conquer(&["run", "--tasks-file", "/nonexistent"]);
    assert!(
        log.lines()
            .last()
            .unwrap_or("")
            .starts_with("conquer: error: "),
        "{log}"
    );
}

#[test]
fn m20_outputs_flags_the_batch_cannot_honour_fail_before_anything_binds() {
    let dir = tempfile::tempdir().unwrap();
    let picture = dir.path().join("x.png");
    let image = picture.to_str().unwrap();

    // A picture of a batch that paints none.
    let spin = ["run", "--tasks", "40", "--max-ms", "2", "--image", image];
    let outcome = conquer_v(&spin);
    assert_fails_with(
        &outcome,
        1,
        &["--image needs a Mandelbrot batch", "--kernel mandelbrot"],
    );
    assert!(
        !outcome.2.contains("listening"),
        "bound first: {}",
        outcome.2
    );
    assert!(!picture.exists());
    // Each way out it names: drop --image, or ask for the Mandelbrot set.
    let (status, _, log) = conquer(&spin[..5]);
    assert!(status.success(), "{log}");
    let mandelbrot = [
        "run",
        "--kernel",
        "mandelbrot",
        "--backend",
        "cpu",
        "--width",
        "64",
        "--height",
        "64",
        "--max-iter",
        "50",
        "--image",
        image,
    ];
    let (status, _, log) = conquer(&mandelbrot);
    assert!(status.success(), "{log}");
    assert!(std::fs::read(&picture).unwrap().starts_with(b"\x89PNG"));

    // An existing picture is refused like an existing results file, and --overwrite
    // replaces it.
    std::fs::write(&picture, b"an earlier picture").unwrap();
    let outcome = conquer_v(&mandelbrot);
    assert_fails_with(&outcome, 1, &["x.png", "already exists", "--overwrite"]);
    assert!(
        !outcome.2.contains("listening"),
        "bound first: {}",
        outcome.2
    );
    assert_eq!(std::fs::read(&picture).unwrap(), b"an earlier picture");
    let mut overwrite = mandelbrot.to_vec();
    overwrite.push("--overwrite");
    let (status, _, log) = conquer(&overwrite);
    assert!(status.success(), "{log}");
    assert!(std::fs::read(&picture).unwrap().starts_with(b"\x89PNG"));

    // An input kernel whose outputs would be dropped.
    let input = dir.path().join("in.bin");
    std::fs::write(&input, [7u8; 256]).unwrap();
    let copy = [
        "run",
        "--kernel",
        "copy",
        "--backend",
        "cpu",
        "--inputs",
        input.to_str().unwrap(),
    ];
    let outcome = conquer_v(&copy);
    assert_fails_with(&outcome, 1, &["--kernel copy", "--outputs DIR"]);
    assert!(
        !outcome.2.contains("listening"),
        "bound first: {}",
        outcome.2
    );
    let out = dir.path().join("out");
    let mut kept = copy.to_vec();
    kept.extend(["--outputs", out.to_str().unwrap()]);
    let (status, _, log) = conquer(&kept);
    assert!(status.success(), "{log}");
    assert_eq!(std::fs::read(out.join("in.bin.out")).unwrap(), [7u8; 256]);
}

#[test]
fn m21_a_flags_environment_variable_takes_1_and_0_and_refuses_other_words_naming_the_flag() {
    let args = ["run", "--tasks", "2", "--max-ms", "1", "--workers", "1"];
    for on in ["1", "yes", "true", "0", "off"] {
        let (status, _, log) =
            Proc::start_with_env("env", &args, &[("CONQUER_NO_COMPRESS", on)]).finish();
        assert!(status.success(), "CONQUER_NO_COMPRESS={on}: {log}");
    }
    let outcome = Proc::start_with_env("env", &args, &[("CONQUER_NO_COMPRESS", "maybe")]).finish();
    assert_fails_with(&outcome, 2, &["--no-compress", "maybe"]);
}

#[test]
fn m22_verify_on_a_user_kernel_fails_before_anything_binds_and_names_replicate() {
    // A user kernel has no CPU reference: `--verify` would check nothing and the report
    // would count every result unchecked. `--replicate` is the check that works for it.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("v.f32");
    std::fs::write(&input, [0u8; 64]).unwrap();
    let outputs = dir.path().join("out");
    let kernel = [
        "--kernel-file",
        "examples/kernels/saxpy.wgsl",
        "--inputs",
        input.to_str().unwrap(),
        "--item-bytes",
        "8",
        "--output-bytes",
        "4/item",
    ];
    let mut run = vec!["run", "--backend", "software", "--workers", "1"];
    run.extend(kernel);
    run.extend(["--outputs", outputs.to_str().unwrap()]);
    for verify in [&["--verify"][..], &["--verify-sample", "10"]] {
        let args: Vec<&str> = run.iter().chain(verify).copied().collect();
        fails_before_binding(&args, &["--verify", "--kernel-file", "--replicate PCT"]);
        assert!(!outputs.exists(), "nothing written");
    }
    // `submit` refuses it before it reaches for a coordinator (none listens here).
    let mut submit = vec!["submit", "--coordinator", "tcp://127.0.0.1:1"];
    submit.extend(kernel);
    submit.push("--verify");
    assert_fails_with(&conquer(&submit), 1, &["--replicate PCT"]);
}

#[test]
fn m23_what_is_written_after_the_batch_is_checked_before_it_and_a_search_too_large_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    let picture = [
        "--kernel",
        "mandelbrot",
        "--backend",
        "cpu",
        "--width",
        "16",
    ];
    let cases: [(Vec<&str>, &[&str]); 5] = [
        // A picture, a timeline or a results file that could not be written was found
        // out only once the batch had run, its work lost.
        (
            [&picture[..], &["--height", "16", "--image", "/proc/x.png"]].concat(),
            &["--image /proc/x.png", "cannot write in its folder"],
        ),
        (
            vec!["--tasks", "3", "--max-ms", "1", "--timeline", folder],
            &["--timeline", "is a directory"],
        ),
        // A directory as the results file: --resume and --overwrite cannot help.
        (
            vec!["--tasks", "3", "--max-ms", "1", "--results", folder],
            &["is a directory: name a file"],
        ),
        (
            vec![
                "--tasks",
                "3",
                "--max-ms",
                "1",
                "--results",
                folder,
                "--overwrite",
            ],
            &["is a directory: name a file"],
        ),
        // A search of more tasks than a batch holds asked for 100 GB and aborted.
        (
            vec![
                "--kernel",
                "search",
                "--keys",
                "4294967295",
                "--keys-per-task",
                "1",
            ],
            &[
                "over the limit of 50000000",
                "--keys-per-task to 86",
                "--chunking",
            ],
        ),
    ];
    for (args, words) in cases {
        let args: Vec<&str> = ["run"].iter().chain(&args).copied().collect();
        fails_before_binding(&args, words);
    }
    // A picture's missing folder is made, as --outputs makes its own.
    let nested = dir.path().join("new").join("x.png");
    let args = [
        &picture[..],
        &["--height", "16", "--image", nested.to_str().unwrap()],
    ]
    .concat();
    let (status, _, log) = conquer(&[&["run"][..], &args].concat());
    assert!(status.success(), "{log}");
    assert!(std::fs::read(&nested).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn m24_a_malformed_coordinator_a_mistyped_log_filter_and_zero_work_units_are_named() {
    let outcome = conquer(&["jobs", "--coordinator", "udp://x", "--timeout", "2"]);
    assert_fails_with(&outcome, 1, &["--coordinator", "expected tcp://HOST:PORT"]);
    let outcome = conquer(&["--log", "debgu", "run", "--tasks", "2", "--max-ms", "1"]);
    assert_fails_with(&outcome, 2, &["--log", "debgu", "not a level"]);
    let outcome = conquer(&["run", "--units-per-ms", "0", "--tasks", "2"]);
    assert_fails_with(&outcome, 2, &["--units-per-ms"]);
    // A malformed live-view address, in `run` too: its form, not its exposure.
    let outcome = conquer(&["run", "--http", "localhost"]);
    assert_fails_with(&outcome, 1, &["--http \"localhost\"", "expected HOST:PORT"]);
    // A negative number read as a flag of its own: the flag it followed is named.
    let outcome = conquer(&["run", "--min-ms", "-1"]);
    assert_fails_with(&outcome, 2, &["--min-ms -1", "negative"]);
}

#[test]
fn m25_flags_the_batch_would_ignore_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("t.txt");
    std::fs::write(&tasks, "5\n").unwrap();
    let tasks = tasks.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["--kernel", "mandelbrot", "--tasks", "3"],
            &["--tasks", "drop --tasks"],
        ),
        (
            &["--kernel", "mandelbrot", "--tasks-file", tasks],
            &["drop --tasks-file"],
        ),
        (&["--kernel", "search", "--max-ms", "3"], &["drop --max-ms"]),
        (
            &["--chunking", "fixed", "--items", "10", "--tasks", "5"],
            &["divisible job", "drop --tasks"],
        ),
        (
            &["--chunking", "static", "--chunk-items", "3"],
            &["--chunking fixed", "--chunk-items"],
        ),
        (
            &["--kernel", "copy", "--inputs", tasks, "--constants", "1"],
            &["drop --constants"],
        ),
        // A negative first constant is a value, not a flag; the view's are its own.
        (
            &["--kernel", "mandelbrot", "--constants", "-2.5"],
            &["params.c", "drop --constants"],
        ),
    ];
    for (flags, words) in cases {
        let args: Vec<&str> = ["run"].iter().chain(flags).copied().collect();
        fails_before_binding(&args, words);
    }
    // The defaults themselves, and a seed (which orders a shuffle too), are no conflict.
    let (status, _, log) = conquer(&[
        "run",
        "--kernel",
        "search",
        "--keys",
        "4096",
        "--keys-per-task",
        "1024",
        "--bits",
        "4",
        "--backend",
        "cpu",
        "--seed",
        "7",
        "--tasks",
        "100",
    ]);
    assert!(status.success(), "{log}");
}

#[test]
fn m26_a_coordinator_refuses_settings_that_would_fail_every_job_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let missing = dir.path().join("missing");
    let cases: [(&[&str], &[&str]); 3] = [
        (&["--max-input", "0"], &["--max-input 0"]),
        (
            &["--inputs-dir", missing.to_str().unwrap()],
            &["--inputs-dir", "no such directory"],
        ),
        (
            &[
                "--bind",
                "tcp://127.0.0.1:5",
                "--results-bind",
                "tcp://127.0.0.1:5",
            ],
            &["--bind and --results-bind are both", "its own port"],
        ),
    ];
    for (flags, words) in cases {
        let args: Vec<&str> = ["serve", "--state", state]
            .iter()
            .chain(flags)
            .copied()
            .collect();
        fails_before_binding(&args, words);
    }
}
