//! The requester side: turn a submission into a reverse auction (the pure
//! [`crank_scheduler::Auction`] driven here with real requests and timers), check and
//! counter-sign the worker's receipt, store it, and hand the outputs back.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crank_inference::InferenceError;
use crank_inference::declared::{Declared, NonFinite};
use crank_payments::{Expected, OutputsVerdict, ReceiptProof, RequesterReceipts, TxHash};
use crank_protocol::tensor::tensors_hash;
use crank_protocol::{
    DisputeReason, ErrorCode, ModelId, NamedTensor, NodeId, Receipt, Request, Response, Signed,
    TaskFailure, TaskId, TaskOutputs, TaskResult,
};
use crank_scheduler::{
    Auction, AuctionTrace, CandidateQuery, FailureExplanation, Input, Output, Preference, Status,
    TaskSpec, select_candidates,
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
    /// What the auction did.
    pub trace: AuctionTrace,
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

/// Runs a task on the mesh: auction, award, result, counter-signed receipt.
pub(crate) async fn submit(
    requester: &Arc<Requester>,
    req: SubmitRequest,
) -> Result<TaskOutcome, SubmitError> {
    let started = Instant::now();
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
    let rule = OutputRule {
        declared: requester.declared(&model).map_err(SubmitError::Model)?,
        inputs: &req.inputs,
        // The wire refuses NaN and infinity in any tensor (`Tensor::validate`); the check
        // refuses them too, so a model whose answers may be non-finite needs both relaxed.
        non_finite: NonFinite::Refuse,
    };
    wait_for_adverts(requester).await?;

    let now = clock::now_ms();
    let input_hash = tensors_hash(&req.inputs);
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| SubmitError::Spec(e.to_string()))?;
    let task_id = TaskId::derive(&requester.node_id, &nonce, &model, &input_hash);
    let input_elements: u64 = req.inputs.iter().map(|t| t.tensor.data.len() as u64).sum();
    let spec = TaskSpec {
        task_id,
        requester: requester.node_id,
        model,
        model_bytes,
        input_hash,
        input_elements,
        nonce,
        payer: requester.payout.clone(),
        max_price_stroops: req.max_price_stroops.unwrap_or(cfg.max_price_stroops),
        deadline: now + req.deadline_ms.unwrap_or(cfg.deadline_ms),
        bid_window_ms: req.bid_window_ms.unwrap_or(cfg.bid_window_ms).max(1),
        weights: req.prefer.weights(),
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
    let candidates = {
        let adverts = lock(&requester.adverts);
        let trust = lock(&requester.trust);
        let query = CandidateQuery {
            requester: requester.node_id,
            model,
            model_bytes,
            providers: &providers,
            weights: spec.weights,
            k: cfg.auction.fanout,
            limit: cfg.auction.max_candidates,
            explore: 1,
            seed: u64::from_le_bytes(nonce[..8].try_into().unwrap_or([0; 8])),
        };
        select_candidates(adverts.fresh(now), &query, &trust, now)
    };
    let mut auction = {
        let trust = lock(&requester.trust);
        Auction::new(spec, cfg.auction.clone(), &candidates, &trust, now)
            .map_err(|e| SubmitError::Spec(e.to_string()))?
    };
    debug!(task = %task_id.short(), candidates = candidates.len(), "auction started");

    let (report_tx, mut reports) = mpsc::channel(16);
    lock(&requester.pending).insert(task_id, report_tx);
    let result = drive(requester, &mut auction, &rule, &mut reports).await;
    lock(&requester.pending).remove(&task_id);

    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    requester.metrics.task_seconds(elapsed_ms / 1000.0);
    match result {
        Ok((worker, price_stroops, outputs, receipt)) => {
            requester.metrics.task("requester", "completed");
            info!(task = %task_id.short(), worker = %worker.short(), price = price_stroops, ms = elapsed_ms, "task completed");
            Ok(TaskOutcome {
                task_id,
                model,
                worker,
                price_stroops,
                outputs,
                receipt,
                elapsed_ms,
                trace: auction.trace().clone(),
            })
        }
        Err(explanation) => {
            requester.metrics.task("requester", "failed");
            info!(task = %task_id.short(), reason = %explanation, "task failed");
            Err(SubmitError::Failed {
                explanation,
                trace: Box::new(auction.trace().clone()),
            })
        }
    }
}

type Done = (NodeId, u64, Vec<NamedTensor>, Receipt);

async fn drive(
    requester: &Arc<Requester>,
    auction: &mut Auction,
    rule: &OutputRule<'_>,
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
                    AnswerKind::ToCall(Ok(Response::Bid(bid))) => Input::Bid { from: peer, bid },
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
    match requester
        .receipts
        .check_outputs(outputs, holder, &requester.limits, |o| rule.check(o))
        .await
    {
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
