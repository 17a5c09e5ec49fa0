//! The runner's side: read the setup, confine itself, then answer load and run requests
//! until the parent closes its stdin.

use std::io::{BufReader, BufWriter, Write};
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_protocol::{ModelId, NamedTensor};
use lru::LruCache;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::RunOptions;

use super::wire::{
    Backend, FrameError, Ran, Reply, Request, Setup, WireInfo, read_frame, write_frame,
};
use crate::engine::{RunError, Stop, build_inputs, run_plan, split_outputs};
use crate::error::InferenceError;
use crate::model::{LoadedModel, bind_inputs, panic_text};
use crate::onnxruntime::{self as onnxrt, OrtModel};

/// The setup frame is small; anything larger is not from our parent.
const MAX_SETUP_BYTES: u64 = 64 * 1024;

/// Serves requests on stdin/stdout; the exit code says whether it ended cleanly.
pub(crate) fn serve() -> ExitCode {
    // Panics are caught and answered as errors; their default report would only add noise.
    std::panic::set_hook(Box::new(|_| {}));
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    let setup: Setup = match read_frame(&mut input, MAX_SETUP_BYTES) {
        Ok(s) => s,
        Err(_) => return ExitCode::FAILURE,
    };
    let mut run_options = RunOptions::default();
    // The pool is built before the sandbox: afterwards no thread may be created.
    if setup.threads > 1 {
        match rayon::ThreadPoolBuilder::new()
            .num_threads(setup.threads)
            .build()
        {
            Ok(pool) => {
                run_options.executor = Some(multithread::Executor::MultiThread(Arc::new(pool)));
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
    // ONNX Runtime is loaded now, too: afterwards the runner may not open its library.
    let ort = match &setup.onnxruntime {
        Some(lib) => Some(onnxrt::runtime(lib, setup.threads).map_err(|e| e.to_string())),
        None => None,
    };
    let report = super::sandbox::apply(&setup);
    if write_frame(&mut output, &Reply::Ready(report)).is_err() {
        return ExitCode::FAILURE;
    }
    let mut runner = Serving {
        cache: LruCache::new(
            NonZeroUsize::new(setup.plan_cache_entries).unwrap_or(NonZeroUsize::MIN),
        ),
        ort_cache: LruCache::new(
            NonZeroUsize::new(setup.plan_cache_entries).unwrap_or(NonZeroUsize::MIN),
        ),
        memory_mib: setup.memory_bytes / (1024 * 1024),
        setup,
        run_options,
        ort,
    };
    loop {
        let request: Request = match read_frame(&mut input, runner.setup.max_request_bytes) {
            Ok(r) => r,
            Err(FrameError::Closed) => return ExitCode::SUCCESS,
            Err(_) => return ExitCode::FAILURE,
        };
        let reply = runner.handle(request);
        if write_frame(&mut output, &reply).is_err() {
            return ExitCode::FAILURE;
        }
        if output.flush().is_err() {
            return ExitCode::FAILURE;
        }
    }
}

struct Serving {
    setup: Setup,
    cache: LruCache<ModelId, Arc<LoadedModel>>,
    run_options: RunOptions,
    memory_mib: u64,
    ort_cache: LruCache<ModelId, Arc<OrtModel>>,
    /// ONNX Runtime, when the parent asked for it, or why it did not load.
    ort: Option<Result<&'static onnxrt::Runtime, String>>,
}

impl Serving {
    fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Load {
                backend: Backend::Onnxruntime,
                model,
                bytes,
            } => match self.ort_model(ModelId(model), bytes) {
                None => Reply::NeedModel,
                Some(m) => Reply::Loaded(m.map(|m| WireInfo::from(&m.info))),
            },
            Request::Run {
                backend: Backend::Onnxruntime,
                model,
                bytes,
                jobs,
                max_run_micros: _,
            } => match self.ort_model(ModelId(model), bytes) {
                // The parent kills the runner at the run-time limit: no flag to watch here.
                None => Reply::NeedModel,
                Some(Err(e)) => Reply::Ran(Err(e)),
                Some(Ok(m)) => {
                    let ran =
                        catch_unwind(AssertUnwindSafe(|| run_ort(&m, &jobs, self.memory_mib)))
                            .unwrap_or_else(|p| Err(self.panicked(&*p)));
                    Reply::Ran(ran.map_err(|e| memory_aware(e, self.memory_mib)))
                }
            },
            Request::Load {
                backend: Backend::Tract,
                model,
                bytes,
            } => match self.model(ModelId(model), bytes) {
                None => Reply::NeedModel,
                Some(m) => Reply::Loaded(m.map(|m| WireInfo::from(&m.info))),
            },
            Request::Run {
                backend: Backend::Tract,
                model,
                bytes,
                jobs,
                max_run_micros,
            } => match self.model(ModelId(model), bytes) {
                None => Reply::NeedModel,
                Some(Err(e)) => Reply::Ran(Err(e)),
                Some(Ok(m)) => {
                    let cap = Duration::from_micros(max_run_micros);
                    let ran = catch_unwind(AssertUnwindSafe(|| run(&m, &jobs, cap)))
                        .unwrap_or_else(|p| Err(self.panicked(&*p)));
                    Reply::Ran(ran.map_err(|e| memory_aware(e, self.memory_mib)))
                }
            },
        }
    }

    /// The cached model, or loads it from `bytes`; `None` when neither is at hand.
    fn model(
        &mut self,
        id: ModelId,
        bytes: Option<Vec<u8>>,
    ) -> Option<Result<Arc<LoadedModel>, InferenceError>> {
        if let Some(m) = self.cache.get(&id) {
            return Some(Ok(m.clone()));
        }
        let bytes = bytes?;
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            LoadedModel::load(id, &bytes, &self.run_options, self.setup.probe_elements)
        }))
        .unwrap_or_else(|p| Err(self.panicked(&*p)));
        let loaded = loaded.map_err(|e| memory_aware(e, self.memory_mib));
        Some(loaded.map(|m| {
            let m = Arc::new(m);
            self.cache.put(id, m.clone());
            m
        }))
    }

    /// The cached ONNX Runtime session, or loads one from `bytes`; `None` when neither is
    /// at hand.
    fn ort_model(
        &mut self,
        id: ModelId,
        bytes: Option<Vec<u8>>,
    ) -> Option<Result<Arc<OrtModel>, InferenceError>> {
        if let Some(m) = self.ort_cache.get(&id) {
            return Some(Ok(m.clone()));
        }
        let rt = match &self.ort {
            Some(Ok(rt)) => *rt,
            Some(Err(e)) => return Some(Err(InferenceError::Startup(e.clone()))),
            None => {
                return Some(Err(InferenceError::Startup(
                    "this runner was started without ONNX Runtime".into(),
                )));
            }
        };
        let bytes = bytes?;
        let loaded = catch_unwind(AssertUnwindSafe(|| OrtModel::load(rt, id, &bytes)))
            .unwrap_or_else(|p| Err(self.panicked(&*p)))
            .map_err(|e| memory_aware(e, self.memory_mib));
        Some(loaded.map(|m| {
            let m = Arc::new(m);
            self.ort_cache.put(id, m.clone());
            m
        }))
    }

    /// A caught panic as an error; tract reports a refused allocation this way.
    fn panicked(&self, p: &(dyn std::any::Any + Send)) -> InferenceError {
        memory_or(self.memory_mib, panic_text(p))
    }
}

/// [`InferenceError::MemoryExhausted`] when `text` reports a failed allocation, otherwise
/// a runtime failure with that text.
fn memory_or(limit_mib: u64, text: String) -> InferenceError {
    if is_allocation_failure(&text) {
        InferenceError::MemoryExhausted { limit_mib }
    } else {
        InferenceError::Inference(format!("runtime panicked: {text}"))
    }
}

/// tract reports a refused allocation as a panic, which the run and the loader catch and
/// report as text; under the runner's address-space limit that means the model asked for
/// more memory than allowed.
fn memory_aware(e: InferenceError, limit_mib: u64) -> InferenceError {
    match e {
        InferenceError::Inference(m) | InferenceError::ModelInvalid(m)
            if is_allocation_failure(&m) =>
        {
            InferenceError::MemoryExhausted { limit_mib }
        }
        other => other,
    }
}

fn is_allocation_failure(text: &str) -> bool {
    // tract's and ONNX Runtime's wordings ("Failed to allocate memory", "bad_alloc").
    let text = text.to_ascii_lowercase();
    text.contains("failed to allocate")
        || text.contains("memory allocation")
        || text.contains("bad_alloc")
}

fn run(
    model: &LoadedModel,
    jobs: &[Vec<NamedTensor>],
    cap: Duration,
) -> Result<Ran, InferenceError> {
    let started = Instant::now();
    let mut results: Vec<Option<Result<Vec<NamedTensor>, InferenceError>>> = Vec::new();
    let mut valid: Vec<&[NamedTensor]> = Vec::new();
    for inputs in jobs {
        match bind_inputs(&model.info, inputs) {
            Ok(_) => {
                valid.push(inputs);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let mut cpu = Duration::ZERO;
    if !valid.is_empty() {
        let (inputs, rows) = build_inputs(model, &valid)?;
        let deadline = started.checked_add(cap).unwrap_or(started);
        let check = || (Instant::now() >= deadline).then_some(Stop::RunTime);
        let (outputs, spent) = match run_plan(model, inputs, check) {
            Ok(x) => x,
            Err(RunError::Stopped(_)) => {
                return Err(InferenceError::TimedOut {
                    elapsed: started.elapsed(),
                    limit: cap,
                });
            }
            Err(RunError::Failed(e)) => return Err(e),
        };
        cpu = spent;
        let batch = valid.len();
        let mut start = 0usize;
        let mut split = rows.iter().map(|&r| {
            let end = usize::try_from(r).ok().and_then(|r| start.checked_add(r));
            let part = match end {
                Some(end) => split_outputs(model, &outputs, batch, start, end),
                None => Err(InferenceError::Inference("row count overflows".into())),
            };
            start = end.unwrap_or(start);
            part
        });
        for slot in results.iter_mut().filter(|r| r.is_none()) {
            *slot = split.next();
        }
    }
    Ok(Ran {
        jobs: results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(InferenceError::Inference("job lost its rows".into())))
            })
            .collect(),
        run_micros: micros(started.elapsed()),
        cpu_micros: micros(cpu),
        process_cpu_micros: micros(crate::device::process_cpu_time()),
    })
}

/// Runs each job on its own (the ONNX Runtime path does not batch).
fn run_ort(
    model: &OrtModel,
    jobs: &[Vec<NamedTensor>],
    memory_mib: u64,
) -> Result<Ran, InferenceError> {
    let started = Instant::now();
    // Process CPU time: with more than one thread per run, ONNX Runtime's pool does part of
    // the work on other threads.
    let cpu_start = crate::device::process_cpu_time();
    let options = onnxrt::run_options()?;
    let results = jobs
        .iter()
        .map(|inputs| {
            model
                .run(inputs, &options)
                .map_err(|e| memory_aware(e, memory_mib))
        })
        .collect();
    let process_cpu = crate::device::process_cpu_time();
    Ok(Ran {
        jobs: results,
        run_micros: micros(started.elapsed()),
        cpu_micros: micros(process_cpu.saturating_sub(cpu_start)),
        process_cpu_micros: micros(process_cpu),
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
