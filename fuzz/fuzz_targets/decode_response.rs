//! Any bytes decode to a response or an error, never a panic.
#![no_main]

use crank_protocol::codec::{self, DEFAULT_MAX_FRAME};
use crank_protocol::Response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = codec::decode::<Response>(data, DEFAULT_MAX_FRAME) {
        let again = codec::encode(&resp).expect("a decoded response encodes");
        assert_eq!(again, data, "one frame, one meaning");
        if let Response::Receipt(r) = &resp {
            let _ = r.verify();
        }
    }
});
