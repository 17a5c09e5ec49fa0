//! Our scheduler: drives the real [`crank_scheduler::Auction`] for each task, with workers that
//! answer through [`crank_scheduler::quote`] and sign what they send with their node keys.
//!
//! The driver does what the node's requester does (`node/src/requester.rs`): it selects
//! candidates from the requester's advert table with [`select_candidates`], carries the
//! auction's outputs over the simulated network, feeds every answer back through
//! [`Auction::handle`], wakes the auction at [`Auction::poll_timeout`], and records trust
//! outcomes. The workers do what the node's worker does (`node/src/worker.rs`): quote or
//! decline, keep open bids in a [`crank_scheduler::BidBook`], accept an award only when it
//! matches their bid, their gate is open and a slot is free, abort every accepted task when
//! the gate closes, and deliver a signed receipt.

use crank_protocol::{
    ContentHash, Decline, DeclineReason, Energy, EnergyMethod, ExecPath, FailureReason, GateReason,
    NamedTensor, NodeId, Signed, TaskFailure, TaskId, Tensor, TensorData, Timings, WorkReceipt,
};
use crank_scheduler::{
    Auction, CandidateQuery, FailCause, FailureExplanation, Input, Output, Preference, TaskSpec,
    quote, select_candidates,
};
use tracing::warn;

use super::device::{Device, payout_for};
use super::engine::{AuctionSide, Delivery, Ev, Shard, Side, Task};
use super::stats::ViolationKind;

/// The short category a failure is counted under: the cause, and for "no acceptable bid" or
/// "deadline passed" the most frequent reason among the peers asked.
fn category(e: &FailureExplanation) -> String {
    match &e.cause {
        FailCause::NoAcceptableBid | FailCause::DeadlinePassed => match e.reasons.first() {
            Some(r) => format!("{}: {}", e.cause, r.reason),
            None => e.cause.to_string(),
        },
        other => other.to_string(),
    }
}

/// Inputs of `elements` elements, for an award: the simulation carries no real data, but a
/// worker checks that an award carries as many input elements as it bid for.
fn stand_in_inputs(elements: u64) -> Vec<NamedTensor> {
    let n = usize::try_from(elements).unwrap_or(usize::MAX);
    vec![NamedTensor {
        name: "input".into(),
        tensor: Tensor {
            shape: vec![elements],
            data: TensorData::U8(vec![0; n]),
        },
    }]
}

fn decline(d: &Device, task_id: TaskId, reason: DeclineReason) -> Option<Signed<Decline>> {
    let body = Decline {
        task_id,
        worker: d.node,
        reason,
    };
    match Signed::sign(body, &d.identity) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot sign a decline");
            None
        }
    }
}

/// What the driver must do after popping one output.
enum Step {
    Call {
        round: u32,
        to: Vec<NodeId>,
    },
    Award {
        to: NodeId,
        price: u64,
        bid: u64,
        max: u64,
    },
    Cancel {
        to: NodeId,
    },
    Trust(NodeId, crank_scheduler::TaskOutcome),
    Observed(crank_scheduler::Observation),
    Completed {
        price: u64,
        ask: u64,
    },
    Failed(FailureExplanation),
}

impl Shard<'_> {
    pub(crate) fn auction_arrival(&mut self, ix: u32, mut task: Task, pref: Preference) {
        let now = self.now;
        let r = task.draw.requester as usize;
        let spec = TaskSpec {
            task_id: task.task_id,
            requester: self.requesters[r].node,
            model: task.model_id,
            model_bytes: task.model_bytes,
            input_hash: task.input_hash,
            input_elements: task.elements,
            nonce: task.nonce,
            payer: payout_for(&self.requesters[r].node),
            max_price_stroops: self.cfg.workload.max_price_stroops,
            deadline: task.deadline,
            bid_window_ms: self.cfg.workload.bid_window_ms,
            weights: pref.weights(),
        };
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&task.task_id.0[..8]);
        let no_providers = std::collections::BTreeSet::new();
        let candidates = {
            let req = &self.requesters[r];
            let devices = &self.devices;
            let query = CandidateQuery {
                requester: req.node,
                model: task.model_id,
                model_bytes: task.model_bytes,
                providers: &no_providers,
                weights: spec.weights,
                k: self.cfg.auction.fanout,
                limit: self.cfg.auction.max_candidates,
                explore: self.cfg.explore,
                seed: u64::from_le_bytes(seed),
            };
            // A replica or third run never goes to a worker that already answered.
            let avoid = task.check.as_ref().map_or(&[][..], |c| &c.avoid[..]);
            let adverts = req
                .view
                .iter()
                .map(|s| &devices[*s as usize].advert)
                .filter(|a| !avoid.contains(&a.node));
            select_candidates(adverts, &query, &req.trust, now)
        };
        match Auction::new(
            spec,
            self.cfg.auction.clone(),
            &candidates,
            &self.requesters[r].trust,
            now,
        ) {
            Ok(auction) => {
                task.side = Side::Auction(Box::new(AuctionSide {
                    auction,
                    cfbs: Vec::new(),
                    delivery: None,
                }));
                self.tasks.insert(ix, task);
                self.pump(ix);
            }
            Err(e) => {
                self.tasks.insert(ix, task);
                self.fail(ix, "task terms rejected".into(), e.to_string());
            }
        }
    }

    /// Pops one output of a task's auction and turns it into a driver step.
    fn next_step(&mut self, ix: u32) -> Option<Step> {
        let t = self.tasks.get_mut(&ix)?;
        let Side::Auction(a) = &mut t.side else {
            return None;
        };
        let out = a.auction.poll_output()?;
        Some(match out {
            Output::SendCallForBids { round, to, cfb } => {
                let r = round as usize;
                while a.cfbs.len() < r {
                    a.cfbs.push(cfb.clone());
                }
                if r > 0 {
                    a.cfbs[r - 1] = cfb;
                }
                Step::Call { round, to }
            }
            Output::SendAward { to, price_stroops } => {
                let bid = a
                    .auction
                    .trace()
                    .awards
                    .last()
                    .map_or(0, |w| w.bid_price_stroops);
                Step::Award {
                    to,
                    price: price_stroops,
                    bid,
                    max: a.auction.spec().max_price_stroops,
                }
            }
            Output::SendCancel { to } => Step::Cancel { to },
            Output::Trust { peer, outcome } => Step::Trust(peer, outcome),
            Output::Observed(obs) => Step::Observed(obs),
            Output::Completed { price_stroops, .. } => {
                let ask = a
                    .auction
                    .trace()
                    .awards
                    .last()
                    .map_or(price_stroops, |w| w.bid_price_stroops);
                Step::Completed {
                    price: price_stroops,
                    ask,
                }
            }
            Output::Failed(e) => Step::Failed(e),
        })
    }

    /// Carries out everything the auction asks, then sets its timer.
    pub(crate) fn pump(&mut self, ix: u32) {
        let mut end: Option<Step> = None;
        while let Some(step) = self.next_step(ix) {
            match step {
                Step::Call { round, to } => {
                    for node in to {
                        self.send(ix, node, |slot, era, node| Ev::Call {
                            task: ix,
                            slot,
                            era,
                            node,
                            round,
                        });
                    }
                }
                Step::Award {
                    to,
                    mut price,
                    bid,
                    max,
                } => {
                    if self.cfg.faults.overpay_awards {
                        price += max;
                    }
                    if price > max || price < bid {
                        let detail =
                            format!("task {ix}: award at {price} with bid {bid} and max {max}");
                        self.violate(ViolationKind::AwardOutOfRange, detail);
                    }
                    let attempt = self.tasks.get_mut(&ix).map_or(0, |t| {
                        t.attempts += 1;
                        t.attempts
                    });
                    self.stats.attempts += 1;
                    self.send(ix, to, |slot, era, node| Ev::Award {
                        task: ix,
                        slot,
                        era,
                        node,
                        price,
                        attempt,
                    });
                }
                Step::Cancel { to } => {
                    if let Some(&(slot, era)) = self.by_node.get(&to) {
                        let delay = self.delay(slot);
                        self.push(
                            self.now + delay,
                            Ev::Cancel {
                                task: ix,
                                slot,
                                era,
                            },
                        );
                    }
                }
                Step::Observed(obs) => {
                    if let Some(t) = self.tasks.get(&ix) {
                        let r = t.draw.requester as usize;
                        let now = self.now;
                        if self.requesters[r]
                            .trust
                            .record_observation(&obs, now)
                            .is_some()
                        {
                            self.stats.overclaims += 1;
                        }
                    }
                }
                Step::Trust(peer, outcome) => {
                    if let Some(t) = self.tasks.get(&ix) {
                        let r = t.draw.requester as usize;
                        let now = self.now;
                        self.requesters[r].trust.record(peer, outcome, now);
                    }
                }
                terminal @ (Step::Completed { .. } | Step::Failed(_)) => end = Some(terminal),
            }
        }
        match end {
            Some(Step::Completed { price, ask }) => {
                let delivery = self.tasks.get_mut(&ix).and_then(|t| match &mut t.side {
                    Side::Auction(a) => a.delivery.take(),
                    Side::Baseline(_) => None,
                });
                self.complete(ix, price, ask, delivery);
            }
            Some(Step::Failed(e)) => {
                if self.cfg.faults.forget_failures {
                    self.forget(ix);
                } else {
                    self.fail(ix, category(&e), e.to_string());
                }
            }
            _ => {
                let Some(t) = self.tasks.get_mut(&ix) else {
                    return;
                };
                let Side::Auction(a) = &mut t.side else {
                    return;
                };
                a.delivery = None;
                let next = a.auction.poll_timeout();
                if next != t.timer_at {
                    t.timer_at = next;
                    if let Some(at) = next {
                        self.push(at, Ev::Timer { task: ix, at });
                    }
                }
            }
        }
    }

    /// Sends a message to a node: it arrives after the network delay, or the auction hears
    /// "no answer" when the node is unknown.
    fn send(&mut self, ix: u32, node: NodeId, ev: impl FnOnce(u32, u32, NodeId) -> Ev) {
        match self.by_node.get(&node).copied() {
            Some((slot, era)) => {
                let delay = self.delay(slot);
                self.push(self.now + delay, ev(slot, era, node));
            }
            None => self.no_answer(ix, node),
        }
    }

    fn no_answer(&mut self, ix: u32, peer: NodeId) {
        let at = self.now + self.cfg.unreachable_ms;
        self.push(
            at,
            Ev::Answer {
                task: ix,
                input: Box::new(Input::NoAnswer { peer }),
                delivery: None,
            },
        );
    }

    fn answer(&mut self, ix: u32, slot: u32, input: Input, delivery: Option<Delivery>) {
        self.stats.signed += u64::from(!matches!(
            input,
            Input::NoAnswer { .. } | Input::AwardAccepted { .. }
        ));
        let delay = self.delay(slot);
        self.push(
            self.now + delay,
            Ev::Answer {
                task: ix,
                input: Box::new(input),
                delivery,
            },
        );
    }

    /// A call for bids reaches a worker: it quotes or declines, signed.
    pub(crate) fn on_call(&mut self, ix: u32, slot: u32, era: u32, node: NodeId, round: u32) {
        let Some(t) = self.tasks.get(&ix) else {
            return;
        };
        let Side::Auction(a) = &t.side else { return };
        let Some(cfb) = a.cfbs.get((round as usize).saturating_sub(1)).cloned() else {
            return;
        };
        let d = &self.devices[slot as usize];
        if d.era != era || !d.online() {
            self.no_answer(ix, node);
            return;
        }
        let now = self.now;
        let factor = self.cfg.liars.factor;
        let d = &mut self.devices[slot as usize];
        d.refresh_worker_state(now);
        let input = match quote(&cfb, &d.worker, &d.cost, now) {
            Ok(mut bid) => {
                if d.liar && factor > 1.0 {
                    // Truncating a positive quotient is the point: the claim shrinks.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    {
                        bid.est_latency_ms =
                            ((f64::from(bid.est_latency_ms) / factor) as u32).max(1);
                        bid.est_energy_mj = (bid.est_energy_mj as f64 / factor) as u64;
                    }
                }
                d.bids.remove(&bid.task_id);
                if d.bids.insert(cfb.requester, bid.clone(), now).is_ok() {
                    match Signed::sign(bid, &d.identity) {
                        Ok(bid) => Some(Input::Bid { from: d.node, bid }),
                        Err(e) => {
                            warn!(error = %e, "cannot sign a bid");
                            None
                        }
                    }
                } else {
                    let reason = DeclineReason::QueueFull {
                        queued: d.worker.queue.queued,
                        slots: d.worker.queue.slots,
                    };
                    decline(d, cfb.task_id, reason).map(|decline| Input::Decline {
                        from: d.node,
                        decline,
                    })
                }
            }
            Err(reason) => decline(d, cfb.task_id, reason).map(|decline| Input::Decline {
                from: d.node,
                decline,
            }),
        };
        match input {
            Some(input) => self.answer(ix, slot, input, None),
            None => self.no_answer(ix, node),
        }
    }

    /// An award reaches a worker: accept it when it matches an open bid, the gate is open and
    /// a slot is free; otherwise decline, signed.
    pub(crate) fn on_award(
        &mut self,
        ix: u32,
        slot: u32,
        era: u32,
        node: NodeId,
        price: u64,
        attempt: u32,
    ) {
        let d = &self.devices[slot as usize];
        if d.era != era || !d.online() {
            self.no_answer(ix, node);
            return;
        }
        let Some(t) = self.tasks.get(&ix) else {
            return;
        };
        let Side::Auction(a) = &t.side else { return };
        let award = a
            .auction
            .award_message(node, price, stand_in_inputs(t.elements));
        let now = self.now;
        let obeys_gate = !self.cfg.faults.workers_ignore_gate;
        let d = &mut self.devices[slot as usize];
        let verdict = d.bids.take_for_award(&award, now).and_then(|bid| {
            if obeys_gate && let Some(reason) = &d.gate {
                return Err(DeclineReason::Gate {
                    reason: reason.clone(),
                });
            }
            if d.jobs.len() >= usize::from(d.slots) {
                return Err(DeclineReason::QueueFull {
                    queued: u16::try_from(d.jobs.len()).unwrap_or(u16::MAX),
                    slots: d.slots,
                });
            }
            Ok(bid.path)
        });
        match verdict {
            Ok(path) => {
                self.answer(ix, slot, Input::AwardAccepted { from: node }, None);
                self.accept_job(slot, ix, attempt, path, price);
            }
            Err(reason) => {
                let d = &self.devices[slot as usize];
                match decline(d, award.task_id, reason) {
                    Some(decline) => self.answer(
                        ix,
                        slot,
                        Input::AwardRejected {
                            from: node,
                            decline,
                        },
                        None,
                    ),
                    None => self.no_answer(ix, node),
                }
            }
        }
    }

    /// A run finished: the worker signs its receipt and sends the result.
    pub(crate) fn deliver_receipt(
        &mut self,
        slot: u32,
        job: &super::device::Job,
        delivery: Delivery,
    ) {
        let requester = self.requesters[job.requester as usize].node;
        let now = self.now;
        let d = &mut self.devices[slot as usize];
        let pair = d.pairs.entry(job.requester).or_insert((0, 0));
        pair.0 += 1;
        pair.1 += job.price;
        let (pair_seq, cumulative) = *pair;
        // The outputs depend on the model, the input and which answer the worker gave, not on
        // the task id: a replica of the same input that answers alike hashes alike.
        let mut out = job.model_id.0.to_vec();
        out.extend_from_slice(&job.input_hash.0);
        out.extend_from_slice(&delivery.answer.to_le_bytes());
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let microjoules = (job.energy_uj.round() as u64).max(1);
        let receipt = WorkReceipt {
            task_id: job.task_id,
            requester,
            worker: d.node,
            model: job.model_id,
            input_hash: job.input_hash,
            output_hash: ContentHash::of(&out),
            price_stroops: job.price,
            energy: Energy {
                microjoules,
                method: if job.path == ExecPath::Gpu {
                    EnergyMethod::GpuCounter
                } else {
                    EnergyMethod::CpuTimeEstimate
                },
            },
            path: job.path,
            timings: Timings {
                accepted_at: job.accepted_at,
                started_at: job.started_at.unwrap_or(job.accepted_at),
                finished_at: now,
                run_micros: job.run_ms * 1000,
            },
            pair_seq,
            cumulative_stroops: cumulative,
            payout: d.worker.payout.clone(),
            payer: payout_for(&requester),
        };
        let from = d.node;
        match Signed::sign(receipt, &d.identity) {
            Ok(receipt) => self.answer(
                job.task,
                slot,
                Input::Result { from, receipt },
                Some(delivery),
            ),
            Err(e) => warn!(error = %e, "cannot sign a receipt"),
        }
    }

    /// The gate closed: every accepted task is aborted and reported, signed.
    pub(crate) fn abort_all(&mut self, slot: u32, reason: &GateReason) {
        while !self.devices[slot as usize].jobs.is_empty() {
            let job = self.drop_job(slot, 0);
            self.stats.aborted += 1;
            if !self.tasks.contains_key(&job.task) {
                continue;
            }
            let d = &self.devices[slot as usize];
            let failure = TaskFailure {
                task_id: job.task_id,
                requester: self.requesters[job.requester as usize].node,
                worker: d.node,
                reason: FailureReason::Aborted {
                    reason: reason.clone(),
                },
            };
            let from = d.node;
            match Signed::sign(failure, &d.identity) {
                Ok(failure) => {
                    self.answer(job.task, slot, Input::WorkerFailed { from, failure }, None);
                }
                Err(e) => warn!(error = %e, "cannot sign a failure report"),
            }
        }
    }

    /// An answer reaches the requester: the auction judges it.
    pub(crate) fn on_answer(&mut self, ix: u32, input: Input, delivery: Option<Delivery>) {
        let now = self.now;
        let Some(t) = self.tasks.get_mut(&ix) else {
            return;
        };
        let Side::Auction(a) = &mut t.side else {
            return;
        };
        if delivery.is_some() {
            a.delivery = delivery;
        }
        // A rejected answer (late, not awarded, …) changes nothing; the auction says why in
        // its trace.
        let _ = a.auction.handle(input, now);
        self.pump(ix);
    }

    pub(crate) fn auction_timer(&mut self, ix: u32) {
        let now = self.now;
        if let Some(t) = self.tasks.get_mut(&ix)
            && let Side::Auction(a) = &mut t.side
        {
            a.auction.handle_timeout(now);
        }
        self.pump(ix);
    }
}
