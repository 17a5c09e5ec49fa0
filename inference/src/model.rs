//! Loading ONNX bytes into an optimised tract plan, describing a model's signature, and
//! binding a job's inputs to it.
//!
//! Loading names every unknown input dimension (axis 0 becomes the symbol `N`), so the batch
//! dimension stays symbolic and one plan serves any batch size. A model is batchable when
//! every input and output has the same symbol on axis 0 and a probe run shows that rows do
//! not influence each other; only then does the engine run several jobs as one batch.

// Sizes here come from untrusted models and inputs: every product and sum is checked.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crank_protocol::{ModelId, NamedTensor, Tensor as WireTensor, TensorData};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tracing::debug;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::RunOptions;
use tract_onnx::tract_hir::infer::{Factoid, GenericFactoid};

use crate::convert::{self, dtype_name};
use crate::error::InferenceError;

/// A dimension of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A size chosen per run, named by a symbol (`N` for the batch) or an expression of one.
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Symbol(s) => f.write_str(s),
        }
    }
}

/// Name, element type and shape of one model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// The ONNX graph name.
    pub name: String,
    /// The element type as ONNX spells it (`float32`, `int64`, …).
    pub dtype: String,
    /// The dimensions, outermost first.
    pub shape: Vec<Dim>,
}

impl TensorInfo {
    /// `[N,64] float32`, for messages.
    pub fn signature(&self) -> String {
        format!("{} {}", shape_text(&self.shape), self.dtype)
    }
}

impl ModelInfo {
    /// Checks inputs against the signature (names, element types, shapes) without running,
    /// so a requester can refuse a wrong input before asking the mesh.
    pub fn check_inputs(&self, inputs: &[NamedTensor]) -> Result<(), InferenceError> {
        bind_inputs(self, inputs).map(|_| ())
    }
}

fn shape_text<T: fmt::Display>(dims: &[T]) -> String {
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// What a model takes and returns, as the engine will run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's content id.
    pub id: ModelId,
    /// Size of the ONNX file, bytes.
    pub bytes: u64,
    /// Inputs, in graph order.
    pub inputs: Vec<TensorInfo>,
    /// Outputs, in graph order.
    pub outputs: Vec<TensorInfo>,
    /// Whether the engine may run several jobs on this model as one batch.
    pub batchable: bool,
    /// Nodes in the optimised plan.
    pub plan_nodes: usize,
}

/// A model loaded once per content id: its signature and its optimised plan, or the parsed
/// graph from which plans are built for each concrete set of input shapes.
pub(crate) struct LoadedModel {
    pub info: ModelInfo,
    plans: Plans,
    input_types: Vec<DatumType>,
}

/// How a model's plans are made.
enum Plans {
    /// Symbolic analysis succeeded: one plan serves every input shape.
    Symbolic(Arc<TypedSimplePlan>),
    /// Symbolic analysis failed (shape-dependent reshapes, `If` on shapes, dimensions that
    /// only unify once known): a plan is built for each concrete set of input shapes a task
    /// brings, and the last few are kept.
    PerShape(Box<PerShape>),
}

/// What a per-shape plan is built for: every input's shape, and the values of the small
/// integer inputs when shapes alone do not determine the graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PlanKey {
    shapes: Vec<Vec<usize>>,
    values: Vec<Option<Vec<i64>>>,
}
type PlanSlot = Arc<OnceLock<Result<Arc<TypedSimplePlan>, InferenceError>>>;

/// Plans built for concrete input shapes, least recently used evicted first.
struct PerShape {
    source: InferenceModel,
    options: RunOptions,
    /// Why the symbolic analysis failed, for the log and for errors.
    symbolic_error: String,
    plans: Mutex<LruCache<PlanKey, PlanSlot>>,
    /// Whether keys include the small integer inputs' values (set once shapes alone failed).
    by_value: AtomicBool,
    stats: Mutex<PlanStats>,
}

/// How often the per-shape plans were found cached, and what building them cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Whether plans are built per concrete input shapes (the symbolic analysis failed).
    pub per_shape: bool,
    /// Runs whose shapes had a plan already.
    pub hits: u64,
    /// Runs that built a plan for their shapes.
    pub misses: u64,
    /// Time spent building plans, microseconds, all misses together.
    pub build_micros: u64,
    /// The longest single build, microseconds.
    pub max_build_micros: u64,
    /// Plans held now (at most [`MAX_SHAPE_PLANS`]).
    pub cached: usize,
}

impl fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModel")
            .field("info", &self.info)
            .field("per_shape", &matches!(self.plans, Plans::PerShape(_)))
            .finish_non_exhaustive()
    }
}

/// Per-shape plans kept per model. Each holds its own optimised copy of the weights, so a
/// requester that varies its shapes costs the worker builds, not unbounded memory.
pub const MAX_SHAPE_PLANS: usize = 4;

impl LoadedModel {
    /// Parses, types, declutters and optimises `bytes`; never panics (a panic inside the
    /// runtime on a hostile file becomes [`InferenceError::ModelInvalid`]).
    ///
    /// `probe` is the batching probe's budget: `None` skips the probe (the model is not
    /// batched), `Some(n)` runs it only when one probe row holds at most `n` elements, so a
    /// model that declares huge fixed dimensions cannot make the loader allocate them.
    pub fn load(
        id: ModelId,
        bytes: &[u8],
        options: &RunOptions,
        probe: Option<u64>,
    ) -> Result<Self, InferenceError> {
        let loaded =
            catch_unwind(AssertUnwindSafe(|| load_inner(id, bytes, options))).map_err(|p| {
                InferenceError::ModelInvalid(format!("runtime panicked on it: {}", panic_text(&p)))
            })??;
        let mut loaded = loaded;
        if let Some(limit) = probe.filter(|_| loaded.info.batchable) {
            loaded.info.batchable = loaded.rows_are_independent(limit);
            if !loaded.info.batchable {
                debug!(model = %id, "rows influence each other; batching disabled");
            }
        }
        Ok(loaded)
    }

    /// The plan for a run on `inputs` (bound, in graph order): the symbolic plan, or the
    /// cached or newly built plan for exactly these shapes.
    pub fn plan_for(&self, inputs: &[TValue]) -> Result<Arc<TypedSimplePlan>, InferenceError> {
        match &self.plans {
            Plans::Symbolic(plan) => Ok(plan.clone()),
            Plans::PerShape(per) => per.plan_for(&self.info, &self.input_types, inputs),
        }
    }

    /// Hits, misses and build cost of the per-shape plans (all zero for a symbolic plan).
    pub fn plan_stats(&self) -> PlanStats {
        match &self.plans {
            Plans::Symbolic(_) => PlanStats::default(),
            Plans::PerShape(per) => PlanStats {
                per_shape: true,
                cached: per.plans.lock().unwrap_or_else(|p| p.into_inner()).len(),
                ..*per.stats.lock().unwrap_or_else(|p| p.into_inner())
            },
        }
    }

    /// A fresh run state for `plan`. States are never reused: operators such as LSTM, Scan
    /// and Loop keep state between runs, and a reused state would carry one task's data
    /// into the next requester's result.
    pub fn fresh_state(plan: &Arc<TypedSimplePlan>) -> Result<TypedSimpleState, InferenceError> {
        plan.spawn()
            .map_err(|e| InferenceError::Inference(format!("{e:#}")))
    }

    /// Checks inputs against the signature and orders them like the graph inputs.
    pub fn bind<'a>(
        &self,
        inputs: &'a [NamedTensor],
    ) -> Result<Vec<&'a WireTensor>, InferenceError> {
        bind_inputs(&self.info, inputs)
    }

    /// The runtime element type of each graph input.
    pub fn input_types(&self) -> &[DatumType] {
        &self.input_types
    }

    /// Runs two distinct rows together and apart and compares the outputs, so that a model
    /// that mixes rows (batch statistics, reductions over axis 0) is never batched: one
    /// requester's input must not change another's result. Probe rows larger than `limit`
    /// elements (all inputs together) are not built: such a model is simply not batched.
    fn rows_are_independent(&self, limit: u64) -> bool {
        let mut shapes = Vec::with_capacity(self.info.inputs.len());
        let mut total = 0u64;
        for info in &self.info.inputs {
            let Some((shape, n)) = probe_shape(&info.shape) else {
                return false;
            };
            total = match total.checked_add(n) {
                Some(t) if t <= limit => t,
                _ => {
                    debug!(model = %self.info.id, limit, "probe row too large; batching disabled");
                    return false;
                }
            };
            shapes.push(shape);
        }
        let mut rows: Vec<Vec<WireTensor>> = Vec::new();
        for seed in 0..2u32 {
            let mut one = Vec::new();
            for ((shape, dt), info) in shapes.iter().zip(&self.input_types).zip(&self.info.inputs) {
                let shape = shape.clone();
                let Some(n) = element_count(&shape).and_then(|n| usize::try_from(n).ok()) else {
                    debug!(input = %info.name, "probe row does not fit in memory");
                    return false;
                };
                let data = match dt {
                    DatumType::F32 => {
                        TensorData::F32((0..n).map(|i| probe_value(seed, i) as f32).collect())
                    }
                    DatumType::F64 => {
                        TensorData::F64((0..n).map(|i| probe_value(seed, i)).collect())
                    }
                    DatumType::I64 => TensorData::I64(vec![0; n]),
                    DatumType::I32 => TensorData::I32(vec![0; n]),
                    DatumType::U8 => TensorData::U8(vec![0; n]),
                    _ => return false,
                };
                one.push(WireTensor { shape, data });
            }
            rows.push(one);
        }
        let run = |inputs: Vec<Tensor>| -> Option<TVec<TValue>> {
            let Plans::Symbolic(plan) = &self.plans else {
                return None;
            };
            let r = catch_unwind(AssertUnwindSafe(|| {
                plan.run(inputs.into_iter().map(|t| t.into_tvalue()).collect())
            }));
            r.ok()?.ok()
        };
        let to_tract = |ts: &[WireTensor]| -> Option<Vec<Tensor>> {
            ts.iter().map(|t| convert::to_tract(t).ok()).collect()
        };
        let together: Option<Vec<WireTensor>> = (0..self.info.inputs.len())
            .map(|i| concat_rows(&[&rows[0][i], &rows[1][i]]).ok())
            .collect();
        let (Some(together), Some(a), Some(b)) = (
            together.as_deref().and_then(to_tract),
            to_tract(&rows[0]),
            to_tract(&rows[1]),
        ) else {
            return false;
        };
        let (Some(both), Some(a), Some(b)) = (run(together), run(a), run(b)) else {
            return false;
        };
        both.iter()
            .zip(a.iter().zip(b.iter()))
            .all(|(both, (a, b))| {
                let (Ok(top), Ok(bottom), Ok(a), Ok(b)) = (
                    convert::from_tract(both, Some((0, 1))),
                    convert::from_tract(both, Some((1, 2))),
                    convert::from_tract(a, None),
                    convert::from_tract(b, None),
                ) else {
                    return false;
                };
                close(&top, &a) && close(&bottom, &b)
            })
    }
}

fn load_inner(
    id: ModelId,
    bytes: &[u8],
    options: &RunOptions,
) -> Result<LoadedModel, InferenceError> {
    let invalid = |e: TractError| InferenceError::ModelInvalid(format!("{e:#}"));
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .map_err(invalid)?;
    // tract parses unknown operators into placeholders; name the first one precisely.
    for node in model.nodes() {
        let name = node.op.name();
        if let Some(op) = name
            .strip_prefix("Unimplemented(")
            .and_then(|s| s.strip_suffix(')'))
        {
            return Err(InferenceError::UnsupportedOperator {
                op: op.to_string(),
                node: node.name.clone(),
            });
        }
    }
    // Name unknown dimensions so the typed model keeps them symbolic.
    let batch = model.symbols.sym("N");
    for ix in 0..model.inputs.len() {
        let mut fact = model.input_fact(ix).map_err(invalid)?.clone();
        if fact.shape.is_open() {
            continue;
        }
        let dims: Vec<_> = fact.shape.dims().cloned().collect();
        let mut changed = false;
        for (axis, d) in dims.iter().enumerate() {
            if d.concretize().is_none() {
                let sym = if axis == 0 {
                    batch.clone()
                } else {
                    model.symbols.sym(&format!("d{ix}_{axis}"))
                };
                fact.shape.set_dim(axis, sym.to_dim());
                changed = true;
            }
        }
        if changed {
            model.set_input_fact(ix, fact).map_err(invalid)?;
        }
    }
    let has_symbols = (0..model.inputs.len()).any(|ix| {
        model.input_fact(ix).is_ok_and(|f| {
            f.shape.is_open()
                || f.shape
                    .dims()
                    .any(|d| d.concretize().and_then(|d| d.to_i64().ok()).is_none())
        })
    });
    let symbolic = catch_unwind(AssertUnwindSafe(|| {
        load_symbolic(id, bytes, model.clone(), &batch, options)
    }))
    .unwrap_or_else(|p| {
        Err(InferenceError::ModelInvalid(format!(
            "runtime panicked on it: {}",
            panic_text(&p)
        )))
    });
    match symbolic {
        Ok(loaded) => Ok(loaded),
        // Nothing is symbolic, so concrete shapes cannot help: the model cannot run.
        Err(e) if !has_symbols => Err(e),
        Err(e) => {
            let reason = e.to_string();
            debug!(model = %id, error = %reason, "symbolic analysis failed; plans are built per input shape");
            load_per_shape(id, bytes, model, options, reason)
        }
    }
}

/// Types, declutters and optimises the model once with symbolic dimensions.
fn load_symbolic(
    id: ModelId,
    bytes: &[u8],
    model: InferenceModel,
    batch: &Symbol,
    options: &RunOptions,
) -> Result<LoadedModel, InferenceError> {
    let invalid = |e: TractError| InferenceError::ModelInvalid(format!("{e:#}"));
    let typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(invalid)?;
    let mut inputs = Vec::new();
    let mut input_types = Vec::new();
    for outlet in typed.input_outlets().map_err(invalid)? {
        let fact = typed.outlet_fact(*outlet).map_err(invalid)?;
        input_types.push(fact.datum_type);
        inputs.push(describe(typed.node(outlet.node).name.clone(), fact));
    }
    let mut outputs = Vec::new();
    for outlet in typed.output_outlets().map_err(invalid)? {
        let fact = typed.outlet_fact(*outlet).map_err(invalid)?;
        let name = typed
            .outlet_label(*outlet)
            .map(str::to_string)
            .unwrap_or_else(|| typed.node(outlet.node).name.clone());
        outputs.push(describe(name, fact));
    }
    let batch_dim = Dim::Symbol(batch.to_string());
    let batchable = !inputs.is_empty()
        && inputs
            .iter()
            .chain(outputs.iter())
            .all(|t| t.shape.first() == Some(&batch_dim))
        && inputs
            .iter()
            .all(|t| !t.shape.iter().skip(1).any(|d| *d == batch_dim));
    let optimised = typed.into_optimized().map_err(invalid)?;
    let plan_nodes = optimised.nodes().len();
    let plan = TypedSimplePlan::new_with_options(optimised, options).map_err(invalid)?;
    Ok(LoadedModel {
        info: ModelInfo {
            id,
            bytes: bytes.len() as u64,
            inputs,
            outputs,
            batchable,
            plan_nodes,
        },
        plans: Plans::Symbolic(plan),
        input_types,
    })
}

/// Describes the model from its declared graph inputs and outputs and keeps the parsed
/// graph, so a plan can be built for each task's concrete input shapes.
fn load_per_shape(
    id: ModelId,
    bytes: &[u8],
    model: InferenceModel,
    options: &RunOptions,
    symbolic_error: String,
) -> Result<LoadedModel, InferenceError> {
    let invalid = |e: TractError| InferenceError::ModelInvalid(format!("{e:#}"));
    let mut inputs = Vec::new();
    let mut input_types = Vec::new();
    for (ix, outlet) in model.input_outlets().map_err(invalid)?.iter().enumerate() {
        let fact = model.outlet_fact(*outlet).map_err(invalid)?;
        let name = model.node(outlet.node).name.clone();
        let Some(dt) = fact.datum_type.concretize() else {
            return Err(InferenceError::ModelInvalid(format!(
                "input `{name}` declares no element type"
            )));
        };
        if fact.shape.is_open() {
            return Err(InferenceError::ModelInvalid(format!(
                "input `{name}` declares no rank"
            )));
        }
        input_types.push(dt);
        inputs.push(TensorInfo {
            name,
            dtype: dtype_name(dt),
            shape: fact
                .shape
                .dims()
                .enumerate()
                .map(|(axis, d)| inferred_dim(d, ix, axis))
                .collect(),
        });
    }
    let mut outputs = Vec::new();
    for (ix, outlet) in model.output_outlets().map_err(invalid)?.iter().enumerate() {
        let fact = model.outlet_fact(*outlet).map_err(invalid)?;
        let name = model
            .outlet_label(*outlet)
            .map(str::to_string)
            .unwrap_or_else(|| model.node(outlet.node).name.clone());
        outputs.push(TensorInfo {
            name,
            dtype: fact
                .datum_type
                .concretize()
                .map_or_else(|| "?".to_string(), dtype_name),
            shape: fact
                .shape
                .dims()
                .enumerate()
                .map(|(axis, d)| inferred_dim(d, ix, axis))
                .collect(),
        });
    }
    let plan_nodes = model.nodes().len();
    Ok(LoadedModel {
        info: ModelInfo {
            id,
            bytes: bytes.len() as u64,
            inputs,
            outputs,
            batchable: false,
            plan_nodes,
        },
        plans: Plans::PerShape(Box::new(PerShape {
            source: model,
            options: options.clone(),
            symbolic_error,
            plans: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_SHAPE_PLANS).unwrap_or(NonZeroUsize::MIN),
            )),
            stats: Mutex::new(PlanStats::default()),
            by_value: AtomicBool::new(false),
        })),
        input_types,
    })
}

/// A declared dimension: its size when fixed, else its symbol (the batch symbol, the ONNX
/// `dim_param` name, or the name the loader gave an unnamed one).
fn inferred_dim(d: &GenericFactoid<TDim>, ix: usize, axis: usize) -> Dim {
    match d.concretize() {
        Some(d) => match d.to_i64() {
            Ok(v) if v >= 0 => Dim::Fixed(v as u64),
            _ => Dim::Symbol(d.to_string()),
        },
        None => Dim::Symbol(format!("d{ix}_{axis}")),
    }
}

/// Integer inputs this small may be fixed by value in a per-shape plan: sample rates, flags
/// and lengths that an `If` or a `Reshape` reads.
const MAX_VALUE_ELEMENTS: usize = 8;

impl PerShape {
    fn plan_for(
        &self,
        info: &ModelInfo,
        types: &[DatumType],
        inputs: &[TValue],
    ) -> Result<Arc<TypedSimplePlan>, InferenceError> {
        let by_value = self.by_value.load(Ordering::Relaxed);
        let result = self.cached_plan(info, types, inputs, by_value);
        if result.is_err() && !by_value && inputs.iter().any(small_integer) {
            // Shapes alone were not enough (an `If` or a shape computation reads these
            // inputs' values): fix the small integer inputs by value, and keep doing so.
            let retry = self.cached_plan(info, types, inputs, true);
            if retry.is_ok() {
                self.by_value.store(true, Ordering::Relaxed);
                debug!(model = %info.id, "plans are built per input shapes and small integer values");
            }
            return retry;
        }
        result
    }

    fn cached_plan(
        &self,
        info: &ModelInfo,
        types: &[DatumType],
        inputs: &[TValue],
        by_value: bool,
    ) -> Result<Arc<TypedSimplePlan>, InferenceError> {
        let key = PlanKey {
            shapes: inputs.iter().map(|t| t.shape().to_vec()).collect(),
            values: inputs
                .iter()
                .map(|t| (by_value && small_integer(t)).then(|| integer_values(t)))
                .collect(),
        };
        let slot = {
            let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
            match plans.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let s: PlanSlot = Arc::new(OnceLock::new());
                    plans.put(key.clone(), s.clone());
                    s
                }
            }
        };
        let mut built = None;
        let result = slot
            .get_or_init(|| {
                let started = Instant::now();
                let r = catch_unwind(AssertUnwindSafe(|| self.build(types, &key, inputs)))
                    .unwrap_or_else(|p| {
                        Err(InferenceError::ModelInvalid(format!(
                            "runtime panicked on it: {}",
                            panic_text(&p)
                        )))
                    });
                built = Some(started.elapsed());
                r
            })
            .clone();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        match built {
            Some(spent) => {
                let us = u64::try_from(spent.as_micros()).unwrap_or(u64::MAX);
                stats.misses = stats.misses.saturating_add(1);
                stats.build_micros = stats.build_micros.saturating_add(us);
                stats.max_build_micros = stats.max_build_micros.max(us);
                debug!(model = %info.id, shapes = ?key.shapes, micros = us, "plan built for input shapes");
            }
            None => stats.hits = stats.hits.saturating_add(1),
        }
        result
    }

    /// Types and optimises the graph with every input fixed to its concrete shape (and the
    /// inputs the key names, to their values).
    fn build(
        &self,
        types: &[DatumType],
        key: &PlanKey,
        inputs: &[TValue],
    ) -> Result<Arc<TypedSimplePlan>, InferenceError> {
        let mut model = self.source.clone();
        let shapes_text = key
            .shapes
            .iter()
            .map(|s| shape_text(s))
            .collect::<Vec<_>>()
            .join(", ");
        let invalid = |e: TractError| {
            InferenceError::ModelInvalid(format!(
                "cannot run on inputs {shapes_text}: {e:#} (symbolic analysis: {})",
                self.symbolic_error
            ))
        };
        for (ix, shape) in key.shapes.iter().enumerate() {
            let dt = *types
                .get(ix)
                .ok_or_else(|| InferenceError::Inference(format!("input {ix} has no type")))?;
            let fact = match (key.values.get(ix), inputs.get(ix)) {
                (Some(Some(_)), Some(t)) => InferenceFact::from(t.clone().into_tensor()),
                _ => InferenceFact::dt_shape(dt, shape.as_slice()),
            };
            model.set_input_fact(ix, fact).map_err(invalid)?;
        }
        let optimised = model.into_optimized().map_err(invalid)?;
        TypedSimplePlan::new_with_options(optimised, &self.options).map_err(invalid)
    }
}

/// A small integer tensor's values, as i64 (empty when they cannot be read).
fn integer_values(t: &TValue) -> Vec<i64> {
    let Ok(t) = t.cast_to::<i64>() else {
        return Vec::new();
    };
    t.try_as_plain_ram()
        .ok()
        .and_then(|v| v.as_slice::<i64>().ok().map(<[i64]>::to_vec))
        .unwrap_or_default()
}

/// An integer tensor small enough to fix by value.
fn small_integer(t: &TValue) -> bool {
    matches!(t.datum_type(), DatumType::I64 | DatumType::I32) && t.len() <= MAX_VALUE_ELEMENTS
}

fn describe(name: String, fact: &TypedFact) -> TensorInfo {
    TensorInfo {
        name,
        dtype: dtype_name(fact.datum_type),
        shape: fact
            .shape
            .iter()
            .map(|d| match d.to_i64() {
                Ok(v) if v >= 0 => Dim::Fixed(v as u64),
                _ => Dim::Symbol(d.to_string()),
            })
            .collect(),
    }
}

/// The shape of a one-row probe input and its element count, or `None` when a non-batch
/// dimension is symbolic or the count overflows.
fn probe_shape(dims: &[Dim]) -> Option<(Vec<u64>, u64)> {
    let shape: Vec<u64> = dims
        .iter()
        .enumerate()
        .map(|(axis, d)| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Symbol(_) if axis == 0 => Some(1),
            Dim::Symbol(_) => None,
        })
        .collect::<Option<_>>()?;
    let n = element_count(&shape)?;
    Some((shape, n))
}

/// The number of elements of a shape, or `None` when it overflows `u64`.
pub(crate) fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// A deterministic value in [0, 1) that differs between the two probe rows.
fn probe_value(seed: u32, i: usize) -> f64 {
    let x = (i as u64)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(u64::from(seed).wrapping_mul(40_503).wrapping_add(17));
    x.checked_rem(1000).unwrap_or(0) as f64 / 1000.0
}

/// Equal up to float rounding (batched and single-row kernels sum in different orders).
fn close(a: &WireTensor, b: &WireTensor) -> bool {
    fn near(x: f64, y: f64) -> bool {
        (x - y).abs() <= 1e-4 + 1e-4 * y.abs()
    }
    if a.shape != b.shape {
        return false;
    }
    match (&a.data, &b.data) {
        (TensorData::F32(x), TensorData::F32(y)) => x
            .iter()
            .zip(y)
            .all(|(x, y)| near(f64::from(*x), f64::from(*y))),
        (TensorData::F64(x), TensorData::F64(y)) => x.iter().zip(y).all(|(x, y)| near(*x, *y)),
        (x, y) => x == y,
    }
}

/// Stacks tensors of the same type and trailing shape along axis 0.
pub(crate) fn concat_rows(parts: &[&WireTensor]) -> Result<WireTensor, InferenceError> {
    let Some(first) = parts.first() else {
        return Err(InferenceError::InputInvalid("no tensors to batch".into()));
    };
    if first.shape.is_empty() {
        return Err(InferenceError::InputInvalid("cannot batch a scalar".into()));
    }
    let mut rows = 0u64;
    for p in parts {
        if p.shape.len() != first.shape.len()
            || p.shape[1..] != first.shape[1..]
            || p.data.dtype() != first.data.dtype()
        {
            return Err(InferenceError::InputInvalid(format!(
                "cannot batch {} {} with {} {}",
                shape_text(&first.shape),
                first.data.dtype(),
                shape_text(&p.shape),
                p.data.dtype()
            )));
        }
        rows = rows.checked_add(p.shape[0]).ok_or_else(|| {
            InferenceError::InputInvalid("batched rows overflow a dimension".into())
        })?;
    }
    let total = parts
        .iter()
        .try_fold(0usize, |acc, p| acc.checked_add(p.data.len()))
        .ok_or_else(|| InferenceError::InputInvalid("batched inputs are too large".into()))?;
    macro_rules! cat {
        ($variant:ident) => {{
            let mut all = Vec::with_capacity(total);
            for p in parts {
                if let TensorData::$variant(v) = &p.data {
                    all.extend_from_slice(v);
                }
            }
            TensorData::$variant(all)
        }};
    }
    let data = match first.data {
        TensorData::F32(_) => cat!(F32),
        TensorData::F64(_) => cat!(F64),
        TensorData::I64(_) => cat!(I64),
        TensorData::I32(_) => cat!(I32),
        TensorData::U8(_) => cat!(U8),
    };
    let mut shape = first.shape.clone();
    shape[0] = rows;
    Ok(WireTensor { shape, data })
}

/// Checks a job's inputs against a model's signature; returns them in graph order.
pub(crate) fn bind_inputs<'a>(
    info: &ModelInfo,
    inputs: &'a [NamedTensor],
) -> Result<Vec<&'a WireTensor>, InferenceError> {
    let names = || {
        info.inputs
            .iter()
            .map(|i| format!("`{}` {}", i.name, i.signature()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for t in inputs {
        if !info.inputs.iter().any(|i| i.name == t.name) {
            return Err(InferenceError::InputInvalid(format!(
                "model has no input `{}`; its inputs are {}",
                t.name,
                names()
            )));
        }
    }
    let mut bound = Vec::with_capacity(info.inputs.len());
    let mut symbols: HashMap<&str, (u64, &str)> = HashMap::new();
    for spec in &info.inputs {
        let mut given = inputs.iter().filter(|t| t.name == spec.name);
        let Some(t) = given.next() else {
            return Err(InferenceError::InputInvalid(format!(
                "missing input `{}` {}",
                spec.name,
                spec.signature()
            )));
        };
        if given.next().is_some() {
            return Err(InferenceError::InputInvalid(format!(
                "input `{}` is given more than once",
                spec.name
            )));
        }
        let t = &t.tensor;
        t.check_shape()
            .map_err(|e| InferenceError::InputInvalid(format!("input `{}`: {e}", spec.name)))?;
        let mismatch = || {
            InferenceError::InputInvalid(format!(
                "input `{}` expects shape {}, got {} {}",
                spec.name,
                spec.signature(),
                shape_text(&t.shape),
                t.data.dtype()
            ))
        };
        if t.data.dtype() != spec.dtype || t.shape.len() != spec.shape.len() {
            return Err(mismatch());
        }
        for (axis, (want, got)) in spec.shape.iter().zip(&t.shape).enumerate() {
            match want {
                Dim::Fixed(n) if n != got => return Err(mismatch()),
                Dim::Fixed(_) => {}
                Dim::Symbol(s) => {
                    if *got == 0 {
                        return Err(InferenceError::InputInvalid(format!(
                            "input `{}` has an empty dimension {s} (axis {axis})",
                            spec.name
                        )));
                    }
                    match symbols.get(s.as_str()) {
                        Some((v, other)) if v != got => {
                            return Err(InferenceError::InputInvalid(format!(
                                "input `{}` has {s}={got} but input `{other}` has {s}={v}",
                                spec.name
                            )));
                        }
                        Some(_) => {}
                        None => {
                            symbols.insert(s, (*got, spec.name.as_str()));
                        }
                    }
                }
            }
        }
        bound.push(t);
    }
    Ok(bound)
}

/// The message of a caught panic.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            id: ModelId([0; 32]),
            bytes: 0,
            inputs: vec![
                TensorInfo {
                    name: "x".into(),
                    dtype: "float32".into(),
                    shape: vec![Dim::Symbol("N".into()), Dim::Fixed(3)],
                },
                TensorInfo {
                    name: "ids".into(),
                    dtype: "int64".into(),
                    shape: vec![Dim::Symbol("N".into())],
                },
            ],
            outputs: vec![],
            batchable: true,
            plan_nodes: 0,
        }
    }

    fn x(rows: u64) -> NamedTensor {
        NamedTensor {
            name: "x".into(),
            tensor: WireTensor::f32(vec![rows, 3], vec![0.5; rows as usize * 3]).unwrap(),
        }
    }

    fn ids(rows: u64) -> NamedTensor {
        NamedTensor {
            name: "ids".into(),
            tensor: WireTensor {
                shape: vec![rows],
                data: TensorData::I64(vec![1; rows as usize]),
            },
        }
    }

    fn err(inputs: &[NamedTensor]) -> String {
        match bind_inputs(&info(), inputs) {
            Err(InferenceError::InputInvalid(m)) => m,
            other => panic!("expected InputInvalid, got {other:?}"),
        }
    }

    #[test]
    fn binding_orders_inputs_like_the_graph() {
        let given = [ids(2), x(2)];
        let bound = bind_inputs(&info(), &given).unwrap();
        assert_eq!(bound[0].shape, vec![2, 3]);
        assert_eq!(bound[1].shape, vec![2]);
    }

    #[test]
    fn binding_errors_name_the_problem() {
        assert!(err(&[x(1)]).contains("missing input `ids` [N] int64"));
        assert!(err(&[x(1), ids(1), x(1)]).contains("more than once"));
        let mut bad = x(1);
        bad.name = "y".into();
        assert!(err(&[bad, ids(1)]).contains("no input `y`"));
        let wrong = NamedTensor {
            name: "x".into(),
            tensor: WireTensor::f32(vec![1, 10], vec![0.0; 10]).unwrap(),
        };
        assert_eq!(
            err(&[wrong, ids(1)]),
            "input `x` expects shape [N,3] float32, got [1,10] float32"
        );
        let f64s = NamedTensor {
            name: "x".into(),
            tensor: WireTensor {
                shape: vec![1, 3],
                data: TensorData::F64(vec![0.0; 3]),
            },
        };
        assert!(err(&[f64s, ids(1)]).contains("got [1,3] float64"));
        assert!(err(&[x(2), ids(3)]).contains("N=3"));
        assert!(err(&[x(0), ids(0)]).contains("empty dimension"));
    }

    #[test]
    fn rows_concatenate_and_refuse_mismatches() {
        let a = WireTensor::f32(vec![1, 2], vec![1., 2.]).unwrap();
        let b = WireTensor::f32(vec![2, 2], vec![3., 4., 5., 6.]).unwrap();
        let c = concat_rows(&[&a, &b]).unwrap();
        assert_eq!(
            c,
            WireTensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap()
        );
        let odd = WireTensor::f32(vec![1, 3], vec![0.; 3]).unwrap();
        assert!(concat_rows(&[&a, &odd]).is_err());
        assert!(concat_rows(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn concatenated_rows_split_back_into_their_parts(
            parts in proptest::collection::vec((1u64..4, proptest::collection::vec(-1e3f32..1e3, 12)), 1..6)
        ) {
            // Each part has `rows` rows of 3 columns, filled from the generated values.
            let tensors: Vec<WireTensor> = parts
                .iter()
                .map(|(rows, vals)| {
                    let n = (*rows * 3) as usize;
                    WireTensor::f32(vec![*rows, 3], vals.iter().cycle().take(n).copied().collect()).unwrap()
                })
                .collect();
            let refs: Vec<&WireTensor> = tensors.iter().collect();
            let joined = concat_rows(&refs).unwrap();
            let t = convert::to_tract(&joined).unwrap();
            let mut start = 0usize;
            for part in &tensors {
                let end = start + part.shape[0] as usize;
                proptest::prop_assert_eq!(&convert::from_tract(&t, Some((start, end))).unwrap(), part);
                start = end;
            }
            proptest::prop_assert_eq!(start as u64, joined.shape[0]);
        }
    }

    #[test]
    fn probe_rows_differ_and_stay_in_unit_range() {
        let a: Vec<f64> = (0..64).map(|i| probe_value(0, i)).collect();
        let b: Vec<f64> = (0..64).map(|i| probe_value(1, i)).collect();
        assert_ne!(a, b);
        assert!(a.iter().chain(&b).all(|v| (0.0..1.0).contains(v)));
    }
}
