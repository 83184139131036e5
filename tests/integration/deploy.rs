//! Deployment: configuration from `CONQUER_*` variables (flags win), shell completions and
//! man pages for every command, the systemd units (checked by `systemd-analyze verify`),
//! and `conquer info` explaining why no GPU is visible.

use crate::util::{self, Proc};
use std::process::Command;

const COMMANDS: [&str; 14] = [
    "run",
    "ventilator",
    "worker",
    "sink",
    "bench",
    "info",
    "calibrate",
    "completions",
    "man",
    "serve",
    "submit",
    "jobs",
    "cancel",
    "results",
];

#[test]
fn d01_environment_variables_set_every_endpoint_and_flags_win() {
    let (vent, sink) = (util::free_endpoint(), util::free_endpoint());
    let worker = Proc::start_with_env(
        "env-worker",
        &["worker", "--backend", "sleep", "--name", "envy"],
        &[
            ("CONQUER_VENTILATOR", vent.as_str()),
            ("CONQUER_SINK", sink.as_str()),
        ],
    );
    let line = worker.event("connecting");
    assert!(line["sink"] == sink && line["ventilator"] == vent, "{line}");
    drop(worker);

    let flag_sink = util::free_endpoint();
    let worker = Proc::start_with_env(
        "flag-worker",
        &[
            "worker",
            "--backend",
            "sleep",
            "--name",
            "flagged",
            "--sink",
            &flag_sink,
        ],
        &[
            ("CONQUER_VENTILATOR", vent.as_str()),
            ("CONQUER_SINK", sink.as_str()),
        ],
    );
    let line = worker.event("connecting");
    assert!(line["sink"] == flag_sink, "the flag wins: {line}");
    drop(worker);

    let bound = Proc::start_with_env(
        "env-sink",
        &["sink"],
        &[("CONQUER_SINK_BIND", "tcp://127.0.0.1:0")],
    );
    assert!(bound.endpoint("results").starts_with("tcp://127.0.0.1:"));
    let vent = Proc::start_with_env(
        "env-vent",
        &["ventilator", "--sink", &sink, "--tasks", "3"],
        &[
            ("CONQUER_VENTILATOR_BIND", "tcp://127.0.0.1:0"),
            ("CONQUER_WAIT_WORKERS", "2"),
        ],
    );
    assert!(vent.endpoint("tasks").starts_with("tcp://127.0.0.1:"));
    vent.event_where("workers", |e| e["wanted"] == 2);

    let (_, help, _) = Proc::start_quiet("help", &["worker", "--help"]).finish();
    for var in [
        "CONQUER_VENTILATOR",
        "CONQUER_SINK",
        "CONQUER_BACKEND",
        "CONQUER_NAME",
    ] {
        assert!(
            help.contains(&format!("[env: {var}=")),
            "{var} not in --help:\n{help}"
        );
    }
}

#[test]
fn d02_completions_and_man_pages_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let (status, script, log) =
            Proc::start_quiet("completions", &["completions", shell]).finish();
        assert!(status.success(), "{log}");
        for command in COMMANDS {
            assert!(
                script.contains(command),
                "{shell} completions lack {command}"
            );
        }
    }
    let (status, page, log) = Proc::start_quiet("man", &["man"]).finish();
    assert!(status.success(), "{log}");
    assert!(page.contains(".TH conquer 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let (status, _, log) =
        Proc::start_quiet("man-dir", &["man", "--dir", dir.path().to_str().unwrap()]).finish();
    assert!(status.success(), "{log}");
    for command in COMMANDS {
        let page = dir.path().join(format!("conquer-{command}.1"));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(
            text.contains(".TH") && text.len() > 200,
            "{}",
            page.display()
        );
    }
}

#[test]
fn d03_the_systemd_units_pass_systemd_analyze_verify_and_rate_ok_for_security() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CONQUER_REQUIRE_SYSTEMD").is_none(),
            "systemd-analyze is missing (Debian: apt install systemd)"
        );
        eprintln!(
            "skipping: systemd-analyze is not installed (set CONQUER_REQUIRE_SYSTEMD=1 to fail)"
        );
        return;
    };
    assert!(version.status.success());
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dir = tempfile::tempdir().unwrap();
    // verify wants the binary the units start to exist: point them at the one under test.
    let binary = util::binary();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/conquer", binary.to_str().unwrap());
        // A template is verified through one of its instances.
        let name = name.replace("@.service", "@0.service");
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(dir.path().join(name));
    }
    assert_eq!(names.len(), 4, "four units in deploy/");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
    // Hardened: `systemd-analyze security` rates each unit OK (exposure under 5.0 of 10)
    // or better, as read from the unit file alone.
    for unit in &names {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let verdict = text
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_once(": "))
            .map(|(_, v)| v.split_whitespace().take(2).collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no exposure level for {}: {text}", unit.display()));
        let exposure: f64 = verdict[0].parse().unwrap();
        assert!(
            exposure < 5.0 && ["OK", "SAFE", "PERFECT"].contains(&verdict[1]),
            "{}: exposure {verdict:?}:\n{text}",
            unit.display()
        );
    }
}

#[test]
fn d04_info_names_the_adapters_and_why_none_is_hardware() {
    let (status, text, log) = Proc::start_quiet("info", &["info"]).finish();
    assert!(status.success(), "{log}");
    let (_, json, _) = Proc::start_quiet("info-json", &["info", "--json"]).finish();
    let info: serde_json::Value = serde_json::from_str(&json).expect("info --json is JSON");
    if info["auto"] == "gpu" {
        assert!(info["why"].as_array().unwrap().is_empty(), "{info}");
        return; // a machine with a GPU: nothing to explain
    }
    assert!(text.contains("why: "), "{text}");
    let software: Vec<&str> = info["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["class"] == "software")
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for name in &software {
        assert!(text.contains(name), "{name} not named:\n{text}");
    }
    if info["findings"]["loader"].is_null() {
        // A machine with only what the install section lists (no libvulkan1), such as a
        // fresh box with Mesa's GL llvmpipe: the missing loader is the reason given.
        assert!(
            text.contains("no Vulkan loader") && text.contains("libvulkan1"),
            "{text}"
        );
    } else if !software.is_empty() {
        assert!(
            text.contains("only software adapters are visible"),
            "{text}"
        );
    }
    // With the Vulkan driver files hidden, the missing piece is named.
    let (status, text, log) = Proc::start_with_env(
        "info-hidden",
        &["info"],
        &[
            ("VK_ICD_FILENAMES", "/nonexistent/conquer-test-icd.json"),
            ("WGPU_BACKEND", "vulkan"),
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    assert!(text.contains("adapters: none"), "{text}");
    assert!(
        text.contains("/nonexistent/conquer-test-icd.json, which does not exist"),
        "{text}"
    );
    assert!(text.contains("no Vulkan driver (ICD) files"), "{text}");
    // A worker that insists on a GPU says the same.
    let (status, _, log) = Proc::start_with_env(
        "gpu-worker",
        &["worker", "--backend", "gpu"],
        &[
            ("VK_ICD_FILENAMES", "/nonexistent/conquer-test-icd.json"),
            ("WGPU_BACKEND", "vulkan"),
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("which does not exist"), "{log}");
}
