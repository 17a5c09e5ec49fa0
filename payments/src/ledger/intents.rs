//! Settlement intents: a signed payment transaction recorded, with the receipts it pays,
//! before it is first submitted.
//!
//! Creating an intent reserves its receipts (`Unsettled` → `InFlight`) in the same write
//! transaction that stores the envelope, so after a crash the node knows exactly which
//! envelope may be in flight and which receipts it covers. An intent ends `Settled` (its
//! receipts become `Settled` with the transaction hash) or `Failed` (its receipts become
//! `Unsettled` again), each exactly once.

use crank_protocol::UnixMillis;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{Ledger, LedgerError, decode, encode, now_ms};
use crate::manifest::Manifest;
use crate::types::{Role, Settlement, TxHash};

pub(super) const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");
pub(super) const PENDING_INTENTS: TableDefinition<u64, ()> =
    TableDefinition::new("pending_intents");

/// Where a settlement intent stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentState {
    /// Recorded; it may be in flight. Its outcome is not known yet.
    Pending,
    /// Applied successfully.
    Settled {
        /// The ledger it was included in.
        ledger: u32,
        /// Fee charged, stroops.
        fee_charged: i64,
        /// When this node learned it.
        settled_at: UnixMillis,
    },
    /// Known never to apply: it failed in a ledger, its sequence number went to another
    /// transaction, or its time bound passed without it.
    Failed {
        /// Why, for the operator.
        reason: String,
        /// When this node concluded it.
        failed_at: UnixMillis,
    },
}

/// Everything about a settlement transaction except its id and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentDraft {
    /// The paying account (`G…`).
    pub payer: String,
    /// The transaction's sequence number.
    pub sequence: i64,
    /// Its upper time bound, Unix seconds.
    pub max_time: u64,
    /// Its hash for the configured network.
    pub tx_hash: TxHash,
    /// The signed envelope, base64 XDR: the only envelope ever submitted for this intent.
    pub envelope_xdr: String,
    /// The receipts it pays.
    pub manifest: Manifest,
}

/// A recorded settlement intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRecord {
    /// Its id in this ledger (increasing).
    pub id: u64,
    /// When it was recorded.
    pub created_at: UnixMillis,
    /// The transaction and what it pays.
    pub draft: IntentDraft,
    /// Where it stands.
    pub state: IntentState,
    /// Submissions of its envelope so far.
    pub attempts: u32,
    /// The last problem seen while submitting or checking it.
    pub last_error: Option<String>,
}

impl Ledger {
    /// Records a settlement intent and reserves its receipts, in one durable write.
    ///
    /// Every manifest line must be a stored receipt where this node is the requester, still
    /// unsettled, with the line's worker and amount. At most one intent may be pending at a
    /// time, because a second transaction from the same account could only use the next
    /// sequence number and would fail if the first never applies.
    pub fn create_intent(&self, draft: IntentDraft) -> Result<IntentRecord, LedgerError> {
        self.write(|t, _| {
            if let Some((id, _)) = t.pending_intents.first()? {
                return Err(LedgerError::IntentState {
                    id: id.value(),
                    state: "pending".into(),
                    why: "resolve it before recording another settlement",
                });
            }
            let id = match t.intents.last()? {
                Some((k, _)) => k
                    .value()
                    .checked_add(1)
                    .ok_or(LedgerError::Overflow("intent id"))?,
                None => 1,
            };
            for line in draft.manifest.lines() {
                let key = line.key();
                let not_payable = |why: &str| LedgerError::NotPayable {
                    key,
                    why: why.into(),
                };
                let Some(mut rec) = t.get_receipt(&key)? else {
                    return Err(not_payable("no such receipt in the ledger"));
                };
                if rec.role != Role::Requester {
                    return Err(not_payable("this node is not the requester on it"));
                }
                if rec.settlement != Settlement::Unsettled {
                    return Err(not_payable("it is already paid or being paid"));
                }
                if rec.check != crate::types::Check::Passed {
                    return Err(not_payable("its checks have not passed"));
                }
                if !rec.body().payer.is_empty() && rec.body().payer != draft.payer {
                    return Err(not_payable("it names another paying account"));
                }
                if rec.price_stroops() != line.amount_stroops {
                    return Err(not_payable("the manifest amount differs from its price"));
                }
                if rec.body().payout != line.payout {
                    return Err(not_payable("the manifest payout differs from the receipt's"));
                }
                t.set_settlement(&mut rec, Settlement::InFlight { intent: id })?;
            }
            let rec = IntentRecord {
                id,
                created_at: now_ms(),
                draft,
                state: IntentState::Pending,
                attempts: 0,
                last_error: None,
            };
            t.intents.insert(id, encode(&rec)?.as_slice())?;
            t.pending_intents.insert(id, ())?;
            info!(intent = id, tx = %rec.draft.tx_hash, receipts = rec.draft.manifest.lines().len(), "settlement intent recorded");
            Ok((rec, true))
        })
    }

    fn update_intent(
        &self,
        id: u64,
        f: impl FnOnce(&mut super::Tables<'_>, &mut IntentRecord) -> Result<bool, LedgerError>,
    ) -> Result<IntentRecord, LedgerError> {
        self.write(|t, _| {
            let mut rec: IntentRecord = match t.intents.get(id)? {
                Some(v) => decode("intents", v.value())?,
                None => return Err(LedgerError::NoSuchIntent(id)),
            };
            let changed = f(t, &mut rec)?;
            if changed {
                t.intents.insert(id, encode(&rec)?.as_slice())?;
            }
            Ok((rec, changed))
        })
    }

    /// Counts a submission of a pending intent and keeps the last problem seen.
    pub fn note_attempt(
        &self,
        id: u64,
        error: Option<String>,
    ) -> Result<IntentRecord, LedgerError> {
        self.update_intent(id, |_, rec| {
            rec.attempts = rec.attempts.saturating_add(1);
            rec.last_error = error;
            Ok(true)
        })
    }

    /// Keeps the last problem seen for an intent without counting a submission.
    pub fn note_error(&self, id: u64, error: String) -> Result<IntentRecord, LedgerError> {
        self.update_intent(id, |_, rec| {
            rec.last_error = Some(error);
            Ok(true)
        })
    }

    /// Marks an intent applied: its receipts become settled by its transaction hash.
    /// Idempotent; an intent already failed cannot become settled.
    pub fn settle_intent(
        &self,
        id: u64,
        ledger: u32,
        fee_charged: i64,
    ) -> Result<IntentRecord, LedgerError> {
        self.update_intent(id, |t, rec| {
            match &rec.state {
                IntentState::Settled { .. } => return Ok(false),
                IntentState::Failed { .. } => {
                    return Err(LedgerError::IntentState {
                        id,
                        state: "failed".into(),
                        why: "a failed settlement cannot become settled",
                    });
                }
                IntentState::Pending => {}
            }
            let settled_at = now_ms();
            for key in rec.draft.manifest.keys() {
                let Some(mut r) = t.get_receipt(&key)? else {
                    return Err(LedgerError::Inconsistent(format!(
                        "intent {id} names missing receipt {key}"
                    )));
                };
                if r.settlement != (Settlement::InFlight { intent: id }) {
                    return Err(LedgerError::Inconsistent(format!(
                        "receipt {key} of intent {id} is not reserved by it"
                    )));
                }
                t.set_settlement(
                    &mut r,
                    Settlement::Settled {
                        tx_hash: rec.draft.tx_hash,
                        settled_at,
                    },
                )?;
            }
            rec.state = IntentState::Settled {
                ledger,
                fee_charged,
                settled_at,
            };
            t.pending_intents.remove(id)?;
            info!(intent = id, tx = %rec.draft.tx_hash, ledger, "settlement applied");
            Ok(true)
        })
    }

    /// Marks an intent as never going to apply: its receipts are owed again.
    /// Idempotent; an intent already settled cannot fail.
    pub fn fail_intent(&self, id: u64, reason: &str) -> Result<IntentRecord, LedgerError> {
        self.update_intent(id, |t, rec| {
            match &rec.state {
                IntentState::Failed { .. } => return Ok(false),
                IntentState::Settled { .. } => {
                    return Err(LedgerError::IntentState {
                        id,
                        state: "settled".into(),
                        why: "a settled payment cannot fail",
                    });
                }
                IntentState::Pending => {}
            }
            for key in rec.draft.manifest.keys() {
                if let Some(mut r) = t.get_receipt(&key)?
                    && r.settlement == (Settlement::InFlight { intent: id })
                {
                    t.set_settlement(&mut r, Settlement::Unsettled)?;
                }
            }
            rec.state = IntentState::Failed {
                reason: reason.to_owned(),
                failed_at: now_ms(),
            };
            t.pending_intents.remove(id)?;
            info!(intent = id, tx = %rec.draft.tx_hash, reason, "settlement will not apply; receipts released");
            Ok(true)
        })
    }

    /// One intent.
    pub fn intent(&self, id: u64) -> Result<Option<IntentRecord>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INTENTS)?;
        match table.get(id)? {
            Some(v) => Ok(Some(decode("intents", v.value())?)),
            None => Ok(None),
        }
    }

    /// Intents whose outcome is not known yet, oldest first.
    pub fn pending_intents(&self) -> Result<Vec<IntentRecord>, LedgerError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(PENDING_INTENTS)?;
        let table = txn.open_table(INTENTS)?;
        let mut out = Vec::new();
        for entry in index.iter()? {
            let (id, _) = entry?;
            match table.get(id.value())? {
                Some(v) => out.push(decode("intents", v.value())?),
                None => return Err(LedgerError::NoSuchIntent(id.value())),
            }
        }
        Ok(out)
    }

    /// Up to `limit` intents, newest first: the settlement history.
    pub fn intents(&self, limit: usize) -> Result<Vec<IntentRecord>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INTENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = entry?;
            out.push(decode("intents", v.value())?);
        }
        Ok(out)
    }
}
