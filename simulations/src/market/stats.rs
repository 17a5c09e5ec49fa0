//! What a run measures, per shard while it runs and per scheduler at the end, and the
//! invariant checks that fail a run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An invariant that broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A task ended neither completed nor failed with an explanation.
    LostTask,
    /// Work ran on battery on a device whose owner kept the default policy.
    BatteryWork,
    /// A task paid a worker more than once, or paid without completing.
    DoublePayment,
    /// An award's price exceeded the task's max price (or fell below the winning bid).
    AwardOutOfRange,
    /// A task completed after its deadline.
    LateCompletion,
}

impl std::fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LostTask => "task lost without an error",
            Self::BatteryWork => "work on battery under the default policy",
            Self::DoublePayment => "payment made twice (or without a completed task)",
            Self::AwardOutOfRange => "award price outside [bid, max price]",
            Self::LateCompletion => "task completed after its deadline",
        })
    }
}

/// One broken invariant, with where it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The scheduler.
    pub scheduler: String,
    /// The shard.
    pub shard: u32,
    /// What broke.
    pub kind: ViolationKind,
    /// Details.
    pub detail: String,
}

/// Task counts in one hour of the run (by arrival hour) and the world in that hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HourRow {
    /// The scheduler.
    pub scheduler: String,
    /// Hour since the start.
    pub hour: u32,
    /// Tasks that arrived.
    pub arrived: u64,
    /// Of those, completed.
    pub completed: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Devices online at the start of the hour.
    pub online: u64,
    /// Devices whose power gate was open at the start of the hour.
    pub gate_open: u64,
    /// Devices that left the mesh (churn) during the hour.
    pub leaves: u64,
}

/// One task, for the sampled per-task CSV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The scheduler.
    pub scheduler: String,
    /// The shard.
    pub shard: u32,
    /// Index of the task in its shard.
    pub task: u32,
    /// Seconds since the start.
    pub arrived_s: f64,
    /// Model name.
    pub model: String,
    /// Batch size.
    pub batch: u32,
    /// completed or failed.
    pub outcome: String,
    /// Submission to result, ms (completed only).
    pub latency_ms: Option<u64>,
    /// Price paid, stroops (completed only).
    pub price_stroops: Option<u64>,
    /// The winner's ask, stroops (completed only).
    pub ask_stroops: Option<u64>,
    /// Class of the worker that completed it.
    pub worker_class: Option<String>,
    /// cpu or gpu.
    pub path: Option<String>,
    /// Energy of the completing run, mJ.
    pub energy_mj: Option<f64>,
    /// Awards or dispatches made.
    pub attempts: u32,
    /// Failure explanation (failed only).
    pub reason: Option<String>,
}

/// Earnings and work of one device class under one scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassEarnings {
    /// The class.
    pub class: String,
    /// Devices of the class (slots in the population).
    pub devices: u64,
    /// Tasks it completed.
    pub tasks: u64,
    /// Paid to it, stroops.
    pub paid_stroops: u64,
    /// Energy its runs used (wasted ones included), kWh.
    pub energy_kwh: f64,
    /// Earnings per device per 30-day month at the run's rate, XLM.
    pub xlm_per_device_month: f64,
    /// Electricity cost per device per month at the class tariff, XLM.
    pub electricity_xlm_per_device_month: f64,
}

/// Everything measured for one scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerSummary {
    /// Name (`auction-balanced`, `random`, `fastest`, `cheapest`).
    pub scheduler: String,
    /// Tasks submitted.
    pub tasks: u64,
    /// Completed.
    pub completed: u64,
    /// Failed with an explanation.
    pub failed: u64,
    /// completed / tasks.
    pub completion_rate: f64,
    /// Latency of completed tasks, ms: median.
    pub latency_p50_ms: u64,
    /// 95th percentile.
    pub latency_p95_ms: u64,
    /// 99th percentile.
    pub latency_p99_ms: u64,
    /// Mean.
    pub latency_mean_ms: f64,
    /// Percentiles 0..=100 of latency, ms (for plots).
    pub latency_quantiles_ms: Vec<u64>,
    /// All energy spent on runs (wasted runs included) per completed task, J.
    pub energy_per_task_j: f64,
    /// Share of that energy spent on runs that did not deliver.
    pub wasted_energy_share: f64,
    /// Share of run energy drawn while on battery.
    pub battery_energy_share: f64,
    /// Run energy on battery on devices with the default policy, J (0 for the auction).
    pub battery_energy_default_policy_j: f64,
    /// Mean price paid per completed task, stroops.
    pub mean_price_stroops: f64,
    /// Mean ask (bid or quote) of the worker that completed, stroops.
    pub mean_ask_stroops: f64,
    /// Awards (auction) or dispatches (baselines) in all.
    pub attempts: u64,
    /// Runs aborted because the power gate closed.
    pub aborted_runs: u64,
    /// Jobs lost because the device left or went to sleep.
    pub lost_jobs: u64,
    /// Share of completed tasks run on a GPU.
    pub gpu_share: f64,
    /// Share of devices that under-claim in their bids ([`super::LiarConfig`]).
    #[serde(default)]
    pub liar_device_share: f64,
    /// Share of completed tasks those devices ran.
    #[serde(default)]
    pub liar_task_share: f64,
    /// Tasks requesters measured as over-claimed.
    #[serde(default)]
    pub overclaims: u64,
    /// Signed messages the auction verified (bids, declines, failures, receipts).
    pub signed_messages: u64,
    /// Why tasks failed, counted.
    pub failures: BTreeMap<String, u64>,
    /// Earnings per device class.
    pub earnings: Vec<ClassEarnings>,
}

/// Percentile `p` (0..=100) of sorted values, nearest rank.
pub(crate) fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    u64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Per-class counters inside a shard.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClassCounters {
    pub tasks: u64,
    pub paid: u64,
    pub energy_uj: f64,
}

/// Counters of one shard under one scheduler.
#[derive(Debug, Default)]
pub(crate) struct ShardStats {
    pub arrived: u64,
    pub completed: u64,
    pub failed: u64,
    pub latencies: Vec<u32>,
    pub energy_uj: f64,
    pub wasted_uj: f64,
    pub battery_uj: f64,
    pub battery_default_uj: f64,
    pub paid: u64,
    pub asked: u64,
    pub attempts: u64,
    pub aborted: u64,
    pub lost_jobs: u64,
    pub gpu_tasks: u64,
    pub liar_tasks: u64,
    pub overclaims: u64,
    pub signed: u64,
    pub failures: BTreeMap<String, u64>,
    pub classes: Vec<ClassCounters>,
    pub hourly: Vec<HourRow>,
    pub samples: Vec<TaskRow>,
    pub violations: Vec<Violation>,
    /// Payments per task index.
    pub payments: Vec<u8>,
    /// Outcome per task index: 0 open, 1 completed, 2 failed.
    pub outcomes: Vec<u8>,
}

/// Most examples of violations kept per shard; the count is exact.
pub(crate) const MAX_VIOLATION_EXAMPLES: usize = 20;

impl ShardStats {
    pub(crate) fn hour(&mut self, hour: usize) -> &mut HourRow {
        if self.hourly.len() <= hour {
            self.hourly.resize(hour + 1, HourRow::default());
        }
        &mut self.hourly[hour]
    }
}
