#!/usr/bin/env python3
"""Hostile-peer rows of BENCHMARKS.md's fault table, on the real binary.

- A multipart flood: one message of 40 frames of 50 MB at a sink, and one of 400 frames of
  4 MB at a ventilator, from a raw peer; then each role's peak RSS (VmHWM). Once with no
  secret (what libzmq must buffer before any check can run) and once with --secret-file,
  where the peer cannot complete its handshake.
- A task that always fails (CONQUER_FAULT=fail-task:7) in a 200-task `conquer run`: how
  many times it ran, the exit status, and the batch's time against a clean run.

Usage: python3 scripts/hostile_bench.py   (CONQUER_BIN picks the binary; the release
build by default). Needs pyzmq for the raw peer (installed with pip if missing).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import fault_bench  # noqa: E402  (its Proc and free_endpoint)
from fault_bench import Proc, free_endpoint  # noqa: E402

try:
    import zmq
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyzmq"], check=True)
    import zmq

fault_bench.BIN = os.environ.get("CONQUER_BIN", fault_bench.BIN)


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def flood(role, frames, frame_mb, secret):
    """Starts `role` alone, sends it one message of `frames` frames, returns its peak RSS
    after the message was dropped (or refused) and the RSS before it."""
    ep = free_endpoint()
    extra = ["--secret-file", secret] if secret else []
    if role == "sink":
        p = Proc(["sink", "--bind", ep] + extra)
    else:
        p = Proc(["ventilator", "--bind", ep, "--sink", free_endpoint(), "--tasks", "10",
                  "--wait-workers", "1", "--wait-timeout", "600"] + extra)
    p.wait_for("listening on")
    before = peak_rss_mib(p.p.pid)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(ep)
    # A results head (kind 19 of protocol 7), then the frames.
    head = b"CQ\x07\x13"
    frame = b"\0" * (frame_mb * 1000 * 1000)
    s.send_multipart([head] + [frame] * frames, copy=False)
    if secret:
        p.wait_for("refused", timeout=120)
    else:
        p.wait_for("dropped", timeout=120)
    time.sleep(0.5)
    peak = peak_rss_mib(p.p.pid)
    s.close(linger=0)
    ctx.term()
    p.kill(9)
    p.finish()
    return before, peak


def run_batch(fault):
    env = dict(os.environ)
    if fault:
        env["CONQUER_FAULT"] = "fail-task:7"
    args = [fault_bench.BIN, "run", "--tasks", "200", "--min-ms", "1", "--max-ms", "5",
            "--seed", "3", "--backend", "sleep", "--workers", "3", "--json"]
    started = time.monotonic()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    wall = (time.monotonic() - started) * 1000
    report = json.loads(done.stdout.strip().splitlines()[-1])
    ran = done.stderr.count("failed task 7") + done.stderr.count("task 7 failed 3 times")
    return done.returncode, wall, report, ran


def main():
    secret = os.path.join(tempfile.mkdtemp(), "farm.secret")
    subprocess.run([fault_bench.BIN, "secret", "new", secret], check=True, capture_output=True)
    print("| flood | secret | peak RSS before | peak RSS after |")
    print("|---|---|---:|---:|")
    for role, frames, mb in (("sink", 40, 50), ("ventilator", 400, 4)):
        for s in (None, secret):
            before, peak = flood(role, frames, mb, s)
            print("| %s: 1 message of %d frames of %d MB | %s | %.1f MiB | %.1f MiB |"
                  % (role, frames, mb, "yes" if s else "no", before, peak))
    print()
    print("| batch | exit | attempts of task 7 | batch ms (report) | wall ms |")
    print("|---|---:|---:|---:|---:|")
    for fault in (False, True):
        code, wall, report, ran = run_batch(fault)
        attempts = report.get("failed", [{}])[0].get("attempts", 0) if fault else "-"
        print("| %s | %d | %s | %.0f | %.0f |"
              % ("task 7 always fails" if fault else "clean", code, attempts,
                 report["elapsed_ms"], wall))


if __name__ == "__main__":
    main()
