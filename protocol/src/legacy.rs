//! Signed types of earlier wire versions, kept so that what a node stored before an upgrade
//! still verifies after it.
//!
//! A receipt is an IOU: the ledger keeps each one with the exact signatures both parties
//! made. Postcard encodes without field tags, so a signature only verifies over the layout
//! it was made with; these are those layouts, frozen. Nothing here is sent on the current
//! wire except inside [`crate::Response::LegacyReceipt`], which hands a worker back a
//! receipt from before the upgrade.

use serde::{Deserialize, Serialize};

use crate::ids::{ContentHash, ModelId, NodeId, TaskId};
use crate::messages::{Energy, ExecPath, Timings};
use crate::sign::{CounterSigned, Signable, Signed};

/// A work receipt as wire version 1 signed it (no payer account, no output commitment
/// before delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkReceiptV1 {
    /// The task.
    pub task_id: TaskId,
    /// Who asked (and pays).
    pub requester: NodeId,
    /// Who did the work; must equal the signer.
    pub worker: NodeId,
    /// The model run.
    pub model: ModelId,
    /// Hash of the inputs.
    pub input_hash: ContentHash,
    /// Hash of the outputs.
    pub output_hash: ContentHash,
    /// Price owed, stroops.
    pub price_stroops: u64,
    /// Energy spent.
    pub energy: Energy,
    /// Path used.
    pub path: ExecPath,
    /// Timings.
    pub timings: Timings,
    /// This receipt's position among the receipts between this pair, from 1.
    pub pair_seq: u64,
    /// Total owed by this requester to this worker, this receipt included, stroops.
    pub cumulative_stroops: u64,
    /// Stellar account to pay.
    #[serde(deserialize_with = "crate::bounded::text")]
    pub payout: String,
}

impl Signable for WorkReceiptV1 {
    const DOMAIN: &'static str = "crank/1/receipt";
}

/// A version 1 receipt signed by the worker.
pub type SignedReceiptV1 = Signed<WorkReceiptV1>;

/// A version 1 receipt signed by the worker and counter-signed by the requester.
pub type ReceiptV1 = CounterSigned<WorkReceiptV1>;
