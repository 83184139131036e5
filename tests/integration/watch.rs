//! The live view during a real batch: `/metrics` parsed by a strict reader of the
//! Prometheus text format, `/api/status` with every worker, a worker SIGKILLed mid-batch
//! shown gone with its tasks redispatched, the counters at the end equal to the sink's
//! report, and the sink's `--timeline` a valid Chrome trace with one event per task.

use crate::util::{self, Proc};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// One sample: its family's name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn metric_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the Prometheus text exposition format (version 0.0.4) strictly: every family has
/// one TYPE before its samples, names and labels are well formed, label values escape only
/// `\\`, `\"` and `\n`, no series repeats, histograms have cumulative buckets ending in a
/// `+Inf` bucket equal to `_count`. Panics naming the line on anything else.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut seen = HashSet::new();
    let mut sampled: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().expect(&at));
            assert!(metric_name(name), "{at}");
            match keyword {
                "HELP" => assert!(helped.insert(name.to_owned()), "second HELP, {at}"),
                "TYPE" => {
                    let kind = parts.next().expect(&at);
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{at}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "second TYPE, {at}"
                    );
                    assert!(!sampled.contains(name), "TYPE after samples, {at}");
                }
                _ => panic!("unknown comment, {at}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line, {at}");
        let (series, value) = line.rsplit_once(' ').expect(&at);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value, {at}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect(&at);
                let mut labels = Vec::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert!(metric_name(&key) && !key.contains(':'), "label name, {at}");
                    assert_eq!(chars.next(), Some('"'), "{at}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect(&at) {
                            '"' => break,
                            '\\' => match chars.next().expect(&at) {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                c => panic!("bad escape \\{c}, {at}"),
                            },
                            '\n' => panic!("raw newline, {at}"),
                            c => value.push(c),
                        }
                    }
                    labels.push((key, value));
                    match chars.next() {
                        None => break,
                        Some(',') => {}
                        Some(c) => panic!("{c:?} after a label, {at}"),
                    }
                }
                (name, labels)
            }
        };
        assert!(metric_name(name), "{at}");
        let family = types
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || (types[*f] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name == format!("{f}{s}")))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample without a TYPE, {at}"));
        if types[family] == "counter" {
            assert!(value >= 0.0, "negative counter, {at}");
        }
        assert!(seen.insert(series.to_owned()), "repeated series, {at}");
        sampled.insert(family.clone());
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .collect();
        assert!(!buckets.is_empty(), "{family} has no buckets");
        let mut last = 0.0;
        for b in &buckets {
            assert!(b.value >= last, "{family}: buckets not cumulative");
            last = b.value;
        }
        let inf = buckets.last().unwrap();
        assert_eq!(
            inf.labels,
            [("le".to_owned(), "+Inf".to_owned())],
            "{family}"
        );
        let count = samples
            .iter()
            .find(|s| s.name == format!("{family}_count"))
            .unwrap_or_else(|| panic!("{family}_count"));
        assert_eq!(inf.value, count.value, "{family}: +Inf bucket and count");
    }
    samples
}

fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && label.is_none_or(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .unwrap_or_else(|| panic!("no {name} {label:?}"))
        .value
}

/// Polls the live view until `done` holds for its status.
fn wait_status(
    base: &str,
    what: &str,
    mut done: impl FnMut(&conquer::observe::FarmStatus) -> bool,
) -> conquer::observe::FarmStatus {
    let deadline = Instant::now() + util::PATIENCE;
    loop {
        if let Ok(status) = conquer::status::fetch(base, None) {
            if done(&status) {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the live view never showed {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_live_view_follows_a_batch_and_ends_equal_to_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("timeline.json");
    let (sink, sink_ep) = util::sink(&["--timeline", trace.to_str().unwrap()]);
    let vent = Proc::start(
        "ventilator",
        &[
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--sink",
            &sink_ep,
            "--tasks",
            "150",
            "--min-ms",
            "20",
            "--max-ms",
            "60",
            "--wait-workers",
            "3",
            "--http",
            "127.0.0.1:0",
            "--http-linger",
            "60",
        ],
    );
    let vent_ep = vent.endpoint("tasks");
    let base = vent.live_view();
    let mut workers: Vec<Proc> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| util::worker(n, &vent_ep, &sink_ep, &["--exit-when-done"]))
        .collect();

    // Mid-batch: every worker listed with its backend, and the metrics parse.
    let status = wait_status(&base, "three busy workers and results", |s| {
        s.workers.len() == 3 && s.held >= 20 && s.workers.iter().all(|w| w.state == "busy")
    });
    for w in &status.workers {
        assert_eq!(w.backend, "sleep", "{w:?}");
        assert_eq!(w.address, "127.0.0.1", "{w:?}");
    }
    let mid = parse_prometheus(&util::http_get(&format!("{base}/metrics")));
    assert!(value(&mid, "conquer_tasks_total", Some(("status", "held"))) >= 20.0);
    assert_eq!(value(&mid, "conquer_workers", Some(("state", "gone"))), 0.0);
    assert!(util::http_get(&format!("{base}/")).contains("<canvas id=\"stream\""));

    // A worker killed while it holds tasks shows gone, its tasks redispatched.
    let killed = workers.remove(2);
    killed.signal("KILL");
    let status = wait_status(&base, "w3 gone", |s| {
        s.workers
            .iter()
            .any(|w| w.name == "w3" && w.state == "gone")
    });
    let w3 = status.workers.iter().position(|w| w.name == "w3").unwrap() as u32;
    assert!(
        status
            .bars
            .iter()
            .any(|b| b.worker == w3 && b.status == conquer::observe::BarStatus::Redispatched),
        "its tasks in hand show as redispatched: {:?}",
        status
            .bars
            .iter()
            .filter(|b| b.worker == w3)
            .collect::<Vec<_>>()
    );

    let report = util::completed(sink, 150, None);
    assert!(report["redispatched"].as_u64().unwrap() >= 1, "{report}");
    // The final state stays up (--http-linger): its counters are the report's.
    let status = wait_status(&base, "the batch over", |s| s.phase == "over");
    assert_eq!(status.held, 150);
    let end = parse_prometheus(&util::http_get(&format!("{base}/metrics")));
    assert_eq!(
        value(&end, "conquer_tasks_total", Some(("status", "held"))),
        report["tasks"].as_f64().unwrap()
    );
    assert_eq!(value(&end, "conquer_tasks_pending", None), 0.0);
    assert_eq!(
        value(&end, "conquer_redispatched_total", None),
        report["redispatched"].as_f64().unwrap()
    );
    assert_eq!(
        value(&end, "conquer_rejected_total", None),
        report["rejected"].as_f64().unwrap()
    );
    assert_eq!(
        value(&end, "conquer_refused_total", None),
        report["refused"].as_f64().unwrap()
    );
    assert_eq!(
        value(&end, "conquer_tasks_total", Some(("status", "failed"))),
        0.0
    );
    assert_eq!(value(&end, "conquer_workers", Some(("state", "gone"))), 1.0);
    assert_eq!(
        value(&end, "conquer_task_latency_seconds_count", None),
        150.0
    );

    // `conquer status` prints the same as a table.
    let (code, stdout, log) = Proc::start("status", &["status", "--http", &base]).finish();
    assert!(code.success(), "{log}");
    for name in ["w1", "w2", "w3", "gone", "150 of 150 held"] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }

    // The timeline: one complete event per held task, on a track per worker.
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let tasks: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(tasks.len(), 150);
    let ids: HashSet<u64> = tasks
        .iter()
        .map(|e| e["args"]["task"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 150, "each task once");
    for e in &tasks {
        assert!(
            e["ts"].as_f64().unwrap() > 0.0 && e["dur"].as_f64().unwrap() >= 0.0,
            "{e}"
        );
        assert_eq!(e["args"]["backend"], "sleep", "{e}");
        assert_eq!(e["args"]["status"], "ok", "{e}");
    }
    let tracks: HashSet<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert!(tracks.contains("w1") && tracks.contains("w2"), "{tracks:?}");
    drop((vent, workers));
}

#[test]
fn a_live_view_other_machines_can_reach_needs_the_token() {
    // Without a secret or --insecure, a non-loopback --http refuses to start.
    let (status, _, log) = Proc::start(
        "open ventilator",
        &[
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--http",
            "0.0.0.0:0",
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("--http") && log.contains("--insecure"),
        "{log}"
    );

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret");
    let key = key.to_str().unwrap();
    let (made, _, log) = Proc::start("secret", &["secret", "new", key]).finish();
    assert!(made.success(), "{log}");
    let (made, token, log) = Proc::start("token", &["secret", "token", key]).finish();
    assert!(made.success(), "{log}");
    let token = token.trim().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    assert!(
        !std::fs::read_to_string(key).unwrap().contains(&token),
        "derived, not the secret"
    );

    let vent = Proc::start(
        "ventilator",
        &[
            "ventilator",
            "--bind",
            "tcp://127.0.0.1:0",
            "--secret-file",
            key,
            "--http",
            "0.0.0.0:0",
        ],
    );
    let line = vent.live_view();
    let port = line.rsplit(':').next().unwrap().to_owned();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let code = |request: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
        request.call().unwrap().status().as_u16()
    };
    assert_eq!(code(agent.get(&url)), 401);
    assert_eq!(
        code(agent.get(&url).header("Authorization", "Bearer nope")),
        401
    );
    assert_eq!(
        code(
            agent
                .get(&url)
                .header("Authorization", &format!("Bearer {token}"))
        ),
        200
    );
    assert_eq!(
        code(agent.get(&format!("http://127.0.0.1:{port}/?token={token}"))),
        200
    );
}
