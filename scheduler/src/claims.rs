//! Claims held to account: what a worker said a task would take, against what the requester
//! saw it take.
//!
//! A bid carries the worker's own estimates of latency and energy. Nothing stops a worker
//! from claiming to be ten times faster than it is, or to spend no energy at all, so the
//! requester keeps its own record, per worker, model and execution path, of every task it
//! awarded:
//!
//! - **latency** is measured by the requester: from the award leaving it to the result
//!   reaching it (the same span a bid's estimate covers, model fetch included). The bid
//!   cannot know the network between the two, so the over-claim check takes the award's
//!   round trip (award sent to acceptance received) off it first;
//! - **energy** cannot be metered from outside, so the requester estimates it: the measured
//!   time the work took (less the round trip) at the power the bid itself implied (claimed
//!   energy over claimed latency, which the worker derives from its own benchmark), and never
//!   less than the worker's signed receipt reports. A worker that claims to be ten times
//!   faster than it is is thus charged ten times its claimed energy; an honest one is charged
//!   what it claimed;
//! - the **claims** are the bid's figures.
//!
//! Records are kept per size class of the task too ([`size_class`]: within a factor of two
//! of input elements), since one model's tasks can differ a thousandfold in batch size.
//! Once a record exists, the auction scores that worker's bids for that model, path and size
//! with the medians of the last [`HISTORY_SAMPLES`] measurements instead of its claims
//! ([`ClaimBook::measured`]): lying about speed or energy buys at most the first award per
//! requester, model and path. An **over-claim** is a task whose measured latency, less the
//! round trip, exceeds [`LATENCY_FACTOR`]× the claim plus [`LATENCY_SLACK_MS`], or whose receipt (the worker's
//! own signed figure) reports more than [`ENERGY_FACTOR`]× the claimed energy plus
//! [`ENERGY_SLACK_MJ`]; each one counts against the worker's trust like a failure
//! ([`crate::trust`]). The slack absorbs honest noise: network round trips, a cold cache, a
//! busy moment.
//!
//! The book is bounded ([`ClaimBook::new`]): when full, the record seen longest ago is
//! forgotten.

use std::collections::{BTreeMap, VecDeque};

use crank_protocol::{ExecPath, ModelId, NodeId, UnixMillis};
use serde::{Deserialize, Serialize};

/// Measurements kept per worker, model and path; scores use their medians.
pub const HISTORY_SAMPLES: usize = 8;

/// A measured latency above this multiple of the claim (plus the slack) is an over-claim.
pub const LATENCY_FACTOR: u64 = 2;

/// Added to the allowed latency, ms: scheduling noise and the result's own transfer.
pub const LATENCY_SLACK_MS: u64 = 250;

/// A receipt reporting more than this multiple of the claimed energy (plus the slack) is an
/// over-claim.
pub const ENERGY_FACTOR: u64 = 2;

/// Added to the allowed energy, mJ: rounding of tiny runs.
pub const ENERGY_SLACK_MJ: u64 = 5;

/// Default number of (worker, model, path) records kept.
pub const DEFAULT_CLAIM_CAPACITY: usize = 16_384;

/// What the requester saw of one completed task, as the auction reports it
/// ([`crate::Output::Observed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The worker.
    pub peer: NodeId,
    /// The model it ran.
    pub model: ModelId,
    /// The path it bid with and ran on.
    pub path: ExecPath,
    /// The task's input elements (records are kept per size class, [`size_class`]).
    #[serde(default)]
    pub input_elements: u64,
    /// The bid's latency estimate, ms.
    pub claimed_latency_ms: u64,
    /// The bid's energy estimate, mJ.
    pub claimed_energy_mj: u64,
    /// From the award leaving the requester to the result reaching it, ms.
    pub observed_latency_ms: u64,
    /// From the award leaving the requester to its acceptance reaching it, ms: the network
    /// round trip inside `observed_latency_ms`, which the bid's estimate does not cover.
    #[serde(default)]
    pub network_ms: u64,
    /// The energy the worker's signed receipt reports, mJ (its own figure).
    pub reported_energy_mj: u64,
}

impl Observation {
    /// The requester's energy estimate, mJ: the claimed energy scaled by how much longer than
    /// claimed the work took (never shorter), and at least what the receipt reports.
    pub fn estimated_energy_mj(&self) -> u64 {
        let took = self
            .observed_latency_ms
            .saturating_sub(self.network_ms)
            .max(self.claimed_latency_ms);
        let scaled = u128::from(self.claimed_energy_mj) * u128::from(took)
            / u128::from(self.claimed_latency_ms.max(1));
        u64::try_from(scaled)
            .unwrap_or(u64::MAX)
            .max(self.reported_energy_mj)
    }

    /// Which claims the measurement belies, if any.
    pub fn overclaim(&self) -> Option<Overclaim> {
        let latency = self.observed_latency_ms.saturating_sub(self.network_ms)
            > self
                .claimed_latency_ms
                .saturating_mul(LATENCY_FACTOR)
                .saturating_add(LATENCY_SLACK_MS);
        let energy = self.reported_energy_mj
            > self
                .claimed_energy_mj
                .saturating_mul(ENERGY_FACTOR)
                .saturating_add(ENERGY_SLACK_MJ);
        (latency || energy).then_some(Overclaim { latency, energy })
    }
}

/// Which claims of one task its measurement belied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overclaim {
    /// The measured latency exceeded what the bid allowed for.
    pub latency: bool,
    /// The receipt reported more energy than the bid allowed for.
    pub energy: bool,
}

/// Latency and energy as the requester measured them (medians over recent tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    /// Median measured latency, ms.
    pub latency_ms: u64,
    /// Median estimated energy, mJ.
    pub energy_mj: u64,
}

/// One measured task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Sample {
    claimed: Measured,
    measured: Measured,
}

/// What this node saw of one worker on one model and path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// Tasks measured.
    pub tasks: u64,
    /// Tasks whose measurement belied the claims.
    pub overclaims: u64,
    /// When the last one was measured.
    pub last_seen: UnixMillis,
    samples: VecDeque<Sample>,
}

impl ClaimRecord {
    /// The medians of the recent measurements; None before the first.
    pub fn measured(&self) -> Option<Measured> {
        if self.samples.is_empty() {
            return None;
        }
        Some(Measured {
            latency_ms: median(self.samples.iter().map(|s| s.measured.latency_ms)),
            energy_mj: median(self.samples.iter().map(|s| s.measured.energy_mj)),
        })
    }

    /// The medians of the recent claims; None before the first measurement.
    pub fn claimed(&self) -> Option<Measured> {
        if self.samples.is_empty() {
            return None;
        }
        Some(Measured {
            latency_ms: median(self.samples.iter().map(|s| s.claimed.latency_ms)),
            energy_mj: median(self.samples.iter().map(|s| s.claimed.energy_mj)),
        })
    }

    fn push(&mut self, sample: Sample, overclaimed: bool, now: UnixMillis) {
        if self.samples.len() >= HISTORY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.tasks = self.tasks.saturating_add(1);
        if overclaimed {
            self.overclaims = self.overclaims.saturating_add(1);
        }
        self.last_seen = self.last_seen.max(now);
    }
}

/// The lower median (no averaging, so the figure is one that was measured).
fn median(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// The size class of a task of `input_elements` elements: tasks within a factor of two of
/// each other share one (`⌈log2(elements + 1)⌉`), so a record measured on small batches is
/// never used to judge a claim for a batch a thousand times larger.
pub fn size_class(input_elements: u64) -> u8 {
    // At most 64: fits.
    #[allow(clippy::cast_possible_truncation)]
    let class = (u64::BITS - input_elements.leading_zeros()) as u8;
    class
}

/// The key of one record: worker, model, path and size class.
type Key = (NodeId, ModelId, ExecPath, u8);

/// Claim records per worker, model and path, bounded; serialisable for persistence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ClaimBookRepr", from = "ClaimBookRepr")]
pub struct ClaimBook {
    capacity: usize,
    records: BTreeMap<Key, ClaimRecord>,
}

/// The stored form: JSON maps need string keys, so records are a list.
#[derive(Serialize, Deserialize)]
struct ClaimBookRepr {
    capacity: usize,
    records: Vec<(NodeId, ModelId, ExecPath, u8, ClaimRecord)>,
}

impl From<ClaimBook> for ClaimBookRepr {
    fn from(b: ClaimBook) -> Self {
        Self {
            capacity: b.capacity,
            records: b
                .records
                .into_iter()
                .map(|((n, m, p, c), r)| (n, m, p, c, r))
                .collect(),
        }
    }
}

impl From<ClaimBookRepr> for ClaimBook {
    fn from(r: ClaimBookRepr) -> Self {
        let mut book = ClaimBook::new(r.capacity);
        for (n, m, p, c, mut rec) in r.records {
            // A stored record never holds more samples than a live one.
            while rec.samples.len() > HISTORY_SAMPLES {
                rec.samples.pop_front();
            }
            book.insert((n, m, p, c), rec);
        }
        book
    }
}

impl Default for ClaimBook {
    fn default() -> Self {
        Self::new(DEFAULT_CLAIM_CAPACITY)
    }
}

impl ClaimBook {
    /// An empty book keeping at most `capacity` records (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            records: BTreeMap::new(),
        }
    }

    /// Records one observation; returns the over-claim it shows, if any.
    pub fn record(&mut self, obs: &Observation, now: UnixMillis) -> Option<Overclaim> {
        let over = obs.overclaim();
        let sample = Sample {
            claimed: Measured {
                latency_ms: obs.claimed_latency_ms,
                energy_mj: obs.claimed_energy_mj,
            },
            measured: Measured {
                latency_ms: obs.observed_latency_ms,
                energy_mj: obs.estimated_energy_mj(),
            },
        };
        let key = (
            obs.peer,
            obs.model,
            obs.path,
            size_class(obs.input_elements),
        );
        if !self.records.contains_key(&key) {
            self.make_room();
        }
        self.records
            .entry(key)
            .or_default()
            .push(sample, over.is_some(), now);
        over
    }

    fn insert(&mut self, key: Key, record: ClaimRecord) {
        if !self.records.contains_key(&key) {
            self.make_room();
        }
        self.records.insert(key, record);
    }

    fn make_room(&mut self) {
        while self.records.len() >= self.capacity {
            let oldest = self
                .records
                .iter()
                .min_by_key(|(k, r)| (r.last_seen, **k))
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.records.remove(&k);
                }
                None => return,
            }
        }
    }

    /// What this node measured of `peer` running `model` on `path` for tasks of about
    /// `input_elements` elements (the same size class), if anything.
    pub fn measured(
        &self,
        peer: &NodeId,
        model: &ModelId,
        path: ExecPath,
        input_elements: u64,
    ) -> Option<Measured> {
        self.records
            .get(&(*peer, *model, path, size_class(input_elements)))
            .and_then(ClaimRecord::measured)
    }

    /// Every measured path of `peer` for `model` at the size class of `input_elements`.
    pub fn measured_paths(
        &self,
        peer: &NodeId,
        model: &ModelId,
        input_elements: u64,
    ) -> BTreeMap<ExecPath, Measured> {
        let class = size_class(input_elements);
        self.records
            .range((*peer, *model, ExecPath::Cpu, 0)..)
            .take_while(|((n, m, _, _), _)| n == peer && m == model)
            .filter(|((_, _, _, c), _)| *c == class)
            .filter_map(|((_, _, p, _), r)| r.measured().map(|m| (*p, m)))
            .collect()
    }

    /// Every record of `peer`, by model, path and size class.
    pub fn of_peer<'a>(
        &'a self,
        peer: &'a NodeId,
    ) -> impl Iterator<Item = (ModelId, ExecPath, &'a ClaimRecord)> + 'a {
        self.records
            .iter()
            .filter(move |((n, _, _, _), _)| n == peer)
            .map(|((_, m, p, _), r)| (*m, *p, r))
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(peer: u8, claimed: u64, observed: u64, reported_mj: u64) -> Observation {
        Observation {
            peer: NodeId([peer; 32]),
            model: ModelId([1; 32]),
            path: ExecPath::Cpu,
            input_elements: 64,
            claimed_latency_ms: claimed,
            claimed_energy_mj: 10,
            observed_latency_ms: observed,
            network_ms: 0,
            reported_energy_mj: reported_mj,
        }
    }

    #[test]
    fn energy_is_the_claimed_power_over_the_time_taken_and_never_below_the_receipt() {
        let o = obs(1, 100, 1_000, 5);
        assert_eq!(
            o.estimated_energy_mj(),
            100,
            "10 mJ over 100 ms, for 1000 ms"
        );
        let far = Observation {
            network_ms: 500,
            ..o
        };
        assert_eq!(far.estimated_energy_mj(), 50);
        // Faster than claimed is charged as claimed; the receipt's own figure is a floor.
        assert_eq!(obs(1, 100, 10, 5).estimated_energy_mj(), 10);
        assert_eq!(obs(1, 100, 100, 70).estimated_energy_mj(), 70);
        let huge = Observation {
            claimed_energy_mj: u64::MAX,
            observed_latency_ms: u64::MAX,
            ..o
        };
        assert_eq!(huge.estimated_energy_mj(), u64::MAX);
    }

    #[test]
    fn honest_noise_is_no_overclaim_and_lies_are() {
        assert_eq!(
            obs(1, 20, 60, 10).overclaim(),
            None,
            "slack covers the network"
        );
        assert_eq!(obs(1, 1_000, 1_900, 20).overclaim(), None);
        // The round trip is the network's, not the worker's.
        let far = Observation {
            network_ms: 700,
            ..obs(1, 20, 900, 10)
        };
        assert_eq!(far.overclaim(), None);
        assert!(obs(1, 20, 900, 10).overclaim().is_some());
        assert_eq!(
            obs(1, 1, 1_000, 10).overclaim(),
            Some(Overclaim {
                latency: true,
                energy: false
            })
        );
        assert_eq!(
            obs(1, 100, 100, 26).overclaim(),
            Some(Overclaim {
                latency: false,
                energy: true
            })
        );
    }

    #[test]
    fn scores_use_the_median_of_recent_measurements() {
        let mut book = ClaimBook::new(8);
        let o = obs(1, 10, 0, 1);
        for (i, latency) in [5_000, 40, 50, 45].into_iter().enumerate() {
            let o = Observation {
                observed_latency_ms: latency,
                ..o
            };
            book.record(&o, i as u64);
        }
        let m = book.measured(&o.peer, &o.model, ExecPath::Cpu, 64).unwrap();
        // One cold start does not set the figure.
        assert_eq!(m.latency_ms, 45);
        // 10 mJ claimed for 10 ms, and the work took 45 ms: 10 · 45 / 10.
        assert_eq!(m.energy_mj, 45);
        assert_eq!(book.measured(&o.peer, &o.model, ExecPath::Gpu, 64), None);
        assert_eq!(book.measured_paths(&o.peer, &o.model, 64).len(), 1);
        // Same size class (64..=127 elements), not a batch of 100 times the size.
        assert!(
            book.measured(&o.peer, &o.model, ExecPath::Cpu, 127)
                .is_some()
        );
        assert_eq!(book.measured(&o.peer, &o.model, ExecPath::Cpu, 6_400), None);
        assert_eq!(book.measured_paths(&o.peer, &o.model, 6_400).len(), 0);
        assert_eq!((size_class(0), size_class(1), size_class(64)), (0, 1, 7));
        let r = book.of_peer(&o.peer).next().unwrap().2;
        assert_eq!((r.tasks, r.overclaims), (4, 1));
        for i in 0..20 {
            book.record(&o, 10 + i);
        }
        assert_eq!(book.of_peer(&o.peer).next().unwrap().2.samples.len(), 8);
    }

    #[test]
    fn the_book_is_bounded_and_round_trips_through_json() {
        let mut book = ClaimBook::new(3);
        for p in 0..10u8 {
            book.record(&obs(p, 10, 10, 1), u64::from(p));
        }
        assert_eq!(book.len(), 3);
        // The newest are kept.
        assert!(
            book.measured(&NodeId([9; 32]), &ModelId([1; 32]), ExecPath::Cpu, 64)
                .is_some()
        );
        assert!(
            book.measured(&NodeId([0; 32]), &ModelId([1; 32]), ExecPath::Cpu, 64)
                .is_none()
        );
        let json = serde_json::to_string(&book).unwrap();
        let back: ClaimBook = serde_json::from_str(&json).unwrap();
        assert_eq!(back, book);
    }
}
