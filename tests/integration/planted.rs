//! Links planted where the sink writes: at a task's temporary output file, at the probe
//! the sink makes in `--outputs DIR` when it starts, and at the `--image` picture's
//! temporary file. Each leaves the link's target as it was, and the sink stops with an
//! error naming the link.

use crate::util::Proc;
use std::path::Path;

/// A file outside the outputs directory that a planted link points to.
fn victim(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("victim.txt");
    std::fs::write(&path, b"precious").unwrap();
    path
}

/// A small Mandelbrot picture on cpu workers, with `args` added.
fn mandelbrot_run(name: &str, args: &[&str]) -> Proc {
    let mut all = vec![
        "run",
        "--backend",
        "cpu",
        "--workers",
        "1",
        "--kernel",
        "mandelbrot",
        "--width",
        "64",
        "--height",
        "16",
        "--json",
    ];
    all.extend_from_slice(args);
    Proc::start(name, &all)
}

/// Runs with the link planted at `link`, and checks that the run failed naming it and that
/// the target is untouched.
fn refused_with_target_kept(run: Proc, link: &Path, target: &Path) {
    let (status, _, log) = run.finish();
    assert!(
        !status.success(),
        "the run wrote through {}: {log}",
        link.display()
    );
    let name = link.file_name().unwrap().to_str().unwrap();
    assert!(
        log.contains(name) && log.contains("symbolic link"),
        "the error names {name}: {log}"
    );
    assert_eq!(std::fs::read(target).unwrap(), b"precious", "{log}");
    assert!(
        std::fs::symlink_metadata(link).unwrap().is_symlink(),
        "the link is left for its owner to see"
    );
}

#[test]
fn a_link_at_a_tasks_temporary_output_is_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let target = victim(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let link = out.join(".mandelbrot-00000000.out.tmp");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let run = mandelbrot_run("planted-output", &["--outputs", out.to_str().unwrap()]);
    refused_with_target_kept(run, &link, &target);
    assert!(
        !out.join("mandelbrot-00000000.out").exists(),
        "no output under the task's name either"
    );
}

#[test]
fn a_link_at_the_probe_is_not_truncated_through() {
    let dir = tempfile::tempdir().unwrap();
    let target = victim(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let link = out.join(".conquer-probe");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let run = mandelbrot_run("planted-probe", &["--outputs", out.to_str().unwrap()]);
    refused_with_target_kept(run, &link, &target);
}

#[test]
fn a_link_at_the_pictures_temporary_file_is_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let target = victim(dir.path());
    let pictures = dir.path().join("pictures");
    std::fs::create_dir(&pictures).unwrap();
    let picture = pictures.join("set.png");
    let link = pictures.join(".set.png.tmp");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let run = mandelbrot_run("planted-image", &["--image", picture.to_str().unwrap()]);
    refused_with_target_kept(run, &link, &target);
    assert!(!picture.exists(), "no picture either");
}

#[test]
fn a_stale_temporary_file_left_by_a_crash_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join(".mandelbrot-00000000.out.tmp"), b"torn").unwrap();
    std::fs::write(out.join(".conquer-probe"), b"").unwrap();
    let picture = out.join("set.png");
    std::fs::write(out.join(".set.png.tmp"), b"torn").unwrap();
    let (status, _, log) = mandelbrot_run(
        "stale-temporary",
        &[
            "--outputs",
            out.to_str().unwrap(),
            "--image",
            picture.to_str().unwrap(),
        ],
    )
    .finish();
    assert!(status.success(), "{log}");
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    left.sort();
    assert!(left.is_empty(), "no temporary file is left: {left:?}");
    assert!(
        std::fs::metadata(out.join("mandelbrot-00000000.out"))
            .unwrap()
            .len()
            > 0
    );
    assert!(std::fs::metadata(&picture).unwrap().len() > 0);
}
