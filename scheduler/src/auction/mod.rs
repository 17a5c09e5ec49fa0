//! The requester's side of the reverse auction, as a sans-IO state machine.
//!
//! The driver (the node's event loop) owns the network and the timers. It creates an
//! [`Auction`], feeds it what happens with [`Auction::handle`] and the passing of time with
//! [`Auction::handle_timeout`], and carries out what [`Auction::poll_output`] asks: send a call
//! for bids, an award or a cancel; record an outcome in the trust book; report the end.
//! [`Auction::poll_timeout`] says when the driver must next call `handle_timeout`.
//!
//! ```text
//!  new ──▶ Collecting(round 1) ──all answered or window closed──▶ pick the best usable bid
//!              ▲                                                   │            │ none left
//!              │ next K candidates (re-auction)                    ▼            ▼
//!              └───────────── none usable ◀── Awarded ──accepted──▶ Running    next round,
//!                                              │ rejected, no        │ failed,   or Failed
//!                                              │ answer, timeout     │ timeout   when nobody
//!                                              └──▶ next usable bid ◀┘           is left
//!                          Running ──result──▶ Completed;  deadline ──▶ Failed (everywhere)
//! ```
//!
//! Every input is checked here: signatures, the sender being a peer that was asked (or the
//! current award holder), the task id, expiry, the max price, the bid window and the deadline.
//! An input that does not fit returns an [`InputError`] (so the driver can penalise the peer)
//! and changes nothing else. Every auction ends in [`Output::Completed`] or
//! [`Output::Failed`], at the latest when its deadline passes.

pub mod trace;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crank_protocol::validate::looks_like_stellar_account;
use crank_protocol::{
    Award, Bid, CallForBids, Cancel, ContentHash, Decline, DeclineReason, ExecPath, FailureReason,
    ModelId, NamedTensor, NodeId, SignatureError, Signed, TaskFailure, TaskId, UnixMillis,
    WorkReceipt,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::claims::{Measured, Observation};
use crate::score::{PayTerms, PaymentRule, Score, Weights, WeightsError, award_price, score};
use crate::trust::{TaskOutcome, TrustBook};
use trace::{
    Answer, AnswerTrace, AuctionTrace, AwardEnd, AwardTrace, FailCause, FailureExplanation,
    NO_ANSWER, Rejection, RoundTrace, RunnerUp, TraceOutcome,
};

/// What the requester wants done, and on what terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task.
    pub task_id: TaskId,
    /// This node.
    pub requester: NodeId,
    /// The model to run.
    pub model: ModelId,
    /// Its size, bytes.
    pub model_bytes: u64,
    /// Hash of the inputs the award will carry.
    pub input_hash: ContentHash,
    /// Elements over all inputs.
    pub input_elements: u64,
    /// The nonce the task id was derived with (sent so workers can re-derive it).
    pub nonce: [u8; 16],
    /// The Stellar account the requester pays from.
    pub payer: String,
    /// Highest price the requester pays, stroops.
    pub max_price_stroops: u64,
    /// The result must arrive before this time.
    pub deadline: UnixMillis,
    /// How long each round of bidding stays open, ms.
    pub bid_window_ms: u64,
    /// Scoring weights.
    pub weights: Weights,
}

/// Settings shared by all auctions of a node; `Default` documents the values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuctionConfig {
    /// Peers asked per round (K). Default 5.
    pub fanout: usize,
    /// Candidates kept for later rounds; extra ones are dropped. Default 64.
    pub max_candidates: usize,
    /// Time a winner has to accept an award, ms. Default 3000.
    pub award_ack_ms: u64,
    /// After acceptance, a result is due within this percentage of the bid's latency
    /// estimate, plus `result_grace_ms` (and always before the deadline). Default 300 %.
    pub result_slack_percent: u32,
    /// Added to the result allowance, ms. Default 2000.
    pub result_grace_ms: u64,
    /// How the winner's price is set. Default pay-as-bid.
    pub payment: PaymentRule,
}

impl Default for AuctionConfig {
    fn default() -> Self {
        Self {
            fanout: 5,
            max_candidates: 64,
            award_ack_ms: 3_000,
            result_slack_percent: 300,
            result_grace_ms: 2_000,
            payment: PaymentRule::PayAsBid,
        }
    }
}

/// Why an auction could not be created.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The scoring weights are unusable.
    #[error("invalid weights: {0}")]
    Weights(#[from] WeightsError),
    /// The deadline is not in the future.
    #[error("deadline {deadline} is not after now ({now})")]
    DeadlinePassed {
        /// The deadline.
        deadline: UnixMillis,
        /// Now.
        now: UnixMillis,
    },
    /// The bid window is zero.
    #[error("bid window must be at least 1 ms")]
    ZeroBidWindow,
    /// The task has no input.
    #[error("task has no input elements")]
    NoInput,
    /// A setting of [`AuctionConfig`] is zero where it must not be.
    #[error("auction setting `{0}` must be at least 1")]
    ZeroSetting(&'static str),
}

/// Something that happened, fed to [`Auction::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A peer answered the call for bids with a bid.
    Bid {
        /// The peer that answered.
        from: NodeId,
        /// Its bid.
        bid: Signed<Bid>,
    },
    /// A peer answered the call for bids with a decline.
    Decline {
        /// The peer that answered.
        from: NodeId,
        /// Its decline.
        decline: Signed<Decline>,
    },
    /// A request to `peer` failed or was answered with a protocol error. For a peer asked
    /// for a bid: it did not answer. For the award holder: it cannot be reached, so the award
    /// is withdrawn and the task re-awarded. About anyone else (a failed cancel): nothing.
    NoAnswer {
        /// The peer.
        peer: NodeId,
    },
    /// The winner accepted the award.
    AwardAccepted {
        /// The peer that accepted.
        from: NodeId,
    },
    /// The winner declined the award.
    AwardRejected {
        /// The peer that declined.
        from: NodeId,
        /// Its decline.
        decline: Signed<Decline>,
    },
    /// The worker reported that the task failed. A failure another worker could avoid
    /// ([`FailureReason::retryable`]) re-awards the task; a model the worker's runtime refused
    /// goes to a bid on another engine path when there is one; otherwise the task fails.
    WorkerFailed {
        /// The worker.
        from: NodeId,
        /// Its report.
        failure: Signed<TaskFailure>,
    },
    /// The worker delivered a result whose outputs the driver checked against the receipt
    /// (`crank_protocol::validate::task_result`). A receipt that does not verify or does not
    /// match the award (task, parties, model, inputs, price) is refused with an error, and the
    /// task is re-awarded: the worker will not send another.
    Result {
        /// The worker.
        from: NodeId,
        /// Its signed receipt.
        receipt: Signed<WorkReceipt>,
    },
    /// The submitter's placement policy leaves out the bid `from` made (the driver judges a
    /// bid before handing it in): the peer counts as answered and is not awarded.
    Excluded {
        /// The bidder.
        from: NodeId,
        /// The policy's reason.
        reason: String,
    },
    /// The award holder's result failed the driver's own checks (outputs that do not match
    /// the receipt's hash, malformed tensors): the task is re-awarded.
    ResultInvalid {
        /// The worker.
        from: NodeId,
        /// What was wrong, for the trace.
        reason: String,
    },
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Sign `cfb` and send it to each peer in `to` (round 1 is the first call; later rounds
    /// are re-auctions among the next candidates).
    SendCallForBids {
        /// The round.
        round: u32,
        /// Peers to ask, best-ranked first.
        to: Vec<NodeId>,
        /// The call.
        cfb: CallForBids,
    },
    /// Build, sign and send an award with the inputs to `to` at `price_stroops`.
    SendAward {
        /// The winner.
        to: NodeId,
        /// The price, within `[its bid, max price]`.
        price_stroops: u64,
    },
    /// Withdraw the award from `to`.
    SendCancel {
        /// The worker.
        to: NodeId,
    },
    /// Record what was measured of a completed task in the trust book
    /// ([`TrustBook::record_observation`]); emitted just before [`Output::Completed`].
    Observed(Observation),
    /// Record an outcome in the trust book.
    Trust {
        /// The worker.
        peer: NodeId,
        /// What it did.
        outcome: TaskOutcome,
    },
    /// The task is done: counter-sign the receipt and hand the outputs over.
    Completed {
        /// The worker.
        worker: NodeId,
        /// The price owed, stroops.
        price_stroops: u64,
    },
    /// The task failed.
    Failed(FailureExplanation),
}

/// Why an input was not acted on. The auction's state is unchanged apart from noting a bad
/// answer from a peer that was asked (so it is not waited for again).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// The auction has ended.
    #[error("auction for task {0:?} has ended")]
    Finished(TaskId),
    /// The peer was never asked for a bid.
    #[error("peer {0:?} was not asked for a bid")]
    NotAsked(NodeId),
    /// The peer answered already.
    #[error("peer {0:?} answered already")]
    AlreadyAnswered(NodeId),
    /// The bid (or decline) was not accepted.
    #[error("answer from {peer:?} rejected: {reason}")]
    Rejected {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: Rejection,
    },
    /// A signature did not verify.
    #[error("message from {peer:?}: {source}")]
    Signature {
        /// The peer.
        peer: NodeId,
        /// What is wrong.
        source: SignatureError,
    },
    /// The message is for another task or names other parties.
    #[error("message from {peer:?} does not belong to this task: {field} differs")]
    Mismatch {
        /// The peer.
        peer: NodeId,
        /// The field that differs.
        field: &'static str,
    },
    /// The peer holds no current award.
    #[error("peer {0:?} holds no current award")]
    NotAwarded(NodeId),
    /// The award holder said something that does not fit the award's state.
    #[error("unexpected {what} from {peer:?}")]
    Unexpected {
        /// The peer.
        peer: NodeId,
        /// What it sent.
        what: &'static str,
    },
}

/// Where the auction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for answers to a call for bids.
    Collecting {
        /// The round.
        round: u32,
        /// When its window closes.
        closes_at: UnixMillis,
    },
    /// An award was sent; waiting for acceptance.
    Awarded {
        /// The winner.
        worker: NodeId,
        /// Its price.
        price_stroops: u64,
    },
    /// The winner accepted; waiting for the result.
    Running {
        /// The worker.
        worker: NodeId,
        /// Its price.
        price_stroops: u64,
    },
    /// Done with a result.
    Completed {
        /// The worker.
        worker: NodeId,
        /// Its price.
        price_stroops: u64,
    },
    /// Done without a result.
    Failed,
}

#[derive(Debug, Clone)]
struct BidEntry {
    bid: Bid,
    score: Score,
    /// What this node measured of the bidder on this model and the bid's path, if anything;
    /// it replaces the bid's claims in the score.
    measured: Option<Measured>,
}

impl BidEntry {
    /// The latency the auction counts on: measured when known, else claimed.
    fn latency_ms(&self) -> u64 {
        self.measured
            .map_or(u64::from(self.bid.est_latency_ms), |m| m.latency_ms)
    }
}

#[derive(Debug, Clone)]
enum PeerState {
    NotAsked,
    Pending { round: u32 },
    NoAnswer { round: u32 },
    Declined(DeclineReason),
    Rejected(Rejection),
    Bid(BidEntry),
    Tried(BidEntry, Option<AwardEnd>),
}

#[derive(Debug, Clone)]
struct Peer {
    node: NodeId,
    trust: f64,
    /// What this node measured of the peer on the task's model at its size, per path.
    measured: BTreeMap<ExecPath, Measured>,
    state: PeerState,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Collecting {
        round: u32,
        closes_at: UnixMillis,
        pending: usize,
    },
    Awarded {
        peer: usize,
        price: u64,
        accept_by: UnixMillis,
    },
    Running {
        peer: usize,
        price: u64,
        result_by: UnixMillis,
        /// When the acceptance arrived: award to acceptance is one round trip.
        accepted_at: UnixMillis,
    },
    Completed {
        peer: usize,
        price: u64,
    },
    Failed,
}

/// One task's reverse auction. See the module docs.
#[derive(Debug, Clone)]
pub struct Auction {
    spec: TaskSpec,
    config: AuctionConfig,
    peers: Vec<Peer>,
    index: BTreeMap<NodeId, usize>,
    next_candidate: usize,
    round: u32,
    phase: Phase,
    now: UnixMillis,
    outputs: VecDeque<Output>,
    trace: AuctionTrace,
    /// Engine paths whose runtime refused the model in this auction; their bids are not
    /// awarded again.
    refused_paths: BTreeSet<ExecPath>,
}

impl Auction {
    /// Starts an auction among `candidates` (best first, as from
    /// [`crate::select_candidates`]), with trust figures taken from `trust` now.
    ///
    /// The requester itself and repeated candidates are dropped, and at most
    /// `config.max_candidates` are kept. The first output is the call for bids to the first
    /// K candidates, or `Failed` when there are none.
    pub fn new(
        spec: TaskSpec,
        config: AuctionConfig,
        candidates: &[NodeId],
        trust: &TrustBook,
        now: UnixMillis,
    ) -> Result<Self, SpecError> {
        spec.weights.validate()?;
        if spec.deadline <= now {
            return Err(SpecError::DeadlinePassed {
                deadline: spec.deadline,
                now,
            });
        }
        if spec.bid_window_ms == 0 {
            return Err(SpecError::ZeroBidWindow);
        }
        if spec.input_elements == 0 {
            return Err(SpecError::NoInput);
        }
        // Zero timers would time every award out in the same step that made it.
        for (name, value) in [
            ("fanout", config.fanout as u64),
            ("max_candidates", config.max_candidates as u64),
            ("award_ack_ms", config.award_ack_ms),
            ("result_grace_ms", config.result_grace_ms),
        ] {
            if value == 0 {
                return Err(SpecError::ZeroSetting(name));
            }
        }
        let mut peers = Vec::new();
        let mut index = BTreeMap::new();
        for node in candidates {
            if peers.len() >= config.max_candidates {
                break;
            }
            if *node == spec.requester || index.contains_key(node) {
                continue;
            }
            index.insert(*node, peers.len());
            peers.push(Peer {
                node: *node,
                trust: trust.score(node),
                measured: trust
                    .claims()
                    .measured_paths(node, &spec.model, spec.input_elements),
                state: PeerState::NotAsked,
            });
        }
        let trace = AuctionTrace {
            task_id: spec.task_id,
            weights: spec.weights,
            payment: config.payment,
            max_price_stroops: spec.max_price_stroops,
            started_at: now,
            deadline: spec.deadline,
            candidates: peers.iter().map(|p| p.node).collect(),
            rounds: Vec::new(),
            answers: Vec::new(),
            awards: Vec::new(),
            outcome: None,
        };
        let mut auction = Self {
            spec,
            config,
            peers,
            index,
            next_candidate: 0,
            round: 0,
            phase: Phase::Failed,
            now,
            outputs: VecDeque::new(),
            trace,
            refused_paths: BTreeSet::new(),
        };
        auction.start_round();
        auction.step();
        Ok(auction)
    }

    /// The award message for an [`Output::SendAward`], to be signed by the node identity.
    pub fn award_message(&self, to: NodeId, price_stroops: u64, inputs: Vec<NamedTensor>) -> Award {
        Award {
            task_id: self.spec.task_id,
            requester: self.spec.requester,
            worker: to,
            price_stroops,
            model: self.spec.model,
            model_bytes: self.spec.model_bytes,
            inputs,
            input_hash: self.spec.input_hash,
            nonce: self.spec.nonce,
            payer: self.spec.payer.clone(),
            deadline: self.spec.deadline,
        }
    }

    /// The cancel message for an [`Output::SendCancel`], to be signed by the node identity.
    pub fn cancel_message(&self, to: NodeId) -> Cancel {
        Cancel {
            task_id: self.spec.task_id,
            requester: self.spec.requester,
            worker: to,
        }
    }

    /// The task this auction is for.
    pub fn task_id(&self) -> TaskId {
        self.spec.task_id
    }

    /// The task spec.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// Where the auction stands.
    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Collecting {
                round, closes_at, ..
            } => Status::Collecting { round, closes_at },
            Phase::Awarded { peer, price, .. } => Status::Awarded {
                worker: self.peers[peer].node,
                price_stroops: price,
            },
            Phase::Running { peer, price, .. } => Status::Running {
                worker: self.peers[peer].node,
                price_stroops: price,
            },
            Phase::Completed { peer, price } => Status::Completed {
                worker: self.peers[peer].node,
                price_stroops: price,
            },
            Phase::Failed => Status::Failed,
        }
    }

    /// Whether the auction has ended (completed or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Completed { .. } | Phase::Failed)
    }

    /// The record of everything so far.
    pub fn trace(&self) -> &AuctionTrace {
        &self.trace
    }

    /// The next action for the driver, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the driver must next call [`Auction::handle_timeout`]; None once finished.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        let timer = match self.phase {
            Phase::Collecting { closes_at, .. } => closes_at,
            Phase::Awarded { accept_by, .. } => accept_by,
            Phase::Running { result_by, .. } => result_by,
            Phase::Completed { .. } | Phase::Failed => return None,
        };
        Some(timer.min(self.spec.deadline))
    }

    /// Lets time pass: closes bid windows, times out awards and results, fails the task at
    /// its deadline.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        self.advance_clock(now);
        self.step();
    }

    /// Feeds one input. Timers due at `now` fire first, so a bid that arrives after its
    /// window is late even if the driver has not called `handle_timeout` yet.
    pub fn handle(&mut self, input: Input, now: UnixMillis) -> Result<(), InputError> {
        self.advance_clock(now);
        self.step();
        if self.is_finished() {
            return Err(InputError::Finished(self.spec.task_id));
        }
        let result = match input {
            Input::Bid { from, bid } => self.on_bid(from, &bid),
            Input::Decline { from, decline } => self.on_decline(from, &decline),
            Input::NoAnswer { peer } => {
                self.on_no_answer(peer);
                Ok(())
            }
            Input::AwardAccepted { from } => self.on_accepted(from),
            Input::AwardRejected { from, decline } => self.on_rejected(from, &decline),
            Input::WorkerFailed { from, failure } => self.on_failed(from, &failure),
            Input::Result { from, receipt } => self.on_result(from, &receipt),
            Input::ResultInvalid { from, reason } => self.on_result_invalid(from, reason),
            Input::Excluded { from, reason } => self.on_excluded(from, reason),
        };
        self.step();
        result
    }

    fn advance_clock(&mut self, now: UnixMillis) {
        // A clock that goes backwards (a driver bug) must not reopen a closed window.
        self.now = self.now.max(now);
    }

    fn peer_index(&self, node: &NodeId) -> Result<usize, InputError> {
        self.index
            .get(node)
            .copied()
            .ok_or(InputError::NotAsked(*node))
    }

    fn note_answer(&mut self, i: usize, round: u32, answer: Answer) {
        self.trace.answers.push(AnswerTrace {
            peer: self.peers[i].node,
            round,
            at: self.now,
            answer,
        });
    }

    /// Marks the answer of an asked peer as not usable, and returns the matching error.
    fn reject(&mut self, i: usize, reason: Rejection) -> InputError {
        let peer = self.peers[i].node;
        let round = match self.peers[i].state {
            PeerState::Pending { round } => {
                self.answered_pending(round);
                Some(round)
            }
            PeerState::NoAnswer { round } => Some(round),
            _ => None,
        };
        if let Some(round) = round {
            self.peers[i].state = PeerState::Rejected(reason.clone());
            self.note_answer(
                i,
                round,
                Answer::Rejected {
                    reason: reason.clone(),
                },
            );
        }
        debug!(task = %self.spec.task_id.short(), peer = %peer.short(), reason = %reason, "answer rejected");
        InputError::Rejected { peer, reason }
    }

    fn answered_pending(&mut self, round: u32) {
        if let Phase::Collecting {
            round: current,
            pending,
            ..
        } = &mut self.phase
            && *current == round
        {
            *pending = pending.saturating_sub(1);
        }
    }

    /// Checks that `i` may still answer the call for bids; returns its round.
    fn awaiting_answer(&self, i: usize) -> Result<u32, InputError> {
        match self.peers[i].state {
            PeerState::Pending { round } | PeerState::NoAnswer { round } => Ok(round),
            PeerState::NotAsked => Err(InputError::NotAsked(self.peers[i].node)),
            _ => Err(InputError::AlreadyAnswered(self.peers[i].node)),
        }
    }

    fn on_bid(&mut self, from: NodeId, signed: &Signed<Bid>) -> Result<(), InputError> {
        let i = self.peer_index(&from)?;
        let round = self.awaiting_answer(i)?;
        if signed.verify_by(&from).is_err() {
            return Err(self.reject(i, Rejection::BadSignature));
        }
        let bid = &signed.body;
        if bid.task_id != self.spec.task_id {
            return Err(self.reject(i, Rejection::WrongTask));
        }
        if bid.worker != from {
            return Err(self.reject(i, Rejection::WrongWorker));
        }
        let s = &self.spec;
        if bid.model != s.model
            || bid.model_bytes != s.model_bytes
            || bid.input_hash != s.input_hash
            || bid.input_elements != s.input_elements
        {
            return Err(self.reject(i, Rejection::OtherWork));
        }
        if let PeerState::NoAnswer { .. } = self.peers[i].state {
            let closed_at = self
                .trace
                .rounds
                .iter()
                .find(|r| r.round == round)
                .and_then(|r| r.closed_at)
                .unwrap_or(self.now);
            return Err(self.reject(i, Rejection::Late { closed_at }));
        }
        if bid.valid_until <= self.now {
            return Err(self.reject(
                i,
                Rejection::Expired {
                    valid_until: bid.valid_until,
                },
            ));
        }
        if bid.price_stroops > self.spec.max_price_stroops {
            return Err(self.reject(
                i,
                Rejection::AboveMaxPrice {
                    price_stroops: bid.price_stroops,
                    max_price_stroops: self.spec.max_price_stroops,
                },
            ));
        }
        let measured = self.peers[i].measured.get(&bid.path).copied();
        let latency_ms = measured.map_or(u64::from(bid.est_latency_ms), |m| m.latency_ms);
        if !self.fits_deadline(latency_ms) {
            return Err(self.reject(
                i,
                Rejection::TooSlow {
                    est_latency_ms: u32::try_from(latency_ms).unwrap_or(u32::MAX),
                    remaining_ms: self.spec.deadline.saturating_sub(self.now),
                },
            ));
        }
        if !looks_like_stellar_account(&bid.payout) {
            return Err(self.reject(i, Rejection::BadPayout));
        }
        let trust = self.peers[i].trust;
        // Claims count only until this node has measured the peer on this model and path.
        let (latency, energy) = measured
            .map_or((u64::from(bid.est_latency_ms), bid.est_energy_mj), |m| {
                (m.latency_ms, m.energy_mj)
            });
        let score = score(
            bid.price_stroops,
            latency,
            energy,
            trust,
            &self.spec.weights,
        );
        self.answered_pending(round);
        self.note_answer(
            i,
            round,
            Answer::Bid {
                price_stroops: bid.price_stroops,
                est_latency_ms: bid.est_latency_ms,
                est_energy_mj: bid.est_energy_mj,
                path: bid.path,
                model_cached: bid.model_cached,
                measured,
                trust,
                score,
            },
        );
        debug!(
            task = %self.spec.task_id.short(),
            peer = %from.short(),
            price = bid.price_stroops,
            latency_ms = bid.est_latency_ms,
            score = score.total,
            "bid accepted"
        );
        self.peers[i].state = PeerState::Bid(BidEntry {
            bid: bid.clone(),
            score,
            measured,
        });
        Ok(())
    }

    fn fits_deadline(&self, latency_ms: u64) -> bool {
        self.now.saturating_add(latency_ms) < self.spec.deadline
    }

    fn on_decline(&mut self, from: NodeId, signed: &Signed<Decline>) -> Result<(), InputError> {
        let i = self.peer_index(&from)?;
        let round = self.awaiting_answer(i)?;
        if signed.verify_by(&from).is_err() {
            return Err(self.reject(i, Rejection::BadSignature));
        }
        let d = &signed.body;
        if d.task_id != self.spec.task_id {
            return Err(self.reject(i, Rejection::WrongTask));
        }
        if d.worker != from {
            return Err(self.reject(i, Rejection::WrongWorker));
        }
        // A late decline still explains why the peer did not bid, so it is kept.
        if let PeerState::Pending { round } = self.peers[i].state {
            self.answered_pending(round);
        }
        self.note_answer(
            i,
            round,
            Answer::Decline {
                reason: d.reason.clone(),
            },
        );
        debug!(task = %self.spec.task_id.short(), peer = %from.short(), reason = %d.reason, "declined");
        self.peers[i].state = PeerState::Declined(d.reason.clone());
        Ok(())
    }

    fn on_excluded(&mut self, from: NodeId, reason: String) -> Result<(), InputError> {
        let i = self.peer_index(&from)?;
        self.awaiting_answer(i)?;
        Err(self.reject(i, Rejection::Policy { reason }))
    }

    fn on_no_answer(&mut self, peer: NodeId) {
        let Some(&i) = self.index.get(&peer) else {
            return;
        };
        match (self.peers[i].state.clone(), self.phase) {
            (PeerState::Pending { round }, _) => {
                self.answered_pending(round);
                self.peers[i].state = PeerState::NoAnswer { round };
                self.note_answer(i, round, Answer::NoAnswer);
            }
            (_, Phase::Awarded { peer: p, .. }) if p == i => {
                self.end_award(i, AwardEnd::NotDelivered, Some(TaskOutcome::TimedOut));
                self.award_next();
            }
            // The holder cannot be reached while it runs the task: give up on it now.
            (_, Phase::Running { peer: p, .. }) if p == i => {
                self.end_award(i, AwardEnd::Unreachable, Some(TaskOutcome::TimedOut));
                self.outputs.push_back(Output::SendCancel { to: peer });
                self.award_next();
            }
            // A failed cancel, or a duplicate report: the timers cover the rest.
            _ => {}
        }
    }

    /// The award holder's index, if `from` holds the current award.
    fn holder(&self, from: &NodeId) -> Result<usize, InputError> {
        let i = self.peer_index(from)?;
        match self.phase {
            Phase::Awarded { peer, .. } | Phase::Running { peer, .. } if peer == i => Ok(i),
            _ => Err(InputError::NotAwarded(*from)),
        }
    }

    fn on_accepted(&mut self, from: NodeId) -> Result<(), InputError> {
        let i = self.holder(&from)?;
        let Phase::Awarded { price, .. } = self.phase else {
            return Err(InputError::Unexpected {
                peer: from,
                what: "second acceptance",
            });
        };
        let latency = match &self.peers[i].state {
            // The worker's own claim: one measured slower than it claims is held to it (and
            // was scored on its measurement, so it won knowing what it promised).
            PeerState::Tried(e, _) => u64::from(e.bid.est_latency_ms),
            _ => 0,
        };
        let allowance = latency.saturating_mul(u64::from(self.config.result_slack_percent)) / 100;
        let result_by = self
            .now
            .saturating_add(allowance)
            .saturating_add(self.config.result_grace_ms)
            .min(self.spec.deadline);
        self.phase = Phase::Running {
            peer: i,
            price,
            result_by,
            accepted_at: self.now,
        };
        debug!(task = %self.spec.task_id.short(), peer = %from.short(), result_by, "award accepted");
        Ok(())
    }

    fn on_rejected(&mut self, from: NodeId, signed: &Signed<Decline>) -> Result<(), InputError> {
        let i = self.holder(&from)?;
        let d = signed
            .verify_by(&from)
            .map_err(|source| InputError::Signature { peer: from, source })?;
        self.check_field(from, d.task_id == self.spec.task_id, "task_id")?;
        self.check_field(from, d.worker == from, "worker")?;
        if !matches!(self.phase, Phase::Awarded { .. }) {
            return Err(InputError::Unexpected {
                peer: from,
                what: "award rejection after acceptance",
            });
        }
        self.end_award(
            i,
            AwardEnd::Rejected {
                reason: d.reason.clone(),
            },
            Some(TaskOutcome::Aborted),
        );
        self.award_next();
        Ok(())
    }

    fn on_failed(&mut self, from: NodeId, signed: &Signed<TaskFailure>) -> Result<(), InputError> {
        let i = self.holder(&from)?;
        let f = signed
            .verify_by(&from)
            .map_err(|source| InputError::Signature { peer: from, source })?;
        self.check_field(from, f.task_id == self.spec.task_id, "task_id")?;
        self.check_field(from, f.requester == self.spec.requester, "requester")?;
        self.check_field(from, f.worker == from, "worker")?;
        let reason = f.reason.clone();
        let path = match &self.peers[i].state {
            PeerState::Tried(e, _) => Some(e.bid.path),
            _ => None,
        };
        if let (FailureReason::ModelInvalid { .. }, Some(path)) = (&reason, path)
            && self.another_path_bids(path)
        {
            // This worker's runtime refused the model; another runtime (tract and onnxruntime
            // support different operators) may run it. Not the worker's fault, and no bid on
            // the refused path is awarded again.
            self.refused_paths.insert(path);
            self.end_award(i, AwardEnd::Failed { reason }, None);
            self.award_next();
        } else if reason.retryable() {
            let outcome = match reason {
                FailureReason::Aborted { .. } | FailureReason::ShuttingDown => TaskOutcome::Aborted,
                FailureReason::TimedOut { .. } => TaskOutcome::TimedOut,
                _ => TaskOutcome::Failed,
            };
            self.end_award(i, AwardEnd::Failed { reason }, Some(outcome));
            self.award_next();
        } else {
            // The model or the input is at fault, not the worker: no one else would do better.
            self.end_award(
                i,
                AwardEnd::Failed {
                    reason: reason.clone(),
                },
                None,
            );
            self.fail(FailCause::TaskRejected { reason });
        }
        Ok(())
    }

    fn on_result(&mut self, from: NodeId, signed: &Signed<WorkReceipt>) -> Result<(), InputError> {
        let i = self.holder(&from)?;
        let (price, accepted_at) = match self.phase {
            Phase::Awarded { price, .. } => (price, None),
            Phase::Running {
                price, accepted_at, ..
            } => (price, Some(accepted_at)),
            _ => return Err(InputError::NotAwarded(from)),
        };
        if let Err(e) = self.check_receipt(from, signed, price) {
            // The worker will not send another result for this award: move on now rather
            // than wait for the result timer.
            self.end_award(
                i,
                AwardEnd::ResultInvalid {
                    reason: e.to_string(),
                },
                Some(TaskOutcome::Failed),
            );
            self.outputs.push_back(Output::SendCancel { to: from });
            self.award_next();
            return Err(e);
        }
        if let PeerState::Tried(e, _) = &self.peers[i].state {
            let awarded_at = self
                .trace
                .awards
                .iter()
                .rev()
                .find(|a| a.worker == from && a.end.is_none())
                .map_or(self.now, |a| a.at);
            self.outputs.push_back(Output::Observed(Observation {
                peer: from,
                model: self.spec.model,
                path: e.bid.path,
                input_elements: self.spec.input_elements,
                claimed_latency_ms: u64::from(e.bid.est_latency_ms),
                claimed_energy_mj: e.bid.est_energy_mj,
                observed_latency_ms: self.now.saturating_sub(awarded_at),
                network_ms: accepted_at.map_or(0, |t| t.saturating_sub(awarded_at)),
                reported_energy_mj: signed.body.energy.microjoules / 1_000,
            }));
        }
        self.end_award(i, AwardEnd::Completed, Some(TaskOutcome::Completed));
        self.phase = Phase::Completed { peer: i, price };
        self.trace.outcome = Some(TraceOutcome::Completed {
            worker: from,
            price_stroops: price,
            at: self.now,
        });
        info!(task = %self.spec.task_id.short(), worker = %from.short(), price, "task completed");
        self.outputs.push_back(Output::Completed {
            worker: from,
            price_stroops: price,
        });
        Ok(())
    }

    fn check_receipt(
        &self,
        from: NodeId,
        signed: &Signed<WorkReceipt>,
        price: u64,
    ) -> Result<(), InputError> {
        let r = signed
            .verify_by(&from)
            .map_err(|source| InputError::Signature { peer: from, source })?;
        self.check_field(from, r.task_id == self.spec.task_id, "task_id")?;
        self.check_field(from, r.requester == self.spec.requester, "requester")?;
        self.check_field(from, r.worker == from, "worker")?;
        self.check_field(from, r.model == self.spec.model, "model")?;
        self.check_field(from, r.input_hash == self.spec.input_hash, "input_hash")?;
        self.check_field(from, r.payer == self.spec.payer, "payer")?;
        self.check_field(from, r.price_stroops == price, "price_stroops")
    }

    fn on_result_invalid(&mut self, from: NodeId, reason: String) -> Result<(), InputError> {
        let i = self.holder(&from)?;
        self.end_award(
            i,
            AwardEnd::ResultInvalid { reason },
            Some(TaskOutcome::Failed),
        );
        self.outputs.push_back(Output::SendCancel { to: from });
        self.award_next();
        Ok(())
    }

    fn check_field(&self, peer: NodeId, ok: bool, field: &'static str) -> Result<(), InputError> {
        if ok {
            Ok(())
        } else {
            Err(InputError::Mismatch { peer, field })
        }
    }

    /// Runs timers until nothing more is due.
    fn step(&mut self) {
        loop {
            let now = self.now;
            match self.phase {
                Phase::Completed { .. } | Phase::Failed => return,
                Phase::Awarded { peer, .. } | Phase::Running { peer, .. }
                    if now >= self.spec.deadline =>
                {
                    let end = if matches!(self.phase, Phase::Awarded { .. }) {
                        AwardEnd::AcceptTimeout
                    } else {
                        AwardEnd::ResultTimeout
                    };
                    self.end_award(peer, end, Some(TaskOutcome::TimedOut));
                    self.outputs.push_back(Output::SendCancel {
                        to: self.peers[peer].node,
                    });
                    self.fail(FailCause::DeadlinePassed);
                }
                _ if now >= self.spec.deadline => self.fail(FailCause::DeadlinePassed),
                Phase::Collecting {
                    round,
                    closes_at,
                    pending,
                } => {
                    if now < closes_at && pending > 0 {
                        return;
                    }
                    self.close_round(round);
                    self.award_next();
                }
                Phase::Awarded {
                    peer, accept_by, ..
                } => {
                    if now < accept_by {
                        return;
                    }
                    self.end_award(peer, AwardEnd::AcceptTimeout, Some(TaskOutcome::TimedOut));
                    self.outputs.push_back(Output::SendCancel {
                        to: self.peers[peer].node,
                    });
                    self.award_next();
                }
                Phase::Running {
                    peer, result_by, ..
                } => {
                    if now < result_by {
                        return;
                    }
                    self.end_award(peer, AwardEnd::ResultTimeout, Some(TaskOutcome::TimedOut));
                    self.outputs.push_back(Output::SendCancel {
                        to: self.peers[peer].node,
                    });
                    self.award_next();
                }
            }
        }
    }

    fn close_round(&mut self, round: u32) {
        for i in 0..self.peers.len() {
            if let PeerState::Pending { round: r } = self.peers[i].state
                && r == round
            {
                self.peers[i].state = PeerState::NoAnswer { round };
                self.note_answer(i, round, Answer::NoAnswer);
            }
        }
        let now = self.now;
        if let Some(r) = self.trace.rounds.iter_mut().find(|r| r.round == round) {
            r.closed_at = Some(now);
        }
    }

    /// Asks the next K candidates, or fails when none is left.
    fn start_round(&mut self) {
        let start = self.next_candidate;
        let end = (start + self.config.fanout).min(self.peers.len());
        if start >= end {
            let cause = if self.peers.is_empty() {
                FailCause::NoCandidates
            } else {
                FailCause::NoAcceptableBid
            };
            self.fail(cause);
            return;
        }
        self.next_candidate = end;
        self.round += 1;
        let round = self.round;
        let closes_at = self
            .now
            .saturating_add(self.spec.bid_window_ms)
            .min(self.spec.deadline);
        let mut to = Vec::with_capacity(end - start);
        for p in &mut self.peers[start..end] {
            p.state = PeerState::Pending { round };
            to.push(p.node);
        }
        self.phase = Phase::Collecting {
            round,
            closes_at,
            pending: to.len(),
        };
        self.trace.rounds.push(RoundTrace {
            round,
            asked: to.clone(),
            opened_at: self.now,
            closes_at,
            closed_at: None,
        });
        debug!(task = %self.spec.task_id.short(), round, asked = to.len(), closes_at, "call for bids");
        let s = &self.spec;
        self.outputs.push_back(Output::SendCallForBids {
            round,
            to,
            cfb: CallForBids {
                task_id: s.task_id,
                requester: s.requester,
                model: s.model,
                model_bytes: s.model_bytes,
                input_hash: s.input_hash,
                input_elements: s.input_elements,
                max_price_stroops: s.max_price_stroops,
                nonce: s.nonce,
                payer: s.payer.clone(),
                bid_deadline: closes_at,
                deadline: s.deadline,
                issued_at: self.now,
            },
        });
    }

    /// Whether a bid can still be awarded now.
    fn usable(&self, e: &BidEntry) -> bool {
        e.bid.valid_until > self.now
            && self.fits_deadline(e.latency_ms())
            && !self.refused_paths.contains(&e.bid.path)
    }

    /// Whether a usable bid runs on another path than `refused` (and than every path
    /// refused before).
    fn another_path_bids(&self, refused: ExecPath) -> bool {
        self.peers.iter().any(
            |p| matches!(&p.state, PeerState::Bid(e) if e.bid.path != refused && self.usable(e)),
        )
    }

    /// Awards the best usable bid; re-auctions when there is none.
    fn award_next(&mut self) {
        let mut usable: Vec<usize> = self
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(&p.state, PeerState::Bid(e) if self.usable(e)))
            .map(|(i, _)| i)
            .collect();
        usable.sort_by(|&a, &b| self.rank(a).compare(&self.rank(b)));
        let Some(&best) = usable.first() else {
            self.start_round();
            return;
        };
        let PeerState::Bid(winner) = self.peers[best].state.clone() else {
            return;
        };
        let runner_up = usable.get(1).and_then(|&j| match &self.peers[j].state {
            PeerState::Bid(e) => Some(RunnerUp {
                peer: self.peers[j].node,
                price_stroops: e.bid.price_stroops,
                score: e.score.total,
            }),
            _ => None,
        });
        let terms = |i: usize, e: &BidEntry| PayTerms {
            price_stroops: e.bid.price_stroops,
            trust: self.peers[i].trust,
            measured: e.measured,
        };
        let second = usable.get(1).and_then(|&j| match &self.peers[j].state {
            PeerState::Bid(e) => Some(terms(j, e)),
            _ => None,
        });
        let price = award_price(
            self.config.payment,
            &terms(best, &winner),
            second.as_ref(),
            self.spec.max_price_stroops,
            &self.spec.weights,
        );
        let why = self.why(&winner, runner_up.as_ref(), usable.len(), price);
        let node = self.peers[best].node;
        info!(
            task = %self.spec.task_id.short(),
            worker = %node.short(),
            bid = winner.bid.price_stroops,
            price,
            score = winner.score.total,
            usable = usable.len(),
            "award"
        );
        self.trace.awards.push(AwardTrace {
            at: self.now,
            worker: node,
            bid_price_stroops: winner.bid.price_stroops,
            price_stroops: price,
            score: winner.score,
            usable_bids: u32::try_from(usable.len()).unwrap_or(u32::MAX),
            runner_up,
            why,
            end: None,
            ended_at: None,
        });
        self.peers[best].state = PeerState::Tried(winner, None);
        self.phase = Phase::Awarded {
            peer: best,
            price,
            accept_by: self
                .now
                .saturating_add(self.config.award_ack_ms)
                .min(self.spec.deadline),
        };
        self.outputs.push_back(Output::SendAward {
            to: node,
            price_stroops: price,
        });
    }

    fn rank(&self, i: usize) -> RankKey {
        match &self.peers[i].state {
            PeerState::Bid(e) => RankKey {
                score: e.score.total,
                price: e.bid.price_stroops,
                latency: e.latency_ms(),
                node: self.peers[i].node,
            },
            _ => RankKey {
                score: f64::INFINITY,
                price: u64::MAX,
                latency: u64::MAX,
                node: self.peers[i].node,
            },
        }
    }

    fn why(&self, w: &BidEntry, runner_up: Option<&RunnerUp>, usable: usize, price: u64) -> String {
        let max = self.spec.max_price_stroops;
        let bid = w.bid.price_stroops;
        let best = format!(
            "lowest score {:.3} of {usable} usable bid{}",
            w.score.total,
            if usable == 1 { "" } else { "s" }
        );
        let pricing = match (self.config.payment, runner_up) {
            (PaymentRule::PayAsBid, _) => format!("pay-as-bid: pays its bid {bid}"),
            (PaymentRule::SecondScore, Some(r)) => format!(
                "runner-up {} at {:.3}; second-score price {price} (bid {bid}, max {max})",
                r.peer.short(),
                r.score
            ),
            (PaymentRule::SecondScore, None) => {
                format!("no runner-up; pays its bid {price}")
            }
        };
        format!("{best}; {pricing}")
    }

    fn end_award(&mut self, i: usize, end: AwardEnd, outcome: Option<TaskOutcome>) {
        if let PeerState::Tried(_, slot) = &mut self.peers[i].state {
            *slot = Some(end.clone());
        }
        let node = self.peers[i].node;
        if let Some(a) = self
            .trace
            .awards
            .iter_mut()
            .rev()
            .find(|a| a.worker == node && a.end.is_none())
        {
            a.end = Some(end.clone());
            a.ended_at = Some(self.now);
        }
        if end != AwardEnd::Completed {
            info!(task = %self.spec.task_id.short(), worker = %node.short(), end = %end.category(), "award ended");
        }
        if let Some(outcome) = outcome {
            self.outputs.push_back(Output::Trust {
                peer: node,
                outcome,
            });
        }
    }

    fn fail(&mut self, cause: FailCause) {
        let categories: Vec<String> = self.peers.iter().filter_map(|p| self.category(p)).collect();
        let explanation = FailureExplanation::new(cause, categories);
        info!(task = %self.spec.task_id.short(), reason = %explanation, "task failed");
        self.phase = Phase::Failed;
        self.trace.outcome = Some(TraceOutcome::Failed {
            explanation: explanation.clone(),
            at: self.now,
        });
        self.outputs.push_back(Output::Failed(explanation));
    }

    /// What became of an asked peer, for the failure explanation (None if never asked).
    fn category(&self, p: &Peer) -> Option<String> {
        Some(match &p.state {
            PeerState::NotAsked => return None,
            PeerState::Pending { .. } | PeerState::NoAnswer { .. } => NO_ANSWER.to_string(),
            // The owner's and the submitter's policies give their own reasons.
            PeerState::Declined(DeclineReason::Other { message })
                if message.starts_with("policy: ") =>
            {
                message.clone()
            }
            PeerState::Declined(r) => r.category().to_string(),
            PeerState::Rejected(Rejection::Policy { reason }) => format!("policy: {reason}"),
            PeerState::Rejected(r) => r.category().to_string(),
            PeerState::Bid(e) if e.bid.valid_until <= self.now => "bid expired".to_string(),
            PeerState::Bid(e) if !self.fits_deadline(e.latency_ms()) => {
                "too slow for deadline".to_string()
            }
            PeerState::Bid(_) => "bid unused".to_string(),
            PeerState::Tried(_, Some(end)) => end.category(),
            PeerState::Tried(_, None) => "award pending".to_string(),
        })
    }
}

/// Ordering of usable bids: score, then price, latency and node id so ties are deterministic.
struct RankKey {
    score: f64,
    price: u64,
    latency: u64,
    node: NodeId,
}

impl RankKey {
    fn compare(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(self.price.cmp(&other.price))
            .then(self.latency.cmp(&other.latency))
            .then(self.node.cmp(&other.node))
    }
}
