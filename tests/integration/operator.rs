//! What an operator sees, through the real executable: advice that can be typed in the
//! command that printed it (each suggestion is run here), the answer of a search in the
//! text report, and logs that say each thing once.

use crate::util::{self, Proc};
use std::process::ExitStatus;

/// Runs `conquer ARGS` at default verbosity, as a user would, to its end.
fn conquer(args: &[&str]) -> (ExitStatus, String, String) {
    Proc::start_quiet("conquer", args).finish()
}

/// Every `--flag` named in `text`.
fn flags_in(text: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let tail = &rest[at + 2..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(tail.len());
        if len > 0 {
            flags.push(format!("--{}", &tail[..len]));
        }
        rest = &tail[len..];
    }
    flags
}

/// Asserts that every flag `advice` names is one `conquer COMMAND` accepts.
fn assert_typeable(command: &str, advice: &str) {
    let (status, help, _) = conquer(&[command, "--help"]);
    assert!(status.success());
    for flag in flags_in(advice) {
        let listed = help.lines().any(|l| {
            l.trim_start().split([' ', ',', '=', '<']).next() == Some(flag.as_str())
                || l.contains(&format!(", {flag} "))
                || l.ends_with(&format!(", {flag}"))
        });
        assert!(
            listed,
            "the advice names {flag}, which `conquer {command}` does not take:\n{advice}"
        );
    }
}

/// The lines of `log` that give advice (warnings and errors).
fn advice(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("error:"))
        .collect()
}

/// Runs a command printed between backticks (plain words only) with the binary under test.
fn run_printed(command: &str) -> (ExitStatus, String, String) {
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"conquer"), "{command}");
    conquer(&words[1..])
}

#[test]
fn o02_advice_a_run_gives_is_typed_into_run_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl");
    let file = results.to_str().unwrap();
    let batch = [
        "run",
        "--workers",
        "2",
        "--tasks",
        "40",
        "--min-ms",
        "100",
        "--max-ms",
        "100",
        "--results",
        file,
    ];

    // Ctrl-C mid-batch: the advice is a command that finishes the batch.
    let run = Proc::start_quiet("run", &batch);
    util::wait_for_lines(&results, 3);
    run.signal("INT");
    let (status, _, log) = run.finish();
    assert_eq!(status.code(), Some(130), "{log}");
    for line in advice(&log) {
        assert_typeable("run", line);
    }
    // One count, said once: not the ventilator's and the sink's, which may differ.
    let counts = log.lines().filter(|l| l.contains("of 40 tasks")).count();
    assert_eq!(counts, 1, "the held count is said once:\n{log}");
    // Nor is the stop itself an error of each worker's.
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("interrupted")),
        "{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("To finish the batch"))
        .unwrap_or_else(|| panic!("no advice to finish the batch:\n{log}"));
    let command = line
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no command in {line}"));
    let (status, _, log) = run_printed(command);
    assert!(status.success(), "`{command}` failed:\n{log}");
    util::assert_each_once(&util::result_ids(&results), 40);

    // The same run again finds the file full: each way out it names works in `run`.
    let (status, _, log) = conquer(&batch);
    assert_eq!(status.code(), Some(1), "{log}");
    let refusal = advice(&log).join("\n");
    assert_typeable("run", &refusal);
    let ways: Vec<String> = flags_in(&refusal)
        .into_iter()
        .filter(|f| f == "--resume" || f == "--overwrite")
        .collect();
    assert_eq!(ways.len(), 2, "{refusal}");
    for way in ways {
        let mut args = batch.to_vec();
        args.push(&way);
        let (status, _, log) = conquer(&args);
        assert!(status.success(), "run {way} failed:\n{log}");
        util::assert_each_once(&util::result_ids(&results), 40);
    }
}

#[test]
fn o02_a_live_view_others_can_reach_is_refused_with_flags_run_has() {
    let dir = tempfile::tempdir().unwrap();
    // No linger: each run here ends with its batch.
    let exposed = [
        "run",
        "--tasks",
        "4",
        "--http",
        "0.0.0.0:0",
        "--http-linger",
        "0",
    ];
    let (status, _, log) = conquer(&exposed);
    assert_eq!(status.code(), Some(1), "{log}");
    let refusal = advice(&log).join("\n");
    assert_typeable("run", &refusal);

    // Each way out it names, taken.
    assert!(refusal.contains("--insecure"), "{refusal}");
    let mut insecure = exposed.to_vec();
    insecure.push("--insecure");
    let (status, _, log) = conquer(&insecure);
    assert!(status.success(), "{log}");

    assert!(refusal.contains("conquer secret new FILE"), "{refusal}");
    let secret = dir.path().join("farm.key");
    let secret = secret.to_str().unwrap();
    let (status, _, log) = conquer(&["secret", "new", secret]);
    assert!(status.success(), "{log}");
    let mut with_secret = exposed.to_vec();
    with_secret.extend(["--secret-file", secret]);
    let (status, _, log) = conquer(&with_secret);
    assert!(status.success(), "{log}");

    assert!(refusal.contains("127.0.0.1:8080"), "{refusal}");
    let (status, _, log) = conquer(&[
        "run",
        "--tasks",
        "4",
        "--http",
        "127.0.0.1:0",
        "--http-linger",
        "0",
    ]);
    assert!(status.success(), "{log}");
}

/// A search on two cpu workers that finds more hits than the text report shows (8 tasks).
const SEARCH: [&str; 13] = [
    "run",
    "--kernel",
    "search",
    "--backend",
    "cpu",
    "--workers",
    "2",
    "--bits",
    "16",
    "--keys",
    "2000000",
    "--keys-per-task",
    "250000",
];

#[test]
fn o03_the_text_report_shows_the_hits_the_outputs_the_picture_and_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = dir.path().join("out");
    let mut search = SEARCH.to_vec();
    search.extend(["--outputs", outputs.to_str().unwrap()]);
    let mut json = search.clone();
    json.push("--json");
    let (status, stdout, log) = conquer(&json);
    assert!(status.success(), "{log}");
    let r = util::report(&stdout);
    let hits: Vec<u64> = r["hits"]
        .as_array()
        .expect("hits in the JSON report")
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    assert!(hits.len() > 8, "{r}");

    std::fs::remove_dir_all(&outputs).unwrap();
    let (status, text, log) = conquer(&search);
    assert!(status.success(), "{log}");
    let first: Vec<String> = hits.iter().take(8).map(u64::to_string).collect();
    let line = format!(
        "{} hits: {}, … ({} more",
        hits.len(),
        first.join(", "),
        hits.len() - 8
    );
    assert!(text.contains(&line), "no {line:?} in the report:\n{text}");
    let written = format!("8 output files written to {}", outputs.display());
    assert!(text.contains(&written), "no {written:?} in:\n{text}");

    let picture = dir.path().join("m.png");
    let (status, text, log) = conquer(&[
        "run",
        "--kernel",
        "mandelbrot",
        "--backend",
        "cpu",
        "--workers",
        "2",
        "--width",
        "64",
        "--height",
        "32",
        "--image",
        picture.to_str().unwrap(),
        "--verify",
    ]);
    assert!(status.success(), "{log}");
    let written = format!("picture written to {}", picture.display());
    assert!(text.contains(&written), "no {written:?} in:\n{text}");
    assert!(picture.exists());
    assert!(text.contains("verified "), "no verification in:\n{text}");
}

#[test]
fn o04_auto_decides_the_backend_once_with_the_batch_in_view_and_says_it_once() {
    // The README's Mandelbrot command, smaller, with `-v`.
    let (status, stdout, log) = Proc::start(
        "run",
        &[
            "run",
            "--kernel",
            "mandelbrot",
            "--width",
            "320",
            "--height",
            "180",
            "--max-iter",
            "200",
            "--centre=-0.7436,0.1318",
            "--view-width",
            "0.012",
            "--verify",
            "--json",
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    let said: Vec<&str> = log.lines().filter(|l| l.contains("backend")).collect();
    assert_eq!(said.len(), 1, "the backend is said once:\n{log}");
    assert!(
        !log.contains("computes nothing"),
        "a computed batch is not called unverifiable:\n{log}"
    );
    let r = util::report(&stdout);
    assert!(r["checked"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["verified"], r["checked"], "{r}");
    // What was said is what ran.
    let ran = r["workers"][0]["backend"].as_str().unwrap().to_owned();
    assert!(
        said[0].to_lowercase().contains(&ran) || ran == "gpu",
        "said {}, ran {ran}",
        said[0]
    );
}

#[test]
fn o04_a_separately_started_worker_logs_under_its_name() {
    let nowhere = util::free_endpoint();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    for name in [None, Some("w7")] {
        let mut args = vec![
            "worker",
            "--backend",
            "sleep",
            "--ventilator",
            &nowhere,
            "--sink",
            &nowhere,
        ];
        if let Some(name) = name {
            args.extend(["--name", name]);
        }
        let worker = Proc::start("worker", &args);
        let pid = worker.pid();
        worker.event("connecting");
        let log = worker.interrupt();
        let line = log
            .lines()
            .find(|l| l.contains("backend sleep"))
            .unwrap_or_else(|| panic!("no word of the backend:\n{log}"));
        let expected = match name {
            Some(name) => format!("worker {name}: "),
            None if !host.is_empty() => format!("worker {host}-{pid}-0: "),
            None => format!("-{pid}-0: "),
        };
        assert!(line.contains(&expected), "{expected:?} not in {line:?}");
    }
}

/// `GET url` as JSON.
fn get_json(url: &str) -> serde_json::Value {
    let body = util::http_get(url);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// Polls `/api/status` until `done` holds.
fn wait_status(
    base: &str,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + util::PATIENCE;
    loop {
        let status = get_json(&format!("{base}/api/status"));
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the live view never showed {what}: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn o01_a_jobs_progress_is_counted_in_items_with_each_workers_rate() {
    let run = Proc::start_quiet(
        "run",
        &[
            "run",
            "--items",
            "30000",
            "--item-us",
            "200",
            "--chunking",
            "adaptive",
            "--backend",
            "sleep",
            "--workers",
            "3",
            "--http",
            "127.0.0.1:0",
            "--http-linger",
            "30",
        ],
    );
    let base = run.live_view();

    // Mid-job: the totals are the job's items, not the chunks cut so far.
    let mid = wait_status(&base, "a job under way", |s| {
        let held = s["items_held"].as_u64().unwrap_or(0);
        held > 3000 && held < 20000 && s["eta_s"].is_number()
    });
    assert_eq!(mid["items"], 30000, "{mid}");
    let held = mid["items_held"].as_f64().unwrap();
    let rate = mid["items_per_s"].as_f64().unwrap();
    let eta = mid["eta_s"].as_f64().unwrap();
    let expected = (30000.0 - held) / rate;
    assert!(
        (eta - expected).abs() <= 0.01 * expected,
        "ETA {eta} s is not the items left at the items' rate ({expected} s): {mid}"
    );
    let text = conquer(&["status", "--http", &base]).1;
    assert!(
        text.contains("of 30000 items held") && text.contains("items/s"),
        "{text}"
    );

    // At the end: every item held and counted once among the workers (the last chunks'
    // reports, which may reach the ventilator after the sink said the job is complete,
    // are read while the view lingers), each worker with its rate, listed by name.
    let items = |s: &serde_json::Value| -> u64 {
        let workers = s["workers"].as_array().unwrap();
        workers.iter().map(|w| w["items"].as_u64().unwrap()).sum()
    };
    let end = wait_status(&base, "the job done, every item counted", |s| {
        s["items_held"] == 30000 && items(s) == 30000
    });
    let workers = end["workers"].as_array().unwrap();
    for w in workers {
        assert!(w["items_per_s"].as_f64().unwrap() > 0.0, "{w}");
    }
    let names: Vec<&str> = workers
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "{end}");
    // Throughput over time: a sample about every half second of the 2 s job, each with
    // the latency of what was held in it.
    let series = end["series"].as_array().unwrap();
    assert!(series.len() >= 2, "{end}");
    assert!(
        series
            .iter()
            .any(|p| p["per_s"].as_f64().unwrap() > 0.0 && p["p95_ms"].is_number()),
        "{end}"
    );
    let metrics = util::http_get(&format!("{base}/metrics"));
    for line in ["conquer_job_items 30000", "conquer_job_items_held 30000"] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    drop(run);
}

/// Lines of `log` at INFO or DEBUG level.
fn chatter(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" DEBUG "))
        .collect()
}

#[test]
fn o08_q_and_a_bare_level_in_log_or_rust_log_lower_the_default() {
    let batch = ["run", "--tasks", "5", "--min-ms", "1", "--max-ms", "5"];
    let (status, stdout, log) = conquer(&batch);
    assert!(status.success(), "{log}");
    assert!(
        !chatter(&log).is_empty(),
        "the default says what it does:\n{log}"
    );

    let mut quiet = vec!["-q"];
    quiet.extend(batch);
    let (status, quiet_out, log) = conquer(&quiet);
    assert!(status.success(), "{log}");
    assert!(chatter(&log).is_empty(), "-q:\n{log}");
    assert_eq!(
        quiet_out.lines().count(),
        stdout.lines().count(),
        "the report is the same"
    );

    let mut lowered = batch.to_vec();
    lowered.extend(["--log", "warn"]);
    let (status, _, log) = conquer(&lowered);
    assert!(status.success(), "{log}");
    assert!(chatter(&log).is_empty(), "--log warn:\n{log}");

    // Even below -v (which `start_with_env` passes).
    let (status, _, log) = Proc::start_with_env("run", &batch, &[("RUST_LOG", "warn")]).finish();
    assert!(status.success(), "{log}");
    assert!(chatter(&log).is_empty(), "-v with RUST_LOG=warn:\n{log}");
}

#[test]
fn o08_status_reads_conquer_http_and_defaults_to_the_usual_address() {
    let (_, help, _) = conquer(&["status", "--help"]);
    assert!(
        help.contains("http://127.0.0.1:8080") && help.contains("CONQUER_HTTP"),
        "{help}"
    );
    let run = Proc::start_quiet(
        "run",
        &[
            "run",
            "--tasks",
            "8",
            "--http",
            "127.0.0.1:0",
            "--http-linger",
            "30",
        ],
    );
    let base = run.live_view();
    let address = base.trim_start_matches("http://").to_owned();
    wait_status(&base, "the batch done", |s| s["held"] == 8);
    let (status, table, log) =
        Proc::start_with_env("status", &["status"], &[("CONQUER_HTTP", &address)]).finish();
    assert!(status.success(), "{log}");
    assert!(table.contains("8 of 8 held"), "{table}");
    drop(run);
}

#[test]
fn o08_the_bar_counts_a_jobs_items_at_a_rounded_rate_and_no_log_line_lands_on_it() {
    // The bar is drawn only on a terminal: `script` gives the run one.
    let has_script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_script {
        eprintln!("skipped: no `script` (util-linux) here to give the run a terminal");
        return;
    }
    let command = format!(
        "{} run --items 30000 --item-us 200 --chunking adaptive --backend sleep --workers 3",
        util::binary().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<&str> = text.split(['\r', '\n']).collect();
    // Every frame of the bar counts items; its rate is rounded as the report's are.
    let bars: Vec<&&str> = frames.iter().filter(|f| f.contains("ETA")).collect();
    assert!(!bars.is_empty(), "no bar drawn:\n{text}");
    for bar in &bars {
        assert!(bar.contains("/30000 items"), "{bar}");
        let rate = bar
            .split_whitespace()
            .find_map(|w| w.strip_suffix("/s"))
            .unwrap_or_else(|| panic!("no rate in {bar}"));
        let decimals = rate.split('.').nth(1).map_or(0, str::len);
        assert!(
            rate.parse::<f64>().is_ok() && decimals <= 2,
            "rate {rate} in {bar}"
        );
    }
    // A log line starts a line of its own: the bar is cleared first.
    for frame in frames.iter().filter(|f| f.contains(" INFO ")) {
        let mut start: &str = frame;
        while let Some(rest) = start.strip_prefix("\u{1b}[") {
            let end = rest
                .find(|c: char| c.is_ascii_alphabetic())
                .map_or(0, |e| e + 1);
            start = &rest[end..];
        }
        assert!(
            start.starts_with("20") && start.as_bytes().get(4) == Some(&b'-'),
            "a log line drawn onto the bar: {frame:?}"
        );
    }
}

#[test]
fn o08_help_groups_the_flags_under_headings() {
    let (status, help, _) = conquer(&["ventilator", "--help"]);
    assert!(status.success());
    let headings: Vec<&str> = help
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(':'))
        .map(|l| l.trim_end_matches(':'))
        .collect();
    for wanted in [
        "Batch",
        "Kernels and data",
        "Jobs and chunking",
        "Dispatch",
        "Security",
        "Live view",
        "Logging",
    ] {
        assert!(headings.contains(&wanted), "no {wanted:?} in {headings:?}");
    }
    // What is left under "Options" is the role's own few.
    let options = help
        .lines()
        .skip_while(|l| *l != "Options:")
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .filter(|l| l.trim_start().starts_with('-'))
        .count();
    assert!(options <= 8, "{options} flags under Options:\n{help}");
}

#[test]
fn o08_long_help_and_the_man_page_give_examples_exit_status_environment_and_files() {
    for command in ["run", "ventilator", "worker", "sink"] {
        let (status, help, _) = conquer(&[command, "--help"]);
        assert!(status.success());
        let examples: Vec<&str> = help
            .lines()
            .skip_while(|l| *l != "Examples:")
            .skip(1)
            .filter_map(|l| l.trim().split(" conquer ").last())
            .filter_map(|l| l.split('#').next())
            .collect();
        assert!(!examples.is_empty(), "no examples in {command} --help");
        // Each example is one this command takes.
        for example in examples {
            assert_typeable(command, example);
        }
    }
    let (status, page, _) = conquer(&["man"]);
    assert!(status.success());
    for section in [
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH EXAMPLES",
    ] {
        assert!(page.contains(section), "no {section} in the man page");
    }
}

#[test]
fn o06_the_live_view_stays_up_finished_measures_before_it_shows_and_counts_the_work_left() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.txt");
    // Handed out longest first: eight long tasks, then many short ones. The count of
    // tasks held says little of the time left.
    let mut batch = "700\n".repeat(8);
    batch += &"30\n".repeat(160);
    std::fs::write(&tasks, batch).unwrap();
    // The default --http-linger.
    let run = Proc::start_quiet(
        "run",
        &[
            "run",
            "--workers",
            "4",
            "--backend",
            "sleep",
            "--tasks-file",
            tasks.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--json",
        ],
    );
    let base = run.live_view();

    let mut unmeasured = 0;
    let mid = wait_status(&base, "the short tasks under way", |s| {
        let Some(workers) = s["workers"].as_array() else {
            return false; // no batch yet
        };
        let reported = workers
            .iter()
            .any(|w| w["done"].as_u64().unwrap() + w["failed"].as_u64().unwrap() > 0);
        if reported {
            assert!(s["efficiency"].is_number(), "{s}");
        } else {
            // Busy time comes from reports: before the first, nothing is shown as 0.
            unmeasured += 1;
            assert!(s["efficiency"].is_null(), "efficiency before a report: {s}");
            for w in workers {
                assert!(w["busy_share"].is_null(), "busy share before a report: {s}");
            }
        }
        let held = s["held"].as_u64().unwrap();
        (12..=140).contains(&held) && s["eta_s"].is_number()
    });
    assert!(
        unmeasured > 0,
        "the live view was never seen before a report"
    );
    // The work left over four workers, not the tasks' count at the pace of the long ones
    // run first. Each worker runs one long task before it is measured; the rest of them
    // may still be queued: they count at their length (a bar each, as each is reported
    // alone).
    let held = mid["held"].as_f64().unwrap();
    let long_held = mid["bars"]
        .as_array()
        .expect("bars")
        .iter()
        .filter(|b| {
            let took = b["end_s"].as_f64().unwrap() - b["start_s"].as_f64().unwrap();
            b["status"] == "ok" && took > 0.5
        })
        .count() as f64;
    let left_s = ((8.0 - long_held) * 0.700 + (160.0 - (held - long_held)) * 0.030) / 4.0;
    let eta = mid["eta_s"].as_f64().unwrap();
    assert!(
        eta > 0.5 * left_s && eta < 1.5 * left_s,
        "ETA {eta} s with about {left_s} s of work left per worker: {mid}"
    );

    // After the batch the final state stays up, finished; `status --watch` draws it and
    // ends.
    let end = wait_status(&base, "the batch finished", |s| s["finished"] == true);
    assert_eq!(end["held"], 168, "{end}");
    let (status, stdout, log) = conquer(&["status", "--watch", "--http", &base]);
    assert!(status.success(), "{log}");
    assert!(stdout.contains("(finished)"), "{stdout}");
    let (status, stdout, log) = run.finish();
    assert!(status.success(), "{log}");
    assert_eq!(util::report(&stdout)["tasks"], 168, "{stdout}");
}

#[test]
fn o09_metrics_carry_the_build_the_process_and_a_sleep_workers_adapter_as_none() {
    let run = Proc::start_quiet(
        "run",
        &[
            "run",
            "--workers",
            "2",
            "--backend",
            "sleep",
            "--tasks",
            "100000",
            "--min-ms",
            "5",
            "--max-ms",
            "5",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let base = run.live_view();
    let scrape = || util::http_get(&format!("{base}/metrics"));
    // Once the workers have done tasks, each has its series.
    let deadline = std::time::Instant::now() + util::PATIENCE;
    let metrics = loop {
        let metrics = scrape();
        let workers = metrics
            .lines()
            .filter(|l| l.starts_with("conquer_worker_tasks_total{"))
            .count();
        if workers == 2 {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no worker series:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    let build = format!(
        "conquer_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&build), 1.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 10.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_cpu_seconds_total") >= 0.0);
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("conquer_worker_tasks_total{"))
    {
        assert!(
            line.contains("backend=\"sleep\",adapter=\"none\""),
            "{line}"
        );
    }
    drop(run);
}

#[test]
fn o07_the_live_view_shows_the_sinks_side_results_outputs_and_hits() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = dir.path().join("out");
    let results = dir.path().join("r.csv");
    let mut args = SEARCH.to_vec();
    args.extend([
        "--outputs",
        outputs.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--http-linger",
        "30",
        "--json",
    ]);
    let run = Proc::start_quiet("run", &args);
    let base = run.live_view();
    let end = wait_status(&base, "every output written", |s| {
        s["finished"] == true && s["sink"]["outputs_written"] == 8
    });
    let sink = &end["sink"];
    assert_eq!(sink["results"], results.to_str().unwrap(), "{end}");
    assert_eq!(sink["outputs"], outputs.to_str().unwrap(), "{end}");
    assert!(sink["results_bytes"].as_u64().unwrap() > 0, "{end}");
    assert!(sink["syncs"].as_u64().unwrap() > 0, "{end}");
    assert_eq!(sink["picture_state"], "none", "{end}");
    let metrics = util::http_get(&format!("{base}/metrics"));
    for line in [
        "conquer_sink_outputs_written_total 8",
        "conquer_sink_picture{state=\"none\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    let text = conquer(&["status", "--http", &base]).1;
    let line = format!("8 outputs in {}", outputs.display());
    assert!(text.contains(&line), "no {line:?} in:\n{text}");
    // The hits the page shows are the report's.
    let (status, stdout, log) = run.finish();
    assert!(status.success(), "{log}");
    let report = util::report(&stdout);
    let hits: Vec<u64> = report["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    assert_eq!(sink["hits"], hits.len() as u64, "{end}");
    let first: Vec<u64> = sink["first_hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    assert_eq!(first, hits[..hits.len().min(8)], "{end}");
}

#[test]
fn o07_the_live_view_is_finished_only_once_the_picture_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let picture = dir.path().join("m.png");
    let run = Proc::start_quiet(
        "run",
        &[
            "run",
            "--kernel",
            "mandelbrot",
            "--backend",
            "cpu",
            "--workers",
            "2",
            "--width",
            "512",
            "--height",
            "256",
            "--image",
            picture.to_str().unwrap(),
            "--verify",
            "--http",
            "127.0.0.1:0",
            "--http-linger",
            "30",
        ],
    );
    let base = run.live_view();
    let end = wait_status(&base, "the batch finished", |s| {
        // Never finished while the picture is still to be written.
        if s["finished"] == true {
            assert_eq!(s["sink"]["picture_state"], "written", "{s}");
            assert!(
                picture.exists(),
                "finished before {} exists: {s}",
                picture.display()
            );
        }
        s["finished"] == true
    });
    let sink = &end["sink"];
    assert_eq!(sink["picture"], picture.to_str().unwrap(), "{end}");
    let checked = sink["checked"].as_u64().unwrap();
    assert!(checked > 0, "{end}");
    assert_eq!(sink["verified"], checked, "{end}");
    assert_eq!(sink["mismatches"], 0, "{end}");
    assert_eq!(end["phase"], "over", "{end}");
}
