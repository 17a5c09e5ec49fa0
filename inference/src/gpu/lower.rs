//! Lowering a graph, for concrete input shapes, to a list of kernel dispatches.
//!
//! This is pure computation (no device): it infers every value's shape and element type,
//! fuses a bias Add and a Relu into the kernel before them where that is exact, turns views
//! (Reshape, Flatten, Squeeze, Unsqueeze, Identity, same-type Cast) into buffer aliases, and
//! writes each kernel's parameter words and workgroup counts. Shapes are static per plan:
//! a new batch size gets a new lowering.

use super::error::GpuError;
use super::onnx::{
    Act, BinOp, Const, DType, Graph, Node, Op, Padding, Source, UnOp, ValueId, Window,
};

/// Shape and element type of a value in one lowering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl Meta {
    /// Elements; `None` when the count does not fit in `usize`.
    pub fn elements(&self) -> Option<usize> {
        checked_product(&self.shape)
    }

    /// Bytes on the GPU; `None` when they do not fit in `u64`.
    pub fn bytes(&self) -> Option<u64> {
        u64::try_from(self.elements()?)
            .ok()?
            .checked_mul(self.dtype.words())?
            .checked_mul(4)
    }
}

/// The compute kernels (one WGSL entry point each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// Tiled matrix product with bias and activation: reads a, b, bias.
    MatMul,
    /// The same product for fewer than [`SMALL_M`] rows, one thread per output.
    MatVec,
    /// Direct 2-D convolution with bias and activation: reads x, w, bias.
    Conv,
    /// Max or average pooling: reads x.
    Pool,
    /// Broadcasting binary operation: reads a, b.
    Binary,
    /// Element-wise unary operation: reads x.
    Unary,
    /// Softmax or LogSoftmax over rows: reads x.
    Softmax,
    /// ArgMax or ArgMin: reads x (f32), writes int64.
    ArgMax,
    /// Gather along an axis: reads data, indices; sets the error flag on a bad index.
    Gather,
    /// float32 to int64, truncating.
    CastF32ToI64,
    /// int64 to float32.
    CastI64ToF32,
}

impl Kernel {
    /// Every kernel, for compiling them all up front.
    pub const ALL: [Kernel; 11] = [
        Kernel::MatMul,
        Kernel::MatVec,
        Kernel::Conv,
        Kernel::Pool,
        Kernel::Binary,
        Kernel::Unary,
        Kernel::Softmax,
        Kernel::ArgMax,
        Kernel::Gather,
        Kernel::CastF32ToI64,
        Kernel::CastI64ToF32,
    ];

    /// Whether the kernel binds the run's error flag after its output.
    pub fn uses_error_flag(self) -> bool {
        matches!(self, Kernel::Gather)
    }
}

/// Most parameter words a kernel takes (the uniform block is `array<vec4<u32>, 12>`).
pub(crate) const PARAM_WORDS: usize = 48;

/// Threads per workgroup of the one-thread-per-element kernels.
pub(crate) const WG_1D: u32 = 256;
/// Threads per workgroup of the softmax kernel (one workgroup per row).
pub(crate) const WG_ROW: u32 = 64;
/// Output tile of the matrix-product kernel, rows and columns.
pub(crate) const MM_TILE: u32 = 64;
/// Matrix products with fewer rows than this use [`Kernel::MatVec`]: a 64-row tile would
/// mostly compute padding.
pub(crate) const SMALL_M: usize = 16;
/// Highest rank the broadcasting kernel handles.
pub(crate) const MAX_BINARY_RANK: usize = 6;

/// One dispatch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// The graph node it computes (the first of a fused group), for messages.
    pub node: usize,
    /// Which kernel.
    pub kernel: Kernel,
    /// Parameter words (floats as their bits).
    pub params: Vec<u32>,
    /// Values bound read-only, in binding order (may repeat).
    pub reads: Vec<ValueId>,
    /// The value written.
    pub write: ValueId,
    /// Workgroups in x, y, z.
    pub groups: [u32; 3],
}

/// A graph lowered for one set of input shapes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Program {
    /// Shape and type of every value the program touches (`None`: unused or fused away).
    pub meta: Vec<Option<Meta>>,
    /// For every value, the value whose buffer holds its data (itself unless a view).
    pub root: Vec<ValueId>,
    /// Dispatches in order.
    pub steps: Vec<Step>,
}

/// Lowers `graph` for inputs of the given shapes (graph input order).
pub(crate) fn lower(graph: &Graph, input_shapes: &[Vec<usize>]) -> Result<Program, GpuError> {
    let n = graph.values.len();
    let mut meta: Vec<Option<Meta>> = vec![None; n];
    let root: Vec<ValueId> = (0..n).collect();
    for (i, id) in graph.input_values.iter().enumerate() {
        let (Some(decl), Some(shape)) = (graph.inputs.get(i), input_shapes.get(i)) else {
            return Err(GpuError::InputInvalid(format!(
                "{} input shapes for {} inputs",
                input_shapes.len(),
                graph.inputs.len()
            )));
        };
        meta[*id] = Some(Meta {
            shape: shape.clone(),
            dtype: decl.dtype,
        });
    }
    for (id, v) in graph.values.iter().enumerate() {
        if let Source::Const(c) = &v.source {
            meta[id] = Some(Meta {
                shape: c.shape.clone(),
                dtype: c.dtype(),
            });
        }
    }
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (ix, node) in graph.nodes.iter().enumerate() {
        for id in node.inputs.iter().flatten() {
            readers[*id].push(ix);
        }
    }
    let is_output: Vec<bool> = {
        let mut v = vec![false; n];
        for (id, _) in &graph.outputs {
            v[*id] = true;
        }
        v
    };
    let mut lw = Lowering {
        graph,
        meta,
        root,
        steps: Vec::new(),
        readers,
        is_output,
        fused: vec![false; graph.nodes.len()],
    };
    for ix in 0..graph.nodes.len() {
        if lw.fused[ix] {
            continue;
        }
        lw.node(ix)?;
    }
    for (id, name) in &graph.outputs {
        if lw.meta[*id].is_none() {
            return Err(GpuError::ModelInvalid(format!(
                "graph output `{name}` is never computed"
            )));
        }
    }
    Ok(Program {
        meta: lw.meta,
        root: lw.root,
        steps: lw.steps,
    })
}

struct Lowering<'g> {
    graph: &'g Graph,
    meta: Vec<Option<Meta>>,
    root: Vec<ValueId>,
    steps: Vec<Step>,
    readers: Vec<Vec<usize>>,
    is_output: Vec<bool>,
    fused: Vec<bool>,
}

/// Normalises a possibly negative axis against `rank` (`rank` itself allowed when `inclusive`).
fn axis(node: &Node, a: i64, rank: usize, inclusive: bool) -> Result<usize, GpuError> {
    let out_of_range = || shape_err(node, format!("axis {a} is out of range for rank {rank}"));
    let r = i64::try_from(rank)
        .ok()
        .and_then(|r| r.checked_add(i64::from(inclusive)))
        .ok_or_else(out_of_range)?;
    let v = if a < 0 {
        a.checked_add(r).ok_or_else(out_of_range)?
    } else {
        a
    };
    if (0..r).contains(&v) {
        usize::try_from(v).map_err(|_| out_of_range())
    } else {
        Err(out_of_range())
    }
}

fn shape_err(node: &Node, reason: String) -> GpuError {
    GpuError::Shape {
        node: node.name.clone(),
        reason,
    }
}

/// The error for sizes that do not fit the machine's integers: shapes come from the model
/// and the request, so a hostile pair can ask for any product.
fn overflow(node: &Node, what: &str) -> GpuError {
    shape_err(node, format!("{what} overflows"))
}

/// `v`, or the "overflows" error for `what`.
fn fits(node: &Node, v: Option<usize>, what: &str) -> Result<usize, GpuError> {
    v.ok_or_else(|| overflow(node, what))
}

/// The product of `dims`, exact: 0 when any dimension is 0 (however large the others),
/// `None` only when the true product does not fit in `usize`.
pub(crate) fn checked_product(dims: &[usize]) -> Option<usize> {
    if dims.contains(&0) {
        return Some(0);
    }
    dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))
}

fn product(node: &Node, dims: &[usize]) -> Result<usize, GpuError> {
    checked_product(dims).ok_or_else(|| shape_err(node, format!("shape {dims:?} overflows")))
}

/// Row-major strides of a shape; `None` when one does not fit in `usize`.
fn strides(shape: &[usize]) -> Option<Vec<usize>> {
    let mut s = vec![1; shape.len()];
    // The running product is only needed by the axis to the left, so the outermost
    // dimension never has to fit.
    let mut acc = Some(1usize);
    for (slot, dim) in s.iter_mut().zip(shape).rev() {
        *slot = acc?;
        acc = acc.and_then(|a| a.checked_mul(*dim));
    }
    Some(s)
}

/// numpy broadcasting of two shapes.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    // Both shapes right-aligned, left-padded with 1s to the larger rank.
    fn padded(s: &[usize], rank: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::repeat_n(1, rank.saturating_sub(s.len())).chain(s.iter().copied())
    }
    let r = a.len().max(b.len());
    padded(a, r)
        .zip(padded(b, r))
        .map(|dims| match dims {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Strides of `shape` (left-padded with 1s to `out.len()`) over the index space of `out`,
/// 0 on broadcast axes; `None` when `shape` has more axes than `out` or a stride overflows.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    let pad = out.len().checked_sub(shape.len())?;
    let own = strides(shape)?;
    Some(
        std::iter::repeat_n(0, pad)
            .chain(
                shape
                    .iter()
                    .zip(own)
                    .map(|(d, s)| if *d == 1 { 0 } else { s }),
            )
            .collect(),
    )
}

/// Workgroups covering `threads` one-dimensional invocations of `wg` each, spread over x and
/// y so that no dimension exceeds the 65,535 every device allows.
pub(crate) fn grid(threads: usize, wg: u32) -> [u32; 3] {
    let groups = threads.div_ceil(wg as usize).max(1);
    let x = groups.min(65_535);
    let y = groups.div_ceil(x);
    [x as u32, u32::try_from(y).unwrap_or(u32::MAX), 1]
}

fn u(v: usize) -> u32 {
    // Every size here was checked against the device's binding limit (a u32 byte count) or
    // is a small attribute, so it fits; saturate rather than wrap if a caller forgot.
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Spatial geometry of one axis of a window op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Axis {
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
}

/// Output size and padding of each spatial axis, following ONNX (and tract) rules.
fn window_axes(
    node: &Node,
    w: &Window,
    input: &[usize],
    kernel: &[usize],
) -> Result<Vec<Axis>, GpuError> {
    let r = input.len();
    let get = |v: &Option<Vec<usize>>, what: &str| -> Result<Vec<usize>, GpuError> {
        match v {
            None => Ok(vec![1; r]),
            Some(v) if v.len() == r => Ok(v.clone()),
            Some(v) => Err(shape_err(
                node,
                format!("{what} has {} values for {r} spatial axes", v.len()),
            )),
        }
    };
    let strides = get(&w.strides, "strides")?;
    let dilations = get(&w.dilations, "dilations")?;
    if kernel.len() != r {
        return Err(shape_err(
            node,
            format!("kernel has {} axes for {r} spatial axes", kernel.len()),
        ));
    }
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let (inp, k, s, d) = (input[i], kernel[i], strides[i], dilations[i]);
        if k == 0 || s == 0 || d == 0 {
            return Err(shape_err(
                node,
                format!("axis {i}: kernel {k}, stride {s} and dilation {d} must be positive"),
            ));
        }
        let window = || format!("window on spatial axis {i}");
        let field = fits(
            node,
            k.checked_sub(1)
                .and_then(|f| f.checked_mul(d))
                .and_then(|f| f.checked_add(1)),
            &window(),
        )?;
        let (pb, pe, o) = match &w.padding {
            Padding::Same { upper } => {
                let o = inp.div_ceil(s);
                let reach = fits(
                    node,
                    o.saturating_sub(1)
                        .checked_mul(s)
                        .and_then(|r| r.checked_add(field)),
                    &window(),
                )?;
                let total = reach.saturating_sub(inp);
                // The odd pixel of padding goes to the end (`upper`) or the start.
                let (small, large) = (total / 2, total.div_ceil(2));
                if *upper {
                    (small, large, o)
                } else {
                    (large, small, o)
                }
            }
            Padding::Valid | Padding::Explicit(..) => {
                let (pb, pe) = match &w.padding {
                    Padding::Explicit(b, e) if b.len() == r && e.len() == r => (b[i], e[i]),
                    Padding::Explicit(..) => {
                        return Err(shape_err(
                            node,
                            format!("pads do not match {r} spatial axes"),
                        ));
                    }
                    _ => (0, 0),
                };
                let span = fits(
                    node,
                    inp.checked_add(pb).and_then(|x| x.checked_add(pe)),
                    "padded input",
                )?;
                let Some(room) = span.checked_sub(field) else {
                    return Err(shape_err(
                        node,
                        format!("window of {field} does not fit an input of {inp} (padded {span})"),
                    ));
                };
                // `room / s` cannot overflow and is at most `usize::MAX / s`, so the window
                // count (`+ 1`) and the last start (`(o - 1) * s`) fit too; checked anyway.
                let starts = if w.ceil_mode {
                    room.div_ceil(s)
                } else {
                    room.checked_div(s).unwrap_or(0)
                };
                let mut o = fits(node, starts.checked_add(1), &window())?;
                // The last window must start inside the input or its leading pad.
                if w.ceil_mode {
                    let last = fits(node, starts.checked_mul(s), &window())?;
                    if last >= fits(node, inp.checked_add(pb), "padded input")? {
                        o = starts;
                    }
                }
                (pb, pe, o)
            }
        };
        out.push(Axis {
            input: inp,
            output: o,
            kernel: k,
            stride: s,
            dilation: d,
            pad_begin: pb,
            pad_end: pe,
        });
    }
    Ok(out)
}

/// Two spatial axes (height, width) from one or two; 1-D ops run as height 1.
fn two_axes(axes: &[Axis]) -> Option<(Axis, Axis)> {
    let unit = Axis {
        input: 1,
        output: 1,
        kernel: 1,
        stride: 1,
        dilation: 1,
        pad_begin: 0,
        pad_end: 0,
    };
    match axes {
        [w] => Some((unit, *w)),
        [h, w] => Some((*h, *w)),
        _ => None,
    }
}

impl Lowering<'_> {
    fn meta(&self, node: &Node, id: ValueId) -> Result<&Meta, GpuError> {
        self.meta
            .get(id)
            .and_then(Option::as_ref)
            .ok_or_else(|| shape_err(node, "an input has no shape".into()))
    }

    fn f32_input(&self, node: &Node, i: usize) -> Result<(ValueId, Meta), GpuError> {
        let id = node.input(i)?;
        let m = self.meta(node, id)?.clone();
        if m.dtype != DType::F32 {
            return Err(GpuError::unsupported(
                &node.op_type,
                &node.name,
                format!("input {i} is {}; the kernel takes float32", m.dtype.name()),
            ));
        }
        Ok((id, m))
    }

    fn host_const(&self, node: &Node, i: usize) -> Result<Option<&'_ Const>, GpuError> {
        let Some(id) = node.opt_input(i) else {
            return Ok(None);
        };
        self.graph.constant(id).map(Some).ok_or_else(|| {
            GpuError::unsupported(
                &node.op_type,
                &node.name,
                format!("input {i} is computed at run time; it must be a constant"),
            )
        })
    }

    fn set(&mut self, id: ValueId, m: Meta) {
        if let Some(slot) = self.meta.get_mut(id) {
            *slot = Some(m);
        }
    }

    fn view(&mut self, node: &Node, src: ValueId, shape: Vec<usize>) -> Result<(), GpuError> {
        let m = self.meta(node, src)?.clone();
        if product(node, &shape)? != product(node, &m.shape)? {
            return Err(shape_err(
                node,
                format!("cannot view {:?} as {shape:?}", m.shape),
            ));
        }
        let out = node.output()?;
        self.root[out] = self.root[src];
        self.set(
            out,
            Meta {
                shape,
                dtype: m.dtype,
            },
        );
        Ok(())
    }

    /// The single node reading `id`, when nothing else (not even the graph outputs) does.
    fn sole_reader(&self, id: ValueId) -> Option<usize> {
        match self.readers.get(id)?.as_slice() {
            [r] if !self.is_output[id] && !self.fused[*r] => Some(*r),
            _ => None,
        }
    }

    /// Folds a following Relu into the kernel writing `out`; returns the value to write.
    fn fuse_relu(&mut self, out: ValueId) -> (ValueId, Act) {
        if let Some(r) = self.sole_reader(out) {
            let next = &self.graph.nodes[r];
            if next.op == Op::Unary(UnOp::Relu)
                && let Some(o) = next.outputs.first()
            {
                self.fused[r] = true;
                return (*o, Act::Relu);
            }
        }
        (out, Act::None)
    }

    fn push(
        &mut self,
        node: usize,
        kernel: Kernel,
        params: Vec<u32>,
        reads: Vec<ValueId>,
        write: ValueId,
        groups: [u32; 3],
    ) {
        let reads = reads.iter().map(|r| self.root[*r]).collect();
        self.steps.push(Step {
            node,
            kernel,
            params,
            reads,
            write,
            groups,
        });
    }

    fn node(&mut self, ix: usize) -> Result<(), GpuError> {
        let graph = self.graph;
        let node = &graph.nodes[ix];
        match &node.op {
            Op::MatMul => self.matmul(ix, node),
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => self.gemm(ix, node, *alpha, *beta, *trans_a, *trans_b),
            Op::Binary(op) => self.binary(ix, node, *op),
            Op::Unary(op) => self.unary(ix, node, *op),
            Op::Softmax {
                axis: a,
                coerce_2d,
                log,
            } => {
                let (x, m) = self.f32_input(node, 0)?;
                let r = m.shape.len();
                if r == 0 {
                    return Err(shape_err(node, "softmax of a scalar".into()));
                }
                let ax = axis(node, *a, r, false)?;
                let (before, from_axis) = m.shape.split_at(ax);
                let (&dim, after) = from_axis
                    .split_first()
                    .ok_or_else(|| shape_err(node, "softmax axis is out of range".into()))?;
                let (outer, len, inner) = if *coerce_2d {
                    (product(node, before)?, product(node, from_axis)?, 1)
                } else {
                    (product(node, before)?, dim, product(node, after)?)
                };
                let out = node.output()?;
                let rows = fits(node, outer.checked_mul(inner), "softmax rows")?;
                let threads = fits(node, rows.checked_mul(WG_ROW as usize), "softmax rows")?;
                let g = grid(threads, WG_ROW);
                self.set(out, m);
                self.push(
                    ix,
                    Kernel::Softmax,
                    vec![u(rows), u(len), u(inner), u32::from(*log)],
                    vec![x],
                    out,
                    g,
                );
                Ok(())
            }
            Op::Conv { window, group } => self.conv(ix, node, window, *group),
            Op::Pool {
                max,
                window,
                count_include_pad,
            } => {
                let (x, m) = self.f32_input(node, 0)?;
                if m.shape.len() < 3 {
                    return Err(shape_err(
                        node,
                        format!("pool input {:?} is not N,C,…", m.shape),
                    ));
                }
                let kernel = window.kernel.clone().unwrap_or_default();
                let axes = window_axes(node, window, &m.shape[2..], &kernel)?;
                self.pool(ix, node, x, &m, &axes, *max, *count_include_pad)
            }
            Op::GlobalPool { max } => {
                let (x, m) = self.f32_input(node, 0)?;
                if m.shape.len() < 3 {
                    return Err(shape_err(
                        node,
                        format!("pool input {:?} is not N,C,…", m.shape),
                    ));
                }
                // All spatial axes pooled at once: a window as wide as their product.
                let spatial = product(node, &m.shape[2..])?;
                let axes = [Axis {
                    input: spatial,
                    output: 1,
                    kernel: spatial,
                    stride: 1,
                    dilation: 1,
                    pad_begin: 0,
                    pad_end: 0,
                }];
                let mut out_shape = m.shape.clone();
                for d in out_shape.iter_mut().skip(2) {
                    *d = 1;
                }
                self.pool_with_shape(ix, node, x, &m, &axes, *max, false, out_shape)
            }
            Op::Reshape { allow_zero } => {
                let src = node.input(0)?;
                let m = self.meta(node, src)?.clone();
                let spec = self
                    .host_const(node, 1)?
                    .and_then(Const::ints)
                    .ok_or_else(|| shape_err(node, "the shape is not an int64 constant".into()))?
                    .to_vec();
                let shape = reshape(node, &m.shape, &spec, *allow_zero)?;
                self.view(node, src, shape)
            }
            Op::Flatten { axis: a } => {
                let src = node.input(0)?;
                let m = self.meta(node, src)?.clone();
                let ax = axis(node, *a, m.shape.len(), true)?;
                let (before, after) = m.shape.split_at(ax);
                let shape = vec![product(node, before)?, product(node, after)?];
                self.view(node, src, shape)
            }
            Op::Squeeze { axes } => {
                let src = node.input(0)?;
                let m = self.meta(node, src)?.clone();
                let axes = match axes {
                    Some(a) => Some(a.clone()),
                    None => self
                        .host_const(node, 1)?
                        .and_then(Const::ints)
                        .map(<[i64]>::to_vec),
                };
                let r = m.shape.len();
                let drop: Vec<usize> = match axes {
                    Some(a) => a
                        .iter()
                        .map(|x| axis(node, *x, r, false))
                        .collect::<Result<_, _>>()?,
                    None => (0..r).filter(|i| m.shape[*i] == 1).collect(),
                };
                if drop.iter().any(|d| m.shape[*d] != 1) {
                    return Err(shape_err(
                        node,
                        format!("cannot squeeze {:?} at {drop:?}", m.shape),
                    ));
                }
                let shape = (0..r)
                    .filter(|i| !drop.contains(i))
                    .map(|i| m.shape[i])
                    .collect();
                self.view(node, src, shape)
            }
            Op::Unsqueeze { axes } => {
                let src = node.input(0)?;
                let m = self.meta(node, src)?.clone();
                let axes = match axes {
                    Some(a) => a.clone(),
                    None => self
                        .host_const(node, 1)?
                        .and_then(Const::ints)
                        .ok_or_else(|| shape_err(node, "no axes".into()))?
                        .to_vec(),
                };
                let r = fits(node, m.shape.len().checked_add(axes.len()), "rank")?;
                let mut ins: Vec<usize> = axes
                    .iter()
                    .map(|x| axis(node, *x, r, false))
                    .collect::<Result<_, _>>()?;
                ins.sort_unstable();
                ins.dedup();
                if ins.len() != axes.len() {
                    return Err(shape_err(node, "repeated axes".into()));
                }
                let mut rest = m.shape.iter();
                let shape = (0..r)
                    .map(|i| {
                        if ins.contains(&i) {
                            1
                        } else {
                            rest.next().copied().unwrap_or(1)
                        }
                    })
                    .collect();
                self.view(node, src, shape)
            }
            Op::Identity => {
                let src = node.input(0)?;
                let shape = self.meta(node, src)?.shape.clone();
                self.view(node, src, shape)
            }
            Op::Cast { to } => {
                let src = node.input(0)?;
                let m = self.meta(node, src)?.clone();
                if m.dtype == *to {
                    return self.view(node, src, m.shape);
                }
                let kernel = match to {
                    DType::I64 => Kernel::CastF32ToI64,
                    DType::F32 => Kernel::CastI64ToF32,
                };
                let out = node.output()?;
                let n = product(node, &m.shape)?;
                self.set(
                    out,
                    Meta {
                        shape: m.shape,
                        dtype: *to,
                    },
                );
                self.push(ix, kernel, vec![u(n)], vec![src], out, grid(n, WG_1D));
                Ok(())
            }
            Op::ArgMax {
                axis: a,
                keep_dims,
                select_last,
                min,
            } => {
                let (x, m) = self.f32_input(node, 0)?;
                let r = m.shape.len();
                if r == 0 {
                    return Err(shape_err(node, "ArgMax of a scalar".into()));
                }
                let ax = axis(node, *a, r, false)?;
                let (before, from_axis) = m.shape.split_at(ax);
                let (&len, after) = from_axis
                    .split_first()
                    .ok_or_else(|| shape_err(node, "ArgMax axis is out of range".into()))?;
                let (outer, inner) = (product(node, before)?, product(node, after)?);
                if len == 0 {
                    return Err(shape_err(node, "ArgMax over an empty axis".into()));
                }
                let mut shape = m.shape.clone();
                if *keep_dims {
                    shape[ax] = 1;
                } else {
                    shape.remove(ax);
                }
                let out = node.output()?;
                self.set(
                    out,
                    Meta {
                        shape,
                        dtype: DType::I64,
                    },
                );
                let n = fits(node, outer.checked_mul(inner), "ArgMax output")?;
                self.push(
                    ix,
                    Kernel::ArgMax,
                    vec![
                        u(n),
                        u(len),
                        u(inner),
                        u32::from(*select_last),
                        u32::from(*min),
                    ],
                    vec![x],
                    out,
                    grid(n, WG_1D),
                );
                Ok(())
            }
            Op::Gather { axis: a } => {
                let data = node.input(0)?;
                let idx = node.input(1)?;
                let dm = self.meta(node, data)?.clone();
                let im = self.meta(node, idx)?.clone();
                if im.dtype != DType::I64 {
                    return Err(GpuError::unsupported(
                        &node.op_type,
                        &node.name,
                        "float indices",
                    ));
                }
                let r = dm.shape.len();
                if r == 0 {
                    return Err(shape_err(node, "gather from a scalar".into()));
                }
                let ax = axis(node, *a, r, false)?;
                let (before, from_axis) = dm.shape.split_at(ax);
                let (&len, after) = from_axis
                    .split_first()
                    .ok_or_else(|| shape_err(node, "gather axis is out of range".into()))?;
                let outer = product(node, before)?;
                let inner_words = fits(
                    node,
                    usize::try_from(dm.dtype.words())
                        .ok()
                        .and_then(|w| product(node, after).ok()?.checked_mul(w)),
                    "gathered slice",
                )?;
                let n_idx = product(node, &im.shape)?;
                let mut shape = before.to_vec();
                shape.extend_from_slice(&im.shape);
                shape.extend_from_slice(after);
                let out = node.output()?;
                let words = fits(
                    node,
                    outer
                        .checked_mul(n_idx)
                        .and_then(|w| w.checked_mul(inner_words)),
                    "gather output",
                )?;
                self.set(
                    out,
                    Meta {
                        shape,
                        dtype: dm.dtype,
                    },
                );
                self.push(
                    ix,
                    Kernel::Gather,
                    vec![u(words), u(len), u(inner_words), u(n_idx)],
                    vec![data, idx],
                    out,
                    grid(words, WG_1D),
                );
                Ok(())
            }
        }
    }

    fn matmul(&mut self, ix: usize, node: &Node) -> Result<(), GpuError> {
        let (a, am) = self.f32_input(node, 0)?;
        let (b, bm) = self.f32_input(node, 1)?;
        let (ar, br) = (am.shape.len(), bm.shape.len());
        if ar == 0 || br == 0 {
            return Err(shape_err(node, "MatMul of a scalar".into()));
        }
        // numpy semantics: a 1-D operand gains an axis that the result then loses.
        let a2: Vec<usize> = if ar == 1 {
            vec![1, am.shape[0]]
        } else {
            am.shape.clone()
        };
        let b2: Vec<usize> = if br == 1 {
            vec![bm.shape[0], 1]
        } else {
            bm.shape.clone()
        };
        let (&[ref ab @ .., m, k], &[ref bb @ .., k2, n]) = (a2.as_slice(), b2.as_slice()) else {
            return Err(shape_err(
                node,
                format!("cannot multiply {:?} by {:?}", am.shape, bm.shape),
            ));
        };
        if k != k2 {
            return Err(shape_err(
                node,
                format!("cannot multiply {:?} by {:?}", am.shape, bm.shape),
            ));
        }
        let batch_shape = broadcast(ab, bb).ok_or_else(|| {
            shape_err(
                node,
                format!("batch axes {ab:?} and {bb:?} do not broadcast"),
            )
        })?;
        let batch = product(node, &batch_shape)?;
        let stride_of = |dims: &[usize], mat: Option<usize>| -> Result<usize, GpuError> {
            match product(node, dims)? {
                1 => Ok(0),
                p if p == batch => fits(node, mat, "matrix"),
                _ => Err(GpuError::unsupported(
                    "MatMul",
                    &node.name,
                    "partially broadcast batch axes",
                )),
            }
        };
        let a_bs = stride_of(ab, m.checked_mul(k))?;
        let b_bs = stride_of(bb, k.checked_mul(n))?;
        let mut shape = batch_shape;
        if ar > 1 {
            shape.push(m);
        }
        if br > 1 {
            shape.push(n);
        }
        // A constant row vector added right after is the bias of a dense layer.
        let mut out = node.output()?;
        let mut bias: Option<ValueId> = None;
        if let Some(r) = self.sole_reader(out) {
            let next = &self.graph.nodes[r];
            if next.op == Op::Binary(BinOp::Add) {
                let other = if next.opt_input(0) == Some(out) {
                    next.opt_input(1)
                } else {
                    next.opt_input(0)
                };
                if let Some(c) = other.and_then(|o| self.graph.constant(o).map(|c| (o, c)))
                    && c.1.dtype() == DType::F32
                    && c.1.shape.len() <= shape.len()
                    && c.1.shape.last() == Some(&n)
                    && c.1.shape.iter().rev().skip(1).all(|d| *d == 1)
                    && let Some(o) = next.outputs.first()
                {
                    self.fused[r] = true;
                    bias = Some(c.0);
                    out = *o;
                }
            }
        }
        let (out, act) = self.fuse_relu(out);
        self.set(
            out,
            Meta {
                shape,
                dtype: DType::F32,
            },
        );
        let params = matmul_params(MatMulParams {
            m,
            n,
            k,
            batch,
            a: (a_bs, k, 1),
            b: (b_bs, n, 1),
            bias: bias.map(|_| (0, 0, 1)),
            alpha: 1.0,
            beta: 1.0,
            act,
        });
        let (kernel, groups) = matmul_kernel(node, m, n, batch)?;
        self.push(
            ix,
            kernel,
            params,
            vec![a, b, bias.unwrap_or(a)],
            out,
            groups,
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        ix: usize,
        node: &Node,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<(), GpuError> {
        let (a, am) = self.f32_input(node, 0)?;
        let (b, bm) = self.f32_input(node, 1)?;
        let (&[a0, a1], &[b0, b1]) = (am.shape.as_slice(), bm.shape.as_slice()) else {
            return Err(shape_err(
                node,
                format!(
                    "Gemm needs 2-D inputs, got {:?} and {:?}",
                    am.shape, bm.shape
                ),
            ));
        };
        let (m, k, a_rs, a_cs) = if trans_a {
            (a1, a0, 1, a1)
        } else {
            (a0, a1, a1, 1)
        };
        let (k2, n, b_rs, b_cs) = if trans_b {
            (b1, b0, 1, b1)
        } else {
            (b0, b1, b1, 1)
        };
        if k != k2 {
            return Err(shape_err(
                node,
                format!(
                    "cannot multiply {:?}{} by {:?}{}",
                    am.shape,
                    if trans_a { "ᵀ" } else { "" },
                    bm.shape,
                    if trans_b { "ᵀ" } else { "" }
                ),
            ));
        }
        let mut bias = None;
        if let Some(c) = node.opt_input(2) {
            let cm = self.f32_input(node, 2)?.1;
            let (c0, c1) = match cm.shape.as_slice() {
                [] => (1, 1),
                [x] => (1, *x),
                [x, y] => (*x, *y),
                s => return Err(shape_err(node, format!("bias {s:?} has more than 2 axes"))),
            };
            if !(c0 == 1 || c0 == m) || !(c1 == 1 || c1 == n) {
                return Err(shape_err(
                    node,
                    format!("bias {:?} does not broadcast to [{m},{n}]", cm.shape),
                ));
            }
            bias = Some((c, (0, if c0 == 1 { 0 } else { c1 }, usize::from(c1 != 1))));
        }
        let (out, act) = self.fuse_relu(node.output()?);
        self.set(
            out,
            Meta {
                shape: vec![m, n],
                dtype: DType::F32,
            },
        );
        let params = matmul_params(MatMulParams {
            m,
            n,
            k,
            batch: 1,
            a: (0, a_rs, a_cs),
            b: (0, b_rs, b_cs),
            bias: bias.map(|(_, s)| s),
            alpha,
            beta,
            act,
        });
        let (kernel, groups) = matmul_kernel(node, m, n, 1)?;
        self.push(
            ix,
            kernel,
            params,
            vec![a, b, bias.map_or(a, |(c, _)| c)],
            out,
            groups,
        );
        Ok(())
    }

    fn binary(&mut self, ix: usize, node: &Node, op: BinOp) -> Result<(), GpuError> {
        let (a, am) = self.f32_input(node, 0)?;
        let (b, bm) = self.f32_input(node, 1)?;
        let shape = broadcast(&am.shape, &bm.shape).ok_or_else(|| {
            shape_err(
                node,
                format!("{:?} and {:?} do not broadcast", am.shape, bm.shape),
            )
        })?;
        if shape.len() > MAX_BINARY_RANK {
            return Err(GpuError::unsupported(
                &node.op_type,
                &node.name,
                format!("rank {} (at most {MAX_BINARY_RANK})", shape.len()),
            ));
        }
        let (out, act) = self.fuse_relu(node.output()?);
        let n = product(node, &shape)?;
        let sa = broadcast_strides(&am.shape, &shape).ok_or_else(|| overflow(node, "stride"))?;
        let sb = broadcast_strides(&bm.shape, &shape).ok_or_else(|| overflow(node, "stride"))?;
        let mut params = vec![u(n), op as u32, act as u32, u(shape.len())];
        // Dims and strides are stored innermost-last in fixed slots of MAX_BINARY_RANK.
        for list in [&shape, &sa, &sb] {
            for i in 0..MAX_BINARY_RANK {
                params.push(list.get(i).map_or(1, |v| u(*v)));
            }
        }
        self.set(
            out,
            Meta {
                shape,
                dtype: DType::F32,
            },
        );
        self.push(ix, Kernel::Binary, params, vec![a, b], out, grid(n, WG_1D));
        Ok(())
    }

    fn unary(&mut self, ix: usize, node: &Node, op: UnOp) -> Result<(), GpuError> {
        let (x, m) = self.f32_input(node, 0)?;
        let (code, p0, p1) = match op {
            UnOp::Relu => (0, 0.0, 0.0),
            UnOp::LeakyRelu(a) => (1, a, 0.0),
            UnOp::Sigmoid => (2, 0.0, 0.0),
            UnOp::Tanh => (3, 0.0, 0.0),
            UnOp::Exp => (4, 0.0, 0.0),
            UnOp::Log => (5, 0.0, 0.0),
            UnOp::Sqrt => (6, 0.0, 0.0),
            UnOp::Neg => (7, 0.0, 0.0),
            UnOp::Abs => (8, 0.0, 0.0),
            UnOp::Reciprocal => (9, 0.0, 0.0),
            UnOp::Floor => (10, 0.0, 0.0),
            UnOp::Ceil => (11, 0.0, 0.0),
            UnOp::Clip => {
                let bound = |i: usize, open: f32| -> Result<f32, GpuError> {
                    match self.host_const(node, i)? {
                        None => Ok(open),
                        Some(c) => c.scalar_f32().ok_or_else(|| {
                            shape_err(node, format!("bound {i} is not a float32 scalar"))
                        }),
                    }
                };
                (12, bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?)
            }
            UnOp::Elu(a) => (13, a, 0.0),
            UnOp::HardSigmoid(a, b) => (14, a, b),
            UnOp::Softplus => (15, 0.0, 0.0),
            UnOp::Erf => (16, 0.0, 0.0),
        };
        let out = node.output()?;
        let n = product(node, &m.shape)?;
        self.set(out, m);
        self.push(
            ix,
            Kernel::Unary,
            vec![u(n), code, f32::to_bits(p0), f32::to_bits(p1)],
            vec![x],
            out,
            grid(n, WG_1D),
        );
        Ok(())
    }

    fn conv(
        &mut self,
        ix: usize,
        node: &Node,
        window: &Window,
        group: usize,
    ) -> Result<(), GpuError> {
        let (x, xm) = self.f32_input(node, 0)?;
        let (w, wm) = self.f32_input(node, 1)?;
        let r = xm.shape.len();
        if !(r == 3 || r == 4) || wm.shape.len() != r {
            return Err(GpuError::unsupported(
                "Conv",
                &node.name,
                format!(
                    "input {:?} with weights {:?} (1-D and 2-D only)",
                    xm.shape, wm.shape
                ),
            ));
        }
        let (batch, c) = (xm.shape[0], xm.shape[1]);
        let (oc, cpg) = (wm.shape[0], wm.shape[1]);
        // `group` is positive (checked when the graph is read).
        if cpg.checked_mul(group) != Some(c) || !oc.is_multiple_of(group) {
            return Err(shape_err(
                node,
                format!(
                    "{c} input channels, weights {:?} and group {group} do not fit",
                    wm.shape
                ),
            ));
        }
        let kernel = match &window.kernel {
            Some(k) if k.as_slice() != &wm.shape[2..] => {
                return Err(shape_err(
                    node,
                    format!("kernel_shape {k:?} differs from weights {:?}", wm.shape),
                ));
            }
            _ => wm.shape[2..].to_vec(),
        };
        let axes = window_axes(node, window, &xm.shape[2..], &kernel)?;
        let Some((h, wd)) = two_axes(&axes) else {
            return Err(shape_err(node, "bad spatial rank".into()));
        };
        let bias = match node.opt_input(2) {
            Some(_) => {
                let (bid, bm) = self.f32_input(node, 2)?;
                if bm.shape != [oc] {
                    return Err(shape_err(
                        node,
                        format!("bias {:?} is not [{oc}]", bm.shape),
                    ));
                }
                Some(bid)
            }
            None => None,
        };
        let (out, act) = self.fuse_relu(node.output()?);
        let mut shape = vec![batch, oc];
        shape.extend(axes.iter().map(|a| a.output));
        let n = product(node, &shape)?;
        self.set(
            out,
            Meta {
                shape,
                dtype: DType::F32,
            },
        );
        let params = vec![
            u(n),
            u(c),
            u(h.input),
            u(wd.input),
            u(oc),
            u(h.output),
            u(wd.output),
            u(h.kernel),
            u(wd.kernel),
            u(h.stride),
            u(wd.stride),
            u(h.pad_begin),
            u(wd.pad_begin),
            u(h.dilation),
            u(wd.dilation),
            u(group),
            u32::from(bias.is_some()),
            act as u32,
        ];
        self.push(
            ix,
            Kernel::Conv,
            params,
            vec![x, w, bias.unwrap_or(x)],
            out,
            grid(n, WG_1D),
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn pool(
        &mut self,
        ix: usize,
        node: &Node,
        x: ValueId,
        m: &Meta,
        axes: &[Axis],
        max: bool,
        count_include_pad: bool,
    ) -> Result<(), GpuError> {
        let mut shape = m.shape[..2].to_vec();
        shape.extend(axes.iter().map(|a| a.output));
        self.pool_with_shape(ix, node, x, m, axes, max, count_include_pad, shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn pool_with_shape(
        &mut self,
        ix: usize,
        node: &Node,
        x: ValueId,
        m: &Meta,
        axes: &[Axis],
        max: bool,
        count_include_pad: bool,
        shape: Vec<usize>,
    ) -> Result<(), GpuError> {
        let Some((h, w)) = two_axes(axes) else {
            return Err(GpuError::unsupported(
                &node.op_type,
                &node.name,
                format!("{} spatial axes (1 or 2 supported)", axes.len()),
            ));
        };
        let out = node.output()?;
        let n = fits(
            node,
            m.shape[0]
                .checked_mul(m.shape[1])
                .and_then(|p| p.checked_mul(h.output))
                .and_then(|p| p.checked_mul(w.output)),
            "pool output",
        )?;
        self.set(
            out,
            Meta {
                shape,
                dtype: DType::F32,
            },
        );
        let params = vec![
            u(n),
            u(h.input),
            u(w.input),
            u(h.output),
            u(w.output),
            u(h.kernel),
            u(w.kernel),
            u(h.stride),
            u(w.stride),
            u(h.pad_begin),
            u(w.pad_begin),
            u(h.pad_end),
            u(w.pad_end),
            u(h.dilation),
            u(w.dilation),
            u32::from(max),
            u32::from(count_include_pad),
        ];
        self.push(ix, Kernel::Pool, params, vec![x], out, grid(n, WG_1D));
        Ok(())
    }
}

/// Reshape's target: 0 copies the input's dimension (unless `allow_zero`), -1 is inferred.
fn reshape(
    node: &Node,
    input: &[usize],
    spec: &[i64],
    allow_zero: bool,
) -> Result<Vec<usize>, GpuError> {
    let total = product(node, input)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, d) in spec.iter().enumerate() {
        match *d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(*input.get(i).ok_or_else(|| {
                shape_err(node, format!("shape {spec:?} copies axis {i} of {input:?}"))
            })?),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(shape_err(node, format!("bad shape {spec:?}"))),
        }
    }
    if let Some(i) = infer {
        let known = product(node, &out)?;
        let Some(inferred) = total
            .checked_div(known)
            .filter(|_| total.is_multiple_of(known))
        else {
            return Err(shape_err(
                node,
                format!("cannot reshape {input:?} to {spec:?}"),
            ));
        };
        out[i] = inferred;
    }
    if product(node, &out)? != total {
        return Err(shape_err(
            node,
            format!("cannot reshape {input:?} to {spec:?}"),
        ));
    }
    Ok(out)
}

/// Operand layout and epilogue of one matrix-product dispatch.
struct MatMulParams {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    /// Batch, row and column strides of A as used (after any transpose).
    a: (usize, usize, usize),
    /// Batch, row (k) and column (n) strides of B.
    b: (usize, usize, usize),
    /// Batch, row and column strides of the bias (0 where broadcast), if any.
    bias: Option<(usize, usize, usize)>,
    alpha: f32,
    beta: f32,
    act: Act,
}

fn matmul_params(p: MatMulParams) -> Vec<u32> {
    let (cb, cr, cc) = p.bias.unwrap_or((0, 0, 0));
    vec![
        u(p.m),
        u(p.n),
        u(p.k),
        u(p.batch),
        u(p.a.0),
        u(p.a.1),
        u(p.a.2),
        u(p.b.0),
        u(p.b.1),
        u(p.b.2),
        u(cb),
        u(cr),
        u(cc),
        u32::from(p.bias.is_some()),
        p.act as u32,
        p.alpha.to_bits(),
        p.beta.to_bits(),
    ]
}

/// The product kernel for `m` rows and its workgroups.
fn matmul_kernel(
    node: &Node,
    m: usize,
    n: usize,
    batch: usize,
) -> Result<(Kernel, [u32; 3]), GpuError> {
    Ok(if m < SMALL_M {
        let threads = batch.checked_mul(m).and_then(|t| t.checked_mul(n));
        (
            Kernel::MatVec,
            grid(fits(node, threads, "matrix product")?, WG_1D),
        )
    } else {
        (
            Kernel::MatMul,
            [
                u(n.div_ceil(MM_TILE as usize).max(1)),
                u(m.div_ceil(MM_TILE as usize).max(1)),
                u(batch.max(1)),
            ],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(name: &str) -> Graph {
        let path = format!("{}/../models/{name}.onnx", env!("CARGO_MANIFEST_DIR"));
        Graph::parse(&std::fs::read(path).unwrap()).unwrap()
    }

    fn out_shapes(g: &Graph, p: &Program) -> Vec<Vec<usize>> {
        g.outputs
            .iter()
            .map(|(id, _)| p.meta[*id].as_ref().unwrap().shape.clone())
            .collect()
    }

    #[test]
    fn mlp_lowers_with_fused_bias_and_relu() {
        let g = graph("digits-mlp");
        let p = lower(&g, &[vec![50, 64]]).unwrap();
        assert_eq!(out_shapes(&g, &p), vec![vec![50], vec![50, 10]]);
        let kernels: Vec<Kernel> = p.steps.iter().map(|s| s.kernel).collect();
        // MatMul+Add+Relu, MatMul+Add, Softmax, ArgMax, Gather; Cast, Reshape and Identity
        // are views.
        assert_eq!(
            kernels,
            [
                Kernel::MatMul,
                Kernel::MatMul,
                Kernel::Softmax,
                Kernel::ArgMax,
                Kernel::Gather
            ]
        );
        assert_eq!(p.steps[0].params[13], 1, "bias fused");
        assert_eq!(p.steps[0].params[14], Act::Relu as u32, "relu fused");
        assert_eq!(p.steps[1].params[14], Act::None as u32);
        let label = g.outputs[0].0;
        assert_eq!(p.meta[label].as_ref().unwrap().dtype, DType::I64);
        // One row takes the one-thread-per-output product.
        let p = lower(&g, &[vec![1, 64]]).unwrap();
        assert_eq!(p.steps[0].kernel, Kernel::MatVec);
        assert_eq!(p.steps[0].groups, [1, 1, 1]);
    }

    #[test]
    fn cnn_and_wide_shapes() {
        let g = graph("digits-cnn");
        let p = lower(&g, &[vec![30, 1, 8, 8]]).unwrap();
        assert_eq!(out_shapes(&g, &p), vec![vec![30, 10]]);
        let kernels: Vec<Kernel> = p.steps.iter().map(|s| s.kernel).collect();
        assert_eq!(
            kernels,
            [
                Kernel::Conv,
                Kernel::Pool,
                Kernel::Conv,
                Kernel::MatMul,
                Kernel::Softmax
            ]
        );
        // The pool halves 8x8 to 4x4.
        assert_eq!(&p.steps[1].params[3..5], &[4, 4]);
        let g = graph("digits-wide");
        let p = lower(&g, &[vec![1, 64]]).unwrap();
        assert_eq!(out_shapes(&g, &p), vec![vec![1, 10]]);
        assert_eq!(p.steps.len(), 4);
    }

    #[test]
    fn wrong_input_shapes_are_shape_errors() {
        let g = graph("digits-wide");
        assert!(matches!(
            lower(&g, &[vec![2, 63]]),
            Err(GpuError::Shape { .. })
        ));
        assert!(lower(&g, &[]).is_err());
    }

    #[test]
    fn hostile_sizes_are_shape_errors_not_overflows() {
        // Each of these used to overflow a `usize` (a panic in debug builds, a wrapped and
        // too-small size in release builds).
        let g = graph("digits-mlp");
        let err = lower(&g, &[vec![usize::MAX / 8, 64]]).unwrap_err();
        assert!(
            matches!(&err, GpuError::Shape { reason, .. } if reason.contains("overflows")),
            "{err}"
        );
        let n = dummy();
        assert_eq!(checked_product(&[0, usize::MAX, usize::MAX]), Some(0));
        assert_eq!(checked_product(&[usize::MAX, 2]), None);
        assert_eq!(strides(&[usize::MAX, 2]), Some(vec![2, 1]));
        assert_eq!(strides(&[2, usize::MAX, 2]), None);
        assert_eq!(
            broadcast_strides(&[2, usize::MAX, 2], &[2, usize::MAX, 2]),
            None
        );
        assert_eq!(broadcast_strides(&[2, 3], &[3]), None);
        assert!(reshape(&n, &[usize::MAX, 2], &[-1], false).is_err());
        assert!(reshape(&n, &[6], &[i64::MAX, i64::MAX, -1], false).is_err());
        let huge = Meta {
            shape: vec![usize::MAX / 4, 2],
            dtype: DType::I64,
        };
        assert_eq!(huge.elements(), Some(usize::MAX / 4 * 2));
        assert_eq!(huge.bytes(), None);
        let w = |padding| Window {
            kernel: None,
            strides: None,
            dilations: Some(vec![usize::MAX]),
            padding,
            ceil_mode: true,
        };
        // A zero-sized kernel (from the weights' shape), a dilated field and padding that
        // do not fit.
        assert!(window_axes(&n, &w(Padding::Valid), &[8], &[0]).is_err());
        assert!(window_axes(&n, &w(Padding::Valid), &[8], &[3]).is_err());
        assert!(window_axes(&n, &w(Padding::Same { upper: true }), &[8], &[3]).is_err());
        let pads = Window {
            dilations: None,
            ..w(Padding::Explicit(vec![usize::MAX], vec![1]))
        };
        assert!(window_axes(&n, &pads, &[8], &[3]).is_err());
        assert!(axis(&n, i64::MIN, 3, false).is_err());
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&[2, 1, 3], &[4, 1]), Some(vec![2, 4, 3]));
        assert_eq!(broadcast(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast(&[2], &[3]), None);
        assert_eq!(broadcast_strides(&[4, 1], &[2, 4, 3]), Some(vec![0, 1, 0]));
        assert_eq!(
            broadcast_strides(&[2, 1, 3], &[2, 4, 3]),
            Some(vec![3, 0, 1])
        );
    }

    #[test]
    fn grids_stay_within_device_limits() {
        assert_eq!(grid(1, 256), [1, 1, 1]);
        assert_eq!(grid(257, 256), [2, 1, 1]);
        let g = grid(65_536 * 256, 256);
        assert!(g[0] <= 65_535 && g[0] as usize * g[1] as usize * 256 >= 65_536 * 256);
    }

    fn dummy() -> Node {
        Node {
            name: "n".into(),
            op_type: "T".into(),
            op: Op::Identity,
            inputs: vec![],
            outputs: vec![],
        }
    }

    #[test]
    fn reshape_rules() {
        let n = dummy();
        assert_eq!(
            reshape(&n, &[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(reshape(&n, &[6, 1], &[-1], false).unwrap(), vec![6]);
        assert!(reshape(&n, &[6], &[4, -1], false).is_err());
        assert!(reshape(&n, &[6], &[-1, -1], false).is_err());
        assert!(reshape(&n, &[6], &[-2], false).is_err());
    }

    #[test]
    fn windows_follow_onnx_padding_rules() {
        let n = dummy();
        let w = |padding, ceil_mode, strides: usize| Window {
            kernel: Some(vec![3]),
            strides: Some(vec![strides]),
            dilations: None,
            padding,
            ceil_mode,
        };
        let one = |w: &Window, input| window_axes(&n, w, &[input], &[3]).unwrap()[0];
        assert_eq!(one(&w(Padding::Valid, false, 1), 8).output, 6);
        assert_eq!(
            one(&w(Padding::Explicit(vec![1], vec![1]), false, 1), 8).output,
            8
        );
        let same = one(&w(Padding::Same { upper: true }, false, 2), 7);
        assert_eq!((same.output, same.pad_begin, same.pad_end), (4, 1, 1));
        let lower = one(&w(Padding::Same { upper: false }, false, 2), 8);
        assert_eq!((lower.output, lower.pad_begin, lower.pad_end), (4, 1, 0));
        assert_eq!(one(&w(Padding::Valid, false, 2), 8).output, 3);
        assert_eq!(one(&w(Padding::Valid, true, 2), 8).output, 4);
        assert!(window_axes(&n, &w(Padding::Valid, false, 1), &[2], &[3]).is_err());
    }
}
