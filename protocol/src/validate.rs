//! Checks applied to a message after it decoded and its signature verified.
//!
//! Signatures say who sent a message; these checks say whether it makes sense: the signer is
//! the party the message names, times are plausible, sizes are within limits, hashes match
//! the content they claim to cover.

use crate::UnixMillis;
use crate::ids::{NodeId, TaskId};
use crate::messages::{
    Award, CallForBids, CapabilityAdvert, Dispute, SettlementNotice, TaskOutputs, TaskResult,
    WorkReceipt,
};
use crate::sign::{SignatureError, Signed};
use crate::tensor::{TensorError, tensors_hash};

/// Limits a node applies to what peers send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most clock skew tolerated between peers, milliseconds.
    pub max_clock_skew_ms: u64,
    /// Longest advert lifetime accepted, milliseconds.
    pub max_advert_ttl_ms: u64,
    /// Most models one advert may list.
    pub max_advert_models: usize,
    /// Longest free-text field, bytes.
    pub max_text: usize,
    /// Most tensor elements over all inputs or outputs of one task.
    pub max_elements: u64,
    /// Most tensors per task input or output.
    pub max_tensors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clock_skew_ms: 30_000,
            max_advert_ttl_ms: 30 * 60_000,
            max_advert_models: 256,
            max_text: 256,
            max_elements: 4 * 1024 * 1024,
            max_tensors: 16,
        }
    }
}

/// Why a message is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The signature is wrong or belongs to someone else.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The message has expired.
    #[error("expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry time.
        expires_at: UnixMillis,
        /// Current time.
        now: UnixMillis,
    },
    /// The message claims to come from the future.
    #[error("issued at {issued_at}, more than the allowed skew after now ({now})")]
    FromTheFuture {
        /// Claimed issue time.
        issued_at: UnixMillis,
        /// Current time.
        now: UnixMillis,
    },
    /// A field is out of its allowed range.
    #[error("field `{field}` is invalid: {why}")]
    Field {
        /// Field name.
        field: &'static str,
        /// Explanation.
        why: String,
    },
    /// A tensor is malformed.
    #[error("tensor `{name}`: {source}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        source: TensorError,
    },
    /// A hash does not match the content it should cover.
    #[error("{what} hash does not match the content")]
    HashMismatch {
        /// Which hash.
        what: &'static str,
    },
}

fn field(field: &'static str, why: impl Into<String>) -> ValidationError {
    ValidationError::Field {
        field,
        why: why.into(),
    }
}

fn text(name: &'static str, s: &str, limits: &Limits) -> Result<(), ValidationError> {
    if s.len() > limits.max_text {
        return Err(field(
            name,
            format!("{} bytes, limit {}", s.len(), limits.max_text),
        ));
    }
    Ok(())
}

/// Checks the shape of a Stellar account strkey (`G` + 55 base32 characters).
///
/// The checksum is verified by the payments crate; this only keeps garbage off the wire.
pub fn looks_like_stellar_account(s: &str) -> bool {
    s.len() == 56
        && s.starts_with('G')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

fn payout(s: &str) -> Result<(), ValidationError> {
    account("payout", s)
}

fn account(name: &'static str, s: &str) -> Result<(), ValidationError> {
    if !looks_like_stellar_account(s) {
        return Err(field(name, "not a Stellar account id (G… strkey)"));
    }
    Ok(())
}

/// The task id must be the one derived from the requester, the nonce, the model and the
/// inputs: then a bid for one task can never be awarded with other work under the same id.
fn task_id_commits(
    task_id: &TaskId,
    requester: &NodeId,
    nonce: &[u8; 16],
    model: &crate::ids::ModelId,
    input_hash: &crate::ids::ContentHash,
) -> Result<(), ValidationError> {
    if TaskId::derive(requester, nonce, model, input_hash) != *task_id {
        return Err(field(
            "task_id",
            "does not derive from the requester, nonce, model and input hash",
        ));
    }
    Ok(())
}

fn not_future(
    issued_at: UnixMillis,
    now: UnixMillis,
    limits: &Limits,
) -> Result<(), ValidationError> {
    if issued_at > now.saturating_add(limits.max_clock_skew_ms) {
        return Err(ValidationError::FromTheFuture { issued_at, now });
    }
    Ok(())
}

fn not_expired(expires_at: UnixMillis, now: UnixMillis) -> Result<(), ValidationError> {
    if expires_at <= now {
        return Err(ValidationError::Expired { expires_at, now });
    }
    Ok(())
}

fn tensors(list: &[crate::tensor::NamedTensor], limits: &Limits) -> Result<(), ValidationError> {
    if list.is_empty() || list.len() > limits.max_tensors {
        return Err(field(
            "tensors",
            format!(
                "{} tensors; 1 to {} allowed",
                list.len(),
                limits.max_tensors
            ),
        ));
    }
    let mut total = 0u64;
    for t in list {
        text("tensor name", &t.name, limits)?;
        t.tensor
            .validate(limits.max_elements)
            .map_err(|source| ValidationError::Tensor {
                name: t.name.clone(),
                source,
            })?;
        total = total.saturating_add(t.tensor.data.len() as u64);
    }
    if total > limits.max_elements {
        return Err(field(
            "tensors",
            format!("{total} elements in all, limit {}", limits.max_elements),
        ));
    }
    Ok(())
}

/// Verifies and validates a capability advert.
pub fn advert<'a>(
    signed: &'a Signed<CapabilityAdvert>,
    now: UnixMillis,
    limits: &Limits,
) -> Result<&'a CapabilityAdvert, ValidationError> {
    let a = signed.verify_by(&signed.body.node)?;
    not_future(a.issued_at, now, limits)?;
    not_expired(a.expires_at, now)?;
    if a.expires_at.saturating_sub(a.issued_at) > limits.max_advert_ttl_ms {
        return Err(field("expires_at", "lifetime longer than allowed"));
    }
    if a.models.len() > limits.max_advert_models {
        return Err(field(
            "models",
            format!(
                "{} listed, limit {}",
                a.models.len(),
                limits.max_advert_models
            ),
        ));
    }
    text("agent", &a.agent, limits)?;
    text("cpu_model", &a.hardware.cpu_model, limits)?;
    text("arch", &a.hardware.arch, limits)?;
    text("os", &a.hardware.os, limits)?;
    if a.hardware.gpus.len() > 16 {
        return Err(field("gpus", "more than 16 adapters"));
    }
    for g in &a.hardware.gpus {
        text("gpu name", &g.name, limits)?;
        text("gpu backend", &g.backend, limits)?;
        text("gpu kind", &g.kind, limits)?;
    }
    if a.bench.len() > 4
        || a.bench
            .iter()
            .any(|b| !b.inferences_per_sec.is_finite() || b.inferences_per_sec < 0.0)
    {
        return Err(field("bench", "at most 4 finite, non-negative entries"));
    }
    if a.power.battery_percent.is_some_and(|p| p > 100) {
        return Err(field("battery_percent", "above 100"));
    }
    if a.gate.open == a.gate.reason.is_some() {
        return Err(field(
            "gate",
            "an open gate has no reason; a closed gate has one",
        ));
    }
    if a.addrs.len() > 16 {
        return Err(field(
            "addrs",
            format!("{} listed, limit 16", a.addrs.len()),
        ));
    }
    for addr in &a.addrs {
        text("addrs", addr, limits)?;
    }
    payout(&a.payout)?;
    Ok(a)
}

/// Verifies and validates a call for bids.
pub fn call_for_bids<'a>(
    signed: &'a Signed<CallForBids>,
    now: UnixMillis,
    limits: &Limits,
) -> Result<&'a CallForBids, ValidationError> {
    let c = signed.verify_by(&signed.body.requester)?;
    not_future(c.issued_at, now, limits)?;
    not_expired(c.deadline, now)?;
    if c.bid_deadline > c.deadline {
        return Err(field("bid_deadline", "after the task deadline"));
    }
    if c.input_elements == 0 {
        return Err(field("input_elements", "zero"));
    }
    task_id_commits(&c.task_id, &c.requester, &c.nonce, &c.model, &c.input_hash)?;
    account("payer", &c.payer)?;
    Ok(c)
}

/// Most receipts one settlement notice may list (the frame limit binds first for long
/// payout strings; this keeps the worker's check bounded either way).
pub const MAX_NOTICE_RECEIPTS: usize = 50_000;

/// Validates a settlement notice sent to `me`: bounded, well-formed, and paying at least one
/// receipt of ours. Whether the payment happened is for the ledger to say.
pub fn settlement_notice<'a>(
    signed: &'a Signed<SettlementNotice>,
    me: &NodeId,
) -> Result<&'a SettlementNotice, ValidationError> {
    let notice = signed.verify_by(&signed.body.payer_node)?;
    account("payer_account", &notice.payer_account)?;
    let n = notice.receipts.len();
    if n == 0 || n > MAX_NOTICE_RECEIPTS {
        return Err(field(
            "receipts",
            format!("{n} receipts; 1 to {MAX_NOTICE_RECEIPTS} allowed"),
        ));
    }
    let mut ours = false;
    for r in &notice.receipts {
        payout(&r.payout)?;
        if r.amount_stroops == 0 {
            return Err(field("amount_stroops", "a paid receipt has a price"));
        }
        ours |= &r.worker == me;
    }
    if !ours {
        return Err(field("receipts", "none of them is this node's"));
    }
    Ok(notice)
}

/// Verifies and validates an award addressed to `me`.
pub fn award<'a>(
    signed: &'a Signed<Award>,
    me: &NodeId,
    now: UnixMillis,
    limits: &Limits,
) -> Result<&'a Award, ValidationError> {
    let a = signed.verify_by(&signed.body.requester)?;
    if &a.worker != me {
        return Err(field("worker", "award is addressed to another node"));
    }
    not_expired(a.deadline, now)?;
    tensors(&a.inputs, limits)?;
    if tensors_hash(&a.inputs) != a.input_hash {
        return Err(ValidationError::HashMismatch { what: "input" });
    }
    task_id_commits(&a.task_id, &a.requester, &a.nonce, &a.model, &a.input_hash)?;
    account("payer", &a.payer)?;
    Ok(a)
}

/// Verifies and validates the outputs a worker delivered for `receipt` (which this node
/// counter-signed). A [`ValidationError::HashMismatch`] after the signature verified means
/// the worker signed outputs its receipt did not commit to: the signed outputs are proof.
pub fn task_outputs<'a>(
    signed: &'a Signed<TaskOutputs>,
    receipt: &WorkReceipt,
    limits: &Limits,
) -> Result<&'a TaskOutputs, ValidationError> {
    let o = signed.verify_by(&receipt.worker)?;
    if o.worker != receipt.worker || o.task_id != receipt.task_id {
        return Err(field("task_id", "outputs of another task or worker"));
    }
    if o.requester != receipt.requester {
        return Err(field("requester", "outputs for another requester"));
    }
    tensors(&o.outputs, limits)?;
    if tensors_hash(&o.outputs) != receipt.output_hash {
        return Err(ValidationError::HashMismatch { what: "output" });
    }
    Ok(o)
}

/// Verifies a requester's dispute of a receipt this node (`me`) issued.
pub fn dispute<'a>(
    signed: &'a Signed<Dispute>,
    me: &NodeId,
) -> Result<&'a Dispute, ValidationError> {
    let d = signed.verify_by(&signed.body.requester)?;
    let r = d.receipt.verify_by(me)?;
    if r.requester != d.requester {
        return Err(field(
            "requester",
            "disputes a receipt of another requester",
        ));
    }
    Ok(d)
}

/// Verifies and validates a task result for a task this node (`me`) requested from `worker`.
pub fn task_result<'a>(
    result: &'a TaskResult,
    me: &NodeId,
    worker: &NodeId,
    limits: &Limits,
) -> Result<&'a WorkReceipt, ValidationError> {
    let r = result.receipt.verify_by(worker)?;
    if &r.worker != worker {
        return Err(field("worker", "receipt names another worker"));
    }
    if &r.requester != me {
        return Err(field("requester", "receipt names another requester"));
    }
    text("payout", &r.payout, limits)?;
    if r.pair_seq == 0 {
        return Err(field("pair_seq", "sequence numbers start at 1"));
    }
    if r.cumulative_stroops < r.price_stroops {
        return Err(field(
            "cumulative_stroops",
            "less than this receipt's own price",
        ));
    }
    if r.timings.started_at > r.timings.finished_at || r.timings.accepted_at > r.timings.started_at
    {
        return Err(field(
            "timings",
            "not in order accepted ≤ started ≤ finished",
        ));
    }
    payout(&r.payout)?;
    account("payer", &r.payer)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stellar_account_shape() {
        assert!(looks_like_stellar_account(
            "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7"
        ));
        assert!(!looks_like_stellar_account(
            "SAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7"
        ));
        assert!(!looks_like_stellar_account("GAAZ"));
        assert!(!looks_like_stellar_account(
            "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN1"
        ));
    }

    #[test]
    fn settlement_notices_must_be_bounded_well_formed_and_ours() {
        use crate::ids::TaskId;
        use crate::messages::PaidReceipt;
        let me = NodeId([1; 32]);
        let line = |worker: NodeId, amount: u64, payout: &str| PaidReceipt {
            payout: payout.into(),
            task_id: TaskId([7; 32]),
            worker,
            amount_stroops: amount,
        };
        let good = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";
        let payer = crate::Identity::from_secret([9; 32]);
        let notice = |receipts| {
            Signed::sign(
                SettlementNotice {
                    payer_node: payer.node_id(),
                    payer_account: good.into(),
                    tx_hash: [3; 32],
                    receipts,
                },
                &payer,
            )
            .unwrap()
        };
        assert!(settlement_notice(&notice(vec![line(me, 5, good)]), &me).is_ok());
        let err = |n: Signed<SettlementNotice>| settlement_notice(&n, &me).unwrap_err().to_string();
        // Signed by someone other than the payer node it names.
        let mut forged = notice(vec![line(me, 5, good)]);
        forged.body.payer_node = crate::Identity::from_secret([8; 32]).node_id();
        assert!(matches!(
            settlement_notice(&forged, &me),
            Err(ValidationError::Signature(_))
        ));
        let mut tampered = notice(vec![line(me, 5, good)]);
        tampered.body.receipts[0].amount_stroops = 50;
        assert!(settlement_notice(&tampered, &me).is_err());
        assert!(err(notice(vec![])).contains("receipts"));
        assert!(err(notice(vec![line(NodeId([2; 32]), 5, good)])).contains("this node"));
        assert!(err(notice(vec![line(me, 0, good)])).contains("amount_stroops"));
        assert!(err(notice(vec![line(me, 5, "GAAZ")])).contains("payout"));
        // The paying account must be an account, and the signature covers it.
        let mut no_account = notice(vec![line(me, 5, good)]).body;
        no_account.payer_account = "GAAZ".into();
        assert!(err(Signed::sign(no_account, &payer).unwrap()).contains("payer_account"));
        let mut swapped = notice(vec![line(me, 5, good)]);
        swapped.body.payer_account =
            "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H".into();
        assert!(matches!(
            settlement_notice(&swapped, &me),
            Err(ValidationError::Signature(_))
        ));
        let many = vec![line(me, 1, good); MAX_NOTICE_RECEIPTS + 1];
        assert!(err(notice(many)).contains("allowed"));
    }
}
