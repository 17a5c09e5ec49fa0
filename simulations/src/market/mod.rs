//! `crank-sim market`: a discrete-event simulation of the crank market over a population of
//! devices, driving the real [`crank_scheduler::Auction`] and comparing it with baselines.
//!
//! # Model
//!
//! - **Devices** ([`population`]): phones, laptops, desktops, Raspberry Pis and servers, each
//!   with its own speed on the reference model, power draw (the inference crate's watts per
//!   core for the class), queue, prices (a [`crank_scheduler::CostModel`] per class), and an
//!   owner whose day decides when it is awake, on external power, in use or busy. The power
//!   gate is the inference crate's own decision ([`crank_inference::device::evaluate`]) under
//!   the owner's [`crank_protocol::RunPolicy`] (`charging-idle` unless configured otherwise).
//! - **Churn**: devices leave the mesh and come back at exponential intervals; some come
//!   back as new devices (new key, no history).
//! - **Tasks** ([`workload`]): a Poisson stream with a daily rhythm over the repository's real
//!   models, submitted by requesters that each hold a bounded advert table (their `view`).
//! - **Our scheduler**: per task, [`crank_scheduler::select_candidates`] over the requester's
//!   adverts and a real [`crank_scheduler::Auction`]; workers answer with
//!   [`crank_scheduler::quote`], sign bids, declines, failure reports and receipts with their
//!   real ed25519 keys, and the auction verifies every one. Workers abort when their gate
//!   closes; the auction re-awards; trust books learn.
//! - **Cheaters and spot checks** ([`checks`]): a share of devices can return wrong outputs
//!   (always, sometimes, only off replicas, or as a colluding ring), and the auction's
//!   requesters can check completed tasks as the node does: replicas and third runs through
//!   the real auction, the real check rate and trust book. `crank-sim checks` measures it.
//! - **Baselines**, on the same devices, churn and tasks: `random` (any advertised device),
//!   `fastest` (the highest advertised speed with a free slot), `cheapest` (the lowest
//!   advertised price for the task with a free slot). They dispatch directly, retry on
//!   failure until the deadline, and know nothing of power gates: a device runs what it is
//!   given whenever it is awake, as in a scheduler without crank's gate.
//!
//! A run is split into `shards`: independent regions with their own devices, requesters and
//! tasks, simulated in parallel. Results depend on the seed and the shard count, never on
//! the number of threads or on timing.
//!
//! # What is signed
//!
//! Every message the auction checks is signed for real and verified by the auction: bids,
//! declines (to calls and to awards), failure reports and work receipts. Calls for bids,
//! awards and cancels are not signed, because the simulated workers take them from the
//! simulated network without the node's verification step, and receipts are not
//! counter-signed (there is no ledger). Signing and verifying cost about 0.1 ms per message
//! on this machine and dominate the run time (see the report's figures).

pub mod device;
pub mod population;
pub(crate) mod rng;
pub mod stats;
pub mod workload;

mod auction;
mod baseline;
mod checks;
mod engine;

use std::fmt;
use std::str::FromStr;

use crank_scheduler::verify::CheckPolicy;
use crank_scheduler::{AuctionConfig, Preference, TrustPrior};
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use checks::{CheckGridRow, check_grid};
pub use population::{ChurnConfig, ClassSpec, default_classes};
pub use stats::{
    CheckSummary, ClassEarnings, HourRow, SchedulerSummary, TaskRow, Violation, ViolationKind,
};
pub use workload::{ModelSpec, WorkloadConfig, default_models};

/// Start of simulated time: 2026-01-01T00:00:00Z, a Thursday, in Unix ms.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// A way of placing tasks on devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum SchedulerKind {
    /// crank's reverse auction with a submitter preference.
    Auction(Preference),
    /// Any device with a fresh advert, uniformly.
    Random,
    /// The highest advertised speed with a free queue slot.
    Fastest,
    /// The lowest advertised price for the task with a free queue slot.
    Cheapest,
}

impl SchedulerKind {
    /// The auction under the default (balanced) preference and the three baselines.
    pub fn standard() -> Vec<Self> {
        vec![
            Self::Auction(Preference::Balanced),
            Self::Random,
            Self::Fastest,
            Self::Cheapest,
        ]
    }

    /// Whether this is crank's auction.
    pub fn is_auction(self) -> bool {
        matches!(self, Self::Auction(_))
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auction(p) => write!(f, "auction-{p}"),
            Self::Random => f.write_str("random"),
            Self::Fastest => f.write_str("fastest"),
            Self::Cheapest => f.write_str("cheapest"),
        }
    }
}

impl FromStr for SchedulerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Self::Random),
            "fastest" => Ok(Self::Fastest),
            "cheapest" => Ok(Self::Cheapest),
            "auction" => Ok(Self::Auction(Preference::Balanced)),
            other => match other.strip_prefix("auction-") {
                Some(p) => p.parse().map(Self::Auction).map_err(|e| e.to_string()),
                None => Err(format!(
                    "unknown scheduler {other:?}; expected auction[-cheap|-fast|-green|-balanced], random, fastest or cheapest"
                )),
            },
        }
    }
}

impl From<SchedulerKind> for String {
    fn from(k: SchedulerKind) -> Self {
        k.to_string()
    }
}

impl TryFrom<String> for SchedulerKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Deliberate driver bugs, to show that each check fails a run when its invariant breaks.
/// All off in real runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Workers advertise and bid as if their gate were open, and neither abort nor refuse
    /// work when it closes.
    pub workers_ignore_gate: bool,
    /// The requester pays each completed task twice.
    pub pay_twice: bool,
    /// The driver drops the auction's failure reports on the floor.
    pub forget_failures: bool,
    /// The driver adds the max price to every award.
    pub overpay_awards: bool,
}

/// Workers that under-claim: they bid their true price but divide their latency and energy
/// estimates by `factor`, to win work on claims. Off by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LiarConfig {
    /// Share of devices that lie (drawn per device, the same in every scheduler's world).
    pub share: f64,
    /// What their claims are divided by.
    pub factor: f64,
}

impl Default for LiarConfig {
    fn default() -> Self {
        Self {
            share: 0.0,
            factor: 10.0,
        }
    }
}

/// How cheating workers answer ([`CheaterConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheatMode {
    /// Every answer is wrong.
    Always,
    /// Each answer is wrong with the configured probability.
    Sometimes,
    /// Wrong on every task except the requesters' replica and third runs, as if the worker
    /// could tell checks apart (it cannot: replicas are ordinary tasks with fresh ids, and the
    /// draw is made after the answer is in). The strongest cheat that avoids being a replica.
    Unchecked,
    /// Every answer is wrong, and every cheater gives the same wrong answer: a ring that
    /// outvotes an honest worker whenever two of its members are asked.
    Colluding,
}

impl fmt::Display for CheatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Sometimes => "sometimes",
            Self::Unchecked => "unchecked",
            Self::Colluding => "colluding",
        })
    }
}

impl FromStr for CheatMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "sometimes" => Ok(Self::Sometimes),
            "unchecked" => Ok(Self::Unchecked),
            "colluding" => Ok(Self::Colluding),
            other => Err(format!(
                "unknown cheat mode {other:?}; expected always, sometimes, unchecked or colluding"
            )),
        }
    }
}

/// Workers that return wrong outputs (well-formed, signed, and wrong). Off by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheaterConfig {
    /// Share of devices that cheat (drawn per device, the same in every scheduler's world).
    pub share: f64,
    /// How they cheat.
    pub mode: CheatMode,
    /// Probability of a wrong answer under [`CheatMode::Sometimes`].
    pub probability: f64,
}

impl Default for CheaterConfig {
    fn default() -> Self {
        Self {
            share: 0.0,
            mode: CheatMode::Always,
            probability: 0.2,
        }
    }
}

/// Everything a market run depends on; `small()` and `full()` are the presets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarketConfig {
    /// Preset name, for the report.
    pub name: String,
    /// Seed of every random stream.
    pub seed: u64,
    /// Devices in all (split evenly over the shards).
    pub devices: u64,
    /// Tasks in all (split evenly over the shards).
    pub tasks: u64,
    /// Days over which tasks arrive.
    pub days: f64,
    /// Independent regions simulated in parallel (results depend on this, not on threads).
    pub shards: u32,
    /// Requesters in all (split evenly over the shards).
    pub requesters: u32,
    /// Adverts each requester holds: a fixed random set of devices of its shard.
    pub view: u32,
    /// Device classes, shares and prices.
    pub classes: Vec<ClassSpec>,
    /// Share of owners who set the `always` policy (the rest keep `charging-idle`).
    pub always_share: f64,
    /// Churn.
    pub churn: ChurnConfig,
    /// Tasks.
    pub workload: WorkloadConfig,
    /// The auction's settings (the node's defaults).
    pub auction: AuctionConfig,
    /// Requesters' trust prior (the node's default).
    pub trust_prior: TrustPrior,
    /// Places in the first round given to the exploration lottery (the node uses 1).
    pub explore: usize,
    /// Schedulers to compare.
    pub schedulers: Vec<SchedulerKind>,
    /// Periodic advert interval, ms (the node's default: 30 s).
    pub advert_interval_ms: u64,
    /// Advert lifetime, ms (the node's default: 120 s).
    pub advert_ttl_ms: u64,
    /// Time for a re-published advert to reach requesters, ms (coalescing plus gossip).
    pub advert_delay_ms: u64,
    /// Time until a request to a peer that is gone fails, ms.
    pub unreachable_ms: u64,
    /// Requesters' own one-way network latency, ms.
    pub requester_net_ms: u32,
    /// Keep one per-task CSV row in this many tasks (0: none).
    pub sample_every: u64,
    /// Worker threads (0: one per core). Does not change results.
    pub threads: usize,
    /// Workers that under-claim latency and energy in their bids.
    pub liars: LiarConfig,
    /// Workers that return wrong outputs.
    pub cheaters: CheaterConfig,
    /// The auction's requesters' spot checks (the node's policy). Off in the presets, so
    /// that placement is compared with the baselines like for like; `crank-sim checks`
    /// turns them on.
    pub checks: CheckPolicy,
    /// Deliberate bugs (tests only).
    #[serde(skip)]
    pub faults: Faults,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self::small()
    }
}

impl MarketConfig {
    /// 2,000 devices and 20,000 tasks over a day: seconds, for tests and CI.
    pub fn small() -> Self {
        Self {
            name: "small".into(),
            seed: 1,
            devices: 2_000,
            tasks: 20_000,
            days: 1.0,
            shards: 2,
            requesters: 8,
            view: 256,
            classes: default_classes(),
            always_share: 0.0,
            churn: ChurnConfig::default(),
            workload: WorkloadConfig::default(),
            auction: AuctionConfig::default(),
            trust_prior: TrustPrior::default(),
            explore: 1,
            schedulers: SchedulerKind::standard(),
            advert_interval_ms: 30_000,
            advert_ttl_ms: 120_000,
            advert_delay_ms: 1_000,
            unreachable_ms: 1_000,
            requester_net_ms: 15,
            sample_every: 10,
            threads: 0,
            liars: LiarConfig::default(),
            cheaters: CheaterConfig::default(),
            checks: CheckPolicy {
                enabled: false,
                ..CheckPolicy::default()
            },
            faults: Faults::default(),
        }
    }

    /// 100,000 devices and 1,000,000 tasks over a day.
    pub fn full() -> Self {
        Self {
            name: "full".into(),
            devices: 100_000,
            tasks: 1_000_000,
            shards: 8,
            requesters: 400,
            sample_every: 100,
            ..Self::small()
        }
    }

    /// Checks the settings a run cannot work with.
    pub fn validate(&self) -> Result<(), MarketError> {
        let bad = |m: String| Err(MarketError::Config(m));
        if self.shards == 0 {
            return bad("shards must be at least 1".into());
        }
        if self.devices < u64::from(self.shards) {
            return bad(format!(
                "{} devices cannot fill {} shards",
                self.devices, self.shards
            ));
        }
        if self.devices / u64::from(self.shards) > u64::from(u32::MAX) {
            return bad("too many devices per shard".into());
        }
        if self.requesters < self.shards {
            return bad(format!(
                "{} requesters cannot fill {} shards",
                self.requesters, self.shards
            ));
        }
        if self.tasks / u64::from(self.shards) > u64::from(u32::MAX) {
            return bad("too many tasks per shard".into());
        }
        if !(self.days.is_finite() && self.days > 0.0 && self.days <= 366.0) {
            return bad(format!("days must be in (0, 366], got {}", self.days));
        }
        if self.view == 0 {
            return bad("view must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.liars.share) {
            return bad(format!(
                "liars.share must be in [0, 1], got {}",
                self.liars.share
            ));
        }
        if !(self.liars.factor.is_finite() && self.liars.factor >= 1.0) {
            return bad(format!(
                "liars.factor must be at least 1, got {}",
                self.liars.factor
            ));
        }
        if !(0.0..=1.0).contains(&self.cheaters.share) {
            return bad(format!(
                "cheaters.share must be in [0, 1], got {}",
                self.cheaters.share
            ));
        }
        if !(self.cheaters.probability > 0.0 && self.cheaters.probability <= 1.0) {
            return bad(format!(
                "cheaters.probability must be in (0, 1], got {}",
                self.cheaters.probability
            ));
        }
        self.checks
            .validate()
            .map_err(|e| MarketError::Config(e.to_string()))?;
        if self.schedulers.is_empty() {
            return bad("no scheduler to run".into());
        }
        if self.classes.is_empty() || self.classes.iter().all(|c| c.share <= 0.0) {
            return bad("no device class with a positive share".into());
        }
        for c in &self.classes {
            if c.workers == 0
                || c.slots < c.workers
                || c.cpu_ips.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            {
                return bad(format!(
                    "class {}: needs workers ≥ 1, slots ≥ workers and a positive speed",
                    c.class
                ));
            }
            if c.gpu_share > 0.0 && !(c.gpu_ips > 0.0 && c.gpu_watts > 0.0) {
                return bad(format!(
                    "class {}: a GPU share needs GPU speed and power",
                    c.class
                ));
            }
        }
        if self.workload.models.is_empty() || self.workload.models.iter().all(|m| m.share <= 0.0) {
            return bad("no model with a positive share".into());
        }
        for m in &self.workload.models {
            m.id().map_err(MarketError::Config)?;
            if m.elements_per_sample == 0 {
                return bad(format!("model {}: elements per sample must be ≥ 1", m.name));
            }
        }
        for p in [self.always_share, self.churn.new_identity_share] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("shares must be within [0, 1], got {p}"));
            }
        }
        if self.churn.mean_session_h < 0.0 || self.churn.mean_offline_h < 0.0 {
            return bad("churn means must not be negative".into());
        }
        if self.advert_interval_ms == 0 || self.advert_ttl_ms == 0 {
            return bad("advert interval and lifetime must be above zero".into());
        }
        Ok(())
    }

    /// Simulated span of arrivals, ms.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn span_ms(&self) -> u64 {
        (self.days * population::DAY_MS as f64) as u64
    }
}

/// Why a market run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// The configuration is unusable.
    #[error("invalid market configuration: {0}")]
    Config(String),
    /// A run broke an invariant.
    #[error("invariant checks failed at {0}")]
    Invariants(String),
    /// The thread pool could not be built.
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// Facts about the simulated world (the same for every scheduler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldSummary {
    /// Devices per class.
    pub devices_by_class: Vec<(String, u64)>,
    /// Requesters.
    pub requesters: u64,
    /// Devices that left the mesh (churn), over the run.
    pub leaves: u64,
    /// Returns as a new device (new key).
    pub new_identities: u64,
    /// Mean share of devices online at the hourly samples.
    pub mean_online_share: f64,
    /// Mean share of devices with an open gate at the hourly samples.
    pub mean_gate_open_share: f64,
}

/// Everything a market run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketReport {
    /// The configuration.
    pub config: MarketConfig,
    /// The world.
    pub world: WorldSummary,
    /// One summary per scheduler, in the configured order.
    pub summaries: Vec<SchedulerSummary>,
    /// Hourly counts per scheduler.
    pub hourly: Vec<HourRow>,
    /// Sampled per-task rows.
    pub samples: Vec<TaskRow>,
    /// Broken invariants (examples; `violation_counts` is exact).
    pub violations: Vec<Violation>,
    /// Broken invariants per scheduler and kind.
    pub violation_counts: Vec<(String, ViolationKind, u64)>,
}

impl MarketReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violation_counts.is_empty()
    }
}

/// Progress display: one bar per scheduler, counting finished tasks.
#[derive(Debug, Clone)]
pub struct Progress {
    bars: Vec<ProgressBar>,
}

impl Progress {
    /// Bars that draw nothing.
    pub fn hidden(schedulers: usize) -> Self {
        Self {
            bars: (0..schedulers).map(|_| ProgressBar::hidden()).collect(),
        }
    }

    /// Uses the given bars, one per scheduler in order.
    pub fn new(bars: Vec<ProgressBar>) -> Self {
        Self { bars }
    }

    /// Labels every bar (the check grid names its runs).
    pub fn set_prefix(&self, label: &str) {
        for b in &self.bars {
            b.set_prefix(label.to_string());
        }
    }

    fn bar(&self, i: usize) -> ProgressBar {
        self.bars
            .get(i)
            .cloned()
            .unwrap_or_else(ProgressBar::hidden)
    }
}

/// Completion and latency at one churn rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Churn multiplier against the configured rates (0: no churn).
    pub multiplier: f64,
    /// Leaves per device per day at this multiplier.
    pub leaves_per_device_day: f64,
    /// Scheduler.
    pub scheduler: String,
    /// Completion rate.
    pub completion_rate: f64,
    /// p95 latency, ms.
    pub latency_p95_ms: u64,
    /// Re-awards or re-dispatches per task.
    pub attempts_per_task: f64,
}

/// Runs the market simulation: every scheduler over every shard, then merges.
pub fn run(config: &MarketConfig, progress: &Progress) -> Result<MarketReport, MarketError> {
    config.validate()?;
    // The auction's shards cost ten times a baseline's (real signatures): start them first, so
    // the cheap jobs fill in around them instead of leaving one thread with the long tail.
    let mut jobs: Vec<(usize, u32)> = (0..config.schedulers.len())
        .flat_map(|s| (0..config.shards).map(move |sh| (s, sh)))
        .collect();
    jobs.sort_by_key(|&(s, sh)| {
        (
            !matches!(config.schedulers[s], SchedulerKind::Auction(_)),
            sh,
            s,
        )
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| MarketError::Threads(e.to_string()))?;
    let mut results: Vec<((usize, u32), engine::ShardResult)> = pool.install(|| {
        // One job per rayon task: without it rayon hands each thread a run of jobs and a
        // thread can be left running several long ones in a row while the other idles.
        jobs.par_iter()
            .with_max_len(1)
            .map(|&(s, sh)| {
                let bar = progress.bar(s);
                (
                    (s, sh),
                    engine::Shard::new(config, config.schedulers[s], sh).run(&bar),
                )
            })
            .collect()
    });
    // Merge in scheduler and shard order, whatever order the jobs ran in.
    results.sort_by_key(|(job, _)| *job);
    let results: Vec<engine::ShardResult> = results.into_iter().map(|(_, r)| r).collect();
    for i in 0..config.schedulers.len() {
        progress.bar(i).finish();
    }
    Ok(engine::merge(config, results))
}

/// Runs `base` once per churn multiplier (session and absence lengths divided by it; 0 turns
/// churn off) and reports completion per scheduler.
pub fn churn_sweep(
    base: &MarketConfig,
    multipliers: &[f64],
    progress: impl Fn(f64) -> Progress,
) -> Result<Vec<SweepPoint>, MarketError> {
    let mut points = Vec::new();
    for &m in multipliers {
        if !(m.is_finite() && m >= 0.0) {
            return Err(MarketError::Config(format!(
                "churn multiplier must be ≥ 0, got {m}"
            )));
        }
        let mut cfg = base.clone();
        if m == 0.0 {
            cfg.churn.mean_session_h = 0.0;
        } else {
            cfg.churn.mean_session_h /= m;
            cfg.churn.mean_offline_h /= m;
        }
        let report = run(&cfg, &progress(m))?;
        for s in &report.summaries {
            #[allow(clippy::cast_precision_loss)]
            let attempts = s.attempts as f64 / s.tasks.max(1) as f64;
            points.push(SweepPoint {
                multiplier: m,
                leaves_per_device_day: cfg.churn.leaves_per_day(),
                scheduler: s.scheduler.clone(),
                completion_rate: s.completion_rate,
                latency_p95_ms: s.latency_p95_ms,
                attempts_per_task: attempts,
            });
        }
    }
    Ok(points)
}
