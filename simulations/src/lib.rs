//! crank-sim: simulations of the crank-node mesh.
//!
//! - [`market`]: a discrete-event simulation of the inference market over a large device
//!   population (phones, laptops, desktops, Raspberry Pis, servers) with daily power and
//!   idle schedules and churn, driving the real `crank_scheduler::Auction` and comparing it
//!   with baselines (random, fastest, cheapest) on the same workload.
//! - [`report`]: CSV files, SVG plots and a markdown report of a market run.
//!
//! Everything is deterministic for a given seed: randomness comes from seeded streams
//! (`rand_pcg`), time is simulated, and parallel shards are merged in a fixed order.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod market;
pub mod report;
