//! Readers for macOS and Windows, where there is no sysfs: the power source from the OS
//! battery API through `starship-battery`, the user's idle time from the OS input idle
//! counter through `system-idle-time`.
//!
//! **Untested on those platforms**: no macOS or Windows build runs in this project's CI.
//! What can be tested elsewhere is: the mapping of battery states to a power source
//! ([`classify_os`]) and of the idle counter to a reading ([`idle_from_counter`]) are plain
//! functions, and [`OsPower`] itself runs on Linux too (starship-battery reads sysfs there),
//! where the tests exercise it; only `OsIdle`, a call of `system_idle_time::get_idle_time`,
//! is compiled for macOS and Windows alone.
//!
//! Power: with no battery at all the machine is a desktop on mains; a battery that is
//! charging, full or held at a charge limit means external power (macOS reports a battery as
//! discharging exactly when no adapter is connected; Windows reports full when on line and
//! not charging); batteries that are all discharging or empty mean battery; anything else,
//! or a battery API that fails, is unknown.
//!
//! Idle: macOS's `HIDIdleTime` is the time since the last keyboard, mouse or trackpad input
//! system-wide. Windows' `GetLastInputInfo` is the time since the last input **in the
//! caller's session**: a node run as a Windows service (session 0) would see no input ever
//! and read as always idle, so on Windows the node must run in the owner's session (a login
//! item), which is how `crank-node join` is started today.

use std::fmt;
use std::time::Duration;

use starship_battery::State;
use tracing::debug;

use super::power::{BatteryDetail, BatteryStatus, PowerReading, PowerSource, detail_of};
use super::probe::PowerProbe;

/// One battery as the OS battery API reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OsBattery {
    /// Its state.
    pub state: State,
    /// Its charge, percent.
    pub percent: Option<u8>,
    /// Its rate and times.
    pub detail: Option<BatteryDetail>,
}

/// The power source from the batteries the OS listed and how many it could not read (see
/// the module docs for the rules).
pub fn classify_os(batteries: &[OsBattery], unreadable: usize) -> PowerReading {
    if batteries.is_empty() && unreadable > 0 {
        return PowerReading {
            has_battery: true,
            ..PowerReading::unknown()
        };
    }
    let external = batteries
        .iter()
        .any(|b| matches!(b.state, State::Charging | State::Full | State::Paused));
    let draining = batteries
        .iter()
        .any(|b| matches!(b.state, State::Discharging | State::Empty));
    let source = if batteries.is_empty() || external {
        PowerSource::External
    } else if draining {
        PowerSource::Battery
    } else {
        PowerSource::Unknown
    };
    let known: Vec<u32> = batteries
        .iter()
        .filter_map(|b| b.percent.map(u32::from))
        .collect();
    let battery_percent = u32::try_from(known.len())
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| {
            let sum = known.iter().fold(0u32, |a, p| a.saturating_add(*p));
            sum.saturating_add(n / 2).checked_div(n)
        })
        .and_then(|p| u8::try_from(p).ok());
    PowerReading {
        source,
        has_battery: !batteries.is_empty() || unreadable > 0,
        battery_percent,
        battery_status: batteries.first().map(|b| status_of(b.state)),
        detail: batteries.first().and_then(|b| b.detail),
    }
}

fn status_of(state: State) -> BatteryStatus {
    match state {
        State::Charging => BatteryStatus::Charging,
        State::Discharging | State::Empty => BatteryStatus::Discharging,
        State::Full => BatteryStatus::Full,
        State::Paused => BatteryStatus::NotCharging,
        State::Unknown => BatteryStatus::Unknown,
    }
}

/// The power probe for macOS and Windows: the OS battery API through `starship-battery`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OsPower;

impl PowerProbe for OsPower {
    fn read_power(&self) -> PowerReading {
        use starship_battery::units::ratio::percent;

        let manager = match starship_battery::Manager::new() {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "battery API unavailable; power source unknown");
                return PowerReading::unknown();
            }
        };
        let listed = match manager.batteries() {
            Ok(b) => b,
            Err(e) => {
                debug!(error = %e, "batteries not listed; power source unknown");
                return PowerReading::unknown();
            }
        };
        let mut batteries = Vec::new();
        let mut unreadable = 0usize;
        // A handful of batteries at most; the cap only guards against a broken enumerator.
        for battery in listed.take(16) {
            match battery {
                Ok(b) => {
                    let p = b.state_of_charge().get::<percent>();
                    batteries.push(OsBattery {
                        state: b.state(),
                        percent: p.is_finite().then(|| p.round().clamp(0.0, 100.0) as u8),
                        detail: Some(detail_of(&b)),
                    });
                }
                Err(e) => {
                    debug!(error = %e, "a battery could not be read");
                    unreadable = unreadable.saturating_add(1);
                }
            }
        }
        classify_os(&batteries, unreadable)
    }
}

/// The idle reading from the OS input idle counter's answer: seconds since the last input,
/// or unknown when the call failed.
pub fn idle_from_counter<E: fmt::Display>(answer: Result<Duration, E>) -> super::idle::UserIdle {
    use super::idle::{IdleSource, UserIdle};
    match answer {
        Ok(idle) => UserIdle {
            idle_secs: Some(idle.as_secs()),
            source: IdleSource::System,
        },
        Err(e) => {
            debug!(error = %e, "input idle counter unreadable; user activity unknown");
            UserIdle::unknown()
        }
    }
}

/// The idle probe for macOS and Windows: the OS input idle counter through
/// `system-idle-time` (its platform calls are its own unsafe code, not ours).
#[cfg(any(target_os = "macos", target_os = "windows"))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OsIdle;

#[cfg(any(target_os = "macos", target_os = "windows"))]
impl super::probe::IdleProbe for OsIdle {
    fn read_idle(&self, _now: std::time::SystemTime) -> super::idle::UserIdle {
        idle_from_counter(system_idle_time::get_idle_time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::idle::IdleSource;

    fn battery(state: State, percent: u8) -> OsBattery {
        OsBattery {
            state,
            percent: Some(percent),
            detail: None,
        }
    }

    #[test]
    fn no_battery_is_a_desktop_on_mains() {
        let r = classify_os(&[], 0);
        assert_eq!(r.source, PowerSource::External);
        assert!(!r.has_battery);
    }

    #[test]
    fn battery_states_map_to_sources() {
        for (state, source) in [
            (State::Charging, PowerSource::External),
            (State::Full, PowerSource::External),
            (State::Paused, PowerSource::External),
            (State::Discharging, PowerSource::Battery),
            (State::Empty, PowerSource::Battery),
            (State::Unknown, PowerSource::Unknown),
        ] {
            let r = classify_os(&[battery(state, 40)], 0);
            assert_eq!(r.source, source, "{state:?}");
            assert!(r.has_battery);
            assert_eq!(r.battery_percent, Some(40));
        }
        // One battery charging means an adapter is connected, whatever the other says.
        let r = classify_os(
            &[
                battery(State::Discharging, 20),
                battery(State::Charging, 61),
            ],
            0,
        );
        assert_eq!(r.source, PowerSource::External);
        assert_eq!(r.battery_percent, Some(41));
        assert_eq!(r.battery_status, Some(BatteryStatus::Discharging));
    }

    #[test]
    fn unreadable_batteries_are_unknown() {
        let r = classify_os(&[], 1);
        assert_eq!(r.source, PowerSource::Unknown);
        assert!(r.has_battery);
    }

    #[test]
    fn idle_counter_answers_map_to_readings() {
        let idle = idle_from_counter::<String>(Ok(Duration::from_millis(42_900)));
        assert_eq!(idle.idle_secs, Some(42));
        assert_eq!(idle.source, IdleSource::System);
        let failed = idle_from_counter(Err("GetLastInputInfo failed"));
        assert_eq!(failed.source, IdleSource::Unknown);
        assert!(!failed.is_idle_for(0));
    }

    #[test]
    fn os_power_reads_this_machine() {
        // starship-battery's Linux backend reads the real sysfs: a machine without a system
        // battery (this container) is on mains, one with a battery is known either way.
        let r = OsPower.read_power();
        let listed = std::fs::read_dir(crate::device::power::SYSFS_POWER_SUPPLY).map(|d| d.count());
        if listed.is_ok_and(|n| n == 0) {
            assert_eq!(r.source, PowerSource::External, "{r:?}");
            assert!(!r.has_battery);
        }
    }
}
