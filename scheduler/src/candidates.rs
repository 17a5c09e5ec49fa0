//! Choosing whom to ask: the top candidates for a task from fresh adverts and Kademlia
//! provider records, so that a call for bids goes to a few peers and is never broadcast.
//!
//! Candidates are ordered by tiers, then by an indicative score:
//!
//! 1. gate: open adverts first, then provider records without an advert (state unknown), then
//!    closed gates (they will decline, but may have opened since);
//! 2. capacity: a free queue slot before a full queue;
//! 3. model: holding the model (in the advert or a provider record) before having to fetch it;
//! 4. the bid score formula ([`crate::score`]) applied to the advert's figures: indicative
//!    price (per-task price plus one benchmark inference's time at the per-second price),
//!    one benchmark inference's time and energy, and this node's trust in the peer.
//!
//! Nodes whose advert is expired, whose RAM cannot hold the model, or that are the requester
//! itself are left out. So that newcomers are ever asked, up to `explore` of the first `k`
//! places can go to a lottery among the lower-ranked peers whose gate is not known to be
//! closed, seeded by the caller (the crate itself draws no randomness).

use std::collections::BTreeSet;

use crank_protocol::{CapabilityAdvert, ModelId, NodeId, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::score::{Weights, score};
use crate::trust::TrustBook;

/// What to select candidates for.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateQuery<'a> {
    /// This node (never a candidate).
    pub requester: NodeId,
    /// The model.
    pub model: ModelId,
    /// Its size, bytes.
    pub model_bytes: u64,
    /// Nodes that hold the model according to Kademlia provider records.
    pub providers: &'a BTreeSet<NodeId>,
    /// The submitter's weights.
    pub weights: Weights,
    /// Size of the first round (the auction's fanout).
    pub k: usize,
    /// How many candidates to return in all (later rounds use the rest).
    pub limit: usize,
    /// Places among the first `k` given to the exploration lottery.
    pub explore: usize,
    /// Seed of the lottery.
    pub seed: u64,
}

/// What is known of a candidate's power gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKnown {
    /// The advert says closed.
    Closed,
    /// No advert.
    Unknown,
    /// The advert says open.
    Open,
}

/// A candidate with the facts it was ranked on, for `--verbose`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCandidate {
    /// The node.
    pub node: NodeId,
    /// Its gate.
    pub gate: GateKnown,
    /// Whether it has a free queue slot (true when unknown).
    pub has_capacity: bool,
    /// Whether it holds the model.
    pub has_model: bool,
    /// This node's trust in it.
    pub trust: f64,
    /// Indicative score from its advert (lower is better; +∞ without an advert).
    pub score: f64,
    /// Whether it was placed by the exploration lottery.
    pub explored: bool,
}

impl RankedCandidate {
    fn cmp_rank(&self, other: &Self) -> std::cmp::Ordering {
        other
            .gate
            .cmp(&self.gate)
            .then(other.has_capacity.cmp(&self.has_capacity))
            .then(other.has_model.cmp(&self.has_model))
            .then(self.score.total_cmp(&other.score))
            .then(other.trust.total_cmp(&self.trust))
            .then(self.node.cmp(&other.node))
    }
}

fn from_advert(a: &CapabilityAdvert, q: &CandidateQuery<'_>, trust: &TrustBook) -> RankedCandidate {
    let t = trust.score(&a.node);
    // The fastest benchmarked path stands for the node's speed.
    let best = a
        .bench
        .iter()
        .filter(|b| b.inferences_per_sec.is_finite() && b.inferences_per_sec > 0.0)
        .max_by(|x, y| x.inferences_per_sec.total_cmp(&y.inferences_per_sec));
    let score = match best {
        Some(b) => {
            let ms = 1000.0 / f64::from(b.inferences_per_sec);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let ms_u = ms.ceil().min(1e12) as u64;
            let price = a
                .pricing
                .per_task_stroops
                .saturating_add(a.pricing.per_second_stroops.saturating_mul(ms_u) / 1000);
            score(
                price,
                ms_u,
                b.microjoules_per_inference / 1000,
                t,
                &q.weights,
            )
            .total
        }
        None => f64::INFINITY,
    };
    RankedCandidate {
        node: a.node,
        gate: if a.gate.open {
            GateKnown::Open
        } else {
            GateKnown::Closed
        },
        has_capacity: a.capacity.queued < a.capacity.queue_slots,
        has_model: a.models.contains(&q.model) || q.providers.contains(&a.node),
        trust: t,
        score,
        explored: false,
    }
}

/// Ranks every eligible candidate, best first, with the exploration lottery applied to the
/// first `k` places; at most `limit` are returned.
pub fn rank_candidates<'a>(
    adverts: impl IntoIterator<Item = &'a CapabilityAdvert>,
    query: &CandidateQuery<'_>,
    trust: &TrustBook,
    now: UnixMillis,
) -> Vec<RankedCandidate> {
    // Newest advert per node without a map: sort by node, newest first (stable, so the first
    // seen wins a tie), and keep the head of each run. The result is in node order, which
    // keeps the ranking independent of the order adverts were handed in.
    let mut eligible: Vec<&CapabilityAdvert> = adverts
        .into_iter()
        .filter(|a| {
            let ram_bytes = a.hardware.ram_mib.saturating_mul(1024 * 1024);
            a.expires_at > now
                && a.node != query.requester
                && ram_bytes >= query.model_bytes
                && trust.suspended_until(&a.node, now).is_none()
        })
        .collect();
    eligible.sort_by(|a, b| a.node.cmp(&b.node).then(b.seq.cmp(&a.seq)));
    eligible.dedup_by(|later, first| later.node == first.node);
    // A node whose newest advert says its runtimes refuse the model is not asked, not even
    // as a holder of the model.
    let refusing: Vec<NodeId> = eligible
        .iter()
        .filter(|a| a.unservable.contains(&query.model))
        .map(|a| a.node)
        .collect();
    eligible.retain(|a| !a.unservable.contains(&query.model));
    let mut ranked: Vec<RankedCandidate> = eligible
        .iter()
        .map(|a| from_advert(a, query, trust))
        .collect();
    let advertised = ranked.len();
    for p in query.providers {
        if *p == query.requester
            || refusing.contains(p)
            || trust.suspended_until(p, now).is_some()
            || ranked[..advertised]
                .binary_search_by(|c| c.node.cmp(p))
                .is_ok()
        {
            continue;
        }
        ranked.push(RankedCandidate {
            node: *p,
            gate: GateKnown::Unknown,
            has_capacity: true,
            has_model: true,
            trust: trust.score(p),
            score: f64::INFINITY,
            explored: false,
        });
    }
    if ranked.len() > advertised {
        ranked.sort_by_key(|c| c.node);
    }
    // Only the first `limit` need sorting; the tail stays as the exploration pool.
    let keep = query.limit.min(ranked.len());
    if keep == 0 {
        return Vec::new();
    }
    if keep < ranked.len() {
        ranked.select_nth_unstable_by(keep - 1, RankedCandidate::cmp_rank);
    }
    ranked[..keep].sort_by(RankedCandidate::cmp_rank);

    let k = query.k.min(keep);
    let explore = query.explore.min(k);
    if explore > 0 {
        let fixed = k - explore;
        let mut rng = SplitMix64(query.seed);
        for slot in fixed..k {
            // Draw among lower-ranked peers not known to be closed.
            let pool: Vec<usize> = (slot + 1..ranked.len())
                .filter(|&i| ranked[i].gate != GateKnown::Closed)
                .collect();
            if pool.is_empty() {
                break;
            }
            #[allow(clippy::cast_possible_truncation)]
            let pick = pool[(rng.next() % pool.len() as u64) as usize];
            let chosen = ranked.remove(pick);
            ranked.insert(
                slot,
                RankedCandidate {
                    explored: true,
                    ..chosen
                },
            );
        }
    }
    ranked.truncate(query.limit);
    ranked
}

/// The candidates to ask, best first: the first `k` for the first round, the rest for
/// re-auctions. See the module docs for the order.
pub fn select_candidates<'a>(
    adverts: impl IntoIterator<Item = &'a CapabilityAdvert>,
    query: &CandidateQuery<'_>,
    trust: &TrustBook,
    now: UnixMillis,
) -> Vec<NodeId> {
    rank_candidates(adverts, query, trust, now)
        .into_iter()
        .map(|c| c.node)
        .collect()
}

/// A small, fast, seeded generator (Vigna's SplitMix64); enough for a fair lottery.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crank_protocol::{
        Capacity, ExecPath, GateInfo, GateReason, Hardware, PathBench, PowerInfo, Pricing,
        RunPolicy, TrustSummary,
    };

    use crate::trust::TaskOutcome;

    /// A test advert of node `[n; 32]`.
    pub(crate) fn advert(
        n: u8,
        open: bool,
        cached: bool,
        queued: u16,
        per_task: u64,
    ) -> CapabilityAdvert {
        CapabilityAdvert {
            node: NodeId([n; 32]),
            seq: 1,
            issued_at: 0,
            expires_at: 10_000,
            agent: "crank-node/0.1".into(),
            hardware: Hardware {
                cpu_model: "test".into(),
                cores: 4,
                ram_mib: 4096,
                arch: "x86_64".into(),
                os: "linux".into(),
                gpus: vec![],
            },
            power: PowerInfo {
                external_power: Some(true),
                has_battery: false,
                battery_percent: None,
                busy_milliwatts: 10_000,
            },
            gate: GateInfo {
                policy: RunPolicy::ChargingIdle,
                open,
                reason: (!open).then_some(GateReason::Paused),
            },
            models: if cached {
                vec![ModelId([7; 32])]
            } else {
                vec![]
            },
            unservable: Vec::new(),
            pricing: Pricing {
                per_task_stroops: per_task,
                per_second_stroops: 1000,
            },
            payout: "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7".into(),
            trust: TrustSummary::default(),
            bench: vec![PathBench {
                path: ExecPath::Cpu,
                inferences_per_sec: 100.0,
                microjoules_per_inference: 1000,
            }],
            capacity: Capacity {
                workers: 1,
                queue_slots: 4,
                queued,
            },
            addrs: vec![],
        }
    }

    fn query(providers: &BTreeSet<NodeId>) -> CandidateQuery<'_> {
        CandidateQuery {
            requester: NodeId([0; 32]),
            model: ModelId([7; 32]),
            model_bytes: 1000,
            providers,
            weights: Weights::default(),
            k: 3,
            limit: 10,
            explore: 0,
            seed: 1,
        }
    }

    fn ids(v: &[u8]) -> Vec<NodeId> {
        v.iter().map(|n| NodeId([*n; 32])).collect()
    }

    #[test]
    fn tiers_then_score() {
        let ads = vec![
            advert(1, false, true, 0, 10),   // closed gate
            advert(2, true, false, 0, 10),   // open, must fetch
            advert(3, true, true, 4, 10),    // open, cached, queue full
            advert(4, true, true, 0, 5_000), // open, cached, dear
            advert(5, true, true, 0, 10),    // open, cached, cheap
        ];
        let providers: BTreeSet<NodeId> = [NodeId([6; 32]), NodeId([0; 32])].into();
        let trust = TrustBook::default();
        let got = select_candidates(&ads, &query(&providers), &trust, 1);
        assert_eq!(got, ids(&[5, 4, 2, 3, 6, 1]));
    }

    #[test]
    fn nodes_that_cannot_run_the_model_are_not_asked() {
        let none = BTreeSet::new();
        let model = query(&none).model;
        let mut refusing = advert(1, true, true, 0, 1);
        refusing.unservable = vec![model];
        let mut other_model = advert(2, true, true, 0, 10);
        other_model.unservable = vec![ModelId([0xee; 32])];
        let ok = advert(3, true, true, 0, 500);
        let trust = TrustBook::default();
        let got = select_candidates([&refusing, &other_model, &ok], &query(&none), &trust, 1);
        assert_eq!(got, ids(&[2, 3]));
        // Not even as a node known to hold the model.
        let providers: BTreeSet<NodeId> = [NodeId([1; 32])].into();
        let got = select_candidates([&refusing, &ok], &query(&providers), &trust, 1);
        assert_eq!(got, ids(&[3]));
    }

    #[test]
    fn peers_outvoted_by_spot_checks_are_not_asked_until_their_suspension_ends() {
        let cheap_cheat = advert(1, true, true, 0, 1);
        let honest = advert(3, true, true, 0, 500);
        let mut trust = TrustBook::default();
        trust.record_check(cheap_cheat.node, false, 1);
        let none = BTreeSet::new();
        let got = select_candidates([&cheap_cheat, &honest], &query(&none), &trust, 1);
        assert_eq!(got, ids(&[3]));
        // Nor as a holder of the model.
        let providers: BTreeSet<NodeId> = [cheap_cheat.node].into();
        let got = select_candidates([&honest], &query(&providers), &trust, 1);
        assert_eq!(got, ids(&[3]));
        let until = trust.suspended_until(&cheap_cheat.node, 1).unwrap();
        let mut later = cheap_cheat.clone();
        later.expires_at = until + 10_000;
        let mut honest_later = honest.clone();
        honest_later.expires_at = until + 10_000;
        let got = select_candidates([&later, &honest_later], &query(&none), &trust, until);
        assert!(got.contains(&cheap_cheat.node), "{got:?}");
    }

    #[test]
    fn expired_self_and_too_small_nodes_are_left_out() {
        let mut old = advert(1, true, true, 0, 10);
        old.expires_at = 5;
        let mut me = advert(0, true, true, 0, 10);
        me.node = NodeId([0; 32]);
        let mut tiny = advert(2, true, true, 0, 10);
        tiny.hardware.ram_mib = 0;
        let ok = advert(3, true, true, 0, 10);
        let none = BTreeSet::new();
        let got = select_candidates(
            [&old, &me, &tiny, &ok],
            &query(&none),
            &TrustBook::default(),
            5,
        );
        assert_eq!(got, ids(&[3]));
    }

    #[test]
    fn the_newest_advert_of_a_node_counts_and_input_order_does_not() {
        // Node 1's older advert says open and cheap; its newer one says closed.
        let old = advert(1, true, true, 0, 10);
        let mut new = advert(1, false, true, 0, 10);
        new.seq = 2;
        let other = advert(2, true, true, 0, 500);
        let none = BTreeSet::new();
        let trust = TrustBook::default();
        let forward = rank_candidates([&old, &new, &other], &query(&none), &trust, 1);
        let backward = rank_candidates([&other, &new, &old], &query(&none), &trust, 1);
        assert_eq!(forward, backward);
        assert_eq!(forward.len(), 2, "one entry per node: {forward:?}");
        assert_eq!(forward[0].node, NodeId([2; 32]));
        assert_eq!(forward[1].gate, GateKnown::Closed);
        // A provider record never replaces an advert.
        let providers: BTreeSet<NodeId> = [NodeId([1; 32])].into();
        let with = rank_candidates([&old, &new, &other], &query(&providers), &trust, 1);
        assert_eq!(with, forward);
    }

    #[test]
    fn trust_orders_otherwise_equal_peers() {
        let ads = vec![advert(1, true, true, 0, 10), advert(2, true, true, 0, 10)];
        let mut trust = TrustBook::default();
        trust.record(NodeId([1; 32]), TaskOutcome::Failed, 0);
        trust.record(NodeId([2; 32]), TaskOutcome::Completed, 0);
        let none = BTreeSet::new();
        assert_eq!(
            select_candidates(&ads, &query(&none), &trust, 1),
            ids(&[2, 1])
        );
    }

    #[test]
    fn exploration_is_seeded_and_skips_closed_gates() {
        let ads: Vec<CapabilityAdvert> = (1..=20)
            .map(|n| advert(n, n != 20, true, 0, 10 + u64::from(n)))
            .collect();
        let none = BTreeSet::new();
        let q = CandidateQuery {
            explore: 1,
            ..query(&none)
        };
        let trust = TrustBook::default();
        let a = rank_candidates(&ads, &q, &trust, 1);
        let b = rank_candidates(&ads, &q, &trust, 1);
        assert_eq!(a, b, "same seed, same order");
        assert_eq!(a.len(), 10);
        assert_eq!(
            &a[..2].iter().map(|c| c.node).collect::<Vec<_>>(),
            &ids(&[1, 2])
        );
        assert!(a[2].explored);
        assert_ne!(a[2].node, NodeId([20; 32]));
        let picks: BTreeSet<NodeId> = (0..20)
            .map(|seed| {
                rank_candidates(&ads, &CandidateQuery { seed, ..q.clone() }, &trust, 1)[2].node
            })
            .collect();
        assert!(
            picks.len() > 3,
            "the lottery varies with the seed: {picks:?}"
        );
    }
}
