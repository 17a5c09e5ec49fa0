//! The messages nodes exchange.
//!
//! Adverts travel on gossipsub. Everything else belongs to one task and travels directly
//! between the two peers involved, as a [`Request`] answered by a [`Response`]:
//!
//! ```text
//! requester                                   worker
//!   CallForBids ───────────────────────────────▶
//!               ◀──────────────── Bid | Decline
//!   Award (inputs, agreed price) ──────────────▶
//!               ◀─────────── Accepted | Rejected
//!               ◀──────────────────── FetchModel   (only if the worker lacks the model)
//!   ModelChunk ────────────────────────────────▶
//!               ◀──── Result (signed receipt committing to the output hash) | Failure
//!   Receipt (counter-signed) | Error ──────────▶
//!               ◀──────────────── Outputs (signed by the worker)
//!   Ack | Dispute (signed evidence) ───────────▶
//! ```
//!
//! The outputs travel only after the requester has counter-signed a receipt that commits to
//! their hash (fair exchange): a requester that never counter-signs gets nothing, and a
//! worker whose signed outputs do not match the hash it signed hands the requester proof.
//!
//! Money: the call for bids and the award name the requester's Stellar payout account
//! (`payer`), the receipt repeats it under both signatures, and a worker credits a receipt
//! only with a payment from that account. Settlement notices are signed by the payer's node.
//!
//! `GetAdvert` lets a newly connected peer ask for the current advert directly instead of
//! waiting for the next gossip round.
//!
//! The result travels as its own request from the worker, so a task may run longer than any
//! request timeout.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::bounded::{
    self, MAX_ADDRS, MAX_BENCHES, MAX_ELEMENTS, MAX_GPUS, MAX_MODELS, MAX_PAID_RECEIPTS,
    MAX_TENSORS,
};
use crate::ids::{ContentHash, ModelId, NodeId, TaskId};
use crate::sign::{CounterSigned, Signable, Signed};
use crate::tensor::NamedTensor;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecPath {
    /// tract on the CPU.
    Cpu,
    /// wgpu compute kernels on a GPU.
    Gpu,
    /// ONNX Runtime on the CPU, where the owner installed it (wire version 3).
    Onnxruntime,
}

impl fmt::Display for ExecPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::Onnxruntime => "onnxruntime",
        })
    }
}

/// When a device owner lets the node work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunPolicy {
    /// Whenever the node runs.
    Always,
    /// Only while the user is idle (any power source).
    Idle,
    /// Only on external power (idle or not).
    Charging,
    /// Only on external power and while idle: the default, as BOINC users know it.
    #[default]
    ChargingIdle,
}

impl fmt::Display for RunPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Idle => "idle",
            Self::Charging => "charging",
            Self::ChargingIdle => "charging-idle",
        })
    }
}

impl std::str::FromStr for RunPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "idle" => Ok(Self::Idle),
            "charging" => Ok(Self::Charging),
            "charging-idle" => Ok(Self::ChargingIdle),
            other => Err(format!(
                "unknown run policy {other:?}; expected always, idle, charging or charging-idle"
            )),
        }
    }
}

/// Why the power gate is closed.
///
/// Signed into adverts, declines and task failures; postcard encodes a variant by its index,
/// so a variant added here would need a wire version bump (peers of this version could not
/// decode it). A node whose gate closes for a reason not listed (an input it could not read)
/// sends the closest one listed and keeps the distinction to itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateReason {
    /// Running on battery (percent when known).
    OnBattery {
        /// Charge in percent, when known.
        percent: Option<u8>,
    },
    /// A user was active recently.
    UserActive {
        /// Seconds since the last user input.
        idle_secs: u64,
        /// Seconds of idle required.
        required_secs: u64,
    },
    /// Other processes use too much CPU.
    CpuBusy {
        /// Other processes' CPU use in percent.
        percent: u8,
        /// The threshold in percent.
        limit: u8,
    },
    /// The device is too hot.
    TooHot {
        /// Hottest zone in degrees Celsius.
        celsius: i16,
        /// The threshold.
        limit: i16,
    },
    /// The owner paused the node.
    Paused,
}

impl GateReason {
    /// A short category used to aggregate reasons across many peers.
    pub fn category(&self) -> &'static str {
        match self {
            Self::OnBattery { .. } => "on battery",
            Self::UserActive { .. } => "user active",
            Self::CpuBusy { .. } => "CPU busy",
            Self::TooHot { .. } => "too hot",
            Self::Paused => "paused",
        }
    }
}

impl fmt::Display for GateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OnBattery { percent: Some(p) } => write!(f, "on battery {p} %"),
            Self::OnBattery { percent: None } => write!(f, "on battery"),
            Self::UserActive {
                idle_secs,
                required_secs,
            } => {
                write!(
                    f,
                    "user active {idle_secs} s ago (needs {required_secs} s idle)"
                )
            }
            Self::CpuBusy { percent, limit } => write!(f, "CPU busy {percent} % (limit {limit} %)"),
            Self::TooHot { celsius, limit } => write!(f, "too hot {celsius} °C (limit {limit} °C)"),
            Self::Paused => write!(f, "paused by the owner"),
        }
    }
}

/// The power gate as advertised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateInfo {
    /// The owner's policy.
    pub policy: RunPolicy,
    /// Whether the node accepts work now.
    pub open: bool,
    /// Why it is closed (None when open).
    pub reason: Option<GateReason>,
}

/// A GPU adapter the node can run models on. CPU-emulated adapters are never advertised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAdapter {
    /// Adapter name as the driver reports it.
    #[serde(deserialize_with = "bounded::text")]
    pub name: String,
    /// Graphics API backend (vulkan, metal, dx12, gl).
    #[serde(deserialize_with = "bounded::text")]
    pub backend: String,
    /// discrete, integrated or virtual.
    #[serde(deserialize_with = "bounded::text")]
    pub kind: String,
}

/// Hardware summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// CPU brand string.
    #[serde(deserialize_with = "bounded::text")]
    pub cpu_model: String,
    /// Logical cores.
    pub cores: u16,
    /// Total memory in MiB.
    pub ram_mib: u64,
    /// CPU architecture (x86_64, aarch64, …).
    #[serde(deserialize_with = "bounded::text")]
    pub arch: String,
    /// Operating system name and version.
    #[serde(deserialize_with = "bounded::text")]
    pub os: String,
    /// Usable GPU adapters.
    #[serde(deserialize_with = "bounded::seq::<{ MAX_GPUS }, _, _>")]
    pub gpus: Vec<GpuAdapter>,
}

/// Power summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerInfo {
    /// External power online (None when it could not be determined).
    pub external_power: Option<bool>,
    /// Whether a system battery exists.
    pub has_battery: bool,
    /// Battery charge in percent, when there is a battery.
    pub battery_percent: Option<u8>,
    /// Estimated draw while busy, milliwatts.
    pub busy_milliwatts: u32,
}

/// Indicative prices; a bid states the concrete price for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    /// Flat price per task, stroops.
    pub per_task_stroops: u64,
    /// Price per second of compute, stroops.
    pub per_second_stroops: u64,
}

/// Self-benchmark of one execution path on the reference model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathBench {
    /// CPU or GPU.
    pub path: ExecPath,
    /// Inferences per second on the reference model.
    pub inferences_per_sec: f32,
    /// Energy per inference, microjoules.
    pub microjoules_per_inference: u64,
}

/// Completed and failed work as the node reports it (requesters keep their own counts too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TrustSummary {
    /// Tasks completed with a counter-signed receipt.
    pub completed: u64,
    /// Tasks failed, aborted or timed out.
    pub failed: u64,
}

/// How much work the node can take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Inference workers.
    pub workers: u16,
    /// Queue slots in all.
    pub queue_slots: u16,
    /// Queue slots in use.
    pub queued: u16,
}

/// What a node can do, published on gossipsub at start, on change and periodically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityAdvert {
    /// The advertising node; must equal the signer.
    pub node: NodeId,
    /// Strictly increasing per node; older or equal sequence numbers are stale.
    pub seq: u64,
    /// When it was made.
    pub issued_at: UnixMillis,
    /// When it stops being valid.
    pub expires_at: UnixMillis,
    /// Software name and version.
    #[serde(deserialize_with = "bounded::text")]
    pub agent: String,
    /// Hardware summary.
    pub hardware: Hardware,
    /// Power summary.
    pub power: PowerInfo,
    /// Power gate state.
    pub gate: GateInfo,
    /// Models the node holds (content ids).
    #[serde(deserialize_with = "bounded::seq::<{ MAX_MODELS }, _, _>")]
    pub models: Vec<ModelId>,
    /// Models the node has found it cannot run on any of its paths (the runtimes refused
    /// them): requesters leave it out of their auctions for those (wire version 3).
    #[serde(deserialize_with = "bounded::seq::<{ MAX_MODELS }, _, _>")]
    pub unservable: Vec<ModelId>,
    /// Indicative prices.
    pub pricing: Pricing,
    /// Stellar account (G… strkey) to pay.
    #[serde(deserialize_with = "bounded::text")]
    pub payout: String,
    /// Self-reported track record.
    pub trust: TrustSummary,
    /// Self-benchmark per execution path.
    #[serde(deserialize_with = "bounded::seq::<{ MAX_BENCHES }, _, _>")]
    pub bench: Vec<PathBench>,
    /// Current capacity.
    pub capacity: Capacity,
    /// Addresses the node can be dialled at (multiaddrs, most reachable first), so a
    /// requester can reach a worker it learned about by gossip.
    #[serde(deserialize_with = "bounded::texts::<{ MAX_ADDRS }, _>")]
    pub addrs: Vec<String>,
}

impl Signable for CapabilityAdvert {
    const DOMAIN: &'static str = "crank/3/advert";
}

/// A requester's call for bids on one task, sent directly to a few candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallForBids {
    /// The task.
    pub task_id: TaskId,
    /// Who asks; must equal the signer.
    pub requester: NodeId,
    /// The model to run.
    pub model: ModelId,
    /// Size of the model in bytes (the worker may have to fetch it).
    pub model_bytes: u64,
    /// Hash of the inputs that the award will carry.
    pub input_hash: ContentHash,
    /// Total elements over all inputs.
    pub input_elements: u64,
    /// Highest acceptable price, stroops.
    pub max_price_stroops: u64,
    /// The requester's random nonce: with the requester, model and input hash it derives the
    /// task id, so a worker can check that the id commits to the work.
    pub nonce: [u8; 16],
    /// The Stellar account (`G…`) the requester will pay from.
    #[serde(deserialize_with = "bounded::text")]
    pub payer: String,
    /// Bids arriving after this are ignored.
    pub bid_deadline: UnixMillis,
    /// The task must finish by this time.
    pub deadline: UnixMillis,
    /// When the call was made.
    pub issued_at: UnixMillis,
}

impl Signable for CallForBids {
    const DOMAIN: &'static str = "crank/2/call-for-bids";
}

/// A worker's offer to run a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// The task.
    pub task_id: TaskId,
    /// Who bids; must equal the signer.
    pub worker: NodeId,
    /// The model bid for: an award of another model is refused.
    pub model: ModelId,
    /// The model's size in bytes, as called for.
    pub model_bytes: u64,
    /// The inputs' hash, as called for.
    pub input_hash: ContentHash,
    /// The inputs' total elements, as called for: the price was computed for this size.
    pub input_elements: u64,
    /// Asked price, stroops.
    pub price_stroops: u64,
    /// Expected time from award to result, milliseconds (model fetch included).
    pub est_latency_ms: u32,
    /// Expected energy for the run, millijoules.
    pub est_energy_mj: u64,
    /// Path the worker would use.
    pub path: ExecPath,
    /// Whether the worker already holds the model.
    pub model_cached: bool,
    /// Tasks queued ahead of this one.
    pub queue_len: u16,
    /// The bid is void after this time.
    pub valid_until: UnixMillis,
    /// Stellar account to pay.
    #[serde(deserialize_with = "bounded::text")]
    pub payout: String,
}

impl Signable for Bid {
    const DOMAIN: &'static str = "crank/3/bid";
}

/// Why a worker will not take a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    /// The power gate is closed.
    Gate {
        /// Why.
        reason: GateReason,
    },
    /// No queue slot left.
    QueueFull {
        /// Tasks queued.
        queued: u16,
        /// Slots in all.
        slots: u16,
    },
    /// The maximum price is below what the worker asks.
    PriceTooLow {
        /// The worker's price for this task.
        min_price_stroops: u64,
    },
    /// The model exceeds the worker's size limit.
    ModelTooLarge {
        /// Model size.
        bytes: u64,
        /// Limit.
        limit: u64,
    },
    /// The input exceeds the worker's element limit.
    InputTooLarge {
        /// Elements offered.
        elements: u64,
        /// Limit.
        limit: u64,
    },
    /// The deadline leaves too little time.
    DeadlineTooSoon {
        /// Time the worker would need, milliseconds.
        needs_ms: u64,
    },
    /// The award does not match the worker's bid, or the task is unknown.
    NotBidFor,
    /// The requester owes this worker more, or for longer, than the worker's credit limit.
    Credit {
        /// What the requester owes this worker and has not paid, stroops.
        owed_stroops: u64,
        /// Age of its oldest unpaid receipt, seconds.
        oldest_unpaid_secs: u64,
        /// Which limit it is over.
        #[serde(deserialize_with = "bounded::text")]
        limit: String,
    },
    /// Anything else, explained.
    Other {
        /// The explanation.
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
    /// The worker's runtimes cannot run this model (wire version 3).
    ModelUnsupported {
        /// Why, as the runtime said it (the operator and node it lacks, for example).
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
}

impl DeclineReason {
    /// A short category used to aggregate reasons across peers ("3 on battery, 1 queue full").
    pub fn category(&self) -> &'static str {
        match self {
            Self::Gate { reason } => reason.category(),
            Self::QueueFull { .. } => "queue full",
            Self::PriceTooLow { .. } => "price too low",
            Self::ModelTooLarge { .. } => "model too large",
            Self::InputTooLarge { .. } => "input too large",
            Self::DeadlineTooSoon { .. } => "deadline too soon",
            Self::NotBidFor => "not bid for",
            Self::Credit { .. } => "credit",
            Self::Other { .. } => "other",
            Self::ModelUnsupported { .. } => "model unsupported",
        }
    }
}

impl fmt::Display for DeclineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gate { reason } => write!(f, "{reason}"),
            Self::QueueFull { queued, slots } => write!(f, "queue full ({queued}/{slots})"),
            Self::PriceTooLow { min_price_stroops } => {
                write!(f, "price too low (asks {min_price_stroops} stroops)")
            }
            Self::ModelTooLarge { bytes, limit } => {
                write!(f, "model too large ({bytes} bytes, limit {limit})")
            }
            Self::InputTooLarge { elements, limit } => {
                write!(f, "input too large ({elements} elements, limit {limit})")
            }
            Self::DeadlineTooSoon { needs_ms } => {
                write!(f, "deadline too soon (needs {needs_ms} ms)")
            }
            Self::NotBidFor => write!(f, "award does not match a bid"),
            Self::Credit {
                owed_stroops,
                oldest_unpaid_secs,
                limit,
            } => write!(
                f,
                "credit: {owed_stroops} stroops unpaid, oldest {oldest_unpaid_secs} s ({limit}); pay to restore service"
            ),
            Self::Other { message } => write!(f, "{message}"),
            Self::ModelUnsupported { message } => write!(f, "cannot run the model: {message}"),
        }
    }
}

/// A worker's signed refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decline {
    /// The task.
    pub task_id: TaskId,
    /// Who declines; must equal the signer.
    pub worker: NodeId,
    /// Why.
    pub reason: DeclineReason,
}

impl Signable for Decline {
    const DOMAIN: &'static str = "crank/3/decline";
}

/// The requester's award of a task to one bidder, carrying the inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Award {
    /// The task.
    pub task_id: TaskId,
    /// Who awards; must equal the signer.
    pub requester: NodeId,
    /// The winner.
    pub worker: NodeId,
    /// The price the requester will pay, stroops (never below the worker's bid).
    pub price_stroops: u64,
    /// The model.
    pub model: ModelId,
    /// Its size in bytes.
    pub model_bytes: u64,
    /// The inputs; their hash must equal `input_hash`.
    #[serde(deserialize_with = "bounded::seq::<{ MAX_TENSORS }, _, _>")]
    pub inputs: Vec<NamedTensor>,
    /// Hash of the inputs, as in the call for bids.
    pub input_hash: ContentHash,
    /// The nonce of the call for bids: the worker re-derives the task id from it.
    pub nonce: [u8; 16],
    /// The Stellar account (`G…`) the requester will pay from; the receipt repeats it.
    #[serde(deserialize_with = "bounded::text")]
    pub payer: String,
    /// The task must finish by this time.
    pub deadline: UnixMillis,
}

impl Signable for Award {
    const DOMAIN: &'static str = "crank/2/award";
}

/// Requests part of a model's bytes from a peer that holds it.
///
/// Holders serve a model only to the worker a requester awarded a task on it, so a node's
/// store is no free host for strangers: the fetch carries that award, and any holder checks
/// it (signature, model, winner = the asking peer, not long expired). Models the holder's
/// owner marked public need none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchModel {
    /// The model.
    pub model: ModelId,
    /// First byte wanted.
    pub offset: u64,
    /// Most bytes wanted.
    pub max_len: u32,
    /// The requester-signed award of a task on `model` to the asking worker (None only for
    /// models their holder serves to anyone).
    pub award: Option<Signed<Award>>,
}

/// Part of a model's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChunk {
    /// The model.
    pub model: ModelId,
    /// Size of the whole model.
    pub total_len: u64,
    /// Offset of this chunk.
    pub offset: u64,
    /// The bytes.
    #[serde(deserialize_with = "bounded::seq::<{ MAX_ELEMENTS }, _, _>")]
    pub bytes: Vec<u8>,
}

/// How a receipt's energy figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyMethod {
    /// RAPL counters, attributed by the task's share of CPU time.
    Rapl,
    /// CPU time × a per-core power figure.
    CpuTimeEstimate,
    /// GPU energy counters (NVML).
    GpuCounter,
}

impl fmt::Display for EnergyMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rapl => "measured (RAPL)",
            Self::CpuTimeEstimate => "estimated (CPU time)",
            Self::GpuCounter => "measured (GPU counter)",
        })
    }
}

/// Energy spent on one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Energy {
    /// Microjoules (at least 1).
    pub microjoules: u64,
    /// How it was obtained.
    pub method: EnergyMethod,
}

/// When things happened on the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Award accepted.
    pub accepted_at: UnixMillis,
    /// Inference started.
    pub started_at: UnixMillis,
    /// Inference finished.
    pub finished_at: UnixMillis,
    /// Pure inference time, microseconds.
    pub run_micros: u64,
}

/// The worker's signed statement that it did a task, counter-signed by the requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkReceipt {
    /// The task.
    pub task_id: TaskId,
    /// Who asked (and pays).
    pub requester: NodeId,
    /// Who did the work; must equal the signer.
    pub worker: NodeId,
    /// The model run.
    pub model: ModelId,
    /// Hash of the inputs.
    pub input_hash: ContentHash,
    /// Hash of the outputs.
    pub output_hash: ContentHash,
    /// Price owed, stroops.
    pub price_stroops: u64,
    /// Energy spent.
    pub energy: Energy,
    /// Path used.
    pub path: ExecPath,
    /// Timings.
    pub timings: Timings,
    /// This receipt's position among the receipts between this pair, from 1.
    pub pair_seq: u64,
    /// Total owed by this requester to this worker, this receipt included, stroops.
    pub cumulative_stroops: u64,
    /// Stellar account to pay.
    #[serde(deserialize_with = "bounded::text")]
    pub payout: String,
    /// Stellar account the requester pays from (from the award): only a payment from it
    /// counts for this receipt.
    #[serde(deserialize_with = "bounded::text")]
    pub payer: String,
}

impl Signable for WorkReceipt {
    const DOMAIN: &'static str = "crank/2/receipt";
}

/// A receipt signed by the worker and counter-signed by the requester.
pub type Receipt = CounterSigned<WorkReceipt>;

/// The worker's signed receipt, sent before the outputs: its output hash commits to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Signed by the worker; its output hash commits to the outputs it will deliver.
    pub receipt: Signed<WorkReceipt>,
}

/// A task's outputs, signed by the worker and sent once the requester counter-signed the
/// receipt. Signed, so that outputs that do not match the receipt's hash are proof against
/// the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutputs {
    /// The task.
    pub task_id: TaskId,
    /// Who ran it; must equal the signer.
    pub worker: NodeId,
    /// Who asked.
    pub requester: NodeId,
    /// The outputs.
    #[serde(deserialize_with = "bounded::seq::<{ MAX_TENSORS }, _, _>")]
    pub outputs: Vec<NamedTensor>,
}

impl Signable for TaskOutputs {
    const DOMAIN: &'static str = "crank/2/outputs";
}

/// Why a requester refuses to pay a counter-signed receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeReason {
    /// The worker delivered outputs whose hash is not the one its receipt committed to; the
    /// signed outputs are the evidence (with the signed receipt, both by the worker).
    OutputMismatch {
        /// The outputs as the worker signed them.
        outputs: Box<Signed<TaskOutputs>>,
    },
    /// The worker took the counter-signature and never delivered the outputs.
    NotDelivered {
        /// When the requester stopped waiting.
        gave_up_at: UnixMillis,
    },
    /// The outputs failed a check of the requester's (shape, type, replication).
    CheckFailed {
        /// What failed.
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
    /// The outputs match the receipt's hash but not the model: a declared output missing or
    /// extra, the wrong element type or shape, a value the type cannot hold, NaN or infinity
    /// where the submitter did not allow them. The signed outputs are the evidence: anyone
    /// holding the model can repeat the check. Added in wire version 3.
    InvalidOutputs {
        /// The outputs as the worker signed them.
        outputs: Box<Signed<TaskOutputs>>,
        /// What does not fit, naming the output.
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
}

impl fmt::Display for DisputeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutputMismatch { .. } => {
                write!(f, "outputs do not match the hash the receipt committed to")
            }
            Self::NotDelivered { .. } => write!(f, "outputs never delivered"),
            Self::CheckFailed { message } => write!(f, "check failed: {message}"),
            Self::InvalidOutputs { message, .. } => {
                write!(f, "outputs do not fit the model: {message}")
            }
        }
    }
}

/// A requester's signed statement that it will not pay a receipt, with its evidence. It
/// keeps the receipt out of settlement; the worker receives a copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispute {
    /// The receipt disputed, as the worker signed it.
    pub receipt: Signed<WorkReceipt>,
    /// Who disputes; must equal the signer and the receipt's requester.
    pub requester: NodeId,
    /// Why.
    pub reason: DisputeReason,
    /// When.
    pub at: UnixMillis,
}

impl Signable for Dispute {
    const DOMAIN: &'static str = "crank/2/dispute";
}

/// Why an awarded task did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The power gate closed while the task ran.
    Aborted {
        /// Why the gate closed.
        reason: GateReason,
    },
    /// The model could not be obtained or did not match its hash.
    ModelUnavailable {
        /// Details.
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
    /// The model is not valid ONNX or uses an unsupported operator.
    ModelInvalid {
        /// Details.
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
    /// The inputs do not fit the model.
    InputInvalid {
        /// Details.
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
    /// Inference failed.
    Inference {
        /// Details.
        #[serde(deserialize_with = "bounded::text")]
        message: String,
    },
    /// The run exceeded the worker's time limit or the task deadline.
    TimedOut {
        /// The limit, milliseconds.
        limit_ms: u64,
    },
    /// The worker is shutting down.
    ShuttingDown,
}

impl FailureReason {
    /// Whether another worker could succeed (so the requester should re-award).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Aborted { .. }
                | Self::TimedOut { .. }
                | Self::ShuttingDown
                | Self::ModelUnavailable { .. }
        )
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Aborted { reason } => write!(f, "aborted: {reason}"),
            Self::ModelUnavailable { message } => write!(f, "model unavailable: {message}"),
            Self::ModelInvalid { message } => write!(f, "model invalid: {message}"),
            Self::InputInvalid { message } => write!(f, "input invalid: {message}"),
            Self::Inference { message } => write!(f, "inference failed: {message}"),
            Self::TimedOut { limit_ms } => write!(f, "timed out after {limit_ms} ms"),
            Self::ShuttingDown => write!(f, "worker shutting down"),
        }
    }
}

/// A worker's signed report that an awarded task failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The task.
    pub task_id: TaskId,
    /// The requester.
    pub requester: NodeId,
    /// Who failed; must equal the signer.
    pub worker: NodeId,
    /// Why.
    pub reason: FailureReason,
}

impl Signable for TaskFailure {
    const DOMAIN: &'static str = "crank/1/failure";
}

/// The requester withdraws an award (it re-awarded or gave up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The task.
    pub task_id: TaskId,
    /// Who cancels; must equal the signer.
    pub requester: NodeId,
    /// The worker the award went to.
    pub worker: NodeId,
}

impl Signable for Cancel {
    const DOMAIN: &'static str = "crank/1/cancel";
}

/// One receipt a settlement transaction paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidReceipt {
    /// The Stellar account paid (`G…`).
    #[serde(deserialize_with = "bounded::text")]
    pub payout: String,
    /// The receipt's task.
    pub task_id: TaskId,
    /// The receipt's worker.
    pub worker: NodeId,
    /// The receipt's price, stroops.
    pub amount_stroops: u64,
}

/// Payer → worker: a Stellar transaction paid these receipts.
///
/// Signed by the payer's node key, so nobody else can announce payments for its receipts,
/// and the signature binds the paying account. The worker still believes the ledger, not
/// the payer: it looks the transaction up on Horizon, checks that its memo commits to
/// exactly this list, and credits each of its own receipts by what the payer's account
/// actually paid it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementNotice {
    /// The paying node; must equal the signer.
    pub payer_node: NodeId,
    /// The Stellar account that paid (the transaction's source).
    #[serde(deserialize_with = "bounded::text")]
    pub payer_account: String,
    /// The transaction's hash.
    pub tx_hash: [u8; 32],
    /// Every receipt the transaction pays (the memo commits to all of them, not only the
    /// receiver's).
    #[serde(deserialize_with = "bounded::seq::<{ MAX_PAID_RECEIPTS }, _, _>")]
    pub receipts: Vec<PaidReceipt>,
}

impl Signable for SettlementNotice {
    const DOMAIN: &'static str = "crank/2/settlement-notice";
}

/// A request frame of the task protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Requester → worker: will you bid?
    CallForBids(Signed<CallForBids>),
    /// Requester → worker: you won; here are the inputs.
    Award(Signed<Award>),
    /// Worker → holder: send me part of a model.
    FetchModel(FetchModel),
    /// Worker → requester: the signed receipt, committing to the outputs' hash.
    Result(TaskResult),
    /// Worker → requester: the outputs, after the receipt was counter-signed.
    Outputs(Box<Signed<TaskOutputs>>),
    /// Requester → worker: this receipt will not be paid, and why.
    Dispute(Box<Signed<Dispute>>),
    /// Worker → requester: the task failed.
    Failure(Signed<TaskFailure>),
    /// Requester → worker: stop working on this task.
    Cancel(Signed<Cancel>),
    /// Any → any: send me your current advert (so a newly connected peer need not wait for
    /// the next gossip round).
    GetAdvert,
    /// Payer → worker: a settlement paid your receipts; here is what it paid.
    Settlement(Signed<SettlementNotice>),
    /// Worker → payer: send me the notice of this transaction (a worker that found a payment
    /// on the ledger before, or without, hearing of it).
    GetSettlement {
        /// The transaction's hash.
        tx_hash: [u8; 32],
    },
    /// Worker → requester: send me the counter-signed receipt for this task (a worker that
    /// crashed after sending its result, before storing the answer, asks on restart).
    GetReceipt {
        /// The task.
        task_id: TaskId,
    },
}

impl Request {
    /// The message kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CallForBids(_) => "call_for_bids",
            Self::Award(_) => "award",
            Self::FetchModel(_) => "fetch_model",
            Self::Result(_) => "result",
            Self::Outputs(_) => "outputs",
            Self::Dispute(_) => "dispute",
            Self::Failure(_) => "failure",
            Self::Cancel(_) => "cancel",
            Self::GetAdvert => "get_advert",
            Self::Settlement(_) => "settlement",
            Self::GetSettlement { .. } => "get_settlement",
            Self::GetReceipt { .. } => "get_receipt",
        }
    }
}

/// Why a request was refused at the protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame did not decode.
    Malformed,
    /// A signature did not verify.
    BadSignature,
    /// The message decoded but failed validation.
    Invalid,
    /// The referenced task or model is unknown here.
    NotFound,
    /// The sender is not a party to this task.
    NotAuthorized,
    /// The node is overloaded; try later.
    Busy,
    /// The node failed internally.
    Internal,
}

/// A protocol-level error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Category.
    pub code: ErrorCode,
    /// Explanation for the peer's logs.
    #[serde(deserialize_with = "bounded::text")]
    pub message: String,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// A response frame of the task protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// To [`Request::CallForBids`].
    Bid(Signed<Bid>),
    /// To [`Request::CallForBids`] or [`Request::Award`].
    Decline(Signed<Decline>),
    /// To [`Request::Award`]: the task is queued.
    Accepted {
        /// The task.
        task_id: TaskId,
    },
    /// To [`Request::FetchModel`].
    ModelChunk(ModelChunk),
    /// To [`Request::Result`] and [`Request::GetReceipt`]: the receipt, counter-signed.
    Receipt(Box<Receipt>),
    /// To [`Request::GetReceipt`] for a receipt made before the current wire version.
    LegacyReceipt(Box<crate::legacy::ReceiptV1>),
    /// To [`Request::GetSettlement`].
    Settlement(Box<Signed<SettlementNotice>>),
    /// To [`Request::Outputs`]: the outputs did not match; here is the signed dispute.
    Disputed(Box<Signed<Dispute>>),
    /// To [`Request::Failure`], [`Request::Cancel`], [`Request::Outputs`] (the outputs
    /// matched) and [`Request::Dispute`].
    Ack {
        /// The task.
        task_id: TaskId,
    },
    /// To [`Request::GetAdvert`].
    Advert(Box<Signed<CapabilityAdvert>>),
    /// To [`Request::Settlement`]: the payment checked out against the ledger.
    PaymentRecorded {
        /// Receipts newly recorded as paid (0 when they already were).
        receipts: u32,
    },
    /// The request was refused.
    Error(WireError),
}

impl Response {
    /// The message kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bid(_) => "bid",
            Self::Decline(_) => "decline",
            Self::Accepted { .. } => "accepted",
            Self::ModelChunk(_) => "model_chunk",
            Self::Receipt(_) => "receipt",
            Self::LegacyReceipt(_) => "legacy_receipt",
            Self::Settlement(_) => "settlement",
            Self::Disputed(_) => "disputed",
            Self::Ack { .. } => "ack",
            Self::Advert(_) => "advert",
            Self::PaymentRecorded { .. } => "payment_recorded",
            Self::Error(_) => "error",
        }
    }

    /// An error answer.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error(WireError {
            code,
            message: message.into(),
        })
    }
}
