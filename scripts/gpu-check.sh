#!/usr/bin/env bash
# The GPU check in one command: builds crank-inference with `--features gpu` (release),
# prints the adapters wgpu sees, runs the GPU agreement tests (every output against tract's)
# and the GPU-versus-tract benchmark.
#
#   scripts/gpu-check.sh               build here, then run
#   scripts/gpu-check.sh pack DIR      build, and copy the two binaries and the models into
#                                      DIR, for a machine without cargo or internet
#   scripts/gpu-check.sh run DIR       run a packed DIR (on the GPU machine)
#
# Environment: BENCH_SECONDS (default 2) per benchmark row; BENCH_BATCHES (default "1 64");
# WGPU_BACKEND and WGPU_ADAPTER_NAME pick the adapter. A machine without a Vulkan loader
# needs libvulkan1; software Vulkan for a machine without a GPU is lavapipe
# (apt-get install mesa-vulkan-drivers libvulkan1).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-here}
dir=${2:-}
seconds=${BENCH_SECONDS:-2}
read -r -a batches <<<"${BENCH_BATCHES:-1 64}"

# Path of the executable cargo reports for a target kind ("test" or "bench") named gpu.
executable() {
  python3 -c '
import json, sys
kind = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target") or {}
    if m.get("executable") and t.get("name") == "gpu" and kind in t.get("kind", []):
        print(m["executable"])
' "$1"
}

pack() {
  local d=$1
  echo "== building (release, --features gpu)"
  local test bench
  test=$(cargo test --release -p crank-inference --features gpu --test gpu --no-run \
    --message-format=json-render-diagnostics | executable test)
  bench=$(cargo bench -p crank-inference --features gpu --bench gpu --no-run \
    --message-format=json-render-diagnostics | executable bench)
  mkdir -p "$d/models"
  cp "$test" "$d/gpu-test"
  cp "$bench" "$d/gpu-bench"
  cp -r models/. "$d/models/"
  echo "packed into $d ($(du -sh "$d" | cut -f1))"
}

run() {
  local d=$1
  export CRANK_MODELS_DIR="$d/models"
  echo "== adapters"
  "$d/gpu-bench" --list-adapters
  echo "== agreement tests (GPU against tract)"
  "$d/gpu-test" --test-threads=1 --nocapture
  echo "== benchmark (${seconds} s per row, batches ${batches[*]})"
  "$d/gpu-bench" "$seconds" "${batches[@]}"
}

case "$mode" in
  here)
    d=$(mktemp -d)
    trap 'rm -rf "$d"' EXIT
    pack "$d"
    run "$d"
    ;;
  pack)
    [ -n "$dir" ] || { echo "usage: $0 pack DIR" >&2; exit 2; }
    pack "$dir"
    ;;
  run)
    [ -n "$dir" ] || { echo "usage: $0 run DIR" >&2; exit 2; }
    run "$dir"
    ;;
  *)
    echo "usage: $0 [here | pack DIR | run DIR]" >&2
    exit 2
    ;;
esac
