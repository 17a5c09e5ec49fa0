//! Seeded randomness in independent streams.
//!
//! Every random draw comes from a stream named by the run's seed and a purpose (population,
//! schedule, churn, workload, network, …) plus the ids it concerns. Streams never share state,
//! so every scheduler compared in a run sees exactly the same devices, schedules, churn and
//! tasks ("common random numbers"), and the order in which a shard processes events cannot
//! change what the world does.

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

/// What a stream is for; part of its key.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub(crate) enum Purpose {
    /// Device classes, hardware and owner habits.
    Population = 1,
    /// A device's plan for one day.
    Plan = 2,
    /// A device's churn sessions.
    Churn = 3,
    /// The task stream.
    Tasks = 4,
    /// Network delays of single messages.
    Network = 5,
    /// True run time and energy of single runs.
    Run = 6,
    /// Keys of devices and requesters.
    Keys = 7,
    /// Choices of the random baseline.
    Baseline = 8,
    /// Requesters' advert tables.
    Views = 9,
    /// Whether a cheater's answer is wrong.
    Cheats = 10,
    /// Requesters' spot-check draws.
    Checks = 11,
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit key for `(seed, purpose, parts…)`.
pub(crate) fn key(seed: u64, purpose: Purpose, parts: &[u64]) -> u64 {
    let mut h = mix(seed ^ 0x9E37_79B9_7F4A_7C15);
    h = mix(h ^ (purpose as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    for p in parts {
        h = mix(h.wrapping_add(0x9E37_79B9_7F4A_7C15) ^ *p);
    }
    h
}

/// A generator for one stream.
pub(crate) fn stream(seed: u64, purpose: Purpose, parts: &[u64]) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(key(seed, purpose, parts))
}

/// One uniform draw in `[0, 1)` keyed by `(seed, purpose, parts…)`, with no state.
pub(crate) fn unit(seed: u64, purpose: Purpose, parts: &[u64]) -> f64 {
    #[allow(clippy::cast_precision_loss)] // 53 bits fit an f64 exactly.
    let x = (key(seed, purpose, parts) >> 11) as f64;
    x / (1u64 << 53) as f64
}

/// A log-normal factor with median 1 from a uniform draw pair (Box–Muller), for stateless
/// noise such as the true run time of one run.
pub(crate) fn lognormal_factor(sigma: f64, u1: f64, u2: f64) -> f64 {
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    let z = r * (std::f64::consts::TAU * u2).cos();
    (sigma * z).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: u64 = stream(7, Purpose::Tasks, &[1]).random();
        let b: u64 = stream(7, Purpose::Tasks, &[1]).random();
        let c: u64 = stream(7, Purpose::Tasks, &[2]).random();
        let d: u64 = stream(7, Purpose::Churn, &[1]).random();
        let e: u64 = stream(8, Purpose::Tasks, &[1]).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
    }

    #[test]
    fn unit_draws_are_uniform_enough() {
        let n = 20_000u64;
        let mean = (0..n).map(|i| unit(1, Purpose::Run, &[i])).sum::<f64>() / 20_000.0;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&unit(1, Purpose::Run, &[i]))));
    }

    #[test]
    fn lognormal_factor_has_median_one() {
        let mut v: Vec<f64> = (0..10_001u64)
            .map(|i| {
                lognormal_factor(
                    0.3,
                    unit(2, Purpose::Run, &[i, 0]),
                    unit(2, Purpose::Run, &[i, 1]),
                )
            })
            .collect();
        v.sort_by(f64::total_cmp);
        assert!((v[5_000] - 1.0).abs() < 0.03, "median {}", v[5_000]);
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0));
    }
}
