#!/usr/bin/env python3
"""The long-kernel row of BENCHMARKS.md's fault table, on the real binary and a software
adapter (lavapipe).

A sink, a ventilator and one `--backend software --task-timeout T` worker run a user
kernel whose 1 MiB input loops for minutes, then three inputs that end at once. Measured
from each process's stderr lines as they arrive: how long after the ventilator hands out
the batch the worker fails the runaway task (target: within T + 1 s) and, half a second
after that, with the runaway task handed out again and in flight on the rebuilt device,
how long the worker takes to exit after SIGTERM (target: within 1 s).

Usage: cargo build --release && python3 scripts/runaway_bench.py [--timeout T] [--runs N]
(CONQUER_BIN picks another binary.)
"""
import argparse
import os
import queue
import signal
import struct
import subprocess
import tempfile
import threading
import time

BIN = os.environ.get(
    "CONQUER_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "release", "conquer")
)

STEPS = "".join(
    "acc = (acc * 1664525u + 1013904223u) ^ (a + b + c + %du);\n" % k for k in range(16)
)
KERNEL = """struct Params { task_id: u32, offset: u32, count: u32, items: u32, input_bytes: u32,
  output_bytes: u32, _pad0: u32, _pad1: u32, c: array<vec4<u32>, 2> }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<u32>;
@group(0) @binding(2) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= params.count) { return; }
  let i = params.offset + gid.x;
  let n = input[i];
  var acc = i;
  for (var a = 0u; a < n; a++) { for (var b = 0u; b < n; b++) {
    for (var c = 0u; c < n; c++) { %s } } }
  output[i] = acc;
}
""" % STEPS


class Proc:
    """A conquer process whose stderr lines arrive, with their arrival times, on a queue."""

    def __init__(self, args):
        self.p = subprocess.Popen(
            [BIN, "-v"] + args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.put((time.monotonic(), line.rstrip()))

    def wait_for(self, needle, patience=120):
        deadline = time.monotonic() + patience
        while True:
            at, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if needle in line:
                return at, line

    def endpoint(self, role):
        _, line = self.wait_for("%s socket listening on " % role)
        return line.rsplit(" ", 1)[1]

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def once(timeout):
    with tempfile.TemporaryDirectory() as d:
        kernel = os.path.join(d, "runaway.wgsl")
        with open(kernel, "w") as f:
            f.write(KERNEL)
        with open(os.path.join(d, "a-runaway.u32"), "wb") as f:
            f.write(struct.pack("<I", 60000) * (1 << 18))
        for k in range(3):
            with open(os.path.join(d, "quick%d.u32" % k), "wb") as f:
                f.write(struct.pack("<I", 2) * 16)
        sink = Proc(["sink", "--bind", "tcp://127.0.0.1:0"])
        sink_ep = sink.endpoint("results")
        vent = Proc(["ventilator", "--bind", "tcp://127.0.0.1:0", "--sink", sink_ep,
                     "--kernel-file", kernel, "--inputs", os.path.join(d, "*.u32"),
                     "--item-bytes", "4", "--output-bytes", "4/item", "--order", "given"])
        vent_ep = vent.endpoint("tasks")
        worker = Proc(["worker", "--ventilator", vent_ep, "--sink", sink_ep, "--name", "w",
                       "--backend", "software", "--task-timeout", str(timeout)])
        try:
            started, _ = vent.wait_for("starting the batch")
            failed, _ = worker.wait_for("ran past --task-timeout")
            # Handed out again, the runaway task is in flight: stop the worker.
            time.sleep(0.5)
            signalled = time.monotonic()
            worker.p.send_signal(signal.SIGTERM)
            worker.p.wait(timeout=30)
            exited = time.monotonic()
            return failed - started, exited - signalled, worker.p.returncode
        finally:
            for p in (worker, vent, sink):
                p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    fails, exits = [], []
    for _ in range(args.runs):
        fail, exit_s, code = once(args.timeout)
        fails.append(fail)
        exits.append(exit_s)
        print("run: task failed after %.2f s, SIGTERM exit after %.3f s (status %d)"
              % (fail, exit_s, code), flush=True)
    print()
    print("| injected | task failed after (median, max) | target | exit after SIGTERM (median, max) | target |")
    print("|---|---:|---:|---:|---:|")
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print("| a kernel that runs for minutes, `--task-timeout %g` | %.2f s (%.2f s) | %.0f s | %.0f ms (%.0f ms) | 1000 ms |"
          % (args.timeout, med(fails), max(fails), args.timeout + 1, med(exits) * 1000,
             max(exits) * 1000))


if __name__ == "__main__":
    main()
