//! Isolated execution against hostile models: each test builds a small ONNX graph that
//! tries to exhaust memory or stall a worker, runs it through an engine whose models run in
//! runner processes, and checks that only that task fails, with a clear reason, and that the
//! next honest task (the committed digits model on its whole test split) is still right.
//!
//! This binary is its own runner: it has no test harness (`harness = false`), and `main`
//! hands the hidden runner argument to `crank_inference::runner::serve` exactly as the node's
//! binary does, so `current_exe()` is a real runner executable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::{Engine, EngineConfig, InferenceError, Job, ModelStore};
use crank_protocol::{ExecPath, ModelId, NamedTensor, Tensor, TensorData};
use prost::Message;
use tract_onnx::pb::{
    self, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    ("runner_confines_itself", runner_confines_itself),
    (
        "huge_declared_dims_are_not_probed_in_process",
        huge_declared_dims_are_not_probed_in_process,
    ),
    (
        "huge_declared_dims_are_not_probed_in_the_runner",
        huge_declared_dims_are_not_probed_in_the_runner,
    ),
    (
        "input_sized_range_exhausts_only_its_runner",
        input_sized_range_exhausts_only_its_runner,
    ),
    (
        "huge_expand_fails_its_task_while_another_worker_serves",
        huge_expand_fails_its_task_while_another_worker_serves,
    ),
    (
        "one_slow_operator_is_killed_at_the_run_time_limit",
        one_slow_operator_is_killed_at_the_run_time_limit,
    ),
    (
        "cancelling_a_stalled_run_frees_the_worker",
        cancelling_a_stalled_run_frees_the_worker,
    ),
    (
        "a_missing_runner_is_a_typed_error",
        a_missing_runner_is_a_typed_error,
    ),
    (
        "onnxruntime_runs_in_the_confined_runner",
        onnxruntime_runs_in_the_confined_runner,
    ),
    (
        "input_sized_range_on_onnxruntime_exhausts_only_its_runner",
        input_sized_range_on_onnxruntime_exhausts_only_its_runner,
    ),
    (
        "one_slow_operator_on_onnxruntime_is_killed_at_the_run_time_limit",
        one_slow_operator_on_onnxruntime_is_killed_at_the_run_time_limit,
    ),
    (
        "onnxruntime_in_process_is_stopped_at_its_deadline",
        onnxruntime_in_process_is_stopped_at_its_deadline,
    ),
    (
        "a_missing_onnxruntime_library_is_refused_at_start",
        a_missing_onnxruntime_library_is_refused_at_start,
    ),
];

fn main() -> ExitCode {
    if crank_inference::runner::is_runner_invocation() {
        return crank_inference::runner::serve();
    }
    // libtest-like filtering: any non-flag argument selects tests by substring.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0usize, 0usize);
    for (name, test) in TESTS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        let ok = std::panic::catch_unwind(test).is_ok();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "test {name} ... {} ({secs:.2}s)",
            if ok { "ok" } else { "FAILED" }
        );
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("isolation: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<ModelStore>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path(), 64 << 20).unwrap());
    Fixture { _dir: dir, store }
}

/// An engine whose models run in runners started from this very binary.
fn isolated(workers: usize, memory_mib: u64, run_time: Duration) -> EngineConfig {
    EngineConfig {
        workers,
        runner_memory_mib: memory_mib,
        max_run_time: run_time,
        runner_exe: Some(std::env::current_exe().unwrap()),
        ..EngineConfig::default()
    }
}

#[derive(serde::Deserialize)]
struct Split {
    features: Vec<Vec<f32>>,
    labels: Vec<i64>,
}

#[derive(serde::Deserialize)]
struct Manifest {
    models: Vec<ManifestEntry>,
}

#[derive(serde::Deserialize)]
struct ManifestEntry {
    name: String,
    test_correct: usize,
}

/// The ONNX Runtime library `scripts/setup-python.sh` installs into `.venv` (or
/// `CRANK_ONNXRUNTIME`); fails, never skips, when it is missing.
fn onnxruntime_lib() -> PathBuf {
    crank_inference::onnxruntime::library_for_tests().expect(
        "ONNX Runtime is not installed: run scripts/setup-python.sh (it installs onnxruntime \
         into .venv) or set CRANK_ONNXRUNTIME to a libonnxruntime.so",
    )
}

/// [`isolated`] with the ONNX Runtime path.
fn isolated_ort(workers: usize, memory_mib: u64, run_time: Duration) -> EngineConfig {
    EngineConfig {
        onnxruntime: Some(onnxruntime_lib()),
        ..isolated(workers, memory_mib, run_time)
    }
}

/// Runs the digits MLP on its whole test split and checks the count of correct labels
/// against what the training library reported: the honest task after each attack.
fn honest_task_is_right(f: &Fixture, engine: &Engine) {
    honest_task_is_right_on(f, engine, None);
}

/// [`honest_task_is_right`] on a chosen path, which must be the one that ran it.
fn honest_task_is_right_on(f: &Fixture, engine: &Engine, path: Option<ExecPath>) {
    let id = f
        .store
        .put(&std::fs::read(models_dir().join("digits-mlp.onnx")).unwrap())
        .unwrap();
    let split: Split = serde_json::from_str(
        &std::fs::read_to_string(models_dir().join("digits-test.json")).unwrap(),
    )
    .unwrap();
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("manifest.json")).unwrap())
            .unwrap();
    let want = manifest
        .models
        .iter()
        .find(|m| m.name == "digits-mlp")
        .unwrap()
        .test_correct;
    let n = split.features.len() as u64;
    let input = NamedTensor {
        name: "X".into(),
        tensor: Tensor::f32(vec![n, 64], split.features.concat()).unwrap(),
    };
    let mut job = Job::new(id, vec![input], Duration::from_secs(60));
    if let Some(path) = path {
        job = job.on_path(path);
    }
    let out = engine.submit(job).unwrap().wait().unwrap();
    if let Some(path) = path {
        assert_eq!(out.path, path);
    }
    let label = out.outputs.iter().find(|t| t.name == "label").unwrap();
    let TensorData::I64(labels) = &label.tensor.data else {
        panic!("labels are not int64")
    };
    let correct = labels
        .iter()
        .zip(&split.labels)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(correct, want, "digits-mlp on its test split");
}

// ---------------------------------------------------------------------------------------
// Hand-built ONNX graphs

enum D {
    Fixed(i64),
    Param(&'static str),
}

fn value_info(name: &str, elem: pb::tensor_proto::DataType, dims: Option<&[D]>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: dims.map(|d| TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|v| Dimension {
                            value: Some(match v {
                                D::Fixed(n) => dimension::Value::DimValue(*n),
                                D::Param(p) => dimension::Value::DimParam((*p).into()),
                            }),
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

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{op}_{}", outputs[0]),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..NodeProto::default()
    }
}

fn const_i64(name: &str, dims: &[i64], v: Vec<i64>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: v,
        ..TensorProto::default()
    }
}

fn model(
    inputs: Vec<ValueInfoProto>,
    consts: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    outputs: Vec<ValueInfoProto>,
) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "hostile".into(),
            node: nodes,
            initializer: consts,
            input: inputs,
            output: outputs,
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
    .encode_to_vec()
}

use pb::tensor_proto::DataType::{Float, Int64};

/// `y = Relu(x)` with `x: [N, 100000, 100000] f32`: a probe row would be 40 GB.
fn huge_declared_dims() -> Vec<u8> {
    model(
        vec![value_info(
            "x",
            Float,
            Some(&[D::Param("N"), D::Fixed(100_000), D::Fixed(100_000)]),
        )],
        vec![],
        vec![node("Relu", &["x"], &["y"])],
        vec![value_info("y", Float, None)],
    )
}

/// `r = Range(0, n, 1)` with `n` an int64 scalar input: the output's size is whatever the
/// requester says.
fn input_sized_range() -> Vec<u8> {
    model(
        vec![value_info("n", Int64, Some(&[]))],
        vec![
            const_i64("zero", &[], vec![0]),
            const_i64("one", &[], vec![1]),
        ],
        vec![node("Range", &["zero", "n", "one"], &["r"])],
        vec![value_info("r", Int64, None)],
    )
}

/// `y = Expand(x, [rows, cols])` with `x: [1] f32`.
fn expand_to(rows: i64, cols: i64) -> Vec<u8> {
    model(
        vec![value_info("x", Float, Some(&[D::Fixed(1)]))],
        vec![const_i64("shape", &[2], vec![rows, cols])],
        vec![node("Expand", &["x", "shape"], &["y"])],
        vec![value_info("y", Float, None)],
    )
}

/// `y = MatMul(a, a)` with `a = Expand(x, [s, s])`: one operator of 2·s³ flops.
fn one_slow_matmul(s: i64) -> Vec<u8> {
    model(
        vec![value_info("x", Float, Some(&[D::Fixed(1), D::Fixed(1)]))],
        vec![const_i64("shape", &[2], vec![s, s])],
        vec![
            node("Expand", &["x", "shape"], &["a"]),
            node("MatMul", &["a", "a"], &["y"]),
        ],
        vec![value_info("y", Float, None)],
    )
}

/// `a = Expand(x, [s, s])`, then `n` MatMuls in a chain: many operators of 2·s³ flops each,
/// so a run can be stopped between them.
fn matmul_chain(s: i64, n: usize) -> Vec<u8> {
    let mut nodes = vec![node("Expand", &["x", "shape"], &["a0"])];
    for i in 0..n {
        let (from, to) = (format!("a{i}"), format!("a{}", i + 1));
        nodes.push(node("MatMul", &[&from, "a0"], &[&to]));
    }
    let last = format!("a{n}");
    model(
        vec![value_info("x", Float, Some(&[D::Fixed(1), D::Fixed(1)]))],
        vec![const_i64("shape", &[2], vec![s, s])],
        nodes,
        vec![value_info(&last, Float, None)],
    )
}

fn run_on(
    engine: &Engine,
    model: ModelId,
    inputs: Vec<NamedTensor>,
    path: ExecPath,
    timeout: Duration,
) -> Result<crank_inference::RunOutput, InferenceError> {
    engine
        .submit(Job::new(model, inputs, timeout).on_path(path))
        .and_then(|h| h.wait())
}

fn scalar_i64(name: &str, v: i64) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        tensor: Tensor {
            shape: vec![],
            data: TensorData::I64(vec![v]),
        },
    }
}

fn f32s(name: &str, shape: Vec<u64>, v: Vec<f32>) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        tensor: Tensor::f32(shape, v).unwrap(),
    }
}

fn run(
    engine: &Engine,
    model: ModelId,
    inputs: Vec<NamedTensor>,
) -> Result<crank_inference::RunOutput, InferenceError> {
    engine
        .submit(Job::new(model, inputs, Duration::from_secs(60)))
        .and_then(|h| h.wait())
}

// ---------------------------------------------------------------------------------------
// Tests

fn runner_confines_itself() {
    let f = fixture();
    let engine = Engine::new(isolated(1, 512, Duration::from_secs(10)), f.store.clone()).unwrap();
    assert!(engine.is_isolated());
    let report = engine.runner_sandbox().unwrap().unwrap();
    assert!(report.memory_limit, "{report:?}");
    assert!(report.cpu_limit, "{report:?}");
    assert!(report.file_limits, "{report:?}");
    if cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        assert!(report.seccomp, "{report:?}");
    }
    assert!(report.notes.is_empty(), "{report:?}");
    // Without a runner executable the library runs models in-process.
    let plain = Engine::new(EngineConfig::default(), f.store.clone()).unwrap();
    assert!(!plain.is_isolated());
    assert!(plain.runner_sandbox().is_none());
}

fn check_huge_declared_dims(engine: &Engine, f: &Fixture) {
    let id = f.store.put(&huge_declared_dims()).unwrap();
    let started = Instant::now();
    let info = engine.inspect(&id).unwrap();
    // The probe would have needed two 40 GB rows: it is skipped and batching is off.
    assert!(!info.batchable);
    assert!(started.elapsed() < Duration::from_secs(10));
    // A one-element task does not match the declared shape: a clear input error.
    let err = run(engine, id, vec![f32s("x", vec![1], vec![1.0])]).unwrap_err();
    assert!(
        matches!(&err, InferenceError::InputInvalid(m) if m.contains("[N,100000,100000]")),
        "{err}"
    );
    honest_task_is_right(f, engine);
}

fn huge_declared_dims_are_not_probed_in_process() {
    let f = fixture();
    let engine = Engine::new(
        EngineConfig {
            workers: 1,
            ..EngineConfig::default()
        },
        f.store.clone(),
    )
    .unwrap();
    assert!(!engine.is_isolated());
    check_huge_declared_dims(&engine, &f);
}

fn huge_declared_dims_are_not_probed_in_the_runner() {
    let f = fixture();
    let engine = Engine::new(isolated(1, 512, Duration::from_secs(30)), f.store.clone()).unwrap();
    check_huge_declared_dims(&engine, &f);
}

fn input_sized_range_exhausts_only_its_runner() {
    let f = fixture();
    let engine = Engine::new(isolated(1, 512, Duration::from_secs(30)), f.store.clone()).unwrap();
    let id = f.store.put(&input_sized_range()).unwrap();
    // An honest request of the same model works.
    let out = run(&engine, id, vec![scalar_i64("n", 5)]).unwrap();
    assert_eq!(
        out.outputs[0].tensor.data,
        TensorData::I64(vec![0, 1, 2, 3, 4])
    );
    // Ten billion int64s: 80 GB, far past the runner's 512 MiB.
    let err = run(&engine, id, vec![scalar_i64("n", 10_000_000_000)]).unwrap_err();
    assert_eq!(
        err,
        InferenceError::MemoryExhausted { limit_mib: 512 },
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the model exhausted the runner's memory limit of 512 MiB"
    );
    // A bit over the limit (1 GiB of int64), well under the machine's memory.
    let err = run(&engine, id, vec![scalar_i64("n", 128 << 20)]).unwrap_err();
    assert_eq!(
        err,
        InferenceError::MemoryExhausted { limit_mib: 512 },
        "{err}"
    );
    // The worker carries on, with a fresh runner where the old one died.
    honest_task_is_right(&f, &engine);
    let out = run(&engine, id, vec![scalar_i64("n", 3)]).unwrap();
    assert_eq!(out.outputs[0].tensor.data, TensorData::I64(vec![0, 1, 2]));
    // The worker answers, then ends its turn and lowers the running count: wait for that.
    let started = std::time::Instant::now();
    while engine.queue().running != 0 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(engine.queue().running, 0);
}

fn huge_expand_fails_its_task_while_another_worker_serves() {
    let f = fixture();
    let engine = Engine::new(isolated(2, 512, Duration::from_secs(30)), f.store.clone()).unwrap();
    let small = f.store.put(&expand_to(2, 3)).unwrap();
    let huge = f.store.put(&expand_to(100_000, 100_000)).unwrap();
    let out = run(&engine, small, vec![f32s("x", vec![1], vec![2.5])]).unwrap();
    assert_eq!(out.outputs[0].tensor.shape, vec![2, 3]);
    assert_eq!(out.outputs[0].tensor.data, TensorData::F32(vec![2.5; 6]));
    // The attack and an honest task at the same time, on two workers.
    let attack = engine
        .submit(Job::new(
            huge,
            vec![f32s("x", vec![1], vec![1.0])],
            Duration::from_secs(60),
        ))
        .unwrap();
    honest_task_is_right(&f, &engine);
    let err = attack.wait().unwrap_err();
    assert!(
        matches!(err, InferenceError::MemoryExhausted { limit_mib: 512 }),
        "{err}"
    );
    honest_task_is_right(&f, &engine);
    let out = run(&engine, small, vec![f32s("x", vec![1], vec![-1.0])]).unwrap();
    assert_eq!(out.outputs[0].tensor.data, TensorData::F32(vec![-1.0; 6]));
}

fn one_slow_operator_is_killed_at_the_run_time_limit() {
    let f = fixture();
    let limit = Duration::from_millis(400);
    let engine = Engine::new(isolated(1, 2048, limit), f.store.clone()).unwrap();
    // 2·5000³ = 250 GFLOP in one MatMul: many seconds on one core.
    let slow = f.store.put(&one_slow_matmul(5000)).unwrap();
    engine.warm(&slow).unwrap();
    let started = Instant::now();
    let err = run(&engine, slow, vec![f32s("x", vec![1, 1], vec![1.0])]).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, InferenceError::TimedOut { limit: l, .. } if l == limit),
        "{err}"
    );
    // Stopped inside the operator, not at its end.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    honest_task_is_right(&f, &engine);
}

fn cancelling_a_stalled_run_frees_the_worker() {
    let f = fixture();
    let engine = Engine::new(isolated(1, 2048, Duration::from_secs(120)), f.store.clone()).unwrap();
    let slow = f.store.put(&one_slow_matmul(5000)).unwrap();
    engine.warm(&slow).unwrap();
    let handle = engine
        .submit(Job::new(
            slow,
            vec![f32s("x", vec![1, 1], vec![1.0])],
            Duration::from_secs(120),
        ))
        .unwrap();
    while engine.queue().running == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    handle.cancel();
    assert_eq!(handle.wait().unwrap_err(), InferenceError::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(2));
    honest_task_is_right(&f, &engine);
}

fn a_missing_runner_is_a_typed_error() {
    let f = fixture();
    let config = EngineConfig {
        workers: 1,
        runner_exe: Some(PathBuf::from("/nonexistent/crank-node")),
        ..EngineConfig::default()
    };
    let engine = Engine::new(config, f.store.clone()).unwrap();
    let id = f.store.put(&input_sized_range()).unwrap();
    let err = run(&engine, id, vec![scalar_i64("n", 2)]).unwrap_err();
    assert!(matches!(err, InferenceError::RunnerUnavailable(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/crank-node"), "{err}");
}

fn onnxruntime_runs_in_the_confined_runner() {
    let f = fixture();
    let engine = Engine::new(
        isolated_ort(1, 1024, Duration::from_secs(30)),
        f.store.clone(),
    )
    .unwrap();
    let version = engine.onnxruntime_version().unwrap().to_string();
    assert!(version.starts_with("1."), "{version}");
    // The sandbox is whole: the library was loaded before it, not by weakening it.
    let report = engine.runner_sandbox().unwrap().unwrap();
    assert!(report.notes.is_empty(), "{report:?}");
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        assert!(report.seccomp, "{report:?}");
    }
    honest_task_is_right_on(&f, &engine, Some(ExecPath::Onnxruntime));
    // The same engine still runs tract, and a job that names no path stays on it.
    honest_task_is_right_on(&f, &engine, Some(ExecPath::Cpu));
    honest_task_is_right(&f, &engine);
    let small = f.store.put(&expand_to(2, 3)).unwrap();
    let out = run_on(
        &engine,
        small,
        vec![f32s("x", vec![1], vec![2.5])],
        ExecPath::Onnxruntime,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(out.path, ExecPath::Onnxruntime);
    assert_eq!(out.outputs[0].tensor.shape, vec![2, 3]);
    assert_eq!(out.outputs[0].tensor.data, TensorData::F32(vec![2.5; 6]));
    // Inputs are checked against ONNX Runtime's signature before anything runs.
    let err = run_on(
        &engine,
        small,
        vec![f32s("x", vec![2], vec![1.0, 2.0])],
        ExecPath::Onnxruntime,
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert!(matches!(err, InferenceError::InputInvalid(_)), "{err}");
}

fn input_sized_range_on_onnxruntime_exhausts_only_its_runner() {
    let f = fixture();
    let engine = Engine::new(
        isolated_ort(1, 512, Duration::from_secs(30)),
        f.store.clone(),
    )
    .unwrap();
    let id = f.store.put(&input_sized_range()).unwrap();
    let ort = |n: i64| {
        run_on(
            &engine,
            id,
            vec![scalar_i64("n", n)],
            ExecPath::Onnxruntime,
            Duration::from_secs(30),
        )
    };
    let out = ort(5).unwrap();
    assert_eq!(out.path, ExecPath::Onnxruntime);
    assert_eq!(
        out.outputs[0].tensor.data,
        TensorData::I64(vec![0, 1, 2, 3, 4])
    );
    // 80 GB and 1 GiB of int64, past the runner's 512 MiB: refused by the address-space
    // limit inside ONNX Runtime, reported as such.
    for n in [10_000_000_000, 128 << 20] {
        let err = ort(n).unwrap_err();
        assert_eq!(
            err,
            InferenceError::MemoryExhausted { limit_mib: 512 },
            "{err}"
        );
    }
    honest_task_is_right_on(&f, &engine, Some(ExecPath::Onnxruntime));
    assert_eq!(
        ort(3).unwrap().outputs[0].tensor.data,
        TensorData::I64(vec![0, 1, 2])
    );
}

fn one_slow_operator_on_onnxruntime_is_killed_at_the_run_time_limit() {
    let f = fixture();
    let limit = Duration::from_millis(400);
    let engine = Engine::new(isolated_ort(1, 2048, limit), f.store.clone()).unwrap();
    let slow = f.store.put(&one_slow_matmul(5000)).unwrap();
    engine.inspect_onnxruntime(&slow).unwrap();
    let started = Instant::now();
    let err = run_on(
        &engine,
        slow,
        vec![f32s("x", vec![1, 1], vec![1.0])],
        ExecPath::Onnxruntime,
        Duration::from_secs(60),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, InferenceError::TimedOut { limit: l, .. } if l == limit),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    honest_task_is_right_on(&f, &engine, Some(ExecPath::Onnxruntime));
}

fn onnxruntime_in_process_is_stopped_at_its_deadline() {
    let f = fixture();
    let engine = Engine::new(
        EngineConfig {
            workers: 1,
            onnxruntime: Some(onnxruntime_lib()),
            ..EngineConfig::default()
        },
        f.store.clone(),
    )
    .unwrap();
    assert!(!engine.is_isolated());
    // 200 MatMuls of 2·600³ flops: seconds in all, a few milliseconds each.
    let slow = f.store.put(&matmul_chain(600, 200)).unwrap();
    engine.inspect_onnxruntime(&slow).unwrap();
    let started = Instant::now();
    let err = run_on(
        &engine,
        slow,
        vec![f32s("x", vec![1, 1], vec![1e-3])],
        ExecPath::Onnxruntime,
        Duration::from_millis(300),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, InferenceError::TimedOut { .. }), "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Cancelling stops it too, and the worker is free for the next task.
    let handle = engine
        .submit(
            Job::new(
                slow,
                vec![f32s("x", vec![1, 1], vec![1e-3])],
                Duration::from_secs(60),
            )
            .on_path(ExecPath::Onnxruntime),
        )
        .unwrap();
    while engine.queue().running == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    handle.cancel();
    assert_eq!(handle.wait().unwrap_err(), InferenceError::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(2));
    honest_task_is_right_on(&f, &engine, Some(ExecPath::Onnxruntime));
}

fn a_missing_onnxruntime_library_is_refused_at_start() {
    let f = fixture();
    // This process has loaded the real library already, so any other file is refused; a
    // fresh process refuses a missing file with the same hint (unit-tested in the crate).
    let err = Engine::new(
        EngineConfig {
            workers: 1,
            onnxruntime: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
            ..EngineConfig::default()
        },
        f.store.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, InferenceError::Startup(_)), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/libonnxruntime.so"),
        "{err}"
    );
}
