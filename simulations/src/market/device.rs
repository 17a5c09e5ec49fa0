//! One simulated device as a worker sees itself: its power gate (the inference crate's own
//! decision function), its advert, its open bids, its queue of accepted jobs, and what it
//! really spends on each run.
//!
//! The advert a requester holds is what the node would have published: the node re-publishes
//! every `interval` (30 s), at once when the gate changes (seen by others after the gossip
//! delay) and when a task ends. Rather than an event per re-publication, the advert is brought
//! up to date when someone looks at it, from the time of the last publication; an advert of a
//! device that left stays in tables until it expires.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crank_inference::device::gate::{Readings, Thresholds, evaluate};
use crank_inference::device::idle::{IdleSource, UserIdle};
use crank_inference::device::load::CpuLoad;
use crank_inference::device::power::{PowerReading, PowerSource};
use crank_inference::device::{gate_info, power_info};
use crank_protocol::{
    CapabilityAdvert, Capacity, ContentHash, ExecPath, GateReason, Hardware as AdvertHardware,
    Identity, ModelId, NodeId, PathBench, Pricing, RunPolicy, TaskId, TrustSummary,
};
use crank_scheduler::{
    BidBook, CostModel, CreditPolicy, QueueState, RequesterStanding, WorkerLimits, WorkerState,
};
use rand_pcg::Pcg64Mcg;

use super::population::{ClassSpec, DevState, Habits, Hardware};

/// Models a device keeps before dropping the least recently used.
const CACHE_MODELS: usize = 4;

/// A job the device accepted: waiting for a worker or running.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Index of the task in its shard.
    pub task: u32,
    /// Which award (auction) or dispatch (baseline) of the task this is, from 1.
    pub attempt: u32,
    /// The task id.
    pub task_id: TaskId,
    /// Index of the requester.
    pub requester: u32,
    /// Its content id.
    pub model_id: ModelId,
    /// Hash of the inputs.
    pub input_hash: ContentHash,
    /// Input elements.
    pub elements: u64,
    /// CPU or GPU.
    pub path: ExecPath,
    /// Agreed price, stroops.
    pub price: u64,
    /// When it was accepted.
    pub accepted_at: u64,
    /// When a worker took it (model fetch, then run), if it did.
    pub started_at: Option<u64>,
    /// Model fetch time, ms (0 when cached).
    pub fetch_ms: u64,
    /// True run time, ms.
    pub run_ms: u64,
    /// True energy of the whole run, µJ.
    pub energy_uj: f64,
    /// Last time battery use was accounted.
    pub mark: u64,
    /// Busy time spent on battery so far, ms.
    pub battery_ms: u64,
}

impl Job {
    /// Busy time from start to end, ms.
    pub(crate) fn busy_ms(&self) -> u64 {
        self.fetch_ms + self.run_ms
    }

    /// Energy spent after `elapsed` ms of its busy time, µJ (spread evenly).
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn energy_after(&self, elapsed: u64) -> f64 {
        let busy = self.busy_ms().max(1);
        self.energy_uj * (elapsed.min(busy) as f64) / busy as f64
    }
}

/// One device.
#[derive(Debug)]
pub(crate) struct Device {
    /// Index of its class.
    pub class: usize,
    /// Identity generation: a returning device with a new key bumps it.
    pub era: u32,
    /// The node key.
    pub identity: Identity,
    /// The node id.
    pub node: NodeId,
    /// The owner's run policy.
    pub policy: RunPolicy,
    /// How it prices work.
    pub cost: CostModel,
    /// Its state as `quote()` reads it (dynamic fields refreshed before each quote).
    pub worker: WorkerState,
    /// Its advert as requesters last saw it.
    pub advert: CapabilityAdvert,
    /// Open bids.
    pub bids: BidBook,
    /// The owner's habits.
    pub habits: Habits,
    /// True speed and energy.
    pub hw: Hardware,
    /// Runs at a time.
    pub workers: u16,
    /// Queue slots.
    pub slots: u16,
    /// Whether it has a battery.
    pub has_battery: bool,
    /// Today's plan and the index of the current segment.
    pub plan: Vec<(u64, DevState)>,
    /// Index of the current segment in `plan`.
    pub plan_ix: usize,
    /// The day `plan` is for.
    pub plan_day: u64,
    /// Current state from the plan.
    pub state: DevState,
    /// In the mesh (churn).
    pub in_mesh: bool,
    /// Its churn stream.
    pub churn_rng: Pcg64Mcg,
    /// Why its gate is closed now (None when open).
    pub gate: Option<GateReason>,
    /// The gate requesters saw before the last change, until `gate_visible_at`.
    pub gate_before: Option<GateReason>,
    /// When the last gate change reaches other nodes.
    pub gate_visible_at: u64,
    /// Accepted jobs, in order.
    pub jobs: Vec<Job>,
    /// Models held, most recently used last.
    pub cache: Vec<ModelId>,
    /// Offset of its periodic advert ticks, ms.
    pub adv_phase: u64,
    /// When its advert was last published.
    pub adv_published_at: u64,
    /// Queue length in its last published advert.
    pub adv_queued: u16,
    /// When it left (plan or churn), while away.
    pub left_at: Option<u64>,
    /// Receipts per requester: (last pair sequence, cumulative stroops).
    pub pairs: HashMap<u32, (u64, u64)>,
    /// A faulty node (tests only) that advertises and quotes as if its gate were open.
    pub ignores_gate: bool,
    /// Drawn as a liar ([`super::LiarConfig`]): its claims are divided by the factor.
    pub liar: bool,
    /// Drawn as a cheater ([`super::CheaterConfig`]): it returns wrong outputs.
    pub cheat: bool,
    /// When it first delivered a wrong answer (cheaters).
    pub first_wrong_at: Option<u64>,
    /// When a requester's check first outvoted it.
    pub caught_at: Option<u64>,
}

/// Advert timing, from the node's defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdvertTiming {
    pub interval_ms: u64,
    pub ttl_ms: u64,
    pub delay_ms: u64,
}

/// A Stellar account id (G… strkey) for a public key.
pub(crate) fn payout_for(node: &NodeId) -> String {
    stellar_strkey::ed25519::PublicKey(node.0)
        .to_string()
        .as_str()
        .to_owned()
}

/// The gate as the node decides it, for a device state.
pub(crate) fn gate_for(
    policy: RunPolicy,
    has_battery: bool,
    s: DevState,
) -> (Option<GateReason>, Readings) {
    let readings = Readings {
        power: PowerReading {
            source: if s.external {
                PowerSource::External
            } else {
                PowerSource::Battery
            },
            has_battery,
            battery_percent: has_battery.then_some(if s.external { 90 } else { 60 }),
            battery_status: None,
            detail: None,
        },
        idle: UserIdle {
            idle_secs: Some(if s.active { 0 } else { 3_600 }),
            source: IdleSource::Logind,
        },
        cpu: Some(CpuLoad {
            other_percent: if s.busy { 85.0 } else { 3.0 },
            busy: s.busy,
        }),
        thermal: None,
        paused: false,
    };
    let state = evaluate(policy, &readings, &Thresholds::default());
    (state.reason(), readings)
}

impl Device {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        class: usize,
        spec: &ClassSpec,
        identity: Identity,
        policy: RunPolicy,
        habits: Habits,
        hw: Hardware,
        churn_rng: Pcg64Mcg,
        adv_phase: u64,
        cached: Vec<ModelId>,
    ) -> Self {
        let node = identity.node_id();
        let payout = payout_for(&node);
        let cost = CostModel {
            tariff_stroops_per_kwh: spec.tariff_stroops_per_kwh,
            per_task_stroops: spec.per_task_stroops,
            per_second_stroops: spec.per_second_stroops,
            // An owner's node knows its own link: its fetch estimate uses it (requesters
            // measure what a bid claims, model fetch included).
            fetch_bytes_per_sec: spec.bandwidth_bytes_per_sec.max(1),
            ..CostModel::default()
        };
        #[allow(clippy::cast_possible_truncation)]
        let bench_of = |path, (ips, uj): (f64, f64)| PathBench {
            path,
            inferences_per_sec: ips as f32,
            microjoules_per_inference: uj.round() as u64,
        };
        let mut bench = vec![bench_of(ExecPath::Cpu, hw.bench_cpu)];
        if let Some(g) = hw.bench_gpu {
            bench.push(bench_of(ExecPath::Gpu, g));
        }
        let worker = WorkerState {
            node,
            gate_closed: None,
            on_battery: false,
            queue: QueueState {
                queued: 0,
                slots: spec.slots,
                est_wait_ms: 0,
            },
            cached_models: cached.iter().copied().collect::<BTreeSet<_>>(),
            bench: bench.clone(),
            measured: BTreeMap::new(),
            unservable: Default::default(),
            limits: WorkerLimits::default(),
            payout: payout.clone(),
            // Settlement is not simulated: no requester ever owes a worker beyond its credit.
            credit: CreditPolicy::default(),
            requester: RequesterStanding::default(),
        };
        let advert = CapabilityAdvert {
            node,
            seq: 1,
            issued_at: 0,
            expires_at: 0,
            agent: "crank-node/sim".into(),
            hardware: AdvertHardware {
                cpu_model: format!("{} class CPU", spec.class),
                cores: spec.cores,
                ram_mib: spec.ram_mib,
                arch: "aarch64".into(),
                os: "linux".into(),
                gpus: Vec::new(),
            },
            power: power_info(
                &gate_for(policy, spec.has_battery, DevState::default()).1,
                0,
            ),
            gate: crank_protocol::GateInfo {
                policy,
                open: false,
                reason: None,
            },
            models: cached.clone(),
            unservable: Vec::new(),
            pricing: Pricing {
                per_task_stroops: cost.per_task_stroops,
                per_second_stroops: cost.per_second_stroops,
            },
            payout,
            trust: TrustSummary::default(),
            bench,
            capacity: Capacity {
                workers: spec.workers,
                queue_slots: spec.slots,
                queued: 0,
            },
            // Simulated devices are reached through the event queue, never dialled.
            addrs: Vec::new(),
        };
        Self {
            class,
            era: 0,
            identity,
            node,
            policy,
            cost,
            worker,
            advert,
            bids: BidBook::new(256),
            habits,
            hw,
            workers: spec.workers,
            slots: spec.slots,
            has_battery: spec.has_battery,
            plan: Vec::new(),
            plan_ix: 0,
            plan_day: 0,
            state: DevState::default(),
            in_mesh: true,
            churn_rng,
            gate: None,
            gate_before: None,
            gate_visible_at: 0,
            jobs: Vec::new(),
            cache: cached,
            adv_phase,
            adv_published_at: 0,
            adv_queued: 0,
            left_at: None,
            pairs: HashMap::new(),
            ignores_gate: false,
            liar: false,
            cheat: false,
            first_wrong_at: None,
            caught_at: None,
        }
    }

    /// Reachable and running the node.
    pub(crate) fn online(&self) -> bool {
        self.in_mesh && self.state.awake
    }

    /// On battery power now.
    pub(crate) fn on_battery(&self) -> bool {
        self.has_battery && !self.state.external
    }

    /// Re-evaluates the gate after a state change; returns whether it changed materially.
    pub(crate) fn update_gate(&mut self, now: u64, timing: &AdvertTiming) -> bool {
        let (gate, readings) = gate_for(self.policy, self.has_battery, self.state);
        let changed =
            gate.as_ref().map(GateReason::category) != self.gate.as_ref().map(GateReason::category);
        self.advert.power = power_info(&readings, self.advert.power.busy_milliwatts);
        if changed {
            self.gate_before = self.gate.take();
            self.gate = gate;
            self.gate_visible_at = now + timing.delay_ms;
            self.publish(now);
        } else {
            self.gate = gate;
        }
        changed
    }

    /// The last periodic advert tick at or before `t`.
    fn tick(&self, t: u64, timing: &AdvertTiming) -> u64 {
        let i = timing.interval_ms.max(1);
        if t < self.adv_phase {
            return 0;
        }
        t - (t - self.adv_phase) % i
    }

    /// The node re-publishes its advert now (gate change, task end, join).
    pub(crate) fn publish(&mut self, now: u64) {
        self.adv_published_at = now;
        self.adv_queued = u16::try_from(self.jobs.len()).unwrap_or(u16::MAX);
        self.advert.seq += 1;
    }

    /// Call before the queue changes without a re-publication (an accepted award): a
    /// periodic advert since the last publication showed the queue as it was.
    pub(crate) fn before_queue_change(&mut self, now: u64, timing: &AdvertTiming) {
        let tick = self.tick(now, timing);
        if tick > self.adv_published_at {
            self.adv_published_at = tick;
            self.adv_queued = u16::try_from(self.jobs.len()).unwrap_or(u16::MAX);
        }
    }

    /// Brings the advert to what requesters hold at `now`.
    pub(crate) fn refresh_advert(&mut self, now: u64, timing: &AdvertTiming) {
        if self.online() {
            self.before_queue_change(now, timing);
            let tick = self.tick(now, timing).max(self.adv_published_at);
            self.advert.issued_at = tick;
            self.advert.expires_at = tick + timing.ttl_ms;
        } else {
            let left = self.left_at.unwrap_or(now);
            let last = self.tick(left, timing).max(self.adv_published_at.min(left));
            self.advert.expires_at = last + timing.ttl_ms;
        }
        let shown = if self.ignores_gate {
            &None
        } else if now < self.gate_visible_at {
            &self.gate_before
        } else {
            &self.gate
        };
        if self.advert.gate.reason.as_ref() != shown.as_ref() {
            self.advert.gate = gate_info(
                self.policy,
                &match shown {
                    Some(r) => crank_inference::device::GateState::Closed(r.clone()),
                    None => crank_inference::device::GateState::Open,
                },
            );
        }
        self.advert.capacity.queued = self.adv_queued;
    }

    /// Refreshes what `quote()` reads: gate, power source, queue and its expected wait at
    /// `now`: the work still ahead of a new job, per path over that path's lanes (the CPU
    /// workers, the one GPU), the longer of the two. Requesters measure what a bid claims, so
    /// the estimate counts what is really queued rather than one reference inference per job.
    pub(crate) fn refresh_worker_state(&mut self, now: u64) {
        let left = |j: &Job| match j.started_at {
            Some(t) => j.busy_ms().saturating_sub(now.saturating_sub(t)),
            None => j.busy_ms(),
        };
        let ahead = |gpu: bool| -> u64 {
            self.jobs
                .iter()
                .filter(|j| (j.path == ExecPath::Gpu) == gpu)
                .map(left)
                .sum()
        };
        let est_wait_ms = (ahead(false) / u64::from(self.workers.max(1))).max(ahead(true));
        if self.ignores_gate {
            self.worker.gate_closed = None;
            self.worker.on_battery = false;
        } else {
            self.worker.gate_closed = self.gate.clone();
            self.worker.on_battery = self.on_battery();
        }
        self.worker.queue = QueueState {
            queued: u16::try_from(self.jobs.len()).unwrap_or(u16::MAX),
            slots: self.slots,
            est_wait_ms,
        };
    }

    /// True speed and energy per reference inference on a path.
    pub(crate) fn truth(&self, path: ExecPath) -> (f64, f64) {
        match (path, self.hw.gpu) {
            (ExecPath::Gpu, Some(g)) => g,
            _ => (self.hw.cpu_ips, self.hw.cpu_uj),
        }
    }

    /// Whether it holds a model.
    pub(crate) fn has_model(&self, model: &ModelId) -> bool {
        self.cache.contains(model)
    }

    /// Keeps a model after a run, dropping the least recently used beyond the cache size.
    pub(crate) fn cache_model(&mut self, model: ModelId) {
        self.cache.retain(|m| *m != model);
        self.cache.push(model);
        if self.cache.len() > CACHE_MODELS {
            self.cache.remove(0);
        }
        self.worker.cached_models = self.cache.iter().copied().collect();
        self.advert.models.clone_from(&self.cache);
    }

    /// A new key for a device that returns as someone else.
    pub(crate) fn renew_identity(&mut self, identity: Identity) {
        self.era += 1;
        self.node = identity.node_id();
        self.identity = identity;
        let payout = payout_for(&self.node);
        self.worker.node = self.node;
        self.worker.payout.clone_from(&payout);
        self.worker.measured.clear();
        self.advert.node = self.node;
        self.advert.payout = payout;
        self.advert.seq = 1;
        self.bids = BidBook::new(256);
        self.pairs.clear();
        self.cache.clear();
        self.worker.cached_models.clear();
        self.advert.models.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(awake: bool, external: bool, active: bool, busy: bool) -> DevState {
        DevState {
            awake,
            external,
            active,
            busy,
        }
    }

    #[test]
    fn the_default_policy_closes_on_battery_activity_and_load() {
        let p = RunPolicy::ChargingIdle;
        assert_eq!(gate_for(p, true, s(true, true, false, false)).0, None);
        assert!(matches!(
            gate_for(p, true, s(true, false, false, false)).0,
            Some(GateReason::OnBattery { .. })
        ));
        assert!(matches!(
            gate_for(p, true, s(true, true, true, false)).0,
            Some(GateReason::UserActive { .. })
        ));
        assert!(matches!(
            gate_for(p, false, s(true, true, false, true)).0,
            Some(GateReason::CpuBusy { .. })
        ));
        // "always" runs on battery and with a user present.
        assert_eq!(
            gate_for(RunPolicy::Always, true, s(true, false, true, false)).0,
            None
        );
    }

    #[test]
    fn payout_is_a_stellar_account_id() {
        let id = Identity::from_secret([5; 32]).node_id();
        assert!(crank_protocol::validate::looks_like_stellar_account(
            &payout_for(&id)
        ));
    }
}
