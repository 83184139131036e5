//! `conquer bench --quick`: every suite present and every number parses. A structure check,
//! not a measurement: benchmarks assert nothing about speed.

use crate::util::Proc;

#[test]
fn quick_bench_reports_every_suite_with_numbers_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let (status, stdout, log) = Proc::start(
        "bench",
        &["bench", "--quick", "--json", "--out", out.to_str().unwrap()],
    )
    .finish();
    assert!(status.success(), "{log}");
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    for suite in [
        "scaling",
        "backends",
        "dispatch",
        "throughput",
        "latency",
        "faults",
        "simulate",
    ] {
        let rows = r[suite]
            .as_array()
            .unwrap_or_else(|| panic!("no {suite} in {r}"));
        assert!(!rows.is_empty(), "{suite} has no rows");
    }
    assert!(r["device"].is_array());
    for part in ["compute", "payload"] {
        let rows = r["kernels"][part]
            .as_array()
            .unwrap_or_else(|| panic!("no kernels.{part} in {r}"));
        assert!(!rows.is_empty(), "kernels.{part} has no rows");
    }
    // The cpu backend times its own computation: its kernel-only rate is there, a number,
    // and never below the rate with the pipeline around it (less the clock's rounding).
    for row in r["kernels"]["compute"].as_array().unwrap() {
        if row["backend"] != "cpu" || row["kernel"] == "mandelbrot f32" {
            continue;
        }
        let kernel_only = row["kernel_mitems_per_s"]["median"]
            .as_f64()
            .unwrap_or_else(|| panic!("no kernel-only rate: {row}"));
        let whole = row["mitems_per_s"]["median"].as_f64().unwrap();
        assert!(kernel_only >= 0.99 * whole, "{row}");
    }
    for row in r["kernels"]["payload"].as_array().unwrap() {
        assert!(
            row["ratio"]["median"].as_f64().is_some_and(f64::is_finite),
            "payload ratio: {row}"
        );
        assert_eq!(row["lost"], 0, "{row}");
    }
    let number = |v: &serde_json::Value, what: &str| {
        assert!(
            v.as_f64().is_some_and(f64::is_finite),
            "{what} is not a number: {v}"
        );
    };
    for row in r["scaling"].as_array().unwrap() {
        number(&row["elapsed_ms"]["median"], "scaling elapsed");
        number(&row["efficiency"]["median"], "scaling efficiency");
    }
    let backends: Vec<&str> = r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert!(
        backends.contains(&"sleep") && backends.contains(&"cpu"),
        "{backends:?}"
    );
    for row in r["throughput"].as_array().unwrap() {
        number(&row["tasks_per_s"]["median"], "throughput");
    }
    for row in r["latency"].as_array().unwrap() {
        for p in ["p50_us", "p90_us", "p99_us"] {
            number(&row[p], p);
        }
    }
    assert_eq!(
        r["dispatch"].as_array().unwrap().len(),
        6,
        "3 scenarios x classic/credit"
    );
    for file in ["bench.md", "bench.json", "scaling.svg", "backends.svg"] {
        assert!(out.join(file).exists(), "{file} written");
    }
    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    for heading in [
        "### Scaling",
        "### Backends",
        "### Dispatch",
        "### Throughput",
        "### Latency",
        "### Kernels",
        "### Payloads",
    ] {
        assert!(md.contains(heading), "{heading} missing from the Markdown");
    }
    let svg = std::fs::read_to_string(out.join("scaling.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("efficiency"),
        "a real plot"
    );
}

#[test]
fn an_output_folder_that_cannot_be_made_fails_before_any_suite_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    // The simulate suite runs for a minute: a check after it would be found out late.
    let (status, stdout, log) = Proc::start(
        "bench",
        &[
            "bench",
            "--suite",
            "simulate",
            "--out",
            file.to_str().unwrap(),
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("--out") && log.contains("cannot create the output folder"),
        "{log}"
    );
    assert!(stdout.is_empty(), "{stdout}");
}
