#!/usr/bin/env python3
"""Summarises a testnet run and checks its invariants; exits 1 when one breaks.

Reads what `testnet.sh collect` saved under RUN/collect (each node's /status, /receipts,
/wallet, /wallet/history and the local Horizon's /admin/state), the workload's outcomes
(RUN/outcomes.jsonl) and the fault log (RUN/events.tsv). Prints a table, or JSON with --json;
RUN/summary.json is always written.

Invariants (each breach is listed with the task or transaction it concerns):
  * no task vanished: every submitted task has an outcome, completed or failed with an error;
  * a completed task has its receipt on both sides: in the requester's ledger and in the
    worker's, the same receipt (same signatures), signed by the worker and counter-signed by
    the requester;
  * no receipt without a task: every receipt the requester or a worker holds belongs to a
    completed task of this run (or to one of its spot check's extra runs);
  * a restarted node keeps its identity (and so its key and ledger);
  * nothing paid twice: each paying transaction on Horizon belongs to exactly one settled
    settlement, no receipt is in two settled settlements, and what each worker received on
    Horizon equals the sum of its receipts on the requester's side and its balance;
  * a worker's ledger matches its payments: the receipts it holds add up to what it received;
  * nothing left unpaid after settling everything.
"""

import argparse
import collections
import json
import os
import re
import sys

FRIENDBOT_STROOPS = 100_000_000_000


def load(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def reason_class(text):
    """Groups error texts: hex ids, numbers and addresses become placeholders."""
    t = re.sub(r"\b[0-9a-f]{16,}\b", "<id>", text or "")
    t = re.sub(r"12D3KooW[1-9A-HJ-NP-Za-km-z]+", "<peer>", t)
    t = re.sub(r"/ip4/[^ ,;)]+", "<addr>", t)
    t = re.sub(r"\b\d+(\.\d+)?\b", "<n>", t)
    return t[:200]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", default="summary.json", help="file name under RUN for the JSON")
    args = p.parse_args()
    run = args.run
    col = os.path.join(run, "collect")
    breaches = []

    def breach(kind, detail):
        breaches.append({"invariant": kind, "detail": detail})

    # --- the workload ---------------------------------------------------------------------
    outcomes = []
    if os.path.exists(os.path.join(run, "outcomes.jsonl")):
        with open(os.path.join(run, "outcomes.jsonl"), encoding="utf-8") as f:
            outcomes = [json.loads(line) for line in f if line.strip()]
    events = []
    if os.path.exists(os.path.join(run, "events.tsv")):
        with open(os.path.join(run, "events.tsv"), encoding="utf-8") as f:
            for line in f:
                ts, _, what = line.rstrip("\n").partition("\t")
                events.append({"t": float(ts), "event": what})
    t0 = events[0]["t"] if events else 0.0
    submitted = sum(int(m.group(1)) for e in events
                    for m in [re.match(r"submit (\d+) tasks", e["event"])] if m)
    if len(outcomes) != submitted:
        breach("task lost without an error",
               f"{submitted} tasks submitted, {len(outcomes)} outcomes recorded")
    by_index = collections.Counter(o["index"] for o in outcomes)
    for i, n in by_index.items():
        if n > 1:
            breach("task lost without an error", f"task {i} has {n} outcomes")
    completed = [o for o in outcomes if o["status"] == "completed"]
    failed = [o for o in outcomes if o["status"] == "failed"]
    lost = [o for o in outcomes if o["status"] == "lost"]
    for o in lost:
        breach("task lost without an error",
               f"task {o['index']} ({o['tag']}): no answer from the requester: {o['error']}")
    for o in failed:
        if not (o.get("error") or "").strip():
            breach("task lost without an error", f"task {o['index']} failed with no error text")
    failed_by_reason = collections.Counter(reason_class(o["error"]) for o in failed)
    single = [o for o in completed if "rows" not in o]
    batches = [o for o in completed if "rows" in o]
    right = sum(1 for o in single if o.get("prediction") == o["digit"])
    batch_acc = collections.Counter(f"{o['correct']}/{o['rows']}" for o in batches)
    prices = sorted(o.get("price_stroops") or 0 for o in completed)
    price_stats = {}
    if prices:
        price_stats = {"min": prices[0], "median": prices[len(prices) // 2], "max": prices[-1],
                       "total": sum(prices),
                       "tasks_at_100000_or_more": sum(1 for x in prices if x >= 100_000)}
    waves = collections.OrderedDict()
    for o in sorted(outcomes, key=lambda o: o["index"]):
        w = waves.setdefault(o["tag"], collections.Counter())
        w[o["status"]] += 1

    # --- the nodes ------------------------------------------------------------------------
    env = {}
    for name in ("env.sh", "env.stopped.sh"):
        path = os.path.join(run, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    k, _, v = line.strip().partition("=")
                    env[k] = v.strip("'")
    nodes = env.get("NODES", "").split()
    workers = [n for n in nodes if n.startswith("worker")]
    status = {n: load(os.path.join(col, f"{n}.status.json")) for n in nodes}
    receipts = {n: load(os.path.join(col, f"{n}.receipts.json")) for n in nodes}
    wallet = {n: load(os.path.join(col, f"{n}.wallet.json")) for n in nodes}
    ids = {}
    for n in nodes:
        s = status.get(n)
        if isinstance(s, dict) and s.get("node_id"):
            ids[n] = s["node_id"]
        else:
            try:
                with open(os.path.join(run, n, "node_id"), encoding="utf-8") as f:
                    ids[n] = f.read().strip()
            except OSError:
                pass
    name_of = {v: k for k, v in ids.items()}
    requester_id = ids.get("requester")
    missing_sides = [n for n in ["requester"] + workers if not isinstance(receipts.get(n), list)]
    for n in missing_sides:
        breach("receipt on both sides", f"{n}'s receipts could not be read (node down?)")
    if os.path.exists(os.path.join(run, "identity-changed")):
        with open(os.path.join(run, "identity-changed"), encoding="utf-8") as f:
            for n in f.read().split():
                breach("restart keeps identity", f"{n} came back with another node id")

    def key(r):
        b = r["receipt"]["inner"]["body"]
        return (b["task_id"], b["worker"])

    req_side = {key(r): r for r in receipts.get("requester") or [] if r.get("role") == "requester"}
    worker_side = {}
    for n in workers:
        for r in receipts.get(n) or []:
            if r.get("role") == "worker":
                worker_side[key(r)] = (n, r)

    def check_signed(where, r):
        rc = r["receipt"]
        b = rc["inner"]["body"]
        problems = []
        if rc["inner"].get("signer") != b["worker"]:
            problems.append("not signed by its worker")
        if rc.get("countersigner") != b["requester"] or b["requester"] != requester_id:
            problems.append("not counter-signed by the requester")
        if not re.fullmatch(r"[0-9a-f]{128}", rc.get("countersignature") or ""):
            problems.append("no counter-signature")
        if not re.fullmatch(r"[0-9a-f]{128}", rc["inner"].get("signature") or ""):
            problems.append("no worker signature")
        for pr in problems:
            breach("receipt counter-signed", f"{where} receipt for task {b['task_id'][:16]}: {pr}")

    both = 0
    for o in completed:
        k = (o.get("task_id"), o.get("worker"))
        rq = req_side.get(k)
        wk = worker_side.get(k)
        wname = name_of.get(o.get("worker"), (o.get("worker") or "?")[:12])
        if rq is None and "requester" not in missing_sides:
            breach("receipt on both sides", f"task {o['index']} completed by {wname}: "
                   "no receipt in the requester's ledger")
        if wk is None and wname not in missing_sides:
            breach("receipt on both sides", f"task {o['index']} completed by {wname}: "
                   "no receipt in the worker's ledger")
        if rq is not None:
            check_signed("requester's", rq)
        if wk is not None:
            check_signed(f"{wk[0]}'s", wk[1])
        if rq is not None and wk is not None:
            if rq["receipt"] != wk[1]["receipt"]:
                breach("receipt on both sides",
                       f"task {o['index']}: the requester's and {wname}'s receipts differ")
            elif o.get("receipt") is not None and o["receipt"] != rq["receipt"]:
                breach("receipt on both sides",
                       f"task {o['index']}: the receipt returned differs from the stored one")
            else:
                both += 1
    done_keys = {(o.get("task_id"), o.get("worker")) for o in completed}
    # A spot check's extra runs are tasks of their own, with receipts on both sides.
    for o in completed:
        for r in ((o.get("check") or {}).get("runs") or []):
            done_keys.add((r.get("task_id"), r.get("worker")))
    for k, r in req_side.items():
        if k not in done_keys:
            breach("no receipt without a task",
                   f"requester holds a receipt for task {k[0][:16]} (worker "
                   f"{name_of.get(k[1], k[1][:12])}) that the workload did not see complete")
    for k, (n, r) in worker_side.items():
        if k not in req_side and "requester" not in missing_sides:
            breach("no receipt without a task",
                   f"{n} holds a counter-signed receipt for task {k[0][:16]} the requester lacks")

    # --- settlement -----------------------------------------------------------------------
    history = load(os.path.join(col, "requester.history.json"), []) or []
    horizon = load(os.path.join(col, "horizon.state.json"), {}) or {}
    payer = (wallet.get("requester") or {}).get("address")
    payments = [p for p in horizon.get("payments", []) if p.get("from") == payer]
    settled = [h for h in history if isinstance(h.get("state"), dict) and "settled" in h["state"]]
    pending = [h for h in history if h.get("state") == "pending"]
    failed_intents = [h for h in history if isinstance(h.get("state"), dict)
                      and "failed" in h["state"]]
    by_tx = collections.defaultdict(list)
    for h in settled:
        by_tx[h["draft"]["tx_hash"]].append(h)
    pay_by_tx = collections.defaultdict(list)
    for pay in payments:
        pay_by_tx[pay["tx_hash"]].append(pay)
    for tx, pays in pay_by_tx.items():
        if len(by_tx.get(tx, [])) != 1:
            breach("no payment made twice",
                   f"transaction {tx[:16]} paid {sum(x['amount'] for x in pays)} stroops on Horizon "
                   f"but matches {len(by_tx.get(tx, []))} settled settlements")
    for tx, hs in by_tx.items():
        want = collections.Counter()
        for line in hs[0]["draft"]["manifest"]["lines"]:
            want[line["payout"]] += line["amount_stroops"]
        got = collections.Counter()
        for pay in pay_by_tx.get(tx, []):
            got[pay["to"]] += pay["amount"]
        if want != got:
            breach("no payment made twice",
                   f"settlement {hs[0]['id']} (tx {tx[:16]}): manifest {dict(want)} but Horizon "
                   f"shows {dict(got)}")
    paid_receipts = collections.Counter()
    for h in settled:
        for line in h["draft"]["manifest"]["lines"]:
            paid_receipts[(line["task"], line["worker"])] += 1
    for k, n in paid_receipts.items():
        if n > 1:
            breach("no payment made twice",
                   f"receipt for task {k[0][:16]} is in {n} settled settlements")
    # A receipt the requester disputes (its outputs never came, or broke the receipt's hash)
    # is never paid, on purpose: counted apart, not as unpaid.
    def disputed(r):
        return str(r.get("check", "passed")).startswith(("disputed", "awaiting outputs"))

    disputes = [k for k, r in req_side.items() if disputed(r)]
    unpaid = [k for k, r in req_side.items() if not disputed(r)
              and (r.get("settlement") == "unsettled"
                   or (isinstance(r.get("settlement"), dict) and "in_flight" in r["settlement"]))]
    if unpaid:
        breach("nothing left unpaid",
               f"{len(unpaid)} receipts still unpaid after settling everything")
    for k in paid_receipts:
        r = req_side.get(k)
        if r is not None and not (isinstance(r.get("settlement"), dict)
                                  and "settled" in r["settlement"]):
            breach("no payment made twice",
                   f"receipt for task {k[0][:16]} is in a settled settlement but the ledger "
                   f"says {r.get('settlement')}")

    winners = collections.OrderedDict()
    for o in sorted(completed, key=lambda o: o["index"]):
        w = winners.setdefault(o["tag"], collections.Counter())
        w[name_of.get(o.get("worker"), "?")] += 1
    winners = {k: dict(sorted(v.items())) for k, v in winners.items()}

    per_worker = []
    received = collections.Counter()
    for pay in payments:
        received[pay["to"]] += pay["amount"]
    balances = horizon.get("balances", {})
    for n in workers:
        wid = ids.get(n)
        addr = (wallet.get(n) or {}).get("address")
        req_owed = sum(r["receipt"]["inner"]["body"]["price_stroops"]
                       for k, r in req_side.items() if k[1] == wid and not disputed(r))
        wk_owed = sum(r["receipt"]["inner"]["body"]["price_stroops"]
                      for k, (wn, r) in worker_side.items()
                      if wn == n and k not in disputes)
        wk_receipts = sum(1 for k, (wn, r) in worker_side.items() if wn == n)
        req_receipts = sum(1 for k in req_side if k[1] == wid)
        got = received.get(addr, 0)
        bal = balances.get(addr)
        tasks_done = sum(1 for o in completed if o.get("worker") == wid)
        row = {"node": n, "node_id": wid, "payout": addr, "tasks_completed": tasks_done,
               "receipts_requester_side": req_receipts, "receipts_worker_side": wk_receipts,
               "owed_stroops": req_owed, "paid_on_horizon_stroops": got,
               "payments": sum(1 for pay in payments if pay["to"] == addr),
               "horizon_balance_stroops": bal}
        per_worker.append(row)
        if addr is None:
            continue
        if got > req_owed:
            breach("no payment made twice",
                   f"{n} received {got} stroops for receipts worth {req_owed}")
        if wallet.get(n) is not None and wk_owed != got and not unpaid:
            lacking = req_receipts - wk_receipts
            breach("worker's ledger matches its payments",
                   f"{n}'s own receipts are worth {wk_owed} stroops but it received {got}"
                   + (f" (it lacks {lacking} receipt(s) the requester holds)" if lacking > 0 else ""))
        if bal is not None and bal != FRIENDBOT_STROOPS + got:
            breach("no payment made twice",
                   f"{n}'s Horizon balance is {bal}, expected {FRIENDBOT_STROOPS} + {got}")
        for k, (wn, r) in worker_side.items():
            if wn == n and r["receipt"]["inner"]["body"]["payout"] != addr:
                breach("receipt counter-signed",
                       f"{n}'s receipt for task {k[0][:16]} pays {r['receipt']['inner']['body']['payout']}, "
                       f"not its wallet {addr}")

    summary = {
        "run": os.path.abspath(run),
        "mode": env.get("MODE"),
        "workers": len(workers),
        "tasks": {"submitted": submitted, "completed": len(completed), "failed": len(failed),
                  "lost": len(lost), "predictions_matching_label": right,
                  "single_image_tasks": len(single),
                  "wide_batch_accuracy": dict(batch_acc),
                  "price_stroops": price_stats,
                  "failed_by_reason": dict(failed_by_reason.most_common()),
                  "by_wave": {k: dict(v) for k, v in waves.items()},
                  "winners_by_wave": winners},
        "spot_checks": dict(collections.Counter(
            (o.get("check") or {}).get("outcome") or "off" for o in completed)),
        "receipts": {"requester_side": len(req_side), "worker_side": len(worker_side),
                     "completed_with_receipt_on_both_sides": both},
        "settlement": {"settled_transactions": len(settled), "pending": len(pending),
                       "failed": len(failed_intents),
                       "submission_attempts": sum(h.get("attempts", 0) for h in history),
                       "payments_on_horizon": len(payments),
                       "stroops_paid": sum(p["amount"] for p in payments),
                       "receipts_paid": sum(paid_receipts.values()),
                       "receipts_unpaid": len(unpaid),
                       "receipts_disputed": len(disputes)},
        "per_worker": per_worker,
        "faults": [{"at_s": round(e["t"] - t0, 1), "event": e["event"]} for e in events
                   if not e["event"].startswith("down")],
        "invariants_ok": not breaches,
        "breaches": breaches,
    }
    with open(os.path.join(run, args.out), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print_table(summary)
    return 0 if not breaches else 1


def print_table(s):
    t = s["tasks"]
    print(f"== testnet summary ({s['mode']}, {s['workers']} workers) — {s['run']}")
    print(f"tasks      submitted {t['submitted']}, completed {t['completed']}, failed "
          f"{t['failed']}, lost {t['lost']}; predictions matching the label "
          f"{t['predictions_matching_label']}/{t['single_image_tasks']}")
    if t["wide_batch_accuracy"]:
        print("  wide-MLP batches right on " + ", ".join(
            f"{k} rows ×{v}" for k, v in t["wide_batch_accuracy"].items()))
    if t["price_stroops"]:
        ps = t["price_stroops"]
        print(f"  price per task (stroops): min {ps['min']}, median {ps['median']}, max {ps['max']}; "
              f"{ps['tasks_at_100000_or_more']} task(s) at 100000 (the default highest price) or more")
    for wave, c in t["by_wave"].items():
        won = t["winners_by_wave"].get(wave, {})
        print(f"  {wave:<22} " + ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
              + ("   (won by " + ", ".join(f"{k} {v}" for k, v in won.items()) + ")" if won else ""))
    if t["failed_by_reason"]:
        print("failed, by reason:")
        for r, n in t["failed_by_reason"].items():
            print(f"  {n:>4} × {r}")
    r = s["receipts"]
    checks = s.get("spot_checks") or {}
    if checks:
        print("checks     " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(checks.items())))
    print(f"receipts   requester side {r['requester_side']}, worker side {r['worker_side']}, "
          f"completed tasks with the same counter-signed receipt on both sides "
          f"{r['completed_with_receipt_on_both_sides']}")
    st = s["settlement"]
    print(f"settlement {st['settled_transactions']} settled transaction(s) "
          f"({st['submission_attempts']} submissions), {st['pending']} pending, {st['failed']} "
          f"failed; {st['payments_on_horizon']} payments on Horizon, {st['stroops_paid']} stroops "
          f"for {st['receipts_paid']} receipts; {st['receipts_unpaid']} receipts unpaid, "
          f"{st['receipts_disputed']} disputed")
    hdr = ("node", "tasks", "rcpt req", "rcpt wkr", "owed", "paid", "pays", "balance")
    print("  " + "  ".join(f"{h:>9}" for h in hdr))
    for w in s["per_worker"]:
        vals = (w["node"], w["tasks_completed"], w["receipts_requester_side"],
                w["receipts_worker_side"], w["owed_stroops"], w["paid_on_horizon_stroops"],
                w["payments"], w["horizon_balance_stroops"])
        print("  " + "  ".join(f"{str(v):>9}" for v in vals))
    if s["faults"]:
        print("timeline:")
        for e in s["faults"]:
            print(f"  {e['at_s']:>7.1f}s  {e['event']}")
    if s["invariants_ok"]:
        print("invariants: all hold")
    else:
        print(f"invariants: {len(s['breaches'])} BROKEN")
        for b in s["breaches"]:
            print(f"  ✗ {b['invariant']}: {b['detail']}")


if __name__ == "__main__":
    sys.exit(main())
