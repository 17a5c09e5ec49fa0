//! Device awareness against fabricated sysfs, procfs and /dev trees, fake probes and this
//! machine's own /sys and /dev: power sources (Linux and Android rules), idle detection, the
//! gate under each policy (failing closed on inputs it cannot read), RAPL and estimated
//! energy, and the gate monitor.

use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crank_inference::device::energy::{EnergyMeter, Rapl};
use crank_inference::device::idle::{IdleSource, TerminalIdle, UserIdle, tty_idle};
use crank_inference::device::power::{
    BatteryStatus, PowerReading, PowerSource, SysfsPower, read_power,
};
use crank_inference::device::{
    DeviceConfig, GateMonitor, GateState, IdleProbe, PowerProbe, Sampler, Thresholds, UnknownInput,
    evaluate, gate_info, power_info,
};
use crank_protocol::messages::{EnergyMethod, GateReason, RunPolicy};
use tempfile::TempDir;

/// A fabricated machine: sysfs classes, /proc and /dev under one temp dir.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new() -> Self {
        let tree = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        for sub in ["power_supply", "thermal", "powercap", "proc", "dev/pts"] {
            fs::create_dir_all(tree.path(sub)).unwrap();
        }
        tree
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Writes a power supply entry with the given attributes. Each file is replaced
    /// atomically, as sysfs attributes never read half-written while the monitor samples.
    fn supply(&self, name: &str, attrs: &[(&str, &str)]) {
        let dir = self.path("power_supply").join(name);
        fs::create_dir_all(&dir).unwrap();
        for (attr, value) in attrs {
            let tmp = self.path(&format!("{name}.{attr}.tmp"));
            fs::write(&tmp, format!("{value}\n")).unwrap();
            fs::rename(&tmp, dir.join(attr)).unwrap();
        }
    }

    fn ac(&self, online: bool) {
        self.supply(
            "AC",
            &[
                ("type", "Mains"),
                ("online", if online { "1" } else { "0" }),
            ],
        );
    }

    fn battery(&self, status: &str, capacity: &str) {
        self.supply(
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", status),
                ("capacity", capacity),
                ("scope", "System"),
            ],
        );
    }

    fn thermal_zone(&self, n: u32, kind: &str, millicelsius: i64) {
        let dir = self.path("thermal").join(format!("thermal_zone{n}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        fs::write(dir.join("temp"), format!("{millicelsius}\n")).unwrap();
    }

    /// A terminal node whose last input was `ago` before now.
    fn tty(&self, rel: &str, ago: Duration) {
        let path = self.path("dev").join(rel);
        File::create(&path).unwrap();
        let t = SystemTime::now() - ago;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(
                FileTimes::new()
                    .set_accessed(t)
                    .set_modified(SystemTime::now()),
            )
            .unwrap();
    }

    fn proc_stat(&self, busy_ticks: u64) {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = format!(
            "cpu  {busy_ticks} 0 0 5000 0 0 0 0 0 0\ncpu0 {busy_ticks} 0 0 5000 0 0 0 0 0 0\nintr 0\n"
        );
        fs::write(self.path("proc").join("stat"), stat).unwrap();
    }

    fn rapl_zone(&self, dir: &str, name: &str, energy_uj: u64, max_uj: u64) {
        let d = self.path("powercap").join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("name"), format!("{name}\n")).unwrap();
        fs::write(d.join("energy_uj"), format!("{energy_uj}\n")).unwrap();
        fs::write(d.join("max_energy_range_uj"), format!("{max_uj}\n")).unwrap();
    }

    fn set_energy(&self, dir: &str, energy_uj: u64) {
        let d = self.path("powercap").join(dir);
        fs::write(d.join("energy_uj"), format!("{energy_uj}\n")).unwrap();
    }

    /// A configuration reading only this tree; CPU load never closes the gate so the tests
    /// do not depend on what else this machine is doing.
    fn config(&self, policy: RunPolicy) -> DeviceConfig {
        DeviceConfig {
            power_supply_root: self.path("power_supply"),
            thermal_root: self.path("thermal"),
            powercap_root: self.path("powercap"),
            proc_root: self.path("proc"),
            dev_root: self.path("dev"),
            use_logind: false,
            run_when: policy,
            cpu_busy_percent: 100,
            cpu_resume_percent: 100,
            sample_interval_ms: 200,
            ..DeviceConfig::default()
        }
    }

    fn gate(&self, policy: RunPolicy) -> GateState {
        let cfg = self.config(policy);
        let mut sampler = Sampler::new(cfg.clone()).unwrap();
        let readings = sampler.sample(None, false, SystemTime::now());
        evaluate(policy, &readings, &Thresholds::from(&cfg))
    }
}

const POLICIES: [RunPolicy; 4] = [
    RunPolicy::Always,
    RunPolicy::Idle,
    RunPolicy::Charging,
    RunPolicy::ChargingIdle,
];

#[test]
fn laptop_on_ac_charging_is_external() {
    let t = Tree::new();
    t.ac(true);
    t.battery("Charging", "67");
    let p = read_power(&t.path("power_supply"));
    assert_eq!(p.source, PowerSource::External);
    assert!(p.has_battery);
    assert_eq!(p.battery_percent, Some(67));
    assert_eq!(p.battery_status, Some(BatteryStatus::Charging));
    assert!(t.gate(RunPolicy::ChargingIdle).is_open());
}

#[test]
fn laptop_on_ac_full_or_not_charging_is_external() {
    for status in ["Full", "Not charging"] {
        let t = Tree::new();
        t.ac(true);
        t.battery(status, "100");
        assert_eq!(
            read_power(&t.path("power_supply")).source,
            PowerSource::External,
            "{status}"
        );
        assert!(t.gate(RunPolicy::Charging).is_open(), "{status}");
    }
}

#[test]
fn laptop_on_battery_closes_charging_policies() {
    let t = Tree::new();
    t.ac(false);
    t.battery("Discharging", "54");
    let p = read_power(&t.path("power_supply"));
    assert_eq!(p.source, PowerSource::Battery);
    let state = t.gate(RunPolicy::ChargingIdle);
    assert_eq!(
        state,
        GateState::Closed(GateReason::OnBattery { percent: Some(54) })
    );
    assert_eq!(state.reason().unwrap().to_string(), "on battery 54 %");
    assert_eq!(t.gate(RunPolicy::Charging), state);
    assert!(t.gate(RunPolicy::Always).is_open());
    assert!(
        t.gate(RunPolicy::Idle).is_open(),
        "no terminals: nobody is logged in"
    );
}

#[test]
fn usb_c_supply_online_is_external() {
    let t = Tree::new();
    t.ac(false);
    t.supply(
        "ucsi-source-psy-USBC000:001",
        &[
            ("type", "USB"),
            ("usb_type", "C [PD] PD_PPS"),
            ("online", "1"),
        ],
    );
    t.battery("Not charging", "80");
    assert_eq!(
        read_power(&t.path("power_supply")).source,
        PowerSource::External
    );
}

#[test]
fn desktop_without_battery_is_external() {
    let t = Tree::new();
    t.ac(false); // some boards expose an offline AC entry; with no battery it means nothing
    let p = read_power(&t.path("power_supply"));
    assert_eq!(p.source, PowerSource::External);
    assert!(!p.has_battery);
    assert_eq!(p.battery_percent, None);
    let empty = Tree::new();
    assert_eq!(
        read_power(&empty.path("power_supply")).source,
        PowerSource::External
    );
}

#[test]
fn ups_online_is_external_and_ups_on_battery_is_battery() {
    let t = Tree::new();
    t.supply(
        "ups0",
        &[
            ("type", "UPS"),
            ("online", "1"),
            ("capacity", "100"),
            ("status", "Full"),
        ],
    );
    assert_eq!(
        read_power(&t.path("power_supply")).source,
        PowerSource::External
    );
    t.supply(
        "ups0",
        &[
            ("online", "0"),
            ("capacity", "73"),
            ("status", "Discharging"),
        ],
    );
    let p = read_power(&t.path("power_supply"));
    assert_eq!(p.source, PowerSource::Battery);
    assert_eq!(p.battery_percent, Some(73));
    assert_eq!(
        t.gate(RunPolicy::Charging),
        GateState::Closed(GateReason::OnBattery { percent: Some(73) })
    );
}

#[test]
fn peripheral_battery_is_ignored() {
    let t = Tree::new();
    t.supply(
        "hidpp_battery_0",
        &[
            ("type", "Battery"),
            ("scope", "Device"),
            ("status", "Discharging"),
            ("capacity", "12"),
        ],
    );
    let p = read_power(&t.path("power_supply"));
    assert_eq!(p.source, PowerSource::External);
    assert!(!p.has_battery);
    assert_eq!(p.battery_percent, None);
}

#[test]
fn missing_power_supply_dir_is_unknown_and_closes_charging_policies() {
    let t = Tree::new();
    fs::remove_dir(t.path("power_supply")).unwrap();
    assert_eq!(
        read_power(&t.path("power_supply")).source,
        PowerSource::Unknown
    );
    for p in [RunPolicy::Charging, RunPolicy::ChargingIdle] {
        assert_eq!(
            t.gate(p),
            GateState::ClosedUnknown(UnknownInput::Power),
            "{p}"
        );
    }
    assert!(t.gate(RunPolicy::Always).is_open());
    assert!(
        t.gate(RunPolicy::Idle).is_open(),
        "idle does not look at power, and a readable /dev without terminals is idle"
    );
    // The retired key is accepted and changes nothing.
    let cfg = DeviceConfig {
        unknown_power_is_external: true,
        ..t.config(RunPolicy::Charging)
    };
    let readings = Sampler::new(cfg.clone())
        .unwrap()
        .sample(None, false, SystemTime::now());
    let state = evaluate(RunPolicy::Charging, &readings, &Thresholds::from(&cfg));
    assert_eq!(state, GateState::ClosedUnknown(UnknownInput::Power));
    assert_eq!(power_info(&readings, 0).external_power, None);
    // Peers see the closest reason the wire has.
    let info = gate_info(RunPolicy::Charging, &state);
    assert!(!info.open);
    assert_eq!(info.reason, Some(GateReason::OnBattery { percent: None }));
}

#[test]
fn hot_cpu_closes_every_policy() {
    let t = Tree::new();
    t.ac(true);
    t.thermal_zone(0, "acpitz", 41_000);
    t.thermal_zone(1, "x86_pkg_temp", 86_500);
    for p in POLICIES {
        assert_eq!(
            t.gate(p),
            GateState::Closed(GateReason::TooHot {
                celsius: 87,
                limit: 80
            }),
            "{p}"
        );
    }
    t.thermal_zone(1, "x86_pkg_temp", 62_000);
    assert!(t.gate(RunPolicy::ChargingIdle).is_open());
}

#[test]
fn idle_from_tty_access_times() {
    let t = Tree::new();
    t.ac(true);
    t.tty("tty1", Duration::from_secs(7_200));
    t.tty("pts/0", Duration::from_secs(40));
    t.tty("ptmx", Duration::ZERO); // not a terminal: ignored
    t.tty("ttyS0", Duration::ZERO); // a serial line, often read by daemons: ignored
    let idle = tty_idle(&t.path("dev"), SystemTime::now());
    assert_eq!(idle.source, IdleSource::TtyAccess);
    let secs = idle.idle_secs.unwrap();
    assert!((40..=42).contains(&secs), "{secs}");

    let state = t.gate(RunPolicy::ChargingIdle);
    match &state {
        GateState::Closed(GateReason::UserActive {
            idle_secs,
            required_secs: 180,
        }) => {
            assert!((40..=42).contains(idle_secs));
        }
        other => panic!("expected user active, got {other}"),
    }
    assert!(state.to_string().contains("user active 4"), "{state}");
    assert!(t.gate(RunPolicy::Charging).is_open());

    t.tty("pts/0", Duration::from_secs(600));
    assert!(t.gate(RunPolicy::ChargingIdle).is_open());
}

#[test]
fn no_terminals_means_no_session_and_idle() {
    let t = Tree::new();
    let idle = tty_idle(&t.path("dev"), SystemTime::now());
    assert_eq!(idle.idle_secs, None);
    assert_eq!(idle.source, IdleSource::TtyAccess);
    assert!(idle.is_idle_for(u64::MAX));
}

#[test]
fn unreadable_dev_is_unknown_and_closes_idle_policies() {
    let t = Tree::new();
    t.ac(true);
    fs::remove_dir_all(t.path("dev")).unwrap();
    assert_eq!(
        tty_idle(&t.path("dev"), SystemTime::now()),
        UserIdle::unknown()
    );
    for p in [RunPolicy::Idle, RunPolicy::ChargingIdle] {
        assert_eq!(
            t.gate(p),
            GateState::ClosedUnknown(UnknownInput::UserActivity { required_secs: 180 }),
            "{p}"
        );
        assert_eq!(t.gate(p).to_string(), "closed: user activity unknown");
    }
    assert!(t.gate(RunPolicy::Always).is_open());
    assert!(t.gate(RunPolicy::Charging).is_open());
}

#[test]
fn each_policy_on_battery_with_active_user() {
    let t = Tree::new();
    t.ac(false);
    t.battery("Discharging", "30");
    t.tty("pts/1", Duration::from_secs(5));
    let open: Vec<bool> = POLICIES.iter().map(|&p| t.gate(p).is_open()).collect();
    assert_eq!(open, [true, false, false, false]);
    assert!(matches!(
        t.gate(RunPolicy::Idle),
        GateState::Closed(GateReason::UserActive { .. })
    ));
    assert!(matches!(
        t.gate(RunPolicy::Charging),
        GateState::Closed(GateReason::OnBattery { .. })
    ));
    // Power is checked before idleness, so the battery is the reason reported.
    assert!(matches!(
        t.gate(RunPolicy::ChargingIdle),
        GateState::Closed(GateReason::OnBattery { .. })
    ));
}

/// An Android phone's power supply class as its kernel lays it out: `ac`, `usb`,
/// `wireless` chargers reporting `online`, the `battery`, and vendor entries of other types.
fn android_phone(t: &Tree, usb_online: bool, status: &str, capacity: &str) {
    t.supply("ac", &[("type", "Mains"), ("online", "0")]);
    t.supply(
        "usb",
        &[
            ("type", "USB"),
            ("online", if usb_online { "1" } else { "0" }),
            ("present", "1"),
        ],
    );
    t.supply("wireless", &[("type", "Wireless"), ("online", "0")]);
    t.supply(
        "battery",
        &[
            ("type", "Battery"),
            ("status", status),
            ("capacity", capacity),
            ("health", "Good"),
        ],
    );
    t.supply("bms", &[("type", "BMS"), ("capacity", "0")]);
}

#[test]
fn android_phone_on_usb_and_on_battery() {
    let t = Tree::new();
    let probe = SysfsPower::android(t.path("power_supply"));
    android_phone(&t, true, "Charging", "57");
    let p = probe.read_power();
    assert_eq!(p.source, PowerSource::External);
    assert!(p.has_battery);
    assert_eq!(p.battery_percent, Some(57));
    assert_eq!(p.battery_status, Some(BatteryStatus::Charging));

    android_phone(&t, false, "Discharging", "56");
    let p = probe.read_power();
    assert_eq!(p.source, PowerSource::Battery);
    assert_eq!(p.battery_percent, Some(56));

    // Full on a wireless charger.
    android_phone(&t, false, "Full", "100");
    t.supply("wireless", &[("online", "1")]);
    assert_eq!(probe.read_power().source, PowerSource::External);
}

#[test]
fn android_listing_without_a_battery_or_unreadable_is_unknown() {
    let t = Tree::new();
    let probe = SysfsPower::android(t.path("power_supply"));
    // Linux reads an empty class as a desktop on mains; on a phone it means hidden.
    assert_eq!(probe.read_power().source, PowerSource::Unknown);
    assert_eq!(
        SysfsPower::linux(t.path("power_supply"))
            .read_power()
            .source,
        PowerSource::External
    );
    t.supply("usb", &[("type", "USB"), ("online", "1")]);
    assert_eq!(probe.read_power().source, PowerSource::Unknown);
    fs::remove_dir_all(t.path("power_supply")).unwrap();
    assert_eq!(probe.read_power(), PowerReading::unknown());
}

/// A power probe whose reading the test sets.
#[derive(Debug, Clone)]
struct FakePower(Arc<Mutex<PowerReading>>);

impl FakePower {
    fn new(reading: PowerReading) -> Self {
        Self(Arc::new(Mutex::new(reading)))
    }

    fn mains() -> PowerReading {
        PowerReading {
            source: PowerSource::External,
            has_battery: false,
            battery_percent: None,
            battery_status: None,
            detail: None,
        }
    }

    fn set(&self, reading: PowerReading) {
        *self.0.lock().unwrap() = reading;
    }
}

impl PowerProbe for FakePower {
    fn read_power(&self) -> PowerReading {
        self.0.lock().unwrap().clone()
    }
}

/// An idle probe whose reading the test sets.
#[derive(Debug, Clone)]
struct FakeIdle(Arc<Mutex<UserIdle>>);

impl FakeIdle {
    fn new(idle: UserIdle) -> Self {
        Self(Arc::new(Mutex::new(idle)))
    }

    fn set(&self, idle: UserIdle) {
        *self.0.lock().unwrap() = idle;
    }

    fn away() -> UserIdle {
        UserIdle {
            idle_secs: Some(3_600),
            source: IdleSource::System,
        }
    }
}

impl IdleProbe for FakeIdle {
    fn read_idle(&self, _now: SystemTime) -> UserIdle {
        *self.0.lock().unwrap()
    }
}

/// The gate under `policy` with the given readings, through a sampler on fake probes.
fn gate_with(policy: RunPolicy, power: PowerReading, idle: UserIdle) -> GateState {
    let t = Tree::new();
    let cfg = t.config(policy);
    let mut sampler = Sampler::with_probes(
        cfg.clone(),
        Box::new(FakePower::new(power)),
        Box::new(FakeIdle::new(idle)),
    )
    .unwrap();
    let readings = sampler.sample(None, false, SystemTime::now());
    evaluate(policy, &readings, &Thresholds::from(&cfg))
}

#[test]
fn unknown_power_closes_each_policy_that_reads_it_and_not_always() {
    let unknown = PowerReading::unknown();
    let expected = [
        (RunPolicy::Always, GateState::Open),
        (RunPolicy::Idle, GateState::Open),
        (
            RunPolicy::Charging,
            GateState::ClosedUnknown(UnknownInput::Power),
        ),
        (
            RunPolicy::ChargingIdle,
            GateState::ClosedUnknown(UnknownInput::Power),
        ),
    ];
    for (policy, state) in expected {
        assert_eq!(
            gate_with(policy, unknown.clone(), FakeIdle::away()),
            state,
            "{policy}"
        );
    }
    // The same probes with the power known: every policy opens.
    for policy in POLICIES {
        assert!(gate_with(policy, FakePower::mains(), FakeIdle::away()).is_open());
    }
}

#[test]
fn unknown_idle_closes_each_policy_that_reads_it_and_not_always() {
    let unknown = UserIdle::unknown();
    let closed = GateState::ClosedUnknown(UnknownInput::UserActivity { required_secs: 180 });
    let expected = [
        (RunPolicy::Always, GateState::Open),
        (RunPolicy::Idle, closed.clone()),
        (RunPolicy::Charging, GateState::Open),
        (RunPolicy::ChargingIdle, closed),
    ];
    for (policy, state) in expected {
        assert_eq!(
            gate_with(policy, FakePower::mains(), unknown),
            state,
            "{policy}"
        );
    }
    // Known to be nobody (no session) is idle, not unknown.
    let nobody = UserIdle {
        idle_secs: None,
        source: IdleSource::Logind,
    };
    for policy in POLICIES {
        assert!(gate_with(policy, FakePower::mains(), nobody).is_open());
    }
}

#[tokio::test]
async fn monitor_on_fake_probes_publishes_unknown_inputs() {
    let t = Tree::new();
    let power = FakePower::new(FakePower::mains());
    let idle = FakeIdle::new(FakeIdle::away());
    let monitor = GateMonitor::start_with_probes(
        t.config(RunPolicy::ChargingIdle),
        Box::new(power.clone()),
        Box::new(idle.clone()),
    )
    .await
    .unwrap();
    assert!(monitor.snapshot().state.is_open());
    let mut rx = monitor.subscribe();

    power.set(PowerReading::unknown());
    let state = changed_within(&mut rx).await;
    assert_eq!(state, GateState::ClosedUnknown(UnknownInput::Power));
    assert_eq!(
        gate_info(RunPolicy::ChargingIdle, &state).reason,
        Some(GateReason::OnBattery { percent: None })
    );

    // Power comes back, idleness is lost: a different reason wakes receivers again.
    // Idle first: a sample between the two writes sees power still unknown, no change.
    idle.set(UserIdle::unknown());
    power.set(FakePower::mains());
    assert_eq!(
        changed_within(&mut rx).await,
        GateState::ClosedUnknown(UnknownInput::UserActivity { required_secs: 180 })
    );
    idle.set(FakeIdle::away());
    assert!(changed_within(&mut rx).await.is_open());
}

#[test]
fn this_machines_sys_and_dev_read_as_known_where_readable() {
    // The Linux readers on the real machine: wherever the sources can be listed, the
    // readings are known (a machine without batteries is on mains; one nobody is logged in
    // to is idle), so no policy closes for an unknown input.
    let cfg = DeviceConfig::default();
    let power = SysfsPower::linux(&cfg.power_supply_root).read_power();
    let supplies = fs::read_dir(&cfg.power_supply_root).map(|d| d.count());
    match supplies {
        Ok(0) => {
            assert_eq!(power.source, PowerSource::External);
            assert!(!power.has_battery);
        }
        Ok(_) => assert!(power.is_known(), "{power:?}"),
        Err(_) => assert_eq!(power.source, PowerSource::Unknown),
    }
    let pts_readable = match fs::read_dir(cfg.dev_root.join("pts")) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    let dev_readable = fs::read_dir(&cfg.dev_root).is_ok() && pts_readable;
    let idle = TerminalIdle::new(&cfg.dev_root).read_idle(SystemTime::now());
    assert_eq!(idle.is_known(), dev_readable, "{idle:?}");
    if power.is_known() && idle.is_known() {
        let readings = crank_inference::device::Readings {
            power,
            idle,
            cpu: None,
            thermal: None,
            paused: false,
        };
        for policy in POLICIES {
            let state = evaluate(policy, &readings, &Thresholds::default());
            assert!(
                !matches!(state, GateState::ClosedUnknown(_)),
                "{policy}: {state}"
            );
        }
    }
}

#[test]
fn rapl_energy_is_attributed_by_cpu_share() {
    let t = Tree::new();
    t.rapl_zone("intel-rapl:0", "package-0", 1_000_000, 262_143_328_850);
    t.rapl_zone("intel-rapl:0:0", "core", 5, 262_143_328_850); // part of package-0
    t.rapl_zone("intel-rapl:1", "psys", 7, 262_143_328_850); // the whole platform
    t.proc_stat(10_000);
    let cfg = t.config(RunPolicy::Always);
    let rapl = Rapl::discover(&cfg.powercap_root).unwrap();
    assert_eq!(rapl.zones().len(), 1);
    assert_eq!(rapl.zones()[0].name, "package-0");

    let meter = EnergyMeter::new(&cfg);
    assert_eq!(meter.method(), EnergyMethod::Rapl);
    let span = meter.start();
    // 6 J spent by the package while the machine was busy for 200 ticks (2 s at USER_HZ 100);
    // the task used 0.5 s of it, a quarter.
    t.set_energy("intel-rapl:0", 7_000_000);
    t.proc_stat(10_200);
    let e = span.finish(500_000);
    assert_eq!(e.method, EnergyMethod::Rapl);
    assert_eq!(e.microjoules, 1_500_000);
}

#[test]
fn rapl_counter_wrap_is_handled() {
    let t = Tree::new();
    t.rapl_zone("intel-rapl:0", "package-0", 999_000, 1_000_000);
    t.proc_stat(100);
    let meter = EnergyMeter::new(&t.config(RunPolicy::Always));
    let span = meter.start();
    t.set_energy("intel-rapl:0", 2_000); // wrapped: 1 000 + 2 000 µJ
    t.proc_stat(110);
    let e = span.finish(100_000); // the whole busy time: all of it
    assert_eq!(e.method, EnergyMethod::Rapl);
    assert_eq!(e.microjoules, 3_000);
}

#[test]
fn two_packages_are_summed() {
    let t = Tree::new();
    t.rapl_zone("intel-rapl:0", "package-0", 0, 1 << 40);
    t.rapl_zone("intel-rapl:1", "package-1", 0, 1 << 40);
    t.proc_stat(0);
    let meter = EnergyMeter::new(&t.config(RunPolicy::Always));
    let span = meter.start();
    t.set_energy("intel-rapl:0", 4_000_000);
    t.set_energy("intel-rapl:1", 2_000_000);
    t.proc_stat(100);
    assert_eq!(span.finish(1_000_000).microjoules, 6_000_000);
}

#[test]
fn estimate_without_readable_rapl() {
    let t = Tree::new();
    // A zone without its counter (as when energy_uj is root-only) is not usable.
    let d = t.path("powercap").join("intel-rapl:0");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("name"), "package-0\n").unwrap();
    fs::write(d.join("max_energy_range_uj"), "1000\n").unwrap();
    t.proc_stat(0);
    let cfg = DeviceConfig {
        watts_per_core: Some(3.0),
        ..t.config(RunPolicy::Always)
    };
    let meter = EnergyMeter::new(&cfg);
    assert_eq!(meter.method(), EnergyMethod::CpuTimeEstimate);
    let e = meter.start().finish(2_000_000);
    assert_eq!(e.method, EnergyMethod::CpuTimeEstimate);
    assert_eq!(e.microjoules, 6_000_000);
    assert_eq!(
        meter.start().finish(0).microjoules,
        1,
        "figures stay positive"
    );
}

#[test]
fn rapl_that_does_not_tick_falls_back_to_the_estimate() {
    let t = Tree::new();
    t.rapl_zone("intel-rapl:0", "package-0", 500, 1_000_000);
    t.proc_stat(0);
    let cfg = DeviceConfig {
        watts_per_core: Some(2.0),
        ..t.config(RunPolicy::Always)
    };
    let e = EnergyMeter::new(&cfg).start().finish(1_000);
    assert_eq!(e.method, EnergyMethod::CpuTimeEstimate);
    assert_eq!(e.microjoules, 2_000);
}

async fn changed_within(
    rx: &mut tokio::sync::watch::Receiver<crank_inference::device::GateSnapshot>,
) -> GateState {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the gate change was not published in time")
        .unwrap();
    rx.borrow_and_update().state.clone()
}

#[tokio::test]
async fn monitor_publishes_when_the_tree_flips() {
    let t = Tree::new();
    t.ac(true);
    t.battery("Charging", "80");
    let monitor = GateMonitor::start(t.config(RunPolicy::Charging))
        .await
        .unwrap();
    assert!(monitor.snapshot().state.is_open());
    let mut rx = monitor.subscribe();

    t.ac(false);
    t.battery("Discharging", "79");
    // A sample may fall between the two writes, so the percent is checked once settled.
    assert!(matches!(
        changed_within(&mut rx).await,
        GateState::Closed(GateReason::OnBattery { .. })
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        monitor.snapshot().state,
        GateState::Closed(GateReason::OnBattery { percent: Some(79) })
    );
    let info = gate_info(RunPolicy::Charging, &monitor.snapshot().state);
    assert!(!info.open);

    // A drifting percent updates the snapshot without waking receivers.
    t.battery("Discharging", "78");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!rx.has_changed().unwrap());
    assert_eq!(monitor.snapshot().readings.power.battery_percent, Some(78));

    t.ac(true);
    t.battery("Charging", "78");
    assert!(changed_within(&mut rx).await.is_open());

    monitor.set_paused(true);
    assert_eq!(
        changed_within(&mut rx).await,
        GateState::Closed(GateReason::Paused)
    );
    monitor.set_paused(false);
    assert!(changed_within(&mut rx).await.is_open());
}

#[tokio::test]
async fn monitor_rejects_bad_config() {
    let t = Tree::new();
    let cfg = DeviceConfig {
        sample_interval_ms: 1,
        ..t.config(RunPolicy::Always)
    };
    assert!(GateMonitor::start(cfg).await.is_err());
}

#[tokio::test]
async fn monitor_without_a_system_bus_uses_ttys() {
    let t = Tree::new();
    t.tty("pts/0", Duration::from_secs(3));
    let cfg = DeviceConfig {
        use_logind: true,
        // No bus listens here, as in a container: the monitor must degrade, not fail.
        system_bus_address: Some(format!(
            "unix:path={}",
            t.path("no-such-bus-socket").display()
        )),
        ..t.config(RunPolicy::Idle)
    };
    let monitor = GateMonitor::start(cfg).await.unwrap();
    let snap = monitor.snapshot();
    assert_eq!(snap.readings.idle.source, IdleSource::TtyAccess);
    assert!(matches!(
        snap.state,
        GateState::Closed(GateReason::UserActive { .. })
    ));
}

#[test]
fn real_machine_reads_do_not_fail() {
    // The real machine: whatever it is, reading it must not fail or panic.
    let cfg = DeviceConfig::default();
    let _ = read_power(Path::new(&cfg.power_supply_root));
    let _ = tty_idle(&cfg.dev_root, SystemTime::now());
    let hw = crank_inference::device::probe_hardware(Vec::new());
    assert!(hw.cores >= 1);
}

/// A private D-Bus daemon for one test, stopped when dropped.
struct PrivateBus {
    child: std::process::Child,
    address: String,
    _dir: TempDir,
}

impl PrivateBus {
    /// Starts `dbus-daemon` on a socket in a temp dir; `None` when the binary is not installed.
    fn start() -> Option<Self> {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("unix:path={}", dir.path().join("bus").display());
        let mut child = match std::process::Command::new("dbus-daemon")
            .args([
                "--session",
                "--nofork",
                "--print-address",
                "--address",
                &listen,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("cannot start dbus-daemon: {e}"),
        };
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Some(Self {
            child,
            address: line.trim().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One session the fake logind reports.
#[derive(Clone)]
struct FakeSession {
    id: &'static str,
    class: &'static str,
    kind: &'static str,
    idle_hint: bool,
    idle_since: SystemTime,
}

impl FakeSession {
    fn path(&self) -> String {
        format!("/org/freedesktop/login1/session/_{}", self.id)
    }
}

/// Serves `ListSessions` and the sessions' `GetAll` under the name org.freedesktop.login1,
/// answering exactly as logind does (same signatures), until the connection is dropped.
async fn fake_logind(address: &str, sessions: Vec<FakeSession>) -> zbus::Connection {
    use futures::StreamExt;
    use std::collections::HashMap;

    let conn = zbus::connection::Builder::address(address)
        .build()
        .await
        .unwrap();
    let mut stream = zbus::MessageStream::from(&conn);
    conn.request_name("org.freedesktop.login1").await.unwrap();
    let server = conn.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let header = msg.header();
            if header.message_type() != zbus::message::Type::MethodCall {
                continue;
            }
            let member = header.member().map(|m| m.as_str().to_owned());
            let path = header.path().map(|p| p.as_str().to_owned());
            match member.as_deref() {
                Some("ListSessions") => {
                    let rows: Vec<(String, u32, String, String, zbus::OwnedObjectPath)> = sessions
                        .iter()
                        .map(|s| {
                            (
                                s.id.to_owned(),
                                1000,
                                "alice".to_owned(),
                                "seat0".to_owned(),
                                zbus::OwnedObjectPath::try_from(s.path()).unwrap(),
                            )
                        })
                        .collect();
                    server.reply(&header, &rows).await.unwrap();
                }
                Some("GetAll") => {
                    let s = sessions
                        .iter()
                        .find(|s| Some(s.path()) == path)
                        .expect("GetAll on an unknown session");
                    let since = s
                        .idle_since
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_micros() as u64;
                    let mut props: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
                    props.insert("Id", zbus::Variant::from(s.id));
                    props.insert("Class", zbus::Variant::from(s.class));
                    props.insert("Type", zbus::Variant::from(s.kind));
                    props.insert("IdleHint", zbus::Variant::from(s.idle_hint));
                    props.insert("IdleSinceHint", zbus::Variant::from(since));
                    props.insert("Active", zbus::Variant::from(true));
                    server.reply(&header, &props).await.unwrap();
                }
                _ => {}
            }
        }
    });
    conn
}

/// A machine without dbus-daemon cannot run the bus tests: said on a developer's machine, a
/// failure under CI (whose `.ci/run` installs it).
fn no_bus() {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "dbus-daemon is not installed; .ci/run installs it (package dbus-daemon)"
    );
    eprintln!("SKIPPED: dbus-daemon is not installed");
}

#[tokio::test]
async fn logind_idle_over_a_real_bus() {
    let Some(bus) = PrivateBus::start() else {
        return no_bus();
    };
    let now = SystemTime::now();
    let _logind = fake_logind(
        &bus.address,
        vec![
            FakeSession {
                id: "2",
                class: "user",
                kind: "wayland",
                idle_hint: true,
                idle_since: now - Duration::from_secs(900),
            },
            FakeSession {
                id: "5",
                class: "user",
                kind: "tty",
                idle_hint: false,
                idle_since: now - Duration::from_secs(300),
            },
            FakeSession {
                id: "c1",
                class: "greeter",
                kind: "x11",
                idle_hint: false,
                idle_since: now,
            },
        ],
    )
    .await;

    let logind = crank_inference::device::idle::Logind::connect_to(&bus.address)
        .await
        .unwrap();
    let sessions = logind.sessions().await.unwrap();
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions[0].kind, "wayland");
    assert!(sessions[0].idle_hint);
    let idle = logind.idle(now).await.unwrap();
    assert_eq!(idle.source, IdleSource::Logind);
    assert_eq!(idle.idle_secs, Some(300), "the tty session was used last");

    // The monitor asks the same bus and opens the gate: 300 s idle beats the 180 s default.
    let t = Tree::new();
    t.tty("pts/0", Duration::ZERO); // logind wins over terminal access times
    let cfg = DeviceConfig {
        use_logind: true,
        system_bus_address: Some(bus.address.clone()),
        ..t.config(RunPolicy::ChargingIdle)
    };
    let monitor = GateMonitor::start(cfg).await.unwrap();
    let snap = monitor.snapshot();
    assert_eq!(snap.readings.idle.source, IdleSource::Logind);
    assert!(snap.state.is_open(), "{}", snap.state);
}

#[tokio::test]
async fn logind_missing_from_the_bus_falls_back_to_ttys() {
    let Some(bus) = PrivateBus::start() else {
        return no_bus();
    };
    let t = Tree::new();
    t.tty("pts/0", Duration::from_secs(2));
    let cfg = DeviceConfig {
        use_logind: true,
        system_bus_address: Some(bus.address.clone()),
        ..t.config(RunPolicy::Idle)
    };
    let monitor = GateMonitor::start(cfg).await.unwrap();
    let snap = monitor.snapshot();
    assert_eq!(snap.readings.idle.source, IdleSource::TtyAccess);
    assert!(matches!(
        snap.state,
        GateState::Closed(GateReason::UserActive { .. })
    ));
}
