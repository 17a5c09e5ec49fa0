//! What a policy decision costs: the example policies of docs/policies, evaluated as the node
//! does (typed input to JSON to regorus' value, one compiled evaluation, decision read back).
//!
//! `cargo bench -p crank-policy --bench policy` prints median and p99 per decision. The
//! anchor is the budget per call for bids: 25 µs median, 100 µs p99.

use std::path::PathBuf;
use std::time::Instant;

use crank_policy::{Policies, sample};

fn measure(name: &str, runs: usize, mut f: impl FnMut() -> bool) {
    // Warm-up.
    for _ in 0..runs / 10 {
        std::hint::black_box(f());
    }
    let mut times: Vec<f64> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(f());
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "{name:<44} median {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs   ({runs} runs)",
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/policies");
    let started = Instant::now();
    let policies = match Policies::load_dir(&dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot load {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    println!(
        "load and compile docs/policies ({} files): {:.1} ms",
        policies.files().len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let runs = 20_000;
    let admission = sample::admission();
    measure("admission (worker, per call for bids)", runs, || {
        policies.admission(&admission).deny.is_empty()
    });
    let mut stranger = sample::admission();
    stranger.requester.trust.known = false;
    stranger.price.max_stroops = 100;
    stranger.device.temperature_c = Some(90.0);
    measure("admission, two denials", runs, || {
        policies.admission(&stranger).deny.is_empty()
    });
    let mut placement = sample::placement();
    placement
        .task
        .labels
        .insert("sensitivity".into(), "confidential".into());
    measure("placement (requester, per candidate)", runs, || {
        policies.placement(&placement).exclude.is_empty()
    });
    let output = sample::output();
    measure("output (requester, per result)", runs, || {
        policies.output(&output).redact.is_empty()
    });
    let none = Policies::none();
    measure("admission with no policy loaded", runs, || {
        none.admission(&admission).deny.is_empty()
    });
}
