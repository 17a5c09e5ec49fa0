//! Stellar transaction envelopes as Horizon returns them (base64 XDR). The input is the raw
//! XDR, encoded to base64 here so that mutations work on the structure; valid UTF-8 input
//! is also tried as base64 text directly. Decoding, hashing, signature checks, reading the
//! payments and checking a payout against a manifest never panic.
#![no_main]

use base64::Engine as _;
use crank_payments::manifest::{Manifest, ManifestLine, verify_payout};
use crank_payments::stellar::{
    Wallet, decode_envelope, envelope_hash, envelope_paid, envelope_payments, verify_envelope,
};
use crank_protocol::{NodeId, TaskId};
use libfuzzer_sys::fuzz_target;

const PASSPHRASE: &str = "crank fuzz network";

fn check(text: &str) {
    let Ok(env) = decode_envelope(text) else {
        return;
    };
    drop(envelope_hash(&env, PASSPHRASE));
    drop(verify_envelope(&env, PASSPHRASE));
    let payer = Wallet::from_seed([7; 32]).address();
    if let Ok(payments) = envelope_payments(&env) {
        for p in &payments {
            drop(envelope_paid(&env, &payer, &p.destination));
        }
    }
    let payee = Wallet::from_seed([1; 32]).address();
    if let Ok(m) = Manifest::new(vec![ManifestLine {
        payout: payee.clone(),
        task: TaskId([1; 32]),
        worker: NodeId([2; 32]),
        amount_stroops: 10,
    }]) {
        drop(verify_payout(&m, &env, &payer, &payee));
    }
}

fuzz_target!(|data: &[u8]| {
    check(&base64::engine::general_purpose::STANDARD.encode(data));
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});
