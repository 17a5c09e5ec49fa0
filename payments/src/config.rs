//! Configuration of the Stellar side: where Horizon is, which network, fees and settlement
//! policy. Every field has a documented default (the public testnet).

use serde::{Deserialize, Serialize};

use crate::stellar::TESTNET_PASSPHRASE;

/// Where and how to talk to the Stellar network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StellarConfig {
    /// Horizon's base URL. Default: `https://horizon-testnet.stellar.org`.
    pub horizon_url: String,
    /// Friendbot's URL, which funds new testnet accounts; empty disables funding.
    /// Default: `https://friendbot.stellar.org`.
    pub friendbot_url: String,
    /// The network passphrase transactions are signed for.
    /// Default: the public testnet's, `Test SDF Network ; September 2015`.
    pub network_passphrase: String,
    /// Timeout of one HTTP request to Horizon or friendbot, seconds. Default: 30.
    pub request_timeout_secs: u64,
    /// Fee offered per operation, stroops; the network minimum is 100. Default: 100.
    pub base_fee_stroops: u32,
    /// The network's base reserve, stroops; an account must keep (2 + subentries) × this.
    /// Default: 5,000,000 (0.5 XLM).
    pub base_reserve_stroops: i64,
}

impl Default for StellarConfig {
    fn default() -> Self {
        Self {
            horizon_url: "https://horizon-testnet.stellar.org".into(),
            friendbot_url: "https://friendbot.stellar.org".into(),
            network_passphrase: TESTNET_PASSPHRASE.into(),
            request_timeout_secs: 30,
            base_fee_stroops: 100,
            base_reserve_stroops: 5_000_000,
        }
    }
}

impl StellarConfig {
    /// A configuration for a local Horizon-compatible server at `base` (friendbot at
    /// `{base}/friendbot`), keeping the other defaults.
    pub fn local(base: &str, passphrase: &str) -> Self {
        let base = base.trim_end_matches('/');
        Self {
            horizon_url: base.into(),
            friendbot_url: format!("{base}/friendbot"),
            network_passphrase: passphrase.into(),
            ..Self::default()
        }
    }
}

/// When and how the requester pays what it owes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SettlementConfig {
    /// Pay a worker once what we owe it reaches this many stroops. Default: 100,000
    /// (0.01 XLM), so the 100-stroop fee per payment stays at or below 0.1 %.
    pub threshold_stroops: u64,
    /// Most payments in one transaction (1 to 100). Default: 100.
    pub max_payments_per_tx: usize,
    /// How long a settlement transaction stays valid after it is built (its upper time
    /// bound), seconds. Default: 120.
    pub validity_secs: u64,
    /// Extra time after the upper time bound before a transaction whose hash Horizon does not
    /// know is treated as never applied, seconds (clock skew between us and the network).
    /// Default: 10.
    pub expiry_margin_secs: u64,
    /// Submissions of the same envelope before waiting out its time bound. Default: 5.
    pub max_submit_attempts: u32,
    /// Pause between resubmissions, milliseconds. Default: 1000.
    pub retry_delay_ms: u64,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        Self {
            threshold_stroops: 100_000,
            max_payments_per_tx: 100,
            validity_secs: 120,
            expiry_margin_secs: 10,
            max_submit_attempts: 5,
            retry_delay_ms: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_config_keeps_defaults() {
        let c: StellarConfig =
            serde_json::from_str(r#"{"horizon_url":"http://127.0.0.1:8000"}"#).unwrap();
        assert_eq!(c.horizon_url, "http://127.0.0.1:8000");
        assert_eq!(c.network_passphrase, TESTNET_PASSPHRASE);
        assert_eq!(c.base_fee_stroops, 100);
        let s: SettlementConfig = serde_json::from_str(r#"{"threshold_stroops":5}"#).unwrap();
        assert_eq!(s.threshold_stroops, 5);
        assert_eq!(s.max_payments_per_tx, 100);
    }
}
