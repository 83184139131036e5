//! The real shaders on whatever adapter exists, checked against the CPU reference, and the
//! backend choice as users meet it. On CI (`CONQUER_REQUIRE_ADAPTER=1`) a missing software
//! adapter fails these tests; elsewhere they skip, saying so. A hardware GPU, when present,
//! runs the same checks (required with `CONQUER_REQUIRE_GPU=1`).

use crate::util::{report, Proc};
use conquer::backend::gpu::{self, AdapterClass, Gpu, GpuConfig};
use conquer::backend::{Backend, Outcome, Work};
use conquer::batch::{Job, Task};
use conquer::kernels::spin;
use conquer::protocol::Status;

/// The adapters of `class` to test on: none (skipping, or failing where required) or one.
pub fn adapter(class: AdapterClass) -> Option<wgpu::Adapter> {
    let mut adapters = gpu::adapters();
    if let Ok(Some(index)) = gpu::choose(&adapters, class, None) {
        return Some(adapters.swap_remove(index));
    }
    let (variable, what) = match class {
        AdapterClass::Software => (
            "CONQUER_REQUIRE_ADAPTER",
            "software (CPU) adapter: install Mesa's mesa-vulkan-drivers",
        ),
        AdapterClass::Hardware => ("CONQUER_REQUIRE_GPU", "hardware GPU adapter"),
    };
    if std::env::var(variable).is_ok_and(|v| v == "1") {
        panic!("{variable}=1 but no {what} was found");
    }
    eprintln!("skipping: no {what}");
    None
}

fn classes() -> impl Iterator<Item = (AdapterClass, wgpu::Adapter)> {
    [AdapterClass::Software, AdapterClass::Hardware]
        .into_iter()
        .filter_map(|class| adapter(class).map(|a| (class, a)))
}

fn run_tasks(gpu: &mut Gpu, job: &Job, tasks: &[Task]) -> Vec<Outcome> {
    let mut queue = tasks.iter().copied();
    let mut outcomes = Vec::new();
    gpu.run(job, &mut || queue.next().map(Work::from), &mut |o| {
        outcomes.push(o)
    });
    outcomes
}

fn job(units_per_ms: u32) -> Job {
    Job {
        kernel: 0,
        units_per_ms,
        ..Job::default()
    }
}

#[test]
fn spin_equals_the_cpu_reference_for_several_workloads_and_tasks() {
    for (class, adapter) in classes() {
        let mut gpu = Gpu::new(&adapter, GpuConfig::default()).expect("GPU context");
        for units in [1, 64, 100, 4099] {
            let tasks: Vec<Task> = [
                (0, 0),
                (1, 1),
                (2, 2),
                (77, 3),
                (u32::MAX - 1, 5),
                (12_345, 7),
            ]
            .iter()
            .map(|&(id, workload_ms)| Task {
                id,
                workload_ms,
                ..Default::default()
            })
            .collect();
            let outcomes = run_tasks(&mut gpu, &job(units), &tasks);
            assert_eq!(
                outcomes.len(),
                tasks.len(),
                "{class:?}: one outcome per task"
            );
            for (task, outcome) in tasks.iter().zip(&outcomes) {
                assert_eq!(
                    outcome.task, *task,
                    "{class:?}: outcomes come back in order"
                );
                assert_eq!(outcome.status, Status::Ok, "{class:?} {task:?}");
                let expected = spin::reference(task.id, task.workload_ms * units);
                assert_eq!(
                    outcome.checksum, expected,
                    "{class:?}: task {task:?} at {units} units/ms: {:016x} != {expected:016x}",
                    outcome.checksum
                );
            }
        }
    }
}

#[test]
fn a_device_measures_what_fills_it_and_keeps_its_dispatch_sizes() {
    for (class, adapter) in classes() {
        let mut gpu = Gpu::new(&adapter, GpuConfig::default()).expect("GPU context");
        // One of the doubling sizes it timed: whole workgroups, within one dispatch.
        let fill = gpu.fill();
        assert!(
            fill >= spin::WORKGROUP_SIZE && fill.is_power_of_two() && fill <= 1 << 26,
            "{class:?}: fill {fill}"
        );
        // Measuring left the sizer where it starts: a task of 2^17 invocations runs as
        // two dispatches of 2^16, and says so.
        let task = Task {
            id: 3,
            workload_ms: 1,
            ..Task::default()
        };
        let outcomes = run_tasks(&mut gpu, &job(1 << 17), &[task]);
        assert_eq!(outcomes.len(), 1, "{class:?}");
        assert_eq!(outcomes[0].status, Status::Ok, "{class:?}");
        assert_eq!(outcomes[0].dispatches, 2, "{class:?}");
        assert_eq!(
            outcomes[0].checksum,
            spin::reference(task.id, 1 << 17),
            "{class:?}"
        );
    }
}

#[test]
fn a_kernel_is_compiled_once_and_reused_by_every_later_task_and_batch() {
    for (class, adapter) in classes() {
        let mut gpu = Gpu::new(&adapter, GpuConfig::default()).expect("GPU context");
        let tasks: Vec<Task> = (0..8)
            .map(|id| Task {
                id,
                workload_ms: 1,
                ..Task::default()
            })
            .collect();
        // Two batches of the spin kernel (other workloads, the same kernel): one pipeline.
        for units in [16, 64] {
            let outcomes = run_tasks(&mut gpu, &job(units), &tasks);
            assert!(outcomes.iter().all(|o| o.status == Status::Ok), "{class:?}");
        }
        assert_eq!(gpu.pipelines_compiled(), 1, "{class:?}");
        // Another kernel compiles once more, and only once.
        let search = Job {
            kernel: conquer::kernels::Kernel::Search.id(),
            constants: conquer::kernels::search::Space::new(8, 4096, 512, 1)
                .unwrap()
                .constants(),
            ..Job::default()
        };
        for _ in 0..2 {
            // Each batch is prepared, as a worker prepares every batch it is sent.
            gpu.prepare(&search, None)
                .expect("the search kernel compiles");
            let outcomes = run_tasks(&mut gpu, &search, &tasks);
            assert!(
                outcomes.iter().all(|o| o.status == Status::Ok),
                "{class:?}: {:?}",
                outcomes
                    .iter()
                    .map(|o| (o.status, &o.error))
                    .collect::<Vec<_>>()
            );
        }
        assert_eq!(gpu.pipelines_compiled(), 2, "{class:?}");
    }
}

#[test]
fn a_task_split_into_many_dispatches_gives_the_unsplit_result() {
    for (class, adapter) in classes() {
        // 64 invocations per dispatch: 300 dispatches and a partial one, in two submissions.
        let invocations = 64 * 300 + 17;
        let task = Task {
            id: 4242,
            workload_ms: 1,
            ..Default::default()
        };
        let mut split = Gpu::new(
            &adapter,
            GpuConfig {
                max_invocations_per_dispatch: 64,
                ..GpuConfig::default()
            },
        )
        .expect("GPU context");
        let mut whole = Gpu::new(&adapter, GpuConfig::default()).expect("GPU context");
        let a = run_tasks(&mut split, &job(invocations), &[task]);
        let b = run_tasks(&mut whole, &job(invocations), &[task]);
        assert_eq!(a[0].status, Status::Ok);
        assert_eq!(
            a[0].checksum, b[0].checksum,
            "{class:?}: split differs from unsplit"
        );
        assert_eq!(
            a[0].checksum,
            spin::reference(task.id, invocations),
            "{class:?}"
        );
    }
}

#[test]
fn many_tasks_in_flight_each_get_their_own_result() {
    for (class, adapter) in classes() {
        let mut gpu = Gpu::new(
            &adapter,
            GpuConfig {
                slots: 3,
                ..GpuConfig::default()
            },
        )
        .expect("GPU context");
        let tasks: Vec<Task> = (0..40)
            .map(|id| Task {
                id,
                workload_ms: id % 4,
                ..Default::default()
            })
            .collect();
        let outcomes = run_tasks(&mut gpu, &job(96), &tasks);
        assert_eq!(
            outcomes.len(),
            tasks.len(),
            "{class:?}: one outcome per task"
        );
        for (task, outcome) in tasks.iter().zip(&outcomes) {
            assert_eq!(
                outcome.task, *task,
                "{class:?}: outcomes come back in order"
            );
            assert_eq!(
                outcome.status,
                Status::Ok,
                "{class:?}: task {} failed",
                task.id
            );
            assert_eq!(
                outcome.checksum,
                spin::reference(task.id, task.workload_ms * 96),
                "{class:?}: task {} got another slot's result",
                task.id
            );
        }
    }
}

#[test]
fn run_with_the_software_backend_and_verify_completes_a_batch() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    let run = Proc::start(
        "run",
        &[
            "run",
            "--backend",
            "software",
            "--verify",
            "--workers",
            "2",
            "--tasks",
            "30",
            "--units-per-ms",
            "64",
            "--json",
        ],
    );
    let (status, stdout, log) = run.finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(r["tasks"], 30);
    assert_eq!(r["mismatches"], 0, "{r}");
    assert_eq!(r["ideal_basis"], "measured");
    for w in r["workers"].as_array().unwrap() {
        assert_eq!(w["backend"], "software", "{r}");
        assert!(
            w["adapter"].as_str().unwrap().len() > 3,
            "adapter named: {r}"
        );
    }
}

/// `WGPU_BACKEND=metal` hides every adapter on Linux: wgpu finds none.
fn hidden(args: &[&str]) -> Proc {
    Proc::start_with_env("hidden", args, &[("WGPU_BACKEND", "metal")])
}

#[test]
fn auto_falls_back_to_sleep_when_no_adapter_is_usable() {
    let (status, stdout, log) = hidden(&[
        "run",
        "--workers",
        "1",
        "--tasks",
        "5",
        "--max-ms",
        "2",
        "--json",
    ])
    .finish();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("backend auto: no hardware GPU adapter"),
        "says why: {log}"
    );
    assert_eq!(report(&stdout)["workers"][0]["backend"], "sleep");
}

#[test]
fn backend_gpu_without_a_gpu_fails_clearly() {
    let (status, _, log) = hidden(&["worker", "--backend", "gpu"]).finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("no hardware GPU adapter found (adapters found: none)"),
        "{log}"
    );
    assert!(log.contains("--backend software"), "names a way out: {log}");
    let (status, _, log) = hidden(&["worker", "--backend", "software"]).finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("mesa-vulkan-drivers"), "{log}");
}

#[test]
fn info_lists_adapters_and_the_auto_choice() {
    let (status, stdout, log) = Proc::start("info", &["info"]).finish();
    assert!(status.success(), "{log}");
    assert!(stdout.starts_with("libzmq 4."), "{stdout}");
    assert!(stdout.contains("auto: "), "{stdout}");
    if adapter(AdapterClass::Software).is_some() {
        assert!(stdout.contains("type Cpu"), "{stdout}");
        assert!(stdout.contains("timestamp queries: "), "{stdout}");
    }
}
