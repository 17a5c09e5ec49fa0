//! Device awareness: when this machine may work, what it is, and what work costs it.
//!
//! The node asks three questions of the device, and this module answers each without knowing
//! anything about the network:
//!
//! * **May we run now?** The power gate ([`gate::evaluate`], sampled by
//!   [`monitor::GateMonitor`]) combines the power source ([`power`]), the user's idle time
//!   ([`idle`]), other processes' CPU load ([`load`]) and temperature ([`thermal`]) under the
//!   owner's [`RunPolicy`](crank_protocol::messages::RunPolicy). Power and idle are read
//!   through the [`probe`] traits, one reader per platform; an input that cannot be read
//!   closes the gate under the policies that read it.
//! * **What are we?** [`hardware::probe_hardware`] fills the advert's hardware summary.
//! * **What did a task cost?** [`energy::EnergyMeter`] measures energy per task from RAPL
//!   counters where readable and estimates it from CPU time otherwise; [`bench::measure`]
//!   turns it into the advert's self-benchmark figures.
//!
//! Every file the module reads lives under a root in [`DeviceConfig`], so tests (and odd
//! platforms) can point it at a fabricated tree.
//!
//! # Layout
//!
//! * [`config`]: [`DeviceConfig`] and [`DeviceClass`] with their documented defaults.
//! * [`probe`]: the [`PowerProbe`] and [`IdleProbe`] traits and this platform's readers.
//! * [`power`], [`idle`], [`load`], [`thermal`]: one reader per input of the gate (sysfs and
//!   `/dev` on Linux and Android); `os`: power and idle on macOS and Windows.
//! * [`gate`]: the pure decision and its inputs ([`Readings`], [`Thresholds`], [`GateState`]).
//! * [`monitor`]: the sampler and the task that publishes gate changes on a watch channel.
//! * [`summary`]: the advert's `PowerInfo` and `GateInfo` from the latest readings.
//! * [`hardware`], [`energy`], [`bench`](mod@bench): hardware probe, energy meter, self-benchmark.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bench;
pub mod config;
pub mod energy;
pub mod gate;
pub mod hardware;
pub mod idle;
pub mod load;
pub mod monitor;
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
pub mod os;
pub mod power;
pub mod probe;
pub mod summary;
pub mod thermal;

mod sysfs;

pub use bench::{BenchError, BenchFigures, measure};
pub use config::{ConfigError, DeviceClass, DeviceConfig};
pub use energy::{EnergyMeter, EnergySpan, process_cpu_time, thread_cpu_time};
pub use gate::{GateState, Readings, Thresholds, UnknownInput, evaluate};
pub use hardware::probe_hardware;
pub use monitor::{GateMonitor, GateSnapshot, MonitorError, Sampler};
pub use probe::{IdleProbe, NoReader, PowerProbe};
pub use summary::{busy_milliwatts, gate_info, power_info, summarize};
