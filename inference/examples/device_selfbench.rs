//! Prints the self-benchmark helper's figures on a synthetic workload: the forward pass of a
//! dense 64→100→10 network with ReLU (the shape of the scikit-learn digits MLP the node uses
//! as its reference model), written out in plain Rust.
//!
//! ```text
//! cargo run -p crank-inference --release --example device_selfbench -- [iterations] [min_ms]
//! ```

use std::time::Duration;

use crank_inference::device::{DeviceConfig, EnergyMeter, measure};
use crank_protocol::messages::ExecPath;

const IN: usize = 64;
const HIDDEN: usize = 100;
const OUT: usize = 10;

struct Mlp {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl Mlp {
    /// Deterministic pseudo-random weights (a linear congruential generator).
    fn new() -> Self {
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        Self {
            w1: (0..IN * HIDDEN).map(|_| next()).collect(),
            b1: (0..HIDDEN).map(|_| next()).collect(),
            w2: (0..HIDDEN * OUT).map(|_| next()).collect(),
            b2: (0..OUT).map(|_| next()).collect(),
        }
    }

    fn forward(&self, x: &[f32; IN]) -> usize {
        let mut h = [0f32; HIDDEN];
        for (j, hj) in h.iter_mut().enumerate() {
            let row = &self.w1[j * IN..(j + 1) * IN];
            let s: f32 = row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + self.b1[j];
            *hj = s.max(0.0);
        }
        let mut best = (0, f32::MIN);
        for k in 0..OUT {
            let row = &self.w2[k * HIDDEN..(k + 1) * HIDDEN];
            let s: f32 = row.iter().zip(&h).map(|(w, v)| w * v).sum::<f32>() + self.b2[k];
            if s > best.1 {
                best = (k, s);
            }
        }
        best.0
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let iterations: u32 = args.next().map_or(Ok(10_000), |s| s.parse())?;
    let min_ms: u64 = args.next().map_or(Ok(2_000), |s| s.parse())?;

    let cfg = DeviceConfig::default();
    let meter = EnergyMeter::new(&cfg);
    println!(
        "device class {}, {} W per busy core, energy method {:?}",
        cfg.resolved_class(),
        meter.watts_per_core(),
        meter.method()
    );

    let mlp = Mlp::new();
    let mut x = [0f32; IN];
    let mut votes = [0u64; OUT];
    let mut i = 0u32;
    let figures = measure(&meter, iterations, Duration::from_millis(min_ms), || {
        i = i.wrapping_add(1);
        for (n, v) in x.iter_mut().enumerate() {
            *v = ((i as usize + n) % 17) as f32 / 16.0;
        }
        votes[mlp.forward(std::hint::black_box(&x))] += 1;
        Ok::<(), std::convert::Infallible>(())
    })?;
    std::hint::black_box(votes);
    println!(
        "{} inferences in {:.3} s ({:.3} s CPU): {:.0} inferences/s, {} µJ per inference ({:?})",
        figures.iterations,
        figures.elapsed.as_secs_f64(),
        figures.cpu_time.as_secs_f64(),
        figures.inferences_per_sec,
        figures.microjoules_per_inference,
        figures.method
    );
    println!("advert entry: {:?}", figures.to_path_bench(ExecPath::Cpu));
    Ok(())
}
