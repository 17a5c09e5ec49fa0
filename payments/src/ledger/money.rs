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
//! is credited once: by the first notice that credits anything from it. A notice that
//! credits nothing (signed by a node that is not the requester of any receipt it names, or
//! naming an account that paid nothing) does not use the transaction up, so nobody can keep
//! a requester's payment from being credited by announcing it first. A line for a receipt
//! this node issued but has not yet stored counter-signed (it crashed in between) holds the
//! whole payment back, uncredited, until the receipt is recovered: the payer re-sends its
//! notice until acknowledged.

use crank_protocol::{Dispute, DisputeReason, NodeId, Signed, UnixMillis};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Ledger, LedgerError, NOTICE_ACKS, PAYMENTS_IN, UNPAID_IN, decode, encode, now_ms};
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
    /// The payment was new: what it credited is recorded under its transaction hash. When it
    /// credited nothing (`credits` empty) nothing is kept, and a later notice for the same
    /// transaction is checked afresh.
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
    /// signed the notice naming `payer_account`. A payment that credits no receipt changes
    /// nothing and is not kept (see the module docs).
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
                    if t.is_issued_here(&key)? {
                        // We issued it and crashed before storing the counter-signature:
                        // credit nothing now, so the payer's next notice (it re-sends until
                        // we acknowledge) credits it once the receipt is recovered.
                        return Err(LedgerError::NotPayable {
                            key,
                            why: "issued here and not recovered counter-signed yet; credited on the next notice".into(),
                        });
                    }
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
            if record.credits.is_empty() {
                // Keeping it would use the transaction up: a notice by someone who is not
                // the receipts' requester (or naming an account that paid nothing) would
                // then keep the requester's own notice from ever crediting it.
                warn!(tx = %tx_hash, payer = %payer_node.short(), received = record.received_stroops, ignored = record.ignored.len(), "payment notice credits none of our receipts; not recorded");
                return Ok((RecordedPayment::New(record), false));
            }
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
    pub fn standing(&self, requester: &NodeId) -> Result<Standing, LedgerError> {
        // One balance record and one index entry, in one read transaction: this runs for
        // every call for bids.
        let txn = self.db.begin_read()?;
        let b: crate::types::CounterpartyBalance =
            match txn.open_table(super::BALANCES)?.get(&requester.0)? {
                Some(v) => decode("balances", v.value())?,
                None => crate::types::CounterpartyBalance::default(),
            };
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

    /// Requester side: the outputs of a receipt arrived, matched its hash and fit the
    /// model, but a spot check of them is still running: the receipt waits as delivered
    /// (payable once the check passes, or once the dispute window ends with none failed).
    /// Returns false when it was not awaiting outputs.
    pub fn outputs_delivered(&self, key: &ReceiptKey, at: UnixMillis) -> Result<bool, LedgerError> {
        self.change_check(key, Role::Requester, |c| {
            matches!(c, Check::AwaitingOutputs { .. }).then_some(Check::Delivered { at })
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
            let mut workers: Vec<NodeId> =
                i.draft.manifest.lines().iter().map(|l| l.worker).collect();
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

#[cfg(test)]
mod props {
    //! Crediting against adversarial payments: a worker ledger holding receipts from two
    //! requesters (one of them partly of wire version 1) and one receipt of its own as
    //! requester, and random verified payments naming its receipts, unknown ones and other
    //! addresses, announced by either requester or a stranger, from the right account or
    //! another, with whatever amount arrived. Every step is checked against a plain model of
    //! the crediting rule and against the invariants the rule promises.

    use std::collections::BTreeMap;

    use crank_protocol::legacy::{ReceiptV1, WorkReceiptV1};
    use crank_protocol::{CounterSigned, Identity, Signed, TaskId, WorkReceipt};
    use proptest::prelude::*;

    use super::*;
    use crate::ledger::tests::{PAYOUT, body, countersigned, id};
    use crate::manifest::ManifestLine;
    use crate::stellar::Wallet;
    use crate::types::Stored;

    /// This node (the worker), the two requesters that owe it, a stranger, and a worker this
    /// node asked for work.
    fn me() -> Identity {
        id(0x10)
    }
    fn r() -> Identity {
        id(0x11)
    }
    fn r2() -> Identity {
        id(0x12)
    }
    fn stranger() -> Identity {
        id(0x13)
    }
    fn hired() -> Identity {
        id(0x14)
    }

    /// Stellar accounts: R pays from `P`, R2 from `P2`; `Q` is nobody's; `O` is a payout
    /// address that is not ours.
    fn account(seed: u8) -> String {
        Wallet::from_seed([seed; 32]).address()
    }
    const P: u8 = 0x21;
    const P2: u8 = 0x22;
    const Q: u8 = 0x23;
    const O: u8 = 0x24;

    /// Which receipt a line names.
    #[derive(Debug, Clone, Copy)]
    enum Target {
        /// R's receipt `k` (modulo how many there are).
        R(usize),
        /// R2's receipt `k`.
        R2(usize),
        /// The receipt this node holds as requester.
        Hired,
        /// A receipt this ledger does not hold (task byte), ours or another worker's.
        Unknown(u8, bool),
    }

    /// A line's amount, relative to the receipt's price.
    #[derive(Debug, Clone, Copy)]
    enum Amount {
        Below(u64),
        At,
        Above(u64),
    }

    /// What arrived, relative to the lines' sum.
    #[derive(Debug, Clone, Copy)]
    enum Received {
        Exact,
        Less(u64),
        More(u64),
        Any(u64),
    }

    #[derive(Debug, Clone)]
    struct Pay {
        /// Transaction hash byte: a small pool, so that replays happen.
        tx: u8,
        /// 0 = R, 1 = R2, 2 = a stranger, 3 = this node itself (the requester of the
        /// receipt it holds as requester).
        node: u8,
        /// The paying account named by the notice.
        account: u8,
        lines: Vec<(Target, Amount, bool)>,
        received: Received,
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            8 => (0..8usize).prop_map(Target::R),
            2 => (0..4usize).prop_map(Target::R2),
            1 => Just(Target::Hired),
            2 => (0xA0..0xA4u8, any::<bool>()).prop_map(|(t, mine)| Target::Unknown(t, mine)),
        ]
    }

    fn amount() -> impl Strategy<Value = Amount> {
        prop_oneof![
            3 => (1..1_000u64).prop_map(Amount::Below),
            3 => Just(Amount::At),
            2 => (1..2_000u64).prop_map(Amount::Above),
        ]
    }

    fn pay() -> impl Strategy<Value = Pay> {
        (
            0..5u8,
            prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
            prop_oneof![6 => Just(P), 1 => Just(P2), 1 => Just(Q)],
            proptest::collection::vec((target(), amount(), prop::bool::weighted(0.15)), 0..7),
            prop_oneof![
                3 => Just(Received::Exact),
                2 => (1..5_000u64).prop_map(Received::Less),
                2 => (1..5_000u64).prop_map(Received::More),
                1 => (0..20_000u64).prop_map(Received::Any),
            ],
        )
            .prop_map(|(tx, node, account, lines, received)| Pay {
                tx,
                node,
                account,
                lines,
                received,
            })
    }

    /// The model of one stored receipt.
    #[derive(Debug, Clone)]
    struct Model {
        price: u64,
        paid: u64,
        settled_by: Option<TxHash>,
        requester: crank_protocol::NodeId,
        /// Empty for a receipt of wire version 1.
        payer: String,
        role: Role,
    }

    /// R's receipts: a version 1 receipt first when `legacy`, then current ones from `P`.
    fn r_receipts(prices: &[u64], legacy: bool) -> (Vec<ReceiptV1>, Vec<crank_protocol::Receipt>) {
        let (req, w) = (r(), me());
        let (mut old, mut new) = (Vec::new(), Vec::new());
        let mut cumulative = 0;
        for (k, price) in prices.iter().enumerate() {
            cumulative += price;
            let seq = k as u64 + 1;
            let mut b = body(0x40 + k as u8, &req, &w, *price, seq, cumulative);
            b.payer = account(P);
            if k == 0 && legacy {
                old.push(v1(&b, &w, &req));
            } else {
                new.push(countersigned(b, &w, &req));
            }
        }
        (old, new)
    }

    fn v1(b: &WorkReceipt, worker: &Identity, requester: &Identity) -> ReceiptV1 {
        let body = WorkReceiptV1 {
            task_id: b.task_id,
            requester: b.requester,
            worker: b.worker,
            model: b.model,
            input_hash: b.input_hash,
            output_hash: b.output_hash,
            price_stroops: b.price_stroops,
            energy: b.energy,
            path: b.path,
            timings: b.timings,
            pair_seq: b.pair_seq,
            cumulative_stroops: b.cumulative_stroops,
            payout: b.payout.clone(),
        };
        CounterSigned::countersign(Signed::sign(body, worker).unwrap(), requester).unwrap()
    }

    fn line(key: ReceiptKey, payout: String, amount_stroops: u64) -> ManifestLine {
        ManifestLine {
            payout,
            task: key.task,
            worker: key.worker,
            amount_stroops,
        }
    }

    /// Checks every receipt and balance against the model, and the ledger's own audit.
    fn check_all(
        l: &Ledger,
        model: &BTreeMap<ReceiptKey, Model>,
        recorded: &BTreeMap<TxHash, PaymentIn>,
    ) -> Result<(), TestCaseError> {
        l.audit().unwrap();
        let mut per_party: BTreeMap<crank_protocol::NodeId, (u64, u64, u64, u64)> = BTreeMap::new();
        for (key, m) in model {
            let s = l.receipt(&key.task, &key.worker).unwrap().unwrap();
            prop_assert_eq!(s.paid_stroops, m.paid, "{}", key);
            match (s.settlement, m.settled_by) {
                (Settlement::Settled { tx_hash, .. }, Some(want)) => prop_assert_eq!(tx_hash, want),
                (Settlement::Unsettled, None) => {}
                (got, want) => prop_assert!(false, "{key}: {got:?}, model {want:?}"),
            }
            if m.role == Role::Worker {
                // Settled exactly when fully paid; the rest stays owed.
                prop_assert_eq!(s.settlement.is_settled(), m.paid >= m.price, "{}", key);
                prop_assert_eq!(s.remaining_stroops(), m.price.saturating_sub(m.paid));
                let e = per_party.entry(m.requester).or_default();
                e.0 += m.paid.min(m.price);
                e.1 += m.price - m.paid.min(m.price);
                e.2 += m.paid.saturating_sub(m.price);
                e.3 += m.price;
            } else {
                prop_assert_eq!(m.paid, 0, "a receipt we owe is never credited");
            }
        }
        let bal = l.balances().unwrap();
        for (party, (paid, owed, over, prices)) in &per_party {
            let b = bal.counterparties.get(party).copied().unwrap_or_default();
            prop_assert_eq!(b.paid_to_us_stroops, *paid);
            prop_assert_eq!(b.owed_to_us_stroops, *owed);
            prop_assert_eq!(b.overpaid_to_us_stroops, *over);
            prop_assert_eq!(b.paid_to_us_stroops + b.owed_to_us_stroops, *prices);
            let st = l.standing(party).unwrap();
            prop_assert_eq!(st.unpaid_stroops, *owed);
            prop_assert_eq!(st.paid_stroops, *paid);
            prop_assert_eq!(st.oldest_unpaid_at.is_some(), *owed > 0);
        }
        for h in 0..5u8 {
            let tx = TxHash([h; 32]);
            prop_assert_eq!(l.payment_in(&tx).unwrap(), recorded.get(&tx).cloned());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn payments_credit_only_what_arrived_for_the_right_receipts(
            r_prices in proptest::collection::vec(1u64..3_000, 1..6),
            r2_prices in proptest::collection::vec(1u64..3_000, 1..3),
            legacy in any::<bool>(),
            pays in proptest::collection::vec(pay(), 1..10),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("worker.redb");
            let mut l = Ledger::open(&path).unwrap();
            let mut model: BTreeMap<ReceiptKey, Model> = BTreeMap::new();
            let worker_side = |price: u64, requester: &Identity, payer: String| Model {
                price,
                paid: 0,
                settled_by: None,
                requester: requester.node_id(),
                payer,
                role: Role::Worker,
            };
            // R's receipts (the first of version 1 when `legacy`), in chain order.
            let (old, new) = r_receipts(&r_prices, legacy);
            let mut r_keys = Vec::new();
            for rec in &old {
                prop_assert_eq!(l.store_legacy_receipt(rec, Role::Worker).unwrap(), Stored::New);
                let b = &rec.inner.body;
                let key = ReceiptKey { task: b.task_id, worker: b.worker };
                model.insert(key, worker_side(b.price_stroops, &r(), String::new()));
                r_keys.push(key);
            }
            for rec in &new {
                prop_assert_eq!(l.store_receipt(rec, Role::Worker, Check::Passed).unwrap(), Stored::New);
                let key = ReceiptKey::of(&rec.inner.body);
                model.insert(key, worker_side(rec.inner.body.price_stroops, &r(), account(P)));
                r_keys.push(key);
            }
            // R2's receipts, paid from P2.
            let mut r2_keys = Vec::new();
            let mut cumulative = 0;
            for (k, price) in r2_prices.iter().enumerate() {
                cumulative += price;
                let mut b = body(0x60 + k as u8, &r2(), &me(), *price, k as u64 + 1, cumulative);
                b.payer = account(P2);
                let rec = countersigned(b, &me(), &r2());
                l.store_receipt(&rec, Role::Worker, Check::Passed).unwrap();
                let key = ReceiptKey::of(&rec.inner.body);
                model.insert(key, worker_side(*price, &r2(), account(P2)));
                r2_keys.push(key);
            }
            // A receipt this node owes as requester, paid from P as well.
            let mut b = body(0x70, &me(), &hired(), 500, 1, 500);
            b.payer = account(P);
            let rec = countersigned(b, &hired(), &me());
            l.store_receipt(&rec, Role::Requester, Check::Passed).unwrap();
            let hired_key = ReceiptKey::of(&rec.inner.body);
            model.insert(hired_key, Model {
                price: 500,
                paid: 0,
                settled_by: None,
                requester: me().node_id(),
                payer: account(P),
                role: Role::Requester,
            });
            let mut recorded: BTreeMap<TxHash, PaymentIn> = BTreeMap::new();
            check_all(&l, &model, &recorded)?;

            for p in &pays {
                let tx = TxHash([p.tx; 32]);
                let node = [r(), r2(), stranger(), me()][usize::from(p.node)].node_id();
                let acct = account(p.account);
                // The lines, one per receipt, in canonical order as a manifest has them.
                let mut by_key: BTreeMap<ReceiptKey, ManifestLine> = BTreeMap::new();
                for (t, a, other_payout) in &p.lines {
                    let key = match *t {
                        Target::R(k) => r_keys[k % r_keys.len()],
                        Target::R2(k) => r2_keys[k % r2_keys.len()],
                        Target::Hired => hired_key,
                        Target::Unknown(task, mine) => ReceiptKey {
                            task: TaskId([task; 32]),
                            worker: if mine { me().node_id() } else { r2().node_id() },
                        },
                    };
                    let price = model.get(&key).map_or(1_000, |m| m.price);
                    let amount = match *a {
                        Amount::Below(x) => 1 + x % price.max(1),
                        Amount::At => price,
                        Amount::Above(x) => price + x,
                    }
                    .max(1);
                    let payout = if *other_payout { account(O) } else { PAYOUT.to_owned() };
                    by_key.entry(key).or_insert_with(|| line(key, payout, amount));
                }
                let mut lines: Vec<ManifestLine> = by_key.into_values().collect();
                lines.sort();
                let sum: u64 = lines.iter().map(|l| l.amount_stroops).sum();
                let received = match p.received {
                    Received::Exact => sum,
                    Received::Less(x) => sum.saturating_sub(x),
                    Received::More(x) => sum + x,
                    Received::Any(x) => x,
                };
                let covered = Covered { lines: lines.clone(), received_stroops: received };
                let before = l.balances().unwrap();
                let got = l.record_payment(tx, &node, &acct, &covered).unwrap();

                if let Some(old) = recorded.get(&tx) {
                    // A transaction is credited once: a replay, whoever sends it, changes
                    // nothing.
                    prop_assert_eq!(&got, &RecordedPayment::AlreadyRecorded(old.clone()));
                    prop_assert_eq!(l.balances().unwrap(), before);
                    check_all(&l, &model, &recorded)?;
                    continue;
                }
                let RecordedPayment::New(rec) = got else {
                    prop_assert!(false, "new transaction reported as {got:?}");
                    unreachable!()
                };
                // The model: lines in order, each eligible one taking at most its amount
                // from what is left.
                let mut budget = received;
                let mut credits = Vec::new();
                let mut ignored = Vec::new();
                for ln in &lines {
                    let key = ln.key();
                    let Some(m) = model.get_mut(&key) else {
                        ignored.push(key);
                        continue;
                    };
                    let eligible = m.role == Role::Worker
                        && m.requester == node
                        && (m.payer.is_empty() || m.payer == acct)
                        && ln.payout == PAYOUT;
                    let take = ln.amount_stroops.min(budget);
                    if !eligible || take == 0 {
                        ignored.push(key);
                        continue;
                    }
                    budget -= take;
                    m.paid += take;
                    if m.paid >= m.price && m.settled_by.is_none() {
                        m.settled_by = Some(tx);
                    }
                    credits.push(Credit { key, stroops: take });
                }
                prop_assert_eq!(&rec.credits, &credits);
                prop_assert_eq!(rec.ignored.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ignored);
                prop_assert_eq!(rec.unallocated_stroops, budget);
                prop_assert_eq!((rec.tx_hash, rec.payer_node, &rec.payer_account, rec.received_stroops), (tx, node, &acct, received));
                // The promises, stated directly.
                let credited: u64 = rec.credits.iter().map(|c| c.stroops).sum();
                prop_assert!(credited <= received);
                prop_assert_eq!(credited + rec.unallocated_stroops, received);
                for c in &rec.credits {
                    let ln = lines.iter().find(|l| l.key() == c.key).unwrap();
                    prop_assert!(c.stroops <= ln.amount_stroops);
                    let m = &model[&c.key];
                    prop_assert!(m.role == Role::Worker && m.requester == node, "credited a receipt {node:?} does not owe");
                    prop_assert!(m.payer.is_empty() || m.payer == acct, "credited from an account the receipt does not name");
                    prop_assert_eq!(&ln.payout, PAYOUT);
                    if node != r().node_id() {
                        prop_assert!(!r_keys.contains(&c.key), "R's receipt credited by another node");
                    }
                    if node == r().node_id() {
                        prop_assert!(!r2_keys.contains(&c.key), "R2's receipt credited by R");
                    }
                }
                // Only a payment that credited something uses its transaction up.
                if !rec.credits.is_empty() {
                    recorded.insert(tx, rec.clone());
                }
                check_all(&l, &model, &recorded)?;
            }
            // Everything survives a reopen unchanged.
            drop(l);
            l = Ledger::open(&path).unwrap();
            check_all(&l, &model, &recorded)?;
        }
    }
}
