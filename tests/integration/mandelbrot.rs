//! The exact Mandelbrot kernel: the WGSL on the software adapter equals the Rust reference
//! at random views from 1e-13 to 4 wide; `--verify` finds no differing pixel at the README's
//! view, the default view and a 1e-12 deep zoom on `software` and `cpu`; the deep zoom has
//! detail; views beyond the fixed-point format are refused before anything binds.

use crate::gpu::adapter;
use crate::util::{report, Proc};
use conquer::backend::gpu::{AdapterClass, Gpu, GpuConfig};
use conquer::backend::{Backend, Work};
use conquer::batch::{Job, Task};
use conquer::kernels::{mandelbrot, Kernel};
use conquer::protocol::Status;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeSet;
use std::path::Path;

/// The deep zoom of the README: 1e-12 wide around a point of the seahorse valley.
const DEEP_CENTRE: &str = "--centre=-0.743643887037151,0.131825904205330";
const DEEP_MAX_ITER: &str = "4000";

/// A centre near the set's boundary (on the main cardioid's edge, nudged by `offset`), so
/// deep views have detail; or anywhere around the set.
fn centres() -> impl Strategy<Value = (f64, f64)> {
    prop_oneof![
        (0.0f64..std::f64::consts::TAU, -1e-3f64..1e-3).prop_map(|(t, offset)| {
            let (re, im) = (
                t.cos() / 2.0 - (2.0 * t).cos() / 4.0,
                t.sin() / 2.0 - (2.0 * t).sin() / 4.0,
            );
            (re + offset, im - offset)
        }),
        (-2.2f64..1.2, -1.5f64..1.5),
    ]
}

#[test]
fn the_wgsl_kernel_equals_the_rust_reference_at_random_views() {
    let Some(adapter) = adapter(AdapterClass::Software) else {
        return;
    };
    // The runner takes a shared closure; the context is built once and borrowed per case.
    let gpu = std::cell::RefCell::new(
        Gpu::new(&adapter, GpuConfig::default()).expect("a context on the software adapter"),
    );
    // Widths 1e-13 to 4, log-uniform; small images, so the cases run in seconds.
    let views = (
        1u32..=40,
        1u32..=30,
        1u32..=2000,
        1u32..=8,
        -13.0f64..0.6021,
        centres(),
    )
        // A tall, narrow image at a wide view can reach past the fixed-point range; `View::new`
        // refuses those (tested below), so they are not cases here.
        .prop_filter_map(
            "a view within the fixed-point format",
            |(width, height, max_iter, rows, exponent, centre)| {
                mandelbrot::View::new(width, height, max_iter, rows, centre, 10f64.powf(exponent))
                    .ok()
            },
        );
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&views, |view| {
            let job = Job {
                kernel: Kernel::Mandelbrot.id(),
                constants: view.constants(),
                ..Job::default()
            };
            let mut gpu = gpu.borrow_mut();
            gpu.prepare(&job, None).expect("the kernel compiles");
            let mut queue = (0..view.bands()).map(|id| {
                Work::from(Task {
                    id,
                    workload_ms: 1,
                    ..Default::default()
                })
            });
            let mut outcomes = Vec::new();
            gpu.run(&job, &mut || queue.next(), &mut |o| outcomes.push(o));
            prop_assert_eq!(outcomes.len(), view.bands() as usize);
            for o in outcomes {
                prop_assert_eq!(o.status, Status::Ok);
                let expected = view.reference(o.task);
                prop_assert!(
                    o.output == expected,
                    "band {} of {view:?}: {}",
                    o.task.id,
                    mandelbrot::agrees(&o.output, &expected).unwrap_err()
                );
            }
            Ok(())
        })
        .unwrap();
}

/// `conquer run --kernel mandelbrot --backend BACKEND --verify --json ARGS`, to its end:
/// the report, after checking it found no differing pixel among `pixels`.
fn verified(backend: &str, pixels: u64, args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "run",
        "--kernel",
        "mandelbrot",
        "--backend",
        backend,
        "--workers",
        "2",
        "--verify",
        "--json",
    ];
    all.extend_from_slice(args);
    let (status, stdout, log) = Proc::start("run", &all).finish();
    assert!(status.success(), "{backend} {args:?}: {log}");
    let r = report(&stdout);
    assert_eq!(r["mismatches"], 0, "{backend} {args:?}: {r}");
    assert_eq!(r["compared"], pixels, "{backend} {args:?}: {r}");
    assert_eq!(r["differing"], 0, "{backend} {args:?}: {r}");
    r
}

#[test]
fn verify_finds_no_differing_pixel_at_the_readme_view_and_the_default_view() {
    let backends: &[&str] = if adapter(AdapterClass::Software).is_some() {
        &["software", "cpu"]
    } else {
        &["cpu"]
    };
    for &backend in backends {
        // The README's picture.
        verified(
            backend,
            1280 * 720,
            &[
                "--width",
                "1280",
                "--height",
                "720",
                "--max-iter",
                "1000",
                "--centre=-0.7436,0.1318",
                "--view-width",
                "0.012",
            ],
        );
        // The default view (1920 x 1080, 500 iterations).
        verified(backend, 1920 * 1080, &[]);
    }
}

/// Every count in the band files of `dir`, in band order.
fn counts(dir: &Path) -> Vec<u32> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect::<Vec<u8>>()
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

#[test]
fn a_deep_zoom_at_width_1e_12_verifies_and_has_hundreds_of_distinct_counts() {
    let backends: &[&str] = if adapter(AdapterClass::Software).is_some() {
        &["software", "cpu"]
    } else {
        &["cpu"]
    };
    let dir = tempfile::tempdir().unwrap();
    let mut pictures = Vec::new();
    for &backend in backends {
        let out = dir.path().join(backend);
        verified(
            backend,
            256 * 256,
            &[
                "--width",
                "256",
                "--height",
                "256",
                "--max-iter",
                DEEP_MAX_ITER,
                DEEP_CENTRE,
                "--view-width",
                "1e-12",
                "--outputs",
                out.to_str().unwrap(),
            ],
        );
        let counts = counts(&out);
        assert_eq!(counts.len(), 256 * 256, "{backend}");
        let distinct: BTreeSet<u32> = counts.iter().copied().collect();
        assert!(
            distinct.len() >= 200,
            "{backend}: only {} distinct counts at width 1e-12",
            distinct.len()
        );
        pictures.push(counts);
    }
    assert!(
        pictures.windows(2).all(|w| w[0] == w[1]),
        "the backends paint the same picture"
    );
}

#[test]
fn views_beyond_the_fixed_point_format_are_refused_before_anything_binds() {
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["--view-width", "1e-16"],
            &["--view-width 1e-16", "2^-58", "6.661e-15"],
        ),
        (&["--centre=9,0"], &["--centre=9,0", "-8 to 8"]),
        (
            &["--centre=-7,0", "--view-width", "4"],
            &["--view-width 4", "-8 to 8", "re -8.99"],
        ),
    ];
    for (args, words) in cases {
        let mut all = vec!["ventilator", "--kernel", "mandelbrot"];
        all.extend_from_slice(args);
        let (status, stdout, log) = Proc::start("ventilator", &all).finish();
        assert_eq!(status.code(), Some(1), "{args:?}: {log}");
        for w in words {
            assert!(log.contains(w), "{args:?}: missing {w:?} in {log}");
        }
        assert!(log.contains("conquer: error:"), "{log}");
        assert!(!log.contains("listening"), "{args:?} bound first: {log}");
        assert!(stdout.is_empty(), "{args:?} printed: {stdout}");
    }
}
