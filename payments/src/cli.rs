//! The library side of `crank-node wallet …`: each subcommand is one function here, and the
//! node's CLI only parses flags and prints.
//!
//! `address` and `fund` need no ledger, so they work while a node holds the ledger open.

use std::fmt;

use crate::config::StellarConfig;
use crate::horizon::{Funded, Horizon, HorizonError};
use crate::ledger::{IntentRecord, Ledger, LedgerError};
use crate::settle::{DryRunTx, SettleError, SettleMode, SettleReport, Settler};
use crate::stellar::{Wallet, format_xlm};

/// The wallet's address (`G…`).
pub fn address(wallet: &Wallet) -> String {
    wallet.address()
}

/// Asks friendbot to create and fund the wallet's account (testnet only).
pub async fn fund(config: &StellarConfig, wallet: &Wallet) -> Result<Funded, HorizonError> {
    Horizon::new(config)?.fund(&wallet.address()).await
}

/// Money on chain and in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalletBalance {
    /// The wallet's address.
    pub address: String,
    /// Native balance on chain, stroops; `None` when the account does not exist yet.
    pub on_chain_stroops: Option<i64>,
    /// What the account must keep (its reserve), stroops.
    pub reserve_stroops: i64,
    /// What we owe others and have not paid (in-flight payments included), stroops.
    pub owed_by_us_stroops: u64,
    /// The part of that in a payment whose outcome is pending.
    pub in_flight_stroops: u64,
    /// What others owe us and have not paid, stroops.
    pub owed_to_us_stroops: u64,
    /// What we have paid, stroops.
    pub paid_by_us_stroops: u64,
    /// What we have been paid, stroops.
    pub paid_to_us_stroops: u64,
}

impl fmt::Display for WalletBalance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let xlm = |s: u64| format_xlm(i64::try_from(s).unwrap_or(i64::MAX));
        writeln!(f, "address        {}", self.address)?;
        match self.on_chain_stroops {
            Some(b) => writeln!(
                f,
                "on chain       {} XLM (reserve {} XLM)",
                format_xlm(b),
                format_xlm(self.reserve_stroops)
            )?,
            None => writeln!(f, "on chain       account not funded yet")?,
        }
        writeln!(
            f,
            "we owe         {} XLM ({} XLM being paid)",
            xlm(self.owed_by_us_stroops),
            xlm(self.in_flight_stroops)
        )?;
        writeln!(f, "owed to us     {} XLM", xlm(self.owed_to_us_stroops))?;
        writeln!(f, "paid by us     {} XLM", xlm(self.paid_by_us_stroops))?;
        write!(f, "paid to us     {} XLM", xlm(self.paid_to_us_stroops))
    }
}

/// Why `balance` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// Horizon could not be asked.
    #[error("Horizon: {0}")]
    Horizon(#[from] HorizonError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// On-chain XLM plus what the ledger says is owed each way.
pub async fn balance(
    config: &StellarConfig,
    ledger: &Ledger,
    wallet: &Wallet,
) -> Result<WalletBalance, BalanceError> {
    let address = wallet.address();
    let account = Horizon::new(config)?.account(&address).await?;
    let totals = ledger.balances()?.total;
    Ok(WalletBalance {
        reserve_stroops: account
            .as_ref()
            .map_or(0, |a| a.min_balance_stroops(config.base_reserve_stroops)),
        on_chain_stroops: account.map(|a| a.balance_stroops),
        address,
        owed_by_us_stroops: totals.owed_by_us_stroops,
        in_flight_stroops: totals.in_flight_stroops,
        owed_to_us_stroops: totals.owed_to_us_stroops,
        paid_by_us_stroops: totals.paid_by_us_stroops,
        paid_to_us_stroops: totals.paid_to_us_stroops,
    })
}

/// What `settle` did.
#[derive(Debug)]
pub enum SettleOutput {
    /// Transactions were submitted.
    Submitted(SettleReport),
    /// A dry run: the signed envelopes, not submitted.
    DryRun(Vec<DryRunTx>),
}

/// Pays what is owed now (`mode`), or with `dry_run` signs the transactions and returns
/// them as base64 XDR without recording or submitting anything.
pub async fn settle(
    settler: &Settler,
    mode: SettleMode,
    dry_run: bool,
) -> Result<SettleOutput, SettleError> {
    // Nothing owed and no transaction whose outcome is unknown: nothing to sign, and no
    // reason to need Horizon to say so.
    let ledger = settler.ledger();
    if ledger.owed_receipts()?.is_empty() && ledger.pending_intents()?.is_empty() {
        return Ok(if dry_run {
            SettleOutput::DryRun(Vec::new())
        } else {
            SettleOutput::Submitted(SettleReport::default())
        });
    }
    if dry_run {
        return Ok(SettleOutput::DryRun(settler.dry_run(mode).await?));
    }
    Ok(SettleOutput::Submitted(settler.settle(mode).await?))
}

/// Up to `limit` settlements, newest first, each with its transaction hash, state and the
/// receipts it pays.
pub fn history(ledger: &Ledger, limit: usize) -> Result<Vec<IntentRecord>, LedgerError> {
    ledger.intents(limit)
}
