//! The inference engine: a bounded job queue served by dedicated worker threads.
//!
//! [`Engine::submit`] checks what it can without the model (limits, deadline, that the model
//! is stored), then queues the job or refuses with [`InferenceError::QueueFull`]. It never
//! blocks and never runs inference on the caller's thread, so it is safe to call from the
//! node's async tasks. Workers take the oldest job, load its model through the plan cache,
//! and, when the model is batchable, take other queued jobs for the same model and run them
//! as one batch. Between operators, a run checks for cancellation, the deadline, the run-time
//! cap and shutdown, so a stopped job frees its worker within one operator's time.

// Sizes here come from untrusted models and inputs: every product and sum is checked.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crank_protocol::{ExecPath, ModelId, NamedTensor, TensorError};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::RunOptions;

use crate::cache::PlanCache;
use crate::convert;
use crate::error::InferenceError;
use crate::model::{LoadedModel, ModelInfo, PlanStats, bind_inputs, concat_rows, panic_text};
use crate::onnxruntime::{self as onnxrt, OrtModel, Watchdog};
use crate::runner::SandboxReport;
use crate::runner::process::Runner;
use crate::runner::wire::{Backend, Setup};
use crate::store::ModelStore;

/// Engine settings. Embeds in the node's TOML config; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Worker threads running inference; 0 means one per available core. Default 0.
    pub workers: usize,
    /// Jobs that may wait for a worker; a submit beyond this is refused. Default 64, minimum 1.
    pub queue_slots: usize,
    /// Threads one run may use for its matrix products; 1 keeps each run on its worker
    /// thread (best throughput when many jobs run in parallel). Default 1.
    pub threads_per_run: usize,
    /// Largest model the engine loads, bytes. Default 256 MiB.
    pub max_model_bytes: u64,
    /// Most elements one job's inputs may hold together. Default 16,777,216 (64 MiB of f32).
    pub max_input_elements: u64,
    /// Longest one run may take before it is stopped; in TOML, `max_run_time_ms`
    /// (milliseconds). Default 60 s.
    #[serde(rename = "max_run_time_ms", with = "millis")]
    pub max_run_time: Duration,
    /// Loaded models kept ready to run (least recently used is dropped). Default 8.
    pub plan_cache_entries: usize,
    /// Whether queued jobs for the same model run together as one batch. Default true.
    pub batching: bool,
    /// Most jobs in one batch. Default 32.
    pub max_batch: usize,
    /// Whether models run in an isolated runner process (its own memory, CPU-time and
    /// system-call limits; killed at the run-time limit) instead of on the worker thread.
    /// Takes effect only when `runner_exe` is known: the node sets it to its own binary.
    /// The GPU path always runs in-process. Default true.
    pub isolate: bool,
    /// Address-space limit of each runner process, MiB; a model that needs more fails
    /// with [`InferenceError::MemoryExhausted`]. Default 4096.
    pub runner_memory_mib: u64,
    /// The runner executable: a binary whose `main` hands [`crate::runner::RUNNER_ARG`]
    /// to [`crate::runner::serve`]. Set at run time, not from TOML. Default none: the
    /// binary registered with [`crate::runner::use_this_binary`] (the node registers
    /// itself), or, when none was, models run in-process.
    #[serde(skip)]
    pub runner_exe: Option<PathBuf>,
    /// The ONNX Runtime library (`libonnxruntime.so`, as `pip install onnxruntime` ships it
    /// under `onnxruntime/capi/`) that enables the optional `onnxruntime` path beside tract.
    /// Jobs that ask for that path run on it, one job per run, isolated like tract's. The
    /// engine refuses to start when the file cannot be loaded. Default none: tract only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            queue_slots: 64,
            threads_per_run: 1,
            max_model_bytes: 256 * 1024 * 1024,
            max_input_elements: 16 * 1024 * 1024,
            max_run_time: Duration::from_secs(60),
            plan_cache_entries: 8,
            batching: true,
            max_batch: 32,
            isolate: true,
            runner_memory_mib: 4096,
            runner_exe: None,
            onnxruntime: None,
        }
    }
}

/// (De)serialises a [`Duration`] as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A flag a submitter sets to withdraw a job; clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, uncancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the job: dropped if it has not started, its result discarded if it has.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One inference request.
#[derive(Debug, Clone)]
pub struct Job {
    /// The model to run (must be in the store).
    pub model: ModelId,
    /// Inputs, named like the model's graph inputs.
    pub inputs: Vec<NamedTensor>,
    /// When the result stops being useful; the job is dropped or stopped after it.
    pub deadline: Instant,
    /// Withdraws the job.
    pub cancel: CancelToken,
    /// The path to run on, when the caller chose one (a worker runs a task on the path it
    /// bid with); `None` lets the engine choose: the GPU when attached and it takes the model.
    /// A path that cannot take the model falls back to the other.
    pub path: Option<ExecPath>,
}

impl Job {
    /// A job with a fresh cancel token and a deadline `timeout` from now.
    pub fn new(model: ModelId, inputs: Vec<NamedTensor>, timeout: Duration) -> Self {
        Self {
            model,
            inputs,
            deadline: far_from_now(timeout),
            cancel: CancelToken::new(),
            path: None,
        }
    }

    /// The same job, to run on `path` where it can.
    #[must_use]
    pub fn on_path(mut self, path: ExecPath) -> Self {
        self.path = Some(path);
        self
    }
}

/// A job's outputs and how they were produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// Outputs, in graph order, named like the graph outputs.
    pub outputs: Vec<NamedTensor>,
    /// Wall time of the run that produced them, microseconds (a batch's whole run).
    pub run_micros: u64,
    /// Thread CPU time attributable to this job, microseconds (a batch's CPU time is split
    /// by rows). Feeds energy estimates.
    pub cpu_micros: u64,
    /// Time the job waited in the queue, microseconds.
    pub queue_micros: u64,
    /// Which runtime ran it.
    pub path: ExecPath,
    /// How many jobs shared the run (1 when not batched).
    pub batch_size: usize,
}

/// A snapshot of the queue, for adverts and bids ("queue full" declines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Worker threads.
    pub workers: usize,
    /// Queue capacity, jobs.
    pub slots: usize,
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs being run now.
    pub running: usize,
}

impl QueueState {
    /// Whether a submit now would be refused.
    pub fn is_full(&self) -> bool {
        self.queued >= self.slots
    }
}

/// The pending result of a submitted job. Await it; dropping it cancels the job.
#[derive(Debug)]
pub struct JobHandle {
    rx: oneshot::Receiver<Result<RunOutput, InferenceError>>,
    cancel: CancelToken,
}

impl JobHandle {
    /// Cancels the job (same as its [`CancelToken`]).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Blocks the current thread until the result arrives; for callers outside an async
    /// runtime (benchmarks, CLI tools). Must not be called from async code.
    pub fn wait(self) -> Result<RunOutput, InferenceError> {
        self.rx
            .blocking_recv()
            .unwrap_or(Err(InferenceError::ShuttingDown))
    }
}

impl Future for JobHandle {
    type Output = Result<RunOutput, InferenceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped sender means the engine went away without answering.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(InferenceError::ShuttingDown)))
    }
}

/// A queued job with its reply channel. Dropped unanswered (a worker failed while holding
/// it), it answers [`InferenceError::WorkerFailed`], so no submitter waits forever.
struct Pending {
    job: Job,
    reply: Option<oneshot::Sender<Result<RunOutput, InferenceError>>>,
    submitted: Instant,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Err(InferenceError::WorkerFailed(
                "the job was dropped unanswered".into(),
            )));
        }
    }
}

impl Pending {
    /// Withdrawn by its token, or nobody is waiting for the answer.
    fn abandoned(&self) -> bool {
        self.job.cancel.is_cancelled() || self.reply.as_ref().is_none_or(|r| r.is_closed())
    }

    fn answer(mut self, result: Result<RunOutput, InferenceError>) {
        // The submitter may have dropped its handle; then nobody wants the answer.
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(result);
        }
    }

    fn timed_out(&self, now: Instant) -> InferenceError {
        InferenceError::TimedOut {
            elapsed: now.saturating_duration_since(self.submitted),
            limit: self.job.deadline.saturating_duration_since(self.submitted),
        }
    }
}

struct Queue {
    jobs: VecDeque<Pending>,
    closed: bool,
}

/// State shared by the engine handles and the worker threads.
struct Shared {
    config: EngineConfig,
    store: Arc<ModelStore>,
    queue: Mutex<Queue>,
    ready: Condvar,
    cache: PlanCache<LoadedModel>,
    running: AtomicUsize,
    shutdown: AtomicBool,
    run_options: RunOptions,
    /// The runner executable and its setup, when models run isolated.
    isolation: Option<(PathBuf, Setup)>,
    /// Model signatures reported by runners (isolated mode; `cache` stays empty).
    infos: PlanCache<ModelInfo>,
    /// A runner for [`Engine::inspect`] and [`Engine::warm`], called off the workers.
    inspector: Mutex<Option<Runner>>,
    /// The GPU path, once attached with [`Engine::use_gpu`].
    #[cfg(feature = "gpu")]
    gpu: std::sync::OnceLock<crate::gpu::GpuExecutor>,
    /// ONNX Runtime, when configured.
    ort: Option<&'static onnxrt::Runtime>,
    /// Sessions loaded in this process (in-process mode).
    ort_models: PlanCache<OrtModel>,
    /// Signatures of models loaded in runners' ONNX Runtime (isolated mode).
    ort_infos: PlanCache<ModelInfo>,
    /// Stops in-process ONNX Runtime runs at their deadline.
    watchdog: Option<Watchdog>,
    /// Set when the engine closes (the watchdog stops runs with it).
    stopping: CancelToken,
}

/// Owns the worker threads; the last engine handle to go stops and joins them.
struct Workers {
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.close();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            if h.join().is_err() {
                warn!("inference worker thread panicked");
            }
        }
    }
}

/// Runs ONNX models from a [`ModelStore`] on worker threads. Cheap to clone; all clones share
/// one queue and one set of workers, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    _workers: Arc<Workers>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.shared.config)
            .field("queue", &self.queue())
            .finish()
    }
}

impl Engine {
    /// Starts the worker threads.
    pub fn new(mut config: EngineConfig, store: Arc<ModelStore>) -> Result<Self, InferenceError> {
        if config.workers == 0 {
            config.workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        config.queue_slots = config.queue_slots.max(1);
        config.max_batch = config.max_batch.max(1);
        config.threads_per_run = config.threads_per_run.max(1);
        let mut run_options = RunOptions::default();
        if config.threads_per_run > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(config.threads_per_run)
                .thread_name(|i| format!("crank-infer-mm-{i}"))
                .build()
                .map_err(|e| InferenceError::Startup(format!("thread pool: {e}")))?;
            run_options.executor = Some(multithread::Executor::MultiThread(Arc::new(pool)));
        }
        let exe = config
            .runner_exe
            .clone()
            .or_else(crate::runner::default_exe);
        let isolation = match exe {
            Some(exe) if config.isolate => Some((exe, runner_setup(&config))),
            _ => None,
        };
        // Loaded here even when runners run the models: a missing or incompatible library is
        // the owner's to fix, and it is better said at start than at the first task.
        let ort = match &config.onnxruntime {
            Some(lib) => Some(onnxrt::runtime(lib, config.threads_per_run)?),
            None => None,
        };
        let stopping = CancelToken::new();
        let watchdog = match ort {
            Some(_) if isolation.is_none() => Some(Watchdog::start(stopping.clone())?),
            _ => None,
        };
        let shared = Arc::new(Shared {
            ort,
            ort_models: PlanCache::new(config.plan_cache_entries),
            ort_infos: PlanCache::new(config.plan_cache_entries),
            watchdog,
            stopping,
            cache: PlanCache::new(config.plan_cache_entries),
            infos: PlanCache::new(config.plan_cache_entries),
            isolation,
            inspector: Mutex::new(None),
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(config.queue_slots),
                closed: false,
            }),
            config,
            store,
            ready: Condvar::new(),
            running: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            run_options,
            #[cfg(feature = "gpu")]
            gpu: std::sync::OnceLock::new(),
        });
        let workers = Arc::new(Workers {
            shared: shared.clone(),
            handles: Mutex::new(Vec::new()),
        });
        for i in 0..shared.config.workers {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("crank-infer-{i}"))
                .spawn(move || worker(s))
                .map_err(|e| InferenceError::Startup(format!("worker thread: {e}")))?;
            workers
                .handles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(h);
        }
        debug!(
            workers = shared.config.workers,
            slots = shared.config.queue_slots,
            isolated = shared.isolation.is_some(),
            onnxruntime = shared.ort.map(|rt| rt.version.as_str()),
            "inference engine started"
        );
        Ok(Self {
            shared,
            _workers: workers,
        })
    }

    /// The effective configuration (with `workers` resolved).
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The model store the engine reads from.
    pub fn store(&self) -> &Arc<ModelStore> {
        &self.shared.store
    }

    /// Loads (or finds cached) a model and describes its inputs and outputs. Blocks while
    /// the model is parsed and optimised the first time; call it from a blocking context.
    pub fn inspect(&self, model: &ModelId) -> Result<ModelInfo, InferenceError> {
        self.shared.info(model)
    }

    /// Loads a model into the plan cache ahead of its first job.
    pub fn warm(&self, model: &ModelId) -> Result<(), InferenceError> {
        self.shared.info(model).map(|_| ())
    }

    /// The version of ONNX Runtime the `onnxruntime` path runs on (`1.32.0`); `None` when
    /// the engine has no such path.
    pub fn onnxruntime_version(&self) -> Option<&str> {
        self.shared.ort.map(|rt| rt.version.as_str())
    }

    /// Loads (or finds cached) a model on the `onnxruntime` path and describes it there;
    /// blocks like [`Engine::inspect`]. Fails when the engine has no such path or ONNX
    /// Runtime refuses the model (the error names the operator it lacks).
    pub fn inspect_onnxruntime(&self, model: &ModelId) -> Result<ModelInfo, InferenceError> {
        self.shared.ort_info(model)
    }

    /// Whether models run in isolated runner processes.
    pub fn is_isolated(&self) -> bool {
        self.shared.isolation.is_some()
    }

    /// Starts (if needed) the runner used for [`Engine::inspect`] and reports the sandbox
    /// it applied to itself; `None` when models run in-process.
    pub fn runner_sandbox(&self) -> Option<Result<SandboxReport, InferenceError>> {
        let (exe, setup) = self.shared.isolation.as_ref()?;
        let mut inspector = self
            .shared
            .inspector
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let runner = inspector.get_or_insert_with(|| Runner::new(exe.clone(), setup.clone()));
        Some(runner.sandbox())
    }

    /// Queues a job. Never blocks; refuses at once when the queue is full, the inputs break a
    /// limit, the model is not stored, or the job is already cancelled or past its deadline.
    pub fn submit(&self, job: Job) -> Result<JobHandle, InferenceError> {
        let s = &self.shared;
        if s.shutdown.load(Ordering::Acquire) {
            return Err(InferenceError::ShuttingDown);
        }
        if job.cancel.is_cancelled() {
            return Err(InferenceError::Cancelled);
        }
        let limit = s.config.max_input_elements;
        let mut total = 0u64;
        for t in &job.inputs {
            t.tensor.validate(limit).map_err(|e| match e {
                TensorError::TooManyElements { actual, limit } => {
                    InferenceError::TooManyElements { actual, limit }
                }
                other => InferenceError::InputInvalid(format!("input `{}`: {other}", t.name)),
            })?;
            total = total.saturating_add(t.tensor.data.len() as u64);
        }
        if total > limit {
            return Err(InferenceError::TooManyElements {
                actual: total,
                limit,
            });
        }
        if !s.is_loaded(&job.model) {
            match s.store.size(&job.model) {
                None => return Err(InferenceError::ModelNotFound(job.model)),
                Some(size) if size > s.config.max_model_bytes => {
                    return Err(InferenceError::ModelTooLarge {
                        size,
                        limit: s.config.max_model_bytes,
                    });
                }
                Some(_) => {}
            }
        }
        let now = Instant::now();
        if job.deadline <= now {
            return Err(InferenceError::TimedOut {
                elapsed: Duration::ZERO,
                limit: Duration::ZERO,
            });
        }
        let (tx, rx) = oneshot::channel();
        let cancel = job.cancel.clone();
        {
            let mut q = s.lock_queue();
            if q.closed {
                return Err(InferenceError::ShuttingDown);
            }
            if q.jobs.len() >= s.config.queue_slots {
                return Err(InferenceError::QueueFull {
                    slots: s.config.queue_slots,
                    workers: s.config.workers,
                });
            }
            q.jobs.push_back(Pending {
                job,
                reply: Some(tx),
                submitted: now,
            });
        }
        s.ready.notify_one();
        Ok(JobHandle { rx, cancel })
    }

    /// Runs models on this GPU from now on, where they are supported; the others (and any
    /// GPU run that fails) stay on tract. Returns false if a GPU was already attached.
    #[cfg(feature = "gpu")]
    pub fn use_gpu(&self, runtime: crate::gpu::GpuRuntime) -> bool {
        self.shared
            .gpu
            .set(crate::gpu::GpuExecutor::new(runtime))
            .is_ok()
    }

    /// The attached GPU path, if any.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&crate::gpu::GpuExecutor> {
        self.shared.gpu.get()
    }

    /// Workers, capacity, waiting and running jobs.
    pub fn queue(&self) -> QueueState {
        let queued = self.shared.lock_queue().jobs.len();
        QueueState {
            workers: self.shared.config.workers,
            slots: self.shared.config.queue_slots,
            queued,
            running: self.shared.running.load(Ordering::Acquire),
        }
    }

    /// How a cached model's plans are made and, for per-shape plans, how often a task's
    /// shapes found one built. `None` when the model is not loaded in this process (not yet
    /// run, evicted, or run by the isolated runner, which keeps its own plans).
    pub fn plan_stats(&self, model: &ModelId) -> Option<PlanStats> {
        self.shared.cache.peek(model).map(|m| m.plan_stats())
    }

    /// Models currently loaded in the plan cache, most recently used first.
    pub fn cached_models(&self) -> Vec<ModelId> {
        if self.shared.isolation.is_some() {
            self.shared.infos.ids()
        } else {
            self.shared.cache.ids()
        }
    }

    /// Stops taking jobs, fails queued ones with [`InferenceError::ShuttingDown`] and stops
    /// running ones at their next operator. Worker threads exit; dropping the last handle
    /// joins them.
    pub fn shutdown(&self) {
        self.shared.close();
    }
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // Queue operations cannot leave it inconsistent mid-way, so a poisoned lock is usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.stopping.cancel();
        let drained: Vec<Pending> = {
            let mut q = self.lock_queue();
            q.closed = true;
            q.jobs.drain(..).collect()
        };
        self.ready.notify_all();
        for p in drained {
            p.answer(Err(InferenceError::ShuttingDown));
        }
    }

    /// Refuses a stored model larger than the engine loads.
    fn check_size(&self, id: &ModelId) -> Result<(), InferenceError> {
        match self.store.size(id) {
            Some(size) if size > self.config.max_model_bytes => {
                Err(InferenceError::ModelTooLarge {
                    size,
                    limit: self.config.max_model_bytes,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether the model's plan (in-process) or signature (isolated) is cached.
    fn is_loaded(&self, id: &ModelId) -> bool {
        self.cache.peek(id).is_some() || self.infos.peek(id).is_some()
    }

    /// The batching probe's budget: a probe row is never larger than a job may be.
    fn probe_budget(&self) -> Option<u64> {
        self.config
            .batching
            .then_some(self.config.max_input_elements)
    }

    /// Loads a model in this process (in-process mode).
    fn load(&self, id: &ModelId) -> Result<Arc<LoadedModel>, InferenceError> {
        self.cache.get_or_load(id, || {
            self.check_size(id)?;
            let bytes = self.store.read(id)?;
            let started = Instant::now();
            let m = LoadedModel::load(*id, &bytes, &self.run_options, self.probe_budget())?;
            debug!(
                model = %id,
                bytes = bytes.len(),
                millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                batchable = m.info.batchable,
                "model loaded"
            );
            Ok(m)
        })
    }

    /// A model's signature, loading it in `runner` (isolated mode) on a miss.
    fn load_isolated(
        &self,
        id: &ModelId,
        runner: &mut Runner,
    ) -> Result<Arc<ModelInfo>, InferenceError> {
        self.infos.get_or_load(id, || {
            self.check_size(id)?;
            let deadline = Instant::now()
                .checked_add(self.config.max_run_time)
                .unwrap_or_else(Instant::now);
            runner.load(Backend::Tract, id, &self.store, deadline)
        })
    }

    /// A model's ONNX Runtime session, loading it in this process on a miss.
    fn load_ort(&self, id: &ModelId) -> Result<Arc<OrtModel>, InferenceError> {
        let Some(rt) = self.ort else {
            return Err(no_onnxruntime());
        };
        self.ort_models.get_or_load(id, || {
            self.check_size(id)?;
            let bytes = self.store.read(id)?;
            let started = Instant::now();
            let m = OrtModel::load(rt, *id, &bytes)?;
            debug!(
                model = %id,
                millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "model loaded in onnxruntime"
            );
            Ok(m)
        })
    }

    /// A model's ONNX Runtime signature, loading it in `runner` (isolated mode) on a miss.
    fn load_ort_isolated(
        &self,
        id: &ModelId,
        runner: &mut Runner,
    ) -> Result<Arc<ModelInfo>, InferenceError> {
        if self.ort.is_none() {
            return Err(no_onnxruntime());
        }
        self.ort_infos.get_or_load(id, || {
            self.check_size(id)?;
            let deadline = Instant::now()
                .checked_add(self.config.max_run_time)
                .unwrap_or_else(Instant::now);
            runner.load(Backend::Onnxruntime, id, &self.store, deadline)
        })
    }

    /// A model's ONNX Runtime signature, for callers off the worker threads.
    fn ort_info(&self, id: &ModelId) -> Result<ModelInfo, InferenceError> {
        let Some((exe, setup)) = &self.isolation else {
            return Ok(self.load_ort(id)?.info.clone());
        };
        if let Some(info) = self.ort_infos.peek(id) {
            return Ok((*info).clone());
        }
        let mut inspector = self.inspector.lock().unwrap_or_else(|p| p.into_inner());
        let runner = inspector.get_or_insert_with(|| Runner::new(exe.clone(), setup.clone()));
        Ok((*self.load_ort_isolated(id, runner)?).clone())
    }

    /// A model's signature, for callers off the worker threads: tract's, or, when tract
    /// refuses the model and the engine has ONNX Runtime, that path's.
    fn info(&self, id: &ModelId) -> Result<ModelInfo, InferenceError> {
        match self.tract_info(id) {
            Err(e) if self.ort.is_some() && refused_by_runtime(&e) => {
                self.ort_info(id).map_err(|_| e)
            }
            other => other,
        }
    }

    fn tract_info(&self, id: &ModelId) -> Result<ModelInfo, InferenceError> {
        let Some((exe, setup)) = &self.isolation else {
            return Ok(self.load(id)?.info.clone());
        };
        if let Some(info) = self.infos.peek(id) {
            return Ok((*info).clone());
        }
        let mut inspector = self.inspector.lock().unwrap_or_else(|p| p.into_inner());
        let runner = inspector.get_or_insert_with(|| Runner::new(exe.clone(), setup.clone()));
        Ok((*self.load_isolated(id, runner)?).clone())
    }

    /// Blocks until a live job is queued; `None` once the engine is closed.
    fn next_job(&self) -> Option<Pending> {
        let mut q = self.lock_queue();
        loop {
            if q.closed {
                return None;
            }
            let now = Instant::now();
            while let Some(p) = q.jobs.pop_front() {
                if p.abandoned() {
                    p.answer(Err(InferenceError::Cancelled));
                } else if p.job.deadline <= now {
                    let e = p.timed_out(now);
                    p.answer(Err(e));
                } else {
                    // Paired with the decrement in the worker's `Running` guard.
                    self.running.fetch_add(1, Ordering::AcqRel);
                    return Some(p);
                }
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes queued jobs for `model` to run with one already taken. Shares them with idle
    /// workers: with `k` idle workers, this one takes about 1/(k+1) of the matching jobs.
    fn take_batch_mates(&self, model: &ModelId) -> Vec<Pending> {
        let mut q = self.lock_queue();
        let matching = q.jobs.iter().filter(|p| p.job.model == *model).count();
        if matching == 0 {
            return Vec::new();
        }
        let running = self.running.load(Ordering::Acquire);
        let idle = self.config.workers.saturating_sub(running);
        let share = matching.div_ceil(idle.saturating_add(1));
        let want = share.min(self.config.max_batch.saturating_sub(1));
        let mut taken = Vec::with_capacity(want);
        let mut i = 0;
        while i < q.jobs.len() && taken.len() < want {
            if q.jobs[i].job.model == *model && !q.jobs[i].abandoned() {
                if let Some(p) = q.jobs.remove(i) {
                    taken.push(p);
                }
            } else {
                i = i.saturating_add(1);
            }
        }
        // Paired with the decrement in the worker's `Running` guard.
        self.running.fetch_add(taken.len(), Ordering::AcqRel);
        taken
    }
}

/// Jobs a worker holds, counted in [`QueueState::running`]; the count drops when the
/// guard does, even if the worker's turn ends in a caught panic.
struct Running<'a> {
    shared: &'a Shared,
    jobs: usize,
}

impl Running<'_> {
    fn add(&mut self, n: usize) {
        self.jobs = self.jobs.saturating_add(n);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(self.jobs, Ordering::AcqRel);
    }
}

fn worker(shared: Arc<Shared>) {
    // Started on the first job; replaced after a crash, a kill or a spent CPU budget.
    let mut runner = shared
        .isolation
        .as_ref()
        .map(|(exe, setup)| Runner::new(exe.clone(), setup.clone()));
    while let Some(first) = shared.next_job() {
        let mut running = Running {
            shared: &shared,
            jobs: 1,
        };
        // Loading, probing and running are all inside: a panic anywhere fails this turn's
        // jobs (their `Pending` answers as it drops) and the worker carries on.
        let turn = catch_unwind(AssertUnwindSafe(|| {
            serve_turn(&shared, runner.as_mut(), first, &mut running);
        }));
        if let Err(p) = turn {
            warn!(panic = %panic_text(&*p), "inference worker caught a panic and carries on");
            if let Some(r) = runner.as_mut() {
                r.kill();
            }
        }
    }
}

/// Where a batch runs.
enum Exec<'a> {
    /// On this thread, with a plan loaded in this process.
    InProcess(&'a LoadedModel),
    /// In this worker's runner process.
    Runner(&'a mut Runner),
}

/// A model loaded for tract: its plan here, or its signature from the runner.
enum Loaded {
    InProcess(Arc<LoadedModel>),
    Isolated(Arc<ModelInfo>),
}

/// Loads the first job's model, gathers batch mates and runs them; a model tract refuses
/// goes to ONNX Runtime when the engine has it, and one ONNX Runtime refuses to tract.
fn serve_turn(
    shared: &Shared,
    mut runner: Option<&mut Runner>,
    first: Pending,
    running: &mut Running<'_>,
) {
    let tried_ort = first.job.path == Some(ExecPath::Onnxruntime) && shared.ort.is_some();
    let first = if tried_ort {
        match serve_ort(shared, runner.as_deref_mut(), first) {
            Some(back) => back,
            None => return,
        }
    } else {
        first
    };
    let model_id = first.job.model;
    let loaded = match runner.as_deref_mut() {
        None => shared.load(&model_id).map(Loaded::InProcess),
        Some(r) => shared.load_isolated(&model_id, r).map(Loaded::Isolated),
    };
    match loaded {
        Ok(Loaded::InProcess(model)) => {
            let jobs = with_batch_mates(shared, &model.info, first, running);
            run_jobs(shared, &model.info, Exec::InProcess(&model), jobs);
        }
        Ok(Loaded::Isolated(info)) => {
            let jobs = with_batch_mates(shared, &info, first, running);
            if let Some(r) = runner {
                run_jobs(shared, &info, Exec::Runner(r), jobs);
            }
        }
        // tract refuses the model: ONNX Runtime may take it (unless it just refused too).
        Err(e) if !tried_ort && shared.ort.is_some() && refused_by_runtime(&e) => {
            debug!(model = %model_id, error = %e, "tract cannot load the model; onnxruntime runs it");
            if let Some(back) = serve_ort(shared, runner, first) {
                back.answer(Err(e));
            }
        }
        Err(e) => {
            debug!(model = %model_id, error = %e, "model could not be loaded");
            first.answer(Err(e));
        }
    }
}

/// Runs one job on ONNX Runtime and answers it; hands the job back for tract when ONNX
/// Runtime cannot load its model.
fn serve_ort(shared: &Shared, runner: Option<&mut Runner>, p: Pending) -> Option<Pending> {
    let id = p.job.model;
    let limit = shared.config.max_run_time;
    let (result, run) = match runner {
        None => {
            let model = match shared.load_ort(&id) {
                Ok(m) => m,
                Err(e) => {
                    debug!(model = %id, error = %e, "onnxruntime cannot load the model; tract runs it");
                    return Some(p);
                }
            };
            if let Err(e) = bind_inputs(&model.info, &p.job.inputs) {
                p.answer(Err(e));
                return None;
            }
            let started = Instant::now();
            let cap = started.checked_add(limit).unwrap_or(started);
            let ran = onnxrt::run_options().and_then(|options| {
                let options = Arc::new(options);
                let _watched = shared.watchdog.as_ref().map(|dog| {
                    dog.watch(
                        options.clone(),
                        p.job.deadline.min(cap),
                        vec![p.job.cancel.clone()],
                    )
                });
                let cpu_start = cpu_clock(shared);
                let outputs = catch_unwind(AssertUnwindSafe(|| model.run(&p.job.inputs, &options)))
                    .unwrap_or_else(|e| {
                        Err(InferenceError::Inference(format!(
                            "runtime panicked: {}",
                            panic_text(&*e)
                        )))
                    });
                outputs.map(|o| (o, cpu_clock(shared).saturating_sub(cpu_start)))
            });
            let run = started.elapsed();
            // A run the watchdog ended reports ONNX Runtime's "terminate flag" error; say why.
            let ran = ran.map_err(|e| {
                let now = Instant::now();
                if shared.shutdown.load(Ordering::Acquire) {
                    InferenceError::ShuttingDown
                } else if p.job.cancel.is_cancelled() {
                    InferenceError::Cancelled
                } else if now >= cap {
                    InferenceError::TimedOut {
                        elapsed: run,
                        limit,
                    }
                } else if p.job.deadline <= now {
                    p.timed_out(now)
                } else {
                    e
                }
            });
            (ran, run)
        }
        Some(runner) => {
            let info = match shared.load_ort_isolated(&id, runner) {
                Ok(i) => i,
                Err(e) => {
                    debug!(model = %id, error = %e, "onnxruntime cannot load the model; tract runs it");
                    return Some(p);
                }
            };
            if let Err(e) = bind_inputs(&info, &p.job.inputs) {
                p.answer(Err(e));
                return None;
            }
            let started = Instant::now();
            let cap = started.checked_add(limit).unwrap_or(started);
            let jobs = std::slice::from_ref(&p);
            let check = || should_stop(shared, jobs, cap);
            let inputs: [&[NamedTensor]; 1] = [p.job.inputs.as_slice()];
            let ran = runner.run(
                Backend::Onnxruntime,
                &id,
                &shared.store,
                &inputs,
                limit,
                &check,
            );
            let run = started.elapsed();
            let now = Instant::now();
            let ran = match ran {
                Ok(mut ran) => match ran.jobs.pop() {
                    Some(outputs) if ran.jobs.is_empty() => {
                        outputs.map(|o| (o, Duration::from_micros(ran.cpu_micros)))
                    }
                    _ => Err(InferenceError::RunnerCrashed(
                        "it answered a different number of jobs".into(),
                    )),
                },
                Err(RunError::Failed(e)) => Err(e),
                Err(RunError::Stopped(stop)) => Err(match stop {
                    Stop::Shutdown => InferenceError::ShuttingDown,
                    Stop::RunTime => InferenceError::TimedOut {
                        elapsed: run,
                        limit,
                    },
                    Stop::Cancelled | Stop::Deadline if p.abandoned() => InferenceError::Cancelled,
                    Stop::Cancelled | Stop::Deadline => p.timed_out(now),
                }),
            };
            (ran, run)
        }
    };
    let now = Instant::now();
    let started = now.checked_sub(run).unwrap_or(now);
    let answer = match result {
        Err(e) => {
            if matches!(
                e,
                InferenceError::Inference(_) | InferenceError::RunnerCrashed(_)
            ) {
                warn!(model = %id, error = %e, "onnxruntime run failed");
            }
            Err(e)
        }
        Ok(_) if p.abandoned() => Err(InferenceError::Cancelled),
        Ok(_) if p.job.deadline <= now => Err(p.timed_out(now)),
        Ok((outputs, cpu)) => Ok(RunOutput {
            outputs,
            run_micros: micros(run),
            cpu_micros: micros(cpu),
            queue_micros: micros(started.saturating_duration_since(p.submitted)),
            path: ExecPath::Onnxruntime,
            batch_size: 1,
        }),
    };
    p.answer(answer);
    None
}

/// CPU time to charge a run in this process: the thread's, or with an ONNX Runtime pool of
/// several threads, the process's (the pool works on other threads).
fn cpu_clock(shared: &Shared) -> Duration {
    if shared.config.threads_per_run > 1 {
        crate::device::process_cpu_time()
    } else {
        crate::device::thread_cpu_time()
    }
}

fn no_onnxruntime() -> InferenceError {
    InferenceError::Startup("this engine has no ONNX Runtime (`[engine] onnxruntime`)".into())
}

/// Errors that say the runtime cannot take the model (rather than that it is missing,
/// too large or the engine is busy): another runtime may.
fn refused_by_runtime(e: &InferenceError) -> bool {
    matches!(
        e,
        InferenceError::ModelInvalid(_)
            | InferenceError::UnsupportedOperator { .. }
            | InferenceError::Inference(_)
    )
}

fn with_batch_mates(
    shared: &Shared,
    info: &ModelInfo,
    first: Pending,
    running: &mut Running<'_>,
) -> Vec<Pending> {
    let mut jobs = vec![first];
    if shared.config.batching && info.batchable && shared.config.max_batch > 1 {
        let mates = shared.take_batch_mates(&info.id);
        running.add(mates.len());
        jobs.extend(mates);
    }
    jobs
}

/// Why a run was stopped between operators (or, isolated, its runner was killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Every job in the run was cancelled or abandoned.
    Cancelled,
    /// Every job in the run passed its deadline.
    Deadline,
    /// The run exceeded the engine's run-time cap.
    RunTime,
    /// The engine is shutting down.
    Shutdown,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run stopped: {self:?}")
    }
}

impl std::error::Error for Stop {}

/// Each job's outputs (or its own error), and the run's thread CPU time.
type BatchOutputs = (Vec<Result<Vec<NamedTensor>, InferenceError>>, Duration);

/// Whether to stop a run of `jobs` now.
fn should_stop(shared: &Shared, jobs: &[Pending], cap: Instant) -> Option<Stop> {
    if shared.shutdown.load(Ordering::Relaxed) {
        return Some(Stop::Shutdown);
    }
    let now = Instant::now();
    if now >= cap {
        return Some(Stop::RunTime);
    }
    if jobs.iter().all(Pending::abandoned) {
        return Some(Stop::Cancelled);
    }
    if jobs.iter().all(|p| p.abandoned() || p.job.deadline <= now) {
        return Some(Stop::Deadline);
    }
    None
}

/// The number of rows of a job's inputs (axis 0 of its first input).
fn rows_of(inputs: &[&crank_protocol::Tensor]) -> u64 {
    inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1)
}

/// Validates, batches, runs and answers a group of jobs for one model.
fn run_jobs(shared: &Shared, info: &ModelInfo, exec: Exec<'_>, jobs: Vec<Pending>) {
    // Jobs whose inputs do not fit the model are answered now and leave the batch.
    let mut valid = Vec::with_capacity(jobs.len());
    for p in jobs {
        match bind_inputs(info, &p.job.inputs) {
            Ok(_) => valid.push(p),
            Err(e) => p.answer(Err(e)),
        }
    }
    if valid.is_empty() {
        return;
    }
    #[cfg(feature = "gpu")]
    let Some(valid) = run_jobs_gpu(shared, info, valid) else {
        return;
    };
    let rows: Vec<u64> = valid
        .iter()
        .map(|p| bind_inputs(info, &p.job.inputs).map_or(1, |b| rows_of(&b)))
        .collect();
    let started = Instant::now();
    let limit = shared.config.max_run_time;
    let cap = started.checked_add(limit).unwrap_or(started);
    let check = || should_stop(shared, &valid, cap);
    let inputs: Vec<&[NamedTensor]> = valid.iter().map(|p| p.job.inputs.as_slice()).collect();
    let result: Result<BatchOutputs, RunError> = match exec {
        Exec::InProcess(model) => run_in_process(model, &inputs, check),
        Exec::Runner(runner) => runner
            .run(
                Backend::Tract,
                &info.id,
                &shared.store,
                &inputs,
                limit,
                &check,
            )
            .map(|ran| (ran.jobs, Duration::from_micros(ran.cpu_micros))),
    };
    drop(inputs);
    let run = started.elapsed();
    let now = Instant::now();
    match result {
        Ok((outputs, cpu)) => {
            let total_rows = rows.iter().fold(0u64, |a, r| a.saturating_add(*r));
            let batch_size = valid.len();
            for ((p, r), outputs) in valid.into_iter().zip(rows).zip(outputs) {
                let answer = if p.abandoned() {
                    Err(InferenceError::Cancelled)
                } else if p.job.deadline <= now {
                    Err(p.timed_out(now))
                } else {
                    outputs.map(|outputs| RunOutput {
                        outputs,
                        run_micros: micros(run),
                        cpu_micros: micros(cpu.mul_f64(r as f64 / total_rows.max(1) as f64)),
                        queue_micros: micros(started.saturating_duration_since(p.submitted)),
                        path: ExecPath::Cpu,
                        batch_size,
                    })
                };
                p.answer(answer);
            }
        }
        Err(RunError::Stopped(stop)) => {
            for p in valid {
                let e = match stop {
                    Stop::Shutdown => InferenceError::ShuttingDown,
                    Stop::RunTime => InferenceError::TimedOut {
                        elapsed: run,
                        limit,
                    },
                    Stop::Cancelled | Stop::Deadline if p.abandoned() => InferenceError::Cancelled,
                    Stop::Cancelled | Stop::Deadline => p.timed_out(now),
                };
                p.answer(Err(e));
            }
        }
        Err(RunError::Failed(e)) => {
            warn!(model = %info.id, error = %e, "inference failed");
            for p in valid {
                p.answer(Err(e.clone()));
            }
        }
    }
}

/// Runs a batch on this thread and splits the outputs by job.
fn run_in_process(
    model: &LoadedModel,
    jobs: &[&[NamedTensor]],
    check: impl Fn() -> Option<Stop>,
) -> Result<BatchOutputs, RunError> {
    let (inputs, rows) = build_inputs(model, jobs).map_err(RunError::Failed)?;
    let (outputs, cpu) = run_plan(model, inputs, check)?;
    let batch = jobs.len();
    let mut start = 0usize;
    let per_job = rows
        .iter()
        .map(|&r| {
            let end = usize::try_from(r).ok().and_then(|r| start.checked_add(r));
            let Some(end) = end else {
                return Err(InferenceError::Inference("row count overflows".into()));
            };
            let part = split_outputs(model, &outputs, batch, start, end);
            start = end;
            part
        })
        .collect();
    Ok((per_job, cpu))
}

/// Runs validated jobs on the GPU when one is attached and takes the model; answers them
/// and returns `None`, or returns the jobs for tract.
#[cfg(feature = "gpu")]
fn run_jobs_gpu(shared: &Shared, info: &ModelInfo, valid: Vec<Pending>) -> Option<Vec<Pending>> {
    let Some(gpu) = shared.gpu.get() else {
        return Some(valid);
    };
    // A job pinned to the CPU (its worker bid the tract path) keeps its whole batch there.
    if valid.iter().any(|p| p.job.path == Some(ExecPath::Cpu)) {
        return Some(valid);
    }
    let bound: Vec<Vec<&crank_protocol::Tensor>> = match valid
        .iter()
        .map(|p| bind_inputs(info, &p.job.inputs))
        .collect()
    {
        Ok(b) => b,
        Err(_) => return Some(valid),
    };
    let cap = Instant::now()
        .checked_add(shared.config.max_run_time)
        .unwrap_or_else(Instant::now);
    let deadline = valid
        .iter()
        .map(|p| p.job.deadline)
        .max()
        .map_or(cap, |d| d.min(cap));
    let stop = || shared.shutdown.load(Ordering::Relaxed) || valid.iter().all(Pending::abandoned);
    let started = Instant::now();
    // Padding a batch with zero rows is exact only when rows are known to be independent,
    // which the batching probe established.
    let pad_rows = shared.config.batching && info.batchable;
    let done = gpu.run_batch(&shared.store, info, &bound, pad_rows, deadline, &stop);
    drop(bound);
    let Some(done) = done else {
        return Some(valid);
    };
    let now = Instant::now();
    // Batched models take one batch axis, so any input's first dimension is the row count.
    let rows_of = |p: &Pending| {
        p.job
            .inputs
            .first()
            .and_then(|t| t.tensor.shape.first().copied())
            .unwrap_or(1)
    };
    let total_rows = valid.iter().map(rows_of).fold(0u64, u64::saturating_add);
    let batch_size = valid.len();
    for (p, outputs) in valid.into_iter().zip(done.outputs) {
        let rows = rows_of(&p);
        let answer = if p.abandoned() {
            Err(InferenceError::Cancelled)
        } else if p.job.deadline <= now {
            Err(p.timed_out(now))
        } else {
            Ok(RunOutput {
                outputs,
                run_micros: micros(done.run),
                cpu_micros: micros(done.cpu.mul_f64(rows as f64 / total_rows.max(1) as f64)),
                queue_micros: micros(started.saturating_duration_since(p.submitted)),
                path: ExecPath::Gpu,
                batch_size,
            })
        };
        p.answer(answer);
    }
    None
}

/// The runtime inputs for a group of jobs (already checked against the model), and each
/// job's row count.
pub(crate) fn build_inputs(
    model: &LoadedModel,
    jobs: &[&[NamedTensor]],
) -> Result<(TVec<TValue>, Vec<u64>), InferenceError> {
    let bound: Vec<Vec<&crank_protocol::Tensor>> = jobs
        .iter()
        .map(|inputs| model.bind(inputs))
        .collect::<Result<_, _>>()?;
    let rows: Vec<u64> = bound.iter().map(|b| rows_of(b)).collect();
    let conv = |e: convert::ConvertError| InferenceError::InputInvalid(e.to_string());
    let mut inputs = TVec::new();
    for (ix, (spec, want)) in model
        .info
        .inputs
        .iter()
        .zip(model.input_types())
        .enumerate()
    {
        let parts: Vec<&crank_protocol::Tensor> =
            bound.iter().filter_map(|b| b.get(ix).copied()).collect();
        let tensor = match parts.as_slice() {
            [one] => convert::to_tract(one).map_err(conv)?,
            _ => convert::to_tract(&concat_rows(&parts)?).map_err(conv)?,
        };
        if tensor.datum_type() != *want {
            return Err(InferenceError::InputInvalid(format!(
                "input `{}` expects {}, got {}",
                spec.name,
                convert::dtype_name(*want),
                convert::dtype_name(tensor.datum_type())
            )));
        }
        inputs.push(tensor.into_tvalue());
    }
    Ok((inputs, rows))
}

/// How a run ended without outputs.
pub(crate) enum RunError {
    /// Stopped by a check (cancellation, deadline, run-time cap, shutdown).
    Stopped(Stop),
    /// The runtime (or the runner) failed.
    Failed(InferenceError),
}

/// Runs the plan op by op, asking `check` between operators whether to stop. Returns the
/// outputs and the thread CPU time spent.
pub(crate) fn run_plan(
    model: &LoadedModel,
    inputs: TVec<TValue>,
    check: impl Fn() -> Option<Stop>,
) -> Result<(TVec<TValue>, Duration), RunError> {
    let plan = model.plan_for(&inputs).map_err(RunError::Failed)?;
    let mut state = LoadedModel::fresh_state(&plan).map_err(RunError::Failed)?;
    let cpu_start = crate::device::thread_cpu_time();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        state.run_plan_with_eval(inputs, |ctx, op_state, node, values| {
            if let Some(stop) = check() {
                return Err(TractError::new(stop));
            }
            tract_onnx::tract_core::plan::eval(ctx, op_state, node, values)
        })
    }));
    let cpu = crate::device::thread_cpu_time().saturating_sub(cpu_start);
    match outcome {
        Ok(Ok(outputs)) => Ok((outputs, cpu)),
        Ok(Err(e)) => match e.downcast_ref::<Stop>() {
            Some(stop) => Err(RunError::Stopped(*stop)),
            None => Err(RunError::Failed(InferenceError::Inference(format!(
                "{e:#}"
            )))),
        },
        Err(p) => Err(RunError::Failed(InferenceError::Inference(format!(
            "runtime panicked: {}",
            panic_text(&*p)
        )))),
    }
}

/// One job's rows of every output.
pub(crate) fn split_outputs(
    model: &LoadedModel,
    outputs: &[TValue],
    batch_size: usize,
    start: usize,
    end: usize,
) -> Result<Vec<NamedTensor>, InferenceError> {
    outputs
        .iter()
        .zip(&model.info.outputs)
        .map(|(t, info)| {
            let rows = (batch_size > 1).then_some((start, end));
            convert::from_tract(t, rows)
                .map(|tensor| NamedTensor {
                    name: info.name.clone(),
                    tensor,
                })
                .map_err(|e| InferenceError::Inference(format!("output `{}`: {e}", info.name)))
        })
        .collect()
}

/// `timeout` from now, or as far as the clock reaches.
fn far_from_now(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(1 << 30)))
        .unwrap_or(now)
}

/// What each runner is told at start, from the engine's limits.
fn runner_setup(config: &EngineConfig) -> Setup {
    const MIB: u64 = 1024 * 1024;
    let run_secs = config.max_run_time.as_secs().saturating_add(1);
    let threads = u64::try_from(config.threads_per_run).unwrap_or(u64::MAX);
    // A request holds at most one model and a batch of inputs (postcard: at most 10 bytes
    // an element); plus slack for names and framing.
    let batch = u64::try_from(config.max_batch).unwrap_or(u64::MAX);
    let inputs = config
        .max_input_elements
        .saturating_mul(10)
        .saturating_mul(batch);
    Setup {
        memory_bytes: config.runner_memory_mib.saturating_mul(MIB),
        // Four runs' worth of CPU on every thread: the runner is retired at half of it, so
        // this backstop only fires if the parent's wall-clock kill somehow did not.
        cpu_secs: run_secs
            .saturating_mul(threads)
            .saturating_mul(4)
            .saturating_add(10),
        threads: config.threads_per_run,
        plan_cache_entries: config.plan_cache_entries,
        probe_elements: config.batching.then_some(config.max_input_elements),
        max_request_bytes: config
            .max_model_bytes
            .saturating_add(inputs)
            .saturating_add(MIB),
        onnxruntime: config.onnxruntime.clone(),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_toml_round_trip() {
        let c = EngineConfig::default();
        assert_eq!(c.max_run_time, Duration::from_secs(60));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"max_run_time_ms\":60000"));
        let back: EngineConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // Partial configs fill in defaults.
        let partial: EngineConfig =
            serde_json::from_str(r#"{"workers": 3, "max_run_time_ms": 1500}"#).unwrap();
        assert_eq!(partial.workers, 3);
        assert_eq!(partial.max_run_time, Duration::from_millis(1500));
        assert_eq!(partial.queue_slots, 64);
        assert!(serde_json::from_str::<EngineConfig>(r#"{"wrokers": 3}"#).is_err());
    }

    #[test]
    fn engine_and_handles_can_cross_threads() {
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        fn send<T: Send>() {}
        send_sync_clone::<Engine>();
        send_sync_clone::<CancelToken>();
        send::<JobHandle>();
        send::<Job>();
    }

    #[test]
    fn cancel_tokens_share_their_flag() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(!b.is_cancelled());
        a.cancel();
        assert!(b.is_cancelled());
    }

    #[test]
    fn queue_state_reports_fullness() {
        let q = QueueState {
            workers: 2,
            slots: 4,
            queued: 4,
            running: 2,
        };
        assert!(q.is_full());
        assert!(!QueueState { queued: 3, ..q }.is_full());
    }
}
