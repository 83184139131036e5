#!/usr/bin/env python3
"""The live view under a slowloris, for BENCHMARKS.md's fault tables, on the real binary.

Starts `conquer run --http 127.0.0.1:0` (1 sleep worker, a batch longer than the script),
then for each attack measures the process's threads (/proc/PID/task, sampled every 50 ms,
the most seen) and the latency of page loads (`/` and `/api/status` alternately, each on a
new connection, from 127.0.0.1) during the attack, and its peak RSS (VmHWM) at the end:

- none: the same page loads without an attack;
- slowloris: 1,000 connections from 127.0.0.2, each sending a request head that never
  ends, one byte a second on every connection still open;
- the same spread over 8 client addresses (127.0.0.2-9), 125 connections each;
- oversized heads: 4,000 connections from 8 addresses, each offering a head of 512 KiB
  (2 GB offered in all), as fast as the server takes them.

Usage: cargo build --release && python3 scripts/http_slowloris.py [SECONDS]
(SECONDS each attack lasts, default 10; CONQUER_BIN overrides the binary.) The peak RSS is
the process's since it started, so each row's includes the rows above it.
"""
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time

BIN = os.environ.get("CONQUER_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "target", "release", "conquer")
SLOW = 1000
HEAD = b"GET /api/status HTTP/1.1\r\nHost: conquer\r\nX-Slow: "


def start():
    p = subprocess.Popen([BIN, "run", "--workers", "1", "--backend", "sleep", "--tasks", "100000",
                          "--min-ms", "5", "--max-ms", "5", "--http", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        m = re.search(r"live view on http://([0-9.]+):(\d+)/", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, (m.group(1), int(m.group(2)))
    raise RuntimeError("the run never served its live view")


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def page(addr, path):
    started = time.monotonic()
    c = http.client.HTTPConnection(addr[0], addr[1], timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError("%s answered %d" % (path, r.status))
    return (time.monotonic() - started) * 1000


def connect_from(source, addr):
    s = socket.socket()
    s.bind((source, 0))
    s.connect(addr)
    return s


def slowloris(addr, sources, stop, opened):
    conns = []
    for i in range(SLOW):
        try:
            s = connect_from(sources[i % len(sources)], addr)
            s.sendall(HEAD)
            conns.append(s)
            opened[0] += 1
        except OSError:
            pass
    while not stop.wait(1.0):
        for s in list(conns):
            try:
                s.send(b"a")
            except OSError:
                conns.remove(s)
                s.close()
    for s in conns:
        s.close()


def oversized(addr, sources, stop, opened):
    line = b"X-Fill: " + b"a" * 1000 + b"\r\n"
    head = b"GET / HTTP/1.1\r\nHost: conquer\r\n" + line * (512 * 1024 // len(line))
    n = 0
    while not stop.is_set() and n < 4000:
        n += 1
        try:
            s = connect_from(sources[n % len(sources)], addr)
        except OSError:
            continue
        opened[0] += 1
        try:
            s.settimeout(5)
            s.sendall(head)
        except OSError:
            pass
        s.close()


def measure(name, attack, seconds, addr, pid):
    stop = threading.Event()
    opened = [0]
    attacker = None
    if attack:
        attacker = threading.Thread(target=attack, args=(addr, stop, opened), daemon=True)
    if attacker:
        attacker.start()
        time.sleep(1.0)  # let the attack build up before measuring
    most = [threads(pid)]

    def sample():
        while not stop.is_set():
            most[0] = max(most[0], threads(pid))
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        latencies.append(page(addr, "/" if len(latencies) % 2 else "/api/status"))
        time.sleep(0.01)
    stop.set()
    sampler.join()
    if attacker:
        attacker.join(timeout=30)
    latencies.sort()
    q = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))]
    return (name, opened[0], most[0], len(latencies), q(0.5), q(0.99), latencies[-1],
            peak_rss_mib(pid))


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    run, addr = start()
    try:
        one = ["127.0.0.2"]
        eight = ["127.0.0.%d" % i for i in range(2, 10)]
        rows = [
            measure("none", None, seconds, addr, run.pid),
            measure("slowloris: 1,000 connections from 1 address, a byte a second",
                    lambda a, s, o: slowloris(a, one, s, o), seconds, addr, run.pid),
            measure("slowloris: 1,000 connections from 8 addresses, a byte a second",
                    lambda a, s, o: slowloris(a, eight, s, o), seconds, addr, run.pid),
            measure("oversized heads: 4,000 x 512 KiB from 8 addresses",
                    lambda a, s, o: oversized(a, eight, s, o), seconds, addr, run.pid),
        ]
    finally:
        run.kill()
        run.wait()
    print("| attack on the live view | connections opened | threads (most) | page loads | p50 ms | p99 ms | max ms | peak RSS so far |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %d | %d | %d | %.1f | %.1f | %.1f | %.1f MiB |" % r)


if __name__ == "__main__":
    main()
