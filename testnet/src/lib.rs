//! A local, in-memory, Horizon-compatible Stellar network for crank-node's tests and local
//! testnet scripts.
//!
//! It is the independent referee of the payments crate: it parses envelopes with
//! `stellar-xdr` and verifies ed25519 signatures itself, and enforces the rules that matter to
//! a payer — signatures for its passphrase, sequence numbers, fees (100 stroops per operation),
//! balances and the base reserve, the 100-operation limit, atomic failure (fee and sequence
//! still consumed when an operation fails), idempotent resubmission of an identical envelope
//! and time bounds. It does not depend on crank-payments.
//!
//! # Layout
//!
//! - [`network`]: the ledger rules as a pure state machine ([`Network`]).
//! - [`server`]: the axum HTTP server ([`LocalHorizon`]) with Horizon's endpoints, friendbot,
//!   fault injection ([`Fault`]) and an admin API.
//!
//! The binary `crank-horizon` serves it:
//! `cargo run -p crank-testnet --bin crank-horizon -- --listen 127.0.0.1:8000`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod network;
pub mod server;

pub use network::{
    Account, Answer, AppliedPayment, Cursor, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, Network,
    NetworkConfig, Order, PageQuery, STANDALONE_PASSPHRASE,
};
pub use server::{Fault, LocalHorizon, Shared, router};
