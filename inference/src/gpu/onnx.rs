//! Reading an ONNX model into the GPU runner's graph: values (inputs, constants, node
//! outputs), nodes with their attributes parsed into [`Op`]s, in topological order.
//!
//! Parsing is where unsupported operators are found, so a model that cannot run on the GPU
//! is refused at load time with the first such node named, before any buffer is made.

use std::collections::{HashMap, VecDeque};

use tract_onnx::pb::{
    self, AttributeProto, NodeProto, TensorProto, tensor_proto::DataType,
    tensor_shape_proto::dimension, type_proto,
};
use tract_onnx::prelude::Framework;

use super::error::GpuError;

/// Index of a value in [`Graph::values`].
pub(crate) type ValueId = usize;

/// Element types the kernels handle. `I64` lives on the GPU as two little-endian `u32` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit signed integer.
    I64,
}

impl DType {
    /// 32-bit words per element on the GPU.
    pub fn words(self) -> u64 {
        match self {
            Self::F32 => 1,
            Self::I64 => 2,
        }
    }

    /// The name ONNX and the wire use.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::I64 => "int64",
        }
    }

    fn from_onnx(code: i32) -> Option<Self> {
        match DataType::try_from(code).ok()? {
            DataType::Float => Some(Self::F32),
            DataType::Int64 => Some(Self::I64),
            _ => None,
        }
    }
}

/// The ONNX name of an element type code, for messages.
fn onnx_type_name(code: i32) -> String {
    DataType::try_from(code).map_or_else(|_| format!("type {code}"), |t| format!("{t:?}"))
}

/// Constant data (initializers and `Constant` nodes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ConstData {
    /// Floats.
    F32(Vec<f32>),
    /// Integers (`int32` constants are widened: they only ever hold shapes and indices).
    I64(Vec<i64>),
}

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Const {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: ConstData,
}

impl Const {
    /// The element type, when the kernels can use it; `int32` constants are only usable on
    /// the host.
    pub fn dtype(&self) -> DType {
        match self.data {
            ConstData::F32(_) => DType::F32,
            ConstData::I64(_) => DType::I64,
        }
    }

    /// The values as integers, for shape and axis inputs.
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            ConstData::I64(v) => Some(v),
            ConstData::F32(_) => None,
        }
    }

    /// The single value as a float, for scalar inputs (Clip bounds).
    pub fn scalar_f32(&self) -> Option<f32> {
        match &self.data {
            ConstData::F32(v) if v.len() == 1 => v.first().copied(),
            _ => None,
        }
    }
}

/// A dimension of a graph input as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeclaredDim {
    /// A fixed size.
    Fixed(usize),
    /// A named or anonymous size chosen per run.
    Free(Option<String>),
}

/// A graph input: its name, element type and declared shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputDecl {
    /// The graph name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Declared dimensions.
    pub dims: Vec<DeclaredDim>,
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    /// Graph input number `n`.
    Input(usize),
    /// A constant.
    Const(Const),
    /// Output of node `n` (index into [`Graph::nodes`]).
    Node(usize),
}

/// A named value of the graph.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Value {
    /// The ONNX name.
    pub name: String,
    /// Its producer.
    pub source: Source,
}

/// Fused activation applied by a kernel to its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// None.
    None = 0,
    /// max(x, 0).
    Relu = 1,
}

/// Element-wise binary operations (multidirectional broadcasting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Max = 4,
    Min = 5,
    Pow = 6,
}

/// Element-wise unary operations; the numbers are the kernel's op codes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum UnOp {
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Reciprocal,
    Floor,
    Ceil,
    /// Bounds may be open (`None`); Clip's inputs are read when the plan is built.
    Clip,
    Elu(f32),
    HardSigmoid(f32, f32),
    Softplus,
    Erf,
}

/// Padding of a convolution or pooling window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Padding {
    /// Explicit begin and end pads per spatial axis.
    Explicit(Vec<usize>, Vec<usize>),
    /// No padding.
    Valid,
    /// Output size ceil(input / stride), extra padding at the end (`upper`) or start.
    Same {
        /// SAME_UPPER when true.
        upper: bool,
    },
}

/// Window geometry shared by Conv and the pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// Kernel size per spatial axis (`None`: from the weights, for Conv).
    pub kernel: Option<Vec<usize>>,
    /// Strides per spatial axis (default 1).
    pub strides: Option<Vec<usize>>,
    /// Dilations per spatial axis (default 1).
    pub dilations: Option<Vec<usize>>,
    /// Padding.
    pub padding: Padding,
    /// Round output sizes up (pools with explicit padding only).
    pub ceil_mode: bool,
}

/// An operator with its attributes, as the GPU runner implements it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// numpy-style matrix product.
    MatMul,
    /// alpha·op(A)·op(B) + beta·C.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    /// Element-wise binary operation.
    Binary(BinOp),
    /// Element-wise unary operation.
    Unary(UnOp),
    /// Softmax or LogSoftmax; `coerce_2d` is the pre-opset-13 form (flatten from `axis`).
    Softmax {
        axis: i64,
        coerce_2d: bool,
        log: bool,
    },
    /// 1-D or 2-D convolution (NCHW).
    Conv { window: Window, group: usize },
    /// MaxPool or AveragePool (1-D or 2-D).
    Pool {
        max: bool,
        window: Window,
        count_include_pad: bool,
    },
    /// GlobalMaxPool or GlobalAveragePool.
    GlobalPool { max: bool },
    /// Reshape to the shape in input 1.
    Reshape { allow_zero: bool },
    /// Flatten to 2-D at `axis`.
    Flatten { axis: i64 },
    /// Remove size-1 axes (attribute before opset 13, else input 1).
    Squeeze { axes: Option<Vec<i64>> },
    /// Insert size-1 axes (attribute before opset 13, else input 1).
    Unsqueeze { axes: Option<Vec<i64>> },
    /// Identity (also Dropout at inference).
    Identity,
    /// Element type conversion.
    Cast { to: DType },
    /// Index of the largest (or smallest) element along an axis, as int64.
    ArgMax {
        axis: i64,
        keep_dims: bool,
        select_last: bool,
        min: bool,
    },
    /// Gather along an axis (ArrayFeatureExtractor is Gather on the last axis).
    Gather { axis: i64 },
}

impl Op {
    /// Positions of the inputs that are read on the host when the plan is built (shapes,
    /// axes, bounds); they must be constants and need no GPU buffer.
    pub fn host_inputs(&self) -> &'static [usize] {
        match self {
            Self::Reshape { .. } | Self::Squeeze { .. } | Self::Unsqueeze { .. } => &[1],
            Self::Unary(UnOp::Clip) => &[1, 2],
            _ => &[],
        }
    }
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// The ONNX node name (or `#index` when unnamed), for messages.
    pub name: String,
    /// The ONNX operator type, for messages.
    pub op_type: String,
    /// The parsed operator.
    pub op: Op,
    /// Inputs; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs.
    pub outputs: Vec<ValueId>,
}

impl Node {
    /// Input `i`, which the operator requires.
    pub fn input(&self, i: usize) -> Result<ValueId, GpuError> {
        self.inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| GpuError::ModelInvalid(format!("node `{}` lacks input {i}", self.name)))
    }

    /// Input `i` if given.
    pub fn opt_input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    /// The first output.
    pub fn output(&self) -> Result<ValueId, GpuError> {
        self.outputs
            .first()
            .copied()
            .ok_or_else(|| GpuError::ModelInvalid(format!("node `{}` has no output", self.name)))
    }
}

/// A parsed model, nodes in an order where every input is produced before it is used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Graph {
    /// Every value.
    pub values: Vec<Value>,
    /// Graph inputs (their values are `Source::Input(i)` in this order).
    pub inputs: Vec<InputDecl>,
    /// Values of the graph inputs, in order.
    pub input_values: Vec<ValueId>,
    /// Graph outputs: value and name.
    pub outputs: Vec<(ValueId, String)>,
    /// Nodes, topologically sorted.
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Parses ONNX bytes. Never panics on malformed input.
    pub fn parse(bytes: &[u8]) -> Result<Self, GpuError> {
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| GpuError::ModelInvalid(format!("{e:#}")))?;
        Self::from_proto(&proto)
    }

    fn from_proto(proto: &pb::ModelProto) -> Result<Self, GpuError> {
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version);
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| GpuError::ModelInvalid("model has no graph".into()))?;
        let mut values: Vec<Value> = Vec::new();
        let mut by_name: HashMap<String, ValueId> = HashMap::new();
        for init in &graph.initializer {
            let c = load_const(init, &init.name)?;
            by_name.insert(init.name.clone(), values.len());
            values.push(Value {
                name: init.name.clone(),
                source: Source::Const(c),
            });
        }
        let mut inputs = Vec::new();
        let mut input_values = Vec::new();
        for vi in &graph.input {
            // Old exporters list initializers among the inputs too; those are constants.
            if by_name.contains_key(&vi.name) {
                continue;
            }
            let decl = input_decl(vi)?;
            by_name.insert(vi.name.clone(), values.len());
            input_values.push(values.len());
            values.push(Value {
                name: vi.name.clone(),
                source: Source::Input(inputs.len()),
            });
            inputs.push(decl);
        }
        // Parse nodes in file order, then sort.
        let mut parsed: Vec<(Node, Vec<String>)> = Vec::with_capacity(graph.node.len());
        for (ix, n) in graph.node.iter().enumerate() {
            let name = if n.name.is_empty() {
                format!("#{ix}")
            } else {
                n.name.clone()
            };
            if n.op_type == "Constant" && n.domain.is_empty() {
                let c = constant_node(n, &name)?;
                let out = n.output.first().ok_or_else(|| {
                    GpuError::ModelInvalid(format!("node `{name}` has no output"))
                })?;
                if by_name.contains_key(out) {
                    return Err(GpuError::ModelInvalid(format!(
                        "value `{out}` defined twice"
                    )));
                }
                by_name.insert(out.clone(), values.len());
                values.push(Value {
                    name: out.clone(),
                    source: Source::Const(c),
                });
                continue;
            }
            let op = parse_op(n, &name, opset)?;
            let node_ix = parsed.len();
            parsed.push((
                Node {
                    name,
                    op_type: n.op_type.clone(),
                    op,
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                },
                n.input.clone(),
            ));
            // Outputs are values now, so later nodes may refer to them.
            for out in &n.output {
                if out.is_empty() {
                    continue;
                }
                if by_name.contains_key(out) {
                    return Err(GpuError::ModelInvalid(format!(
                        "value `{out}` defined twice"
                    )));
                }
                by_name.insert(out.clone(), values.len());
                if let Some((node, _)) = parsed.last_mut() {
                    node.outputs.push(values.len());
                }
                values.push(Value {
                    name: out.clone(),
                    source: Source::Node(node_ix),
                });
            }
        }
        for (node, names) in &mut parsed {
            for name in names.iter() {
                if name.is_empty() {
                    node.inputs.push(None);
                    continue;
                }
                let id = by_name.get(name).copied().ok_or_else(|| {
                    GpuError::ModelInvalid(format!(
                        "node `{}` uses `{name}`, which nothing defines",
                        node.name
                    ))
                })?;
                node.inputs.push(Some(id));
            }
        }
        let nodes = topo_sort(parsed.into_iter().map(|(n, _)| n).collect(), &mut values)?;
        let mut outputs = Vec::new();
        for vi in &graph.output {
            let id = by_name.get(&vi.name).copied().ok_or_else(|| {
                GpuError::ModelInvalid(format!("graph output `{}` is never defined", vi.name))
            })?;
            outputs.push((id, vi.name.clone()));
        }
        if outputs.is_empty() {
            return Err(GpuError::ModelInvalid("graph has no outputs".into()));
        }
        Ok(Self {
            values,
            inputs,
            input_values,
            outputs,
            nodes,
        })
    }

    /// The constant behind a value, if it is one.
    pub fn constant(&self, id: ValueId) -> Option<&Const> {
        match &self.values.get(id)?.source {
            Source::Const(c) => Some(c),
            _ => None,
        }
    }
}

/// Kahn's algorithm; node indices in `values` are renumbered to the sorted order.
fn topo_sort(nodes: Vec<Node>, values: &mut [Value]) -> Result<Vec<Node>, GpuError> {
    let producer = |id: ValueId, values: &[Value]| match values.get(id).map(|v| &v.source) {
        Some(Source::Node(n)) => Some(*n),
        _ => None,
    };
    let mut pending = vec![0usize; nodes.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (ix, n) in nodes.iter().enumerate() {
        for id in n.inputs.iter().flatten() {
            if let Some(p) = producer(*id, values) {
                // At most the number of node inputs, which is in memory.
                pending[ix] = pending[ix].saturating_add(1);
                readers[p].push(ix);
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..nodes.len()).filter(|i| pending[*i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(ix) = ready.pop_front() {
        order.push(ix);
        for r in &readers[ix] {
            // Each reader edge was counted once above, so this never goes below zero.
            pending[*r] = pending[*r].saturating_sub(1);
            if pending[*r] == 0 {
                ready.push_back(*r);
            }
        }
    }
    if order.len() != nodes.len() {
        return Err(GpuError::ModelInvalid("the graph has a cycle".into()));
    }
    let mut new_index = vec![0; nodes.len()];
    for (new, old) in order.iter().enumerate() {
        new_index[*old] = new;
    }
    for v in values.iter_mut() {
        if let Source::Node(n) = &mut v.source {
            *n = new_index[*n];
        }
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    Ok(order.iter().filter_map(|ix| slots[*ix].take()).collect())
}

fn input_decl(vi: &pb::ValueInfoProto) -> Result<InputDecl, GpuError> {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(GpuError::ModelInvalid(format!(
            "input `{}` is not a tensor",
            vi.name
        )));
    };
    let dtype = DType::from_onnx(t.elem_type).ok_or_else(|| GpuError::UnsupportedUse {
        op: "input".into(),
        node: vi.name.clone(),
        reason: format!("element type {}", onnx_type_name(t.elem_type)),
    })?;
    let shape = t.shape.as_ref().ok_or_else(|| GpuError::UnsupportedUse {
        op: "input".into(),
        node: vi.name.clone(),
        reason: "the input has no declared rank".into(),
    })?;
    let dims = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(dimension::Value::DimValue(v)) if *v >= 0 => DeclaredDim::Fixed(*v as usize),
            Some(dimension::Value::DimParam(p)) if !p.is_empty() => {
                DeclaredDim::Free(Some(p.clone()))
            }
            _ => DeclaredDim::Free(None),
        })
        .collect();
    Ok(InputDecl {
        name: vi.name.clone(),
        dtype,
        dims,
    })
}

/// Most elements one constant may declare; guards the allocation against a hostile file.
const MAX_CONST_ELEMENTS: usize = 1 << 28;

/// Decodes an initializer or `Constant` value. Data in external files is refused: the model
/// must be self-contained to be addressed by its hash.
fn load_const(t: &TensorProto, what: &str) -> Result<Const, GpuError> {
    let bad = |m: String| GpuError::ModelInvalid(format!("constant `{what}`: {m}"));
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut count: usize = 1;
    for d in &t.dims {
        let d = usize::try_from(*d).map_err(|_| bad(format!("negative dimension {d}")))?;
        count = count
            .checked_mul(d)
            .filter(|c| *c <= MAX_CONST_ELEMENTS)
            .ok_or_else(|| bad("too many elements".into()))?;
        shape.push(d);
    }
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(GpuError::ModelInvalid(format!(
            "constant `{what}` is stored in an external file"
        )));
    }
    let raw = &t.raw_data;
    let check = |len: usize| {
        if len == count {
            Ok(())
        } else {
            Err(bad(format!("{len} elements for shape {shape:?}")))
        }
    };
    let data = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) => {
            let v: Vec<f32> = if raw.is_empty() {
                t.float_data.clone()
            } else {
                le_words::<4>(raw, &bad)?.map(f32::from_le_bytes).collect()
            };
            check(v.len())?;
            ConstData::F32(v)
        }
        Ok(DataType::Int64) => {
            let v: Vec<i64> = if raw.is_empty() {
                t.int64_data.clone()
            } else {
                le_words::<8>(raw, &bad)?.map(i64::from_le_bytes).collect()
            };
            check(v.len())?;
            ConstData::I64(v)
        }
        Ok(DataType::Int32) => {
            let v: Vec<i64> = if raw.is_empty() {
                t.int32_data.iter().map(|x| i64::from(*x)).collect()
            } else {
                le_words::<4>(raw, &bad)?
                    .map(|b| i64::from(i32::from_le_bytes(b)))
                    .collect()
            };
            check(v.len())?;
            ConstData::I64(v)
        }
        _ => {
            return Err(GpuError::UnsupportedUse {
                op: "constant".into(),
                node: what.to_string(),
                reason: format!("element type {}", onnx_type_name(t.data_type)),
            });
        }
    };
    Ok(Const { shape, data })
}

fn le_words<'a, const N: usize>(
    raw: &'a [u8],
    bad: &dyn Fn(String) -> GpuError,
) -> Result<impl Iterator<Item = [u8; N]> + 'a, GpuError> {
    if !raw.len().is_multiple_of(N) {
        return Err(bad(format!(
            "{} raw bytes is not a whole number of elements",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N])))
}

fn constant_node(n: &NodeProto, name: &str) -> Result<Const, GpuError> {
    let a = n
        .attribute
        .first()
        .ok_or_else(|| GpuError::ModelInvalid(format!("Constant `{name}` has no value")))?;
    match a.name.as_str() {
        "value" => {
            let t = a.t.as_ref().ok_or_else(|| {
                GpuError::ModelInvalid(format!("Constant `{name}` has no tensor"))
            })?;
            load_const(t, name)
        }
        "value_float" => Ok(Const {
            shape: vec![],
            data: ConstData::F32(vec![a.f]),
        }),
        "value_floats" => Ok(Const {
            shape: vec![a.floats.len()],
            data: ConstData::F32(a.floats.clone()),
        }),
        "value_int" => Ok(Const {
            shape: vec![],
            data: ConstData::I64(vec![a.i]),
        }),
        "value_ints" => Ok(Const {
            shape: vec![a.ints.len()],
            data: ConstData::I64(a.ints.clone()),
        }),
        other => Err(GpuError::unsupported(
            "Constant",
            name,
            format!("value given as `{other}`"),
        )),
    }
}

/// Typed access to a node's attributes.
struct Attrs<'a> {
    node: &'a NodeProto,
    name: &'a str,
}

impl Attrs<'_> {
    fn get(&self, key: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == key)
    }

    fn int(&self, key: &str, default: i64) -> i64 {
        self.get(key).map_or(default, |a| a.i)
    }

    fn float(&self, key: &str, default: f32) -> f32 {
        self.get(key).map_or(default, |a| a.f)
    }

    fn ints(&self, key: &str) -> Option<Vec<i64>> {
        self.get(key).map(|a| a.ints.clone())
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    fn sizes(&self, key: &str) -> Result<Option<Vec<usize>>, GpuError> {
        self.ints(key)
            .map(|v| {
                v.iter()
                    .map(|x| {
                        usize::try_from(*x).map_err(|_| {
                            GpuError::ModelInvalid(format!(
                                "node `{}`: attribute `{key}` has negative value {x}",
                                self.name
                            ))
                        })
                    })
                    .collect()
            })
            .transpose()
    }

    fn positive_sizes(&self, key: &str) -> Result<Option<Vec<usize>>, GpuError> {
        let v = self.sizes(key)?;
        if v.as_ref().is_some_and(|v| v.contains(&0)) {
            return Err(GpuError::ModelInvalid(format!(
                "node `{}`: attribute `{key}` has a zero",
                self.name
            )));
        }
        Ok(v)
    }

    fn window(&self, pool: bool) -> Result<Window, GpuError> {
        let kernel = self.positive_sizes("kernel_shape")?;
        let pads = self.sizes("pads")?;
        let padding = match (self.string("auto_pad").as_deref(), pads) {
            (None | Some("NOTSET") | Some(""), Some(p)) => {
                if p.len() % 2 != 0 {
                    return Err(GpuError::ModelInvalid(format!(
                        "node `{}`: odd number of pads",
                        self.name
                    )));
                }
                let (b, e) = p.split_at(p.len() / 2);
                Padding::Explicit(b.to_vec(), e.to_vec())
            }
            (None | Some("NOTSET") | Some("") | Some("VALID"), None) => Padding::Valid,
            (Some("VALID"), Some(_)) => Padding::Valid,
            (Some("SAME_UPPER"), _) => Padding::Same { upper: true },
            (Some("SAME_LOWER"), _) => Padding::Same { upper: false },
            (Some(other), _) => {
                return Err(GpuError::ModelInvalid(format!(
                    "node `{}`: unknown auto_pad `{other}`",
                    self.name
                )));
            }
        };
        // As in tract: ceil_mode only changes explicitly padded (or unpadded) pools.
        let ceil_mode = pool
            && self.int("ceil_mode", 0) == 1
            && matches!(padding, Padding::Explicit(..) | Padding::Valid);
        Ok(Window {
            kernel,
            strides: self.positive_sizes("strides")?,
            dilations: self.positive_sizes("dilations")?,
            padding,
            ceil_mode,
        })
    }
}

/// The ONNX operators the GPU runner implements, for documentation and messages.
pub const SUPPORTED_OPERATORS: &[&str] = &[
    "Abs",
    "Add",
    "ArgMax",
    "ArgMin",
    "ArrayFeatureExtractor",
    "AveragePool",
    "Cast",
    "Ceil",
    "Clip",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Flatten",
    "Floor",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "Identity",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Pow",
    "Reciprocal",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Unsqueeze",
];

fn parse_op(n: &NodeProto, name: &str, opset: i64) -> Result<Op, GpuError> {
    let a = Attrs { node: n, name };
    let unsupported = || GpuError::UnsupportedOperator {
        op: if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}.{}", n.domain, n.op_type)
        },
        node: name.to_string(),
    };
    let op_type = n.op_type.as_str();
    if n.domain == "ai.onnx.ml" {
        return match op_type {
            "ArrayFeatureExtractor" => Ok(Op::Gather { axis: -1 }),
            _ => Err(unsupported()),
        };
    }
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return Err(unsupported());
    }
    let unary = |u: UnOp| Ok(Op::Unary(u));
    match op_type {
        "MatMul" => Ok(Op::MatMul),
        "Gemm" => Ok(Op::Gemm {
            alpha: a.float("alpha", 1.0),
            beta: a.float("beta", 1.0),
            trans_a: a.int("transA", 0) != 0,
            trans_b: a.int("transB", 0) != 0,
        }),
        "Add" => Ok(Op::Binary(BinOp::Add)),
        "Sub" => Ok(Op::Binary(BinOp::Sub)),
        "Mul" => Ok(Op::Binary(BinOp::Mul)),
        "Div" => Ok(Op::Binary(BinOp::Div)),
        "Pow" => Ok(Op::Binary(BinOp::Pow)),
        // Max and Min are variadic; two inputs is the common case.
        "Max" | "Min" if n.input.len() == 2 => Ok(Op::Binary(if op_type == "Max" {
            BinOp::Max
        } else {
            BinOp::Min
        })),
        "Max" | "Min" => Err(GpuError::unsupported(
            op_type,
            name,
            format!("{} inputs (only 2 are supported)", n.input.len()),
        )),
        "Relu" => unary(UnOp::Relu),
        "LeakyRelu" => unary(UnOp::LeakyRelu(a.float("alpha", 0.01))),
        "Sigmoid" => unary(UnOp::Sigmoid),
        "Tanh" => unary(UnOp::Tanh),
        "Exp" => unary(UnOp::Exp),
        "Log" => unary(UnOp::Log),
        "Sqrt" => unary(UnOp::Sqrt),
        "Neg" => unary(UnOp::Neg),
        "Abs" => unary(UnOp::Abs),
        "Reciprocal" => unary(UnOp::Reciprocal),
        "Floor" => unary(UnOp::Floor),
        "Ceil" => unary(UnOp::Ceil),
        "Elu" => unary(UnOp::Elu(a.float("alpha", 1.0))),
        "HardSigmoid" => unary(UnOp::HardSigmoid(
            a.float("alpha", 0.2),
            a.float("beta", 0.5),
        )),
        "Softplus" => unary(UnOp::Softplus),
        "Erf" => unary(UnOp::Erf),
        "Clip" if opset < 11 => Err(GpuError::unsupported(
            op_type,
            name,
            "bounds given as attributes (opset < 11)",
        )),
        "Clip" => unary(UnOp::Clip),
        "Softmax" | "LogSoftmax" => Ok(Op::Softmax {
            axis: a.int("axis", if opset < 13 { 1 } else { -1 }),
            coerce_2d: opset < 13,
            log: op_type == "LogSoftmax",
        }),
        "Conv" => Ok(Op::Conv {
            window: a.window(false)?,
            group: usize::try_from(a.int("group", 1))
                .ok()
                .filter(|g| *g > 0)
                .ok_or_else(|| GpuError::ModelInvalid(format!("node `{name}`: bad group")))?,
        }),
        "MaxPool" | "AveragePool" => {
            if op_type == "MaxPool"
                && n.output.len() > 1
                && n.output.iter().skip(1).any(|o| !o.is_empty())
            {
                return Err(GpuError::unsupported(op_type, name, "the Indices output"));
            }
            if a.int("storage_order", 0) != 0 {
                return Err(GpuError::unsupported(
                    op_type,
                    name,
                    "column-major storage_order",
                ));
            }
            let window = a.window(true)?;
            if window.kernel.is_none() {
                return Err(GpuError::ModelInvalid(format!(
                    "node `{name}`: pool without kernel_shape"
                )));
            }
            Ok(Op::Pool {
                max: op_type == "MaxPool",
                window,
                count_include_pad: a.int("count_include_pad", 0) != 0,
            })
        }
        "GlobalMaxPool" => Ok(Op::GlobalPool { max: true }),
        "GlobalAveragePool" => Ok(Op::GlobalPool { max: false }),
        "Reshape" => Ok(Op::Reshape {
            allow_zero: a.int("allowzero", 0) != 0,
        }),
        "Flatten" => Ok(Op::Flatten {
            axis: a.int("axis", 1),
        }),
        "Squeeze" => Ok(Op::Squeeze {
            axes: if opset < 13 { a.ints("axes") } else { None },
        }),
        "Unsqueeze" => {
            let axes = if opset < 13 { a.ints("axes") } else { None };
            if opset < 13 && axes.is_none() {
                return Err(GpuError::ModelInvalid(format!("node `{name}`: no axes")));
            }
            Ok(Op::Unsqueeze { axes })
        }
        "Identity" => Ok(Op::Identity),
        "Dropout" => {
            if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(GpuError::unsupported(op_type, name, "the mask output"));
            }
            // Dropout's ratio and training_mode inputs change nothing at inference unless
            // training_mode is set, which a served model never does.
            Ok(Op::Identity)
        }
        "Cast" => {
            let to = a.int("to", 0);
            let to = i32::try_from(to)
                .ok()
                .and_then(DType::from_onnx)
                .ok_or_else(|| {
                    GpuError::unsupported(
                        op_type,
                        name,
                        format!("cast to {}", onnx_type_name(i32::try_from(to).unwrap_or(0))),
                    )
                })?;
            Ok(Op::Cast { to })
        }
        "ArgMax" | "ArgMin" => Ok(Op::ArgMax {
            axis: a.int("axis", 0),
            keep_dims: a.int("keepdims", 1) != 0,
            select_last: a.int("select_last_index", 0) != 0,
            min: op_type == "ArgMin",
        }),
        "Gather" => Ok(Op::Gather {
            axis: a.int("axis", 0),
        }),
        _ => Err(unsupported()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> Vec<u8> {
        let path = format!("{}/../models/{name}.onnx", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    #[test]
    fn the_reference_models_parse_in_order() {
        for name in ["digits-mlp", "digits-cnn", "digits-wide"] {
            let g = Graph::parse(&model(name)).unwrap();
            assert_eq!(g.inputs.len(), 1, "{name}");
            // Every node input is produced earlier or is an input or a constant.
            for (ix, n) in g.nodes.iter().enumerate() {
                for id in n.inputs.iter().flatten() {
                    if let Source::Node(p) = g.values[*id].source {
                        assert!(p < ix, "{name}: node {ix} reads a later node");
                    }
                }
            }
        }
        let mlp = Graph::parse(&model("digits-mlp")).unwrap();
        let names: Vec<&str> = mlp.outputs.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["label", "probabilities"]);
        assert_eq!(mlp.inputs[0].dims[0], DeclaredDim::Free(Some("N".into())));
        assert_eq!(mlp.inputs[0].dims[1], DeclaredDim::Fixed(64));
        let ops: Vec<&str> = mlp.nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.contains(&"ArrayFeatureExtractor"));
        let cnn = Graph::parse(&model("digits-cnn")).unwrap();
        assert!(cnn.nodes.iter().any(|n| matches!(
            &n.op,
            Op::Pool { max: true, window, .. } if window.kernel == Some(vec![2, 2])
        )));
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        assert!(matches!(
            Graph::parse(b"not onnx at all"),
            Err(GpuError::ModelInvalid(_))
        ));
        let mut truncated = model("digits-mlp");
        truncated.truncate(truncated.len() / 2);
        assert!(Graph::parse(&truncated).is_err());
        assert!(Graph::parse(&[]).is_err());
    }

    #[test]
    fn an_operator_without_a_kernel_is_named() {
        let path = format!(
            "{}/../models/fixtures/unsupported-op.onnx",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(path).unwrap();
        match Graph::parse(&bytes) {
            Err(GpuError::UnsupportedOperator { op, .. }) => assert!(!op.is_empty()),
            other => panic!("expected UnsupportedOperator, got {other:?}"),
        }
    }

    #[test]
    fn raw_and_typed_constants_decode_alike() {
        let raw = TensorProto {
            dims: vec![2],
            data_type: DataType::Float as i32,
            raw_data: [1.5f32, -2.0]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect(),
            ..TensorProto::default()
        };
        let typed = TensorProto {
            dims: vec![2],
            data_type: DataType::Float as i32,
            float_data: vec![1.5, -2.0],
            ..TensorProto::default()
        };
        assert_eq!(
            load_const(&raw, "a").unwrap(),
            load_const(&typed, "b").unwrap()
        );
        let ints = TensorProto {
            dims: vec![3],
            data_type: DataType::Int32 as i32,
            raw_data: [7i32, -1, 0].iter().flat_map(|f| f.to_le_bytes()).collect(),
            ..TensorProto::default()
        };
        assert_eq!(
            load_const(&ints, "c").unwrap().data,
            ConstData::I64(vec![7, -1, 0])
        );
        let short = TensorProto {
            dims: vec![3],
            data_type: DataType::Float as i32,
            float_data: vec![1.0],
            ..TensorProto::default()
        };
        assert!(load_const(&short, "d").is_err());
        let huge = TensorProto {
            dims: vec![1 << 20, 1 << 20],
            data_type: DataType::Float as i32,
            ..TensorProto::default()
        };
        assert!(load_const(&huge, "e").is_err());
        let doubles = TensorProto {
            dims: vec![1],
            data_type: DataType::Double as i32,
            double_data: vec![1.0],
            ..TensorProto::default()
        };
        assert!(matches!(
            load_const(&doubles, "f"),
            Err(GpuError::UnsupportedUse { .. })
        ));
    }
}
