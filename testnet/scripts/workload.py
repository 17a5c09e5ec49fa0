#!/usr/bin/env python3
"""Submits digit-classification tasks through a requester node's local API, a few at a time,
and records every outcome as one JSON line: completed (worker, receipt, prediction) or failed
(HTTP status and the node's error text). A request that gets no answer at all is recorded as
`lost`, which the summary treats as a broken invariant: a task may fail, but only with an error.

Usage: workload.py --api http://127.0.0.1:PORT --token-file DIR/api.token --tasks 20
                   [--concurrency 4] [--interval 0.2] [--out outcomes.jsonl] [--tag wave1]
                   [--first 0]
Only the standard library is used, so it runs under `ip netns exec` with any python3.
"""

import argparse
import base64
import concurrent.futures
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def summarise_check(check):
    """The spot check of a completed task: its outcome, and the (task, worker) of every
    extra run (the replica, a third run, an outvoted first answer), whose receipts the
    requester holds too."""
    if not check:
        return None
    runs = list(check.get("runs") or [])
    if check.get("first"):
        runs.append(check["first"])
    return {"outcome": check.get("outcome"), "extra_ms": check.get("extra_ms"),
            "runs": [{"task_id": r.get("task_id"), "worker": r.get("worker"),
                      "disputed": r.get("disputed")} for r in runs]}


def task_for(i, wide_every=0):
    """Task i alternates the MLP and the CNN over the ten sample digits; with wide_every=K,
    every Kth task is instead the wide MLP on the whole 360-row held-out test set."""
    if wide_every and i % wide_every == wide_every - 1:
        return "digits-wide", os.path.join(ROOT, "models/digits-wide.onnx"), \
            os.path.join(ROOT, "models/digits-test.json"), None
    digit = i % 10
    if i % 2 == 0:
        return "digits-mlp", os.path.join(ROOT, "models/digits-mlp.onnx"), \
            os.path.join(ROOT, f"models/samples/digit-{digit}.json"), digit
    return "digits-cnn", os.path.join(ROOT, "models/digits-cnn.onnx"), \
        os.path.join(ROOT, f"models/samples/digit-{digit}-cnn.json"), digit


_MODEL_B64 = {}


def model_base64(path):
    """The model's bytes for the request: the node reads no file on the API's behalf."""
    if path not in _MODEL_B64:
        with open(path, "rb") as f:
            _MODEL_B64[path] = base64.b64encode(f.read()).decode()
    return _MODEL_B64[path]


def submit(args, token, i, start_at):
    # Paced: task i starts no earlier than its slot, so faults land in the middle of the load.
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    name, model, sample, digit = task_for(i, args.wide_every)
    with open(sample, encoding="utf-8") as f:
        inputs = json.load(f)
    labels = None
    if digit is None:
        labels = inputs["labels"]
        inputs = inputs["features"]
    prefer = args.prefer.split(",")[i % len(args.prefer.split(","))]
    body = {"model_base64": model_base64(model), "input": inputs, "prefer": prefer}
    if args.deadline_ms:
        body["deadline_ms"] = args.deadline_ms
    req = urllib.request.Request(
        args.api.rstrip("/") + "/tasks",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    rec = {"index": i, "tag": args.tag, "model": name, "digit": digit, "prefer": prefer,
           "submitted_at": time.time()}
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=args.http_timeout) as resp:
            out = json.loads(resp.read())
        preds = [p.get("class") for p in out.get("predictions") or []]
        rec.update(status="completed", http=resp.status, task_id=out.get("task_id"),
                   worker=out.get("worker"), price_stroops=out.get("price_stroops"),
                   prediction=preds[0] if preds else None,
                   receipt=out.get("receipt"), check=summarise_check(out.get("check")))
        if labels is not None:
            rec.update(prediction=None, rows=len(labels),
                       correct=sum(1 for p, l in zip(preds, labels) if p == l))
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            err = json.loads(text).get("error") or text
        except ValueError:
            err = text
        rec.update(status="failed", http=e.code, error=err.strip() or f"HTTP {e.code}")
    except Exception as e:  # no answer at all: connection refused, reset, timed out
        rec.update(status="lost", http=None, error=f"{type(e).__name__}: {e}")
    rec["elapsed_s"] = round(time.monotonic() - start, 3)
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--api", required=True, help="requester API base URL")
    p.add_argument("--token-file", required=True)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--first", type=int, default=0, help="index of the first task")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", default="-", help="JSON lines file to append to")
    p.add_argument("--tag", default="", help="label stored with each outcome")
    p.add_argument("--interval", type=float, default=0.0,
                   help="seconds between task starts (0: as fast as the pool allows)")
    p.add_argument("--wide-every", type=int, default=0,
                   help="every Kth task runs the wide MLP on the 360-row test set (0: never)")
    p.add_argument("--prefer", default="cheap,fast,balanced,green",
                   help="auction preferences, cycled over the tasks")
    p.add_argument("--deadline-ms", type=int, default=0)
    p.add_argument("--http-timeout", type=float, default=180.0)
    args = p.parse_args()
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    out = sys.stdout if args.out == "-" else open(args.out, "a", encoding="utf-8")
    lock = threading.Lock()
    counts = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        t0 = time.monotonic()
        futures = [pool.submit(submit, args, token, i, t0 + n * args.interval)
                   for n, i in enumerate(range(args.first, args.first + args.tasks))]
        for fut in concurrent.futures.as_completed(futures):
            rec = fut.result()
            with lock:
                out.write(json.dumps(rec) + "\n")
                out.flush()
                counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            if rec["status"] != "completed":
                what = rec["error"][:160]
            elif "rows" in rec:
                what = f"worker {rec['worker'][:12]} right on {rec['correct']}/{rec['rows']} rows"
            else:
                what = f"worker {rec['worker'][:12]} says {rec['prediction']}"
            print(f"   task {rec['index']:>3} {rec['model']:<11} digit {rec['digit']} "
                  f"{rec['status']:<9} {rec['elapsed_s']:>6.2f}s  {what}", file=sys.stderr)
    print(f"   {args.tag or 'workload'}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
          file=sys.stderr)


if __name__ == "__main__":
    main()
