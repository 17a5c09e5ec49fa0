//! The platform boundary of the gate: one small trait per input that differs by platform.
//!
//! [`PowerProbe`] reads the power source and [`IdleProbe`] the user's idle time. Each returns
//! a reading that says when it could not be read
//! ([`PowerSource::Unknown`](super::power::PowerSource::Unknown),
//! [`IdleSource::Unknown`](super::idle::IdleSource::Unknown)), and the gate closes on an
//! unknown input under every policy that reads it ([`gate`](super::gate)): a platform we
//! cannot read never counts as plugged in or idle. [`power_probe`] and [`idle_probe`] pick
//! this platform's readers:
//!
//! | platform | power | user idle | tested |
//! |---|---|---|---|
//! | Linux | sysfs `power_supply` ([`SysfsPower`], Linux rules) | logind, then `/dev` terminal access times ([`TerminalIdle`]) | here, on real and fabricated trees |
//! | Android | sysfs `power_supply` ([`SysfsPower`], Android rules) | none: unknown ([`NoReader`]) | the Android rules on fabricated trees; never on a device |
//! | macOS, Windows | the OS battery API through `starship-battery` ([`OsPower`](super::os::OsPower)) | the OS input idle counter through `system-idle-time` (`OsIdle`) | the mapping here; the platform code never compiled here |
//! | anything else | none: unknown | none: unknown | — |
//!
//! Android exposes the display and input state only to apps holding permissions a node does
//! not have, so user activity is unknown there: an Android node works under `always` or
//! `charging` (which do not look at it), and on power only where SELinux lets it list
//! `/sys/class/power_supply` (many builds do not, and then power is unknown too).
//!
//! Readers for other platforms implement the two traits; tests implement them with fakes.

use std::fmt;
use std::time::SystemTime;

use super::DeviceConfig;
#[cfg(target_os = "linux")]
use super::idle::TerminalIdle;
use super::idle::UserIdle;
use super::power::PowerReading;
#[cfg(any(target_os = "linux", target_os = "android"))]
use super::power::SysfsPower;

/// Reads where the machine's power comes from.
pub trait PowerProbe: Send + Sync + fmt::Debug {
    /// The power source now; [`PowerSource::Unknown`] when it cannot be read.
    fn read_power(&self) -> PowerReading;
}

/// Reads how long the user has been idle.
pub trait IdleProbe: Send + Sync + fmt::Debug {
    /// The user's idle time at `now`;
    /// [`IdleSource::Unknown`](super::idle::IdleSource::Unknown) when it cannot be read.
    fn read_idle(&self, now: SystemTime) -> UserIdle;
}

/// A probe for an input this platform has no reader for: always unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoReader;

impl PowerProbe for NoReader {
    fn read_power(&self) -> PowerReading {
        PowerReading::unknown()
    }
}

impl IdleProbe for NoReader {
    fn read_idle(&self, _now: SystemTime) -> UserIdle {
        UserIdle::unknown()
    }
}

/// This platform's power reader (see the module's table).
pub fn power_probe(cfg: &DeviceConfig) -> Box<dyn PowerProbe> {
    platform_power(cfg)
}

/// This platform's idle reader (see the module's table). On Linux the gate monitor asks
/// logind before it, where `use_logind` is set.
pub fn idle_probe(cfg: &DeviceConfig) -> Box<dyn IdleProbe> {
    platform_idle(cfg)
}

/// Whether this platform's user sessions live in systemd-logind.
pub const HAS_LOGIND: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
fn platform_power(cfg: &DeviceConfig) -> Box<dyn PowerProbe> {
    Box::new(SysfsPower::linux(cfg.power_supply_root.clone()))
}

#[cfg(target_os = "android")]
fn platform_power(cfg: &DeviceConfig) -> Box<dyn PowerProbe> {
    Box::new(SysfsPower::android(cfg.power_supply_root.clone()))
}

#[cfg(any(target_os = "macos", target_os = "windows"))]
fn platform_power(_cfg: &DeviceConfig) -> Box<dyn PowerProbe> {
    Box::new(super::os::OsPower)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "windows"
)))]
fn platform_power(_cfg: &DeviceConfig) -> Box<dyn PowerProbe> {
    Box::new(NoReader)
}

#[cfg(target_os = "linux")]
fn platform_idle(cfg: &DeviceConfig) -> Box<dyn IdleProbe> {
    Box::new(TerminalIdle::new(cfg.dev_root.clone()))
}

#[cfg(any(target_os = "macos", target_os = "windows"))]
fn platform_idle(_cfg: &DeviceConfig) -> Box<dyn IdleProbe> {
    Box::new(super::os::OsIdle)
}

// Android included: its input state is not readable without permissions (module docs).
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn platform_idle(_cfg: &DeviceConfig) -> Box<dyn IdleProbe> {
    Box::new(NoReader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::idle::IdleSource;

    #[test]
    fn no_reader_knows_nothing() {
        assert_eq!(NoReader.read_power(), PowerReading::unknown());
        assert!(!NoReader.read_power().is_known());
        let idle = NoReader.read_idle(SystemTime::now());
        assert_eq!(idle.source, IdleSource::Unknown);
        assert!(!idle.is_known());
        assert!(!idle.is_idle_for(0));
    }

    #[test]
    fn this_platform_has_readers() {
        let cfg = DeviceConfig::default();
        // Whatever the machine, reading must not panic; on Linux both are real readers.
        let power = power_probe(&cfg);
        let idle = idle_probe(&cfg);
        let _ = power.read_power();
        let _ = idle.read_idle(SystemTime::now());
        assert_eq!(HAS_LOGIND, cfg!(target_os = "linux"));
    }
}
