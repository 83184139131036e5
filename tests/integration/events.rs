//! `--events`: what each role observes, as JSON lines, for scripts and for these tests.

use crate::util::{self, Proc};

/// The events on stdout (`--events -`): every line one JSON object, and nothing else.
fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event: {l:?}: {e}")))
        .collect()
}

#[test]
fn events_on_stdout_are_json_lines_ending_the_batch_with_its_report() {
    let (status, stdout, log) = Proc::start_quiet(
        "run",
        &[
            "--events",
            "-",
            "run",
            "--tasks",
            "6",
            "--workers",
            "2",
            "--max-ms",
            "5",
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    let events = lines(&stdout);
    for e in &events {
        for key in ["event", "role", "unix_ms"] {
            assert!(!e[key].is_null(), "no {key} in {e}");
        }
    }
    let named = |name: &'static str| events.iter().filter(move |e| e["event"] == name);
    // Each socket said by the role that binds or connects it, though `run` makes them all
    // on one thread before the roles' own start.
    let sockets: Vec<(&str, &str)> = named("listening")
        .map(|e| (e["socket"].as_str().unwrap(), e["role"].as_str().unwrap()))
        .collect();
    assert!(
        sockets.contains(&("tasks", "ventilator")) && sockets.contains(&("results", "sink")),
        "{sockets:?}"
    );
    let connecting: Vec<&str> = named("connecting")
        .map(|e| e["role"].as_str().unwrap())
        .collect();
    assert_eq!(connecting, ["worker-1", "worker-2"], "{events:?}");
    let phases: Vec<&str> = named("phase")
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["waiting", "announcing", "dispatching", "over"],
        "{events:?}"
    );
    assert_eq!(
        named("worker").filter(|e| e["state"] == "joined").count(),
        2
    );
    assert_eq!(
        named("ready").filter(|e| e["backend"] == "sleep").count(),
        2
    );
    let batch = named("batch").next().expect("the sink's batch event");
    assert_eq!(
        (batch["tasks"].as_u64(), batch["held"].as_u64()),
        (Some(6), Some(0))
    );
    let complete: Vec<_> = named("complete").collect();
    assert_eq!(complete.len(), 1, "{events:?}");
    assert_eq!(complete[0]["report"]["tasks"], 6, "{}", complete[0]);
    assert_eq!(complete[0]["report"]["batch"], batch["batch"]);
    // Time runs forward through the file.
    let times: Vec<u64> = events
        .iter()
        .map(|e| e["unix_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

/// Waits for the first event in `file` for which `matches` holds.
fn event_in(
    file: &std::path::Path,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + util::PATIENCE;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        if let Some(found) = lines(whole).into_iter().find(|e| matches(e)) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such event in:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn an_events_file_is_appended_to_by_every_process_given_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let path = file.to_str().unwrap();
    let listening = |role: &'static str| {
        let e = event_in(&file, |e| e["event"] == "listening" && e["role"] == role);
        e["endpoint"].as_str().unwrap().to_owned()
    };
    // The sink and the ventilator of one batch, each told the same file.
    let sink = Proc::start(
        "sink",
        &[
            "sink",
            "--bind",
            "tcp://127.0.0.1:0",
            "--json",
            "--events",
            path,
        ],
    );
    let sink_ep = listening("sink");
    let vent = Proc::start(
        "vent",
        &[
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--sink",
            &sink_ep,
            "--tasks",
            "4",
            "--wait-workers",
            "1",
            "--events",
            path,
        ],
    );
    let vent_ep = listening("ventilator");
    let worker = util::worker("w", &vent_ep, &sink_ep, &["--exit-when-done"]);
    util::completed(sink, 4, None);
    for p in [vent, worker] {
        let (status, _, log) = p.finish();
        assert!(status.success(), "{log}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let events = lines(&text);
    let roles: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["sink", "ventilator"].into(), "{text}");
    let complete = events.iter().filter(|e| e["event"] == "complete").count();
    assert_eq!(complete, 1, "{text}");
}

#[test]
fn a_batch_that_stops_ends_its_events_with_the_phase_over() {
    // No sink answers: the ventilator gives up after --wait-timeout, and says so in its
    // events as it does when a batch completes.
    let (status, stdout, log) = Proc::start_quiet(
        "ventilator",
        &[
            "--events",
            "-",
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--sink",
            "tcp://127.0.0.1:9",
            "--tasks",
            "3",
            "--wait-timeout",
            "1",
        ],
    )
    .finish();
    assert!(!status.success(), "no sink, yet it succeeded: {log}");
    let events = lines(&stdout);
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.last(), Some(&"over"), "{events:?}");
}
