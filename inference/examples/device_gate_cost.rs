//! Prints what the power gate itself costs on this machine: CPU time per evaluation, per
//! sample of its inputs, and per minute of idle running at the default interval.
//!
//! ```text
//! cargo run -p crank-inference --release --example device_gate_cost -- [seconds]
//! ```
//!
//! `seconds` (default 60) is how long the monitor runs for the per-minute figure.

use std::time::{Duration, SystemTime};

use crank_inference::device::idle::tty_idle;
use crank_inference::device::load::{BusyLatch, CpuLoadSampler};
use crank_inference::device::power::read_power;
use crank_inference::device::thermal::read_hottest;
use crank_inference::device::{
    DeviceConfig, GateMonitor, Sampler, Thresholds, evaluate, process_cpu_time, thread_cpu_time,
};

fn main() -> anyhow::Result<()> {
    let run_secs: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 60,
    };
    let cfg = DeviceConfig::default();
    let thresholds = Thresholds::from(&cfg);

    // One real sample to evaluate against.
    let mut sampler = Sampler::new(cfg.clone())?;
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    let readings = sampler.sample(None, false, SystemTime::now());
    println!("readings: {readings:?}");
    println!(
        "gate ({}): {}",
        cfg.run_when,
        evaluate(cfg.run_when, &readings, &thresholds)
    );

    const EVALS: u32 = 1_000_000;
    let t0 = thread_cpu_time();
    let mut open = 0u32;
    for _ in 0..EVALS {
        let r = std::hint::black_box(&readings);
        open += u32::from(evaluate(cfg.run_when, r, &thresholds).is_open());
    }
    std::hint::black_box(open);
    let per_eval = (thread_cpu_time() - t0) / EVALS;
    println!(
        "evaluate: {} ns CPU per call ({EVALS} calls)",
        per_eval.as_nanos()
    );

    const SAMPLES: u32 = 40;
    let mut sample_cpu = Duration::ZERO;
    for _ in 0..SAMPLES {
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let t0 = thread_cpu_time();
        let r = sampler.sample(None, false, SystemTime::now());
        sample_cpu += thread_cpu_time() - t0;
        std::hint::black_box(r);
    }
    println!(
        "sample (power, ttys, CPU load, thermal): {} µs CPU per sample ({SAMPLES} samples)",
        (sample_cpu / SAMPLES).as_micros()
    );

    // Where a sample's time goes, input by input.
    let cost = |f: &mut dyn FnMut()| {
        let t0 = thread_cpu_time();
        for _ in 0..SAMPLES {
            f();
        }
        (thread_cpu_time() - t0) / SAMPLES
    };
    let now = SystemTime::now();
    let power = cost(&mut || {
        std::hint::black_box(read_power(&cfg.power_supply_root));
    });
    let ttys = cost(&mut || {
        std::hint::black_box(tty_idle(&cfg.dev_root, now));
    });
    let thermal = cost(&mut || {
        std::hint::black_box(read_hottest(&cfg.thermal_root));
    });
    let mut load =
        CpuLoadSampler::new(BusyLatch::new(cfg.cpu_busy_percent, cfg.cpu_resume_percent))?;
    let mut load_cpu = Duration::ZERO;
    for _ in 0..SAMPLES {
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let t0 = thread_cpu_time();
        std::hint::black_box(load.sample());
        load_cpu += thread_cpu_time() - t0;
    }
    println!(
        "  of which: power {} µs, terminals {} µs, CPU load {} µs, thermal {} µs",
        power.as_micros(),
        ttys.as_micros(),
        (load_cpu / SAMPLES).as_micros(),
        thermal.as_micros()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cpu, wall) = runtime.block_on(async {
        let monitor = GateMonitor::start(cfg.clone()).await?;
        let cpu0 = process_cpu_time();
        let wall0 = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(run_secs)).await;
        let cpu = process_cpu_time() - cpu0;
        let wall = wall0.elapsed();
        drop(monitor);
        anyhow::Ok((cpu, wall))
    })?;
    let per_minute = cpu.as_secs_f64() * 60.0 / wall.as_secs_f64();
    println!(
        "monitor at {} ms interval: {:.2} ms CPU per minute ({:.4} % of one core) over {:.0} s",
        cfg.sample_interval_ms,
        per_minute * 1000.0,
        per_minute / 60.0 * 100.0,
        wall.as_secs_f64()
    );
    Ok(())
}
