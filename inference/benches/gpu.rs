//! GPU (wgpu kernels) against tract on the reference models, side by side.
//!
//! `cargo bench -p crank-inference --features gpu --bench gpu [-- SECONDS [BATCH...]]`
//! (`-- --list-adapters` lists what wgpu sees; `CRANK_MODELS_DIR` overrides `models/`).
//!
//! For each model and batch size, jobs go one after another through the engine, once with
//! the GPU attached and once without (one worker, one thread). Printed per row: median and
//! p99 submit-to-result latency, throughput in rows per second, and the GPU's speed-up.
//! A CPU-emulated adapter (lavapipe) is used when there is no real GPU, and says so: its
//! figures measure the emulation, not a GPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::gpu::{GpuConfig, GpuRuntime};
use crank_inference::{Engine, EngineConfig, Job, ModelStore};
use crank_protocol::{ExecPath, ModelId, NamedTensor, Tensor};

const MODELS: [(&str, &str, bool); 3] = [
    ("digits-mlp", "X", false),
    ("digits-cnn", "input", true),
    ("digits-wide", "input", false),
];

struct Stats {
    median_us: f64,
    p99_us: f64,
    rows_per_s: f64,
    iterations: usize,
}

fn measure(
    engine: &Engine,
    id: ModelId,
    inputs: &[NamedTensor],
    rows: usize,
    budget: Duration,
    path: ExecPath,
) -> anyhow::Result<Stats> {
    let job = || Job::new(id, inputs.to_vec(), Duration::from_secs(600));
    for _ in 0..3 {
        let out = engine.submit(job())?.wait()?;
        anyhow::ensure!(out.path == path, "ran on {} instead of {path}", out.path);
    }
    let mut lat = Vec::new();
    let started = Instant::now();
    while (started.elapsed() < budget || lat.len() < 5) && lat.len() < 100_000 {
        let t = Instant::now();
        engine.submit(job())?.wait()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total: f64 = lat.iter().sum();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    Ok(Stats {
        median_us: pct(0.5),
        p99_us: pct(0.99),
        rows_per_s: rows as f64 * lat.len() as f64 / (total / 1e6),
        iterations: lat.len(),
    })
}

fn main() -> anyhow::Result<()> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.iter().any(|a| a == "--list-adapters") {
        let found = GpuRuntime::enumerate();
        if found.is_empty() {
            println!("no adapters");
        }
        for a in found {
            println!(
                "{} ({}, {}, driver {}){}",
                a.name,
                a.backend,
                a.kind,
                a.driver,
                if a.emulated {
                    ", CPU-emulated: never advertised"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    let args: Vec<String> = all.into_iter().filter(|a| !a.starts_with("--")).collect();
    let seconds: f64 = args.first().map_or(Ok(1.0), |s| s.parse())?;
    let batches: Vec<usize> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![1, 64]
    };
    let budget = Duration::from_secs_f64(seconds);
    // CRANK_MODELS_DIR lets a binary built elsewhere run (scripts/gpu-check.sh pack/run).
    let dir = std::env::var_os("CRANK_MODELS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );

    let rt = match GpuRuntime::open(&GpuConfig {
        allow_cpu_adapter: true,
        ..GpuConfig::default()
    }) {
        Ok(rt) => rt,
        Err(e) => {
            println!("no GPU adapter, nothing to compare: {e}");
            return Ok(());
        }
    };
    let a = rt.adapter();
    println!(
        "adapter: {} ({}, {}, driver {}){}",
        a.name,
        a.backend,
        a.kind,
        a.driver,
        if a.emulated {
            " -- CPU-emulated: these GPU figures measure the emulation"
        } else {
            ""
        }
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("tract: 1 worker, 1 thread per run ({cores} cores available); {seconds} s per row");

    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("digits-test.json"))?)?;
    let features: Vec<Vec<f32>> = serde_json::from_value(split["features"].clone())?;

    let store_dir = tempfile::tempdir()?;
    let store = Arc::new(ModelStore::open(store_dir.path(), 1 << 30)?);
    let config = EngineConfig {
        workers: 1,
        threads_per_run: 1,
        batching: false,
        ..EngineConfig::default()
    };
    let cpu = Engine::new(config.clone(), store.clone())?;
    let gpu = Engine::new(config, store.clone())?;
    gpu.use_gpu(rt.clone());

    println!(
        "{:<12} {:>5} | {:>11} {:>11} {:>12} | {:>11} {:>11} {:>12} | {:>7}",
        "model",
        "batch",
        "tract p50",
        "tract p99",
        "tract rows/s",
        "gpu p50",
        "gpu p99",
        "gpu rows/s",
        "speedup"
    );
    for (name, input, image) in MODELS {
        let id = store.put(&std::fs::read(dir.join(format!("{name}.onnx")))?)?;
        cpu.warm(&id)?;
        gpu.warm(&id)?;
        for &batch in &batches {
            let rows: Vec<f32> = (0..batch)
                .flat_map(|i| features[i % features.len()].iter().copied())
                .collect();
            let shape = if image {
                vec![batch as u64, 1, 8, 8]
            } else {
                vec![batch as u64, 64]
            };
            let inputs = vec![NamedTensor {
                name: input.into(),
                tensor: Tensor::f32(shape, rows)?,
            }];
            let t = measure(&cpu, id, &inputs, batch, budget, ExecPath::Cpu)?;
            let g = measure(&gpu, id, &inputs, batch, budget, ExecPath::Gpu)?;
            println!(
                "{:<12} {:>5} | {:>9.0}µs {:>9.0}µs {:>12.0} | {:>9.0}µs {:>9.0}µs {:>12.0} | {:>6.2}x",
                name,
                batch,
                t.median_us,
                t.p99_us,
                t.rows_per_s,
                g.median_us,
                g.p99_us,
                g.rows_per_s,
                t.median_us / g.median_us
            );
            println!(
                "{}",
                serde_json::json!({
                    "kind": "gpu-vs-tract", "model": name, "batch": batch,
                    "adapter": a.name, "emulated": a.emulated,
                    "tract": {"median_us": t.median_us, "p99_us": t.p99_us, "rows_per_s": t.rows_per_s, "iterations": t.iterations},
                    "gpu": {"median_us": g.median_us, "p99_us": g.p99_us, "rows_per_s": g.rows_per_s, "iterations": g.iterations},
                })
            );
        }
    }
    Ok(())
}
