#!/usr/bin/env bash
# Follows the README's install section on a fresh clone: `cargo install` into a temporary
# root, then the first steps of the GPU-box section (`conquer info`, completions, the man
# page) from the installed binary. Debug profile and this checkout's target folder, so the
# dependencies already built are reused; a release install is the same command without
# --debug. Exits non-zero on the first step that fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

git clone --quiet "$repo" "$work/conquer"
CARGO_TARGET_DIR="$repo/target" cargo install --quiet --locked --debug \
  --path "$work/conquer" --root "$work/root"
bin="$work/root/bin/conquer"

"$bin" --version
"$bin" info
"$bin" info --json > "$work/info.json"
grep -q '"adapters"' "$work/info.json"
"$bin" completions bash > "$work/conquer.bash"
test -s "$work/conquer.bash"
"$bin" man > "$work/conquer.1"
test -s "$work/conquer.1"
echo "install-check: installed and ran $bin"
