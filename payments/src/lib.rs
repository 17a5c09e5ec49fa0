//! Receipts, balances and Stellar settlement for crank-node.
//!
//! A worker that finishes a task signs a [`WorkReceipt`](crank_protocol::WorkReceipt); the
//! requester checks and counter-signs it. Both sides keep the counter-signed receipt in a
//! [`Ledger`] (one redb file). The requester later pays what it owes each worker in batched
//! Stellar transactions, exactly once, even across crashes.
//!
//! This crate knows nothing about libp2p: the node hands it receipts and asks it for balances.
//!
//! # Layout
//!
//! - [`ledger`]: the receipt ledger ([`Ledger`]): issuing receipts with gap-free per-pair
//!   sequence numbers, storing counter-signed receipts idempotently, balances per counterparty,
//!   and small node state (`put_meta` / `get_meta`).
//!
//! # Invariants
//!
//! - A pair sequence number is assigned and the issued receipt persisted in one write
//!   transaction, so a crash never reuses a sequence number.
//! - Every stored receipt carries two verified signatures (worker and requester).
//! - A receipt is in exactly one settlement state; the per-counterparty totals kept by the
//!   ledger always equal the sum over the stored receipts ([`Ledger::audit`] checks it).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod horizon;
pub mod ledger;
pub mod manifest;
pub mod stellar;
pub mod types;

pub use config::{SettlementConfig, StellarConfig};
pub use horizon::{Horizon, HorizonError};
pub use ledger::{Ledger, LedgerError};
pub use types::{
    Balances, CounterpartyBalance, PendingReceipt, ReceiptKey, Role, Settlement, Stored,
    StoredReceipt, TxHash,
};
