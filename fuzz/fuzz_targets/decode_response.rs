//! Any bytes decode to a response or an error, never a panic; checking the signatures of
//! whatever decoded never panics either.
#![no_main]

use crank_protocol::codec::{self, DEFAULT_MAX_FRAME};
use crank_protocol::{NodeId, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = codec::decode::<Response>(data, DEFAULT_MAX_FRAME) {
        let again = codec::encode(&resp).expect("a decoded response encodes");
        assert_eq!(again, data, "one frame, one meaning");
        match &resp {
            Response::Receipt(r) => drop(r.verify()),
            Response::LegacyReceipt(r) => drop(r.verify()),
            Response::Settlement(n) => {
                drop(crank_protocol::validate::settlement_notice(
                    n,
                    &NodeId([0; 32]),
                ));
            }
            Response::Disputed(d) => {
                let worker = d.body.receipt.body.worker;
                drop(crank_protocol::validate::dispute(d, &worker));
            }
            Response::Bid(b) => drop(b.verify()),
            Response::Decline(d) => drop(d.verify()),
            _ => {}
        }
    }
});
