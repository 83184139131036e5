//! `conquer serve` with real workers: jobs submitted and run in turn (`--max-running 1`)
//! or side by side on shared workers, each with its own results exactly once; a queued
//! and a running job cancelled; a submission over the limit refused; the coordinator
//! SIGKILLed mid-job and started again on its state directory, finishing the job without
//! redoing what its results file held. Synchronised on the coordinator's answers (`jobs
//! --json`) and the results files, never on its log.

use crate::util::{self, Proc};
use std::path::Path;
use std::time::{Duration, Instant};

const BEAT: [&str; 2] = ["--heartbeat-ms", "100"];

/// Where a fresh coordinator binds the farm's sockets: free loopback ports, read back from
/// its events (no port is picked ahead and raced for).
const ANY: &str = "tcp://127.0.0.1:0";

/// A coordinator on `state` binding the farm's two endpoints (`ANY` for free ports);
/// returns it, its control endpoint, and the farm's tasks and results endpoints as bound.
fn serve(
    state: &Path,
    bind: &str,
    results: &str,
    extra: &[&str],
) -> (Proc, String, String, String) {
    let mut args = vec![
        "serve",
        "--state",
        state.to_str().unwrap(),
        "--bind",
        bind,
        "--results-bind",
        results,
        "--control",
        "tcp://127.0.0.1:0",
    ];
    args.extend(BEAT);
    args.extend(extra);
    let coordinator = Proc::start("serve", &args);
    let control = coordinator.endpoint("control");
    // The farm's own sockets (its jobs' in-process ones listen too).
    let bound = |socket: &str| {
        let e = coordinator.event_where("listening", |e| {
            e["socket"] == socket && e["endpoint"].as_str().is_some_and(|s| s.starts_with("tcp"))
        });
        e["endpoint"].as_str().expect("an endpoint").to_owned()
    };
    let (tasks, results) = (bound("tasks"), bound("results"));
    (coordinator, control, tasks, results)
}

/// `conquer ARGS --coordinator CONTROL`: status, stdout, stderr.
fn ask(control: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut all = args.to_vec();
    all.extend(["--coordinator", control]);
    Proc::start_quiet(args[0], &all).finish()
}

fn submit(control: &str, args: &[&str]) -> u64 {
    let mut all = vec!["submit"];
    all.extend(args);
    let (status, stdout, log) = ask(control, &all);
    assert!(status.success(), "{log}");
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a job id: {stdout}"))
}

/// The coordinator's jobs, as `jobs --json` lists them.
fn jobs(control: &str) -> Vec<serde_json::Value> {
    let (status, stdout, log) = ask(control, &["jobs", "--json"]);
    assert!(status.success(), "{log}");
    let all: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    all["jobs"].as_array().expect("jobs").clone()
}

/// Waits until job `id` is in `state`.
fn wait_state(control: &str, id: u64, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = jobs(control);
        if all.iter().any(|j| j["id"] == id && j["state"] == state) {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} never {state}: {all:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A submission as a script's own client might send it.
#[derive(Default)]
struct Submission {
    workloads_ms: Vec<u32>,
    flags: Option<serde_json::Value>,
    kernel_source: Option<String>,
    inputs: Vec<String>,
    remote_inputs: Option<String>,
}

impl Submission {
    fn request(self, name: &str) -> conquer::protocol::control::Request {
        conquer::protocol::control::Request::Submit {
            name: name.into(),
            priority: 1,
            workloads_ms: self.workloads_ms,
            flags: self.flags,
            verify_percent: 0,
            replicate_percent: 0,
            kernel_source: self.kernel_source,
            inputs: self.inputs,
            remote_inputs: self.remote_inputs,
        }
    }
}

/// Sends `request` (with `files` after it, and `token`) and returns why the coordinator
/// refused it.
fn refusal(
    control: &str,
    request: &conquer::protocol::control::Request,
    files: &[Vec<u8>],
    token: &str,
) -> String {
    let reply =
        conquer::serve::ask_with(control, request, files, token, Duration::from_secs(10)).unwrap();
    match reply {
        conquer::protocol::control::Reply::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

/// `n` sleep workers named w1, w2, ... on the farm's endpoints.
fn sleep_workers(n: usize, bind: &str, results: &str) -> Vec<Proc> {
    (1..=n)
        .map(|i| util::worker(&format!("w{i}"), bind, results, &BEAT))
        .collect()
}

/// Submits two jobs of `tasks` tasks of `ms` each (seeds 1 and 2) and waits until each
/// results file holds `lines` results: their ids and results files.
fn two_jobs_under_way(
    control: &str,
    state: &Path,
    tasks: u32,
    ms: u32,
    lines: usize,
) -> ([u64; 2], [std::path::PathBuf; 2]) {
    let (tasks, ms) = (tasks.to_string(), ms.to_string());
    let ids = [1, 2].map(|seed: u64| {
        let seed = seed.to_string();
        let flags = [
            "--tasks", &tasks, "--min-ms", &ms, "--max-ms", &ms, "--seed", &seed,
        ];
        submit(control, &flags)
    });
    let files = ids.map(|id| folder(state, id).join("results.jsonl"));
    for file in &files {
        util::wait_for_lines(file, lines);
    }
    (ids, files)
}

fn folder(state: &Path, id: u64) -> std::path::PathBuf {
    state.join("jobs").join(id.to_string())
}

#[test]
fn with_one_running_at_a_time_jobs_run_in_turn_each_once_and_queued_or_running_ones_are_cancelled()
{
    let state = tempfile::tempdir().unwrap();
    let (coordinator, control, bind, results) = serve(
        state.path(),
        ANY,
        ANY,
        &["--max-input", "4K", "--max-running", "1"],
    );
    let _workers = sleep_workers(2, &bind, &results);
    let first = submit(
        &control,
        &["--tasks", "40", "--max-ms", "10", "--name", "first"],
    );
    let second = submit(
        &control,
        &["--tasks", "30", "--max-ms", "10", "--seed", "2"],
    );
    // Over --max-input: refused, saying why.
    let (status, _, log) = ask(&control, &["submit", "--tasks", "5000"]);
    assert!(!status.success());
    assert!(log.contains("over the coordinator's limit"), "{log}");
    wait_state(&control, second, "done");
    // In turn: the first was over before the second began.
    let all = jobs(&control);
    let view = |id: u64| all.iter().find(|j| j["id"] == id).unwrap().clone();
    assert_eq!(view(first)["state"], "done", "{all:?}");
    assert!(view(first)["ended_ms"].as_u64() <= view(second)["started_ms"].as_u64());
    for (id, tasks) in [(first, 40), (second, 30)] {
        let ids = util::result_ids(&folder(state.path(), id).join("results.jsonl"));
        util::assert_each_once(&ids, tasks);
        let (status, stdout, log) = ask(&control, &["results", &id.to_string(), "--json"]);
        assert!(status.success(), "{log}");
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(r["report"]["tasks"], tasks, "{r}");
    }
    // A long job runs; one queued behind it is cancelled, then the long one.
    let long = submit(
        &control,
        &["--tasks", "200", "--min-ms", "50", "--max-ms", "50"],
    );
    let queued = submit(&control, &["--tasks", "5"]);
    wait_state(&control, long, "running");
    let held_of = |id: u64| {
        jobs(&control)
            .iter()
            .find(|j| j["id"] == id)
            .and_then(|j| j["held"].as_u64())
            .unwrap_or(0)
    };
    // Some of it done first: what a cancel keeps is then counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_of(long) == 0 {
        assert!(Instant::now() < deadline, "job {long} held nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, stdout, log) = ask(&control, &["cancel", &queued.to_string()]);
    assert!(
        status.success() && stdout.contains("was queued"),
        "{stdout}{log}"
    );
    let (status, stdout, log) = ask(&control, &["cancel", &long.to_string()]);
    assert!(
        status.success() && stdout.contains("was running"),
        "{stdout}{log}"
    );
    wait_state(&control, long, "cancelled");
    wait_state(&control, queued, "cancelled");
    // Each job's changes of state are events, for scripts that follow the coordinator.
    for (id, states) in [
        (first, &["queued", "running", "done"][..]),
        (long, &["queued", "running", "cancelled"]),
        (queued, &["queued", "cancelled"]),
    ] {
        for state in states {
            coordinator.event_where("job", |e| e["job"] == id && e["state"] == *state);
        }
    }
    // What it held stays counted, whatever is asked of other jobs meanwhile (asking for
    // one job's results once made every other cancelled job's count 0).
    let kept = held_of(long);
    assert!(kept > 0, "job {long}'s count was lost");
    let (_, _, _) = ask(&control, &["results", &queued.to_string()]);
    assert_eq!(held_of(long), kept, "job {long}'s count changed");
    // A finished job cannot be cancelled; its results say it is done, and exit 0.
    let (status, _, log) = ask(&control, &["cancel", &first.to_string()]);
    assert!(!status.success() && log.contains("already"), "{log}");
    let (status, _, _) = ask(&control, &["results", &long.to_string()]);
    assert_eq!(status.code(), Some(1), "a cancelled job's results exit 1");
    // The workers serve the next job as they did the first.
    let last = submit(&control, &["--tasks", "20", "--max-ms", "5", "--seed", "3"]);
    wait_state(&control, last, "done");
    // --wait prints the report as `run` does, and exits as it does.
    let (status, stdout, log) = ask(
        &control,
        &[
            "submit", "--tasks", "10", "--max-ms", "5", "--wait", "--json",
        ],
    );
    assert!(status.success(), "{log}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["tasks"], 10, "{r}");
    let (status, stdout, log) = ask(&control, &["submit", "--tasks", "10", "--wait"]);
    assert!(status.success(), "{log}");
    assert!(stdout.contains("Total elapsed time"), "{stdout}");
    // An age that is not one is refused, saying what to give.
    let (status, _, log) = Proc::start_quiet("serve", &["serve", "--keep-for", "5x"]).finish();
    assert!(
        !status.success() && log.contains("give an age such as"),
        "{log}"
    );
    // Nobody at the endpoint: a clear error within --timeout, not a hang.
    let (status, _, log) = ask(&util::free_endpoint(), &["jobs", "--timeout", "1"]);
    assert!(
        !status.success() && log.contains("no coordinator answered"),
        "{log}"
    );
}

#[test]
fn two_jobs_share_four_workers_at_once_each_exactly_once_and_a_third_waits_its_turn() {
    let state = tempfile::tempdir().unwrap();
    let (_coordinator, control, bind, results) =
        serve(state.path(), ANY, ANY, &["--max-running", "2"]);
    let _workers = sleep_workers(4, &bind, &results);
    // Two jobs of 4.8 s of work each: 1.2 s each on two workers apiece, so they overlap
    // for several of the live view's updates (two a second).
    let a = submit(
        &control,
        &["--tasks", "160", "--min-ms", "30", "--max-ms", "30"],
    );
    let b = submit(
        &control,
        &[
            "--tasks", "120", "--min-ms", "40", "--max-ms", "40", "--seed", "2",
        ],
    );
    let c = submit(&control, &["--tasks", "5"]);
    wait_state(&control, b, "running");
    // Two run; the third waits for room, and is cancelled there.
    let all = jobs(&control);
    let view =
        |all: &[serde_json::Value], id: u64| all.iter().find(|j| j["id"] == id).unwrap().clone();
    assert_eq!(view(&all, c)["state"], "queued", "{all:?}");
    let (status, stdout, log) = ask(&control, &["cancel", &c.to_string()]);
    assert!(
        status.success() && stdout.contains("was queued"),
        "{stdout}{log}"
    );
    // `jobs` shows each running job's progress and its share of the workers: two each.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = jobs(&control);
        let shares: Vec<(u64, u64)> = [a, b]
            .iter()
            .map(|&id| {
                let v = view(&all, id);
                (
                    v["workers"].as_u64().unwrap_or(0),
                    v["held"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        if shares.iter().all(|&(w, h)| w == 2 && h > 0) {
            break;
        }
        let over = all.iter().any(|j| j["state"] == "done");
        assert!(
            !over && Instant::now() < deadline,
            "never two workers each: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, table, _) = ask(&control, &["jobs"]);
    assert!(
        status.success() && table.contains("HELD / TASKS"),
        "{table}"
    );
    wait_state(&control, a, "done");
    wait_state(&control, b, "done");
    let all = jobs(&control);
    let (va, vb) = (view(&all, a), view(&all, b));
    let span = |v: &serde_json::Value| {
        (
            v["started_ms"].as_u64().unwrap(),
            v["ended_ms"].as_u64().unwrap(),
        )
    };
    let ((a0, a1), (b0, b1)) = (span(&va), span(&vb));
    assert!(a0 < b1 && b0 < a1, "the jobs never ran at once: {all:?}");
    assert_eq!(view(&all, c)["state"], "cancelled");
    for (id, tasks) in [(a, 160), (b, 120)] {
        let ids = util::result_ids(&folder(state.path(), id).join("results.jsonl"));
        util::assert_each_once(&ids, tasks);
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(folder(state.path(), id).join("report.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(report["tasks"], tasks, "{report}");
        assert_eq!(
            report["failed"].as_array().map_or(0, Vec::len),
            0,
            "{report}"
        );
        // Both jobs had workers of the four while both ran.
        let workers = report["workers"].as_array().unwrap();
        assert!(!workers.is_empty() && workers.len() <= 4, "{report}");
    }
    // The workers stay for the next job, and all four serve it.
    let last = submit(
        &control,
        &["--tasks", "40", "--min-ms", "20", "--max-ms", "20"],
    );
    wait_state(&control, last, "done");
    util::assert_each_once(
        &util::result_ids(&folder(state.path(), last).join("results.jsonl")),
        40,
    );
}

#[test]
fn kernels_and_their_inputs_travel_with_a_submission_and_run_only_on_computing_workers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let (_coordinator, control, bind, results) = serve(
        &state,
        ANY,
        ANY,
        &[
            "--max-running",
            "3",
            "--inputs-dir",
            inputs.to_str().unwrap(),
        ],
    );
    // A sleep worker beside a computing one: the data jobs must never wait on it, and a
    // task list beside them still uses it.
    let software = crate::gpu::adapter(conquer::backend::gpu::AdapterClass::Software).is_some();
    let computing = if software { "software" } else { "cpu" };
    let _workers = [
        util::worker("sleepy", &bind, &results, &BEAT),
        util::worker_on(computing, "able", &bind, &results, &BEAT),
    ];
    // A Mandelbrot picture, verified against the CPU reference.
    let picture = submit(
        &control,
        &[
            "--kernel",
            "mandelbrot",
            "--width",
            "96",
            "--height",
            "64",
            "--band-rows",
            "8",
            "--verify",
        ],
    );
    let list = submit(&control, &["--tasks", "20", "--max-ms", "5"]);
    // A user kernel whose inputs travel with it (on a software adapter, where WGSL runs).
    let user = software.then(|| {
        for n in [3usize, 1000] {
            let x = (0..n).map(|i| (i % 97) as f32 * 0.25);
            let y = (0..n).map(|i| 1.0 - (i % 13) as f32);
            let bytes: Vec<u8> = x.chain(y).flat_map(f32::to_le_bytes).collect();
            std::fs::write(inputs.join(format!("v{n}.f32")), bytes).unwrap();
        }
        let glob = format!("{}/*.f32", inputs.display());
        let saxpy = [
            "--kernel-file",
            "examples/kernels/saxpy.wgsl",
            "--item-bytes",
            "8",
            "--output-bytes",
            "4/item",
            "--constants",
            "2.5",
        ];
        // The inputs travel; or they are named on the coordinator, under its --inputs-dir.
        let sent = submit(&control, &[&saxpy[..], &["--inputs", &glob]].concat());
        let named = submit(
            &control,
            &[
                &saxpy[..],
                &["--inputs", "*.f32", "--inputs-on-coordinator"],
            ]
            .concat(),
        );
        [sent, named]
    });
    wait_state(&control, picture, "done");
    wait_state(&control, list, "done");
    let report = |id: u64| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(folder(&state, id).join("report.json")).unwrap())
            .unwrap()
    };
    let r = report(picture);
    assert_eq!(r["tasks"], 8, "{r}");
    assert_eq!(r["mismatches"], 0, "{r}");
    assert_eq!(r["verified"], 8, "{r}");
    for w in r["workers"].as_array().unwrap() {
        assert_eq!(w["id"], "able", "a sleep worker ran a data task: {r}");
    }
    assert!(folder(&state, picture).join("picture.png").is_file());
    // The report says what each worker moved out: the picture's 96 x 64 counts.
    let out: u64 = r["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["output_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(out, 96 * 64 * 4, "{r}");
    util::assert_each_once(
        &util::result_ids(&folder(&state, list).join("results.jsonl")),
        20,
    );
    for id in user.into_iter().flatten() {
        wait_state(&control, id, "done");
        let outputs = folder(&state, id).join("outputs");
        for n in [3usize, 1000] {
            let bytes = std::fs::read(inputs.join(format!("v{n}.f32"))).unwrap();
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            let expected: Vec<u8> = (0..n)
                .map(|i| 2.5 * v[i] + v[n + i])
                .flat_map(f32::to_le_bytes)
                .collect();
            let got = std::fs::read(outputs.join(format!("v{n}.f32.out"))).unwrap();
            assert_eq!(got, expected, "v{n}");
        }
    }
    // A kernel that does not compile is refused before it is sent, naming the file, line
    // and column; one sent anyway (a script's own client) is refused by the coordinator.
    let bad = dir.path().join("bad.wgsl");
    let source = "@compute @workgroup_size(64)\nfn main() {\n    let x: u32 = ;\n}\n";
    std::fs::write(&bad, source).unwrap();
    std::fs::write(dir.path().join("a.bin"), [0u8; 16]).unwrap();
    let glob = format!("{}/*.bin", dir.path().display());
    let (status, _, log) = ask(
        &control,
        &[
            "submit",
            "--kernel-file",
            bad.to_str().unwrap(),
            "--inputs",
            &glob,
        ],
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("bad.wgsl:3:"), "{log}");
    let request = Submission {
        kernel_source: Some(source.into()),
        inputs: vec!["a.bin".into()],
        ..Submission::default()
    }
    .request("bad");
    let reason = refusal(&control, &request, &[vec![0u8; 16]], "");
    assert!(reason.contains("kernel.wgsl:3:"), "{reason}");
    // An input named to climb out of the job's folder is refused.
    let request = Submission {
        workloads_ms: vec![1],
        inputs: vec!["../../escape".into()],
        ..Submission::default()
    }
    .request("climb");
    let reason = refusal(&control, &request, &[vec![1]], "");
    assert!(reason.contains("not a plain file name"), "{reason}");
    assert!(!state.join("escape").exists() && !dir.path().join("escape").exists());
    // Inputs named on the coordinator stay under its --inputs-dir.
    let (status, _, log) = ask(
        &control,
        &[
            "submit",
            "--kernel",
            "copy",
            "--inputs",
            "../*",
            "--inputs-on-coordinator",
        ],
    );
    assert!(!status.success() && log.contains("without `..`"), "{log}");
    let request = Submission {
        remote_inputs: Some("/etc/*".into()),
        ..Submission::default()
    }
    .request("climb");
    let reason = refusal(&control, &request, &[], "");
    assert!(reason.contains("without `..`"), "{reason}");
    // A glob part starting with a dot can match `..`: refused too.
    let (status, _, log) = ask(
        &control,
        &[
            "submit",
            "--kernel",
            "copy",
            "--inputs",
            ".?/*",
            "--inputs-on-coordinator",
        ],
    );
    assert!(
        !status.success() && log.contains("starting with `.`"),
        "{log}"
    );
    // A link inside --inputs-dir that leads out of it is refused by the coordinator.
    std::os::unix::fs::symlink(dir.path().join("a.bin"), inputs.join("out.bin")).unwrap();
    let (status, _, log) = ask(
        &control,
        &[
            "submit",
            "--kernel",
            "copy",
            "--inputs",
            "out.bin",
            "--inputs-on-coordinator",
        ],
    );
    assert!(!status.success() && log.contains("leads outside"), "{log}");
    std::fs::remove_file(inputs.join("out.bin")).unwrap();
    // Flags out of range from a script's own client (here --item-bytes 0, which would
    // divide by zero) are refused, and the coordinator answers on.
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        batch: conquer::cli::BatchArgs,
    }
    let parsed = <Flags as clap::Parser>::try_parse_from(["x", "--output-bytes", "4"]).unwrap();
    let mut flags = serde_json::to_value(&parsed.batch).unwrap();
    flags["data"]["item_bytes"] = 0.into();
    let request = Submission {
        flags: Some(flags),
        kernel_source: Some(std::fs::read_to_string("examples/kernels/saxpy.wgsl").unwrap()),
        inputs: vec!["a.bin".into()],
        ..Submission::default()
    }
    .request("zero");
    let reason = refusal(&control, &request, &[vec![0u8; 16]], "");
    assert!(reason.contains("--item-bytes"), "{reason}");
    let (status, _, log) = ask(&control, &["jobs"]);
    assert!(status.success(), "{log}");
}

#[test]
fn the_live_view_lists_the_jobs_and_metrics_label_them_by_id() {
    let state = tempfile::tempdir().unwrap();
    let (coordinator, control, bind, results) = serve(
        state.path(),
        ANY,
        ANY,
        &["--http", "127.0.0.1:0", "--max-running", "2"],
    );
    let base = coordinator.live_view();
    let _workers = sleep_workers(2, &bind, &results);
    let done = submit(
        &control,
        &["--tasks", "10", "--max-ms", "5", "--name", "quick"],
    );
    wait_state(&control, done, "done");
    let long = submit(
        &control,
        &[
            "--tasks",
            "400",
            "--min-ms",
            "50",
            "--max-ms",
            "50",
            "--name",
            "long \"one\"",
        ],
    );
    wait_state(&control, long, "running");
    // The page's status lists every job, with the running one's progress and workers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status: serde_json::Value =
            serde_json::from_str(&util::http_get(&format!("{base}/api/status"))).unwrap();
        let jobs = status["jobs"].as_array().cloned().unwrap_or_default();
        let running = jobs.iter().find(|j| j["id"] == long);
        if running.is_some_and(|j| j["held"].as_u64() > Some(0) && j["workers"] == 2) {
            break status;
        }
        assert!(Instant::now() < deadline, "never listed running: {status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let jobs = status["jobs"].as_array().unwrap();
    let quick = jobs.iter().find(|j| j["id"] == done).unwrap();
    assert_eq!(quick["state"], "done", "{status}");
    assert_eq!(
        (quick["held"].as_u64(), quick["tasks"].as_u64()),
        (Some(10), Some(10))
    );
    assert_eq!(status["workers"].as_array().unwrap().len(), 2, "{status}");
    assert!(
        status["phase"]
            .as_str()
            .unwrap()
            .starts_with("1 running, 0 queued"),
        "{status}"
    );
    let metrics = util::http_get(&format!("{base}/metrics"));
    assert!(
        metrics.contains(&format!("conquer_job_held{{job=\"{done}\"}} 10")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("conquer_job_workers{{job=\"{long}\"}} 2")),
        "{metrics}"
    );
    assert!(
        metrics.contains("conquer_jobs{state=\"running\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "conquer_job_info{{job=\"{long}\",name=\"long \\\"one\\\"\",state=\"running\"}} 1"
        )),
        "{metrics}"
    );
    let (status, _, log) = ask(&control, &["cancel", &long.to_string()]);
    assert!(status.success(), "{log}");
}

#[test]
fn a_worker_killed_while_two_jobs_share_the_farm_loses_neither_a_task() {
    let state = tempfile::tempdir().unwrap();
    let (_coordinator, control, bind, results) = serve(state.path(), ANY, ANY, &[]);
    let mut workers = sleep_workers(4, &bind, &results);
    let (ids, files) = two_jobs_under_way(&control, state.path(), 120, 20, 10);
    // One worker dies holding tasks of one of the jobs; a replacement joins later.
    let victim = workers.remove(0);
    victim.signal("KILL");
    drop(victim.finish());
    workers.push(util::worker("w5", &bind, &results, &BEAT));
    for (id, file) in ids.iter().zip(&files) {
        wait_state(&control, *id, "done");
        util::assert_each_once(&util::result_ids(file), 120);
    }
}

#[test]
fn a_coordinator_killed_mid_job_resumes_every_running_job_without_redoing_what_it_held() {
    let state = tempfile::tempdir().unwrap();
    let (coordinator, control, bind, results) = serve(state.path(), ANY, ANY, &[]);
    let _workers = sleep_workers(4, &bind, &results);
    // Two jobs side by side, two workers each: 1.5 s of work apiece.
    let (ids, files) = two_jobs_under_way(&control, state.path(), 100, 30, 20);
    coordinator.signal("KILL");
    drop(coordinator.finish());
    let held = files.clone().map(|f| util::result_ids(&f).len());
    assert!(
        held.iter().all(|&h| h < 100),
        "a job finished before the kill: {held:?}"
    );
    let (_again, control, _, _) = serve(state.path(), &bind, &results, &[]);
    for ((id, file), held) in ids.iter().zip(&files).zip(held) {
        wait_state(&control, *id, "done");
        util::assert_each_once(&util::result_ids(file), 100);
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(folder(state.path(), *id).join("report.json")).unwrap(),
        )
        .unwrap();
        // Nothing the file held went out again. The only results that arrive twice are
        // of tasks the workers had in hand when the coordinator died (the resumed batch
        // hands them out again; the workers deliver theirs once the new sink is up): a
        // few, never the 20 or more the file held. A job started afresh would repeat
        // every one of those.
        let duplicates = report["duplicates"].as_u64().unwrap();
        assert!(
            duplicates < held as u64,
            "job {id}: {duplicates} duplicates, {held} held: {report}"
        );
        assert_eq!(report["tasks"], 100, "{report}");
    }
}

#[test]
fn under_systemd_the_coordinator_says_ready_once_it_takes_jobs() {
    // systemd's side of Type=notify: a datagram socket named in $NOTIFY_SOCKET.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let state = dir.path().join("state");
    let coordinator = Proc::start_with_env(
        "serve",
        &[
            "serve",
            "--state",
            state.to_str().unwrap(),
            "--bind",
            ANY,
            "--results-bind",
            ANY,
            "--control",
            "tcp://127.0.0.1:0",
        ],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut buffer = [0u8; 256];
    let n = systemd.recv(&mut buffer).expect("READY=1 within 30 s");
    let message = String::from_utf8_lossy(&buffer[..n]);
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    // Ready means taking jobs: the control socket answers.
    let control = coordinator.endpoint("control");
    assert!(jobs(&control).is_empty());
}

#[test]
fn with_a_secret_only_the_submit_token_submits_and_refusals_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("farm.key");
    conquer::auth::Secret::create(&secret, false).unwrap();
    let key = secret.to_str().unwrap();
    let state = dir.path().join("state");
    let (_coordinator, control, bind, results) = serve(&state, ANY, ANY, &["--secret-file", key]);
    let _worker = util::worker("w1", &bind, &results, &["--secret-file", key]);
    // No token: refused, saying what to pass.
    let (status, _, log) = ask(&control, &["submit", "--tasks", "5"]);
    assert!(!status.success() && log.contains("--secret-file"), "{log}");
    // The live view's status token reads the queue and cannot submit.
    let status_token = conquer::auth::Secret::load(&secret).unwrap().token();
    let request = Submission {
        workloads_ms: vec![1],
        ..Submission::default()
    }
    .request("forged");
    let reason = refusal(&control, &request, &[], &status_token);
    assert!(reason.contains("status token"), "{reason}");
    // The secret's holder submits, and the job runs on the farm's authenticated sockets.
    let (status, stdout, log) = ask(
        &control,
        &[
            "submit",
            "--tasks",
            "10",
            "--max-ms",
            "5",
            "--secret-file",
            key,
        ],
    );
    assert!(status.success(), "{log}");
    let id: u64 = stdout.trim().parse().unwrap();
    let (status, stdout, log) = ask(&control, &["jobs", "--json", "--secret-file", key]);
    assert!(status.success(), "{log}");
    let all: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(all["refused"], 2, "{all}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stdout, _) = ask(&control, &["jobs", "--json", "--secret-file", key]);
        let all: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        if all["jobs"][0]["id"] == id && all["jobs"][0]["state"] == "done" {
            break;
        }
        assert!(Instant::now() < deadline, "never done: {all}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
