//! The GPU path agrees with tract: the reference models on the whole held-out digits split,
//! and every operator the kernels implement on small graphs built here, with random data.
//!
//! Tolerance: outputs of float ops agree with tract's within 1e-4 absolute plus 1e-4
//! relative (kernels sum in another order and use the device's `exp`), which on the
//! reference models means probabilities within 1e-4; integer outputs (labels, ArgMax, Cast,
//! Gather) and every predicted class agree exactly.
//!
//! Runs on whatever adapter exists, including Mesa's lavapipe (CPU-emulated adapters are
//! allowed here, never in an advert); skips with a printed reason when there is none, and
//! fails instead under `CI=true`. GPU
//! work is serialised by one lock: lavapipe has crashed under parallel test threads.

#![cfg(feature = "gpu")]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crank_inference::gpu::{GpuConfig, GpuError, GpuRuntime, SUPPORTED_OPERATORS};
use crank_inference::{Engine, EngineConfig, Job, ModelStore};
use crank_protocol::{ExecPath, ModelId, NamedTensor, Tensor, TensorData};
use prost::Message;
use tract_onnx::pb::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};

// ---------------------------------------------------------------------------------------
// Harness

static GPU: Mutex<()> = Mutex::new(());
static RUNTIME: OnceLock<Option<GpuRuntime>> = OnceLock::new();

/// The GPU lock and the shared runtime, or `None` (with the reason printed) without one.
fn gpu() -> Option<(MutexGuard<'static, ()>, GpuRuntime)> {
    let guard = GPU.lock().unwrap_or_else(|p| p.into_inner());
    let rt = RUNTIME.get_or_init(|| {
        let cfg = GpuConfig {
            allow_cpu_adapter: true,
            ..GpuConfig::default()
        };
        match GpuRuntime::open(&cfg) {
            Ok(rt) => {
                let a = rt.adapter();
                eprintln!(
                    "GPU adapter: {} ({}, {}, driver {}){}",
                    a.name,
                    a.backend,
                    a.kind,
                    a.driver,
                    if a.emulated { ", CPU-emulated" } else { "" }
                );
                Some(rt)
            }
            Err(e) => {
                // CI installs Mesa's lavapipe: there a missing adapter is a failure, not a skip.
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "no GPU adapter under CI=true (install mesa-vulkan-drivers): {e}"
                );
                eprintln!("skipping GPU tests: {e}");
                None
            }
        }
    });
    rt.clone().map(|rt| (guard, rt))
}

/// `models/`, or `CRANK_MODELS_DIR` for a binary built elsewhere (scripts/gpu-check.sh).
fn models_dir() -> PathBuf {
    std::env::var_os("CRANK_MODELS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    )
}

#[derive(serde::Deserialize)]
struct Split {
    features: Vec<Vec<f32>>,
    labels: Vec<i64>,
}

fn split() -> Split {
    let text = std::fs::read_to_string(models_dir().join("digits-test.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// tract, through the crate's CPU engine.
struct Cpu {
    _dir: tempfile::TempDir,
    store: Arc<ModelStore>,
    engine: Engine,
}

fn cpu() -> Cpu {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path(), 256 << 20).unwrap());
    let engine = Engine::new(
        EngineConfig {
            workers: 1,
            ..EngineConfig::default()
        },
        store.clone(),
    )
    .unwrap();
    Cpu {
        _dir: dir,
        store,
        engine,
    }
}

impl Cpu {
    fn run(&self, id: ModelId, inputs: Vec<NamedTensor>) -> Vec<NamedTensor> {
        self.engine
            .submit(Job::new(id, inputs, Duration::from_secs(120)))
            .unwrap()
            .wait()
            .unwrap()
            .outputs
    }
}

fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        other => panic!("expected float32, got {}", other.dtype()),
    }
}

/// Largest |gpu - cpu| over two float tensors, after checking shapes; fails beyond
/// `abs + rel·|cpu|`.
fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, abs: f32, rel: f32) -> f32 {
    assert_eq!(gpu.shape, cpu.shape, "{what}: shapes differ");
    match (&gpu.data, &cpu.data) {
        (TensorData::F32(g), TensorData::F32(c)) => {
            let mut worst = 0f32;
            for (i, (x, y)) in g.iter().zip(c).enumerate() {
                let d = (x - y).abs();
                assert!(
                    d <= abs + rel * y.abs() || (x.is_nan() && y.is_nan()),
                    "{what}: element {i}: gpu {x} vs tract {y}"
                );
                worst = worst.max(d);
            }
            worst
        }
        (TensorData::I64(g), TensorData::I64(c)) => {
            for (i, (x, y)) in g.iter().zip(c).enumerate() {
                assert_eq!(x, y, "{what}: element {i}: gpu {x} vs tract {y}");
            }
            0.0
        }
        (g, c) => panic!("{what}: gpu gives {}, tract {}", g.dtype(), c.dtype()),
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------------------------------
// The reference models on the whole test split

#[test]
fn reference_models_agree_with_tract_on_the_test_split() {
    let Some((_lock, rt)) = gpu() else { return };
    let cpu = cpu();
    let data = split();
    let n = data.features.len();
    let flat: Vec<f32> = data.features.iter().flatten().copied().collect();
    for (name, input, image) in [
        ("digits-mlp", "X", false),
        ("digits-cnn", "input", true),
        ("digits-wide", "input", false),
    ] {
        let bytes = std::fs::read(models_dir().join(format!("{name}.onnx"))).unwrap();
        let id = cpu.store.put(&bytes).unwrap();
        let model = rt.load(id, &bytes).unwrap();
        let shape = |rows: usize| {
            if image {
                vec![rows as u64, 1, 8, 8]
            } else {
                vec![rows as u64, 64]
            }
        };
        let inputs = vec![NamedTensor {
            name: input.into(),
            tensor: Tensor::f32(shape(n), flat.clone()).unwrap(),
        }];
        let started = Instant::now();
        let want = cpu.run(id, inputs.clone());
        let cpu_time = started.elapsed();
        let started = Instant::now();
        let got = model.run(&inputs).unwrap();
        let gpu_time = started.elapsed();
        assert_eq!(got.len(), want.len(), "{name}");
        let mut worst = 0f32;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.name, w.name, "{name}: output names");
            worst = worst.max(assert_close(name, &g.tensor, &w.tensor, 1e-4, 0.0));
        }
        let probs = got.iter().find(|t| t.name == "probabilities").unwrap();
        let tract_probs = want.iter().find(|t| t.name == "probabilities").unwrap();
        let (p, q) = (f32s(&probs.tensor), f32s(&tract_probs.tensor));
        let mut same = 0;
        let mut correct = 0;
        for r in 0..n {
            let (a, b) = (argmax(&p[r * 10..][..10]), argmax(&q[r * 10..][..10]));
            assert_eq!(
                a, b,
                "{name}: row {r} predicts {a} on the GPU, {b} on tract"
            );
            same += 1;
            correct += usize::from(a as i64 == data.labels[r]);
        }
        if let Some(label) = got.iter().find(|t| t.name == "label") {
            // The MLP's own label output: ArgMax, ArrayFeatureExtractor, Reshape, Cast.
            let TensorData::I64(labels) = &label.tensor.data else {
                panic!("label is not int64")
            };
            for (r, l) in labels.iter().enumerate() {
                assert_eq!(*l as usize, argmax(&p[r * 10..][..10]));
            }
        }
        eprintln!(
            "{name}: {same}/{n} predictions equal tract's, {correct}/{n} correct, max |Δ| {worst:.2e}; \
             batch {n}: gpu {gpu_time:?} (first run, includes plan), tract {cpu_time:?}"
        );
        // Batch 1 uses its own plan; spot-check it too.
        for r in [0, 1, n / 2, n - 1] {
            let one = vec![NamedTensor {
                name: input.into(),
                tensor: Tensor::f32(shape(1), data.features[r].clone()).unwrap(),
            }];
            let g = model.run(&one).unwrap();
            let w = cpu.run(id, one);
            for (g, w) in g.iter().zip(&w) {
                assert_close(name, &g.tensor, &w.tensor, 1e-4, 0.0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Building ONNX graphs

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..AttributeProto::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..AttributeProto::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..AttributeProto::default()
    }
}

fn attr_str(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..AttributeProto::default()
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{op}_{}", outputs.first().unwrap_or(&"")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..NodeProto::default()
    }
}

fn value_info(
    name: &str,
    elem: pb::tensor_proto::DataType,
    dims: Option<&[usize]>,
) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: dims.map(|d| TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|v| Dimension {
                            value: Some(dimension::Value::DimValue(*v as i64)),
                            ..Dimension::default()
                        })
                        .collect(),
                }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

fn const_f32(name: &str, dims: &[usize], v: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: v,
        ..TensorProto::default()
    }
}

fn const_i64(name: &str, dims: &[usize], v: Vec<i64>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: v,
        ..TensorProto::default()
    }
}

/// A test graph: float inputs with fixed shapes, constants, nodes, typed outputs.
struct Case {
    name: String,
    opset: i64,
    inputs: Vec<(String, Vec<usize>)>,
    consts: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    outputs: Vec<(String, pb::tensor_proto::DataType)>,
    /// Input values are drawn from this range.
    range: (f32, f32),
}

impl Case {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            opset: 17,
            inputs: Vec::new(),
            consts: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
            range: (-2.0, 2.0),
        }
    }

    fn input(mut self, name: &str, dims: &[usize]) -> Self {
        self.inputs.push((name.into(), dims.to_vec()));
        self
    }

    fn weight(mut self, name: &str, dims: &[usize], rng: &mut Rng) -> Self {
        let n: usize = dims.iter().product();
        let v = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        self.consts.push(const_f32(name, dims, v));
        self
    }

    fn constant(mut self, t: TensorProto) -> Self {
        self.consts.push(t);
        self
    }

    fn node(mut self, n: NodeProto) -> Self {
        self.nodes.push(n);
        self
    }

    fn output(mut self, name: &str) -> Self {
        self.outputs
            .push((name.into(), pb::tensor_proto::DataType::Float));
        self
    }

    fn int_output(mut self, name: &str) -> Self {
        self.outputs
            .push((name.into(), pb::tensor_proto::DataType::Int64));
        self
    }

    fn opset(mut self, v: i64) -> Self {
        self.opset = v;
        self
    }

    fn range(mut self, lo: f32, hi: f32) -> Self {
        self.range = (lo, hi);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let graph = GraphProto {
            name: self.name.clone(),
            node: self.nodes.clone(),
            initializer: self.consts.clone(),
            input: self
                .inputs
                .iter()
                .map(|(n, d)| value_info(n, pb::tensor_proto::DataType::Float, Some(d)))
                .collect(),
            output: self
                .outputs
                .iter()
                .map(|(n, t)| value_info(n, *t, None))
                .collect(),
            ..GraphProto::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(graph),
            ..ModelProto::default()
        }
        .encode_to_vec()
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

/// Runs a case on both paths and compares every output.
fn check(rt: &GpuRuntime, cpu: &Cpu, case: &Case, rng: &mut Rng) -> f32 {
    let bytes = case.bytes();
    let id = cpu.store.put(&bytes).unwrap();
    let model = rt
        .load(id, &bytes)
        .unwrap_or_else(|e| panic!("{}: GPU load failed: {e}", case.name));
    let inputs: Vec<NamedTensor> = case
        .inputs
        .iter()
        .map(|(n, d)| {
            let count: usize = d.iter().product();
            let v = (0..count)
                .map(|_| rng.uniform(case.range.0, case.range.1))
                .collect();
            NamedTensor {
                name: n.clone(),
                tensor: Tensor::f32(d.iter().map(|x| *x as u64).collect(), v).unwrap(),
            }
        })
        .collect();
    let want = cpu.run(id, inputs.clone());
    let got = model
        .run(&inputs)
        .unwrap_or_else(|e| panic!("{}: GPU run failed: {e}", case.name));
    assert_eq!(got.len(), want.len(), "{}", case.name);
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(&want) {
        worst = worst.max(assert_close(&case.name, &g.tensor, &w.tensor, 1e-4, 1e-4));
    }
    worst
}

// ---------------------------------------------------------------------------------------
// Operators

fn operator_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = Vec::new();
    // Gemm in every transpose and bias form.
    for (ta, tb, bias, alpha, beta) in [
        (0, 0, Some(vec![7usize]), 1.0, 1.0),
        (1, 0, Some(vec![5, 7]), 0.5, 2.0),
        (0, 1, Some(vec![1, 7]), 1.0, 1.0),
        (1, 1, Some(vec![5, 1]), 1.5, -1.0),
        (0, 0, None, 2.0, 1.0),
        (0, 1, Some(vec![]), 1.0, 0.5),
    ] {
        let a = if ta == 1 { vec![9, 5] } else { vec![5, 9] };
        let b = if tb == 1 { vec![7, 9] } else { vec![9, 7] };
        let mut c = Case::new(&format!("Gemm tA={ta} tB={tb} bias={bias:?}"))
            .input("a", &a)
            .weight("b", &b, rng);
        let mut ins = vec!["a", "b"];
        if let Some(s) = &bias {
            c = c.weight("c", s, rng);
            ins.push("c");
        }
        cases.push(
            c.node(node(
                "Gemm",
                &ins,
                &["y"],
                vec![
                    attr_int("transA", ta),
                    attr_int("transB", tb),
                    attr_float("alpha", alpha),
                    attr_float("beta", beta),
                ],
            ))
            .output("y"),
        );
    }
    // A Gemm larger than one 64x64 tile with K not a multiple of the 16-deep slice, and
    // Relu fused into it.
    cases.push(
        Case::new("Gemm 130x70x100 + Relu")
            .input("a", &[130, 100])
            .weight("b", &[100, 70], rng)
            .weight("c", &[70], rng)
            .node(node("Gemm", &["a", "b", "c"], &["h"], vec![]))
            .node(node("Relu", &["h"], &["y"], vec![]))
            .output("y"),
    );
    // The tiled kernel (16 rows or more) with transposed operands and a column bias.
    cases.push(
        Case::new("Gemm tA=1 tB=1 bias=[70,1] 70x33x40")
            .input("a", &[40, 70])
            .weight("b", &[33, 40], rng)
            .weight("c", &[70, 1], rng)
            .node(node(
                "Gemm",
                &["a", "b", "c"],
                &["y"],
                vec![
                    attr_int("transA", 1),
                    attr_int("transB", 1),
                    attr_float("alpha", 0.75),
                    attr_float("beta", 1.5),
                ],
            ))
            .output("y"),
    );
    cases.push(
        Case::new("MatMul batched [3,20,17]x[17,66] (tiled)")
            .input("a", &[3, 20, 17])
            .input("b", &[17, 66])
            .node(node("MatMul", &["a", "b"], &["y"], vec![]))
            .output("y"),
    );
    // MatMul: plain, batched, broadcast batch, 1-D operands, and fused bias + relu.
    for (a, b) in [
        (vec![3, 4], vec![4, 6]),
        (vec![2, 3, 4], vec![2, 4, 5]),
        (vec![2, 3, 4], vec![4, 5]),
        (vec![4], vec![4, 3]),
        (vec![3, 4], vec![4]),
    ] {
        cases.push(
            Case::new(&format!("MatMul {a:?}x{b:?}"))
                .input("a", &a)
                .input("b", &b)
                .node(node("MatMul", &["a", "b"], &["y"], vec![]))
                .output("y"),
        );
    }
    cases.push(
        Case::new("MatMul + Add + Relu")
            .input("x", &[6, 8])
            .weight("w", &[8, 5], rng)
            .weight("bias", &[1, 5], rng)
            .node(node("MatMul", &["x", "w"], &["m"], vec![]))
            .node(node("Add", &["bias", "m"], &["s"], vec![]))
            .node(node("Relu", &["s"], &["y"], vec![]))
            .output("y"),
    );
    // A MatMul output read twice must not be fused away.
    cases.push(
        Case::new("MatMul read twice")
            .input("x", &[3, 4])
            .weight("w", &[4, 4], rng)
            .weight("bias", &[4], rng)
            .node(node("MatMul", &["x", "w"], &["m"], vec![]))
            .node(node("Add", &["m", "bias"], &["s"], vec![]))
            .node(node("Relu", &["m"], &["r"], vec![]))
            .output("s")
            .output("r"),
    );
    // Binary operators with broadcasting.
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min"] {
        for (a, b) in [
            (vec![2, 3, 4], vec![3, 1]),
            (vec![4], vec![2, 1, 4]),
            (vec![5], vec![5]),
            (vec![2, 1, 3, 1, 2, 1], vec![1, 2, 1, 3, 1, 2]),
        ] {
            let mut c = Case::new(&format!("{op} {a:?} {b:?}"))
                .input("a", &a)
                .input("b", &b)
                .node(node(op, &["a", "b"], &["y"], vec![]))
                .output("y");
            if op == "Div" {
                c = c.range(0.5, 2.0);
            }
            cases.push(c);
        }
    }
    cases.push(
        Case::new("Pow")
            .input("a", &[3, 4])
            .input("b", &[4])
            .range(0.5, 2.0)
            .node(node("Pow", &["a", "b"], &["y"], vec![]))
            .output("y"),
    );
    cases.push(
        Case::new("Pow of negative base, integral exponent")
            .input("a", &[3, 4])
            .constant(const_f32("e", &[], vec![3.0]))
            .node(node("Pow", &["a", "e"], &["y"], vec![]))
            .output("y"),
    );
    // Unary operators.
    for (op, attrs, lo, hi) in [
        ("Relu", vec![], -2.0, 2.0),
        ("LeakyRelu", vec![attr_float("alpha", 0.1)], -2.0, 2.0),
        ("Sigmoid", vec![], -30.0, 30.0),
        ("Tanh", vec![], -20.0, 20.0),
        ("Exp", vec![], -5.0, 5.0),
        ("Log", vec![], 0.01, 10.0),
        ("Sqrt", vec![], 0.0, 10.0),
        ("Neg", vec![], -2.0, 2.0),
        ("Abs", vec![], -2.0, 2.0),
        ("Reciprocal", vec![], 0.5, 4.0),
        ("Floor", vec![], -5.0, 5.0),
        ("Ceil", vec![], -5.0, 5.0),
        ("Elu", vec![attr_float("alpha", 0.7)], -3.0, 3.0),
        (
            "HardSigmoid",
            vec![attr_float("alpha", 0.3), attr_float("beta", 0.4)],
            -4.0,
            4.0,
        ),
        ("Softplus", vec![], -30.0, 30.0),
        ("Erf", vec![], -3.0, 3.0),
    ] {
        cases.push(
            Case::new(op)
                .input("x", &[3, 50])
                .range(lo, hi)
                .node(node(op, &["x"], &["y"], attrs))
                .output("y"),
        );
    }
    cases.push(
        Case::new("Clip with both bounds")
            .input("x", &[40])
            .constant(const_f32("lo", &[], vec![-0.5]))
            .constant(const_f32("hi", &[], vec![0.75]))
            .node(node("Clip", &["x", "lo", "hi"], &["y"], vec![]))
            .output("y"),
    );
    cases.push(
        Case::new("Clip with only a maximum")
            .input("x", &[40])
            .constant(const_f32("hi", &[], vec![0.25]))
            .node(node("Clip", &["x", "", "hi"], &["y"], vec![]))
            .output("y"),
    );
    // Softmax and LogSoftmax on inner and middle axes, and the pre-13 flattening form.
    for (op, opset, axis, shape) in [
        ("Softmax", 17, -1, vec![4, 7]),
        ("Softmax", 17, 1, vec![2, 5, 3]),
        ("Softmax", 11, 1, vec![2, 5, 3]),
        ("Softmax", 17, 0, vec![300]),
        ("LogSoftmax", 17, -1, vec![3, 129]),
        ("LogSoftmax", 13, 0, vec![6, 2]),
    ] {
        cases.push(
            Case::new(&format!("{op} opset {opset} axis {axis} {shape:?}"))
                .opset(opset)
                .input("x", &shape)
                .range(-10.0, 10.0)
                .node(node(op, &["x"], &["y"], vec![attr_int("axis", axis)]))
                .output("y"),
        );
    }
    // Convolutions.
    for (label, x, w, attrs, bias) in [
        (
            "Conv plain",
            vec![2, 3, 7, 6],
            vec![4, 3, 3, 3],
            vec![],
            true,
        ),
        (
            "Conv pads strides",
            vec![1, 2, 9, 9],
            vec![3, 2, 3, 3],
            vec![
                attr_ints("pads", &[1, 2, 0, 1]),
                attr_ints("strides", &[2, 2]),
            ],
            true,
        ),
        (
            "Conv dilated",
            vec![1, 2, 9, 9],
            vec![2, 2, 3, 2],
            vec![attr_ints("dilations", &[2, 3])],
            false,
        ),
        (
            "Conv grouped",
            vec![2, 4, 5, 5],
            vec![6, 2, 3, 3],
            vec![attr_int("group", 2), attr_ints("pads", &[1, 1, 1, 1])],
            true,
        ),
        (
            "Conv SAME_UPPER stride 2",
            vec![1, 3, 8, 7],
            vec![2, 3, 3, 3],
            vec![
                attr_str("auto_pad", "SAME_UPPER"),
                attr_ints("strides", &[2, 2]),
            ],
            true,
        ),
        (
            "Conv 1-D",
            vec![2, 3, 11],
            vec![4, 3, 3],
            vec![attr_ints("pads", &[1, 1])],
            true,
        ),
    ] {
        let mut c = Case::new(label).input("x", &x).weight("w", &w, rng);
        let mut ins = vec!["x", "w"];
        if bias {
            c = c.weight("b", &[w[0]], rng);
            ins.push("b");
        }
        cases.push(c.node(node("Conv", &ins, &["y"], attrs)).output("y"));
    }
    cases.push(
        Case::new("Conv + Relu")
            .input("x", &[1, 1, 8, 8])
            .weight("w", &[4, 1, 3, 3], rng)
            .weight("b", &[4], rng)
            .node(node(
                "Conv",
                &["x", "w", "b"],
                &["c"],
                vec![attr_ints("pads", &[1, 1, 1, 1])],
            ))
            .node(node("Relu", &["c"], &["y"], vec![]))
            .output("y"),
    );
    // Pools.
    for (label, op, x, attrs) in [
        (
            "MaxPool 3x3 stride 2",
            "MaxPool",
            vec![2, 3, 9, 8],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        (
            "MaxPool padded",
            "MaxPool",
            vec![1, 2, 6, 6],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        (
            "MaxPool ceil_mode",
            "MaxPool",
            vec![1, 2, 7, 7],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
                attr_int("ceil_mode", 1),
            ],
        ),
        (
            "MaxPool dilated",
            "MaxPool",
            vec![1, 1, 8, 8],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("dilations", &[2, 2]),
            ],
        ),
        (
            "AveragePool padded excluding pads",
            "AveragePool",
            vec![1, 2, 6, 5],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        (
            "AveragePool padded including pads",
            "AveragePool",
            vec![1, 2, 6, 5],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_int("count_include_pad", 1),
            ],
        ),
        (
            "AveragePool 1-D",
            "AveragePool",
            vec![2, 3, 10],
            vec![attr_ints("kernel_shape", &[3]), attr_ints("strides", &[2])],
        ),
    ] {
        cases.push(
            Case::new(label)
                .input("x", &x)
                .node(node(op, &["x"], &["y"], attrs))
                .output("y"),
        );
    }
    for op in ["GlobalAveragePool", "GlobalMaxPool"] {
        cases.push(
            Case::new(op)
                .input("x", &[2, 3, 5, 4])
                .node(node(op, &["x"], &["y"], vec![]))
                .output("y"),
        );
    }
    // Views, then a kernel so their aliasing is exercised.
    cases.push(
        Case::new("Reshape Flatten Squeeze Unsqueeze Identity")
            .input("x", &[2, 3, 4])
            .constant(const_i64("shape", &[3], vec![0, -1, 2]))
            .constant(const_i64("axes", &[1], vec![1]))
            .constant(const_i64("sq", &[1], vec![1]))
            .node(node("Reshape", &["x", "shape"], &["r"], vec![]))
            .node(node("Unsqueeze", &["r", "axes"], &["u"], vec![]))
            .node(node("Squeeze", &["u", "sq"], &["s"], vec![]))
            .node(node("Flatten", &["s"], &["f"], vec![attr_int("axis", 1)]))
            .node(node("Identity", &["f"], &["i"], vec![]))
            .node(node("Neg", &["i"], &["y"], vec![]))
            .output("y")
            .output("f"),
    );
    cases.push(
        Case::new("Unsqueeze and Squeeze by attribute (opset 11)")
            .opset(11)
            .input("x", &[3, 4])
            .node(node(
                "Unsqueeze",
                &["x"],
                &["u"],
                vec![attr_ints("axes", &[0, 3])],
            ))
            .node(node(
                "Squeeze",
                &["u"],
                &["s"],
                vec![attr_ints("axes", &[0])],
            ))
            .node(node("Abs", &["s"], &["y"], vec![]))
            .output("y"),
    );
    // Integer outputs: ArgMax/ArgMin, Cast both ways, Gather.
    for (op, axis, keep, last) in [
        ("ArgMax", 1, 1, 0),
        ("ArgMax", 0, 0, 0),
        ("ArgMin", -1, 1, 0),
        ("ArgMax", 1, 0, 1),
    ] {
        cases.push(
            Case::new(&format!("{op} axis {axis} keepdims {keep} last {last}"))
                .input("x", &[4, 9, 3])
                .node(node(
                    op,
                    &["x"],
                    &["y"],
                    vec![
                        attr_int("axis", axis),
                        attr_int("keepdims", keep),
                        attr_int("select_last_index", last),
                    ],
                ))
                .int_output("y"),
        );
    }
    // Ties: floored values repeat, so first and last index differ.
    for last in [0, 1] {
        cases.push(
            Case::new(&format!("ArgMax with ties, select_last {last}"))
                .input("x", &[5, 12])
                .range(-2.0, 2.0)
                .node(node("Floor", &["x"], &["f"], vec![]))
                .node(node(
                    "ArgMax",
                    &["f"],
                    &["y"],
                    vec![attr_int("axis", 1), attr_int("select_last_index", last)],
                ))
                .int_output("y"),
        );
    }
    cases.push(
        Case::new("Cast float to int64 and back")
            .input("x", &[64])
            .range(-1e6, 1e6)
            .node(node("Cast", &["x"], &["i"], vec![attr_int("to", 7)]))
            .node(node("Cast", &["i"], &["y"], vec![attr_int("to", 1)]))
            .int_output("i")
            .output("y"),
    );
    cases.push(
        Case::new("Gather axis 0 with negative indices")
            .input("x", &[5, 3])
            .constant(const_i64("idx", &[2, 2], vec![0, -1, 3, -5]))
            .node(node(
                "Gather",
                &["x", "idx"],
                &["y"],
                vec![attr_int("axis", 0)],
            ))
            .output("y"),
    );
    cases.push(
        Case::new("Gather axis 1")
            .input("x", &[2, 6, 3])
            .constant(const_i64("idx", &[3], vec![5, 0, 2]))
            .node(node(
                "Gather",
                &["x", "idx"],
                &["y"],
                vec![attr_int("axis", 1)],
            ))
            .output("y"),
    );
    cases.push(
        Case::new("Gather of int64 data")
            .input("x", &[4, 6])
            .constant(const_i64(
                "table",
                &[6],
                vec![10, -20, 1 << 40, i64::MIN, 7, i64::MAX],
            ))
            .node(node(
                "ArgMax",
                &["x"],
                &["a"],
                vec![attr_int("axis", 1), attr_int("keepdims", 0)],
            ))
            .node(node(
                "Gather",
                &["table", "a"],
                &["y"],
                vec![attr_int("axis", 0)],
            ))
            .int_output("y"),
    );
    cases
}

/// Casts beyond the int32 range. tract's optimised float-to-int64 cast returns i32::MIN
/// there (it converts through 32 bits), so the reference is Rust's `as`, which saturates at
/// the int64 bounds: the GPU splits such values exactly into two words.
#[test]
fn large_casts_match_rust_semantics() {
    let Some((_lock, rt)) = gpu() else { return };
    let cpu = cpu();
    let mut rng = Rng(99);
    for scale in [3.0e9f32, 1.0e13, 4.0e18, 1.0e20] {
        let case = Case::new(&format!("Cast at scale {scale:e}"))
            .input("x", &[256])
            .constant(const_f32("s", &[], vec![scale]))
            .node(node("Mul", &["x", "s"], &["m"], vec![]))
            .node(node("Cast", &["m"], &["i"], vec![attr_int("to", 7)]))
            .node(node("Cast", &["i"], &["y"], vec![attr_int("to", 1)]))
            .int_output("i")
            .output("y");
        let bytes = case.bytes();
        let id = cpu.store.put(&bytes).unwrap();
        let model = rt.load(id, &bytes).unwrap();
        let x: Vec<f32> = (0..256).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let inputs = vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::f32(vec![256], x.clone()).unwrap(),
        }];
        let got = model.run(&inputs).unwrap();
        let TensorData::I64(ints) = &got[0].tensor.data else {
            panic!("int64 expected")
        };
        let back = f32s(&got[1].tensor);
        for (k, v) in x.iter().enumerate() {
            let want = (v * scale) as i64;
            assert_eq!(ints[k], want, "scale {scale:e}, x {v}");
            let w = want as f32;
            assert!(
                (back[k] - w).abs() <= w.abs() * 2.4e-7,
                "scale {scale:e}: {} back to {} (want {w})",
                want,
                back[k]
            );
        }
        let tract = cpu.run(id, inputs);
        let TensorData::I64(t) = &tract[0].tensor.data else {
            panic!("int64 expected")
        };
        let differ = t.iter().zip(ints).filter(|(a, b)| a != b).count();
        eprintln!("cast at scale {scale:e}: GPU equals Rust `as`; tract differs on {differ}/256");
    }
}

#[test]
fn every_operator_agrees_with_tract() {
    let Some((_lock, rt)) = gpu() else { return };
    let cpu = cpu();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let cases = operator_cases(&mut rng);
    let mut covered = std::collections::BTreeSet::new();
    for case in &cases {
        let worst = check(&rt, &cpu, case, &mut rng);
        eprintln!("{:<55} max |Δ| {worst:.2e}", case.name);
        for n in &case.nodes {
            covered.insert(n.op_type.clone());
        }
    }
    // Every operator the GPU claims is exercised here (Constant, Dropout and
    // ArrayFeatureExtractor are covered by the parser and the MLP).
    for op in SUPPORTED_OPERATORS {
        if !["Constant", "Dropout", "ArrayFeatureExtractor"].contains(op) {
            assert!(covered.contains(*op), "no agreement case for {op}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors, fallback, the engine path

#[test]
fn bad_models_and_inputs_are_errors_not_panics() {
    let Some((_lock, rt)) = gpu() else { return };
    let id = ModelId([7; 32]);
    assert!(matches!(
        rt.load(id, b"\x08\x01garbage"),
        Err(GpuError::ModelInvalid(_))
    ));
    let det = std::fs::read(models_dir().join("fixtures/unsupported-op.onnx")).unwrap();
    match rt.load(id, &det) {
        Err(e @ GpuError::UnsupportedOperator { .. }) => {
            assert!(e.is_fallback());
            assert!(e.to_string().contains("Det"), "{e}");
        }
        other => panic!("expected UnsupportedOperator, got {other:?}"),
    }
    let bytes = std::fs::read(models_dir().join("digits-wide.onnx")).unwrap();
    let model = rt.load(id, &bytes).unwrap();
    let run = |name: &str, t: Tensor| {
        model.run(&[NamedTensor {
            name: name.into(),
            tensor: t,
        }])
    };
    assert!(matches!(
        run("input", Tensor::f32(vec![1, 63], vec![0.0; 63]).unwrap()),
        Err(GpuError::InputInvalid(_))
    ));
    assert!(matches!(
        run("nope", Tensor::f32(vec![1, 64], vec![0.0; 64]).unwrap()),
        Err(GpuError::InputInvalid(_))
    ));
    assert!(matches!(
        run(
            "input",
            Tensor {
                shape: vec![1, 64],
                data: TensorData::I64(vec![0; 64])
            }
        ),
        Err(GpuError::InputInvalid(_))
    ));
    assert!(matches!(
        run(
            "input",
            Tensor {
                shape: vec![2, 64],
                data: TensorData::F32(vec![0.0; 64])
            }
        ),
        Err(GpuError::InputInvalid(_))
    ));
    // The model still runs after all that.
    assert!(run("input", Tensor::f32(vec![1, 64], vec![0.5; 64]).unwrap()).is_ok());

    // An index out of range is found on the device and reported, not read out of bounds.
    let mut rng = Rng(3);
    let bad = Case::new("gather out of range")
        .input("x", &[3, 2])
        .constant(const_i64("idx", &[2], vec![1, 3]))
        .node(node("Gather", &["x", "idx"], &["y"], vec![]))
        .output("y");
    let m = rt.load(id, &bad.bytes()).unwrap();
    let x = NamedTensor {
        name: "x".into(),
        tensor: Tensor::f32(vec![3, 2], (0..6).map(|_| rng.uniform(0.0, 1.0)).collect()).unwrap(),
    };
    assert!(matches!(
        m.run(std::slice::from_ref(&x)),
        Err(GpuError::Kernel(_))
    ));
    // The failed plan was dropped; the next run builds a fresh one and fails the same way.
    assert!(matches!(m.run(&[x]), Err(GpuError::Kernel(_))));
}

#[test]
fn the_engine_runs_supported_models_on_the_gpu_and_others_on_tract() {
    let Some((_lock, rt)) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path(), 64 << 20).unwrap());
    let engine = Engine::new(
        EngineConfig {
            workers: 2,
            ..EngineConfig::default()
        },
        store.clone(),
    )
    .unwrap();
    assert!(engine.use_gpu(rt.clone()));
    assert!(!engine.use_gpu(rt.clone()), "a second GPU is refused");
    let reference = cpu();
    let data = split();

    let mlp = store
        .put(&std::fs::read(models_dir().join("digits-mlp.onnx")).unwrap())
        .unwrap();
    reference
        .store
        .put(&std::fs::read(models_dir().join("digits-mlp.onnx")).unwrap())
        .unwrap();
    // Several jobs at once so that some share a batch on the GPU.
    let handles: Vec<_> = (0..24)
        .map(|r| {
            let x = NamedTensor {
                name: "X".into(),
                tensor: Tensor::f32(vec![1, 64], data.features[r].clone()).unwrap(),
            };
            (
                r,
                x.clone(),
                engine
                    .submit(Job::new(mlp, vec![x], Duration::from_secs(120)))
                    .unwrap(),
            )
        })
        .collect();
    let mut batched = 0;
    for (r, x, h) in handles {
        let out = h.wait().unwrap();
        assert_eq!(out.path, ExecPath::Gpu, "row {r}");
        batched += usize::from(out.batch_size > 1);
        let want = reference.run(mlp, vec![x]);
        for (g, w) in out.outputs.iter().zip(&want) {
            assert_eq!(g.name, w.name);
            assert_close("engine mlp", &g.tensor, &w.tensor, 1e-4, 0.0);
        }
    }
    eprintln!("engine: 24 jobs on the GPU, {batched} of them in shared batches");
    assert_eq!(
        engine.gpu().unwrap().path_for(&store, &mlp).unwrap(),
        ExecPath::Gpu
    );

    // A model tract runs but the GPU lacks an operator for (Sin): it falls back.
    let sin = Case::new("sin")
        .input("x", &[1, 4])
        .node(node("Sin", &["x"], &["y"], vec![]))
        .output("y")
        .bytes();
    let id = store.put(&sin).unwrap();
    let x = Tensor::f32(vec![1, 4], vec![0.0, 0.5, 1.0, 2.0]).unwrap();
    let out = engine
        .submit(Job::new(
            id,
            vec![NamedTensor {
                name: "x".into(),
                tensor: x,
            }],
            Duration::from_secs(60),
        ))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(out.path, ExecPath::Cpu);
    let y = f32s(&out.outputs[0].tensor);
    for (v, x) in y.iter().zip([0.0f32, 0.5, 1.0, 2.0]) {
        assert!((v - x.sin()).abs() < 1e-6);
    }
    assert_eq!(
        engine.gpu().unwrap().path_for(&store, &id).unwrap(),
        ExecPath::Cpu
    );
    let reason = engine.gpu().unwrap().fallback_reason(&store, &id).unwrap();
    assert!(reason.is_some_and(|r| r.contains("Sin")));
    assert_eq!(
        engine.gpu().unwrap().fallback_reason(&store, &mlp).unwrap(),
        None
    );
}

#[test]
fn emulated_adapters_are_never_advertised() {
    let Some((_lock, rt)) = gpu() else { return };
    let advert = rt.adapters_for_advert();
    if rt.adapter().emulated {
        assert!(advert.is_empty());
        // Without consent, a machine whose only adapter is emulated has no GPU.
        let only_emulated = GpuRuntime::enumerate().iter().all(|a| a.emulated);
        if only_emulated {
            assert!(GpuRuntime::probe(&GpuConfig::default()).is_none());
        }
    } else {
        assert_eq!(advert.len(), 1);
        assert_eq!(advert[0].name, rt.adapter().name);
    }
}

/// The conformance zoo on the GPU path: each public model either loads on the GPU and agrees
/// with onnxruntime (within the zoo's tolerance), or is refused at load with the operator and
/// node named, so the engine keeps it on tract. Prints one line per model for the zoo table's
/// GPU column (`docs/MODELS.md`).
#[test]
fn every_zoo_model_runs_on_the_gpu_or_names_what_keeps_it_on_tract() {
    let Some((_lock, rt)) = gpu() else { return };
    let dir = crank_inference::zoo::dir();
    let zoo = crank_inference::zoo::Zoo::open(&dir).unwrap_or_else(|e| {
        panic!(
            "the conformance zoo is not assembled at {}: {e}",
            dir.display()
        )
    });
    let tol = crank_inference::zoo::Tolerance::default();
    let mut failures = Vec::new();
    let mut on_gpu = 0;
    for m in &zoo.models {
        let bytes = std::fs::read(&m.path).unwrap();
        let id = ModelId::of(&bytes);
        // The engine keeps a model on tract whenever the GPU refuses it, naming why
        // (`gpu::exec`); an unsupported operator must name the node too.
        let model = match rt.load(id, &bytes) {
            Ok(model) => model,
            Err(e) => {
                if let GpuError::UnsupportedOperator { op, node } = &e {
                    assert!(!op.is_empty() && !node.is_empty(), "{}: {e}", m.name);
                }
                let kind = if e.is_fallback() { "" } else { " (load error)" };
                println!("{:<28} gpu: falls back to tract{kind}: {e}", m.name);
                continue;
            }
        };
        let started = Instant::now();
        let got = match model.run(&m.inputs) {
            Ok(got) => got,
            Err(e) => {
                println!("{:<28} gpu: falls back to tract at run time: {e}", m.name);
                continue;
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match crank_inference::zoo::agreement(&got, &m.expected, tol) {
            Ok(a) if a.iter().all(|a| a.outside == 0) => {
                on_gpu += 1;
                let worst = a.iter().map(|a| a.max_abs).fold(0f64, f64::max);
                println!(
                    "{:<28} gpu: agrees, max |diff| {worst:.2e}, first run {ms:.1} ms",
                    m.name
                );
            }
            Ok(a) => failures.push(format!("{}: disagrees: {a:?}", m.name)),
            Err(e) => failures.push(format!("{}: {e}", m.name)),
        }
    }
    println!("{on_gpu} of {} zoo models run on the GPU", zoo.models.len());
    assert!(
        failures.is_empty(),
        "zoo models the GPU path got wrong:\n{}",
        failures.join("\n")
    );
}
