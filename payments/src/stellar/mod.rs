//! Stellar keys and classic payment transactions, built and signed with `stellar-xdr`.
//!
//! - [`Wallet`]: the payout key (an ed25519 seed kept as an `S…` strkey file, 0600), separate
//!   from the node's libp2p identity.
//! - [`build_payments`] / [`sign_transaction`]: one native payment operation per destination,
//!   at most 100 per transaction, hashed for a network passphrase and signed.
//! - [`decode_envelope`] / [`verify_envelope`]: the reverse, for checking what we or others
//!   built.

mod tx;
mod wallet;

use sha2::{Digest, Sha256};

pub use tx::{
    MAX_ENVELOPE_BASE64, MAX_PAYMENTS_PER_TX, Payment, SignedTx, TxError, TxParams, build_payments,
    decode_envelope, envelope_hash, envelope_paid, envelope_payments, envelope_tx,
    sign_transaction, verify_envelope,
};
pub use wallet::{Wallet, WalletError};

/// The public testnet's passphrase.
pub const TESTNET_PASSPHRASE: &str = "Test SDF Network ; September 2015";
/// The public network's passphrase.
pub const PUBNET_PASSPHRASE: &str = "Public Global Stellar Network ; September 2015";
/// Stroops in one XLM.
pub const STROOPS_PER_XLM: i64 = 10_000_000;

/// The network id: sha256 of the passphrase.
pub fn network_id(passphrase: &str) -> [u8; 32] {
    Sha256::digest(passphrase.as_bytes()).into()
}

/// Whether `s` is a valid account strkey (`G…`, checksum included).
pub fn is_account_address(s: &str) -> bool {
    stellar_strkey::ed25519::PublicKey::from_string(s).is_ok()
}

/// Formats stroops as XLM with seven decimals, the way Horizon prints amounts.
pub fn format_xlm(stroops: i64) -> String {
    let sign = if stroops < 0 { "-" } else { "" };
    let abs = stroops.unsigned_abs();
    let per = STROOPS_PER_XLM.unsigned_abs();
    format!("{sign}{}.{:07}", abs / per, abs % per)
}

/// Parses a Horizon amount ("10000.0000000") into stroops.
pub fn parse_xlm(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || frac.len() > 7
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(7 - frac.len() as u32)
    };
    let v = whole.checked_mul(STROOPS_PER_XLM)?.checked_add(frac_val)?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_ids_match_published_values() {
        assert_eq!(
            hex::encode(network_id(TESTNET_PASSPHRASE)),
            "cee0302d59844d32bdca915c8203dd44b33fbb7edc19051ea37abedf28ecd472"
        );
        assert_eq!(
            hex::encode(network_id(PUBNET_PASSPHRASE)),
            "7ac33997544e3175d266bd022439b22cdb16508c01163f26e5cb2a3e1045a979"
        );
    }

    #[test]
    fn xlm_amounts_round_trip() {
        assert_eq!(format_xlm(100_000_000_000), "10000.0000000");
        assert_eq!(format_xlm(1), "0.0000001");
        assert_eq!(format_xlm(-15_000_000), "-1.5000000");
        assert_eq!(parse_xlm("10000.0000000"), Some(100_000_000_000));
        assert_eq!(parse_xlm("1.5"), Some(15_000_000));
        assert_eq!(parse_xlm("0.0000001"), Some(1));
        assert_eq!(parse_xlm("7"), Some(70_000_000));
        assert_eq!(parse_xlm("1.00000001"), None);
        assert_eq!(parse_xlm("abc"), None);
        assert_eq!(parse_xlm(".5"), None);
        assert_eq!(parse_xlm("99999999999999999999"), None);
    }

    #[test]
    fn account_addresses_are_checksummed() {
        assert!(is_account_address(
            "GDJJRRMBK4IWLEPJGIE6SXD2LP7REGZODU7WDC3I2D6MR37F4XSHBKX2"
        ));
        assert!(!is_account_address(
            "GDJJRRMBK4IWLEPJGIE6SXD2LP7REGZODU7WDC3I2D6MR37F4XSHBKX3"
        ));
        assert!(!is_account_address(
            "SCCS5ZBI7WVIJ4SW36WGOQQIWJYCL3VOAULSXX3FB57USIO25EDOYQHH"
        ));
    }
}
