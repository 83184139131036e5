//! Data kernels on the real software adapter, checked against the CPU: Mandelbrot bands,
//! the search kernel's hits, the example user kernels; and the kernel interface's refusals.
//! End-to-end runs (`conquer run` with outputs, images, restarts) are in `data.rs`.

use crate::gpu::adapter;
use conquer::backend::gpu::{AdapterClass, Gpu, GpuConfig};
use conquer::backend::{Backend, Outcome, Work};
use conquer::batch::{Job, Task};
use conquer::kernels::{self, mandelbrot, search, Kernel};
use conquer::protocol::Status;

fn software(config: GpuConfig) -> Option<Gpu> {
    let adapter = adapter(AdapterClass::Software)?;
    Some(Gpu::new(&adapter, config).expect("a context on the software adapter"))
}

fn run(gpu: &mut Gpu, job: &Job, source: Option<&str>, work: Vec<Work>) -> Vec<Outcome> {
    gpu.prepare(job, source).expect("the kernel compiles");
    let mut queue = work.into_iter();
    let mut outcomes = Vec::new();
    gpu.run(job, &mut || queue.next(), &mut |o| outcomes.push(o));
    outcomes
}

fn tasks(n: u32) -> Vec<Work> {
    (0..n)
        .map(|id| {
            Work::from(Task {
                id,
                workload_ms: 1,
                ..Default::default()
            })
        })
        .collect()
}

#[test]
fn mandelbrot_bands_match_the_cpu_reference_in_one_dispatch_or_many_of_any_size() {
    // The default view, small; the kernel is exact, so every band equals the reference.
    let view = mandelbrot::View::new(640, 360, 500, 16, (-0.5, 0.0), 3.0).unwrap();
    let job = Job {
        kernel: Kernel::Mandelbrot.id(),
        constants: view.constants(),
        ..Job::default()
    };
    // Capped at a million invocations or three workgroups, or sized by the time dispatches
    // take under a bound of 1 ms, which the software adapter's dispatches pass at first
    // (so they shrink as the bands run).
    for (per_dispatch, bound_us) in [
        (1 << 20, GpuConfig::default().max_dispatch_us),
        (64 * 3, GpuConfig::default().max_dispatch_us),
        (u32::MAX, 1000.0),
    ] {
        let Some(mut gpu) = software(GpuConfig {
            max_invocations_per_dispatch: per_dispatch,
            max_dispatch_us: bound_us,
            ..GpuConfig::default()
        }) else {
            return;
        };
        let outcomes = run(&mut gpu, &job, None, tasks(view.bands()));
        assert_eq!(outcomes.len(), view.bands() as usize);
        let mut pixels = 0;
        for o in &outcomes {
            assert_eq!(o.status, Status::Ok, "{o:?}");
            let expected = view.reference(o.task);
            assert_eq!(
                mandelbrot::agrees(&o.output, &expected),
                Ok(()),
                "band {} at {per_dispatch} per dispatch",
                o.task.id
            );
            pixels += expected.len() / 4;
        }
        assert_eq!(pixels, 640 * 360);
    }
}

#[test]
fn search_hits_equal_the_cpus_bit_for_bit() {
    // Tasks of keys that are no multiple of an invocation's sixteen, in dispatches of the
    // default size and capped at one workgroup's 1,024 keys (each dispatch's last
    // invocation tries fewer keys; a task then takes 587 dispatches, more than two
    // submission rounds, whose middle one stamps no time).
    for per_dispatch in [
        GpuConfig::default().max_invocations_per_dispatch,
        64 * 3 + 5,
    ] {
        let Some(mut gpu) = software(GpuConfig {
            max_invocations_per_dispatch: per_dispatch,
            ..GpuConfig::default()
        }) else {
            return;
        };
        let space = search::Space::new(10, 1_200_003, 600_001, 42).unwrap();
        let job = Job {
            kernel: Kernel::Search.id(),
            constants: space.constants(),
            ..Job::default()
        };
        let outcomes = run(&mut gpu, &job, None, tasks(space.tasks()));
        let mut total = 0;
        for o in &outcomes {
            assert_eq!(
                o.status,
                Status::Ok,
                "{per_dispatch} per dispatch: {}",
                o.error
            );
            assert_eq!(
                o.output,
                space.reference(o.task),
                "task {} at {per_dispatch} per dispatch",
                o.task.id
            );
            assert_eq!(o.checksum, kernels::checksum(&job, &o.output));
            total += search::hits(&o.output).len();
        }
        // 1.2 million keys at 10 bits: about 1,172 hits.
        assert!((1000..1350).contains(&total), "{total}");
    }
}

#[test]
fn tuned_workgroups_are_a_size_timed_and_the_kernels_still_equal_the_cpu() {
    let Some(mut gpu) = software(GpuConfig {
        tune_workgroups: true,
        ..GpuConfig::default()
    }) else {
        return;
    };
    let view = mandelbrot::View::new(320, 240, 200, 16, (-0.5, 0.0), 3.0).unwrap();
    let picture = Job {
        kernel: Kernel::Mandelbrot.id(),
        constants: view.constants(),
        ..Job::default()
    };
    let outcomes = run(&mut gpu, &picture, None, tasks(view.bands()));
    let size = gpu.workgroup_invocations(&picture);
    assert!(matches!(size, Some(64 | 128 | 256)), "mandelbrot: {size:?}");
    // Measured (its middle band is a small probe), and built at the size chosen.
    assert_eq!(
        gpu.tuned_workgroup(&picture),
        size,
        "mandelbrot was not tuned"
    );
    for o in &outcomes {
        assert_eq!(o.status, Status::Ok, "{}", o.error);
        assert_eq!(
            mandelbrot::agrees(&o.output, &view.reference(o.task)),
            Ok(()),
            "band {} at {size:?} a workgroup",
            o.task.id
        );
    }
    let space = search::Space::new(10, 100_003, 25_001, 3).unwrap();
    let keys = Job {
        kernel: Kernel::Search.id(),
        constants: space.constants(),
        ..Job::default()
    };
    let outcomes = run(&mut gpu, &keys, None, tasks(space.tasks()));
    let size = gpu.workgroup_invocations(&keys);
    assert!(matches!(size, Some(64 | 128 | 256)), "search: {size:?}");
    assert_eq!(gpu.tuned_workgroup(&keys), size, "search was not tuned");
    for o in &outcomes {
        assert_eq!(
            o.output,
            space.reference(o.task),
            "task {} at {size:?}",
            o.task.id
        );
    }
    // Untuned, the shipped size.
    let Some(mut plain) = software(GpuConfig::default()) else {
        return;
    };
    plain.prepare(&keys, None).expect("the kernel compiles");
    assert_eq!(plain.workgroup_invocations(&keys), Some(64));
    assert_eq!(plain.tuned_workgroup(&keys), None);
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

#[test]
fn the_example_kernels_equal_their_rust_references() {
    let Some(mut gpu) = software(GpuConfig::default()) else {
        return;
    };
    let saxpy = std::fs::read_to_string("examples/kernels/saxpy.wgsl").unwrap();
    let a = 2.5f32;
    let job = Job {
        kernel: Kernel::User.id(),
        source: kernels::fnv1a(saxpy.as_bytes()),
        item_bytes: 8,
        output_bytes: kernels::parse_output_bytes("4/item").unwrap(),
        constants: [a.to_bits(), 0, 0, 0, 0, 0, 0, 0],
        ..Job::default()
    };
    let inputs: Vec<Vec<u8>> = [1usize, 1000, 70_001]
        .iter()
        .map(|&n| {
            let x = (0..n).map(|i| i as f32 * 0.5);
            let y = (0..n).map(|i| 3.0 - i as f32);
            x.chain(y).flat_map(f32::to_le_bytes).collect()
        })
        .collect();
    let work = inputs
        .iter()
        .enumerate()
        .map(|(id, input)| Work {
            task: Task {
                id: id as u32,
                workload_ms: 1,
                ..Default::default()
            },
            name: format!("in{id}"),
            input: input.clone(),
        })
        .collect();
    let outcomes = run(&mut gpu, &job, Some(&saxpy), work);
    for o in &outcomes {
        let values = f32s(&inputs[o.task.id as usize]);
        let n = values.len() / 2;
        let expected: Vec<f32> = (0..n).map(|i| a * values[i] + values[n + i]).collect();
        assert_eq!(o.status, Status::Ok);
        assert_eq!(o.name, format!("in{}", o.task.id));
        assert_eq!(f32s(&o.output), expected, "saxpy task {}", o.task.id);
    }

    let histogram = std::fs::read_to_string("examples/kernels/histogram.wgsl").unwrap();
    let job = Job {
        kernel: Kernel::User.id(),
        source: kernels::fnv1a(histogram.as_bytes()),
        item_bytes: 4,
        output_bytes: 1024,
        ..Job::default()
    };
    // 300,003 bytes: not a whole number of words, so the padding rule is exercised.
    let input: Vec<u8> = (0..300_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut expected = [0u32; 256];
    input.iter().for_each(|&b| expected[usize::from(b)] += 1);
    let outcomes = run(
        &mut gpu,
        &job,
        Some(&histogram),
        vec![Work {
            task: Task::default(),
            name: "bytes".into(),
            input: input.clone(),
        }],
    );
    let counts: Vec<u32> = outcomes[0]
        .output
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    assert_eq!(counts, expected.to_vec());
}

#[test]
fn a_kernel_that_does_not_fit_is_declined_with_the_reason() {
    let Some(mut gpu) = software(GpuConfig::default()) else {
        return;
    };
    let source = "@compute @workgroup_size(64) fn main() { let x: u32 = 1.5; }";
    let job = Job {
        kernel: Kernel::User.id(),
        source: kernels::fnv1a(source.as_bytes()),
        ..Job::default()
    };
    let err = gpu.prepare(&job, Some(source)).unwrap_err();
    assert!(err.starts_with("kernel "), "{err}");
    assert!(err.contains(":1:"), "names the line: {err}");
    // Without its source a user kernel cannot run at all.
    let other = Job { source: 7, ..job };
    assert!(gpu
        .prepare(&other, None)
        .unwrap_err()
        .contains("never arrived"));
    // Built-in kernels still run on the same context afterwards.
    let spin = Job::default();
    let out = run(&mut gpu, &spin, None, tasks(2));
    assert!(out.iter().all(|o| o.status == Status::Ok));
}

#[test]
fn a_partial_last_item_reads_zeros_never_a_previous_tasks_bytes() {
    let Some(mut gpu) = software(GpuConfig {
        slots: 1,
        ..GpuConfig::default()
    }) else {
        return;
    };
    // Items of two words: output[i] = input[2i] + input[2i + 1].
    let source = "struct Params { task_id: u32, offset: u32, count: u32, items: u32, \
        input_bytes: u32, output_bytes: u32, _pad0: u32, _pad1: u32, c: array<vec4<u32>, 2> }\n\
        @group(0) @binding(0) var<uniform> params: Params;\n\
        @group(0) @binding(1) var<storage, read> input: array<u32>;\n\
        @group(0) @binding(2) var<storage, read_write> output: array<u32>;\n\
        @compute @workgroup_size(64)\n\
        fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n\
            if (g.x >= params.count) { return; }\n\
            let i = params.offset + g.x;\n\
            output[i] = input[2u * i] + input[2u * i + 1u];\n\
        }\n";
    let job = Job {
        kernel: Kernel::User.id(),
        source: kernels::fnv1a(source.as_bytes()),
        item_bytes: 8,
        output_bytes: kernels::parse_output_bytes("4/item").unwrap(),
        ..Job::default()
    };
    let words = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // First a task that fills the slot's input buffer with 7s, then one of three words:
    // its second item is half an item, and its missing word must read 0.
    let work = vec![
        Work {
            task: Task {
                id: 0,
                workload_ms: 1,
                ..Default::default()
            },
            name: "full".into(),
            input: words(&[7; 64]),
        },
        Work {
            task: Task {
                id: 1,
                workload_ms: 1,
                ..Default::default()
            },
            name: "short".into(),
            input: words(&[1, 2, 3]),
        },
    ];
    let outcomes = run(&mut gpu, &job, Some(source), work);
    let short = outcomes.iter().find(|o| o.name == "short").unwrap();
    assert_eq!(short.status, Status::Ok);
    assert_eq!(short.output, words(&[3, 3]));
}

#[test]
fn a_task_beyond_the_adapters_limits_fails_and_the_worker_declines_the_batch() {
    // An adapter that binds at most 1 KiB per buffer (a cap for the test; real adapters
    // bind 128 MiB and more).
    let Some(mut gpu) = software(GpuConfig {
        max_buffer: Some(1024),
        ..GpuConfig::default()
    }) else {
        return;
    };
    let job = Job {
        kernel: Kernel::Copy.id(),
        output_bytes: kernels::SAME_AS_INPUT,
        ..Job::default()
    };
    let work = vec![
        Work {
            task: Task {
                id: 0,
                workload_ms: 1,
                ..Default::default()
            },
            name: "small".into(),
            input: vec![1; 256],
        },
        Work {
            task: Task {
                id: 1,
                workload_ms: 1,
                ..Default::default()
            },
            name: "big".into(),
            input: vec![2; 4096],
        },
    ];
    let outcomes = run(&mut gpu, &job, None, work);
    let status = |name: &str| outcomes.iter().find(|o| o.name == name).unwrap().status;
    assert_eq!(status("small"), Status::Ok);
    assert_eq!(status("big"), Status::Failed);
    let why = gpu.take_decline().expect("the batch is declined");
    assert!(
        why.contains("task 1 needs 4096 bytes") && why.contains("at most"),
        "{why}"
    );
    assert_eq!(gpu.take_decline(), None, "said once");
}
