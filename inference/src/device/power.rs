//! Power source: external power, battery, or unknown, from the sysfs power supply class.
//!
//! Each entry of `/sys/class/power_supply` has a `type`. Mains, USB (all USB flavours, USB-C
//! included), UPS and wireless chargers report `online`; batteries report `status`,
//! `capacity` and sometimes `scope` (`Device` for a mouse or headset battery, which says
//! nothing about the machine's own power and is ignored).
//!
//! The rules ([`classify`]):
//! * no system battery at all (desktops, servers, Pis) is external power, unless a UPS
//!   supply reports that it is offline (the site lost mains and the UPS battery is draining);
//! * any Mains, USB, UPS or wireless supply online is external power;
//! * a battery that is `Charging` is on external power, even where the charger has no entry;
//! * `Full` and `Not charging` count as plugged in when the machine exposes no charger entry
//!   at all; where charger entries exist and all are offline, the machine is on battery;
//! * a missing or unreadable directory is [`PowerSource::Unknown`], and the gate closes under
//!   the policies that need external power: a machine whose power cannot be read may be a
//!   laptop on battery.
//!
//! **Android** ([`classify_android`]) uses the same layout (`ac`, `usb`, `wireless` supplies
//! typed `Mains`, `USB`, `Wireless` with `online`; `battery` typed `Battery` with `status` and
//! `capacity`; vendor entries such as `bms` or `main` with other types are ignored) and the
//! same rules, but a listing without a system battery is [`PowerSource::Unknown`]: every
//! Android device has one, so not seeing it means the kernel or SELinux hid it, not that the
//! device is a desktop.
//!
//! [`SysfsPower`] is the [`PowerProbe`] for both layouts. On the real `/sys` of a Linux
//! machine the maintained `starship-battery` crate adds the battery's energy rate and time to
//! full or empty ([`battery_detail`]), which it normalises across drivers that report energy
//! (µWh) or charge (µAh); the crate has no Android support, so Android readings go without.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::probe::PowerProbe;
use super::sysfs::{read_parsed, read_trimmed};

/// The real sysfs power supply directory, the only one `starship-battery` can read.
pub const SYSFS_POWER_SUPPLY: &str = "/sys/class/power_supply";

/// What kind of supply a sysfs entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupplyKind {
    /// An AC adapter.
    Mains,
    /// A USB port or USB-C/PD charger (`USB`, `USB_C`, `USB_PD`, `USB_DCP`, …).
    Usb,
    /// An uninterruptible power supply.
    Ups,
    /// A wireless (Qi) charger.
    Wireless,
    /// A battery.
    Battery,
    /// Anything else the kernel reports.
    Other(String),
}

impl SupplyKind {
    fn parse(s: &str) -> Self {
        match s {
            "Mains" => Self::Mains,
            "UPS" => Self::Ups,
            "Wireless" => Self::Wireless,
            "Battery" => Self::Battery,
            s if s.starts_with("USB") => Self::Usb,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether the supply feeds the machine from outside (it reports `online`).
    pub fn is_external(&self) -> bool {
        matches!(self, Self::Mains | Self::Usb | Self::Ups | Self::Wireless)
    }
}

/// A battery's `status` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatteryStatus {
    /// Charging.
    Charging,
    /// Discharging: running on it.
    Discharging,
    /// Full.
    Full,
    /// Plugged in but held (charge thresholds).
    NotCharging,
    /// The driver does not know.
    Unknown,
}

impl BatteryStatus {
    fn parse(s: &str) -> Self {
        match s {
            "Charging" => Self::Charging,
            "Discharging" => Self::Discharging,
            "Full" => Self::Full,
            "Not charging" => Self::NotCharging,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for BatteryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Charging => "charging",
            Self::Discharging => "discharging",
            Self::Full => "full",
            Self::NotCharging => "not charging",
            Self::Unknown => "unknown",
        })
    }
}

/// One entry of the power supply class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supply {
    /// Directory name (`AC`, `BAT0`, `ucsi-source-psy-USBC000:001`, …).
    pub name: String,
    /// Its `type`.
    pub kind: SupplyKind,
    /// Its `online` attribute, for external supplies.
    pub online: Option<bool>,
    /// `scope` is `Device`: a peripheral's battery, not the machine's.
    pub peripheral: bool,
    /// Its `status`, for batteries.
    pub status: Option<BatteryStatus>,
    /// Charge in percent, from `capacity` or from `energy_now/energy_full`.
    pub percent: Option<u8>,
}

/// Where the machine's power comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerSource {
    /// Mains, USB, UPS, a wireless charger, or no battery to run from.
    External,
    /// The machine runs from its battery (or a UPS on battery).
    Battery,
    /// The power source could not be read: the power supply directory is missing or
    /// unreadable, or this platform has no reader. The machine may be on battery.
    Unknown,
}

/// Battery details from `starship-battery` (real `/sys` only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatteryDetail {
    /// Charge or discharge rate, milliwatts.
    pub energy_rate_mw: u32,
    /// Time to full charge, seconds, while charging.
    pub time_to_full_secs: Option<u64>,
    /// Time to empty, seconds, while discharging.
    pub time_to_empty_secs: Option<u64>,
}

/// The power source and battery state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerReading {
    /// Where power comes from.
    pub source: PowerSource,
    /// Whether the machine has a system battery.
    pub has_battery: bool,
    /// Mean charge of the system batteries (or the UPS on battery), percent.
    pub battery_percent: Option<u8>,
    /// Status of the first system battery.
    pub battery_status: Option<BatteryStatus>,
    /// Rate and times from `starship-battery`, when read from the real `/sys`.
    pub detail: Option<BatteryDetail>,
}

impl PowerReading {
    /// A reading for a directory that could not be read.
    pub fn unknown() -> Self {
        Self {
            source: PowerSource::Unknown,
            has_battery: false,
            battery_percent: None,
            battery_status: None,
            detail: None,
        }
    }

    /// Whether the power source is known.
    pub fn is_known(&self) -> bool {
        self.source != PowerSource::Unknown
    }
}

/// Why the power supply directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The directory is missing or unreadable (containers often have no `/sys/class/power_supply`).
    #[error("cannot list power supplies in {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Reads every entry of a power supply directory. Entries without a readable `type` are
/// skipped: a half-initialised driver must not hide the others.
pub fn read_supplies(root: &Path) -> Result<Vec<Supply>, PowerError> {
    let entries = std::fs::read_dir(root).map_err(|source| PowerError::ReadDir {
        path: root.to_owned(),
        source,
    })?;
    let mut supplies = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PowerError::ReadDir {
            path: root.to_owned(),
            source,
        })?;
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = match read_trimmed(&dir.join("type")) {
            Ok(t) => SupplyKind::parse(&t),
            Err(e) => {
                debug!(supply = %name, error = %e, "power supply without a readable type skipped");
                continue;
            }
        };
        let online = if kind.is_external() {
            read_parsed::<u8>(&dir.join("online")).map(|v| v != 0)
        } else {
            None
        };
        let peripheral = read_trimmed(&dir.join("scope")).is_ok_and(|s| s == "Device");
        let (status, percent) = if kind == SupplyKind::Battery || kind == SupplyKind::Ups {
            (
                read_trimmed(&dir.join("status"))
                    .ok()
                    .map(|s| BatteryStatus::parse(&s)),
                read_percent(&dir),
            )
        } else {
            (None, None)
        };
        supplies.push(Supply {
            name,
            kind,
            online,
            peripheral,
            status,
            percent,
        });
    }
    // Directory order is arbitrary; sort so "the first battery" is stable (BAT0 before BAT1).
    supplies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(supplies)
}

/// Charge in percent from `capacity`, else from `energy_now/energy_full` or
/// `charge_now/charge_full` (some drivers report only those).
fn read_percent(dir: &Path) -> Option<u8> {
    if let Some(c) = read_parsed::<i64>(&dir.join("capacity")) {
        return Some(c.clamp(0, 100) as u8);
    }
    for (now, full) in [("energy_now", "energy_full"), ("charge_now", "charge_full")] {
        if let (Some(n), Some(f)) = (
            read_parsed::<u64>(&dir.join(now)),
            read_parsed::<u64>(&dir.join(full)),
        ) && f > 0
        {
            // Rounded percentage; in u128 the products of two u64 cannot overflow.
            let (n, f) = (u128::from(n.min(f)), u128::from(f));
            let percent = n.checked_mul(100)?.checked_add(f / 2)?.checked_div(f)?;
            return u8::try_from(percent).ok();
        }
    }
    None
}

/// Applies the module's rules to a list of supplies.
pub fn classify(supplies: &[Supply]) -> PowerReading {
    let batteries: Vec<&Supply> = supplies
        .iter()
        .filter(|s| s.kind == SupplyKind::Battery && !s.peripheral)
        .collect();
    let externals: Vec<&Supply> = supplies
        .iter()
        .filter(|s| s.kind.is_external() && !s.peripheral)
        .collect();
    let any_online = externals.iter().any(|s| s.online == Some(true));
    let has_battery = !batteries.is_empty();
    let battery_status = batteries.first().and_then(|b| b.status);
    let known: Vec<u32> = batteries
        .iter()
        .filter_map(|b| b.percent.map(u32::from))
        .collect();
    let mut battery_percent = if known.is_empty() {
        None
    } else {
        // Percentages (at most 100 each) of a handful of batteries: the sum cannot overflow.
        let n = known.len() as u32;
        let sum = known.iter().fold(0u32, |a, p| a.saturating_add(*p));
        sum.saturating_add(n / 2)
            .checked_div(n)
            .and_then(|p| u8::try_from(p).ok())
    };

    // A charging battery has a source even where the charger has no entry; Full and
    // Not charging mean plugged in only where no charger reports its state at all.
    let charging = batteries
        .iter()
        .any(|b| b.status == Some(BatteryStatus::Charging));
    let held_without_charger_entry = externals.iter().all(|s| s.online.is_none())
        && batteries.iter().all(|b| {
            matches!(
                b.status,
                Some(BatteryStatus::Full | BatteryStatus::NotCharging)
            )
        });

    let source = if any_online {
        PowerSource::External
    } else if !has_battery {
        let ups_offline = externals
            .iter()
            .find(|s| s.kind == SupplyKind::Ups && s.online == Some(false));
        match ups_offline {
            Some(ups) => {
                battery_percent = ups.percent;
                PowerSource::Battery
            }
            None => PowerSource::External,
        }
    } else if charging || held_without_charger_entry {
        PowerSource::External
    } else {
        PowerSource::Battery
    };

    PowerReading {
        source,
        has_battery,
        battery_percent,
        battery_status,
        detail: None,
    }
}

/// Applies the Android rules: the Linux ones, except that a listing without a system battery
/// is unknown (see the module docs).
pub fn classify_android(supplies: &[Supply]) -> PowerReading {
    let reading = classify(supplies);
    if reading.has_battery {
        reading
    } else {
        debug!("no battery listed on Android: power source unknown");
        PowerReading::unknown()
    }
}

/// Which rules a sysfs power supply listing is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysfsLayout {
    /// Desktop and server Linux: no battery means mains ([`classify`]).
    Linux,
    /// Android: no battery means the listing is hidden ([`classify_android`]).
    Android,
}

/// The sysfs power probe: a power supply directory read with one layout's rules.
#[derive(Debug, Clone)]
pub struct SysfsPower {
    root: PathBuf,
    layout: SysfsLayout,
}

impl SysfsPower {
    /// Linux rules on `root` (`/sys/class/power_supply` on a real machine).
    pub fn linux(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            layout: SysfsLayout::Linux,
        }
    }

    /// Android rules on `root`.
    pub fn android(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            layout: SysfsLayout::Android,
        }
    }
}

impl PowerProbe for SysfsPower {
    fn read_power(&self) -> PowerReading {
        match self.layout {
            SysfsLayout::Linux => read_power(&self.root),
            SysfsLayout::Android => read_power_android(&self.root),
        }
    }
}

/// Reads and classifies the power supplies under `root` with the Linux rules. A missing or
/// unreadable directory gives [`PowerSource::Unknown`]; on the real `/sys`, battery details
/// are added.
pub fn read_power(root: &Path) -> PowerReading {
    match read_supplies(root) {
        Ok(supplies) => {
            let mut reading = classify(&supplies);
            if reading.has_battery && root == Path::new(SYSFS_POWER_SUPPLY) {
                reading.detail = battery_detail();
            }
            reading
        }
        Err(e) => {
            debug!(error = %e, "power source unknown");
            PowerReading::unknown()
        }
    }
}

/// Reads and classifies the power supplies under `root` with the Android rules.
pub fn read_power_android(root: &Path) -> PowerReading {
    match read_supplies(root) {
        Ok(supplies) => classify_android(&supplies),
        Err(e) => {
            debug!(error = %e, "power source unknown");
            PowerReading::unknown()
        }
    }
}

/// Energy rate and time to full or empty of the first system battery, from the real `/sys`
/// through `starship-battery`; `None` when there is no battery or it cannot be read.
#[cfg(target_os = "linux")]
pub fn battery_detail() -> Option<BatteryDetail> {
    let manager = starship_battery::Manager::new().ok()?;
    let battery = manager.batteries().ok()?.find_map(Result::ok)?;
    Some(detail_of(&battery))
}

/// Energy rate and time to full or empty: not available on this platform.
#[cfg(not(target_os = "linux"))]
pub fn battery_detail() -> Option<BatteryDetail> {
    None
}

/// The rate and times `starship-battery` reports for one battery.
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
pub(crate) fn detail_of(battery: &starship_battery::Battery) -> BatteryDetail {
    use starship_battery::units::power::milliwatt;
    use starship_battery::units::time::second;

    let rate = battery.energy_rate().get::<milliwatt>();
    let secs = |t: starship_battery::units::Time| {
        let s = t.get::<second>();
        (s.is_finite() && s >= 0.0).then_some(s as u64)
    };
    BatteryDetail {
        energy_rate_mw: if rate.is_finite() && rate > 0.0 {
            rate as u32
        } else {
            0
        },
        time_to_full_secs: battery.time_to_full().and_then(secs),
        time_to_empty_secs: battery.time_to_empty().and_then(secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn battery(status: BatteryStatus, percent: u8) -> Supply {
        Supply {
            name: "BAT0".into(),
            kind: SupplyKind::Battery,
            online: None,
            peripheral: false,
            status: Some(status),
            percent: Some(percent),
        }
    }

    fn ac(online: bool) -> Supply {
        Supply {
            name: "AC".into(),
            kind: SupplyKind::Mains,
            online: Some(online),
            peripheral: false,
            status: None,
            percent: None,
        }
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(SupplyKind::parse("USB_C"), SupplyKind::Usb);
        assert_eq!(SupplyKind::parse("USB"), SupplyKind::Usb);
        assert_eq!(SupplyKind::parse("Mains"), SupplyKind::Mains);
        assert_eq!(
            SupplyKind::parse("Something"),
            SupplyKind::Other("Something".into())
        );
        assert_eq!(
            BatteryStatus::parse("Not charging"),
            BatteryStatus::NotCharging
        );
        assert_eq!(BatteryStatus::parse("weird"), BatteryStatus::Unknown);
    }

    #[test]
    fn no_supplies_is_external_without_battery() {
        let r = classify(&[]);
        assert_eq!(r.source, PowerSource::External);
        assert!(!r.has_battery);
        assert_eq!(r.battery_percent, None);
    }

    #[test]
    fn laptop_cases() {
        let r = classify(&[ac(true), battery(BatteryStatus::Charging, 40)]);
        assert_eq!(r.source, PowerSource::External);
        assert_eq!(r.battery_percent, Some(40));
        let r = classify(&[ac(false), battery(BatteryStatus::Discharging, 54)]);
        assert_eq!(r.source, PowerSource::Battery);
        // Firmware that still says Full just after unplugging: the charger entry wins.
        let r = classify(&[ac(false), battery(BatteryStatus::Full, 100)]);
        assert_eq!(r.source, PowerSource::Battery);
        // No charger entry at all: Full and Not charging mean plugged in.
        let r = classify(&[battery(BatteryStatus::NotCharging, 80)]);
        assert_eq!(r.source, PowerSource::External);
        let r = classify(&[battery(BatteryStatus::Discharging, 80)]);
        assert_eq!(r.source, PowerSource::Battery);
        let r = classify(&[battery(BatteryStatus::Unknown, 80)]);
        assert_eq!(r.source, PowerSource::Battery);
    }

    #[test]
    fn android_without_a_battery_is_unknown() {
        // A phone always has a battery: a listing without one was hidden from us.
        assert_eq!(classify_android(&[]).source, PowerSource::Unknown);
        assert_eq!(classify_android(&[ac(true)]).source, PowerSource::Unknown);
        let mut usb = ac(true);
        usb.kind = SupplyKind::Usb;
        let r = classify_android(&[usb.clone(), battery(BatteryStatus::Charging, 57)]);
        assert_eq!(r.source, PowerSource::External);
        assert_eq!(r.battery_percent, Some(57));
        usb.online = Some(false);
        let r = classify_android(&[usb, battery(BatteryStatus::Discharging, 57)]);
        assert_eq!(r.source, PowerSource::Battery);
        // Where a battery is listed the rules are Linux's.
        for supplies in [
            vec![ac(false), battery(BatteryStatus::Full, 100)],
            vec![battery(BatteryStatus::NotCharging, 80)],
        ] {
            assert_eq!(classify_android(&supplies), classify(&supplies));
        }
    }

    #[test]
    fn two_batteries_average() {
        let mut b1 = battery(BatteryStatus::Discharging, 30);
        b1.name = "BAT1".into();
        let r = classify(&[battery(BatteryStatus::Discharging, 61), b1]);
        assert_eq!(r.battery_percent, Some(46));
        assert_eq!(r.source, PowerSource::Battery);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn arb_supply() -> impl Strategy<Value = Supply> {
            (
                prop_oneof![
                    Just(SupplyKind::Mains),
                    Just(SupplyKind::Usb),
                    Just(SupplyKind::Ups),
                    Just(SupplyKind::Wireless),
                    Just(SupplyKind::Battery),
                    Just(SupplyKind::Other("Whatever".into())),
                ],
                proptest::option::of(any::<bool>()),
                proptest::option::of(prop_oneof![
                    Just(BatteryStatus::Charging),
                    Just(BatteryStatus::Discharging),
                    Just(BatteryStatus::Full),
                    Just(BatteryStatus::NotCharging),
                    Just(BatteryStatus::Unknown),
                ]),
                proptest::option::of(0u8..=100),
                0u8..10,
            )
                .prop_map(|(kind, online, status, percent, n)| Supply {
                    name: format!("S{n}"),
                    kind,
                    online,
                    peripheral: false,
                    status,
                    percent,
                })
        }

        proptest! {
            /// A peripheral's battery never changes the machine's reading.
            #[test]
            fn peripherals_change_nothing(
                supplies in proptest::collection::vec(arb_supply(), 0..6),
                mut extra in arb_supply(),
            ) {
                extra.peripheral = true;
                let mut with = supplies.clone();
                with.push(extra);
                prop_assert_eq!(classify(&supplies), classify(&with));
            }

            /// Any external supply online means external power.
            #[test]
            fn online_supply_is_external(
                mut supplies in proptest::collection::vec(arb_supply(), 0..6),
                mut ac in arb_supply(),
            ) {
                ac.kind = SupplyKind::Mains;
                ac.online = Some(true);
                supplies.push(ac);
                prop_assert_eq!(classify(&supplies).source, PowerSource::External);
            }
        }
    }
}
