//! `crank-sim mesh`: many real crank-node nodes in one process, over loopback TCP.
//!
//! `cargo run -p crank-sim -- mesh --small` (12 workers, 60 tasks) or without
//! `--small` for the full preset (100 workers, 200 tasks).
//!
//! Every node is the node's own runtime ([`crank_node::Node::start`]): its libp2p swarm,
//! gossip of signed adverts, the real auction on the requester side, the tract engine on
//! the worker side and the receipt ledger on both. Nothing is simulated but the owners:
//! nodes run under the `always` policy (this machine is on mains power) and their benchmark is
//! cut short. At full scale a hundred nodes share two cores, so a worker answers a call for
//! bids in seconds rather than milliseconds; requesters then collect bids for 3 s instead of
//! the node's default 0.5 s, as they would over a slow network.
//!
//! A run has four phases:
//!
//! 1. **Start**: a bootstrap node, `workers` worker nodes (started `start_batch` at a time)
//!    and `requesters` requester-only nodes, until every requester holds an advert of every
//!    worker.
//! 2. **Advert propagation**: `probes` times, a worker pauses (its gate closes, so it
//!    re-publishes its advert) and later resumes; the time until every other node holds the
//!    changed advert is one sample (two per probe). Observers are polled through
//!    [`crank_node::NodeHandle::status`] every [`POLL`], so figures are rounded up to that.
//! 3. **Workload under churn**: `tasks` real tasks (the digits MLP on the repository's digit
//!    samples) submitted by the requesters, `concurrency` in flight, while every
//!    `churn_every_ms` one worker leaves (shut down, in-flight work included) and a new
//!    worker (new key) joins. The time until every requester holds the newcomer's advert is
//!    recorded.
//! 4. **Checks**, which fail the run ([`MeshReport::passed`]): every task ends with a result
//!    or an error within its deadline (no task lost); every result's receipt is signed by
//!    the worker and counter-signed by the requester; each worker still in the mesh holds the
//!    counter-signed receipt of each task it ran, and every receipt it stores verifies; every
//!    prediction is the digit the sample shows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_node::config::Config;
use crank_node::network::{KadMode, Role};
use crank_node::{ModelSource, Node, NodeHandle, SubmitError, SubmitRequest, tensor_io};
use crank_protocol::{NamedTensor, NodeId, Receipt, RunPolicy, TaskId};
use futures::StreamExt;
use indicatif::ProgressBar;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How often observers are polled for an advert.
pub const POLL: Duration = Duration::from_millis(100);

/// Everything a mesh run depends on; `small()` and `full()` are the presets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshConfig {
    /// Preset name, for the report.
    pub name: String,
    /// Seed of the churn and task choices (the network's timing is real, so runs differ).
    pub seed: u64,
    /// Worker nodes at the start (the population stays this size under churn).
    pub workers: usize,
    /// Requester-only nodes that submit the tasks.
    pub requesters: usize,
    /// Tasks in all.
    pub tasks: usize,
    /// Tasks in flight at once, over all requesters.
    pub concurrency: usize,
    /// Advert propagation probes (each gives two samples: pause and resume).
    pub probes: usize,
    /// One worker leaves and a new one joins this often, ms (0: no churn).
    pub churn_every_ms: u64,
    /// Nodes' periodic advert interval, seconds (the node's default is 30).
    pub advert_interval_secs: u64,
    /// Nodes' self-benchmark length, ms (the node's default is 500).
    pub benchmark_ms: u64,
    /// How long requesters collect bids, ms (the node's default is 500). With a hundred nodes
    /// sharing two cores a worker answers in seconds, as over a slow network.
    pub bid_window_ms: u64,
    /// Nodes started at once.
    pub start_batch: usize,
    /// Time allowed for every requester to learn every worker, ms.
    pub ready_timeout_ms: u64,
    /// Time allowed for one advert change to reach every node, ms.
    pub probe_timeout_ms: u64,
    /// A task with neither result nor error after this long is lost, ms.
    pub task_timeout_ms: u64,
    /// Tokio worker threads (0: one per core).
    pub threads: usize,
}

impl MeshConfig {
    /// 12 workers, 2 requesters, 60 tasks, churn every 0.4 s: well under a minute, for CI.
    pub fn small() -> Self {
        Self {
            name: "small".into(),
            seed: 1,
            workers: 12,
            requesters: 2,
            tasks: 60,
            concurrency: 4,
            probes: 3,
            // Short enough that a workload of a few seconds always sees several leaves and joins.
            churn_every_ms: 400,
            advert_interval_secs: 5,
            benchmark_ms: 20,
            bid_window_ms: 500,
            start_batch: 6,
            ready_timeout_ms: 60_000,
            probe_timeout_ms: 20_000,
            task_timeout_ms: 120_000,
            threads: 0,
        }
    }

    /// 100 workers, 4 requesters, 200 tasks, churn every second: about four minutes.
    pub fn full() -> Self {
        Self {
            name: "full".into(),
            workers: 100,
            requesters: 4,
            tasks: 200,
            concurrency: 8,
            probes: 10,
            churn_every_ms: 1_000,
            advert_interval_secs: 10,
            bid_window_ms: 3_000,
            start_batch: 10,
            ready_timeout_ms: 180_000,
            probe_timeout_ms: 30_000,
            ..Self::small()
        }
    }

    /// Checks the settings a run cannot work with.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |m: &str| Err(MeshError::Config(m.into()));
        if self.workers < 2 {
            return bad("at least 2 workers");
        }
        if self.requesters == 0 {
            return bad("at least 1 requester");
        }
        if self.concurrency == 0 || self.start_batch == 0 {
            return bad("concurrency and start batch must be at least 1");
        }
        if self.bid_window_ms == 0 {
            return bad("the bid window must be at least 1 ms");
        }
        if self.advert_interval_secs == 0 {
            return bad("the advert interval must be at least 1 s");
        }
        if self.task_timeout_ms < 1_000 || self.probe_timeout_ms == 0 {
            return bad("timeouts too short");
        }
        Ok(())
    }
}

/// Why a mesh run could not be done (as opposed to a run whose checks failed).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The configuration is unusable.
    #[error("invalid mesh configuration: {0}")]
    Config(String),
    /// A file (model, sample, data dir) could not be read or made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A node did not start.
    #[error("node {index} did not start: {message}")]
    Start {
        /// Which node (0 is the bootstrap).
        index: usize,
        /// Why.
        message: String,
    },
    /// The reference inputs could not be prepared.
    #[error("sample {path}: {message}")]
    Sample {
        /// The sample file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A broken invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeshViolationKind {
    /// A task ended with neither a result nor an error.
    LostTask,
    /// A receipt lacks a valid worker signature or requester counter-signature.
    ReceiptNotCounterSigned,
    /// A worker still in the mesh never got the counter-signed receipt of a task it ran.
    ReceiptMissingAtWorker,
    /// A result is not the digit the sample shows.
    WrongResult,
}

impl std::fmt::Display for MeshViolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LostTask => "task lost without an error",
            Self::ReceiptNotCounterSigned => "receipt without a valid counter-signature",
            Self::ReceiptMissingAtWorker => "worker lacks the counter-signed receipt",
            Self::WrongResult => "wrong prediction",
        })
    }
}

/// One broken invariant, with what was seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshViolation {
    /// Which invariant.
    pub kind: MeshViolationKind,
    /// What happened.
    pub detail: String,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshTaskRow {
    /// Index of the task.
    pub task: usize,
    /// Which requester submitted it.
    pub requester: usize,
    /// The digit of the sample.
    pub digit: u8,
    /// `completed`, `failed` or `lost`.
    pub outcome: String,
    /// The error, for a failed task.
    pub error: Option<String>,
    /// The worker that ran it (short id).
    pub worker: Option<String>,
    /// Submit to result, ms.
    pub latency_ms: Option<f64>,
    /// Auction start to the first award, ms.
    pub auction_ms: Option<u64>,
    /// Awards made (more than one: re-awarded).
    pub awards: usize,
    /// Price paid, stroops.
    pub price_stroops: Option<u64>,
    /// The predicted digit.
    pub predicted: Option<i64>,
    /// Seconds since the workload started, at submission.
    pub submitted_s: f64,
    /// What the task's spot check found (`not_sampled`, `agreed`, …; None: checks off).
    #[serde(default)]
    pub check: Option<String>,
    /// Extra runs the spot check made (replica, third).
    #[serde(default)]
    pub check_runs: usize,
    /// Time the spot check added, ms.
    #[serde(default)]
    pub check_ms: Option<f64>,
}

/// One advert change and when it reached the other nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    /// `pause`, `resume` (every node observes) or `join` (the requesters observe).
    pub change: String,
    /// The node whose advert changed (short id).
    pub node: String,
    /// Observers.
    pub observers: usize,
    /// Observers that saw the change in time.
    pub reached: usize,
    /// Time until half the observers had it, ms.
    pub half_ms: Option<u64>,
    /// Time until every observer had it, ms (None: some never did).
    pub all_ms: Option<u64>,
}

/// One churn event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnRow {
    /// Seconds since the workload started.
    pub at_s: f64,
    /// `leave` or `join`.
    pub kind: String,
    /// The node (short id).
    pub node: String,
    /// Tasks it was running or holding when it left.
    pub running: usize,
}

/// The figures of a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MeshSummary {
    /// Nodes started (bootstrap, workers, requesters, newcomers).
    pub nodes_started: usize,
    /// Most nodes running at once.
    pub peak_nodes: usize,
    /// Seconds to start the initial nodes.
    pub start_s: f64,
    /// Seconds from start until every requester held every worker's advert.
    pub ready_s: f64,
    /// Whether that happened within the timeout.
    pub ready: bool,
    /// Advert changes reaching every node: median, ms.
    pub propagation_p50_ms: Option<u64>,
    /// Advert changes reaching every node: 95th percentile, ms.
    pub propagation_p95_ms: Option<u64>,
    /// Advert changes reaching half the nodes: median, ms.
    pub propagation_half_p50_ms: Option<u64>,
    /// Changes that never reached every node within the timeout.
    pub propagation_incomplete: usize,
    /// Newcomers' adverts reaching every requester: median, ms.
    pub join_p50_ms: Option<u64>,
    /// Newcomers' adverts reaching every requester: 95th percentile, ms.
    pub join_p95_ms: Option<u64>,
    /// Tasks.
    pub tasks: usize,
    /// Tasks with a verified result.
    pub completed: usize,
    /// Tasks that ended with an error.
    pub failed: usize,
    /// Tasks with neither (a violation).
    pub lost: usize,
    /// Completed over all tasks.
    pub completion_rate: f64,
    /// Submit to result: median, ms.
    pub latency_p50_ms: Option<f64>,
    /// Submit to result: 95th percentile, ms.
    pub latency_p95_ms: Option<f64>,
    /// Auction start to first award: median, ms.
    pub auction_p50_ms: Option<u64>,
    /// Auction start to first award: 95th percentile, ms.
    pub auction_p95_ms: Option<u64>,
    /// Tasks awarded more than once.
    pub reawarded: usize,
    /// Workers that left.
    pub leaves: usize,
    /// Workers that joined during the workload.
    pub joins: usize,
    /// Seconds the workload took.
    pub workload_s: f64,
    /// Receipts checked at workers.
    pub worker_receipts_checked: usize,
    /// Receipts of completed tasks whose worker was still in the mesh at the end (each must
    /// be among those checked); churn can leave none.
    #[serde(default)]
    pub worker_receipts_expected: usize,
    /// Failures by error kind.
    pub failures: Vec<(String, usize)>,
    /// Completed tasks a spot check ran a replica for.
    #[serde(default)]
    pub checked: usize,
    /// Extra runs spent on spot checks, over completed tasks' first runs.
    #[serde(default)]
    pub check_overhead: f64,
    /// Time a spot check added to a checked task: median, ms.
    #[serde(default)]
    pub check_p50_ms: Option<f64>,
    /// Checks whose answers disagreed (outvoted or unresolved).
    #[serde(default)]
    pub check_disagreements: usize,
}

/// Everything a mesh run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshReport {
    /// The configuration.
    pub config: MeshConfig,
    /// The figures.
    pub summary: MeshSummary,
    /// Every task.
    pub tasks: Vec<MeshTaskRow>,
    /// Every advert change measured.
    pub probes: Vec<ProbeRow>,
    /// Every churn event.
    pub churn: Vec<ChurnRow>,
    /// Broken invariants.
    pub violations: Vec<MeshViolation>,
}

impl MeshReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The repository root (models live in `models/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A digit sample for the MLP.
#[derive(Debug, Clone)]
struct Sample {
    digit: u8,
    inputs: Vec<NamedTensor>,
}

fn load_samples(root: &Path) -> Result<Vec<Sample>, MeshError> {
    (0..10u8)
        .map(|digit| {
            let path = root.join(format!("models/samples/digit-{digit}.json"));
            let text = std::fs::read_to_string(&path).map_err(|source| MeshError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            let inputs = tensor_io::parse_inputs(&text, &["X".to_string()]).map_err(|e| {
                MeshError::Sample {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            Ok(Sample { digit, inputs })
        })
        .collect()
}

/// A node's config for the mesh: loopback, no API, no settlement, short timers.
fn node_config(cfg: &MeshConfig, dir: &Path, bootstrap: Option<&str>, worker: bool) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.network.bootstrap = bootstrap.map(|b| vec![b.to_string()]).unwrap_or_default();
    c.network.kad_mode = KadMode::Server;
    c.api.enabled = false;
    c.advert.interval_secs = cfg.advert_interval_secs;
    c.device.run_when = RunPolicy::Always;
    c.device.sample_interval_ms = 250;
    c.worker.enabled = worker;
    c.worker.benchmark_ms = cfg.benchmark_ms;
    // One run at a time per node: a hundred nodes share two cores.
    c.engine.workers = 1;
    c.settlement.auto = false;
    c.requester.max_price_stroops = 1_000_000;
    c.requester.bid_window_ms = cfg.bid_window_ms;
    // A loaded machine: give results more slack than the default before re-awarding.
    c.requester.auction.result_grace_ms = 15_000;
    c
}

fn quantile<T: Copy + PartialOrd>(v: &mut [T], q: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v.get(i.min(v.len() - 1)).copied()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Waits until every observer holds an advert of `target` that satisfies `seen`; returns
/// per-observer arrival times (None: not within `timeout`).
async fn watch_advert(
    observers: &[NodeHandle],
    target: NodeId,
    seen: impl Fn(bool) -> bool,
    timeout: Duration,
) -> Vec<Option<Duration>> {
    let started = Instant::now();
    let mut arrived: Vec<Option<Duration>> = vec![None; observers.len()];
    while started.elapsed() < timeout {
        let pending: Vec<usize> = (0..observers.len())
            .filter(|&i| arrived[i].is_none())
            .collect();
        if pending.is_empty() {
            break;
        }
        // A direct look at each observer's advert table: cheap, so the polling of a hundred
        // observers does not load the nodes it measures.
        let checks: Vec<bool> = pending
            .iter()
            .map(|&i| {
                observers[i]
                    .advert_of(&target)
                    .is_some_and(|a| seen(a.gate.open))
            })
            .collect();
        let now = started.elapsed();
        for (&i, ok) in pending.iter().zip(checks) {
            if ok {
                arrived[i] = Some(now);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    arrived
}

fn probe_row(change: &str, node: NodeId, arrived: &[Option<Duration>]) -> ProbeRow {
    let mut times: Vec<u64> = arrived.iter().flatten().map(|d| ms(*d)).collect();
    let reached = times.len();
    let all = (reached == arrived.len()).then(|| times.iter().copied().max().unwrap_or(0));
    times.sort_unstable();
    let half = times
        .get(arrived.len().div_ceil(2).saturating_sub(1))
        .copied();
    ProbeRow {
        change: change.into(),
        node: node.short(),
        observers: arrived.len(),
        reached,
        half_ms: half,
        all_ms: all,
    }
}

/// A worker slot: its node while it is in the mesh.
struct Worker {
    node: Option<Node>,
    handle: NodeHandle,
}

/// Outcome of one task, with what the checks need.
struct TaskResult {
    row: MeshTaskRow,
    receipt: Option<(NodeId, Receipt)>,
    violations: Vec<MeshViolation>,
}

fn error_kind(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::Model(_) => "model",
        SubmitError::Input(_) => "input",
        SubmitError::NoCandidates { .. } => "no candidates",
        SubmitError::Failed { .. } => "auction failed",
        SubmitError::Spec(_) => "terms rejected",
        SubmitError::Placement { .. } => "placement policy",
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_task(
    task: usize,
    requester: usize,
    handle: NodeHandle,
    model: crank_protocol::ModelId,
    sample: Sample,
    timeout: Duration,
    epoch: Instant,
) -> TaskResult {
    let submitted_s = epoch.elapsed().as_secs_f64();
    let mut row = MeshTaskRow {
        task,
        requester,
        digit: sample.digit,
        outcome: "lost".into(),
        error: None,
        worker: None,
        latency_ms: None,
        auction_ms: None,
        awards: 0,
        price_stroops: None,
        predicted: None,
        submitted_s,
        check: None,
        check_runs: 0,
        check_ms: None,
    };
    let mut violations = Vec::new();
    let request = SubmitRequest::new(ModelSource::Id(model), sample.inputs);
    let me = handle.node_id();
    let result = tokio::time::timeout(timeout, handle.submit(request)).await;
    let mut receipt = None;
    match result {
        Err(_) => violations.push(MeshViolation {
            kind: MeshViolationKind::LostTask,
            detail: format!(
                "task {task}: neither a result nor an error after {} ms",
                ms(timeout)
            ),
        }),
        Ok(Err(e)) => {
            row.outcome = "failed".into();
            row.error = Some(format!("{}: {e}", error_kind(&e)));
            if let SubmitError::Failed { trace, .. } = &e {
                row.awards = trace.awards.len();
            }
        }
        Ok(Ok(o)) => {
            row.outcome = "completed".into();
            row.worker = Some(o.worker.short());
            row.latency_ms = Some(o.elapsed_ms);
            row.price_stroops = Some(o.price_stroops);
            row.awards = o.trace.awards.len();
            if let Some(c) = &o.check {
                row.check = serde_json::to_value(c.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string));
                row.check_runs = c.runs.len();
                row.check_ms = (!c.runs.is_empty()).then_some(c.extra_ms);
            }
            row.auction_ms = o
                .trace
                .awards
                .first()
                .map(|a| a.at.saturating_sub(o.trace.started_at));
            match o.receipt.verify() {
                Ok(body)
                    if body.requester == me
                        && o.receipt.countersigner == me
                        && body.worker == o.worker
                        && o.receipt.inner.signer == o.worker
                        && body.task_id == o.task_id => {}
                Ok(_) => violations.push(MeshViolation {
                    kind: MeshViolationKind::ReceiptNotCounterSigned,
                    detail: format!("task {task}: receipt names the wrong parties"),
                }),
                Err(e) => violations.push(MeshViolation {
                    kind: MeshViolationKind::ReceiptNotCounterSigned,
                    detail: format!("task {task}: receipt does not verify: {e}"),
                }),
            }
            let predicted =
                tensor_io::predictions(&o.outputs).and_then(|p| p.first().map(|p| p.class));
            row.predicted = predicted;
            if predicted != Some(i64::from(sample.digit)) {
                violations.push(MeshViolation {
                    kind: MeshViolationKind::WrongResult,
                    detail: format!(
                        "task {task}: digit {} predicted as {predicted:?}",
                        sample.digit
                    ),
                });
            }
            receipt = Some((o.worker, o.receipt));
        }
    }
    TaskResult {
        row,
        receipt,
        violations,
    }
}

/// Starts one node per config, `batch` at a time; `first_index` numbers them in errors.
async fn start_nodes(
    configs: Vec<Config>,
    first_index: usize,
    batch: usize,
) -> Result<Vec<Node>, MeshError> {
    let mut nodes = Vec::with_capacity(configs.len());
    let mut it = configs.into_iter().enumerate().peekable();
    while it.peek().is_some() {
        let chunk: Vec<(usize, Config)> = it.by_ref().take(batch).collect();
        let started = futures::future::join_all(
            chunk
                .into_iter()
                .map(|(i, c)| async move { (i, Node::start(c, Role::default()).await) }),
        )
        .await;
        for (i, r) in started {
            nodes.push(r.map_err(|e| MeshError::Start {
                index: first_index + i,
                message: e.to_string(),
            })?);
        }
    }
    Ok(nodes)
}

/// Runs the mesh simulation on its own tokio runtime.
pub fn run(cfg: &MeshConfig, progress: &ProgressBar) -> Result<MeshReport, MeshError> {
    cfg.validate()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.threads > 0 {
        builder.worker_threads(cfg.threads);
    }
    let rt = builder
        .enable_all()
        .build()
        .map_err(|source| MeshError::Io {
            what: "starting the tokio runtime".into(),
            source,
        })?;
    let report = rt.block_on(run_async(cfg, progress));
    // Nodes spawn tasks that may outlive their shutdown by a moment; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(2));
    report
}

#[allow(clippy::too_many_lines)]
async fn run_async(cfg: &MeshConfig, progress: &ProgressBar) -> Result<MeshReport, MeshError> {
    let root = repo();
    let model_path = root.join("models/digits-mlp.onnx");
    let model_bytes = std::fs::read(&model_path).map_err(|source| MeshError::Io {
        what: format!("reading {}", model_path.display()),
        source,
    })?;
    let samples = Arc::new(load_samples(&root)?);
    let tmp = tempfile::tempdir().map_err(|source| MeshError::Io {
        what: "making the data directories".into(),
        source,
    })?;
    let dir = |name: String| -> Result<PathBuf, MeshError> {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).map_err(|source| MeshError::Io {
            what: format!("making {}", d.display()),
            source,
        })?;
        Ok(d)
    };
    let mut summary = MeshSummary::default();
    let mut violations = Vec::new();
    let mut rng = Pcg64Mcg::seed_from_u64(cfg.seed);

    // Phase 1: start.
    let t0 = Instant::now();
    let boot = Node::start(
        node_config(cfg, &dir("boot".into())?, None, false),
        Role { bootstrap: true },
    )
    .await
    .map_err(|e| MeshError::Start {
        index: 0,
        message: e.to_string(),
    })?;
    let boot_addr = boot
        .handle()
        .listen_addrs()
        .await
        .into_iter()
        .next()
        .ok_or_else(|| MeshError::Start {
            index: 0,
            message: "no listen address".into(),
        })?;
    let worker_cfgs = (0..cfg.workers)
        .map(|i| {
            Ok(node_config(
                cfg,
                &dir(format!("w{i}"))?,
                Some(&boot_addr),
                true,
            ))
        })
        .collect::<Result<Vec<_>, MeshError>>()?;
    progress.set_message("starting workers");
    let mut workers: Vec<Worker> = start_nodes(worker_cfgs, 1, cfg.start_batch)
        .await?
        .into_iter()
        .map(|n| Worker {
            handle: n.handle(),
            node: Some(n),
        })
        .collect();
    let req_cfgs = (0..cfg.requesters)
        .map(|i| {
            Ok(node_config(
                cfg,
                &dir(format!("r{i}"))?,
                Some(&boot_addr),
                false,
            ))
        })
        .collect::<Result<Vec<_>, MeshError>>()?;
    let requesters = start_nodes(req_cfgs, 1 + cfg.workers, cfg.start_batch).await?;
    let req_handles: Vec<NodeHandle> = requesters.iter().map(Node::handle).collect();
    summary.nodes_started = 1 + cfg.workers + cfg.requesters;
    summary.start_s = t0.elapsed().as_secs_f64();
    info!(
        nodes = summary.nodes_started,
        secs = summary.start_s,
        "mesh started"
    );

    progress.set_message("waiting for adverts");
    let ready_by = Duration::from_millis(cfg.ready_timeout_ms);
    loop {
        let least = req_handles
            .iter()
            .map(NodeHandle::known_adverts)
            .min()
            .unwrap_or(0);
        if least >= cfg.workers {
            summary.ready = true;
            break;
        }
        if t0.elapsed() > ready_by {
            warn!(
                least,
                workers = cfg.workers,
                "not every requester learned every worker in time"
            );
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    summary.ready_s = t0.elapsed().as_secs_f64();
    info!(
        ready = summary.ready,
        secs = summary.ready_s,
        "requesters hold the workers' adverts"
    );

    // Phase 2: advert propagation, every node observing.
    progress.set_message("advert propagation probes");
    let mut probes = Vec::new();
    let probe_timeout = Duration::from_millis(cfg.probe_timeout_ms);
    for _ in 0..cfg.probes {
        let k = rng.random_range(0..workers.len());
        let target = workers[k].handle.clone();
        let observers: Vec<NodeHandle> = workers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .map(|(_, w)| w.handle.clone())
            .chain(req_handles.iter().cloned())
            .collect();
        for (change, paused) in [("pause", true), ("resume", false)] {
            target.set_paused(paused);
            let arrived = watch_advert(
                &observers,
                target.node_id(),
                |open| open != paused,
                probe_timeout,
            )
            .await;
            let row = probe_row(change, target.node_id(), &arrived);
            info!(
                change,
                reached = row.reached,
                observers = row.observers,
                all_ms = row.all_ms,
                "advert probe"
            );
            probes.push(row);
        }
    }

    // Phase 3: workload under churn.
    progress.set_message("tasks");
    progress.set_length(u64::try_from(cfg.tasks).unwrap_or(u64::MAX));
    let mut models = Vec::with_capacity(req_handles.len());
    for h in &req_handles {
        let id = h
            .add_model(&model_bytes)
            .await
            .map_err(|e| MeshError::Sample {
                path: model_path.clone(),
                message: e.to_string(),
            })?;
        models.push(id);
    }
    let epoch = Instant::now();
    let plan: Vec<(usize, usize, usize)> = (0..cfg.tasks)
        .map(|t| (t, t % req_handles.len(), rng.random_range(0..samples.len())))
        .collect();
    let task_timeout = Duration::from_millis(cfg.task_timeout_ms);
    let workload = {
        let req_handles = req_handles.clone();
        let samples = Arc::clone(&samples);
        let progress = progress.clone();
        let concurrency = cfg.concurrency;
        let total = cfg.tasks;
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            futures::stream::iter(plan)
                .map(|(t, r, s)| {
                    let h = req_handles[r].clone();
                    let sample = samples[s].clone();
                    let model = models[r];
                    let progress = progress.clone();
                    let done = Arc::clone(&done);
                    async move {
                        let res = one_task(t, r, h, model, sample, task_timeout, epoch).await;
                        progress.inc(1);
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if n.is_multiple_of(50) || n == total {
                            info!(
                                done = n,
                                total,
                                secs = epoch.elapsed().as_secs_f64(),
                                "tasks"
                            );
                        }
                        res
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<TaskResult>>()
                .await
        })
    };
    let mut churn = Vec::new();
    let mut joins: Vec<tokio::task::JoinHandle<ProbeRow>> = Vec::new();
    let mut peak = summary.nodes_started;
    let mut joined = 0usize;
    let mut workload = workload;
    let results = if cfg.churn_every_ms > 0 {
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.churn_every_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: every run sees at least one leave and one join, however
        // fast its workload.
        loop {
            tokio::select! {
                done = &mut workload => break done,
                _ = tick.tick() => {
                    // One leaves ...
                    let online: Vec<usize> = (0..workers.len())
                        .filter(|&i| workers[i].node.is_some())
                        .collect();
                    if online.len() > 2 {
                        let k = online[rng.random_range(0..online.len())];
                        if let Some(node) = workers[k].node.take() {
                            let running = workers[k].handle.running_tasks();
                            churn.push(ChurnRow {
                                at_s: epoch.elapsed().as_secs_f64(),
                                kind: "leave".into(),
                                node: workers[k].handle.node_id().short(),
                                running,
                            });
                            node.shutdown().await;
                        }
                    }
                    // ... and a new one (new key) joins.
                    let c = node_config(cfg, &dir(format!("j{joined}"))?, Some(&boot_addr), true);
                    joined += 1;
                    match Node::start(c, Role::default()).await {
                        Ok(node) => {
                            let handle = node.handle();
                            churn.push(ChurnRow {
                                at_s: epoch.elapsed().as_secs_f64(),
                                kind: "join".into(),
                                node: handle.node_id().short(),
                                running: 0,
                            });
                            let observers = req_handles.clone();
                            let id = handle.node_id();
                            joins.push(tokio::spawn(async move {
                                let arrived = watch_advert(&observers, id, |_| true, probe_timeout).await;
                                probe_row("join", id, &arrived)
                            }));
                            workers.push(Worker { node: Some(node), handle });
                            summary.nodes_started += 1;
                        }
                        Err(e) => warn!(error = %e, "a joining node did not start"),
                    }
                    let live = 1 + cfg.requesters + workers.iter().filter(|w| w.node.is_some()).count();
                    peak = peak.max(live);
                }
            }
        }
    } else {
        workload.await
    };
    summary.workload_s = epoch.elapsed().as_secs_f64();
    info!(
        secs = summary.workload_s,
        leaves = churn.iter().filter(|c| c.kind == "leave").count(),
        joins = joined,
        "workload done"
    );
    summary.peak_nodes = peak;
    let results = results.map_err(|e| MeshError::Start {
        index: 0,
        message: format!("the workload task stopped: {e}"),
    })?;
    for j in joins {
        if let Ok(row) = j.await {
            probes.push(row);
        }
    }

    // Phase 4: checks at the workers still in the mesh.
    progress.set_message("checking receipts");
    let live: HashMap<NodeId, NodeHandle> = workers
        .iter()
        .filter(|w| w.node.is_some())
        .map(|w| (w.handle.node_id(), w.handle.clone()))
        .collect();
    let mut expected: HashMap<NodeId, Vec<(usize, TaskId)>> = HashMap::new();
    let mut rows = Vec::with_capacity(results.len());
    for r in results {
        violations.extend(r.violations);
        if let Some((worker, receipt)) = &r.receipt
            && live.contains_key(worker)
        {
            expected
                .entry(*worker)
                .or_default()
                .push((r.row.task, receipt.inner.body.task_id));
        }
        rows.push(r.row);
    }
    rows.sort_by_key(|r| r.task);
    let deadline = Instant::now() + Duration::from_secs(15);
    for (worker, handle) in &live {
        let want = expected.get(worker).cloned().unwrap_or_default();
        summary.worker_receipts_expected += want.len();
        let stored = loop {
            let stored = handle.receipts(100_000);
            let all = want
                .iter()
                .all(|(_, id)| stored.iter().any(|s| s.body().task_id == *id));
            if all || Instant::now() > deadline {
                break stored;
            }
            tokio::time::sleep(POLL).await;
        };
        for (task, id) in &want {
            if !stored.iter().any(|s| s.body().task_id == *id) {
                violations.push(MeshViolation {
                    kind: MeshViolationKind::ReceiptMissingAtWorker,
                    detail: format!(
                        "task {task}: worker {} never stored its receipt",
                        worker.short()
                    ),
                });
            }
        }
        for s in &stored {
            summary.worker_receipts_checked += 1;
            // Verifies both signatures, each by the party the receipt names.
            let ok = s
                .proof
                .verify()
                .is_ok_and(|b| b == s.terms && b.worker == *worker);
            if !ok {
                violations.push(MeshViolation {
                    kind: MeshViolationKind::ReceiptNotCounterSigned,
                    detail: format!(
                        "worker {} stores a receipt for task {} that does not verify",
                        worker.short(),
                        s.body().task_id.short()
                    ),
                });
            }
        }
    }

    // Shut everything down.
    progress.set_message("stopping");
    let mut all: Vec<Node> = workers.into_iter().filter_map(|w| w.node).collect();
    all.extend(requesters);
    all.push(boot);
    futures::future::join_all(all.into_iter().map(Node::shutdown)).await;

    // Figures.
    summary.tasks = rows.len();
    summary.completed = rows.iter().filter(|r| r.outcome == "completed").count();
    summary.failed = rows.iter().filter(|r| r.outcome == "failed").count();
    summary.lost = rows.iter().filter(|r| r.outcome == "lost").count();
    #[allow(clippy::cast_precision_loss)]
    let rate = summary.completed as f64 / summary.tasks.max(1) as f64;
    summary.completion_rate = rate;
    let mut lat: Vec<f64> = rows.iter().filter_map(|r| r.latency_ms).collect();
    summary.latency_p50_ms = quantile(&mut lat, 0.5);
    summary.latency_p95_ms = quantile(&mut lat, 0.95);
    let mut auc: Vec<u64> = rows.iter().filter_map(|r| r.auction_ms).collect();
    summary.auction_p50_ms = quantile(&mut auc, 0.5);
    summary.auction_p95_ms = quantile(&mut auc, 0.95);
    summary.reawarded = rows.iter().filter(|r| r.awards > 1).count();
    summary.checked = rows.iter().filter(|r| r.check_runs > 0).count();
    let extra: usize = rows.iter().map(|r| r.check_runs).sum();
    #[allow(clippy::cast_precision_loss)]
    let overhead = extra as f64 / summary.completed.max(1) as f64;
    summary.check_overhead = overhead;
    let mut check_ms: Vec<f64> = rows.iter().filter_map(|r| r.check_ms).collect();
    summary.check_p50_ms = quantile(&mut check_ms, 0.5);
    summary.check_disagreements = rows
        .iter()
        .filter(|r| {
            matches!(
                r.check.as_deref(),
                Some("first_outvoted" | "replica_outvoted" | "unresolved")
            )
        })
        .count();
    let changes: Vec<&ProbeRow> = probes.iter().filter(|p| p.change != "join").collect();
    let mut all_ms: Vec<u64> = changes.iter().filter_map(|p| p.all_ms).collect();
    summary.propagation_p50_ms = quantile(&mut all_ms, 0.5);
    summary.propagation_p95_ms = quantile(&mut all_ms, 0.95);
    let mut half: Vec<u64> = changes.iter().filter_map(|p| p.half_ms).collect();
    summary.propagation_half_p50_ms = quantile(&mut half, 0.5);
    summary.propagation_incomplete = changes.iter().filter(|p| p.all_ms.is_none()).count();
    let mut join_ms: Vec<u64> = probes
        .iter()
        .filter(|p| p.change == "join")
        .filter_map(|p| p.all_ms)
        .collect();
    summary.join_p50_ms = quantile(&mut join_ms, 0.5);
    summary.join_p95_ms = quantile(&mut join_ms, 0.95);
    summary.leaves = churn.iter().filter(|c| c.kind == "leave").count();
    summary.joins = churn.iter().filter(|c| c.kind == "join").count();
    let mut failures: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        if let Some(e) = &r.error {
            let kind = e.split(':').next().unwrap_or("").to_string();
            *failures.entry(kind).or_default() += 1;
        }
    }
    let mut failures: Vec<(String, usize)> = failures.into_iter().collect();
    failures.sort();
    summary.failures = failures;
    progress.finish_and_clear();
    drop(tmp);
    Ok(MeshReport {
        config: cfg.clone(),
        summary,
        tasks: rows,
        probes,
        churn,
        violations,
    })
}
