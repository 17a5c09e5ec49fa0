//! The optional ONNX Runtime path: a second CPU runtime beside tract, for owners who install
//! ONNX Runtime (`pip install onnxruntime` ships `libonnxruntime.so`) and name its library in
//! their config. tract stays the default that runs everywhere; this path is what a worker
//! bids with when it is faster, and the receipt says which ran (`onnxruntime`).
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`): nothing is downloaded at build
//! time and a node without it behaves as before. It is loaded once per process (the runner
//! loads it before it confines itself, since afterwards it may not open files). ONNX Runtime
//! is C++ and the models are untrusted, so in the node it runs inside the isolated runner
//! like tract; in-process runs (tests, benchmarks, `isolate = false`) are stopped at their
//! deadline through ONNX Runtime's terminate flag ([`Watchdog`]).
//!
//! One job is one run: the path does not batch, since ONNX Runtime's own kernels already use
//! the CPU well at batch 1 and a batch would need the batching probe that tract's path runs.

// Sizes here come from untrusted models and inputs: every product and sum is checked.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crank_protocol::{ModelId, NamedTensor, Tensor as WireTensor, TensorData};
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use crate::engine::CancelToken;
use crate::error::InferenceError;
use crate::model::{Dim, ModelInfo, TensorInfo, bind_inputs};

/// The loaded library: one per process.
pub(crate) struct Runtime {
    env: Environment,
    /// The library file it was loaded from.
    pub path: PathBuf,
    /// ONNX Runtime's version, from its build string (`1.32.0`).
    pub version: String,
    threads: usize,
}

static RUNTIME: Mutex<Option<&'static Runtime>> = Mutex::new(None);

/// Loads ONNX Runtime from `path` with `threads` threads per run, once per process; later
/// calls return the same runtime (and refuse a different library file). A failed load is
/// not remembered: the owner may fix the path and try again.
pub(crate) fn runtime(path: &Path, threads: usize) -> Result<&'static Runtime, InferenceError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = *slot {
        if rt.path == path {
            return Ok(rt);
        }
        return Err(InferenceError::Startup(format!(
            "ONNX Runtime is already loaded from {} in this process; {} cannot be loaded too",
            rt.path.display(),
            path.display()
        )));
    }
    // Lives as long as the process: the library cannot be unloaded once sessions exist.
    let rt: &'static Runtime = Box::leak(Box::new(
        load(path, threads.max(1)).map_err(InferenceError::Startup)?,
    ));
    *slot = Some(rt);
    Ok(rt)
}

fn load(path: &Path, threads: usize) -> Result<Runtime, String> {
    let hint = "install it with `pip install onnxruntime` and name its \
                `onnxruntime/capi/libonnxruntime.so*` as `[engine] onnxruntime`, or remove the setting";
    if !path.is_file() {
        return Err(format!(
            "ONNX Runtime library {} does not exist; {hint}",
            path.display()
        ));
    }
    let builder = ort::init_from(path)
        .map_err(|e| {
            format!(
                "cannot load ONNX Runtime from {}: {e}; {hint}",
                path.display()
            )
        })?
        .with_name("crank-node")
        .with_telemetry(false);
    // One thread per run runs on the caller's thread and starts none. More use one pool for
    // every session, made now: the runner may not start threads once it is confined.
    let builder = if threads > 1 {
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .and_then(|p| p.with_spin_control(false))
            .map_err(|e| format!("ONNX Runtime thread pool: {e}"))?;
        builder.with_global_thread_pool(pool)
    } else {
        builder
    };
    let env = builder
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
    Ok(Runtime {
        env,
        path: path.to_path_buf(),
        version: version_of(path, ort::info()),
        threads,
    })
}

/// The library's version: from its file name as packages install it
/// (`libonnxruntime.so.1.32.0`, `libonnxruntime.1.32.0.dylib`), else the commit its build
/// string names (`git-commit-id=fab30a4`), else `unknown`.
fn version_of(path: &Path, info: &str) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let from_name = name
        .split_once('.')
        .map(|(_, rest)| {
            rest.split('.')
                .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                .collect::<Vec<_>>()
        })
        .filter(|parts| parts.len() >= 2)
        .map(|parts| parts.join("."));
    from_name
        .or_else(|| {
            info.split(|c: char| c == ',' || c.is_whitespace())
                .find_map(|part| part.strip_prefix("git-commit-id="))
                .map(|c| format!("commit {c}"))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A model loaded in ONNX Runtime, with the signature the engine checks jobs against.
pub(crate) struct OrtModel {
    pub info: ModelInfo,
    /// `ort` runs a session through `&mut`; jobs on one model in one process take turns.
    session: Mutex<Session>,
}

impl OrtModel {
    /// Parses and optimises a model; an operator ONNX Runtime lacks is named in the error.
    pub fn load(rt: &Runtime, id: ModelId, bytes: &[u8]) -> Result<Self, InferenceError> {
        let fail = |e: ort::Error| InferenceError::ModelInvalid(format!("onnxruntime: {e}"));
        let mut builder = Session::builder(&rt.env)
            .map_err(fail)?
            .with_inter_threads(1)
            .map_err(|e| fail(e.into()))?
            .with_intra_op_spinning(false)
            .map_err(|e| fail(e.into()))?;
        if rt.threads <= 1 {
            builder = builder.with_intra_threads(1).map_err(|e| fail(e.into()))?;
        }
        let session = builder.commit_from_memory(bytes).map_err(fail)?;
        let info = ModelInfo {
            id,
            bytes: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            inputs: outlets(session.inputs().iter().map(|o| (o.name(), o.dtype())))?,
            outputs: outlets(session.outputs().iter().map(|o| (o.name(), o.dtype())))?,
            batchable: false,
            plan_nodes: 0,
        };
        Ok(Self {
            info,
            session: Mutex::new(session),
        })
    }

    /// Runs one job. `options` carries the terminate flag a [`Watchdog`] may set.
    pub fn run(
        &self,
        inputs: &[NamedTensor],
        options: &RunOptions,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let bound = bind_inputs(&self.info, inputs)?;
        let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(bound.len());
        for (spec, t) in self.info.inputs.iter().zip(&bound) {
            values.push((spec.name.as_str(), input_value(&spec.name, t)?));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run_with_options(values, options)
            .map_err(|e| InferenceError::Inference(format!("onnxruntime: {e}")))?;
        self.info
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(spec.name.as_str()).ok_or_else(|| {
                    InferenceError::Inference(format!("output `{}` is missing", spec.name))
                })?;
                Ok(NamedTensor {
                    name: spec.name.clone(),
                    tensor: output_tensor(&spec.name, value)?,
                })
            })
            .collect()
    }
}

/// A run's terminate flag, for [`OrtModel::run`].
pub(crate) fn run_options() -> Result<RunOptions, InferenceError> {
    RunOptions::new().map_err(|e| InferenceError::Inference(format!("onnxruntime: {e}")))
}

fn outlets<'a>(
    list: impl Iterator<Item = (&'a str, &'a ValueType)>,
) -> Result<Vec<TensorInfo>, InferenceError> {
    list.map(|(name, ty)| {
        let ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } = ty
        else {
            return Err(InferenceError::ModelInvalid(format!(
                "`{name}` is a {ty}, not a tensor; only tensors travel on the wire"
            )));
        };
        let dims = shape
            .iter()
            .zip(dimension_symbols.iter())
            .enumerate()
            .map(|(axis, (&d, sym))| match u64::try_from(d) {
                Ok(n) => Dim::Fixed(n),
                // An unnamed dynamic axis (exporters also write `?`) gets a name of its own,
                // so it is never tied to another axis by accident.
                Err(_) if sym.is_empty() || sym == "?" => Dim::Symbol(format!("{name}:{axis}")),
                Err(_) => Dim::Symbol(sym.clone()),
            })
            .collect();
        Ok(TensorInfo {
            name: name.to_string(),
            dtype: dtype_name(*ty),
            shape: dims,
        })
    })
    .collect()
}

/// The element type as the wire spells it (`float32`, ...), as tract's path names it.
fn dtype_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Int16 => "int16".into(),
        TensorElementType::Int8 => "int8".into(),
        TensorElementType::Uint64 => "uint64".into(),
        TensorElementType::Uint32 => "uint32".into(),
        TensorElementType::Uint16 => "uint16".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Bool => "bool".into(),
        TensorElementType::String => "string".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A view of a checked wire tensor, without copying its data.
fn input_value<'v>(name: &str, t: &'v WireTensor) -> Result<SessionInputValue<'v>, InferenceError> {
    let shape = t
        .shape
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|_| {
            InferenceError::InputInvalid(format!("input `{name}`: dimension too large"))
        })?;
    let fail =
        |e: ort::Error| InferenceError::InputInvalid(format!("input `{name}`: onnxruntime: {e}"));
    Ok(match &t.data {
        TensorData::F32(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(fail)?
            .into(),
        TensorData::F64(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(fail)?
            .into(),
        TensorData::I64(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(fail)?
            .into(),
        TensorData::I32(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(fail)?
            .into(),
        TensorData::U8(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(fail)?
            .into(),
    })
}

/// An output as a wire tensor, widened as tract's path widens it (bool to u8; i8, i16 and
/// u16 to i32; u32 to i64; f16 is not carried).
fn output_tensor(name: &str, value: &DynValue) -> Result<WireTensor, InferenceError> {
    let fail = |e: ort::Error| InferenceError::Inference(format!("output `{name}`: {e}"));
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(InferenceError::Inference(format!(
            "output `{name}` is a {}, not a tensor",
            value.dtype()
        )));
    };
    fn take<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
        value: &DynValue,
    ) -> ort::Result<(Vec<u64>, Vec<T>)> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let dims = shape
            .iter()
            .map(|&d| u64::try_from(d).unwrap_or(0))
            .collect();
        Ok((dims, data.to_vec()))
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => take::<f32>(value).map(|(s, d)| (s, TensorData::F32(d))),
        TensorElementType::Float64 => take::<f64>(value).map(|(s, d)| (s, TensorData::F64(d))),
        TensorElementType::Int64 => take::<i64>(value).map(|(s, d)| (s, TensorData::I64(d))),
        TensorElementType::Int32 => take::<i32>(value).map(|(s, d)| (s, TensorData::I32(d))),
        TensorElementType::Uint8 => take::<u8>(value).map(|(s, d)| (s, TensorData::U8(d))),
        TensorElementType::Bool => take::<bool>(value)
            .map(|(s, d)| (s, TensorData::U8(d.into_iter().map(u8::from).collect()))),
        TensorElementType::Int8 => take::<i8>(value)
            .map(|(s, d)| (s, TensorData::I32(d.into_iter().map(i32::from).collect()))),
        TensorElementType::Int16 => take::<i16>(value)
            .map(|(s, d)| (s, TensorData::I32(d.into_iter().map(i32::from).collect()))),
        TensorElementType::Uint16 => take::<u16>(value)
            .map(|(s, d)| (s, TensorData::I32(d.into_iter().map(i32::from).collect()))),
        TensorElementType::Uint32 => take::<u32>(value)
            .map(|(s, d)| (s, TensorData::I64(d.into_iter().map(i64::from).collect()))),
        other => {
            return Err(InferenceError::Inference(format!(
                "output `{name}` has element type {}, which cannot be sent as a tensor",
                dtype_name(*other)
            )));
        }
    }
    .map_err(fail)?;
    let t = WireTensor { shape, data };
    t.check_shape()
        .map_err(|e| InferenceError::Inference(format!("output `{name}`: {e}")))?;
    Ok(t)
}

/// Stops in-process runs at their deadline, when every job in them is cancelled, or at
/// shutdown, through ONNX Runtime's terminate flag (a run cannot be interrupted between
/// operators from the calling thread as tract's can). One thread per engine, asleep while no
/// run is watched.
pub(crate) struct Watchdog {
    state: Arc<(Mutex<Watched>, Condvar)>,
}

#[derive(Default)]
struct Watched {
    next: u64,
    runs: Vec<WatchedRun>,
    closed: bool,
}

struct WatchedRun {
    id: u64,
    options: Arc<RunOptions>,
    deadline: Instant,
    cancels: Vec<CancelToken>,
}

/// How often a watched run is checked.
const WATCH_POLL: Duration = Duration::from_millis(5);

impl Watchdog {
    /// Starts the watching thread; `stopping` says whether the engine is shutting down.
    pub fn start(stopping: CancelToken) -> Result<Self, InferenceError> {
        let state: Arc<(Mutex<Watched>, Condvar)> = Arc::default();
        let s = state.clone();
        std::thread::Builder::new()
            .name("crank-ort-watchdog".into())
            .spawn(move || watch(&s, &stopping))
            .map_err(|e| InferenceError::Startup(format!("watchdog thread: {e}")))?;
        Ok(Self { state })
    }

    /// Watches a run until the guard drops.
    pub fn watch(
        &self,
        options: Arc<RunOptions>,
        deadline: Instant,
        cancels: Vec<CancelToken>,
    ) -> WatchGuard<'_> {
        let (lock, ready) = &*self.state;
        let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
        let id = w.next;
        w.next = w.next.wrapping_add(1);
        w.runs.push(WatchedRun {
            id,
            options,
            deadline,
            cancels,
        });
        ready.notify_one();
        WatchGuard { dog: self, id }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, ready) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        ready.notify_one();
    }
}

/// Unregisters a watched run.
pub(crate) struct WatchGuard<'a> {
    dog: &'a Watchdog,
    id: u64,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        let (lock, _) = &*self.dog.state;
        lock.lock()
            .unwrap_or_else(|p| p.into_inner())
            .runs
            .retain(|r| r.id != self.id);
    }
}

fn watch(state: &(Mutex<Watched>, Condvar), stopping: &CancelToken) {
    let (lock, ready) = state;
    let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if w.closed {
            return;
        }
        let now = Instant::now();
        for r in &w.runs {
            let all_cancelled = !r.cancels.is_empty() && r.cancels.iter().all(|c| c.is_cancelled());
            if stopping.is_cancelled() || now >= r.deadline || all_cancelled {
                // Setting the flag twice is harmless; the run ends at its next operator.
                let _ = r.options.terminate();
            }
        }
        w = if w.runs.is_empty() {
            ready.wait(w).unwrap_or_else(|p| p.into_inner())
        } else {
            ready
                .wait_timeout(w, WATCH_POLL)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0)
        };
    }
}

/// The library a test or benchmark should load: `CRANK_ONNXRUNTIME`, else the one the
/// repository's `.venv` (scripts/setup-python.sh) installs.
pub fn library_for_tests() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRANK_ONNXRUNTIME") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let lib = root.join(".venv/lib");
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(files) = std::fs::read_dir(&capi) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            if name.to_string_lossy().starts_with("libonnxruntime.so") {
                return Some(f.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_the_file_name_or_the_build_string() {
        let info = "ORT Build Info: git-branch=HEAD, git-commit-id=fab30a4, build type=Release";
        let at = |p: &str| version_of(Path::new(p), info);
        assert_eq!(at("/x/capi/libonnxruntime.so.1.32.0"), "1.32.0");
        assert_eq!(at("/x/libonnxruntime.1.20.1.dylib"), "1.20.1");
        assert_eq!(at("/x/libonnxruntime.so"), "commit fab30a4");
        assert_eq!(
            version_of(Path::new("/x/onnxruntime.dll"), "no info"),
            "unknown"
        );
    }

    #[test]
    fn a_missing_library_says_how_to_install_one() {
        let Err(e) = load(Path::new("/nonexistent/libonnxruntime.so"), 1) else {
            panic!("a missing file loaded")
        };
        assert!(e.contains("/nonexistent/libonnxruntime.so"), "{e}");
        assert!(e.contains("pip install onnxruntime"), "{e}");
    }
}
