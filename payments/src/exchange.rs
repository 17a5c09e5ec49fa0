//! The receipt exchange, both sides: the money rules the node applies when it works for
//! someone or asks someone to work, as async calls that do their ledger work on the blocking
//! pool and return typed errors. The node routes messages here and owns no money rule.
//!
//! Worker side ([`WorkerReceipts`]): issue a receipt (persisted, with a fresh pair sequence
//! number, before it is sent), accept the requester's counter-signature, recover receipts
//! after a crash, answer what a requester owes ([`Standing`]), and credit payments announced
//! by signed settlement notices after checking them on Horizon.
//!
//! Requester side ([`RequesterReceipts`]): check a worker's signed receipt against the award,
//! counter-sign and store it before the outputs arrive (fair exchange: the worker releases
//! the outputs only against the counter-signature), check the signed outputs against the
//! hash the receipt committed to, dispute with signed evidence when they do not match or
//! never come, and build the signed notices of settlements.

use std::sync::Arc;

use crank_protocol::validate::{self, Limits, ValidationError};
use crank_protocol::{
    Award, CounterSigned, Dispute, DisputeReason, Energy, ExecPath, Identity, NodeId, PaidReceipt,
    Receipt, SettlementNotice, SignatureError, Signed, TaskId, TaskOutputs, Timings, UnixMillis,
    WorkReceipt,
};

use crate::config::StellarConfig;
use crate::horizon::{Horizon, HorizonError};
use crate::ledger::{IntentRecord, Ledger, LedgerError, RecordedPayment, Standing};
use crate::manifest::{Manifest, ManifestError, ManifestLine, verify_payout};
use crate::stellar::{TxError, decode_envelope, envelope_hash};
use crate::types::{
    Check, LegacyPendingReceipt, PendingReceipt, ReceiptKey, Role, Stored, StoredReceipt, TxHash,
};

/// Why a step of the receipt exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A signature did not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A message failed validation.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The receipt does not match what was awarded.
    #[error("the receipt's {field} does not match the award")]
    Mismatch {
        /// The field that differs.
        field: &'static str,
    },
    /// The counter-signed receipt is not the one this node sent.
    #[error("the counter-signed receipt is not the one this node signed")]
    NotOurs,
    /// Horizon could not be asked.
    #[error("cannot look the transaction up: {0}")]
    Horizon(#[from] HorizonError),
    /// The transaction is unknown to the network.
    #[error("the network does not know transaction {0}")]
    UnknownTx(TxHash),
    /// The transaction failed in the ledger and paid nothing.
    #[error("transaction {0} failed in the ledger; it paid nothing")]
    TxFailed(TxHash),
    /// Horizon returned an envelope that hashes to something else.
    #[error("Horizon returned an envelope hashing to {got}, not {want}")]
    EnvelopeMismatch {
        /// What it hashes to.
        got: TxHash,
        /// What was asked for.
        want: TxHash,
    },
    /// The envelope could not be read.
    #[error("cannot read the transaction: {0}")]
    Tx(#[from] TxError),
    /// The manifest is malformed or the memo does not commit to it.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The receipt is unknown or not in a state that allows this.
    #[error("receipt {key}: {why}")]
    Receipt {
        /// The receipt.
        key: ReceiptKey,
        /// Why.
        why: &'static str,
    },
    /// A blocking ledger task panicked or was cancelled.
    #[error("ledger task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ExchangeError> + Send + 'static,
) -> Result<T, ExchangeError> {
    tokio::task::spawn_blocking(f).await?
}

/// What the worker measured about a run, for its receipt.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// Hash of the outputs (the receipt commits to it).
    pub output_hash: crank_protocol::ContentHash,
    /// Energy spent.
    pub energy: Energy,
    /// Path used.
    pub path: ExecPath,
    /// When things happened.
    pub timings: Timings,
}

/// The worker's side of the exchange.
#[derive(Clone)]
pub struct WorkerReceipts {
    ledger: Arc<Ledger>,
    identity: Identity,
    payout: String,
    stellar: StellarConfig,
}

impl std::fmt::Debug for WorkerReceipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerReceipts({})", self.identity.node_id().short())
    }
}

impl WorkerReceipts {
    /// The worker side over a ledger, signing with the node key, paid at `payout`.
    pub fn new(
        ledger: Arc<Ledger>,
        identity: Identity,
        payout: String,
        stellar: StellarConfig,
    ) -> Self {
        Self {
            ledger,
            identity,
            payout,
            stellar,
        }
    }

    /// Issues and persists the signed receipt for an awarded task that ran: the price and
    /// payer come from the award, the pair sequence number and cumulative total from the
    /// ledger, in one write.
    pub async fn issue(
        &self,
        award: &Award,
        run: RunFacts,
    ) -> Result<Signed<WorkReceipt>, ExchangeError> {
        let (ledger, identity, payout, a) = (
            self.ledger.clone(),
            self.identity.clone(),
            self.payout.clone(),
            award.clone(),
        );
        blocking(move || {
            let me = identity.node_id();
            Ok(ledger.issue_receipt(
                &a.requester,
                &me,
                a.price_stroops,
                |pair_seq, cumulative_stroops| {
                    Signed::sign(
                        WorkReceipt {
                            task_id: a.task_id,
                            requester: a.requester,
                            worker: me,
                            model: a.model,
                            input_hash: a.input_hash,
                            output_hash: run.output_hash,
                            price_stroops: a.price_stroops,
                            energy: run.energy,
                            path: run.path,
                            timings: run.timings,
                            pair_seq,
                            cumulative_stroops,
                            payout,
                            payer: a.payer.clone(),
                        },
                        &identity,
                    )
                },
            )?)
        })
        .await
    }

    /// Checks the requester's counter-signature on the receipt this node sent and stores
    /// it: from here the requester owes the price, and the outputs may be released.
    pub async fn accept(
        &self,
        sent: &Signed<WorkReceipt>,
        countersigned: Receipt,
    ) -> Result<Stored, ExchangeError> {
        countersigned.verify()?;
        if countersigned.inner != *sent || countersigned.countersigner != sent.body.requester {
            return Err(ExchangeError::NotOurs);
        }
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.store_receipt(&countersigned, Role::Worker, Check::Passed)?))
            .await
    }

    /// Stores a receipt of wire version 1 the requester counter-signed before the upgrade
    /// (recovered after a crash); it must be the one this node issued.
    pub async fn accept_legacy(
        &self,
        sent: &LegacyPendingReceipt,
        countersigned: crank_protocol::legacy::ReceiptV1,
    ) -> Result<Stored, ExchangeError> {
        countersigned.verify()?;
        if countersigned.inner != sent.receipt
            || countersigned.countersigner != sent.receipt.body.requester
        {
            return Err(ExchangeError::NotOurs);
        }
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.store_legacy_receipt(&countersigned, Role::Worker)?)).await
    }

    /// Gives up on a receipt the requester will never counter-sign (it refused the result).
    pub async fn abandon(&self, task: TaskId) -> Result<bool, ExchangeError> {
        let (ledger, me) = (self.ledger.clone(), self.identity.node_id());
        blocking(move || Ok(ledger.abandon_pending(&task, &me)?)).await
    }

    /// Signs the outputs of a task and keeps them until the requester took them (a crash
    /// after its counter-signature loses nothing it pays for).
    pub async fn hold_outputs(
        &self,
        task_id: TaskId,
        requester: NodeId,
        outputs: Vec<crank_protocol::NamedTensor>,
    ) -> Result<Signed<TaskOutputs>, ExchangeError> {
        let signed = Signed::sign(
            TaskOutputs {
                task_id,
                worker: self.identity.node_id(),
                requester,
                outputs,
            },
            &self.identity,
        )?;
        let (ledger, s) = (self.ledger.clone(), signed.clone());
        blocking(move || Ok(ledger.hold_outputs(&s)?)).await?;
        Ok(signed)
    }

    /// Outputs held for delivery whose receipt is stored counter-signed: the requester owes
    /// them to its user and will pay for them.
    pub async fn undelivered(
        &self,
        limit: usize,
    ) -> Result<Vec<Signed<TaskOutputs>>, ExchangeError> {
        let (ledger, me) = (self.ledger.clone(), self.identity.node_id());
        blocking(move || {
            let mut out = Vec::new();
            for o in ledger.held_outputs(limit)? {
                if ledger.receipt(&o.body.task_id, &me)?.is_some() {
                    out.push(o);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The requester took the outputs (or never will): drop them.
    pub async fn delivered(&self, task: TaskId) -> Result<(), ExchangeError> {
        let (ledger, me) = (self.ledger.clone(), self.identity.node_id());
        blocking(move || Ok(ledger.release_outputs(&task, &me)?)).await
    }

    /// Receipts issued and not yet counter-signed, current and from before the upgrade.
    pub async fn pending(
        &self,
        limit: usize,
    ) -> Result<(Vec<PendingReceipt>, Vec<LegacyPendingReceipt>), ExchangeError> {
        let ledger = self.ledger.clone();
        blocking(move || {
            Ok((
                ledger.pending_receipts(limit)?,
                ledger.legacy_pending_receipts(limit)?,
            ))
        })
        .await
    }

    /// What `requester` owes this node.
    pub async fn standing(&self, requester: NodeId) -> Result<Standing, ExchangeError> {
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.standing(&requester)?)).await
    }

    /// Records a requester's signed dispute of one of this node's receipts.
    pub async fn record_dispute(&self, dispute: Signed<Dispute>) -> Result<bool, ExchangeError> {
        validate::dispute(&dispute, &self.identity.node_id())?;
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.record_dispute(&dispute)?)).await
    }

    /// Checks a signed settlement notice against the network and credits this node's
    /// receipts by what the payer's account actually paid: the transaction must be applied
    /// on the configured network with the notice's hash, and its memo must commit to the
    /// notice's whole list. Credits once per transaction.
    pub async fn record_notice(
        &self,
        signed: &Signed<SettlementNotice>,
    ) -> Result<RecordedPayment, ExchangeError> {
        let me = self.identity.node_id();
        let notice = validate::settlement_notice(signed, &me)?;
        let hash = TxHash(notice.tx_hash);
        let ledger = self.ledger.clone();
        if let Some(done) = blocking(move || Ok(ledger.payment_in(&hash)?)).await? {
            return Ok(RecordedPayment::AlreadyRecorded(done));
        }
        let lines = notice
            .receipts
            .iter()
            .map(|r| ManifestLine {
                payout: r.payout.clone(),
                task: r.task_id,
                worker: r.worker,
                amount_stroops: r.amount_stroops,
            })
            .collect();
        let manifest = Manifest::new(lines)?;
        let horizon = Horizon::new(&self.stellar)?;
        let tx = horizon
            .transaction(&hash)
            .await?
            .ok_or(ExchangeError::UnknownTx(hash))?;
        if !tx.successful {
            return Err(ExchangeError::TxFailed(hash));
        }
        let envelope = decode_envelope(&tx.envelope_xdr)?;
        let computed = envelope_hash(&envelope, &self.stellar.network_passphrase)?;
        if computed != hash {
            return Err(ExchangeError::EnvelopeMismatch {
                got: computed,
                want: hash,
            });
        }
        let mut covered = verify_payout(&manifest, &envelope, &notice.payer_account, &self.payout)?;
        // Lines for other workers at the same address are not this node's to credit.
        covered.lines.retain(|l| l.worker == me);
        let (ledger, payer_node, payer_account) = (
            self.ledger.clone(),
            notice.payer_node,
            notice.payer_account.clone(),
        );
        blocking(move || Ok(ledger.record_payment(hash, &payer_node, &payer_account, &covered)?))
            .await
    }
}

/// What the requester expects a receipt to say: the terms of its award.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The task.
    pub task_id: TaskId,
    /// The model.
    pub model: crank_protocol::ModelId,
    /// The inputs' hash.
    pub input_hash: crank_protocol::ContentHash,
    /// The awarded price.
    pub price_stroops: u64,
    /// The account the requester pays from.
    pub payer: String,
}

/// What the outputs a worker delivered came to.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputsVerdict {
    /// They match the receipt's hash and passed every check: the receipt is payable.
    Accepted(Vec<crank_protocol::NamedTensor>),
    /// They do not match: the signed dispute is stored and is the worker's answer.
    Disputed(Box<Signed<Dispute>>),
}

/// The requester's side of the exchange.
#[derive(Clone)]
pub struct RequesterReceipts {
    ledger: Arc<Ledger>,
    identity: Identity,
}

impl std::fmt::Debug for RequesterReceipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequesterReceipts({})", self.identity.node_id().short())
    }
}

impl RequesterReceipts {
    /// The requester side over a ledger, signing with the node key.
    pub fn new(ledger: Arc<Ledger>, identity: Identity) -> Self {
        Self { ledger, identity }
    }

    /// Checks a worker's signed receipt against the award and the ledger (the pair's
    /// sequence numbers chain, the accounts are valid), counter-signs it and stores it
    /// awaiting the outputs. Idempotent: the same receipt again returns the stored
    /// counter-signature.
    pub async fn countersign(
        &self,
        signed: Signed<WorkReceipt>,
        from: NodeId,
        expected: &Expected,
        limits: &Limits,
    ) -> Result<Receipt, ExchangeError> {
        let me = self.identity.node_id();
        let result = crank_protocol::TaskResult {
            receipt: signed.clone(),
        };
        let body = validate::task_result(&result, &me, &from, limits)?;
        let fields: [(&'static str, bool); 5] = [
            ("task_id", body.task_id == expected.task_id),
            ("model", body.model == expected.model),
            ("input_hash", body.input_hash == expected.input_hash),
            (
                "price_stroops",
                body.price_stroops == expected.price_stroops,
            ),
            ("payer", body.payer == expected.payer),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, ok)| !ok) {
            return Err(ExchangeError::Mismatch { field });
        }
        let (ledger, identity) = (self.ledger.clone(), self.identity.clone());
        blocking(move || {
            let key = ReceiptKey::of(&signed.body);
            if let Some(stored) = ledger.receipt(&key.task, &key.worker)? {
                return match stored.current() {
                    Some(r) if r.inner == signed => Ok(r.clone()),
                    _ => Err(LedgerError::Conflict { key }.into()),
                };
            }
            ledger.check_new_receipt(&signed)?;
            let receipt = CounterSigned::countersign(signed, &identity)?;
            ledger.store_receipt(
                &receipt,
                Role::Requester,
                Check::AwaitingOutputs {
                    since: crate::ledger::now_ms(),
                },
            )?;
            Ok(receipt)
        })
        .await
    }

    /// Checks outputs a worker delivered for a receipt this node counter-signed: when they
    /// match its hash and `fits` accepts them (the model's declared outputs, see
    /// `crank_inference::declared`) the receipt becomes payable; when the worker signed
    /// outputs its receipt did not commit to, or outputs that do not fit the model, a signed
    /// dispute with them as evidence keeps the receipt out of settlement.
    pub async fn check_outputs(
        &self,
        outputs: Signed<TaskOutputs>,
        from: NodeId,
        limits: &Limits,
        fits: impl FnOnce(&[crank_protocol::NamedTensor]) -> Result<(), String>,
    ) -> Result<OutputsVerdict, ExchangeError> {
        self.check_outputs_then(outputs, from, limits, fits, false)
            .await
    }

    /// As [`Self::check_outputs`], but outputs that pass leave the receipt delivered, not
    /// yet payable: a spot check of them may follow. [`Self::checks_passed`] makes it
    /// payable, [`Self::check_failed`] disputes it; if neither comes (the node stopped), the
    /// dispute window makes it payable.
    pub async fn check_outputs_held(
        &self,
        outputs: Signed<TaskOutputs>,
        from: NodeId,
        limits: &Limits,
        fits: impl FnOnce(&[crank_protocol::NamedTensor]) -> Result<(), String>,
    ) -> Result<OutputsVerdict, ExchangeError> {
        self.check_outputs_then(outputs, from, limits, fits, true)
            .await
    }

    /// Every check of a delivered receipt passed: it becomes payable. Returns false when it
    /// was not delivered or awaiting outputs (already passed, or disputed).
    pub async fn checks_passed(&self, task: TaskId, worker: NodeId) -> Result<bool, ExchangeError> {
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.outputs_passed(&ReceiptKey { task, worker })?)).await
    }

    /// A check of a delivered receipt failed (independent replicas outvoted its outputs):
    /// signs a dispute saying why and stores it, keeping the receipt out of settlement.
    /// Returns the dispute for the worker, or `None` when the receipt was already paid or
    /// disputed.
    pub async fn check_failed(
        &self,
        task: TaskId,
        worker: NodeId,
        message: String,
    ) -> Result<Option<Signed<Dispute>>, ExchangeError> {
        let key = ReceiptKey { task, worker };
        let stored = self
            .stored(task, worker)
            .await?
            .ok_or(ExchangeError::Receipt {
                key,
                why: "no counter-signed receipt for this task and worker",
            })?;
        let Some(receipt) = stored.current().cloned() else {
            return Err(ExchangeError::Receipt {
                key,
                why: "a receipt from before the upgrade takes no checks",
            });
        };
        let reason = DisputeReason::CheckFailed {
            message: clip(message, 1024),
        };
        let (dispute, recorded) = self.dispute(receipt.inner, reason).await?;
        Ok(recorded.then_some(dispute))
    }

    /// Signs a dispute of `receipt` and stores it; the bool says whether it was recorded
    /// (false: the receipt was already paid or disputed).
    async fn dispute(
        &self,
        receipt: Signed<WorkReceipt>,
        reason: DisputeReason,
    ) -> Result<(Signed<Dispute>, bool), ExchangeError> {
        let dispute = Signed::sign(
            Dispute {
                receipt,
                requester: self.identity.node_id(),
                reason,
                at: crate::ledger::now_ms(),
            },
            &self.identity,
        )?;
        let (ledger, d) = (self.ledger.clone(), dispute.clone());
        let recorded = blocking(move || Ok(ledger.record_dispute(&d)?)).await?;
        Ok((dispute, recorded))
    }

    async fn check_outputs_then(
        &self,
        outputs: Signed<TaskOutputs>,
        from: NodeId,
        limits: &Limits,
        fits: impl FnOnce(&[crank_protocol::NamedTensor]) -> Result<(), String>,
        hold: bool,
    ) -> Result<OutputsVerdict, ExchangeError> {
        let key = ReceiptKey {
            task: outputs.body.task_id,
            worker: from,
        };
        let stored = self
            .stored(key.task, key.worker)
            .await?
            .ok_or(ExchangeError::Receipt {
                key,
                why: "no counter-signed receipt for these outputs",
            })?;
        let Some(receipt) = stored.current().cloned() else {
            return Err(ExchangeError::Receipt {
                key,
                why: "a receipt from before the upgrade takes no outputs",
            });
        };
        if stored.role != Role::Requester {
            return Err(ExchangeError::Receipt {
                key,
                why: "this node is not the requester on it",
            });
        }
        let reason = match validate::task_outputs(&outputs, &receipt.inner.body, limits) {
            Ok(o) => {
                if let Check::Disputed(d) = &stored.check {
                    return Ok(OutputsVerdict::Disputed(d.clone()));
                }
                match fits(&o.outputs) {
                    Ok(()) => {
                        let tensors = o.outputs.clone();
                        let ledger = self.ledger.clone();
                        blocking(move || {
                            if hold {
                                Ok(ledger.outputs_delivered(&key, crate::ledger::now_ms())?)
                            } else {
                                Ok(ledger.outputs_passed(&key)?)
                            }
                        })
                        .await?;
                        return Ok(OutputsVerdict::Accepted(tensors));
                    }
                    Err(message) => DisputeReason::InvalidOutputs {
                        outputs: Box::new(outputs),
                        message: clip(message, 1024),
                    },
                }
            }
            // The signature verified: the worker signed outputs its receipt did not commit
            // to. That is the evidence.
            Err(ValidationError::HashMismatch { .. }) => DisputeReason::OutputMismatch {
                outputs: Box::new(outputs),
            },
            Err(e) => return Err(e.into()),
        };
        let (dispute, _) = self.dispute(receipt.inner, reason).await?;
        Ok(OutputsVerdict::Disputed(Box::new(dispute)))
    }

    /// The stored receipt of a task and worker.
    pub async fn stored(
        &self,
        task: TaskId,
        worker: NodeId,
    ) -> Result<Option<StoredReceipt>, ExchangeError> {
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.receipt(&task, &worker)?)).await
    }

    /// Disputes receipts whose outputs never came within `window_ms`, and makes payable
    /// those delivered that long ago with no check failed; returns the disputes made.
    pub async fn expire_checks(
        &self,
        now: UnixMillis,
        window_ms: u64,
    ) -> Result<Vec<Signed<Dispute>>, ExchangeError> {
        let (ledger, identity) = (self.ledger.clone(), self.identity.clone());
        blocking(move || Ok(ledger.expire_checks(now, window_ms, |d| Signed::sign(d, &identity))?))
            .await
    }

    /// The signed notice of a settlement, for the workers it paid.
    pub fn notice(&self, intent: &IntentRecord) -> Result<Signed<SettlementNotice>, ExchangeError> {
        let notice = SettlementNotice {
            payer_node: self.identity.node_id(),
            payer_account: intent.draft.payer.clone(),
            tx_hash: intent.draft.tx_hash.0,
            receipts: intent
                .draft
                .manifest
                .lines()
                .iter()
                .map(|l| PaidReceipt {
                    payout: l.payout.clone(),
                    task_id: l.task,
                    worker: l.worker,
                    amount_stroops: l.amount_stroops,
                })
                .collect(),
        };
        Ok(Signed::sign(notice, &self.identity)?)
    }

    /// The notice of the settlement with this transaction hash, when it paid `worker`.
    pub async fn notice_for(
        &self,
        tx_hash: TxHash,
        worker: NodeId,
    ) -> Result<Option<Signed<SettlementNotice>>, ExchangeError> {
        let ledger = self.ledger.clone();
        let intent = blocking(move || Ok(ledger.intent_by_tx(&tx_hash)?)).await?;
        match intent {
            Some(i)
                if matches!(i.state, crate::IntentState::Settled { .. })
                    && i.draft.manifest.lines().iter().any(|l| l.worker == worker) =>
            {
                Ok(Some(self.notice(&i)?))
            }
            _ => Ok(None),
        }
    }

    /// Settled intents whose workers have not all acknowledged their notice.
    pub async fn unacknowledged(
        &self,
        limit: usize,
    ) -> Result<Vec<(IntentRecord, Vec<NodeId>)>, ExchangeError> {
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.unacknowledged_notices(limit)?)).await
    }

    /// Records that `worker` acknowledged the notice of `intent`.
    pub async fn acknowledged(&self, intent: u64, worker: NodeId) -> Result<(), ExchangeError> {
        let ledger = self.ledger.clone();
        blocking(move || Ok(ledger.ack_notice(intent, &worker)?)).await
    }
}

/// `text` cut to at most `max` bytes on a character boundary (dispute messages are bounded
/// on the wire; output names are not short enough to trust).
fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
