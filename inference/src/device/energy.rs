//! Energy per task: measured with RAPL where readable, estimated from CPU time otherwise.
//!
//! **RAPL** (`/sys/class/powercap/intel-rapl:<N>/energy_uj`, also used by AMD since Linux
//! 5.8) counts the package's energy in microjoules and wraps at `max_energy_range_uj`. Only
//! top-level package zones are summed: sub-zones (`intel-rapl:0:0` core, `:0:1` uncore,
//! `:0:2` DRAM) are parts of their package, and `psys` covers the whole platform, packages
//! included. The package serves every process, so a task is charged the package energy over
//! its span times its share of the machine's busy CPU time in that span (the task's CPU time
//! over `/proc/stat`'s busy time), as Scaphandre does. Since Linux 5.10 the counters are
//! readable by root only (CVE-2020-8694); a node run as a normal user falls back to the
//! estimate unless the owner relaxes the file mode. VMs have no RAPL.
//!
//! **The estimate** is the task's CPU time times a busy power per core
//! ([`DeviceConfig::resolved_watts_per_core`](super::DeviceConfig::resolved_watts_per_core)):
//! a microsecond at one watt is one microjoule.
//!
//! Figures are always positive (at least 1 µJ, and 1 mJ in [`Energy`]), and the method says
//! which of the two produced them. A span longer than one counter wrap (about 45 minutes at
//! 100 W with the common 262 kJ range) under-counts; tasks are far shorter.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crank_protocol::messages::{Energy, EnergyMethod};
use tracing::{debug, info};

use super::DeviceConfig;
use super::sysfs::{read_parsed, read_trimmed};

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    timespec(rustix::time::clock_gettime(
        rustix::time::ClockId::ThreadCPUTime,
    ))
}

/// CPU time the whole process (all its threads) has used.
pub fn process_cpu_time() -> Duration {
    timespec(rustix::time::clock_gettime(
        rustix::time::ClockId::ProcessCPUTime,
    ))
}

fn timespec(t: rustix::time::Timespec) -> Duration {
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Why RAPL counters cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RaplError {
    /// The powercap directory is missing (no RAPL driver, a VM, not Linux).
    #[error("no powercap directory at {path}")]
    NoPowercap {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// No package zone with readable counters was found.
    #[error("no readable RAPL package zone under {0}")]
    NoZones(PathBuf),
    /// A counter could not be read.
    #[error("cannot read RAPL counter {path}")]
    Read {
        /// The counter file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A counter held something other than a number.
    #[error("RAPL counter {0} is not a number")]
    Malformed(PathBuf),
}

/// One RAPL package zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaplZone {
    /// Its `name` (package-0, …).
    pub name: String,
    /// Its `energy_uj` file.
    pub energy_path: PathBuf,
    /// Its `max_energy_range_uj`: where the counter wraps.
    pub max_range_uj: u64,
}

/// The package zones of a powercap tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rapl {
    zones: Vec<RaplZone>,
}

impl Rapl {
    /// Finds the top-level package zones whose counters are readable.
    pub fn discover(powercap_root: &Path) -> Result<Self, RaplError> {
        let entries = std::fs::read_dir(powercap_root).map_err(|source| RaplError::NoPowercap {
            path: powercap_root.to_owned(),
            source,
        })?;
        let mut zones = Vec::new();
        for entry in entries.flatten() {
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            let Some(index) = dir_name.strip_prefix("intel-rapl:") else {
                continue;
            };
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                continue; // a sub-zone such as intel-rapl:0:1
            }
            let dir = entry.path();
            let name = read_trimmed(&dir.join("name")).unwrap_or_else(|_| dir_name.clone());
            if name.starts_with("psys") {
                continue;
            }
            let energy_path = dir.join("energy_uj");
            let Some(max_range_uj) = read_parsed::<u64>(&dir.join("max_energy_range_uj")) else {
                debug!(zone = %dir_name, "RAPL zone without a readable range skipped");
                continue;
            };
            if let Err(e) = read_counter(&energy_path) {
                debug!(zone = %dir_name, error = %e, "RAPL zone unreadable");
                continue;
            }
            zones.push(RaplZone {
                name,
                energy_path,
                max_range_uj,
            });
        }
        if zones.is_empty() {
            return Err(RaplError::NoZones(powercap_root.to_owned()));
        }
        zones.sort_by(|a, b| a.energy_path.cmp(&b.energy_path));
        Ok(Self { zones })
    }

    /// The zones found.
    pub fn zones(&self) -> &[RaplZone] {
        &self.zones
    }

    /// Reads every zone's counter, in zone order.
    pub fn read(&self) -> Result<Vec<u64>, RaplError> {
        self.zones
            .iter()
            .map(|z| read_counter(&z.energy_path))
            .collect()
    }

    /// Energy between two readings, microjoules, across counter wraps.
    pub fn energy_between(&self, start: &[u64], end: &[u64]) -> u64 {
        self.zones
            .iter()
            .zip(start.iter().zip(end))
            .map(|(z, (s, e))| counter_delta(*s, *e, z.max_range_uj))
            .fold(0u64, u64::saturating_add)
    }
}

fn read_counter(path: &Path) -> Result<u64, RaplError> {
    let text = read_trimmed(path).map_err(|source| RaplError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse()
        .map_err(|_| RaplError::Malformed(path.to_owned()))
}

/// The increase of a counter that wraps to 0 after `max_range`.
pub fn counter_delta(start: u64, end: u64, max_range: u64) -> u64 {
    end.checked_sub(start)
        .unwrap_or_else(|| max_range.saturating_sub(start).saturating_add(end))
}

/// Busy CPU time of the whole machine so far, microseconds, from the `cpu` line of
/// `<proc_root>/stat` (user, nice, system, irq, softirq and steal; guest time is already in user).
pub fn machine_busy_micros(proc_root: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal
    let busy_ticks = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .fold(0u64, |a, &b| a.saturating_add(b));
    let hz = rustix::param::clock_ticks_per_second().max(1);
    busy_ticks.saturating_mul(1_000_000).checked_div(hz)
}

#[derive(Debug)]
struct Inner {
    rapl: Option<Rapl>,
    proc_root: PathBuf,
    watts_per_core: f32,
}

/// Measures or estimates the energy of tasks. Cheap to clone; spans may move across threads.
#[derive(Debug, Clone)]
pub struct EnergyMeter {
    inner: Arc<Inner>,
}

impl EnergyMeter {
    /// A meter for this device: RAPL if its counters are readable, the CPU-time estimate
    /// otherwise.
    pub fn new(cfg: &DeviceConfig) -> Self {
        let watts_per_core = cfg.resolved_watts_per_core();
        let rapl = match Rapl::discover(&cfg.powercap_root) {
            Ok(rapl) if machine_busy_micros(&cfg.proc_root).is_some() => {
                info!(zones = rapl.zones().len(), "energy measured with RAPL");
                Some(rapl)
            }
            Ok(_) => {
                info!(proc = %cfg.proc_root.display(), "RAPL readable but /proc/stat is not; estimating energy");
                None
            }
            Err(e) => {
                info!(reason = %e, watts_per_core, "energy estimated from CPU time");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                rapl,
                proc_root: cfg.proc_root.clone(),
                watts_per_core,
            }),
        }
    }

    /// How this meter obtains its figures (a span falls back to the estimate if the counters
    /// fail mid-task).
    pub fn method(&self) -> EnergyMethod {
        if self.inner.rapl.is_some() {
            EnergyMethod::Rapl
        } else {
            EnergyMethod::CpuTimeEstimate
        }
    }

    /// Busy watts per logical core used for estimates.
    pub fn watts_per_core(&self) -> f32 {
        self.inner.watts_per_core
    }

    /// Starts measuring a task.
    pub fn start(&self) -> EnergySpan {
        let mark = self.inner.rapl.as_ref().and_then(|rapl| {
            let counters = rapl
                .read()
                .inspect_err(|e| debug!(error = %e, "RAPL read failed at task start"))
                .ok()?;
            let busy_micros = machine_busy_micros(&self.inner.proc_root)?;
            Some(RaplMark {
                counters,
                busy_micros,
            })
        });
        EnergySpan {
            meter: self.clone(),
            mark,
        }
    }

    fn estimate_microjoules(&self, task_cpu_micros: u64) -> u64 {
        (task_cpu_micros as f64 * f64::from(self.inner.watts_per_core)).round() as u64
    }
}

#[derive(Debug)]
struct RaplMark {
    counters: Vec<u64>,
    busy_micros: u64,
}

/// One task's measurement, from [`EnergyMeter::start`] to [`EnergySpan::finish`].
#[derive(Debug)]
pub struct EnergySpan {
    meter: EnergyMeter,
    mark: Option<RaplMark>,
}

impl EnergySpan {
    /// Ends the span for a task that used `task_cpu_micros` of CPU time.
    pub fn finish(self, task_cpu_micros: u64) -> Energy {
        let (uj, method) = self.finish_microjoules(task_cpu_micros);
        Energy {
            microjoules: uj.max(1),
            method,
        }
    }

    /// Ends the span, in microjoules, with the method.
    pub fn finish_microjoules(self, task_cpu_micros: u64) -> (u64, EnergyMethod) {
        if let Some(uj) = self.measure_rapl(task_cpu_micros) {
            return (uj.max(1), EnergyMethod::Rapl);
        }
        (
            self.meter.estimate_microjoules(task_cpu_micros).max(1),
            EnergyMethod::CpuTimeEstimate,
        )
    }

    fn measure_rapl(&self, task_cpu_micros: u64) -> Option<u64> {
        let mark = self.mark.as_ref()?;
        let rapl = self.meter.inner.rapl.as_ref()?;
        let end = rapl
            .read()
            .inspect_err(|e| debug!(error = %e, "RAPL read failed at task end"))
            .ok()?;
        let busy_end = machine_busy_micros(&self.meter.inner.proc_root)?;
        let package_uj = rapl.energy_between(&mark.counters, &end);
        if package_uj == 0 {
            // The counters had not ticked (a span shorter than their ~1 ms update period):
            // nothing measured, so estimate instead of claiming zero.
            return None;
        }
        let busy = busy_end.saturating_sub(mark.busy_micros);
        let share = if busy == 0 || task_cpu_micros >= busy {
            1.0
        } else {
            task_cpu_micros as f64 / busy as f64
        };
        Some((package_uj as f64 * share).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_delta_wraps() {
        assert_eq!(counter_delta(100, 350, 1_000), 250);
        assert_eq!(counter_delta(900, 100, 1_000), 200);
        assert_eq!(counter_delta(5, 5, 1_000), 0);
    }

    #[test]
    fn cpu_clocks_advance() {
        let t0 = thread_cpu_time();
        let p0 = process_cpu_time();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > t0);
        assert!(process_cpu_time() > p0);
    }

    #[test]
    fn real_proc_stat_parses() {
        let busy = machine_busy_micros(Path::new("/proc")).unwrap();
        assert!(busy > 0);
    }

    #[test]
    fn estimate_is_cpu_time_times_watts_and_positive() {
        let cfg = DeviceConfig {
            powercap_root: PathBuf::from("/nonexistent/powercap"),
            watts_per_core: Some(2.5),
            ..DeviceConfig::default()
        };
        let meter = EnergyMeter::new(&cfg);
        assert_eq!(meter.method(), EnergyMethod::CpuTimeEstimate);
        let e = meter.start().finish(400_000);
        assert_eq!(e.microjoules, 1_000_000);
        assert_eq!(e.method, EnergyMethod::CpuTimeEstimate);
        assert_eq!(meter.start().finish(0).microjoules, 1);
        assert_eq!(
            meter.start().finish_microjoules(10),
            (25, EnergyMethod::CpuTimeEstimate)
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// The delta is what, added to the start, lands on the end modulo the range.
            #[test]
            fn counter_delta_inverts_wrapping(max in 1u64..u64::MAX / 4, a in any::<u64>(), b in any::<u64>()) {
                let (start, end) = (a % max, b % max);
                let d = counter_delta(start, end, max);
                prop_assert!(d < max);
                prop_assert_eq!((start + d) % max, end);
            }

            /// Estimates are positive and grow with CPU time.
            #[test]
            fn estimates_are_positive_and_monotonic(w in 0.01f32..500.0, a in 0u64..10_000_000_000, b in 0u64..10_000_000_000) {
                let meter = EnergyMeter::new(&DeviceConfig {
                    powercap_root: PathBuf::from("/nonexistent/powercap"),
                    watts_per_core: Some(w),
                    ..DeviceConfig::default()
                });
                let (lo, hi) = (a.min(b), a.max(b));
                let e_lo = meter.start().finish(lo);
                let e_hi = meter.start().finish(hi);
                prop_assert!(e_lo.microjoules >= 1);
                prop_assert!(e_lo.microjoules <= e_hi.microjoules);
            }
        }
    }
}
