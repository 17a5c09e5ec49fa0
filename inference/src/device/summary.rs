//! The advert's power and gate summaries, from the latest readings.

use crank_protocol::messages::{GateInfo, PowerInfo, RunPolicy};

use super::energy::EnergyMeter;
use super::gate::{GateState, Readings};
use super::monitor::GateSnapshot;
use super::power::PowerSource;

/// The advert's power summary. `busy_milliwatts` is the estimated draw while the node works
/// (see [`busy_milliwatts`]).
pub fn power_info(readings: &Readings, busy_milliwatts: u32) -> PowerInfo {
    PowerInfo {
        external_power: match readings.power.source {
            PowerSource::External => Some(true),
            PowerSource::Battery => Some(false),
            PowerSource::Unknown => None,
        },
        has_battery: readings.power.has_battery,
        battery_percent: readings.power.battery_percent,
        busy_milliwatts,
    }
}

/// The advert's gate summary.
pub fn gate_info(policy: RunPolicy, state: &GateState) -> GateInfo {
    GateInfo {
        policy,
        open: state.is_open(),
        reason: state.reason(),
    }
}

/// Estimated draw with `busy_cores` cores working: the meter's watts per core times the
/// cores, in milliwatts.
pub fn busy_milliwatts(meter: &EnergyMeter, busy_cores: u16) -> u32 {
    let mw = f64::from(meter.watts_per_core()) * f64::from(busy_cores) * 1000.0;
    mw.round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Both summaries from a monitor snapshot.
pub fn summarize(
    snapshot: &GateSnapshot,
    meter: &EnergyMeter,
    busy_cores: u16,
) -> (PowerInfo, GateInfo) {
    (
        power_info(&snapshot.readings, busy_milliwatts(meter, busy_cores)),
        gate_info(snapshot.policy, &snapshot.state),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::SystemTime;

    use crank_protocol::messages::GateReason;

    use super::*;
    use crate::device::DeviceConfig;
    use crate::device::idle::{IdleSource, UserIdle};
    use crate::device::power::PowerReading;

    #[test]
    fn summaries_follow_the_readings() {
        let readings = Readings {
            power: PowerReading {
                source: PowerSource::Battery,
                has_battery: true,
                battery_percent: Some(54),
                battery_status: None,
                detail: None,
            },
            idle: UserIdle {
                idle_secs: None,
                source: IdleSource::TtyAccess,
            },
            cpu: None,
            thermal: None,
            paused: false,
        };
        let state = GateState::Closed(GateReason::OnBattery { percent: Some(54) });
        let snapshot = GateSnapshot {
            policy: RunPolicy::ChargingIdle,
            state: state.clone(),
            readings,
            at: SystemTime::now(),
        };
        let meter = EnergyMeter::new(&DeviceConfig {
            powercap_root: PathBuf::from("/nonexistent"),
            watts_per_core: Some(3.5),
            ..DeviceConfig::default()
        });
        let (power, gate) = summarize(&snapshot, &meter, 2);
        assert_eq!(
            power,
            PowerInfo {
                external_power: Some(false),
                has_battery: true,
                battery_percent: Some(54),
                busy_milliwatts: 7_000,
            }
        );
        assert_eq!(
            gate,
            GateInfo {
                policy: RunPolicy::ChargingIdle,
                open: false,
                reason: Some(GateReason::OnBattery { percent: Some(54) }),
            }
        );
        assert!(gate_info(RunPolicy::Always, &GateState::Open).open);
        let mut unknown = snapshot.readings.clone();
        unknown.power = PowerReading::unknown();
        assert_eq!(power_info(&unknown, 0).external_power, None);
    }
}
