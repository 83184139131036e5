#!/usr/bin/env python3
"""Fault table and memory check for BENCHMARKS.md, on the real release binary.

Runs a 2000-task batch (1-5 ms) on 4 sleep workers as separate processes, once clean and
once per injected fault, and prints a Markdown table: tasks lost (from the results file),
duplicates dropped, time from the fault to the ventilator declaring the worker gone, and
the batch's extra time against the clean run. Then runs a 1,000,000-task zero-work batch on
2 workers and reports its time and each role's peak RSS (GNU time).

Usage: cargo build --release && python3 scripts/fault_bench.py
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ports import free_endpoints

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "conquer")
BATCH = ["--tasks", "2000", "--min-ms", "1", "--max-ms", "5", "--seed", "3"]


class Proc:
    """A conquer process whose stderr lines are kept with their arrival times."""

    def __init__(self, args, timed=False):
        cmd = [BIN, "-v"] + args
        if timed:
            cmd = ["/usr/bin/time", "-f", "PEAK_RSS_KB %M"] + cmd
        self.started = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, needle, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for at, line in list(self.lines):
                if needle in line:
                    return at
            time.sleep(0.005)
        raise RuntimeError("never logged %r:\n%s" % (needle, "\n".join(l for _, l in self.lines)))

    def finish(self, timeout=120):
        out = self.p.stdout.read()
        self.p.wait(timeout=timeout)
        self.t.join(timeout=5)
        return out

    def peak_rss_mib(self):
        for _, line in self.lines:
            m = re.search(r"PEAK_RSS_KB (\d+)", line)
            if m:
                return int(m.group(1)) / 1024
        return float("nan")

    def kill(self, sig):
        os.kill(self.p.pid, sig)


def run(fault):
    tmp = tempfile.mkdtemp()
    results = os.path.join(tmp, "r.jsonl")
    sink_ep, vent_ep = free_endpoints(2)
    sink = Proc(["sink", "--bind", sink_ep, "--json", "--results", results])
    sink.wait_for("listening on")
    vent = Proc(["ventilator", "--bind", vent_ep, "--sink", sink_ep, "--wait-workers", "4"] + BATCH)
    workers = [Proc(["worker", "--backend", "sleep", "--name", "w%d" % i, "--ventilator", vent_ep,
                     "--sink", sink_ep, "--exit-when-done"]) for i in range(4)]
    start = sink.wait_for("clock started")
    time.sleep(max(0, start + 0.3 - time.monotonic()))
    injected = time.monotonic()
    detected = None
    if fault == "SIGKILL one worker":
        workers[0].kill(signal.SIGKILL)
        detected = vent.wait_for("worker w0 is gone")
    elif fault == "SIGSTOP one worker (then SIGCONT)":
        workers[0].kill(signal.SIGSTOP)
        detected = vent.wait_for("worker w0 silent for")
        workers[0].kill(signal.SIGCONT)
    elif fault == "SIGKILL the sink, restart with --resume":
        sink.kill(signal.SIGKILL)
        sink.finish()
        sink = Proc(["sink", "--bind", sink_ep, "--json", "--results", results, "--resume"])
        detected = vent.wait_for("the sink restarted")
    elif fault == "SIGKILL the ventilator, restart with --resume":
        vent.kill(signal.SIGKILL)
        vent.finish()
        vent = Proc(["ventilator", "--bind", vent_ep, "--sink", sink_ep, "--wait-workers", "3",
                     "--resume"] + BATCH)
        detected = sink.wait_for("the ventilator restarted")
    elif fault == "10,000 malformed messages at each bound socket":
        import zmq  # noqa: only for this fault; pyzmq is optional
        ctx = zmq.Context()
        for ep in (vent_ep, sink_ep):
            s = ctx.socket(zmq.DEALER)
            s.connect(ep)
            for i in range(10000):
                s.send(b"junk-%d" % i)
            s.close(linger=5000)
        ctx.term()
    report = json.loads(sink.finish().strip().splitlines()[-1])
    for w in workers:
        try:
            w.finish(timeout=10)
        except subprocess.TimeoutExpired:
            w.kill(signal.SIGKILL)
    vent.finish()
    ids = [json.loads(line)["task"] for line in open(results)]
    lost = 2000 - len(set(ids))
    return {
        "fault": fault,
        "lost": lost,
        "twice_in_file": len(ids) - len(set(ids)),
        "duplicates": report["duplicates"],
        "redispatched": report["redispatched"],
        "rejected": report["rejected"],
        "detect_ms": (detected - injected) * 1000 if detected else None,
        "elapsed_ms": report["elapsed_ms"],
    }


def main():
    faults = ["none", "SIGKILL one worker", "SIGSTOP one worker (then SIGCONT)",
              "SIGKILL the sink, restart with --resume",
              "SIGKILL the ventilator, restart with --resume"]
    try:
        import zmq  # noqa
        faults.append("10,000 malformed messages at each bound socket")
    except ImportError:
        print("(pyzmq not installed: skipping the malformed-message row)", file=sys.stderr)
    rows = [run(f) for f in faults]
    base = rows[0]["elapsed_ms"]
    print("| injected | tasks lost | twice in results file | duplicates dropped | redispatched | rejected | detected after | batch ms | extra ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        detect = "-" if r["detect_ms"] is None else "%.0f ms" % r["detect_ms"]
        print("| %s | %d | %d | %d | %d | %d | %s | %.0f | %+.0f |" % (
            r["fault"], r["lost"], r["twice_in_file"], r["duplicates"], r["redispatched"],
            r["rejected"], detect, r["elapsed_ms"], r["elapsed_ms"] - base))

    # A million zero-work tasks: time and peak memory of each role.
    sink_ep, vent_ep = free_endpoints(2)
    sink = Proc(["sink", "--bind", sink_ep, "--json"], timed=True)
    sink.wait_for("listening on")
    vent = Proc(["ventilator", "--bind", vent_ep, "--sink", sink_ep, "--wait-workers", "2",
                 "--tasks", "1000000", "--min-ms", "0", "--max-ms", "0"], timed=True)
    workers = [Proc(["worker", "--backend", "sleep", "--name", "m%d" % i, "--ventilator", vent_ep,
                     "--sink", sink_ep, "--exit-when-done"], timed=True) for i in range(2)]
    report = json.loads(sink.finish().strip().splitlines()[-1])
    vent.finish()
    for w in workers:
        w.finish()
    print()
    print("| 1,000,000 zero-work tasks, 2 workers | elapsed ms | tasks/s | sink peak RSS | ventilator peak RSS | worker peak RSS |")
    print("|---|---:|---:|---:|---:|---:|")
    print("| separate processes, loopback | %.0f | %.0f | %.1f MiB | %.1f MiB | %.1f / %.1f MiB |" % (
        report["elapsed_ms"], report["tasks_per_s"], sink.peak_rss_mib(), vent.peak_rss_mib(),
        workers[0].peak_rss_mib(), workers[1].peak_rss_mib()))


if __name__ == "__main__":
    main()
