#!/usr/bin/env bash
# Idle memory of a joined node: starts a bootstrap node and one worker that joins it, waits,
# and prints the worker's resident set size (anonymous and file-backed), its threads and the
# binary's size.
# Usage: scripts/measure-idle-rss.sh [SECONDS]   (default 30)
#   BIN=path        measure this binary instead of building target/release/crank-node
#   NODE_ENV="K=V"  extra environment for the worker only, e.g. NODE_ENV="MALLOC_ARENA_MAX=2"
#                   or NODE_ENV="LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
set -euo pipefail
cd "$(dirname "$0")/.."
WAIT=${1:-30}
if [ -z "${BIN:-}" ]; then
  cargo build -q --release -p crank-node
  BIN=${CARGO_TARGET_DIR:-target}/release/crank-node
fi
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$DIR"' EXIT
"$BIN" --data-dir "$DIR/boot" bootstrap --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >"$DIR/boot.out" 2>/dev/null &
for _ in $(seq 1 100); do grep -q "listening on /ip4" "$DIR/boot.out" 2>/dev/null && break; sleep 0.1; done
BOOT=$(grep -m1 "listening on /ip4" "$DIR/boot.out" | awk '{print $3}')
# shellcheck disable=SC2086
env ${NODE_ENV:-} "$BIN" --data-dir "$DIR/node" join --bootstrap "$BOOT" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >/dev/null 2>&1 &
NODE=$!
sleep "$WAIT"
kib() { awk -v k="$1" '$1 == k":" {print $2}' "$2"; }
RSS=$(kib VmRSS "/proc/$NODE/status")
HWM=$(kib VmHWM "/proc/$NODE/status")
ANON=$(kib RssAnon "/proc/$NODE/status")
FILE=$(kib RssFile "/proc/$NODE/status")
THREADS=$(kib Threads "/proc/$NODE/status")
echo "idle RSS of a joined node after ${WAIT} s: $((RSS / 1024)) MiB (peak $((HWM / 1024)) MiB; anonymous $((ANON / 1024)) MiB, file-backed $((FILE / 1024)) MiB; $THREADS threads)${NODE_ENV:+ with $NODE_ENV}"
echo "binary: $(( $(stat -c %s "$BIN") / 1024 / 1024 )) MiB ($(stat -c %s "$BIN") bytes)"
