#!/usr/bin/env bash
# Benchmarks crank-inference against onnxruntime on every model of the conformance zoo, in
# the same run: one thread each, batch 1, each model's zoo input. Prints a Markdown table
# (the one in docs/MODELS.md): tract alone, end to end in-process, end to end through the
# isolated runner, onnxruntime, the ratios, the first (uncached) run and the plan kind.
#
# Usage: scripts/bench-zoo.sh [SECONDS_PER_CASE] [ROUNDS]
# Each round runs both runtimes one after the other; the table keeps each case's best round
# (lowest median), which filters out other processes competing for the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-1}"
rounds="${2:-2}"
export CRANK_ZOO="${CRANK_ZOO:-/var/tmp/crank-zoo}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

scripts/setup-python.sh >&2
.venv/bin/python scripts/zoo.py "$CRANK_ZOO" >&2
echo "building the release benchmark..." >&2
cargo bench -p crank-inference --bench zoo --no-run >&2
for r in $(seq 1 "$rounds"); do
  echo "round $r/$rounds: crank-inference, then onnxruntime ($secs s per case)..." >&2
  cargo bench -q -p crank-inference --bench zoo -- "$secs" >> "$out/all.jsonl"
  .venv/bin/python scripts/zoo.py --bench "$CRANK_ZOO" "$secs" >> "$out/all.jsonl"
done

.venv/bin/python - "$out/all.jsonl" "$rounds" "$CRANK_ZOO/manifest.json" <<'PY'
import json, platform, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
manifest = {m["name"]: m for m in json.load(open(sys.argv[3]))["models"]}
best = {}
for r in rows:
    k = (r["runtime"], r["model"])
    if k not in best or r["median_us"] < best[k]["median_us"]:
        best[k] = r
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
ort_version = next((r["ort_version"] for r in rows if r["runtime"] == "onnxruntime"), "?")
print(f"CPU: {cpu}; one thread each, batch 1; best of {sys.argv[2]} rounds per case; onnxruntime {ort_version}.")
print("tract = the run inside tract; in-process / runner = submit to result through the engine, "
      "on its worker thread or in an isolated runner process; ort = InferenceSession.run from Python.\n")
print("ort path = the same engine's optional onnxruntime path (libonnxruntime from the same wheel), "
      "submit to result through the isolated runner, as a worker runs a stranger's task.\n")
print("| model | MB | plan | first run ms | tract ms | in-process ms | runner ms | ort path ms | ort ms | tract/ort | runner/ort | ort path/ort |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios, path_ratios, alone_ratios = [], [], []
for name in manifest:
    c, o = best.get(("crank", name)), best.get(("onnxruntime", name))
    if not c or not o:
        print(f"| {name} | | | | | | | | | missing | | |")
        continue
    t, rr = c["run_median_us"] / o["median_us"], c["runner_median_us"] / o["median_us"]
    ratios.append(t)
    op = c.get("ort_path_runner_median_us")
    if op:
        path_ratios.append(op / o["median_us"])
        alone_ratios.append(c["ort_path_run_median_us"] / o["median_us"])
    op_ms = f"{op / 1e3:.2f}" if op else "n/a"
    op_ratio = f"{op / o['median_us']:.2f}" if op else "n/a"
    print(f"| {name} | {manifest[name]['bytes'] / 1e6:.1f} | {c['plan']} | {c['first_run_ms']:.0f} | "
          f"{c['run_median_us'] / 1e3:.2f} | {c['median_us'] / 1e3:.2f} | {c['runner_median_us'] / 1e3:.2f} | "
          f"{op_ms} | {o['median_us'] / 1e3:.2f} | {t:.2f} | {rr:.2f} | {op_ratio} |")
import statistics
if ratios:
    print(f"\ntract/ort: median {statistics.median(ratios):.2f}, best {min(ratios):.2f}, worst {max(ratios):.2f}; "
          f"{sum(r <= 1.0 for r in ratios)}/{len(ratios)} models at or under 1.0")
if path_ratios:
    print(f"ort path (runner, end to end)/ort: median {statistics.median(path_ratios):.2f}, "
          f"best {min(path_ratios):.2f}, worst {max(path_ratios):.2f}; "
          f"{sum(r <= 1.0 for r in path_ratios)}/{len(path_ratios)} models at or under 1.0")
    print(f"ort path (the run alone, inside ONNX Runtime)/ort: median {statistics.median(alone_ratios):.2f}, "
          f"worst {max(alone_ratios):.2f}; {sum(r <= 1.0 for r in alone_ratios)}/{len(alone_ratios)} at or under 1.0")
hits = sum(best[("crank", n)]["plan_hits"] for n in manifest if ("crank", n) in best)
misses = sum(best[("crank", n)]["plan_misses"] for n in manifest if ("crank", n) in best)
if hits + misses:
    print(f"per-shape plan cache (in-process engine, per round): {hits} hits, {misses} misses "
          f"({100 * hits / (hits + misses):.1f}% hit rate)")
PY
