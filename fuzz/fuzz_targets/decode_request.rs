//! Any bytes decode to a request or an error; a decoded request re-encodes to the same bytes,
//! and checking its signatures never panics.
#![no_main]

use crank_protocol::codec::{self, DEFAULT_MAX_FRAME};
use crank_protocol::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = codec::decode::<Request>(data, DEFAULT_MAX_FRAME) {
        let again = codec::encode(&req).expect("a decoded request encodes");
        assert_eq!(again, data, "one frame, one meaning");
        match &req {
            Request::CallForBids(s) => drop(s.verify()),
            Request::Award(s) => drop(s.verify()),
            Request::Failure(s) => drop(s.verify()),
            Request::Cancel(s) => drop(s.verify()),
            Request::Result(r) => drop(r.receipt.verify()),
            Request::FetchModel(_) | Request::GetAdvert => {}
        }
    }
});
