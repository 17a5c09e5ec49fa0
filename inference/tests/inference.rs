//! End-to-end tests of the model store and the engine on the committed reference models.
//!
//! The accuracy tests run the held-out digits split through the engine and require exactly
//! the number of correct predictions that the training library reported in
//! `models/manifest.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::{
    CancelToken, Dim, Engine, EngineConfig, InferenceError, Job, ModelStore, RunOutput, StoreError,
};
use crank_protocol::{ModelId, NamedTensor, Tensor, TensorData};
use serde::Deserialize;

#[derive(Deserialize)]
struct Manifest {
    models: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    file: String,
    blake3: String,
    inputs: Vec<Signature>,
    outputs: Vec<Signature>,
    test_correct: usize,
    test_samples: usize,
}

#[derive(Deserialize)]
struct Signature {
    name: String,
    shape: Vec<serde_json::Value>,
    dtype: String,
}

#[derive(Deserialize)]
struct TestSplit {
    features: Vec<Vec<f32>>,
    labels: Vec<i64>,
}

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(models_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn split() -> TestSplit {
    let text = std::fs::read_to_string(models_dir().join("digits-test.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn entry<'a>(m: &'a Manifest, name: &str) -> &'a Entry {
    m.models.iter().find(|e| e.name == name).unwrap()
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

impl Fixture {
    fn put(&self, file: &str) -> ModelId {
        let bytes = std::fs::read(models_dir().join(file)).unwrap();
        self.store.put(&bytes).unwrap()
    }

    fn engine(&self, config: EngineConfig) -> Engine {
        Engine::new(config, self.store.clone()).unwrap()
    }
}

fn config(workers: usize) -> EngineConfig {
    EngineConfig {
        workers,
        ..EngineConfig::default()
    }
}

/// Rows of the test split in a model's input layout.
fn rows_input(name: &str, cnn: bool, rows: &[Vec<f32>]) -> NamedTensor {
    let n = rows.len() as u64;
    let shape = if cnn { vec![n, 1, 8, 8] } else { vec![n, 64] };
    NamedTensor {
        name: name.to_string(),
        tensor: Tensor::f32(shape, rows.concat()).unwrap(),
    }
}

fn probabilities(out: &RunOutput) -> (Vec<u64>, &[f32]) {
    let p = out
        .outputs
        .iter()
        .find(|t| t.name == "probabilities")
        .unwrap();
    let TensorData::F32(v) = &p.tensor.data else {
        panic!("probabilities are not f32")
    };
    (p.tensor.shape.clone(), v)
}

fn argmax_rows(v: &[f32], classes: usize) -> Vec<i64> {
    v.chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |best, (i, &x)| if x > best.1 { (i, x) } else { best },
                )
                .0 as i64
        })
        .collect()
}

fn job(model: ModelId, input: NamedTensor) -> Job {
    Job::new(model, vec![input], Duration::from_secs(120))
}

/// Everything about one reference model as the tests need it.
struct Model {
    id: ModelId,
    input: String,
    cnn: bool,
    correct: usize,
}

fn load(f: &Fixture, m: &Manifest, name: &str) -> Model {
    let e = entry(m, name);
    let id = f.put(&e.file);
    assert_eq!(
        id.to_hex(),
        e.blake3,
        "{name}: store id is the manifest's blake3"
    );
    Model {
        id,
        input: e.inputs[0].name.clone(),
        cnn: name == "digits-cnn",
        correct: e.test_correct,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_test_split_matches_the_training_library_for_every_model() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let engine = f.engine(config(2));
    for name in ["digits-mlp", "digits-cnn", "digits-wide"] {
        let model = load(&f, &m, name);
        let e = entry(&m, name);
        assert_eq!(e.test_samples, data.labels.len());

        // The engine's view of the signature agrees with the manifest.
        let info = engine.inspect(&model.id).unwrap();
        assert!(info.batchable, "{name} should be batchable");
        assert_eq!(info.inputs.len(), 1);
        assert_eq!(info.inputs[0].name, e.inputs[0].name);
        assert_eq!(info.inputs[0].dtype, e.inputs[0].dtype);
        let want: Vec<Dim> = e.inputs[0]
            .shape
            .iter()
            .map(|d| match d {
                serde_json::Value::Number(n) => Dim::Fixed(n.as_u64().unwrap()),
                other => Dim::Symbol(other.as_str().unwrap().to_string()),
            })
            .collect();
        assert_eq!(info.inputs[0].shape, want, "{name} input shape");
        let out_names: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
        let manifest_names: Vec<&str> = e.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(out_names, manifest_names);

        let out = engine
            .submit(job(
                model.id,
                rows_input(&model.input, model.cnn, &data.features),
            ))
            .unwrap()
            .await
            .unwrap();
        let (shape, probs) = probabilities(&out);
        assert_eq!(shape, vec![data.labels.len() as u64, 10]);
        let predicted = argmax_rows(probs, 10);
        let correct = predicted
            .iter()
            .zip(&data.labels)
            .filter(|(p, l)| p == l)
            .count();
        assert_eq!(
            correct, model.correct,
            "{name}: engine gets {correct} right, the training library {}",
            model.correct
        );
        // Rows are probability distributions.
        for row in probs.chunks(10) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-4, "{name}: row sums to {sum}");
        }
        if let Some(label) = out.outputs.iter().find(|t| t.name == "label") {
            assert_eq!(label.tensor.data, TensorData::I64(predicted.clone()));
        }
        assert!(out.cpu_micros > 0 && out.run_micros > 0);
        assert_eq!(out.batch_size, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_per_sample_gives_the_same_accuracy_and_batches() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let engine = f.engine(EngineConfig {
        workers: 2,
        queue_slots: 1024,
        ..EngineConfig::default()
    });
    for name in ["digits-mlp", "digits-cnn", "digits-wide"] {
        let model = load(&f, &m, name);
        engine.warm(&model.id).unwrap();
        let handles: Vec<_> = data
            .features
            .iter()
            .map(|row| {
                engine
                    .submit(job(
                        model.id,
                        rows_input(&model.input, model.cnn, std::slice::from_ref(row)),
                    ))
                    .unwrap()
            })
            .collect();
        let mut correct = 0;
        let mut batched = 0;
        for (h, label) in handles.into_iter().zip(&data.labels) {
            let out = h.await.unwrap();
            let (shape, probs) = probabilities(&out);
            assert_eq!(shape, vec![1, 10]);
            if argmax_rows(probs, 10)[0] == *label {
                correct += 1;
            }
            if out.batch_size > 1 {
                batched += 1;
            }
        }
        assert_eq!(correct, model.correct, "{name}: per-sample jobs");
        assert!(
            batched > 0,
            "{name}: 360 queued jobs for one model should share some runs"
        );
    }
}

#[tokio::test]
async fn batched_and_single_results_agree() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let model = load(&f, &m, "digits-wide");
    let single = f.engine(EngineConfig {
        workers: 1,
        batching: false,
        ..EngineConfig::default()
    });
    let batched = f.engine(EngineConfig {
        workers: 1,
        queue_slots: 64,
        ..EngineConfig::default()
    });
    let rows = &data.features[..24];
    let mut expected = Vec::new();
    for row in rows {
        let out = single
            .submit(job(
                model.id,
                rows_input("input", false, std::slice::from_ref(row)),
            ))
            .unwrap()
            .await
            .unwrap();
        assert_eq!(out.batch_size, 1);
        expected.push(probabilities(&out).1.to_vec());
    }
    // Hold the only worker on a large job so the small ones queue up and share a run.
    let blocker = batched
        .submit(job(model.id, rows_input("input", false, &data.features)))
        .unwrap();
    let handles: Vec<_> = rows
        .iter()
        .map(|row| {
            batched
                .submit(job(
                    model.id,
                    rows_input("input", false, std::slice::from_ref(row)),
                ))
                .unwrap()
        })
        .collect();
    blocker.await.unwrap();
    let mut max_batch = 0;
    for (h, want) in handles.into_iter().zip(expected) {
        let out = h.await.unwrap();
        max_batch = max_batch.max(out.batch_size);
        for (a, b) in probabilities(&out).1.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "batched {a} vs single {b}");
        }
    }
    assert!(max_batch > 1, "queued jobs were not batched");
}

#[tokio::test]
async fn malformed_onnx_is_a_clear_error() {
    let f = fixture();
    let id = f.store.put(b"this is not an ONNX protobuf at all").unwrap();
    let engine = f.engine(config(1));
    let e = engine.inspect(&id).unwrap_err();
    assert!(matches!(e, InferenceError::ModelInvalid(_)), "{e:?}");
    let input = rows_input("x", false, &[vec![0.0; 64]]);
    let e = engine.submit(job(id, input)).unwrap().await.unwrap_err();
    assert!(matches!(e, InferenceError::ModelInvalid(_)), "{e:?}");

    // A real model cut short is also refused cleanly.
    let bytes = std::fs::read(models_dir().join("digits-cnn.onnx")).unwrap();
    let cut = f.store.put(&bytes[..bytes.len() / 2]).unwrap();
    let e = engine.inspect(&cut).unwrap_err();
    assert!(matches!(e, InferenceError::ModelInvalid(_)), "{e:?}");
}

#[tokio::test]
async fn unsupported_operator_is_named() {
    let f = fixture();
    let id = f.put("fixtures/unsupported-op.onnx");
    let engine = f.engine(config(1));
    match engine.inspect(&id) {
        Err(InferenceError::UnsupportedOperator { op, .. }) => assert_eq!(op, "Det"),
        other => panic!("expected UnsupportedOperator, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_inputs_are_rejected_with_the_expected_signature() {
    let f = fixture();
    let m = manifest();
    let mlp = load(&f, &m, "digits-mlp");
    let cnn = load(&f, &m, "digits-cnn");
    let engine = f.engine(config(1));
    let run = |id: ModelId, input: NamedTensor| {
        let h = engine.submit(job(id, input)).unwrap();
        async move { h.await.unwrap_err() }
    };
    let e = run(
        mlp.id,
        NamedTensor {
            name: "X".into(),
            tensor: Tensor::f32(vec![1, 10], vec![0.0; 10]).unwrap(),
        },
    )
    .await;
    assert_eq!(
        e,
        InferenceError::InputInvalid(
            "input `X` expects shape [N,64] float32, got [1,10] float32".into()
        )
    );
    let e = run(
        cnn.id,
        NamedTensor {
            name: "input".into(),
            tensor: Tensor {
                shape: vec![1, 1, 8, 8],
                data: TensorData::F64(vec![0.0; 64]),
            },
        },
    )
    .await;
    assert_eq!(
        e,
        InferenceError::InputInvalid(
            "input `input` expects shape [N,1,8,8] float32, got [1,1,8,8] float64".into()
        )
    );
    let e = run(cnn.id, rows_input("image", true, &[vec![0.0; 64]])).await;
    assert!(
        matches!(&e, InferenceError::InputInvalid(m) if m.contains("no input `image`")),
        "{e:?}"
    );
    // Shape and data disagree: refused at submit, before any queueing.
    let bad = Job::new(
        cnn.id,
        vec![NamedTensor {
            name: "input".into(),
            tensor: Tensor {
                shape: vec![2, 1, 8, 8],
                data: TensorData::F32(vec![0.0; 64]),
            },
        }],
        Duration::from_secs(5),
    );
    assert!(matches!(
        engine.submit(bad),
        Err(InferenceError::InputInvalid(_))
    ));
    // Non-finite values are refused too.
    let mut nan = vec![0.0; 64];
    nan[3] = f32::NAN;
    assert!(matches!(
        engine.submit(job(mlp.id, rows_input("X", false, &[nan]))),
        Err(InferenceError::InputInvalid(_))
    ));
}

#[test]
fn hash_mismatch_stores_nothing() {
    let f = fixture();
    let bytes = std::fs::read(models_dir().join("digits-mlp.onnx")).unwrap();
    let wrong = ModelId::of(b"some other model");
    let e = f.store.put_verified(&wrong, &bytes).unwrap_err();
    assert!(matches!(e, StoreError::HashMismatch { .. }), "{e:?}");
    assert!(f.store.list().is_empty());
    f.store.put_verified(&ModelId::of(&bytes), &bytes).unwrap();
    assert_eq!(f.store.list(), vec![ModelId::of(&bytes)]);
}

#[tokio::test]
async fn oversize_models_are_refused_by_store_and_engine() {
    let bytes = std::fs::read(models_dir().join("digits-wide.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let small = ModelStore::open(dir.path(), 1 << 20).unwrap();
    assert!(matches!(
        small.put(&bytes),
        Err(StoreError::TooLarge { limit, .. }) if limit == 1 << 20
    ));

    let f = fixture();
    let id = f.put("digits-wide.onnx");
    let engine = f.engine(EngineConfig {
        workers: 1,
        max_model_bytes: 1 << 20,
        ..EngineConfig::default()
    });
    let e = engine
        .submit(job(id, rows_input("input", false, &[vec![0.0; 64]])))
        .unwrap_err();
    assert!(
        matches!(e, InferenceError::ModelTooLarge { size, .. } if size == bytes.len() as u64),
        "{e:?}"
    );
    assert!(matches!(
        engine.inspect(&id),
        Err(InferenceError::ModelTooLarge { .. })
    ));
}

#[tokio::test]
async fn too_many_elements_is_refused_at_submit() {
    let f = fixture();
    let m = manifest();
    let mlp = load(&f, &m, "digits-mlp");
    let engine = f.engine(EngineConfig {
        workers: 1,
        max_input_elements: 100,
        ..EngineConfig::default()
    });
    let rows = vec![vec![0.0; 64]; 2];
    assert_eq!(
        engine
            .submit(job(mlp.id, rows_input("X", false, &rows)))
            .unwrap_err(),
        InferenceError::TooManyElements {
            actual: 128,
            limit: 100
        }
    );
    engine
        .submit(job(mlp.id, rows_input("X", false, &rows[..1])))
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_model_is_not_found() {
    let f = fixture();
    let engine = f.engine(config(1));
    let id = ModelId([3; 32]);
    assert_eq!(
        engine
            .submit(job(id, rows_input("X", false, &[vec![0.0; 64]])))
            .unwrap_err(),
        InferenceError::ModelNotFound(id)
    );
}

/// A job on the wide model big enough to keep a worker busy for a while (hundreds of ms).
fn long_job(model: ModelId, data: &TestSplit) -> Job {
    let rows: Vec<Vec<f32>> = data.features.iter().cycle().take(20_000).cloned().collect();
    job(model, rows_input("input", false, &rows))
}

async fn wait_until_running(engine: &Engine, n: usize) {
    let start = Instant::now();
    while engine.queue().running < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn full_queue_refuses_and_cancellation_frees_it() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let wide = load(&f, &m, "digits-wide");
    let engine = f.engine(EngineConfig {
        workers: 1,
        queue_slots: 2,
        batching: false,
        ..EngineConfig::default()
    });
    engine.warm(&wide.id).unwrap();
    let running = engine.submit(long_job(wide.id, &data)).unwrap();
    wait_until_running(&engine, 1).await;
    let one = rows_input("input", false, &data.features[..1]);
    let queued_a = engine.submit(job(wide.id, one.clone())).unwrap();
    let queued_b = engine.submit(job(wide.id, one.clone())).unwrap();
    let q = engine.queue();
    assert_eq!((q.workers, q.slots, q.queued, q.running), (1, 2, 2, 1));
    assert!(q.is_full());
    assert_eq!(
        engine.submit(job(wide.id, one.clone())).unwrap_err(),
        InferenceError::QueueFull {
            slots: 2,
            workers: 1
        }
    );

    // Cancelled while queued: dropped before it starts.
    queued_a.cancel();
    // Cancelled while running: stopped at the next operator, result discarded.
    let cancel_started = Instant::now();
    running.cancel();
    assert_eq!(running.await.unwrap_err(), InferenceError::Cancelled);
    assert!(cancel_started.elapsed() < Duration::from_secs(30));
    assert_eq!(queued_a.await.unwrap_err(), InferenceError::Cancelled);
    let out = queued_b.await.unwrap();
    assert_eq!(probabilities(&out).0, vec![1, 10]);
}

#[tokio::test]
async fn cancelled_before_submit_and_dropped_handles() {
    let f = fixture();
    let m = manifest();
    let mlp = load(&f, &m, "digits-mlp");
    let engine = f.engine(config(1));
    let token = CancelToken::new();
    token.cancel();
    let mut j = job(mlp.id, rows_input("X", false, &[vec![0.0; 64]]));
    j.cancel = token;
    assert_eq!(engine.submit(j).unwrap_err(), InferenceError::Cancelled);
}

#[tokio::test]
async fn run_time_cap_and_deadlines_stop_jobs() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let wide = load(&f, &m, "digits-wide");
    let engine = f.engine(EngineConfig {
        workers: 1,
        max_run_time: Duration::from_millis(1),
        ..EngineConfig::default()
    });
    engine.warm(&wide.id).unwrap();
    let e = engine
        .submit(long_job(wide.id, &data))
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(e, InferenceError::TimedOut { limit, .. } if limit == Duration::from_millis(1)),
        "{e:?}"
    );

    // A deadline already passed is refused at submit.
    let mut j = job(wide.id, rows_input("input", false, &data.features[..1]));
    j.deadline = Instant::now();
    assert!(matches!(
        engine.submit(j),
        Err(InferenceError::TimedOut { .. })
    ));

    // A deadline that passes during the run stops it.
    let engine = f.engine(config(1));
    // Three long jobs' worth of rows: the run takes far longer than the deadline. On a
    // heavily loaded machine the deadline may already pass while submit checks the inputs,
    // which is the same error from an earlier place.
    let rows: Vec<Vec<f32>> = data.features.iter().cycle().take(60_000).cloned().collect();
    let mut j = job(wide.id, rows_input("input", false, &rows));
    j.deadline = Instant::now() + Duration::from_millis(150);
    let e = match engine.submit(j) {
        Ok(h) => h.await.unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(e, InferenceError::TimedOut { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_jobs_on_all_models_get_their_own_answers() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let models: Vec<Model> = ["digits-mlp", "digits-cnn", "digits-wide"]
        .iter()
        .map(|n| load(&f, &m, n))
        .collect();
    let engine = f.engine(EngineConfig {
        workers: 2,
        queue_slots: 256,
        plan_cache_entries: 2, // fewer than the models: exercises eviction under load
        ..EngineConfig::default()
    });
    let mut tasks = Vec::new();
    for (i, row) in data.features.iter().take(90).enumerate() {
        let model = &models[i % 3];
        let engine = engine.clone();
        let input = rows_input(&model.input, model.cnn, std::slice::from_ref(row));
        let id = model.id;
        tasks.push(tokio::spawn(async move {
            let out = engine.submit(job(id, input)).unwrap().await.unwrap();
            argmax_rows(probabilities(&out).1, 10)[0]
        }));
    }
    let mut agree = 0;
    for (t, label) in tasks.into_iter().zip(&data.labels) {
        if t.await.unwrap() == *label {
            agree += 1;
        }
    }
    // Every model is above 96 % on the split; 90 samples leave room for a few misses.
    assert!(agree >= 84, "only {agree}/90 correct");
    assert!(engine.cached_models().len() <= 2);
}

#[tokio::test]
async fn shutdown_fails_queued_jobs_and_refuses_new_ones() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let wide = load(&f, &m, "digits-wide");
    let engine = f.engine(EngineConfig {
        workers: 1,
        batching: false,
        ..EngineConfig::default()
    });
    engine.warm(&wide.id).unwrap();
    let running = engine.submit(long_job(wide.id, &data)).unwrap();
    wait_until_running(&engine, 1).await;
    let queued = engine
        .submit(job(
            wide.id,
            rows_input("input", false, &data.features[..1]),
        ))
        .unwrap();
    engine.shutdown();
    assert_eq!(queued.await.unwrap_err(), InferenceError::ShuttingDown);
    assert_eq!(running.await.unwrap_err(), InferenceError::ShuttingDown);
    assert_eq!(
        engine
            .submit(job(
                wide.id,
                rows_input("input", false, &data.features[..1])
            ))
            .unwrap_err(),
        InferenceError::ShuttingDown
    );
}

#[test]
fn blocking_wait_works_outside_async() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let cnn = load(&f, &m, "digits-cnn");
    let engine = f.engine(config(1));
    let out = engine
        .submit(job(cnn.id, rows_input("input", true, &data.features[..3])))
        .unwrap()
        .wait()
        .unwrap();
    let predicted = argmax_rows(probabilities(&out).1, 10);
    assert_eq!(predicted.len(), 3);
}

#[test]
fn sample_inputs_parse_and_classify() {
    let f = fixture();
    let m = manifest();
    let mlp = load(&f, &m, "digits-mlp");
    let cnn = load(&f, &m, "digits-cnn");
    let engine = f.engine(config(1));
    let mut correct = 0;
    for k in 0..10i64 {
        let flat: Vec<Vec<f32>> = serde_json::from_str(
            &std::fs::read_to_string(models_dir().join(format!("samples/digit-{k}.json"))).unwrap(),
        )
        .unwrap();
        let image: Vec<Vec<Vec<Vec<f32>>>> = serde_json::from_str(
            &std::fs::read_to_string(models_dir().join(format!("samples/digit-{k}-cnn.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!((flat.len(), flat[0].len()), (1, 64));
        let pixels: Vec<f32> = image[0][0].concat();
        assert_eq!(pixels, flat[0], "both layouts hold the same image");
        for (model, input) in [
            (&mlp, rows_input("X", false, &flat)),
            (&cnn, rows_input("input", true, &flat)),
        ] {
            let out = engine.submit(job(model.id, input)).unwrap().wait().unwrap();
            if argmax_rows(probabilities(&out).1, 10)[0] == k {
                correct += 1;
            }
        }
    }
    assert!(correct >= 18, "{correct}/20 sample digits classified");
}

#[tokio::test]
async fn runs_with_several_threads_agree_with_single_threaded_runs() {
    let f = fixture();
    let m = manifest();
    let data = split();
    let wide = load(&f, &m, "digits-wide");
    let mut results = Vec::new();
    for threads in [1, 2] {
        let engine = f.engine(EngineConfig {
            workers: 1,
            threads_per_run: threads,
            ..EngineConfig::default()
        });
        let out = engine
            .submit(job(wide.id, rows_input("input", false, &data.features)))
            .unwrap()
            .await
            .unwrap();
        results.push(probabilities(&out).1.to_vec());
    }
    let predicted = argmax_rows(&results[1], 10);
    let correct = predicted
        .iter()
        .zip(&data.labels)
        .filter(|(p, l)| p == l)
        .count();
    assert_eq!(correct, wide.correct);
    for (a, b) in results[0].iter().zip(&results[1]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

// ---- The conformance zoo: public models against onnxruntime -----------------------------

/// The assembled zoo; fails (never skips) when it is missing, naming the command.
fn zoo() -> crank_inference::zoo::Zoo {
    let dir = crank_inference::zoo::dir();
    crank_inference::zoo::Zoo::open(&dir).unwrap_or_else(|e| {
        panic!(
            "the conformance zoo is not assembled at {}: {e}",
            dir.display()
        )
    })
}

fn zoo_engine(store: &Arc<ModelStore>) -> Engine {
    Engine::new(
        EngineConfig {
            workers: 1,
            isolate: false,
            ..EngineConfig::default()
        },
        store.clone(),
    )
    .unwrap()
}

fn zoo_store(dir: &Path) -> Arc<ModelStore> {
    Arc::new(ModelStore::open(dir, 1 << 30).unwrap())
}

/// Every zoo model loads, runs through the engine's queue and worker, and agrees with
/// onnxruntime within the stated tolerance (float32: 1e-4 + 1e-3·|expected|; integers
/// exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_zoo_model_agrees_with_onnxruntime() {
    let zoo = zoo();
    assert!(
        zoo.models.len() >= 12,
        "the zoo holds {} models",
        zoo.models.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = zoo_store(dir.path());
    let engine = zoo_engine(&store);
    let tol = crank_inference::zoo::Tolerance::default();
    let mut failures = Vec::new();
    for m in &zoo.models {
        let id = store.put(&std::fs::read(&m.path).unwrap()).unwrap();
        let started = Instant::now();
        let out = engine
            .submit(Job::new(id, m.inputs.clone(), Duration::from_secs(300)))
            .unwrap()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{}: {e}", m.name));
                continue;
            }
        };
        match crank_inference::zoo::agreement(&out.outputs, &m.expected, tol) {
            Ok(a) => {
                let worst = a.iter().map(|a| a.max_abs).fold(0f64, f64::max);
                let outside: usize = a.iter().map(|a| a.outside).sum();
                let stats = engine
                    .plan_stats(&id)
                    .expect("the model was just run in process");
                println!(
                    "{:<28} max |diff| {worst:.2e}, {outside} outside, first run {} ms, {}",
                    m.name,
                    started.elapsed().as_millis(),
                    if stats.per_shape {
                        "per-shape plan"
                    } else {
                        "symbolic plan"
                    }
                );
                if outside > 0 {
                    failures.push(format!("{}: {a:?}", m.name));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", m.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "zoo models that disagree or fail:\n{}",
        failures.join("\n")
    );
}

/// What every zoo model declares fits what onnxruntime returned for it and what the engine
/// returns: the requester's output check (`crank_inference::declared`) passes honest workers
/// on published models, with NaN and infinity refused, and refuses those outputs altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_zoo_models_outputs_fit_what_it_declares() {
    use crank_inference::declared::{NonFinite, declared};
    let zoo = zoo();
    let dir = tempfile::tempdir().unwrap();
    let store = zoo_store(dir.path());
    let engine = zoo_engine(&store);
    let mut failures = Vec::new();
    for m in &zoo.models {
        let bytes = std::fs::read(&m.path).unwrap();
        let d = declared(&bytes).unwrap();
        if let Err(e) = d.check_outputs(&m.inputs, &m.expected, NonFinite::Refuse) {
            failures.push(format!("{} (onnxruntime's outputs): {e}", m.name));
        }
        let id = store.put(&bytes).unwrap();
        let out = engine
            .submit(Job::new(id, m.inputs.clone(), Duration::from_secs(300)))
            .unwrap()
            .await
            .unwrap();
        if let Err(e) = d.check_outputs(&m.inputs, &out.outputs, NonFinite::Refuse) {
            failures.push(format!("{} (the engine's outputs): {e}", m.name));
        }
        // The same outputs, one element made NaN or one axis grown, are refused.
        let mut altered = m.expected.clone();
        let first = &mut altered[0].tensor;
        match &mut first.data {
            TensorData::F32(v) if !v.is_empty() => v[0] = f32::NAN,
            TensorData::F64(v) if !v.is_empty() => v[0] = f64::NAN,
            _ => {
                // Another type, or empty: drop the output instead.
                altered.remove(0);
            }
        }
        if d.check_outputs(&m.inputs, &altered, NonFinite::Refuse)
            .is_ok()
        {
            failures.push(format!("{}: altered outputs passed", m.name));
        }
        println!(
            "{:<28} outputs {}",
            m.name,
            d.outputs
                .iter()
                .map(|o| format!("{}{:?}", o.name, o.shape))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    assert!(
        failures.is_empty(),
        "zoo outputs that do not fit their declaration:\n{}",
        failures.join("\n")
    );
}

/// Every zoo model also runs on the optional ONNX Runtime path (the library the repository's
/// `.venv` installs): through the same queue and worker, its outputs cross our tensor
/// conversions both ways and agree with onnxruntime's own run in Python; each job says the
/// path that ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_zoo_model_agrees_on_the_onnxruntime_path() {
    let zoo = zoo();
    let lib = crank_inference::onnxruntime::library_for_tests().expect(
        "ONNX Runtime is not installed: run scripts/setup-python.sh or set CRANK_ONNXRUNTIME",
    );
    let dir = tempfile::tempdir().unwrap();
    let store = zoo_store(dir.path());
    let engine = Engine::new(
        EngineConfig {
            workers: 1,
            isolate: false,
            onnxruntime: Some(lib),
            ..EngineConfig::default()
        },
        store.clone(),
    )
    .unwrap();
    assert!(engine.onnxruntime_version().is_some());
    let tol = crank_inference::zoo::Tolerance::default();
    let mut failures = Vec::new();
    for m in &zoo.models {
        let id = store.put(&std::fs::read(&m.path).unwrap()).unwrap();
        let job = Job::new(id, m.inputs.clone(), Duration::from_secs(300))
            .on_path(crank_protocol::ExecPath::Onnxruntime);
        let out = match engine.submit(job).unwrap().await {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{}: {e}", m.name));
                continue;
            }
        };
        if out.path != crank_protocol::ExecPath::Onnxruntime {
            failures.push(format!("{}: ran on {}", m.name, out.path));
        }
        match crank_inference::zoo::agreement(&out.outputs, &m.expected, tol) {
            Ok(a) => {
                let worst = a.iter().map(|a| a.max_abs).fold(0f64, f64::max);
                let outside: usize = a.iter().map(|a| a.outside).sum();
                println!("{:<28} onnxruntime path: max |diff| {worst:.2e}", m.name);
                if outside > 0 {
                    failures.push(format!("{}: {a:?}", m.name));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", m.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "zoo models that disagree or fail on the onnxruntime path:\n{}",
        failures.join("\n")
    );
}

/// No state survives from one task to the next: on stateful models (LSTM, GRU, LSTM inside
/// `If`), the same input run again and again, interleaved with other inputs, gives
/// bit-identical outputs, equal to its first run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_models_give_bit_identical_outputs_across_interleaved_tasks() {
    let zoo = zoo();
    let dir = tempfile::tempdir().unwrap();
    let store = zoo_store(dir.path());
    let engine = zoo_engine(&store);
    for name in [
        "lstm-gru-tagger",
        "silero-vad-16k-sequence",
        "silero-vad-16k-op15",
        "ppocr-v4-rec",
    ] {
        let m = zoo.models.iter().find(|m| m.name == name).unwrap();
        let id = store.put(&std::fs::read(&m.path).unwrap()).unwrap();
        // Another requester's input: the same shapes, different values.
        let other: Vec<NamedTensor> = m
            .inputs
            .iter()
            .map(|t| {
                let mut t = t.clone();
                if let TensorData::F32(v) = &mut t.tensor.data {
                    for (i, x) in v.iter_mut().enumerate() {
                        *x = (*x * 0.5 + (i % 7) as f32 * 0.1).clamp(-1.0, 1.0);
                    }
                }
                t
            })
            .collect();
        let run = |inputs: Vec<NamedTensor>| {
            let h = engine
                .submit(Job::new(id, inputs, Duration::from_secs(120)))
                .unwrap();
            async move { h.await.unwrap().outputs }
        };
        let first = run(m.inputs.clone()).await;
        let other_first = run(other.clone()).await;
        assert_ne!(
            first, other_first,
            "{name}: the two inputs must differ in output"
        );
        for round in 0..4 {
            assert_eq!(
                run(m.inputs.clone()).await,
                first,
                "{name}: round {round} differs"
            );
            assert_eq!(
                run(other.clone()).await,
                other_first,
                "{name}: other input, round {round}"
            );
        }
        // Several in flight at once on the same model.
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let inputs = if i % 2 == 0 {
                    m.inputs.clone()
                } else {
                    other.clone()
                };
                engine
                    .submit(Job::new(id, inputs, Duration::from_secs(120)))
                    .unwrap()
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let want = if i % 2 == 0 { &first } else { &other_first };
            assert_eq!(
                &h.await.unwrap().outputs,
                want,
                "{name}: concurrent run {i}"
            );
        }
    }
}

/// A requester that varies its input shapes task after task (a hostile one, or many
/// honest ones) costs the worker plan builds, never unbounded memory: at most
/// `MAX_SHAPE_PLANS` per-shape plans are held per model, and every run stays correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varied_shapes_keep_the_per_shape_plan_cache_bounded() {
    let zoo = zoo();
    let m = zoo
        .models
        .iter()
        .find(|m| m.name == "lstm-gru-tagger")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = zoo_store(dir.path());
    let engine = zoo_engine(&store);
    let id = store.put(&std::fs::read(&m.path).unwrap()).unwrap();
    let features = 16usize;
    for steps in 1..=10u64 {
        let x = NamedTensor {
            name: "x".into(),
            tensor: Tensor {
                shape: vec![1, steps, features as u64],
                data: TensorData::F32(vec![0.25; steps as usize * features]),
            },
        };
        let out = engine
            .submit(Job::new(id, vec![x], Duration::from_secs(60)))
            .unwrap()
            .await
            .unwrap();
        assert_eq!(out.outputs[0].tensor.shape, vec![1, steps, 5]);
        let stats = engine.plan_stats(&id).unwrap();
        assert!(stats.per_shape);
        assert!(
            stats.cached <= crank_inference::model::MAX_SHAPE_PLANS,
            "{} plans held after {steps} shapes",
            stats.cached
        );
    }
    let stats = engine.plan_stats(&id).unwrap();
    assert_eq!(stats.misses, 10, "{stats:?}");
    assert_eq!(stats.cached, crank_inference::model::MAX_SHAPE_PLANS);
}
