#!/usr/bin/env bash
# The live page in a real browser. Installs Debian's chromium if it is missing (as root,
# idempotently), runs a batch with --http, loads the page headless twice mid-batch (the
# DOM after its script ran), checks from the DOM that every worker appears and that
# progress advances between the two reads, and saves a screenshot (docs/dashboard.png
# unless --screenshot PATH); then a coordinator (`serve --http`) with a finished and a
# running job, whose page must list both jobs in their states. Exits non-zero on the
# first check that fails.
# Usage: scripts/ui-check.sh [--screenshot PATH] [BINARY]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ui-check: chromium is missing; run as root to install it, or apt-get install chromium" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

shot="$repo/docs/dashboard.png"
if [ "${1:-}" = "--screenshot" ]; then
  shot="$2"
  shift 2
fi
bin="${1:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --locked
  bin="$repo/target/debug/conquer"
fi
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The live view's address, from an --events file once the role says it listens there.
live_view() {
  python3 -c 'import json,sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "listening" and e["socket"] == "http":
        print(e["endpoint"] + "/"); break' "$1" 2>/dev/null || true
}

workers=6
tasks=1200
# About 14 s of work: room for two cold browser starts mid-batch.
"$bin" run --workers "$workers" --tasks "$tasks" --min-ms 20 --max-ms 120 --backend sleep \
  --results "$work/results.csv" --http 127.0.0.1:0 --http-linger 30 --json \
  --events "$work/events.jsonl" > "$work/report.json" 2> "$work/run.log" &
pid=$!
url=""
for _ in $(seq 1 300); do
  url="$(live_view "$work/events.jsonl")"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "ui-check: the run never served its live view" >&2; cat "$work/run.log" >&2; exit 1; }

# Ready when the status names every worker and results are coming in.
held() { curl -fsS "${url}api/status" 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("held",0) if len(s.get("workers",[]))=='"$workers"' else 0)' 2>/dev/null || echo 0; }
for _ in $(seq 1 300); do
  [ "$(held)" -gt 0 ] && break
  sleep 0.1
done
[ "$(held)" -gt 0 ] || { echo "ui-check: the live view never showed results" >&2; cat "$work/run.log" >&2; exit 1; }

browse() {
  chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --user-data-dir="$work/profile" --virtual-time-budget=3000 "$@" 2>>"$work/chromium.log" || {
    echo "ui-check: chromium failed; its log:" >&2; tail -20 "$work/chromium.log" >&2; exit 1; }
}
dom_held() { python3 -c 'import re,sys; m=re.search(r"id=\"held\">([0-9,]+) /", sys.stdin.read()); print(m.group(1).replace(",","") if m else -1)'; }

browse --dump-dom "$url" > "$work/dom1.html"
first="$(dom_held < "$work/dom1.html")"
if [ "$first" -lt 0 ]; then
  echo "ui-check: the page showed no progress; its DOM:" >&2; head -c 2000 "$work/dom1.html" >&2; exit 1
fi
if [ "$first" -ge "$tasks" ]; then
  echo "ui-check: the batch ended before the second read (the machine is slow?); run again" >&2
  exit 1
fi
# The second read after the batch has moved on (the status, not a fixed pause, decides).
target=$(( $(held) + 20 ))
for _ in $(seq 1 300); do
  [ "$(held)" -ge "$target" ] && break
  sleep 0.1
done
browse --dump-dom "$url" > "$work/dom2.html"
second="$(dom_held < "$work/dom2.html")"
for n in $(seq 1 "$workers"); do
  grep -q "data-worker=\"worker-$n\"" "$work/dom2.html" || {
    echo "ui-check: worker-$n is missing from the page" >&2; exit 1; }
done
if [ "$first" -lt 0 ] || [ "$second" -le "$first" ]; then
  echo "ui-check: progress did not advance on the page ($first, then $second)" >&2
  exit 1
fi
# Each worker's row shows what it holds, has done and failed; the sink's side names the
# results file; the chart has drawn throughput samples.
for column in holding done failed busy "device busy" dispatches inputs outputs; do
  grep -q "<th class=\"num\"[^>]*>$column</th>" "$work/dom2.html" || {
    echo "ui-check: the workers table has no $column column" >&2; exit 1; }
done
grep -q "id=\"sink-results\"[^>]*>$work/results.csv" "$work/dom2.html" || {
  echo "ui-check: the sink's side does not name the results file; its DOM:" >&2
  grep -o '<section id="sink">.*</section>' "$work/dom2.html" | head -c 2000 >&2; exit 1; }
points="$(sed -n 's/.*id="series"[^>]*data-points="\([0-9]*\)".*/\1/p' "$work/dom2.html" | head -1)"
if [ -z "$points" ] || [ "$points" -lt 2 ]; then
  echo "ui-check: the throughput chart drew ${points:-no} samples" >&2; exit 1
fi
browse --hide-scrollbars --window-size=1280,860 --screenshot="$work/dashboard.png" "$url" >/dev/null
cp "$work/dashboard.png" "$shot"
# After the batch the final state stays up (--http-linger), and the page says finished.
finished() { curl -fsS "${url}api/status" 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin).get("finished", False)))' 2>/dev/null || echo 0; }
for _ in $(seq 1 600); do
  [ "$(finished)" = 1 ] && break
  sleep 0.1
done
[ "$(finished)" = 1 ] || { echo "ui-check: the live view never showed the batch finished" >&2; exit 1; }
browse --dump-dom "$url" > "$work/dom3.html"
grep -q 'id="phase">finished<' "$work/dom3.html" || {
  echo "ui-check: the page does not say finished after the batch; its DOM:" >&2
  head -c 2000 "$work/dom3.html" >&2; exit 1; }
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""

# A coordinator's page lists its jobs.
# Three free ports at once: each socket is held until all are bound, so no two are alike
# (one at a time, the system handed the sink's port out again as the control socket's).
read -r p_vent p_sink p_control < <(python3 -c 'import socket
held = [socket.socket() for _ in range(3)]
for s in held: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))')
vent="tcp://127.0.0.1:$p_vent"; sink="tcp://127.0.0.1:$p_sink"; control="tcp://127.0.0.1:$p_control"
"$bin" serve --state "$work/state" --bind "$vent" --results-bind "$sink" --control "$control" \
  --http 127.0.0.1:0 --heartbeat-ms 100 --events "$work/serve.jsonl" 2> "$work/serve.log" &
pid=$!
"$bin" worker --backend sleep --name w1 --ventilator "$vent" --sink "$sink" --heartbeat-ms 100 \
  2> "$work/w1.log" &
wpid=$!
trap 'kill "$wpid" 2>/dev/null || true; cleanup' EXIT
url=""
for _ in $(seq 1 300); do
  url="$(live_view "$work/serve.jsonl")"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "ui-check: the coordinator never served its live view" >&2; cat "$work/serve.log" >&2; exit 1; }
"$bin" submit --coordinator "$control" --tasks 5 --max-ms 5 --name quick --wait >/dev/null 2>&1
long="$("$bin" submit --coordinator "$control" --tasks 2000 --min-ms 20 --max-ms 20 --name long)"
state() { curl -fsS "${url}api/status" 2>/dev/null | python3 -c 'import json,sys; print(" ".join(j["state"] for j in json.load(sys.stdin).get("jobs", [])))' 2>/dev/null || true; }
for _ in $(seq 1 300); do
  [ "$(state)" = "done running" ] && break
  sleep 0.1
done
[ "$(state)" = "done running" ] || { echo "ui-check: the coordinator's jobs are $(state)" >&2; exit 1; }
browse --dump-dom "$url" > "$work/dom4.html"
for row in "data-job=\"1\".*>done<" "data-job=\"$long\".*>running<"; do
  grep -q "$row" "$work/dom4.html" || {
    echo "ui-check: the coordinator's page has no row $row; its DOM:" >&2
    grep -o '<section id="jobs-section".*</section>' "$work/dom4.html" | head -c 2000 >&2; exit 1; }
done
if grep -q '<section id="jobs-section" hidden' "$work/dom4.html"; then
  echo "ui-check: the coordinator's page hides its jobs" >&2; exit 1
fi
echo "ui-check: the page listed all $workers workers with their columns, the sink's results file and $points throughput samples, progress went from $first to $second held, then said finished; screenshot in $shot; a coordinator's page listed its done and running jobs"
