//! Device configuration: where the machine's state is read from, and when the node may run.
//!
//! [`DeviceConfig`] is the `[device]` section of the node's TOML file. Every field has a
//! default (see [`DeviceConfig::default`]), so an empty section is a valid configuration.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crank_protocol::messages::RunPolicy;
use serde::{Deserialize, Serialize};

use super::probe;

/// The shortest sample interval, milliseconds: sysinfo needs at least 200 ms between two CPU
/// samples for a meaningful figure.
pub const MIN_SAMPLE_INTERVAL_MS: u64 = 200;

/// The longest sample interval, milliseconds (one hour); longer would leave a closed gate
/// unnoticed while a task runs.
pub const MAX_SAMPLE_INTERVAL_MS: u64 = 3_600_000;

/// What kind of device this is; it picks the default busy power per core for energy estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// A phone or phone-class ARM board.
    Phone,
    /// A Raspberry Pi or similar single-board computer.
    Pi,
    /// A laptop (a machine with a system battery).
    Laptop,
    /// A desktop computer.
    Desktop,
    /// A server.
    Server,
}

impl DeviceClass {
    /// Busy power per logical core, watts: full-load package power of a typical machine of the
    /// class divided by its logical cores. These are estimates, used only when RAPL is not
    /// readable:
    ///
    /// | class | W/core | basis |
    /// |---|---|---|
    /// | phone | 0.6 | ~5 W sustained SoC power over 8 cores |
    /// | pi | 1.0 | Raspberry Pi 4/5: ~2.7 W idle, ~6.5–7.5 W with 4 busy cores |
    /// | laptop | 3.5 | 28 W U/P-series package over 8 threads |
    /// | desktop | 6.0 | 65–125 W package over 12–16 threads |
    /// | server | 4.0 | 250 W package over 64 threads |
    pub fn default_watts_per_core(self) -> f32 {
        match self {
            Self::Phone => 0.6,
            Self::Pi => 1.0,
            Self::Laptop => 3.5,
            Self::Desktop => 6.0,
            Self::Server => 4.0,
        }
    }

    /// Guesses the class: a system battery means a laptop (a phone on Android); without one,
    /// a small ARM machine is a Pi, 32 or more logical cores a server, anything else a desktop.
    pub fn detect(has_battery: bool, arch: &str, os: &str, cores: usize) -> Self {
        let arm = arch.starts_with("arm") || arch == "aarch64";
        if os == "android" {
            Self::Phone
        } else if has_battery {
            Self::Laptop
        } else if arm && cores <= 8 {
            Self::Pi
        } else if cores >= 32 {
            Self::Server
        } else {
            Self::Desktop
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Phone => "phone",
            Self::Pi => "pi",
            Self::Laptop => "laptop",
            Self::Desktop => "desktop",
            Self::Server => "server",
        })
    }
}

impl FromStr for DeviceClass {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "phone" => Ok(Self::Phone),
            "pi" => Ok(Self::Pi),
            "laptop" => Ok(Self::Laptop),
            "desktop" => Ok(Self::Desktop),
            "server" => Ok(Self::Server),
            other => Err(ConfigError::UnknownClass(other.to_owned())),
        }
    }
}

/// Device section of the node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// sysfs power supply class (`type`, `online`, `status`, `capacity`, `scope` per supply).
    pub power_supply_root: PathBuf,
    /// sysfs thermal class (`thermal_zone*/temp` in millidegrees Celsius).
    pub thermal_root: PathBuf,
    /// sysfs powercap class (`intel-rapl:*/energy_uj` in microjoules).
    pub powercap_root: PathBuf,
    /// procfs mount (`stat` gives the whole machine's CPU time for RAPL attribution).
    pub proc_root: PathBuf,
    /// Device directory holding the `tty*` and `pts/*` nodes whose access times show input.
    pub dev_root: PathBuf,
    /// Ask systemd-logind on the system D-Bus for user idle time (Linux only); tty access
    /// times are the fallback either way.
    pub use_logind: bool,
    /// D-Bus address of the system bus; absent means the standard one
    /// (`$DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`).
    pub system_bus_address: Option<String>,
    /// When the node may work: `always`, `idle`, `charging` or `charging-idle`.
    pub run_when: RunPolicy,
    /// Seconds without user input before the user counts as idle.
    pub idle_secs: u64,
    /// Other processes' CPU use, percent of all cores, above which the gate closes.
    pub cpu_busy_percent: u8,
    /// Other processes' CPU use, percent of all cores, below which a gate closed for CPU use
    /// opens again (hysteresis, so a load near the limit does not flap the gate).
    pub cpu_resume_percent: u8,
    /// Hottest thermal zone, degrees Celsius, at or above which the gate closes.
    pub thermal_limit_celsius: i16,
    /// No longer read; accepted so that configuration files written for earlier releases
    /// still load (`true` logs a warning at start). An unknown power source (a missing or
    /// unreadable power supply directory, a platform without a reader) now always closes the
    /// gate under `charging` and `charging-idle`; a machine that should work whatever its
    /// power says so with `run_when = "always"`, or `"idle"`.
    #[serde(skip_serializing)]
    pub unknown_power_is_external: bool,
    /// Milliseconds between two samples of the gate's inputs.
    pub sample_interval_ms: u64,
    /// Device class; absent means detect it from the battery, architecture and core count.
    pub device_class: Option<DeviceClass>,
    /// Busy watts per logical core for energy estimates; absent means the class default.
    pub watts_per_core: Option<f32>,
}

impl Default for DeviceConfig {
    /// The defaults are BOINC's: run only on external power, after 3 minutes without user
    /// input, while other processes use under 25 % of the CPU.
    ///
    /// * roots: `/sys/class/power_supply`, `/sys/class/thermal`, `/sys/class/powercap`, `/proc`, `/dev`
    /// * `use_logind`: true; `system_bus_address`: the standard system bus
    /// * `run_when`: `charging-idle`
    /// * `idle_secs`: 180 s
    /// * `cpu_busy_percent`: 25 %, `cpu_resume_percent`: 15 %
    /// * `thermal_limit_celsius`: 80 °C — the Raspberry Pi 4's firmware throttles at 80 °C and
    ///   laptop CPUs throttle at 95–105 °C, so the node stops before the firmware has to
    /// * `unknown_power_is_external`: false (not read)
    /// * `sample_interval_ms`: 5000 ms — work stops within 5 s of the user coming back or
    ///   the charger being pulled, for about 6–7 ms of CPU per minute (the `device_gate_cost`
    ///   example measures it)
    /// * `device_class`: detected; `watts_per_core`: the class default
    fn default() -> Self {
        Self {
            power_supply_root: PathBuf::from("/sys/class/power_supply"),
            thermal_root: PathBuf::from("/sys/class/thermal"),
            powercap_root: PathBuf::from("/sys/class/powercap"),
            proc_root: PathBuf::from("/proc"),
            dev_root: PathBuf::from("/dev"),
            use_logind: true,
            system_bus_address: None,
            run_when: RunPolicy::ChargingIdle,
            idle_secs: 180,
            cpu_busy_percent: 25,
            cpu_resume_percent: 15,
            thermal_limit_celsius: 80,
            unknown_power_is_external: false,
            sample_interval_ms: 5_000,
            device_class: None,
            watts_per_core: None,
        }
    }
}

/// Why a device configuration is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The sample interval is outside the allowed range.
    #[error(
        "sample_interval_ms is {0}; it must be between {MIN_SAMPLE_INTERVAL_MS} and {MAX_SAMPLE_INTERVAL_MS}"
    )]
    SampleInterval(u64),
    /// A CPU percentage is over 100, or the resume level is above the busy level.
    #[error(
        "cpu_resume_percent ({resume}) must not exceed cpu_busy_percent ({busy}), which must not exceed 100"
    )]
    CpuThresholds {
        /// The busy level.
        busy: u8,
        /// The resume level.
        resume: u8,
    },
    /// The thermal limit is implausible.
    #[error("thermal_limit_celsius is {0}; it must be between 30 and 150")]
    ThermalLimit(i16),
    /// The watts per core figure is not a positive, finite number of at most 1000.
    #[error("watts_per_core is {0}; it must be a positive number of at most 1000")]
    WattsPerCore(f32),
    /// A device class name is not one of phone, pi, laptop, desktop, server.
    #[error("unknown device class {0:?}; expected phone, pi, laptop, desktop or server")]
    UnknownClass(String),
}

impl DeviceConfig {
    /// Checks the numbers; the roots are checked when they are read, because a missing root
    /// is a normal state (no battery directory in a container), not a configuration error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_SAMPLE_INTERVAL_MS..=MAX_SAMPLE_INTERVAL_MS).contains(&self.sample_interval_ms) {
            return Err(ConfigError::SampleInterval(self.sample_interval_ms));
        }
        if self.cpu_busy_percent > 100 || self.cpu_resume_percent > self.cpu_busy_percent {
            return Err(ConfigError::CpuThresholds {
                busy: self.cpu_busy_percent,
                resume: self.cpu_resume_percent,
            });
        }
        if !(30..=150).contains(&self.thermal_limit_celsius) {
            return Err(ConfigError::ThermalLimit(self.thermal_limit_celsius));
        }
        if let Some(w) = self.watts_per_core
            && !(w.is_finite() && w > 0.0 && w <= 1000.0)
        {
            return Err(ConfigError::WattsPerCore(w));
        }
        Ok(())
    }

    /// The configured device class, or the detected one.
    pub fn resolved_class(&self) -> DeviceClass {
        if let Some(class) = self.device_class {
            return class;
        }
        let has_battery = probe::power_probe(self).read_power().has_battery;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        DeviceClass::detect(
            has_battery,
            std::env::consts::ARCH,
            std::env::consts::OS,
            cores,
        )
    }

    /// Busy watts per logical core: the configured figure, or the class default.
    pub fn resolved_watts_per_core(&self) -> f32 {
        self.watts_per_core
            .unwrap_or_else(|| self.resolved_class().default_watts_per_core())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_boinc_like() {
        let cfg = DeviceConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.run_when, RunPolicy::ChargingIdle);
        assert_eq!(cfg.idle_secs, 180);
        assert_eq!(cfg.cpu_busy_percent, 25);
    }

    #[test]
    fn empty_toml_gives_defaults_and_fields_override() {
        let cfg: DeviceConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, DeviceConfig::default());
        let cfg: DeviceConfig = toml::from_str(
            "run_when = \"always\"\nidle_secs = 60\ndevice_class = \"pi\"\nwatts_per_core = 1.5\n",
        )
        .unwrap();
        assert_eq!(cfg.run_when, RunPolicy::Always);
        assert_eq!(cfg.idle_secs, 60);
        assert_eq!(cfg.resolved_class(), DeviceClass::Pi);
        assert_eq!(cfg.resolved_watts_per_core(), 1.5);
    }

    #[test]
    fn the_retired_unknown_power_key_still_loads() {
        for value in ["true", "false"] {
            let cfg: DeviceConfig =
                toml::from_str(&format!("unknown_power_is_external = {value}\n")).unwrap();
            assert_eq!(cfg.unknown_power_is_external, value == "true");
            cfg.validate().unwrap();
        }
        assert!(!DeviceConfig::default().unknown_power_is_external);
    }

    #[test]
    fn unknown_fields_and_bad_policies_are_rejected() {
        assert!(toml::from_str::<DeviceConfig>("idle_seconds = 3").is_err());
        assert!(toml::from_str::<DeviceConfig>("run_when = \"sometimes\"").is_err());
    }

    #[test]
    fn validate_rejects_bad_numbers() {
        let bad = [
            DeviceConfig {
                sample_interval_ms: 10,
                ..DeviceConfig::default()
            },
            DeviceConfig {
                cpu_busy_percent: 20,
                cpu_resume_percent: 30,
                ..DeviceConfig::default()
            },
            DeviceConfig {
                cpu_busy_percent: 120,
                cpu_resume_percent: 10,
                ..DeviceConfig::default()
            },
            DeviceConfig {
                thermal_limit_celsius: 500,
                ..DeviceConfig::default()
            },
            DeviceConfig {
                watts_per_core: Some(f32::NAN),
                ..DeviceConfig::default()
            },
            DeviceConfig {
                watts_per_core: Some(-1.0),
                ..DeviceConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?} should be invalid");
        }
    }

    #[test]
    fn class_detection() {
        assert_eq!(
            DeviceClass::detect(true, "x86_64", "linux", 8),
            DeviceClass::Laptop
        );
        assert_eq!(
            DeviceClass::detect(false, "aarch64", "linux", 4),
            DeviceClass::Pi
        );
        assert_eq!(
            DeviceClass::detect(false, "x86_64", "linux", 64),
            DeviceClass::Server
        );
        assert_eq!(
            DeviceClass::detect(false, "x86_64", "linux", 16),
            DeviceClass::Desktop
        );
        assert_eq!(
            DeviceClass::detect(true, "aarch64", "android", 8),
            DeviceClass::Phone
        );
        for class in ["phone", "pi", "laptop", "desktop", "server"] {
            let parsed: DeviceClass = class.parse().unwrap();
            assert_eq!(parsed.to_string(), class);
            assert!(parsed.default_watts_per_core() > 0.0);
        }
        assert!("toaster".parse::<DeviceClass>().is_err());
    }
}
