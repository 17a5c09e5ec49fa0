//! The inference engine: a bounded job queue served by dedicated worker threads.
//!
//! [`Engine::submit`] checks what it can without the model (limits, deadline, that the model
//! is stored), then queues the job or refuses with [`InferenceError::QueueFull`]. It never
//! blocks and never runs inference on the caller's thread, so it is safe to call from the
//! node's async tasks. Workers take the oldest job, load its model through the plan cache,
//! and, when the model is batchable, take other queued jobs for the same model and run them
//! as one batch. Between operators, a run checks for cancellation, the deadline, the run-time
//! cap and shutdown, so a stopped job frees its worker within one operator's time.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
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
use crate::model::{LoadedModel, ModelInfo, concat_rows, panic_text};
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
}

impl Job {
    /// A job with a fresh cancel token and a deadline `timeout` from now.
    pub fn new(model: ModelId, inputs: Vec<NamedTensor>, timeout: Duration) -> Self {
        Self {
            model,
            inputs,
            deadline: Instant::now() + timeout,
            cancel: CancelToken::new(),
        }
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

/// A queued job with its reply channel.
struct Pending {
    job: Job,
    reply: oneshot::Sender<Result<RunOutput, InferenceError>>,
    submitted: Instant,
}

impl Pending {
    /// Withdrawn by its token, or nobody is waiting for the answer.
    fn abandoned(&self) -> bool {
        self.job.cancel.is_cancelled() || self.reply.is_closed()
    }

    fn answer(self, result: Result<RunOutput, InferenceError>) {
        // The submitter may have dropped its handle; then nobody wants the answer.
        let _ = self.reply.send(result);
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
    /// The GPU path, once attached with [`Engine::use_gpu`].
    #[cfg(feature = "gpu")]
    gpu: std::sync::OnceLock<crate::gpu::GpuExecutor>,
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
        let shared = Arc::new(Shared {
            cache: PlanCache::new(config.plan_cache_entries),
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
        Ok(self.shared.load(model)?.info.clone())
    }

    /// Loads a model into the plan cache ahead of its first job.
    pub fn warm(&self, model: &ModelId) -> Result<(), InferenceError> {
        self.shared.load(model).map(|_| ())
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
        if s.cache.peek(&job.model).is_none() {
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
                reply: tx,
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

    /// Models currently loaded in the plan cache, most recently used first.
    pub fn cached_models(&self) -> Vec<ModelId> {
        self.shared.cache.ids()
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

    fn load(&self, id: &ModelId) -> Result<Arc<LoadedModel>, InferenceError> {
        self.cache.get_or_load(id, || {
            if let Some(size) = self.store.size(id)
                && size > self.config.max_model_bytes
            {
                return Err(InferenceError::ModelTooLarge {
                    size,
                    limit: self.config.max_model_bytes,
                });
            }
            let bytes = self.store.read(id)?;
            let started = Instant::now();
            let m = LoadedModel::load(*id, &bytes, &self.run_options, self.config.batching)?;
            debug!(
                model = %id,
                bytes = bytes.len(),
                millis = started.elapsed().as_millis() as u64,
                batchable = m.info.batchable,
                "model loaded"
            );
            Ok(m)
        })
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
        let share = matching.div_ceil(idle + 1);
        let want = share.min(self.config.max_batch - 1);
        let mut taken = Vec::with_capacity(want);
        let mut i = 0;
        while i < q.jobs.len() && taken.len() < want {
            if q.jobs[i].job.model == *model && !q.jobs[i].abandoned() {
                if let Some(p) = q.jobs.remove(i) {
                    taken.push(p);
                }
            } else {
                i += 1;
            }
        }
        self.running.fetch_add(taken.len(), Ordering::AcqRel);
        taken
    }
}

fn worker(shared: Arc<Shared>) {
    while let Some(first) = shared.next_job() {
        let model_id = first.job.model;
        let jobs = match shared.load(&model_id) {
            Ok(model) => {
                let mut jobs = vec![first];
                if shared.config.batching && model.info.batchable && shared.config.max_batch > 1 {
                    jobs.extend(shared.take_batch_mates(&model_id));
                }
                let n = jobs.len();
                run_jobs(&shared, &model, jobs);
                n
            }
            Err(e) => {
                debug!(model = %model_id, error = %e, "model could not be loaded");
                first.answer(Err(e));
                1
            }
        };
        shared.running.fetch_sub(jobs, Ordering::AcqRel);
    }
}

/// Why a run was stopped between operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
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

/// Validates, batches, runs and answers a group of jobs for one model.
fn run_jobs(shared: &Shared, model: &LoadedModel, jobs: Vec<Pending>) {
    // Jobs whose inputs do not fit the model are answered now and leave the batch.
    let mut valid = Vec::with_capacity(jobs.len());
    for p in jobs {
        match model.bind(&p.job.inputs) {
            Ok(_) => valid.push(p),
            Err(e) => p.answer(Err(e)),
        }
    }
    if valid.is_empty() {
        return;
    }
    #[cfg(feature = "gpu")]
    let Some(valid) = run_jobs_gpu(shared, model, valid) else {
        return;
    };
    let (inputs, rows) = match build_inputs(model, &valid) {
        Ok(x) => x,
        Err(e) => {
            for p in valid {
                p.answer(Err(e.clone()));
            }
            return;
        }
    };
    let started = Instant::now();
    let cap = started + shared.config.max_run_time;
    let result = run_plan(shared, model, inputs, &valid, cap);
    let run = started.elapsed();
    let now = Instant::now();
    match result {
        Ok((outputs, cpu)) => {
            let total_rows: u64 = rows.iter().sum();
            let mut start = 0usize;
            let batch_size = valid.len();
            for (p, r) in valid.into_iter().zip(rows) {
                let end = start + r as usize;
                let answer = if p.abandoned() {
                    Err(InferenceError::Cancelled)
                } else if p.job.deadline <= now {
                    Err(p.timed_out(now))
                } else {
                    split_outputs(model, &outputs, batch_size, start, end).map(|outputs| {
                        RunOutput {
                            outputs,
                            run_micros: micros(run),
                            cpu_micros: micros(cpu.mul_f64(r as f64 / total_rows.max(1) as f64)),
                            queue_micros: micros(started.saturating_duration_since(p.submitted)),
                            path: ExecPath::Cpu,
                            batch_size,
                        }
                    })
                };
                p.answer(answer);
                start = end;
            }
        }
        Err(RunError::Stopped(stop)) => {
            for p in valid {
                let e = match stop {
                    Stop::Shutdown => InferenceError::ShuttingDown,
                    Stop::RunTime => InferenceError::TimedOut {
                        elapsed: run,
                        limit: shared.config.max_run_time,
                    },
                    Stop::Cancelled | Stop::Deadline if p.abandoned() => InferenceError::Cancelled,
                    Stop::Cancelled | Stop::Deadline => p.timed_out(now),
                };
                p.answer(Err(e));
            }
        }
        Err(RunError::Failed(e)) => {
            warn!(model = %model.info.id, error = %e, "inference failed");
            for p in valid {
                p.answer(Err(e.clone()));
            }
        }
    }
}

/// Runs validated jobs on the GPU when one is attached and takes the model; answers them
/// and returns `None`, or returns the jobs for tract.
#[cfg(feature = "gpu")]
fn run_jobs_gpu(shared: &Shared, model: &LoadedModel, valid: Vec<Pending>) -> Option<Vec<Pending>> {
    let Some(gpu) = shared.gpu.get() else {
        return Some(valid);
    };
    let bound: Vec<Vec<&crank_protocol::Tensor>> =
        match valid.iter().map(|p| model.bind(&p.job.inputs)).collect() {
            Ok(b) => b,
            Err(_) => return Some(valid),
        };
    let cap = Instant::now() + shared.config.max_run_time;
    let deadline = valid
        .iter()
        .map(|p| p.job.deadline)
        .max()
        .map_or(cap, |d| d.min(cap));
    let stop = || shared.shutdown.load(Ordering::Relaxed) || valid.iter().all(Pending::abandoned);
    let started = Instant::now();
    // Padding a batch with zero rows is exact only when rows are known to be independent,
    // which the batching probe established.
    let pad_rows = shared.config.batching && model.info.batchable;
    let done = gpu.run_batch(
        &shared.store,
        &model.info,
        &bound,
        pad_rows,
        deadline,
        &stop,
    );
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
    let total_rows: u64 = valid.iter().map(rows_of).sum();
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

/// The runtime inputs for a group of validated jobs, and each job's row count.
fn build_inputs(
    model: &LoadedModel,
    jobs: &[Pending],
) -> Result<(TVec<TValue>, Vec<u64>), InferenceError> {
    let bound: Vec<Vec<&crank_protocol::Tensor>> = jobs
        .iter()
        .map(|p| model.bind(&p.job.inputs))
        .collect::<Result<_, _>>()?;
    let rows: Vec<u64> = bound
        .iter()
        .map(|b| {
            b.first()
                .and_then(|t| t.shape.first().copied())
                .unwrap_or(1)
        })
        .collect();
    let conv = |e: convert::ConvertError| InferenceError::InputInvalid(e.to_string());
    let mut inputs = TVec::new();
    for ix in 0..model.info.inputs.len() {
        let tensor = if bound.len() == 1 {
            convert::to_tract(bound[0][ix]).map_err(conv)?
        } else {
            let parts: Vec<&crank_protocol::Tensor> = bound.iter().map(|b| b[ix]).collect();
            convert::to_tract(&concat_rows(&parts)?).map_err(conv)?
        };
        if tensor.datum_type() != model.input_types()[ix] {
            return Err(InferenceError::InputInvalid(format!(
                "input `{}` expects {}, got {}",
                model.info.inputs[ix].name,
                convert::dtype_name(model.input_types()[ix]),
                convert::dtype_name(tensor.datum_type())
            )));
        }
        inputs.push(tensor.into_tvalue());
    }
    Ok((inputs, rows))
}

enum RunError {
    Stopped(Stop),
    Failed(InferenceError),
}

/// Runs the plan op by op, checking between operators whether to stop. Returns the outputs
/// and the thread CPU time spent.
fn run_plan(
    shared: &Shared,
    model: &LoadedModel,
    inputs: TVec<TValue>,
    jobs: &[Pending],
    cap: Instant,
) -> Result<(TVec<TValue>, Duration), RunError> {
    let mut state = model.take_state().map_err(RunError::Failed)?;
    let cpu_start = crate::device::thread_cpu_time();
    let check = || -> Option<Stop> {
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
    };
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
        Ok(Ok(outputs)) => {
            model.put_state(state);
            Ok((outputs, cpu))
        }
        // The state may be mid-run; it is dropped rather than reused.
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
fn split_outputs(
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
