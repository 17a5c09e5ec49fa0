//! The worker's side: quote a price for a call for bids from its own costs, or decline with a
//! reason.
//!
//! # Estimates
//!
//! The run time and energy of a task come from, in order of preference:
//!
//! 1. a run of the same model on the same path this node measured before
//!    ([`MeasuredRun`]), scaled by the number of input elements;
//! 2. the self-benchmark of the path ([`PathBench`]: inferences per second and µJ per
//!    inference on the reference model), scaled by the *work ratio*
//!    `(model_bytes / reference_model_bytes) · (input_elements / reference_input_elements)`:
//!    the cost of a dense network grows with its parameters (∝ bytes) and its batch
//!    (∝ input elements). It is a rough guide; the first real run replaces it.
//!
//! `latency = overhead + queue wait + model fetch (if not cached) + run`.
//!
//! # Price
//!
//! ```text
//! cost  = per_task
//!       + energy_kWh · (tariff + battery wear if on battery)
//!       + run_seconds · per_second
//!       + model_MiB · fetch_per_MiB                       (if the model is not cached)
//! price = ⌈cost · (1 + load_surcharge · queued / slots) · (1 + margin)⌉   stroops
//! ```
//!
//! The requester's auction pays the bid (pay-as-bid): the price is cost plus the owner's
//! margin, and the latency and energy are honest estimates, because requesters measure both
//! and score a worker by what they measured once they have, and an estimate far below the
//! measurement costs trust (see the crate docs).
//!
//! Each path (CPU, GPU) is quoted and the cheapest that meets the deadline and the run-time
//! limit is bid, the faster one on a tie.

use std::collections::{BTreeMap, BTreeSet};

use crank_protocol::{
    Award, Bid, CallForBids, DeclineReason, ExecPath, GateReason, ModelId, NodeId, PathBench,
    TaskId, UnixMillis,
};
use serde::{Deserialize, Serialize};

/// How full the worker's inference queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Tasks waiting or running.
    pub queued: u16,
    /// Slots in all.
    pub slots: u16,
    /// Expected wait before a new task would start, ms.
    pub est_wait_ms: u64,
}

/// What the worker accepts at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLimits {
    /// Largest model, bytes.
    pub max_model_bytes: u64,
    /// Most input elements per task.
    pub max_input_elements: u64,
    /// Longest run, ms.
    pub max_run_ms: u64,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            max_model_bytes: 256 * 1024 * 1024,
            max_input_elements: 4 * 1024 * 1024,
            max_run_ms: 10 * 60_000,
        }
    }
}

/// A run this node measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredRun {
    /// Input elements of that run.
    pub input_elements: u64,
    /// Pure inference time, µs.
    pub run_micros: u64,
    /// Energy of that run, µJ.
    pub microjoules: u64,
}

/// Everything about the worker a quote depends on, gathered by the node at call time.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerState {
    /// This node.
    pub node: NodeId,
    /// Why the power gate is closed (None when it is open).
    pub gate_closed: Option<GateReason>,
    /// Whether the device runs from its battery now (adds battery wear to the price).
    pub on_battery: bool,
    /// The inference queue.
    pub queue: QueueState,
    /// Models held locally.
    pub cached_models: BTreeSet<ModelId>,
    /// Self-benchmark per path.
    pub bench: Vec<PathBench>,
    /// Runs measured per model and path.
    pub measured: BTreeMap<(ModelId, ExecPath), MeasuredRun>,
    /// Models this worker's runtimes refused, with the reason: declined at once.
    pub unservable: BTreeMap<ModelId, String>,
    /// Limits.
    pub limits: WorkerLimits,
    /// Stellar account to be paid at.
    pub payout: String,
    /// How much credit this worker gives a requester.
    pub credit: CreditPolicy,
    /// What the requester of the call being quoted owes this worker (from the ledger).
    pub requester: RequesterStanding,
}

/// What one requester owes this worker, from the worker's own ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequesterStanding {
    /// Counter-signed and not paid, stroops.
    pub unpaid_stroops: u64,
    /// When its oldest unpaid receipt was stored (None when nothing is unpaid).
    pub oldest_unpaid_at: Option<UnixMillis>,
}

/// How much a worker lets a requester owe it before it declines with a `credit` reason;
/// `Default` documents the values. Paying restores service at once: the standing comes from
/// the ledger, where a verified payment clears what it paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreditPolicy {
    /// Most a requester may owe, stroops. Default 50,000,000 (5 XLM): many thousands of
    /// small tasks, and far above the default settlement threshold, so an honest requester
    /// with automatic settlement never meets it.
    pub max_unpaid_stroops: u64,
    /// Longest a receipt may stay unpaid, seconds. Default 604,800 (7 days).
    pub max_unpaid_age_secs: u64,
}

impl Default for CreditPolicy {
    fn default() -> Self {
        Self {
            max_unpaid_stroops: 50_000_000,
            max_unpaid_age_secs: 7 * 24 * 3600,
        }
    }
}

impl CreditPolicy {
    /// Why a requester with this standing gets no more credit (None when it does).
    pub fn check(&self, standing: &RequesterStanding, now: UnixMillis) -> Option<DeclineReason> {
        let age_secs = standing
            .oldest_unpaid_at
            .map_or(0, |at| now.saturating_sub(at) / 1000);
        let limit = if standing.unpaid_stroops > self.max_unpaid_stroops {
            format!("limit {} stroops", self.max_unpaid_stroops)
        } else if standing.unpaid_stroops > 0 && age_secs > self.max_unpaid_age_secs {
            format!("unpaid for more than {} s", self.max_unpaid_age_secs)
        } else {
            return None;
        };
        Some(DeclineReason::Credit {
            owed_stroops: standing.unpaid_stroops,
            oldest_unpaid_secs: age_secs,
            limit,
        })
    }
}

/// The worker's costs and pricing policy; `Default` documents the values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CostModel {
    /// Electricity price, stroops per kWh. Default 10,000,000 (1 XLM).
    pub tariff_stroops_per_kwh: u64,
    /// Battery wear when running on battery, stroops per kWh drawn. Default 270,000,000
    /// (27 XLM: a 50 Wh pack worth about 670 XLM that lasts 500 cycles delivers 25 kWh).
    pub battery_wear_stroops_per_kwh: u64,
    /// Flat price per task, stroops. Default 100 (one Stellar base fee).
    pub per_task_stroops: u64,
    /// Price per second of inference, stroops. Default 1,000.
    pub per_second_stroops: u64,
    /// Cost of fetching a model, stroops per MiB. Default 100.
    pub fetch_stroops_per_mib: u64,
    /// Expected model download rate, bytes per second. Default 10,000,000.
    pub fetch_bytes_per_sec: u64,
    /// Price increase at a full queue, percent (linear in queue fill). Default 50.
    pub load_surcharge_percent: u32,
    /// Margin over cost, percent. Default 10.
    pub margin_percent: u32,
    /// Fixed time per task beyond the run (decode, validate, reply), ms. Default 20.
    pub overhead_ms: u32,
    /// How long a bid stays valid, ms. Default 30,000.
    pub bid_validity_ms: u64,
    /// Size of the benchmark's reference model, bytes. Default 100,000.
    pub reference_model_bytes: u64,
    /// Input elements of one benchmark inference. Default 64.
    pub reference_input_elements: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            tariff_stroops_per_kwh: 10_000_000,
            battery_wear_stroops_per_kwh: 270_000_000,
            per_task_stroops: 100,
            per_second_stroops: 1_000,
            fetch_stroops_per_mib: 100,
            fetch_bytes_per_sec: 10_000_000,
            load_surcharge_percent: 50,
            margin_percent: 10,
            overhead_ms: 20,
            bid_validity_ms: 30_000,
            reference_model_bytes: 100_000,
            reference_input_elements: 64,
        }
    }
}

/// Why a cost model is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostModelError {
    /// A figure that divides others is zero.
    #[error("`{0}` must be above zero")]
    Zero(&'static str),
}

impl CostModel {
    /// The same model with every money figure scaled by `factor` (an owner's policy price
    /// multiplier): quotes scale with it, rounded up to the stroop.
    pub fn scaled(&self, factor: f64) -> Self {
        let f = if factor.is_finite() && factor > 0.0 {
            factor
        } else {
            1.0
        };
        let s = |v: u64| (v as f64 * f).ceil().min(u64::MAX as f64) as u64;
        Self {
            tariff_stroops_per_kwh: s(self.tariff_stroops_per_kwh),
            battery_wear_stroops_per_kwh: s(self.battery_wear_stroops_per_kwh),
            per_task_stroops: s(self.per_task_stroops),
            per_second_stroops: s(self.per_second_stroops),
            fetch_stroops_per_mib: s(self.fetch_stroops_per_mib),
            ..self.clone()
        }
    }

    /// Checks the figures that divide others are non-zero.
    pub fn validate(&self) -> Result<(), CostModelError> {
        for (name, v) in [
            ("fetch_bytes_per_sec", self.fetch_bytes_per_sec),
            ("reference_model_bytes", self.reference_model_bytes),
            ("reference_input_elements", self.reference_input_elements),
        ] {
            if v == 0 {
                return Err(CostModelError::Zero(name));
            }
        }
        Ok(())
    }
}

/// A quote for one path, before choosing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathQuote {
    /// The path.
    pub path: ExecPath,
    /// Time from award to result, ms.
    pub latency_ms: u64,
    /// Inference alone, ms.
    pub run_ms: u64,
    /// Energy of the run, mJ.
    pub energy_mj: u64,
    /// Asked price, stroops.
    pub price_stroops: u64,
}

const MIB: f64 = 1024.0 * 1024.0;
const MICROJOULES_PER_KWH: f64 = 3.6e12;

#[allow(clippy::cast_precision_loss)]
fn f(x: u64) -> f64 {
    x as f64
}

/// `⌈x⌉` as u64, saturating; NaN becomes `u64::MAX` so a broken estimate is never cheap.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn ceil_u64(x: f64) -> u64 {
    if x.is_nan() || x >= 1.8e19 {
        u64::MAX
    } else if x <= 0.0 {
        0
    } else {
        x.ceil() as u64
    }
}

/// Quotes every benchmarked path for the task in `cfb`.
pub fn path_quotes(cfb: &CallForBids, state: &WorkerState, cost: &CostModel) -> Vec<PathQuote> {
    let cached = state.cached_models.contains(&cfb.model);
    let fetch_ms = if cached {
        0.0
    } else {
        f(cfb.model_bytes) * 1000.0 / f(cost.fetch_bytes_per_sec.max(1))
    };
    let fetch_cost = if cached {
        0.0
    } else {
        f(cfb.model_bytes) / MIB * f(cost.fetch_stroops_per_mib)
    };
    let work = f(cfb.model_bytes) / f(cost.reference_model_bytes.max(1)) * f(cfb.input_elements)
        / f(cost.reference_input_elements.max(1));
    let slots = f(u64::from(state.queue.slots.max(1)));
    let fill = (f(u64::from(state.queue.queued)) / slots).min(1.0);
    let load = 1.0 + f(u64::from(cost.load_surcharge_percent)) / 100.0 * fill;
    let margin = 1.0 + f(u64::from(cost.margin_percent)) / 100.0;
    let tariff = f(cost.tariff_stroops_per_kwh)
        + if state.on_battery {
            f(cost.battery_wear_stroops_per_kwh)
        } else {
            0.0
        };

    let mut out = Vec::new();
    for b in &state.bench {
        let (run_ms, energy_uj) = match state.measured.get(&(cfb.model, b.path)) {
            Some(m) if m.input_elements > 0 => {
                let ratio = f(cfb.input_elements) / f(m.input_elements);
                (f(m.run_micros) / 1000.0 * ratio, f(m.microjoules) * ratio)
            }
            _ => {
                let ips = f64::from(b.inferences_per_sec);
                if !ips.is_finite() || ips <= 0.0 {
                    continue;
                }
                (work / ips * 1000.0, work * f(b.microjoules_per_inference))
            }
        };
        let latency =
            f(u64::from(cost.overhead_ms)) + f(state.queue.est_wait_ms) + fetch_ms + run_ms;
        let cost_stroops = f(cost.per_task_stroops)
            + energy_uj / MICROJOULES_PER_KWH * tariff
            + run_ms / 1000.0 * f(cost.per_second_stroops)
            + fetch_cost;
        out.push(PathQuote {
            path: b.path,
            latency_ms: ceil_u64(latency),
            run_ms: ceil_u64(run_ms),
            energy_mj: ceil_u64(energy_uj / 1000.0),
            price_stroops: ceil_u64(cost_stroops * load * margin),
        });
    }
    out
}

/// Quotes a price for the task in `cfb` (already verified by the driver), or says why not.
///
/// The bid is unsigned; the node signs it with its identity.
pub fn quote(
    cfb: &CallForBids,
    state: &WorkerState,
    cost: &CostModel,
    now: UnixMillis,
) -> Result<Bid, DeclineReason> {
    if let Some(reason) = &state.gate_closed {
        return Err(DeclineReason::Gate {
            reason: reason.clone(),
        });
    }
    if state.queue.queued >= state.queue.slots {
        return Err(DeclineReason::QueueFull {
            queued: state.queue.queued,
            slots: state.queue.slots,
        });
    }
    if let Some(reason) = state.credit.check(&state.requester, now) {
        return Err(reason);
    }
    if let Some(why) = state.unservable.get(&cfb.model) {
        return Err(DeclineReason::ModelUnsupported {
            message: why.clone(),
        });
    }
    if cfb.model_bytes > state.limits.max_model_bytes {
        return Err(DeclineReason::ModelTooLarge {
            bytes: cfb.model_bytes,
            limit: state.limits.max_model_bytes,
        });
    }
    if cfb.input_elements > state.limits.max_input_elements {
        return Err(DeclineReason::InputTooLarge {
            elements: cfb.input_elements,
            limit: state.limits.max_input_elements,
        });
    }
    if let Err(e) = cost.validate() {
        return Err(DeclineReason::Other {
            message: format!("worker misconfigured: {e}"),
        });
    }
    let quotes = path_quotes(cfb, state, cost);
    if quotes.is_empty() {
        return Err(DeclineReason::Other {
            message: "no benchmarked execution path".into(),
        });
    }
    let within_limit: Vec<&PathQuote> = quotes
        .iter()
        .filter(|q| q.run_ms <= state.limits.max_run_ms)
        .collect();
    if within_limit.is_empty() {
        let fastest = quotes.iter().map(|q| q.run_ms).min().unwrap_or(u64::MAX);
        return Err(DeclineReason::Other {
            message: format!(
                "run would take {fastest} ms, over the limit of {} ms",
                state.limits.max_run_ms
            ),
        });
    }
    // The award comes at the earliest when the bid window closes, or now if that has passed.
    let start = now.max(cfb.bid_deadline.min(cfb.deadline));
    let in_time: Vec<&PathQuote> = within_limit
        .iter()
        .copied()
        .filter(|q| start.saturating_add(q.latency_ms) < cfb.deadline)
        .collect();
    if in_time.is_empty() {
        let needs_ms = within_limit
            .iter()
            .map(|q| q.latency_ms)
            .min()
            .unwrap_or(u64::MAX);
        return Err(DeclineReason::DeadlineTooSoon { needs_ms });
    }
    let Some(best) = in_time
        .iter()
        .min_by_key(|q| (q.price_stroops, q.latency_ms, q.path))
    else {
        return Err(DeclineReason::Other {
            message: "no usable execution path".into(),
        });
    };
    if best.price_stroops > cfb.max_price_stroops {
        return Err(DeclineReason::PriceTooLow {
            min_price_stroops: best.price_stroops,
        });
    }
    Ok(Bid {
        task_id: cfb.task_id,
        worker: state.node,
        model: cfb.model,
        model_bytes: cfb.model_bytes,
        input_hash: cfb.input_hash,
        input_elements: cfb.input_elements,
        price_stroops: best.price_stroops,
        est_latency_ms: u32::try_from(best.latency_ms).unwrap_or(u32::MAX),
        est_energy_mj: best.energy_mj,
        path: best.path,
        model_cached: state.cached_models.contains(&cfb.model),
        queue_len: state.queue.queued,
        valid_until: now.saturating_add(cost.bid_validity_ms).min(cfb.deadline),
        payout: state.payout.clone(),
    })
}

/// Checks that an award (already verified by the driver) matches the bid this worker made:
/// same task and worker, the same work (model, its size, the inputs' hash and element
/// count: what the price was computed for), a price not below the bid, and the bid still
/// valid.
pub fn check_award(bid: &Bid, award: &Award, now: UnixMillis) -> Result<(), DeclineReason> {
    let elements = award
        .inputs
        .iter()
        .fold(0u64, |n, t| n.saturating_add(t.tensor.data.len() as u64));
    let matches = award.task_id == bid.task_id
        && award.worker == bid.worker
        && award.model == bid.model
        && award.model_bytes == bid.model_bytes
        && award.input_hash == bid.input_hash
        && elements == bid.input_elements
        && award.price_stroops >= bid.price_stroops
        && now < bid.valid_until;
    if matches {
        Ok(())
    } else {
        Err(DeclineReason::NotBidFor)
    }
}

/// Why a bid could not be remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BidBookError {
    /// Every slot holds a live bid of a requester within its share.
    #[error("{0} open bids already; decline until some expire or are awarded")]
    Full(usize),
    /// A bid for this task is already open.
    #[error("a bid for this task is already open")]
    Duplicate,
    /// The requester already holds its fair share of the book: other requesters are bidding
    /// too, and one requester's calls may not crowd them out.
    #[error(
        "this requester holds {held} open bids, its fair share of the {capacity}-bid book with {requesters} requesters bidding; award or let some expire first"
    )]
    OverShare {
        /// Open bids the requester holds.
        held: usize,
        /// Its share now (the book's capacity over the requesters holding bids, this one included).
        share: usize,
        /// Requesters holding bids, this one included.
        requesters: usize,
        /// The book's capacity.
        capacity: usize,
    },
}

/// The bids a worker has open, so it can check an award against what it offered.
///
/// Bounded: expired bids are dropped first, and a full book refuses new bids (the worker then
/// declines), so a flood of calls for bids cannot grow it.
///
/// Fair: each requester may hold at most `capacity / requesters` open bids, counting the
/// requesters that hold any. A requester under its share still gets a slot when the book is
/// full: the soonest-expiring bid of the requester furthest over its share makes room. So one
/// requester (or a handful of identities) calling for bids a hundred times a second fills the
/// book only until someone else asks, and is then declined with [`BidBookError::OverShare`].
#[derive(Debug, Clone, Default)]
pub struct BidBook {
    bids: BTreeMap<TaskId, (NodeId, Bid)>,
    /// Each requester's open bids, soonest-expiring first.
    by_requester: BTreeMap<NodeId, BTreeSet<(UnixMillis, TaskId)>>,
    capacity: usize,
}

impl BidBook {
    /// An empty book of at most `capacity` open bids (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            bids: BTreeMap::new(),
            by_requester: BTreeMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The most open bids one requester may hold now, if it were to ask (at least 1).
    pub fn share(&self, requester: &NodeId) -> usize {
        let requesters =
            self.by_requester.len() + usize::from(!self.by_requester.contains_key(requester));
        (self.capacity / requesters.max(1)).max(1)
    }

    /// Open bids held for one requester.
    pub fn held_by(&self, requester: &NodeId) -> usize {
        self.by_requester.get(requester).map_or(0, BTreeSet::len)
    }

    /// Remembers a bid the worker is about to send to `requester`.
    pub fn insert(
        &mut self,
        requester: NodeId,
        bid: Bid,
        now: UnixMillis,
    ) -> Result<(), BidBookError> {
        if self.bids.contains_key(&bid.task_id) {
            return Err(BidBookError::Duplicate);
        }
        let held = self.held_by(&requester);
        let share = self.share(&requester);
        if held >= share {
            // Expired bids may be what holds the others' shares up.
            self.prune(now);
        }
        let held = self.held_by(&requester);
        let share = self.share(&requester);
        let requesters =
            self.by_requester.len() + usize::from(!self.by_requester.contains_key(&requester));
        // Alone, a requester's share is the whole book: "full" says it better.
        if held >= share && requesters > 1 {
            return Err(BidBookError::OverShare {
                held,
                share,
                requesters,
                capacity: self.capacity,
            });
        }
        if self.bids.len() >= self.capacity {
            self.prune(now);
        }
        if self.bids.len() >= self.capacity && !self.evict_over_share(&requester) {
            return Err(BidBookError::Full(self.bids.len()));
        }
        self.by_requester
            .entry(requester)
            .or_default()
            .insert((bid.valid_until, bid.task_id));
        self.bids.insert(bid.task_id, (requester, bid));
        Ok(())
    }

    /// Drops the soonest-expiring bid of the requester furthest over its share (other than
    /// `newcomer`); false when every requester is within its share.
    fn evict_over_share(&mut self, newcomer: &NodeId) -> bool {
        let share = self.share(newcomer);
        let victim = self
            .by_requester
            .iter()
            .filter(|(r, held)| *r != newcomer && held.len() > share)
            .max_by_key(|(_, held)| held.len())
            .and_then(|(_, held)| held.first().map(|(_, task)| *task));
        match victim {
            Some(task) => self.remove(&task).is_some(),
            None => false,
        }
    }

    /// Checks an award (already verified by the driver) against the open bid for its task and
    /// closes that bid; the reason to send back if it does not match.
    pub fn take_for_award(&mut self, award: &Award, now: UnixMillis) -> Result<Bid, DeclineReason> {
        let (_, bid) = self
            .bids
            .get(&award.task_id)
            .ok_or(DeclineReason::NotBidFor)?;
        check_award(bid, award, now)?;
        self.remove(&award.task_id).ok_or(DeclineReason::NotBidFor)
    }

    /// Forgets the bid for a task (the requester cancelled, or the call was withdrawn).
    pub fn remove(&mut self, task: &TaskId) -> Option<Bid> {
        let (requester, bid) = self.bids.remove(task)?;
        if let Some(held) = self.by_requester.get_mut(&requester) {
            held.remove(&(bid.valid_until, *task));
            if held.is_empty() {
                self.by_requester.remove(&requester);
            }
        }
        Some(bid)
    }

    /// Drops expired bids; returns how many.
    pub fn prune(&mut self, now: UnixMillis) -> usize {
        let before = self.bids.len();
        self.bids.retain(|_, (_, b)| b.valid_until > now);
        self.by_requester.retain(|_, held| {
            held.retain(|(until, _)| *until > now);
            !held.is_empty()
        });
        before - self.bids.len()
    }

    /// Open bids.
    pub fn len(&self) -> usize {
        self.bids.len()
    }

    /// Whether no bid is open.
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crank_protocol::tensor::tensors_hash;
    use crank_protocol::{NamedTensor, Tensor};

    const PAYOUT: &str = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";
    const PAYER: &str = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H";
    const NONCE: [u8; 16] = [5; 16];
    const REQUESTER: NodeId = NodeId([2; 32]);

    /// `n` input elements in one tensor.
    fn inputs(n: u64) -> Vec<NamedTensor> {
        vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::f32(vec![1, n], vec![0.5; n as usize]).unwrap(),
        }]
    }

    fn cfb() -> CallForBids {
        let requester = NodeId([2; 32]);
        let model = ModelId([3; 32]);
        let input_hash = tensors_hash(&inputs(64));
        CallForBids {
            task_id: TaskId::derive(&requester, &NONCE, &model, &input_hash),
            requester,
            model,
            model_bytes: 100_000,
            input_hash,
            input_elements: 64,
            max_price_stroops: 1_000_000,
            nonce: NONCE,
            payer: PAYER.into(),
            bid_deadline: 1_500,
            deadline: 60_000,
            issued_at: 1_000,
        }
    }

    /// The award of `cfb()` for `bid`, at `price`, carrying the called-for inputs.
    fn award(bid: &Bid, price: u64) -> Award {
        let c = cfb();
        Award {
            task_id: bid.task_id,
            requester: c.requester,
            worker: bid.worker,
            price_stroops: price,
            model: c.model,
            model_bytes: c.model_bytes,
            inputs: inputs(64),
            input_hash: c.input_hash,
            nonce: c.nonce,
            payer: c.payer,
            deadline: c.deadline,
        }
    }

    fn state() -> WorkerState {
        WorkerState {
            node: NodeId([9; 32]),
            gate_closed: None,
            on_battery: false,
            queue: QueueState {
                queued: 0,
                slots: 4,
                est_wait_ms: 0,
            },
            cached_models: [ModelId([3; 32])].into(),
            bench: vec![
                PathBench {
                    path: ExecPath::Cpu,
                    inferences_per_sec: 1000.0,
                    microjoules_per_inference: 20_000,
                },
                PathBench {
                    path: ExecPath::Gpu,
                    inferences_per_sec: 10_000.0,
                    microjoules_per_inference: 5_000,
                },
            ],
            measured: BTreeMap::new(),
            unservable: Default::default(),
            limits: WorkerLimits::default(),
            payout: PAYOUT.into(),
            credit: CreditPolicy::default(),
            requester: RequesterStanding::default(),
        }
    }

    #[test]
    fn a_price_multiplier_scales_the_quote() {
        let s = state();
        let c = cfb();
        let base = quote(&c, &s, &CostModel::default(), 1_000)
            .unwrap()
            .price_stroops;
        let doubled = quote(&c, &s, &CostModel::default().scaled(2.0), 1_000)
            .unwrap()
            .price_stroops;
        // Every money figure doubles; rounding up moves it by a stroop at most.
        assert!(doubled.abs_diff(base * 2) <= 2, "{base} -> {doubled}");
        assert_eq!(CostModel::default().scaled(f64::NAN), CostModel::default());
    }

    #[test]
    fn quote_follows_the_documented_formula() {
        let cost = CostModel::default();
        let bid = quote(&cfb(), &state(), &cost, 1_000).unwrap();
        // GPU: run 0.1 ms, 5,000 µJ. Cost = 100 + 5e3/3.6e12·1e7 + 0.0001·1000 + 0 = 100.1139.
        // Price = ⌈100.1139 · 1 · 1.1⌉ = 111. CPU: 100 + 0.0556 + 1 = 101.06 → 112.
        assert_eq!(bid.path, ExecPath::Gpu);
        assert_eq!(bid.price_stroops, 111);
        assert_eq!(bid.est_latency_ms, 21);
        assert_eq!(bid.est_energy_mj, 5);
        assert!(bid.model_cached);
        assert_eq!(bid.valid_until, 31_000);
        assert_eq!(bid.payout, PAYOUT);
    }

    #[test]
    fn a_model_the_runtimes_refused_is_declined_with_the_reason() {
        let cost = CostModel::default();
        let mut refusing = state();
        let why = "model uses operator `Foo` (node `n1`), which the CPU runtime does not support";
        refusing.unservable.insert(cfb().model, why.into());
        assert_eq!(
            quote(&cfb(), &refusing, &cost, 1_000),
            Err(DeclineReason::ModelUnsupported {
                message: why.into()
            })
        );
        // Other models are quoted as before.
        let mut other = cfb();
        other.model = ModelId([9; 32]);
        assert!(quote(&other, &refusing, &cost, 1_000).is_ok());
    }

    #[test]
    fn costs_raise_the_price() {
        let cost = CostModel::default();
        let base = quote(&cfb(), &state(), &cost, 1_000).unwrap().price_stroops;
        let mut busy = state();
        busy.queue.queued = 3;
        assert!(quote(&cfb(), &busy, &cost, 1_000).unwrap().price_stroops > base);
        let mut uncached = state();
        uncached.cached_models.clear();
        let mut big = cfb();
        big.model_bytes = 50 * 1024 * 1024;
        let b = quote(&big, &uncached, &cost, 1_000).unwrap();
        assert!(!b.model_cached);
        assert!(b.est_latency_ms >= 5_000, "fetch time counts: {b:?}");
        let mut battery = state();
        battery.on_battery = true;
        let mut heavy = cfb();
        heavy.input_elements = 64 * 50_000;
        let on_mains = quote(&heavy, &state(), &cost, 1_000).unwrap().price_stroops;
        let on_batt = quote(&heavy, &battery, &cost, 1_000).unwrap().price_stroops;
        assert!(on_batt > on_mains, "{on_batt} vs {on_mains}");
    }

    #[test]
    fn measured_runs_replace_the_benchmark_estimate() {
        let cost = CostModel::default();
        let mut s = state();
        s.bench.truncate(1);
        s.measured.insert(
            (ModelId([3; 32]), ExecPath::Cpu),
            MeasuredRun {
                input_elements: 32,
                run_micros: 500_000,
                microjoules: 1_000_000,
            },
        );
        let bid = quote(&cfb(), &s, &cost, 1_000).unwrap();
        // 64 elements: twice the measured run.
        assert_eq!(bid.est_latency_ms, 1_020);
        assert_eq!(bid.est_energy_mj, 2_000);
    }

    #[test]
    fn declines_say_why() {
        let cost = CostModel::default();
        let mut s = state();
        s.gate_closed = Some(GateReason::OnBattery { percent: Some(30) });
        assert_eq!(
            quote(&cfb(), &s, &cost, 1_000).unwrap_err().category(),
            "on battery"
        );
        let mut s = state();
        s.queue.queued = 4;
        assert!(matches!(
            quote(&cfb(), &s, &cost, 1_000),
            Err(DeclineReason::QueueFull {
                queued: 4,
                slots: 4
            })
        ));
        let mut c = cfb();
        c.model_bytes = u64::MAX;
        assert!(matches!(
            quote(&c, &state(), &cost, 1_000),
            Err(DeclineReason::ModelTooLarge { .. })
        ));
        let mut c = cfb();
        c.input_elements = u64::MAX;
        assert!(matches!(
            quote(&c, &state(), &cost, 1_000),
            Err(DeclineReason::InputTooLarge { .. })
        ));
        let mut c = cfb();
        c.max_price_stroops = 50;
        assert_eq!(
            quote(&c, &state(), &cost, 1_000),
            Err(DeclineReason::PriceTooLow {
                min_price_stroops: 111
            })
        );
        let mut c = cfb();
        c.deadline = 1_510;
        assert!(matches!(
            quote(&c, &state(), &cost, 1_000),
            Err(DeclineReason::DeadlineTooSoon { needs_ms: 21 })
        ));
        let mut s = state();
        s.bench.clear();
        assert!(matches!(
            quote(&cfb(), &s, &cost, 1_000),
            Err(DeclineReason::Other { .. })
        ));
        let mut s = state();
        s.limits.max_run_ms = 0;
        let mut c = cfb();
        c.input_elements = 64 * 1000;
        assert!(matches!(
            quote(&c, &s, &cost, 1_000),
            Err(DeclineReason::Other { .. })
        ));
        let bad = CostModel {
            fetch_bytes_per_sec: 0,
            ..CostModel::default()
        };
        assert!(matches!(
            quote(&cfb(), &state(), &bad, 1_000),
            Err(DeclineReason::Other { .. })
        ));
    }

    #[test]
    fn the_cheaper_path_wins_unless_only_the_faster_one_is_in_time() {
        let cost = CostModel::default();
        let mut s = state();
        // A power-hungry GPU: ten times faster than the CPU but far dearer in energy.
        s.bench[1].microjoules_per_inference = 100_000_000;
        let mut c = cfb();
        c.input_elements = 64 * 1_000; // CPU 1 s, GPU 0.1 s
        let relaxed = quote(&c, &s, &cost, 1_000).unwrap();
        assert_eq!(relaxed.path, ExecPath::Cpu);
        c.deadline = 2_000; // the award comes at 1,500 at the earliest
        let tight = quote(&c, &s, &cost, 1_000).unwrap();
        assert_eq!(tight.path, ExecPath::Gpu);
        assert!(tight.price_stroops > relaxed.price_stroops);
    }

    #[test]
    fn awards_must_match_the_bid() {
        let bid = quote(&cfb(), &state(), &CostModel::default(), 1_000).unwrap();
        let award = award(&bid, bid.price_stroops + 5);
        assert!(check_award(&bid, &award, 2_000).is_ok());
        let cheap = Award {
            price_stroops: bid.price_stroops - 1,
            ..award.clone()
        };
        assert_eq!(
            check_award(&bid, &cheap, 2_000),
            Err(DeclineReason::NotBidFor)
        );
        assert_eq!(
            check_award(&bid, &award, bid.valid_until),
            Err(DeclineReason::NotBidFor)
        );
    }

    #[test]
    fn the_bid_book_matches_awards_and_stays_bounded() {
        let cost = CostModel::default();
        let mut book = BidBook::new(2);
        let bid = quote(&cfb(), &state(), &cost, 1_000).unwrap();
        book.insert(REQUESTER, bid.clone(), 1_000).unwrap();
        assert_eq!(
            book.insert(REQUESTER, bid.clone(), 1_000),
            Err(BidBookError::Duplicate)
        );
        let mut c2 = cfb();
        c2.task_id = TaskId([2; 32]);
        book.insert(
            REQUESTER,
            quote(&c2, &state(), &cost, 1_000).unwrap(),
            1_000,
        )
        .unwrap();
        let mut c3 = cfb();
        c3.task_id = TaskId([3; 32]);
        let third = quote(&c3, &state(), &cost, 1_000).unwrap();
        assert_eq!(
            book.insert(REQUESTER, third.clone(), 1_000),
            Err(BidBookError::Full(2))
        );
        let award = award(&bid, bid.price_stroops);
        let low = Award {
            price_stroops: bid.price_stroops - 1,
            ..award.clone()
        };
        assert_eq!(
            book.take_for_award(&low, 2_000),
            Err(DeclineReason::NotBidFor)
        );
        assert_eq!(book.take_for_award(&award, 2_000), Ok(bid.clone()));
        assert_eq!(
            book.take_for_award(&award, 2_000),
            Err(DeclineReason::NotBidFor)
        );
        // Once the open bids expire, there is room again.
        book.insert(REQUESTER, third, 1_000).unwrap();
        assert_eq!(book.len(), 2);
        let mut c4 = cfb();
        c4.task_id = TaskId([4; 32]);
        let later = quote(&c4, &state(), &cost, 40_000).unwrap();
        book.insert(REQUESTER, later, 40_000).unwrap();
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn the_bid_binds_the_work_called_for() {
        let c = cfb();
        let bid = quote(&c, &state(), &CostModel::default(), 1_000).unwrap();
        assert_eq!(bid.task_id, c.task_id);
        assert_eq!(bid.model, c.model);
        assert_eq!(bid.model_bytes, c.model_bytes);
        assert_eq!(bid.input_hash, c.input_hash);
        assert_eq!(bid.input_elements, c.input_elements);
    }

    #[test]
    fn an_award_of_other_work_is_refused() {
        let bid = quote(&cfb(), &state(), &CostModel::default(), 1_000).unwrap();
        let good = award(&bid, bid.price_stroops);
        assert_eq!(check_award(&bid, &good, 2_000), Ok(()));
        // Another model.
        let other_model = Award {
            model: ModelId([30; 32]),
            ..good.clone()
        };
        // The same model, claimed at another size.
        let other_size = Award {
            model_bytes: good.model_bytes * 10,
            ..good.clone()
        };
        // Other inputs: more elements than the price was computed for (consistently hashed).
        let bigger = inputs(64 * 1_000);
        let other_inputs = Award {
            input_hash: tensors_hash(&bigger),
            inputs: bigger,
            ..good.clone()
        };
        // The same element count under another hash.
        let other_hash = Award {
            inputs: vec![NamedTensor {
                name: "y".into(),
                tensor: Tensor::f32(vec![64], vec![0.25; 64]).unwrap(),
            }],
            input_hash: tensors_hash(&inputs(63)),
            ..good.clone()
        };
        // The right hash, but the inputs carried have fewer elements than bid for.
        let fewer_elements = Award {
            inputs: inputs(32),
            ..good.clone()
        };
        // Another task, or addressed to another worker.
        let other_task = Award {
            task_id: TaskId([8; 32]),
            ..good.clone()
        };
        let other_worker = Award {
            worker: NodeId([10; 32]),
            ..good.clone()
        };
        for (what, a) in [
            ("model", other_model),
            ("model size", other_size),
            ("inputs", other_inputs),
            ("input hash", other_hash),
            ("element count", fewer_elements),
            ("task", other_task),
            ("worker", other_worker),
        ] {
            assert_eq!(
                check_award(&bid, &a, 2_000),
                Err(DeclineReason::NotBidFor),
                "an award with another {what}"
            );
        }
        // The book refuses it too, and keeps the bid open for the matching award.
        let mut book = BidBook::new(4);
        book.insert(REQUESTER, bid.clone(), 1_000).unwrap();
        let wrong = Award {
            model: ModelId([30; 32]),
            ..good.clone()
        };
        assert_eq!(
            book.take_for_award(&wrong, 2_000),
            Err(DeclineReason::NotBidFor)
        );
        assert_eq!(book.take_for_award(&good, 2_000), Ok(bid));
    }

    /// A bid for task `n`, valid until `until`.
    fn bid_for(n: u32, until: UnixMillis) -> Bid {
        let mut c = cfb();
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        c.task_id = TaskId(id);
        let mut bid = quote(&c, &state(), &CostModel::default(), 1_000).unwrap();
        bid.valid_until = until;
        bid
    }

    #[test]
    fn a_flooding_requester_holds_only_its_fair_share_of_the_bid_book() {
        let flooder = NodeId([66; 32]);
        let honest = NodeId([7; 32]);
        let third = NodeId([8; 32]);
        let mut book = BidBook::new(8);
        // Alone, the flooder may fill the book, and is then told it is full.
        for n in 0..8 {
            book.insert(flooder, bid_for(n, 30_000 + u64::from(n)), 1_000)
                .unwrap();
        }
        assert_eq!(
            book.insert(flooder, bid_for(8, 30_000), 1_000),
            Err(BidBookError::Full(8))
        );
        // Someone else asks: the flooder's soonest-expiring bid makes room.
        assert_eq!(book.share(&honest), 4);
        book.insert(honest, bid_for(100, 30_000), 1_000).unwrap();
        assert_eq!(book.len(), 8);
        assert_eq!(book.held_by(&flooder), 7);
        assert!(book.remove(&bid_for(0, 0).task_id).is_none(), "oldest went");
        // The flooder is now over its share and declined with the reason.
        assert_eq!(
            book.insert(flooder, bid_for(9, 30_000), 1_000),
            Err(BidBookError::OverShare {
                held: 7,
                share: 4,
                requesters: 2,
                capacity: 8
            })
        );
        // The honest requester gets up to its share, a third one too.
        for n in 101..104 {
            book.insert(honest, bid_for(n, 30_000), 1_000).unwrap();
        }
        assert_eq!(book.held_by(&honest), 4);
        assert_eq!(book.held_by(&flooder), 4);
        assert!(matches!(
            book.insert(honest, bid_for(104, 30_000), 1_000),
            Err(BidBookError::OverShare { share: 4, .. })
        ));
        book.insert(third, bid_for(200, 30_000), 1_000).unwrap();
        assert_eq!(book.held_by(&third), 1);
        assert_eq!(book.len(), 8);
        // Awards and expiry keep the per-requester counts right.
        let award = Award {
            task_id: bid_for(101, 0).task_id,
            ..award(&bid_for(101, 30_000), 1_000_000)
        };
        assert!(book.take_for_award(&award, 2_000).is_ok());
        assert_eq!(book.held_by(&honest), 3);
        assert_eq!(book.prune(40_000), 7);
        assert!(book.is_empty());
        assert_eq!(book.held_by(&flooder), 0);
        assert_eq!(book.share(&flooder), 8);
    }

    #[test]
    fn a_requester_over_its_credit_limit_is_declined_until_it_pays() {
        let cost = CostModel::default();
        let credit = CreditPolicy {
            max_unpaid_stroops: 10_000,
            max_unpaid_age_secs: 3_600,
        };
        let now: UnixMillis = 10_000_000;
        let c = CallForBids {
            bid_deadline: now + 500,
            deadline: now + 60_000,
            issued_at: now,
            ..cfb()
        };
        let with = |unpaid_stroops, oldest_unpaid_at| WorkerState {
            credit,
            requester: RequesterStanding {
                unpaid_stroops,
                oldest_unpaid_at,
            },
            ..state()
        };
        // Within both limits (exactly at the amount, younger than the age): a bid.
        assert!(quote(&c, &with(10_000, Some(now - 60_000)), &cost, now).is_ok());
        assert!(quote(&c, &with(0, None), &cost, now).is_ok());

        // Owes more than the limit.
        let over = quote(&c, &with(10_001, Some(now - 60_000)), &cost, now).unwrap_err();
        assert_eq!(over.category(), "credit");
        assert_eq!(
            over,
            DeclineReason::Credit {
                owed_stroops: 10_001,
                oldest_unpaid_secs: 60,
                limit: "limit 10000 stroops".into(),
            }
        );

        // Owes little, but for too long.
        let old = quote(&c, &with(500, Some(now - 3_601_000)), &cost, now).unwrap_err();
        assert_eq!(old.category(), "credit");
        assert_eq!(
            old,
            DeclineReason::Credit {
                owed_stroops: 500,
                oldest_unpaid_secs: 3_601,
                limit: "unpaid for more than 3600 s".into(),
            }
        );
        assert!(old.to_string().contains("pay to restore service"), "{old}");

        // Paid: the ledger's standing drops back under the limits and the worker bids again,
        // at the price a requester in good standing gets.
        let fresh = quote(&c, &state(), &cost, now).unwrap();
        assert_eq!(quote(&c, &with(0, None), &cost, now), Ok(fresh.clone()));
        // Partly paid: the oldest unpaid receipt is recent again and the total is under.
        assert_eq!(
            quote(&c, &with(9_000, Some(now - 1_000)), &cost, now),
            Ok(fresh)
        );

        // The gate and the queue still come first: credit is not the reason then.
        let mut closed = with(10_001, Some(now));
        closed.gate_closed = Some(GateReason::OnBattery { percent: None });
        assert_eq!(
            quote(&c, &closed, &cost, now).unwrap_err().category(),
            "on battery"
        );
    }
}
