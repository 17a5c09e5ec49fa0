//! Plain data types shared by the ledger and the settlement code.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crank_protocol::legacy::{ReceiptV1, SignedReceiptV1, WorkReceiptV1};
use crank_protocol::sign::Signable;
use crank_protocol::{
    CounterSigned, Dispute, NodeId, Receipt, SignatureError, Signed, TaskId, UnixMillis,
    WorkReceipt,
};
use serde::{Deserialize, Serialize};

/// Which side of a receipt this node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This node did the work and is owed the price.
    Worker,
    /// This node asked for the work and owes the price.
    Requester,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Worker => "worker",
            Self::Requester => "requester",
        })
    }
}

/// What [`Ledger::store_receipt`](crate::Ledger::store_receipt) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The receipt was new and is now stored.
    New,
    /// The identical receipt was already stored; nothing changed.
    AlreadyStored,
}

/// A Stellar transaction hash (sha256 of the signature payload), shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxHash(pub [u8; 32]);

impl TxHash {
    /// Lower-case hex, as Horizon prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxHash({})", hex::encode(&self.0[..4]))
    }
}

/// A transaction hash that is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a 64-character hex transaction hash, got {got:?}")]
pub struct TxHashParseError {
    /// The text that did not parse (cut to 80 characters).
    pub got: String,
}

impl FromStr for TxHash {
    type Err = TxHashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TxHashParseError {
            got: s.chars().take(80).collect(),
        };
        let bytes = hex::decode(s.trim()).map_err(|_| err())?;
        Ok(Self(bytes.try_into().map_err(|_| err())?))
    }
}

impl Serialize for TxHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for TxHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(Self(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// The identity of a receipt: one worker's receipt for one task.
///
/// Ordered by task, then worker; settlement manifests list receipts in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReceiptKey {
    /// The task.
    pub task: TaskId,
    /// The worker that did it.
    pub worker: NodeId,
}

impl ReceiptKey {
    /// The key of a receipt body.
    pub fn of(receipt: &WorkReceipt) -> Self {
        Self {
            task: receipt.task_id,
            worker: receipt.worker,
        }
    }

    /// Task id bytes followed by worker id bytes: the ledger's table key and the manifest's
    /// encoding.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.task.0);
        out[32..].copy_from_slice(&self.worker.0);
        out
    }
}

impl fmt::Display for ReceiptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} worker {}",
            self.task.short(),
            self.worker.short()
        )
    }
}

/// Where a stored receipt stands with respect to payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settlement {
    /// Owed and not yet part of any payment.
    Unsettled,
    /// Reserved by a settlement intent whose outcome is not known yet (requester side).
    InFlight {
        /// The intent's id in the ledger.
        intent: u64,
    },
    /// Paid by the Stellar transaction with this hash.
    Settled {
        /// The paying transaction.
        tx_hash: TxHash,
        /// When this ledger recorded the payment.
        settled_at: UnixMillis,
    },
}

impl Settlement {
    /// Whether the receipt is paid.
    pub fn is_settled(&self) -> bool {
        matches!(self, Self::Settled { .. })
    }
}

/// The signatures behind a stored receipt, exactly as the two parties made them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReceiptProof {
    /// Signed under the current wire version.
    Current(Receipt),
    /// Signed under wire version 1, before receipts named the payer's account; kept as
    /// signed, so it still verifies after the upgrade.
    V1(ReceiptV1),
}

impl ReceiptProof {
    /// Checks both signatures and that each was made by the party the receipt names;
    /// returns the terms in the current layout.
    pub fn verify(&self) -> Result<WorkReceipt, SignatureError> {
        match self {
            Self::Current(r) => {
                let body = r.verify()?;
                signed_by_parties(r, &body.worker, &body.requester)?;
                Ok(body.clone())
            }
            Self::V1(r) => {
                let body = r.verify()?;
                signed_by_parties(r, &body.worker, &body.requester)?;
                Ok(terms_of_v1(body))
            }
        }
    }
}

/// Whether a receipt whose signatures verified was signed by the worker and counter-signed by
/// the requester it names.
fn signed_by_parties<T: Signable>(
    r: &CounterSigned<T>,
    worker: &NodeId,
    requester: &NodeId,
) -> Result<(), SignatureError> {
    for (expected, actual) in [(worker, &r.inner.signer), (requester, &r.countersigner)] {
        if expected != actual {
            return Err(SignatureError::WrongSigner {
                expected: *expected,
                actual: *actual,
            });
        }
    }
    Ok(())
}

/// A version 1 receipt's terms in the current layout. Version 1 named no payer account: the
/// payer is empty, and a payment for it is bound by the requester's signed settlement notice.
pub fn terms_of_v1(v1: &WorkReceiptV1) -> WorkReceipt {
    WorkReceipt {
        task_id: v1.task_id,
        requester: v1.requester,
        worker: v1.worker,
        model: v1.model,
        input_hash: v1.input_hash,
        output_hash: v1.output_hash,
        price_stroops: v1.price_stroops,
        energy: v1.energy,
        path: v1.path,
        timings: v1.timings,
        pair_seq: v1.pair_seq,
        cumulative_stroops: v1.cumulative_stroops,
        payout: v1.payout.clone(),
        payer: String::new(),
    }
}

/// Where a receipt stands with the requester's checks of the work.
///
/// On the requester's side a receipt is payable only once its checks passed (or, for a
/// check still running, once its dispute window passed); a disputed receipt is never paid.
/// On the worker's side `Disputed` records the requester's signed dispute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Counter-signed; the outputs have not arrived yet.
    AwaitingOutputs {
        /// Since when.
        since: UnixMillis,
    },
    /// The outputs arrived and matched; further checks may still run until the dispute
    /// window closes.
    Delivered {
        /// When they arrived.
        at: UnixMillis,
    },
    /// Every check passed: payable.
    Passed,
    /// Disputed, with the requester's signed statement and evidence: never payable.
    Disputed(Box<Signed<Dispute>>),
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AwaitingOutputs { .. } => f.write_str("awaiting outputs"),
            Self::Delivered { .. } => f.write_str("delivered"),
            Self::Passed => f.write_str("passed"),
            Self::Disputed(d) => write!(f, "disputed: {}", d.body.reason),
        }
    }
}

impl Check {
    /// Whether a requester may pay the receipt now.
    pub fn payable(&self, now: UnixMillis, window_ms: u64) -> bool {
        match self {
            Self::Passed => true,
            Self::Delivered { at } => now >= at.saturating_add(window_ms),
            Self::AwaitingOutputs { .. } | Self::Disputed(_) => false,
        }
    }

    /// Whether the receipt is disputed.
    pub fn is_disputed(&self) -> bool {
        matches!(self, Self::Disputed(_))
    }
}

/// A counter-signed receipt as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReceipt {
    /// What the two parties agreed, in the current layout (verified when stored).
    pub terms: WorkReceipt,
    /// Both signatures, as made.
    pub proof: ReceiptProof,
    /// Which side of it this node is on.
    pub role: Role,
    /// When it was stored.
    pub stored_at: UnixMillis,
    /// Position in the ledger's insertion order (newest is highest).
    pub order: u64,
    /// Payment state.
    pub settlement: Settlement,
    /// Paid so far, stroops: on the worker's side what verified payments credited to it
    /// (less than the price while partly paid, more when overpaid).
    pub paid_stroops: u64,
    /// The requester's checks of the work.
    pub check: Check,
}

impl StoredReceipt {
    /// The receipt body.
    pub fn body(&self) -> &WorkReceipt {
        &self.terms
    }

    /// The counter-signed receipt in the current wire format (None for one signed under an
    /// earlier version).
    pub fn current(&self) -> Option<&Receipt> {
        match &self.proof {
            ReceiptProof::Current(r) => Some(r),
            ReceiptProof::V1(_) => None,
        }
    }

    /// The receipt's key.
    pub fn key(&self) -> ReceiptKey {
        ReceiptKey::of(self.body())
    }

    /// The other party: the worker when we requested, the requester when we worked.
    pub fn counterparty(&self) -> NodeId {
        match self.role {
            Role::Requester => self.body().worker,
            Role::Worker => self.body().requester,
        }
    }

    /// The price, stroops.
    pub fn price_stroops(&self) -> u64 {
        self.body().price_stroops
    }

    /// What is still owed on it, stroops (zero once paid or when disputed on our side).
    pub fn remaining_stroops(&self) -> u64 {
        if self.settlement.is_settled() {
            return 0;
        }
        self.price_stroops().saturating_sub(self.paid_stroops)
    }
}

/// A version 1 receipt this node issued and never saw counter-signed before the upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyPendingReceipt {
    /// The receipt as this node signed it.
    pub receipt: SignedReceiptV1,
    /// When it was issued.
    pub issued_at: UnixMillis,
}

/// A receipt this node issued as a worker that the requester has not counter-signed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingReceipt {
    /// The receipt as signed by this node.
    pub receipt: Signed<WorkReceipt>,
    /// When it was issued.
    pub issued_at: UnixMillis,
}

impl PendingReceipt {
    /// The receipt's key.
    pub fn key(&self) -> ReceiptKey {
        ReceiptKey::of(&self.receipt.body)
    }
}

/// Money between this node and one counterparty, in stroops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterpartyBalance {
    /// What we owe them and have not paid (receipts where we are the requester), in-flight
    /// payments and receipts whose checks are still running included, disputed ones not.
    pub owed_by_us_stroops: u64,
    /// The part of `owed_by_us_stroops` reserved by a payment whose outcome is pending.
    pub in_flight_stroops: u64,
    /// What we have paid them.
    pub paid_by_us_stroops: u64,
    /// What they owe us and have not paid (receipts where we are the worker).
    pub owed_to_us_stroops: u64,
    /// What they have paid us (credited to receipts, up to each receipt's price).
    pub paid_to_us_stroops: u64,
    /// What they paid us beyond the receipts' prices (money that matched no receipt at all
    /// is in the ledger's payment records, [`PaymentIn::unallocated_stroops`](crate::PaymentIn)).
    pub overpaid_to_us_stroops: u64,
    /// Receipts we dispute (as requester): not owed, never paid.
    pub disputed_by_us_stroops: u64,
    /// What they dispute of our receipts (as worker): still unpaid, and unlikely to be.
    pub disputed_to_us_stroops: u64,
    /// Receipts where we are the requester.
    pub receipts_as_requester: u64,
    /// Receipts where we are the worker.
    pub receipts_as_worker: u64,
}

/// Balances per counterparty and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    /// One entry per node we have receipts with.
    pub counterparties: BTreeMap<NodeId, CounterpartyBalance>,
    /// The sum over all counterparties.
    pub total: CounterpartyBalance,
}
