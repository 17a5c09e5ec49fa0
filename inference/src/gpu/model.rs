//! A model loaded on the GPU: its graph, its weights (uploaded once) and its plans, one per
//! set of input shapes, least recently used dropped first.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crank_protocol::{ModelId, NamedTensor, Tensor as WireTensor};
use lru::LruCache;
use tracing::debug;
use wgpu::util::DeviceExt;

use super::Shared;
use super::error::GpuError;
use super::lower::lower;
use super::onnx::{ConstData, DType, DeclaredDim, Graph, Source, ValueId};
use super::plan::Plan;
use super::pool::size_class;

/// Name, element type and declared shape of a model input or output (`None` for a
/// dimension chosen per run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuTensorInfo {
    /// The ONNX graph name.
    pub name: String,
    /// `float32` or `int64`.
    pub dtype: String,
    /// Declared dimensions; outputs have none declared here (they follow from the inputs).
    pub shape: Vec<Option<u64>>,
}

type Shapes = Vec<Vec<usize>>;

struct Inner {
    id: ModelId,
    rt: Arc<Shared>,
    graph: Graph,
    weights: HashMap<ValueId, wgpu::Buffer>,
    weight_bytes: u64,
    plans: Mutex<LruCache<Shapes, Arc<Mutex<Plan>>>>,
}

/// A model ready to run on the GPU. Cheap to clone; runs from several threads are safe
/// (each set of input shapes has its own plan, used by one run at a time).
#[derive(Clone)]
pub struct GpuModel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("id", &self.inner.id)
            .field("nodes", &self.inner.graph.nodes.len())
            .field("weight_bytes", &self.inner.weight_bytes)
            .finish_non_exhaustive()
    }
}

/// Values the GPU must hold: constants read by a kernel or returned as outputs (shape and
/// axis constants are read on the host and are not uploaded).
fn device_constants(graph: &Graph) -> Vec<ValueId> {
    let mut ids = Vec::new();
    for n in &graph.nodes {
        let host = n.op.host_inputs();
        for (pos, id) in n.inputs.iter().enumerate() {
            if let Some(id) = id
                && !host.contains(&pos)
                && graph.constant(*id).is_some()
            {
                ids.push(*id);
            }
        }
    }
    for (id, _) in &graph.outputs {
        if graph.constant(*id).is_some() {
            ids.push(*id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl GpuModel {
    pub(crate) fn load(rt: Arc<Shared>, id: ModelId, bytes: &[u8]) -> Result<Self, GpuError> {
        let started = Instant::now();
        let graph = Graph::parse(bytes)?;
        let max_binding = rt
            .limits
            .max_storage_buffer_binding_size
            .min(rt.limits.max_buffer_size);
        let mut weights = HashMap::new();
        let mut weight_bytes = 0u64;
        rt.scoped(|| {
            for vid in device_constants(&graph) {
                let Some(Source::Const(c)) = graph.values.get(vid).map(|v| &v.source) else {
                    continue;
                };
                let data: Vec<u8> = match &c.data {
                    ConstData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ConstData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                let name = graph.values.get(vid).map_or("?", |v| v.name.as_str());
                if data.is_empty() {
                    // An empty constant cannot be bound; a plan that needs it says so.
                    continue;
                }
                if size_class(data.len() as u64) > max_binding {
                    return Err(GpuError::TooLarge {
                        value: name.to_string(),
                        bytes: data.len() as u64,
                        limit: max_binding,
                    });
                }
                // A statistic; each constant is already below the binding limit.
                weight_bytes = weight_bytes.saturating_add(data.len() as u64);
                let buf = rt
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(name),
                        contents: &data,
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    });
                weights.insert(vid, buf);
            }
            Ok(())
        })?;
        let cap = NonZeroUsize::new(rt.config.plans_per_model).unwrap_or(NonZeroUsize::MIN);
        debug!(
            model = %id,
            nodes = graph.nodes.len(),
            weight_bytes,
            millis = started.elapsed().as_millis() as u64,
            "model loaded on the GPU"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                rt,
                graph,
                weights,
                weight_bytes,
                plans: Mutex::new(LruCache::new(cap)),
            }),
        })
    }

    /// The model's content id.
    pub fn id(&self) -> ModelId {
        self.inner.id
    }

    /// Bytes of weights uploaded to the device.
    pub fn weight_bytes(&self) -> u64 {
        self.inner.weight_bytes
    }

    /// The graph inputs, in order.
    pub fn inputs(&self) -> Vec<GpuTensorInfo> {
        self.inner
            .graph
            .inputs
            .iter()
            .map(|i| GpuTensorInfo {
                name: i.name.clone(),
                dtype: i.dtype.name().to_string(),
                shape: i
                    .dims
                    .iter()
                    .map(|d| match d {
                        DeclaredDim::Fixed(n) => Some(*n as u64),
                        DeclaredDim::Free(_) => None,
                    })
                    .collect(),
            })
            .collect()
    }

    /// The graph output names, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.inner
            .graph
            .outputs
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Runs the model on named inputs; returns the outputs named like the graph's, in
    /// graph order. Waits at most the configured run time.
    pub fn run(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, GpuError> {
        let ordered = self.bind(inputs)?;
        let deadline = Instant::now()
            .checked_add(self.inner.rt.config.max_run_time)
            .ok_or_else(|| GpuError::Backend("the configured run time is out of range".into()))?;
        let outputs = self.run_ordered(&ordered, deadline, &|| false)?;
        Ok(self
            .inner
            .graph
            .outputs
            .iter()
            .zip(outputs)
            .map(|((_, name), tensor)| NamedTensor {
                name: name.clone(),
                tensor,
            })
            .collect())
    }

    /// Checks named inputs against the graph and orders them like its inputs.
    pub fn bind<'a>(&self, inputs: &'a [NamedTensor]) -> Result<Vec<&'a WireTensor>, GpuError> {
        let g = &self.inner.graph;
        for t in inputs {
            if !g.inputs.iter().any(|i| i.name == t.name) {
                return Err(GpuError::InputInvalid(format!(
                    "the model has no input `{}`",
                    t.name
                )));
            }
        }
        g.inputs
            .iter()
            .map(|decl| {
                let mut given = inputs.iter().filter(|t| t.name == decl.name);
                match (given.next(), given.next()) {
                    (Some(t), None) => Ok(&t.tensor),
                    (None, _) => Err(GpuError::InputInvalid(format!(
                        "missing input `{}`",
                        decl.name
                    ))),
                    (Some(_), Some(_)) => Err(GpuError::InputInvalid(format!(
                        "input `{}` is given more than once",
                        decl.name
                    ))),
                }
            })
            .collect()
    }

    /// Runs on inputs in graph order. Waits at most until `deadline` and gives up early when
    /// `stop` returns true; either way the plan in use is discarded.
    pub fn run_ordered(
        &self,
        inputs: &[&WireTensor],
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<WireTensor>, GpuError> {
        let shapes = self.check(inputs)?;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let plan = self.plan(&shapes)?;
            let mut guard = plan.lock().unwrap_or_else(|p| p.into_inner());
            let rt = &self.inner.rt;
            let result = rt.scoped(|| guard.run(rt, &self.inner.weights, inputs, deadline, stop));
            if result.is_err() {
                // A failed or abandoned run may leave the plan mid-use; build a fresh one.
                guard.broken = true;
            }
            drop(guard);
            if result.is_err() {
                let mut plans = self.plans();
                if plans.peek(&shapes).is_some_and(|p| Arc::ptr_eq(p, &plan)) {
                    plans.pop(&shapes);
                }
            }
            result
        }));
        outcome.unwrap_or_else(|p| {
            Err(GpuError::Backend(format!(
                "the GPU runtime panicked: {}",
                crate::model::panic_text(&*p)
            )))
        })
    }

    fn plans(&self) -> MutexGuard<'_, LruCache<Shapes, Arc<Mutex<Plan>>>> {
        // Cache operations are single pushes and pops; a poisoned lock is still consistent.
        self.inner.plans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan for these input shapes, built on first use.
    fn plan(&self, shapes: &Shapes) -> Result<Arc<Mutex<Plan>>, GpuError> {
        if let Some(p) = self.plans().get(shapes) {
            return Ok(p.clone());
        }
        let started = Instant::now();
        let inner = &self.inner;
        let program = lower(&inner.graph, shapes)?;
        let plan = inner
            .rt
            .scoped(|| Plan::build(&inner.rt, &inner.graph, &program, &inner.weights))?;
        debug!(
            model = %inner.id,
            shapes = ?shapes,
            dispatches = program.steps.len(),
            millis = started.elapsed().as_millis() as u64,
            "GPU plan built"
        );
        let plan = Arc::new(Mutex::new(plan));
        self.plans().put(shapes.clone(), plan.clone());
        Ok(plan)
    }

    /// Checks element types, ranks and declared dimensions; returns the shapes.
    fn check(&self, inputs: &[&WireTensor]) -> Result<Shapes, GpuError> {
        let g = &self.inner.graph;
        if inputs.len() != g.inputs.len() {
            return Err(GpuError::InputInvalid(format!(
                "{} inputs given; the model takes {}",
                inputs.len(),
                g.inputs.len()
            )));
        }
        let mut named: HashMap<&str, (usize, &str)> = HashMap::new();
        let mut shapes = Vec::with_capacity(inputs.len());
        for (decl, t) in g.inputs.iter().zip(inputs) {
            t.check_shape()
                .map_err(|e| GpuError::InputInvalid(format!("input `{}`: {e}", decl.name)))?;
            let dtype_ok = matches!(
                (&t.data, decl.dtype),
                (crank_protocol::TensorData::F32(_), DType::F32)
                    | (crank_protocol::TensorData::I64(_), DType::I64)
            );
            let shape: Vec<usize> = t
                .shape
                .iter()
                .map(|d| usize::try_from(*d))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    GpuError::InputInvalid(format!("input `{}` is too large", decl.name))
                })?;
            let mismatch = || {
                GpuError::InputInvalid(format!(
                    "input `{}` expects {} with dims {:?}, got {} {:?}",
                    decl.name,
                    decl.dtype.name(),
                    decl.dims,
                    t.data.dtype(),
                    t.shape
                ))
            };
            if !dtype_ok || shape.len() != decl.dims.len() {
                return Err(mismatch());
            }
            for (want, got) in decl.dims.iter().zip(&shape) {
                if *got == 0 {
                    return Err(GpuError::InputInvalid(format!(
                        "input `{}` has an empty dimension",
                        decl.name
                    )));
                }
                match want {
                    DeclaredDim::Fixed(n) if n != got => return Err(mismatch()),
                    DeclaredDim::Free(Some(sym)) => match named.get(sym.as_str()) {
                        Some((v, other)) if v != got => {
                            return Err(GpuError::InputInvalid(format!(
                                "input `{}` has {sym}={got} but `{other}` has {sym}={v}",
                                decl.name
                            )));
                        }
                        Some(_) => {}
                        None => {
                            named.insert(sym, (*got, decl.name.as_str()));
                        }
                    },
                    _ => {}
                }
            }
            shapes.push(shape);
        }
        Ok(shapes)
    }
}
