#!/usr/bin/env bash
# Prepares gpu-bundle/ for a GPU machine that cannot reach crates.io: the release binary and
# the release integration-test binary, stripped. scripts/gpu-bench.sh uses them when it
# cannot build there. Pass gpu-bundle as a carried path to the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
cargo test --release --no-run -p conquer --test integration 2>&1 | tail -2
test_bin=$(ls -t target/release/deps/integration-* | grep -v '\.d$' | head -1)
rm -rf gpu-bundle && mkdir -p gpu-bundle
cp target/release/conquer gpu-bundle/conquer
cp "$test_bin" gpu-bundle/integration
strip gpu-bundle/conquer gpu-bundle/integration
ls -la gpu-bundle
