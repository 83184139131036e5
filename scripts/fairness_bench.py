#!/usr/bin/env python3
"""Fair share on a coordinator: two jobs submitted together to `conquer serve` with four
sleep workers, equal weights and then --priority 3 against 1. Prints a Markdown table of
medians over the repeats: each job's time from submission to its end, how far apart the
two ends are (as a share of the later job's time), and, for the weighted pair, how the
workers' time was split while both ran (task time inside the overlap, from each job's
results file).

Usage: python3 scripts/fairness_bench.py [--repeat 5] [--tasks 200] [--ms 20]
(CONQUER_BIN picks the binary; the release build by default). Synchronised on the
coordinator's answers (`jobs --json`) and its files, never on its log.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from ports import free_endpoints

BIN = os.environ.get("CONQUER_BIN", os.path.join(os.path.dirname(__file__), "..",
                                                 "target", "release", "conquer"))


def flag(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


REPEAT = int(flag("--repeat", "5"))
TASKS = flag("--tasks", "200")
MS = flag("--ms", "20")
BEAT = ["--heartbeat-ms", "100"]


def ask(control, args):
    out = subprocess.run([BIN] + args + ["--coordinator", control], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError("conquer %s: %s" % (" ".join(args), out.stderr))
    return out.stdout


def jobs(control):
    return {j["id"]: j for j in json.loads(ask(control, ["jobs", "--json"]))["jobs"]}


def busy_in(path, start, end):
    """Task time inside [start, end] (Unix ms) in a job's results file."""
    total = 0
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            total += max(0, min(end, r["finished_unix_ms"]) - max(start, r["started_unix_ms"]))
    return total


def pair(priorities):
    state = tempfile.mkdtemp()
    bind, results, control = free_endpoints(3)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve = subprocess.Popen([BIN, "serve", "--state", state, "--bind", bind, "--results-bind",
                              results, "--control", control] + BEAT, **quiet)
    workers = [subprocess.Popen([BIN, "worker", "--backend", "sleep", "--name", "w%d" % i,
                                 "--ventilator", bind, "--sink", results] + BEAT, **quiet)
               for i in range(4)]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                jobs(control)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
        # The workers greet before the jobs come: a job waits for none.
        time.sleep(1.0)
        ids = [int(ask(control, ["submit", "--tasks", TASKS, "--min-ms", MS, "--max-ms", MS,
                                 "--seed", str(k + 1), "--priority", str(p)]).strip())
               for k, p in enumerate(priorities)]
        deadline = time.monotonic() + 120
        while True:
            all_jobs = jobs(control)
            if all(all_jobs[i]["state"] == "done" for i in ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("jobs never done: %s" % all_jobs)
            time.sleep(0.05)
        views = [all_jobs[i] for i in ids]
        took = [v["ended_ms"] - v["submitted_ms"] for v in views]
        gap = abs(views[0]["ended_ms"] - views[1]["ended_ms"]) / max(took)
        start = max(v["started_ms"] for v in views)
        end = min(v["ended_ms"] for v in views)
        busy = [busy_in(os.path.join(state, "jobs", str(i), "results.jsonl"), start, end)
                for i in ids]
        return took, gap, busy
    finally:
        for p in workers + [serve]:
            p.terminate()
        for p in workers + [serve]:
            p.wait(timeout=30)


def main():
    work = int(TASKS) * int(MS)
    print("Two jobs of %s tasks of %s ms (%d ms of work each) submitted together to "
          "`conquer serve` with 4 sleep workers; medians of %d runs.\n"
          % (TASKS, MS, work, REPEAT))
    print("| weights | job A ms | job B ms | ends apart | A : B workers' time while both ran |")
    print("|---|---:|---:|---:|---:|")
    for priorities in ([1, 1], [3, 1]):
        runs = [pair(priorities) for _ in range(REPEAT)]
        a = statistics.median(r[0][0] for r in runs)
        b = statistics.median(r[0][1] for r in runs)
        gap = statistics.median(r[1] for r in runs)
        ratio = statistics.median(r[2][0] / max(1, r[2][1]) for r in runs)
        print("| %d : %d | %.0f | %.0f | %.1f %% | %.2f : 1 |"
              % (priorities[0], priorities[1], a, b, gap * 100, ratio))


if __name__ == "__main__":
    main()
