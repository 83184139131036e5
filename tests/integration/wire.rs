//! Task inputs and outputs on the wire: compressed (LZ4) when that pays, raw otherwise or
//! with `--no-compress`, and the same bytes on disk either way. The `copy` kernel on the
//! CPU backend makes each output its input, so the reference is the input file itself.

use crate::util::{self, report, Proc};
use std::path::Path;

/// Three inputs of about a megabyte: runs of equal bytes (as iteration counts are), or
/// bytes from a seeded generator that no codec shrinks.
fn write_inputs(dir: &Path, compressible: bool) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    (0..3)
        .map(|i| {
            let n = (1 << 20) + 13 * i;
            let bytes: Vec<u8> = (0..n)
                .map(|j| {
                    if compressible {
                        (j / 4096 % 7) as u8
                    } else {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed >> 24) as u8
                    }
                })
                .collect();
            let name = format!("in{i}.bin");
            std::fs::write(dir.join(&name), &bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Each output equals its input, byte for byte.
fn assert_outputs_are_inputs(out: &Path, inputs: &[(String, Vec<u8>)]) {
    for (name, bytes) in inputs {
        let got = std::fs::read(out.join(format!("{name}.out"))).expect("the output file");
        assert!(got == *bytes, "{name}: output differs from its input");
    }
}

/// The report's wire counters: (inputs on the wire, inputs, outputs on the wire, outputs).
fn wire(r: &serde_json::Value) -> (u64, u64, u64, u64) {
    let w = &r["wire"];
    let n = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("wire.{k} in {r}"));
    (
        n("inputs_wire_bytes"),
        n("inputs_bytes"),
        n("outputs_wire_bytes"),
        n("outputs_bytes"),
    )
}

#[test]
fn outputs_that_compress_and_outputs_that_do_not_arrive_whole_compressed_or_raw_and_counted() {
    for compressible in [true, false] {
        for compress in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let inputs = write_inputs(&dir.path().join("in"), compressible);
            let total: u64 = inputs.iter().map(|(_, b)| b.len() as u64).sum();
            let out = dir.path().join("out");
            let glob = format!("{}/*.bin", dir.path().join("in").display());
            let mut args = vec![
                "run",
                "--backend",
                "cpu",
                "--workers",
                "2",
                "--kernel",
                "copy",
                "--inputs",
                &glob,
                "--outputs",
                out.to_str().unwrap(),
                "--json",
            ];
            if !compress {
                args.push("--no-compress");
            }
            let (status, stdout, log) = Proc::start("run", &args).finish();
            let case = format!("compressible {compressible}, compress {compress}");
            assert!(status.success(), "{case}: {log}");
            assert_outputs_are_inputs(&out, &inputs);
            let r = report(&stdout);
            let (inputs_wire, inputs_bytes, outputs_wire, outputs_bytes) = wire(&r);
            // Each input and output crosses once, and once more for a task the end game
            // copied to an idle worker (a busy machine can make one look slow).
            let copies = r["redispatched"].as_u64().unwrap();
            let largest = inputs.iter().map(|(_, b)| b.len() as u64).max().unwrap();
            for moved in [inputs_bytes, outputs_bytes] {
                assert!(
                    (total..=total + copies * largest).contains(&moved),
                    "{case}: {moved} bytes moved for {total} with {copies} copies: {r}"
                );
            }
            if compress && compressible {
                assert!(
                    inputs_wire * 10 < inputs_bytes,
                    "{case}: inputs shrink: {r}"
                );
                assert!(
                    outputs_wire * 10 < outputs_bytes,
                    "{case}: outputs shrink: {r}"
                );
            } else {
                // Raw: every byte crosses as it is, and the probe keeps random data raw.
                assert_eq!(
                    (inputs_wire, outputs_wire),
                    (inputs_bytes, outputs_bytes),
                    "{case}: {r}"
                );
            }
        }
    }
}

#[test]
fn a_worker_that_speaks_no_codec_gets_its_inputs_raw_from_a_compressing_ventilator() {
    for worker_compresses in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let inputs = write_inputs(&dir.path().join("in"), true);
        let total: u64 = inputs.iter().map(|(_, b)| b.len() as u64).sum();
        let out = dir.path().join("out");
        let glob = format!("{}/*.bin", dir.path().join("in").display());
        let (sink, sink_ep) = util::sink(&["--outputs", out.to_str().unwrap()]);
        let (vent, vent_ep) = util::ventilator(
            &sink_ep,
            &["--kernel", "copy", "--inputs", &glob, "--wait-workers", "1"],
        );
        let mut extra = vec!["--exit-when-done"];
        if !worker_compresses {
            extra.push("--no-compress");
        }
        let worker = util::worker_on("cpu", "w", &vent_ep, &sink_ep, &extra);
        let r = util::completed(sink, 3, None);
        assert_outputs_are_inputs(&out, &inputs);
        let (inputs_wire, inputs_bytes, outputs_wire, outputs_bytes) = wire(&r);
        assert_eq!((inputs_bytes, outputs_bytes), (total, total), "{r}");
        if worker_compresses {
            assert!(inputs_wire * 10 < total, "{r}");
            assert!(outputs_wire * 10 < total, "{r}");
        } else {
            assert_eq!((inputs_wire, outputs_wire), (total, total), "{r}");
        }
        for p in [vent, worker] {
            let (status, _, log) = p.finish();
            assert!(status.success(), "{log}");
        }
    }
}

#[test]
fn a_sink_that_takes_no_codec_gets_its_outputs_raw_from_a_compressing_worker() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(&dir.path().join("in"), true);
    let total: u64 = inputs.iter().map(|(_, b)| b.len() as u64).sum();
    let out = dir.path().join("out");
    let glob = format!("{}/*.bin", dir.path().join("in").display());
    let (sink, sink_ep) = util::sink(&["--outputs", out.to_str().unwrap(), "--no-compress"]);
    let (vent, vent_ep) = util::ventilator(
        &sink_ep,
        &["--kernel", "copy", "--inputs", &glob, "--wait-workers", "1"],
    );
    let worker = util::worker_on("cpu", "w", &vent_ep, &sink_ep, &["--exit-when-done"]);
    let r = util::completed(sink, 3, None);
    assert_outputs_are_inputs(&out, &inputs);
    let (inputs_wire, inputs_bytes, outputs_wire, outputs_bytes) = wire(&r);
    assert_eq!((inputs_bytes, outputs_bytes), (total, total), "{r}");
    // The ventilator and the worker still compress inputs between them.
    assert!(inputs_wire * 10 < total, "{r}");
    assert_eq!(outputs_wire, total, "{r}");
    drop((vent, worker));
}

/// One batch of `copy` tasks with a worker across a link shaped to `rate`: the sink and
/// the ventilator here, the worker in a network namespace. Returns the report.
fn across_the_link(
    ns: &util::Netns,
    inputs: &Path,
    out: &Path,
    worker_args: &[&str],
) -> serde_json::Value {
    let glob = format!("{}/*.bin", inputs.display());
    let sink = Proc::start(
        "sink",
        &[
            "sink",
            "--bind",
            "tcp://0.0.0.0:0",
            // On purpose: this test is about the link, not who may join.
            "--insecure",
            "--json",
            "--outputs",
            out.to_str().unwrap(),
        ],
    );
    let port = |endpoint: String| endpoint.rsplit(':').next().unwrap().to_owned();
    let sink_port = port(sink.endpoint("results"));
    let local_sink = format!("tcp://127.0.0.1:{sink_port}");
    let vent = Proc::start(
        "ventilator",
        &[
            "ventilator",
            "--bind",
            "tcp://0.0.0.0:0",
            "--insecure",
            "--sink",
            &local_sink,
            "--kernel",
            "copy",
            "--inputs",
            &glob,
            "--wait-workers",
            "1",
        ],
    );
    let vent_port = port(vent.endpoint("tasks"));
    let remote_vent = format!("tcp://{}:{vent_port}", ns.host_ip);
    let remote_sink = format!("tcp://{}:{sink_port}", ns.host_ip);
    let mut args = vec![
        "worker",
        "--name",
        "far",
        "--backend",
        "cpu",
        "--ventilator",
        &remote_vent,
        "--sink",
        &remote_sink,
        "--exit-when-done",
    ];
    args.extend_from_slice(worker_args);
    let worker = ns.conquer("far", &args);
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "the sink failed: {log}");
    for p in [vent, worker] {
        let (status, _, log) = p.finish();
        assert!(status.success(), "{log}");
    }
    report(&stdout)
}

#[test]
fn across_a_100_mbit_link_outputs_arrive_whole_compressed_when_they_compress_and_raw_when_not() {
    let Some(ns) = util::Netns::create_or_skip() else {
        return;
    };
    ns.shape("100mbit");
    for (compressible, worker_args) in [(true, &[][..]), (false, &[]), (true, &["--no-compress"])] {
        let dir = tempfile::tempdir().unwrap();
        let inputs = write_inputs(&dir.path().join("in"), compressible);
        let total: u64 = inputs.iter().map(|(_, b)| b.len() as u64).sum();
        let out = dir.path().join("out");
        let started = std::time::Instant::now();
        let r = across_the_link(&ns, &dir.path().join("in"), &out, worker_args);
        let case = format!("compressible {compressible}, worker {worker_args:?}");
        eprintln!("{case}: {:?} across 100 Mbit/s", started.elapsed());
        assert_outputs_are_inputs(&out, &inputs);
        let (inputs_wire, inputs_bytes, outputs_wire, outputs_bytes) = wire(&r);
        assert_eq!((inputs_bytes, outputs_bytes), (total, total), "{case}: {r}");
        if compressible && worker_args.is_empty() {
            assert!(inputs_wire * 10 < total, "{case}: {r}");
            assert!(outputs_wire * 10 < total, "{case}: {r}");
        } else {
            assert_eq!((inputs_wire, outputs_wire), (total, total), "{case}: {r}");
        }
    }
}
