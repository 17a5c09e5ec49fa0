//! Upgrades a ledger written by an earlier release, in the same write transaction that
//! records the new schema version, so a crash leaves either the old file or the new one.
//!
//! Schema 1 → 2 (wire version 1 → 2): stored receipts keep their version 1 signatures
//! ([`ReceiptProof::V1`]) beside their terms in the current layout; receipts issued and never
//! counter-signed move to `legacy_pending`; balances and indexes are recomputed from the
//! receipts, because the balance record gained fields.

use crank_protocol::UnixMillis;
use crank_protocol::legacy::ReceiptV1;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{LedgerError, Tables, contribute, count, decode, encode};
use crate::types::{
    Check, CounterpartyBalance, LegacyPendingReceipt, ReceiptProof, Role, Settlement, StoredReceipt,
};

/// A stored receipt as schema 1 wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredReceiptV1 {
    receipt: ReceiptV1,
    role: Role,
    stored_at: UnixMillis,
    order: u64,
    settlement: Settlement,
}

/// Migrates from schema `from` to the current one.
pub(super) fn run(t: &mut Tables<'_>, from: u64) -> Result<(), LedgerError> {
    if from != 1 {
        return Err(LedgerError::Inconsistent(format!(
            "no migration from ledger schema {from}"
        )));
    }
    let mut old = Vec::new();
    for entry in t.receipts.iter()? {
        let (k, v) = entry?;
        old.push((
            *k.value(),
            decode::<StoredReceiptV1>("receipts", v.value())?,
        ));
    }
    let mut pending = Vec::new();
    for entry in t.pending.iter()? {
        let (k, v) = entry?;
        pending.push((
            *k.value(),
            decode::<LegacyPendingReceipt>("pending", v.value())?,
        ));
    }
    // Balances are recomputed from the receipts below.
    let parties: Vec<[u8; 32]> = t
        .balances
        .iter()?
        .map(|e| e.map(|(k, _)| *k.value()))
        .collect::<Result<_, _>>()?;
    for p in parties {
        t.balances.remove(&p)?;
    }
    let mut balances: std::collections::BTreeMap<crank_protocol::NodeId, CounterpartyBalance> =
        std::collections::BTreeMap::new();
    let n = old.len();
    for (key, v1) in old {
        let proof = ReceiptProof::V1(v1.receipt);
        let terms = proof.verify()?;
        let paid_stroops = if v1.settlement.is_settled() {
            terms.price_stroops
        } else {
            0
        };
        let rec = StoredReceipt {
            terms,
            proof,
            role: v1.role,
            stored_at: v1.stored_at,
            order: v1.order,
            settlement: v1.settlement,
            paid_stroops,
            // Version 1 delivered the outputs with the receipt: the work was accepted.
            check: Check::Passed,
        };
        t.receipts.insert(&key, encode(&rec)?.as_slice())?;
        t.index(&rec)?;
        let b = balances.entry(rec.counterparty()).or_default();
        contribute(b, &rec, true)?;
        count(b, rec.role)?;
    }
    for (party, b) in &balances {
        t.put_balance(party, b)?;
    }
    for (key, p) in &pending {
        t.pending.remove(key)?;
        t.legacy_pending.insert(key, encode(p)?.as_slice())?;
    }
    info!(
        receipts = n,
        pending = pending.len(),
        "ledger migrated from schema 1 to 2"
    );
    Ok(())
}
