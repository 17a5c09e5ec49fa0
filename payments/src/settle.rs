//! Exactly-once settlement: the requester pays what it owes, in batched Stellar
//! transactions, and never pays a receipt twice.
//!
//! The protocol, per transaction:
//!
//! 1. **Plan.** Sum the unsettled receipts per worker; take the workers whose total reached the
//!    threshold (or all, on demand). Group their receipts by payout address; drop addresses
//!    whose account does not exist (a payment to them would fail the whole transaction). At
//!    most 100 addresses per transaction.
//! 2. **Prepare.** Read the payer's sequence number, build one payment per address with
//!    `Memo::Hash` = the manifest's commitment and an upper time bound, sign, and record the
//!    intent (envelope, sequence, time bound, hash, receipts) in the ledger, reserving the
//!    receipts, **before the first submission**.
//! 3. **Resolve.** Submit the identical envelope, retrying on uncertain answers (504, 5xx, a
//!    dropped connection). A success or an in-ledger failure settles it. Otherwise look the
//!    hash up: if Horizon knows it, that is the outcome; if the payer's sequence number has
//!    moved past ours or the time bound has passed (plus a margin), it can never apply, and
//!    the receipts are released. Otherwise it stays pending and nothing new is built.
//!
//! [`Settler::recover`] runs step 3 for every pending intent after a restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crank_protocol::NodeId;
use futures::StreamExt;
use stellar_xdr::{Hash, Memo};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::{SettlementConfig, StellarConfig};
use crate::horizon::{Horizon, HorizonError, TxFailure, explain};
use crate::ledger::{IntentDraft, IntentRecord, IntentState, Ledger, LedgerError};
use crate::manifest::{Manifest, ManifestError, ManifestLine};
use crate::stellar::{
    Payment, TxError, TxParams, Wallet, build_payments, format_xlm, sign_transaction,
};
use crate::types::{StoredReceipt, TxHash};

/// Payout accounts looked up at once while planning.
const LOOKUP_CONCURRENCY: usize = 8;

/// Why settlement could not proceed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Horizon could not be asked.
    #[error("Horizon: {0}")]
    Horizon(#[from] HorizonError),
    /// The transaction could not be built or signed.
    #[error("building the transaction: {0}")]
    Tx(#[from] TxError),
    /// The manifest could not be built.
    #[error("building the manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// Horizon serves another network than the one configured.
    #[error(
        "Horizon serves the network {served:?} but the configured passphrase is {configured:?}"
    )]
    WrongNetwork {
        /// What Horizon says.
        served: String,
        /// What the configuration says.
        configured: String,
    },
    /// The paying account does not exist on the network.
    #[error(
        "the paying account {address} does not exist yet; fund it first (on testnet: `crank-node wallet fund`)"
    )]
    PayerMissing {
        /// The payer's address.
        address: String,
    },
    /// The payer cannot afford the payments plus fees while keeping its reserve.
    #[error(
        "the paying account holds {} XLM above its reserve, but this settlement needs {} XLM (payments plus fees); nothing was paid",
        format_xlm(*available), format_xlm(*needed)
    )]
    Underfunded {
        /// Spendable stroops.
        available: i64,
        /// Stroops needed.
        needed: i64,
    },
    /// The network refused or failed the transaction for a reason that is not about one
    /// destination.
    #[error("settlement transaction {tx_hash} failed: {failure}")]
    Rejected {
        /// The transaction.
        tx_hash: TxHash,
        /// Horizon's codes.
        failure: TxFailure,
    },
    /// An earlier settlement's outcome is still unknown; nothing new is built until it is.
    #[error(
        "settlement transaction {tx_hash} is still pending ({reason}); it is retried, and abandoned only once its time bound passes at Unix time {max_time}"
    )]
    StillPending {
        /// The pending transaction.
        tx_hash: TxHash,
        /// Its upper time bound.
        max_time: u64,
        /// The last problem seen.
        reason: String,
    },
}

/// Which receipts a settlement round pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleMode {
    /// Only workers whose unsettled total reached the threshold.
    Due,
    /// Every worker owed anything (on demand).
    All,
}

/// Receipts left out of a round because their payout address cannot be paid now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The payout address.
    pub payout: String,
    /// Workers whose receipts name it.
    pub workers: Vec<NodeId>,
    /// Receipts left unpaid.
    pub receipts: usize,
    /// Their total, stroops.
    pub amount_stroops: u64,
    /// Why, for the operator.
    pub reason: String,
}

/// What a round intends to pay, before anything is signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One manifest per transaction.
    pub batches: Vec<Manifest>,
    /// Addresses left out.
    pub skipped: Vec<Skipped>,
    /// Stroops owed to workers below the threshold (not due yet).
    pub not_due_stroops: u64,
}

/// How an intent ended up after [`Settler::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; its receipts are settled.
    Settled(IntentRecord),
    /// Will never apply; its receipts are owed again.
    Failed {
        /// The intent.
        intent: IntentRecord,
        /// Horizon's codes when the transaction failed in a ledger.
        failure: Option<TxFailure>,
    },
    /// Not known yet; retried later.
    Pending(IntentRecord),
}

/// A transaction a round paid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PaidTx {
    /// The intent id.
    pub intent: u64,
    /// The transaction hash.
    pub tx_hash: TxHash,
    /// The ledger it was included in.
    pub ledger: u32,
    /// Fee charged, stroops.
    pub fee_charged: i64,
    /// The payments it made.
    pub payments: Vec<Payment>,
    /// Receipts it paid.
    pub receipts: usize,
}

/// An intent that ended without paying.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedTx {
    /// The intent id.
    pub intent: u64,
    /// The transaction hash.
    pub tx_hash: TxHash,
    /// Why.
    pub reason: String,
}

/// What a settlement round did.
#[derive(Debug, Default)]
pub struct SettleReport {
    /// Transactions applied.
    pub paid: Vec<PaidTx>,
    /// Transactions that will never apply (their receipts are owed again).
    pub failed: Vec<FailedTx>,
    /// Transactions whose outcome is still unknown.
    pub pending: Vec<IntentRecord>,
    /// Addresses left out.
    pub skipped: Vec<Skipped>,
    /// Why the round stopped before paying everything it planned, if it did.
    pub stopped: Option<SettleError>,
}

impl SettleReport {
    /// Receipts paid in this round.
    pub fn receipts_paid(&self) -> usize {
        self.paid.iter().map(|p| p.receipts).sum()
    }

    /// Stroops paid in this round (fees excluded).
    pub fn stroops_paid(&self) -> i64 {
        self.paid
            .iter()
            .flat_map(|p| &p.payments)
            .map(|p| p.amount_stroops)
            .sum()
    }

    fn record(&mut self, o: Outcome) {
        match o {
            Outcome::Settled(i) => {
                let (ledger, fee_charged) = match i.state {
                    IntentState::Settled {
                        ledger,
                        fee_charged,
                        ..
                    } => (ledger, fee_charged),
                    _ => (0, 0),
                };
                self.paid.push(PaidTx {
                    intent: i.id,
                    tx_hash: i.draft.tx_hash,
                    ledger,
                    fee_charged,
                    payments: i.draft.manifest.payments(),
                    receipts: i.draft.manifest.lines().len(),
                });
            }
            Outcome::Failed { intent, .. } => {
                let reason = match &intent.state {
                    IntentState::Failed { reason, .. } => reason.clone(),
                    _ => String::new(),
                };
                self.failed.push(FailedTx {
                    intent: intent.id,
                    tx_hash: intent.draft.tx_hash,
                    reason,
                });
            }
            Outcome::Pending(i) => self.pending.push(i),
        }
    }
}

/// A transaction signed by a dry run, not recorded and not submitted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DryRunTx {
    /// Its hash for the configured network.
    pub tx_hash: TxHash,
    /// The signed envelope, base64 XDR.
    pub envelope_xdr: String,
    /// The sequence number it uses.
    pub sequence: i64,
    /// What it pays.
    pub manifest: Manifest,
    /// Its total fee, stroops.
    pub fee_stroops: i64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Destination-specific operation failures: the address, not the payer, is the problem.
fn destination_problem(code: &str) -> bool {
    matches!(
        code,
        "op_no_destination" | "op_no_trust" | "op_line_full" | "op_not_authorized"
    )
}

/// Pays what this node owes, exactly once. One per payer account; rounds are serialised.
pub struct Settler {
    ledger: Arc<Ledger>,
    horizon: Horizon,
    wallet: Wallet,
    stellar: StellarConfig,
    config: SettlementConfig,
    /// One round at a time: a second submitter would race for sequence numbers.
    round: Mutex<()>,
}

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler")
            .field("payer", &self.wallet.address())
            .field("horizon", &self.horizon.base_url())
            .finish()
    }
}

impl Settler {
    /// A settler paying from `wallet` through the configured Horizon.
    pub fn new(
        ledger: Arc<Ledger>,
        wallet: Wallet,
        stellar: StellarConfig,
        config: SettlementConfig,
    ) -> Result<Self, SettleError> {
        let horizon = Horizon::new(&stellar)?;
        Ok(Self {
            ledger,
            horizon,
            wallet,
            stellar,
            config,
            round: Mutex::new(()),
        })
    }

    /// The paying wallet.
    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }

    /// The Horizon client.
    pub fn horizon(&self) -> &Horizon {
        &self.horizon
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Checks that Horizon serves the configured network.
    pub async fn check_network(&self) -> Result<(), SettleError> {
        let root = self.horizon.root().await?;
        if root.network_passphrase != self.stellar.network_passphrase {
            return Err(SettleError::WrongNetwork {
                served: root.network_passphrase,
                configured: self.stellar.network_passphrase.clone(),
            });
        }
        Ok(())
    }

    /// What a round in `mode` would pay now. Asks Horizon whether each payout account exists.
    pub async fn plan(&self, mode: SettleMode) -> Result<Plan, SettleError> {
        let owed = self.ledger.owed_receipts()?;
        // A receipt names the account that pays it; one naming another account (the payout
        // key was replaced) would never be credited by the worker, so it is not paid from
        // here, and the operator is told why.
        let me = self.wallet.address();
        let (owed, elsewhere): (Vec<StoredReceipt>, Vec<StoredReceipt>) = owed
            .into_iter()
            .filter(|r| r.price_stroops() > 0)
            .partition(|r| r.body().payer.is_empty() || r.body().payer == me);
        let mut plan = Plan::default();
        let mut by_payer: BTreeMap<(String, String), Vec<ManifestLine>> = BTreeMap::new();
        for r in elsewhere {
            let b = r.body();
            let key = (b.payer.clone(), b.payout.clone());
            by_payer.entry(key).or_default().push(ManifestLine {
                payout: b.payout.clone(),
                task: b.task_id,
                worker: b.worker,
                amount_stroops: b.price_stroops,
            });
        }
        for ((payer, payout), lines) in by_payer {
            let reason = format!(
                "the receipts name {payer} as the paying account, not this wallet ({me}); pay them from that account"
            );
            plan.skipped.push(skipped(&payout, &lines, &reason));
        }
        let mut per_worker: BTreeMap<NodeId, (u64, Vec<StoredReceipt>)> = BTreeMap::new();
        for r in owed {
            let e = per_worker.entry(r.body().worker).or_default();
            e.0 = e.0.saturating_add(r.price_stroops());
            e.1.push(r);
        }
        let mut by_payout: BTreeMap<String, Vec<ManifestLine>> = BTreeMap::new();
        for (_, (total, receipts)) in per_worker {
            if mode == SettleMode::Due && total < self.config.threshold_stroops {
                plan.not_due_stroops = plan.not_due_stroops.saturating_add(total);
                continue;
            }
            for r in receipts {
                let b = r.body();
                by_payout
                    .entry(b.payout.clone())
                    .or_default()
                    .push(ManifestLine {
                        payout: b.payout.clone(),
                        task: b.task_id,
                        worker: b.worker,
                        amount_stroops: b.price_stroops,
                    });
            }
        }
        // A payment to a missing account would fail the whole transaction, so each address
        // is checked first, a few requests at a time.
        let checks: Vec<(String, Vec<ManifestLine>, Result<bool, HorizonError>)> =
            futures::stream::iter(by_payout)
                .map(|(payout, lines)| async move {
                    let exists = self.horizon.account(&payout).await.map(|a| a.is_some());
                    (payout, lines, exists)
                })
                .buffered(LOOKUP_CONCURRENCY)
                .collect()
                .await;
        let mut payable: Vec<Vec<ManifestLine>> = Vec::new();
        for (payout, lines, exists) in checks {
            if !exists? {
                plan.skipped
                    .push(skipped(&payout, &lines, explain("op_no_destination")));
                continue;
            }
            payable.push(lines);
        }
        let per_tx = self.config.max_payments_per_tx.clamp(1, 100);
        for chunk in payable.chunks(per_tx) {
            plan.batches
                .push(Manifest::new(chunk.iter().flatten().cloned().collect())?);
        }
        Ok(plan)
    }

    fn build(
        &self,
        manifest: &Manifest,
        sequence: i64,
    ) -> Result<(crate::stellar::SignedTx, u64), SettleError> {
        let max_time = unix_now().saturating_add(self.config.validity_secs.max(1));
        let tx = build_payments(
            &self.wallet.public_key(),
            &TxParams {
                sequence,
                base_fee_stroops: self.stellar.base_fee_stroops,
                min_time: 0,
                max_time,
                memo: Memo::Hash(Hash(manifest.commitment())),
            },
            &manifest.payments(),
        )?;
        Ok((
            sign_transaction(tx, &self.wallet, &self.stellar.network_passphrase)?,
            max_time,
        ))
    }

    /// Fee of a transaction paying `manifest`, stroops.
    fn fee(&self, manifest: &Manifest) -> i64 {
        i64::from(self.stellar.base_fee_stroops).saturating_mul(manifest.payments().len() as i64)
    }

    /// Builds, signs and records the transaction paying `manifest`, reserving its receipts.
    /// Nothing is submitted: after this returns, a crash leaves a pending intent that
    /// [`recover`](Self::recover) resolves.
    pub async fn prepare(&self, manifest: Manifest) -> Result<IntentRecord, SettleError> {
        let payer = self.wallet.address();
        let Some(account) = self.horizon.account(&payer).await? else {
            return Err(SettleError::PayerMissing { address: payer });
        };
        let paying: i64 = manifest.payments().iter().map(|p| p.amount_stroops).sum();
        let needed = paying.saturating_add(self.fee(&manifest));
        let available = account.balance_stroops
            - account.min_balance_stroops(self.stellar.base_reserve_stroops);
        if needed > available {
            return Err(SettleError::Underfunded { available, needed });
        }
        let sequence = account.sequence.saturating_add(1);
        let (signed, max_time) = self.build(&manifest, sequence)?;
        let intent = self.ledger.create_intent(IntentDraft {
            payer,
            sequence,
            max_time,
            tx_hash: signed.hash,
            envelope_xdr: signed.xdr,
            manifest,
        })?;
        Ok(intent)
    }

    /// Drives one intent to an outcome if the network allows: submits its identical
    /// envelope (retrying uncertain answers), then looks its hash up.
    ///
    /// Horizon errors do not fail this call; they leave the intent pending with the error
    /// noted. Only ledger errors are returned.
    pub async fn resolve(&self, intent: &IntentRecord) -> Result<Outcome, SettleError> {
        let id = intent.id;
        let hash = intent.draft.tx_hash;
        if intent.state != IntentState::Pending {
            return Ok(match intent.state {
                IntentState::Settled { .. } => Outcome::Settled(intent.clone()),
                _ => Outcome::Failed {
                    intent: intent.clone(),
                    failure: None,
                },
            });
        }
        let mut last = String::from("outcome unknown");
        let attempts = self.config.max_submit_attempts.max(1);
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(self.config.retry_delay_ms)).await;
            }
            match self.horizon.submit(&intent.draft.envelope_xdr).await {
                Ok(rec) if rec.hash == hash && rec.successful => {
                    self.ledger.note_attempt(id, None)?;
                    let done = self.ledger.settle_intent(id, rec.ledger, rec.fee_charged)?;
                    return Ok(Outcome::Settled(done));
                }
                Ok(rec) => {
                    last = format!("Horizon answered for {} instead", rec.hash);
                    self.ledger.note_attempt(id, Some(last.clone()))?;
                    break;
                }
                Err(HorizonError::TxFailed(f)) if f.was_included() => {
                    self.ledger.note_attempt(id, Some(f.to_string()))?;
                    let done = self.ledger.fail_intent(id, &f.to_string())?;
                    warn!(intent = id, tx = %hash, failure = %f, "settlement transaction failed in a ledger");
                    return Ok(Outcome::Failed {
                        intent: done,
                        failure: Some(f),
                    });
                }
                Err(e) if e.is_uncertain() => {
                    warn!(intent = id, tx = %hash, attempt, error = %e, "uncertain submission; resubmitting the same envelope");
                    last = e.to_string();
                    self.ledger.note_attempt(id, Some(last.clone()))?;
                }
                Err(e) => {
                    warn!(intent = id, tx = %hash, error = %e, "submission refused; checking whether it applied anyway");
                    last = e.to_string();
                    self.ledger.note_attempt(id, Some(last.clone()))?;
                    break;
                }
            }
        }
        // The account is read before the hash: if the account shows our sequence number
        // used, the transaction that used it is already visible by hash.
        let account = match self.horizon.account(&intent.draft.payer).await {
            Ok(a) => a,
            Err(e) => return self.still_pending(id, format!("{last}; then {e}")),
        };
        let found = match self.horizon.transaction(&hash).await {
            Ok(t) => t,
            Err(e) => return self.still_pending(id, format!("{last}; then {e}")),
        };
        if let Some(rec) = found {
            if rec.successful {
                let done = self.ledger.settle_intent(id, rec.ledger, rec.fee_charged)?;
                return Ok(Outcome::Settled(done));
            }
            let done = self
                .ledger
                .fail_intent(id, "the transaction failed in a ledger")?;
            return Ok(Outcome::Failed {
                intent: done,
                failure: None,
            });
        }
        if account.is_some_and(|a| a.sequence >= intent.draft.sequence) {
            let reason = format!(
                "sequence number {} was used by another transaction, so this one can never apply ({last})",
                intent.draft.sequence
            );
            let done = self.ledger.fail_intent(id, &reason)?;
            return Ok(Outcome::Failed {
                intent: done,
                failure: None,
            });
        }
        if unix_now()
            > intent
                .draft
                .max_time
                .saturating_add(self.config.expiry_margin_secs)
        {
            let reason = format!(
                "its time bound passed at {} without it being applied ({last})",
                intent.draft.max_time
            );
            let done = self.ledger.fail_intent(id, &reason)?;
            return Ok(Outcome::Failed {
                intent: done,
                failure: None,
            });
        }
        self.still_pending(id, last)
    }

    fn still_pending(&self, id: u64, reason: String) -> Result<Outcome, SettleError> {
        warn!(intent = id, %reason, "settlement outcome still unknown");
        Ok(Outcome::Pending(self.ledger.note_error(id, reason)?))
    }

    /// Resolves every pending intent (after a restart, or to retry). Call at startup.
    pub async fn recover(&self) -> Result<Vec<Outcome>, SettleError> {
        let _round = self.round.lock().await;
        let mut out = Vec::new();
        for intent in self.ledger.pending_intents()? {
            info!(intent = intent.id, tx = %intent.draft.tx_hash, "resuming settlement");
            out.push(self.resolve(&intent).await?);
        }
        Ok(out)
    }

    /// One settlement round: resolves pending intents, then pays what `mode` selects, one
    /// transaction after another.
    pub async fn settle(&self, mode: SettleMode) -> Result<SettleReport, SettleError> {
        let _round = self.round.lock().await;
        self.check_network().await?;
        let mut report = SettleReport::default();
        for intent in self.ledger.pending_intents()? {
            let o = self.resolve(&intent).await?;
            report.record(o);
        }
        if let Some(p) = report.pending.first() {
            report.stopped = Some(SettleError::StillPending {
                tx_hash: p.draft.tx_hash,
                max_time: p.draft.max_time,
                reason: p.last_error.clone().unwrap_or_default(),
            });
            return Ok(report);
        }
        let plan = self.plan(mode).await?;
        report.skipped = plan.skipped;
        let mut queue: VecDeque<Manifest> = plan.batches.into();
        while let Some(manifest) = queue.pop_front() {
            let intent = match self.prepare(manifest.clone()).await {
                Ok(i) => i,
                Err(e) => {
                    warn!(error = %e, "settlement round stopped");
                    report.stopped = Some(e);
                    break;
                }
            };
            let outcome = self.resolve(&intent).await?;
            match &outcome {
                Outcome::Settled(i) => {
                    info!(intent = i.id, tx = %i.draft.tx_hash, receipts = i.draft.manifest.lines().len(), "settled");
                }
                Outcome::Failed {
                    intent: i,
                    failure: Some(f),
                } => {
                    let payments = manifest.payments();
                    let mut bad: BTreeSet<String> = BTreeSet::new();
                    let mut payer_problem = false;
                    for idx in f.failed_ops() {
                        let code = f.op_codes.get(idx).map(String::as_str).unwrap_or("");
                        match payments.get(idx) {
                            Some(p) if destination_problem(code) => {
                                bad.insert(p.destination.clone());
                            }
                            _ => payer_problem = true,
                        }
                    }
                    if payer_problem || bad.is_empty() {
                        report.stopped = Some(SettleError::Rejected {
                            tx_hash: i.draft.tx_hash,
                            failure: f.clone(),
                        });
                        report.record(outcome);
                        break;
                    }
                    // Leave the failing addresses out and pay the others in a new transaction.
                    for payout in &bad {
                        let lines: Vec<ManifestLine> = manifest
                            .lines()
                            .iter()
                            .filter(|l| &l.payout == payout)
                            .cloned()
                            .collect();
                        let code = f
                            .failed_ops()
                            .into_iter()
                            .find(|&k| payments.get(k).is_some_and(|p| &p.destination == payout))
                            .and_then(|k| f.op_codes.get(k))
                            .map(String::as_str)
                            .unwrap_or("op_no_destination");
                        report.skipped.push(skipped(payout, &lines, explain(code)));
                    }
                    let rest: Vec<ManifestLine> = manifest
                        .lines()
                        .iter()
                        .filter(|l| !bad.contains(&l.payout))
                        .cloned()
                        .collect();
                    if !rest.is_empty() {
                        queue.push_front(Manifest::new(rest)?);
                    }
                }
                Outcome::Failed { .. } => {}
                Outcome::Pending(p) => {
                    report.stopped = Some(SettleError::StillPending {
                        tx_hash: p.draft.tx_hash,
                        max_time: p.draft.max_time,
                        reason: p.last_error.clone().unwrap_or_default(),
                    });
                    report.record(outcome);
                    break;
                }
            }
            report.record(outcome);
        }
        Ok(report)
    }

    /// Signs what a round in `mode` would submit, without recording or submitting anything.
    pub async fn dry_run(&self, mode: SettleMode) -> Result<Vec<DryRunTx>, SettleError> {
        let _round = self.round.lock().await;
        let payer = self.wallet.address();
        let Some(account) = self.horizon.account(&payer).await? else {
            return Err(SettleError::PayerMissing { address: payer });
        };
        let plan = self.plan(mode).await?;
        let mut out = Vec::new();
        for (i, manifest) in plan.batches.into_iter().enumerate() {
            let sequence = account.sequence.saturating_add(1 + i as i64);
            let (signed, _) = self.build(&manifest, sequence)?;
            out.push(DryRunTx {
                tx_hash: signed.hash,
                envelope_xdr: signed.xdr,
                sequence,
                fee_stroops: self.fee(&manifest),
                manifest,
            });
        }
        Ok(out)
    }
}

fn skipped(payout: &str, lines: &[ManifestLine], reason: &str) -> Skipped {
    let mut workers: Vec<NodeId> = lines.iter().map(|l| l.worker).collect();
    workers.sort();
    workers.dedup();
    Skipped {
        payout: payout.to_owned(),
        workers,
        receipts: lines.len(),
        amount_stroops: lines.iter().map(|l| l.amount_stroops).sum(),
        reason: reason.to_owned(),
    }
}
