//! What isolation costs per task: submit-to-result latency of the same jobs in-process and
//! through a runner process (framing, two pipe hops, the runner's own copy of the inputs and
//! outputs).
//!
//! `cargo bench -p crank-inference --bench isolation [-- MODELS_DIR [SECONDS]]` prints one
//! JSON object per line: model, batch, mode (`in-process` or `runner`), `median_us`, `p99_us`.
//! This binary is its own runner (`main` serves the hidden runner argument), as the node's
//! binary is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::{Engine, EngineConfig, Job, ModelStore};
use crank_protocol::{NamedTensor, Tensor, TensorData};

const MODELS: [(&str, &str, bool); 3] = [
    ("digits-mlp", "X", false),
    ("digits-cnn", "input", true),
    ("digits-wide", "input", false),
];

fn main() -> anyhow::Result<()> {
    if crank_inference::runner::is_runner_invocation() {
        let _ = crank_inference::runner::serve();
        return Ok(());
    }
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
    let base = EngineConfig {
        workers: 1,
        threads_per_run: 1,
        batching: false,
        ..EngineConfig::default()
    };
    let in_process = Engine::new(base.clone(), store.clone())?;
    let runner = Engine::new(
        EngineConfig {
            runner_exe: Some(std::env::current_exe()?),
            ..base
        },
        store.clone(),
    )?;
    for (name, input, cnn) in MODELS {
        let id = store.put(&std::fs::read(dir.join(format!("{name}.onnx")))?)?;
        for batch in [1usize, 32] {
            let rows: Vec<f32> = (0..batch)
                .flat_map(|i| features[i % features.len()].iter().copied())
                .collect();
            let n = batch as u64;
            let x = NamedTensor {
                name: input.into(),
                tensor: Tensor {
                    shape: if cnn { vec![n, 1, 8, 8] } else { vec![n, 64] },
                    data: TensorData::F32(rows),
                },
            };
            for (mode, engine) in [("in-process", &in_process), ("runner", &runner)] {
                engine.warm(&id)?;
                for _ in 0..50 {
                    engine
                        .submit(Job::new(id, vec![x.clone()], Duration::from_secs(60)))?
                        .wait()?;
                }
                let mut lat = Vec::new();
                let start = Instant::now();
                while (start.elapsed() < budget || lat.len() < 200) && lat.len() < 100_000 {
                    let job = Job::new(id, vec![x.clone()], Duration::from_secs(60));
                    let t = Instant::now();
                    engine.submit(job)?.wait()?;
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                println!(
                    "{}",
                    serde_json::json!({
                        "model": name, "batch": batch, "mode": mode, "iterations": lat.len(),
                        "median_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99),
                    })
                );
            }
        }
    }
    Ok(())
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s.get(i).copied().unwrap_or(0.0)
}
