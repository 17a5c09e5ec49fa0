//! The power gate's decision: a pure function of the policy, the readings and the thresholds.
//!
//! What each policy checks (every policy honours a pause and the thermal limit, which
//! protect the owner and the hardware):
//!
//! | policy | paused | too hot | on battery or power unknown | user active or activity unknown | CPU busy |
//! |---|---|---|---|---|---|
//! | `always` | ✓ | ✓ | | | |
//! | `idle` | ✓ | ✓ | | ✓ | ✓ |
//! | `charging` | ✓ | ✓ | ✓ | | |
//! | `charging-idle` | ✓ | ✓ | ✓ | ✓ | ✓ |
//!
//! Other processes' CPU load belongs to "idle", as in BOINC, where "run always" ignores it.
//! When several reasons apply, the first in the table's order is reported.
//!
//! **The gate fails closed**: an input a policy reads that could not be read (no reader for
//! this platform, an unreadable directory, no logind and no readable terminals) closes the
//! gate with [`GateState::ClosedUnknown`], so a laptop on battery with its owner typing never
//! takes work because we could not tell. Knowing that nobody is there is not unknown: a
//! readable `/dev` without terminals and no logind session is a headless machine, idle; a
//! readable power supply class without batteries is a machine on mains.

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
        }
    }
}

/// An input the policy reads that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnknownInput {
    /// The power source.
    Power,
    /// The user's activity.
    UserActivity {
        /// Seconds of idle the policy requires (carried to the wire reason).
        required_secs: u64,
    },
}

impl UnknownInput {
    /// A short category, in the style of [`GateReason::category`].
    pub fn category(&self) -> &'static str {
        match self {
            Self::Power => "power source unknown",
            Self::UserActivity { .. } => "user activity unknown",
        }
    }

    /// The reason peers are told. `GateReason` is signed into adverts, declines and task
    /// failures, and postcard encodes an enum variant by its index: a new variant would make
    /// every peer on the current wire version fail to decode our adverts (and count them as
    /// malformed), so an unknown input travels as the closest existing reason, with no figure
    /// it does not have, and the distinction stays local (status, logs).
    pub fn wire_reason(&self) -> GateReason {
        match self {
            Self::Power => GateReason::OnBattery { percent: None },
            Self::UserActivity { required_secs } => GateReason::UserActive {
                idle_secs: 0,
                required_secs: *required_secs,
            },
        }
    }
}

impl fmt::Display for UnknownInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.category())
    }
}

/// Whether the node may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateState {
    /// Work may run.
    Open,
    /// No work may run, for this reason.
    Closed(GateReason),
    /// No work may run: an input the policy reads could not be read, and the gate fails
    /// closed rather than guess. Peers see [`UnknownInput::wire_reason`].
    ClosedUnknown(UnknownInput),
}

impl GateState {
    /// Whether work may run.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open)
    }

    /// Why the gate is closed, as peers are told (adverts, declines, aborted tasks).
    pub fn reason(&self) -> Option<GateReason> {
        match self {
            Self::Open => None,
            Self::Closed(r) => Some(r.clone()),
            Self::ClosedUnknown(u) => Some(u.wire_reason()),
        }
    }

    /// Why the gate is closed, as this node knows it, in words (`on battery 54 %`,
    /// `power source unknown`).
    pub fn why_closed(&self) -> Option<String> {
        match self {
            Self::Open => None,
            Self::Closed(r) => Some(r.to_string()),
            Self::ClosedUnknown(u) => Some(u.to_string()),
        }
    }

    /// The kind of reason the gate is closed for (`on battery`, `power source unknown`).
    pub fn category(&self) -> Option<&'static str> {
        match self {
            Self::Open => None,
            Self::Closed(r) => Some(r.category()),
            Self::ClosedUnknown(u) => Some(u.category()),
        }
    }

    /// Whether two states differ in a way the node must act on (open versus closed, or a
    /// different kind of reason), ignoring figures that drift (battery percent, seconds).
    pub fn differs_materially(&self, other: &Self) -> bool {
        self.category() != other.category()
    }
}

impl fmt::Display for GateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open => f.write_str("open"),
            Self::Closed(reason) => write!(f, "closed: {reason}"),
            Self::ClosedUnknown(input) => write!(f, "closed: {input}"),
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
        match readings.power.source {
            PowerSource::External => {}
            PowerSource::Battery => {
                return GateState::Closed(GateReason::OnBattery {
                    percent: readings.power.battery_percent,
                });
            }
            PowerSource::Unknown => return GateState::ClosedUnknown(UnknownInput::Power),
        }
    }
    if needs_idle {
        if !readings.idle.is_known() {
            return GateState::ClosedUnknown(UnknownInput::UserActivity {
                required_secs: thresholds.idle_secs,
            });
        }
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
    fn unknown_power_closes_the_policies_that_read_it() {
        let mut r = readings();
        r.power = PowerReading::unknown();
        let t = Thresholds::default();
        for p in [RunPolicy::Charging, RunPolicy::ChargingIdle] {
            let s = evaluate(p, &r, &t);
            assert_eq!(s, GateState::ClosedUnknown(UnknownInput::Power), "{p}");
            assert_eq!(s.to_string(), "closed: power source unknown");
            assert_eq!(s.why_closed().as_deref(), Some("power source unknown"));
            assert_eq!(s.category(), Some("power source unknown"));
            assert_eq!(s.reason(), Some(GateReason::OnBattery { percent: None }));
        }
        assert!(evaluate(RunPolicy::Always, &r, &t).is_open());
        assert!(evaluate(RunPolicy::Idle, &r, &t).is_open());
    }

    #[test]
    fn unknown_activity_closes_the_policies_that_read_it() {
        let mut r = readings();
        r.idle = UserIdle::unknown();
        let t = Thresholds::default();
        for p in [RunPolicy::Idle, RunPolicy::ChargingIdle] {
            let s = evaluate(p, &r, &t);
            assert_eq!(
                s,
                GateState::ClosedUnknown(UnknownInput::UserActivity { required_secs: 180 }),
                "{p}"
            );
            assert_eq!(s.to_string(), "closed: user activity unknown");
            assert_eq!(
                s.reason(),
                Some(GateReason::UserActive {
                    idle_secs: 0,
                    required_secs: 180
                })
            );
        }
        assert!(evaluate(RunPolicy::Always, &r, &t).is_open());
        assert!(evaluate(RunPolicy::Charging, &r, &t).is_open());
        // Both unknown: power is checked first, as in the table.
        r.power = PowerReading::unknown();
        assert_eq!(
            evaluate(RunPolicy::ChargingIdle, &r, &t),
            GateState::ClosedUnknown(UnknownInput::Power)
        );
        assert!(evaluate(RunPolicy::Always, &r, &t).is_open());
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
        // Same wire reason, different local one: the node acts on it (status, logs).
        let unknown = GateState::ClosedUnknown(UnknownInput::Power);
        assert_eq!(
            unknown.reason(),
            a.reason().map(|_| GateReason::OnBattery { percent: None })
        );
        assert!(unknown.differs_materially(&a));
        assert!(!unknown.differs_materially(&unknown.clone()));
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
                prop_oneof![
                    Just(IdleSource::Logind),
                    Just(IdleSource::TtyAccess),
                    Just(IdleSource::System),
                    Just(IdleSource::Unknown)
                ],
                proptest::option::of((0f32..=100.0, any::<bool>())),
                proptest::option::of(-20f32..120.0),
                any::<bool>(),
            )
                .prop_map(|(source, percent, idle, idle_source, cpu, temp, paused)| {
                    Readings {
                        power: PowerReading {
                            source,
                            has_battery: percent.is_some(),
                            battery_percent: percent,
                            battery_status: None,
                            detail: None,
                        },
                        idle: UserIdle {
                            idle_secs: if idle_source == IdleSource::Unknown {
                                None
                            } else {
                                idle
                            },
                            source: idle_source,
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
                    }
                })
        }

        fn arb_thresholds() -> impl Strategy<Value = Thresholds> {
            (0u64..1_000, 0u8..=100, 30i16..=150).prop_map(
                |(idle_secs, cpu_busy_percent, thermal_limit_celsius)| Thresholds {
                    idle_secs,
                    cpu_busy_percent,
                    thermal_limit_celsius,
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
                    other => prop_assert!(false, "unexpected {}", other),
                }
            }

            /// An unknown input closes exactly the policies that read it, and is reported only
            /// when that input is unknown; a closed gate always has a wire reason.
            #[test]
            fn unknown_inputs_fail_closed(r in arb_readings(), t in arb_thresholds()) {
                for p in [RunPolicy::Always, RunPolicy::Idle, RunPolicy::Charging, RunPolicy::ChargingIdle] {
                    let reads_power = matches!(p, RunPolicy::Charging | RunPolicy::ChargingIdle);
                    let reads_idle = matches!(p, RunPolicy::Idle | RunPolicy::ChargingIdle);
                    let s = evaluate(p, &r, &t);
                    prop_assert_eq!(s.is_open(), s.reason().is_none());
                    match s {
                        GateState::ClosedUnknown(UnknownInput::Power) => {
                            prop_assert!(reads_power && !r.power.is_known());
                        }
                        GateState::ClosedUnknown(UnknownInput::UserActivity { required_secs }) => {
                            prop_assert!(reads_idle && !r.idle.is_known());
                            prop_assert_eq!(required_secs, t.idle_secs);
                        }
                        GateState::Open => {
                            prop_assert!(!reads_power || r.power.is_known());
                            prop_assert!(!reads_idle || r.idle.is_known());
                        }
                        GateState::Closed(_) => {}
                    }
                }
            }
        }
    }
}
