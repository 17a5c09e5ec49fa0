//! What a policy sees as `input`, one type per decision. The node fills these in; the field
//! names are the contract with policy authors (docs/policies/README.md lists them), so a
//! rename here breaks their policies: add fields, never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Input of the owner's admission policy (`package crank.admission`), evaluated on the worker
/// for each call for bids, before it quotes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdmissionInput {
    /// Who asks.
    pub requester: Requester,
    /// The model to run.
    pub model: Model,
    /// The task's input.
    pub input: TaskInput,
    /// What the requester offers.
    pub price: Price,
    /// When, by the worker's clock.
    pub time: Time,
    /// The power gate.
    pub gate: Gate,
    /// The device.
    pub device: Device,
}

/// The requester of a call for bids, as this worker's own ledger knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Requester {
    /// Node id, hex.
    pub id: String,
    /// Its record with this worker.
    pub trust: RequesterTrust,
}

/// A requester's record with this worker, from the worker's ledger (nothing self-reported).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequesterTrust {
    /// False when this worker has never stored a receipt of it.
    pub known: bool,
    /// Receipts counter-signed by it.
    pub receipts: u64,
    /// What it has paid, stroops.
    pub paid_stroops: u64,
    /// What it owes, stroops.
    pub unpaid_stroops: u64,
    /// Age of its oldest unpaid receipt, seconds (0 when nothing is unpaid).
    pub oldest_unpaid_secs: u64,
}

/// A model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Content hash (the model id), hex.
    pub hash: String,
    /// Size, bytes.
    pub bytes: u64,
    /// Whether this node holds it already.
    pub cached: bool,
    /// The model package's metadata, when the model comes as a package (null otherwise).
    pub package: Option<serde_json::Value>,
}

/// A task's input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskInput {
    /// Tensor elements in all.
    pub elements: u64,
}

/// A price offer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// The most the requester will pay, stroops.
    pub max_stroops: u64,
}

/// A moment, by the evaluating node's clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Time {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Hour of the day, UTC, 0-23.
    pub hour_utc: u8,
    /// Day of the week, UTC: "mon" … "sun".
    pub weekday_utc: String,
}

impl Time {
    /// The moment `unix_ms`, with its UTC hour and weekday.
    pub fn at(unix_ms: u64) -> Self {
        const DAYS: [&str; 7] = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];
        let secs = unix_ms / 1000;
        let days = secs / 86_400;
        Self {
            unix_ms,
            hour_utc: u8::try_from((secs % 86_400) / 3600).unwrap_or(0),
            // 1970-01-01 was a Thursday.
            weekday_utc: DAYS[usize::try_from(days % 7).unwrap_or(0)].to_string(),
        }
    }
}

/// The power gate as the worker sees it now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Whether work may run.
    pub open: bool,
    /// Why not, when closed.
    pub reason: Option<String>,
    /// Whether the device runs from its battery.
    pub on_battery: bool,
    /// Battery charge, percent, when there is a battery.
    pub battery_percent: Option<u8>,
}

/// Device readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// The hottest thermal zone, °C (null when the machine exposes none).
    pub temperature_c: Option<f32>,
    /// Other processes' CPU load, percent (null before the first sample).
    pub cpu_load_percent: Option<f32>,
}

/// Input of the submitter's placement policy (`package crank.placement`), evaluated on the
/// requester for each candidate worker: once before the call for bids (`stage = "call"`,
/// no bid) and again for each bid before it can win the award (`stage = "bid"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementInput {
    /// "call" or "bid".
    pub stage: String,
    /// The task.
    pub task: Task,
    /// The worker being considered.
    pub candidate: Candidate,
}

/// A task, as its submitter's node knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The submitter's labels (`--label key=value`); they never leave its node.
    pub labels: BTreeMap<String, String>,
    /// The model.
    pub model: Model,
    /// The input.
    pub input: TaskInput,
    /// The most the submitter will pay, stroops.
    pub max_price_stroops: u64,
    /// When, by the submitter's clock.
    pub time: Time,
}

/// A candidate worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Node id, hex.
    pub id: String,
    /// Whether it pays out to this node's own Stellar account: a device of the same owner.
    pub own: bool,
    /// Its signed capability advert (hardware, power, gate, pricing, payout, self-reported
    /// trust, benchmarks), as JSON; null when only a provider record names it.
    pub advert: Option<serde_json::Value>,
    /// This node's own trust in it, from its history here.
    pub trust: CandidateTrust,
    /// Its bid, at the "bid" stage.
    pub bid: Option<BidInfo>,
}

/// What this requester has seen of a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CandidateTrust {
    /// False when this node has no history with it.
    pub known: bool,
    /// Trust score, 0-1.
    pub score: f64,
    /// Tasks it completed for this node.
    pub completed: u64,
    /// Tasks it failed.
    pub failed: u64,
}

/// A worker's bid.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BidInfo {
    /// Price, stroops.
    pub price_stroops: u64,
    /// Execution path ("cpu", "gpu:…").
    pub path: String,
    /// Claimed latency, ms.
    pub latency_ms: u64,
}

/// Input of the submitter's output policy (`package crank.output`), evaluated on the
/// requester after a result is verified, before it is handed to the submitter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputInput {
    /// The task.
    pub task: Task,
    /// Who ran it, hex.
    pub worker: String,
    /// The outputs.
    pub outputs: Vec<OutputTensor>,
}

/// One output tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputTensor {
    /// Its name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Its first values (at most 64), for policies that look at what came back.
    pub head: Vec<f64>,
}
