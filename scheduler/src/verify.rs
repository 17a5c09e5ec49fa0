//! Spot-check replication: which completed tasks a requester runs again on a second,
//! independent worker, how it compares the two answers, and who was wrong when they differ.
//!
//! The signature and hash checks prove who computed an answer, not that it is right; a
//! worker could return well-formed garbage and be paid for it. As BOINC does for volunteer
//! hosts, the requester re-runs a sample of tasks elsewhere and compares:
//!
//! - **Rate** ([`CheckPolicy::rate`]): as in BOINC's adaptive replication, a worker is on
//!   probation, checked on every task, until it has `halving_streak` agreeing checks in a row
//!   (default 3); then with probability `new_rate` (default ½), halved for each further
//!   `halving_streak` agreeing checks, down to `floor_rate` (default 5 %), never zero, so a
//!   worker that earned trust and then starts cheating is still caught, on average within
//!   `1 / floor_rate` of its wrong answers. Each time a worker is outvoted its probation
//!   doubles (6, 12, 24 … agreeing checks), so a worker that cheats now and then cannot earn
//!   a low rate back between its wrong answers. A worker whose trust is at or below
//!   `low_trust` is checked every time. The draw is the requester's own randomness after the
//!   result is in, and the replica is an ordinary task (a fresh id, sent to a worker the first
//!   never hears of), so no worker can tell which of its tasks are checked.
//! - **Independence** ([`by_independence`]): the replica never goes to the first worker's
//!   node id or payout account, and goes to another IPv4 /24 or IPv6 /48 ([`Network`], from
//!   the address its connection came from) and other hardware ([`HardwareClass`]) where any
//!   candidate offers them; the third run likewise avoids both earlier workers.
//! - **Agreement** ([`compare`]): outputs matched by position, names, shapes and element types
//!   equal; integers and bytes (class labels, token ids) exactly; floats within
//!   `abs + rel·|other|` ([`Tolerance`], default 1e-4 + 1e-3·|x|): the bound the conformance
//!   zoo holds tract to against onnxruntime, and the GPU path to against tract, so honest
//!   workers on different engines agree while a changed answer does not.
//! - **Majority** ([`verdict`]): when the first answer and the replica differ, a third
//!   independent run decides; the worker outside the majority is the one that was wrong.
//!   Without a third run, or when all three differ, nobody is blamed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crank_protocol::{CapabilityAdvert, ExecPath, NamedTensor, NodeId, TensorData};
use serde::{Deserialize, Serialize};

use crate::trust::TrustRecord;

/// How often to check, and the trust threshold under which every task is checked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckPolicy {
    /// Check at all. Off, every answer is taken on the worker's word.
    pub enabled: bool,
    /// Probability of checking a worker just off probation (default 0.5).
    pub new_rate: f64,
    /// The lowest probability, reached after a long agreeing streak (default 0.05; above 0).
    pub floor_rate: f64,
    /// Agreeing checks in a row that end probation, and then halve the rate each (default
    /// 3; at least 1).
    pub halving_streak: u64,
    /// Trust at or below which every task of the worker is checked (default 0.6).
    pub low_trust: f64,
    /// Float tolerance of the comparison.
    pub tolerance: Tolerance,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            new_rate: 0.5,
            floor_rate: 0.05,
            halving_streak: 3,
            low_trust: 0.6,
            tolerance: Tolerance::default(),
        }
    }
}

/// Why a [`CheckPolicy`] cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "check policy needs 0 < floor_rate ≤ new_rate ≤ 1, halving_streak ≥ 1, low_trust in [0, 1] and finite tolerances ≥ 0; got {0:?}"
)]
pub struct CheckPolicyError(pub CheckPolicy);

impl CheckPolicy {
    /// Checks the figures are usable.
    pub fn validate(&self) -> Result<(), CheckPolicyError> {
        let unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        let ok = unit(self.new_rate)
            && unit(self.floor_rate)
            && self.floor_rate > 0.0
            && self.floor_rate <= self.new_rate
            && self.halving_streak >= 1
            && unit(self.low_trust)
            && self.tolerance.is_usable();
        if ok {
            Ok(())
        } else {
            Err(CheckPolicyError(*self))
        }
    }

    /// The probability of checking a task of a worker with this record and trust score
    /// (see the module docs); 0 only when checks are off.
    pub fn rate(&self, record: Option<&TrustRecord>, trust: f64) -> f64 {
        if !self.enabled {
            return 0.0;
        }
        let streak = record.map_or(0, |r| r.streak);
        let disagreed = record.map_or(0, |r| r.disagreed).min(20);
        let step = self.halving_streak.max(1);
        let probation = step.saturating_mul(1 << disagreed);
        if trust <= self.low_trust || streak < probation {
            return 1.0;
        }
        let halvings = i32::try_from((streak - probation) / step).unwrap_or(i32::MAX);
        (self.new_rate * 0.5f64.powi(halvings)).clamp(self.floor_rate, 1.0)
    }

    /// Whether a task checked at `rate` is checked, given a uniformly random `draw`.
    #[allow(clippy::cast_precision_loss)] // 53 bits of the draw are plenty.
    pub fn sampled(rate: f64, draw: u64) -> bool {
        ((draw >> 11) as f64) / ((1u64 << 53) as f64) < rate
    }
}

/// How close two float answers must be: `|a − b| ≤ abs + rel·|b|`.
pub use crank_protocol::Tolerance;

/// Where two answers first differ.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Disagreement {
    /// Different numbers of outputs.
    #[error("{a} outputs against {b}")]
    Count {
        /// The first answer's.
        a: usize,
        /// The other's.
        b: usize,
    },
    /// An output's name, shape or element type differs.
    #[error("output {index}: {what}")]
    Form {
        /// Its position.
        index: usize,
        /// What differs.
        what: String,
    },
    /// Values differ beyond the tolerance.
    #[error(
        "output `{name}`: {outside} of {elements} elements differ (first at {first}: {a} against {b})"
    )]
    Values {
        /// The output.
        name: String,
        /// Elements outside the tolerance.
        outside: usize,
        /// Elements compared.
        elements: usize,
        /// The first such element.
        first: usize,
        /// Its value in the first answer.
        a: f64,
        /// Its value in the other.
        b: f64,
    },
}

/// Whether two answers to the same task agree (see the module docs).
pub fn compare(a: &[NamedTensor], b: &[NamedTensor], tol: Tolerance) -> Result<(), Disagreement> {
    if a.len() != b.len() {
        return Err(Disagreement::Count {
            a: a.len(),
            b: b.len(),
        });
    }
    for (index, (x, y)) in a.iter().zip(b).enumerate() {
        let form = |what: String| Err(Disagreement::Form { index, what });
        if x.name != y.name {
            return form(format!("named `{}` against `{}`", x.name, y.name));
        }
        if x.tensor.shape != y.tensor.shape {
            return form(format!(
                "`{}` has shape {:?} against {:?}",
                x.name, x.tensor.shape, y.tensor.shape
            ));
        }
        let (outside, first) = match (&x.tensor.data, &y.tensor.data) {
            (TensorData::F32(p), TensorData::F32(q)) => floats(
                p.iter().map(|v| f64::from(*v)),
                q.iter().map(|v| f64::from(*v)),
                tol,
            ),
            (TensorData::F64(p), TensorData::F64(q)) => {
                floats(p.iter().copied(), q.iter().copied(), tol)
            }
            (TensorData::I64(p), TensorData::I64(q)) => exact(p, q, |v| v as f64),
            (TensorData::I32(p), TensorData::I32(q)) => exact(p, q, f64::from),
            (TensorData::U8(p), TensorData::U8(q)) => exact(p, q, f64::from),
            (p, q) => {
                return form(format!(
                    "`{}` is {} against {}",
                    x.name,
                    p.dtype(),
                    q.dtype()
                ));
            }
        };
        if let Some((i, va, vb)) = first {
            return Err(Disagreement::Values {
                name: x.name.clone(),
                outside,
                elements: x.tensor.data.len(),
                first: i,
                a: va,
                b: vb,
            });
        }
    }
    Ok(())
}

type FirstOff = Option<(usize, f64, f64)>;

fn floats(
    a: impl Iterator<Item = f64>,
    b: impl Iterator<Item = f64>,
    tol: Tolerance,
) -> (usize, FirstOff) {
    let mut outside = 0usize;
    let mut first = None;
    for (i, (x, y)) in a.zip(b).enumerate() {
        // NaN agrees only with NaN (the wire refuses both unless a model allows them).
        if !tol.agrees(x, y) {
            outside += 1;
            first.get_or_insert((i, x, y));
        }
    }
    (outside, first)
}

fn exact<T: PartialEq + Copy>(a: &[T], b: &[T], f: impl Fn(T) -> f64) -> (usize, FirstOff) {
    let mut outside = 0usize;
    let mut first = None;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            outside += 1;
            first.get_or_insert((i, f(*x), f(*y)));
        }
    }
    (outside, first)
}

/// The network an address is in, for telling independent workers apart: its IPv4 /24 or its
/// IPv6 /48, the usual size of one site's or one operator's allocation. Two workers in one
/// such network may be one operator's machines, which could agree on a wrong answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Network {
    /// An IPv4 /24.
    V4([u8; 3]),
    /// An IPv6 /48.
    V6([u8; 6]),
}

impl Network {
    /// The network of an address (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::v4(v4),
                None => {
                    let o = v6.octets();
                    Self::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
                }
            },
        }
    }

    fn v4(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Self::V4([o[0], o[1], o[2]])
    }

    /// The network of a multiaddr's first `/ip4/…` or `/ip6/…` component (`None` for a
    /// DNS name, a relay circuit's far end, or anything else).
    pub fn of_multiaddr(addr: &str) -> Option<Self> {
        let mut parts = addr.split('/').skip(1);
        let proto = parts.next()?;
        let value = parts.next()?;
        match proto {
            "ip4" => value.parse::<Ipv4Addr>().ok().map(Self::v4),
            "ip6" => value
                .parse::<Ipv6Addr>()
                .ok()
                .map(|v| Self::of(IpAddr::V6(v))),
            _ => None,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Self::V6(o) => {
                let seg = |i: usize| u16::from_be_bytes([o[i], o[i + 1]]);
                write!(f, "{:x}:{:x}:{:x}::/48", seg(0), seg(2), seg(4))
            }
        }
    }
}

/// A worker that already answered a task, as far as telling a replica's worker apart from it
/// goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answerer {
    /// Its node id.
    pub node: NodeId,
    /// The account its receipt is paid to.
    pub payout: String,
    /// The network its connection came from, when known.
    pub network: Option<Network>,
    /// Its hardware and engine path, when its advert is known.
    pub hardware: Option<HardwareClass>,
}

/// What decides whether two workers compute the same way: CPU architecture and model, and
/// whether a GPU path is offered. Two answers from different classes that agree are
/// stronger evidence than two from identical machines, which share any engine bug.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HardwareClass {
    /// CPU architecture.
    pub arch: String,
    /// CPU brand string.
    pub cpu_model: String,
    /// Whether it benchmarks a GPU path.
    pub gpu: bool,
}

impl HardwareClass {
    /// The class an advert claims.
    pub fn of(advert: &CapabilityAdvert) -> Self {
        Self {
            arch: advert.hardware.arch.clone(),
            cpu_model: advert.hardware.cpu_model.clone(),
            gpu: advert.bench.iter().any(|b| b.path == ExecPath::Gpu),
        }
    }
}

/// How far a replica's candidates are from the workers that already answered. Every level
/// excludes their node ids and payout accounts; the better ones add a different network,
/// a different hardware class, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Independence {
    /// Another node id and payout account only (for example every worker on one LAN).
    Account,
    /// And other hardware.
    Hardware,
    /// And another network.
    Network,
    /// And another network and other hardware.
    NetworkAndHardware,
}

impl fmt::Display for Independence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Account => "another node and account",
            Self::Hardware => "another node, account and hardware",
            Self::Network => "another node, account and network",
            Self::NetworkAndHardware => "another node, account, network and hardware",
        })
    }
}

impl Answerer {
    /// How independent this worker is of every one in `ran`; `None` when it shares a node
    /// id or payout account with one. An unknown network or class counts as the same:
    /// independence is never assumed.
    pub fn independence_from(&self, ran: &[Answerer]) -> Option<Independence> {
        if ran
            .iter()
            .any(|a| a.node == self.node || a.payout == self.payout)
        {
            return None;
        }
        let other_network = self
            .network
            .is_some_and(|n| ran.iter().all(|a| a.network.is_some_and(|m| m != n)));
        let other_hardware = self.hardware.as_ref().is_some_and(|h| {
            ran.iter()
                .all(|a| a.hardware.as_ref().is_some_and(|g| g != h))
        });
        Some(match (other_network, other_hardware) {
            (true, true) => Independence::NetworkAndHardware,
            (true, false) => Independence::Network,
            (false, true) => Independence::Hardware,
            (false, false) => Independence::Account,
        })
    }
}

/// How independent a candidate (its advert, and its network where known) is of every
/// answerer in `ran`; see [`Answerer::independence_from`].
pub fn independence(
    candidate: &CapabilityAdvert,
    network: Option<Network>,
    ran: &[Answerer],
) -> Option<Independence> {
    Answerer {
        node: candidate.node,
        payout: candidate.payout.clone(),
        network,
        hardware: Some(HardwareClass::of(candidate)),
    }
    .independence_from(ran)
}

/// The candidates for a replica grouped by their level of [`independence`], most
/// independent first (empty levels left out); `network` gives a candidate's network where
/// known. A replica's auction asks the first group first and falls back to the others.
pub fn by_independence<'a>(
    adverts: impl IntoIterator<Item = &'a CapabilityAdvert>,
    network: impl Fn(&CapabilityAdvert) -> Option<Network>,
    ran: &[Answerer],
) -> Vec<(Independence, Vec<&'a CapabilityAdvert>)> {
    let mut groups: Vec<(Independence, Vec<&'a CapabilityAdvert>)> = Vec::new();
    for a in adverts {
        let Some(level) = independence(a, network(a), ran) else {
            continue;
        };
        match groups.iter_mut().find(|(l, _)| *l == level) {
            Some((_, g)) => g.push(a),
            None => groups.push((level, vec![a])),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.0));
    groups
}

/// Who was wrong, from the comparisons made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The first answer and the replica agree.
    Agreed,
    /// The third run sided with the replica: the first worker was wrong.
    FirstWrong,
    /// The third run sided with the first answer: the replica's worker was wrong.
    ReplicaWrong,
    /// No majority: no third run, or it agreed with neither.
    Unresolved,
}

/// The verdict from whether the first answer and the replica agree and, when they do not,
/// whether a third run agrees with each (`None`: no third run).
pub fn verdict(first_and_replica: bool, third: Option<(bool, bool)>) -> Verdict {
    if first_and_replica {
        return Verdict::Agreed;
    }
    match third {
        Some((true, false)) => Verdict::ReplicaWrong,
        Some((false, true)) => Verdict::FirstWrong,
        // Agreeing with both is impossible when they disagree, bar tolerance edge cases
        // (a third between two answers each within reach of it): nobody is blamed then.
        _ => Verdict::Unresolved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crank_protocol::Tensor;
    use proptest::prelude::*;

    fn f32s(name: &str, v: Vec<f32>) -> Vec<NamedTensor> {
        vec![NamedTensor {
            name: name.into(),
            tensor: Tensor::f32(vec![v.len() as u64], v).unwrap(),
        }]
    }

    fn labels(v: Vec<i64>) -> Vec<NamedTensor> {
        vec![NamedTensor {
            name: "label".into(),
            tensor: Tensor {
                shape: vec![v.len() as u64],
                data: TensorData::I64(v),
            },
        }]
    }

    fn record(streak: u64, disagreed: u64) -> TrustRecord {
        TrustRecord {
            streak,
            disagreed,
            ..TrustRecord::default()
        }
    }

    #[test]
    fn an_infinite_answer_agrees_only_with_the_same_infinity() {
        let tol = Tolerance::default();
        let inf = f32s("y", vec![f32::INFINITY, 1.0]);
        let five = f32s("y", vec![5.0, 1.0]);
        assert!(compare(&five, &inf, tol).is_err());
        assert!(compare(&inf, &five, tol).is_err());
        assert!(compare(&inf, &inf.clone(), tol).is_ok());
    }

    #[test]
    fn the_rate_falls_with_an_agreeing_streak_and_never_reaches_zero() {
        let p = CheckPolicy::default();
        // Probation: every task until three agreeing checks.
        assert_eq!(p.rate(None, 0.75), 1.0);
        assert_eq!(p.rate(Some(&record(2, 0)), 0.9), 1.0);
        assert_eq!(p.rate(Some(&record(3, 0)), 0.9), 0.5);
        assert_eq!(p.rate(Some(&record(5, 0)), 0.9), 0.5);
        assert_eq!(p.rate(Some(&record(6, 0)), 0.9), 0.25);
        assert_eq!(p.rate(Some(&record(9, 0)), 0.9), 0.125);
        assert_eq!(p.rate(Some(&record(1_000_000, 0)), 0.99), 0.05);
        // Low trust: every task.
        assert_eq!(p.rate(Some(&record(100, 0)), 0.6), 1.0);
        // Each disagreement doubles probation: 6 agreeing checks after one, 12 after two.
        assert_eq!(p.rate(Some(&record(5, 1)), 0.9), 1.0);
        assert_eq!(p.rate(Some(&record(6, 1)), 0.9), 0.5);
        assert_eq!(p.rate(Some(&record(11, 2)), 0.9), 1.0);
        assert_eq!(p.rate(Some(&record(12, 2)), 0.9), 0.5);
        assert_eq!(p.rate(Some(&record(u64::MAX, u64::MAX)), 0.9), 0.05);
        let off = CheckPolicy {
            enabled: false,
            ..p
        };
        assert_eq!(off.rate(None, 0.1), 0.0);
    }

    #[test]
    fn a_policy_that_could_stop_checking_is_refused() {
        for bad in [
            CheckPolicy {
                floor_rate: 0.0,
                ..CheckPolicy::default()
            },
            CheckPolicy {
                floor_rate: 0.6,
                ..CheckPolicy::default()
            },
            CheckPolicy {
                halving_streak: 0,
                ..CheckPolicy::default()
            },
            CheckPolicy {
                new_rate: f64::NAN,
                ..CheckPolicy::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        CheckPolicy::default().validate().unwrap();
    }

    #[test]
    fn sampling_follows_the_rate() {
        assert!(!CheckPolicy::sampled(0.0, 0));
        assert!(CheckPolicy::sampled(1.0, u64::MAX));
        assert!(CheckPolicy::sampled(0.5, u64::MAX / 2 - 4096));
        assert!(!CheckPolicy::sampled(0.5, u64::MAX / 2 + 4096));
    }

    #[test]
    fn labels_agree_only_exactly_and_floats_within_the_tolerance() {
        let tol = Tolerance::default();
        assert_eq!(
            compare(&labels(vec![3, 5]), &labels(vec![3, 5]), tol),
            Ok(())
        );
        let e = compare(&labels(vec![3, 5]), &labels(vec![3, 6]), tol).unwrap_err();
        assert!(
            e.to_string()
                .contains("1 of 2 elements differ (first at 1: 5 against 6)"),
            "{e}"
        );
        let p = f32s("probabilities", vec![0.25, 0.75]);
        assert_eq!(
            compare(&p, &f32s("probabilities", vec![0.25005, 0.7504]), tol),
            Ok(())
        );
        assert!(compare(&p, &f32s("probabilities", vec![0.75, 0.25]), tol).is_err());
        // Form: count, names, shapes, types.
        assert!(matches!(
            compare(&p, &[], tol),
            Err(Disagreement::Count { a: 1, b: 0 })
        ));
        assert!(matches!(
            compare(&p, &f32s("other", vec![0.25, 0.75]), tol),
            Err(Disagreement::Form { .. })
        ));
        assert!(matches!(
            compare(&p, &f32s("probabilities", vec![0.25]), tol),
            Err(Disagreement::Form { .. })
        ));
        let mut as_int = labels(vec![0, 1]);
        as_int[0].name = "probabilities".into();
        assert!(matches!(
            compare(&p, &as_int, tol),
            Err(Disagreement::Form { .. })
        ));
    }

    #[test]
    fn the_majority_decides_and_nobody_is_blamed_without_one() {
        assert_eq!(verdict(true, None), Verdict::Agreed);
        assert_eq!(verdict(false, None), Verdict::Unresolved);
        assert_eq!(verdict(false, Some((true, false))), Verdict::ReplicaWrong);
        assert_eq!(verdict(false, Some((false, true))), Verdict::FirstWrong);
        assert_eq!(verdict(false, Some((false, false))), Verdict::Unresolved);
    }

    proptest! {
        /// An answer always agrees with itself, and agreement does not depend on which side
        /// is first for integers.
        #[test]
        fn an_answer_agrees_with_itself(v in proptest::collection::vec(-1e6f32..1e6, 0..64),
                                        l in proptest::collection::vec(any::<i64>(), 0..64)) {
            let tol = Tolerance::default();
            prop_assert_eq!(compare(&f32s("y", v.clone()), &f32s("y", v), tol), Ok(()));
            prop_assert_eq!(compare(&labels(l.clone()), &labels(l), tol), Ok(()));
        }

        /// Changing any label is a disagreement.
        #[test]
        fn any_changed_label_disagrees(l in proptest::collection::vec(any::<i64>(), 1..64),
                                       at in any::<prop::sample::Index>(), by in 1i64..1000) {
            let mut other = l.clone();
            let i = at.index(l.len());
            other[i] = other[i].wrapping_add(by);
            prop_assert!(compare(&labels(l), &labels(other), Tolerance::default()).is_err());
        }

        /// The rate is a probability, never zero while checks are on, and never rises with
        /// a longer agreeing streak.
        #[test]
        fn the_rate_is_positive_and_falls(streak in 0u64..10_000, trust in 0.0f64..=1.0) {
            let p = CheckPolicy::default();
            let r = p.rate(Some(&record(streak, 0)), trust);
            prop_assert!(r > 0.0 && r <= 1.0);
            prop_assert!(p.rate(Some(&record(streak + 1, 0)), trust) <= r);
        }
    }
    fn answerer(a: &CapabilityAdvert, network: Option<Network>) -> Answerer {
        Answerer {
            node: a.node,
            payout: a.payout.clone(),
            network,
            hardware: Some(HardwareClass::of(a)),
        }
    }

    fn with(n: u8, payout: &str, cpu: &str) -> CapabilityAdvert {
        let mut a = crate::candidates::tests::advert(n, true, true, 0, 10);
        a.payout = payout.into();
        a.hardware.cpu_model = cpu.into();
        a
    }

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        let v4 = |s: &str| Network::of(s.parse().unwrap());
        assert_eq!(v4("203.0.113.7"), v4("203.0.113.200"));
        assert_ne!(v4("203.0.113.7"), v4("203.0.114.7"));
        assert_eq!(v4("::ffff:203.0.113.9"), v4("203.0.113.1"));
        assert_eq!(v4("2001:db8:1:2::1"), v4("2001:db8:1:ffff::9"));
        assert_ne!(v4("2001:db8:1::1"), v4("2001:db8:2::1"));
        assert_eq!(v4("203.0.113.7").to_string(), "203.0.113.0/24");
        assert_eq!(v4("2001:db8:1:2::1").to_string(), "2001:db8:1::/48");
        assert_eq!(
            Network::of_multiaddr("/ip4/198.51.100.4/udp/4001/quic-v1"),
            Some(v4("198.51.100.99"))
        );
        assert_eq!(
            Network::of_multiaddr("/ip6/2001:db8:5::1/tcp/1"),
            Some(v4("2001:db8:5::2"))
        );
        assert_eq!(Network::of_multiaddr("/dns4/example.org/tcp/1"), None);
        assert_eq!(Network::of_multiaddr("/ip4/not-an-ip/tcp/1"), None);
        assert_eq!(Network::of_multiaddr(""), None);
    }

    #[test]
    fn a_replica_never_goes_to_the_same_node_or_account() {
        let first = with(1, "GFIRST", "cpu-a");
        let ran = [answerer(&first, None)];
        assert_eq!(independence(&first, None, &ran), None);
        // Another key paid to the same account is the same party.
        let sybil = with(2, "GFIRST", "cpu-b");
        assert_eq!(independence(&sybil, None, &ran), None);
        let other = with(3, "GOTHER", "cpu-a");
        assert_eq!(
            independence(&other, None, &ran),
            Some(Independence::Account)
        );
    }

    #[test]
    fn other_networks_and_hardware_are_preferred_and_unknown_counts_as_same() {
        let net = |s: &str| Some(Network::of(s.parse().unwrap()));
        let first = with(1, "G1", "cpu-a");
        let ran = [answerer(&first, net("203.0.113.5"))];
        let same_lan = with(2, "G2", "cpu-a");
        let other_hw = with(3, "G3", "cpu-b");
        let other_net = with(4, "G4", "cpu-a");
        let far = with(5, "G5", "cpu-b");
        let nets = |a: &CapabilityAdvert| match a.node.0[0] {
            2 | 3 => net("203.0.113.77"),
            4 | 5 => net("198.51.100.1"),
            _ => None,
        };
        assert_eq!(
            independence(&same_lan, nets(&same_lan), &ran),
            Some(Independence::Account)
        );
        assert_eq!(
            independence(&other_hw, nets(&other_hw), &ran),
            Some(Independence::Hardware)
        );
        assert_eq!(
            independence(&other_net, nets(&other_net), &ran),
            Some(Independence::Network)
        );
        assert_eq!(
            independence(&far, nets(&far), &ran),
            Some(Independence::NetworkAndHardware)
        );
        // A candidate whose network is unknown is not assumed to be elsewhere.
        assert_eq!(
            independence(&other_net, None, &ran),
            Some(Independence::Account)
        );

        let all = [
            first.clone(),
            same_lan.clone(),
            other_hw.clone(),
            other_net.clone(),
            far.clone(),
        ];
        let levels = |ads: &[CapabilityAdvert], ran: &[Answerer]| {
            by_independence(ads, nets, ran)
                .into_iter()
                .map(|(l, g)| (l, g.iter().map(|a| a.node.0[0]).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            levels(&all, &ran),
            vec![
                (Independence::NetworkAndHardware, vec![5]),
                (Independence::Network, vec![4]),
                (Independence::Hardware, vec![3]),
                (Independence::Account, vec![2]),
            ]
        );
        assert!(levels(&all[..1], &ran).is_empty());

        // A third run must be independent of both earlier answers.
        let ran2 = [ran[0].clone(), answerer(&far, nets(&far))];
        assert_eq!(
            levels(&all, &ran2),
            vec![(Independence::Account, vec![2, 3, 4])]
        );
    }
}
