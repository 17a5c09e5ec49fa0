//! Any bytes decode to an advert or an error; validation of whatever decodes never panics.
#![no_main]

use crank_protocol::adverts::AdvertTable;
use crank_protocol::codec::{self, MAX_ADVERT_FRAME};
use crank_protocol::validate::Limits;
use crank_protocol::{CapabilityAdvert, Signed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(advert) = codec::decode::<Signed<CapabilityAdvert>>(data, MAX_ADVERT_FRAME) {
        let now = advert.body.issued_at;
        let mut table = AdvertTable::new(4, Limits::default());
        let _ = table.insert(advert, now);
    }
});
