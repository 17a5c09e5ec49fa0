//! The requester side: turn a submission into a reverse auction (the pure
//! [`crank_scheduler::Auction`] driven here with real requests and timers), check and
//! counter-sign the worker's receipt, store it, and hand the outputs back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crank_inference::InferenceError;
use crank_inference::declared::{Declared, NonFinite};
use crank_payments::{Expected, OutputsVerdict, ReceiptProof, RequesterReceipts, TxHash};
use crank_protocol::tensor::tensors_hash;
use crank_protocol::{
    CapabilityAdvert, DisputeReason, ErrorCode, ModelId, NamedTensor, NodeId, Receipt, Request,
    Response, Signed, TaskFailure, TaskId, TaskOutputs, TaskResult,
};
use crank_scheduler::verify::{by_independence, compare};
use crank_scheduler::{
    Answerer, Auction, AuctionTrace, CandidateQuery, CheckPolicy, FailureExplanation,
    HardwareClass, Independence, Input, Network, Output, Preference, Status, TaskSpec, Verdict,
    select_candidates,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::clock;
use crate::core::Core;
use crate::network::Responder;
use crate::plumbing::{chain, lock, stopped};

/// The requester side of a node: the tasks it submitted and waits on, and its side of the
/// receipt exchange. Everything shared with the rest of the node is in [`Core`].
pub(crate) struct Requester {
    /// What the whole node shares.
    pub core: Arc<Core>,
    /// The requester's side of the receipt exchange (the money rules are in crank-payments).
    pub receipts: RequesterReceipts,
    /// Submissions waiting for their workers' reports, by task.
    pub pending: Mutex<HashMap<TaskId, mpsc::Sender<WorkerReport>>>,
    /// What the models this node submitted declare about their outputs, read once each.
    pub declared: Mutex<HashMap<ModelId, Arc<Declared>>>,
}

/// Declarations kept at most; beyond it the cache starts again (a read costs one pass over
/// the model's bytes, skipping the weights).
const DECLARED_CACHE: usize = 64;

impl Requester {
    /// What `model` declares about its inputs and outputs.
    fn declared(&self, model: &ModelId) -> Result<Arc<Declared>, String> {
        if let Some(d) = lock(&self.declared).get(model) {
            return Ok(d.clone());
        }
        let bytes = self.store.read(model).map_err(|e| e.to_string())?;
        let d = Arc::new(crank_inference::declared::declared(&bytes).map_err(|e| e.to_string())?);
        let mut cache = lock(&self.declared);
        if cache.len() >= DECLARED_CACHE {
            cache.clear();
        }
        cache.insert(*model, d.clone());
        Ok(d)
    }
}

/// What a task's outputs must fit: the model's declaration, bound to the task's inputs.
struct OutputRule<'a> {
    declared: Arc<Declared>,
    inputs: &'a [NamedTensor],
    non_finite: NonFinite,
    /// Outputs that fit wait, held, for a spot check before their receipt is payable.
    hold: bool,
}

impl OutputRule<'_> {
    fn check(&self, outputs: &[NamedTensor]) -> Result<(), String> {
        self.declared
            .check_outputs(self.inputs, outputs, self.non_finite)
            .map_err(|e| e.to_string())
    }
}

impl std::ops::Deref for Requester {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// What a worker sent about a task this node requested.
#[derive(Debug)]
pub(crate) enum WorkerReport {
    Result {
        from: NodeId,
        result: TaskResult,
        responder: Responder,
    },
    Outputs {
        from: NodeId,
        outputs: Signed<TaskOutputs>,
        responder: Responder,
    },
    Failure {
        from: NodeId,
        failure: Signed<TaskFailure>,
        responder: Responder,
    },
    /// The last connection to a peer closed (it may have crashed).
    Disconnected { peer: NodeId },
}

/// Where the model of a submission comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// The model's bytes (stored locally, then served to the worker).
    Bytes(Vec<u8>),
    /// A model already in this node's store.
    Id(ModelId),
}

/// A task to run on the mesh.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// The model.
    pub model: ModelSource,
    /// The inputs, named like the model's graph inputs.
    pub inputs: Vec<NamedTensor>,
    /// Highest price, stroops (default from config).
    pub max_price_stroops: Option<u64>,
    /// Time allowed from submit to result, ms (default from config).
    pub deadline_ms: Option<u64>,
    /// Bid window, ms (default from config).
    pub bid_window_ms: Option<u64>,
    /// What the winner should be best at.
    pub prefer: Preference,
    /// The submitter's labels (`team=search`): seen by its placement and output policies and
    /// kept with its own receipts for reports; never sent to a worker.
    pub labels: BTreeMap<String, String>,
}

impl SubmitRequest {
    /// A request with the config's defaults and balanced preferences.
    pub fn new(model: ModelSource, inputs: Vec<NamedTensor>) -> Self {
        Self {
            model,
            inputs,
            max_price_stroops: None,
            deadline_ms: None,
            bid_window_ms: None,
            prefer: Preference::Balanced,
            labels: BTreeMap::new(),
        }
    }
}

/// A completed task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// The task.
    pub task_id: TaskId,
    /// The model.
    pub model: ModelId,
    /// Who ran it.
    pub worker: NodeId,
    /// What this node owes for it, stroops.
    pub price_stroops: u64,
    /// The outputs.
    pub outputs: Vec<NamedTensor>,
    /// The receipt, signed by the worker and counter-signed here.
    pub receipt: Receipt,
    /// Submit to result, milliseconds.
    pub elapsed_ms: f64,
    /// What the auction did (the first run's).
    pub trace: AuctionTrace,
    /// The spot check, when checks are on: whether it ran and what it found. When the first
    /// answer was outvoted, `worker`, `receipt`, `outputs` and `price_stroops` are the
    /// replica's.
    #[serde(default)]
    pub check: Option<CheckReport>,
    /// The submitter's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Outputs the output policy withheld (left out of `outputs`).
    #[serde(default)]
    pub redacted: Vec<String>,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The model could not be stored.
    #[error("model: {0}")]
    Model(String),
    /// The inputs do not fit the model (checked locally before asking anyone).
    #[error("input does not fit the model: {0}")]
    Input(String),
    /// No peer that could run the task is known.
    #[error(
        "no peers that could run the task were found within {waited_ms} ms ({known} adverts known); check that the node joined the mesh (crank-node status) or pass --bootstrap"
    )]
    NoCandidates {
        /// Time spent waiting for adverts.
        waited_ms: u64,
        /// Adverts known.
        known: usize,
    },
    /// The auction ended without a result.
    #[error("task failed: {explanation}")]
    Failed {
        /// Aggregated reasons ("asked 5: 3 on battery, 1 queue full, 1 did not answer").
        explanation: FailureExplanation,
        /// What the auction did.
        trace: Box<AuctionTrace>,
    },
    /// The scheduler refused the task's terms.
    #[error("task terms rejected: {0}")]
    Spec(String),
    /// The placement policy left out every worker that could run the task.
    #[error(
        "the placement policy left out every candidate ({reasons}); change the task's labels or the policy in the policy directory"
    )]
    Placement {
        /// Aggregated reasons ("3 policy: confidential task: worker not allow-listed").
        reasons: String,
    },
}

fn count_candidates(requester: &Requester, now: u64) -> usize {
    lock(&requester.adverts)
        .fresh(now)
        .filter(|a| a.node != requester.node_id)
        .count()
}

/// Waits until at least one other node's advert is known, or the discovery time is up.
async fn wait_for_adverts(requester: &Requester) -> Result<(), SubmitError> {
    let started = Instant::now();
    let limit = Duration::from_millis(requester.config.requester.discovery_ms);
    loop {
        if count_candidates(requester, clock::now_ms()) > 0 {
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(SubmitError::NoCandidates {
                waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                known: 0,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_inputs(
    requester: &Requester,
    model: &ModelId,
    inputs: &[NamedTensor],
) -> Result<(), SubmitError> {
    for t in inputs {
        t.tensor
            .validate(requester.limits.max_elements)
            .map_err(|e| SubmitError::Input(format!("`{}`: {e}", t.name)))?;
    }
    let info = match requester.engine.inspect(model) {
        Ok(info) => info,
        // This node's runtimes refuse the model, but a worker's may take it (ONNX Runtime
        // beside tract, a newer version): the auction asks them, and a worker that cannot
        // run it either declines or fails with its own reason. The inputs are checked there.
        Err(
            e @ (InferenceError::UnsupportedOperator { .. }
            | InferenceError::ModelInvalid(_)
            | InferenceError::Inference(_)
            | InferenceError::ModelTooLarge { .. }),
        ) => {
            // Bytes that are not an ONNX model at all are refused here, before any worker
            // fetches them.
            let bytes = requester
                .store
                .read(model)
                .map_err(|err| SubmitError::Model(err.to_string()))?;
            crank_inference::validate::check_onnx(&bytes)
                .map_err(|c| SubmitError::Model(format!("{e} ({c})")))?;
            warn!(model = %model, error = %e, "this node cannot check the model; workers will");
            return Ok(());
        }
        Err(e) => return Err(SubmitError::Model(e.to_string())),
    };
    info.check_inputs(inputs)
        .map_err(|e| SubmitError::Input(e.to_string()))
}

type Answer = (NodeId, AnswerKind);

enum AnswerKind {
    ToCall(Result<Response, String>),
    ToAward(Result<Response, String>),
}

/// A submission ready to auction: its model stored and its inputs checked.
struct Prepared {
    model: ModelId,
    model_bytes: u64,
    inputs: Vec<NamedTensor>,
    declared: Arc<Declared>,
    max_price_stroops: u64,
    deadline_ms: u64,
    bid_window_ms: u64,
    weights: crank_scheduler::Weights,
    labels: BTreeMap<String, String>,
}

/// One run of a task on one worker: an auction to a delivered, counter-signed answer.
struct Run {
    task_id: TaskId,
    worker: NodeId,
    price_stroops: u64,
    outputs: Vec<NamedTensor>,
    receipt: Receipt,
    elapsed_ms: f64,
    trace: AuctionTrace,
}

impl Run {
    fn summary(&self, disputed: bool) -> CheckRun {
        CheckRun {
            task_id: self.task_id,
            worker: self.worker,
            price_stroops: self.price_stroops,
            output_hash: self.receipt.inner.body.output_hash,
            elapsed_ms: self.elapsed_ms,
            disputed,
        }
    }
}

/// What a task's spot check found (see `crank_scheduler::verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    /// The draw did not pick the task: the answer stands on the worker's record.
    NotSampled,
    /// An independent replica agreed.
    Agreed,
    /// The replica disagreed and a third run sided with it: the first answer was wrong,
    /// disputed and not paid; the answer given is the replica's.
    FirstOutvoted,
    /// The replica disagreed and a third run sided with the first answer: the replica was
    /// wrong, disputed and not paid.
    ReplicaOutvoted,
    /// No majority (no third run could be had, or it agreed with neither): nobody is blamed,
    /// the receipts are paid when the dispute window ends, and the answer given is the first.
    Unresolved,
    /// The task was picked but no independent worker ran the replica: the first answer stands
    /// unchecked.
    NoReplica,
}

impl CheckOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotSampled => "not_sampled",
            Self::Agreed => "agreed",
            Self::FirstOutvoted => "first_outvoted",
            Self::ReplicaOutvoted => "replica_outvoted",
            Self::Unresolved => "unresolved",
            Self::NoReplica => "no_replica",
        }
    }
}

/// One extra run of a spot check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRun {
    /// Its own task id (an ordinary task to the worker).
    pub task_id: TaskId,
    /// Who ran it.
    pub worker: NodeId,
    /// Its price, stroops.
    pub price_stroops: u64,
    /// The hash its receipt committed to.
    pub output_hash: crank_protocol::ContentHash,
    /// Its submit-to-answer time, ms.
    pub elapsed_ms: f64,
    /// Outvoted: disputed, never paid.
    pub disputed: bool,
}

/// A completed task's spot check: whether it ran, what it found and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The probability the task was checked with (from the worker's record).
    pub rate: f64,
    /// What the check found.
    pub outcome: CheckOutcome,
    /// Why, in words, where there is more to say (the disagreement, why no replica ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How independent the replica's worker was of the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub independence: Option<Independence>,
    /// The first run, when the check changed the answer (its worker was outvoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<CheckRun>,
    /// The replica and, on disagreement, the third run.
    pub runs: Vec<CheckRun>,
    /// What the check costs on top of the answer's price, stroops: the agreeing runs (an
    /// outvoted run is never paid).
    pub extra_stroops: u64,
    /// Time the check added to the answer, ms.
    pub extra_ms: f64,
}

/// Runs a task on the mesh: auction, award, result, counter-signed receipt; then, when the
/// draw picks it, a spot check on independent workers.
pub(crate) async fn submit(
    requester: &Arc<Requester>,
    req: SubmitRequest,
) -> Result<TaskOutcome, SubmitError> {
    let started = Instant::now();
    let task = prepare(requester, req).await?;
    let result = run_once(requester, &task, &[]).await;
    let first = match result {
        Ok(run) => run,
        Err(e) => {
            requester.metrics.task("requester", "failed");
            requester
                .metrics
                .task_seconds(started.elapsed().as_secs_f64());
            return Err(e);
        }
    };
    let trace = first.trace.clone();
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (mut answer, check) = spot_check(requester, &task, first).await;
    let redacted = redact_outputs(requester, &task, answer.worker, &mut answer.outputs);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let check = check.map(|mut c| {
        c.extra_ms = elapsed_ms - first_ms;
        c
    });
    requester.metrics.task_seconds(elapsed_ms / 1000.0);
    requester.metrics.task("requester", "completed");
    info!(
        task = %answer.task_id.short(),
        worker = %answer.worker.short(),
        price = answer.price_stroops,
        ms = elapsed_ms,
        check = check.as_ref().map_or("off", |c| c.outcome.as_str()),
        "task completed"
    );
    Ok(TaskOutcome {
        task_id: answer.task_id,
        model: task.model,
        worker: answer.worker,
        price_stroops: answer.price_stroops,
        outputs: answer.outputs,
        receipt: answer.receipt,
        elapsed_ms,
        trace,
        check,
        labels: task.labels.clone(),
        redacted,
    })
}

/// Most labels on one task.
pub const MAX_LABELS: usize = 32;

/// Checks a task's labels: at most [`MAX_LABELS`]; keys of 1-64 letters, digits, `_`, `-` or
/// `.`; values of at most 256 characters without control characters.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels; a task may carry at most {MAX_LABELS}",
            labels.len()
        ));
    }
    for (k, v) in labels {
        let key_ok = (1..=64).contains(&k.len())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !key_ok {
            return Err(format!(
                "label key {k:?}: use 1-64 letters, digits, '_', '-' or '.'"
            ));
        }
        if v.chars().count() > 256 || v.chars().any(char::is_control) {
            return Err(format!(
                "label {k}: the value must be at most 256 characters, without control characters"
            ));
        }
    }
    Ok(())
}

/// The task as the submitter's policies see it.
fn policy_task(task: &Prepared) -> crank_policy::Task {
    crank_policy::Task {
        labels: task.labels.clone(),
        model: crank_policy::Model {
            hash: task.model.to_hex(),
            bytes: task.model_bytes,
            cached: true,
            package: None,
        },
        input: crank_policy::TaskInput {
            elements: task.inputs.iter().map(|t| t.tensor.data.len() as u64).sum(),
        },
        max_price_stroops: task.max_price_stroops,
        time: crank_policy::Time::at(clock::now_ms()),
    }
}

/// Applies the output policy: removes the outputs it withholds and returns their names.
fn redact_outputs(
    requester: &Requester,
    task: &Prepared,
    worker: NodeId,
    outputs: &mut Vec<NamedTensor>,
) -> Vec<String> {
    let policies = requester.policies.current();
    if !policies.has(crank_policy::Kind::Output) {
        return Vec::new();
    }
    let input = crank_policy::OutputInput {
        task: policy_task(task),
        worker: worker.to_hex(),
        outputs: outputs
            .iter()
            .map(|t| crank_policy::OutputTensor {
                name: t.name.clone(),
                dtype: t.tensor.data.dtype().to_string(),
                shape: t.tensor.shape.clone(),
                head: head_values(&t.tensor.data),
            })
            .collect(),
    };
    let decision = policies.output(&input);
    outputs.retain(|t| !decision.redact.contains(&t.name));
    let redacted: Vec<String> = decision
        .redact
        .into_iter()
        .filter(|name| input.outputs.iter().any(|o| &o.name == name))
        .collect();
    requester.metrics.policy_decision(
        "output",
        if redacted.is_empty() {
            "allow"
        } else {
            "redact"
        },
    );
    if !redacted.is_empty() {
        info!(redacted = ?redacted, "outputs withheld by the output policy");
    }
    redacted
}

/// The first 64 values of a tensor, as numbers for a policy to look at.
fn head_values(data: &crank_protocol::TensorData) -> Vec<f64> {
    use crank_protocol::TensorData as D;
    const N: usize = 64;
    match data {
        D::F32(v) => v.iter().take(N).map(|x| f64::from(*x)).collect(),
        D::F64(v) => v.iter().take(N).copied().collect(),
        D::I64(v) => v.iter().take(N).map(|x| *x as f64).collect(),
        D::I32(v) => v.iter().take(N).map(|x| f64::from(*x)).collect(),
        D::U8(v) => v.iter().take(N).map(|x| f64::from(*x)).collect(),
    }
}

/// The placement policy's first reason to leave `node` out of the task (None: it may take
/// part); `bid` is None before the call for bids.
fn placement_excludes(
    requester: &Requester,
    policies: &crank_policy::Policies,
    task: &crank_policy::Task,
    node: &NodeId,
    advert: Option<&CapabilityAdvert>,
    bid: Option<&crank_protocol::Bid>,
) -> Option<String> {
    let (score, record) = {
        let trust = lock(&requester.trust);
        (trust.score(node), trust.get(node).cloned())
    };
    let input = crank_policy::PlacementInput {
        stage: if bid.is_some() { "bid" } else { "call" }.into(),
        task: task.clone(),
        candidate: crank_policy::Candidate {
            id: node.to_hex(),
            own: advert.is_some_and(|a| a.payout == requester.payout),
            advert: advert.and_then(|a| serde_json::to_value(a).ok()),
            trust: crank_policy::CandidateTrust {
                known: record.is_some(),
                score,
                completed: record.as_ref().map_or(0, |r| r.completed),
                failed: record.as_ref().map_or(0, |r| r.failed),
            },
            bid: bid.map(|b| crank_policy::BidInfo {
                price_stroops: b.price_stroops,
                path: b.path.to_string(),
                latency_ms: u64::from(b.est_latency_ms),
            }),
        },
    };
    let decision = policies.placement(&input);
    let stage = if bid.is_some() { "bid" } else { "call" };
    match decision.exclude.into_iter().next() {
        Some(reason) => {
            debug!(peer = %node.short(), stage, reason = %reason, "left out by the placement policy");
            requester.metrics.policy_decision("placement", "exclude");
            Some(reason)
        }
        None => {
            requester.metrics.policy_decision("placement", "allow");
            None
        }
    }
}

/// Stores the model, checks the inputs against it and waits for adverts.
async fn prepare(requester: &Arc<Requester>, req: SubmitRequest) -> Result<Prepared, SubmitError> {
    let cfg = &requester.config.requester;
    let model = match req.model {
        ModelSource::Bytes(bytes) => requester
            .add_model(&bytes)
            .await
            .map_err(|e| SubmitError::Model(e.to_string()))?,
        ModelSource::Id(id) => id,
    };
    let model_bytes = requester
        .store
        .size(&model)
        .ok_or_else(|| SubmitError::Model(format!("model {model} is not in the store")))?;
    check_inputs(requester, &model, &req.inputs)?;
    let declared = requester.declared(&model).map_err(SubmitError::Model)?;
    wait_for_adverts(requester).await?;
    Ok(Prepared {
        model,
        model_bytes,
        inputs: req.inputs,
        declared,
        max_price_stroops: req.max_price_stroops.unwrap_or(cfg.max_price_stroops),
        deadline_ms: req.deadline_ms.unwrap_or(cfg.deadline_ms),
        bid_window_ms: req.bid_window_ms.unwrap_or(cfg.bid_window_ms).max(1),
        weights: req.prefer.weights(),
        labels: req.labels,
    })
}

/// Runs the task once: a fresh task id, an auction among the adverts (only those
/// independent of `avoid`, when it names the workers that already answered), a delivered
/// answer. With checks on, the answer's receipt stays held until the caller ends its check.
async fn run_once(
    requester: &Arc<Requester>,
    task: &Prepared,
    avoid: &[Answerer],
) -> Result<Run, SubmitError> {
    let started = Instant::now();
    let cfg = &requester.config.requester;
    let rule = OutputRule {
        declared: task.declared.clone(),
        inputs: &task.inputs,
        // The wire refuses NaN and infinity in any tensor (`Tensor::validate`); the check
        // refuses them too, so a model whose answers may be non-finite needs both relaxed.
        non_finite: NonFinite::Refuse,
        hold: cfg.checks.enabled,
    };
    let model = task.model;
    let now = clock::now_ms();
    let input_hash = tensors_hash(&task.inputs);
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| SubmitError::Spec(e.to_string()))?;
    let task_id = TaskId::derive(&requester.node_id, &nonce, &model, &input_hash);
    let input_elements: u64 = task.inputs.iter().map(|t| t.tensor.data.len() as u64).sum();
    let spec = TaskSpec {
        task_id,
        requester: requester.node_id,
        model,
        model_bytes: task.model_bytes,
        input_hash,
        input_elements,
        nonce,
        payer: requester.payout.clone(),
        max_price_stroops: task.max_price_stroops,
        deadline: now + task.deadline_ms,
        bid_window_ms: task.bid_window_ms,
        weights: task.weights,
    };

    // Holders of the model (Kademlia) rank first; adverts say who else could run it.
    let providers: BTreeSet<NodeId> = match tokio::time::timeout(
        Duration::from_millis(300),
        requester.client.providers(model.provider_key()),
    )
    .await
    {
        Ok(Ok(p)) => p.into_iter().collect(),
        _ => BTreeSet::new(),
    };
    let networks = if avoid.is_empty() {
        HashMap::new()
    } else {
        peer_networks(requester).await
    };
    let policies = requester.policies.current();
    let place = policies.has(crank_policy::Kind::Placement);
    let policy_task = policy_task(task);
    let mut excluded: BTreeMap<String, u32> = BTreeMap::new();
    let (providers, allowed) = if place {
        let fresh: Vec<CapabilityAdvert> = lock(&requester.adverts).fresh(now).cloned().collect();
        let mut allowed = BTreeSet::new();
        for a in &fresh {
            match placement_excludes(requester, &policies, &policy_task, &a.node, Some(a), None) {
                Some(reason) => *excluded.entry(format!("policy: {reason}")).or_default() += 1,
                None => {
                    allowed.insert(a.node);
                }
            }
        }
        let providers: BTreeSet<NodeId> = providers
            .into_iter()
            .filter(|p| {
                if fresh.iter().any(|a| a.node == *p) {
                    return allowed.contains(p);
                }
                match placement_excludes(requester, &policies, &policy_task, p, None, None) {
                    Some(reason) => {
                        *excluded.entry(format!("policy: {reason}")).or_default() += 1;
                        false
                    }
                    None => true,
                }
            })
            .collect();
        (providers, Some(allowed))
    } else {
        (providers, None)
    };
    let candidates = {
        let adverts = lock(&requester.adverts);
        let trust = lock(&requester.trust);
        let admitted = |a: &&CapabilityAdvert| allowed.as_ref().is_none_or(|s| s.contains(&a.node));
        // A replica's candidates come most independent first: the auction's first round
        // asks the best group there is, and later rounds fall back to the rest.
        let groups: Vec<Vec<&CapabilityAdvert>> = if avoid.is_empty() {
            vec![adverts.fresh(now).filter(admitted).collect()]
        } else {
            by_independence(
                adverts.fresh(now).filter(admitted),
                |a| networks.get(&a.node).copied(),
                avoid,
            )
            .into_iter()
            .map(|(_, g)| g)
            .collect()
        };
        let mut candidates: Vec<NodeId> = Vec::new();
        for group in groups {
            // A replica goes only to an advertised worker: a provider record names no payout
            // account to tell it apart by, and may name a worker that already answered.
            let providers: BTreeSet<NodeId> = if avoid.is_empty() {
                providers.clone()
            } else {
                providers
                    .iter()
                    .filter(|p| group.iter().any(|a| a.node == **p))
                    .copied()
                    .collect()
            };
            let query = CandidateQuery {
                requester: requester.node_id,
                model,
                model_bytes: task.model_bytes,
                providers: &providers,
                weights: spec.weights,
                k: cfg.auction.fanout,
                limit: cfg.auction.max_candidates,
                explore: 1,
                seed: u64::from_le_bytes(nonce[..8].try_into().unwrap_or([0; 8])),
            };
            for c in select_candidates(group, &query, &trust, now) {
                if !candidates.contains(&c) && candidates.len() < cfg.auction.max_candidates {
                    candidates.push(c);
                }
            }
        }
        if !avoid.is_empty() {
            debug!(task = %task_id.short(), candidates = candidates.len(), "replica candidates");
        }
        candidates
    };
    if candidates.is_empty() && !excluded.is_empty() {
        let reasons = excluded
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SubmitError::Placement { reasons });
    }
    if candidates.is_empty() && !avoid.is_empty() {
        return Err(SubmitError::NoCandidates {
            waited_ms: 0,
            known: count_candidates(requester, now),
        });
    }
    let mut auction = {
        let trust = lock(&requester.trust);
        Auction::new(spec, cfg.auction.clone(), &candidates, &trust, now)
            .map_err(|e| SubmitError::Spec(e.to_string()))?
    };
    debug!(task = %task_id.short(), candidates = candidates.len(), "auction started");

    let (report_tx, mut reports) = mpsc::channel(16);
    lock(&requester.pending).insert(task_id, report_tx);
    let judge = |peer: &NodeId, bid: &crank_protocol::Bid| -> Option<String> {
        if !place {
            return None;
        }
        let advert = lock(&requester.adverts).get(peer, clock::now_ms()).cloned();
        placement_excludes(
            requester,
            &policies,
            &policy_task,
            peer,
            advert.as_ref(),
            Some(bid),
        )
    };
    let result = drive(requester, &mut auction, &rule, &judge, &mut reports).await;
    lock(&requester.pending).remove(&task_id);

    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok((worker, price_stroops, outputs, receipt)) => {
            debug!(task = %task_id.short(), worker = %worker.short(), price = price_stroops, ms = elapsed_ms, "run delivered");
            Ok(Run {
                task_id,
                worker,
                price_stroops,
                outputs,
                receipt,
                elapsed_ms,
                trace: auction.trace().clone(),
            })
        }
        Err(explanation) => {
            info!(task = %task_id.short(), reason = %explanation, "task failed");
            Err(SubmitError::Failed {
                explanation,
                trace: Box::new(auction.trace().clone()),
            })
        }
    }
}

/// The network each connected peer's connection comes from (its IPv4 /24 or IPv6 /48).
async fn peer_networks(requester: &Requester) -> HashMap<NodeId, Network> {
    match requester.client.status().await {
        Ok(status) => status
            .peers
            .iter()
            .filter_map(|p| Network::of_multiaddr(&p.addr).map(|n| (p.node, n)))
            .collect(),
        Err(e) => {
            debug!(error = %e, "no network status; replicas are told apart by node and account only");
            HashMap::new()
        }
    }
}

/// What a spot check knows of a worker that answered.
fn answerer(requester: &Requester, run: &Run, networks: &HashMap<NodeId, Network>) -> Answerer {
    let now = clock::now_ms();
    let hardware = lock(&requester.adverts)
        .fresh(now)
        .find(|a| a.node == run.worker)
        .map(HardwareClass::of);
    Answerer {
        node: run.worker,
        payout: run.receipt.inner.body.payout.clone(),
        network: networks.get(&run.worker).copied(),
        hardware,
    }
}

/// Draws whether to check the first answer and, if so, runs the check: a replica on an
/// independent worker, and a third run when they disagree. Ends every receipt's check
/// (payable, or disputed when outvoted), records what each worker's answer was worth in the
/// trust book, and returns the answer to give (the majority's) with the report. `None` when
/// checks are off.
async fn spot_check(
    requester: &Arc<Requester>,
    task: &Prepared,
    first: Run,
) -> (Run, Option<CheckReport>) {
    let policy = requester.config.requester.checks;
    if !policy.enabled {
        return (first, None);
    }
    let rate = {
        let trust = lock(&requester.trust);
        policy.rate(trust.get(&first.worker), trust.score(&first.worker))
    };
    let mut draw = [0u8; 8];
    // Without randomness the task is checked: a check costs money, a missed cheat more.
    let sampled =
        getrandom::fill(&mut draw).is_err() || CheckPolicy::sampled(rate, u64::from_le_bytes(draw));
    let mut report = CheckReport {
        rate,
        outcome: CheckOutcome::NotSampled,
        detail: None,
        independence: None,
        first: None,
        runs: Vec::new(),
        extra_stroops: 0,
        extra_ms: 0.0,
    };
    if !sampled {
        passed(requester, &[&first]).await;
        requester.metrics.spot_check(report.outcome.as_str());
        return (first, Some(report));
    }

    let networks = peer_networks(requester).await;
    let a1 = answerer(requester, &first, &networks);
    let replica = match run_once(requester, task, std::slice::from_ref(&a1)).await {
        Ok(r) => r,
        Err(e) => {
            info!(task = %first.task_id.short(), error = %e, "no independent replica; the answer stands unchecked");
            passed(requester, &[&first]).await;
            report.outcome = CheckOutcome::NoReplica;
            report.detail = Some(e.to_string());
            requester.metrics.spot_check(report.outcome.as_str());
            return (first, Some(report));
        }
    };
    let a2 = answerer(requester, &replica, &networks);
    report.independence = a2.independence_from(std::slice::from_ref(&a1));
    let tolerance = policy.tolerance;
    let disagreement = match compare(&first.outputs, &replica.outputs, tolerance) {
        Ok(()) => {
            record_checks(requester, &[(first.worker, true), (replica.worker, true)]);
            passed(requester, &[&first, &replica]).await;
            report.outcome = CheckOutcome::Agreed;
            report.extra_stroops = replica.price_stroops;
            report.runs.push(replica.summary(false));
            requester.metrics.spot_check(report.outcome.as_str());
            return (first, Some(report));
        }
        Err(d) => d,
    };
    warn!(
        task = %first.task_id.short(),
        first = %first.worker.short(),
        replica = %replica.worker.short(),
        disagreement = %disagreement,
        "replica disagrees; a third run decides"
    );
    let third = run_once(requester, task, &[a1, a2]).await;
    let votes = third.as_ref().ok().map(|t| {
        (
            compare(&t.outputs, &first.outputs, tolerance).is_ok(),
            compare(&t.outputs, &replica.outputs, tolerance).is_ok(),
        )
    });
    let verdict = crank_scheduler::verify::verdict(false, votes);
    let third = third.map_err(|e| e.to_string());
    report.outcome = match verdict {
        Verdict::FirstWrong => CheckOutcome::FirstOutvoted,
        Verdict::ReplicaWrong => CheckOutcome::ReplicaOutvoted,
        Verdict::Agreed | Verdict::Unresolved => CheckOutcome::Unresolved,
    };
    report.detail = Some(match &third {
        Ok(_) => format!("first and replica: {disagreement}"),
        Err(e) => format!("first and replica: {disagreement}; no third run: {e}"),
    });
    let (wrong, right): (Option<&Run>, Vec<&Run>) = match (verdict, &third) {
        (Verdict::FirstWrong, Ok(t)) => (Some(&first), vec![&replica, t]),
        (Verdict::ReplicaWrong, Ok(t)) => (Some(&replica), vec![&first, t]),
        _ => (None, Vec::new()),
    };
    if let Some(wrong) = wrong {
        let evidence = right
            .iter()
            .map(|r| {
                format!(
                    "task {} by {} answered {}",
                    r.task_id.to_hex(),
                    r.worker.to_hex(),
                    r.receipt.inner.body.output_hash.to_hex()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let message = format!("outvoted by independent replicas ({evidence}): {disagreement}");
        dispute_outvoted(requester, wrong, message).await;
        let mut marks: Vec<(NodeId, bool)> = vec![(wrong.worker, false)];
        marks.extend(right.iter().map(|r| (r.worker, true)));
        record_checks(requester, &marks);
        passed(requester, &right).await;
    }
    // Unresolved: no receipt is disputed or passed here; each is paid when its dispute
    // window ends, and nobody's trust moves.
    let first_wrong = verdict == Verdict::FirstWrong;
    let replica_wrong = verdict == Verdict::ReplicaWrong;
    report.runs.push(replica.summary(replica_wrong));
    if let Ok(t) = &third {
        report.runs.push(t.summary(false));
    }
    let paid = |r: &Run, wrong: bool| if wrong { 0 } else { r.price_stroops };
    let third_price = third.as_ref().map_or(0, |t| t.price_stroops);
    requester.metrics.spot_check(report.outcome.as_str());
    if first_wrong {
        report.first = Some(first.summary(true));
        // The replica's answer is given; the third run is the check's cost.
        report.extra_stroops = third_price;
        (replica, Some(report))
    } else {
        report.extra_stroops = paid(&replica, replica_wrong) + third_price;
        (first, Some(report))
    }
}
/// Ends the checks of these runs' receipts: they become payable.
async fn passed(requester: &Requester, runs: &[&Run]) {
    for r in runs {
        if let Err(e) = requester.receipts.checks_passed(r.task_id, r.worker).await {
            warn!(task = %r.task_id.short(), error = %chain(&e), "cannot mark a checked receipt payable; the dispute window will");
        }
    }
}

/// Records what spot checks said of each worker (agreed with the majority or not).
fn record_checks(requester: &Requester, marks: &[(NodeId, bool)]) {
    let now = clock::now_ms();
    {
        let mut trust = lock(&requester.trust);
        for (peer, agreed) in marks {
            trust.record_check(*peer, *agreed, now);
        }
    }
    requester.save_trust();
}

/// Disputes an outvoted answer's receipt (it is never paid) and tells its worker.
async fn dispute_outvoted(requester: &Requester, wrong: &Run, message: String) {
    warn!(task = %wrong.task_id.short(), worker = %wrong.worker.short(), "answer outvoted by independent replicas; its receipt is disputed and will not be paid");
    match requester
        .receipts
        .check_failed(wrong.task_id, wrong.worker, message)
        .await
    {
        Ok(Some(dispute)) => {
            let client = requester.client.clone();
            let worker = wrong.worker;
            tokio::spawn(async move {
                let _ = client
                    .request(&worker, Request::Dispute(Box::new(dispute)))
                    .await;
            });
        }
        Ok(None) => debug!(task = %wrong.task_id.short(), "receipt already disputed or paid"),
        Err(e) => {
            warn!(task = %wrong.task_id.short(), error = %chain(&e), "cannot dispute an outvoted receipt")
        }
    }
}

type Done = (NodeId, u64, Vec<NamedTensor>, Receipt);

async fn drive(
    requester: &Arc<Requester>,
    auction: &mut Auction,
    rule: &OutputRule<'_>,
    judge: &(dyn Fn(&NodeId, &crank_protocol::Bid) -> Option<String> + Sync),
    reports: &mut mpsc::Receiver<WorkerReport>,
) -> Result<Done, FailureExplanation> {
    let inputs = rule.inputs;
    let spec = auction.spec().clone();
    let mut answers: FuturesUnordered<futures::future::BoxFuture<'static, Answer>> =
        FuturesUnordered::new();
    let mut delivered: Option<(Vec<NamedTensor>, Receipt)> = None;
    // The receipt counter-signed for the current holder, waiting for its outputs.
    let mut countersigned: Option<(NodeId, Receipt)> = None;
    loop {
        while let Some(output) = auction.poll_output() {
            match output {
                Output::SendCallForBids { round, to, cfb } => {
                    let signed = match Signed::sign(cfb, &requester.identity) {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(error = %e, "cannot sign a call for bids");
                            continue;
                        }
                    };
                    debug!(task = %spec.task_id.short(), round, asked = to.len(), "call for bids");
                    for peer in to {
                        let client = requester.client.clone();
                        let req = Request::CallForBids(signed.clone());
                        answers.push(Box::pin(async move {
                            (
                                peer,
                                AnswerKind::ToCall(
                                    client.request(&peer, req).await.map_err(|e| e.to_string()),
                                ),
                            )
                        }));
                    }
                }
                Output::SendAward { to, price_stroops } => {
                    let award = auction.award_message(to, price_stroops, inputs.to_vec());
                    match Signed::sign(award, &requester.identity) {
                        Ok(signed) => {
                            debug!(task = %spec.task_id.short(), worker = %to.short(), price = price_stroops, "award");
                            let client = requester.client.clone();
                            answers.push(Box::pin(async move {
                                let r = client
                                    .request(&to, Request::Award(signed))
                                    .await
                                    .map_err(|e| e.to_string());
                                (to, AnswerKind::ToAward(r))
                            }));
                        }
                        Err(e) => warn!(error = %e, "cannot sign an award"),
                    }
                }
                Output::SendCancel { to } => {
                    let cancel = auction.cancel_message(to);
                    if let Ok(signed) = Signed::sign(cancel, &requester.identity) {
                        let client = requester.client.clone();
                        tokio::spawn(async move {
                            let _ = client.request(&to, Request::Cancel(signed)).await;
                        });
                    }
                }
                Output::Observed(obs) => {
                    let over = lock(&requester.trust).record_observation(&obs, clock::now_ms());
                    if let Some(over) = over {
                        warn!(
                            task = %spec.task_id.short(),
                            worker = %obs.peer.short(),
                            claimed_ms = obs.claimed_latency_ms,
                            measured_ms = obs.observed_latency_ms,
                            claimed_mj = obs.claimed_energy_mj,
                            reported_mj = obs.reported_energy_mj,
                            latency = over.latency,
                            energy = over.energy,
                            "worker over-claimed; counted against its trust"
                        );
                        requester.metrics.overclaim();
                    }
                    requester.save_trust();
                }
                Output::Trust { peer, outcome } => {
                    lock(&requester.trust).record(peer, outcome, clock::now_ms());
                    requester.save_trust();
                }
                Output::Completed {
                    worker,
                    price_stroops,
                } => {
                    if let Some((outputs, receipt)) = delivered.take() {
                        return Ok((worker, price_stroops, outputs, receipt));
                    }
                }
                Output::Failed(explanation) => return Err(explanation),
            }
        }
        let wake = auction.poll_timeout().unwrap_or(spec.deadline);
        let sleep_ms = wake.saturating_sub(clock::now_ms());
        tokio::select! {
            Some((peer, kind)) = answers.next(), if !answers.is_empty() => {
                let input = match kind {
                    // Each bid meets the placement policy before it can win the award.
                    AnswerKind::ToCall(Ok(Response::Bid(bid))) => match judge(&peer, &bid.body) {
                        Some(reason) => Input::Excluded { from: peer, reason },
                        None => Input::Bid { from: peer, bid },
                    },
                    AnswerKind::ToCall(Ok(Response::Decline(decline))) => Input::Decline { from: peer, decline },
                    AnswerKind::ToAward(Ok(Response::Accepted { .. })) => Input::AwardAccepted { from: peer },
                    AnswerKind::ToAward(Ok(Response::Decline(decline))) => Input::AwardRejected { from: peer, decline },
                    AnswerKind::ToCall(other) | AnswerKind::ToAward(other) => {
                        match other {
                            Ok(r) => debug!(peer = %peer.short(), kind = r.kind(), "unusable answer"),
                            Err(e) => debug!(peer = %peer.short(), error = %e, "no answer"),
                        }
                        Input::NoAnswer { peer }
                    }
                };
                if let Err(e) = auction.handle(input, clock::now_ms()) {
                    debug!(task = %spec.task_id.short(), error = %e, "answer not used");
                }
            }
            Some(report) = reports.recv() => match report {
                WorkerReport::Result { from, result, responder } => {
                    on_task_result(requester, auction, from, result, responder, &mut countersigned).await;
                }
                WorkerReport::Outputs { from, outputs, responder } => {
                    on_task_outputs(requester, auction, rule, from, outputs, responder, &mut countersigned, &mut delivered).await;
                }
                WorkerReport::Failure { from, failure, responder } => {
                    responder.send(Response::Ack { task_id: spec.task_id });
                    if let Err(e) = auction.handle(Input::WorkerFailed { from, failure }, clock::now_ms()) {
                        debug!(error = %e, "failure report not used");
                    }
                }
                WorkerReport::Disconnected { peer } => {
                    if current_worker(auction) == Some(peer) {
                        info!(task = %spec.task_id.short(), worker = %peer.short(), "worker disconnected; re-awarding");
                        let _ = auction.handle(Input::NoAnswer { peer }, clock::now_ms());
                    }
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                auction.handle_timeout(clock::now_ms());
            }
        }
    }
}

fn current_worker(auction: &Auction) -> Option<NodeId> {
    match auction.status() {
        Status::Awarded { worker, .. } | Status::Running { worker, .. } => Some(worker),
        _ => None,
    }
}

/// Checks a worker's signed receipt against the award, counter-signs and stores it (awaiting
/// the outputs), and answers with the counter-signature: the worker releases the outputs
/// only against it.
async fn on_task_result(
    requester: &Arc<Requester>,
    auction: &mut Auction,
    from: NodeId,
    result: TaskResult,
    responder: Responder,
    countersigned: &mut Option<(NodeId, Receipt)>,
) {
    if current_worker(auction) != Some(from) {
        responder.send(Response::error(
            ErrorCode::NotAuthorized,
            "this task is not awarded to you (it was re-awarded or ended)",
        ));
        return;
    }
    let spec = auction.spec();
    let price_stroops = match auction.status() {
        Status::Awarded { price_stroops, .. } | Status::Running { price_stroops, .. } => {
            price_stroops
        }
        _ => u64::MAX,
    };
    let expected = Expected {
        task_id: spec.task_id,
        model: spec.model,
        input_hash: spec.input_hash,
        price_stroops,
        payer: spec.payer.clone(),
    };
    match requester
        .receipts
        .countersign(result.receipt, from, &expected, &requester.limits)
        .await
    {
        Ok(receipt) => {
            requester.metrics.receipt("requester");
            responder.send(Response::Receipt(Box::new(receipt.clone())));
            *countersigned = Some((from, receipt));
        }
        Err(e) => {
            let reason = format!("receipt refused: {}", chain(&e));
            warn!(peer = %from.short(), reason = %reason, "result refused");
            if matches!(e, crank_payments::ExchangeError::Invalid(_)) {
                requester.client.penalize(&from, e.to_string()).await;
            }
            responder.send(Response::error(ErrorCode::Invalid, &reason));
            let _ = auction.handle(Input::ResultInvalid { from, reason }, clock::now_ms());
        }
    }
}

/// Checks the outputs the worker released against the hash its counter-signed receipt
/// committed to and against the model's declared outputs; completes the task, or disputes
/// the receipt with the signed outputs as evidence, lowers the worker's trust and
/// re-awards.
#[allow(clippy::too_many_arguments)]
async fn on_task_outputs(
    requester: &Arc<Requester>,
    auction: &mut Auction,
    rule: &OutputRule<'_>,
    from: NodeId,
    outputs: Signed<TaskOutputs>,
    responder: Responder,
    countersigned: &mut Option<(NodeId, Receipt)>,
    delivered: &mut Option<(Vec<NamedTensor>, Receipt)>,
) {
    let Some((holder, receipt)) = countersigned.take_if(|(w, _)| *w == from) else {
        responder.send(Response::error(
            ErrorCode::NotFound,
            "no counter-signed receipt awaits these outputs",
        ));
        return;
    };
    let task_id = receipt.inner.body.task_id;
    let receipts = &requester.receipts;
    let verdict = if rule.hold {
        receipts
            .check_outputs_held(outputs, holder, &requester.limits, |o| rule.check(o))
            .await
    } else {
        receipts
            .check_outputs(outputs, holder, &requester.limits, |o| rule.check(o))
            .await
    };
    match verdict {
        Ok(OutputsVerdict::Accepted(tensors)) => {
            responder.send(Response::Ack { task_id });
            *delivered = Some((tensors, receipt.clone()));
            if let Err(e) = auction.handle(
                Input::Result {
                    from,
                    receipt: receipt.inner,
                },
                clock::now_ms(),
            ) {
                warn!(error = %e, "auction did not take the result");
            }
        }
        Ok(OutputsVerdict::Disputed(dispute)) => {
            let reason = dispute.body.reason.to_string();
            warn!(peer = %from.short(), task = %task_id.short(), reason = %reason, "outputs disputed; the receipt will not be paid");
            let offence = match &dispute.body.reason {
                DisputeReason::InvalidOutputs { .. } => {
                    "delivered outputs that do not fit the model"
                }
                _ => "delivered outputs its receipt did not commit to",
            };
            requester.client.penalize(&from, offence).await;
            responder.send(Response::Disputed(dispute));
            let _ = auction.handle(Input::ResultInvalid { from, reason }, clock::now_ms());
        }
        Err(e) => {
            // Unsigned or malformed outputs prove nothing: wait for a proper delivery.
            debug!(peer = %from.short(), error = %chain(&e), "outputs refused");
            responder.send(Response::error(ErrorCode::Invalid, chain(&e)));
            *countersigned = Some((holder, receipt));
        }
    }
}

/// Outputs for a task this node requested.
pub(crate) async fn on_outputs(
    requester: &Arc<Requester>,
    peer: NodeId,
    outputs: Signed<TaskOutputs>,
    responder: Responder,
) {
    let task = outputs.body.task_id;
    let pending = lock(&requester.pending).get(&task).cloned();
    if let Some(tx) = pending {
        if let Err(mpsc::error::SendError(WorkerReport::Outputs {
            outputs, responder, ..
        })) = tx
            .send(WorkerReport::Outputs {
                from: peer,
                outputs,
                responder,
            })
            .await
        {
            responder.send(outputs_after_the_task(requester, peer, outputs).await);
        }
        return;
    }
    responder.send(outputs_after_the_task(requester, peer, outputs).await);
}

/// Outputs that arrive after the submission ended (this node restarted, or the task gave
/// up first): still checked, so an honest worker's receipt becomes payable and a dishonest
/// one's is disputed. The task's inputs are gone by then, so the outputs are checked against
/// what the model alone fixes (names, types, fixed dimensions, value ranges).
async fn outputs_after_the_task(
    requester: &Arc<Requester>,
    peer: NodeId,
    outputs: Signed<TaskOutputs>,
) -> Response {
    let task_id = outputs.body.task_id;
    let model = match requester.receipts.stored(task_id, peer).await {
        Ok(Some(r)) => Some(r.terms.model),
        _ => None,
    };
    let declared = model.and_then(|m| requester.declared(&m).ok());
    match requester
        .receipts
        .check_outputs(outputs, peer, &requester.limits, |o| match &declared {
            Some(d) => d
                .check_outputs(&[], o, NonFinite::Refuse)
                .map_err(|e| e.to_string()),
            // The model left the store: the hash is all that can be checked.
            None => Ok(()),
        })
        .await
    {
        Ok(OutputsVerdict::Accepted(_)) => Response::Ack { task_id },
        Ok(OutputsVerdict::Disputed(d)) => Response::Disputed(d),
        Err(e) => Response::error(ErrorCode::NotFound, chain(&e)),
    }
}

/// A worker asks for the notice of a settlement it found on the ledger.
pub(crate) async fn on_get_settlement(
    requester: &Arc<Requester>,
    peer: NodeId,
    tx_hash: [u8; 32],
) -> Response {
    match requester.receipts.notice_for(TxHash(tx_hash), peer).await {
        Ok(Some(n)) => Response::Settlement(Box::new(n)),
        Ok(None) => Response::error(ErrorCode::NotFound, "no settlement of ours paid you there"),
        Err(e) => Response::error(ErrorCode::Internal, chain(&e)),
    }
}

/// Ends output checks whose time is up (see `dispute_window_secs`): receipts whose outputs
/// never came are disputed, and the workers told; delivered ones become payable.
pub(crate) async fn expire_checks(requester: Arc<Requester>, mut stop: watch::Receiver<bool>) {
    let window_ms = requester
        .config
        .requester
        .dispute_window_secs
        .saturating_mul(1000);
    let every = Duration::from_millis((window_ms / 4).clamp(1_000, 60_000));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stopped(&mut stop) => return,
        }
        let disputes = match requester
            .receipts
            .expire_checks(clock::now_ms(), window_ms)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %chain(&e), "cannot end expired checks");
                continue;
            }
        };
        for d in disputes {
            let worker = d.body.receipt.body.worker;
            let client = requester.client.clone();
            tokio::spawn(async move {
                let _ = client.request(&worker, Request::Dispute(Box::new(d))).await;
            });
        }
    }
}

/// A result for a task this node requested.
pub(crate) async fn on_result(
    requester: &Arc<Requester>,
    peer: NodeId,
    result: TaskResult,
    responder: Responder,
) {
    let task = result.receipt.body.task_id;
    let pending = lock(&requester.pending).get(&task).cloned();
    match pending {
        Some(tx) => {
            if let Err(mpsc::error::SendError(WorkerReport::Result { responder, .. })) = tx
                .send(WorkerReport::Result {
                    from: peer,
                    result,
                    responder,
                })
                .await
            {
                responder.send(Response::error(ErrorCode::NotFound, "task already ended"));
            }
        }
        None => {
            // A retry after we stored and answered: answer the same receipt again.
            match requester.receipts.stored(task, peer).await {
                Ok(Some(s)) => responder.send(answer_with(&s)),
                _ => responder.send(Response::error(ErrorCode::NotFound, "no such task here")),
            }
        }
    }
}

/// The stored receipt as a worker wants it back: counter-signed, in the wire version it was
/// signed under.
fn answer_with(s: &crank_payments::StoredReceipt) -> Response {
    match &s.proof {
        ReceiptProof::Current(r) => Response::Receipt(Box::new(r.clone())),
        ReceiptProof::V1(r) => Response::LegacyReceipt(Box::new(r.clone())),
    }
}

/// A worker asks for the counter-signed receipt of a task it did for us (it crashed after
/// sending the result and before storing our answer).
pub(crate) async fn on_get_receipt(
    requester: &Arc<Requester>,
    peer: NodeId,
    task: TaskId,
) -> Response {
    match requester.receipts.stored(task, peer).await {
        Ok(Some(s)) => answer_with(&s),
        Ok(None) => Response::error(
            ErrorCode::NotFound,
            "no counter-signed receipt for this task and worker",
        ),
        Err(e) => {
            warn!(task = %task.short(), error = %chain(&e), "cannot read a receipt");
            Response::error(ErrorCode::Internal, "cannot read the ledger")
        }
    }
}

/// A failure report for a task this node requested.
pub(crate) async fn on_failure(
    requester: &Arc<Requester>,
    peer: NodeId,
    failure: Signed<TaskFailure>,
    responder: Responder,
) {
    let task = failure.body.task_id;
    if failure.verify_by(&peer).is_err() {
        requester
            .client
            .penalize(&peer, "failure report not signed by the sender")
            .await;
        responder.send(Response::error(
            ErrorCode::BadSignature,
            "failure report not signed by the sender",
        ));
        return;
    }
    let pending = lock(&requester.pending).get(&task).cloned();
    match pending {
        Some(tx) => {
            if let Err(mpsc::error::SendError(WorkerReport::Failure { responder, .. })) = tx
                .send(WorkerReport::Failure {
                    from: peer,
                    failure,
                    responder,
                })
                .await
            {
                responder.send(Response::Ack { task_id: task });
            }
        }
        None => responder.send(Response::Ack { task_id: task }),
    }
}

/// Tells workers about settlements that paid them, with a notice signed by this node, until
/// each acknowledges, so each can check its payment against the ledger and credit its
/// receipts. Runs when a settlement applies, and every half minute for workers not reached
/// yet (offline, or resolved after a restart).
pub(crate) async fn settlement_notices(requester: Arc<Requester>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = requester.wallet.settled.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
            () = stopped(&mut stop) => return,
        }
        send_settlement_notices(&requester).await;
    }
}

async fn send_settlement_notices(requester: &Arc<Requester>) {
    let receipts = &requester.receipts;
    let due = match receipts.unacknowledged(64).await {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %chain(&e), "cannot read which settlements were announced");
            return;
        }
    };
    for (intent, workers) in due {
        let notice = match receipts.notice(&intent) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %chain(&e), "cannot sign a settlement notice");
                continue;
            }
        };
        let sends = workers.into_iter().map(|worker| {
            let notice = notice.clone();
            let tx = intent.draft.tx_hash;
            async move {
                let answer = requester
                    .client
                    .request(&worker, Request::Settlement(notice))
                    .await;
                match answer {
                    Ok(Response::PaymentRecorded { receipts: n }) => {
                        info!(worker = %worker.short(), tx = %tx, receipts = n, "worker confirmed its payment");
                        if let Err(e) = receipts.acknowledged(intent.id, worker).await {
                            warn!(error = %chain(&e), "cannot record the acknowledgement");
                        }
                    }
                    Ok(Response::Error(e)) => {
                        warn!(worker = %worker.short(), tx = %tx, error = %e, "worker did not accept the settlement notice; will retry")
                    }
                    Ok(other) => {
                        warn!(worker = %worker.short(), kind = other.kind(), "unexpected answer to a settlement notice")
                    }
                    Err(e) => {
                        debug!(worker = %worker.short(), tx = %tx, error = %e, "worker not told of its payment yet; will retry")
                    }
                }
            }
        });
        futures::future::join_all(sends).await;
    }
}
