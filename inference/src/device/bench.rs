//! Self-benchmark: inferences per second and energy per inference of one execution path.
//!
//! The node runs [`measure`] at start with the reference model and advertises the result as
//! a [`PathBench`]. One untimed warm-up call comes first (it allocates and, on a GPU, compiles
//! pipelines). Energy comes from the [`EnergyMeter`], charged with the whole process's CPU
//! time over the run, so work that the closure spreads over threads is counted.

use std::time::{Duration, Instant};

use crank_protocol::messages::{EnergyMethod, ExecPath, PathBench};

use super::energy::{EnergyMeter, process_cpu_time};

/// What a benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchFigures {
    /// Timed calls (the warm-up excluded).
    pub iterations: u64,
    /// Wall time of the timed calls.
    pub elapsed: Duration,
    /// Process CPU time over the timed calls.
    pub cpu_time: Duration,
    /// Timed calls per second of wall time.
    pub inferences_per_sec: f32,
    /// Energy per call, microjoules (at least 1).
    pub microjoules_per_inference: u64,
    /// How the energy was obtained.
    pub method: EnergyMethod,
}

impl BenchFigures {
    /// The advert's entry for `path`.
    pub fn to_path_bench(&self, path: ExecPath) -> PathBench {
        PathBench {
            path,
            inferences_per_sec: self.inferences_per_sec,
            microjoules_per_inference: self.microjoules_per_inference,
        }
    }
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError<E> {
    /// The workload returned an error (iteration 0 is the warm-up).
    #[error("benchmark workload failed on iteration {iteration}")]
    Workload {
        /// Which call failed.
        iteration: u64,
        /// The workload's error.
        #[source]
        source: E,
    },
    /// Zero iterations were asked for.
    #[error("a benchmark needs at least one iteration")]
    NoIterations,
}

/// Calls `f` once to warm up, then at least `iterations` times and for at least
/// `min_duration`, and reports speed and energy per call.
pub fn measure<E, F>(
    meter: &EnergyMeter,
    iterations: u32,
    min_duration: Duration,
    mut f: F,
) -> Result<BenchFigures, BenchError<E>>
where
    F: FnMut() -> Result<(), E>,
{
    if iterations == 0 {
        return Err(BenchError::NoIterations);
    }
    f().map_err(|source| BenchError::Workload {
        iteration: 0,
        source,
    })?;

    let span = meter.start();
    let cpu_start = process_cpu_time();
    let start = Instant::now();
    let mut done: u64 = 0;
    while done < u64::from(iterations) || start.elapsed() < min_duration {
        // An iteration count; saturation is unreachable and harmless.
        f().map_err(|source| BenchError::Workload {
            iteration: done.saturating_add(1),
            source,
        })?;
        done = done.saturating_add(1);
    }
    let elapsed = start.elapsed();
    let cpu_time = process_cpu_time().saturating_sub(cpu_start);
    let cpu_micros = u64::try_from(cpu_time.as_micros()).unwrap_or(u64::MAX);
    let (microjoules, method) = span.finish_microjoules(cpu_micros);

    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(BenchFigures {
        iterations: done,
        elapsed,
        cpu_time,
        inferences_per_sec: (done as f64 / secs) as f32,
        microjoules_per_inference: microjoules.div_ceil(done).max(1),
        method,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::device::DeviceConfig;

    fn meter() -> EnergyMeter {
        EnergyMeter::new(&DeviceConfig {
            powercap_root: PathBuf::from("/nonexistent/powercap"),
            watts_per_core: Some(4.0),
            ..DeviceConfig::default()
        })
    }

    #[test]
    fn measures_a_synthetic_workload() {
        let mut acc = 0u64;
        let figures = measure(&meter(), 50, Duration::from_millis(20), || {
            for i in 0..20_000u64 {
                acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(acc);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap();
        assert!(figures.iterations >= 50);
        assert!(figures.elapsed >= Duration::from_millis(20));
        assert!(figures.inferences_per_sec > 0.0);
        assert!(figures.microjoules_per_inference >= 1);
        assert_eq!(figures.method, EnergyMethod::CpuTimeEstimate);
        let pb = figures.to_path_bench(ExecPath::Cpu);
        assert_eq!(
            pb.microjoules_per_inference,
            figures.microjoules_per_inference
        );
    }

    #[test]
    fn workload_errors_name_the_iteration() {
        let mut calls = 0;
        let err = measure(&meter(), 10, Duration::ZERO, || {
            calls += 1;
            if calls == 4 {
                Err("model failed")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(
            err,
            BenchError::Workload {
                iteration: 3,
                source: "model failed"
            }
        ));
        let err = measure(&meter(), 0, Duration::ZERO, || Ok::<(), &str>(())).unwrap_err();
        assert!(matches!(err, BenchError::NoIterations));
    }
}
