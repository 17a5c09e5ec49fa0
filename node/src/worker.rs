//! The worker side: quote or decline calls for bids, accept awards, fetch missing models,
//! run tasks on the inference engine (never on the network task), sign receipts and deliver
//! results, and abort when the power gate closes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crank_inference::device::{self, EnergyMeter};
use crank_inference::store::{FetchedModelError, ModelLease, Reservation};
use crank_inference::{CancelToken, InferenceError, Job};
use crank_payments::{RecordedPayment, RunFacts, Standing, TxHash, WorkerReceipts};
use crank_protocol::tensor::tensors_hash;
use crank_protocol::validate;
use crank_protocol::{
    Award, CallForBids, Cancel, CapabilityAdvert, Capacity, Decline, DeclineReason, Dispute,
    ErrorCode, ExecPath, FailureReason, FetchModel, GateInfo, GateReason, Hardware, ModelChunk,
    ModelId, NamedTensor, NodeId, PathBench, Pricing, Request, Response, SettlementNotice, Signed,
    TaskFailure, TaskId, TaskResult, Timings, TrustSummary, WorkReceipt,
};
use crank_scheduler::{
    BidBook, MeasuredRun, QueueState, RequesterStanding, WorkerLimits, WorkerState, quote,
};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::clock;
use crate::core::Core;
use crate::network::Responder;
use crate::plumbing::{chain, lock, stopped};

/// The worker side of a node: its bids, the tasks it runs, what it measured, its receipts
/// and its advert. Everything shared with the rest of the node is in [`Core`].
pub(crate) struct Worker {
    /// What the whole node shares.
    pub core: Arc<Core>,
    /// The worker's side of the receipt exchange (the money rules are in crank-payments).
    pub receipts: WorkerReceipts,
    /// Open bids, by task.
    pub bids: Mutex<BidBook>,
    /// Tasks accepted and not yet finished.
    pub running: Mutex<HashMap<TaskId, Running>>,
    /// The last run measured per model and path (for quotes).
    pub measured: Mutex<BTreeMap<(ModelId, ExecPath), MeasuredRun>>,
    /// Models every runtime here refused, oldest first, with the reason: advertised, and
    /// declined at once, so nobody awards this node a task it will fail. Bounded by the
    /// advert's model limit; kept in the ledger across restarts of the same engine
    /// ([`engine_tag`]), forgotten when it changes (a new version may run them).
    pub unservable: Mutex<std::collections::VecDeque<(ModelId, String)>>,
    /// Tasks failed, aborted or timed out (for the advert's trust summary).
    pub failures: AtomicU64,
    /// Energy meter.
    pub meter: EnergyMeter,
    /// Hardware summary.
    pub hardware: Hardware,
    /// Self-benchmark per path.
    pub bench: Vec<PathBench>,
    /// Last advert sequence number handed out (persisted).
    pub advert_seq: AtomicU64,
    /// The advert last signed.
    pub current_advert: Mutex<Option<Signed<CapabilityAdvert>>>,
}

impl std::ops::Deref for Worker {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Meta key under which the advert sequence number is persisted.
pub(crate) const ADVERT_SEQ_KEY: &str = "advert-seq";

/// Lifetime of the advert a stopping node sends last.
const FAREWELL_TTL_MS: u64 = 10_000;

impl Worker {
    /// What this node did as a worker: counter-signed receipts and failures.
    fn own_record(&self) -> TrustSummary {
        let completed = self
            .ledger
            .balances()
            .map(|b| b.total.receipts_as_worker)
            .unwrap_or(0);
        TrustSummary {
            completed,
            failed: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Builds and signs the current advert, with a fresh sequence number.
    pub fn build_advert(&self) -> Result<Signed<CapabilityAdvert>, crank_protocol::SignatureError> {
        self.sign_advert(false)
    }

    /// The last advert of a node that is stopping: gate closed, expiring in ten seconds,
    /// so requesters stop asking it at once instead of until its last advert expires.
    pub fn farewell_advert(
        &self,
    ) -> Result<Signed<CapabilityAdvert>, crank_protocol::SignatureError> {
        self.sign_advert(true)
    }

    fn sign_advert(
        &self,
        farewell: bool,
    ) -> Result<Signed<CapabilityAdvert>, crank_protocol::SignatureError> {
        let now = clock::now_ms();
        let snapshot = self.gate_snapshot();
        let queue = self.engine.queue();
        let (power, mut gate) = device::summarize(&snapshot, &self.meter, self.hardware.cores);
        if let Some(reason) = self.gate_closed() {
            gate = GateInfo {
                policy: gate.policy,
                open: false,
                reason: Some(reason),
            };
        }
        let seq = self.advert_seq.fetch_add(1, Ordering::SeqCst) + 1;
        // Persist the sequence number so a restart never reuses one (peers would call it stale).
        if let Err(e) = self.ledger.put_meta(ADVERT_SEQ_KEY, &seq.to_be_bytes()) {
            warn!(error = %e, "cannot persist the advert sequence number");
        }
        if farewell {
            gate = GateInfo {
                policy: gate.policy,
                open: false,
                reason: Some(GateReason::Paused),
            };
        }
        let ttl_ms = if farewell {
            FAREWELL_TTL_MS
        } else {
            self.config.advert.ttl_secs.max(1) * 1000
        };
        let cost = &self.config.worker.cost;
        let body = CapabilityAdvert {
            node: self.node_id,
            seq,
            issued_at: now,
            expires_at: now + ttl_ms,
            agent: format!("crank-node/{}", env!("CARGO_PKG_VERSION")),
            hardware: self.hardware.clone(),
            power,
            gate,
            models: self
                .store
                .list()
                .into_iter()
                .take(self.limits.max_advert_models)
                .collect(),
            unservable: lock(&self.unservable).iter().map(|(id, _)| *id).collect(),
            pricing: Pricing {
                per_task_stroops: cost.per_task_stroops,
                per_second_stroops: cost.per_second_stroops,
            },
            payout: self.payout.clone(),
            trust: self.own_record(),
            bench: self.bench.clone(),
            addrs: lock(&self.listen_addrs).iter().take(8).cloned().collect(),
            capacity: Capacity {
                workers: u16::try_from(queue.workers).unwrap_or(u16::MAX),
                queue_slots: u16::try_from(queue.slots).unwrap_or(u16::MAX),
                queued: u16::try_from(queue.queued + queue.running).unwrap_or(u16::MAX),
            },
        };
        let signed = Signed::sign(body, &self.identity)?;
        *lock(&self.current_advert) = Some(signed.clone());
        Ok(signed)
    }

    /// The advert to hand out: the current one if still fresh, else a new one.
    pub fn advert(&self) -> Option<Signed<CapabilityAdvert>> {
        let now = clock::now_ms();
        if let Some(a) = lock(&self.current_advert).as_ref()
            && a.body.expires_at > now + 5_000
        {
            return Some(a.clone());
        }
        self.build_advert().ok()
    }
}

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
    worker: &Worker,
    task_id: crank_protocol::TaskId,
    reason: DeclineReason,
) -> Response {
    let decline = Decline {
        task_id,
        worker: worker.node_id,
        reason,
    };
    match Signed::sign(decline, &worker.identity) {
        Ok(d) => Response::Decline(d),
        Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
    }
}

fn worker_state(worker: &Worker, requester: Standing) -> WorkerState {
    let queue = worker.engine.queue();
    let snapshot = worker.gate_snapshot();
    let measured = lock(&worker.measured).clone();
    // Expected wait: the work ahead of us spread over the workers.
    let per_task_ms = worker
        .bench
        .first()
        .map(|b| (1000.0 / f64::from(b.inferences_per_sec.max(0.001))) as u64)
        .unwrap_or(10);
    let ahead = (queue.queued + queue.running) as u64;
    let est_wait_ms = ahead * per_task_ms / (queue.workers.max(1) as u64);
    let engine = worker.engine.config();
    WorkerState {
        node: worker.node_id,
        gate_closed: worker.gate_closed(),
        on_battery: snapshot.readings.power.source
            == crank_inference::device::power::PowerSource::Battery,
        queue: QueueState {
            queued: u16::try_from(queue.queued + queue.running).unwrap_or(u16::MAX),
            slots: u16::try_from(queue.slots).unwrap_or(u16::MAX),
            est_wait_ms,
        },
        cached_models: worker.store.list().into_iter().collect::<BTreeSet<_>>(),
        bench: worker.bench.clone(),
        measured,
        unservable: lock(&worker.unservable).iter().cloned().collect(),
        limits: WorkerLimits {
            max_model_bytes: engine.max_model_bytes,
            max_input_elements: engine.max_input_elements,
            max_run_ms: u64::try_from(engine.max_run_time.as_millis()).unwrap_or(u64::MAX),
        },
        payout: worker.payout.clone(),
        credit: worker.config.worker.credit,
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
pub(crate) async fn recover_receipts(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    if !worker.offers_work() {
        return;
    }
    let mut wait = Duration::from_secs(5);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => return,
        }
        wait = Duration::from_secs(60);
        let (pending, legacy) = match worker.receipts.pending(256).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %chain(&e), "cannot read pending receipts");
                continue;
            }
        };
        let now = clock::now_ms();
        for p in pending {
            let body = &p.receipt.body;
            // A task still being delivered is the delivery loop's business.
            if lock(&worker.running).contains_key(&body.task_id) {
                continue;
            }
            let answer = worker
                .client
                .request(
                    &body.requester,
                    Request::GetReceipt {
                        task_id: body.task_id,
                    },
                )
                .await;
            match answer {
                Ok(Response::Receipt(cs)) => match worker.receipts.accept(&p.receipt, *cs).await {
                    Ok(_) => {
                        worker.metrics.receipt("worker");
                        info!(task = %body.task_id.short(), "counter-signed receipt recovered from the requester");
                    }
                    Err(e) => {
                        warn!(task = %body.task_id.short(), error = %chain(&e), "requester sent a receipt we cannot store")
                    }
                },
                Ok(Response::Error(e)) if now.saturating_sub(p.issued_at) > PENDING_PATIENCE_MS => {
                    info!(task = %body.task_id.short(), error = %e, "requester never counter-signed this receipt; giving up on it");
                    let _ = worker.receipts.abandon(body.task_id).await;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(task = %body.task_id.short(), error = %e, "requester not reachable; asking for the receipt later")
                }
            }
        }
        // Outputs of counter-signed receipts that never reached the requester (we crashed or it
        // was unreachable): it owes for them, so it gets them.
        match worker.receipts.undelivered(64).await {
            Ok(held) => {
                for o in held {
                    let task = o.body.task_id;
                    if lock(&worker.running).contains_key(&task) {
                        continue;
                    }
                    let requester = o.body.requester;
                    let answer = worker
                        .client
                        .request(&requester, Request::Outputs(Box::new(o)))
                        .await
                        .ok();
                    if outputs_taken(&worker, task, answer.as_ref()).await {
                        info!(task = %task.short(), "held outputs delivered after a restart");
                    }
                }
            }
            Err(e) => warn!(error = %chain(&e), "cannot read held outputs"),
        }
        // Receipts of wire version 1 issued before the upgrade: the requester may hold them
        // counter-signed, and will pay them.
        for p in legacy {
            let body = &p.receipt.body;
            let answer = worker
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
                    match worker.receipts.accept_legacy(&p, *cs).await {
                        Ok(_) => {
                            info!(task = %body.task_id.short(), "receipt from before the upgrade recovered from the requester")
                        }
                        Err(e) => {
                            warn!(task = %body.task_id.short(), error = %chain(&e), "requester sent a receipt we cannot store")
                        }
                    }
                }
                Ok(Response::Error(e)) if now.saturating_sub(p.issued_at) > PENDING_PATIENCE_MS => {
                    info!(task = %body.task_id.short(), error = %e, "requester never counter-signed this receipt; giving up on it");
                    let _ = worker.receipts.abandon(body.task_id).await;
                }
                _ => {}
            }
        }
    }
}

/// Checks a payer's signed settlement notice against the ledger and credits the receipts
/// it paid by what actually arrived.
pub(crate) async fn on_settlement(
    worker: &Arc<Worker>,
    peer: &NodeId,
    notice: &Signed<SettlementNotice>,
) -> Response {
    if &notice.body.payer_node != peer {
        return Response::error(
            ErrorCode::NotAuthorized,
            "settlement notice relayed by someone other than its payer",
        );
    }
    match worker.receipts.record_notice(notice).await {
        Ok(recorded) => {
            let p = recorded.record();
            if let RecordedPayment::New(_) = &recorded {
                worker
                    .metrics
                    .payment_in(p.received_stroops, p.unallocated_stroops);
            }
            info!(peer = %peer.short(), tx = %p.tx_hash, received = p.received_stroops, receipts = p.credits.len(), ignored = p.ignored.len(), "payment checked against the ledger and credited");
            Response::PaymentRecorded {
                receipts: u32::try_from(p.credits.len()).unwrap_or(u32::MAX),
            }
        }
        Err(e) => {
            warn!(peer = %peer.short(), error = %chain(&e), "settlement notice does not check out");
            if matches!(e, crank_payments::ExchangeError::Invalid(_)) {
                worker.client.penalize(peer, e.to_string()).await;
            }
            Response::error(ErrorCode::Invalid, chain(&e))
        }
    }
}

/// A requester disputes one of our receipts (its outputs did not match, or never came).
pub(crate) async fn on_dispute(
    worker: &Arc<Worker>,
    peer: &NodeId,
    dispute: Signed<Dispute>,
) -> Response {
    let task_id = dispute.body.receipt.body.task_id;
    if &dispute.body.requester != peer {
        return Response::error(ErrorCode::NotAuthorized, "dispute relayed by someone else");
    }
    let reason = dispute.body.reason.to_string();
    match worker.receipts.record_dispute(dispute).await {
        Ok(_) => {
            warn!(task = %task_id.short(), requester = %peer.short(), reason = %reason, "requester disputes our receipt");
            Response::Ack { task_id }
        }
        Err(e) => Response::error(ErrorCode::Invalid, chain(&e)),
    }
}

/// Looks for payments to our payout account on Horizon, so a settlement notice that never
/// arrived strands no receipt: for each transaction that paid us and is not credited yet,
/// asks the requesters that owe us for its signed notice (only a notice signed by a
/// receipt's requester can credit it). A payment nobody announces is reported.
pub(crate) async fn watch_payments(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let every = worker.config.worker.watch_payments_secs;
    if every == 0 || !worker.offers_work() {
        return;
    }
    let horizon = match crank_payments::Horizon::new(&worker.config.stellar) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %chain(&e), "cannot watch for payments");
            return;
        }
    };
    let mut unannounced: HashMap<TxHash, Instant> = HashMap::new();
    let mut cursor: Option<String> = worker
        .ledger
        .get_meta(PAYMENT_CURSOR_KEY)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok());
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
            () = stopped(&mut stop) => return,
        }
        let page = match horizon
            .account_transactions(&worker.payout, cursor.as_deref(), 50)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %chain(&e), "cannot list payments on Horizon; will retry");
                continue;
            }
        };
        for tx in &page.records {
            if tx.source_account == worker.payout || !pays(&tx.record.envelope_xdr, &worker.payout)
            {
                // Our own transactions, and others that move no XLM to us (friendbot's
                // account creation): nothing to credit.
                cursor = Some(tx.paging_token.clone());
                continue;
            }
            match check_found_payment(&worker, tx.record.hash).await {
                Ok(true) => {
                    unannounced.remove(&tx.record.hash);
                }
                // Nobody announced it yet; the payer may not have recorded it as settled
                // yet, so ask again for a while before reporting it.
                Ok(false) => {
                    let first = *unannounced
                        .entry(tx.record.hash)
                        .or_insert_with(Instant::now);
                    if first.elapsed() < UNANNOUNCED_PATIENCE {
                        break;
                    }
                    unannounced.remove(&tx.record.hash);
                    warn!(tx = %tx.record.hash, from = %tx.source_account, "payment received that no requester announced; nothing credited");
                    worker.metrics.payment_in(0, 1);
                }
                // Not resolved now (a requester offline): look again from here next time.
                Err(()) => break,
            }
            cursor = Some(tx.paging_token.clone());
        }
        if let Some(c) = &cursor
            && let Err(e) = worker.ledger.put_meta(PAYMENT_CURSOR_KEY, c.as_bytes())
        {
            warn!(error = %chain(&e), "cannot persist the payment cursor");
        }
    }
}

/// Whether a transaction (base64 envelope) holds a native payment to `account`.
fn pays(envelope_xdr: &str, account: &str) -> bool {
    crank_payments::stellar::decode_envelope(envelope_xdr)
        .ok()
        .and_then(|e| crank_payments::stellar::envelope_payments(&e).ok())
        .is_some_and(|ps| ps.iter().any(|p| p.destination == account))
}

/// How long a payment found on Horizon is asked about before it is reported as announced by
/// nobody (the payer records a settlement only once it saw it applied).
const UNANNOUNCED_PATIENCE: Duration = Duration::from_secs(600);

/// Meta key of the Horizon paging token up to which our payments were checked.
const PAYMENT_CURSOR_KEY: &str = "payment-cursor";

/// Resolves one payment found on Horizon: Ok(true) when it is (now) credited, Ok(false)
/// when every requester that owes us was asked and none announced it, Err when some could
/// not be reached.
async fn check_found_payment(worker: &Arc<Worker>, hash: TxHash) -> Result<bool, ()> {
    let ledger = worker.ledger.clone();
    if let Ok(Ok(Some(_))) = tokio::task::spawn_blocking(move || ledger.payment_in(&hash)).await {
        return Ok(true);
    }
    let owing: Vec<NodeId> = worker
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
        match worker
            .client
            .request(&requester, Request::GetSettlement { tx_hash: hash.0 })
            .await
        {
            Ok(Response::Settlement(notice)) if notice.body.tx_hash == hash.0 => {
                let answer = on_settlement(worker, &requester, &notice).await;
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

/// The owner's admission policy on a call for bids: the cost model to quote with (scaled by
/// the policy's price multiplier), or the decline it gives (`policy: <reason>`).
fn admit(
    worker: &Worker,
    cfb: &CallForBids,
    standing: &Standing,
    now: u64,
) -> Result<crank_scheduler::CostModel, DeclineReason> {
    let cost = &worker.config.worker.cost;
    let policies = worker.policies.current();
    if !policies.has(crank_policy::Kind::Admission) {
        return Ok(cost.clone());
    }
    let snapshot = worker.gate_snapshot();
    let readings = &snapshot.readings;
    let gate = worker.gate_state();
    let input = crank_policy::AdmissionInput {
        requester: crank_policy::Requester {
            id: cfb.requester.to_hex(),
            trust: crank_policy::RequesterTrust {
                known: standing.receipts > 0,
                receipts: standing.receipts,
                paid_stroops: standing.paid_stroops,
                unpaid_stroops: standing.unpaid_stroops,
                oldest_unpaid_secs: standing
                    .oldest_unpaid_at
                    .map_or(0, |at| now.saturating_sub(at) / 1000),
            },
        },
        model: crank_policy::Model {
            hash: cfb.model.to_hex(),
            bytes: cfb.model_bytes,
            cached: worker.store.size(&cfb.model).is_some(),
            package: None,
        },
        input: crank_policy::TaskInput {
            elements: cfb.input_elements,
        },
        price: crank_policy::Price {
            max_stroops: cfb.max_price_stroops,
        },
        time: crank_policy::Time::at(now),
        gate: crank_policy::Gate {
            open: gate.is_open(),
            reason: gate.why_closed(),
            on_battery: readings.power.source
                == crank_inference::device::power::PowerSource::Battery,
            battery_percent: readings.power.battery_percent,
        },
        device: crank_policy::Device {
            temperature_c: readings.thermal.as_ref().map(|t| t.celsius),
            cpu_load_percent: readings.cpu.map(|c| c.other_percent),
        },
    };
    let decision = policies.admission(&input);
    if let Some(message) = decision.decline_reason() {
        return Err(DeclineReason::Other { message });
    }
    worker.metrics.policy_decision("admission", "allow");
    if decision.price_multiplier == 1.0 {
        Ok(cost.clone())
    } else {
        Ok(cost.scaled(decision.price_multiplier))
    }
}

/// Answers a call for bids with a signed bid or a signed, explained decline.
pub(crate) async fn on_call_for_bids(
    worker: &Arc<Worker>,
    peer: &NodeId,
    signed: &Signed<CallForBids>,
) -> Response {
    let now = clock::now_ms();
    let cfb = match validate::call_for_bids(signed, now, &worker.limits) {
        Ok(c) => c,
        Err(e) => {
            warn!(peer = %peer.short(), error = %e, "invalid call for bids");
            worker.client.penalize(peer, e.to_string()).await;
            return Response::error(ErrorCode::Invalid, e.to_string());
        }
    };
    if &cfb.requester != peer {
        return Response::error(
            ErrorCode::NotAuthorized,
            "call for bids relayed by someone other than its requester",
        );
    }
    let standing = match worker.receipts.standing(cfb.requester).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %chain(&e), "cannot read the requester's standing");
            return Response::error(ErrorCode::Internal, "cannot read the ledger");
        }
    };
    let cost = match admit(worker, cfb, &standing, now) {
        Ok(cost) => cost,
        Err(reason) => {
            debug!(task = %cfb.task_id.short(), reason = %reason, "declined by the admission policy");
            worker.metrics.policy_decision("admission", "deny");
            return sign_decline(worker, cfb.task_id, reason);
        }
    };
    match quote(cfb, &worker_state(worker, standing), &cost, now) {
        Ok(bid) => {
            let task = bid.task_id;
            {
                let mut book = lock(&worker.bids);
                // A call repeated by the requester gets a fresh bid in place of the old one.
                book.remove(&task);
                match book.insert(*peer, bid.clone(), now) {
                    Ok(()) => {}
                    // Over its fair share of the book: said so, so that it waits or awards.
                    Err(e @ crank_scheduler::BidBookError::OverShare { .. }) => {
                        let reason = DeclineReason::Other {
                            message: e.to_string(),
                        };
                        return sign_decline(worker, task, reason);
                    }
                    Err(_) => {
                        let q = worker.engine.queue();
                        let reason = DeclineReason::QueueFull {
                            queued: u16::try_from(q.queued).unwrap_or(u16::MAX),
                            slots: u16::try_from(q.slots).unwrap_or(u16::MAX),
                        };
                        return sign_decline(worker, task, reason);
                    }
                }
            }
            debug!(task = %task.short(), price = bid.price_stroops, path = %bid.path, "bid");
            match Signed::sign(bid, &worker.identity) {
                Ok(b) => Response::Bid(b),
                Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
            }
        }
        Err(reason) => {
            debug!(task = %cfb.task_id.short(), reason = %reason, "decline");
            sign_decline(worker, cfb.task_id, reason)
        }
    }
}

/// Accepts an award (answering at once) and runs the task in the background.
pub(crate) async fn on_award(
    worker: &Arc<Worker>,
    peer: NodeId,
    signed: Signed<Award>,
    responder: Responder,
) {
    let now = clock::now_ms();
    let award = match validate::award(&signed, &worker.node_id, now, &worker.limits) {
        Ok(a) => a.clone(),
        Err(e) => {
            warn!(peer = %peer.short(), error = %e, "invalid award");
            worker.client.penalize(&peer, e.to_string()).await;
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
    if lock(&worker.running)
        .get(&award.task_id)
        .is_some_and(|r| r.requester == peer)
    {
        // The requester re-sent an award it did not hear us accept.
        responder.send(Response::Accepted {
            task_id: award.task_id,
        });
        return;
    }
    let bid = match lock(&worker.bids).take_for_award(&award, now) {
        Ok(bid) => bid,
        Err(reason) => {
            responder.send(sign_decline(worker, award.task_id, reason));
            return;
        }
    };
    if let Some(reason) = worker.gate_closed() {
        responder.send(sign_decline(
            worker,
            award.task_id,
            DeclineReason::Gate { reason },
        ));
        return;
    }
    let queue = worker.engine.queue();
    if queue.is_full() {
        let reason = DeclineReason::QueueFull {
            queued: u16::try_from(queue.queued).unwrap_or(u16::MAX),
            slots: u16::try_from(queue.slots).unwrap_or(u16::MAX),
        };
        responder.send(sign_decline(worker, award.task_id, reason));
        return;
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let cancel = CancelToken::new();
    {
        let mut running = lock(&worker.running);
        running.insert(
            award.task_id,
            Running {
                requester: peer,
                cancel: cancel.clone(),
                stop: Some(stop_tx),
            },
        );
        worker.metrics.queued(running.len());
    }
    responder.send(Response::Accepted {
        task_id: award.task_id,
    });
    info!(task = %award.task_id.short(), requester = %peer.short(), price = award.price_stroops, "award accepted");
    let worker = worker.clone();
    tokio::spawn(async move {
        let task_id = award.task_id;
        execute(&worker, award, signed, bid.path, cancel, stop_rx).await;
        let n = {
            let mut running = lock(&worker.running);
            running.remove(&task_id);
            running.len()
        };
        worker.metrics.queued(n);
        worker.advert_changed.notify_one();
    });
}

/// Remembers that no runtime here takes `model` (the engine already fell back from one to
/// the other), and re-advertises.
fn mark_unservable(worker: &Worker, model: ModelId, e: &InferenceError) {
    {
        let mut list = lock(&worker.unservable);
        if list.iter().any(|(id, _)| *id == model) {
            return;
        }
        let cap = worker.limits.max_advert_models.max(1);
        while list.len() >= cap {
            list.pop_front();
        }
        // Bounded like every text on the wire: the reason travels in declines.
        let mut why = e.to_string();
        if why.len() > 512 {
            let mut end = 512;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
        }
        list.push_back((model, why));
        persist_unservable(&worker.core.ledger, &engine_tag(&worker.bench), &list);
    }
    info!(model = %model, "model marked unservable: declined and advertised from now on");
    worker.advert_changed.notify_one();
}

/// Meta key under which the unservable models are kept in the ledger.
pub(crate) const UNSERVABLE_KEY: &str = "unservable-models";

/// What decides which models this node can run: its version and its runtimes' paths. A
/// refusal recorded under another tag is forgotten.
pub(crate) fn engine_tag(bench: &[PathBench]) -> String {
    let paths: Vec<String> = bench.iter().map(|b| b.path.to_string()).collect();
    format!(
        "crank-node/{} {}",
        env!("CARGO_PKG_VERSION"),
        paths.join(",")
    )
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredUnservable {
    engine: String,
    models: Vec<(ModelId, String)>,
}

fn persist_unservable(
    ledger: &crank_payments::Ledger,
    engine: &str,
    list: &std::collections::VecDeque<(ModelId, String)>,
) {
    let stored = StoredUnservable {
        engine: engine.to_string(),
        models: list.iter().cloned().collect(),
    };
    match serde_json::to_vec(&stored) {
        Ok(bytes) => {
            if let Err(e) = ledger.put_meta(UNSERVABLE_KEY, &bytes) {
                warn!(error = %e, "cannot persist the unservable models");
            }
        }
        Err(e) => warn!(error = %e, "cannot encode the unservable models"),
    }
}

/// The unservable models kept under this engine tag (at most `cap`, newest kept); none when
/// the engine changed or nothing readable is stored.
pub(crate) fn restore_unservable(
    ledger: &crank_payments::Ledger,
    engine: &str,
    cap: usize,
) -> std::collections::VecDeque<(ModelId, String)> {
    let stored = match ledger.get_meta(UNSERVABLE_KEY) {
        Ok(Some(bytes)) => match serde_json::from_slice::<StoredUnservable>(&bytes) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "stored unservable models unreadable; trying every model again");
                return std::collections::VecDeque::new();
            }
        },
        _ => return std::collections::VecDeque::new(),
    };
    if stored.engine != engine {
        info!(
            before = %stored.engine,
            now = %engine,
            "engine changed since models were refused; trying them again"
        );
        return std::collections::VecDeque::new();
    }
    let skip = stored.models.len().saturating_sub(cap.max(1));
    stored.models.into_iter().skip(skip).collect()
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

/// Runs an accepted task. `signed` is the award as the requester signed it: holders of the
/// model serve it only against it.
async fn execute(
    worker: &Arc<Worker>,
    award: Award,
    signed: Signed<Award>,
    path: ExecPath,
    cancel: CancelToken,
    mut stop: oneshot::Receiver<Stop>,
) {
    let accepted_at = clock::now_ms();
    let task = award.task_id;

    let fetched = tokio::select! {
        r = ensure_model(worker, &signed) => r,
        s = &mut stop => {
            on_stop(worker, &award, s.ok()).await;
            return;
        }
    };
    // Held until the run ends, so the model is not evicted under it.
    let lease = match fetched {
        Ok(lease) => lease,
        Err(reason) => {
            warn!(task = %task.short(), reason = %reason, "cannot obtain the model");
            report_failure(worker, &award, reason).await;
            return;
        }
    };

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
    let span = worker.meter.start();
    let started_at = clock::now_ms();
    let handle = match worker.engine.submit(job) {
        Ok(h) => h,
        Err(e) => {
            report_failure(worker, &award, failure_of(&e)).await;
            return;
        }
    };
    let run = tokio::select! {
        r = handle => r,
        s = &mut stop => {
            cancel.cancel();
            on_stop(worker, &award, s.ok()).await;
            return;
        }
    };
    let run = match run {
        Ok(r) => r,
        // The token is cancelled only by whoever stops the task, who sends the reason right
        // after: the job's own "cancelled" may win the race, so wait for the reason (a gate
        // that closed must be reported as an abort, which the requester re-awards).
        Err(InferenceError::Cancelled) => {
            let why = tokio::time::timeout(Duration::from_secs(1), &mut stop).await;
            on_stop(worker, &award, why.ok().and_then(Result::ok)).await;
            return;
        }
        Err(e) => {
            warn!(task = %task.short(), error = %e, "task failed");
            if matches!(
                e,
                InferenceError::ModelInvalid(_) | InferenceError::UnsupportedOperator { .. }
            ) {
                mark_unservable(worker, award.model, &e);
            }
            report_failure(worker, &award, failure_of(&e)).await;
            return;
        }
    };
    drop(lease);
    let finished_at = clock::now_ms();
    let energy = span.finish(run.cpu_micros);
    worker
        .metrics
        .inference_seconds(run.run_micros as f64 / 1e6);
    lock(&worker.measured).insert(
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
    let receipt = match worker.receipts.issue(&award, facts).await {
        Ok(r) => r,
        Err(e) => {
            warn!(task = %task.short(), error = %chain(&e), "cannot issue the receipt");
            report_failure(
                worker,
                &award,
                FailureReason::Inference {
                    message: format!("receipt: {e}"),
                },
            )
            .await;
            return;
        }
    };
    deliver(worker, &award, receipt, run.outputs).await;
}

/// Fair exchange: sends the signed receipt (committing to the outputs' hash) until the
/// requester counter-signs it, stores the counter-signed receipt, and only then releases the
/// signed outputs. A requester that never counter-signs gets no outputs.
async fn deliver(
    worker: &Arc<Worker>,
    award: &Award,
    receipt: Signed<WorkReceipt>,
    outputs: Vec<NamedTensor>,
) {
    let task = award.task_id;
    let give_up = award.deadline + 10_000;
    // Kept on disk until the requester took them: a crash after its counter-signature must
    // not lose work it owes for (the recovery loop delivers them after a restart).
    let signed = match worker
        .receipts
        .hold_outputs(task, award.requester, outputs)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(task = %task.short(), error = %chain(&e), "cannot keep the outputs");
            return;
        }
    };
    let result = TaskResult {
        receipt: receipt.clone(),
    };
    let countersigned = match retry(worker, award, give_up, Request::Result(result)).await {
        Some(Response::Receipt(cs)) => *cs,
        Some(Response::Error(e)) => {
            // The requester gave the task to someone else or gave up; our receipt stays
            // uncounter-signed and is never paid, and the outputs stay here.
            info!(task = %task.short(), error = %e, "requester refused the result");
            worker.metrics.task("worker", "refused");
            let _ = worker.receipts.abandon(task).await;
            return;
        }
        Some(other) => {
            warn!(task = %task.short(), kind = other.kind(), "unexpected answer to a result");
            return;
        }
        None => return,
    };
    if let Err(e) = worker.receipts.accept(&receipt, countersigned).await {
        warn!(task = %task.short(), error = %chain(&e), "requester's counter-signed receipt refused; outputs withheld");
        worker
            .client
            .penalize(&award.requester, "bad counter-signed receipt")
            .await;
        return;
    }
    worker.metrics.receipt("worker");
    let answer = retry(worker, award, give_up, Request::Outputs(Box::new(signed))).await;
    if outputs_taken(worker, task, answer.as_ref()).await {
        info!(task = %task.short(), price = award.price_stroops, "task done; receipt counter-signed, outputs delivered");
        worker.metrics.task("worker", "completed");
    }
}

/// Handles the requester's answer to delivered outputs; returns whether it took them. Held
/// outputs are dropped once answered (taken or disputed), kept for the recovery loop when
/// the requester could not be reached.
async fn outputs_taken(worker: &Arc<Worker>, task: TaskId, answer: Option<&Response>) -> bool {
    let taken = match answer {
        Some(Response::Ack { .. }) => true,
        Some(Response::Disputed(d)) => {
            warn!(task = %task.short(), reason = %d.body.reason, "requester disputes our outputs");
            let _ = worker.receipts.record_dispute((**d).clone()).await;
            false
        }
        Some(other) => {
            warn!(task = %task.short(), kind = other.kind(), "unexpected answer to the outputs");
            false
        }
        None => return false,
    };
    if let Err(e) = worker.receipts.delivered(task).await {
        warn!(task = %task.short(), error = %chain(&e), "cannot drop delivered outputs");
    }
    taken
}

/// Sends a request to the award's requester until it answers or `give_up` passes.
async fn retry(
    worker: &Arc<Worker>,
    award: &Award,
    give_up: u64,
    request: Request,
) -> Option<Response> {
    let task = award.task_id;
    let mut backoff = Duration::from_millis(200);
    loop {
        match worker
            .client
            .request(&award.requester, request.clone())
            .await
        {
            Ok(answer) => return Some(answer),
            Err(e) => {
                if clock::now_ms() > give_up {
                    warn!(task = %task.short(), error = %e, kind = request.kind(), "could not deliver before the deadline");
                    worker.metrics.task("worker", "undelivered");
                    return None;
                }
                debug!(task = %task.short(), error = %e, "not delivered yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn on_stop(worker: &Arc<Worker>, award: &Award, stop: Option<Stop>) {
    match stop {
        Some(Stop::Abort(reason)) => {
            info!(task = %award.task_id.short(), reason = %reason, "task aborted: power gate closed");
            report_failure(worker, award, FailureReason::Aborted { reason }).await;
        }
        Some(Stop::Cancelled) | None => {
            info!(task = %award.task_id.short(), "task cancelled by the requester");
            worker.metrics.task("worker", "cancelled");
        }
    }
}

async fn report_failure(worker: &Arc<Worker>, award: &Award, reason: FailureReason) {
    worker
        .failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    worker.metrics.task("worker", "failed");
    let failure = TaskFailure {
        task_id: award.task_id,
        requester: award.requester,
        worker: worker.node_id,
        reason,
    };
    let Ok(signed) = Signed::sign(failure, &worker.identity) else {
        return;
    };
    for attempt in 0..3 {
        match worker
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

/// Makes sure the awarded model is in the store, and leases it for the run: fetched from
/// the requester, else from a provider, against the award, into room reserved in the store
/// before the download, and stored only when it hashes to its id and is ONNX.
async fn ensure_model(
    worker: &Arc<Worker>,
    signed: &Signed<Award>,
) -> Result<ModelLease, FailureReason> {
    let award = &signed.body;
    let (requester, model, size) = (&award.requester, &award.model, award.model_bytes);
    let lease = worker.store.lease(model);
    if worker.store.has(model) {
        return Ok(lease);
    }
    let limit = worker.engine.config().max_model_bytes;
    if size > limit {
        return Err(FailureReason::ModelInvalid {
            message: format!("model is {size} bytes; the limit is {limit}"),
        });
    }
    let room = worker
        .store
        .reserve(model, size)
        .map_err(|e| FailureReason::ModelUnavailable {
            message: format!("no room in the model store: {e}"),
        })?;
    if !room.evicted().is_empty() {
        worker.advert_changed.notify_one();
    }
    // The requester holds the model and is connected: ask it first. Only when it cannot serve
    // it is the DHT asked for other holders, and not for long: the task's deadline runs.
    let mut last_error = match fetch_from(worker, requester, signed, &room).await {
        Ok(()) => return Ok(lease),
        Err(FetchError::Invalid(message)) => return Err(FailureReason::ModelInvalid { message }),
        Err(FetchError::Unavailable(e)) => e,
    };
    let lookup = worker.client.providers(model.provider_key());
    let providers = match tokio::time::timeout(Duration::from_secs(2), lookup).await {
        Ok(Ok(p)) => p,
        _ => Vec::new(),
    };
    for source in providers
        .into_iter()
        .filter(|p| p != requester && *p != worker.node_id)
        .take(3)
    {
        match fetch_from(worker, &source, signed, &room).await {
            Ok(()) => return Ok(lease),
            Err(FetchError::Invalid(message)) => {
                return Err(FailureReason::ModelInvalid { message });
            }
            Err(FetchError::Unavailable(e)) => last_error = e,
        }
    }
    Err(FailureReason::ModelUnavailable {
        message: last_error,
    })
}

/// Why a fetch from one holder gave no model.
#[derive(Debug)]
enum FetchError {
    /// This holder could not or would not serve it; another may.
    Unavailable(String),
    /// The model itself is bad (its true bytes are not ONNX): no holder can help.
    Invalid(String),
}

/// Fetches the awarded model from one holder, verifies it (content id, ONNX structure) and
/// stores it, evictable; only then is it announced.
async fn fetch_from(
    worker: &Arc<Worker>,
    source: &NodeId,
    signed: &Signed<Award>,
    room: &Reservation,
) -> Result<(), FetchError> {
    let model = &signed.body.model;
    let size = signed.body.model_bytes;
    let bytes = match fetch_model(worker, source, signed).await {
        Ok(bytes) => bytes,
        Err(e) => {
            debug!(model = %model.short(), from = %source.short(), error = %e, "model fetch failed");
            return Err(FetchError::Unavailable(e));
        }
    };
    match worker.store.put_fetched(room, &bytes) {
        Ok(()) => {
            info!(model = %model.short(), bytes = size, from = %source.short(), "model fetched and verified");
            if let Err(e) = worker.client.provide(model.provider_key()).await {
                debug!(error = %e, "cannot announce the model");
            }
            worker.advert_changed.notify_one();
            Ok(())
        }
        Err(FetchedModelError::NotOnnx(e)) => {
            warn!(model = %model.short(), from = %source.short(), error = %e, "awarded model is not ONNX; discarded");
            // The bytes are the ones the award names: whoever awarded them is at fault.
            if source == &signed.body.requester {
                worker
                    .client
                    .penalize(source, format!("awarded a model that is not ONNX: {e}"))
                    .await;
            }
            Err(FetchError::Invalid(format!(
                "the awarded model was fetched and discarded: {e}"
            )))
        }
        Err(FetchedModelError::Store(e)) => {
            warn!(model = %model.short(), from = %source.short(), error = %e, "fetched model rejected");
            if matches!(e, crank_inference::StoreError::HashMismatch { .. }) {
                worker
                    .client
                    .penalize(source, format!("served a bad model: {e}"))
                    .await;
            }
            Err(FetchError::Unavailable(e.to_string()))
        }
    }
}

async fn fetch_model(
    worker: &Arc<Worker>,
    source: &NodeId,
    signed: &Signed<Award>,
) -> Result<Vec<u8>, String> {
    let model = &signed.body.model;
    let size = signed.body.model_bytes;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
    let mut next_log = size / 4;
    while (bytes.len() as u64) < size {
        let offset = bytes.len() as u64;
        // Every chunk carries the award: holders keep no state between chunks.
        let req = Request::FetchModel(FetchModel {
            model: *model,
            offset,
            max_len: CHUNK,
            award: Some(signed.clone()),
        });
        match worker
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

/// How long past its deadline an award still lets its worker fetch the model: a download
/// that started in time may finish.
pub(crate) const FETCH_GRACE_MS: u64 = 60_000;

/// How far ahead an award's deadline may lie for fetching: an award is no standing pass.
pub(crate) const FETCH_MAX_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;

/// Why a holder refuses to serve a model.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchRefusal {
    /// No award came with the request, and the model is not public here.
    #[error(
        "model {0} is served only to a worker awarded a task on it: send the requester's signed award"
    )]
    NoAward(String),
    /// The award's signature does not verify (or is not the requester's).
    #[error("the award does not verify: {0}")]
    BadSignature(#[from] crank_protocol::SignatureError),
    /// The award is for another model.
    #[error("the award is for model {awarded}, not {asked}")]
    OtherModel {
        /// The award's model.
        awarded: String,
        /// The model asked for.
        asked: String,
    },
    /// The award names another worker than the asking peer.
    #[error("the award names worker {winner}, not the asking peer {peer}")]
    OtherWorker {
        /// The award's winner.
        winner: String,
        /// Who asked.
        peer: String,
    },
    /// A node awarding itself proves nothing.
    #[error("the award's requester is its own worker")]
    SelfAward,
    /// The award's deadline passed more than the grace period ago.
    #[error(
        "the award expired at {deadline} (now {now}; models are served for {FETCH_GRACE_MS} ms after a task's deadline)"
    )]
    Expired {
        /// The award's deadline, Unix ms.
        deadline: u64,
        /// Now, Unix ms.
        now: u64,
    },
    /// The award's deadline is implausibly far ahead.
    #[error("the award's deadline {deadline} is more than {FETCH_MAX_AHEAD_MS} ms ahead")]
    TooFarAhead {
        /// The award's deadline, Unix ms.
        deadline: u64,
    },
}

/// Whether `peer` may fetch `fetch.model` from this node: the model is public here, or the
/// fetch carries a requester-signed award of a task on that model to `peer`, not expired
/// beyond [`FETCH_GRACE_MS`]. The same check holds on the requester and on any other holder.
pub(crate) fn authorize_fetch(
    fetch: &FetchModel,
    peer: &NodeId,
    public: &[ModelId],
    now: u64,
) -> Result<(), FetchRefusal> {
    if public.contains(&fetch.model) {
        return Ok(());
    }
    let Some(signed) = &fetch.award else {
        return Err(FetchRefusal::NoAward(fetch.model.short()));
    };
    let award = signed.verify_by(&signed.body.requester)?;
    if award.model != fetch.model {
        return Err(FetchRefusal::OtherModel {
            awarded: award.model.short(),
            asked: fetch.model.short(),
        });
    }
    if &award.worker != peer {
        return Err(FetchRefusal::OtherWorker {
            winner: award.worker.short(),
            peer: peer.short(),
        });
    }
    if award.requester == award.worker {
        return Err(FetchRefusal::SelfAward);
    }
    if award.deadline.saturating_add(FETCH_GRACE_MS) < now {
        return Err(FetchRefusal::Expired {
            deadline: award.deadline,
            now,
        });
    }
    if award.deadline > now.saturating_add(FETCH_MAX_AHEAD_MS) {
        return Err(FetchRefusal::TooFarAhead {
            deadline: award.deadline,
        });
    }
    Ok(())
}

/// Serves part of a model this node holds, to a peer entitled to it ([`authorize_fetch`]).
pub(crate) async fn on_fetch_model(
    worker: &Arc<Worker>,
    peer: &NodeId,
    fetch: &FetchModel,
) -> Response {
    let public = &worker.config.worker.store.public_models;
    if let Err(refusal) = authorize_fetch(fetch, peer, public, clock::now_ms()) {
        debug!(peer = %peer.short(), model = %fetch.model.short(), reason = %refusal, "model fetch refused");
        if let FetchRefusal::BadSignature(_) = refusal {
            worker.client.penalize(peer, refusal.to_string()).await;
            return Response::error(ErrorCode::BadSignature, refusal.to_string());
        }
        return Response::error(ErrorCode::NotAuthorized, refusal.to_string());
    }
    match worker
        .store
        .read_chunk(&fetch.model, fetch.offset, fetch.max_len.min(CHUNK))
    {
        Ok((total_len, bytes)) => {
            if fetch.offset == 0 {
                // Serving counts as a use for the store's eviction order.
                worker.store.touch(&fetch.model);
            }
            Response::ModelChunk(ModelChunk {
                model: fetch.model,
                total_len,
                offset: fetch.offset,
                bytes,
            })
        }
        Err(e) => Response::error(ErrorCode::NotFound, e.to_string()),
    }
}

/// Withdraws an award at the requester's request.
pub(crate) fn on_cancel(worker: &Worker, peer: &NodeId, signed: &Signed<Cancel>) -> Response {
    let Ok(cancel) = signed.verify_by(peer) else {
        return Response::error(ErrorCode::BadSignature, "cancel not signed by the sender");
    };
    if cancel.worker != worker.node_id {
        return Response::error(ErrorCode::Invalid, "cancel addressed to another worker");
    }
    let mut running = lock(&worker.running);
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
pub(crate) fn abort_all(worker: &Worker, reason: GateReason) {
    let mut running = lock(&worker.running);
    for (_, r) in running.iter_mut() {
        r.cancel.cancel();
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(Stop::Abort(reason.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(paths: &[ExecPath]) -> Vec<PathBench> {
        paths
            .iter()
            .map(|&path| PathBench {
                path,
                inferences_per_sec: 1.0,
                microjoules_per_inference: 1,
            })
            .collect()
    }

    /// Refused models survive a restart of the same engine, newest kept within the advert's
    /// limit, and are tried again when the engine changes (another version or runtime set);
    /// an unreadable record loses nothing but the list.
    #[test]
    fn unservable_models_survive_a_restart_until_the_engine_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = crank_payments::Ledger::open(&dir.path().join("ledger.redb")).unwrap();
        let cpu = engine_tag(&bench(&[ExecPath::Cpu]));
        let both = engine_tag(&bench(&[ExecPath::Cpu, ExecPath::Onnxruntime]));
        assert_ne!(cpu, both);
        assert!(
            restore_unservable(&ledger, &cpu, 8).is_empty(),
            "nothing stored"
        );
        let list: std::collections::VecDeque<(ModelId, String)> = (0..3u8)
            .map(|i| (ModelId([i; 32]), format!("op Foo{i} is not supported")))
            .collect();
        persist_unservable(&ledger, &cpu, &list);
        assert_eq!(restore_unservable(&ledger, &cpu, 8), list);
        let newest: Vec<ModelId> = restore_unservable(&ledger, &cpu, 2)
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(newest, vec![ModelId([1; 32]), ModelId([2; 32])]);
        assert!(
            restore_unservable(&ledger, &both, 8).is_empty(),
            "another engine"
        );
        ledger.put_meta(UNSERVABLE_KEY, b"{not json").unwrap();
        assert!(restore_unservable(&ledger, &cpu, 8).is_empty());
    }
}
