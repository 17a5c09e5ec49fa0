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
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use crank_protocol::{ModelId, NamedTensor, Tensor as WireTensor, TensorData};
use serde::{Deserialize, Serialize};
use tracing::debug;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;

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

/// A model loaded once per content id: its optimised plan, its signature, and spare run
/// states (reusing a state avoids re-allocating per run).
pub(crate) struct LoadedModel {
    pub info: ModelInfo,
    pub plan: Arc<TypedSimplePlan>,
    input_types: Vec<DatumType>,
    states: Mutex<Vec<TypedSimpleState>>,
}

impl fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Spare states kept per model; more would only hold memory for workers that are gone.
const MAX_SPARE_STATES: usize = 16;

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

    /// Takes a spare run state or makes one.
    pub fn take_state(&self) -> Result<TypedSimpleState, InferenceError> {
        if let Some(s) = self.states.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(s);
        }
        self.plan
            .spawn()
            .map_err(|e| InferenceError::Inference(format!("{e:#}")))
    }

    /// Returns a state after a successful run.
    pub fn put_state(&self, state: TypedSimpleState) {
        if let Ok(mut v) = self.states.lock()
            && v.len() < MAX_SPARE_STATES
        {
            v.push(state);
        }
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
            let r = catch_unwind(AssertUnwindSafe(|| {
                self.plan
                    .run(inputs.into_iter().map(|t| t.into_tvalue()).collect())
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
    let typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(invalid)?;
    let mut inputs = Vec::new();
    let mut input_types = Vec::new();
    for (ix, outlet) in typed.input_outlets().map_err(invalid)?.iter().enumerate() {
        let fact = typed.outlet_fact(*outlet).map_err(invalid)?;
        input_types.push(fact.datum_type);
        inputs.push(describe(typed.node(outlet.node).name.clone(), fact, ix));
    }
    let mut outputs = Vec::new();
    for (ix, outlet) in typed.output_outlets().map_err(invalid)?.iter().enumerate() {
        let fact = typed.outlet_fact(*outlet).map_err(invalid)?;
        let name = typed
            .outlet_label(*outlet)
            .map(str::to_string)
            .unwrap_or_else(|| typed.node(outlet.node).name.clone());
        outputs.push(describe(name, fact, ix));
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
        plan,
        input_types,
        states: Mutex::new(Vec::new()),
    })
}

fn describe(name: String, fact: &TypedFact, _ix: usize) -> TensorInfo {
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
