//! Bid scoring, submitter preferences and the payment rule.
//!
//! A bid's score is a weighted sum of logarithms (lower wins):
//!
//! ```text
//! score = w_price   · ln(1 + price_stroops)
//!       + w_latency · ln(1 + est_latency_ms)
//!       + w_energy  · ln(1 + est_energy_mj)
//!       + w_trust   · −ln(trust)            trust ∈ [0.001, 1]
//! ```
//!
//! Ranking by this sum is ranking by the product `price^w_p · latency^w_l · energy^w_e /
//! trust^w_t`, so the rule needs no normalisation: it is the same whatever the units or the
//! scale of the task, and one bid's score never depends on the other bids. A weight says how
//! many doublings of price one doubling of that quantity is worth: with `w_latency = 1` and
//! `w_price = 1`, twice as slow is as bad as twice as dear; with `w_trust = 1`, a peer that
//! succeeds half the time is as bad as one that asks twice the price. The `1 +` keeps zero
//! (a free bid, a cached tiny model) finite.
//!
//! The payment rule ([`PaymentRule`]) and why the default is pay-as-bid are described in
//! the crate docs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::claims::Measured;

/// Lowest trust used in scoring, so that `−ln(trust)` stays finite.
pub const TRUST_FLOOR: f64 = 0.001;

/// Largest weight accepted; larger values only make scores overflow sooner.
pub const MAX_WEIGHT: f64 = 1000.0;

/// A submitter's named preference (`--prefer cheap|fast|green|balanced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    /// Lowest price first: twice as fast is worth only 15 % more.
    Cheap,
    /// Lowest latency first: twice as fast is worth four times the price.
    Fast,
    /// Lowest energy first: half the energy is worth four times the price.
    Green,
    /// Price and latency count equally, energy half as much.
    #[default]
    Balanced,
}

impl Preference {
    /// Every preset, for help texts and tests.
    pub const ALL: [Preference; 4] = [Self::Cheap, Self::Fast, Self::Green, Self::Balanced];

    /// The weights this preset stands for.
    pub fn weights(self) -> Weights {
        match self {
            Self::Cheap => Weights {
                price: 1.0,
                latency: 0.2,
                energy: 0.1,
                trust: 1.0,
            },
            Self::Fast => Weights {
                price: 0.5,
                latency: 1.0,
                energy: 0.1,
                trust: 1.0,
            },
            Self::Green => Weights {
                price: 0.5,
                latency: 0.2,
                energy: 1.0,
                trust: 1.0,
            },
            Self::Balanced => Weights {
                price: 1.0,
                latency: 1.0,
                energy: 0.5,
                trust: 1.0,
            },
        }
    }
}

impl fmt::Display for Preference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cheap => "cheap",
            Self::Fast => "fast",
            Self::Green => "green",
            Self::Balanced => "balanced",
        })
    }
}

/// Why a preference or a set of weights did not parse or is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    /// The text names no preset.
    #[error("unknown preference {0:?}; expected cheap, fast, green or balanced")]
    UnknownPreference(String),
    /// A `name=value` pair names no weight.
    #[error("unknown weight {0:?}; expected price, latency, energy or trust")]
    UnknownWeight(String),
    /// A `name=value` pair is malformed or its value is not a number.
    #[error("weight {0:?} is not of the form name=number")]
    Malformed(String),
    /// A weight is negative, not finite, or above [`MAX_WEIGHT`].
    #[error("weight `{name}` = {value} must be finite and within 0..={MAX_WEIGHT}")]
    OutOfRange {
        /// Which weight.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// The price weight is zero: scores must trade something off against price.
    #[error("the price weight must be above zero")]
    ZeroPrice,
}

impl FromStr for Preference {
    type Err = WeightsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cheap" => Ok(Self::Cheap),
            "fast" => Ok(Self::Fast),
            "green" => Ok(Self::Green),
            "balanced" => Ok(Self::Balanced),
            _ => Err(WeightsError::UnknownPreference(
                s.chars().take(40).collect(),
            )),
        }
    }
}

/// Explicit scoring weights (see the module docs for the formula).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight of `ln(1 + price in stroops)`; must be above zero.
    pub price: f64,
    /// Weight of `ln(1 + estimated latency in ms)`.
    pub latency: f64,
    /// Weight of `ln(1 + estimated energy in mJ)`.
    pub energy: f64,
    /// Weight of `−ln(trust)`.
    pub trust: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Preference::Balanced.weights()
    }
}

impl From<Preference> for Weights {
    fn from(p: Preference) -> Self {
        p.weights()
    }
}

impl Weights {
    /// Checks every weight is finite, within `0..=MAX_WEIGHT`, and the price weight positive.
    pub fn validate(&self) -> Result<(), WeightsError> {
        for (name, value) in [
            ("price", self.price),
            ("latency", self.latency),
            ("energy", self.energy),
            ("trust", self.trust),
        ] {
            if !value.is_finite() || !(0.0..=MAX_WEIGHT).contains(&value) {
                return Err(WeightsError::OutOfRange { name, value });
            }
        }
        if self.price <= 0.0 {
            return Err(WeightsError::ZeroPrice);
        }
        Ok(())
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "price={},latency={},energy={},trust={}",
            self.price, self.latency, self.energy, self.trust
        )
    }
}

/// Parses a preset name (`green`) or explicit weights (`price=1,latency=0.5`).
///
/// Explicit weights start from [`Preference::Balanced`], so the ones left out keep its values.
impl FromStr for Weights {
    type Err = WeightsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains('=') {
            return Ok(s.parse::<Preference>()?.weights());
        }
        let mut w = Weights::default();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let malformed = || WeightsError::Malformed(pair.chars().take(40).collect());
            let (name, value) = pair.split_once('=').ok_or_else(malformed)?;
            let value: f64 = value.trim().parse().map_err(|_| malformed())?;
            match name.trim() {
                "price" => w.price = value,
                "latency" => w.latency = value,
                "energy" => w.energy = value,
                "trust" => w.trust = value,
                other => {
                    return Err(WeightsError::UnknownWeight(
                        other.chars().take(40).collect(),
                    ));
                }
            }
        }
        w.validate()?;
        Ok(w)
    }
}

/// A bid's score, with each weighted term so traces can say why a bid won.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Sum of the four terms; lower wins.
    pub total: f64,
    /// `w_price · ln(1 + price)`.
    pub price: f64,
    /// `w_latency · ln(1 + latency_ms)`.
    pub latency: f64,
    /// `w_energy · ln(1 + energy_mj)`.
    pub energy: f64,
    /// `w_trust · −ln(trust)`.
    pub trust: f64,
}

/// Scores an offer. `trust` is clamped to `[TRUST_FLOOR, 1]` (NaN counts as the floor).
pub fn score(
    price_stroops: u64,
    latency_ms: u64,
    energy_mj: u64,
    trust: f64,
    weights: &Weights,
) -> Score {
    let trust = if trust.is_nan() {
        TRUST_FLOOR
    } else {
        trust.clamp(TRUST_FLOOR, 1.0)
    };
    let price = weights.price * ln1p_u64(price_stroops);
    let latency = weights.latency * ln1p_u64(latency_ms);
    let energy = weights.energy * ln1p_u64(energy_mj);
    let trust = weights.trust * -trust.ln();
    Score {
        total: price + latency + energy + trust,
        price,
        latency,
        energy,
        trust,
    }
}

/// Scores a bid from a peer whose trust figure is `trust`.
pub fn score_bid(bid: &crank_protocol::Bid, trust: f64, weights: &Weights) -> Score {
    score(
        bid.price_stroops,
        u64::from(bid.est_latency_ms),
        bid.est_energy_mj,
        trust,
        weights,
    )
}

#[allow(clippy::cast_precision_loss)] // ln of a u64 only needs f64's 53 bits of mantissa.
fn ln1p_u64(x: u64) -> f64 {
    (x as f64).ln_1p()
}

/// What the winner of an auction is paid (see the crate docs for why the default is
/// pay-as-bid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentRule {
    /// The winner's own bid. Claims decide only who wins, never what the winner is paid.
    #[default]
    #[serde(alias = "first-price")]
    PayAsBid,
    /// The price at which the winner's score would equal the runner-up's, capped at the max
    /// price (its own bid when there is no runner-up), with scores taken over price, trust and
    /// the requester's own measurements only: latency and energy count when both bids have
    /// measured history, and claims never do.
    SecondScore,
}

impl fmt::Display for PaymentRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PayAsBid => "pay-as-bid",
            Self::SecondScore => "second-score",
        })
    }
}

impl FromStr for PaymentRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pay-as-bid" | "first-price" => Ok(Self::PayAsBid),
            "second-score" => Ok(Self::SecondScore),
            other => Err(format!(
                "unknown payment rule {other:?}; expected pay-as-bid or second-score"
            )),
        }
    }
}

/// What the payment rule may look at of one bid: its price, the requester's trust in the
/// bidder and what the requester measured of it. Claimed latency and energy are not here, so
/// no rule can pay for them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PayTerms {
    /// Asked price, stroops.
    pub price_stroops: u64,
    /// The requester's trust figure for the bidder.
    pub trust: f64,
    /// What the requester measured of the bidder on this model and path, if anything.
    pub measured: Option<Measured>,
}

impl PayTerms {
    /// The score the payment rule sees; quality terms only when `quality`.
    fn score(&self, quality: bool, weights: &Weights) -> f64 {
        let (latency, energy) = match (quality, self.measured) {
            (true, Some(m)) => (m.latency_ms, m.energy_mj),
            _ => (0, 0),
        };
        score(self.price_stroops, latency, energy, self.trust, weights).total
    }
}

/// The price paid to `winner`, given the best other usable bid (`runner_up`, None when
/// there is none).
///
/// Always within `[bid, max(bid, max_price)]`; callers only award bids at or below the max
/// price, so the result is within `[bid, max price]`.
pub fn award_price(
    rule: PaymentRule,
    winner: &PayTerms,
    runner_up: Option<&PayTerms>,
    max_price: u64,
    weights: &Weights,
) -> u64 {
    let bid_price = winner.price_stroops;
    let cap = max_price.max(bid_price);
    match rule {
        PaymentRule::PayAsBid => bid_price,
        PaymentRule::SecondScore => {
            // Alone, there is no competitor to price against: the winner gets its own bid, so
            // a generous max price is not paid just because one worker answered.
            let Some(second) = runner_up else {
                return bid_price;
            };
            let quality = winner.measured.is_some() && second.measured.is_some();
            // Solve w_p·ln(1 + p) + rest = S₂ for p, where rest = S₁ − w_p·ln(1 + bid).
            let gap = (second.score(quality, weights) - winner.score(quality, weights)).max(0.0);
            let factor = (gap / weights.price).exp();
            #[allow(clippy::cast_precision_loss)]
            let indifferent = (bid_price as f64 + 1.0) * factor - 1.0;
            if !indifferent.is_finite() || indifferent >= cap as f64 {
                return cap;
            }
            // Casting a finite, non-negative f64 below `cap` to u64 is exact up to rounding down.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let p = indifferent.max(0.0).floor() as u64;
            p.clamp(bid_price, cap)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn presets_round_trip_through_text() {
        for p in Preference::ALL {
            assert_eq!(p.to_string().parse::<Preference>().unwrap(), p);
            p.weights().validate().unwrap();
            assert_eq!(p.to_string().parse::<Weights>().unwrap(), p.weights());
        }
        assert_eq!("GREEN".parse::<Preference>().unwrap(), Preference::Green);
        assert!(matches!(
            "cheapest".parse::<Preference>(),
            Err(WeightsError::UnknownPreference(_))
        ));
    }

    #[test]
    fn explicit_weights_parse_and_validate() {
        let w: Weights = "price=2, latency=0.25".parse().unwrap();
        assert_eq!(w.price, 2.0);
        assert_eq!(w.latency, 0.25);
        assert_eq!(w.energy, Weights::default().energy);
        assert_eq!(w.to_string().parse::<Weights>().unwrap(), w);
        assert!(matches!(
            "price=0".parse::<Weights>(),
            Err(WeightsError::ZeroPrice)
        ));
        assert!(matches!(
            "price=-1".parse::<Weights>(),
            Err(WeightsError::OutOfRange { name: "price", .. })
        ));
        assert!(matches!(
            "speed=1".parse::<Weights>(),
            Err(WeightsError::UnknownWeight(_))
        ));
        assert!(matches!(
            "price=abc".parse::<Weights>(),
            Err(WeightsError::Malformed(_))
        ));
        assert!(matches!(
            "latency=NaN".parse::<Weights>(),
            Err(WeightsError::OutOfRange { .. })
        ));
    }

    #[test]
    fn doubling_price_costs_one_price_weight_of_ln2() {
        let w = Weights {
            price: 1.0,
            latency: 1.0,
            energy: 0.0,
            trust: 1.0,
        };
        let a = score(999, 99, 0, 1.0, &w);
        let b = score(1999, 99, 0, 1.0, &w);
        assert!((b.total - a.total - 2f64.ln()).abs() < 1e-12);
        // Half the trust weighs the same as twice the price.
        let c = score(999, 99, 0, 0.5, &w);
        assert!((c.total - b.total).abs() < 1e-12);
        assert_eq!(score(0, 0, 0, 1.0, &w).total, 0.0);
        assert!(score(0, 0, 0, f64::NAN, &w).total.is_finite());
    }

    fn terms(price: u64, latency_ms: Option<u64>) -> PayTerms {
        PayTerms {
            price_stroops: price,
            trust: 1.0,
            measured: latency_ms.map(|latency_ms| Measured {
                latency_ms,
                energy_mj: 0,
            }),
        }
    }

    #[test]
    fn second_score_pays_the_indifference_price_over_measured_quality() {
        let w = Weights {
            price: 1.0,
            latency: 1.0,
            energy: 0.0,
            trust: 0.0,
        };
        // Winner: 100 stroops, measured 10 ms. Runner-up: 100 stroops, measured 21 ms. The
        // winner could have asked up to the price where its score equals the runner-up's:
        // (101 · 22/11) − 1.
        let (win, second) = (terms(100, Some(10)), terms(100, Some(21)));
        let p = award_price(PaymentRule::SecondScore, &win, Some(&second), 10_000, &w);
        assert!((200..=201).contains(&p), "{p}");
        // Without measurements on both sides, only price and trust count: same price, same
        // trust, so the winner gets its bid.
        for (a, b) in [(None, Some(21)), (Some(10), None), (None, None)] {
            let p = award_price(
                PaymentRule::SecondScore,
                &terms(100, a),
                Some(&terms(100, b)),
                10_000,
                &w,
            );
            assert_eq!(p, 100);
        }
        // A dearer runner-up sets the price.
        let p = award_price(
            PaymentRule::SecondScore,
            &terms(100, None),
            Some(&terms(150, None)),
            10_000,
            &w,
        );
        assert!((149..=150).contains(&p), "{p}");
        // Alone: its own bid, not the max price.
        assert_eq!(
            award_price(PaymentRule::SecondScore, &win, None, 10_000, &w),
            100
        );
        assert_eq!(
            award_price(PaymentRule::PayAsBid, &win, Some(&second), 10_000, &w),
            100
        );
        // Capped by the max price.
        assert_eq!(
            award_price(PaymentRule::SecondScore, &win, Some(&second), 150, &w),
            150
        );
    }

    #[test]
    fn payment_rules_parse_with_the_old_name() {
        for r in [PaymentRule::PayAsBid, PaymentRule::SecondScore] {
            assert_eq!(r.to_string().parse::<PaymentRule>().unwrap(), r);
        }
        assert_eq!(
            "first-price".parse::<PaymentRule>().unwrap(),
            PaymentRule::PayAsBid
        );
        let r: PaymentRule = serde_json::from_str("\"first-price\"").unwrap();
        assert_eq!(r, PaymentRule::PayAsBid);
        assert_eq!(PaymentRule::default(), PaymentRule::PayAsBid);
        assert!("vickrey".parse::<PaymentRule>().is_err());
    }

    proptest! {
        #[test]
        fn award_price_stays_within_bid_and_max(
            bid in 0u64..u64::MAX / 2,
            extra in 0u64..u64::MAX / 2,
            other in proptest::option::of((any::<u64>(), 0f64..=1.0, proptest::option::of(any::<u32>()))),
            mine in (0f64..=1.0, proptest::option::of(any::<u32>())),
            price_w in 0.001f64..MAX_WEIGHT,
            as_bid in any::<bool>(),
        ) {
            let max = bid + extra;
            let w = Weights { price: price_w, ..Weights::default() };
            let rule = if as_bid { PaymentRule::PayAsBid } else { PaymentRule::SecondScore };
            let m = |l: Option<u32>| l.map(|l| Measured { latency_ms: l.into(), energy_mj: l.into() });
            let winner = PayTerms { price_stroops: bid, trust: mine.0, measured: m(mine.1) };
            let second = other.map(|(p, t, l)| PayTerms { price_stroops: p, trust: t, measured: m(l) });
            let p = award_price(rule, &winner, second.as_ref(), max, &w);
            prop_assert!(p >= bid && p <= max, "{p} not in [{bid}, {max}]");
        }

        #[test]
        fn scores_are_finite_and_monotone(
            price in any::<u64>(), latency in any::<u32>(), energy in any::<u64>(),
            trust in 0f64..=1.0, bump in 1u64..1000,
        ) {
            let w = Weights::default();
            let s = score(price, latency.into(), energy, trust, &w);
            prop_assert!(s.total.is_finite());
            let dearer = score(price.saturating_add(bump), latency.into(), energy, trust, &w);
            prop_assert!(dearer.total >= s.total);
            let less_trusted = score(price, latency.into(), energy, trust / 2.0, &w);
            prop_assert!(less_trusted.total >= s.total);
        }
    }
}
