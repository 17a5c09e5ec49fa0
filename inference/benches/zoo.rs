//! The conformance zoo's speed: every zoo model (`scripts/zoo.py`) at batch 1 on one thread,
//! in-process and through a runner process, with the cost of the first (uncached) run and
//! the per-shape plan cache's hits.
//!
//! `cargo bench -p crank-inference --bench zoo [-- SECONDS]` prints one JSON object per
//! line per model: `median_us`/`p99_us` (submit to result, in-process), `run_median_us`
//! (inside tract), `runner_median_us` (submit to result through the isolated runner, as a
//! worker runs a stranger's task), `first_run_ms` (load, optimise and first run), the plan
//! kind and the plan cache's hits and misses; with ONNX Runtime installed (`.venv`, or
//! `CRANK_ONNXRUNTIME`), the same through the engine's `onnxruntime` path: `ort_path_*`
//! (in-process, inside the runtime, and through the runner). `scripts/bench-zoo.sh` runs onnxruntime on the
//! same inputs in the same run and prints the table with the ratios. The zoo directory is
//! `CRANK_ZOO` (default /var/tmp/crank-zoo). This binary is its own runner, as the node's is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::zoo::{self, Zoo};
use crank_inference::{Engine, EngineConfig, Job, ModelStore};
use crank_protocol::{ExecPath, ModelId, NamedTensor};

fn main() -> anyhow::Result<()> {
    if crank_inference::runner::is_runner_invocation() {
        let _ = crank_inference::runner::serve();
        return Ok(());
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let seconds: f64 = args.first().map_or(Ok(1.0), |s| s.parse())?;
    let budget = Duration::from_secs_f64(seconds);
    let dir = zoo::dir();
    let zoo = Zoo::open(&dir).map_err(|e| {
        anyhow::anyhow!(
            "the zoo is not assembled at {}: {e} (run .venv/bin/python scripts/zoo.py)",
            dir.display()
        )
    })?;

    let store_dir = tempfile::tempdir()?;
    let store = Arc::new(ModelStore::open(store_dir.path(), 4 << 30)?);
    let ort = crank_inference::onnxruntime::library_for_tests();
    if ort.is_none() {
        eprintln!(
            "ONNX Runtime not found (.venv or CRANK_ONNXRUNTIME): no onnxruntime-path figures"
        );
    }
    let config = EngineConfig {
        workers: 1,
        threads_per_run: 1,
        batching: false,
        onnxruntime: ort.clone(),
        ..EngineConfig::default()
    };
    let in_process = Engine::new(
        EngineConfig {
            isolate: false,
            ..config.clone()
        },
        store.clone(),
    )?;
    let runner = Engine::new(
        EngineConfig {
            isolate: true,
            runner_exe: Some(std::env::current_exe()?),
            ..config
        },
        store.clone(),
    )?;
    for m in &zoo.models {
        let id = store.put(&std::fs::read(&m.path)?)?;
        let started = Instant::now();
        in_process.submit(job(id, &m.inputs, None))?.wait()?;
        let first_run_ms = started.elapsed().as_secs_f64() * 1e3;
        let (lat, run) = latency(&in_process, id, &m.inputs, None, budget)?;
        let stats = in_process
            .plan_stats(&id)
            .ok_or_else(|| anyhow::anyhow!("{} is not in the plan cache", m.name))?;
        let (runner_lat, _) = latency(&runner, id, &m.inputs, None, budget)?;
        let ort_path = Some(ExecPath::Onnxruntime);
        let (ort_first_ms, ort_lat, ort_run, ort_runner) = if ort.is_some() {
            let started = Instant::now();
            in_process.submit(job(id, &m.inputs, ort_path))?.wait()?;
            let first = started.elapsed().as_secs_f64() * 1e3;
            let (lat, run) = latency(&in_process, id, &m.inputs, ort_path, budget)?;
            let (runner, _) = latency(&runner, id, &m.inputs, ort_path, budget)?;
            (
                Some(first),
                Some(percentile(&lat, 0.5)),
                Some(percentile(&run, 0.5)),
                Some(percentile(&runner, 0.5)),
            )
        } else {
            (None, None, None, None)
        };
        println!(
            "{}",
            serde_json::json!({
                "kind": "zoo", "runtime": "crank", "model": m.name, "batch": 1,
                "iterations": lat.len(),
                "median_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99),
                "run_median_us": percentile(&run, 0.5),
                "runner_median_us": percentile(&runner_lat, 0.5),
                "first_run_ms": first_run_ms,
                "plan": if stats.per_shape { "per-shape" } else { "symbolic" },
                "plan_hits": stats.hits, "plan_misses": stats.misses,
                "plan_build_ms": stats.build_micros as f64 / 1e3,
                "ort_path_first_run_ms": ort_first_ms,
                "ort_path_median_us": ort_lat,
                "ort_path_run_median_us": ort_run,
                "ort_path_runner_median_us": ort_runner,
            })
        );
    }
    Ok(())
}

fn job(model: ModelId, inputs: &[NamedTensor], path: Option<ExecPath>) -> Job {
    let job = Job::new(model, inputs.to_vec(), Duration::from_secs(600));
    match path {
        Some(p) => job.on_path(p),
        None => job,
    }
}

/// Submit-to-result latencies and in-runtime times, microseconds, over about `budget`
/// (at least 5 runs, after 2 warm-up runs).
fn latency(
    engine: &Engine,
    id: ModelId,
    inputs: &[NamedTensor],
    path: Option<ExecPath>,
    budget: Duration,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    for _ in 0..2 {
        engine.submit(job(id, inputs, path))?.wait()?;
    }
    let mut lat = Vec::new();
    let mut run = Vec::new();
    let start = Instant::now();
    while (start.elapsed() < budget || lat.len() < 5) && lat.len() < 100_000 {
        let j = job(id, inputs, path);
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
