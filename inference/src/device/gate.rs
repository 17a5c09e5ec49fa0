//! The power gate's decision: a pure function of the policy, the readings and the thresholds.
//!
//! What each policy checks (every policy honours a pause and the thermal limit, which
//! protect the owner and the hardware):
//!
//! | policy | paused | too hot | on battery | user active | CPU busy |
//! |---|---|---|---|---|---|
//! | `always` | ✓ | ✓ | | | |
//! | `idle` | ✓ | ✓ | | ✓ | ✓ |
//! | `charging` | ✓ | ✓ | ✓ | | |
//! | `charging-idle` | ✓ | ✓ | ✓ | ✓ | ✓ |
//!
//! Other processes' CPU load belongs to "idle", as in BOINC, where "run always" ignores it.
//! When several reasons apply, the first in the table's order is reported.

use std::fmt;

use crank_protocol::messages::{GateReason, RunPolicy};

use super::DeviceConfig;
use super::idle::UserIdle;
use super::load::CpuLoad;
use super::power::{PowerReading, PowerSource};
use super::thermal::ThermalReading;

/// Everything the gate looks at, sampled at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    /// Power source and battery.
    pub power: PowerReading,
    /// User idle time.
    pub idle: UserIdle,
    /// Other processes' CPU load; `None` before the first meaningful sample (not busy).
    pub cpu: Option<CpuLoad>,
    /// The hottest thermal zone; `None` when the machine exposes none.
    pub thermal: Option<ThermalReading>,
    /// The owner paused the node.
    pub paused: bool,
}

/// The limits the readings are judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Seconds of user idle required.
    pub idle_secs: u64,
    /// Other processes' CPU percent above which the gate closes (reported in the reason; the
    /// verdict itself comes with the reading, which carries the hysteresis).
    pub cpu_busy_percent: u8,
    /// Degrees Celsius at or above which the gate closes.
    pub thermal_limit_celsius: i16,
    /// Whether an unknown power source counts as external.
    pub unknown_power_is_external: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::from(&DeviceConfig::default())
    }
}

impl From<&DeviceConfig> for Thresholds {
    fn from(cfg: &DeviceConfig) -> Self {
        Self {
            idle_secs: cfg.idle_secs,
            cpu_busy_percent: cfg.cpu_busy_percent,
            thermal_limit_celsius: cfg.thermal_limit_celsius,
            unknown_power_is_external: cfg.unknown_power_is_external,
        }
    }
}

/// Whether the node may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateState {
    /// Work may run.
    Open,
    /// No work may run, for this reason.
    Closed(GateReason),
}

impl GateState {
    /// Whether work may run.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open)
    }

    /// Why the gate is closed.
    pub fn reason(&self) -> Option<&GateReason> {
        match self {
            Self::Open => None,
            Self::Closed(r) => Some(r),
        }
    }

    /// Whether two states differ in a way the node must act on (open versus closed, or a
    /// different kind of reason), ignoring figures that drift (battery percent, seconds).
    pub fn differs_materially(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Open, Self::Open) => false,
            (Self::Closed(a), Self::Closed(b)) => a.category() != b.category(),
            _ => true,
        }
    }
}

impl fmt::Display for GateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open => f.write_str("open"),
            Self::Closed(reason) => write!(f, "closed: {reason}"),
        }
    }
}

/// Decides whether the node may run under `policy`.
pub fn evaluate(policy: RunPolicy, readings: &Readings, thresholds: &Thresholds) -> GateState {
    let needs_power = matches!(policy, RunPolicy::Charging | RunPolicy::ChargingIdle);
    let needs_idle = matches!(policy, RunPolicy::Idle | RunPolicy::ChargingIdle);

    if readings.paused {
        return GateState::Closed(GateReason::Paused);
    }
    if let Some(t) = &readings.thermal {
        let limit = thresholds.thermal_limit_celsius;
        if t.celsius >= f32::from(limit) {
            return GateState::Closed(GateReason::TooHot {
                celsius: t.celsius.round().clamp(-999.0, 999.0) as i16,
                limit,
            });
        }
    }
    if needs_power {
        let external = match readings.power.source {
            PowerSource::External => true,
            PowerSource::Battery => false,
            PowerSource::Unknown => thresholds.unknown_power_is_external,
        };
        if !external {
            return GateState::Closed(GateReason::OnBattery {
                percent: readings.power.battery_percent,
            });
        }
    }
    if needs_idle {
        if !readings.idle.is_idle_for(thresholds.idle_secs) {
            return GateState::Closed(GateReason::UserActive {
                idle_secs: readings.idle.idle_secs.unwrap_or(0),
                required_secs: thresholds.idle_secs,
            });
        }
        if let Some(cpu) = readings.cpu
            && cpu.busy
        {
            return GateState::Closed(GateReason::CpuBusy {
                percent: cpu.other_percent.round().clamp(0.0, 100.0) as u8,
                limit: thresholds.cpu_busy_percent,
            });
        }
    }
    GateState::Open
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::idle::IdleSource;

    fn readings() -> Readings {
        Readings {
            power: PowerReading {
                source: PowerSource::External,
                has_battery: true,
                battery_percent: Some(90),
                battery_status: None,
                detail: None,
            },
            idle: UserIdle {
                idle_secs: Some(600),
                source: IdleSource::TtyAccess,
            },
            cpu: Some(CpuLoad {
                other_percent: 3.0,
                busy: false,
            }),
            thermal: Some(ThermalReading {
                celsius: 50.0,
                zone: "x86_pkg_temp".into(),
            }),
            paused: false,
        }
    }

    const ALL: [RunPolicy; 4] = [
        RunPolicy::Always,
        RunPolicy::Idle,
        RunPolicy::Charging,
        RunPolicy::ChargingIdle,
    ];

    #[test]
    fn all_clear_opens_every_policy() {
        for p in ALL {
            assert_eq!(
                evaluate(p, &readings(), &Thresholds::default()),
                GateState::Open
            );
        }
    }

    #[test]
    fn reasons_read_well() {
        let t = Thresholds::default();
        let mut r = readings();
        r.power.source = PowerSource::Battery;
        r.power.battery_percent = Some(54);
        assert_eq!(
            evaluate(RunPolicy::ChargingIdle, &r, &t).to_string(),
            "closed: on battery 54 %"
        );
        let mut r = readings();
        r.idle.idle_secs = Some(40);
        let s = evaluate(RunPolicy::ChargingIdle, &r, &t);
        assert!(
            s.to_string().starts_with("closed: user active 40 s ago"),
            "{s}"
        );
        let mut r = readings();
        r.cpu = Some(CpuLoad {
            other_percent: 63.2,
            busy: true,
        });
        let s = evaluate(RunPolicy::Idle, &r, &t);
        assert!(s.to_string().starts_with("closed: CPU busy 63 %"), "{s}");
    }

    #[test]
    fn policies_check_what_they_promise() {
        let t = Thresholds::default();
        let mut battery = readings();
        battery.power.source = PowerSource::Battery;
        let mut active = readings();
        active.idle.idle_secs = Some(5);
        let mut busy = readings();
        busy.cpu = Some(CpuLoad {
            other_percent: 80.0,
            busy: true,
        });
        let open = |p, r: &Readings| evaluate(p, r, &t).is_open();

        assert!(open(RunPolicy::Always, &battery));
        assert!(open(RunPolicy::Always, &active));
        assert!(open(RunPolicy::Always, &busy));

        assert!(open(RunPolicy::Idle, &battery));
        assert!(!open(RunPolicy::Idle, &active));
        assert!(!open(RunPolicy::Idle, &busy));

        assert!(!open(RunPolicy::Charging, &battery));
        assert!(open(RunPolicy::Charging, &active));
        assert!(open(RunPolicy::Charging, &busy));

        assert!(!open(RunPolicy::ChargingIdle, &battery));
        assert!(!open(RunPolicy::ChargingIdle, &active));
        assert!(!open(RunPolicy::ChargingIdle, &busy));
    }

    #[test]
    fn pause_and_heat_close_every_policy() {
        let t = Thresholds::default();
        let mut paused = readings();
        paused.paused = true;
        let mut hot = readings();
        hot.thermal = Some(ThermalReading {
            celsius: 80.4,
            zone: "cpu".into(),
        });
        for p in ALL {
            assert_eq!(
                evaluate(p, &paused, &t),
                GateState::Closed(GateReason::Paused)
            );
            assert_eq!(
                evaluate(p, &hot, &t),
                GateState::Closed(GateReason::TooHot {
                    celsius: 80,
                    limit: 80
                })
            );
        }
    }

    #[test]
    fn unknown_power_follows_the_threshold() {
        let mut r = readings();
        r.power = PowerReading::unknown();
        let mut t = Thresholds::default();
        assert!(evaluate(RunPolicy::Charging, &r, &t).is_open());
        t.unknown_power_is_external = false;
        assert_eq!(
            evaluate(RunPolicy::Charging, &r, &t),
            GateState::Closed(GateReason::OnBattery { percent: None })
        );
    }

    #[test]
    fn no_session_is_idle_and_no_cpu_figure_is_not_busy() {
        let mut r = readings();
        r.idle.idle_secs = None;
        r.cpu = None;
        r.thermal = None;
        assert!(evaluate(RunPolicy::ChargingIdle, &r, &Thresholds::default()).is_open());
    }

    #[test]
    fn material_difference_ignores_drifting_figures() {
        let a = GateState::Closed(GateReason::OnBattery { percent: Some(54) });
        let b = GateState::Closed(GateReason::OnBattery { percent: Some(53) });
        let c = GateState::Closed(GateReason::Paused);
        assert!(!a.differs_materially(&b));
        assert!(a.differs_materially(&c));
        assert!(a.differs_materially(&GateState::Open));
        assert!(!GateState::Open.differs_materially(&GateState::Open));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn arb_readings() -> impl Strategy<Value = Readings> {
            (
                prop_oneof![
                    Just(PowerSource::External),
                    Just(PowerSource::Battery),
                    Just(PowerSource::Unknown)
                ],
                proptest::option::of(0u8..=100),
                proptest::option::of(0u64..100_000),
                proptest::option::of((0f32..=100.0, any::<bool>())),
                proptest::option::of(-20f32..120.0),
                any::<bool>(),
            )
                .prop_map(|(source, percent, idle, cpu, temp, paused)| Readings {
                    power: PowerReading {
                        source,
                        has_battery: percent.is_some(),
                        battery_percent: percent,
                        battery_status: None,
                        detail: None,
                    },
                    idle: UserIdle {
                        idle_secs: idle,
                        source: IdleSource::TtyAccess,
                    },
                    cpu: cpu.map(|(other_percent, busy)| CpuLoad {
                        other_percent,
                        busy,
                    }),
                    thermal: temp.map(|celsius| ThermalReading {
                        celsius,
                        zone: "z".into(),
                    }),
                    paused,
                })
        }

        fn arb_thresholds() -> impl Strategy<Value = Thresholds> {
            (0u64..1_000, 0u8..=100, 30i16..=150, any::<bool>()).prop_map(
                |(idle_secs, cpu_busy_percent, thermal_limit_celsius, unknown)| Thresholds {
                    idle_secs,
                    cpu_busy_percent,
                    thermal_limit_celsius,
                    unknown_power_is_external: unknown,
                },
            )
        }

        proptest! {
            /// A stricter policy never opens where a laxer one stays closed.
            #[test]
            fn stricter_policies_open_less(r in arb_readings(), t in arb_thresholds()) {
                let open = |p| evaluate(p, &r, &t).is_open();
                if open(RunPolicy::ChargingIdle) {
                    prop_assert!(open(RunPolicy::Charging) && open(RunPolicy::Idle));
                }
                if open(RunPolicy::Charging) || open(RunPolicy::Idle) {
                    prop_assert!(open(RunPolicy::Always));
                }
            }

            /// `always` closes only for a pause or heat; a closed gate always has a reason.
            #[test]
            fn always_closes_only_for_pause_or_heat(r in arb_readings(), t in arb_thresholds()) {
                match evaluate(RunPolicy::Always, &r, &t) {
                    GateState::Open => {}
                    GateState::Closed(GateReason::Paused) => prop_assert!(r.paused),
                    GateState::Closed(GateReason::TooHot { limit, .. }) => {
                        prop_assert_eq!(limit, t.thermal_limit_celsius);
                    }
                    GateState::Closed(other) => prop_assert!(false, "unexpected {}", other),
                }
            }
        }
    }
}
