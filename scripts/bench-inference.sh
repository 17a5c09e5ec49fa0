#!/usr/bin/env bash
# Benchmarks crank-inference (tract, one worker, one thread) against onnxruntime (Python,
# one intra-op and one inter-op thread) on the reference models, in the same run, and prints
# a side-by-side table. Usage: scripts/bench-inference.sh [SECONDS_PER_CASE]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-1.0}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "building the release benchmark..." >&2
cargo bench -p crank-inference --bench engine --no-run >&2
echo "running crank-inference ($secs s per case)..." >&2
cargo bench -p crank-inference --bench engine -- "$PWD/models" "$secs" > "$out/crank.jsonl"
echo "running onnxruntime ($secs s per case)..." >&2
.venv/bin/python scripts/bench_ort.py "$PWD/models" "$secs" > "$out/ort.jsonl"

.venv/bin/python - "$out/crank.jsonl" "$out/ort.jsonl" <<'PY'
import json, platform, sys
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f) if l.strip()]
lat = {(r["runtime"], r["model"], r["batch"]): r for r in rows if r["kind"] == "latency"}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"\nCPU: {cpu}; one thread each; latency = submit-to-result (ours) / session.run (onnxruntime)\n")
hdr = f"{'model':12} {'batch':>5} | {'ours med µs':>11} {'p99 µs':>9} {'inf/s':>10} {'in-tract µs':>11} | {'ort med µs':>10} {'p99 µs':>9} {'inf/s':>10} | {'ours/ort':>8}"
print(hdr); print("-" * len(hdr))
for (rt, model, batch), r in sorted(lat.items(), key=lambda kv: (kv[0][1], kv[0][2])):
    if rt != "crank":
        continue
    o = lat.get(("onnxruntime", model, batch))
    ratio = r["median_us"] / o["median_us"] if o else float("nan")
    print(f"{model:12} {batch:>5} | {r['median_us']:>11.1f} {r['p99_us']:>9.1f} {r['per_second']:>10.0f} {r['run_median_us']:>11.1f} | "
          + (f"{o['median_us']:>10.1f} {o['p99_us']:>9.1f} {o['per_second']:>10.0f}" if o else " " * 31)
          + f" | {ratio:>8.2f}")
print("\nBatching (512 single-row jobs queued at once, one worker):")
for r in rows:
    if r["kind"] == "queue":
        print(f"  {r['model']:12} batching={'on ' if r['batching'] else 'off'}  {r['per_second']:>9.0f} jobs/s  mean batch {r['mean_batch']:.1f}")
PY
