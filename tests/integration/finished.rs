//! Elapsed means done: the report's `finished_ms` runs until the picture is on disk, where
//! `elapsed_ms` ends at the last result, and the text report says which is which. A
//! picture too large to paint is refused before the batch starts.

use crate::util::{report, Proc};

/// `conquer run` of a small Mandelbrot on the CPU backend, writing `--image`.
fn mandelbrot_with_picture(image: &std::path::Path, json: bool) -> String {
    let mut args = vec![
        "run",
        "--backend",
        "cpu",
        "--workers",
        "2",
        "--kernel",
        "mandelbrot",
        "--width",
        "1024",
        "--height",
        "1024",
        "--max-iter",
        "64",
        "--image",
        image.to_str().unwrap(),
    ];
    if json {
        args.push("--json");
    }
    let (status, stdout, log) = Proc::start("run", &args).finish();
    assert!(status.success(), "{log}");
    stdout
}

#[test]
fn finished_ms_counts_the_picture_that_elapsed_ms_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("m.png");
    let r = report(&mandelbrot_with_picture(&image, true));
    assert!(
        std::fs::metadata(&image).is_ok_and(|m| m.len() > 0),
        "the picture"
    );
    let elapsed = r["elapsed_ms"].as_f64().expect("elapsed_ms");
    let finished = r["finished_ms"].as_f64().expect("finished_ms");
    // Encoding a million pixels takes time after the last band: finished is later.
    assert!(finished > elapsed, "{r}");

    let text = mandelbrot_with_picture(&dir.path().join("again.png"), false);
    assert!(
        text.contains("Total elapsed time:") && text.contains("Finished, picture on disk:"),
        "{text}"
    );
}

#[test]
fn a_picture_over_two_to_the_31_pixels_is_refused_before_the_batch_starts_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("huge.png");
    let (status, _, log) = Proc::start(
        "run",
        &[
            "run",
            "--backend",
            "cpu",
            "--kernel",
            "mandelbrot",
            "--width",
            "65536",
            "--height",
            "65536",
            "--image",
            image.to_str().unwrap(),
        ],
    )
    .finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("4294967296 pixels") && log.contains("(2^31)"),
        "{log}"
    );
    assert!(!log.contains("starting the batch"), "refused before: {log}");
    assert!(!image.exists());
}
