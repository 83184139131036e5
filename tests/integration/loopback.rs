//! What another user of the same machine can do: connect to `conquer run`'s loopback
//! sockets (refused: the run makes its own secret), and name a worker so that it reads
//! backwards in a log (escaped). Also binds that name their address: `tcp://localhost:P`
//! and `tcp://[::1]:P`, end to end.

use crate::util::{self, Proc};
use conquer::batch::Job;
use conquer::protocol::{Message, Status, TaskResult, WorkerInfo};
use std::time::Instant;

/// Connects `socket` to `endpoint` and waits for its handshake's outcome: `true` when the
/// peer admitted it, `false` when the handshake failed (refused).
fn handshake(ctx: &zmq::Context, socket: &zmq::Socket, endpoint: &str) -> bool {
    let monitor_at = conquer::auth::monitor_endpoint();
    socket
        .monitor(&monitor_at, zmq::SocketEvent::ALL as i32)
        .unwrap();
    let monitor = ctx.socket(zmq::PAIR).unwrap();
    monitor.connect(&monitor_at).unwrap();
    socket.connect(endpoint).unwrap();
    let deadline = Instant::now() + util::PATIENCE;
    while Instant::now() < deadline {
        let mut items = [monitor.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 100).unwrap();
        while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
            let Some((event, value)) = conquer::auth::event(&frames) else {
                continue;
            };
            if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 {
                return true;
            }
            if conquer::auth::Failure::of(event, value)
                .is_some_and(|f| f != conquer::auth::Failure::Closed)
            {
                return false;
            }
        }
    }
    panic!("no handshake with {endpoint} within {:?}", util::PATIENCE);
}

#[test]
fn a_local_peer_without_the_runs_secret_cannot_join_or_forge_a_batch() {
    let run = Proc::start(
        "run",
        &[
            "run",
            "--workers",
            "2",
            "--backend",
            "sleep",
            "--tasks",
            "40",
            "--min-ms",
            "40",
            "--max-ms",
            "60",
            "--json",
        ],
    );
    let sink_ep = run.endpoint("results");
    let vent_ep = run.endpoint("tasks");

    // The forger: another local user on raw sockets, speaking the current wire format.
    let ctx = zmq::Context::new();
    let raw = |endpoint: &str| {
        let s = ctx.socket(zmq::DEALER).unwrap();
        s.set_identity(b"forger/0000000000000001").unwrap();
        s.set_linger(0).unwrap();
        let admitted = handshake(&ctx, &s, endpoint);
        assert!(
            !admitted,
            "{endpoint}: `conquer run` admitted a local peer that has no secret"
        );
        s
    };
    let to_sink = raw(&sink_ep);
    let to_vent = raw(&vent_ep);
    let info = WorkerInfo {
        name: "forger".into(),
        session: 1,
        backend: "sleep".into(),
        adapter: String::new(),
        window_hint: 1,
        codecs: 0,
        fill: 0,
    };
    let send = |socket: &zmq::Socket, message: Message| match socket
        .send(message.encode(), zmq::DONTWAIT)
    {
        Ok(()) | Err(zmq::Error::EAGAIN) => {}
        Err(e) => panic!("sending as the forger: {e}"),
    };
    // A phantom batch for the sink, a join, and a result for every task it might hold.
    send(
        &to_sink,
        Message::Batch {
            batch: 0xf00d,
            session: 7,
            started_unix_ms: 0,
            task_count: 1,
            expected_ms: 1,
            longest_ms: 1,
            job: Job::default(),
            names: Vec::new(),
        },
    );
    send(&to_sink, Message::Join(info.clone()));
    send(
        &to_sink,
        Message::Results {
            batch: 0xf00d,
            worker: info.clone(),
            results: vec![TaskResult {
                id: 0,
                workload_ms: 1,
                status: Status::Ok,
                ..TaskResult::default()
            }],
        },
    );
    send(&to_vent, Message::Hello(info));

    let (status, stdout, log) = run.finish();
    assert!(status.success(), "the run completes normally: {log}");
    let r = util::report(&stdout);
    assert_eq!(r["tasks"], 40, "{r}");
    let names: Vec<&str> = r["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["worker-1", "worker-2"],
        "only the run's workers: {r}"
    );
    assert_eq!(r["rejected"], 0, "nothing of the forger's was read: {r}");
    assert!(r["refused"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(to_sink.recv_bytes(zmq::DONTWAIT), Err(zmq::Error::EAGAIN));
    assert_eq!(to_vent.recv_bytes(zmq::DONTWAIT), Err(zmq::Error::EAGAIN));
}

/// Fails, saying why, where this machine has no IPv6 loopback (the test needs `::1`).
fn require_ipv6_loopback() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!(
            "this test binds tcp://[::1]:P, but this machine has no IPv6 loopback ({e}); \
             enable it (`sysctl -w net.ipv6.conf.lo.disable_ipv6=0`, or a container with IPv6)"
        );
    }
}

#[test]
fn binds_on_localhost_and_on_ipv6_loopback_work_end_to_end() {
    require_ipv6_loopback();
    let sink = Proc::start("sink", &["sink", "--bind", "tcp://[::1]:0", "--json"]);
    let sink_at = sink.endpoint("results");
    assert!(sink_at.starts_with("tcp://[::1]:"), "{sink_at}");
    let vent = Proc::start(
        "ventilator",
        &[
            "ventilator",
            "--bind",
            "tcp://localhost:0",
            "--sink",
            &sink_at,
            "--tasks",
            "20",
            "--min-ms",
            "1",
            "--max-ms",
            "3",
            "--wait-workers",
            "1",
            "--shutdown-workers",
        ],
    );
    let vent_at = vent.endpoint("tasks");
    let port = vent_at.rsplit(':').next().unwrap();
    // Workers dial the names: the ventilator by host name, the sink by IPv6 address.
    let worker = util::worker(
        "w1",
        &format!("tcp://localhost:{port}"),
        &sink_at,
        &["--exit-when-done"],
    );
    let r = util::completed(sink, 20, None);
    assert_eq!(util::delivered(&r), 20, "{r}");
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    let (status, _, log) = worker.finish();
    assert!(status.success(), "{log}");
}

#[test]
fn a_worker_name_that_would_reverse_a_line_is_printed_escaped() {
    let evil = "w\u{202e}gnp.exe";
    for json in [false, true] {
        let mut args = vec!["sink", "--bind", "tcp://127.0.0.1:0"];
        if json {
            args.push("--json");
        }
        let sink = Proc::start("sink", &args);
        let sink_ep = sink.endpoint("results");
        let (vent, vent_ep) = util::ventilator(
            &sink_ep,
            &[
                "--tasks",
                "6",
                "--min-ms",
                "1",
                "--max-ms",
                "2",
                "--wait-workers",
                "1",
                "--shutdown-workers",
            ],
        );
        let worker = util::worker(evil, &vent_ep, &sink_ep, &["--exit-when-done"]);
        let (status, stdout, sink_log) = sink.finish();
        assert!(status.success(), "{sink_log}");
        let (_, _, vent_log) = vent.finish();
        let (_, _, worker_log) = worker.finish();
        for (what, text) in [
            ("the report", &stdout),
            ("the sink's log", &sink_log),
            ("the ventilator's log", &vent_log),
            ("the worker's log", &worker_log),
        ] {
            assert!(
                !text.contains('\u{202e}'),
                "{what} prints the override raw (json: {json}):\n{}",
                text.escape_debug()
            );
        }
        if json {
            // Escaped as JSON does it: the name reads back as it was.
            assert!(
                stdout.contains("w\\u202egnp.exe"),
                "{}",
                stdout.escape_debug()
            );
            let r = util::report(&stdout);
            assert_eq!(r["workers"][0]["id"], evil, "{r}");
        } else {
            assert!(stdout.contains("w\\u{202e}gnp.exe"), "{stdout}");
        }
        assert!(
            sink_log.contains("w\\u{202e}gnp.exe"),
            "the sink names the worker, escaped:\n{sink_log}"
        );
    }
}
