//! The node runtime: starts every part, routes network events to the worker and requester
//! sides, keeps the advert fresh, and stops cleanly.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crank_inference::device::{self, EnergyMeter, GateMonitor};
use crank_inference::{Engine, Job, ModelStore};
use crank_payments::{Ledger, RequesterReceipts, WorkerReceipts};
use crank_protocol::adverts::AdvertTable;
use crank_protocol::validate::Limits;
use crank_protocol::{
    CapabilityAdvert, ErrorCode, ExecPath, GpuAdapter, ModelId, NamedTensor, NodeId, PathBench,
    Request, Response, Signed, Tensor, TensorData,
};
use crank_scheduler::TrustBook;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::{Core, TRUST_KEY};
use crate::metrics::Metrics;
use crate::network::{self, NetworkEvent, Responder};
use crate::plumbing::{chain, lock, stopped};
use crate::requester::{self, Requester};
use crate::wallet::NodeWallet;
use crate::worker::{self, ADVERT_SEQ_KEY, Worker};
use crate::{clock, identity};

/// The reference model every node carries: the digits MLP, used for the self-benchmark.
pub const REFERENCE_MODEL: &[u8] = include_bytes!("../../models/digits-mlp.onnx");

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be created.
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        /// The dir.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The node key could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The payout wallet could not be loaded.
    #[error("payout wallet: {0}")]
    Wallet(String),
    /// The model store could not be opened.
    #[error("model store: {0}")]
    Store(String),
    /// The ledger could not be opened.
    #[error("ledger: {0} (is another crank-node running with this data dir?)")]
    Ledger(String),
    /// The inference engine could not start.
    #[error("inference engine: {0}")]
    Engine(String),
    /// The power gate could not start.
    #[error("power gate: {0}")]
    Gate(String),
    /// The network could not start.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// The configuration cannot be used as it stands.
    #[error("config: {0}")]
    Config(String),
    /// The policies do not load (the message names the file, line and rule).
    #[error(
        "policy: {0} (fix the file, or move it out of the policy directory; `crank-node policy test FILE` checks one)"
    )]
    Policy(String),
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

/// A cheap handle for talking to a running node in-process (tests, the simulator, the CLI).
#[derive(Clone)]
pub struct NodeHandle {
    /// What every part shares.
    pub(crate) core: Arc<Core>,
    /// The worker side.
    pub(crate) worker: Arc<Worker>,
    /// The requester side.
    pub(crate) requester: Arc<Requester>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeHandle({})", self.core.node_id.short())
    }
}

impl Node {
    /// Starts a node: keys, stores, engine, gate, network, and the background loops.
    pub async fn start(config: Config, role: network::Role) -> Result<Node, StartError> {
        config
            .requester
            .checks
            .validate()
            .map_err(|e| StartError::Config(format!("[requester.checks]: {e}")))?;
        let data_dir = config.data_dir.clone();
        crate::identity::create_private_dir(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let (identity, new_key) = identity::load_or_create(&data_dir)?;
        let node_id = identity.node_id();
        if new_key {
            info!(node = %node_id, "created a new node key");
        }

        let store = Arc::new(
            ModelStore::open(&data_dir.join("models"), config.engine.max_model_bytes)
                .map(|s| s.with_quota(config.worker.store.quota()))
                .map_err(|e| StartError::Store(chain(&e)))?,
        );
        let policy_dir = config.policy.dir_in(&data_dir);
        let policies = Arc::new(
            crank_policy::Watched::open(&policy_dir)
                .map_err(|e| StartError::Policy(e.to_string()))?,
        );
        let kinds = policies.current().kinds();
        if !kinds.is_empty() {
            info!(dir = %policy_dir.display(), kinds = ?kinds, "policies loaded");
        }
        let ledger = Arc::new(
            Ledger::open(&data_dir.join("ledger.redb"))
                .map_err(|e| StartError::Ledger(chain(&e)))?,
        );
        let wallet =
            Arc::new(NodeWallet::open(&config, ledger.clone()).map_err(StartError::Wallet)?);
        let payout = wallet.address();
        let engine = Engine::new(config.engine.clone(), store.clone())
            .map_err(|e| StartError::Engine(chain(&e)))?;
        let monitor = GateMonitor::start(config.device.clone())
            .await
            .map_err(|e| StartError::Gate(chain(&e)))?;
        let gate = monitor.subscribe();
        let meter = EnergyMeter::new(&config.device);
        let gpus = if role.bootstrap || !config.worker.enabled {
            Vec::new()
        } else {
            let engine = engine.clone();
            let settings = config.worker.gpu.clone();
            tokio::task::spawn_blocking(move || attach_gpu(&engine, &settings))
                .await
                .unwrap_or_default()
        };
        let hardware = device::probe_hardware(gpus);

        let trust = match ledger.get_meta(TRUST_KEY) {
            Ok(Some(bytes)) => serde_json::from_slice::<TrustBook>(&bytes).unwrap_or_else(|e| {
                warn!(error = %e, "stored trust book unreadable; starting afresh");
                TrustBook::new(config.requester.trust_prior, 4096).unwrap_or_default()
            }),
            _ => TrustBook::new(config.requester.trust_prior, 4096).unwrap_or_default(),
        };
        let advert_seq = match ledger.get_meta(ADVERT_SEQ_KEY) {
            Ok(Some(b)) => b.try_into().map(u64::from_be_bytes).unwrap_or(0),
            _ => 0,
        }
        // A restart also moves past any sequence number handed out but not yet persisted.
        .max(clock::now_ms());

        // Quotes scale the self-benchmark by model size and input elements relative to the
        // reference model, so the cost model must know its real size (one row = 64 elements).
        let mut config = config;
        config.worker.cost.reference_model_bytes = REFERENCE_MODEL.len() as u64;
        config.worker.cost.reference_input_elements = 64;
        // The reference model: every node holds it, and it is what the self-benchmark runs.
        let reference = store
            .put(REFERENCE_MODEL)
            .map_err(|e| StartError::Store(chain(&e)))?;
        let bench = if role.bootstrap || !config.worker.enabled {
            Vec::new()
        } else {
            let mut bench = Vec::new();
            let have = paths_for(&engine, &store, &reference);
            let wanted = &config.worker.paths;
            for p in wanted.iter().filter(|p| !have.contains(p)) {
                warn!(path = %p, "`[worker] paths` names a path this node does not have");
            }
            let bid_with = have
                .into_iter()
                .filter(|p| wanted.is_empty() || wanted.contains(p));
            for path in bid_with {
                bench.extend(self_benchmark(&engine, &meter, reference, path, &config).await);
            }
            bench
        };

        let metrics = Metrics::new();
        let (client, events, event_loop) =
            network::new(&identity, &config.network, role.clone(), metrics.clone())?;
        let limits = Limits::default();
        let worker_receipts = WorkerReceipts::new(
            ledger.clone(),
            identity.clone(),
            payout.clone(),
            config.stellar.clone(),
        );
        let requester_receipts = RequesterReceipts::new(ledger.clone(), identity.clone());
        let core = Arc::new(Core {
            identity,
            node_id,
            client,
            store,
            engine,
            ledger,
            wallet: wallet.clone(),
            metrics,
            gate,
            monitor,
            adverts: Mutex::new(AdvertTable::new(crate::core::ADVERT_TABLE_CAPACITY, limits)),
            trust: Mutex::new(trust),
            payout,
            limits,
            started: Instant::now(),
            role,
            listen_addrs: Mutex::new(Vec::new()),
            advert_changed: Notify::new(),
            policies,
            config,
        });
        let shared = NodeHandle {
            worker: Arc::new(Worker {
                core: core.clone(),
                receipts: worker_receipts,
                bids: Mutex::new(crank_scheduler::BidBook::new(4096)),
                running: Mutex::new(HashMap::new()),
                measured: Mutex::new(BTreeMap::new()),
                unservable: Mutex::new(crate::worker::restore_unservable(
                    &core.ledger,
                    &crate::worker::engine_tag(&bench),
                    core.limits.max_advert_models,
                )),
                failures: AtomicU64::new(0),
                meter,
                hardware,
                bench,
                advert_seq: AtomicU64::new(advert_seq),
                current_advert: Mutex::new(None),
            }),
            requester: Arc::new(Requester {
                core: core.clone(),
                receipts: requester_receipts,
                pending: Mutex::new(HashMap::new()),
                declared: Mutex::new(HashMap::new()),
            }),
            core,
        };

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut rx = stop_rx.clone();
        tasks.spawn(event_loop.run(async move { stopped(&mut rx).await }));
        tasks.spawn(dispatch(shared.clone(), events, stop_rx.clone()));
        tasks.spawn(advert_loop(shared.worker.clone(), stop_rx.clone()));
        tasks.spawn(gate_loop(shared.worker.clone(), stop_rx.clone()));
        tasks.spawn(policy_loop(shared.core.clone(), stop_rx.clone()));
        tasks.spawn(requester::settlement_notices(
            shared.requester.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(worker::recover_receipts(
            shared.worker.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(worker::watch_payments(
            shared.worker.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(requester::expire_checks(
            shared.requester.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(crate::wallet::settlement_loop(
            wallet,
            shared.core.config.settlement.clone(),
            stop_rx,
        ));
        if shared.core.offers_work() {
            for id in shared.core.store.list() {
                if let Err(e) = shared.core.client.provide(id.provider_key()).await {
                    warn!(error = %e, "cannot announce a model");
                }
            }
        }
        info!(node = %node_id, peer = %network::peer_id_string(&node_id), payout = %shared.core.payout, "node started");
        Ok(Node {
            handle: shared,
            tasks,
            stop,
        })
    }

    /// A handle for in-process use.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the background loops, aborts running tasks and waits for them.
    pub async fn shutdown(mut self) {
        if self.handle.core.offers_work() {
            // Stop taking work before saying goodbye: from here calls and awards are
            // declined, and running tasks are aborted and reported, so their requesters
            // re-award them at once instead of waiting for results that never come.
            self.handle.core.monitor.set_paused(true);
            match self.handle.worker.farewell_advert() {
                Ok(advert) => {
                    if self.handle.core.client.publish_advert(advert).await.is_ok() {
                        // Let the connections write it out before the swarm stops.
                        tokio::time::sleep(FAREWELL_FLUSH).await;
                    }
                }
                Err(e) => debug!(error = %e, "no farewell advert"),
            }
        }
        let _ = self.stop.send(true);
        for (_, running) in lock(&self.handle.worker.running).drain() {
            running.cancel.cancel();
        }
        self.handle.core.engine.shutdown();
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => { self.tasks.abort_all(); break }
            }
        }
        self.handle.core.save_trust();
        info!(node = %self.handle.core.node_id, "node stopped");
    }
}

/// Time given to the farewell advert to leave before the swarm stops.
const FAREWELL_FLUSH: Duration = Duration::from_millis(200);

/// Rows per self-benchmark run.
const BENCH_ROWS: u64 = 256;

/// Opens the GPU path when the configuration allows and a GPU is found; returns the adapters
/// to advertise (never a CPU-emulated one, even when it runs tasks for tests).
#[cfg(feature = "gpu")]
fn attach_gpu(engine: &Engine, settings: &crate::config::GpuSettings) -> Vec<GpuAdapter> {
    use crank_inference::gpu::{GpuConfig, GpuRuntime};
    if !settings.enabled {
        return Vec::new();
    }
    if !settings.allow_cpu_adapter && !gpu_device_nodes() {
        debug!("no GPU device nodes (/dev/dri/renderD*, /dev/nvidia*): CPU path only");
        return Vec::new();
    }
    // Probing loads the graphics drivers; one probe at a time per process, because some
    // software drivers are not safe to open from several threads at once.
    static PROBE: Mutex<()> = Mutex::new(());
    let _one = PROBE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cfg = GpuConfig {
        enabled: true,
        allow_cpu_adapter: settings.allow_cpu_adapter,
        adapter_name: settings.adapter_name.clone(),
        ..GpuConfig::default()
    };
    let Some(runtime) = GpuRuntime::probe(&cfg) else {
        return Vec::new();
    };
    let adapters = runtime.adapters_for_advert();
    engine.use_gpu(runtime);
    adapters
}

/// Whether the kernel exposes a GPU at all. A server or container without one would
/// otherwise load every graphics driver (and their complaints about missing displays) only
/// to find a software rasteriser that is never used.
#[cfg(feature = "gpu")]
fn gpu_device_nodes() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let render = std::fs::read_dir("/dev/dri").is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    });
    render || std::path::Path::new("/dev/nvidia0").exists()
}

#[cfg(not(feature = "gpu"))]
fn attach_gpu(_engine: &Engine, settings: &crate::config::GpuSettings) -> Vec<GpuAdapter> {
    if settings.enabled {
        debug!("built without the gpu feature: CPU path only");
    }
    Vec::new()
}

/// The paths the reference model can run on: tract on the CPU; ONNX Runtime when the owner
/// installed it and it takes the model; the GPU when one is attached and takes the model.
fn paths_for(engine: &Engine, store: &ModelStore, model: &ModelId) -> Vec<ExecPath> {
    let mut paths = vec![ExecPath::Cpu];
    if let Some(version) = engine.onnxruntime_version() {
        match engine.inspect_onnxruntime(model) {
            Ok(_) => {
                info!(version, "ONNX Runtime path enabled");
                paths.push(ExecPath::Onnxruntime);
            }
            Err(e) => warn!(error = %chain(&e), "reference model does not load in ONNX Runtime"),
        }
    }
    #[cfg(feature = "gpu")]
    if let Some(gpu) = engine.gpu() {
        match gpu.path_for(store, model) {
            Ok(ExecPath::Gpu) => paths.push(ExecPath::Gpu),
            Ok(_) => {}
            Err(e) => warn!(error = %chain(&e), "reference model does not load on the GPU"),
        }
    }
    #[cfg(not(feature = "gpu"))]
    let _ = (store, model);
    paths
}

/// Runs the reference model on one path for about half a second to measure speed and energy
/// per inference.
async fn self_benchmark(
    engine: &Engine,
    meter: &EnergyMeter,
    model: ModelId,
    path: ExecPath,
    config: &Config,
) -> Vec<PathBench> {
    if config.worker.benchmark_ms == 0 {
        return Vec::new();
    }
    // One row of the reference model's input (the digits MLP takes [N, 64] floats).
    let name = match engine.inspect(&model) {
        Ok(info) => info
            .inputs
            .first()
            .map(|i| i.name.clone())
            .unwrap_or_default(),
        Err(e) => {
            warn!(error = %chain(&e), "reference model does not load; no self-benchmark");
            return Vec::new();
        }
    };
    // A batch of rows, so the figure is the compute rate per row rather than the fixed cost
    // of one call (quotes add that fixed cost separately as `overhead_ms`). Figures below
    // are per row: one row of the reference model is one "inference".
    let input = vec![NamedTensor {
        name,
        tensor: Tensor {
            shape: vec![BENCH_ROWS, 64],
            data: TensorData::F32(
                (0..BENCH_ROWS * 64)
                    .map(|i| (i % 17) as f32 / 16.0)
                    .collect(),
            ),
        },
    }];
    let engine = engine.clone();
    let meter = meter.clone();
    let min = Duration::from_millis(config.worker.benchmark_ms);
    let result = tokio::task::spawn_blocking(move || {
        device::measure(&meter, 3, min, || {
            let job = Job::new(model, input.clone(), Duration::from_secs(10)).on_path(path);
            engine
                .submit(job)
                .and_then(crank_inference::JobHandle::wait)
                .map(|_| ())
        })
    })
    .await;
    match result {
        Ok(Ok(mut figures)) => {
            figures.inferences_per_sec *= BENCH_ROWS as f32;
            figures.microjoules_per_inference =
                (figures.microjoules_per_inference / BENCH_ROWS).max(1);
            info!(
                %path,
                inferences_per_sec = figures.inferences_per_sec,
                microjoules = figures.microjoules_per_inference,
                method = %figures.method,
                "self-benchmark on the reference model"
            );
            vec![figures.to_path_bench(path)]
        }
        Ok(Err(e)) => {
            warn!(error = %chain(&e), "self-benchmark failed");
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, "self-benchmark did not finish");
            Vec::new()
        }
    }
}

async fn dispatch(
    shared: NodeHandle,
    mut events: mpsc::Receiver<NetworkEvent>,
    mut stop: watch::Receiver<bool>,
) {
    // Handler slots shared fairly between peers, so that one peer's slow or numerous
    // requests leave room for everyone else's.
    let net = &shared.core.config.network;
    let slots = network::FairSlots::new(net.inbound_handlers, net.inbound_handlers_min_share);
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => break },
            _ = stopped(&mut stop) => break,
        };
        match event {
            NetworkEvent::Listening { addr } => {
                lock(&shared.core.listen_addrs).push(addr);
                shared.core.advert_changed.notify_one();
            }
            NetworkEvent::PeerConnected { node } => debug!(peer = %node.short(), "peer connected"),
            NetworkEvent::PeerDisconnected { node } => {
                debug!(peer = %node.short(), "peer disconnected");
                // Tasks awarded to it learn at once, instead of at their result timeout.
                let pending: Vec<_> = lock(&shared.requester.pending).values().cloned().collect();
                for tx in pending {
                    let _ = tx.try_send(requester::WorkerReport::Disconnected { peer: node });
                }
            }
            NetworkEvent::PeerIdentified { node, speaks_crank } => {
                if speaks_crank {
                    tokio::spawn(fetch_advert(shared.core.clone(), node));
                }
            }
            NetworkEvent::Advert(advert) => shared.core.accept_advert(*advert),
            NetworkEvent::InboundRequest {
                peer,
                request,
                responder,
            } => match slots.try_acquire(peer) {
                Ok(permit) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        handle_request(&shared, peer, *request, responder).await;
                        drop(permit);
                    });
                }
                Err(refusal) => {
                    debug!(peer = %peer.short(), reason = %refusal, "request refused: no handler slot");
                    responder.send(Response::error(ErrorCode::Busy, refusal.to_string()))
                }
            },
        }
    }
}

/// Asks a newly identified peer for its advert, so we need not wait for the next gossip round.
async fn fetch_advert(shared: Arc<Core>, node: NodeId) {
    match shared.client.request(&node, Request::GetAdvert).await {
        Ok(Response::Advert(advert)) => {
            match crank_protocol::validate::advert(&advert, clock::now_ms(), &shared.limits) {
                Ok(body) if body.node == node => shared.accept_advert(*advert),
                Ok(_) => {
                    warn!(peer = %node.short(), "peer sent someone else's advert");
                    shared
                        .client
                        .penalize(&node, "sent someone else's advert")
                        .await;
                }
                Err(e) => {
                    warn!(peer = %node.short(), error = %e, "peer sent an invalid advert");
                    shared.client.penalize(&node, e.to_string()).await;
                }
            }
        }
        Ok(other) => debug!(peer = %node.short(), kind = other.kind(), "no advert from peer"),
        Err(e) => debug!(peer = %node.short(), error = %e, "advert request failed"),
    }
}

async fn handle_request(shared: &NodeHandle, peer: NodeId, request: Request, responder: Responder) {
    match request {
        Request::CallForBids(cfb) => {
            responder.send(worker::on_call_for_bids(&shared.worker, &peer, &cfb).await)
        }
        Request::Award(award) => worker::on_award(&shared.worker, peer, award, responder).await,
        Request::Cancel(cancel) => {
            responder.send(worker::on_cancel(&shared.worker, &peer, &cancel))
        }
        Request::FetchModel(fetch) => {
            responder.send(worker::on_fetch_model(&shared.worker, &peer, &fetch).await)
        }
        Request::Result(result) => {
            requester::on_result(&shared.requester, peer, result, responder).await
        }
        Request::Outputs(outputs) => {
            requester::on_outputs(&shared.requester, peer, *outputs, responder).await
        }
        Request::Dispute(dispute) => {
            responder.send(worker::on_dispute(&shared.worker, &peer, *dispute).await)
        }
        Request::GetSettlement { tx_hash } => {
            responder.send(requester::on_get_settlement(&shared.requester, peer, tx_hash).await)
        }
        Request::Failure(failure) => {
            requester::on_failure(&shared.requester, peer, failure, responder).await
        }
        Request::GetAdvert if !shared.core.offers_work() => responder.send(Response::error(
            ErrorCode::NotFound,
            "this node takes no work and has no advert",
        )),
        Request::GetReceipt { task_id } => {
            responder.send(requester::on_get_receipt(&shared.requester, peer, task_id).await)
        }
        Request::Settlement(notice) => {
            responder.send(worker::on_settlement(&shared.worker, &peer, &notice).await)
        }
        Request::GetAdvert => match shared.worker.advert() {
            Some(a) => responder.send(Response::Advert(Box::new(a))),
            None => responder.send(Response::error(
                ErrorCode::Internal,
                "cannot sign an advert",
            )),
        },
    }
}

async fn advert_loop(shared: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_secs(shared.config.advert.interval_secs.max(1));
    if !shared.offers_work() {
        return;
    }
    loop {
        match shared.build_advert() {
            Ok(advert) => {
                if let Err(e) = shared.client.publish_advert(advert).await {
                    debug!(error = %e, "advert not published");
                }
            }
            Err(e) => warn!(error = %e, "cannot sign the advert"),
        }
        lock(&shared.adverts).prune(clock::now_ms());
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.advert_changed.notified() => {
                // Coalesce bursts of changes into one advert.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = stopped(&mut stop) => break,
        }
    }
}

/// Follows the power gate: re-advertises on every change, aborts running tasks when it closes.
/// Reloads the policies when their files change; a file that does not load leaves the last
/// good policies in force and is reported once per change.
async fn policy_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(core.config.policy.reload_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => break,
        }
        let policies = core.policies.clone();
        match tokio::task::spawn_blocking(move || policies.refresh()).await {
            Ok(Ok(true)) => {
                let kinds = core.policies.current().kinds();
                info!(dir = %core.policies.dir().display(), kinds = ?kinds, "policies reloaded");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "policies not reloaded; the previous ones stay in force")
            }
            Err(_) => break,
        }
    }
}

async fn gate_loop(shared: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let mut gate = shared.gate.clone();
    let mut was_open = gate.borrow().state.is_open();
    shared.metrics.gate_open(was_open);
    let first_reason = gate.borrow().state.why_closed();
    remember_gate(&shared, was_open, first_reason).await;
    loop {
        tokio::select! {
            changed = gate.changed() => if changed.is_err() { break },
            _ = stopped(&mut stop) => break,
        }
        let snapshot = gate.borrow_and_update().clone();
        let open = snapshot.state.is_open();
        shared.metrics.gate_open(open);
        if open != was_open {
            match snapshot.state.why_closed() {
                Some(reason) => info!(reason = %reason, "power gate closed"),
                None => info!("power gate open"),
            }
            remember_gate(&shared, open, snapshot.state.why_closed()).await;
        }
        if let Some(reason) = snapshot.state.reason() {
            worker::abort_all(&shared, reason);
        }
        was_open = open;
        shared.advert_changed.notify_one();
    }
}

/// Keeps a gate change in the ledger for the dashboard (a commit: off the async threads).
async fn remember_gate(shared: &Arc<Worker>, open: bool, reason: Option<String>) {
    if !shared.offers_work() {
        return;
    }
    let ledger = shared.ledger.clone();
    let event = crate::dashboard::GateEvent {
        at: clock::now_ms(),
        open,
        reason,
    };
    let _ =
        tokio::task::spawn_blocking(move || crate::dashboard::record_gate(&ledger, event)).await;
}

impl NodeHandle {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.core.node_id
    }

    /// The node's Stellar payout account.
    pub fn payout(&self) -> &str {
        &self.core.payout
    }

    /// The node's config.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// The metrics, as Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.core.metrics.encode()
    }

    /// Addresses the node listens on (with `/p2p/<peer id>`), once the listeners are up.
    pub async fn listen_addrs(&self) -> Vec<String> {
        for _ in 0..100 {
            let addrs = lock(&self.core.listen_addrs).clone();
            if !addrs.is_empty() {
                return addrs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lock(&self.core.listen_addrs).clone()
    }

    /// Tasks accepted and not finished (fetching, queued, running or delivering).
    pub fn running_tasks(&self) -> usize {
        lock(&self.worker.running).len()
    }

    /// Number of fresh adverts of other nodes.
    pub fn known_adverts(&self) -> usize {
        let now = clock::now_ms();
        lock(&self.core.adverts)
            .fresh(now)
            .filter(|a| a.node != self.core.node_id)
            .count()
    }

    /// The fresh advert this node holds of `node`, if any.
    pub fn advert_of(&self, node: &NodeId) -> Option<CapabilityAdvert> {
        lock(&self.core.adverts).get(node, clock::now_ms()).cloned()
    }

    /// Adds a model to the local store and announces it.
    pub async fn add_model(&self, bytes: &[u8]) -> Result<ModelId, crank_inference::StoreError> {
        self.core.add_model(bytes).await
    }

    /// Takes an advert as if it had arrived by gossip: verified and validated first, then
    /// stored, and the node's addresses learned (tests and the simulator introduce peers
    /// this way).
    pub fn learn_advert(
        &self,
        advert: Signed<CapabilityAdvert>,
    ) -> Result<(), crank_protocol::validate::ValidationError> {
        crank_protocol::validate::advert(&advert, clock::now_ms(), &self.core.limits)?;
        self.core.accept_advert(advert);
        Ok(())
    }

    /// Runs a task on the mesh.
    pub async fn submit(
        &self,
        req: crate::SubmitRequest,
    ) -> Result<crate::TaskOutcome, crate::SubmitError> {
        requester::submit(&self.requester, req).await
    }

    /// Pauses or resumes work (the gate closes with "paused by the owner").
    pub fn set_paused(&self, paused: bool) {
        self.core.monitor.set_paused(paused);
    }

    /// The node's wallet (payout key, balances, settlement).
    pub fn wallet(&self) -> &NodeWallet {
        &self.core.wallet
    }

    /// Stored receipts, newest first.
    pub fn receipts(&self, limit: usize) -> Vec<crank_payments::StoredReceipt> {
        self.core.ledger.receipts(None, limit).unwrap_or_default()
    }

    /// The names of a model's graph inputs (for naming unnamed input tensors).
    pub fn input_names(
        &self,
        model: &ModelId,
    ) -> Result<Vec<String>, crank_inference::InferenceError> {
        Ok(self
            .core
            .engine
            .inspect(model)?
            .inputs
            .iter()
            .map(|i| i.name.clone())
            .collect())
    }

    /// Known adverts of other nodes with this node's trust in each.
    fn status_adverts(&self, now: u64) -> Vec<crate::status::AdvertView> {
        use crate::status::AdvertView;
        let s = &self.core;
        // Adverts, then trust: the order candidate selection takes them in.
        let advert_table = lock(&s.adverts);
        let trust = lock(&s.trust);
        advert_table
            .fresh(now)
            .filter(|a| a.node != s.node_id)
            .map(|a| AdvertView {
                node: a.node,
                peer_id: network::peer_id_string(&a.node),
                agent: a.agent.clone(),
                gate_open: a.gate.open,
                gate_reason: a.gate.reason.as_ref().map(ToString::to_string),
                cores: a.hardware.cores,
                ram_mib: a.hardware.ram_mib,
                models: a.models.len(),
                per_task_stroops: a.pricing.per_task_stroops,
                inferences_per_sec: a
                    .bench
                    .iter()
                    .find(|b| b.path == ExecPath::Cpu)
                    .map(|b| b.inferences_per_sec),
                gpu_inferences_per_sec: a
                    .bench
                    .iter()
                    .find(|b| b.path == ExecPath::Gpu)
                    .map(|b| b.inferences_per_sec),
                gpus: a
                    .hardware
                    .gpus
                    .iter()
                    .map(|g| format!("{} ({})", g.name, g.backend))
                    .collect(),
                completed: a.trust.completed,
                trust: trust.score(&a.node),
                completed_here: trust.get(&a.node).map_or(0, |r| r.completed),
                overclaims: trust.get(&a.node).map_or(0, |r| r.overclaimed),
                verified: trust.get(&a.node).map_or(0, |r| r.verified),
                outvoted: trust.get(&a.node).map_or(0, |r| r.disagreed),
                suspended_secs: trust
                    .suspended_until(&a.node, now)
                    .map(|t| t.saturating_sub(now).div_ceil(1000)),
                trust_because: trust.explain(&a.node, now).because,
                expires_in_secs: a.expires_at.saturating_sub(now) / 1000,
            })
            .collect()
    }

    /// Everything this node knows of `peer` and why it trusts it as it does.
    pub async fn peer(
        &self,
        peer: &NodeId,
    ) -> Result<crate::status::PeerReport, network::NetworkError> {
        use crate::status::{ClaimView, PeerReport};
        let s = &self.core;
        let now = clock::now_ms();
        let network = s.client.status().await?;
        let advert = self
            .status_adverts(now)
            .into_iter()
            .find(|a| a.node == *peer);
        let (record, trust, claims) = {
            let book = lock(&s.trust);
            let claims = book
                .claims()
                .of_peer(peer)
                .map(|(model, path, r)| {
                    let (claimed, measured) = (r.claimed(), r.measured());
                    ClaimView {
                        model,
                        path,
                        tasks: r.tasks,
                        overclaims: r.overclaims,
                        claimed_latency_ms: claimed.map(|m| m.latency_ms),
                        measured_latency_ms: measured.map(|m| m.latency_ms),
                        claimed_energy_mj: claimed.map(|m| m.energy_mj),
                        measured_energy_mj: measured.map(|m| m.energy_mj),
                    }
                })
                .collect();
            (
                book.get(peer).copied().unwrap_or_default(),
                book.explain(peer, now),
                claims,
            )
        };
        let payments = s
            .ledger
            .balances()
            .ok()
            .and_then(|b| b.counterparties.get(peer).copied())
            .unwrap_or_default();
        Ok(PeerReport {
            node: *peer,
            peer_id: network::peer_id_string(peer),
            advert,
            connection: network.peers.into_iter().find(|p| p.node == *peer),
            record,
            trust,
            claims,
            payments,
        })
    }

    /// The gate as `status` and the dashboard show it.
    fn gate_view(&self) -> crate::status::GateView {
        let s = &self.core;
        let gate = s.gate_state();
        crate::status::GateView {
            policy: s.gate_snapshot().policy.to_string(),
            open: gate.is_open(),
            reason: gate.why_closed(),
            category: gate.category().map(str::to_owned),
        }
    }

    /// What the owner's dashboard draws: money, tasks and energy from the newest receipts,
    /// the gate's history, peers and trust.
    pub async fn dashboard_data(
        &self,
    ) -> Result<crate::dashboard::DashboardData, network::NetworkError> {
        use crate::dashboard::{self, DashboardData, NodeView, PeersView};
        let s = &self.core;
        let network = s.client.status().await?;
        let now = clock::now_ms();
        let ledger = s.ledger.clone();
        let (receipts, gate_history) = tokio::task::spawn_blocking(move || {
            let receipts = ledger
                .receipts(None, dashboard::MAX_RECEIPTS)
                .unwrap_or_default();
            (receipts, dashboard::gate_history(&ledger))
        })
        .await
        .unwrap_or_default();
        let (bucket_secs, buckets, energy, totals) = dashboard::summarise(&receipts, now);
        let adverts = self.status_adverts(now);
        Ok(DashboardData {
            generated_at: now,
            node: NodeView {
                node_id: s.node_id,
                peer_id: network.peer_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_secs: s.started.elapsed().as_secs(),
                payout: s.payout.clone(),
            },
            gate: self.gate_view(),
            bucket_secs,
            buckets,
            energy,
            gate_history,
            peers: PeersView {
                connected: network.peers.len(),
                known: adverts.len(),
                trust: dashboard::trust_rows(adverts),
            },
            totals,
            receipts_scanned: receipts.len(),
        })
    }

    /// A snapshot for `crank-node status`.
    pub async fn status(&self) -> Result<crate::status::NodeStatus, network::NetworkError> {
        use crate::status::{NodeStatus, QueueView, ReceiptView};
        let s = &self.core;
        let network = s.client.status().await?;
        let now = clock::now_ms();
        let adverts = self.status_adverts(now);
        let queue = s.engine.queue();
        let balances = s.ledger.balances().unwrap_or_default();
        let mut payers = Vec::new();
        for (node, b) in balances
            .counterparties
            .iter()
            .filter(|(_, b)| b.receipts_as_worker > 0)
            .take(256)
        {
            let standing = self
                .worker
                .receipts
                .standing(*node)
                .await
                .unwrap_or_default();
            let refused = s.config.worker.credit.check(
                &crank_scheduler::RequesterStanding {
                    unpaid_stroops: standing.unpaid_stroops,
                    oldest_unpaid_at: standing.oldest_unpaid_at,
                },
                now,
            );
            payers.push(crate::status::PayerView {
                node: *node,
                receipts: b.receipts_as_worker,
                paid_stroops: b.paid_to_us_stroops,
                unpaid_stroops: b.owed_to_us_stroops,
                oldest_unpaid_secs: standing
                    .oldest_unpaid_at
                    .map(|at| now.saturating_sub(at) / 1000),
                overpaid_stroops: b.overpaid_to_us_stroops,
                disputed_stroops: b.disputed_to_us_stroops,
                credit_refused: refused.map(|r| r.to_string()),
            });
        }
        Ok(NodeStatus {
            payers,
            node_id: s.node_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: s.started.elapsed().as_secs(),
            payout: s.payout.clone(),
            network,
            gate: self.gate_view(),
            queue: QueueView {
                workers: queue.workers,
                slots: queue.slots,
                queued: queue.queued,
                running: queue.running,
                tasks: lock(&self.worker.running).len(),
            },
            models: s.store.list(),
            bench: self.worker.bench.clone(),
            adverts,
            balances,
            receipts: s
                .ledger
                .receipts(None, 20)
                .unwrap_or_default()
                .iter()
                .map(ReceiptView::from)
                .collect(),
        })
    }
}
