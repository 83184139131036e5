//! Authentication with real processes and sockets: a shared secret, an address allowlist
//! (a network namespace as the other machine) and protected mode. Peers without the
//! secret get no task and nothing they send is counted; refusals are counted and the
//! refused worker says why.

use crate::util::{self, Proc};
use conquer::protocol::{Message, Status, TaskResult, WorkerInfo};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A new secret made by `conquer secret new` in `dir`.
fn secret(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let (status, _, log) =
        Proc::start("secret", &["secret", "new", path.to_str().unwrap()]).finish();
    assert!(status.success(), "{log}");
    path
}

/// Sleep workers with the secret, leaving when the batch is done.
fn members(names: &[&str], vent_ep: &str, sink_ep: &str, key: &str) -> Vec<Proc> {
    names
        .iter()
        .map(|name| {
            util::worker(
                name,
                vent_ep,
                sink_ep,
                &["--secret-file", key, "--exit-when-done"],
            )
        })
        .collect()
}

/// Waits for a failed handshake on a raw socket's monitor: the peer refused it.
fn wait_refused(ctx: &zmq::Context, socket: &zmq::Socket, endpoint: &str) {
    let monitor = conquer::auth::watch(ctx, socket).unwrap();
    socket.connect(endpoint).unwrap();
    let deadline = Instant::now() + util::PATIENCE;
    loop {
        let mut items = [monitor.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 100).unwrap();
        if conquer::auth::failures(&monitor)
            .iter()
            .any(|f| *f != conquer::auth::Failure::Closed)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} never refused the raw peer"
        );
    }
}

#[test]
fn a_peer_without_the_secret_gets_no_task_and_nothing_it_sends_counts() {
    let dir = tempfile::tempdir().unwrap();
    let key = secret(dir.path(), "secret");
    let key = key.to_str().unwrap();
    let results = dir.path().join("results.jsonl");
    let (sink, sink_ep) =
        util::sink(&["--secret-file", key, "--results", results.to_str().unwrap()]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--secret-file",
            key,
            "--batch-id",
            "ab",
            "--tasks",
            "200",
            "--min-ms",
            "1",
            "--max-ms",
            "3",
            "--wait-workers",
            "2",
        ],
    );

    // The forger speaks the current wire format on raw sockets, without the secret: it
    // greets both roles and sends a result for every task of the batch.
    let ctx = zmq::Context::new();
    let info = WorkerInfo {
        name: "forger".into(),
        session: 1,
        backend: "sleep".into(),
        adapter: String::new(),
        window_hint: 1,
        codecs: 0,
        fill: 0,
    };
    let raw = |endpoint: &str| {
        let s = ctx.socket(zmq::DEALER).unwrap();
        s.set_identity(b"forger/0000000000000001").unwrap();
        s.set_linger(0).unwrap();
        wait_refused(&ctx, &s, endpoint);
        s
    };
    let to_sink = raw(&sink_ep);
    let to_vent = raw(&vent_ep);
    let forged: Vec<TaskResult> = (0..200)
        .map(|id| TaskResult {
            id,
            workload_ms: 1,
            status: Status::Ok,
            wall_us: 1000,
            kernel_us: 0,
            checksum: 0,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            ..TaskResult::default()
        })
        .collect();
    // Queued, or refused at once where no connection is being tried: never delivered.
    let attempt = |socket: &zmq::Socket, message: Message| match socket
        .send(message.encode(), zmq::DONTWAIT)
    {
        Ok(()) | Err(zmq::Error::EAGAIN) => {}
        Err(e) => panic!("sending as the forger: {e}"),
    };
    attempt(&to_vent, Message::Hello(info.clone()));
    attempt(&to_sink, Message::Join(info.clone()));
    attempt(
        &to_sink,
        Message::Results {
            batch: 0xab,
            worker: info,
            results: forged,
        },
    );

    let workers = members(&["w1", "w2"], &vent_ep, &sink_ep, key);
    let r = util::completed(sink, 200, Some(&results));
    let names: Vec<&str> = r["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["w1", "w2"], "only the real workers delivered: {r}");
    assert_eq!(
        r["rejected"], 0,
        "nothing of the forger's was even read: {r}"
    );
    assert!(
        r["refused"].as_u64().unwrap() >= 2,
        "both of its connections counted: {r}"
    );
    // Nothing ever reached the forger: no welcome, no heartbeat, no task.
    assert_eq!(to_sink.recv_bytes(zmq::DONTWAIT), Err(zmq::Error::EAGAIN));
    assert_eq!(to_vent.recv_bytes(zmq::DONTWAIT), Err(zmq::Error::EAGAIN));
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    drop(workers);
}

#[test]
fn a_worker_with_a_wrong_secret_or_none_is_refused_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let key = secret(dir.path(), "secret");
    let other = secret(dir.path(), "other");
    let key = key.to_str().unwrap();
    let (_sink, sink_ep) = util::sink(&["--secret-file", key]);
    let (_vent, vent_ep) = util::ventilator(&sink_ep, &["--secret-file", key]);

    let wrong = util::worker(
        "wrong",
        &vent_ep,
        &sink_ep,
        &["--secret-file", other.to_str().unwrap()],
    );
    let (status, _, log) = wrong.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("refused this connection") && log.contains("--secret-file"),
        "{log}"
    );

    let none = util::worker("none", &vent_ep, &sink_ep, &[]);
    let (status, _, log) = none.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("wants a secret") && log.contains("--secret-file"),
        "{log}"
    );

    // A worker with a secret facing roles without one is told so too.
    let (_open_sink, open_sink_ep) = util::sink(&[]);
    let (_open_vent, open_vent_ep) = util::ventilator(&open_sink_ep, &[]);
    let extra = util::worker(
        "extra",
        &open_vent_ep,
        &open_sink_ep,
        &["--secret-file", key],
    );
    let (status, _, log) = extra.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("runs without a secret"), "{log}");
}

#[test]
fn a_secret_file_others_may_read_is_refused_by_every_role() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = secret(dir.path(), "secret");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "`conquer secret new` makes it private");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let key = key.to_str().unwrap();
    for args in [
        vec!["sink", "--bind", "tcp://127.0.0.1:0", "--secret-file", key],
        vec![
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--secret-file",
            key,
        ],
        vec!["worker", "--backend", "sleep", "--secret-file", key],
        vec![
            "run",
            "--tasks",
            "4",
            "--backend",
            "sleep",
            "--secret-file",
            key,
        ],
        vec!["secret", "check", key],
    ] {
        let (status, _, log) = Proc::start(args[0], &args).finish();
        assert_eq!(status.code(), Some(1), "{args:?}: {log}");
        assert!(log.contains("chmod 600"), "{args:?}: {log}");
    }
}

#[test]
fn protected_mode_refuses_an_open_network_bind_and_names_the_fix() {
    for args in [
        vec!["sink", "--bind", "tcp://0.0.0.0:0"],
        vec![
            "ventilator",
            "--bind",
            "tcp://0.0.0.0:0",
            "--sink",
            "tcp://127.0.0.1:1",
        ],
        vec!["sink", "--classic", "--bind", "tcp://0.0.0.0:0"],
    ] {
        let (status, _, log) = Proc::start(args[0], &args).finish();
        assert_eq!(status.code(), Some(1), "{args:?}: {log}");
        for fix in [
            "conquer secret new",
            "--secret-file",
            "--allow",
            "--insecure",
        ] {
            assert!(log.contains(fix), "{args:?} does not name {fix}: {log}");
        }
    }
    // --insecure starts, with a warning.
    let sink = Proc::start(
        "insecure sink",
        &["sink", "--bind", "tcp://0.0.0.0:0", "--insecure"],
    );
    assert!(sink.endpoint("results").starts_with("tcp://0.0.0.0:"));
    sink.event("ready");
    sink.signal("INT");
    let (_, _, log) = sink.finish();
    let warning = log
        .lines()
        .find(|l| l.contains("--insecure lets anyone"))
        .unwrap_or_else(|| panic!("no warning about --insecure in:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
}

#[test]
fn the_allowlist_refuses_an_address_outside_it_and_admits_one_inside() {
    let Some(ns) = util::Netns::create_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = secret(dir.path(), "secret");
    let key = key.to_str().unwrap();
    let inside = format!("{}/32", ns.guest_ip);
    let port = |endpoint: String| endpoint.rsplit(':').next().unwrap().to_owned();
    // Two farms bound on every interface: one admits loopback only (and wants the
    // secret, which the outsider has: the address alone refuses it), one admits the
    // namespace too (and wants no secret).
    let pair = |allow: &[&str], secret: Option<&str>, tasks: &str| {
        let mut common = vec!["--bind", "tcp://0.0.0.0:0"];
        for a in allow {
            common.extend(["--allow", a]);
        }
        if let Some(s) = secret {
            common.extend(["--secret-file", s]);
        }
        let mut sink_args = vec!["sink", "--json"];
        sink_args.extend(&common);
        let sink = Proc::start("sink", &sink_args);
        let sink_port = port(sink.endpoint("results"));
        let local_sink = format!("tcp://127.0.0.1:{sink_port}");
        let mut vent_args = vec![
            "ventilator",
            "--sink",
            &local_sink,
            "--tasks",
            tasks,
            "--max-ms",
            "3",
        ];
        vent_args.extend(&common);
        let vent = Proc::start("ventilator", &vent_args);
        let vent_port = port(vent.endpoint("tasks"));
        (sink, vent, sink_port, vent_port)
    };

    let (_sink, _vent, sink_port, vent_port) = pair(&["127.0.0.1/32"], Some(key), "10");
    let outsider = ns.conquer(
        "outsider",
        &[
            "worker",
            "--backend",
            "sleep",
            "--secret-file",
            key,
            "--ventilator",
            &format!("tcp://{}:{vent_port}", ns.host_ip),
            "--sink",
            &format!("tcp://{}:{sink_port}", ns.host_ip),
        ],
    );
    let (status, _, log) = outsider.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("refused this connection") && log.contains("--allow"),
        "{log}"
    );

    let (sink, vent, sink_port, vent_port) = pair(&["127.0.0.1/32", &inside], None, "50");
    let insider = ns.conquer(
        "insider",
        &[
            "worker",
            "--backend",
            "sleep",
            "--exit-when-done",
            "--ventilator",
            &format!("tcp://{}:{vent_port}", ns.host_ip),
            "--sink",
            &format!("tcp://{}:{sink_port}", ns.host_ip),
        ],
    );
    let r = util::completed(sink, 50, None);
    assert_eq!(r["refused"], 0, "{r}");
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    let (status, _, log) = insider.finish();
    assert!(status.success(), "{log}");
}

#[test]
fn a_killed_sink_resumes_with_the_secret_and_counts_each_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = secret(dir.path(), "secret");
    let key = key.to_str().unwrap();
    let results = dir.path().join("results.jsonl");
    let path = results.to_str().unwrap();
    let (sink, sink_ep) = util::sink(&["--secret-file", key, "--results", path]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--secret-file",
            key,
            "--tasks",
            "600",
            "--min-ms",
            "2",
            "--max-ms",
            "6",
            "--wait-workers",
            "2",
        ],
    );
    let workers = members(&["k1", "k2"], &vent_ep, &sink_ep, key);
    let resumed = util::kill_and_resume_sink(sink, &sink_ep, &results, &["--secret-file", key]);
    util::completed(resumed, 600, Some(&results));
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    drop(workers);
}

#[test]
fn a_classic_pipeline_takes_the_secret_too() {
    let dir = tempfile::tempdir().unwrap();
    let key = secret(dir.path(), "secret");
    let key = key.to_str().unwrap();
    let sink = Proc::start(
        "classic sink",
        &[
            "sink",
            "--classic",
            "--json",
            "--tasks",
            "20",
            "--bind",
            "tcp://127.0.0.1:0",
            "--control-bind",
            "tcp://127.0.0.1:0",
            "--secret-file",
            key,
        ],
    );
    let results = sink.endpoint("results");
    let control = sink.endpoint("control");
    let vent = Proc::start(
        "classic ventilator",
        &[
            "ventilator",
            "--classic",
            "--bind",
            "tcp://127.0.0.1:0",
            "--sink",
            &results,
            "--tasks",
            "20",
            "--max-ms",
            "3",
            "--wait-workers",
            "1",
            "--secret-file",
            key,
        ],
    );
    let tasks = vent.endpoint("tasks");
    let classic_worker = |name: &str, secret: &[&str]| {
        let mut args = vec![
            "worker",
            "--classic",
            "--backend",
            "sleep",
            "--ventilator",
            &tasks,
            "--sink",
            &results,
            "--control",
            &control,
        ];
        args.extend_from_slice(secret);
        Proc::start(name, &args)
    };
    let (status, _, log) = classic_worker("stranger", &[]).finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("wants a secret"), "{log}");
    // A raw PUSH without the secret, as the Guide's worker would be, is refused by the sink.
    let ctx = zmq::Context::new();
    let raw = ctx.socket(zmq::PUSH).unwrap();
    raw.set_linger(0).unwrap();
    wait_refused(&ctx, &raw, &results);
    let member = classic_worker("member", &["--secret-file", key]);
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    let r = util::report(&stdout);
    assert_eq!(r["tasks"], 20, "{r}");
    assert!(r["refused"].as_u64().unwrap() >= 1, "{r}");
    let (status, _, log) = member.finish();
    assert!(status.success(), "{log}");
    drop(vent);
}
