//! The receipt ledger: one redb file holding every receipt this node issued, counter-signed or
//! accepted, their payment state, the totals per counterparty and small node state.
//!
//! Every write is one redb write transaction committed with [`Durability::Immediate`], so
//! what a method reported as done survives a crash. The file's integrity is checked when it is
//! opened.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `receipts` | task ‖ worker | postcard [`StoredReceipt`] |
//! | `pending` | task ‖ worker | postcard [`PendingReceipt`] (issued, not counter-signed) |
//! | `legacy_pending` | task ‖ worker | postcard [`LegacyPendingReceipt`] (wire version 1, issued before the upgrade) |
//! | `unpaid_in` | requester ‖ stored at ‖ task ‖ worker | () for worker-side receipts not fully paid: each requester's oldest debt |
//! | `payments_in` | transaction hash | postcard [`PaymentIn`]: what a verified payment credited, once |
//! | `notice_acks` | intent id ‖ worker | () once the worker acknowledged the settlement notice |
//! | `held_outputs` | task ‖ worker | postcard signed outputs, kept until the requester took them |
//! | `pair_seq` | requester ‖ worker ‖ seq (big-endian) | task id; never removed, so a number is never reused |
//! | `counters` | requester ‖ worker | (last sequence number, cumulative stroops) |
//! | `order` | insertion number | task ‖ worker, for newest-first listings |
//! | `balances` | counterparty | postcard [`CounterpartyBalance`] |
//! | `owed` | task ‖ worker | () for requester-side receipts that are `Unsettled` |
//! | `intents` | intent id | postcard [`IntentRecord`] |
//! | `pending_intents` | intent id | () while the intent is `Pending` |
//! | `meta` | name | caller's bytes |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crank_protocol::legacy::ReceiptV1;
use crank_protocol::{NodeId, Receipt, SignatureError, Signed, TaskId, UnixMillis, WorkReceipt};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::types::{
    Balances, Check, CounterpartyBalance, LegacyPendingReceipt, PendingReceipt, ReceiptKey,
    ReceiptProof, Role, Settlement, Stored, StoredReceipt,
};

mod intents;
mod migrate;
mod money;

pub use intents::{IntentDraft, IntentRecord, IntentState};
pub use money::{Credit, PaymentIn, RecordedPayment, Standing};

const RECEIPTS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("receipts");
const PENDING: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("pending");
const PAIR_SEQ: TableDefinition<&[u8; 72], &[u8; 32]> = TableDefinition::new("pair_seq");
const COUNTERS: TableDefinition<&[u8; 64], (u64, u64)> = TableDefinition::new("counters");
const ORDER: TableDefinition<u64, &[u8; 64]> = TableDefinition::new("order");
const BALANCES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("balances");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const INFO: TableDefinition<&str, u64> = TableDefinition::new("ledger_info");
/// Requester-side receipts not yet paid nor being paid whose checks passed: what
/// settlement plans from.
const OWED: TableDefinition<&[u8; 64], ()> = TableDefinition::new("owed");
const LEGACY_PENDING: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("legacy_pending");
const UNPAID_IN: TableDefinition<&[u8; 104], ()> = TableDefinition::new("unpaid_in");
const PAYMENTS_IN: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("payments_in");
const NOTICE_ACKS: TableDefinition<&[u8; 40], ()> = TableDefinition::new("notice_acks");
const HELD_OUTPUTS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("held_outputs");

/// The on-disk layout this code writes; a file with a higher number is refused, a file with
/// a lower one is migrated when opened.
const SCHEMA_VERSION: u64 = 2;
/// Longest meta key, bytes.
pub const MAX_META_KEY: usize = 256;
/// Largest meta value, bytes: meta is for small node state, not bulk data.
pub const MAX_META_VALUE: usize = 4 * 1024 * 1024;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database file could not be opened or created.
    #[error("cannot open ledger {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::DatabaseError,
    },
    /// Another process (or another `Ledger` in this one) has the file open.
    #[error("ledger {path} is already open, probably by another crank-node process")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer version of crank-node.
    #[error("ledger schema version {found} is newer than the supported version {supported}")]
    Schema {
        /// Version found in the file.
        found: u64,
        /// Highest version this build understands.
        supported: u64,
    },
    /// The storage engine failed (I/O, corruption, a full disk).
    #[error("ledger storage error: {0}")]
    Storage(#[from] redb::Error),
    /// A stored record did not decode: the file is damaged or from an incompatible build.
    #[error("ledger record in `{table}` does not decode: {source}")]
    Decode {
        /// The table holding the record.
        table: &'static str,
        /// The decoder's complaint.
        source: postcard::Error,
    },
    /// A record could not be encoded (a bug, never caused by input).
    #[error("cannot encode ledger record: {0}")]
    Encode(postcard::Error),
    /// A signature on the receipt does not verify.
    #[error("receipt signature check failed: {0}")]
    Signature(#[from] SignatureError),
    /// The receipt is structurally wrong (parties, sequence number, amounts, payout address).
    #[error("invalid receipt ({key}): {why}")]
    InvalidReceipt {
        /// The receipt.
        key: ReceiptKey,
        /// What is wrong.
        why: String,
    },
    /// A different receipt is already stored under the same task and worker.
    #[error("a different receipt is already stored for {key}")]
    Conflict {
        /// The receipt.
        key: ReceiptKey,
    },
    /// The receipt is stored, but with the other role.
    #[error("receipt {key} is already stored with role {stored}, not {requested}")]
    RoleConflict {
        /// The receipt.
        key: ReceiptKey,
        /// The role it has in the ledger.
        stored: Role,
        /// The role asked for.
        requested: Role,
    },
    /// Another task already holds this pair sequence number.
    #[error(
        "pair sequence number {seq} between requester {requester:?} and worker {worker:?} is already used by task {existing:?}"
    )]
    SeqReused {
        /// The requester.
        requester: NodeId,
        /// The worker.
        worker: NodeId,
        /// The sequence number.
        seq: u64,
        /// The task that holds it.
        existing: TaskId,
    },
    /// The cumulative amount contradicts a stored neighbour of the same pair.
    #[error(
        "cumulative amount of {key} (pair sequence {seq}) is {found} stroops, but its stored neighbours imply {expected}"
    )]
    CumulativeMismatch {
        /// The receipt.
        key: ReceiptKey,
        /// Its pair sequence number.
        seq: u64,
        /// What the neighbours imply.
        expected: u64,
        /// What the receipt says (for a successor conflict: what the successor says).
        found: u64,
    },
    /// This node issued a receipt for the task, and the counter-signed one differs from it.
    #[error("the counter-signed receipt for {key} is not the one this node issued")]
    NotAsIssued {
        /// The receipt.
        key: ReceiptKey,
    },
    /// A receipt for this task and worker was already issued or stored.
    #[error("a receipt for {key} already exists; re-send the pending one instead of issuing again")]
    AlreadyIssued {
        /// The receipt.
        key: ReceiptKey,
    },
    /// The signing callback given to [`Ledger::issue_receipt`] failed; nothing was stored.
    #[error("signing the receipt failed: {0}")]
    Sign(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A sum of amounts does not fit in 64 bits.
    #[error("amount overflow: {0}")]
    Overflow(&'static str),
    /// The stored totals do not match the stored receipts.
    #[error("ledger is inconsistent: {0}")]
    Inconsistent(String),
    /// A meta key or value is too large.
    #[error("meta {what} is {len} bytes, limit {limit}")]
    MetaTooLarge {
        /// "key" or "value".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The settlement intent does not exist.
    #[error("settlement intent {0} does not exist")]
    NoSuchIntent(u64),
    /// A receipt named in a settlement or payment cannot be used there.
    #[error("receipt {key} cannot be used in this settlement: {why}")]
    NotPayable {
        /// The receipt.
        key: ReceiptKey,
        /// Why.
        why: String,
    },
    /// The settlement intent is not in a state that allows this change.
    #[error("settlement intent {id} is {state}; {why}")]
    IntentState {
        /// The intent.
        id: u64,
        /// Its state.
        state: String,
        /// What was attempted.
        why: &'static str,
    },
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for LedgerError {
            fn from(e: $t) -> Self {
                Self::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Milliseconds since the Unix epoch from the system clock.
pub(crate) fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, LedgerError> {
    postcard::to_allocvec(v).map_err(LedgerError::Encode)
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, LedgerError> {
    postcard::from_bytes(bytes).map_err(|source| LedgerError::Decode { table, source })
}

fn pair_bytes(requester: &NodeId, worker: &NodeId) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&requester.0);
    out[32..].copy_from_slice(&worker.0);
    out
}

fn pair_seq_bytes(requester: &NodeId, worker: &NodeId, seq: u64) -> [u8; 72] {
    let mut out = [0u8; 72];
    out[..64].copy_from_slice(&pair_bytes(requester, worker));
    out[64..].copy_from_slice(&seq.to_be_bytes());
    out
}

fn invalid(key: ReceiptKey, why: impl Into<String>) -> LedgerError {
    LedgerError::InvalidReceipt {
        key,
        why: why.into(),
    }
}

/// Checks a receipt body on its own: distinct parties, sequence number, amounts, payout.
fn check_body(body: &WorkReceipt) -> Result<(), LedgerError> {
    let key = ReceiptKey::of(body);
    if body.requester == body.worker {
        return Err(invalid(key, "requester and worker are the same node"));
    }
    if body.pair_seq == 0 {
        return Err(invalid(key, "pair sequence numbers start at 1"));
    }
    if body.cumulative_stroops < body.price_stroops {
        return Err(invalid(
            key,
            format!(
                "cumulative {} stroops is less than the price {}",
                body.cumulative_stroops, body.price_stroops
            ),
        ));
    }
    if body.pair_seq == 1 && body.cumulative_stroops != body.price_stroops {
        return Err(invalid(
            key,
            format!(
                "the first receipt of a pair must have cumulative = price, got {} and {}",
                body.cumulative_stroops, body.price_stroops
            ),
        ));
    }
    if i64::try_from(body.price_stroops).is_err() {
        return Err(invalid(key, "price exceeds the largest Stellar amount"));
    }
    if stellar_strkey::ed25519::PublicKey::from_string(&body.payout).is_err() {
        return Err(invalid(
            key,
            format!("payout {:?} is not a valid Stellar account (G… strkey)", {
                let mut s = body.payout.clone();
                s.truncate(80);
                s
            }),
        ));
    }
    Ok(())
}

/// Verifies both signatures and that each was made by the party the receipt names; returns
/// the terms in the current layout.
fn check_receipt(proof: &ReceiptProof) -> Result<WorkReceipt, LedgerError> {
    let body = proof.verify()?;
    check_body(&body)?;
    if let ReceiptProof::Current(_) = proof {
        // Version 2 receipts name the account that pays them.
        if stellar_strkey::ed25519::PublicKey::from_string(&body.payer).is_err() {
            return Err(invalid(
                ReceiptKey::of(&body),
                "payer is not a valid Stellar account (G… strkey)",
            ));
        }
    }
    Ok(body)
}

/// Adds (`add = true`) or removes one stored receipt's contribution to a balance.
fn contribute(
    b: &mut CounterpartyBalance,
    rec: &StoredReceipt,
    add: bool,
) -> Result<(), LedgerError> {
    fn apply(field: &mut u64, v: u64, add: bool) -> Result<(), LedgerError> {
        *field = if add {
            field
                .checked_add(v)
                .ok_or(LedgerError::Overflow("balance total"))?
        } else {
            field.checked_sub(v).ok_or_else(|| {
                LedgerError::Inconsistent("a balance total would go below zero".into())
            })?
        };
        Ok(())
    }
    let price = rec.price_stroops();
    match (rec.role, &rec.settlement) {
        (Role::Requester, _) if rec.check.is_disputed() => {
            apply(&mut b.disputed_by_us_stroops, price, add)
        }
        (Role::Worker, Settlement::Unsettled | Settlement::InFlight { .. }) => {
            // Partly paid: the credited part is paid, the rest owed (or disputed).
            let paid = rec.paid_stroops.min(price);
            apply(&mut b.paid_to_us_stroops, paid, add)?;
            apply(&mut b.overpaid_to_us_stroops, rec.paid_stroops - paid, add)?;
            let rest = price - paid;
            if rec.check.is_disputed() {
                apply(&mut b.disputed_to_us_stroops, rest, add)
            } else {
                apply(&mut b.owed_to_us_stroops, rest, add)
            }
        }
        (Role::Worker, Settlement::Settled { .. }) => {
            apply(&mut b.paid_to_us_stroops, price, add)?;
            apply(
                &mut b.overpaid_to_us_stroops,
                rec.paid_stroops.saturating_sub(price),
                add,
            )
        }
        (Role::Requester, Settlement::Unsettled) => apply(&mut b.owed_by_us_stroops, price, add),
        (Role::Requester, Settlement::InFlight { .. }) => {
            apply(&mut b.owed_by_us_stroops, price, add)?;
            apply(&mut b.in_flight_stroops, price, add)
        }
        (Role::Requester, Settlement::Settled { .. }) => {
            apply(&mut b.paid_by_us_stroops, price, add)
        }
    }
}

fn count(b: &mut CounterpartyBalance, role: Role) -> Result<(), LedgerError> {
    let field = match role {
        Role::Requester => &mut b.receipts_as_requester,
        Role::Worker => &mut b.receipts_as_worker,
    };
    *field = field
        .checked_add(1)
        .ok_or(LedgerError::Overflow("receipt count"))?;
    Ok(())
}

fn add_totals(total: &mut CounterpartyBalance, b: &CounterpartyBalance) -> Result<(), LedgerError> {
    let pairs = [
        (&mut total.owed_by_us_stroops, b.owed_by_us_stroops),
        (&mut total.in_flight_stroops, b.in_flight_stroops),
        (&mut total.paid_by_us_stroops, b.paid_by_us_stroops),
        (&mut total.owed_to_us_stroops, b.owed_to_us_stroops),
        (&mut total.paid_to_us_stroops, b.paid_to_us_stroops),
        (&mut total.overpaid_to_us_stroops, b.overpaid_to_us_stroops),
        (&mut total.disputed_by_us_stroops, b.disputed_by_us_stroops),
        (&mut total.disputed_to_us_stroops, b.disputed_to_us_stroops),
        (&mut total.receipts_as_requester, b.receipts_as_requester),
        (&mut total.receipts_as_worker, b.receipts_as_worker),
    ];
    for (t, v) in pairs {
        *t = t
            .checked_add(v)
            .ok_or(LedgerError::Overflow("grand total"))?;
    }
    Ok(())
}

/// All tables, opened in one write transaction.
pub(crate) struct Tables<'t> {
    receipts: Table<'t, &'static [u8; 64], &'static [u8]>,
    pending: Table<'t, &'static [u8; 64], &'static [u8]>,
    pair_seq: Table<'t, &'static [u8; 72], &'static [u8; 32]>,
    counters: Table<'t, &'static [u8; 64], (u64, u64)>,
    order: Table<'t, u64, &'static [u8; 64]>,
    balances: Table<'t, &'static [u8; 32], &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    owed: Table<'t, &'static [u8; 64], ()>,
    intents: Table<'t, u64, &'static [u8]>,
    pending_intents: Table<'t, u64, ()>,
    legacy_pending: Table<'t, &'static [u8; 64], &'static [u8]>,
    unpaid_in: Table<'t, &'static [u8; 104], ()>,
    payments_in: Table<'t, &'static [u8; 32], &'static [u8]>,
    notice_acks: Table<'t, &'static [u8; 40], ()>,
    held_outputs: Table<'t, &'static [u8; 64], &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, LedgerError> {
        Ok(Self {
            receipts: txn.open_table(RECEIPTS)?,
            pending: txn.open_table(PENDING)?,
            pair_seq: txn.open_table(PAIR_SEQ)?,
            counters: txn.open_table(COUNTERS)?,
            order: txn.open_table(ORDER)?,
            balances: txn.open_table(BALANCES)?,
            meta: txn.open_table(META)?,
            owed: txn.open_table(OWED)?,
            intents: txn.open_table(intents::INTENTS)?,
            pending_intents: txn.open_table(intents::PENDING_INTENTS)?,
            legacy_pending: txn.open_table(LEGACY_PENDING)?,
            unpaid_in: txn.open_table(UNPAID_IN)?,
            payments_in: txn.open_table(PAYMENTS_IN)?,
            notice_acks: txn.open_table(NOTICE_ACKS)?,
            held_outputs: txn.open_table(HELD_OUTPUTS)?,
        })
    }

    pub(crate) fn get_receipt(
        &self,
        key: &ReceiptKey,
    ) -> Result<Option<StoredReceipt>, LedgerError> {
        match self.receipts.get(&key.to_bytes())? {
            Some(v) => Ok(Some(decode("receipts", v.value())?)),
            None => Ok(None),
        }
    }

    /// Whether this node issued the receipt and holds it awaiting its counter-signature.
    pub(crate) fn is_issued_here(&self, key: &ReceiptKey) -> Result<bool, LedgerError> {
        Ok(self.pending.get(&key.to_bytes())?.is_some()
            || self.legacy_pending.get(&key.to_bytes())?.is_some())
    }

    fn get_pending(&self, key: &ReceiptKey) -> Result<Option<PendingReceipt>, LedgerError> {
        match self.pending.get(&key.to_bytes())? {
            Some(v) => Ok(Some(decode("pending", v.value())?)),
            None => Ok(None),
        }
    }

    /// The receipt body (stored or pending) holding a pair sequence number, if any.
    fn body_at(
        &self,
        requester: &NodeId,
        worker: &NodeId,
        seq: u64,
    ) -> Result<Option<WorkReceipt>, LedgerError> {
        let Some(task) = self
            .pair_seq
            .get(&pair_seq_bytes(requester, worker, seq))?
            .map(|v| TaskId(*v.value()))
        else {
            return Ok(None);
        };
        let key = ReceiptKey {
            task,
            worker: *worker,
        };
        if let Some(r) = self.get_receipt(&key)? {
            return Ok(Some(r.terms));
        }
        if let Some(p) = self.get_pending(&key)? {
            return Ok(Some(p.receipt.body));
        }
        // An abandoned pending receipt leaves only its sequence number behind.
        Ok(match self.legacy_pending.get(&key.to_bytes())? {
            Some(v) => Some(crate::types::terms_of_v1(
                &decode::<LegacyPendingReceipt>("legacy_pending", v.value())?
                    .receipt
                    .body,
            )),
            None => None,
        })
    }

    /// Checks a receipt against the receipts of the same pair: its sequence number is free (or
    /// held by the same task) and the cumulative amounts chain with both neighbours.
    fn check_pair(&self, body: &WorkReceipt) -> Result<(), LedgerError> {
        let key = ReceiptKey::of(body);
        let (r, w, seq) = (&body.requester, &body.worker, body.pair_seq);
        if let Some(existing) = self.pair_seq.get(&pair_seq_bytes(r, w, seq))? {
            let existing = TaskId(*existing.value());
            if existing != body.task_id {
                return Err(LedgerError::SeqReused {
                    requester: *r,
                    worker: *w,
                    seq,
                    existing,
                });
            }
        }
        if seq > 1
            && let Some(prev) = self.body_at(r, w, seq - 1)?
        {
            let expected = prev
                .cumulative_stroops
                .checked_add(body.price_stroops)
                .ok_or(LedgerError::Overflow("cumulative amount"))?;
            if expected != body.cumulative_stroops {
                return Err(LedgerError::CumulativeMismatch {
                    key,
                    seq,
                    expected,
                    found: body.cumulative_stroops,
                });
            }
        }
        if let Some(next) = seq
            .checked_add(1)
            .map(|n| self.body_at(r, w, n))
            .transpose()?
            .flatten()
        {
            let expected = body
                .cumulative_stroops
                .checked_add(next.price_stroops)
                .ok_or(LedgerError::Overflow("cumulative amount"))?;
            if expected != next.cumulative_stroops {
                return Err(LedgerError::CumulativeMismatch {
                    key,
                    seq,
                    expected,
                    found: next.cumulative_stroops,
                });
            }
        }
        Ok(())
    }

    /// Records that a pair sequence number is taken and moves the issue counter past it.
    fn claim_seq(&mut self, body: &WorkReceipt) -> Result<(), LedgerError> {
        let (r, w, seq) = (&body.requester, &body.worker, body.pair_seq);
        self.pair_seq
            .insert(&pair_seq_bytes(r, w, seq), &body.task_id.0)?;
        let pair = pair_bytes(r, w);
        let (last, _) = self
            .counters
            .get(&pair)?
            .map(|v| v.value())
            .unwrap_or((0, 0));
        if seq > last {
            self.counters
                .insert(&pair, (seq, body.cumulative_stroops))?;
        }
        Ok(())
    }

    fn balance(&self, party: &NodeId) -> Result<CounterpartyBalance, LedgerError> {
        match self.balances.get(&party.0)? {
            Some(v) => decode("balances", v.value()),
            None => Ok(CounterpartyBalance::default()),
        }
    }

    fn put_balance(&mut self, party: &NodeId, b: &CounterpartyBalance) -> Result<(), LedgerError> {
        self.balances.insert(&party.0, encode(b)?.as_slice())?;
        Ok(())
    }

    /// Writes a stored receipt back with a new settlement state, keeping the totals in step.
    pub(crate) fn set_settlement(
        &mut self,
        rec: &mut StoredReceipt,
        to: Settlement,
    ) -> Result<(), LedgerError> {
        self.update(rec, |r| {
            r.settlement = to;
            Ok(())
        })
    }

    /// Changes a stored receipt and writes it back, keeping the totals and indexes in step.
    pub(crate) fn update(
        &mut self,
        rec: &mut StoredReceipt,
        change: impl FnOnce(&mut StoredReceipt) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        let party = rec.counterparty();
        let mut b = self.balance(&party)?;
        contribute(&mut b, rec, false)?;
        change(rec)?;
        contribute(&mut b, rec, true)?;
        self.put_balance(&party, &b)?;
        self.receipts
            .insert(&rec.key().to_bytes(), encode(rec)?.as_slice())?;
        self.index(rec)
    }

    /// Keeps the `owed` and `unpaid_in` indexes in step with one receipt's state.
    fn index(&mut self, rec: &StoredReceipt) -> Result<(), LedgerError> {
        let key = rec.key().to_bytes();
        if owed_now(rec) {
            self.owed.insert(&key, ())?;
        } else {
            self.owed.remove(&key)?;
        }
        let unpaid = unpaid_key(rec);
        if rec.role == Role::Worker && rec.remaining_stroops() > 0 {
            self.unpaid_in.insert(&unpaid, ())?;
        } else {
            self.unpaid_in.remove(&unpaid)?;
        }
        Ok(())
    }

    /// Writes a receipt that is not stored yet, with its totals and indexes.
    fn insert_new(&mut self, rec: &StoredReceipt) -> Result<(), LedgerError> {
        let key = rec.key().to_bytes();
        self.receipts.insert(&key, encode(rec)?.as_slice())?;
        self.order.insert(rec.order, &key)?;
        self.index(rec)?;
        let party = rec.counterparty();
        let mut b = self.balance(&party)?;
        contribute(&mut b, rec, true)?;
        count(&mut b, rec.role)?;
        self.put_balance(&party, &b)
    }

    fn next_order(&self) -> Result<u64, LedgerError> {
        Ok(match self.order.last()? {
            Some((k, _)) => k
                .value()
                .checked_add(1)
                .ok_or(LedgerError::Overflow("insertion number"))?,
            None => 1,
        })
    }
}

/// Whether a receipt belongs in the `owed` index: ours to pay, unpaid, checks passed.
fn owed_now(rec: &StoredReceipt) -> bool {
    rec.role == Role::Requester
        && rec.settlement == Settlement::Unsettled
        && rec.check == Check::Passed
}

/// The `unpaid_in` key: requester ‖ stored at ‖ task ‖ worker, so the first entry under a
/// requester is its oldest unpaid receipt.
fn unpaid_key(rec: &StoredReceipt) -> [u8; 104] {
    let mut k = [0u8; 104];
    k[..32].copy_from_slice(&rec.body().requester.0);
    k[32..40].copy_from_slice(&rec.stored_at.to_be_bytes());
    k[40..].copy_from_slice(&rec.key().to_bytes());
    k
}

/// The receipt ledger. Cheap to share behind an `Arc`; every method is a short transaction.
pub struct Ledger {
    db: Database,
    path: PathBuf,
    repaired_on_open: bool,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    /// Opens the ledger at `path`, creating the file (and its directory) if needed.
    ///
    /// The file's integrity is checked first; a damaged file is repaired by redb where it can
    /// be, and refused with [`LedgerError::Open`] where it cannot.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let open_err = |source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))?;
        }
        let shown = path.display().to_string();
        let repaired = Arc::new(AtomicBool::new(false));
        let flag = repaired.clone();
        // No integrity check on open: redb verifies checksums on every read and repairs by
        // itself after an unclean shutdown (a crash, kill -9), and only then does this
        // callback run; a check on every open would rescan the whole file each time a
        // command or the daemon starts. `Ledger::audit` checks the ledger's own invariants.
        let db = Database::builder()
            .set_repair_callback(move |session| {
                flag.store(true, Ordering::Relaxed);
                warn!(path = %shown, progress = session.progress(), "repairing ledger file after an unclean shutdown");
            })
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => LedgerError::InUse {
                    path: path.to_path_buf(),
                },
                other => open_err(other),
            })?;
        let ledger = Ledger {
            db,
            path: path.to_path_buf(),
            repaired_on_open: repaired.load(Ordering::Relaxed),
        };
        ledger.init_schema()?;
        info!(path = %path.display(), "ledger opened");
        Ok(ledger)
    }

    /// The file this ledger lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether opening had to repair the file: the last process to hold it did not close it
    /// (it crashed or was killed). A clean close never needs one.
    pub fn repaired_on_open(&self) -> bool {
        self.repaired_on_open
    }

    fn init_schema(&self) -> Result<(), LedgerError> {
        self.write(|t, txn| {
            let mut info = txn.open_table(INFO)?;
            let found = info.get("schema")?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => Err(LedgerError::Schema {
                    found: v,
                    supported: SCHEMA_VERSION,
                }),
                Some(v) if v == SCHEMA_VERSION => Ok(((), false)),
                Some(v) => {
                    migrate::run(t, v)?;
                    info.insert("schema", SCHEMA_VERSION)?;
                    Ok(((), true))
                }
                None => {
                    info.insert("schema", SCHEMA_VERSION)?;
                    Ok(((), true))
                }
            }
        })
    }

    /// Runs `f` in a write transaction. `f` returns its result and whether it changed
    /// anything; the transaction commits durably only then, and is aborted on error.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>, &WriteTransaction) -> Result<(T, bool), LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let result = {
            let mut tables = Tables::open(&txn)?;
            f(&mut tables, &txn)
        };
        match result {
            Ok((value, true)) => {
                txn.commit()?;
                Ok(value)
            }
            Ok((value, false)) => {
                txn.abort()?;
                Ok(value)
            }
            Err(e) => {
                // The error that matters is `e`; an abort failure would only hide it.
                if let Err(abort) = txn.abort() {
                    warn!(error = %abort, "aborting a failed ledger transaction failed");
                }
                Err(e)
            }
        }
    }

    /// Worker side: assigns this pair's next sequence number and cumulative total, lets
    /// `sign` build and sign the receipt, and persists it as awaiting counter-signature, all in
    /// one write transaction, so a crash can never reuse a sequence number.
    ///
    /// `sign` gets `(pair_seq, cumulative_stroops)`, the cumulative including `price_stroops`.
    /// The receipt it returns must be signed by `worker` and carry exactly these values.
    pub fn issue_receipt<E>(
        &self,
        requester: &NodeId,
        worker: &NodeId,
        price_stroops: u64,
        sign: impl FnOnce(u64, u64) -> Result<Signed<WorkReceipt>, E>,
    ) -> Result<Signed<WorkReceipt>, LedgerError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.write(|t, _| {
            let pair = pair_bytes(requester, worker);
            let (last, cumulative) = t.counters.get(&pair)?.map(|v| v.value()).unwrap_or((0, 0));
            let seq = last
                .checked_add(1)
                .ok_or(LedgerError::Overflow("pair sequence number"))?;
            let cumulative = cumulative
                .checked_add(price_stroops)
                .ok_or(LedgerError::Overflow("cumulative amount"))?;
            let signed = sign(seq, cumulative).map_err(|e| LedgerError::Sign(e.into()))?;
            let body = signed.verify_by(worker)?;
            let key = ReceiptKey::of(body);
            let wrong = |what: &str| invalid(key, format!("the signed receipt has a different {what} than assigned"));
            if &body.requester != requester {
                return Err(wrong("requester"));
            }
            if &body.worker != worker {
                return Err(wrong("worker"));
            }
            if body.price_stroops != price_stroops {
                return Err(wrong("price"));
            }
            if body.pair_seq != seq {
                return Err(wrong("pair sequence number"));
            }
            if body.cumulative_stroops != cumulative {
                return Err(wrong("cumulative amount"));
            }
            check_body(body)?;
            if t.receipts.get(&key.to_bytes())?.is_some()
                || t.pending.get(&key.to_bytes())?.is_some()
            {
                return Err(LedgerError::AlreadyIssued { key });
            }
            t.check_pair(body)?;
            t.claim_seq(body)?;
            let pending = PendingReceipt {
                receipt: signed.clone(),
                issued_at: now_ms(),
            };
            t.pending
                .insert(&key.to_bytes(), encode(&pending)?.as_slice())?;
            debug!(task = %key.task.short(), requester = %requester.short(), seq, cumulative, "receipt issued");
            Ok((signed, true))
        })
    }

    /// Checks a receipt as [`store_receipt`](Self::store_receipt) would, without storing it.
    ///
    /// A requester calls this on the worker's signed receipt before counter-signing, so it
    /// never signs a receipt its ledger would refuse.
    pub fn check_new_receipt(&self, signed: &Signed<WorkReceipt>) -> Result<(), LedgerError> {
        let body = signed.verify_by(&signed.body.worker)?;
        check_body(body)?;
        self.write(|t, _| {
            let key = ReceiptKey::of(body);
            if let Some(existing) = t.get_receipt(&key)?
                && existing.current().is_none_or(|r| r.inner != *signed)
            {
                return Err(LedgerError::Conflict { key });
            }
            t.check_pair(body)?;
            Ok(((), false))
        })
    }

    /// Stores a counter-signed receipt after verifying both signatures.
    ///
    /// Idempotent by (task, worker): the same receipt again returns [`Stored::AlreadyStored`].
    /// A different receipt under the same key, a reused pair sequence number, or a cumulative
    /// amount that does not chain with stored neighbours of the same pair is an error, and
    /// nothing changes. `check` is where the requester's checks of the work stand: a
    /// requester stores [`Check::AwaitingOutputs`] (the outputs come after its
    /// counter-signature), a worker [`Check::Passed`] (nothing disputed).
    pub fn store_receipt(
        &self,
        receipt: &Receipt,
        role: Role,
        check: Check,
    ) -> Result<Stored, LedgerError> {
        self.store_proof(ReceiptProof::Current(receipt.clone()), role, check)
    }

    /// Stores a counter-signed receipt signed under wire version 1 (a worker recovering one
    /// the requester counter-signed before the upgrade).
    pub fn store_legacy_receipt(
        &self,
        receipt: &ReceiptV1,
        role: Role,
    ) -> Result<Stored, LedgerError> {
        self.store_proof(ReceiptProof::V1(receipt.clone()), role, Check::Passed)
    }

    fn store_proof(
        &self,
        proof: ReceiptProof,
        role: Role,
        check: Check,
    ) -> Result<Stored, LedgerError> {
        let body = check_receipt(&proof)?;
        let key = ReceiptKey::of(&body);
        self.write(|t, _| {
            if let Some(existing) = t.get_receipt(&key)? {
                if existing.proof != proof {
                    return Err(LedgerError::Conflict { key });
                }
                if existing.role != role {
                    return Err(LedgerError::RoleConflict {
                        key,
                        stored: existing.role,
                        requested: role,
                    });
                }
                return Ok((Stored::AlreadyStored, false));
            }
            let as_issued = |stored: Role| {
                if role != Role::Worker {
                    return Err(LedgerError::RoleConflict {
                        key,
                        stored,
                        requested: role,
                    });
                }
                Ok(())
            };
            if let Some(p) = t.get_pending(&key)? {
                as_issued(Role::Worker)?;
                if !matches!(&proof, ReceiptProof::Current(r) if r.inner == p.receipt) {
                    return Err(LedgerError::NotAsIssued { key });
                }
                t.pending.remove(&key.to_bytes())?;
            }
            if let Some(v) = t.legacy_pending.remove(&key.to_bytes())? {
                let p: LegacyPendingReceipt = decode("legacy_pending", v.value())?;
                drop(v);
                as_issued(Role::Worker)?;
                if !matches!(&proof, ReceiptProof::V1(r) if r.inner == p.receipt) {
                    return Err(LedgerError::NotAsIssued { key });
                }
            }
            t.check_pair(&body)?;
            t.claim_seq(&body)?;
            let rec = StoredReceipt {
                terms: body.clone(),
                proof: proof.clone(),
                role,
                stored_at: now_ms(),
                order: t.next_order()?,
                settlement: Settlement::Unsettled,
                paid_stroops: 0,
                check: check.clone(),
            };
            t.insert_new(&rec)?;
            debug!(task = %key.task.short(), worker = %key.worker.short(), %role, seq = body.pair_seq, price = body.price_stroops, "receipt stored");
            Ok((Stored::New, true))
        })
    }

    /// The stored receipt for a task and worker.
    pub fn receipt(
        &self,
        task: &TaskId,
        worker: &NodeId,
    ) -> Result<Option<StoredReceipt>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECEIPTS)?;
        let key = ReceiptKey {
            task: *task,
            worker: *worker,
        };
        match table.get(&key.to_bytes())? {
            Some(v) => Ok(Some(decode("receipts", v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` stored receipts, newest first, optionally only those with `role`.
    pub fn receipts(
        &self,
        role: Option<Role>,
        limit: usize,
    ) -> Result<Vec<StoredReceipt>, LedgerError> {
        self.scan_receipts(limit, |r| role.is_none_or(|want| r.role == want))
    }

    /// Up to `limit` stored receipts matching `keep`, newest first.
    pub(crate) fn scan_receipts(
        &self,
        limit: usize,
        mut keep: impl FnMut(&StoredReceipt) -> bool,
    ) -> Result<Vec<StoredReceipt>, LedgerError> {
        let txn = self.db.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let receipts = txn.open_table(RECEIPTS)?;
        let mut out = Vec::new();
        for entry in order.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, key) = entry?;
            let Some(v) = receipts.get(key.value())? else {
                return Err(LedgerError::Inconsistent(
                    "an insertion-order entry points at a missing receipt".into(),
                ));
            };
            let rec: StoredReceipt = decode("receipts", v.value())?;
            if keep(&rec) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Receipts where this node is the requester that are neither paid nor being paid, in
    /// task order: what settlement plans from.
    pub fn owed_receipts(&self) -> Result<Vec<StoredReceipt>, LedgerError> {
        let txn = self.db.begin_read()?;
        let owed = txn.open_table(OWED)?;
        let receipts = txn.open_table(RECEIPTS)?;
        let mut out = Vec::new();
        for entry in owed.iter()? {
            let (k, _) = entry?;
            let Some(v) = receipts.get(k.value())? else {
                return Err(LedgerError::Inconsistent(
                    "an owed-index entry points at a missing receipt".into(),
                ));
            };
            out.push(decode("receipts", v.value())?);
        }
        Ok(out)
    }

    /// The receipt this node issued for a task and not yet saw counter-signed, if any; a
    /// worker re-sends it rather than issuing a new one.
    pub fn pending_receipt(
        &self,
        task: &TaskId,
        worker: &NodeId,
    ) -> Result<Option<PendingReceipt>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        let key = ReceiptKey {
            task: *task,
            worker: *worker,
        };
        match table.get(&key.to_bytes())? {
            Some(v) => Ok(Some(decode("pending", v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` receipts issued by this node and awaiting the requester's
    /// counter-signature, newest first.
    pub fn pending_receipts(&self, limit: usize) -> Result<Vec<PendingReceipt>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        let mut all = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            all.push(decode::<PendingReceipt>("pending", v.value())?);
        }
        all.sort_by(|a, b| {
            (b.issued_at, b.receipt.body.pair_seq).cmp(&(a.issued_at, a.receipt.body.pair_seq))
        });
        all.truncate(limit);
        Ok(all)
    }

    /// Worker side: keeps the signed outputs of a task until the requester took them, so a
    /// crash between its counter-signature and the delivery loses no paid work.
    pub fn hold_outputs(
        &self,
        outputs: &Signed<crank_protocol::TaskOutputs>,
    ) -> Result<(), LedgerError> {
        let key = ReceiptKey {
            task: outputs.body.task_id,
            worker: outputs.body.worker,
        };
        let bytes = encode(outputs)?;
        self.write(|t, _| {
            t.held_outputs.insert(&key.to_bytes(), bytes.as_slice())?;
            Ok(((), true))
        })
    }

    /// Outputs held for delivery, at most `limit`.
    pub fn held_outputs(
        &self,
        limit: usize,
    ) -> Result<Vec<Signed<crank_protocol::TaskOutputs>>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HELD_OUTPUTS)?;
        let mut out = Vec::new();
        for entry in table.iter()?.take(limit) {
            let (_, v) = entry?;
            out.push(decode("held_outputs", v.value())?);
        }
        Ok(out)
    }

    /// Drops held outputs once delivered (or when nobody will take them).
    pub fn release_outputs(&self, task: &TaskId, worker: &NodeId) -> Result<(), LedgerError> {
        let key = ReceiptKey {
            task: *task,
            worker: *worker,
        };
        self.write(|t, _| {
            let removed = t.held_outputs.remove(&key.to_bytes())?.is_some();
            Ok(((), removed))
        })
    }

    /// Receipts of wire version 1 this node issued and never saw counter-signed before the
    /// upgrade, at most `limit`: the worker asks their requesters for them.
    pub fn legacy_pending_receipts(
        &self,
        limit: usize,
    ) -> Result<Vec<LegacyPendingReceipt>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEGACY_PENDING)?;
        let mut out = Vec::new();
        for entry in table.iter()?.take(limit) {
            let (_, v) = entry?;
            out.push(decode("legacy_pending", v.value())?);
        }
        Ok(out)
    }

    /// Gives up on a receipt that will never be counter-signed. Its sequence number stays
    /// taken. Returns whether there was such a pending receipt.
    pub fn abandon_pending(&self, task: &TaskId, worker: &NodeId) -> Result<bool, LedgerError> {
        let key = ReceiptKey {
            task: *task,
            worker: *worker,
        };
        self.write(|t, _| {
            let removed = t.pending.remove(&key.to_bytes())?.is_some()
                | t.legacy_pending.remove(&key.to_bytes())?.is_some();
            t.held_outputs.remove(&key.to_bytes())?;
            if removed {
                info!(task = %key.task.short(), "pending receipt abandoned");
            }
            Ok((removed, removed))
        })
    }

    /// Balances per counterparty (owed by us, owed to us, settled) and in total.
    pub fn balances(&self) -> Result<Balances, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BALANCES)?;
        let mut out = Balances::default();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let b: CounterpartyBalance = decode("balances", v.value())?;
            add_totals(&mut out.total, &b)?;
            out.counterparties.insert(NodeId(*k.value()), b);
        }
        Ok(out)
    }

    /// Recomputes every total from the stored receipts and compares with the kept totals.
    ///
    /// Also checks that every insertion-order entry points at a receipt and the other way
    /// round. Reads the whole ledger; meant for tests, `doctor`-style commands and audits.
    pub fn audit(&self) -> Result<(), LedgerError> {
        let txn = self.db.begin_read()?;
        let receipts = txn.open_table(RECEIPTS)?;
        let order = txn.open_table(ORDER)?;
        let mut computed: BTreeMap<NodeId, CounterpartyBalance> = BTreeMap::new();
        let mut n = 0u64;
        for entry in receipts.iter()? {
            let (k, v) = entry?;
            let rec: StoredReceipt = decode("receipts", v.value())?;
            if rec.key().to_bytes() != *k.value() {
                return Err(LedgerError::Inconsistent(format!(
                    "receipt {} is stored under another key",
                    rec.key()
                )));
            }
            match order.get(rec.order)? {
                Some(o) if o.value() == k.value() => {}
                _ => {
                    return Err(LedgerError::Inconsistent(format!(
                        "receipt {} has no insertion-order entry",
                        rec.key()
                    )));
                }
            }
            if rec.proof.verify().ok().as_ref() != Some(&rec.terms) {
                return Err(LedgerError::Inconsistent(format!(
                    "receipt {} does not verify against its terms",
                    rec.key()
                )));
            }
            let b = computed.entry(rec.counterparty()).or_default();
            contribute(b, &rec, true)?;
            count(b, rec.role)?;
            n += 1;
        }
        let owed = txn.open_table(OWED)?;
        let unpaid_in = txn.open_table(UNPAID_IN)?;
        let mut n_owed = 0u64;
        let mut n_unpaid = 0u64;
        for entry in receipts.iter()? {
            let (k, v) = entry?;
            let rec: StoredReceipt = decode("receipts", v.value())?;
            let want = owed_now(&rec);
            if owed.get(k.value())?.is_some() != want {
                return Err(LedgerError::Inconsistent(format!(
                    "owed index disagrees with receipt {}",
                    rec.key()
                )));
            }
            n_owed += u64::from(want);
            let want = rec.role == Role::Worker && rec.remaining_stroops() > 0;
            if unpaid_in.get(&unpaid_key(&rec))?.is_some() != want {
                return Err(LedgerError::Inconsistent(format!(
                    "unpaid index disagrees with receipt {}",
                    rec.key()
                )));
            }
            n_unpaid += u64::from(want);
        }
        if owed.len()? != n_owed {
            return Err(LedgerError::Inconsistent(
                "owed index lists receipts that are not owed".into(),
            ));
        }
        if unpaid_in.len()? != n_unpaid {
            return Err(LedgerError::Inconsistent(
                "unpaid index lists receipts that are paid".into(),
            ));
        }
        if order.len()? != n {
            return Err(LedgerError::Inconsistent(format!(
                "{} insertion-order entries for {n} receipts",
                order.len()?
            )));
        }
        // Settlement states agree with the intents that caused them.
        let intents = txn.open_table(intents::INTENTS)?;
        let mut by_id: BTreeMap<u64, IntentRecord> = BTreeMap::new();
        for entry in intents.iter()? {
            let (k, v) = entry?;
            by_id.insert(k.value(), decode("intents", v.value())?);
        }
        for entry in receipts.iter()? {
            let (_, v) = entry?;
            let rec: StoredReceipt = decode("receipts", v.value())?;
            if let Settlement::InFlight { intent } = rec.settlement {
                let ok = by_id.get(&intent).is_some_and(|i| {
                    i.state == IntentState::Pending && i.draft.manifest.keys().contains(&rec.key())
                });
                if !ok {
                    return Err(LedgerError::Inconsistent(format!(
                        "receipt {} is reserved by intent {intent}, which is not a pending intent paying it",
                        rec.key()
                    )));
                }
            }
        }
        for i in by_id.values() {
            for key in i.draft.manifest.keys() {
                let Some(v) = receipts.get(&key.to_bytes())? else {
                    return Err(LedgerError::Inconsistent(format!(
                        "intent {} names missing receipt {key}",
                        i.id
                    )));
                };
                let rec: StoredReceipt = decode("receipts", v.value())?;
                let ok = match (&i.state, rec.settlement) {
                    (IntentState::Pending, Settlement::InFlight { intent }) => intent == i.id,
                    (IntentState::Settled { .. }, Settlement::Settled { tx_hash, .. }) => {
                        tx_hash == i.draft.tx_hash
                    }
                    // A failed intent's receipts may since be unpaid, reserved or paid by a
                    // later intent; they just must not claim this one.
                    (IntentState::Failed { .. }, Settlement::InFlight { intent }) => intent != i.id,
                    (IntentState::Failed { .. }, Settlement::Settled { tx_hash, .. }) => {
                        tx_hash != i.draft.tx_hash
                    }
                    (IntentState::Failed { .. }, Settlement::Unsettled) => true,
                    _ => false,
                };
                if !ok {
                    return Err(LedgerError::Inconsistent(format!(
                        "receipt {key} is {:?} but intent {} is {:?}",
                        rec.settlement, i.id, i.state
                    )));
                }
            }
        }
        let pending_index = txn.open_table(intents::PENDING_INTENTS)?;
        for i in by_id.values() {
            if pending_index.get(i.id)?.is_some() != (i.state == IntentState::Pending) {
                return Err(LedgerError::Inconsistent(format!(
                    "pending-intent index disagrees with intent {}",
                    i.id
                )));
            }
        }
        if pending_index.len()?
            != by_id
                .values()
                .filter(|i| i.state == IntentState::Pending)
                .count() as u64
        {
            return Err(LedgerError::Inconsistent(
                "pending-intent index lists unknown intents".into(),
            ));
        }
        drop((receipts, order, intents, owed, pending_index, unpaid_in));
        let kept = self.balances()?;
        let mut kept_nonzero = kept.counterparties;
        kept_nonzero.retain(|_, b| *b != CounterpartyBalance::default());
        if kept_nonzero != computed {
            return Err(LedgerError::Inconsistent(
                "kept per-counterparty totals differ from the sum of the stored receipts".into(),
            ));
        }
        Ok(())
    }

    /// Stores a small piece of node state (for example the trust book) under `key`.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), LedgerError> {
        if key.len() > MAX_META_KEY {
            return Err(LedgerError::MetaTooLarge {
                what: "key",
                len: key.len(),
                limit: MAX_META_KEY,
            });
        }
        if value.len() > MAX_META_VALUE {
            return Err(LedgerError::MetaTooLarge {
                what: "value",
                len: value.len(),
                limit: MAX_META_VALUE,
            });
        }
        self.write(|t, _| {
            t.meta.insert(key, value)?;
            Ok(((), true))
        })
    }

    /// Reads what [`put_meta`](Self::put_meta) stored under `key`.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crank_protocol::{
        ContentHash, CounterSigned, Energy, EnergyMethod, ExecPath, Identity, ModelId, Timings,
    };

    pub(crate) const PAYOUT: &str = "GDJJRRMBK4IWLEPJGIE6SXD2LP7REGZODU7WDC3I2D6MR37F4XSHBKX2";
    /// The account the requester pays from, as every test receipt names it.
    pub(crate) const PAYER: &str = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";

    pub(crate) fn id(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    pub(crate) fn body(
        task: u8,
        requester: &Identity,
        worker: &Identity,
        price: u64,
        seq: u64,
        cumulative: u64,
    ) -> WorkReceipt {
        WorkReceipt {
            task_id: TaskId([task; 32]),
            requester: requester.node_id(),
            worker: worker.node_id(),
            model: ModelId([7; 32]),
            input_hash: ContentHash([8; 32]),
            output_hash: ContentHash([9; 32]),
            price_stroops: price,
            energy: Energy {
                microjoules: 10_000,
                method: EnergyMethod::CpuTimeEstimate,
            },
            path: ExecPath::Cpu,
            timings: Timings {
                accepted_at: 1,
                started_at: 2,
                finished_at: 3,
                run_micros: 4,
            },
            pair_seq: seq,
            cumulative_stroops: cumulative,
            payout: PAYOUT.into(),
            payer: PAYER.into(),
        }
    }

    pub(crate) fn countersigned(
        b: WorkReceipt,
        worker: &Identity,
        requester: &Identity,
    ) -> Receipt {
        let s = Signed::sign(b, worker).unwrap();
        CounterSigned::countersign(s, requester).unwrap()
    }

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("sub").join("ledger.redb")).unwrap();
        (dir, l)
    }

    /// Outputs under a spot check wait as delivered: not payable until the check passes or
    /// the dispute window ends, and a failed check disputes them for good.
    #[test]
    fn held_outputs_are_payable_only_once_checked() {
        use crate::types::Check;
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        let now = crate::ledger::now_ms();
        for (task, pass) in [(1u8, true), (2, false)] {
            let seq = u64::from(task);
            let r = countersigned(body(task, &req, &wrk, 500, seq, 500 * seq), &wrk, &req);
            l.store_receipt(&r, Role::Requester, Check::AwaitingOutputs { since: now })
                .unwrap();
            let key = crate::types::ReceiptKey::of(&r.inner.body);
            assert!(l.outputs_delivered(&key, now).unwrap());
            // Delivered only once.
            assert!(!l.outputs_delivered(&key, now).unwrap());
            let check = l.receipt(&key.task, &key.worker).unwrap().unwrap().check;
            assert!(!check.payable(now, 600_000), "{check}");
            assert!(check.payable(now + 600_000, 600_000));
            if pass {
                assert!(l.outputs_passed(&key).unwrap());
                let check = l.receipt(&key.task, &key.worker).unwrap().unwrap().check;
                assert!(check.payable(now, 600_000));
            } else {
                let dispute = Signed::sign(
                    crank_protocol::Dispute {
                        receipt: r.inner.clone(),
                        requester: req.node_id(),
                        reason: crank_protocol::DisputeReason::CheckFailed {
                            message: "outvoted by two independent replicas".into(),
                        },
                        at: now,
                    },
                    &req,
                )
                .unwrap();
                assert!(l.record_dispute(&dispute).unwrap());
                // A check that passes later changes nothing.
                assert!(!l.outputs_passed(&key).unwrap());
                let check = l.receipt(&key.task, &key.worker).unwrap().unwrap().check;
                assert!(check.is_disputed());
                assert!(!check.payable(now + 600_000, 600_000));
            }
        }
    }

    #[test]
    fn issue_then_store_moves_pending_to_stored() {
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        let issued = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 500, |seq, cum| {
                Signed::sign(body(1, &req, &wrk, 500, seq, cum), &wrk)
            })
            .unwrap();
        assert_eq!(issued.body.pair_seq, 1);
        assert_eq!(issued.body.cumulative_stroops, 500);
        assert_eq!(l.pending_receipts(10).unwrap().len(), 1);
        let second = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 300, |seq, cum| {
                Signed::sign(body(2, &req, &wrk, 300, seq, cum), &wrk)
            })
            .unwrap();
        assert_eq!(
            (second.body.pair_seq, second.body.cumulative_stroops),
            (2, 800)
        );

        let cs = CounterSigned::countersign(issued.clone(), &req).unwrap();
        assert_eq!(
            l.store_receipt(&cs, Role::Worker, Check::Passed).unwrap(),
            Stored::New
        );
        assert_eq!(
            l.store_receipt(&cs, Role::Worker, Check::Passed).unwrap(),
            Stored::AlreadyStored
        );
        assert_eq!(l.pending_receipts(10).unwrap().len(), 1);
        let b = l.balances().unwrap();
        assert_eq!(b.counterparties[&req.node_id()].owed_to_us_stroops, 500);
        l.audit().unwrap();
    }

    #[test]
    fn sign_failure_stores_nothing_and_keeps_the_number() {
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        let err = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 5, |_, _| {
                Err(SignatureError::Encode("boom".into()))
            })
            .unwrap_err();
        assert!(matches!(err, LedgerError::Sign(_)), "{err}");
        let r = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
                Signed::sign(body(1, &req, &wrk, 5, s, c), &wrk)
            })
            .unwrap();
        assert_eq!(r.body.pair_seq, 1, "a failed issue consumes no number");
    }

    #[test]
    fn issue_refuses_a_receipt_that_lies_about_its_numbers() {
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        let err = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
                Signed::sign(body(1, &req, &wrk, 5, s + 1, c + 5), &wrk)
            })
            .unwrap_err();
        assert!(matches!(err, LedgerError::InvalidReceipt { .. }), "{err}");
        let err = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
                Signed::sign(body(1, &req, &wrk, 5, s, c), &id(3))
            })
            .unwrap_err();
        assert!(matches!(err, LedgerError::Signature(_)), "{err}");
        assert!(l.pending_receipts(10).unwrap().is_empty());
    }

    #[test]
    fn counter_signed_receipt_must_match_what_was_issued() {
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        l.issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
            Signed::sign(body(1, &req, &wrk, 5, s, c), &wrk)
        })
        .unwrap();
        let mut other = body(1, &req, &wrk, 5, 1, 5);
        other.output_hash = ContentHash([1; 32]);
        let err = l
            .store_receipt(
                &countersigned(other, &wrk, &req),
                Role::Worker,
                Check::Passed,
            )
            .unwrap_err();
        assert!(matches!(err, LedgerError::NotAsIssued { .. }), "{err}");
    }

    #[test]
    fn abandoned_numbers_are_never_reused() {
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        let first = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
                Signed::sign(body(1, &req, &wrk, 5, s, c), &wrk)
            })
            .unwrap();
        assert!(
            l.abandon_pending(&first.body.task_id, &wrk.node_id())
                .unwrap()
        );
        assert!(
            !l.abandon_pending(&first.body.task_id, &wrk.node_id())
                .unwrap()
        );
        let next = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
                Signed::sign(body(2, &req, &wrk, 5, s, c), &wrk)
            })
            .unwrap();
        assert_eq!(next.body.pair_seq, 2);
        // Someone replaying a receipt for the abandoned number with another task is refused.
        let reuse = countersigned(body(3, &req, &wrk, 5, 1, 5), &wrk, &req);
        assert!(matches!(
            l.store_receipt(&reuse, Role::Requester, Check::Passed)
                .unwrap_err(),
            LedgerError::SeqReused { .. }
        ));
    }

    #[test]
    fn conflicts_are_errors_and_change_nothing() {
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        let a = countersigned(body(1, &req, &wrk, 100, 1, 100), &wrk, &req);
        l.store_receipt(&a, Role::Requester, Check::Passed).unwrap();
        // Same key, different content.
        let b = countersigned(body(1, &req, &wrk, 100, 2, 200), &wrk, &req);
        assert!(matches!(
            l.store_receipt(&b, Role::Requester, Check::Passed)
                .unwrap_err(),
            LedgerError::Conflict { .. }
        ));
        // Same receipt, other role.
        assert!(matches!(
            l.store_receipt(&a, Role::Worker, Check::Passed)
                .unwrap_err(),
            LedgerError::RoleConflict { .. }
        ));
        // Sequence number reused by another task.
        let c = countersigned(body(2, &req, &wrk, 100, 1, 100), &wrk, &req);
        assert!(matches!(
            l.store_receipt(&c, Role::Requester, Check::Passed)
                .unwrap_err(),
            LedgerError::SeqReused { .. }
        ));
        // Cumulative does not chain with the predecessor.
        let d = countersigned(body(3, &req, &wrk, 100, 2, 250), &wrk, &req);
        assert!(matches!(
            l.store_receipt(&d, Role::Requester, Check::Passed)
                .unwrap_err(),
            LedgerError::CumulativeMismatch {
                expected: 200,
                found: 250,
                ..
            }
        ));
        // A successor arriving first constrains the predecessor.
        let f = countersigned(body(5, &req, &wrk, 100, 4, 400), &wrk, &req);
        l.store_receipt(&f, Role::Requester, Check::Passed).unwrap();
        let e = countersigned(body(4, &req, &wrk, 100, 3, 350), &wrk, &req);
        assert!(matches!(
            l.store_receipt(&e, Role::Requester, Check::Passed)
                .unwrap_err(),
            LedgerError::CumulativeMismatch { .. }
        ));
        // With seq 2 missing, only the successor constrains seq 3: 300 + 100 = 400 chains.
        let e = countersigned(body(4, &req, &wrk, 100, 3, 300), &wrk, &req);
        assert_eq!(
            l.store_receipt(&e, Role::Requester, Check::Passed).unwrap(),
            Stored::New
        );
        l.audit().unwrap();
    }

    #[test]
    fn bad_signatures_and_parties_are_refused() {
        let (_d, l) = ledger();
        let (req, wrk) = (id(1), id(2));
        let mut r = countersigned(body(1, &req, &wrk, 100, 1, 100), &wrk, &req);
        r.countersignature.0[0] ^= 1;
        assert!(matches!(
            l.store_receipt(&r, Role::Requester, Check::Passed)
                .unwrap_err(),
            LedgerError::Signature(_)
        ));
        // Counter-signed by a third party.
        let r = countersigned(body(1, &req, &wrk, 100, 1, 100), &wrk, &id(3));
        assert!(matches!(
            l.store_receipt(&r, Role::Requester, Check::Passed)
                .unwrap_err(),
            LedgerError::Signature(SignatureError::WrongSigner { .. })
        ));
        // A payer that is not a Stellar account.
        let mut b = body(1, &req, &wrk, 100, 1, 100);
        b.payer = "GNOTANACCOUNT".into();
        assert!(matches!(
            l.store_receipt(
                &countersigned(b, &wrk, &req),
                Role::Requester,
                Check::Passed
            )
            .unwrap_err(),
            LedgerError::InvalidReceipt { .. }
        ));
        let mut b = body(1, &req, &wrk, 100, 1, 100);
        b.payout = "GNOTANACCOUNT".into();
        assert!(matches!(
            l.store_receipt(
                &countersigned(b, &wrk, &req),
                Role::Requester,
                Check::Passed
            )
            .unwrap_err(),
            LedgerError::InvalidReceipt { .. }
        ));
        let b = body(1, &req, &wrk, 100, 1, 150);
        assert!(matches!(
            l.store_receipt(
                &countersigned(b, &wrk, &req),
                Role::Requester,
                Check::Passed
            )
            .unwrap_err(),
            LedgerError::InvalidReceipt { .. }
        ));
        assert!(l.receipts(None, 10).unwrap().is_empty());
        l.audit().unwrap();
    }

    #[test]
    fn listing_is_newest_first_and_filters_by_role() {
        let (_d, l) = ledger();
        let (me, a, b) = (id(1), id(2), id(3));
        for (i, w) in [&a, &b, &a].iter().enumerate() {
            let seq = if i == 2 { 2 } else { 1 };
            let r = countersigned(body(i as u8, &me, w, 10, seq, 10 * seq), w, &me);
            l.store_receipt(&r, Role::Requester, Check::Passed).unwrap();
        }
        let r = countersigned(body(9, &a, &me, 7, 1, 7), &me, &a);
        l.store_receipt(&r, Role::Worker, Check::Passed).unwrap();
        let all = l.receipts(None, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].body().task_id, TaskId([9; 32]));
        assert!(all.windows(2).all(|w| w[0].order > w[1].order));
        assert_eq!(l.receipts(Some(Role::Requester), 2).unwrap().len(), 2);
        assert_eq!(l.receipts(Some(Role::Worker), 10).unwrap().len(), 1);
        let bal = l.balances().unwrap();
        assert_eq!(bal.counterparties[&a.node_id()].owed_by_us_stroops, 20);
        assert_eq!(bal.counterparties[&a.node_id()].owed_to_us_stroops, 7);
        assert_eq!(bal.total.owed_by_us_stroops, 30);
        let got = l.receipt(&TaskId([9; 32]), &me.node_id()).unwrap().unwrap();
        assert_eq!(got.role, Role::Worker);
        assert_eq!(got.counterparty(), a.node_id());
        l.audit().unwrap();
    }

    #[test]
    fn outputs_are_held_until_delivered_or_abandoned() {
        let (_d, l) = ledger();
        let (req, me) = (id(1), id(2));
        let outputs = |task: u8| {
            Signed::sign(
                crank_protocol::TaskOutputs {
                    task_id: TaskId([task; 32]),
                    worker: me.node_id(),
                    requester: req.node_id(),
                    outputs: vec![],
                },
                &me,
            )
            .unwrap()
        };
        l.hold_outputs(&outputs(1)).unwrap();
        l.hold_outputs(&outputs(2)).unwrap();
        assert_eq!(l.held_outputs(10).unwrap(), vec![outputs(1), outputs(2)]);
        // Delivered: dropped.
        l.release_outputs(&TaskId([1; 32]), &me.node_id()).unwrap();
        assert_eq!(l.held_outputs(10).unwrap(), vec![outputs(2)]);
        // The requester never counter-signed: abandoning the receipt drops its outputs too.
        l.issue_receipt(&req.node_id(), &me.node_id(), 10, |seq, cum| {
            Signed::sign(body(2, &req, &me, 10, seq, cum), &me)
        })
        .unwrap();
        assert!(l.abandon_pending(&TaskId([2; 32]), &me.node_id()).unwrap());
        assert!(l.held_outputs(10).unwrap().is_empty());
        // They survive a reopen.
        l.hold_outputs(&outputs(3)).unwrap();
        let path = l.path().to_path_buf();
        drop(l);
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.held_outputs(10).unwrap(), vec![outputs(3)]);
    }

    #[test]
    fn a_payment_for_a_receipt_not_recovered_yet_waits_for_it() {
        let (_d, l) = ledger();
        let (req, me) = (id(1), id(2));
        let issued = l
            .issue_receipt(&req.node_id(), &me.node_id(), 100, |seq, cum| {
                Signed::sign(body(1, &req, &me, 100, seq, cum), &me)
            })
            .unwrap();
        let covered = crate::manifest::Covered {
            lines: vec![crate::manifest::ManifestLine {
                payout: PAYOUT.into(),
                task: issued.body.task_id,
                worker: me.node_id(),
                amount_stroops: 100,
            }],
            received_stroops: 100,
        };
        let h = crate::TxHash([5; 32]);
        // Crashed before storing the counter-signature: the payment is not used up…
        assert!(matches!(
            l.record_payment(h, &req.node_id(), PAYER, &covered),
            Err(LedgerError::NotPayable { .. })
        ));
        assert!(l.payment_in(&h).unwrap().is_none());
        // …and once the receipt is recovered, the next notice credits it in full.
        let cs = CounterSigned::countersign(issued, &req).unwrap();
        l.store_receipt(&cs, Role::Worker, Check::Passed).unwrap();
        let p = l
            .record_payment(h, &req.node_id(), PAYER, &covered)
            .unwrap();
        assert_eq!(p.record().credits.len(), 1);
        assert!(
            l.receipt(&cs.inner.body.task_id, &me.node_id())
                .unwrap()
                .unwrap()
                .settlement
                .is_settled()
        );
        l.audit().unwrap();
    }

    #[test]
    fn worker_records_payment_received() {
        let (_d, l) = ledger();
        let (req, me) = (id(1), id(2));
        let a = countersigned(body(1, &req, &me, 100, 1, 100), &me, &req);
        let b = countersigned(body(2, &req, &me, 50, 2, 150), &me, &req);
        l.store_receipt(&a, Role::Worker, Check::Passed).unwrap();
        l.store_receipt(&b, Role::Worker, Check::Passed).unwrap();
        let line = |r: &Receipt| crate::manifest::ManifestLine {
            payout: r.inner.body.payout.clone(),
            task: r.inner.body.task_id,
            worker: r.inner.body.worker,
            amount_stroops: r.inner.body.price_stroops,
        };
        let covered = crate::manifest::Covered {
            lines: vec![line(&a), line(&b)],
            received_stroops: 150,
        };
        let h = crate::TxHash([3; 32]);
        let first = l
            .record_payment(h, &req.node_id(), PAYER, &covered)
            .unwrap();
        let RecordedPayment::New(p) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(p.credits.iter().map(|c| c.stroops).sum::<u64>(), 150);
        assert_eq!(p.unallocated_stroops, 0);
        assert!(p.ignored.is_empty(), "{:?}", p.ignored);
        // The same transaction again changes nothing.
        assert_eq!(
            l.record_payment(h, &req.node_id(), PAYER, &covered)
                .unwrap(),
            RecordedPayment::AlreadyRecorded(p.clone())
        );
        // Another transaction for receipts already paid: recorded as overpaid.
        let again = l
            .record_payment(crate::TxHash([4; 32]), &req.node_id(), PAYER, &covered)
            .unwrap();
        assert_eq!(again.record().credits.len(), 2);
        for r in [&a, &b] {
            let s = l
                .receipt(&r.inner.body.task_id, &me.node_id())
                .unwrap()
                .unwrap();
            assert!(
                matches!(s.settlement, Settlement::Settled { tx_hash, .. } if tx_hash == h),
                "settled by the first payment: {:?}",
                s.settlement
            );
            assert_eq!(s.paid_stroops, 2 * r.inner.body.price_stroops);
        }
        let bal = l.balances().unwrap().total;
        assert_eq!(
            (
                bal.owed_to_us_stroops,
                bal.paid_to_us_stroops,
                bal.overpaid_to_us_stroops
            ),
            (0, 150, 150)
        );
        l.audit().unwrap();
    }

    #[test]
    fn meta_round_trips_and_is_bounded() {
        let (_d, l) = ledger();
        assert_eq!(l.get_meta("trust").unwrap(), None);
        l.put_meta("trust", b"book").unwrap();
        assert_eq!(l.get_meta("trust").unwrap().unwrap(), b"book");
        assert!(matches!(
            l.put_meta(&"k".repeat(MAX_META_KEY + 1), b"").unwrap_err(),
            LedgerError::MetaTooLarge { .. }
        ));
    }

    #[test]
    fn survives_reopen_and_refuses_a_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let (req, wrk) = (id(1), id(2));
        {
            let l = Ledger::open(&path).unwrap();
            l.issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
                Signed::sign(body(1, &req, &wrk, 5, s, c), &wrk)
            })
            .unwrap();
            assert!(matches!(
                Ledger::open(&path).unwrap_err(),
                LedgerError::InUse { .. }
            ));
        }
        let l = Ledger::open(&path).unwrap();
        let next = l
            .issue_receipt(&req.node_id(), &wrk.node_id(), 5, |s, c| {
                Signed::sign(body(2, &req, &wrk, 5, s, c), &wrk)
            })
            .unwrap();
        assert_eq!((next.body.pair_seq, next.body.cumulative_stroops), (2, 10));
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        std::fs::write(&path, vec![0xA5u8; 10_000]).unwrap();
        assert!(matches!(
            Ledger::open(&path).unwrap_err(),
            LedgerError::Open { .. }
        ));
    }
}

#[cfg(test)]
mod props {
    //! Model-based property tests: random interleavings of genuine, repeated and forged
    //! receipts against a plain in-memory model of what the ledger must accept.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::tests::{body, countersigned, id};
    use super::*;
    use crank_protocol::{ContentHash, Identity};

    /// (requester, worker, our role) for the three pairs under test; node 1 is "us".
    fn pairs() -> [(Identity, Identity, Role); 3] {
        [
            (id(1), id(2), Role::Requester),
            (id(1), id(3), Role::Requester),
            (id(4), id(1), Role::Worker),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Store receipt `k` of pair `p`; `forgery` 0 is genuine, 1..=3 are forgeries.
        Store { p: usize, k: usize, forgery: u8 },
        /// Close and reopen the ledger file.
        Reopen,
        /// Record an intent paying the unsettled requester-side receipts picked by `mask`.
        Intent { mask: u32 },
        /// End the pending intent, settled or failed.
        Finish { settle: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..3usize, 0..6usize, prop_oneof![4 => Just(0u8), 1 => 1..=3u8])
                .prop_map(|(p, k, forgery)| Op::Store { p, k, forgery }),
            1 => Just(Op::Reopen),
            2 => any::<u32>().prop_map(|mask| Op::Intent { mask }),
            2 => any::<bool>().prop_map(|settle| Op::Finish { settle }),
        ]
    }

    /// Builds receipt `k` of pair `p`: the genuine one, or a forgery that contradicts it.
    fn make(p: usize, k: usize, forgery: u8, prices: &[u64]) -> Receipt {
        let pairs = pairs();
        let (req, wrk, _) = &pairs[p];
        let seq = k as u64 + 1;
        let cumulative: u64 = prices[..=k].iter().sum();
        let task = |variant: u8| (p as u8) * 64 + (k as u8) * 4 + variant;
        let mut b = body(task(0), req, wrk, prices[k], seq, cumulative);
        match forgery {
            0 => {}
            // Same task and worker, different content.
            1 => b.output_hash = ContentHash([0xEE; 32]),
            // Another task claiming the same sequence number, amounts consistent.
            2 => b.task_id = TaskId([task(2); 32]),
            // Another task at the same number with a cumulative off by one.
            _ => {
                b.task_id = TaskId([task(3); 32]);
                b.cumulative_stroops += 1;
            }
        }
        countersigned(b, wrk, req)
    }

    /// What the ledger must answer, from the model: stored receipts by key and by pair seq.
    fn expect(
        model: &BTreeMap<ReceiptKey, (Receipt, Role)>,
        r: &Receipt,
        role: Role,
    ) -> Result<Stored, &'static str> {
        let b = &r.inner.body;
        if b.pair_seq == 1 && b.cumulative_stroops != b.price_stroops {
            return Err("invalid");
        }
        if let Some((stored, _)) = model.get(&ReceiptKey::of(b)) {
            return if stored == r {
                Ok(Stored::AlreadyStored)
            } else {
                Err("conflict")
            };
        }
        let at = |seq: u64| {
            model.values().find(|(s, _)| {
                let s = &s.inner.body;
                s.requester == b.requester && s.worker == b.worker && s.pair_seq == seq
            })
        };
        if at(b.pair_seq).is_some() {
            return Err("seq reused");
        }
        if let Some((prev, _)) = at(b.pair_seq - 1)
            && prev.inner.body.cumulative_stroops + b.price_stroops != b.cumulative_stroops
        {
            return Err("cumulative");
        }
        if let Some((next, _)) = at(b.pair_seq + 1)
            && b.cumulative_stroops + next.inner.body.price_stroops
                != next.inner.body.cumulative_stroops
        {
            return Err("cumulative");
        }
        let _ = role;
        Ok(Stored::New)
    }

    fn kind(e: &LedgerError) -> &'static str {
        match e {
            LedgerError::Conflict { .. } => "conflict",
            LedgerError::SeqReused { .. } => "seq reused",
            LedgerError::CumulativeMismatch { .. } => "cumulative",
            LedgerError::InvalidReceipt { .. } => "invalid",
            _ => "other",
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn ledger_matches_model(
            prices in proptest::collection::vec(proptest::collection::vec(0u64..1_000, 6), 3),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("l.redb");
            let mut ledger = Some(Ledger::open(&path).unwrap());
            let mut model: BTreeMap<ReceiptKey, (Receipt, Role)> = BTreeMap::new();
            // Payment state per receipt, as the model sees it.
            let mut paid: BTreeMap<ReceiptKey, Settlement> = BTreeMap::new();
            let mut pending: Option<(u64, Vec<ReceiptKey>, crate::TxHash)> = None;
            let mut next_intent = 1u64;
            let roles = pairs().map(|(_, _, r)| r);
            for op in ops {
                match op {
                    Op::Intent { mask } => {
                        let l = ledger.as_ref().unwrap();
                        let picked: Vec<&Receipt> = model
                            .iter()
                            .filter(|(k, (_, role))| {
                                *role == Role::Requester
                                    && paid.get(*k).is_none_or(|s| *s == Settlement::Unsettled)
                            })
                            .enumerate()
                            .filter(|(i, _)| mask & (1 << (i % 32)) != 0)
                            .map(|(_, (_, (r, _)))| r)
                            .filter(|r| r.inner.body.price_stroops > 0)
                            .collect();
                        if picked.is_empty() {
                            continue;
                        }
                        let lines = picked
                            .iter()
                            .map(|r| crate::manifest::ManifestLine {
                                payout: r.inner.body.payout.clone(),
                                task: r.inner.body.task_id,
                                worker: r.inner.body.worker,
                                amount_stroops: r.inner.body.price_stroops,
                            })
                            .collect();
                        let manifest = crate::manifest::Manifest::new(lines).unwrap();
                        let tx_hash = crate::TxHash([next_intent as u8; 32]);
                        let draft = IntentDraft {
                            payer: super::tests::PAYER.into(),
                            sequence: next_intent as i64,
                            max_time: 0,
                            tx_hash,
                            envelope_xdr: "AAAA".into(),
                            manifest: manifest.clone(),
                        };
                        let got = l.create_intent(draft);
                        if pending.is_some() {
                            prop_assert!(matches!(got, Err(LedgerError::IntentState { .. })), "{:?}", got);
                        } else {
                            let rec = got.unwrap();
                            prop_assert_eq!(rec.id, next_intent);
                            for k in manifest.keys() {
                                paid.insert(k, Settlement::InFlight { intent: rec.id });
                            }
                            pending = Some((rec.id, manifest.keys(), tx_hash));
                            next_intent += 1;
                        }
                    }
                    Op::Finish { settle } => {
                        let l = ledger.as_ref().unwrap();
                        let Some((id, keys, hash)) = pending.take() else { continue };
                        if settle {
                            l.settle_intent(id, 7, 100).unwrap();
                            // Idempotent, and a settled intent cannot fail.
                            l.settle_intent(id, 7, 100).unwrap();
                            prop_assert!(l.fail_intent(id, "late").is_err());
                            for k in keys {
                                paid.insert(k, Settlement::Settled { tx_hash: hash, settled_at: 0 });
                            }
                        } else {
                            l.fail_intent(id, "test").unwrap();
                            prop_assert!(l.settle_intent(id, 7, 100).is_err());
                            for k in keys {
                                paid.insert(k, Settlement::Unsettled);
                            }
                        }
                    }
                    Op::Reopen => {
                        // The old handle must close before the file can be opened again.
                        drop(ledger.take());
                        ledger = Some(Ledger::open(&path).unwrap());
                    }
                    Op::Store { p, k, forgery } => {
                        let l = ledger.as_ref().unwrap();
                        let r = make(p, k, forgery, &prices[p]);
                        let want = expect(&model, &r, roles[p]);
                        let got = l.store_receipt(&r, roles[p], Check::Passed);
                        match (&want, &got) {
                            (Ok(w), Ok(g)) => prop_assert_eq!(w, g),
                            (Err(w), Err(g)) => prop_assert_eq!(*w, kind(g), "{}", g),
                            _ => prop_assert!(false, "model {:?}, ledger {:?}", want, got),
                        }
                        if want == Ok(Stored::New) {
                            model.insert(ReceiptKey::of(&r.inner.body), (r, roles[p]));
                        }
                    }
                }
            }
            let l = ledger.as_ref().unwrap();
            // No lost receipt, nothing extra.
            let listed = l.receipts(None, usize::MAX).unwrap();
            prop_assert_eq!(listed.len(), model.len());
            for (key, (r, role)) in &model {
                let got = l.receipt(&key.task, &key.worker).unwrap().unwrap();
                prop_assert_eq!(got.current(), Some(r));
                prop_assert_eq!(got.role, *role);
                // Exactly the payment state the model expects (settled times aside).
                let want = paid.get(key).copied().unwrap_or(Settlement::Unsettled);
                match (got.settlement, want) {
                    (Settlement::Settled { tx_hash: a, .. }, Settlement::Settled { tx_hash: b, .. }) => prop_assert_eq!(a, b),
                    (g, w) => prop_assert_eq!(g, w),
                }
                // Re-storing is idempotent.
                prop_assert_eq!(l.store_receipt(r, *role, Check::Passed).unwrap(), Stored::AlreadyStored);
            }
            // Cumulative consistency between stored neighbours of each pair.
            for a in &listed {
                for b in &listed {
                    let (x, y) = (a.body(), b.body());
                    if x.requester == y.requester && x.worker == y.worker && y.pair_seq == x.pair_seq + 1 {
                        prop_assert_eq!(x.cumulative_stroops + y.price_stroops, y.cumulative_stroops);
                    }
                }
            }
            // Totals equal the sum of the receipts.
            l.audit().unwrap();
            let bal = l.balances().unwrap();
            let state = |k: &ReceiptKey| paid.get(k).copied().unwrap_or(Settlement::Unsettled);
            let sum = |f: &dyn Fn(&ReceiptKey, Role) -> bool| -> u64 {
                model.iter().filter(|(k, (_, role))| f(k, *role)).map(|(_, (r, _))| r.inner.body.price_stroops).sum()
            };
            let owed_by_us = sum(&|k, role| role == Role::Requester && !state(k).is_settled());
            let in_flight = sum(&|k, role| role == Role::Requester && matches!(state(k), Settlement::InFlight { .. }));
            let paid_by_us = sum(&|k, role| role == Role::Requester && state(k).is_settled());
            prop_assert_eq!(bal.total.in_flight_stroops, in_flight);
            prop_assert_eq!(bal.total.paid_by_us_stroops, paid_by_us);
            prop_assert_eq!(l.pending_intents().unwrap().len(), usize::from(pending.is_some()));
            let owed_now = model
                .iter()
                .filter(|(k, (_, role))| *role == Role::Requester && state(k) == Settlement::Unsettled)
                .count();
            prop_assert_eq!(l.owed_receipts().unwrap().len(), owed_now);
            let owed_to_us: u64 = model.values().filter(|(_, r)| *r == Role::Worker).map(|(r, _)| r.inner.body.price_stroops).sum();
            prop_assert_eq!(bal.total.owed_by_us_stroops, owed_by_us);
            prop_assert_eq!(bal.total.owed_to_us_stroops, owed_to_us);
            prop_assert_eq!(bal.total.receipts_as_requester + bal.total.receipts_as_worker, model.len() as u64);
        }
    }
}
