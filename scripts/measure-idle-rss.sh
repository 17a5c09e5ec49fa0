#!/usr/bin/env bash
# Idle memory of a joined node: starts a release bootstrap node and one worker that joins it,
# waits, and prints the worker's resident set size and the binary's size.
# Usage: scripts/measure-idle-rss.sh [SECONDS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
WAIT=${1:-30}
cargo build -q --release -p crank-node
BIN=${CARGO_TARGET_DIR:-target}/release/crank-node
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$DIR"' EXIT
"$BIN" --data-dir "$DIR/boot" bootstrap --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >"$DIR/boot.out" 2>/dev/null &
for _ in $(seq 1 100); do grep -q "listening on /ip4" "$DIR/boot.out" 2>/dev/null && break; sleep 0.1; done
BOOT=$(grep -m1 "listening on /ip4" "$DIR/boot.out" | awk '{print $3}')
"$BIN" --data-dir "$DIR/node" join --bootstrap "$BOOT" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >/dev/null 2>&1 &
NODE=$!
sleep "$WAIT"
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$NODE/status")
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$NODE/status")
echo "idle RSS of a joined node after ${WAIT} s: $((RSS / 1024)) MiB (peak $((HWM / 1024)) MiB)"
echo "release binary: $(( $(stat -c %s "$BIN") / 1024 / 1024 )) MiB ($(stat -c %s "$BIN") bytes)"
