#!/usr/bin/env bash
# Outputs to disk (`--outputs DIR`) against `dd conv=fsync` on the same filesystem: the
# `copy` kernel on the CPU backend over FILES random inputs making MIB in all (random, so
# the wire carries them raw), run by `conquer run` with --outputs on tmpfs (/dev/shm: the
# pipeline without the disk, since a copy job must keep its outputs) and on the measured
# filesystem, and dd writing MIB in one file there. Each output file is written, synced and renamed, and the
# directory synced, before its task counts. Prints a Markdown table: the job's
# finished_ms (median of REPEAT, min–max) and outputs MB/s (MIB over the median), and
# dd's MB/s (median). The work directory is made under TMPDIR (default /tmp): set it to
# measure another filesystem.
# Usage: scripts/outputs_bench.sh [MIB] [REPEAT] [BIN...]
#   MIB defaults to 256, REPEAT to 3, BIN to target/release/conquer; FILES is 16 and 256.
set -euo pipefail
mib="${1:-256}"
repeat="${2:-3}"
bins=("${@:3}")
if [ ${#bins[@]} -eq 0 ]; then bins=(target/release/conquer); fi
work="$(mktemp -d)"
shm="$(mktemp -d /dev/shm/conquer-outputs.XXXXXX)"
trap 'rm -rf "$work" "$shm"' EXIT

inputs() { # files
  rm -rf "$work/in"
  mkdir -p "$work/in"
  python3 - "$work/in" "$mib" "$1" <<'PY'
import os, sys
folder, mib, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = mib * 1024 * 1024 // files
for i in range(files):
    open(f"{folder}/in{i:04}.bin", "wb").write(os.urandom(size))
PY
}

# One job writing its outputs under DIR; prints its finished_ms.
job() { # bin, dir
  local bin="$1" dir="$2"
  rm -rf "$dir/out"
  "$bin" run --backend cpu --workers 2 --kernel copy --inputs "$work/in/*.bin" --json \
    --outputs "$dir/out" \
    2>/dev/null | python3 -c 'import json, sys; print(json.loads(sys.stdin.read().splitlines()[-1])["finished_ms"])'
}

# Median (min–max) of REPEAT runs of a command that prints ms, and MB/s over the median.
row() { # label, files, command...
  local label="$1" files="$2"
  shift 2
  local runs=()
  for _ in $(seq "$repeat"); do runs+=("$("$@")"); done
  printf '%s\n' "${runs[@]}" | python3 -c '
import statistics, sys
label, files, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
ms = sorted(float(l) for l in sys.stdin if l.strip())
median = statistics.median(ms)
print(f"| {label} | {files} | {median:.0f} ({ms[0]:.0f}–{ms[-1]:.0f}) | {mib * 1.048576 / (median / 1000):.0f} |")' "$label" "$files" "$mib"
}

dd_ms() {
  local start end
  start=$(date +%s%N)
  dd if=/dev/zero of="$work/dd.bin" bs=1M count="$mib" conv=fsync status=none
  end=$(date +%s%N)
  rm -f "$work/dd.bin"
  echo $(((end - start) / 1000000))
}

echo "| writer | files | ms (median, min–max) | MB/s |"
echo "|---|---:|---:|---:|"
row "dd bs=1M conv=fsync" 1 dd_ms
for files in 16 256; do
  inputs "$files"
  for bin in "${bins[@]}"; do
    name="$(basename "$bin")"
    row "$name --outputs on tmpfs" "$files" job "$bin" "$shm"
    row "$name --outputs" "$files" job "$bin" "$work"
  done
done
