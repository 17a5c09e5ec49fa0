#!/usr/bin/env python3
"""onnxruntime side of scripts/bench-inference.sh: the same models, inputs and timing loop
as inference/benches/engine.rs, on one thread (intra_op = inter_op = 1).

Prints one JSON object per line: kind "latency", runtime "onnxruntime", model, batch,
iterations, median_us, p99_us, per_second.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = [("digits-mlp", False), ("digits-cnn", True), ("digits-wide", False)]
BATCHES = [1, 8, 32, 128]


def main():
    root = Path(__file__).resolve().parent.parent
    models = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "models"
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    features = np.array(json.loads((models / "digits-test.json").read_text())["features"],
                        dtype=np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for name, cnn in MODELS:
        sess = ort.InferenceSession(str(models / f"{name}.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        feed_name = sess.get_inputs()[0].name
        for batch in BATCHES:
            rows = features[np.arange(batch) % len(features)]
            x = rows.reshape(batch, 1, 8, 8) if cnn else rows
            x = np.ascontiguousarray(x)
            for _ in range(20):
                sess.run(None, {feed_name: x})
            lat = []
            start = time.perf_counter()
            while (time.perf_counter() - start < budget or len(lat) < 50) and len(lat) < 200_000:
                t = time.perf_counter()
                sess.run(None, {feed_name: x})
                lat.append((time.perf_counter() - t) * 1e6)
            lat = np.array(lat)
            print(json.dumps({
                "kind": "latency", "runtime": "onnxruntime", "model": name, "batch": batch,
                "iterations": len(lat),
                "median_us": float(np.percentile(lat, 50, method="nearest")),
                "p99_us": float(np.percentile(lat, 99, method="nearest")),
                "per_second": batch * len(lat) / (lat.sum() / 1e6),
            }), flush=True)


if __name__ == "__main__":
    main()
