//! Settlement manifests, from the receipts a signed notice lists to the payment check a
//! worker makes. Any notice frame either yields no manifest or one whose transaction, built
//! and signed as a payer would, pays every address exactly the sum of its lines. The stored
//! form of a manifest (postcard, inside a settlement intent) decodes or errs, never panics.
#![no_main]

use std::collections::BTreeMap;

use crank_payments::manifest::{Manifest, ManifestLine, verify_payout};
use crank_payments::stellar::{TxParams, Wallet, build_payments, sign_transaction};
use crank_protocol::codec::{self, DEFAULT_MAX_FRAME};
use crank_protocol::{SettlementNotice, Signed};
use libfuzzer_sys::fuzz_target;

const PASSPHRASE: &str = "crank fuzz network";

fuzz_target!(|data: &[u8]| {
    drop(postcard::from_bytes::<Manifest>(data));
    let Ok(notice) = codec::decode::<Signed<SettlementNotice>>(data, DEFAULT_MAX_FRAME) else {
        return;
    };
    let lines: Vec<ManifestLine> = notice
        .body
        .receipts
        .iter()
        .map(|r| ManifestLine {
            payout: r.payout.clone(),
            task: r.task_id,
            worker: r.worker,
            amount_stroops: r.amount_stroops,
        })
        .collect();
    let Ok(manifest) = Manifest::new(lines) else {
        return;
    };
    let _ = manifest.total_stroops();
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for l in manifest.lines() {
        let sum = expected.entry(&l.payout).or_insert(0);
        *sum = sum
            .checked_add(i64::try_from(l.amount_stroops).expect("checked by Manifest::new"))
            .expect("checked by Manifest::new");
    }
    let payer = Wallet::from_seed([7; 32]);
    let params = TxParams {
        sequence: 1,
        base_fee_stroops: 100,
        min_time: 0,
        max_time: 1,
        memo: stellar_xdr::Memo::Hash(stellar_xdr::Hash(manifest.commitment())),
    };
    // More addresses than one transaction holds is a build error, not a manifest error.
    let Ok(tx) = build_payments(&payer.public_key(), &params, &manifest.payments()) else {
        return;
    };
    let signed = sign_transaction(tx, &payer, PASSPHRASE).expect("a built transaction signs");
    for (address, sum) in expected {
        let covered = verify_payout(&manifest, &signed.envelope, &payer.address(), address)
            .expect("a transaction built from the manifest verifies against it");
        assert_eq!(
            i64::try_from(covered.received_stroops).ok(),
            Some(sum),
            "paid what the lines add up to"
        );
        assert!(covered.lines.iter().all(|l| l.payout == address));
    }
});
