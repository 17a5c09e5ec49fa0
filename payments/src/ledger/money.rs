//! Money on the worker's side and checks on the requester's: crediting verified payments to
//! receipts, each requester's standing, disputes, and which workers heard of a settlement.
//!
//! The crediting rule, in full: a payment counts for a receipt only when the transaction's
//! memo commits to a manifest naming it, the settlement notice naming the paying account is
//! signed by the receipt's requester, the receipt names that account as its payer (receipts
//! of wire version 1 named none; the signed notice binds it), and the line pays the address
//! the receipt names. What the paying account sent this node in the transaction is then
//! shared out over those lines in canonical order, each line taking at most its own amount;
//! each receipt is credited exactly what it took (less than its price: the rest stays owed;
//! more: recorded as overpaid). Money no line took is recorded as unallocated. A transaction
//! is credited once.

use crank_protocol::{Dispute, DisputeReason, NodeId, Signed, UnixMillis};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    Ledger, LedgerError, NOTICE_ACKS, PAYMENTS_IN, UNPAID_IN, decode, encode, now_ms,
};
use crate::manifest::Covered;
use crate::types::{Check, ReceiptKey, Role, Settlement, StoredReceipt, TxHash};

/// One receipt's share of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The receipt.
    pub key: ReceiptKey,
    /// Stroops credited to it.
    pub stroops: u64,
}

/// What one verified incoming payment credited, kept under its transaction hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIn {
    /// The transaction.
    pub tx_hash: TxHash,
    /// The node whose signed notice announced it.
    pub payer_node: NodeId,
    /// The account that paid.
    pub payer_account: String,
    /// What that account paid this node in the transaction, stroops.
    pub received_stroops: u64,
    /// What each receipt took.
    pub credits: Vec<Credit>,
    /// Lines naming this node that got nothing, with why (unknown receipt, another payer…).
    pub ignored: Vec<(ReceiptKey, String)>,
    /// Money no line took, stroops.
    pub unallocated_stroops: u64,
    /// When it was recorded.
    pub recorded_at: UnixMillis,
}

/// What [`Ledger::record_payment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedPayment {
    /// The payment was new and is now credited.
    New(PaymentIn),
    /// The transaction was credited before; nothing changed.
    AlreadyRecorded(PaymentIn),
}

impl RecordedPayment {
    /// The record, new or old.
    pub fn record(&self) -> &PaymentIn {
        match self {
            Self::New(p) | Self::AlreadyRecorded(p) => p,
        }
    }
}

/// What a requester owes this node, from the worker's side of the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Counter-signed and not paid, stroops.
    pub unpaid_stroops: u64,
    /// When its oldest unpaid receipt was stored.
    pub oldest_unpaid_at: Option<UnixMillis>,
    /// Paid so far, stroops.
    pub paid_stroops: u64,
    /// Its receipts in all.
    pub receipts: u64,
}

fn intent_worker(intent: u64, worker: &NodeId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&intent.to_be_bytes());
    k[8..].copy_from_slice(&worker.0);
    k
}

/// Why a line naming one of our receipts cannot take money from this payment.
fn ineligible(
    rec: &StoredReceipt,
    line_payout: &str,
    payer_node: &NodeId,
    payer_account: &str,
) -> Option<String> {
    let t = rec.body();
    if rec.role != Role::Worker {
        return Some("this node is not the worker on it".into());
    }
    if &t.requester != payer_node {
        return Some("the notice is not signed by the receipt's requester".into());
    }
    if !t.payer.is_empty() && t.payer != payer_account {
        return Some(format!(
            "the receipt is paid from {}, not {payer_account}",
            t.payer
        ));
    }
    if t.payout != line_payout {
        return Some("the line pays another address than the receipt names".into());
    }
    None
}

impl Ledger {
    /// Worker side: credits a verified payment to the receipts it pays, once per
    /// transaction (see the module docs for the rule).
    ///
    /// `covered` is what [`verify_payout`](crate::verify_payout) found for this node's
    /// address in the transaction `tx_hash`, which Horizon reported applied; `payer_node`
    /// signed the notice naming `payer_account`.
    pub fn record_payment(
        &self,
        tx_hash: TxHash,
        payer_node: &NodeId,
        payer_account: &str,
        covered: &Covered,
    ) -> Result<RecordedPayment, LedgerError> {
        self.write(|t, _| {
            if let Some(v) = t.payments_in.get(&tx_hash.0)? {
                let old: PaymentIn = decode("payments_in", v.value())?;
                return Ok((RecordedPayment::AlreadyRecorded(old), false));
            }
            let now = now_ms();
            let mut budget = covered.received_stroops;
            let mut credits = Vec::new();
            let mut ignored = Vec::new();
            for line in &covered.lines {
                let key = line.key();
                let Some(mut rec) = t.get_receipt(&key)? else {
                    ignored.push((key, "no such receipt in the ledger".to_string()));
                    continue;
                };
                if let Some(why) = ineligible(&rec, &line.payout, payer_node, payer_account) {
                    ignored.push((key, why));
                    continue;
                }
                let take = line.amount_stroops.min(budget);
                if take == 0 {
                    ignored.push((key, "nothing left of the payment for this line".into()));
                    continue;
                }
                budget -= take;
                t.update(&mut rec, |r| {
                    r.paid_stroops = r
                        .paid_stroops
                        .checked_add(take)
                        .ok_or(LedgerError::Overflow("paid amount"))?;
                    if r.paid_stroops >= r.price_stroops() && !r.settlement.is_settled() {
                        r.settlement = Settlement::Settled {
                            tx_hash,
                            settled_at: now,
                        };
                    }
                    Ok(())
                })?;
                credits.push(Credit { key, stroops: take });
            }
            let record = PaymentIn {
                tx_hash,
                payer_node: *payer_node,
                payer_account: payer_account.to_owned(),
                received_stroops: covered.received_stroops,
                credits,
                ignored,
                unallocated_stroops: budget,
                recorded_at: now,
            };
            t.payments_in
                .insert(&tx_hash.0, encode(&record)?.as_slice())?;
            if record.unallocated_stroops > 0 || !record.ignored.is_empty() {
                warn!(tx = %tx_hash, unallocated = record.unallocated_stroops, ignored = record.ignored.len(), "payment received that matches no receipt in part");
            }
            info!(tx = %tx_hash, received = record.received_stroops, receipts = record.credits.len(), "payment credited");
            Ok((RecordedPayment::New(record), true))
        })
    }

    /// The payment recorded under a transaction hash, if any.
    pub fn payment_in(&self, tx_hash: &TxHash) -> Result<Option<PaymentIn>, LedgerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PAYMENTS_IN)?;
        match table.get(&tx_hash.0)? {
            Some(v) => Ok(Some(decode("payments_in", v.value())?)),
            None => Ok(None),
        }
    }

    /// What `requester` owes this node (as worker): unpaid total, oldest unpaid receipt.
    /// Reads one balance record and one index entry, so it is cheap enough for every call
    /// for bids.
    pub fn standing(&self, requester: &NodeId) -> Result<Standing, LedgerError> {
        let b = self
            .balances()?
            .counterparties
            .get(requester)
            .copied()
            .unwrap_or_default();
        let txn = self.db.begin_read()?;
        let index = txn.open_table(UNPAID_IN)?;
        let mut lo = [0u8; 104];
        lo[..32].copy_from_slice(&requester.0);
        let mut hi = [0xffu8; 104];
        hi[..32].copy_from_slice(&requester.0);
        let oldest = match index.range::<&[u8; 104]>(&lo..=&hi)?.next() {
            Some(entry) => {
                let (k, _) = entry?;
                let mut at = [0u8; 8];
                at.copy_from_slice(&k.value()[32..40]);
                Some(u64::from_be_bytes(at))
            }
            None => None,
        };
        Ok(Standing {
            unpaid_stroops: b.owed_to_us_stroops,
            oldest_unpaid_at: oldest,
            paid_stroops: b.paid_to_us_stroops,
            receipts: b.receipts_as_worker,
        })
    }

    /// Requester side: the outputs of a receipt arrived and matched its hash, and every
    /// check passed: the receipt becomes payable. Returns false when it was not awaiting
    /// outputs (already checked, or disputed).
    pub fn outputs_passed(&self, key: &ReceiptKey) -> Result<bool, LedgerError> {
        self.change_check(key, Role::Requester, |c| {
            matches!(c, Check::AwaitingOutputs { .. } | Check::Delivered { .. })
                .then_some(Check::Passed)
        })
    }

    /// Records a signed dispute: on the requester's side it keeps the receipt out of
    /// settlement for good; on the worker's side it records what the requester said.
    /// Returns false when the receipt was already paid, or disputed.
    pub fn record_dispute(&self, dispute: &Signed<Dispute>) -> Result<bool, LedgerError> {
        let key = crate::types::ReceiptKey::of(&dispute.body.receipt.body);
        let role = self
            .receipt(&key.task, &key.worker)?
            .map(|r| r.role)
            .ok_or_else(|| LedgerError::NotPayable {
                key,
                why: "no such receipt in the ledger".into(),
            })?;
        let d = dispute.clone();
        self.change_check(&key, role, move |c| {
            (!c.is_disputed()).then(|| Check::Disputed(Box::new(d)))
        })
    }

    fn change_check(
        &self,
        key: &ReceiptKey,
        role: Role,
        to: impl FnOnce(&Check) -> Option<Check>,
    ) -> Result<bool, LedgerError> {
        self.write(|t, _| {
            let Some(mut rec) = t.get_receipt(key)? else {
                return Err(LedgerError::NotPayable {
                    key: *key,
                    why: "no such receipt in the ledger".into(),
                });
            };
            if rec.role != role || rec.settlement != Settlement::Unsettled {
                return Ok((false, false));
            }
            let Some(next) = to(&rec.check) else {
                return Ok((false, false));
            };
            t.update(&mut rec, |r| {
                r.check = next;
                Ok(())
            })?;
            Ok((true, true))
        })
    }

    /// Requester side: ends the checks whose time is up. A receipt still awaiting its
    /// outputs `window_ms` after it was counter-signed is disputed as not delivered (`sign`
    /// signs the dispute with the node key); one delivered `window_ms` ago with no check
    /// failed becomes payable. Returns the disputes made.
    pub fn expire_checks<E>(
        &self,
        now: UnixMillis,
        window_ms: u64,
        sign: impl Fn(Dispute) -> Result<Signed<Dispute>, E>,
    ) -> Result<Vec<Signed<Dispute>>, LedgerError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let due: Vec<StoredReceipt> = self.scan_receipts(usize::MAX, |r| {
            r.role == Role::Requester
                && r.settlement == Settlement::Unsettled
                && match r.check {
                    Check::AwaitingOutputs { since } => now >= since.saturating_add(window_ms),
                    Check::Delivered { at } => now >= at.saturating_add(window_ms),
                    Check::Passed | Check::Disputed(_) => false,
                }
        })?;
        let mut made = Vec::new();
        for rec in due {
            let key = rec.key();
            match rec.check {
                Check::Delivered { .. } => {
                    self.outputs_passed(&key)?;
                }
                _ => {
                    let Some(inner) = rec.current().map(|r| r.inner.clone()) else {
                        continue;
                    };
                    let dispute = sign(Dispute {
                        receipt: inner,
                        requester: rec.body().requester,
                        reason: DisputeReason::NotDelivered { gave_up_at: now },
                        at: now,
                    })
                    .map_err(|e| LedgerError::Sign(e.into()))?;
                    if self.record_dispute(&dispute)? {
                        info!(task = %key.task.short(), worker = %key.worker.short(), "outputs never delivered; receipt disputed");
                        made.push(dispute);
                    }
                }
            }
        }
        Ok(made)
    }

    /// Payer side: records that `worker` acknowledged the notice of settlement `intent`.
    pub fn ack_notice(&self, intent: u64, worker: &NodeId) -> Result<(), LedgerError> {
        self.write(|t, _| {
            let k = intent_worker(intent, worker);
            let new = t.notice_acks.insert(&k, ())?.is_none();
            Ok(((), new))
        })
    }

    /// Payer side: settled intents with the workers that have not acknowledged their
    /// notice yet, oldest first, at most `limit` intents.
    pub fn unacknowledged_notices(
        &self,
        limit: usize,
    ) -> Result<Vec<(super::IntentRecord, Vec<NodeId>)>, LedgerError> {
        let txn = self.db.begin_read()?;
        let acks = txn.open_table(NOTICE_ACKS)?;
        let intents = txn.open_table(super::intents::INTENTS)?;
        let mut out = Vec::new();
        for entry in intents.iter()? {
            if out.len() >= limit {
                break;
            }
            let (_, v) = entry?;
            let i: super::IntentRecord = decode("intents", v.value())?;
            if !matches!(i.state, super::IntentState::Settled { .. }) {
                continue;
            }
            let mut workers: Vec<NodeId> = i.draft.manifest.lines().iter().map(|l| l.worker).collect();
            workers.sort();
            workers.dedup();
            let mut missing = Vec::new();
            for w in workers {
                if acks.get(&intent_worker(i.id, &w))?.is_none() {
                    missing.push(w);
                }
            }
            if !missing.is_empty() {
                out.push((i, missing));
            }
        }
        Ok(out)
    }

    /// The settled intent whose transaction has this hash, if any (a worker asks for its
    /// notice).
    pub fn intent_by_tx(
        &self,
        tx_hash: &TxHash,
    ) -> Result<Option<super::IntentRecord>, LedgerError> {
        let txn = self.db.begin_read()?;
        let intents = txn.open_table(super::intents::INTENTS)?;
        for entry in intents.iter()?.rev() {
            let (_, v) = entry?;
            let i: super::IntentRecord = decode("intents", v.value())?;
            if &i.draft.tx_hash == tx_hash {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}
