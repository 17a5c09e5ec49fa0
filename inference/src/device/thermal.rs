//! Temperature: the hottest zone of the sysfs thermal class.
//!
//! Each `thermal_zone*` directory has `temp` in millidegrees Celsius and a `type` naming the
//! sensor (`x86_pkg_temp`, `cpu-thermal`, `acpitz`, …). Zones that are disabled, unreadable
//! or report implausible values (some report -40 °C or 0 while their device sleeps, others
//! garbage) are skipped, so one broken sensor cannot close or hold open the gate.

use std::path::Path;

use super::sysfs::{read_parsed, read_trimmed};

/// The lowest and highest plausible readings, millidegrees Celsius.
const PLAUSIBLE_MILLI_C: std::ops::RangeInclusive<i64> = -30_000..=150_000;

/// The hottest zone at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ThermalReading {
    /// Its temperature, degrees Celsius.
    pub celsius: f32,
    /// Its `type` (or directory name when it has none).
    pub zone: String,
}

/// The hottest plausible zone under `root`, or `None` when there is none (VMs, containers).
pub fn read_hottest(root: &Path) -> Option<ThermalReading> {
    let entries = std::fs::read_dir(root).ok()?;
    let mut hottest: Option<(i64, String)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("thermal_zone") {
            continue;
        }
        let dir = entry.path();
        if read_trimmed(&dir.join("mode")).is_ok_and(|m| m == "disabled") {
            continue;
        }
        let Some(milli) = read_parsed::<i64>(&dir.join("temp")) else {
            continue;
        };
        if !PLAUSIBLE_MILLI_C.contains(&milli) {
            continue;
        }
        if hottest.as_ref().is_none_or(|(t, _)| milli > *t) {
            let zone = read_trimmed(&dir.join("type")).unwrap_or(name);
            hottest = Some((milli, zone));
        }
    }
    hottest.map(|(milli, zone)| ThermalReading {
        celsius: milli as f32 / 1000.0,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, n: u32, kind: &str, temp: &str) {
        let dir = root.join(format!("thermal_zone{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(dir.join("temp"), format!("{temp}\n")).unwrap();
    }

    #[test]
    fn hottest_plausible_zone_wins() {
        let tmp = tempfile::tempdir().unwrap();
        zone(tmp.path(), 0, "acpitz", "45000");
        zone(tmp.path(), 1, "x86_pkg_temp", "71500");
        zone(tmp.path(), 2, "broken", "999999");
        zone(tmp.path(), 3, "garbage", "hot");
        std::fs::create_dir_all(tmp.path().join("cooling_device0")).unwrap();
        let r = read_hottest(tmp.path()).unwrap();
        assert_eq!(r.zone, "x86_pkg_temp");
        assert!((r.celsius - 71.5).abs() < 1e-3);
    }

    #[test]
    fn disabled_zone_is_skipped_and_missing_root_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        zone(tmp.path(), 0, "cpu-thermal", "90000");
        std::fs::write(tmp.path().join("thermal_zone0/mode"), "disabled\n").unwrap();
        assert_eq!(read_hottest(tmp.path()), None);
        assert_eq!(read_hottest(&tmp.path().join("absent")), None);
    }
}
