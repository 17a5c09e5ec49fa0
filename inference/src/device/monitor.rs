//! Sampling the gate's inputs and publishing gate changes.
//!
//! [`Sampler`] reads everything the gate needs, synchronously, at one moment: power and
//! idle through this platform's [`probe`](super::probe) readers (or the ones a test gives).
//! [`GateMonitor`] runs it on a Tokio task at the configured interval (the file reads go to
//! the blocking pool, logind is asked asynchronously) and publishes a [`GateSnapshot`] on a
//! `tokio::sync::watch` channel. Receivers are woken only when the gate opens, closes or
//! closes for a different kind of reason, so the node re-advertises and aborts running
//! tasks on real changes, not on every battery percent; [`watch::Receiver::borrow`] always
//! shows the latest figures. A pause from the owner takes effect at once, not at the next
//! sample.

use std::time::{Duration, SystemTime};

use crank_protocol::messages::RunPolicy;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::config::{ConfigError, DeviceConfig};
use super::gate::{GateState, Readings, Thresholds, evaluate};
use super::idle::{Logind, UserIdle};
use super::load::{BusyLatch, CpuLoadSampler};
use super::probe::{self, IdleProbe, PowerProbe};
use super::thermal::read_hottest;

/// How long to wait for the system bus at start.
const LOGIND_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for logind's answer at each sample.
const LOGIND_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads the gate's inputs.
#[derive(Debug)]
pub struct Sampler {
    cfg: DeviceConfig,
    power: Box<dyn PowerProbe>,
    idle: Box<dyn IdleProbe>,
    load: Option<CpuLoadSampler>,
}

impl Sampler {
    /// A sampler for a validated configuration, with this platform's readers. If sysinfo
    /// cannot read CPU load here, the sampler works without it (the gate never closes for CPU
    /// use) and says so in the log.
    pub fn new(cfg: DeviceConfig) -> Result<Self, MonitorError> {
        let power = probe::power_probe(&cfg);
        let idle = probe::idle_probe(&cfg);
        Self::with_probes(cfg, power, idle)
    }

    /// A sampler reading power and idle through the given probes.
    pub fn with_probes(
        cfg: DeviceConfig,
        power: Box<dyn PowerProbe>,
        idle: Box<dyn IdleProbe>,
    ) -> Result<Self, MonitorError> {
        cfg.validate()?;
        let latch = BusyLatch::new(cfg.cpu_busy_percent, cfg.cpu_resume_percent);
        let load = CpuLoadSampler::new(latch)
            .inspect_err(|e| warn!(error = %e, "CPU load unknown; the gate ignores it"))
            .ok();
        Ok(Self {
            cfg,
            power,
            idle,
            load,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Reads power, CPU load and temperature now; user idle comes from `logind` when given,
    /// from the idle probe otherwise.
    pub fn sample(&mut self, logind: Option<UserIdle>, paused: bool, now: SystemTime) -> Readings {
        Readings {
            power: self.power.read_power(),
            idle: logind.unwrap_or_else(|| self.idle.read_idle(now)),
            cpu: self.load.as_mut().and_then(CpuLoadSampler::sample),
            thermal: read_hottest(&self.cfg.thermal_root),
            paused,
        }
    }
}

/// The gate and what it was decided from.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSnapshot {
    /// The owner's policy.
    pub policy: RunPolicy,
    /// The decision.
    pub state: GateState,
    /// The readings it was made from.
    pub readings: Readings,
    /// When they were taken.
    pub at: SystemTime,
}

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The device configuration is invalid.
    #[error("invalid device configuration")]
    Config(#[from] ConfigError),
    /// `start` was called outside a Tokio runtime.
    #[error("the gate monitor needs a Tokio runtime")]
    NoRuntime,
    /// The first sample could not be taken (the blocking pool is shutting down).
    #[error("the first gate sample failed")]
    FirstSample(#[source] tokio::task::JoinError),
}

/// Samples the gate on its own task and publishes changes.
#[derive(Debug)]
pub struct GateMonitor {
    snapshots: watch::Receiver<GateSnapshot>,
    paused: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Loop {
    sampler: Sampler,
    logind: Option<Logind>,
    logind_failing: bool,
    policy: RunPolicy,
    thresholds: Thresholds,
}

impl Loop {
    /// Takes one sample and decides; fails only if the blocking pool is gone.
    async fn sample(
        mut self,
        paused: bool,
    ) -> Result<(Self, GateSnapshot), tokio::task::JoinError> {
        let now = SystemTime::now();
        let logind_idle = match &self.logind {
            Some(logind) => match tokio::time::timeout(LOGIND_CALL_TIMEOUT, logind.idle(now)).await
            {
                Ok(Ok(idle)) => {
                    if self.logind_failing {
                        info!("logind answers again");
                        self.logind_failing = false;
                    }
                    Some(idle)
                }
                Ok(Err(e)) => {
                    self.note_logind_failure(&e.to_string());
                    None
                }
                Err(_) => {
                    self.note_logind_failure("timed out");
                    None
                }
            },
            None => None,
        };
        let policy = self.policy;
        let thresholds = self.thresholds;
        let mut sampler = self.sampler;
        let (sampler, readings) = tokio::task::spawn_blocking(move || {
            let readings = sampler.sample(logind_idle, paused, now);
            (sampler, readings)
        })
        .await?;
        self.sampler = sampler;
        let state = evaluate(policy, &readings, &thresholds);
        Ok((
            self,
            GateSnapshot {
                policy,
                state,
                readings,
                at: now,
            },
        ))
    }

    fn note_logind_failure(&mut self, error: &str) {
        if self.logind_failing {
            debug!(
                error,
                "logind still failing; user idle from terminal access times"
            );
        } else {
            warn!(error, "logind failed; user idle from terminal access times");
            self.logind_failing = true;
        }
    }
}

impl GateMonitor {
    /// Takes a first sample (after the ~200 ms sysinfo needs for a CPU figure), then samples
    /// every `cfg.sample_interval_ms` on a Tokio task until the monitor is dropped. Power and
    /// idle are read with this platform's readers; on Linux logind is asked first for idle.
    pub async fn start(cfg: DeviceConfig) -> Result<Self, MonitorError> {
        let power = probe::power_probe(&cfg);
        let idle = probe::idle_probe(&cfg);
        Self::start_with_probes(cfg, power, idle).await
    }

    /// [`GateMonitor::start`] with the given power and idle probes.
    pub async fn start_with_probes(
        cfg: DeviceConfig,
        power: Box<dyn PowerProbe>,
        idle: Box<dyn IdleProbe>,
    ) -> Result<Self, MonitorError> {
        tokio::runtime::Handle::try_current().map_err(|_| MonitorError::NoRuntime)?;
        let interval = Duration::from_millis(cfg.sample_interval_ms);
        let policy = cfg.run_when;
        let thresholds = Thresholds::from(&cfg);
        if cfg.unknown_power_is_external {
            warn!(
                "unknown_power_is_external no longer has an effect: an unknown power source closes the gate under charging and charging-idle; use run_when = \"always\" to work regardless of power"
            );
        }
        let logind = if cfg.use_logind && probe::HAS_LOGIND {
            let connect = async {
                match &cfg.system_bus_address {
                    Some(address) => Logind::connect_to(address).await,
                    None => Logind::connect().await,
                }
            };
            match tokio::time::timeout(LOGIND_CONNECT_TIMEOUT, connect).await {
                Ok(Ok(logind)) => {
                    info!("user idle from logind");
                    Some(logind)
                }
                Ok(Err(e)) => {
                    info!(reason = %e, "no logind; user idle from terminal access times");
                    None
                }
                Err(_) => {
                    info!("system bus did not answer; user idle from terminal access times");
                    None
                }
            }
        } else {
            None
        };
        let sampler = Sampler::with_probes(cfg, power, idle)?;
        let state = Loop {
            sampler,
            logind,
            logind_failing: false,
            policy,
            thresholds,
        };
        tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
        let (state, first) = state
            .sample(false)
            .await
            .map_err(MonitorError::FirstSample)?;
        info!(policy = %policy, gate = %first.state, "power gate started");
        let (tx, snapshots) = watch::channel(first);
        let (paused, paused_rx) = watch::channel(false);
        let task = tokio::spawn(run(state, interval, tx, paused_rx));
        Ok(Self {
            snapshots,
            paused,
            task,
        })
    }

    /// A receiver woken on every material change of the gate.
    pub fn subscribe(&self) -> watch::Receiver<GateSnapshot> {
        self.snapshots.clone()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> GateSnapshot {
        self.snapshots.borrow().clone()
    }

    /// Pauses or resumes the node; the gate is re-evaluated at once.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_if_modified(|p| {
            let changed = *p != paused;
            *p = paused;
            changed
        });
    }
}

impl Drop for GateMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    mut state: Loop,
    interval: Duration,
    tx: watch::Sender<GateSnapshot>,
    mut paused: watch::Receiver<bool>,
) {
    let now = tokio::time::Instant::now();
    // An interval too long to add to the clock would never tick; start at once instead.
    let first = now.checked_add(interval).unwrap_or(now);
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = paused.changed() => {
                if changed.is_err() {
                    return; // the monitor was dropped
                }
            }
        }
        let is_paused = *paused.borrow_and_update();
        let snapshot = match state.sample(is_paused).await {
            Ok((next, snapshot)) => {
                state = next;
                snapshot
            }
            Err(e) => {
                // Dropping the sender tells every receiver the gate is no longer watched.
                warn!(error = %e, "gate sampling stopped");
                return;
            }
        };
        tx.send_if_modified(|current| {
            let changed = current.state.differs_materially(&snapshot.state);
            if changed {
                info!(from = %current.state, to = %snapshot.state, "power gate changed");
            }
            *current = snapshot;
            changed
        });
    }
}
