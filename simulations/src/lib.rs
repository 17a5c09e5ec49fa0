//! crank-sim: simulations of the crank-node mesh.
//!
//! - [`market`]: a discrete-event simulation of the inference market over a large device
//!   population (phones, laptops, desktops, Raspberry Pis, servers) with daily power and
//!   idle schedules and churn, driving the real `crank_scheduler::Auction` and comparing it
//!   with baselines (random, fastest, cheapest) on the same workload.
//! - `mesh` (feature `mesh`, off by default): many real crank-node nodes in one process over
//!   loopback TCP, with churn: advert propagation, auction latency, completion, receipts.
//! - [`report`]: CSV files, SVG plots and a markdown report of a market or mesh run.
//!
//! The market simulation is deterministic for a given seed: randomness comes from seeded streams
//! (`rand_pcg`), time is simulated, and parallel shards are merged in a fixed order.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod market;
#[cfg(feature = "mesh")]
pub mod mesh;
pub mod report;
