#!/usr/bin/env bash
# GPU benchmark and test run for a machine with a GPU. Builds in release (or, where crates
# cannot be fetched, uses gpu-bundle/ from scripts/gpu-bundle.sh), prints the
# adapters and the Vulkan driver files present, runs the GPU tests against the hardware
# adapter, and measures: spin throughput against the card's 32-bit issue ceiling, per-task overhead
# with zero-work tasks at 1 and several in flight, and the seed batch on one GPU worker
# against sleep; and the data kernels: a 3840x2160 Mandelbrot picture (verified against the
# CPU) and the search kernel on the GPU, and the kernels suite (Mandelbrot and search per
# backend, payloads through the pipeline). Everything lands in the output folder (first
# argument, else $OUT, else ./gpu-bench-out): log.txt, info.txt, tests.txt,
# device/bench.{md,json}, backends/bench.{md,json}, kernels/bench.{md,json}, mandelbrot.png, big.png, big-job.json,
# mandelbrot.json, search.json.
#
# GPU_BENCH_BACKEND=software GPU_BENCH_BIG=2048 dry-runs every step on the software adapter
# (no GPU test requirement; the 16384 x 16384 jobs at 2048 x 2048) before a card's time is
# spent on it. INT_PEAK_GOPS overrides the ceiling; otherwise it is SMs x 128 lanes x max SM clock for the
# NVIDIA cards named below (H100 SXM/H200: 132 SMs, H100 PCIe: 114): each SM's four
# schedulers issue one 32-lane instruction a clock, whichever pipe runs it, so no 32-bit
# operation mix goes faster (against the 64 INT32 lanes alone spin measured 169 %).
set -uo pipefail
cd "$(dirname "$0")/.."
backend="${GPU_BENCH_BACKEND:-gpu}"
big="${GPU_BENCH_BIG:-16384}"
out="${1:-${OUT:-gpu-bench-out}}"
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1

echo "== machine"
uname -a
nproc
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>&1 || echo "nvidia-smi: not available"
echo "== vulkan driver files"
for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d; do
  echo "$d:"; ls -l "$d" 2>&1 | sed 's/^/  /'
done

echo "== build"
bin=target/release/conquer
if cargo build --release --offline 2>&1 | tail -3 && [ -x "$bin" ]; then
  test_cmd=(cargo test --release --offline -p conquer --test integration gpu)
elif [ -x gpu-bundle/conquer ]; then
  # No crates here: use the binaries scripts/gpu-bundle.sh prepared and carried along.
  echo "cargo cannot build here; using gpu-bundle/"
  bin=gpu-bundle/conquer
  export CONQUER_BIN="$PWD/gpu-bundle/conquer"
  test_cmd=(gpu-bundle/integration gpu::)
else
  echo "cannot build, and no gpu-bundle/ (run scripts/gpu-bundle.sh and carry gpu-bundle)"
  exit 1
fi
"$bin" info | tee "$out/info.txt"

peak="${INT_PEAK_GOPS:-}"
if [ -z "$peak" ] && command -v nvidia-smi >/dev/null; then
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  mhz=$(nvidia-smi --query-gpu=clocks.max.sm --format=csv,noheader,nounits | head -1 | tr -d ' ')
  case "$name" in
    *H100*PCIe*) sms=114 ;;
    *H100*|*H200*) sms=132 ;;
    *) sms= ;;
  esac
  if [ -n "$sms" ] && [ -n "$mhz" ]; then
    peak=$(python3 -c "print($sms * 128 * $mhz / 1000)")
    echo "32-bit issue ceiling for $name: $sms SMs x 128 lanes x $mhz MHz = $peak Gop/s"
  fi
fi
peak_arg=()
[ -n "$peak" ] && peak_arg=(--int-peak-gops "$peak")

echo "== GPU tests (hardware adapter required, unless dry-run on another backend)"
require_gpu=1
[ "$backend" = gpu ] || require_gpu=0
CONQUER_REQUIRE_GPU=$require_gpu CONQUER_REQUIRE_ADAPTER=0 timeout 300 "${test_cmd[@]}" 2>&1 \
  | tee "$out/tests.txt" | tail -15

echo "== device suite: spin throughput, per-task overhead"
timeout 180 "$bin" bench --suite device --repeat 5 "${peak_arg[@]}" --out "$out/device"

echo "== backends suite: seed batch on one GPU worker against sleep"
timeout 120 "$bin" bench --suite backends --backends "sleep,$backend" --units-per-ms 16384 --repeat 3 \
  --out "$out/backends"
echo "== data kernels on the GPU: Mandelbrot 3840x2160 (verified), search"
timeout 120 "$bin" run --backend "$backend" --workers 1 --kernel mandelbrot --width 3840 --height 2160 \
  --max-iter 1000 --centre=-0.7436,0.1318 --view-width 0.012 --verify \
  --image "$out/mandelbrot.png" --json > "$out/mandelbrot.json"
echo "mandelbrot exit $?"; tail -c 600 "$out/mandelbrot.json"; echo
timeout 120 "$bin" run --backend "$backend" --workers 1 --kernel search --bits 24 --keys 4294967295 \
  --keys-per-task 67108864 --json > "$out/search.json"
echo "search exit $?"; tail -c 400 "$out/search.json"; echo

echo "== the card's fill: the dispatch size from which it runs near its full rate"
timeout 60 "$bin" run --backend "$backend" --workers 1 --kernel mandelbrot --width 64 --height 64 \
  --log debug 2>&1 >/dev/null | grep "full rate" || echo "no fill line"
echo "== workgroup sizes by measurement (--tune-workgroups): what each kernel chose, and the cost"
for k in "mandelbrot --width 3840 --height 2160 --max-iter 1000" "search --bits 24 --keys 4294967295 --keys-per-task 67108864"; do
  timeout 120 "$bin" run --backend "$backend" --workers 1 --kernel $k --tune-workgroups --json --log debug \
    > "$out/tuned.json" 2> "$out/tuned.log"
  echo "tuned ($k) exit $?"; grep "workgroups of" "$out/tuned.log"; tail -c 300 "$out/tuned.json"; echo
done
echo "== the README's view carved adaptively on the card (chunks no smaller than its fill)"
timeout 120 "$bin" run --backend "$backend" --workers 1 --kernel mandelbrot --width 3840 --height 2160 \
  --max-iter 1000 --chunking adaptive --json > "$out/view-adaptive.json"
echo "view adaptive exit $?"; tail -c 600 "$out/view-adaptive.json"; echo

echo "== a divisible job on the GPU: Mandelbrot 16384x16384 carved adaptively"
timeout 180 "$bin" run --backend "$backend" --workers 1 --kernel mandelbrot --width "$big" --height "$big" \
  --chunking adaptive --image "$out/big.png" --json > "$out/big-job.json"
echo "big job exit $?"; tail -c 600 "$out/big-job.json"; echo

echo "== exact Mandelbrot on the card: the README's view, the default view and a 1e-12 view"
for view in "--width 1280 --height 720 --max-iter 1000 --centre=-0.7436,0.1318 --view-width 0.012" \
            "--width 1920 --height 1080" \
            "--width 256 --height 256 --max-iter 4000 --centre=-0.743643887037151,0.131825904205330 --view-width 1e-12"; do
  # shellcheck disable=SC2086
  timeout 120 "$bin" run --backend "$backend" --workers 2 --kernel mandelbrot $view --verify --json \
    > "$out/exact.json"
  echo "exact ($view) exit $?"; tail -c 300 "$out/exact.json"; echo
done

echo "== --replicate 10 on the card: two GPU workers, and the cost against none"
for rep in 0 10; do
  timeout 120 "$bin" run --backend "$backend" --workers 2 --kernel mandelbrot --width 3840 --height 2160 \
    --max-iter 1000 --replicate $rep --json > "$out/replicate-$rep.json"
  echo "replicate $rep exit $?"; tail -c 300 "$out/replicate-$rep.json"; echo
done

echo "== 1 GPU + 8 cpu workers against the card alone (the end game), bands and adaptive"
if command -v python3 >/dev/null; then
  CONQUER_BIN="$bin" timeout 300 python3 scripts/endgame_bench.py --repeat 1 --fast "$backend" \
    --cpus 0,1,8 --size "$big" | tee "$out/endgame.md"
fi

echo "== kernels suite: per backend, and payloads through the pipeline"
timeout 240 "$bin" bench --suite kernels --repeat 3 --mandelbrot 3840x2160 --max-iter 1000 \
  --search-keys 1073741824 --out "$out/kernels"
echo "== done: results in $out"
