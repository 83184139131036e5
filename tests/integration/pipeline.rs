//! The pipeline across processes: a batch completes with every task counted once, late
//! joiners get work, the start waits for workers, strangers' bytes are counted and dropped,
//! bad input fails early.

use crate::util::{self, report, Proc};
use std::time::Duration;

#[test]
fn worker_processes_complete_a_batch_each_task_once() {
    let util::Cluster {
        sink,
        vent,
        workers,
        results,
        ..
    } = util::Cluster::start(
        &["--tasks", "200", "--min-ms", "0", "--max-ms", "5"],
        &["w0", "w1", "w2"],
        &[],
    );
    let r = util::completed(sink, 200, Some(&*results));
    // A duplicate comes only from a task handed out again (a backup, the end game).
    assert!(
        r["duplicates"].as_u64().unwrap() <= r["redispatched"].as_u64().unwrap(),
        "{r}"
    );
    assert_eq!(r["rejected"], 0);
    let workers_in_report = r["workers"].as_array().unwrap().len();
    assert_eq!(workers_in_report, 3, "every worker took part: {r}");

    let (status, stdout, log) = vent.finish();
    assert!(status.success(), "ventilator failed: {log}");
    assert!(stdout.contains("Total expected cost: "), "{stdout}");
    for w in workers {
        let (status, _, log) = w.finish();
        assert!(status.success(), "worker failed: {log}");
    }
}

#[test]
fn a_worker_joining_300ms_after_the_start_still_gets_tasks() {
    let (sink, sink_ep) = util::sink(&[]);
    // One worker alone would need 40 x 50 ms = 2 s: plenty of batch left for a late joiner.
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "40",
            "--min-ms",
            "50",
            "--max-ms",
            "50",
            "--wait-workers",
            "1",
        ],
    );
    let early = util::worker("early", &vent_ep, &sink_ep, &["--exit-when-done"]);
    sink.event("batch");
    std::thread::sleep(Duration::from_millis(300)); // the scenario: join late
    let late = util::worker("late", &vent_ep, &sink_ep, &["--exit-when-done"]);
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    let late_tasks = r["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "late")
        .map(|w| w["tasks"].as_u64().unwrap())
        .unwrap_or(0);
    // It joined with ~1.7 s of work left: a fair share is about a third of the batch.
    assert!(late_tasks >= 8, "late joiner got {late_tasks} tasks: {r}");
    drop((vent, early, late));
}

#[test]
fn the_start_waits_for_workers_then_times_out_clearly() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "4",
            "--max-ms",
            "1",
            "--wait-workers",
            "2",
            "--wait-timeout",
            "1.5",
        ],
    );
    let _one = util::worker("only", &vent_ep, &sink_ep, &[]);
    vent.event_where("workers", |e| e["ready"] == 1);
    let (status, _, log) = vent.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("timed out after 1.5 s waiting for 2 workers (1 ready)"),
        "{log}"
    );
    assert!(
        log.contains("--wait-workers"),
        "the error names the fix: {log}"
    );
    drop(sink);
}

#[test]
fn the_start_waits_until_enough_workers_are_ready() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--tasks",
            "20",
            "--min-ms",
            "10",
            "--max-ms",
            "10",
            "--wait-workers",
            "2",
        ],
    );
    let a = util::worker("a", &vent_ep, &sink_ep, &["--exit-when-done"]);
    vent.event_where("workers", |e| e["ready"] == 1);
    let b = util::worker("b", &vent_ep, &sink_ep, &["--exit-when-done"]);
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    for w in r["workers"].as_array().unwrap() {
        // Started together: neither got a head start on the other.
        let tasks = w["tasks"].as_u64().unwrap();
        assert!((6..=14).contains(&tasks), "{r}");
    }
    drop((vent, a, b));
}

/// Frames no conquer peer sends: random bytes, a truncated message, another version,
/// another magic, an unknown kind, an empty frame, and a multi-frame message.
fn garbage() -> Vec<Vec<Vec<u8>>> {
    let mut frames: Vec<Vec<Vec<u8>>> = vec![
        vec![b"\x00\x01\x02garbage".to_vec()],
        vec![b"CQ\x01".to_vec()],
        vec![b"CQ\x09\x03\x00\x00".to_vec()],
        vec![b"ZQ\x01\x06".to_vec()],
        vec![b"CQ\x01\x63".to_vec()],
        vec![Vec::new()],
        vec![b"CQ\x01\x06".to_vec(), b"second frame".to_vec()],
        // A results message that claims 1000 results but carries none.
        vec![{
            let mut m = b"CQ\x01\x07".to_vec();
            m.extend_from_slice(&[0; 8]);
            m.extend_from_slice(&[0, 0, 0, 0, 0]);
            m.extend_from_slice(&1000u32.to_le_bytes());
            m
        }],
    ];
    let mut seed = 0x1234_5678u32;
    for len in 1..40 {
        let bytes = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        frames.push(vec![bytes]);
    }
    frames
}

/// Messages a stranger could forge that look like ours but are not for this batch.
fn foreign_but_valid() -> Vec<Vec<Vec<u8>>> {
    use conquer::protocol::{Done, Message, Status, TaskResult, WorkerInfo};
    let worker = WorkerInfo {
        name: "stranger".into(),
        session: 1,
        backend: "sleep".into(),
        adapter: String::new(),
        window_hint: 1,
        codecs: 0,
        fill: 0,
    };
    vec![
        vec![Message::Done {
            batch: 0xdead,
            done: vec![Done {
                id: 1,
                status: Status::Ok,
                wall_us: 1,
                kernel_us: 0,
                items: 0,
                ..Done::default()
            }],
        }
        .encode()],
        vec![Message::Results {
            batch: 0xdead,
            worker,
            results: vec![TaskResult {
                id: 1,
                workload_ms: 1,
                status: Status::Ok,
                wall_us: 1,
                kernel_us: 0,
                checksum: 0,
                started_unix_ms: 0,
                finished_unix_ms: 0,
                ..TaskResult::default()
            }],
        }
        .encode()],
        vec![Message::Complete { batch: 0xdead }.encode()],
    ]
}

#[test]
fn garbage_at_every_bound_socket_is_counted_and_the_batch_stays_correct() {
    let util::Cluster {
        sink,
        vent,
        workers,
        sink_ep,
        vent_ep,
        results,
    } = util::Cluster::start(
        &["--tasks", "100", "--min-ms", "10", "--max-ms", "20"],
        &["g1", "g2"],
        &[],
    );
    sink.event("batch");

    // 10,000 malformed or foreign messages at each bound socket during the batch.
    let ctx = zmq::Context::new();
    let mut sent = 0u64;
    let mut kinds = garbage();
    kinds.extend(foreign_but_valid());
    for endpoint in [&vent_ep, &sink_ep] {
        let stranger = ctx.socket(zmq::DEALER).unwrap();
        stranger.set_linger(5000).unwrap();
        stranger.set_sndhwm(0).unwrap();
        stranger.connect(endpoint).unwrap();
        for message in kinds.iter().cycle().take(10_000) {
            stranger.send_multipart(message.clone(), 0).unwrap();
            sent += 1;
        }
        // An oversized frame is refused by the size limit (libzmq drops that connection)
        // before it is read into memory: it never reaches the role, so it is not counted.
        let giant = ctx.socket(zmq::DEALER).unwrap();
        giant.set_linger(1000).unwrap();
        giant.connect(endpoint).unwrap();
        // One byte over the default --max-payload and its envelope.
        let limit =
            conquer::protocol::max_message_bytes(conquer::protocol::DEFAULT_MAX_PAYLOAD) as usize;
        giant.send(vec![b'C'; limit + 1], 0).unwrap();
    }
    drop(ctx); // waits until every frame is flushed, well before the batch can end

    let r = util::completed(sink, 100, Some(&*results));
    assert!(
        r["duplicates"].as_u64().unwrap() <= r["redispatched"].as_u64().unwrap(),
        "{r}"
    );
    assert_eq!(r["rejected"].as_u64().unwrap(), sent, "{r}");
    drop((vent, workers));
}

#[test]
fn a_bad_line_in_the_tasks_file_fails_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.txt");
    std::fs::write(&file, "# batch\n10\n20\nten\n30\n").unwrap();
    let vent = Proc::start(
        "ventilator",
        &[
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--tasks-file",
            file.to_str().unwrap(),
        ],
    );
    let (status, stdout, log) = vent.finish();
    assert_eq!(status.code(), Some(1));
    assert!(log.contains("line 4"), "{log}");
    assert!(log.contains("\"ten\""), "{log}");
    assert!(!log.contains("listening on"), "nothing starts: {log}");
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn run_reports_json_with_the_promised_keys() {
    let run = Proc::start(
        "run",
        &[
            "run",
            "--workers",
            "3",
            "--tasks",
            "30",
            "--max-ms",
            "5",
            "--json",
            "--backend",
            "sleep",
        ],
    );
    let (status, stdout, log) = run.finish();
    assert!(status.success(), "{log}");
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON object on stdout: {stdout}"
    );
    let r = report(&stdout);
    for key in [
        "tasks",
        "expected_ms",
        "elapsed_ms",
        "ideal_ms",
        "efficiency",
        "duplicates",
        "redispatched",
        "rejected",
        "workers",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    assert_eq!(r["tasks"], 30);
    assert_eq!(r["workers"].as_array().unwrap().len(), 3);
    assert!(r["elapsed_ms"].as_f64().unwrap() >= r["ideal_ms"].as_f64().unwrap() * 0.99);
}

#[test]
fn usage_errors_exit_2_and_ctrl_c_exits_130() {
    let (status, _, log) = Proc::start("bad", &["run", "--workers", "0"]).finish();
    assert_eq!(status.code(), Some(2), "{log}");
    let (status, _, log) = Proc::start("bad", &["run", "--min-ms", "9", "--max-ms", "3"]).finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("--min-ms 9 is larger than --max-ms 3"),
        "{log}"
    );

    // A worker with nobody to talk to still leaves promptly on Ctrl-C.
    let worker = util::worker("lonely", "tcp://127.0.0.1:9", "tcp://127.0.0.1:9", &[]);
    worker.event("connecting");
    worker.signal("INT");
    let (status, _, log) = worker.finish();
    assert_eq!(status.code(), Some(130), "{log}");
}

#[test]
fn a_worker_stays_up_across_batches_and_follows_restarted_roles() {
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(&sink_ep, &["--tasks", "10", "--max-ms", "3"]);
    let worker = util::worker("stayer", &vent_ep, &sink_ep, &[]);
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    assert_eq!(report(&stdout)["workers"][0]["id"], "stayer");
    assert!(vent.finish().0.success());
    worker.event("batch-end");

    // A second batch on the same endpoints: the worker reconnects and takes part.
    let sink = Proc::start("sink2", &["sink", "--bind", &sink_ep, "--json"]);
    sink.event("listening");
    let vent = Proc::start(
        "vent2",
        &[
            "ventilator",
            "--bind",
            &vent_ep,
            "--sink",
            &sink_ep,
            "--tasks",
            "12",
            "--seed",
            "5",
            "--shutdown-workers",
        ],
    );
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(r["tasks"], 12);
    assert_eq!(r["workers"][0]["id"], "stayer", "{r}");
    assert!(vent.finish().0.success());
    // --shutdown-workers ends it after the second batch.
    let (status, _, log) = worker.finish();
    assert!(status.success(), "{log}");
    assert!(log.contains("leaving as asked"), "{log}");
}
