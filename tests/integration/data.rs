//! Data batches end to end, real processes on loopback and the real shaders on the software
//! adapter: the Mandelbrot picture, the example kernels, the search kernel's hits, and
//! outputs that survive a killed worker and a restarted sink, each written once.

use crate::gpu::adapter;
use crate::util::{self, report, Proc};
use conquer::backend::gpu::AdapterClass;
use conquer::kernels::{mandelbrot, search};
use std::collections::BTreeMap;
use std::path::Path;

/// `conquer run --backend software --workers 2 ARGS...`.
fn software_run(name: &str, args: &[&str]) -> Proc {
    let mut all = vec!["run", "--backend", "software", "--workers", "2"];
    all.extend_from_slice(args);
    Proc::start(name, &all)
}

/// Decodes an RGB PNG: (width, height, pixels).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("the picture exists"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("one frame");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Asserts the picture is the CPU reference's, pixel for pixel; returns the pixels that
/// differ (none).
fn assert_picture_matches(path: &Path, view: &mandelbrot::View) -> usize {
    let (width, height, rgb) = decode_png(path);
    assert_eq!((width, height), (view.width, view.height));
    let mut differ = 0;
    for y in 0..height {
        for x in 0..width {
            let expected = mandelbrot::colour(view.count(x, y), view.max_iter);
            let at = 3 * (y * width + x) as usize;
            if rgb[at..at + 3] != expected {
                differ += 1;
            }
        }
    }
    let pixels = (width * height) as usize;
    assert_eq!(
        differ, 0,
        "{differ} of {pixels} pixels differ from the CPU reference"
    );
    differ
}

#[test]
fn the_mandelbrot_picture_decodes_at_its_size_and_matches_the_cpu_reference() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("mandel.png");
    let (status, stdout, log) = software_run(
        "run",
        &[
            "--kernel",
            "mandelbrot",
            "--width",
            "480",
            "--height",
            "270",
            "--max-iter",
            "300",
            "--band-rows",
            "8",
            "--image",
            image.to_str().unwrap(),
            "--verify",
            "--json",
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(r["tasks"], 34, "{r}");
    assert_eq!(r["verified"], 34, "{r}");
    assert_eq!(r["compared"], 480 * 270, "{r}");
    let view = mandelbrot::View::new(480, 270, 300, 8, (-0.5, 0.0), 3.0).unwrap();
    let differ = assert_picture_matches(&image, &view);
    assert_eq!(
        r["differing"], differ as u64,
        "the report counts what differs: {r}"
    );
}

/// Writes `inputs` into `dir/in`, returning the glob that matches them.
fn write_inputs(dir: &Path, inputs: &BTreeMap<String, Vec<u8>>) -> String {
    let input_dir = dir.join("in");
    std::fs::create_dir_all(&input_dir).unwrap();
    for (name, bytes) in inputs {
        std::fs::write(input_dir.join(name), bytes).unwrap();
    }
    format!("{}/*", input_dir.display())
}

fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

#[test]
fn each_example_kernel_runs_end_to_end_and_equals_its_rust_reference() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // SAXPY: x then y, as f32.
    let saxpy_inputs: BTreeMap<String, Vec<u8>> = [3usize, 1000, 65_537]
        .iter()
        .map(|&n| {
            let x = (0..n).map(|i| (i % 97) as f32 * 0.25);
            let y = (0..n).map(|i| 1.0 - (i % 13) as f32);
            (
                format!("v{n}.f32"),
                x.chain(y).flat_map(f32::to_le_bytes).collect(),
            )
        })
        .collect();
    let glob = write_inputs(&dir.path().join("saxpy"), &saxpy_inputs);
    let out = dir.path().join("saxpy-out");
    let (status, stdout, log) = software_run(
        "saxpy",
        &[
            "--kernel-file",
            "examples/kernels/saxpy.wgsl",
            "--inputs",
            &glob,
            "--item-bytes",
            "8",
            "--output-bytes",
            "4/item",
            "--constants",
            "2.5",
            "--outputs",
            out.to_str().unwrap(),
            "--json",
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(r["outputs"], 3);
    // Each worker's line says what it moved in and out, and what its device did.
    let workers = r["workers"].as_array().expect("workers");
    let sum = |key: &str| {
        workers
            .iter()
            .map(|w| w[key].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let inputs: u64 = saxpy_inputs.values().map(|b| b.len() as u64).sum();
    assert_eq!(sum("input_bytes"), inputs, "{r}");
    assert_eq!(sum("output_bytes"), inputs / 2, "4 bytes out for 8 in: {r}");
    for w in workers {
        let tasks = w["tasks"].as_u64().unwrap_or(0);
        assert!(
            w["dispatches"].as_u64().unwrap_or(0) >= tasks,
            "a dispatch a task at least: {w}"
        );
        // A share where its kernels' time was measured (timestamps, above a microsecond).
        match w["device_share"].as_f64() {
            Some(share) => assert!(share > 0.0 && share <= 1.0, "{w}"),
            None => assert_eq!(w["kernel_ms"].as_f64(), Some(0.0), "{w}"),
        }
    }
    for (name, bytes) in &saxpy_inputs {
        let v = le_f32(bytes);
        let n = v.len() / 2;
        let expected: Vec<f32> = (0..n).map(|i| 2.5 * v[i] + v[n + i]).collect();
        let got = le_f32(&std::fs::read(out.join(format!("{name}.out"))).unwrap());
        assert_eq!(got, expected, "{name}");
    }

    // Histogram: byte counts with atomics, over files of uneven lengths.
    let histogram_inputs: BTreeMap<String, Vec<u8>> = [1usize, 4097, 200_003]
        .iter()
        .map(|&n| {
            let bytes = (0..n as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect();
            (format!("b{n}.bin"), bytes)
        })
        .collect();
    let glob = write_inputs(&dir.path().join("histogram"), &histogram_inputs);
    let histogram = |more: &[&str]| {
        let kernel = [
            "--kernel-file",
            "examples/kernels/histogram.wgsl",
            "--inputs",
        ];
        let args: Vec<&str> = kernel
            .iter()
            .copied()
            .chain([glob.as_str()])
            .chain(more.iter().copied())
            .collect();
        software_run("histogram", &args).finish()
    };
    let out = dir.path().join("histogram-out");
    let (status, _, log) =
        histogram(&["--output-bytes", "1024", "--outputs", out.to_str().unwrap()]);
    assert!(status.success(), "{log}");
    for (name, bytes) in &histogram_inputs {
        let mut expected = vec![0u32; 256];
        bytes.iter().for_each(|&b| expected[usize::from(b)] += 1);
        let got: Vec<u32> = std::fs::read(out.join(format!("{name}.out")))
            .unwrap()
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        assert_eq!(got, expected, "{name}");
    }

    // Without --output-bytes each task's output is as long as its input, and the kernel's
    // `array<atomic<u32>, 256>` is still bound whole (a one-byte input's buffer was bound
    // with 256 bytes, and every try of the task failed wgpu's validation): each output is
    // the histogram's first bytes, zeros past it.
    let same = dir.path().join("histogram-same");
    let (status, _, log) = histogram(&["--outputs", same.to_str().unwrap()]);
    assert!(status.success(), "{log}");
    for (name, bytes) in &histogram_inputs {
        let mut whole = std::fs::read(out.join(format!("{name}.out"))).unwrap();
        whole.resize(bytes.len(), 0);
        whole.truncate(bytes.len());
        let got = std::fs::read(same.join(format!("{name}.out"))).unwrap();
        assert_eq!(got, whole, "{name}");
    }
}

#[test]
fn the_search_kernels_hits_through_the_pipeline_equal_the_cpus() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    let (status, stdout, log) = software_run(
        "search",
        &[
            "--kernel",
            "search",
            "--bits",
            "14",
            "--keys",
            "3000000",
            "--keys-per-task",
            "250000",
            "--salt",
            "9",
            "--json",
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    let space = search::Space::new(14, 3_000_000, 250_000, 9).unwrap();
    let expected: Vec<u64> = (0..space.tasks())
        .flat_map(|t| search::hits(&space.reference(conquer::batch::Task::numbered(t))))
        .map(u64::from)
        .collect();
    let got: Vec<u64> = r["hits"]
        .as_array()
        .expect("hits in the report")
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    assert!(expected.len() > 100, "{}", expected.len());
    assert_eq!(got, expected);
}

#[test]
fn invalid_wgsl_is_refused_with_file_line_and_column_before_anything_binds() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("bad.wgsl");
    std::fs::write(
        &kernel,
        "@compute @workgroup_size(64)\nfn main() {\n    let x: u32 = ;\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("a.bin"), [0u8; 16]).unwrap();
    let glob = format!("{}/*.bin", dir.path().display());
    // A ventilator that bound would wait for its sink (there is none): it stops at once.
    let endpoint = util::free_endpoint();
    let (status, _, log) = Proc::start(
        "ventilator",
        &[
            "ventilator",
            "--bind",
            &endpoint,
            "--sink",
            &util::free_endpoint(),
            "--kernel-file",
            kernel.to_str().unwrap(),
            "--inputs",
            &glob,
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    let place = format!("{}:3:", kernel.display());
    assert!(log.contains(&place), "names file:line:column: {log}");
    assert!(log.contains("invalid WGSL"), "{log}");
    // Nothing was bound: the port is still free.
    let port = endpoint.rsplit(':').next().unwrap();
    assert!(std::net::TcpListener::bind(format!("127.0.0.1:{port}")).is_ok());
}

#[test]
fn an_oversized_payload_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![0u8; 2 << 20]).unwrap();
    let glob = format!("{}/*.bin", dir.path().display());
    let (status, _, log) = Proc::start(
        "run",
        &[
            "run",
            "--max-payload",
            "1M",
            "--kernel-file",
            "examples/kernels/histogram.wgsl",
            "--inputs",
            &glob,
            "--output-bytes",
            "1024",
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("big.bin is 2097152 bytes, over --max-payload 1048576"),
        "{log}"
    );
    assert!(log.contains("raise --max-payload"), "{log}");
}

/// A software worker process.
fn software_worker(name: &str, vent: &str, sink: &str) -> Proc {
    software_worker_with(name, vent, sink, &[])
}

/// A software worker with `extra` arguments.
fn software_worker_with(name: &str, vent: &str, sink: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "worker",
        "--ventilator",
        vent,
        "--sink",
        sink,
        "--name",
        name,
        "--backend",
        "software",
        "--exit-when-done",
    ];
    args.extend_from_slice(extra);
    Proc::start(name, &args)
}

/// Output files in `dir` (no temporaries), with their modification times.
fn outputs(dir: &Path) -> BTreeMap<String, std::time::SystemTime> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, e.metadata().unwrap().modified().unwrap())
        })
        .collect()
}

#[test]
fn a_worker_killed_mid_data_batch_loses_nothing_and_each_output_is_written_once() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let out = dir.path().join("out");
    let image = dir.path().join("m.png");
    let (sink, sink_ep) = util::sink(&[
        "--results",
        results.to_str().unwrap(),
        "--outputs",
        out.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
    ]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--kernel",
            "mandelbrot",
            "--width",
            "640",
            "--height",
            "480",
            "--max-iter",
            "800",
            "--band-rows",
            "2",
            "--wait-workers",
            "2",
        ],
    );
    let victim = software_worker("victim", &vent_ep, &sink_ep);
    let survivor = software_worker("survivor", &vent_ep, &sink_ep);
    util::wait_for_lines(&results, 20);
    victim.signal("KILL");
    let r = util::completed(sink, 240, Some(&results));
    assert_eq!(r["outputs"], 240, "each output written once: {r}");
    let files = outputs(&out);
    assert_eq!(files.len(), 240, "no temporary file left: {files:?}");
    let view = mandelbrot::View::new(640, 480, 800, 2, (-0.5, 0.0), 3.0).unwrap();
    for band in 0..view.bands() {
        let bytes = std::fs::read(out.join(format!("mandelbrot-{band:08}.out"))).unwrap();
        assert_eq!(bytes.len(), 640 * 2 * 4, "band {band}");
    }
    assert_picture_matches(&image, &view);
    drop((vent, survivor));
}

#[test]
fn a_sink_restarted_with_resume_keeps_the_outputs_already_written() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let out = dir.path().join("out");
    let image = dir.path().join("m.png");
    let out_arg = out.to_str().unwrap().to_owned();
    let image_arg = image.to_str().unwrap().to_owned();
    let (sink, sink_ep) = util::sink(&[
        "--results",
        results.to_str().unwrap(),
        "--outputs",
        &out_arg,
        "--image",
        &image_arg,
    ]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--kernel",
            "mandelbrot",
            "--width",
            "600",
            "--height",
            "600",
            "--max-iter",
            "600",
            "--band-rows",
            "2",
            "--wait-workers",
            "1",
        ],
    );
    let worker = software_worker("w", &vent_ep, &sink_ep);
    util::wait_for_lines(&results, 100);
    sink.signal("KILL");
    let (status, _, _) = sink.finish();
    assert!(!status.success());
    // What the killed sink had made durable (a last line may be cut short by the kill):
    // those outputs must be kept as they are.
    let held_before: Vec<u64> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| v["task"].as_u64())
        .collect();
    assert!(held_before.len() >= 100);
    let before = outputs(&out);
    let resumed = Proc::start(
        "resumed sink",
        &[
            "sink",
            "--bind",
            &sink_ep,
            "--json",
            "--results",
            results.to_str().unwrap(),
            "--resume",
            "--outputs",
            &out_arg,
            "--image",
            &image_arg,
        ],
    );
    let r = util::completed(resumed, 300, Some(&results));
    let after = outputs(&out);
    for id in &held_before {
        let name = format!("mandelbrot-{id:08}.out");
        assert!(
            before.contains_key(&name),
            "acknowledged {name} was on disk"
        );
        assert_eq!(before[&name], after[&name], "{name} was not written again");
    }
    assert_eq!(after.len(), 300);
    assert!(
        r["outputs"].as_u64().unwrap() <= 300 - held_before.len() as u64,
        "{r}"
    );
    let view = mandelbrot::View::new(600, 600, 600, 2, (-0.5, 0.0), 3.0).unwrap();
    assert_picture_matches(&image, &view);
    drop((vent, worker));
}

#[test]
fn a_device_destroyed_mid_batch_is_rebuilt_and_the_batch_completes_verified() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    // One worker: had its device not been rebuilt, nothing could finish the batch.
    let (status, stdout, log) = Proc::start_with_env(
        "run",
        &[
            "run",
            "--backend",
            "software",
            "--workers",
            "1",
            "--kernel",
            "mandelbrot",
            "--width",
            "320",
            "--height",
            "240",
            "--band-rows",
            "4",
            "--verify",
            "--json",
        ],
        &[("CONQUER_FAULT", "lose-device")],
    )
    .finish();
    assert!(status.success(), "{log}");
    let r = report(&stdout);
    assert_eq!(r["tasks"], 60, "{r}");
    assert_eq!(r["verified"], 60, "every result checked: {r}");
    assert_eq!(r["mismatches"], 0, "{r}");
    assert!(
        r["redispatched"].as_u64().unwrap() >= 1,
        "the tasks in flight on the lost device were handed back: {r}"
    );
}

#[test]
fn workers_that_cannot_run_a_data_batch_decline_it_and_a_run_of_them_stops_with_why() {
    let (status, _, log) = Proc::start(
        "run",
        &[
            "run",
            "--backend",
            "sleep",
            "--workers",
            "2",
            "--kernel",
            "mandelbrot",
            "--width",
            "64",
            "--height",
            "64",
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("no worker can run this batch: all 2 declined it"),
        "{log}"
    );
    assert!(
        log.contains("the sleep backend computes nothing"),
        "says why: {log}"
    );
}

#[test]
fn a_worker_whose_device_keeps_failing_leaves_saying_why_and_others_finish() {
    if adapter(AdapterClass::Software).is_none() {
        return;
    }
    let (sink, sink_ep) = util::sink(&[]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &[
            "--kernel",
            "mandelbrot",
            "--width",
            "320",
            "--height",
            "480",
            "--band-rows",
            "2",
            "--wait-workers",
            "2",
        ],
    );
    let failing = Proc::start_with_env(
        "failing",
        &[
            "worker",
            "--ventilator",
            &vent_ep,
            "--sink",
            &sink_ep,
            "--name",
            "failing",
            "--backend",
            "software",
        ],
        &[("CONQUER_FAULT", "lose-device-always")],
    );
    // Ten times slower, so the batch outlasts the failing worker's three losses (in the
    // end game a worker whose band was taken over gets nothing until it reports it, so
    // a fast healthy worker could end the batch first, and the failing one would wait for
    // the next).
    let healthy = software_worker_with("healthy", &vent_ep, &sink_ep, &["--slowdown", "10"]);
    let (status, _, log) = failing.finish();
    assert_eq!(status.code(), Some(1), "{status:?}: {log}");
    assert!(
        log.contains("was lost 3 times within 60 s"),
        "says why: {log}"
    );
    let r = util::completed(sink, 240, None);
    assert!(r["redispatched"].as_u64().unwrap() >= 1, "{r}");
    drop((vent, healthy));
}

#[test]
fn a_payload_over_the_default_passes_every_role_given_a_larger_max_payload() {
    // 70 MiB that no codec shrinks: over the default 64 MiB (and its envelope) on the wire
    // as in memory, so every socket, decoder and check must have the raised limit.
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let bytes: Vec<u8> = (0..70usize << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u8
        })
        .collect();
    std::fs::write(dir.path().join("big.bin"), &bytes).unwrap();
    let out = dir.path().join("out");
    let glob = format!("{}/*.bin", dir.path().display());
    let (status, _, log) = Proc::start(
        "run",
        &[
            "--max-payload",
            "96M",
            "run",
            "--backend",
            "cpu",
            "--workers",
            "1",
            "--kernel",
            "copy",
            "--inputs",
            &glob,
            "--outputs",
            out.to_str().unwrap(),
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    let copied = std::fs::read(out.join("big.bin.out")).unwrap();
    assert!(copied == bytes, "the output differs from its input");
}
