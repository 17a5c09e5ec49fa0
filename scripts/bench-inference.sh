#!/usr/bin/env bash
# Benchmarks crank-inference (tract, one worker, one thread) against onnxruntime (Python,
# one intra-op and one inter-op thread) on the reference models, in the same run, and prints
# a side-by-side table.
#
# Usage: scripts/bench-inference.sh [SECONDS_PER_CASE] [ROUNDS]
# Each round runs both runtimes one after the other; the table keeps each case's best round
# (lowest median), which filters out other processes competing for the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-0.5}"
rounds="${2:-3}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "building the release benchmark..." >&2
cargo bench -p crank-inference --bench engine --no-run >&2
for r in $(seq 1 "$rounds"); do
  echo "round $r/$rounds: crank-inference, then onnxruntime ($secs s per case)..." >&2
  cargo bench -q -p crank-inference --bench engine -- "$PWD/models" "$secs" >> "$out/all.jsonl"
  .venv/bin/python scripts/bench_ort.py "$PWD/models" "$secs" >> "$out/all.jsonl"
done

.venv/bin/python - "$out/all.jsonl" "$rounds" <<'PY'
import json, platform, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
for r in rows:
    if r["kind"] != "latency":
        continue
    k = (r["runtime"], r["model"], r["batch"])
    if k not in best or r["median_us"] < best[k]["median_us"]:
        best[k] = r
queue = {}
for r in rows:
    if r["kind"] == "queue":
        k = (r["model"], r["batching"])
        if k not in queue or r["per_second"] > queue[k]["per_second"]:
            queue[k] = r
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"\nCPU: {cpu}; one thread each; best of {sys.argv[2]} rounds per case.")
print("ours = submit-to-result through Engine (queue hand-off included); in-tract = the run alone;")
print("onnxruntime = InferenceSession.run from Python.\n")
hdr = (f"{'model':12} {'batch':>5} | {'ours med µs':>11} {'p99 µs':>9} {'inf/s':>9} {'in-tract µs':>11} |"
       f" {'ort-path µs':>11} | {'ort med µs':>10} {'p99 µs':>9} {'inf/s':>9} | {'ours/ort':>8} {'tract/ort':>9} {'path/ort':>8}")
print(hdr); print("-" * len(hdr))
for (rt, model, batch), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][2])):
    if rt != "crank":
        continue
    o = best.get(("onnxruntime", model, batch))
    p = best.get(("crank-ort-path", model, batch))
    ratio = r["median_us"] / o["median_us"] if o else float("nan")
    tract_ratio = r["run_median_us"] / o["median_us"] if o else float("nan")
    path_ratio = p["median_us"] / o["median_us"] if o and p else float("nan")
    print(f"{model:12} {batch:>5} | {r['median_us']:>11.1f} {r['p99_us']:>9.1f} {r['per_second']:>9.0f} {r['run_median_us']:>11.1f} |"
          + (f" {p['median_us']:>11.1f} |" if p else f" {'n/a':>11} |")
          + (f" {o['median_us']:>10.1f} {o['p99_us']:>9.1f} {o['per_second']:>9.0f}" if o else " " * 31)
          + f" | {ratio:>8.2f} {tract_ratio:>9.2f} {path_ratio:>8.2f}")
print("ort-path = submit to result on the engine's onnxruntime path (in-process, same wheel's library).")
print("\nBatching: 512 single-row jobs queued at once on one worker (best round):")
for (model, batching), r in sorted(queue.items()):
    print(f"  {model:12} batching {'on ' if batching else 'off'} {r['per_second']:>9.0f} jobs/s  mean batch {r['mean_batch']:.1f}")
PY
