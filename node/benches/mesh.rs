//! End-to-end benchmark on a loopback mesh: submit → result time for the digits MLP beside
//! the raw tract inference time of the same model, the auction's overhead (the difference),
//! and throughput with several tasks in flight.
//!
//! `cargo bench -p crank-node --bench mesh -- [--workers 3] [--tasks 200] [--concurrency 4]
//! [--checks 1]` Real nodes (bootstrap, workers, one requester) in one process over loopback
//! TCP. With `--checks 1` (the default) the requester spot-checks under the default policy and
//! the bench reports what the checks cost: tasks checked, extra runs, time added.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_inference::{Engine, EngineConfig, Job, ModelStore};
use crank_node::config::Config;
use crank_node::network::{KadMode, Role};
use crank_node::{ModelSource, Node, SubmitRequest, tensor_io};
use crank_protocol::RunPolicy;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &Path, bootstrap: Option<&str>) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.network.bootstrap = bootstrap.map(|b| vec![b.to_string()]).unwrap_or_default();
    c.network.kad_mode = KadMode::Server;
    c.api.enabled = false;
    c.advert.interval_secs = 1;
    c.device.run_when = RunPolicy::Always;
    c.settlement.auto = false;
    c.requester.max_price_stroops = 1_000_000;
    c
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
    println!(
        "{name:<36} n={:<5} median {p50:>9.3} ms   p99 {p99:>9.3} ms",
        v.len()
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let workers = arg("--workers", 3);
    let tasks = arg("--tasks", 200);
    let concurrency = arg("--concurrency", 4);
    let checks = arg("--checks", 1) != 0;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = std::fs::read(root.join("models/digits-mlp.onnx"))?;
    let sample = std::fs::read_to_string(root.join("models/samples/digit-3.json"))?;
    let inputs = tensor_io::parse_inputs(&sample, &["X".to_string()])?;

    // Raw tract: the same model and input straight through the engine, no network.
    let dir = tempfile::tempdir()?;
    let store = Arc::new(ModelStore::open(dir.path(), 1 << 30)?);
    let id = store.put(&model)?;
    let engine = Engine::new(
        EngineConfig {
            workers: 1,
            ..EngineConfig::default()
        },
        store,
    )?;
    let mut raw = Vec::new();
    for i in 0..(tasks + 50) {
        let t = Instant::now();
        let out = engine
            .submit(Job::new(id, inputs.clone(), Duration::from_secs(10)))?
            .await?;
        if i >= 50 {
            raw.push(t.elapsed().as_secs_f64() * 1e3);
            let _ = out;
        }
    }

    let mut dirs = Vec::new();
    let d = tempfile::tempdir()?;
    let boot = Node::start(config(d.path(), None), Role { bootstrap: true }).await?;
    let addr = boot.handle().listen_addrs().await[0].clone();
    dirs.push(d);
    let mut nodes = vec![boot];
    for _ in 0..workers {
        let d = tempfile::tempdir()?;
        nodes.push(Node::start(config(d.path(), Some(&addr)), Role::default()).await?);
        dirs.push(d);
    }
    let d = tempfile::tempdir()?;
    let mut rc = config(d.path(), Some(&addr));
    rc.worker.enabled = false;
    rc.requester.checks.enabled = checks;
    let requester = Node::start(rc, Role::default()).await?;
    dirs.push(d);
    let h = requester.handle();
    let started = Instant::now();
    while h.known_adverts() < workers {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "mesh did not form"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let model_id = h.add_model(&model).await?;
    let req = |bid_window_ms| SubmitRequest {
        bid_window_ms: Some(bid_window_ms),
        ..SubmitRequest::new(ModelSource::Id(model_id), inputs.clone())
    };
    // Warm-up: every worker fetches the model once.
    for _ in 0..(2 * workers) {
        h.submit(req(500)).await?;
    }

    // Sequential: submit → result, one task at a time.
    let mut e2e = Vec::new();
    let mut worker_run = Vec::new();
    let (mut checked, mut extra_runs, mut added) = (0usize, 0usize, Vec::new());
    for _ in 0..tasks {
        let o = h.submit(req(500)).await?;
        e2e.push(o.elapsed_ms);
        worker_run.push(o.receipt.inner.body.timings.run_micros as f64 / 1e3);
        if let Some(c) = o.check.as_ref().filter(|c| !c.runs.is_empty()) {
            checked += 1;
            extra_runs += c.runs.len();
            added.push(c.extra_ms);
        }
    }

    // Concurrent: throughput with `concurrency` tasks in flight.
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per = tasks.div_ceil(concurrency);
    for _ in 0..concurrency {
        let h = h.clone();
        let r = req(500);
        set.spawn(async move {
            let mut ok = 0usize;
            for _ in 0..per {
                if h.submit(r.clone()).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        });
    }
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        done += r?;
    }
    let secs = t.elapsed().as_secs_f64();

    println!(
        "\ncrank-node mesh benchmark: {workers} workers + bootstrap + requester on loopback, digits MLP, batch 1"
    );
    let overhead: Vec<f64> = e2e.iter().zip(&worker_run).map(|(e, r)| e - r).collect();
    let (raw50, raw99) = summary("raw tract inference (engine, 1 thread)", raw);
    summary("inference time on the worker (receipt)", worker_run);
    let (e50, e99) = summary("submit -> result (end to end)", e2e);
    summary("overhead (end to end - inference)", overhead);
    println!(
        "{:<36} {:.1}x median, {:.1}x p99",
        "end to end / raw inference",
        e50 / raw50,
        e99 / raw99
    );
    println!(
        "{:<36} {done} tasks in {secs:.2} s = {:.1} tasks/s ({concurrency} in flight)",
        "throughput",
        done as f64 / secs
    );
    if checks {
        println!(
            "{:<36} {checked} of {tasks} sequential tasks checked, {extra_runs} extra runs = {:.1} % extra work",
            "spot checks (default policy)",
            100.0 * extra_runs as f64 / tasks as f64
        );
        if !added.is_empty() {
            summary("time a check added (checked tasks)", added);
        }
    } else {
        println!("{:<36} off", "spot checks");
    }

    requester.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}
