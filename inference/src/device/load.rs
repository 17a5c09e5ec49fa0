//! Other processes' CPU load, with hysteresis.
//!
//! The whole machine's CPU use comes from sysinfo (`/proc/stat` deltas on Linux); the node's
//! own use (its inference included) is subtracted, so a running task never closes the gate on
//! itself. Each figure is the average over the time since the previous sample, so the sample
//! interval is also the averaging window.
//!
//! The busy verdict has hysteresis ([`BusyLatch`]): it turns busy above
//! `cpu_busy_percent` and turns idle again only below `cpu_resume_percent`, so a load
//! hovering at the limit does not open and close the gate on every sample.

use std::time::Instant;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Other processes' CPU use at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuLoad {
    /// Other processes' use, percent of all logical cores (0–100).
    pub other_percent: f32,
    /// The hysteresis verdict: too busy to run.
    pub busy: bool,
}

/// Busy/idle verdict with two thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BusyLatch {
    busy: bool,
    busy_percent: f32,
    resume_percent: f32,
}

impl BusyLatch {
    /// A latch that turns busy above `busy_percent` and idle below `resume_percent`.
    pub fn new(busy_percent: u8, resume_percent: u8) -> Self {
        Self {
            busy: false,
            busy_percent: f32::from(busy_percent),
            resume_percent: f32::from(resume_percent.min(busy_percent)),
        }
    }

    /// Feeds one sample and returns the verdict.
    pub fn update(&mut self, percent: f32) -> bool {
        if self.busy {
            if percent < self.resume_percent {
                self.busy = false;
            }
        } else if percent > self.busy_percent {
            self.busy = true;
        }
        self.busy
    }

    /// The current verdict.
    pub fn is_busy(&self) -> bool {
        self.busy
    }
}

/// Why the CPU load sampler could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// sysinfo could not initialise on this system.
    #[error("sysinfo cannot read this system")]
    System(#[source] sysinfo::Error),
    /// The node's own process id is unknown.
    #[error("cannot find the node's own process id")]
    OwnPid(#[source] sysinfo::Error),
}

/// Samples other processes' CPU load.
#[derive(Debug)]
pub struct CpuLoadSampler {
    sys: System,
    own: Pid,
    cores: f32,
    latch: BusyLatch,
    last_refresh: Instant,
}

impl CpuLoadSampler {
    /// Starts sampling; the first figure is available [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`]
    /// after this call.
    pub fn new(latch: BusyLatch) -> Result<Self, LoadError> {
        let mut sys = System::new().map_err(LoadError::System)?;
        let own = sysinfo::get_current_pid().map_err(LoadError::OwnPid)?;
        sys.refresh_cpu_usage();
        let cores = sys.cpus().len().max(1) as f32;
        let mut sampler = Self {
            sys,
            own,
            cores,
            latch,
            last_refresh: Instant::now(),
        };
        sampler.refresh_own();
        Ok(sampler)
    }

    fn refresh_own(&mut self) {
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.own]),
            false,
            ProcessRefreshKind::nothing().with_cpu(),
        );
    }

    /// Samples the load since the previous call; `None` when called again too soon for a
    /// meaningful figure.
    pub fn sample(&mut self) -> Option<CpuLoad> {
        if self.last_refresh.elapsed() < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            return None;
        }
        self.sys.refresh_cpu_usage();
        self.refresh_own();
        self.last_refresh = Instant::now();
        let global = self.sys.global_cpu_usage();
        let own = self
            .sys
            .process(self.own)
            .map_or(0.0, |p| p.cpu_usage() / self.cores);
        let other_percent = other_percent(global, own);
        Some(CpuLoad {
            other_percent,
            busy: self.latch.update(other_percent),
        })
    }

    /// Logical cores sysinfo sees.
    pub fn cores(&self) -> usize {
        self.cores as usize
    }
}

/// Others' share: the whole machine's use minus ours, clamped to 0–100 because the two
/// figures are sampled a moment apart and can cross.
fn other_percent(global: f32, own: f32) -> f32 {
    let v = global - own;
    if v.is_finite() {
        v.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latch_has_hysteresis() {
        let mut latch = BusyLatch::new(25, 15);
        assert!(!latch.update(20.0));
        assert!(!latch.update(25.0), "at the limit is not over it");
        assert!(latch.update(30.0));
        assert!(latch.update(20.0), "stays busy between the thresholds");
        assert!(latch.update(15.0), "at the resume level is not under it");
        assert!(!latch.update(14.9));
        assert!(!latch.update(24.0));
        assert!(!latch.is_busy());
    }

    #[test]
    fn other_percent_clamps() {
        assert_eq!(other_percent(40.0, 10.0), 30.0);
        assert_eq!(other_percent(10.0, 12.0), 0.0);
        assert_eq!(other_percent(f32::NAN, 1.0), 0.0);
        assert_eq!(other_percent(150.0, 0.0), 100.0);
    }

    #[test]
    fn sampler_reports_after_the_minimum_interval() {
        let mut s = CpuLoadSampler::new(BusyLatch::new(25, 15)).unwrap();
        assert!(s.sample().is_none(), "too soon after start");
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let load = s.sample().unwrap();
        assert!((0.0..=100.0).contains(&load.other_percent));
        assert!(s.cores() >= 1);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Over the busy level is busy, under the resume level is not, and in between the
            /// verdict does not change.
            #[test]
            fn latch_follows_its_thresholds(
                busy in 0u8..=100,
                gap in 0u8..=100,
                samples in proptest::collection::vec(0f32..=100.0, 1..50),
            ) {
                let resume = busy.saturating_sub(gap);
                let mut latch = BusyLatch::new(busy, resume);
                let mut before = false;
                for p in samples {
                    let now = latch.update(p);
                    if p > f32::from(busy) {
                        prop_assert!(now);
                    } else if p < f32::from(resume) {
                        prop_assert!(!now);
                    } else {
                        prop_assert_eq!(now, before);
                    }
                    before = now;
                }
            }
        }
    }
}
