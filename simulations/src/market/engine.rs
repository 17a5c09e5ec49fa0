//! One shard under one scheduler: the event queue, the world (plans, churn, hourly samples),
//! the workers' job mechanics shared by every scheduler, the bookkeeping of outcomes and
//! payments with the invariant checks, and the merge of shards into a report.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crank_protocol::{
    CallForBids, ContentHash, ExecPath, Identity, ModelId, NodeId, RunPolicy, TaskId,
};
use crank_scheduler::{Auction, Input, MeasuredRun, TrustBook};
use indicatif::ProgressBar;
use rand::RngExt;

use super::device::{AdvertTiming, Device, Job};
use super::population::{DAY_MS, HOUR_MS, Habits, Hardware, day_plan};
use super::rng::{self, Purpose};
use super::stats::{
    CheckCounters, CheckSummary, ClassCounters, ClassEarnings, HourRow, MAX_VIOLATION_EXAMPLES,
    SchedulerSummary, ShardStats, TaskRow, Violation, ViolationKind, percentile,
};
use super::workload::{TaskDraw, draw_tasks};
use super::{EPOCH_MS, MarketConfig, MarketReport, SchedulerKind, WorldSummary};

/// A submitter: its key, its advert table (a fixed set of devices) and its trust book.
#[derive(Debug)]
pub(crate) struct Requester {
    pub node: NodeId,
    pub view: Vec<u32>,
    pub trust: TrustBook,
}

/// What a worker reported with its result, kept until the auction says whether it counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    pub slot: u32,
    /// The node id it ran under (a device that renews its identity gets a new one).
    pub node: NodeId,
    pub energy_uj: f64,
    pub path: ExecPath,
    /// Which answer it gave: [`RIGHT_ANSWER`], or a wrong one (equal tags, equal outputs).
    pub answer: u64,
}

/// The answer tag of a correct output.
pub(crate) const RIGHT_ANSWER: u64 = 0;

/// A baseline dispatcher's answer from a worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reply {
    /// The device is gone.
    Unreachable,
    /// It refused (queue full, too slow for the deadline, above the max price).
    Rejected,
    /// It queued the task and expects to deliver within this many ms.
    Accepted { est_latency_ms: u64 },
    /// It delivered.
    Result { price: u64, delivery: Delivery },
}

/// Something that happens at a moment.
#[derive(Debug)]
pub(crate) enum Ev {
    /// A device's plan moves to its next segment.
    Plan { slot: u32 },
    /// A device leaves or returns.
    Churn { slot: u32 },
    /// The next task arrives.
    Arrival,
    /// Hourly sample of the world.
    Sample,
    /// A call for bids reaches a worker.
    Call {
        task: u32,
        slot: u32,
        era: u32,
        node: NodeId,
        round: u32,
    },
    /// An answer reaches the requester's auction.
    Answer {
        task: u32,
        input: Box<Input>,
        delivery: Option<Delivery>,
    },
    /// An award reaches a worker.
    Award {
        task: u32,
        slot: u32,
        era: u32,
        node: NodeId,
        price: u64,
        attempt: u32,
    },
    /// A cancel reaches a worker.
    Cancel { task: u32, slot: u32, era: u32 },
    /// A task's timer.
    Timer { task: u32, at: u64 },
    /// A baseline dispatch reaches a worker.
    Dispatch {
        task: u32,
        slot: u32,
        era: u32,
        attempt: u32,
    },
    /// A worker's answer reaches a baseline dispatcher.
    Reply {
        task: u32,
        attempt: u32,
        reply: Reply,
    },
    /// A job's run ends on a device.
    JobDone {
        slot: u32,
        era: u32,
        task: u32,
        attempt: u32,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Reversed: the heap pops the earliest event, ties in scheduling order.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The auction's state for a task.
#[derive(Debug)]
pub(crate) struct AuctionSide {
    pub auction: Auction,
    pub cfbs: Vec<CallForBids>,
    pub delivery: Option<Delivery>,
}

/// The current dispatch of a baseline task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current {
    pub slot: u32,
    pub era: u32,
    pub attempt: u32,
}

/// A baseline dispatcher's state for a task.
#[derive(Debug, Default)]
pub(crate) struct BaselineSide {
    pub tried: Vec<u32>,
    pub current: Option<Current>,
}

/// Scheduler-specific state of a task.
#[derive(Debug)]
pub(crate) enum Side {
    Auction(Box<AuctionSide>),
    Baseline(BaselineSide),
}

/// A task in flight.
#[derive(Debug)]
pub(crate) struct Task {
    pub draw: TaskDraw,
    pub task_id: TaskId,
    /// The requester's nonce the task id derives from (with the model and input hash).
    pub nonce: [u8; 16],
    pub model_id: ModelId,
    pub model_bytes: u64,
    pub input_hash: ContentHash,
    pub elements: u64,
    pub deadline: u64,
    pub attempts: u32,
    pub timer_at: Option<u64>,
    pub side: Side,
    /// Set on a requester's replica or third run of another task.
    pub check: Option<super::checks::CheckRole>,
}

/// What one shard produced.
pub(crate) struct ShardResult {
    pub kind: SchedulerKind,
    pub stats: ShardStats,
    pub class_devices: Vec<u64>,
    pub liar_devices: u64,
    pub requesters: u64,
    pub leaves: u64,
    pub new_identities: u64,
    pub violation_counts: BTreeMap<ViolationKind, u64>,
}

/// One shard of the world under one scheduler.
pub(crate) struct Shard<'a> {
    pub cfg: &'a MarketConfig,
    pub kind: SchedulerKind,
    pub shard: u32,
    pub now: u64,
    heap: BinaryHeap<Scheduled>,
    seq: u64,
    pub timing: AdvertTiming,
    pub devices: Vec<Device>,
    pub by_node: HashMap<NodeId, (u32, u32)>,
    pub requesters: Vec<Requester>,
    pub models: Vec<ModelId>,
    draws: Vec<TaskDraw>,
    next_arrival: usize,
    pub tasks: HashMap<u32, Task>,
    pub stats: ShardStats,
    msg: u64,
    leaves: u64,
    new_identities: u64,
    pub violation_counts: BTreeMap<ViolationKind, u64>,
    finished_unreported: u64,
    /// Checks in progress, by the checked task.
    pub checks: HashMap<u32, super::checks::CheckState>,
    /// Index of the next replica or third run (after the drawn tasks').
    pub next_check_ix: u32,
}

fn share_of(total: u64, parts: u32, i: u32) -> u64 {
    let parts = u64::from(parts);
    total / parts + u64::from(u64::from(i) < total % parts)
}

fn key_bytes(rng: &mut impl rand::Rng) -> [u8; 32] {
    let mut k = [0u8; 32];
    for chunk in k.chunks_mut(8) {
        chunk.copy_from_slice(&rng.random::<u64>().to_le_bytes());
    }
    k
}

impl<'a> Shard<'a> {
    /// Builds the shard's world: devices, plans, churn, requesters and the task stream.
    pub(crate) fn new(cfg: &'a MarketConfig, kind: SchedulerKind, shard: u32) -> Self {
        let seed = cfg.seed;
        let sh = u64::from(shard);
        let n = u32::try_from(share_of(cfg.devices, cfg.shards, shard)).unwrap_or(u32::MAX);
        let timing = AdvertTiming {
            interval_ms: cfg.advert_interval_ms,
            ttl_ms: cfg.advert_ttl_ms,
            delay_ms: cfg.advert_delay_ms,
        };
        let models: Vec<ModelId> = cfg
            .workload
            .models
            .iter()
            .map(|m| m.id().unwrap_or(ModelId([0; 32])))
            .collect();
        let total_share: f64 = cfg.classes.iter().map(|c| c.share.max(0.0)).sum();
        let mut devices = Vec::with_capacity(n as usize);
        let mut by_node = HashMap::with_capacity(n as usize * 5 / 4);
        for slot in 0..n {
            let mut r = rng::stream(seed, Purpose::Population, &[sh, u64::from(slot)]);
            let mut pick = r.random::<f64>() * total_share;
            let mut class = cfg.classes.len() - 1;
            for (i, c) in cfg.classes.iter().enumerate() {
                pick -= c.share.max(0.0);
                if pick < 0.0 {
                    class = i;
                    break;
                }
            }
            let spec = &cfg.classes[class];
            let habits = Habits::draw(&mut r);
            let hw = Hardware::draw(spec, &mut r);
            let policy = if r.random_bool(cfg.always_share) {
                RunPolicy::Always
            } else {
                RunPolicy::ChargingIdle
            };
            let adv_phase = r.random_range(0..cfg.advert_interval_ms.max(1));
            // A device starts with each model with the chance its share of tasks gives it.
            let cached: Vec<ModelId> = cfg
                .workload
                .models
                .iter()
                .zip(&models)
                .filter(|(m, _)| r.random_bool((m.share * 1.5).clamp(0.0, 1.0)))
                .map(|(_, id)| *id)
                .collect();
            let mut kr = rng::stream(seed, Purpose::Keys, &[sh, u64::from(slot), 0]);
            let identity = Identity::from_secret(key_bytes(&mut kr));
            let mut churn_rng = rng::stream(seed, Purpose::Churn, &[sh, u64::from(slot)]);
            let in_mesh = churn_rng.random_bool(cfg.churn.online_share());
            let mut d = Device::new(
                class, spec, identity, policy, habits, hw, churn_rng, adv_phase, cached,
            );
            d.in_mesh = in_mesh;
            d.ignores_gate = kind.is_auction() && cfg.faults.workers_ignore_gate;
            // Its own stream, so that liars are the same devices whatever else is drawn.
            let mut lr = rng::stream(seed, Purpose::Keys, &[sh, u64::from(slot), 2 << 32]);
            d.liar = cfg.liars.share > 0.0 && lr.random_bool(cfg.liars.share);
            let mut cr = rng::stream(seed, Purpose::Keys, &[sh, u64::from(slot), 3 << 32]);
            d.cheat = cfg.cheaters.share > 0.0 && cr.random_bool(cfg.cheaters.share);
            by_node.insert(d.node, (slot, 0));
            devices.push(d);
        }
        let rq = share_of(u64::from(cfg.requesters), cfg.shards, shard);
        let rq = u32::try_from(rq).unwrap_or(u32::MAX);
        let view = cfg.view.min(n) as usize;
        let requesters = (0..rq)
            .map(|r| {
                let mut kr = rng::stream(seed, Purpose::Keys, &[sh, u64::from(r), 1 << 32]);
                let identity = Identity::from_secret(key_bytes(&mut kr));
                let mut vr = rng::stream(seed, Purpose::Views, &[sh, u64::from(r)]);
                let mut view: Vec<u32> = rand::seq::index::sample(&mut vr, n as usize, view)
                    .into_iter()
                    .map(|i| u32::try_from(i).unwrap_or(0))
                    .collect();
                view.sort_unstable();
                Requester {
                    node: identity.node_id(),
                    view,
                    trust: TrustBook::new(cfg.trust_prior, 4096).unwrap_or_default(),
                }
            })
            .collect();
        let count = share_of(cfg.tasks, cfg.shards, shard);
        let draws = draw_tasks(&cfg.workload, seed, sh, count, cfg.span_ms(), rq, EPOCH_MS);
        let stats = ShardStats {
            classes: vec![ClassCounters::default(); cfg.classes.len()],
            payments: vec![0; draws.len()],
            outcomes: vec![0; draws.len()],
            ..ShardStats::default()
        };
        let mut s = Self {
            cfg,
            kind,
            shard,
            now: EPOCH_MS,
            heap: BinaryHeap::new(),
            seq: 0,
            timing,
            devices,
            by_node,
            requesters,
            models,
            draws,
            next_arrival: 0,
            tasks: HashMap::new(),
            stats,
            msg: 0,
            leaves: 0,
            new_identities: 0,
            violation_counts: BTreeMap::new(),
            finished_unreported: 0,
            checks: HashMap::new(),
            next_check_ix: 0,
        };
        s.next_check_ix = u32::try_from(s.draws.len()).unwrap_or(u32::MAX);
        s.start_world();
        s
    }

    fn start_world(&mut self) {
        let (seed, sh) = (self.cfg.seed, u64::from(self.shard));
        for slot in 0..self.devices.len() {
            let class = self.cfg.classes[self.devices[slot].class].class;
            let d = &mut self.devices[slot];
            d.plan = day_plan(class, &d.habits, seed, sh, slot as u64, 0, EPOCH_MS);
            d.plan_ix = 0;
            d.state = d.plan.first().map(|p| p.1).unwrap_or_default();
            d.update_gate(EPOCH_MS, &self.timing);
            d.gate_visible_at = EPOCH_MS;
            if d.online() {
                d.publish(EPOCH_MS);
            } else {
                d.left_at = Some(EPOCH_MS);
            }
            let next_plan = d.plan.get(1).map_or(EPOCH_MS + DAY_MS, |p| p.0);
            let churn_at = self
                .cfg
                .churn
                .enabled()
                .then(|| EPOCH_MS + self.cfg.churn.draw_ms(d.in_mesh, &mut d.churn_rng));
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            self.push(next_plan, Ev::Plan { slot });
            if let Some(at) = churn_at {
                self.push(at, Ev::Churn { slot });
            }
        }
        if let Some(first) = self.draws.first() {
            let at = first.at;
            self.push(at, Ev::Arrival);
        }
        self.push(EPOCH_MS, Ev::Sample);
    }

    pub(crate) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    /// One-way delay of a message between a requester and a device, ms.
    pub(crate) fn delay(&mut self, slot: u32) -> u64 {
        self.msg += 1;
        let net = self.cfg.classes[self.devices[slot as usize].class].net_ms;
        let jitter = rng::unit(
            self.cfg.seed,
            Purpose::Network,
            &[u64::from(self.shard), self.msg],
        );
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let j = (jitter * f64::from(net) / 2.0) as u64;
        u64::from(self.cfg.requester_net_ms) + u64::from(net) + j
    }

    /// Runs until every task has ended; returns the shard's counters.
    pub(crate) fn run(mut self, bar: &ProgressBar) -> ShardResult {
        while let Some(Scheduled { at, ev, .. }) = self.heap.pop() {
            self.now = at;
            self.handle(ev);
            if self.finished_unreported >= 256 {
                bar.inc(self.finished_unreported);
                self.finished_unreported = 0;
            }
            if self.next_arrival >= self.draws.len() && self.tasks.is_empty() {
                break;
            }
        }
        bar.inc(self.finished_unreported);
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Plan { slot } => self.on_plan(slot),
            Ev::Churn { slot } => self.on_churn(slot),
            Ev::Arrival => self.on_arrival(),
            Ev::Sample => self.on_sample(),
            Ev::Call {
                task,
                slot,
                era,
                node,
                round,
            } => self.on_call(task, slot, era, node, round),
            Ev::Answer {
                task,
                input,
                delivery,
            } => self.on_answer(task, *input, delivery),
            Ev::Award {
                task,
                slot,
                era,
                node,
                price,
                attempt,
            } => self.on_award(task, slot, era, node, price, attempt),
            Ev::Cancel { task, slot, era } => self.on_cancel(task, slot, era),
            Ev::Timer { task, at } => self.on_timer(task, at),
            Ev::Dispatch {
                task,
                slot,
                era,
                attempt,
            } => self.on_dispatch(task, slot, era, attempt),
            Ev::Reply {
                task,
                attempt,
                reply,
            } => self.on_reply(task, attempt, reply),
            Ev::JobDone {
                slot,
                era,
                task,
                attempt,
            } => self.on_job_done(slot, era, task, attempt),
        }
    }

    fn hour_of(&self, t: u64) -> usize {
        usize::try_from(t.saturating_sub(EPOCH_MS) / HOUR_MS).unwrap_or(usize::MAX)
    }

    // ----- the world -----

    fn on_plan(&mut self, slot: u32) {
        let (seed, sh) = (self.cfg.seed, u64::from(self.shard));
        let class = self.cfg.classes[self.devices[slot as usize].class].class;
        let d = &mut self.devices[slot as usize];
        d.plan_ix += 1;
        if d.plan_ix >= d.plan.len() {
            d.plan_day += 1;
            d.plan = day_plan(
                class,
                &d.habits,
                seed,
                sh,
                u64::from(slot),
                d.plan_day,
                EPOCH_MS,
            );
            d.plan_ix = 0;
        }
        let state = d.plan.get(d.plan_ix).map(|p| p.1).unwrap_or(d.state);
        let next = d
            .plan
            .get(d.plan_ix + 1)
            .map_or(EPOCH_MS + (d.plan_day + 1) * DAY_MS, |p| p.0);
        self.set_state(slot, |d| d.state = state);
        self.push(next, Ev::Plan { slot });
    }

    fn on_churn(&mut self, slot: u32) {
        let d = &mut self.devices[slot as usize];
        let leaving = d.in_mesh;
        let renew = !leaving && d.churn_rng.random_bool(self.cfg.churn.new_identity_share);
        let next = self.now + self.cfg.churn.draw_ms(!leaving, &mut d.churn_rng);
        if leaving {
            self.leaves += 1;
            let h = self.hour_of(self.now);
            self.stats.hour(h).leaves += 1;
            self.set_state(slot, |d| d.in_mesh = false);
        } else {
            if renew {
                let d = &mut self.devices[slot as usize];
                let era = d.era + 1;
                let mut kr = rng::stream(
                    self.cfg.seed,
                    Purpose::Keys,
                    &[u64::from(self.shard), u64::from(slot), u64::from(era)],
                );
                d.renew_identity(Identity::from_secret(key_bytes(&mut kr)));
                self.by_node.insert(d.node, (slot, d.era));
                self.new_identities += 1;
            }
            self.set_state(slot, |d| d.in_mesh = true);
        }
        self.push(next, Ev::Churn { slot });
    }

    /// Applies a change to a device and what follows from it: battery accounting, jobs lost
    /// when it goes away, the gate re-evaluated, aborts, and queued jobs started.
    fn set_state(&mut self, slot: u32, change: impl FnOnce(&mut Device)) {
        let now = self.now;
        self.settle(slot);
        let d = &mut self.devices[slot as usize];
        let was_online = d.online();
        change(d);
        let online = d.online();
        if was_online && !online {
            self.go_away(slot);
        }
        let d = &mut self.devices[slot as usize];
        if !was_online && online {
            d.left_at = None;
            d.publish(now);
        }
        d.update_gate(now, &self.timing);
        let obeys_gate = self.kind.is_auction() && !self.cfg.faults.workers_ignore_gate;
        if obeys_gate
            && let Some(reason) = self.devices[slot as usize].gate.clone()
            && self.devices[slot as usize].online()
        {
            self.abort_all(slot, &reason);
        }
        self.try_start(slot);
    }

    /// Accounts battery time of running jobs up to now.
    fn settle(&mut self, slot: u32) {
        let now = self.now;
        let d = &mut self.devices[slot as usize];
        let battery = d.on_battery();
        for j in d.jobs.iter_mut().filter(|j| j.started_at.is_some()) {
            if battery {
                j.battery_ms += now.saturating_sub(j.mark);
            }
            j.mark = now;
        }
    }

    /// Books the energy a job used up to now (all of it when it finished).
    fn book_energy(&mut self, slot: u32, job: &Job) -> f64 {
        let Some(started) = job.started_at else {
            return 0.0;
        };
        let elapsed = self.now.saturating_sub(started);
        let used = job.energy_after(elapsed);
        #[allow(clippy::cast_precision_loss)]
        let battery = job.energy_uj * job.battery_ms as f64 / job.busy_ms().max(1) as f64;
        let d = &self.devices[slot as usize];
        let default_policy = d.policy == RunPolicy::ChargingIdle;
        self.stats.energy_uj += used;
        if job.task as usize >= self.draws.len() {
            // A replica or third run: what checking costs.
            self.stats.check.energy_uj += used;
        }
        self.stats.battery_uj += battery;
        self.stats.classes[d.class].energy_uj += used;
        if default_policy && battery > 0.0 {
            self.stats.battery_default_uj += battery;
            if self.kind.is_auction() {
                let detail = format!(
                    "task {} on slot {slot}: {} ms of its run on battery",
                    job.task, job.battery_ms
                );
                self.violate(ViolationKind::BatteryWork, detail);
            }
        }
        used
    }

    /// The device went away (asleep, switched off, left the mesh): its jobs are lost.
    fn go_away(&mut self, slot: u32) {
        let jobs = std::mem::take(&mut self.devices[slot as usize].jobs);
        for j in &jobs {
            let used = self.book_energy(slot, j);
            self.stats.wasted_uj += used;
            self.stats.lost_jobs += 1;
        }
        let d = &mut self.devices[slot as usize];
        d.left_at = Some(self.now);
        d.bids = crank_scheduler::BidBook::new(256);
    }

    fn on_sample(&mut self) {
        let h = self.hour_of(self.now);
        let online = self.devices.iter().filter(|d| d.online()).count() as u64;
        let open = self
            .devices
            .iter()
            .filter(|d| d.online() && d.gate.is_none())
            .count() as u64;
        let row = self.stats.hour(h);
        row.online = online;
        row.gate_open = open;
        if self.next_arrival < self.draws.len() || !self.tasks.is_empty() {
            let next = self.now + HOUR_MS;
            self.push(next, Ev::Sample);
        }
    }

    // ----- tasks -----

    fn on_arrival(&mut self) {
        let ix = self.next_arrival;
        self.next_arrival += 1;
        if let Some(next) = self.draws.get(self.next_arrival) {
            let at = next.at;
            self.push(at, Ev::Arrival);
        }
        let Some(draw) = self.draws.get(ix).copied() else {
            return;
        };
        let ix = u32::try_from(ix).unwrap_or(u32::MAX);
        self.stats.arrived += 1;
        let h = self.hour_of(draw.at);
        self.stats.hour(h).arrived += 1;
        let spec = &self.cfg.workload.models[usize::from(draw.model)];
        let model_id = self.models[usize::from(draw.model)];
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&self.shard.to_le_bytes());
        nonce[4..8].copy_from_slice(&ix.to_le_bytes());
        nonce[8..].copy_from_slice(&self.cfg.seed.to_le_bytes());
        let input_hash = ContentHash::of(&nonce);
        let requester = self.requesters[draw.requester as usize].node;
        let task = Task {
            draw,
            task_id: TaskId::derive(&requester, &nonce, &model_id, &input_hash),
            nonce,
            model_id,
            model_bytes: spec.bytes,
            input_hash,
            elements: u64::from(draw.batch) * spec.elements_per_sample,
            deadline: draw.at + self.cfg.workload.deadline_ms,
            attempts: 0,
            timer_at: None,
            side: Side::Baseline(BaselineSide::default()),
            check: None,
        };
        // Bring the requester's advert table up to now.
        let (now, timing) = (self.now, self.timing);
        for &s in &self.requesters[draw.requester as usize].view {
            self.devices[s as usize].refresh_advert(now, &timing);
        }
        match self.kind {
            SchedulerKind::Auction(pref) => self.auction_arrival(ix, task, pref),
            _ => self.baseline_arrival(ix, task),
        }
    }

    /// Work ratio of a task against the reference benchmark (as `quote()` computes it).
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn work_of(&self, model_bytes: u64, elements: u64, slot: u32) -> f64 {
        let c = &self.devices[slot as usize].cost;
        model_bytes as f64 / c.reference_model_bytes.max(1) as f64 * elements as f64
            / c.reference_input_elements.max(1) as f64
    }

    /// Accepts a job on a device (the caller checked it may).
    pub(crate) fn accept_job(
        &mut self,
        slot: u32,
        ix: u32,
        attempt: u32,
        path: ExecPath,
        price: u64,
    ) {
        let Some(t) = self.tasks.get(&ix) else { return };
        let (task_id, model_id, model_bytes, input_hash, elements, requester) = (
            t.task_id,
            t.model_id,
            t.model_bytes,
            t.input_hash,
            t.elements,
            t.draw.requester,
        );
        let work = self.work_of(model_bytes, elements, slot);
        let key = [
            u64::from(self.shard),
            u64::from(ix),
            u64::from(slot),
            u64::from(attempt),
        ];
        let u = |k: u64| {
            rng::unit(
                self.cfg.seed,
                Purpose::Run,
                &[key[0], key[1], key[2], key[3], k],
            )
        };
        let d = &self.devices[slot as usize];
        let (ips, uj) = d.truth(path);
        let time_noise = rng::lognormal_factor(0.1, u(0), u(1));
        let energy_noise = rng::lognormal_factor(0.1, u(2), u(3));
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let run_ms = ((work / ips * 1000.0 * time_noise).ceil() as u64).max(1);
        let energy_uj = work * uj * energy_noise;
        let spec = &self.cfg.classes[d.class];
        let fetch_ms = if d.has_model(&model_id) {
            0
        } else {
            model_bytes * 1000 / spec.bandwidth_bytes_per_sec.max(1) + u64::from(spec.net_ms) * 2
        };
        let now = self.now;
        let timing = self.timing;
        let d = &mut self.devices[slot as usize];
        d.before_queue_change(now, &timing);
        d.jobs.push(Job {
            task: ix,
            attempt,
            task_id,
            requester,
            model_id,
            input_hash,
            elements,
            path,
            price,
            accepted_at: now,
            started_at: None,
            fetch_ms,
            run_ms,
            energy_uj,
            mark: now,
            battery_ms: 0,
        });
        self.try_start(slot);
    }

    /// Starts waiting jobs while a worker is free (and, for the auction, the gate is open).
    pub(crate) fn try_start(&mut self, slot: u32) {
        let obeys_gate = self.kind.is_auction() && !self.cfg.faults.workers_ignore_gate;
        let now = self.now;
        let d = &mut self.devices[slot as usize];
        if !d.online() || (obeys_gate && d.gate.is_some()) {
            return;
        }
        // CPU runs share the workers; the GPU takes one run at a time.
        let busy = |p: ExecPath, jobs: &[Job]| {
            jobs.iter()
                .filter(|j| j.started_at.is_some() && j.path == p)
                .count()
        };
        // Both CPU runtimes share the device's worker threads.
        let mut cpu = busy(ExecPath::Cpu, &d.jobs) + busy(ExecPath::Onnxruntime, &d.jobs);
        let mut gpu = busy(ExecPath::Gpu, &d.jobs);
        let workers = usize::from(d.workers);
        let mut started = Vec::new();
        for j in d.jobs.iter_mut().filter(|j| j.started_at.is_none()) {
            let free = match j.path {
                ExecPath::Cpu | ExecPath::Onnxruntime => cpu < workers,
                ExecPath::Gpu => gpu < 1,
            };
            if !free {
                continue;
            }
            match j.path {
                ExecPath::Cpu | ExecPath::Onnxruntime => cpu += 1,
                ExecPath::Gpu => gpu += 1,
            }
            j.started_at = Some(now);
            j.mark = now;
            started.push((j.task, j.attempt, now + j.busy_ms()));
        }
        let era = d.era;
        for (task, attempt, at) in started {
            self.push(
                at,
                Ev::JobDone {
                    slot,
                    era,
                    task,
                    attempt,
                },
            );
        }
    }

    /// Removes a job from a device (cancelled or aborted); returns it with its energy booked
    /// as wasted.
    pub(crate) fn drop_job(&mut self, slot: u32, pos: usize) -> Job {
        self.settle(slot);
        let d = &mut self.devices[slot as usize];
        let job = d.jobs.remove(pos);
        d.publish(self.now);
        let used = self.book_energy(slot, &job);
        self.stats.wasted_uj += used;
        job
    }

    fn on_job_done(&mut self, slot: u32, era: u32, task: u32, attempt: u32) {
        let d = &self.devices[slot as usize];
        if d.era != era {
            return;
        }
        let Some(pos) = d
            .jobs
            .iter()
            .position(|j| j.task == task && j.attempt == attempt && j.started_at.is_some())
        else {
            return;
        };
        self.settle(slot);
        let now = self.now;
        let d = &mut self.devices[slot as usize];
        let job = d.jobs.remove(pos);
        d.publish(now);
        d.cache_model(job.model_id);
        d.worker.measured.insert(
            (job.model_id, job.path),
            MeasuredRun {
                input_elements: job.elements,
                run_micros: job.run_ms * 1000,
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                microjoules: job.energy_uj as u64,
            },
        );
        self.book_energy(slot, &job);
        let answer = self.answer_of(slot, task, attempt);
        let d = &self.devices[slot as usize];
        let delivery = Delivery {
            slot,
            node: d.node,
            energy_uj: job.energy_uj,
            path: job.path,
            answer,
        };
        if self.kind.is_auction() {
            self.deliver_receipt(slot, &job, delivery);
        } else {
            let delay = self.delay(slot);
            self.push(
                now + delay,
                Ev::Reply {
                    task,
                    attempt,
                    reply: Reply::Result {
                        price: job.price,
                        delivery,
                    },
                },
            );
        }
        self.try_start(slot);
    }

    fn on_cancel(&mut self, task: u32, slot: u32, era: u32) {
        let d = &self.devices[slot as usize];
        if d.era != era || !d.online() {
            return;
        }
        if let Some(t) = self.tasks.get(&task) {
            let id = t.task_id;
            self.devices[slot as usize].bids.remove(&id);
        }
        while let Some(pos) = self.devices[slot as usize]
            .jobs
            .iter()
            .position(|j| j.task == task)
        {
            self.drop_job(slot, pos);
        }
        self.try_start(slot);
    }

    fn on_timer(&mut self, task: u32, at: u64) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.timer_at != Some(at) {
            return;
        }
        t.timer_at = None;
        match self.kind {
            SchedulerKind::Auction(_) => self.auction_timer(task),
            _ => self.baseline_timer(task),
        }
    }

    // ----- outcomes -----

    pub(crate) fn violate(&mut self, kind: ViolationKind, detail: String) {
        *self.violation_counts.entry(kind).or_default() += 1;
        if self.stats.violations.len() < MAX_VIOLATION_EXAMPLES {
            self.stats.violations.push(Violation {
                scheduler: self.kind.to_string(),
                shard: self.shard,
                kind,
                detail,
            });
        }
    }

    /// Pays for a completed task (once) and books it.
    pub(crate) fn complete(&mut self, ix: u32, price: u64, ask: u64, delivery: Option<Delivery>) {
        let Some(t) = self.tasks.remove(&ix) else {
            return;
        };
        if let Some(role) = t.check {
            self.check_run_done(role, price, delivery);
            return;
        }
        let i = ix as usize;
        let pays = if self.cfg.faults.pay_twice { 2 } else { 1 };
        self.stats.payments[i] = self.stats.payments[i].saturating_add(pays);
        self.stats.outcomes[i] = 1;
        self.stats.completed += 1;
        self.finished_unreported += 1;
        if self.now > t.deadline {
            let detail = format!("task {ix} completed {} ms late", self.now - t.deadline);
            self.violate(ViolationKind::LateCompletion, detail);
        }
        let latency = self.now - t.draw.at;
        self.stats
            .latencies
            .push(u32::try_from(latency).unwrap_or(u32::MAX));
        self.stats.paid += price * u64::from(pays);
        self.stats.asked += ask;
        let h = self.hour_of(t.draw.at);
        self.stats.hour(h).completed += 1;
        let mut class_name = None;
        if let Some(dv) = delivery {
            if self.devices[dv.slot as usize].liar {
                self.stats.liar_tasks += 1;
            }
            let class = self.devices[dv.slot as usize].class;
            let c = &mut self.stats.classes[class];
            c.tasks += 1;
            c.paid += price * u64::from(pays);
            if dv.path == ExecPath::Gpu {
                self.stats.gpu_tasks += 1;
            }
            class_name = Some(self.cfg.classes[class].class.to_string());
        }
        self.answered(ix, &t, price, delivery);
        if self.sampled(ix) {
            let row = TaskRow {
                scheduler: self.kind.to_string(),
                shard: self.shard,
                task: ix,
                #[allow(clippy::cast_precision_loss)]
                arrived_s: (t.draw.at - EPOCH_MS) as f64 / 1000.0,
                model: self.cfg.workload.models[usize::from(t.draw.model)]
                    .name
                    .clone(),
                batch: t.draw.batch,
                outcome: "completed".into(),
                latency_ms: Some(latency),
                price_stroops: Some(price),
                ask_stroops: Some(ask),
                worker_class: class_name,
                path: delivery.map(|d| d.path.to_string()),
                energy_mj: delivery.map(|d| d.energy_uj / 1000.0),
                attempts: t.attempts,
                reason: None,
            };
            self.stats.samples.push(row);
        }
    }

    /// Books a failed task with its explanation.
    pub(crate) fn fail(&mut self, ix: u32, category: String, detail: String) {
        let Some(t) = self.tasks.remove(&ix) else {
            return;
        };
        if let Some(role) = t.check {
            self.check_run_failed(role);
            return;
        }
        self.stats.outcomes[ix as usize] = 2;
        self.stats.failed += 1;
        self.finished_unreported += 1;
        *self.stats.failures.entry(category).or_default() += 1;
        let h = self.hour_of(t.draw.at);
        self.stats.hour(h).failed += 1;
        if self.sampled(ix) {
            let row = TaskRow {
                scheduler: self.kind.to_string(),
                shard: self.shard,
                task: ix,
                #[allow(clippy::cast_precision_loss)]
                arrived_s: (t.draw.at - EPOCH_MS) as f64 / 1000.0,
                model: self.cfg.workload.models[usize::from(t.draw.model)]
                    .name
                    .clone(),
                batch: t.draw.batch,
                outcome: "failed".into(),
                latency_ms: None,
                price_stroops: None,
                ask_stroops: None,
                worker_class: None,
                path: None,
                energy_mj: None,
                attempts: t.attempts,
                reason: Some(detail),
            };
            self.stats.samples.push(row);
        }
    }

    /// The driver lost track of a task (only with the `forget_failures` fault).
    pub(crate) fn forget(&mut self, ix: u32) {
        if let Some(t) = self.tasks.remove(&ix)
            && let Some(role) = t.check
        {
            self.check_run_failed(role);
            return;
        }
        self.finished_unreported += 1;
    }

    fn sampled(&self, ix: u32) -> bool {
        self.cfg.sample_every > 0 && u64::from(ix) % self.cfg.sample_every == 0
    }

    /// Final checks: every task ended with an outcome, and paid exactly when completed.
    fn finish(mut self) -> ShardResult {
        let open: Vec<u32> = {
            let mut v: Vec<u32> = self.tasks.keys().copied().collect();
            v.sort_unstable();
            v
        };
        for ix in open {
            self.violate(
                ViolationKind::LostTask,
                format!("task {ix} still open when the simulation ran out of events"),
            );
        }
        let mut unfinished: Vec<u32> = self.checks.keys().copied().collect();
        unfinished.sort_unstable();
        for ix in unfinished {
            self.violate(
                ViolationKind::LostTask,
                format!("the check of task {ix} never reached a verdict"),
            );
        }
        self.finish_checks();
        for i in 0..self.stats.outcomes.len() {
            let (outcome, paid) = (self.stats.outcomes[i], self.stats.payments[i]);
            match outcome {
                0 => self.violate(
                    ViolationKind::LostTask,
                    format!("task {i} ended without completing or failing"),
                ),
                1 if paid != 1 => self.violate(
                    ViolationKind::DoublePayment,
                    format!("task {i} completed and paid {paid} times"),
                ),
                2 if paid != 0 => self.violate(
                    ViolationKind::DoublePayment,
                    format!("task {i} failed and paid {paid} times"),
                ),
                _ => {}
            }
        }
        let mut class_devices = vec![0u64; self.cfg.classes.len()];
        for d in &self.devices {
            class_devices[d.class] += 1;
        }
        let liar_devices = self.devices.iter().filter(|d| d.liar).count() as u64;
        ShardResult {
            kind: self.kind,
            stats: self.stats,
            class_devices,
            liar_devices,
            requesters: self.requesters.len() as u64,
            leaves: self.leaves,
            new_identities: self.new_identities,
            violation_counts: self.violation_counts,
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Sums the shards' check counters.
#[allow(clippy::cast_precision_loss)]
fn check_summary(
    parts: &[&ShardResult],
    completed: u64,
    energy_uj: f64,
    paid: u64,
) -> CheckSummary {
    let count =
        |f: &dyn Fn(&CheckCounters) -> u64| parts.iter().map(|p| f(&p.stats.check)).sum::<u64>();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut delays = Vec::new();
    let mut detect = Vec::new();
    for p in parts {
        for (k, v) in &p.stats.check.outcomes {
            *outcomes.entry((*k).to_string()).or_default() += v;
        }
        delays.extend_from_slice(&p.stats.check.delays_ms);
        detect.extend_from_slice(&p.stats.check.detect_ms);
    }
    delays.sort_unstable();
    detect.sort_unstable();
    let check_energy: f64 = parts.iter().map(|p| p.stats.check.energy_uj).sum();
    let devices: u64 = parts
        .iter()
        .map(|p| p.class_devices.iter().sum::<u64>())
        .sum();
    let runs = count(&|c| c.runs);
    let wrong_accepted = count(&|c| c.wrong_accepted);
    CheckSummary {
        cheater_device_share: ratio(count(&|c| c.cheat_devices) as f64, devices as f64),
        wrong_delivered: count(&|c| c.wrong_delivered),
        wrong_accepted,
        wrong_accepted_share: ratio(wrong_accepted as f64, completed as f64),
        late_wrong_accepted_share: ratio(
            count(&|c| c.late_wrong_accepted) as f64,
            count(&|c| c.late_completed) as f64,
        ),
        checked: count(&|c| c.checked),
        check_runs: runs,
        third_runs: count(&|c| c.third_runs),
        check_runs_failed: count(&|c| c.runs_failed),
        extra_task_share: ratio(runs as f64, completed as f64),
        late_extra_task_share: ratio(
            count(&|c| c.late_runs) as f64,
            count(&|c| c.late_completed) as f64,
        ),
        extra_energy_share: ratio(check_energy, energy_uj - check_energy),
        extra_stroops_share: ratio(count(&|c| c.stroops) as f64, paid as f64),
        withheld_stroops: count(&|c| c.withheld_stroops),
        outcomes,
        honest_outvoted: count(&|c| c.honest_outvoted),
        cheaters_active: count(&|c| c.cheaters_active),
        cheaters_caught: count(&|c| c.cheaters_caught),
        detect_p50_s: percentile(&detect, 50.0) as f64 / 1000.0,
        detect_p95_s: percentile(&detect, 95.0) as f64 / 1000.0,
        check_delay_p50_ms: percentile(&delays, 50.0),
        check_delay_p95_ms: percentile(&delays, 95.0),
    }
}

/// Merges shards (in order) into the report.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn merge(cfg: &MarketConfig, results: Vec<ShardResult>) -> MarketReport {
    let mut summaries = Vec::new();
    let mut hourly = Vec::new();
    let mut samples = Vec::new();
    let mut violations = Vec::new();
    let mut violation_counts = Vec::new();
    let mut world = None;
    let month_factor = 30.0 / cfg.days;
    for kind in &cfg.schedulers {
        let parts: Vec<&ShardResult> = results.iter().filter(|r| r.kind == *kind).collect();
        let name = kind.to_string();
        let mut lat: Vec<u32> = Vec::new();
        let sum = |f: &dyn Fn(&ShardStats) -> f64| parts.iter().map(|p| f(&p.stats)).sum::<f64>();
        let count = |f: &dyn Fn(&ShardStats) -> u64| parts.iter().map(|p| f(&p.stats)).sum::<u64>();
        for p in &parts {
            lat.extend_from_slice(&p.stats.latencies);
        }
        lat.sort_unstable();
        let (tasks, completed, failed) = (
            count(&|s| s.arrived),
            count(&|s| s.completed),
            count(&|s| s.failed),
        );
        let energy = sum(&|s| s.energy_uj);
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for p in &parts {
            for (k, v) in &p.stats.failures {
                *failures.entry(k.clone()).or_default() += v;
            }
        }
        let mut class_devices = vec![0u64; cfg.classes.len()];
        let mut classes = vec![ClassCounters::default(); cfg.classes.len()];
        for p in &parts {
            for (i, c) in p.stats.classes.iter().enumerate() {
                classes[i].tasks += c.tasks;
                classes[i].paid += c.paid;
                classes[i].energy_uj += c.energy_uj;
                class_devices[i] += p.class_devices[i];
            }
        }
        let earnings = cfg
            .classes
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let n = class_devices[i].max(1) as f64;
                let kwh = classes[i].energy_uj / 3.6e12;
                ClassEarnings {
                    class: spec.class.to_string(),
                    devices: class_devices[i],
                    tasks: classes[i].tasks,
                    paid_stroops: classes[i].paid,
                    energy_kwh: kwh,
                    xlm_per_device_month: classes[i].paid as f64 / 1e7 / n * month_factor,
                    electricity_xlm_per_device_month: kwh * spec.tariff_stroops_per_kwh as f64
                        / 1e7
                        / n
                        * month_factor,
                }
            })
            .collect();
        let quantiles = (0..=100).map(|p| percentile(&lat, f64::from(p))).collect();
        summaries.push(SchedulerSummary {
            scheduler: name.clone(),
            tasks,
            completed,
            failed,
            completion_rate: ratio(completed as f64, tasks as f64),
            latency_p50_ms: percentile(&lat, 50.0),
            latency_p95_ms: percentile(&lat, 95.0),
            latency_p99_ms: percentile(&lat, 99.0),
            latency_mean_ms: ratio(
                lat.iter().map(|&l| f64::from(l)).sum::<f64>(),
                lat.len() as f64,
            ),
            latency_quantiles_ms: quantiles,
            energy_per_task_j: ratio(energy / 1e6, completed as f64),
            wasted_energy_share: ratio(sum(&|s| s.wasted_uj), energy),
            battery_energy_share: ratio(sum(&|s| s.battery_uj), energy),
            battery_energy_default_policy_j: sum(&|s| s.battery_default_uj) / 1e6,
            mean_price_stroops: ratio(count(&|s| s.paid) as f64, completed as f64),
            mean_ask_stroops: ratio(count(&|s| s.asked) as f64, completed as f64),
            attempts: count(&|s| s.attempts),
            aborted_runs: count(&|s| s.aborted),
            lost_jobs: count(&|s| s.lost_jobs),
            gpu_share: ratio(count(&|s| s.gpu_tasks) as f64, completed as f64),
            liar_device_share: ratio(
                parts.iter().map(|p| p.liar_devices).sum::<u64>() as f64,
                class_devices.iter().sum::<u64>() as f64,
            ),
            liar_task_share: ratio(count(&|s| s.liar_tasks) as f64, completed as f64),
            overclaims: count(&|s| s.overclaims),
            signed_messages: count(&|s| s.signed),
            checks: check_summary(&parts, completed, energy, count(&|s| s.paid)),
            failures,
            earnings,
        });
        // Hourly rows: sum over shards.
        let hours = parts
            .iter()
            .map(|p| p.stats.hourly.len())
            .max()
            .unwrap_or(0);
        for h in 0..hours {
            let mut row = HourRow {
                scheduler: name.clone(),
                hour: u32::try_from(h).unwrap_or(u32::MAX),
                ..HourRow::default()
            };
            for p in &parts {
                if let Some(r) = p.stats.hourly.get(h) {
                    row.arrived += r.arrived;
                    row.completed += r.completed;
                    row.failed += r.failed;
                    row.online += r.online;
                    row.gate_open += r.gate_open;
                    row.leaves += r.leaves;
                }
            }
            hourly.push(row);
        }
        for p in &parts {
            samples.extend(p.stats.samples.iter().cloned());
            violations.extend(p.stats.violations.iter().cloned());
        }
        let mut counts: BTreeMap<ViolationKind, u64> = BTreeMap::new();
        for p in &parts {
            for (k, v) in &p.violation_counts {
                *counts.entry(*k).or_default() += v;
            }
        }
        for (k, v) in counts {
            violation_counts.push((name.clone(), k, v));
        }
        if world.is_none() {
            let total_devices: u64 = class_devices.iter().sum();
            let rows: Vec<&HourRow> = hourly.iter().filter(|r| r.scheduler == name).collect();
            let samples_n = rows.len().max(1) as f64;
            let online: f64 = rows.iter().map(|r| r.online as f64).sum::<f64>() / samples_n;
            let open: f64 = rows.iter().map(|r| r.gate_open as f64).sum::<f64>() / samples_n;
            world = Some(WorldSummary {
                devices_by_class: cfg
                    .classes
                    .iter()
                    .zip(&class_devices)
                    .map(|(c, n)| (c.class.to_string(), *n))
                    .collect(),
                requesters: parts.iter().map(|p| p.requesters).sum(),
                leaves: parts.iter().map(|p| p.leaves).sum(),
                new_identities: parts.iter().map(|p| p.new_identities).sum(),
                mean_online_share: ratio(online, total_devices as f64),
                mean_gate_open_share: ratio(open, total_devices as f64),
            });
        }
    }
    MarketReport {
        config: cfg.clone(),
        world: world.unwrap_or(WorldSummary {
            devices_by_class: Vec::new(),
            requesters: 0,
            leaves: 0,
            new_identities: 0,
            mean_online_share: 0.0,
            mean_gate_open_share: 0.0,
        }),
        summaries,
        hourly,
        samples,
        violations,
        violation_counts,
    }
}
