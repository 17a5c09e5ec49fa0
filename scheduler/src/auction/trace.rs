//! What an auction did, for `--verbose` and `--json`: every answer with its score, every award
//! with why it went where it went, and how the task ended.

use std::fmt;

use crank_protocol::{DeclineReason, ExecPath, FailureReason, NodeId, TaskId, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::claims::Measured;
use crate::score::{PaymentRule, Score, Weights};

/// Why an answer from a peer was not accepted as a bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The signature does not verify, or the signer is not the peer that answered.
    BadSignature,
    /// The answer is for another task.
    WrongTask,
    /// The body names another worker than the peer that answered.
    WrongWorker,
    /// The bid is for other work than called for (model, sizes or inputs differ).
    OtherWork,
    /// The bid was void already (`valid_until` passed).
    Expired {
        /// When it became void.
        valid_until: UnixMillis,
    },
    /// The bid asks more than the task's max price.
    AboveMaxPrice {
        /// Asked.
        price_stroops: u64,
        /// The task's max price.
        max_price_stroops: u64,
    },
    /// The bid arrived after the peer's bid window closed.
    Late {
        /// When the window closed.
        closed_at: UnixMillis,
    },
    /// The bidder's own latency estimate cannot meet the deadline.
    TooSlow {
        /// The bid's estimate.
        est_latency_ms: u32,
        /// Time left before the deadline when it arrived.
        remaining_ms: u64,
    },
    /// The payout is not a Stellar account id.
    BadPayout,
    /// The submitter's placement policy leaves the bidder out.
    Policy {
        /// The policy's reason.
        reason: String,
    },
}

impl Rejection {
    /// A short category for aggregated explanations.
    pub fn category(&self) -> &'static str {
        match self {
            Self::BadSignature => "bad signature",
            Self::WrongTask => "answered for another task",
            Self::WrongWorker => "bid names another worker",
            Self::OtherWork => "bid for other work",
            Self::Expired { .. } => "bid expired",
            Self::AboveMaxPrice { .. } => "bid above max price",
            Self::Late { .. } => "bid too late",
            Self::TooSlow { .. } => "too slow for deadline",
            Self::BadPayout => "invalid payout address",
            Self::Policy { .. } => "excluded by policy",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired { valid_until } => write!(f, "bid expired at {valid_until}"),
            Self::AboveMaxPrice {
                price_stroops,
                max_price_stroops,
            } => write!(
                f,
                "bid of {price_stroops} stroops is above the max price {max_price_stroops}"
            ),
            Self::Late { closed_at } => {
                write!(f, "arrived after the bid window closed at {closed_at}")
            }
            Self::TooSlow {
                est_latency_ms,
                remaining_ms,
            } => write!(
                f,
                "needs {est_latency_ms} ms but only {remaining_ms} ms are left before the deadline"
            ),
            Self::Policy { reason } => write!(f, "excluded by the placement policy: {reason}"),
            other => f.write_str(other.category()),
        }
    }
}

/// How one award ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwardEnd {
    /// The worker delivered a result that matched the award.
    Completed,
    /// The worker declined the award.
    Rejected {
        /// Its reason.
        reason: DeclineReason,
    },
    /// The award could not be delivered.
    NotDelivered,
    /// The worker did not accept the award in time.
    AcceptTimeout,
    /// The worker reported a failure.
    Failed {
        /// Its reason.
        reason: FailureReason,
    },
    /// No result arrived in time.
    ResultTimeout,
    /// The result did not pass the checks.
    ResultInvalid {
        /// What was wrong.
        reason: String,
    },
    /// The worker could not be reached while it held the award.
    Unreachable,
}

impl AwardEnd {
    /// A short category for aggregated explanations.
    pub fn category(&self) -> String {
        match self {
            Self::Completed => "completed".into(),
            Self::Rejected { reason } => format!("rejected award ({})", reason.category()),
            Self::NotDelivered => "award not delivered".into(),
            Self::AcceptTimeout => "did not accept in time".into(),
            Self::Failed { reason } => failure_category(reason),
            Self::ResultTimeout => "result timed out".into(),
            Self::ResultInvalid { .. } => "invalid result".into(),
            Self::Unreachable => "unreachable while running".into(),
        }
    }
}

/// A short category for a worker's failure.
pub fn failure_category(reason: &FailureReason) -> String {
    match reason {
        FailureReason::Aborted { reason } => format!("aborted ({})", reason.category()),
        FailureReason::ModelUnavailable { .. } => "model unavailable".into(),
        FailureReason::ModelInvalid { .. } => "model invalid".into(),
        FailureReason::InputInvalid { .. } => "input invalid".into(),
        FailureReason::Inference { .. } => "inference failed".into(),
        FailureReason::TimedOut { .. } => "timed out on the worker".into(),
        FailureReason::ShuttingDown => "worker shutting down".into(),
    }
}

/// Why an auction ended without a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailCause {
    /// There was nobody to ask.
    NoCandidates,
    /// Every candidate was asked and no usable bid remains.
    NoAcceptableBid,
    /// The task's deadline passed.
    DeadlinePassed,
    /// A worker reported a failure that no other worker could avoid (bad model or input).
    TaskRejected {
        /// The worker's reason.
        reason: FailureReason,
    },
}

impl fmt::Display for FailCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCandidates => f.write_str("no candidate peers"),
            Self::NoAcceptableBid => f.write_str("no acceptable bid"),
            Self::DeadlinePassed => f.write_str("deadline passed"),
            Self::TaskRejected { reason } => write!(f, "task cannot run: {reason}"),
        }
    }
}

/// How many asked peers ended up in one category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// The category ("on battery", "queue full", "did not answer").
    pub reason: String,
    /// Peers in it.
    pub count: u32,
}

/// The aggregated reasons a task failed, e.g.
/// `no acceptable bid; asked 5: 3 on battery, 1 queue full, 1 did not answer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureExplanation {
    /// What ended the auction.
    pub cause: FailCause,
    /// Peers asked for bids, over all rounds.
    pub asked: u32,
    /// What became of each asked peer, most frequent first, "did not answer" last.
    pub reasons: Vec<ReasonCount>,
}

/// The category counted for peers that never answered.
pub const NO_ANSWER: &str = "did not answer";

impl FailureExplanation {
    /// Builds an explanation from one category per asked peer.
    pub fn new(cause: FailCause, categories: impl IntoIterator<Item = String>) -> Self {
        let mut counts: std::collections::BTreeMap<String, u32> = Default::default();
        let mut asked = 0u32;
        for c in categories {
            asked = asked.saturating_add(1);
            let n = counts.entry(c).or_default();
            *n = n.saturating_add(1);
        }
        let mut reasons: Vec<ReasonCount> = counts
            .into_iter()
            .map(|(reason, count)| ReasonCount { reason, count })
            .collect();
        // Most frequent first; the least informative category last; names break ties.
        reasons.sort_by(|a, b| {
            (a.reason == NO_ANSWER)
                .cmp(&(b.reason == NO_ANSWER))
                .then(b.count.cmp(&a.count))
                .then(a.reason.cmp(&b.reason))
        });
        Self {
            cause,
            asked,
            reasons,
        }
    }

    /// How many asked peers ended in `category`.
    pub fn count(&self, category: &str) -> u32 {
        self.reasons
            .iter()
            .find(|r| r.reason == category)
            .map_or(0, |r| r.count)
    }
}

impl fmt::Display for FailureExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cause)?;
        if self.asked > 0 {
            write!(f, "; asked {}: ", self.asked)?;
            for (i, r) in self.reasons.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{} {}", r.count, r.reason)?;
            }
        }
        Ok(())
    }
}

/// One round of calls for bids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundTrace {
    /// 1 for the first call, then one more per re-auction.
    pub round: u32,
    /// Peers asked, best-ranked first.
    pub asked: Vec<NodeId>,
    /// When the call went out.
    pub opened_at: UnixMillis,
    /// When the bid window was due to close.
    pub closes_at: UnixMillis,
    /// When it did close (early if every asked peer answered).
    pub closed_at: Option<UnixMillis>,
}

/// What a peer answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// An acceptable bid.
    Bid {
        /// Asked price, stroops.
        price_stroops: u64,
        /// Its latency estimate, ms.
        est_latency_ms: u32,
        /// Its energy estimate, mJ.
        est_energy_mj: u64,
        /// CPU or GPU.
        path: ExecPath,
        /// Whether it holds the model.
        model_cached: bool,
        /// What this node measured of the peer on this model and path; when present it
        /// replaced the claims in the score.
        #[serde(default)]
        measured: Option<Measured>,
        /// Our trust figure for the peer.
        trust: f64,
        /// Its score under the task's weights.
        score: Score,
    },
    /// A signed decline.
    Decline {
        /// Why.
        reason: DeclineReason,
    },
    /// An answer that was not accepted.
    Rejected {
        /// Why.
        reason: Rejection,
    },
    /// The request failed or the window closed first.
    NoAnswer,
}

/// One peer's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerTrace {
    /// Who.
    pub peer: NodeId,
    /// In which round it was asked.
    pub round: u32,
    /// When the answer (or its absence) was noted.
    pub at: UnixMillis,
    /// What it was.
    pub answer: Answer,
}

/// The runner-up that set a second-score price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerUp {
    /// Who.
    pub peer: NodeId,
    /// Its bid price, stroops.
    pub price_stroops: u64,
    /// Its score.
    pub score: f64,
}

/// One award and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwardTrace {
    /// When it was sent.
    pub at: UnixMillis,
    /// The winner.
    pub worker: NodeId,
    /// What it bid, stroops.
    pub bid_price_stroops: u64,
    /// What it will be paid, stroops.
    pub price_stroops: u64,
    /// Its score.
    pub score: Score,
    /// Bids that could still be used at that moment, the winner's included.
    pub usable_bids: u32,
    /// The best other usable bid.
    pub runner_up: Option<RunnerUp>,
    /// Why this bid won and why this price, in words.
    pub why: String,
    /// How it ended (None while it runs).
    pub end: Option<AwardEnd>,
    /// When it ended.
    pub ended_at: Option<UnixMillis>,
}

/// How the task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceOutcome {
    /// A worker delivered.
    Completed {
        /// Who.
        worker: NodeId,
        /// Paid, stroops.
        price_stroops: u64,
        /// When.
        at: UnixMillis,
    },
    /// No worker delivered.
    Failed {
        /// Why.
        explanation: FailureExplanation,
        /// When.
        at: UnixMillis,
    },
}

/// The full record of one auction, serde-serialisable for `--json`; `Display` for `--verbose`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuctionTrace {
    /// The task.
    pub task_id: TaskId,
    /// Weights used for scoring.
    pub weights: Weights,
    /// Payment rule used.
    pub payment: PaymentRule,
    /// The task's max price, stroops.
    pub max_price_stroops: u64,
    /// When the auction started.
    pub started_at: UnixMillis,
    /// The task's deadline.
    pub deadline: UnixMillis,
    /// Candidates in rank order (asked or not).
    pub candidates: Vec<NodeId>,
    /// Calls for bids.
    pub rounds: Vec<RoundTrace>,
    /// Answers, in arrival order: one per asked peer, plus any answer that came too late.
    pub answers: Vec<AnswerTrace>,
    /// Awards, in order.
    pub awards: Vec<AwardTrace>,
    /// The end (None while the auction runs).
    pub outcome: Option<TraceOutcome>,
}

impl fmt::Display for AuctionTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t0 = self.started_at;
        let rel = |t: UnixMillis| t.saturating_sub(t0);
        writeln!(
            f,
            "task {} · {} candidates · weights {} · {} payment · max {} stroops",
            self.task_id.short(),
            self.candidates.len(),
            self.weights,
            self.payment,
            self.max_price_stroops
        )?;
        for r in &self.rounds {
            let closed = r
                .closed_at
                .map_or_else(|| "open".to_string(), |c| format!("closed +{} ms", rel(c)));
            writeln!(
                f,
                "round {} at +{} ms: asked {} ({closed})",
                r.round,
                rel(r.opened_at),
                r.asked.len()
            )?;
            for a in self.answers.iter().filter(|a| a.round == r.round) {
                write!(f, "  {} +{:>5} ms  ", a.peer.short(), rel(a.at))?;
                match &a.answer {
                    Answer::Bid {
                        price_stroops,
                        est_latency_ms,
                        est_energy_mj,
                        path,
                        model_cached,
                        measured,
                        trust,
                        score,
                    } => writeln!(
                        f,
                        "bid {price_stroops} stroops, {est_latency_ms} ms, {est_energy_mj} mJ, \
                         {path}{}{}, trust {trust:.2} -> score {:.3}",
                        if *model_cached { ", cached" } else { "" },
                        measured.map_or(String::new(), |m| format!(
                            " (measured {} ms, {} mJ)",
                            m.latency_ms, m.energy_mj
                        )),
                        score.total
                    )?,
                    Answer::Decline { reason } => writeln!(f, "declined: {reason}")?,
                    Answer::Rejected { reason } => writeln!(f, "rejected: {reason}")?,
                    Answer::NoAnswer => writeln!(f, "{NO_ANSWER}")?,
                }
            }
        }
        for a in &self.awards {
            let end = match (&a.end, a.ended_at) {
                (Some(e), Some(t)) => format!(" -> {} at +{} ms", e.category(), rel(t)),
                _ => String::new(),
            };
            writeln!(
                f,
                "award at +{} ms to {}: {}{end}",
                rel(a.at),
                a.worker.short(),
                a.why
            )?;
        }
        match &self.outcome {
            Some(TraceOutcome::Completed {
                worker,
                price_stroops,
                at,
            }) => writeln!(
                f,
                "completed by {} at +{} ms for {price_stroops} stroops",
                worker.short(),
                rel(*at)
            ),
            Some(TraceOutcome::Failed { explanation, at }) => {
                writeln!(f, "failed at +{} ms: {explanation}", rel(*at))
            }
            None => writeln!(f, "in progress"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crank_protocol::GateReason;

    #[test]
    fn explanation_reads_like_the_operator_expects() {
        let battery = DeclineReason::Gate {
            reason: GateReason::OnBattery { percent: Some(40) },
        };
        let full = DeclineReason::QueueFull {
            queued: 4,
            slots: 4,
        };
        let cats = vec![
            battery.category().to_string(),
            NO_ANSWER.to_string(),
            battery.category().to_string(),
            full.category().to_string(),
            battery.category().to_string(),
        ];
        let e = FailureExplanation::new(FailCause::NoAcceptableBid, cats);
        assert_eq!(
            e.to_string(),
            "no acceptable bid; asked 5: 3 on battery, 1 queue full, 1 did not answer"
        );
        assert_eq!(e.count("on battery"), 3);
        assert_eq!(e.count("too hot"), 0);
        assert_eq!(
            FailureExplanation::new(FailCause::NoCandidates, Vec::new()).to_string(),
            "no candidate peers"
        );
    }
}
