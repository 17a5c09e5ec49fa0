//! The worker side: quote or decline calls for bids, accept awards, fetch missing models,
//! run tasks on the inference engine (never on the network task), sign receipts and deliver
//! results, and abort when the power gate closes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::{CancelToken, InferenceError, Job};
use crank_payments::{RecordedPayment, RunFacts, Standing, TxHash};
use crank_protocol::tensor::tensors_hash;
use crank_protocol::validate;
use crank_protocol::{
    Award, CallForBids, Cancel, Decline, DeclineReason, Dispute, ErrorCode, ExecPath,
    FailureReason, FetchModel, GateReason, ModelChunk, ModelId, NamedTensor, NodeId, Request,
    Response, SettlementNotice, Signed, TaskFailure, TaskOutputs, TaskResult, Timings,
    WorkReceipt,
};
use crank_scheduler::{
    MeasuredRun, QueueState, RequesterStanding, WorkerLimits, WorkerState, quote,
};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::clock;
use crate::network::Responder;
use crate::node::{Shared, lock};

/// Largest model chunk served or asked for.
pub const CHUNK: u32 = 1024 * 1024;

/// Why a running task must stop.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The power gate closed: report the abort so the requester re-awards.
    Abort(GateReason),
    /// The requester withdrew the award: stop quietly.
    Cancelled,
}

/// A task accepted and not yet finished.
#[derive(Debug)]
pub(crate) struct Running {
    pub requester: NodeId,
    pub cancel: CancelToken,
    pub stop: Option<oneshot::Sender<Stop>>,
}

fn sign_decline(
    shared: &Shared,
    task_id: crank_protocol::TaskId,
    reason: DeclineReason,
) -> Response {
    let decline = Decline {
        task_id,
        worker: shared.node_id,
        reason,
    };
    match Signed::sign(decline, &shared.identity) {
        Ok(d) => Response::Decline(d),
        Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
    }
}

fn worker_state(shared: &Shared, requester: Standing) -> WorkerState {
    let queue = shared.engine.queue();
    let snapshot = shared.gate_snapshot();
    let measured = lock(&shared.measured).clone();
    // Expected wait: the work ahead of us spread over the workers.
    let per_task_ms = shared
        .bench
        .first()
        .map(|b| (1000.0 / f64::from(b.inferences_per_sec.max(0.001))) as u64)
        .unwrap_or(10);
    let ahead = (queue.queued + queue.running) as u64;
    let est_wait_ms = ahead * per_task_ms / (queue.workers.max(1) as u64);
    let engine = shared.engine.config();
    WorkerState {
        node: shared.node_id,
        gate_closed: shared.gate_closed(),
        on_battery: snapshot.readings.power.source
            == crank_inference::device::power::PowerSource::Battery,
        queue: QueueState {
            queued: u16::try_from(queue.queued + queue.running).unwrap_or(u16::MAX),
            slots: u16::try_from(queue.slots).unwrap_or(u16::MAX),
            est_wait_ms,
        },
        cached_models: shared.store.list().into_iter().collect::<BTreeSet<_>>(),
        bench: shared.bench.clone(),
        measured,
        limits: WorkerLimits {
            max_model_bytes: engine.max_model_bytes,
            max_input_elements: engine.max_input_elements,
            max_run_ms: u64::try_from(engine.max_run_time.as_millis()).unwrap_or(u64::MAX),
        },
        payout: shared.payout.clone(),
        credit: shared.config.worker.credit,
        requester: RequesterStanding {
            unpaid_stroops: requester.unpaid_stroops,
            oldest_unpaid_at: requester.oldest_unpaid_at,
        },
    }
}

/// How long a receipt may wait for its counter-signature before a requester that says it has
/// none is believed (its deliveries and re-awards are long over by then).
const PENDING_PATIENCE_MS: u64 = 60 * 60 * 1000;

/// Completes receipts this node issued but never stored counter-signed (it crashed after
/// sending a result and before storing the answer): asks each requester for its copy, at
/// start and then every minute, and gives up on receipts a requester does not know after an
/// hour. A receipt the requester holds, and will pay, is never missing on our side.
pub(crate) async fn recover_receipts(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if !shared.offers_work() {
        return;
    }
    let mut wait = Duration::from_secs(5);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = crate::node::stopped(&mut stop) => return,
        }
        wait = Duration::from_secs(60);
        let (pending, legacy) = match shared.worker_receipts.pending(256).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %crate::node::chain(&e), "cannot read pending receipts");
                continue;
            }
        };
        let now = clock::now_ms();
        for p in pending {
            let body = &p.receipt.body;
            // A task still being delivered is the delivery loop's business.
            if lock(&shared.running).contains_key(&body.task_id) {
                continue;
            }
            let answer = shared
                .client
                .request(
                    &body.requester,
                    Request::GetReceipt {
                        task_id: body.task_id,
                    },
                )
                .await;
            match answer {
                Ok(Response::Receipt(cs)) => {
                    match shared.worker_receipts.accept(&p.receipt, *cs).await {
                        Ok(_) => {
                            shared.metrics.receipt("worker");
                            info!(task = %body.task_id.short(), "counter-signed receipt recovered from the requester");
                        }
                        Err(e) => {
                            warn!(task = %body.task_id.short(), error = %crate::node::chain(&e), "requester sent a receipt we cannot store")
                        }
                    }
                }
                Ok(Response::Error(e)) if now.saturating_sub(p.issued_at) > PENDING_PATIENCE_MS => {
                    info!(task = %body.task_id.short(), error = %e, "requester never counter-signed this receipt; giving up on it");
                    let _ = shared.worker_receipts.abandon(body.task_id).await;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(task = %body.task_id.short(), error = %e, "requester not reachable; asking for the receipt later")
                }
            }
        }
        // Receipts of wire version 1 issued before the upgrade: the requester may hold them
        // counter-signed, and will pay them.
        for p in legacy {
            let body = &p.receipt.body;
            let answer = shared
                .client
                .request(
                    &body.requester,
                    Request::GetReceipt {
                        task_id: body.task_id,
                    },
                )
                .await;
            match answer {
                Ok(Response::LegacyReceipt(cs)) => {
                    match shared.worker_receipts.accept_legacy(&p, *cs).await {
                        Ok(_) => {
                            info!(task = %body.task_id.short(), "receipt from before the upgrade recovered from the requester")
                        }
                        Err(e) => {
                            warn!(task = %body.task_id.short(), error = %crate::node::chain(&e), "requester sent a receipt we cannot store")
                        }
                    }
                }
                Ok(Response::Error(e)) if now.saturating_sub(p.issued_at) > PENDING_PATIENCE_MS => {
                    info!(task = %body.task_id.short(), error = %e, "requester never counter-signed this receipt; giving up on it");
                    let _ = shared.worker_receipts.abandon(body.task_id).await;
                }
                _ => {}
            }
        }
    }
}

/// Checks a payer's signed settlement notice against the ledger and credits the receipts
/// it paid by what actually arrived.
pub(crate) async fn on_settlement(
    shared: &Arc<Shared>,
    peer: &NodeId,
    notice: &Signed<SettlementNotice>,
) -> Response {
    if &notice.body.payer_node != peer {
        return Response::error(
            ErrorCode::NotAuthorized,
            "settlement notice relayed by someone other than its payer",
        );
    }
    match shared.worker_receipts.record_notice(notice).await {
        Ok(recorded) => {
            let p = recorded.record();
            if let RecordedPayment::New(_) = &recorded {
                shared.metrics.payment_in(p.received_stroops, p.unallocated_stroops);
            }
            info!(peer = %peer.short(), tx = %p.tx_hash, received = p.received_stroops, receipts = p.credits.len(), ignored = p.ignored.len(), "payment checked against the ledger and credited");
            Response::PaymentRecorded {
                receipts: u32::try_from(p.credits.len()).unwrap_or(u32::MAX),
            }
        }
        Err(e) => {
            warn!(peer = %peer.short(), error = %crate::node::chain(&e), "settlement notice does not check out");
            if matches!(e, crank_payments::ExchangeError::Invalid(_)) {
                shared.client.penalize(peer, e.to_string()).await;
            }
            Response::error(ErrorCode::Invalid, crate::node::chain(&e))
        }
    }
}

/// A requester disputes one of our receipts (its outputs did not match, or never came).
pub(crate) async fn on_dispute(
    shared: &Arc<Shared>,
    peer: &NodeId,
    dispute: Signed<Dispute>,
) -> Response {
    let task_id = dispute.body.receipt.body.task_id;
    if &dispute.body.requester != peer {
        return Response::error(ErrorCode::NotAuthorized, "dispute relayed by someone else");
    }
    let reason = dispute.body.reason.to_string();
    match shared.worker_receipts.record_dispute(dispute).await {
        Ok(_) => {
            warn!(task = %task_id.short(), requester = %peer.short(), reason = %reason, "requester disputes our receipt");
            Response::Ack { task_id }
        }
        Err(e) => Response::error(ErrorCode::Invalid, crate::node::chain(&e)),
    }
}

/// Looks for payments to our payout account on Horizon, so a settlement notice that never
/// arrived strands no receipt: for each transaction that paid us and is not credited yet,
/// asks the requesters that owe us for its signed notice (only a notice signed by a
/// receipt's requester can credit it). A payment nobody announces is reported.
pub(crate) async fn watch_payments(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = shared.config.worker.watch_payments_secs;
    if every == 0 || !shared.offers_work() {
        return;
    }
    let horizon = match crank_payments::Horizon::new(&shared.config.stellar) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %crate::node::chain(&e), "cannot watch for payments");
            return;
        }
    };
    let mut cursor: Option<String> = shared
        .ledger
        .get_meta(PAYMENT_CURSOR_KEY)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok());
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
            () = crate::node::stopped(&mut stop) => return,
        }
        let page = match horizon
            .account_transactions(&shared.payout, cursor.as_deref(), 50)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %crate::node::chain(&e), "cannot list payments on Horizon; will retry");
                continue;
            }
        };
        for tx in &page.records {
            if tx.source_account == shared.payout {
                continue;
            }
            match check_found_payment(&shared, tx.record.hash).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(tx = %tx.record.hash, from = %tx.source_account, "payment received that no requester announced; nothing credited");
                    shared.metrics.payment_in(0, 1);
                }
                // Not resolved now (a requester offline): look again from here next time.
                Err(()) => break,
            }
            cursor = Some(tx.paging_token.clone());
        }
        if let Some(c) = &cursor
            && let Err(e) = shared.ledger.put_meta(PAYMENT_CURSOR_KEY, c.as_bytes())
        {
            warn!(error = %crate::node::chain(&e), "cannot persist the payment cursor");
        }
    }
}

/// Meta key of the Horizon paging token up to which our payments were checked.
const PAYMENT_CURSOR_KEY: &str = "payment-cursor";

/// Resolves one payment found on Horizon: Ok(true) when it is (now) credited, Ok(false)
/// when every requester that owes us was asked and none announced it, Err when some could
/// not be reached.
async fn check_found_payment(shared: &Arc<Shared>, hash: TxHash) -> Result<bool, ()> {
    let ledger = shared.ledger.clone();
    if let Ok(Ok(Some(_))) = tokio::task::spawn_blocking(move || ledger.payment_in(&hash)).await {
        return Ok(true);
    }
    let owing: Vec<NodeId> = shared
        .ledger
        .balances()
        .map(|b| {
            b.counterparties
                .into_iter()
                .filter(|(_, c)| c.owed_to_us_stroops > 0)
                .map(|(n, _)| n)
                .take(16)
                .collect()
        })
        .unwrap_or_default();
    let mut unreachable = false;
    for requester in owing {
        match shared
            .client
            .request(&requester, Request::GetSettlement { tx_hash: hash.0 })
            .await
        {
            Ok(Response::Settlement(notice)) => {
                let answer = on_settlement(shared, &requester, &notice).await;
                if matches!(answer, Response::PaymentRecorded { .. }) {
                    return Ok(true);
                }
            }
            Ok(_) => {}
            Err(_) => unreachable = true,
        }
    }
    if unreachable { Err(()) } else { Ok(false) }
}

/// Answers a call for bids with a signed bid or a signed, explained decline.
pub(crate) async fn on_call_for_bids(
    shared: &Arc<Shared>,
    peer: &NodeId,
    signed: &Signed<CallForBids>,
) -> Response {
    let now = clock::now_ms();
    let cfb = match validate::call_for_bids(signed, now, &shared.limits) {
        Ok(c) => c,
        Err(e) => {
            warn!(peer = %peer.short(), error = %e, "invalid call for bids");
            shared.client.penalize(peer, e.to_string()).await;
            return Response::error(ErrorCode::Invalid, e.to_string());
        }
    };
    if &cfb.requester != peer {
        return Response::error(
            ErrorCode::NotAuthorized,
            "call for bids relayed by someone other than its requester",
        );
    }
    let standing = match shared.worker_receipts.standing(cfb.requester).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %crate::node::chain(&e), "cannot read the requester's standing");
            return Response::error(ErrorCode::Internal, "cannot read the ledger");
        }
    };
    match quote(cfb, &worker_state(shared, standing), &shared.config.worker.cost, now) {
        Ok(bid) => {
            let task = bid.task_id;
            {
                let mut book = lock(&shared.bids);
                // A call repeated by the requester gets a fresh bid in place of the old one.
                book.remove(&task);
                if book.insert(bid.clone(), now).is_err() {
                    let q = shared.engine.queue();
                    let reason = DeclineReason::QueueFull {
                        queued: u16::try_from(q.queued).unwrap_or(u16::MAX),
                        slots: u16::try_from(q.slots).unwrap_or(u16::MAX),
                    };
                    return sign_decline(shared, task, reason);
                }
            }
            debug!(task = %task.short(), price = bid.price_stroops, path = %bid.path, "bid");
            match Signed::sign(bid, &shared.identity) {
                Ok(b) => Response::Bid(b),
                Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
            }
        }
        Err(reason) => {
            debug!(task = %cfb.task_id.short(), reason = %reason, "decline");
            sign_decline(shared, cfb.task_id, reason)
        }
    }
}

/// Accepts an award (answering at once) and runs the task in the background.
pub(crate) async fn on_award(
    shared: &Arc<Shared>,
    peer: NodeId,
    signed: Signed<Award>,
    responder: Responder,
) {
    let now = clock::now_ms();
    let award = match validate::award(&signed, &shared.node_id, now, &shared.limits) {
        Ok(a) => a.clone(),
        Err(e) => {
            warn!(peer = %peer.short(), error = %e, "invalid award");
            shared.client.penalize(&peer, e.to_string()).await;
            responder.send(Response::error(ErrorCode::Invalid, e.to_string()));
            return;
        }
    };
    if award.requester != peer {
        responder.send(Response::error(
            ErrorCode::NotAuthorized,
            "award relayed by someone other than its requester",
        ));
        return;
    }
    if lock(&shared.running)
        .get(&award.task_id)
        .is_some_and(|r| r.requester == peer)
    {
        // The requester re-sent an award it did not hear us accept.
        responder.send(Response::Accepted {
            task_id: award.task_id,
        });
        return;
    }
    let bid = match lock(&shared.bids).take_for_award(&award, now) {
        Ok(bid) => bid,
        Err(reason) => {
            responder.send(sign_decline(shared, award.task_id, reason));
            return;
        }
    };
    if let Some(reason) = shared.gate_closed() {
        responder.send(sign_decline(
            shared,
            award.task_id,
            DeclineReason::Gate { reason },
        ));
        return;
    }
    let queue = shared.engine.queue();
    if queue.is_full() {
        let reason = DeclineReason::QueueFull {
            queued: u16::try_from(queue.queued).unwrap_or(u16::MAX),
            slots: u16::try_from(queue.slots).unwrap_or(u16::MAX),
        };
        responder.send(sign_decline(shared, award.task_id, reason));
        return;
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let cancel = CancelToken::new();
    {
        let mut running = lock(&shared.running);
        running.insert(
            award.task_id,
            Running {
                requester: peer,
                cancel: cancel.clone(),
                stop: Some(stop_tx),
            },
        );
        shared.metrics.queued(running.len());
    }
    responder.send(Response::Accepted {
        task_id: award.task_id,
    });
    info!(task = %award.task_id.short(), requester = %peer.short(), price = award.price_stroops, "award accepted");
    let shared = shared.clone();
    tokio::spawn(async move {
        let task_id = award.task_id;
        execute(&shared, award, bid.path, cancel, stop_rx).await;
        let n = {
            let mut running = lock(&shared.running);
            running.remove(&task_id);
            running.len()
        };
        shared.metrics.queued(n);
        shared.advert_changed.notify_one();
    });
}

fn failure_of(e: &InferenceError) -> FailureReason {
    match e {
        InferenceError::ModelNotFound(_) | InferenceError::Store(_) => {
            FailureReason::ModelUnavailable {
                message: e.to_string(),
            }
        }
        InferenceError::ModelTooLarge { .. }
        | InferenceError::ModelInvalid(_)
        | InferenceError::UnsupportedOperator { .. } => FailureReason::ModelInvalid {
            message: e.to_string(),
        },
        InferenceError::InputInvalid(_) | InferenceError::TooManyElements { .. } => {
            FailureReason::InputInvalid {
                message: e.to_string(),
            }
        }
        InferenceError::TimedOut { limit, .. } => FailureReason::TimedOut {
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        },
        InferenceError::ShuttingDown => FailureReason::ShuttingDown,
        _ => FailureReason::Inference {
            message: e.to_string(),
        },
    }
}

async fn execute(
    shared: &Arc<Shared>,
    award: Award,
    path: ExecPath,
    cancel: CancelToken,
    mut stop: oneshot::Receiver<Stop>,
) {
    let accepted_at = clock::now_ms();
    let task = award.task_id;
    let requester = award.requester;

    let fetched = tokio::select! {
        r = ensure_model(shared, &requester, &award.model, award.model_bytes) => r,
        s = &mut stop => {
            on_stop(shared, &award, s.ok()).await;
            return;
        }
    };
    if let Err(reason) = fetched {
        report_failure(shared, &award, reason).await;
        return;
    }

    let timeout = Duration::from_millis(award.deadline.saturating_sub(clock::now_ms()));
    let input_elements: u64 = award
        .inputs
        .iter()
        .map(|t| t.tensor.data.len() as u64)
        .sum();
    let job = Job {
        model: award.model,
        inputs: award.inputs.clone(),
        deadline: Instant::now() + timeout,
        cancel: cancel.clone(),
        // The path this node bid with: its price and latency were quoted for it.
        path: Some(path),
    };
    let span = shared.meter.start();
    let started_at = clock::now_ms();
    let handle = match shared.engine.submit(job) {
        Ok(h) => h,
        Err(e) => {
            report_failure(shared, &award, failure_of(&e)).await;
            return;
        }
    };
    let run = tokio::select! {
        r = handle => r,
        s = &mut stop => {
            cancel.cancel();
            on_stop(shared, &award, s.ok()).await;
            return;
        }
    };
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            warn!(task = %task.short(), error = %e, "task failed");
            report_failure(shared, &award, failure_of(&e)).await;
            return;
        }
    };
    let finished_at = clock::now_ms();
    let energy = span.finish(run.cpu_micros);
    shared
        .metrics
        .inference_seconds(run.run_micros as f64 / 1e6);
    lock(&shared.measured).insert(
        (award.model, run.path),
        MeasuredRun {
            input_elements,
            run_micros: run.run_micros,
            microjoules: energy.microjoules,
        },
    );

    let facts = RunFacts {
        output_hash: tensors_hash(&run.outputs),
        energy,
        path: run.path,
        timings: Timings {
            accepted_at,
            started_at,
            finished_at,
            run_micros: run.run_micros,
        },
    };
    let receipt = match shared.worker_receipts.issue(&award, facts).await {
        Ok(r) => r,
        Err(e) => {
            warn!(task = %task.short(), error = %crate::node::chain(&e), "cannot issue the receipt");
            report_failure(
                shared,
                &award,
                FailureReason::Inference {
                    message: format!("receipt: {e}"),
                },
            )
            .await;
            return;
        }
    };
    deliver(shared, &award, receipt, run.outputs).await;
}

/// Fair exchange: sends the signed receipt (committing to the outputs' hash) until the
/// requester counter-signs it, stores the counter-signed receipt, and only then releases the
/// signed outputs. A requester that never counter-signs gets no outputs.
async fn deliver(
    shared: &Arc<Shared>,
    award: &Award,
    receipt: Signed<WorkReceipt>,
    outputs: Vec<NamedTensor>,
) {
    let task = award.task_id;
    let give_up = award.deadline + 10_000;
    let result = TaskResult {
        receipt: receipt.clone(),
    };
    let countersigned = match retry(shared, award, give_up, Request::Result(result)).await {
        Some(Response::Receipt(cs)) => *cs,
        Some(Response::Error(e)) => {
            // The requester gave the task to someone else or gave up; our receipt stays
            // uncounter-signed and is never paid, and the outputs stay here.
            info!(task = %task.short(), error = %e, "requester refused the result");
            shared.metrics.task("worker", "refused");
            let _ = shared.worker_receipts.abandon(task).await;
            return;
        }
        Some(other) => {
            warn!(task = %task.short(), kind = other.kind(), "unexpected answer to a result");
            return;
        }
        None => return,
    };
    if let Err(e) = shared.worker_receipts.accept(&receipt, countersigned).await {
        warn!(task = %task.short(), error = %crate::node::chain(&e), "requester's counter-signed receipt refused; outputs withheld");
        shared
            .client
            .penalize(&award.requester, "bad counter-signed receipt")
            .await;
        return;
    }
    shared.metrics.receipt("worker");
    let signed = match Signed::sign(
        TaskOutputs {
            task_id: task,
            worker: shared.node_id,
            requester: award.requester,
            outputs,
        },
        &shared.identity,
    ) {
        Ok(s) => s,
        Err(e) => {
            warn!(task = %task.short(), error = %e, "cannot sign the outputs");
            return;
        }
    };
    match retry(shared, award, give_up, Request::Outputs(Box::new(signed))).await {
        Some(Response::Ack { .. }) => {
            shared.metrics.task("worker", "completed");
            info!(task = %task.short(), price = award.price_stroops, "task done; receipt counter-signed, outputs delivered");
        }
        Some(Response::Disputed(d)) => {
            warn!(task = %task.short(), reason = %d.body.reason, "requester disputes our outputs");
            let _ = shared.worker_receipts.record_dispute(*d).await;
        }
        Some(other) => {
            warn!(task = %task.short(), kind = other.kind(), "unexpected answer to the outputs")
        }
        None => {}
    }
}

/// Sends a request to the award's requester until it answers or `give_up` passes.
async fn retry(
    shared: &Arc<Shared>,
    award: &Award,
    give_up: u64,
    request: Request,
) -> Option<Response> {
    let task = award.task_id;
    let mut backoff = Duration::from_millis(200);
    loop {
        match shared
            .client
            .request(&award.requester, request.clone())
            .await
        {
            Ok(answer) => return Some(answer),
            Err(e) => {
                if clock::now_ms() > give_up {
                    warn!(task = %task.short(), error = %e, kind = request.kind(), "could not deliver before the deadline");
                    shared.metrics.task("worker", "undelivered");
                    return None;
                }
                debug!(task = %task.short(), error = %e, "not delivered yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn on_stop(shared: &Arc<Shared>, award: &Award, stop: Option<Stop>) {
    match stop {
        Some(Stop::Abort(reason)) => {
            info!(task = %award.task_id.short(), reason = %reason, "task aborted: power gate closed");
            report_failure(shared, award, FailureReason::Aborted { reason }).await;
        }
        Some(Stop::Cancelled) | None => {
            info!(task = %award.task_id.short(), "task cancelled by the requester");
            shared.metrics.task("worker", "cancelled");
        }
    }
}

async fn report_failure(shared: &Arc<Shared>, award: &Award, reason: FailureReason) {
    shared
        .worker_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.metrics.task("worker", "failed");
    let failure = TaskFailure {
        task_id: award.task_id,
        requester: award.requester,
        worker: shared.node_id,
        reason,
    };
    let Ok(signed) = Signed::sign(failure, &shared.identity) else {
        return;
    };
    for attempt in 0..3 {
        match shared
            .client
            .request(&award.requester, Request::Failure(signed.clone()))
            .await
        {
            Ok(_) => return,
            Err(e) => {
                debug!(task = %award.task_id.short(), attempt, error = %e, "failure report not delivered");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Makes sure the model is in the store: fetched from the requester, else from a provider,
/// and verified against its content id.
async fn ensure_model(
    shared: &Arc<Shared>,
    requester: &NodeId,
    model: &ModelId,
    size: u64,
) -> Result<(), FailureReason> {
    if shared.store.has(model) {
        return Ok(());
    }
    let limit = shared.engine.config().max_model_bytes;
    if size > limit {
        return Err(FailureReason::ModelInvalid {
            message: format!("model is {size} bytes; the limit is {limit}"),
        });
    }
    // The requester holds the model and is connected: ask it first. Only when it cannot serve
    // it is the DHT asked for other holders, and not for long: the task's deadline runs.
    let mut last_error = match fetch_from(shared, requester, model, size).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let lookup = shared.client.providers(model.provider_key());
    let providers = match tokio::time::timeout(Duration::from_secs(2), lookup).await {
        Ok(Ok(p)) => p,
        _ => Vec::new(),
    };
    for source in providers
        .into_iter()
        .filter(|p| p != requester && *p != shared.node_id)
        .take(3)
    {
        match fetch_from(shared, &source, model, size).await {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e,
        }
    }
    Err(FailureReason::ModelUnavailable {
        message: last_error,
    })
}

/// Fetches a model from one holder, verifies it against its content id and stores it.
async fn fetch_from(
    shared: &Arc<Shared>,
    source: &NodeId,
    model: &ModelId,
    size: u64,
) -> Result<(), String> {
    match fetch_model(shared, source, model, size).await {
        Ok(bytes) => match shared.store.put_verified(model, &bytes) {
            Ok(()) => {
                info!(model = %model.short(), bytes = size, from = %source.short(), "model fetched and verified");
                if let Err(e) = shared.client.provide(model.provider_key()).await {
                    debug!(error = %e, "cannot announce the model");
                }
                shared.advert_changed.notify_one();
                Ok(())
            }
            Err(e) => {
                warn!(model = %model.short(), from = %source.short(), error = %e, "fetched model rejected");
                shared
                    .client
                    .penalize(source, format!("served a bad model: {e}"))
                    .await;
                Err(e.to_string())
            }
        },
        Err(e) => {
            debug!(model = %model.short(), from = %source.short(), error = %e, "model fetch failed");
            Err(e)
        }
    }
}

async fn fetch_model(
    shared: &Arc<Shared>,
    source: &NodeId,
    model: &ModelId,
    size: u64,
) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
    let mut next_log = size / 4;
    while (bytes.len() as u64) < size {
        let offset = bytes.len() as u64;
        let req = Request::FetchModel(FetchModel {
            model: *model,
            offset,
            max_len: CHUNK,
        });
        match shared
            .client
            .request(source, req)
            .await
            .map_err(|e| e.to_string())?
        {
            Response::ModelChunk(ModelChunk {
                model: m,
                total_len,
                offset: o,
                bytes: chunk,
            }) => {
                if m != *model || o != offset || total_len != size || chunk.is_empty() {
                    return Err("peer sent a chunk that does not match the request".into());
                }
                if chunk.len() as u64 > u64::from(CHUNK) || offset + chunk.len() as u64 > size {
                    return Err("peer sent more bytes than the model has".into());
                }
                bytes.extend_from_slice(&chunk);
                if size > 4 * u64::from(CHUNK) && bytes.len() as u64 >= next_log {
                    info!(model = %model.short(), done = bytes.len(), of = size, "fetching model");
                    next_log += size / 4;
                }
            }
            Response::Error(e) => return Err(e.to_string()),
            other => return Err(format!("unexpected answer {}", other.kind())),
        }
    }
    Ok(bytes)
}

/// Serves part of a model this node holds.
pub(crate) fn on_fetch_model(shared: &Shared, fetch: &FetchModel) -> Response {
    match shared
        .store
        .read_chunk(&fetch.model, fetch.offset, fetch.max_len.min(CHUNK))
    {
        Ok((total_len, bytes)) => Response::ModelChunk(ModelChunk {
            model: fetch.model,
            total_len,
            offset: fetch.offset,
            bytes,
        }),
        Err(e) => Response::error(ErrorCode::NotFound, e.to_string()),
    }
}

/// Withdraws an award at the requester's request.
pub(crate) fn on_cancel(shared: &Shared, peer: &NodeId, signed: &Signed<Cancel>) -> Response {
    let Ok(cancel) = signed.verify_by(peer) else {
        return Response::error(ErrorCode::BadSignature, "cancel not signed by the sender");
    };
    if cancel.worker != shared.node_id {
        return Response::error(ErrorCode::Invalid, "cancel addressed to another worker");
    }
    let mut running = lock(&shared.running);
    if running
        .get(&cancel.task_id)
        .is_some_and(|r| r.requester == *peer)
        && let Some(mut r) = running.remove(&cancel.task_id)
    {
        r.cancel.cancel();
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(Stop::Cancelled);
        }
    }
    Response::Ack {
        task_id: cancel.task_id,
    }
}

/// Aborts every running task (the power gate closed).
pub(crate) fn abort_all(shared: &Shared, reason: GateReason) {
    let mut running = lock(&shared.running);
    for (_, r) in running.iter_mut() {
        r.cancel.cancel();
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(Stop::Abort(reason.clone()));
        }
    }
}
