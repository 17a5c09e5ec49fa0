//! Latency and throughput of the engine on the reference models.
//!
//! `cargo bench -p crank-inference --bench engine [-- MODELS_DIR [SECONDS]]` prints one JSON
//! object per line (scripts/bench-inference.sh turns them into a table beside onnxruntime):
//!
//! - `"kind":"latency"`: one worker, one thread, batching off; jobs submitted one after
//!   another, each with `batch` rows. `median_us`/`p99_us` are submit-to-result times;
//!   `run_median_us` is the part spent inside the runtime.
//! - `"runtime":"crank-ort-path"`: the same latency rows on the engine's optional
//!   `onnxruntime` path, when ONNX Runtime is installed (`.venv`, or `CRANK_ONNXRUNTIME`).
//! - `"kind":"queue"`: 512 single-row jobs queued at once on one worker, with batching on and
//!   off: does batching pay?

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::{Engine, EngineConfig, Job, ModelStore};
use crank_protocol::{ExecPath, ModelId, NamedTensor, Tensor};

const MODELS: [(&str, &str, bool); 3] = [
    ("digits-mlp", "X", false),
    ("digits-cnn", "input", true),
    ("digits-wide", "input", false),
];
const BATCHES: [usize; 4] = [1, 8, 32, 128];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = args.first().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let seconds: f64 = args.get(1).map_or(Ok(1.0), |s| s.parse())?;
    let budget = Duration::from_secs_f64(seconds);

    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("digits-test.json"))?)?;
    let features: Vec<Vec<f32>> = serde_json::from_value(split["features"].clone())?;

    let store_dir = tempfile::tempdir()?;
    let store = Arc::new(ModelStore::open(store_dir.path(), 1 << 30)?);
    let ort = crank_inference::onnxruntime::library_for_tests();
    let single = Engine::new(
        EngineConfig {
            workers: 1,
            threads_per_run: 1,
            batching: false,
            onnxruntime: ort.clone(),
            ..EngineConfig::default()
        },
        store.clone(),
    )?;
    let mut paths = vec![("crank", None)];
    if ort.is_some() {
        paths.push(("crank-ort-path", Some(ExecPath::Onnxruntime)));
    } else {
        eprintln!("ONNX Runtime not found (.venv or CRANK_ONNXRUNTIME): no onnxruntime-path rows");
    }
    for (name, input, cnn) in MODELS {
        let id = store.put(&std::fs::read(dir.join(format!("{name}.onnx")))?)?;
        single.warm(&id)?;
        for (runtime, path) in &paths {
            for batch in BATCHES {
                let x = input_rows(input, cnn, &features, 0, batch);
                let (lat, run) = latency(&single, id, &x, *path, budget)?;
                let total: f64 = lat.iter().sum::<f64>();
                println!(
                    "{}",
                    serde_json::json!({
                        "kind": "latency", "runtime": runtime, "model": name, "batch": batch,
                        "iterations": lat.len(),
                        "median_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99),
                        "run_median_us": percentile(&run, 0.5),
                        "per_second": batch as f64 * lat.len() as f64 / (total / 1e6),
                    })
                );
            }
        }
        for batching in [false, true] {
            let engine = Engine::new(
                EngineConfig {
                    workers: 1,
                    queue_slots: 1024,
                    batching,
                    ..EngineConfig::default()
                },
                store.clone(),
            )?;
            engine.warm(&id)?;
            let jobs = 512;
            let inputs: Vec<NamedTensor> = (0..jobs)
                .map(|i| input_rows(input, cnn, &features, i, 1))
                .collect();
            // Best of three rounds, to step around scheduler noise on a shared machine.
            let mut best = f64::MAX;
            let mut mean_batch = 0.0;
            for _ in 0..3 {
                let start = Instant::now();
                let handles = inputs
                    .iter()
                    .map(|x| engine.submit(job(id, x.clone(), None)))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut batch_sum = 0usize;
                for h in handles {
                    batch_sum += h.wait()?.batch_size;
                }
                let secs = start.elapsed().as_secs_f64();
                if secs < best {
                    best = secs;
                    mean_batch = batch_sum as f64 / jobs as f64;
                }
            }
            println!(
                "{}",
                serde_json::json!({
                    "kind": "queue", "runtime": "crank", "model": name, "batching": batching,
                    "jobs": jobs, "seconds": best, "per_second": jobs as f64 / best,
                    "mean_batch": mean_batch,
                })
            );
        }
    }
    Ok(())
}

fn job(model: ModelId, input: NamedTensor, path: Option<ExecPath>) -> Job {
    let job = Job::new(model, vec![input], Duration::from_secs(600));
    match path {
        Some(p) => job.on_path(p),
        None => job,
    }
}

/// `batch` rows of the test split starting at `first` (wrapping), in the model's layout.
fn input_rows(
    name: &str,
    cnn: bool,
    features: &[Vec<f32>],
    first: usize,
    batch: usize,
) -> NamedTensor {
    let rows: Vec<f32> = (0..batch)
        .flat_map(|i| features[(first + i) % features.len()].iter().copied())
        .collect();
    let n = batch as u64;
    let shape = if cnn { vec![n, 1, 8, 8] } else { vec![n, 64] };
    NamedTensor {
        name: name.into(),
        tensor: Tensor {
            shape,
            data: crank_protocol::TensorData::F32(rows),
        },
    }
}

/// Submit-to-result latencies and in-runtime times, microseconds, over about `budget`.
fn latency(
    engine: &Engine,
    id: ModelId,
    x: &NamedTensor,
    path: Option<ExecPath>,
    budget: Duration,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    for _ in 0..20 {
        engine.submit(job(id, x.clone(), path))?.wait()?;
    }
    let mut lat = Vec::new();
    let mut run = Vec::new();
    let start = Instant::now();
    while (start.elapsed() < budget || lat.len() < 50) && lat.len() < 200_000 {
        let j = job(id, x.clone(), path);
        let t = Instant::now();
        let out = engine.submit(j)?.wait()?;
        if let Some(p) = path {
            anyhow::ensure!(out.path == p, "asked for {p}, ran on {}", out.path);
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        run.push(out.run_micros as f64);
    }
    Ok((lat, run))
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s.get(i).copied().unwrap_or(0.0)
}
