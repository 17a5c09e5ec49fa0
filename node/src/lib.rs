//! crank-node: one binary for every device in a peer-to-peer inference mesh.
//!
//! A node joins a libp2p mesh, advertises what it can do (hardware, power, models, price),
//! bids in reverse auctions for inference tasks, runs ONNX models only while its owner lets
//! it (by default: on external power and idle), and keeps signed, counter-signed work
//! receipts that are settled as Stellar payments. The same binary submits tasks, serves a
//! local HTTP API, and runs bootstrap nodes.
//!
//! # Layout
//!
//! - [`config`]: the TOML config with documented defaults, env and flag overrides.
//! - [`identity`]: the node key (0600, created on first run).
//! - [`network`]: the only module that knows libp2p: swarm, codec, event loop, `Client`.
//! - [`node`]: the runtime that ties the parts together ([`Node`], [`NodeHandle`]) and routes
//!   requests to the two sides.
//! - `core`: what every part shares (identity, config, client, stores, ledger, gate, adverts).
//! - `worker` / `requester`: the two sides of the task flow, each with its own state; neither
//!   imports the other or the runtime, and the money rules they apply live in crank-payments.
//! - [`wallet`]: the payout key and settlement of what this node owes (Stellar).
//! - [`api`]: the local HTTP API (token-protected) and `/metrics`.
//! - [`dashboard`]: the owner's web page on loopback, opened by a one-time link.
//! - [`commands`]: what each CLI subcommand does; `main.rs` only parses and dispatches.
//! - [`doctor`]: the checks of `crank-node doctor`, their verdicts pure and tested.
//! - [`service`]: the systemd unit of `crank-node service`, rendered by a pure function.
//!
//! The business rules live in the crates below: `crank-protocol` (wire types, signatures),
//! `crank-scheduler` (the auction), `crank-inference` (models, runners, power gate) and
//! `crank-payments` (ledger, Stellar).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api;
pub mod clock;
pub mod commands;
pub mod config;
mod core;
pub mod dashboard;
pub mod doctor;
pub mod identity;
pub mod metrics;
pub mod network;
pub mod node;
mod plumbing;
mod requester;
pub mod service;
pub mod status;
pub mod tensor_io;
pub mod wallet;
mod worker;

use std::future::Future;

pub use config::Config;
pub use node::{Node, NodeHandle, StartError};
pub use requester::{
    CheckOutcome, CheckReport, CheckRun, ModelSource, SubmitError, SubmitRequest, TaskOutcome,
};

/// File name of the Stellar payout key inside the data dir.
pub const PAYOUT_KEY_FILE: &str = "payout.secret";

/// Runs a node until `shutdown` resolves: starts it, serves the local API, then stops cleanly.
pub async fn run(
    config: Config,
    role: network::Role,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let node = Node::start(config, role).await?;
    let api = api::serve(node.handle()).await;
    match &api {
        Ok(addr) => tracing::info!(addr = %addr, "local API listening"),
        Err(e) => tracing::warn!(error = %e, "local API not started"),
    }
    shutdown.await;
    node.shutdown().await;
    Ok(())
}
