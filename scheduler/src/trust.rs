//! Trust, first version: what this node saw each peer do with the tasks it awarded them.
//!
//! Per peer, the book counts tasks **completed** (a result with a receipt this node
//! counter-signed), **failed** (the worker reported a failure another worker could avoid, or
//! the model never arrived), **aborted** (the worker's power gate closed, it shut down, or it
//! backed out of its own bid) and **timed out** (no acceptance or no result in time).
//!
//! The score is the mean of a Beta posterior on "this peer completes what it accepts":
//!
//! ```text
//! trust = (completed + a) / (completed + failed + timed_out + abort_weight · aborted + a + b)
//! ```
//!
//! with a prior of `a = 3` successes and `b = 1` failure ([`TrustPrior::default`]), so an
//! unknown peer starts at 0.75: new nodes can win work (under equal price and trust weights they
//! need only ask a quarter less than a flawless peer), yet one failure costs a newcomer more
//! than it costs a peer with a long record. Aborts weigh half a failure: a gate that closes because
//! the owner came back is honest behaviour, but it still cost the requester a re-award.
//!
//! A task whose measurement belies the bid's claims (an **over-claim**, [`crate::claims`])
//! adds `overclaim_weight` failures (default 1) on top of its outcome: a worker that claims to
//! be ten times faster than it is completes its tasks and still loses trust with each one.
//!
//! ```text
//! bad = failed + timed_out + abort_weight · aborted + overclaim_weight · overclaimed
//!     + disagree_weight · disagreed + b
//! ```
//!
//! An answer that independent replicas outvoted ([`crate::verify`]) adds `disagree_weight`
//! failures (default 4); agreeing checks are kept as `verified` and as the streak that
//! lowers how often the peer is checked. An outvoted peer is also suspended: asked for no
//! work for `suspend_secs` (default 10 minutes), doubling with each further outvoted answer
//! up to a week ([`TrustBook::suspended_until`]). Price cannot buy its way back: a cheat that
//! bids a thousandth of the honest price would otherwise keep winning on price alone.
//!
//! Only this node's own observations count. The [`TrustSummary`] a peer publishes in its
//! advert is its own claim and is never fed into the score. The book also keeps the claims
//! against measurements per model and path ([`TrustBook::claims`]), which the auction scores
//! with once it has any.

use std::collections::BTreeMap;

use crank_protocol::{NodeId, TrustSummary, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::claims::{ClaimBook, Observation, Overclaim};

/// How an awarded task ended, as far as the worker's trust is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The result arrived and its receipt was counter-signed.
    Completed,
    /// The worker failed in a way another worker could avoid.
    Failed,
    /// The worker stopped: its gate closed, it shut down or it rejected the award.
    Aborted,
    /// The worker did not accept or did not deliver in time.
    TimedOut,
}

/// Counts for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TrustRecord {
    /// Tasks completed with a counter-signed receipt.
    pub completed: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks aborted.
    pub aborted: u64,
    /// Tasks timed out.
    pub timed_out: u64,
    /// Tasks whose measured latency or reported energy belied the bid's claims.
    #[serde(default)]
    pub overclaimed: u64,
    /// Tasks whose outputs an independent worker's replica agreed with ([`crate::verify`]).
    #[serde(default)]
    pub verified: u64,
    /// Tasks whose outputs the majority of independent runs disagreed with.
    #[serde(default)]
    pub disagreed: u64,
    /// Agreeing checks since the last disagreement; the check rate falls with it.
    #[serde(default)]
    pub streak: u64,
    /// When an answer of the peer was last outvoted (0: never); it is asked for no work for
    /// a while after ([`TrustBook::suspended_until`]).
    #[serde(default)]
    pub outvoted_at: UnixMillis,
    /// When the last outcome was recorded.
    pub last_seen: UnixMillis,
}

impl TrustRecord {
    /// Adds one outcome.
    pub fn record(&mut self, outcome: TaskOutcome, now: UnixMillis) {
        let n = match outcome {
            TaskOutcome::Completed => &mut self.completed,
            TaskOutcome::Failed => &mut self.failed,
            TaskOutcome::Aborted => &mut self.aborted,
            TaskOutcome::TimedOut => &mut self.timed_out,
        };
        *n = n.saturating_add(1);
        self.last_seen = self.last_seen.max(now);
    }

    /// All outcomes recorded.
    pub fn total(&self) -> u64 {
        self.completed
            .saturating_add(self.failed)
            .saturating_add(self.aborted)
            .saturating_add(self.timed_out)
    }

    /// The advert form: completed, and everything else as failed.
    pub fn summary(&self) -> TrustSummary {
        TrustSummary {
            completed: self.completed,
            failed: self
                .failed
                .saturating_add(self.aborted)
                .saturating_add(self.timed_out),
        }
    }

    /// The score of this record under `prior` (see the module docs), in `(0, 1]`.
    #[allow(clippy::cast_precision_loss)] // counts far beyond 2^53 do not occur.
    pub fn score(&self, prior: &TrustPrior) -> f64 {
        let good = self.completed as f64 + prior.successes;
        let bad = self.failed as f64
            + self.timed_out as f64
            + prior.abort_weight * self.aborted as f64
            + prior.overclaim_weight * self.overclaimed as f64
            + prior.disagree_weight * self.disagreed as f64
            + prior.failures;
        good / (good + bad)
    }
}

/// Why a peer's trust is what it is: the score, its terms in words, and any suspension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustExplanation {
    /// The score, in `(0, 1]`.
    pub score: f64,
    /// What counts for the peer, in successes (the prior's included).
    pub good: f64,
    /// What counts against it, in failures (the prior's included).
    pub bad: f64,
    /// Until when it is asked for no work, when it is suspended.
    pub suspended_until: Option<UnixMillis>,
    /// The terms, for people: "0.44 = 4 / (4 + 5): for: 3 prior, 1 completed; against: …".
    pub because: String,
}

impl TrustRecord {
    /// The score of this record under `prior` with its terms in words.
    #[allow(clippy::cast_precision_loss)] // counts far beyond 2^53 do not occur.
    pub fn explain(&self, prior: &TrustPrior) -> TrustExplanation {
        let good = self.completed as f64 + prior.successes;
        let against = [
            (1.0, self.failed, "failed"),
            (1.0, self.timed_out, "timed out"),
            (prior.abort_weight, self.aborted, "aborted"),
            (prior.overclaim_weight, self.overclaimed, "over-claimed"),
            (
                prior.disagree_weight,
                self.disagreed,
                "outvoted by replicas",
            ),
        ];
        let bad = prior.failures + against.iter().map(|(w, n, _)| w * *n as f64).sum::<f64>();
        let mut pro = vec![format!("{} prior", prior.successes)];
        if self.completed > 0 {
            pro.push(format!("{} completed", self.completed));
        }
        let mut con = vec![format!("{} prior", prior.failures)];
        for (w, n, what) in against {
            if n == 0 {
                continue;
            }
            con.push(if (w - 1.0).abs() < f64::EPSILON {
                format!("{n} {what}")
            } else {
                format!("{w} × {n} {what}")
            });
        }
        let mut because = format!(
            "{:.2} = {good} / ({good} + {bad}); for: {}; against: {}",
            good / (good + bad),
            pro.join(", "),
            con.join(", ")
        );
        if self.verified > 0 || self.disagreed > 0 {
            because.push_str(&format!(
                "; spot checks: {} agreed, {} outvoted, streak {}",
                self.verified, self.disagreed, self.streak
            ));
        }
        TrustExplanation {
            score: good / (good + bad),
            good,
            bad,
            suspended_until: None,
            because,
        }
    }
}

/// The prior behind every score; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustPrior {
    /// Pseudo-successes every peer starts with (default 3).
    pub successes: f64,
    /// Pseudo-failures every peer starts with (default 1).
    pub failures: f64,
    /// What one abort counts as, in failures (default 0.5).
    pub abort_weight: f64,
    /// What one over-claim counts as, in failures (default 1).
    pub overclaim_weight: f64,
    /// What one answer outvoted by independent replicas counts as, in failures (default 4):
    /// a wrong answer delivered as right is the worst a worker can do.
    pub disagree_weight: f64,
    /// How long a peer whose answer was outvoted is asked for no work, seconds (default
    /// 600); it doubles with each further outvoted answer, up to a week. Afterwards the peer
    /// is checked on every task until it earns a streak of agreeing answers back.
    pub suspend_secs: u64,
}

/// The longest suspension, however often a peer was outvoted.
const MAX_SUSPEND_MS: u64 = 7 * 24 * 3600 * 1000;

impl Default for TrustPrior {
    fn default() -> Self {
        Self {
            successes: 3.0,
            failures: 1.0,
            abort_weight: 0.5,
            overclaim_weight: 1.0,
            disagree_weight: 4.0,
            suspend_secs: 600,
        }
    }
}

/// Why a trust book cannot be built from the given settings or stored data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrustError {
    /// A prior figure is negative or not finite, or the successes are not above zero.
    #[error(
        "trust prior needs finite successes > 0, failures ≥ 0, abort, over-claim and disagreement weights ≥ 0; got {0:?}"
    )]
    BadPrior(TrustPrior),
    /// The capacity is zero.
    #[error("trust book capacity must be at least 1")]
    ZeroCapacity,
    /// Stored data holds more peers than its capacity.
    #[error("stored trust book holds {peers} peers, more than its capacity {capacity}")]
    OverCapacity {
        /// Peers stored.
        peers: usize,
        /// Capacity stored.
        capacity: usize,
    },
}

impl TrustPrior {
    /// Checks the figures are usable.
    pub fn validate(&self) -> Result<(), TrustError> {
        let ok = self.successes.is_finite()
            && self.successes > 0.0
            && self.failures.is_finite()
            && self.failures >= 0.0
            && self.abort_weight.is_finite()
            && self.abort_weight >= 0.0
            && self.overclaim_weight.is_finite()
            && self.overclaim_weight >= 0.0
            && self.disagree_weight.is_finite()
            && self.disagree_weight >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(TrustError::BadPrior(*self))
        }
    }
}

/// What a full advert table does for a newcomer's advert ([`TrustBook::advert_room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvertRoom {
    /// Drop this node's advert to make room.
    Evict(NodeId),
    /// Keep the table as it is and drop the newcomer's advert.
    RefuseNewcomer,
}

/// Per-peer counts with a bounded number of peers; serde-serialisable for persistence.
///
/// When full, recording a new peer forgets the peer seen longest ago.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TrustBookRepr")]
pub struct TrustBook {
    prior: TrustPrior,
    capacity: usize,
    peers: BTreeMap<NodeId, TrustRecord>,
    #[serde(default)]
    claims: ClaimBook,
}

#[derive(Deserialize)]
struct TrustBookRepr {
    prior: TrustPrior,
    capacity: usize,
    peers: BTreeMap<NodeId, TrustRecord>,
    // Books stored before claims were kept have none.
    #[serde(default)]
    claims: ClaimBook,
}

impl TryFrom<TrustBookRepr> for TrustBook {
    type Error = TrustError;

    fn try_from(r: TrustBookRepr) -> Result<Self, Self::Error> {
        let mut book = TrustBook::new(r.prior, r.capacity)?;
        if r.peers.len() > r.capacity {
            return Err(TrustError::OverCapacity {
                peers: r.peers.len(),
                capacity: r.capacity,
            });
        }
        book.peers = r.peers;
        book.claims = r.claims;
        Ok(book)
    }
}

/// Default number of peers a trust book remembers.
pub const DEFAULT_TRUST_CAPACITY: usize = 100_000;

impl Default for TrustBook {
    fn default() -> Self {
        Self {
            prior: TrustPrior::default(),
            capacity: DEFAULT_TRUST_CAPACITY,
            peers: BTreeMap::new(),
            claims: ClaimBook::default(),
        }
    }
}

impl TrustBook {
    /// An empty book with the given prior, remembering at most `capacity` peers.
    pub fn new(prior: TrustPrior, capacity: usize) -> Result<Self, TrustError> {
        prior.validate()?;
        if capacity == 0 {
            return Err(TrustError::ZeroCapacity);
        }
        Ok(Self {
            prior,
            capacity,
            peers: BTreeMap::new(),
            claims: ClaimBook::default(),
        })
    }

    /// The prior in use.
    pub fn prior(&self) -> &TrustPrior {
        &self.prior
    }

    /// Records one outcome for `peer`.
    pub fn record(&mut self, peer: NodeId, outcome: TaskOutcome, now: UnixMillis) {
        self.entry(peer).record(outcome, now);
    }

    /// The record of `peer`, making room for it when the book is full.
    fn entry(&mut self, peer: NodeId) -> &mut TrustRecord {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.capacity {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(id, r)| (r.last_seen, **id))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.peers.remove(&id);
            }
        }
        self.peers.entry(peer).or_default()
    }

    /// Records what the requester measured of a completed task ([`crate::Output::Observed`]);
    /// an over-claim also counts against the worker's trust.
    pub fn record_observation(&mut self, obs: &Observation, now: UnixMillis) -> Option<Overclaim> {
        let over = self.claims.record(obs, now);
        if over.is_some() {
            let r = self.entry(obs.peer);
            r.overclaimed = r.overclaimed.saturating_add(1);
            r.last_seen = r.last_seen.max(now);
        }
        over
    }

    /// Records the result of a spot check of one of `peer`'s answers: agreeing extends its
    /// streak, being outvoted counts against its trust and ends the streak.
    pub fn record_check(&mut self, peer: NodeId, agreed: bool, now: UnixMillis) {
        let r = self.entry(peer);
        if agreed {
            r.verified = r.verified.saturating_add(1);
            r.streak = r.streak.saturating_add(1);
        } else {
            r.disagreed = r.disagreed.saturating_add(1);
            r.streak = 0;
            r.outvoted_at = r.outvoted_at.max(now);
        }
        r.last_seen = r.last_seen.max(now);
    }

    /// Claims against measurements, per peer, model and path.
    pub fn claims(&self) -> &ClaimBook {
        &self.claims
    }

    /// Restores a stored record (the node loads its book from disk record by record).
    pub fn insert(&mut self, peer: NodeId, record: TrustRecord) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.capacity {
            return;
        }
        self.peers.insert(peer, record);
    }

    /// The score of `peer` in `(0, 1]`; the prior mean for a peer never seen.
    pub fn score(&self, peer: &NodeId) -> f64 {
        self.peers
            .get(peer)
            .copied()
            .unwrap_or_default()
            .score(&self.prior)
    }

    /// Until when `peer` is asked for no work because independent replicas outvoted its
    /// answer: `suspend_secs` after the last time, doubled for each earlier one, at most a
    /// week. `None` when it is not suspended at `now`.
    pub fn suspended_until(&self, peer: &NodeId, now: UnixMillis) -> Option<UnixMillis> {
        let r = self.peers.get(peer)?;
        if r.disagreed == 0 {
            return None;
        }
        let doublings = u32::try_from(r.disagreed - 1).unwrap_or(u32::MAX).min(20);
        let ms = self
            .prior
            .suspend_secs
            .saturating_mul(1000)
            .saturating_mul(1u64 << doublings)
            .min(MAX_SUSPEND_MS);
        let until = r.outvoted_at.saturating_add(ms);
        (now < until).then_some(until)
    }

    /// Why `peer`'s trust is what it is at `now` (the prior alone for a peer never seen).
    pub fn explain(&self, peer: &NodeId, now: UnixMillis) -> TrustExplanation {
        let mut e = self
            .peers
            .get(peer)
            .copied()
            .unwrap_or_default()
            .explain(&self.prior);
        e.suspended_until = self.suspended_until(peer, now);
        if let Some(until) = e.suspended_until {
            e.because.push_str(&format!(
                "; suspended for {} s more after an outvoted answer",
                until.saturating_sub(now).div_ceil(1000)
            ));
        }
        e
    }

    /// The counts for `peer`, if any were recorded.
    pub fn get(&self, peer: &NodeId) -> Option<&TrustRecord> {
        self.peers.get(peer)
    }

    /// The advert form of `peer`'s counts (zeros for a peer never seen).
    pub fn summary(&self, peer: &NodeId) -> TrustSummary {
        self.peers
            .get(peer)
            .map(TrustRecord::summary)
            .unwrap_or_default()
    }

    /// Every peer with its counts, in node-id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &TrustRecord)> {
        self.peers.iter()
    }

    /// Which stored advert a full advert table drops to make room for `newcomer`'s, given
    /// each stored node with its advert's expiry.
    ///
    /// Identities are free, so a swarm of fresh ones with long-lived adverts must not push out
    /// nodes this node has worked with: the soonest-expiring advert of a node *without*
    /// history goes first; when every stored node has history, a newcomer without history is
    /// refused ([`AdvertRoom::RefuseNewcomer`]) and one with history replaces the
    /// soonest-expiring advert.
    pub fn advert_room<'a>(
        &self,
        stored: impl IntoIterator<Item = (&'a NodeId, UnixMillis)>,
        newcomer: &NodeId,
    ) -> AdvertRoom {
        let mut unknown: Option<(UnixMillis, NodeId)> = None;
        let mut known: Option<(UnixMillis, NodeId)> = None;
        for (node, expires) in stored {
            let slot = if self.peers.contains_key(node) {
                &mut known
            } else {
                &mut unknown
            };
            if slot.is_none_or(|(e, n)| (expires, *node) < (e, n)) {
                *slot = Some((expires, *node));
            }
        }
        match (unknown, known) {
            (Some((_, n)), _) => AdvertRoom::Evict(n),
            (None, Some((_, n))) if self.peers.contains_key(newcomer) => AdvertRoom::Evict(n),
            (None, Some(_)) => AdvertRoom::RefuseNewcomer,
            (None, None) => AdvertRoom::RefuseNewcomer,
        }
    }

    /// Peers remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    #[test]
    fn unknown_peers_get_the_prior_mean() {
        let book = TrustBook::default();
        assert_eq!(book.score(&node(1)), 0.75);
        assert_eq!(book.summary(&node(1)), TrustSummary::default());
    }

    #[test]
    fn outcomes_move_the_score_as_documented() {
        let mut book = TrustBook::default();
        for t in 0..10 {
            book.record(node(1), TaskOutcome::Completed, t);
        }
        assert!((book.score(&node(1)) - 13.0 / 14.0).abs() < 1e-12);
        book.record(node(2), TaskOutcome::Failed, 1);
        assert!((book.score(&node(2)) - 3.0 / 5.0).abs() < 1e-12);
        book.record(node(3), TaskOutcome::Aborted, 1);
        assert!((book.score(&node(3)) - 3.0 / 4.5).abs() < 1e-12);
        // An abort hurts less than a failure, which hurts as much as a time-out.
        book.record(node(4), TaskOutcome::TimedOut, 1);
        assert_eq!(book.score(&node(4)), book.score(&node(2)));
        assert!(book.score(&node(3)) > book.score(&node(2)));
        assert_eq!(
            book.summary(&node(3)),
            TrustSummary {
                completed: 0,
                failed: 1
            }
        );
    }

    #[test]
    fn a_full_book_forgets_the_peer_seen_longest_ago() {
        let mut book = TrustBook::new(TrustPrior::default(), 2).unwrap();
        book.record(node(1), TaskOutcome::Failed, 10);
        book.record(node(2), TaskOutcome::Failed, 20);
        book.record(node(1), TaskOutcome::Completed, 30);
        book.record(node(3), TaskOutcome::Completed, 40);
        assert_eq!(book.len(), 2);
        assert!(book.get(&node(2)).is_none());
        assert_eq!(book.get(&node(1)).unwrap().total(), 2);
    }

    #[test]
    fn bad_settings_are_errors() {
        let bad = TrustPrior {
            successes: 0.0,
            ..TrustPrior::default()
        };
        assert!(matches!(
            TrustBook::new(bad, 10),
            Err(TrustError::BadPrior(_))
        ));
        assert_eq!(
            TrustBook::new(TrustPrior::default(), 0),
            Err(TrustError::ZeroCapacity)
        );
        let json = r#"{"prior":{"successes":3.0,"failures":-1.0,"abort_weight":0.5},"capacity":5,"peers":{}}"#;
        assert!(serde_json::from_str::<TrustBook>(json).is_err());
    }

    #[test]
    fn book_round_trips_through_json_and_postcard() {
        let mut book = TrustBook::default();
        book.record(node(7), TaskOutcome::Completed, 5);
        book.record(node(8), TaskOutcome::TimedOut, 6);
        let json = serde_json::to_string(&book).unwrap();
        assert_eq!(serde_json::from_str::<TrustBook>(&json).unwrap(), book);
        let bin = postcard::to_allocvec(&book).unwrap();
        assert_eq!(postcard::from_bytes::<TrustBook>(&bin).unwrap(), book);
    }

    proptest! {
        #[test]
        fn scores_stay_in_unit_interval_and_respond_to_outcomes(
            outcomes in proptest::collection::vec(0u8..4, 0..200),
        ) {
            let mut book = TrustBook::default();
            let peer = node(9);
            for (t, o) in outcomes.iter().enumerate() {
                let before = book.score(&peer);
                let outcome = match o {
                    0 => TaskOutcome::Completed,
                    1 => TaskOutcome::Failed,
                    2 => TaskOutcome::Aborted,
                    _ => TaskOutcome::TimedOut,
                };
                book.record(peer, outcome, t as u64);
                let after = book.score(&peer);
                prop_assert!(after > 0.0 && after <= 1.0);
                if outcome == TaskOutcome::Completed {
                    prop_assert!(after >= before);
                } else {
                    prop_assert!(after <= before);
                }
            }
        }
    }

    #[test]
    fn a_full_advert_table_drops_strangers_before_peers_with_history() {
        let mut book = TrustBook::default();
        let (worked_with, stranger, sybil) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        book.record(worked_with, TaskOutcome::Completed, 1_000);
        // The worked-with node's advert expires first, yet a stranger's goes.
        let stored = [
            (&worked_with, 10_000),
            (&stranger, 90_000),
            (&sybil, 80_000),
        ];
        assert_eq!(
            book.advert_room(stored, &NodeId([9; 32])),
            AdvertRoom::Evict(sybil)
        );
        // Only peers with history stored: a stranger is refused, a known peer gets in.
        let known = NodeId([4; 32]);
        book.record(known, TaskOutcome::Completed, 1_000);
        let stored = [(&worked_with, 10_000)];
        assert_eq!(
            book.advert_room(stored, &NodeId([9; 32])),
            AdvertRoom::RefuseNewcomer
        );
        assert_eq!(
            book.advert_room(stored, &known),
            AdvertRoom::Evict(worked_with)
        );
    }

    #[test]
    fn an_outvoted_peer_is_suspended_for_a_doubling_while() {
        let mut book = TrustBook::default();
        let peer = NodeId([9; 32]);
        assert_eq!(book.suspended_until(&peer, 0), None);
        book.record_check(peer, true, 1_000);
        assert_eq!(book.suspended_until(&peer, 1_000), None);
        book.record_check(peer, false, 10_000);
        let first = 10_000 + 600_000;
        assert_eq!(book.suspended_until(&peer, 10_001), Some(first));
        assert_eq!(book.suspended_until(&peer, first), None);
        book.record_check(peer, false, first);
        assert_eq!(
            book.suspended_until(&peer, first + 1),
            Some(first + 1_200_000)
        );
        // However often, never beyond a week.
        for _ in 0..64 {
            book.record_check(peer, false, first);
        }
        assert_eq!(
            book.suspended_until(&peer, first),
            Some(first + MAX_SUSPEND_MS)
        );
        // Stored records without the field (before it existed) are not suspended.
        let old: TrustRecord = serde_json::from_str(
            r#"{"completed":1,"failed":0,"aborted":0,"timed_out":0,"last_seen":5}"#,
        )
        .unwrap();
        assert_eq!(old.outvoted_at, 0);
    }

    #[test]
    fn explanations_add_up_to_the_score_and_name_every_term() {
        let mut book = TrustBook::default();
        let peer = node(4);
        let fresh = book.explain(&peer, 0);
        assert_eq!(fresh.score, book.score(&peer));
        assert_eq!(
            fresh.because,
            "0.75 = 3 / (3 + 1); for: 3 prior; against: 1 prior"
        );
        book.record(peer, TaskOutcome::Completed, 1);
        book.record(peer, TaskOutcome::Aborted, 2);
        book.record_check(peer, true, 3);
        book.record_check(peer, false, 4);
        let e = book.explain(&peer, 5);
        assert!((e.score - book.score(&peer)).abs() < 1e-12);
        assert!((e.score - e.good / (e.good + e.bad)).abs() < 1e-12);
        assert_eq!(
            e.because,
            "0.42 = 4 / (4 + 5.5); for: 3 prior, 1 completed; against: 1 prior, 0.5 × 1 aborted, \
             4 × 1 outvoted by replicas; spot checks: 1 agreed, 1 outvoted, streak 0; \
             suspended for 600 s more after an outvoted answer"
        );
        assert_eq!(e.suspended_until, Some(4 + 600_000));
    }
}
