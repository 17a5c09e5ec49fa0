//! Per-operator time of one model in the optimised tract plan, built as the engine builds it.
//!
//! `cargo run --release -p crank-inference --example profile -- MODEL.onnx BATCH [RUNS]`
//! prints each plan node with its mean time per run, slowest first: the tool to find where a
//! model spends its time before tuning the engine.

use std::collections::HashMap;
use std::time::Instant;

use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: profile MODEL.onnx BATCH [RUNS]"))?;
    let batch: usize = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let runs: usize = args.get(2).map_or(Ok(2000), |s| s.parse())?;
    let model = tract_onnx::onnx().model_for_path(path)?;
    let fact = model.input_fact(0)?.clone();
    let shape: Vec<usize> = fact
        .shape
        .dims()
        .enumerate()
        .map(|(i, d)| {
            if i == 0 {
                batch
            } else {
                format!("{d:?}")
                    .trim_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap_or(1)
            }
        })
        .collect();
    let n = model.symbols.sym("N");
    let mut model = model;
    let mut f = fact.clone();
    f.shape.set_dim(0, n.to_dim());
    model.set_input_fact(0, f)?;
    let typed = model.into_typed()?.into_decluttered()?.into_optimized()?;
    for node in typed.nodes() {
        println!("node {:>3} {:<40} {}", node.id, node.name, node.op.name());
    }
    let plan = TypedSimplePlan::new(typed)?;
    let count: usize = shape.iter().product();
    let x = Tensor::from_shape(&shape, &vec![0.5f32; count])?;
    let mut state = plan.spawn()?;
    let mut per_node: HashMap<usize, f64> = HashMap::new();
    let total = Instant::now();
    for _ in 0..runs {
        state.run_plan_with_eval(tvec!(x.clone().into_tvalue()), |ctx, st, node, inputs| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
            *per_node.entry(node.id).or_default() += t.elapsed().as_secs_f64();
            r
        })?;
    }
    let total = total.elapsed().as_secs_f64() / runs as f64 * 1e6;
    let mut rows: Vec<_> = per_node.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("input {shape:?}, {runs} runs, {total:.1} µs per run");
    for (id, secs) in rows {
        let node = plan.model().node(id);
        println!(
            "{:>9.2} µs  {:<40} {}",
            secs / runs as f64 * 1e6,
            node.name,
            node.op.name()
        );
    }
    Ok(())
}
