//! What a peer that has joined can do to a batch, and cannot: hoard, straggle while
//! heartbeating, panic, bloat the sink, forge statuses, flood with fake workers; and the
//! flags and signals that used to crash or mislead. Raw ZeroMQ peers play the hostile ones.

use crate::util::{self, report, Proc};
use conquer::protocol::{Message, Status, TaskResult, WorkerInfo};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn info(name: &str, window_hint: u16) -> WorkerInfo {
    WorkerInfo {
        name: name.into(),
        session: 42,
        backend: "sleep".into(),
        adapter: String::new(),
        window_hint,
        codecs: 0,
        fill: 0,
    }
}

/// A worker that joins properly, asks for `window_hint` tasks, takes whatever it is given,
/// heartbeats, and never finishes anything. Returns how many tasks it was given.
fn hoarder(
    sink_ep: &str,
    vent_ep: &str,
    stop: Arc<AtomicBool>,
    took: std::sync::mpsc::Sender<()>,
) -> usize {
    let me = util::RawWorker::join(sink_ep, vent_ep, info("hoarder", u16::MAX));
    let mut given = 0;
    while !stop.load(Ordering::SeqCst) {
        me.beat();
        for message in me.heard_from_ventilator() {
            if let Message::Tasks { tasks: got, .. } = message {
                if given == 0 {
                    took.send(()).unwrap();
                }
                given += got.len();
            }
        }
    }
    given
}

#[test]
fn h01_h02_a_hoarding_straggler_gets_a_bounded_share_and_its_tasks_are_backed_up() {
    let (sink, sink_ep) = util::sink(&[]);
    let dispatch = ["--backup-slack-ms", "300", "--backup-factor", "2"];
    let mut vent_args = vec![
        "--tasks",
        "60",
        "--min-ms",
        "20",
        "--max-ms",
        "20",
        "--wait-workers",
        "1",
    ];
    vent_args.extend(dispatch);
    let (vent, vent_ep) = util::ventilator(&sink_ep, &vent_args);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let fake = {
        let (sink_ep, vent_ep, stop) = (sink_ep.clone(), vent_ep.clone(), stop.clone());
        std::thread::spawn(move || hoarder(&sink_ep, &vent_ep, stop, tx))
    };
    rx.recv_timeout(util::PATIENCE)
        .expect("the hoarder took tasks");
    let honest: Vec<Proc> = ["h1", "h2", "h3"]
        .iter()
        .map(|name| util::worker(name, &vent_ep, &sink_ep, &["--exit-when-done"]))
        .collect();
    let r = util::completed(sink, 60, None);
    stop.store(true, Ordering::SeqCst);
    let given = fake.join().unwrap();
    // Never measured (it never reports), it holds one task at a time: the one it took.
    assert_eq!(given, 1, "the hoarder asked for 65535 and got {given}");
    assert!(
        r["redispatched"].as_u64().unwrap() >= 1,
        "backups were sent: {r}"
    );
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    drop(honest);
}

#[test]
fn h02_a_worker_whose_task_thread_panics_leaves_instead_of_heartbeating_on() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "20",
            "--min-ms",
            "5",
            "--max-ms",
            "5",
            "--wait-workers",
            "2",
        ],
    );
    let zombie = Proc::start_with_env(
        "zombie",
        &[
            "worker",
            "--name",
            "zombie",
            "--backend",
            "sleep",
            "--ventilator",
            &vent_ep,
            "--sink",
            &sink_ep,
        ],
        &[("CONQUER_TEST_FAULT", "panic")],
    );
    let good = util::worker("good", &vent_ep, &sink_ep, &["--exit-when-done"]);
    let (status, _, log) = zombie.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the task thread panicked"), "{log}");
    util::completed(sink, 20, None);
    drop((vent, good));
}

#[test]
fn h03_h04_h05_results_before_a_batch_are_bounded_and_forged_batches_and_statuses_are_refused() {
    let (sink, sink_ep) = util::sink(&[]);
    let ctx = zmq::Context::new();
    let stranger = ctx.socket(zmq::DEALER).unwrap();
    stranger.set_linger(5000).unwrap();
    stranger.set_sndhwm(0).unwrap();
    stranger.connect(&sink_ep).unwrap();
    let result = |id: u32, status: Status| TaskResult {
        id,
        workload_ms: 1,
        status,
        wall_us: 1,
        kernel_us: 0,
        checksum: 0,
        started_unix_ms: 0,
        finished_unix_ms: 0,
        ..TaskResult::default()
    };
    // A forged batch of no tasks would complete at once; it is refused.
    stranger
        .send(
            Message::Batch {
                batch: 0xbad,
                session: 1,
                started_unix_ms: 0,
                task_count: 0,
                expected_ms: 0,
                longest_ms: 0,
                job: Default::default(),
                names: Vec::new(),
            }
            .encode(),
            0,
        )
        .unwrap();
    // 200,000 early results and 100,000 empty messages before any batch exists.
    let flood = 300_000u32;
    for i in 0..flood {
        let results = if i % 3 == 0 {
            vec![]
        } else {
            vec![result(i, Status::Ok)]
        };
        let message = Message::Results {
            batch: 0xdead,
            worker: info("flood", 1),
            results,
        };
        stranger.send(message.encode(), 0).unwrap();
    }
    // The sink answers a greeting on the same connection only after reading everything
    // sent before it: the flood has been read when the welcome comes back.
    stranger
        .send(Message::Join(info("flood", 1)).encode(), 0)
        .unwrap();
    stranger.set_rcvtimeo(60_000).unwrap();
    assert_eq!(
        Message::decode(&stranger.recv_bytes(0).unwrap()),
        Ok(Message::Welcome { codecs: 1 })
    );
    let peak = util::peak_rss_kib(sink.pid());
    assert!(
        peak > 0 && peak < 40 * 1024,
        "the sink's peak memory after the flood: {peak} KiB"
    );

    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &["--tasks", "30", "--max-ms", "5", "--wait-workers", "1"],
    );
    let w = util::worker("real", &vent_ep, &sink_ep, &["--exit-when-done"]);
    let started = sink.event("batch");
    // A mismatch for a batch that asked for no verification is not believed.
    let batch = started["batch"]
        .as_str()
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .expect("the batch id in the sink's event");
    stranger
        .send(
            Message::Results {
                batch,
                worker: info("liar", 1),
                results: vec![result(0, Status::Mismatch)],
            }
            .encode(),
            0,
        )
        .unwrap();
    let (status, stdout, log) = sink.finish();
    assert!(
        status.success(),
        "a sleep batch with a forged mismatch still succeeds: {log}"
    );
    let r = report(&stdout);
    assert_eq!(r["mismatches"], 0, "{r}");
    assert_eq!(r["tasks"], 30, "{r}");
    assert!(r["rejected"].as_u64().unwrap() >= 280_000, "{r}");
    drop((vent, w));
}

#[test]
fn h06_h07_a_flood_of_fake_workers_costs_little_and_is_logged_in_summary() {
    let util::Cluster {
        sink,
        vent,
        workers,
        vent_ep,
        ..
    } = util::Cluster::start(
        &["--tasks", "200000", "--min-ms", "0", "--max-ms", "0"],
        &["f1", "f2"],
        &[],
    );
    let ctx = zmq::Context::new();
    // One whose name would break a results file, refused at the greeting: it greets first,
    // as the batch starts, since a ventilator whose batch is over answers nobody (the
    // batch of zero-work tasks may take only a fraction of a second).
    let bad = ctx.socket(zmq::DEALER).unwrap();
    bad.set_linger(0).unwrap();
    bad.set_rcvtimeo(30_000).unwrap();
    bad.connect(&vent_ep).unwrap();
    bad.send(Message::Hello(info("line1\nline2", 1)).encode(), 0)
        .unwrap();
    sink.event("batch");
    // 300 workers that greet the ventilator and go.
    for i in 0..300u32 {
        let fake = ctx.socket(zmq::DEALER).unwrap();
        fake.set_linger(200).unwrap();
        fake.set_identity(format!("fake-{i}").as_bytes()).unwrap();
        fake.connect(&vent_ep).unwrap();
        fake.send(Message::Hello(info(&format!("fake-{i}"), 4)).encode(), 0)
            .unwrap();
    }
    match Message::decode(&bad.recv_bytes(0).unwrap()) {
        Ok(Message::Refused { reason, .. }) => {
            assert!(reason.contains("control character"), "{reason}")
        }
        other => panic!("a name with a line break was not refused: {other:?}"),
    }
    let r = util::completed(sink, 200_000, None);
    assert!(r["duplicates"].as_u64().unwrap() < 200_000, "{r}");
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    let gone_lines = log
        .lines()
        .filter(|l| l.contains("is gone") || l.contains("declaring it gone"))
        .count();
    assert!(gone_lines <= 60, "{gone_lines} lines about lost workers");
    assert!(!log.contains("line1\nline2"), "names are escaped");
    drop(workers);
}

#[test]
fn h08_flags_and_files_that_crashed_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.txt");
    std::fs::write(&long, "262144\n3600000\n").unwrap();
    let cases: [(&[&str], i32, &str); 8] = [
        (&["ventilator", "--tasks", "4294967295"], 2, "--tasks"),
        (&["run", "--tasks-file", "/dev/zero"], 1, "longer than"),
        (&["run", "--slowdown", "1e300"], 1, "--slowdown"),
        (
            &["ventilator", "--sink", "tcp://127.0.0.1:70000"],
            1,
            "70000",
        ),
        (&["ventilator", "--bind", "tcp://*:-1"], 1, "--bind"),
        (&["run", "--backup-factor", "0"], 1, "--backup-factor"),
        (
            &["worker", "--max-dispatch-ms", "0"],
            1,
            "--max-dispatch-ms",
        ),
        (&["run", "--max-dispatch-ms", "NaN"], 1, "--max-dispatch-ms"),
    ];
    for (args, code, words) in cases {
        let (status, _, log) = Proc::start_quiet("conquer", args).finish();
        assert_eq!(status.code(), Some(code), "{args:?}: {log}");
        assert!(log.contains(words), "{args:?}: {log}");
    }
    // Hour-long tasks are allowed on every backend, as the README says.
    let sink = util::free_endpoint();
    let (status, _, log) = Proc::start_quiet(
        "conquer",
        &[
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--sink",
            &sink,
            "--tasks-file",
            long.to_str().unwrap(),
            "--wait-timeout",
            "0.2",
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("waiting for 1 worker"),
        "got past the checks: {log}"
    );
}

#[test]
fn h09_sigterm_finishes_cleanly_with_143() {
    let sink = Proc::start("sink", &["sink", "--bind", "tcp://127.0.0.1:0"]);
    sink.event("ready");
    sink.signal("TERM");
    let (status, _, log) = sink.finish();
    assert_eq!(status.code(), Some(143), "{log}");
}

#[test]
fn h10_a_sink_restarted_without_results_reports_the_true_elapsed_time() {
    let sink_ep = util::free_endpoint();
    let bind = ["sink", "--bind", sink_ep.as_str(), "--json"];
    let first = Proc::start("sink-1", &bind);
    first.event("listening");
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "30",
            "--min-ms",
            "100",
            "--max-ms",
            "100",
            "--wait-workers",
            "1",
        ],
    );
    let w = util::worker("w", &vent_ep, &sink_ep, &["--exit-when-done"]);
    // The batch's span, by the sinks' own clocks: from the first one's start of the batch
    // to the second one's end of it (not counting how long either takes to exit).
    let started = first.event("batch")["unix_ms"].as_u64().expect("a time");
    // Part of the batch is done when the sink dies.
    w.event("ready");
    std::thread::sleep(Duration::from_millis(800)); // the scenario: the sink dies mid-batch
    first.signal("KILL");
    drop(first);
    let second = Proc::start("sink-2", &bind);
    let ended = second.event("complete")["unix_ms"]
        .as_u64()
        .expect("a time");
    let r = util::completed(second, 30, None);
    let true_ms = ended.saturating_sub(started) as f64;
    let elapsed = r["elapsed_ms"].as_f64().expect("elapsed_ms");
    assert!(
        elapsed >= true_ms * 0.8,
        "reported {elapsed} ms for a batch of {true_ms} ms: {r}"
    );
    assert!(r["efficiency"].as_f64().expect("efficiency") <= 1.05, "{r}");
    drop((vent, w));
}

#[test]
fn h10_a_ventilator_whose_sink_is_gone_for_good_stops_with_a_message() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "40",
            "--min-ms",
            "100",
            "--max-ms",
            "100",
            "--wait-workers",
            "1",
            "--sink-timeout",
            "2",
        ],
    );
    let w = util::worker("w", &vent_ep, &sink_ep, &[]);
    sink.event("batch");
    sink.signal("KILL");
    let (status, _, log) = vent.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("--sink-timeout"), "{log}");
    drop(w);
}
