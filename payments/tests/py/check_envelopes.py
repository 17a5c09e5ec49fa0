"""Independent check of envelopes built by crank-payments, with the official Stellar SDK.

Reads a JSON list of {"xdr", "passphrase"} from stdin. For each envelope: parse it, compute
its hash, verify every signature against the source account, check that it re-encodes to the
same XDR, and report the hash, source, memo hash and native payments (stroops) as JSON on
stdout. Exits non-zero if any check fails.
"""

import json
import sys
from decimal import Decimal

from stellar_sdk import Keypair, TransactionEnvelope
from stellar_sdk.memo import HashMemo
from stellar_sdk.operation import Payment


def check(item):
    te = TransactionEnvelope.from_xdr(item["xdr"], item["passphrase"])
    if te.to_xdr() != item["xdr"]:
        raise AssertionError("re-encoding differs from the input XDR")
    tx = te.transaction
    source = tx.source.account_id
    kp = Keypair.from_public_key(source)
    if not te.signatures:
        raise AssertionError("no signatures")
    for sig in te.signatures:
        if sig.signature_hint != kp.signature_hint():
            raise AssertionError("signature hint is not the source key's last 4 bytes")
        kp.verify(te.hash(), sig.signature)  # raises BadSignatureError
    payments = []
    for op in tx.operations:
        if not isinstance(op, Payment) or not op.asset.is_native():
            raise AssertionError(f"unexpected operation {op!r}")
        stroops = Decimal(op.amount) * 10_000_000
        if stroops != int(stroops):
            raise AssertionError(f"amount {op.amount} is not whole stroops")
        payments.append([op.destination.account_id, int(stroops)])
    memo = tx.memo.memo_hash.hex() if isinstance(tx.memo, HashMemo) else None
    return {
        "hash": te.hash_hex(),
        "source": source,
        "sequence": tx.sequence,
        "fee": tx.fee,
        "memo_hash": memo,
        "payments": payments,
    }


def main():
    items = json.load(sys.stdin)
    out = []
    for i, item in enumerate(items):
        try:
            out.append(check(item))
        except Exception as e:  # report which envelope failed, then fail
            print(f"envelope {i}: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
