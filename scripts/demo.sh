#!/usr/bin/env bash
# The main job: a real local crank-node mesh doing real tasks end to end.
#
# Builds the binaries, then starts on loopback: a local Horizon-compatible Stellar network, a
# bootstrap node, three worker nodes and a requester node (each its own process and data
# dir). Submits handwritten-digit tasks (an MLP and a CNN, both real ONNX models) through the
# requester, prints each prediction with its receipt, shows both sides' receipts, then settles
# what the requester owes as one batched Stellar payment and shows the workers' balances.
#
# Usage: scripts/demo.sh [TASKS]      (default 10 tasks; logs and data dirs under testnet/runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-10}

echo "== building crank-node and crank-horizon (first build takes several minutes)"
cargo build -q -p crank-node -p crank-testnet --bin crank-node --bin crank-horizon
BIN=${CARGO_TARGET_DIR:-target}/debug

RUN=testnet/runs/demo-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits for a line matching $2 in file $1 and prints its last field.
wait_for() {
  for _ in $(seq 1 300); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

echo "== local Stellar network (Horizon-compatible, in memory)"
"$BIN/crank-horizon" --listen 127.0.0.1:0 >"$RUN/horizon.log" 2>&1 &
PIDS+=($!)
HORIZON=$(wait_for "$RUN/horizon.log" "crank-horizon serving" | sed -E 's/.*serving (http[^ ]+).*/\1/')
echo "   $HORIZON"
export CRANK_STELLAR__HORIZON_URL="\"$HORIZON\""
export CRANK_STELLAR__FRIENDBOT_URL="\"$HORIZON/friendbot\""
export CRANK_STELLAR__NETWORK_PASSPHRASE='"Standalone Network ; February 2017"'
# The demo settles by hand at the end; payments go to the workers' own payout keys.
export CRANK_SETTLEMENT__AUTO=false
export CRANK_ADVERT__INTERVAL_SECS=2

echo "== bootstrap node"
"$BIN/crank-node" --data-dir "$RUN/bootstrap" bootstrap --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >"$RUN/bootstrap.out" 2>"$RUN/bootstrap.log" &
PIDS+=($!)
BOOT=$(wait_for "$RUN/bootstrap.out" "listening on /ip4/127.0.0.1/tcp" | awk '{print $3}')
echo "   $BOOT"

echo "== three workers (policy: work while on external power)"
for i in 1 2 3; do
  "$BIN/crank-node" --data-dir "$RUN/worker$i" join --bootstrap "$BOOT" --listen /ip4/127.0.0.1/tcp/0 \
    --api 127.0.0.1:0 --run-when charging >"$RUN/worker$i.out" 2>"$RUN/worker$i.log" &
  PIDS+=($!)
done
echo "== requester node (does not take work)"
CRANK_WORKER__ENABLED=false "$BIN/crank-node" --data-dir "$RUN/requester" join --bootstrap "$BOOT" \
  --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >"$RUN/requester.out" 2>"$RUN/requester.log" &
PIDS+=($!)
for n in worker1 worker2 worker3 requester; do wait_for "$RUN/$n.out" "listening on" >/dev/null; done
for n in worker1 worker2 worker3 requester; do
  "$BIN/crank-node" --data-dir "$RUN/$n" wallet fund >/dev/null
done

echo "== submitting $TASKS tasks through the requester"
ok=0
for i in $(seq 0 $((TASKS - 1))); do
  d=$((i % 10))
  if [ $((i % 2)) = 0 ]; then model=models/digits-mlp.onnx; input=models/samples/digit-$d.json
  else model=models/digits-cnn.onnx; input=models/samples/digit-$d-cnn.json; fi
  echo "-- task $((i + 1)): $(basename "$model") on a handwritten $d"
  if "$BIN/crank-node" --data-dir "$RUN/requester" submit --model "$model" --input "$input" --prefer cheap | sed 's/^/   /'; then
    ok=$((ok + 1))
  fi
done

echo "== requester status (receipts as requester)"
"$BIN/crank-node" --data-dir "$RUN/requester" status | sed 's/^/   /'
echo "== worker1 status (receipts as worker)"
"$BIN/crank-node" --data-dir "$RUN/worker1" status | sed 's/^/   /'

echo "== settling what the requester owes (one batched Stellar transaction)"
"$BIN/crank-node" --data-dir "$RUN/requester" wallet settle --all | sed 's/^/   /'
for i in 1 2 3; do
  echo "-- worker$i wallet"
  "$BIN/crank-node" --data-dir "$RUN/worker$i" wallet balance | sed 's/^/   /'
done

echo "== $ok of $TASKS tasks completed; logs and data dirs in $RUN"
[ "$ok" = "$TASKS" ]
