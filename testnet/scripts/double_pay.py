#!/usr/bin/env python3
"""Pays a worker again, outside the node, from the requester's payout account: the settlement
tx a buggy settler might resubmit as a new transaction. Used by `testnet.sh fault double-pay`
to show that the summary's "no payment made twice" check catches it.

Usage: double_pay.py HORIZON_URL PAYER_SECRET_FILE DESTINATION STROOPS
"""

import sys
from decimal import Decimal

from stellar_sdk import Asset, Keypair, Network, Server, TransactionBuilder


def main():
    horizon, secret_file, dest, stroops = sys.argv[1:5]
    with open(secret_file, encoding="utf-8") as f:
        kp = Keypair.from_secret(f.read().strip())
    server = Server(horizon)
    account = server.load_account(kp.public_key)
    tx = (TransactionBuilder(account, Network.STANDALONE_NETWORK_PASSPHRASE, base_fee=100)
          .append_payment_op(dest, Asset.native(), str(Decimal(int(stroops)) / Decimal(10**7)))
          .set_timeout(60)
          .build())
    tx.sign(kp)
    # crank-horizon's account resource has no "data" field, which the SEP-29 memo check reads.
    resp = server.submit_transaction(tx, skip_memo_required_check=True)
    print(resp["hash"])


if __name__ == "__main__":
    main()
