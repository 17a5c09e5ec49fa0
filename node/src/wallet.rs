//! The payout wallet and settlement: what this node owes is paid in batched Stellar
//! transactions, automatically once a worker's total crosses the threshold, or on
//! `crank-node wallet settle`.
//!
//! The rules (exactly once, intent persisted before submit, resubmit the identical envelope)
//! live in `crank-payments`; this module opens the pieces, runs the settlement loop, and shapes
//! results for the CLI and the API.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crank_payments::cli::{self, SettleOutput, WalletBalance};
use crank_payments::settle::{DryRunTx, FailedTx, PaidTx, Skipped};
use crank_payments::stellar::format_xlm;
use crank_payments::{IntentRecord, IntentState, Ledger, SettleMode, Settler};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::config::{Config, SettlementSettings};
use crate::plumbing::{chain, stopped};

/// The wallet of a node: payout key, ledger and settler.
pub struct NodeWallet {
    ledger: Arc<Ledger>,
    settler: Settler,
    stellar: crank_payments::StellarConfig,
    /// Woken when a settlement applied, so the workers it paid are told at once.
    pub(crate) settled: Notify,
}

impl std::fmt::Debug for NodeWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeWallet({})", self.address())
    }
}

/// What a settle command did, for people and scripts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleView {
    /// Signed envelopes, not submitted.
    DryRun {
        /// One per transaction.
        transactions: Vec<serde_json::Value>,
        /// Nothing is owed: there is nothing to sign.
        #[serde(default)]
        nothing_owed: bool,
    },
    /// Transactions submitted.
    Submitted {
        /// Applied.
        paid: Vec<serde_json::Value>,
        /// Known never to apply.
        failed: Vec<serde_json::Value>,
        /// Outcome still unknown (resolved later, never paid twice).
        pending: usize,
        /// Workers left out, with why.
        skipped: Vec<serde_json::Value>,
        /// Receipts paid.
        receipts_paid: usize,
        /// Stroops paid.
        stroops_paid: i64,
        /// Why the round stopped early, if it did.
        stopped: Option<String>,
        /// Nothing was owed: nothing paid, failed, pending or left out, and no early stop.
        #[serde(default)]
        nothing_owed: bool,
    },
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl NodeWallet {
    /// Opens the wallet over an open ledger (creating the payout key on first use).
    pub fn open(config: &Config, ledger: Arc<Ledger>) -> Result<Self, String> {
        let wallet =
            crank_payments::Wallet::load_or_create(&config.data_dir.join(crate::PAYOUT_KEY_FILE))
                .map_err(|e| chain(&e))?;
        let settler = Settler::new(
            ledger.clone(),
            wallet,
            config.stellar.clone(),
            config.settlement.policy.clone(),
        )
        .map_err(|e| chain(&e))?;
        Ok(Self {
            ledger,
            settler,
            stellar: config.stellar.clone(),
            settled: Notify::new(),
        })
    }

    /// Opens the ledger and the wallet of a data dir (when no node holds them).
    pub fn open_dir(config: &Config) -> Result<Self, String> {
        let ledger = Ledger::open(&config.data_dir.join("ledger.redb")).map_err(|e| chain(&e))?;
        Self::open(config, Arc::new(ledger))
    }

    /// The payout address (`G…`).
    pub fn address(&self) -> String {
        self.settler.wallet().address()
    }

    /// Creates and funds the account through friendbot (testnet and local networks).
    pub async fn fund(&self) -> Result<(), String> {
        cli::fund(&self.stellar, self.settler.wallet())
            .await
            .map(|_| ())
            .map_err(|e| chain(&e))
    }

    /// On-chain XLM and what is owed each way.
    pub async fn balance(&self) -> Result<WalletBalance, String> {
        cli::balance(&self.stellar, &self.ledger, self.settler.wallet())
            .await
            .map_err(|e| chain(&e))
    }

    /// Pays what is due (or everything owed with `all`); with `dry_run`, only signs.
    pub async fn settle(&self, all: bool, dry_run: bool) -> Result<SettleView, String> {
        let mode = if all {
            SettleMode::All
        } else {
            SettleMode::Due
        };
        match cli::settle(&self.settler, mode, dry_run)
            .await
            .map_err(|e| chain(&e))?
        {
            SettleOutput::DryRun(txs) => Ok(SettleView::DryRun {
                nothing_owed: txs.is_empty(),
                transactions: txs.iter().map(json::<DryRunTx>).collect(),
            }),
            SettleOutput::Submitted(r) => {
                if !r.paid.is_empty() {
                    self.settled.notify_one();
                }
                Ok(SettleView::Submitted {
                    nothing_owed: r.paid.is_empty()
                        && r.failed.is_empty()
                        && r.pending.is_empty()
                        && r.skipped.is_empty()
                        && r.stopped.is_none(),
                    receipts_paid: r.receipts_paid(),
                    stroops_paid: r.stroops_paid(),
                    paid: r.paid.iter().map(json::<PaidTx>).collect(),
                    failed: r.failed.iter().map(json::<FailedTx>).collect(),
                    pending: r.pending.len(),
                    skipped: r.skipped.iter().map(json::<Skipped>).collect(),
                    stopped: r.stopped.as_ref().map(|e| chain(e)),
                })
            }
        }
    }

    /// Settlements, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<IntentRecord>, String> {
        cli::history(&self.ledger, limit).map_err(|e| chain(&e))
    }

    /// Resolves settlements left pending by a crash; run at start.
    pub async fn recover(&self) {
        match self.ledger.pending_intents() {
            Ok(p) if p.is_empty() => return,
            Ok(p) => info!(pending = p.len(), "resolving settlements left pending"),
            Err(e) => warn!(error = %chain(&e), "cannot read pending settlements"),
        }
        match self.settler.recover().await {
            Ok(outcomes) => info!(resolved = outcomes.len(), "pending settlements resolved"),
            Err(e) => {
                warn!(error = %chain(&e), "pending settlements not resolved yet; retrying later")
            }
        }
    }

    /// Whether any worker is owed at least the threshold.
    fn anything_due(&self, threshold: u64) -> bool {
        self.ledger
            .balances()
            .map(|b| {
                b.counterparties
                    .values()
                    .any(|c| c.owed_by_us_stroops.saturating_sub(c.in_flight_stroops) >= threshold)
            })
            .unwrap_or(false)
    }
}

/// Pays workers automatically when what we owe one crosses the threshold.
pub(crate) async fn settlement_loop(
    wallet: Arc<NodeWallet>,
    settings: SettlementSettings,
    mut stop: watch::Receiver<bool>,
) {
    wallet.recover().await;
    if !settings.auto {
        return;
    }
    let interval = Duration::from_secs(settings.interval_secs.max(1));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped(&mut stop) => return,
        }
        if !wallet.anything_due(settings.policy.threshold_stroops) {
            continue;
        }
        match wallet.settle(false, false).await {
            Ok(SettleView::Submitted {
                receipts_paid,
                stroops_paid,
                stopped,
                skipped,
                ..
            }) => {
                failures = 0;
                if receipts_paid > 0 {
                    info!(receipts = receipts_paid, xlm = %format_xlm(stroops_paid), "settled");
                }
                if let Some(why) = stopped {
                    warn!(reason = %why, "settlement round stopped early");
                }
                for s in skipped {
                    debug!(skipped = %s, "worker left out of settlement");
                }
            }
            Ok(SettleView::DryRun { .. }) => {}
            Err(e) => {
                failures += 1;
                // Offline or Horizon down: say so once, then quietly retry.
                if failures == 1 {
                    warn!(error = %e, "automatic settlement failed; will retry");
                } else {
                    debug!(error = %e, failures, "automatic settlement failed again");
                }
            }
        }
    }
}

/// The settle result for people.
pub fn render_settle(v: &SettleView) -> String {
    let mut s = String::new();
    match v {
        SettleView::DryRun {
            nothing_owed: true, ..
        }
        | SettleView::Submitted {
            nothing_owed: true, ..
        } => {
            s.push_str(NOTHING_OWED);
        }
        SettleView::DryRun { transactions, .. } => {
            // One envelope per line, so any Stellar tool can read them.
            for t in transactions {
                let _ = writeln!(
                    s,
                    "{}",
                    t.get("envelope_xdr").and_then(|x| x.as_str()).unwrap_or("")
                );
            }
        }
        SettleView::Submitted {
            paid,
            failed,
            pending,
            skipped,
            receipts_paid,
            stroops_paid,
            stopped,
            ..
        } => {
            let _ = writeln!(
                s,
                "paid {receipts_paid} receipts, {} XLM, in {} transactions",
                format_xlm(*stroops_paid),
                paid.len()
            );
            for p in paid {
                let _ = writeln!(
                    s,
                    "  tx {}  {} payments, {} receipts, fee {} stroops",
                    p.get("tx_hash").and_then(|x| x.as_str()).unwrap_or("?"),
                    p.get("payments")
                        .and_then(|x| x.as_array())
                        .map_or(0, Vec::len),
                    p.get("receipts")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0),
                    p.get("fee_charged")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(0),
                );
            }
            for f in failed {
                let _ = writeln!(
                    s,
                    "  failed {}: {}",
                    f.get("tx_hash").and_then(|x| x.as_str()).unwrap_or("?"),
                    f.get("reason").and_then(|x| x.as_str()).unwrap_or("?")
                );
            }
            if *pending > 0 {
                let _ = writeln!(
                    s,
                    "  {pending} transactions still pending (resolved on the next run; never paid twice)"
                );
            }
            for k in skipped {
                let _ = writeln!(
                    s,
                    "  skipped {}: {}",
                    k.get("payout").and_then(|x| x.as_str()).unwrap_or("?"),
                    k.get("reason").and_then(|x| x.as_str()).unwrap_or("?")
                );
            }
            if let Some(why) = stopped {
                let _ = writeln!(s, "  stopped early: {why}");
            }
        }
    }
    s
}

/// What `wallet settle` says when there is nothing to pay (with or without `--dry-run`).
const NOTHING_OWED: &str = "nothing owed: no counter-signed receipt is due for payment\n";

/// The settlement history for people.
pub fn render_history(list: &[IntentRecord]) -> String {
    let mut s = String::new();
    if list.is_empty() {
        s.push_str("no settlements yet\n");
    }
    for i in list {
        let state = match &i.state {
            IntentState::Pending => "pending".to_string(),
            IntentState::Settled {
                ledger,
                fee_charged,
                ..
            } => format!("settled in ledger {ledger}, fee {fee_charged} stroops"),
            IntentState::Failed { reason, .. } => format!("failed: {reason}"),
        };
        let m = &i.draft.manifest;
        let _ = writeln!(
            s,
            "#{}  tx {}  {} receipts, {} XLM  {state}",
            i.id,
            i.draft.tx_hash.to_hex(),
            m.lines().len(),
            format_xlm(i64::try_from(m.total_stroops()).unwrap_or(i64::MAX))
        );
        for l in m.lines() {
            let _ = writeln!(
                s,
                "    task {}  worker {}  {} stroops",
                l.task.short(),
                l.worker.short(),
                l.amount_stroops
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_with_nothing_owed_says_so_with_and_without_dry_run() {
        let dry = SettleView::DryRun {
            transactions: Vec::new(),
            nothing_owed: true,
        };
        assert_eq!(render_settle(&dry), NOTHING_OWED);
        // Scripts read the same verdict from the JSON.
        let value = serde_json::to_value(&dry).unwrap();
        assert_eq!(value["dry_run"]["nothing_owed"], true, "{value}");
        let nothing_paid = |stopped: Option<String>| SettleView::Submitted {
            nothing_owed: stopped.is_none(),
            paid: Vec::new(),
            failed: Vec::new(),
            pending: 0,
            skipped: Vec::new(),
            receipts_paid: 0,
            stroops_paid: 0,
            stopped,
        };
        let none = nothing_paid(None);
        assert_eq!(render_settle(&none), NOTHING_OWED);
        // Something to report is reported, not hidden behind "nothing owed".
        let stopped = nothing_paid(Some("Horizon did not answer".into()));
        let text = render_settle(&stopped);
        assert!(
            text.contains("stopped early: Horizon did not answer"),
            "{text}"
        );
        assert!(!text.contains("nothing owed"), "{text}");
        let dry = SettleView::DryRun {
            transactions: vec![serde_json::json!({ "envelope_xdr": "AAAA" })],
            nothing_owed: false,
        };
        assert_eq!(render_settle(&dry), "AAAA\n");
    }
}
