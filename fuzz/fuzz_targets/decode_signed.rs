//! Signed messages that a node keeps and re-reads on their own: settlement notices and
//! counter-signed receipts of the current and the previous wire version. Any bytes decode to
//! one of them or an error; what decodes is its one canonical encoding, and checking its
//! signatures and validating it never panics.
#![no_main]

use crank_protocol::codec::{self, DEFAULT_MAX_FRAME};
use crank_protocol::legacy::ReceiptV1;
use crank_protocol::{NodeId, Receipt, SettlementNotice, Signed, validate};
use libfuzzer_sys::fuzz_target;

/// Decodes `frame` as `T` and checks that it re-encodes to the same bytes.
fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(frame: &[u8]) -> Option<T> {
    let value = codec::decode::<T>(frame, DEFAULT_MAX_FRAME).ok()?;
    let again = codec::encode(&value).expect("a decoded message encodes");
    assert_eq!(again, frame, "one frame, one meaning");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the message kind, so one corpus covers all three.
    let Some((&kind, frame)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Some(n) = decode::<Signed<SettlementNotice>>(frame) {
                drop(validate::settlement_notice(&n, &NodeId([0; 32])));
                for r in &n.body.receipts {
                    drop(validate::settlement_notice(&n, &r.worker));
                }
            }
        }
        1 => {
            if let Some(r) = decode::<Receipt>(frame) {
                drop(r.verify());
            }
        }
        _ => {
            if let Some(r) = decode::<ReceiptV1>(frame) {
                drop(r.verify());
            }
        }
    }
});
