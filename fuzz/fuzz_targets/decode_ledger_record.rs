//! Records as the ledger stores them (postcard values in redb tables). A damaged file must
//! give a decode error, never a panic. The first byte picks the record type.
#![no_main]

use crank_payments::manifest::Manifest;
use crank_payments::types::{
    Balances, CounterpartyBalance, LegacyPendingReceipt, PendingReceipt, StoredReceipt,
};
use crank_payments::{IntentRecord, PaymentIn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => drop(postcard::from_bytes::<StoredReceipt>(bytes)),
        1 => drop(postcard::from_bytes::<PendingReceipt>(bytes)),
        2 => drop(postcard::from_bytes::<LegacyPendingReceipt>(bytes)),
        3 => drop(postcard::from_bytes::<CounterpartyBalance>(bytes)),
        4 => drop(postcard::from_bytes::<IntentRecord>(bytes)),
        5 => drop(postcard::from_bytes::<PaymentIn>(bytes)),
        6 => drop(postcard::from_bytes::<Manifest>(bytes)),
        _ => drop(postcard::from_bytes::<Balances>(bytes)),
    }
});
