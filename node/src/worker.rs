//! The worker side: quote or decline calls for bids, accept awards, fetch missing models,
//! run tasks on the inference engine (never on the network task), sign receipts and deliver
//! results, and abort when the power gate closes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::{CancelToken, InferenceError, Job};
use crank_payments::Role;
use crank_protocol::tensor::tensors_hash;
use crank_protocol::validate;
use crank_protocol::{
    Award, CallForBids, Cancel, Decline, DeclineReason, ErrorCode, FailureReason, FetchModel,
    GateReason, ModelChunk, ModelId, NodeId, Request, Response, Signed, TaskFailure, TaskResult,
    Timings, WorkReceipt,
};
use crank_scheduler::{MeasuredRun, QueueState, WorkerLimits, WorkerState, quote};
use tokio::sync::oneshot;
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

fn worker_state(shared: &Shared) -> WorkerState {
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
    }
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
    match quote(cfb, &worker_state(shared), &shared.config.worker.cost, now) {
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
    if let Err(reason) = lock(&shared.bids).take_for_award(&award, now) {
        responder.send(sign_decline(shared, award.task_id, reason));
        return;
    }
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
        execute(&shared, award, cancel, stop_rx).await;
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

    let output_hash = tensors_hash(&run.outputs);
    let identity = shared.identity.clone();
    let payout = shared.payout.clone();
    let me = shared.node_id;
    let ledger = shared.ledger.clone();
    let award_for_receipt = award.clone();
    let path = run.path;
    let issued = tokio::task::spawn_blocking(move || {
        let a = award_for_receipt;
        ledger.issue_receipt(
            &a.requester,
            &me,
            a.price_stroops,
            |pair_seq, cumulative_stroops| {
                let body = WorkReceipt {
                    task_id: a.task_id,
                    requester: a.requester,
                    worker: me,
                    model: a.model,
                    input_hash: a.input_hash,
                    output_hash,
                    price_stroops: a.price_stroops,
                    energy,
                    path,
                    timings: Timings {
                        accepted_at,
                        started_at,
                        finished_at,
                        run_micros: run.run_micros,
                    },
                    pair_seq,
                    cumulative_stroops,
                    payout,
                };
                Signed::sign(body, &identity)
            },
        )
    })
    .await;
    let receipt = match issued {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            warn!(task = %task.short(), error = %e, "cannot issue the receipt");
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
        Err(e) => {
            warn!(task = %task.short(), error = %e, "receipt task failed");
            return;
        }
    };
    deliver(
        shared,
        &award,
        TaskResult {
            receipt,
            outputs: run.outputs,
        },
    )
    .await;
}

/// Sends the result until the requester counter-signs it, or the deadline (plus grace) passes.
async fn deliver(shared: &Arc<Shared>, award: &Award, result: TaskResult) {
    let task = award.task_id;
    let give_up = award.deadline + 10_000;
    let mut backoff = Duration::from_millis(200);
    loop {
        match shared
            .client
            .request(&award.requester, Request::Result(result.clone()))
            .await
        {
            Ok(Response::Receipt(cs)) => {
                let ok = cs.verify().is_ok()
                    && cs.inner == result.receipt
                    && cs.countersigner == award.requester;
                if !ok {
                    warn!(task = %task.short(), "requester sent a receipt that does not match ours");
                    shared
                        .client
                        .penalize(&award.requester, "bad counter-signed receipt")
                        .await;
                    return;
                }
                let ledger = shared.ledger.clone();
                let stored =
                    tokio::task::spawn_blocking(move || ledger.store_receipt(&cs, Role::Worker))
                        .await;
                match stored {
                    Ok(Ok(_)) => {
                        shared.metrics.receipt("worker");
                        shared.metrics.task("worker", "completed");
                        info!(task = %task.short(), price = award.price_stroops, "task done; receipt counter-signed");
                    }
                    Ok(Err(e)) => {
                        warn!(task = %task.short(), error = %e, "cannot store the counter-signed receipt")
                    }
                    Err(e) => warn!(task = %task.short(), error = %e, "receipt store task failed"),
                }
                return;
            }
            Ok(Response::Error(e)) => {
                // The requester gave the task to someone else or gave up; our receipt stays
                // uncounter-signed and is never paid.
                info!(task = %task.short(), error = %e, "requester refused the result");
                shared.metrics.task("worker", "refused");
                let ledger = shared.ledger.clone();
                let (t, w) = (task, shared.node_id);
                let _ = tokio::task::spawn_blocking(move || ledger.abandon_pending(&t, &w)).await;
                return;
            }
            Ok(other) => {
                warn!(task = %task.short(), kind = other.kind(), "unexpected answer to a result");
                return;
            }
            Err(e) => {
                if clock::now_ms() > give_up {
                    warn!(task = %task.short(), error = %e, "could not deliver the result before the deadline");
                    shared.metrics.task("worker", "undelivered");
                    return;
                }
                debug!(task = %task.short(), error = %e, "result not delivered yet; retrying");
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
    let mut sources = vec![*requester];
    if let Ok(providers) = shared.client.providers(model.provider_key()).await {
        sources.extend(
            providers
                .into_iter()
                .filter(|p| p != requester && *p != shared.node_id)
                .take(3),
        );
    }
    let mut last_error = String::from("no source");
    for source in sources {
        match fetch_model(shared, &source, model, size).await {
            Ok(bytes) => match shared.store.put_verified(model, &bytes) {
                Ok(()) => {
                    info!(model = %model.short(), bytes = size, from = %source.short(), "model fetched and verified");
                    if let Err(e) = shared.client.provide(model.provider_key()).await {
                        debug!(error = %e, "cannot announce the model");
                    }
                    shared.advert_changed.notify_one();
                    return Ok(());
                }
                Err(e) => {
                    warn!(model = %model.short(), from = %source.short(), error = %e, "fetched model rejected");
                    shared
                        .client
                        .penalize(&source, format!("served a bad model: {e}"))
                        .await;
                    last_error = e.to_string();
                }
            },
            Err(e) => {
                debug!(model = %model.short(), from = %source.short(), error = %e, "model fetch failed");
                last_error = e;
            }
        }
    }
    Err(FailureReason::ModelUnavailable {
        message: last_error,
    })
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
