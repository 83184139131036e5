#!/usr/bin/env python3
"""Adding a worker never slows a job: a software worker alone against software + 1 and + 2
cpu workers, on a 2048 x 2048 Mandelbrot (the default view), carved adaptively and as a
task list of bands, each farm as separate processes on loopback. Prints a Markdown table of
median elapsed ms (from the sink's report; the farms take turns, a run each per round),
the ratio to the software worker alone, and
what the end game did in the median run (chunks cut and the items they handed on, items
redone by copies).

Usage: python3 scripts/endgame_bench.py [--repeat 3] [--fast software] [--cpus 0,1,2]
[--size 2048] [--cpu-slowdown 1]   (CONQUER_BIN picks the binary; the release build by
default). On a GPU box: --fast gpu --cpus 0,1,8 --size 16384. On a box whose cores the
fast worker already uses (the software adapter on two cores), `--cpu-slowdown 10` makes
the cpu workers ten times slower by waiting, so they add a slow worker's share rather
than take the fast one's cores.
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
SLOWDOWN = flag("--cpu-slowdown", "1")
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
                      "--slowdown", SLOWDOWN,
                      "--ventilator", vent_ep, "--sink", sink_ep, "--exit-when-done"])
                for i in range(cpus)]
    report = json.loads(sink.finish().strip().splitlines()[-1])
    for p in [vent] + workers:
        try:
            p.finish(timeout=30)
        except Exception:
            p.kill(9)
    job = report.get("job") or {}
    return report["elapsed_ms"], (job.get("chunks_cut", 0), job.get("items_handed_on", 0),
                                  job.get("items_redone", 0), report.get("redispatched", 0))


def main():
    repeat = int(flag("--repeat", "3"))
    cpus_list = [int(n) for n in flag("--cpus", "0,1,2").split(",")]
    print("| policy | farm | elapsed ms (median) | runs | against %s alone "
          "| chunks cut / items handed on | items redone (chunks) or tasks redispatched |"
          % FAST)
    print("|---|---|---:|---|---:|---:|---:|")
    for policy in ("adaptive", "bands"):
        alone = None
        # The farms take turns, a run each per round: what drifts on a shared box over a
        # minute weighs on each alike.
        by_farm = {cpus: [] for cpus in cpus_list}
        for _ in range(repeat):
            for cpus in cpus_list:
                by_farm[cpus].append(farm(policy, cpus))
        for cpus in cpus_list:
            runs = sorted(by_farm[cpus])
            elapsed = [ms for ms, _ in runs]
            median, (cut, handed, redone, redispatched) = runs[len(runs) // 2]
            alone = alone or median
            slow = "" if SLOWDOWN == "1" else " (%sx slower)" % SLOWDOWN
            name = FAST + ("" if cpus == 0 else " + %d cpu%s" % (cpus, slow))
            print("| %s | %s | %.0f | %s | %.2f | %d / %d | %d |" % (
                policy, name, median, ", ".join("%.0f" % r for r in elapsed), median / alone,
                cut, handed, redone if policy == "adaptive" else redispatched))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
