//! What a peer inside the farm can do with well-formed messages, and cannot: forge item
//! ranges of a divisible job, flood a role with frames of one message, say tasks are done
//! whose results it never sends, fail a task forever. Raw ZeroMQ peers play the hostile
//! ones against the real executable.

use crate::util::{self, report};
use conquer::protocol::{Message, Status, TaskResult, WorkerInfo};

/// Quick liveness, so a peer that goes quiet is declared gone within a second.
const BEAT: [&str; 4] = ["--heartbeat-ms", "100", "--liveness", "5"];

fn info(name: &str, window_hint: u16) -> WorkerInfo {
    WorkerInfo {
        name: name.into(),
        session: 7,
        backend: "sleep".into(),
        adapter: String::new(),
        window_hint,
        codecs: 0,
        fill: 0,
    }
}

/// A result of items `first..first + items` of a job, computed by nobody.
fn forged(first: u64, items: u32) -> TaskResult {
    TaskResult {
        id: 0,
        status: Status::Ok,
        first,
        items,
        wall_us: 1,
        ..TaskResult::default()
    }
}

/// The batch id and the chunk a raw worker is handed first.
fn first_chunk(me: &util::RawWorker) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no chunk handed out");
        me.beat();
        for message in me.heard_from_ventilator() {
            if let Message::Tasks { batch, tasks, .. } = message {
                assert!(tasks.iter().all(|t| t.items > 0), "a chunk of the job");
                return batch;
            }
        }
    }
}

#[test]
fn forged_item_ranges_are_credited_once_and_do_not_shred_the_job() {
    let items = 20_000u64;
    let (sink, sink_ep) = util::sink(&BEAT);
    let mut vent_args = vec![
        "--chunking",
        "adaptive",
        "--items",
        "20000",
        "--item-us",
        "100",
        "--chunk-ms",
        "100",
        "--wait-workers",
        "2",
    ];
    vent_args.extend(BEAT);
    let (vent, vent_ep) = util::ventilator(&sink_ep, &vent_args);
    let forger = util::RawWorker::join(&sink_ep, &vent_ep, info("forger", 1));
    let mut worker_args = vec!["--exit-when-done"];
    worker_args.extend(BEAT);
    let real = util::worker("real", &vent_ep, &sink_ep, &worker_args);
    let batch = first_chunk(&forger);
    let send = |results: Vec<TaskResult>| {
        forger
            .results
            .send(
                Message::Results {
                    batch,
                    worker: forger.info.clone(),
                    results,
                }
                .encode(),
                0,
            )
            .unwrap();
    };
    // Overlapping ranges: 150 items, not 200.
    send(vec![forged(0, 100), forged(50, 100)]);
    // Every other item of most of the job, one range each: 9,000 pieces held.
    let islands: Vec<TaskResult> = (0..9_000u64).map(|k| forged(1_000 + 2 * k, 1)).collect();
    for part in islands.chunks(4_000) {
        send(part.to_vec());
    }
    // The forger goes quiet holding its chunk, which goes to the real worker. Its results
    // are sent first: the raw worker's sockets drop unsent messages when closed, and a busy
    // machine may not have sent the big ones yet.
    forger.results.set_linger(30_000).unwrap();
    drop(forger);
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "the sink failed: {log}");
    let r = report(&stdout);
    assert_eq!(r["job"]["held_items"], items, "{r}");
    let by_workers: u64 = r["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["items"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(by_workers, items, "each item credited once: {r}");
    let forger_items = r["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["id"] == "forger")
        .map_or(0, |w| w["items"].as_u64().unwrap_or(0));
    // At most the distinct items it claimed (fewer where the real worker got there first).
    assert!(
        (8_000..=150 + 9_000).contains(&forger_items),
        "{forger_items} items: {r}"
    );
    // 9,000 one-item holes: without crossing them, as many chunks.
    let chunks = r["job"]["chunks"].as_u64().expect("chunks");
    assert!(
        chunks < 1_000,
        "the job was cut into {chunks} chunks: {r}; the ventilator's log:\n{}",
        vent.log()
    );
    drop((vent, real));
}

#[test]
fn a_worker_that_says_done_and_never_delivers_swallows_a_window_not_the_batch() {
    let (sink, sink_ep) = util::sink(&[]);
    let mut vent_args = vec![
        "--tasks",
        "200",
        "--min-ms",
        "20",
        "--max-ms",
        "20",
        "--wait-workers",
        "1",
    ];
    vent_args.extend(BEAT);
    let (vent, vent_ep) = util::ventilator(&sink_ep, &vent_args);
    let (tx, rx) = std::sync::mpsc::channel();
    let hoarder = {
        let (sink_ep, vent_ep) = (sink_ep.clone(), vent_ep.clone());
        std::thread::spawn(move || {
            crate::mistakes::ack_only_worker(&sink_ep, &vent_ep, u16::MAX, tx)
        })
    };
    rx.recv_timeout(util::PATIENCE)
        .expect("the hoarder took tasks");
    let mut honest_args = vec!["--exit-when-done"];
    honest_args.extend(BEAT);
    let honest = util::worker("honest", &vent_ep, &sink_ep, &honest_args);
    let r = util::completed(sink, 200, None);
    let (reason, given) = hoarder.join().unwrap();
    assert!(reason.contains("have not reached the sink"), "{reason}");
    // Its window (16, the most a hint buys) ahead of the sink, twice over, and no more.
    assert!(
        given <= 3 * 16,
        "the hoarder was given {given} of 200 tasks: {r}"
    );
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    drop(honest);
}

#[test]
fn a_task_that_always_fails_is_given_up_after_its_attempts_and_the_run_names_it() {
    let run = util::Proc::start_with_env(
        "run",
        &[
            "run",
            "--tasks",
            "20",
            "--min-ms",
            "1",
            "--max-ms",
            "5",
            "--backend",
            "sleep",
            "--workers",
            "3",
            "--json",
        ],
        &[("CONQUER_FAULT", "fail-task:7")],
    );
    let (status, stdout, log) = run.finish();
    assert_eq!(status.code(), Some(1), "a failed task fails the run: {log}");
    let r = report(&stdout);
    let failed = r["failed"].as_array().expect("the failed tasks");
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["id"], 7, "{r}");
    assert_eq!(failed[0]["attempts"], 3, "{r}");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("fails by design")),
        "the worker's own error: {r}"
    );
    // Every other task done, the failed one finished too: the batch ended.
    assert_eq!(r["tasks"], 20, "{r}");
    assert!(
        log.contains("task 7 failed 3 times"),
        "the log names the task: {log}"
    );
    let failures = log.matches("failed task 7").count();
    assert!(failures <= 2, "retried {failures} times: {log}");
}

#[test]
fn a_multipart_flood_is_dropped_as_it_arrives_and_counted() {
    let (sink, sink_ep) = util::sink(&[]);
    let ctx = zmq::Context::new();
    let stranger = ctx.socket(zmq::DEALER).unwrap();
    stranger.set_linger(1000).unwrap();
    stranger.connect(&sink_ep).unwrap();
    // A results head followed by more output frames than a message may carry, and a
    // one-frame kind with frames after it: both beyond their bounds.
    let head = Message::Results {
        batch: 1,
        worker: info("flood", 1),
        results: vec![forged(0, 1)],
    }
    .encode();
    let mut split = head.clone();
    split[3] = 19;
    let frame = vec![0u8; 1024];
    let mut parts: Vec<&[u8]> = vec![&split];
    parts.extend(std::iter::repeat_n(
        &frame[..],
        conquer::protocol::MAX_ITEMS_PER_MESSAGE + 10,
    ));
    stranger.send_multipart(parts, 0).unwrap();
    stranger
        .send_multipart([&Message::Bye.encode()[..], &frame, &frame], 0)
        .unwrap();
    let (vent, vent_ep) = util::ventilator(&sink_ep, &["--tasks", "10", "--wait-workers", "1"]);
    let w = util::worker("real", &vent_ep, &sink_ep, &["--exit-when-done"]);
    let r = util::completed(sink, 10, None);
    assert!(r["rejected"].as_u64().unwrap() >= 2, "{r}");
    drop((vent, w));
}

#[test]
fn a_result_naming_another_tasks_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    let outputs = dir.path().join("out");
    std::fs::create_dir_all(&inputs).unwrap();
    for i in 0..4u8 {
        std::fs::write(inputs.join(format!("f{i}.bin")), vec![i + 1; 4096]).unwrap();
    }
    let glob = format!("{}/*.bin", inputs.display());
    let (sink, sink_ep) = util::sink(&["--outputs", outputs.to_str().unwrap()]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &["--kernel", "copy", "--inputs", &glob, "--wait-workers", "1"],
    );
    let mut insider = WorkerInfo {
        backend: "cpu".into(),
        ..info("insider", 1)
    };
    insider.session = 8;
    let insider = util::RawWorker::join(&sink_ep, &vent_ep, insider);
    // The insider takes a task and answers it under another task's input name.
    let (batch, task, name) = loop {
        insider.beat();
        let data = insider
            .heard_from_ventilator()
            .into_iter()
            .find_map(|m| match m {
                Message::Data {
                    batch, task, name, ..
                } => Some((batch, task, name)),
                _ => None,
            });
        if let Some(found) = data {
            break found;
        }
    };
    let other = if name == "f0.bin" { "f1.bin" } else { "f0.bin" };
    insider
        .results
        .send(
            Message::Results {
                batch,
                worker: insider.info.clone(),
                results: vec![TaskResult {
                    id: task.id,
                    status: Status::Ok,
                    name: other.into(),
                    output: vec![0xee; 4096],
                    ..TaskResult::default()
                }],
            }
            .encode(),
            0,
        )
        .unwrap();
    drop(insider);
    let honest = util::Proc::start(
        "honest",
        &[
            "worker",
            "--ventilator",
            &vent_ep,
            "--sink",
            &sink_ep,
            "--name",
            "honest",
            "--backend",
            "cpu",
            "--exit-when-done",
        ],
    );
    let r = util::completed(sink, 4, None);
    assert!(r["rejected"].as_u64().unwrap() >= 1, "{r}");
    for i in 0..4u8 {
        let out = outputs.join(format!("f{i}.bin.out"));
        let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        assert_eq!(
            bytes,
            vec![i + 1; 4096],
            "{} holds its own input's copy",
            out.display()
        );
    }
    drop((vent, honest));
}

/// A sink, a ventilator running the histogram example kernel over 72 small files with
/// `--replicate 50`, and three software workers, the third started with `env`. Returns the
/// sink's exit status and report.
fn replicated_histograms(third: &[(&str, &str)]) -> (std::process::ExitStatus, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..72u32 {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|j| (j.wrapping_mul(2_654_435_761) >> (i % 13)) as u8)
            .collect();
        std::fs::write(dir.path().join(format!("h{i:02}.bin")), bytes).unwrap();
    }
    let glob = format!("{}/*.bin", dir.path().display());
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--kernel-file",
            "examples/kernels/histogram.wgsl",
            "--inputs",
            &glob,
            "--output-bytes",
            "1024",
            "--replicate",
            "50",
            "--wait-workers",
            "3",
        ],
    );
    let workers: Vec<util::Proc> = ["w1", "w2", "w3"]
        .iter()
        .map(|&name| {
            let args = [
                "worker",
                "--ventilator",
                &vent_ep,
                "--sink",
                &sink_ep,
                "--name",
                name,
                "--backend",
                "software",
                "--exit-when-done",
            ];
            let env: &[(&str, &str)] = if name == "w3" { third } else { &[] };
            util::Proc::start_with_env(name, &args, env)
        })
        .collect();
    let (status, stdout, log) = sink.finish();
    let r = report(&stdout);
    eprintln!("{log}");
    drop((vent, workers));
    (status, r)
}

#[test]
fn replicated_tasks_agree_on_honest_workers_and_the_batch_passes() {
    let (status, r) = replicated_histograms(&[]);
    assert!(status.success(), "{r}");
    assert_eq!(r["tasks"], 72, "{r}");
    let replicated = r["replicated"].as_u64().expect("replicated counted");
    assert!((12..=60).contains(&replicated), "about half: {r}");
    assert!(r.get("replica_mismatches").is_none(), "{r}");
}

#[test]
fn a_worker_that_corrupts_its_outputs_is_caught_named_and_quarantined() {
    let (status, r) = replicated_histograms(&[("CONQUER_TEST_FAULT", "corrupt-output")]);
    assert_eq!(
        status.code(),
        Some(1),
        "a disagreement fails the batch: {r}"
    );
    let mismatches = r["replica_mismatches"].as_array().expect("mismatches");
    assert!(mismatches.len() >= 2, "{r}");
    for m in mismatches {
        assert_eq!(m["differing"], serde_json::json!(["w3"]), "{r}");
        assert_eq!(m["agreed"].as_array().map(Vec::len), Some(2), "{r}");
    }
    let quarantined = r["quarantined"].as_array().expect("quarantined");
    assert_eq!(quarantined.len(), 1, "{r}");
    assert_eq!(quarantined[0]["worker"], "w3", "{r}");
}
