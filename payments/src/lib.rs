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
//!   settlement intents, and small node state (`put_meta` / `get_meta`).
//! - [`stellar`]: the payout [`Wallet`], payment transactions built, hashed and signed with
//!   `stellar-xdr`, envelope decoding and verification.
//! - [`horizon`]: an async Horizon client ([`Horizon`]) with plain-language result codes.
//! - [`manifest`]: which receipts a transaction pays, the memo commitment to them, and
//!   [`verify_payout`] for workers.
//! - [`settle`]: exactly-once batched settlement ([`Settler`]).
//! - [`exchange`]: the receipt exchange on both sides ([`WorkerReceipts`],
//!   [`RequesterReceipts`]): issuing, counter-signing, output checks and disputes, recovery,
//!   requester standing, and crediting payments from signed settlement notices.
//! - [`audit`]: the local audit log ([`AuditLog`]): one signed, hash-chained record per task
//!   event in its own redb file, [`audit::verify`] offline and [`audit::export`] to JSONL or
//!   CSV.
//! - [`cli`]: the functions behind `crank-node wallet …`.
//! - [`config`]: [`StellarConfig`] and [`SettlementConfig`].
//!
//! # Invariants
//!
//! - A pair sequence number is assigned and the issued receipt persisted in one write
//!   transaction, so a crash never reuses a sequence number.
//! - Every stored receipt carries two verified signatures (worker and requester).
//! - A receipt is in exactly one settlement state; the per-counterparty totals kept by the
//!   ledger always equal the sum over the stored receipts ([`Ledger::audit`] checks it).
//! - A settlement transaction is recorded, with the receipts it reserves, before it is first
//!   submitted; only that identical envelope is ever resubmitted; its receipts are released
//!   only once it provably cannot apply (failed in a ledger, sequence number used by another
//!   transaction, or time bound passed with the hash unknown).
//! - The audit log is append-only: each record is committed in its own write transaction and
//!   commits to the one before it, so the chain never forks and is never rewritten.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod exchange;
pub mod horizon;
pub mod ledger;
pub mod manifest;
pub mod settle;
pub mod stellar;
pub mod types;

pub use audit::{
    AuditDraft, AuditEntry, AuditError, AuditLog, AuditRecord, ExportFormat, PolicyDecision,
    VerifyReport,
};
pub use config::{SettlementConfig, StellarConfig};
pub use exchange::{
    ExchangeError, Expected, OutputsVerdict, RequesterReceipts, RunFacts, WorkerReceipts,
};
pub use horizon::{Horizon, HorizonError};
pub use ledger::{
    Credit, IntentDraft, IntentRecord, IntentState, Ledger, LedgerError, PaymentIn,
    RecordedPayment, Standing,
};
pub use manifest::{Manifest, ManifestError, ManifestLine, verify_payout};
pub use settle::{Outcome, SettleError, SettleMode, SettleReport, Settler};
pub use stellar::Wallet;
pub use types::{
    Balances, Check, CounterpartyBalance, LegacyPendingReceipt, PendingReceipt, ReceiptKey,
    ReceiptProof, Role, Settlement, Stored, StoredReceipt, TxHash,
};
