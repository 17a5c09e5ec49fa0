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
    /// Wrong answers and the spot checks that catch them.
    #[serde(default)]
    pub checks: CheckSummary,
    /// Why tasks failed, counted.
    pub failures: BTreeMap<String, u64>,
    /// Earnings per device class.
    pub earnings: Vec<ClassEarnings>,
}

/// Wrong answers delivered and accepted, and what spot checks cost and caught, for one
/// scheduler. Baselines never check: every wrong answer they get is accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckSummary {
    /// Share of devices that cheat ([`super::CheaterConfig`]).
    pub cheater_device_share: f64,
    /// Completed tasks whose first answer was wrong.
    pub wrong_delivered: u64,
    /// Completed tasks whose accepted answer (after any check) was wrong.
    pub wrong_accepted: u64,
    /// `wrong_accepted` over completed tasks.
    pub wrong_accepted_share: f64,
    /// The same over tasks that arrived in the second half of the run, once requesters have
    /// history with the workers they use.
    pub late_wrong_accepted_share: f64,
    /// Completed tasks the requester drew for a check.
    pub checked: u64,
    /// Replica and third runs that completed.
    pub check_runs: u64,
    /// Of those, third runs.
    pub third_runs: u64,
    /// Replica or third runs that found no worker in time.
    pub check_runs_failed: u64,
    /// Check runs per completed task.
    pub extra_task_share: f64,
    /// The same for tasks that arrived in the second half of the run.
    pub late_extra_task_share: f64,
    /// Energy of check runs over the energy of all other runs.
    pub extra_energy_share: f64,
    /// Stroops paid for check runs over stroops paid for the tasks themselves (outvoted runs
    /// are never paid, so this is what checking cost the requesters).
    pub extra_stroops_share: f64,
    /// Stroops of outvoted runs, withheld.
    pub withheld_stroops: u64,
    /// Check outcomes: agreed, first_outvoted, replica_outvoted, unresolved, no_replica.
    pub outcomes: BTreeMap<String, u64>,
    /// Outvoted runs whose answer was right (an honest worker blamed by a colluding
    /// majority).
    pub honest_outvoted: u64,
    /// Cheating devices that delivered at least one wrong answer.
    pub cheaters_active: u64,
    /// Of those, outvoted at least once.
    pub cheaters_caught: u64,
    /// Time from a cheater's first wrong answer to the first check that outvoted it, s:
    /// median over caught cheaters.
    pub detect_p50_s: f64,
    /// 95th percentile.
    pub detect_p95_s: f64,
    /// Time a check adds to a checked task (first answer to verdict), ms: median.
    pub check_delay_p50_ms: u64,
    /// 95th percentile.
    pub check_delay_p95_ms: u64,
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
    pub check: CheckCounters,
}

/// Spot-check counters of one shard.
#[derive(Debug, Default)]
pub(crate) struct CheckCounters {
    pub energy_uj: f64,
    pub wrong_delivered: u64,
    pub wrong_accepted: u64,
    pub late_completed: u64,
    pub late_wrong_accepted: u64,
    pub checked: u64,
    pub runs: u64,
    pub late_runs: u64,
    pub third_runs: u64,
    pub runs_failed: u64,
    pub stroops: u64,
    pub withheld_stroops: u64,
    pub honest_outvoted: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub delays_ms: Vec<u32>,
    pub detect_ms: Vec<u32>,
    pub cheat_devices: u64,
    pub cheaters_active: u64,
    pub cheaters_caught: u64,
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
