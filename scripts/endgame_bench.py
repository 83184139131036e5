#!/usr/bin/env python3
"""Adding a worker never slows a job: a software worker alone against software + 1 and + 2
cpu workers, on a 2048 x 2048 Mandelbrot (the default view), carved adaptively and as a
task list of bands, each farm as separate processes on loopback. Prints a Markdown table of
median elapsed ms (from the sink's report) and the ratio to the software worker alone.

Usage: python3 scripts/endgame_bench.py [--repeat 3] [--fast software] [--cpus 0,1,2]
[--size 2048]   (CONQUER_BIN picks the binary; the release build by default). On a GPU box:
--fast gpu --cpus 0,1,8 --size 16384.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
import fault_bench  # noqa: E402
from fault_bench import Proc, free_endpoint  # noqa: E402

fault_bench.BIN = os.environ.get("CONQUER_BIN", fault_bench.BIN)


def flag(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


FAST = flag("--fast", "software")
SIZE = flag("--size", "2048")
JOB = ["--kernel", "mandelbrot", "--width", SIZE, "--height", SIZE]


def farm(policy, cpus):
    sink_ep, vent_ep = free_endpoint(), free_endpoint()
    sink = Proc(["sink", "--bind", sink_ep, "--json"])
    sink.wait_for("listening on")
    chunking = ["--chunking", "adaptive"] if policy == "adaptive" else []
    vent = Proc(["ventilator", "--bind", vent_ep, "--sink", sink_ep,
                 "--wait-workers", str(1 + cpus)] + JOB + chunking)
    workers = [Proc(["worker", "--backend", FAST, "--name", FAST,
                     "--ventilator", vent_ep, "--sink", sink_ep, "--exit-when-done"])]
    workers += [Proc(["worker", "--backend", "cpu", "--name", "cpu%d" % i,
                      "--ventilator", vent_ep, "--sink", sink_ep, "--exit-when-done"])
                for i in range(cpus)]
    report = json.loads(sink.finish().strip().splitlines()[-1])
    for p in [vent] + workers:
        try:
            p.finish(timeout=30)
        except Exception:
            p.kill(9)
    return report["elapsed_ms"]


def main():
    repeat = int(flag("--repeat", "3"))
    cpus_list = [int(n) for n in flag("--cpus", "0,1,2").split(",")]
    print("| policy | farm | elapsed ms (median) | runs | against %s alone |" % FAST)
    print("|---|---|---:|---|---:|")
    for policy in ("adaptive", "bands"):
        alone = None
        for cpus in cpus_list:
            runs = [farm(policy, cpus) for _ in range(repeat)]
            median = statistics.median(runs)
            alone = alone or median
            name = FAST + ("" if cpus == 0 else " + %d cpu" % cpus)
            print("| %s | %s | %.0f | %s | %.2f |" % (
                policy, name, median, ", ".join("%.0f" % r for r in runs), median / alone))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
