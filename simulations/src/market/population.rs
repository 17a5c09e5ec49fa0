//! The simulated devices: classes with their hardware, power draw, speed and prices, owners'
//! daily habits (when a device is awake, on external power, in use or busy), and churn.
//!
//! Power draw per run is the inference crate's busy power per core for the class
//! ([`DeviceClass::default_watts_per_core`]) times the cores one run uses; energy per
//! inference follows from the speed. GPUs draw their own figure.

use crank_inference::device::DeviceClass;
use rand::RngExt;
use rand_distr::{Distribution, Exp, LogNormal, Normal};
use serde::{Deserialize, Serialize};

use super::rng::{self, Purpose};

/// Milliseconds in an hour.
pub const HOUR_MS: u64 = 3_600_000;
/// Milliseconds in a day.
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// One class of device and what its owners ask for their work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSpec {
    /// The class.
    pub class: DeviceClass,
    /// Share of the population.
    pub share: f64,
    /// Logical cores.
    pub cores: u16,
    /// Runs at a time (inference workers).
    pub workers: u16,
    /// Queue slots (running and waiting).
    pub slots: u16,
    /// Memory, MiB.
    pub ram_mib: u64,
    /// Whether it has a system battery.
    pub has_battery: bool,
    /// Median CPU speed on the reference model, inferences per second per run.
    pub cpu_ips: f64,
    /// Share of devices of the class with a usable GPU.
    pub gpu_share: f64,
    /// Median GPU speed on the reference model, inferences per second.
    pub gpu_ips: f64,
    /// GPU busy power, watts.
    pub gpu_watts: f64,
    /// One-way network latency to a typical requester, ms.
    pub net_ms: u32,
    /// Download rate for models, bytes per second.
    pub bandwidth_bytes_per_sec: u64,
    /// Electricity price the owner pays, stroops per kWh.
    pub tariff_stroops_per_kwh: u64,
    /// Flat price per task, stroops.
    pub per_task_stroops: u64,
    /// Price per second of inference, stroops.
    pub per_second_stroops: u64,
}

impl ClassSpec {
    /// Busy power of one CPU run, watts: the class's watts per core times the cores a run
    /// uses (all cores shared among the workers).
    pub fn cpu_watts_per_run(&self) -> f64 {
        f64::from(self.class.default_watts_per_core()) * f64::from(self.cores)
            / f64::from(self.workers.max(1))
    }

    /// CPU energy per reference inference at the median speed, µJ.
    pub fn cpu_microjoules_per_inference(&self) -> f64 {
        self.cpu_watts_per_run() / self.cpu_ips * 1e6
    }

    /// GPU energy per reference inference at the median speed, µJ.
    pub fn gpu_microjoules_per_inference(&self) -> f64 {
        self.gpu_watts / self.gpu_ips.max(1e-9) * 1e6
    }
}

/// The default population: phones, laptops, desktops, Raspberry Pis and servers.
pub fn default_classes() -> Vec<ClassSpec> {
    let base = |class, share| ClassSpec {
        class,
        share,
        cores: 8,
        workers: 1,
        slots: 2,
        ram_mib: 8192,
        has_battery: false,
        cpu_ips: 100.0,
        gpu_share: 0.0,
        gpu_ips: 0.0,
        gpu_watts: 0.0,
        net_ms: 30,
        bandwidth_bytes_per_sec: 10_000_000,
        tariff_stroops_per_kwh: 10_000_000,
        per_task_stroops: 100,
        per_second_stroops: 1_000,
    };
    vec![
        ClassSpec {
            ram_mib: 6144,
            has_battery: true,
            cpu_ips: 120.0,
            net_ms: 60,
            bandwidth_bytes_per_sec: 2_000_000,
            per_second_stroops: 500,
            ..base(DeviceClass::Phone, 0.40)
        },
        ClassSpec {
            workers: 2,
            slots: 4,
            ram_mib: 16_384,
            has_battery: true,
            cpu_ips: 500.0,
            gpu_share: 0.25,
            gpu_ips: 4_000.0,
            gpu_watts: 40.0,
            net_ms: 30,
            ..base(DeviceClass::Laptop, 0.25)
        },
        ClassSpec {
            cores: 16,
            workers: 2,
            slots: 4,
            ram_mib: 32_768,
            cpu_ips: 1_200.0,
            gpu_share: 0.40,
            gpu_ips: 10_000.0,
            gpu_watts: 150.0,
            net_ms: 20,
            bandwidth_bytes_per_sec: 20_000_000,
            ..base(DeviceClass::Desktop, 0.10)
        },
        ClassSpec {
            cores: 4,
            ram_mib: 4096,
            cpu_ips: 60.0,
            net_ms: 25,
            bandwidth_bytes_per_sec: 5_000_000,
            per_task_stroops: 50,
            per_second_stroops: 200,
            ..base(DeviceClass::Pi, 0.15)
        },
        ClassSpec {
            cores: 64,
            workers: 8,
            slots: 32,
            ram_mib: 131_072,
            cpu_ips: 2_000.0,
            gpu_share: 0.30,
            gpu_ips: 30_000.0,
            gpu_watts: 250.0,
            net_ms: 10,
            bandwidth_bytes_per_sec: 100_000_000,
            tariff_stroops_per_kwh: 8_000_000,
            per_second_stroops: 3_000,
            ..base(DeviceClass::Server, 0.10)
        },
    ]
}

/// What a device is doing at one moment, as the power gate would read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DevState {
    /// Powered on and running the node (not asleep or switched off).
    pub awake: bool,
    /// On external power (always true without a battery).
    pub external: bool,
    /// The user is active (not idle).
    pub active: bool,
    /// Other processes keep the CPU busy.
    pub busy: bool,
}

const fn st(awake: bool, external: bool, active: bool, busy: bool) -> DevState {
    DevState {
        awake,
        external,
        active,
        busy,
    }
}

const OFF: DevState = st(false, true, false, false);
const PLUGGED_IDLE: DevState = st(true, true, false, false);
const PLUGGED_ACTIVE: DevState = st(true, true, true, false);
const BATTERY_IDLE: DevState = st(true, false, false, false);
const BATTERY_ACTIVE: DevState = st(true, false, true, false);
const PLUGGED_BUSY: DevState = st(true, true, false, true);

/// An owner's habits, drawn once per device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Habits {
    /// Shift of the whole day against the clock, ms (earlier or later risers).
    pub shift_ms: i64,
    /// Phone: charges overnight.
    pub charges_at_night: bool,
    /// Phone: charges at a desk in the morning.
    pub desk_charging: bool,
    /// Laptop: left on and plugged in overnight (else it sleeps).
    pub plugged_overnight: bool,
    /// Laptop: used on battery in the evening (else asleep).
    pub evening_use: bool,
    /// Laptop: used on battery at work.
    pub unplugged_at_work: bool,
    /// Desktop: left on overnight (else switched off).
    pub on_at_night: bool,
    /// Desktop: used for games in the evening.
    pub gaming: bool,
    /// Server: busy with its own load during business hours.
    pub busy_daytime: bool,
}

impl Habits {
    pub(crate) fn draw(rng: &mut impl rand::Rng) -> Self {
        let shift: f64 = Normal::new(0.0, 45.0 * 60_000.0)
            .map(|n| n.sample(rng))
            .unwrap_or(0.0);
        #[allow(clippy::cast_possible_truncation)]
        let shift_ms = shift.clamp(-3.0 * 3_600_000.0, 3.0 * 3_600_000.0) as i64;
        Self {
            shift_ms,
            charges_at_night: rng.random_bool(0.9),
            desk_charging: rng.random_bool(0.2),
            plugged_overnight: rng.random_bool(0.35),
            evening_use: rng.random_bool(0.5),
            unplugged_at_work: rng.random_bool(0.2),
            on_at_night: rng.random_bool(0.3),
            gaming: rng.random_bool(0.4),
            busy_daytime: rng.random_bool(0.3),
        }
    }
}

/// The base plan of a class: segments as (start hour, state), the first at hour 0.
fn base_plan(class: DeviceClass, h: &Habits) -> Vec<(f64, DevState)> {
    match class {
        DeviceClass::Phone => {
            let night = if h.charges_at_night {
                PLUGGED_IDLE
            } else {
                BATTERY_IDLE
            };
            let evening = if h.charges_at_night {
                PLUGGED_ACTIVE
            } else {
                BATTERY_ACTIVE
            };
            let desk = if h.desk_charging {
                PLUGGED_IDLE
            } else {
                BATTERY_IDLE
            };
            vec![
                (0.0, night),
                (7.0, BATTERY_ACTIVE),
                (9.0, desk),
                (11.0, BATTERY_ACTIVE),
                (22.5, evening),
                (23.5, night),
            ]
        }
        DeviceClass::Laptop => {
            let night = if h.plugged_overnight {
                PLUGGED_IDLE
            } else {
                OFF
            };
            let (work, lunch) = if h.unplugged_at_work {
                (BATTERY_ACTIVE, BATTERY_IDLE)
            } else {
                (PLUGGED_ACTIVE, PLUGGED_IDLE)
            };
            let evening = if h.evening_use { BATTERY_ACTIVE } else { OFF };
            vec![
                (0.0, night),
                (8.5, work),
                (12.0, lunch),
                (13.0, work),
                (17.5, OFF),
                (19.0, evening),
                (22.0, night),
            ]
        }
        DeviceClass::Desktop => {
            let night = if h.on_at_night { PLUGGED_IDLE } else { OFF };
            let evening = if h.gaming { PLUGGED_ACTIVE } else { night };
            vec![
                (0.0, night),
                (8.5, PLUGGED_ACTIVE),
                (12.0, PLUGGED_IDLE),
                (13.0, PLUGGED_ACTIVE),
                (18.0, PLUGGED_IDLE),
                (19.0, evening),
                (22.0, night),
            ]
        }
        DeviceClass::Pi => vec![(0.0, PLUGGED_IDLE)],
        DeviceClass::Server => {
            if h.busy_daytime {
                vec![
                    (0.0, PLUGGED_IDLE),
                    (9.0, PLUGGED_BUSY),
                    (18.0, PLUGGED_IDLE),
                ]
            } else {
                vec![(0.0, PLUGGED_IDLE)]
            }
        }
    }
}

/// Interruptions per hour while plugged in and idle (someone picks the device up, or other
/// work keeps the CPU busy), and how they show.
fn interruptions(class: DeviceClass) -> (f64, DevState) {
    match class {
        DeviceClass::Phone => (0.25, PLUGGED_ACTIVE),
        DeviceClass::Laptop => (0.5, PLUGGED_ACTIVE),
        DeviceClass::Desktop => (0.2, PLUGGED_ACTIVE),
        DeviceClass::Pi => (0.05, PLUGGED_BUSY),
        DeviceClass::Server => (0.05, PLUGGED_BUSY),
    }
}

/// The plan of one device for day `day`: (absolute start ms, state), sorted, the first at the
/// day's start. Deterministic in `(seed, shard, slot, day)`.
pub(crate) fn day_plan(
    class: DeviceClass,
    habits: &Habits,
    seed: u64,
    shard: u64,
    slot: u64,
    day: u64,
    epoch: u64,
) -> Vec<(u64, DevState)> {
    let mut rng = rng::stream(seed, Purpose::Plan, &[shard, slot, day]);
    let jitter = Normal::new(0.0, 10.0 * 60_000.0).ok();
    let day_start = epoch + day * DAY_MS;
    let base = base_plan(class, habits);
    let mut starts = Vec::with_capacity(base.len());
    let mut last = 0i64;
    for (i, (hour, _)) in base.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation)]
        let mut at = if i == 0 {
            0
        } else {
            let j = jitter.map_or(0.0, |n| n.sample(&mut rng));
            ((hour * HOUR_MS as f64) + habits.shift_ms as f64 + j) as i64
        };
        #[allow(clippy::cast_possible_wrap)]
        let day_len = DAY_MS as i64;
        at = at.clamp(last, day_len);
        starts.push(at);
        last = at;
    }
    let (rate, interrupted) = interruptions(class);
    let gap = Exp::new(rate / HOUR_MS as f64).ok();
    let mut out: Vec<(u64, DevState)> = Vec::with_capacity(base.len() * 2);
    let push = |out: &mut Vec<(u64, DevState)>, at: u64, s: DevState| {
        if out.last().is_some_and(|(_, prev)| *prev == s) {
            return;
        }
        if out.last().is_some_and(|(t, _)| *t == at) {
            out.pop();
            if out.last().is_some_and(|(_, prev)| *prev == s) {
                return;
            }
        }
        out.push((at, s));
    };
    #[allow(clippy::cast_sign_loss)]
    for (i, (_, state)) in base.iter().enumerate() {
        let start = starts[i] as u64;
        let end = starts.get(i + 1).map_or(DAY_MS, |e| *e as u64);
        if end <= start {
            continue;
        }
        push(&mut out, day_start + start, *state);
        if *state != PLUGGED_IDLE {
            continue;
        }
        let Some(gap) = gap else { continue };
        #[allow(clippy::cast_possible_truncation)]
        let mut t = start + gap.sample(&mut rng) as u64;
        while t < end {
            let dur = rng.random_range(2 * 60_000..10 * 60_000u64);
            let back = (t + dur).min(end);
            push(&mut out, day_start + t, interrupted);
            if back < end {
                push(&mut out, day_start + back, *state);
            }
            #[allow(clippy::cast_possible_truncation)]
            let next = back + gap.sample(&mut rng) as u64;
            t = next;
        }
    }
    out
}

/// Churn: how long devices stay in the mesh and stay away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChurnConfig {
    /// Mean time a device stays in the mesh before it leaves, hours (exponential).
    /// `0` turns churn off.
    pub mean_session_h: f64,
    /// Mean time it stays away, hours (exponential).
    pub mean_offline_h: f64,
    /// Share of returns that are a new device (a new key, no history).
    pub new_identity_share: f64,
}

impl Default for ChurnConfig {
    fn default() -> Self {
        Self {
            mean_session_h: 12.0,
            mean_offline_h: 2.0,
            new_identity_share: 0.2,
        }
    }
}

impl ChurnConfig {
    /// Whether churn is on.
    pub fn enabled(&self) -> bool {
        self.mean_session_h > 0.0 && self.mean_offline_h > 0.0
    }

    /// Leaves per device per day while in the mesh.
    pub fn leaves_per_day(&self) -> f64 {
        if self.enabled() {
            24.0 / self.mean_session_h
        } else {
            0.0
        }
    }

    /// Draws the length of a session (`online`) or an absence, ms.
    pub(crate) fn draw_ms(&self, online: bool, rng: &mut impl rand::Rng) -> u64 {
        let mean_h = if online {
            self.mean_session_h
        } else {
            self.mean_offline_h
        };
        let ms = Exp::new(1.0 / (mean_h * HOUR_MS as f64))
            .map(|e| e.sample(rng))
            .unwrap_or(f64::MAX);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = ms.clamp(1_000.0, 1e15) as u64;
        ms
    }

    /// The chance a device is in the mesh at a random moment.
    pub(crate) fn online_share(&self) -> f64 {
        if self.enabled() {
            self.mean_session_h / (self.mean_session_h + self.mean_offline_h)
        } else {
            1.0
        }
    }
}

/// A device's true speed and energy, which the benchmark in its advert only estimates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hardware {
    /// True CPU inferences per second.
    pub cpu_ips: f64,
    /// True CPU µJ per inference.
    pub cpu_uj: f64,
    /// True GPU figures, when it has one.
    pub gpu: Option<(f64, f64)>,
    /// Advertised (benchmarked) CPU figures.
    pub bench_cpu: (f64, f64),
    /// Advertised GPU figures.
    pub bench_gpu: Option<(f64, f64)>,
}

impl Hardware {
    pub(crate) fn draw<R: rand::Rng>(spec: &ClassSpec, rng: &mut R) -> Self {
        let spread = LogNormal::new(0.0, 0.25).ok();
        let bias = LogNormal::new(0.0, 0.1).ok();
        let f = |d: Option<LogNormal<f64>>, rng: &mut R| d.map_or(1.0, |d| d.sample(rng));
        let speed = f(spread, rng);
        let cpu_ips = spec.cpu_ips * speed;
        // A faster chip of the class finishes sooner at about the same power.
        let cpu_uj = spec.cpu_microjoules_per_inference() / speed;
        let bench_cpu = (cpu_ips * f(bias, rng), cpu_uj * f(bias, rng));
        let (gpu, bench_gpu) = if spec.gpu_share > 0.0 && rng.random_bool(spec.gpu_share) {
            let s = f(spread, rng);
            let g = (spec.gpu_ips * s, spec.gpu_microjoules_per_inference() / s);
            (Some(g), Some((g.0 * f(bias, rng), g.1 * f(bias, rng))))
        } else {
            (None, None)
        };
        Self {
            cpu_ips,
            cpu_uj,
            gpu,
            bench_cpu,
            bench_gpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn habits() -> Habits {
        Habits {
            shift_ms: 0,
            charges_at_night: true,
            desk_charging: false,
            plugged_overnight: true,
            evening_use: true,
            unplugged_at_work: false,
            on_at_night: false,
            gaming: false,
            busy_daytime: true,
        }
    }

    #[test]
    fn default_shares_sum_to_one_and_energy_follows_power_over_speed() {
        let classes = default_classes();
        let total: f64 = classes.iter().map(|c| c.share).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let phone = &classes[0];
        assert_eq!(phone.class, DeviceClass::Phone);
        // 0.6 W per core × 8 cores / 1 worker = 4.8 W at 120 inferences/s = 40 mJ each.
        assert!((phone.cpu_microjoules_per_inference() - 40_000.0).abs() < 1.0);
    }

    #[test]
    fn plans_cover_the_day_in_order_and_are_reproducible() {
        for class in [
            DeviceClass::Phone,
            DeviceClass::Laptop,
            DeviceClass::Desktop,
            DeviceClass::Pi,
            DeviceClass::Server,
        ] {
            for day in 0..3 {
                let p = day_plan(class, &habits(), 1, 0, 5, day, 0);
                assert_eq!(p[0].0, day * DAY_MS, "{class} starts at midnight");
                assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1));
                assert!(p.iter().all(|(t, _)| *t < (day + 1) * DAY_MS));
                assert_eq!(p, day_plan(class, &habits(), 1, 0, 5, day, 0));
            }
        }
    }

    #[test]
    fn a_phone_charges_at_night_and_runs_on_battery_by_day() {
        let p = day_plan(DeviceClass::Phone, &habits(), 3, 0, 1, 0, 0);
        let at = |h: u64| {
            p.iter()
                .rev()
                .find(|(t, _)| *t <= h * HOUR_MS)
                .map(|(_, s)| *s)
                .unwrap()
        };
        assert!(at(14).awake && !at(14).external);
        // At 3 am the phone is on its charger (an interruption may make the user active).
        assert!(at(3).external);
    }

    #[test]
    fn churn_draws_have_the_configured_means() {
        let c = ChurnConfig::default();
        let mut rng = rng::stream(1, Purpose::Churn, &[0]);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| c.draw_ms(true, &mut rng) as f64)
            .sum::<f64>()
            / n as f64;
        let want = 12.0 * HOUR_MS as f64;
        assert!((mean / want - 1.0).abs() < 0.03, "mean {mean} want {want}");
        assert!((c.online_share() - 12.0 / 14.0).abs() < 1e-12);
    }
}
