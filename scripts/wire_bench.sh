#!/usr/bin/env bash
# Task inputs and outputs on the wire, raw (--no-compress) against LZ4, for outputs that
# compress (runs of equal bytes, as iteration counts are) and for random ones: the `copy`
# kernel on the CPU backend, each output its input. On loopback (`conquer run`), and with
# root across a veth link into a network namespace shaped by `tc` to each RATE, the worker
# inside, the sink and the ventilator outside. Prints a Markdown table: elapsed ms
# (median of REPEAT, min–max) and MB on the wire per direction.
# Usage: scripts/wire_bench.sh [BIN] [MIB] [REPEAT] [RATE...]
#   BIN defaults to target/release/conquer, MIB (the batch's total) to 64, REPEAT to 3,
#   RATE to "1gbit 100mbit".
set -euo pipefail
bin="$(realpath "${1:-target/release/conquer}")"
mib="${2:-64}"
repeat="${3:-3}"
rates=(1gbit 100mbit)
if [ $# -gt 3 ]; then rates=("${@:4}"); fi
work="$(mktemp -d)"
ns="cq-wire-$$"
cleanup() {
  ip link del "cqw$$a" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Inputs: 16 files making MIB in all, of each kind.
python3 - "$work" "$mib" <<'EOF'
import os, sys
work, mib = sys.argv[1], int(sys.argv[2])
size = mib * 1024 * 1024 // 16
for kind in ("runs", "random"):
    os.makedirs(f"{work}/{kind}", exist_ok=True)
    for i in range(16):
        data = bytes((j // 4096 + i) % 7 for j in range(size)) if kind == "runs" else os.urandom(size)
        open(f"{work}/{kind}/in{i:02}.bin", "wb").write(data)
EOF

# One batch; prints "elapsed_ms inputs_wire_MB outputs_wire_MB".
measure() {
  python3 -c '
import json, sys
r = json.loads(sys.stdin.read().splitlines()[-1])
w = r["wire"]
print(round(r["elapsed_ms"]), round(w["inputs_wire_bytes"] / 1e6, 1), round(w["outputs_wire_bytes"] / 1e6, 1))'
}

loopback() { # kind, extra flag
  rm -rf "$work/out"
  "$bin" run --backend cpu --workers 2 --kernel copy --inputs "$work/$1/*.bin" \
    --outputs "$work/out" --json $2 2>/dev/null | measure
}

link() { # kind, extra flag
  # Fresh logs: the ports are read from them, never from a previous run's.
  rm -rf "$work/out" "$work/sink.err" "$work/vent.err"
  "$bin" -v sink --bind tcp://0.0.0.0:0 --insecure --json --outputs "$work/out" \
    >"$work/sink.out" 2>"$work/sink.err" &
  local sink=$!
  local sink_port=""
  until sink_port="$(grep -o 'results socket listening on [^ ]*' "$work/sink.err" | sed 's/.*://')" && [ -n "$sink_port" ]; do sleep 0.05; done
  "$bin" -v ventilator --bind tcp://0.0.0.0:0 --insecure --sink "tcp://127.0.0.1:$sink_port" \
    --kernel copy --inputs "$work/$1/*.bin" --wait-workers 1 >/dev/null 2>"$work/vent.err" &
  local vent=$!
  local vent_port=""
  until vent_port="$(grep -o 'tasks socket listening on [^ ]*' "$work/vent.err" | sed 's/.*://')" && [ -n "$vent_port" ]; do sleep 0.05; done
  ip netns exec "$ns" "$bin" worker --name far --backend cpu --exit-when-done \
    --ventilator "tcp://10.232.0.1:$vent_port" --sink "tcp://10.232.0.1:$sink_port" $2 2>"$work/worker.err"
  wait "$sink" "$vent"
  measure <"$work/sink.out"
}

row() { # where, kind, mode, command...
  local where="$1" kind="$2" mode="$3"
  shift 3
  local runs=()
  for _ in $(seq "$repeat"); do runs+=("$("$@")"); done
  printf '%s\n' "${runs[@]}" | python3 -c '
import statistics, sys
where, kind, mode = sys.argv[1:4]
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
ms = sorted(r[0] for r in rows)
print(f"| {where} | {kind} | {mode} | {statistics.median(ms):.0f} ({ms[0]:.0f}–{ms[-1]:.0f}) | {rows[0][1]:.1f} | {rows[0][2]:.1f} |")' "$where" "$kind" "$mode"
}

echo "| link | outputs | wire | elapsed ms | inputs MB on the wire | outputs MB on the wire |"
echo "|---|---|---|---:|---:|---:|"
for kind in runs random; do
  row loopback "$kind" raw loopback "$kind" --no-compress
  row loopback "$kind" lz4 loopback "$kind" ""
done
if [ "$(id -u)" = 0 ]; then
  ip netns add "$ns"
  ip link add "cqw$$a" type veth peer name "cqw$$b"
  ip link set "cqw$$b" netns "$ns"
  ip addr add 10.232.0.1/30 dev "cqw$$a"
  ip link set "cqw$$a" up
  ip -n "$ns" addr add 10.232.0.2/30 dev "cqw$$b"
  ip -n "$ns" link set "cqw$$b" up
  ip -n "$ns" link set lo up
  for rate in "${rates[@]}"; do
    tc qdisc replace dev "cqw$$a" root tbf rate "$rate" burst 256kb latency 50ms
    tc -n "$ns" qdisc replace dev "cqw$$b" root tbf rate "$rate" burst 256kb latency 50ms
    for kind in runs random; do
      row "$rate" "$kind" raw link "$kind" --no-compress
      row "$rate" "$kind" lz4 link "$kind" ""
    done
  done
fi
