//! Classic compatibility: the Guide's programs (examples/) with conquer roles that speak
//! their wire format, both ways round, ending with the KILL broadcast.

use crate::util::{self, free_endpoint, report, Proc};

fn software_adapter_present() -> bool {
    let adapters = conquer::backend::gpu::adapters();
    matches!(
        conquer::backend::gpu::choose(
            &adapters,
            conquer::backend::gpu::AdapterClass::Software,
            None
        ),
        Ok(Some(_))
    )
}

/// Tasks a conquer classic worker says it did.
fn tasks_done(log: &str) -> u64 {
    log.lines()
        .find_map(|l| l.split("worker done: ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"))
}

#[test]
fn conquer_workers_serve_the_guides_ventilator_and_sink_until_kill() {
    let (tasks, results, control) = (free_endpoint(), free_endpoint(), free_endpoint());
    let sink = Proc::example("tasksink2", &[&results, &control]);
    let mut backends = vec!["sleep", "sleep"];
    if software_adapter_present() {
        backends.push("software");
    }
    let workers: Vec<Proc> = backends
        .iter()
        .enumerate()
        .map(|(i, backend)| {
            Proc::start(
                &format!("classic-{i}-{backend}"),
                &[
                    "worker",
                    "--classic",
                    "--backend",
                    backend,
                    "--ventilator",
                    &tasks,
                    "--sink",
                    &results,
                    "--control",
                    &control,
                    "--units-per-ms",
                    "16",
                ],
            )
        })
        .collect();
    let mut vent = Proc::example("taskvent", &[&tasks, &results]);
    for w in &workers {
        w.event("ready");
    }
    vent.type_line("");

    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "tasksink2 failed: {log}");
    assert!(stdout.contains("Total elapsed time: "), "{stdout}");
    let mut total = 0;
    for w in workers {
        // The KILL broadcast is what ends them.
        let (status, _, log) = w.finish();
        assert!(status.success(), "{log}");
        assert!(log.contains("KILL received"), "{log}");
        total += tasks_done(&log);
    }
    assert_eq!(
        total, 100,
        "every task of the Guide's batch done exactly once"
    );
    let (status, stdout, _) = vent.finish();
    assert!(status.success());
    assert!(stdout.contains("Total expected cost: "), "{stdout}");
}

#[test]
fn the_guides_workers_serve_a_classic_conquer_ventilator_and_sink() {
    let sink = Proc::start(
        "sink",
        &[
            "sink",
            "--classic",
            "--bind",
            "tcp://127.0.0.1:0",
            "--control-bind",
            "tcp://127.0.0.1:0",
            "--tasks",
            "60",
            "--json",
        ],
    );
    let results = sink.endpoint("results");
    let control = sink.endpoint("control");
    let (vent, tasks) = util::ventilator(
        &results,
        &[
            "--classic",
            "--wait-workers",
            "3",
            "--tasks",
            "60",
            "--max-ms",
            "20",
        ],
    );
    let workers: Vec<Proc> = (0..3)
        .map(|_| Proc::example("taskwork2", &[&tasks, &results, &control]))
        .collect();
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(r["tasks"], 60);
    assert_eq!(r["rejected"], 0);
    for w in workers {
        let (status, stdout, _) = w.finish();
        assert!(status.success(), "taskwork2 ends on KILL");
        assert!(stdout.contains('.'), "it did work: {stdout:?}");
    }
    let (status, stdout, log) = vent.finish();
    assert!(status.success(), "{log}");
    assert!(stdout.contains("Total expected cost: "));
}

#[test]
fn the_guides_plain_worker_and_sink_complete_with_a_classic_conquer_ventilator() {
    let results = free_endpoint();
    let sink = Proc::example("tasksink", &[&results]);
    let (vent, tasks) = util::ventilator(
        &results,
        &[
            "--classic",
            "--wait-workers",
            "2",
            "--tasks",
            "100",
            "--max-ms",
            "5",
        ],
    );
    let workers = [
        Proc::example("taskwork", &[&tasks, &results]),
        Proc::example("taskwork", &[&tasks, &results]),
    ];
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "{log}");
    assert!(stdout.contains("Total elapsed time: "), "{stdout}");
    drop((vent, workers));
}
