//! Building, signing, decoding and verifying classic payment transactions.

use ed25519_dalek::{Verifier, VerifyingKey};
use stellar_xdr::{
    Asset, Limits, Memo, MuxedAccount, Operation, OperationBody, PaymentOp, Preconditions, ReadXdr,
    SequenceNumber, TimeBounds, TimePoint, Transaction, TransactionEnvelope, TransactionExt,
    TransactionV1Envelope, Uint256, WriteXdr,
};

use super::{Wallet, network_id};
use crate::types::TxHash;

/// Most payment operations in one transaction (Stellar's `MAX_OPS_PER_TX`).
pub const MAX_PAYMENTS_PER_TX: usize = stellar_xdr::MAX_OPS_PER_TX as usize;
/// Longest base64 envelope accepted for decoding; a 100-payment envelope is about 8 KiB.
pub const MAX_ENVELOPE_BASE64: usize = 256 * 1024;

/// Limits applied when decoding envelopes from anyone: bounded depth and size.
fn decode_limits() -> Limits {
    Limits {
        depth: 200,
        len: MAX_ENVELOPE_BASE64,
    }
}

/// Why a transaction could not be built, signed, decoded or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// A transaction needs at least one payment.
    #[error("a transaction needs at least one payment")]
    NoPayments,
    /// More payments than one transaction may hold.
    #[error("{0} payments do not fit one transaction (limit {MAX_PAYMENTS_PER_TX})")]
    TooManyPayments(usize),
    /// A destination is not a `G…` account strkey.
    #[error("destination {0:?} is not a Stellar account (G… strkey)")]
    BadDestination(String),
    /// A payment amount is zero or negative.
    #[error("payment amount {0} stroops must be positive")]
    BadAmount(i64),
    /// The total fee does not fit 32 bits.
    #[error("fee overflow: {base_fee} stroops × {ops} operations")]
    FeeOverflow {
        /// Fee per operation.
        base_fee: u32,
        /// Operations.
        ops: usize,
    },
    /// XDR encoding or decoding failed.
    #[error("XDR: {0}")]
    Xdr(#[from] stellar_xdr::Error),
    /// The base64 text is longer than any envelope we accept.
    #[error("envelope is {0} base64 characters, limit {MAX_ENVELOPE_BASE64}")]
    TooLarge(usize),
    /// Only v1 transaction envelopes are handled (no v0, no fee bumps).
    #[error("not a v1 transaction envelope")]
    NotV1,
    /// The source is a muxed account; only plain accounts sign here.
    #[error("muxed source accounts are not supported")]
    MuxedSource,
    /// No signature on the envelope matches the source account's key.
    #[error("no valid signature by the source account for this network passphrase")]
    BadSignature,
    /// The payments of one transaction add up to more than an amount holds.
    #[error("payment amounts overflow")]
    AmountOverflow,
}

/// One native XLM payment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Payment {
    /// Destination account, `G…` strkey.
    pub destination: String,
    /// Amount, stroops (positive).
    pub amount_stroops: i64,
}

/// The parts of a transaction other than its payments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxParams {
    /// The sequence number: the source account's current sequence + 1.
    pub sequence: i64,
    /// Fee per operation, stroops (the network minimum is 100).
    pub base_fee_stroops: u32,
    /// Earliest ledger close time, Unix seconds (0 = none).
    pub min_time: u64,
    /// Latest ledger close time, Unix seconds (0 = none; avoid, a stuck transaction could
    /// then apply at any later time).
    pub max_time: u64,
    /// The memo.
    pub memo: Memo,
}

/// Builds a transaction from `source` with one native payment per entry.
pub fn build_payments(
    source: &[u8; 32],
    params: &TxParams,
    payments: &[Payment],
) -> Result<Transaction, TxError> {
    if payments.is_empty() {
        return Err(TxError::NoPayments);
    }
    if payments.len() > MAX_PAYMENTS_PER_TX {
        return Err(TxError::TooManyPayments(payments.len()));
    }
    let mut ops = Vec::with_capacity(payments.len());
    for p in payments {
        let dest = stellar_strkey::ed25519::PublicKey::from_string(&p.destination)
            .map_err(|_| TxError::BadDestination(p.destination.chars().take(80).collect()))?;
        if p.amount_stroops <= 0 {
            return Err(TxError::BadAmount(p.amount_stroops));
        }
        ops.push(Operation {
            source_account: None,
            body: OperationBody::Payment(PaymentOp {
                destination: MuxedAccount::Ed25519(Uint256(dest.0)),
                asset: Asset::Native,
                amount: p.amount_stroops,
            }),
        });
    }
    let fee = u32::try_from(payments.len())
        .ok()
        .and_then(|n| params.base_fee_stroops.checked_mul(n))
        .ok_or(TxError::FeeOverflow {
            base_fee: params.base_fee_stroops,
            ops: payments.len(),
        })?;
    let cond = if params.min_time == 0 && params.max_time == 0 {
        Preconditions::None
    } else {
        Preconditions::Time(TimeBounds {
            min_time: TimePoint(params.min_time),
            max_time: TimePoint(params.max_time),
        })
    };
    Ok(Transaction {
        source_account: MuxedAccount::Ed25519(Uint256(*source)),
        fee,
        seq_num: SequenceNumber(params.sequence),
        cond,
        memo: params.memo.clone(),
        operations: ops
            .try_into()
            .map_err(|_| TxError::TooManyPayments(payments.len()))?,
        ext: TransactionExt::V0,
    })
}

/// A signed transaction envelope with its hash and base64 XDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// The envelope.
    pub envelope: TransactionEnvelope,
    /// sha256 of the signature payload for the network it was signed for.
    pub hash: TxHash,
    /// Base64 XDR of the envelope, as submitted to Horizon.
    pub xdr: String,
}

/// Hashes `tx` for `passphrase` and signs it with `wallet`.
pub fn sign_transaction(
    tx: Transaction,
    wallet: &Wallet,
    passphrase: &str,
) -> Result<SignedTx, TxError> {
    let hash = tx.hash(network_id(passphrase))?;
    let sig = wallet.sign_hash(&hash);
    let envelope = TransactionEnvelope::Tx(TransactionV1Envelope {
        tx,
        signatures: vec![sig].try_into()?,
    });
    let xdr = envelope.to_xdr_base64(Limits::none())?;
    Ok(SignedTx {
        envelope,
        hash: TxHash(hash),
        xdr,
    })
}

/// Decodes a base64 envelope with bounded size and depth; trailing bytes are an error.
pub fn decode_envelope(b64: &str) -> Result<TransactionEnvelope, TxError> {
    if b64.len() > MAX_ENVELOPE_BASE64 {
        return Err(TxError::TooLarge(b64.len()));
    }
    Ok(TransactionEnvelope::from_xdr_base64(b64, decode_limits())?)
}

/// The transaction inside a v1 envelope.
pub fn envelope_tx(env: &TransactionEnvelope) -> Result<&Transaction, TxError> {
    match env {
        TransactionEnvelope::Tx(v1) => Ok(&v1.tx),
        _ => Err(TxError::NotV1),
    }
}

/// The hash of a v1 envelope's transaction for `passphrase`.
pub fn envelope_hash(env: &TransactionEnvelope, passphrase: &str) -> Result<TxHash, TxError> {
    Ok(TxHash(envelope_tx(env)?.hash(network_id(passphrase))?))
}

/// Checks that a v1 envelope carries a valid signature by its source account for
/// `passphrase`; returns the transaction hash.
pub fn verify_envelope(env: &TransactionEnvelope, passphrase: &str) -> Result<TxHash, TxError> {
    let TransactionEnvelope::Tx(v1) = env else {
        return Err(TxError::NotV1);
    };
    let MuxedAccount::Ed25519(Uint256(source)) = &v1.tx.source_account else {
        return Err(TxError::MuxedSource);
    };
    let hash = v1.tx.hash(network_id(passphrase))?;
    let key = VerifyingKey::from_bytes(source).map_err(|_| TxError::BadSignature)?;
    let ok = v1.signatures.iter().any(|s| {
        s.hint.0 == source[28..]
            && <[u8; 64]>::try_from(s.signature.0.as_slice())
                .ok()
                .is_some_and(|sig| {
                    key.verify(&hash, &ed25519_dalek::Signature::from_bytes(&sig))
                        .is_ok()
                })
    });
    if ok {
        Ok(TxHash(hash))
    } else {
        Err(TxError::BadSignature)
    }
}

/// The native payments in a v1 envelope, as (destination `G…`, stroops); other operations
/// and muxed destinations are skipped.
pub fn envelope_payments(env: &TransactionEnvelope) -> Result<Vec<Payment>, TxError> {
    let tx = envelope_tx(env)?;
    Ok(tx
        .operations
        .iter()
        .filter_map(|op| match &op.body {
            OperationBody::Payment(PaymentOp {
                destination: MuxedAccount::Ed25519(Uint256(d)),
                asset: Asset::Native,
                amount,
            }) => Some(Payment {
                destination: stellar_strkey::ed25519::PublicKey(*d)
                    .to_string()
                    .as_str()
                    .to_owned(),
                amount_stroops: *amount,
            }),
            _ => None,
        })
        .collect())
}

/// The sum of a v1 envelope's native payments from `from` to `to`, stroops. An operation
/// pays from its own source account when it names one, else from the transaction's.
pub fn envelope_paid(env: &TransactionEnvelope, from: &str, to: &str) -> Result<i64, TxError> {
    let tx = envelope_tx(env)?;
    let account = |m: &MuxedAccount| match m {
        MuxedAccount::Ed25519(Uint256(k)) => {
            Some(stellar_strkey::ed25519::PublicKey(*k).to_string())
        }
        MuxedAccount::MuxedEd25519(_) => None,
    };
    let tx_source = account(&tx.source_account);
    let mut sum: i64 = 0;
    for op in tx.operations.iter() {
        let OperationBody::Payment(PaymentOp {
            destination,
            asset: Asset::Native,
            amount,
        }) = &op.body
        else {
            continue;
        };
        let source = match &op.source_account {
            Some(m) => account(m),
            None => tx_source.clone(),
        };
        if source.as_deref() == Some(from) && account(destination).as_deref() == Some(to) {
            sum = sum.checked_add(*amount).ok_or(TxError::AmountOverflow)?;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stellar::{PUBNET_PASSPHRASE, TESTNET_PASSPHRASE};

    const SECRET: &str = "SCCS5ZBI7WVIJ4SW36WGOQQIWJYCL3VOAULSXX3FB57USIO25EDOYQHH";
    const DEST: &str = "GDJJRRMBK4IWLEPJGIE6SXD2LP7REGZODU7WDC3I2D6MR37F4XSHBKX2";

    /// py-stellar-base `tests/test_transaction_envelope.py::test_to_xdr_v1`.
    const V1_PUBNET: &str = "AAAAAgAAAADL13HWIyocdKsZ7A7HM8Srqmv+uZWc+rI4xx3M8oedCQAAAMgAAAAAAAAAAQAAAAEAAAAAAAAwOQAAAAAAAN3VAAAAAgAAAAAAAABkAAAAAQAAAAAAAAABAAAAANKYxYFXEWWR6TIJ6Vx6W/8SGy4dP2GLaND8yO/l5eRwAAAAAAAAAAJUC+QAAAAAAAAAAAHyh50JAAAAQCXOQnmno3he687bKRtDc6+BXRUf8t+RnTuHy+sKf35UjfFiQbIge+txehmg0N61JsFWfwbL0JtgOjzyeZw5JAs=";
    const V1_TESTNET: &str = "AAAAAgAAAADL13HWIyocdKsZ7A7HM8Srqmv+uZWc+rI4xx3M8oedCQAAAMgAAAAAAAAAAQAAAAEAAAAAAAAwOQAAAAAAAN3VAAAAAgAAAAAAAABkAAAAAQAAAAAAAAABAAAAANKYxYFXEWWR6TIJ6Vx6W/8SGy4dP2GLaND8yO/l5eRwAAAAAAAAAAJUC+QAAAAAAAAAAAHyh50JAAAAQB+t15qCPguKvmo0VhrCwEoyOyh5Z93aJh8Kx24SZ7m6lfHHXfz7o3QvKJAPu0Z2y+iXmBHOBJmZcfRZPPxP2g0=";
    /// stellar-docs `SubmitaTransaction.yml`: a real testnet transaction with its hash.
    const V2: &str = "AAAAAgAAAACQcEK2yfQA9CHrX+2UMkRIb/1wzltKqHpbdIcJbp+b/QAAAGQAAiEYAAAAAQAAAAEAAAAAAAAAAAAAAABgXP3QAAAAAQAAABBUZXN0IFRyYW5zYWN0aW9uAAAAAQAAAAAAAAABAAAAAJBwQrbJ9AD0Ietf7ZQyREhv/XDOW0qoelt0hwlun5v9AAAAAAAAAAAF9eEAAAAAAAAAAAFun5v9AAAAQKdJnG8QRiv9xGp1Oq7ACv/xR2BnNqjfUHrGNua7m4tWbrun3+GmAj6ca3xz+4ZppWRTbvTUcCxvpbHERZ85QgY=";

    fn v1_tx() -> (Wallet, Transaction) {
        let w = Wallet::from_secret(SECRET).unwrap();
        let tx = build_payments(
            &w.public_key(),
            &TxParams {
                sequence: 1,
                base_fee_stroops: 200,
                min_time: 12345,
                max_time: 56789,
                memo: Memo::Id(100),
            },
            &[Payment {
                destination: DEST.into(),
                amount_stroops: 10_000_000_000,
            }],
        )
        .unwrap();
        (w, tx)
    }

    #[test]
    fn reproduces_the_python_sdk_vector_byte_for_byte() {
        let (w, tx) = v1_tx();
        let signed = sign_transaction(tx.clone(), &w, PUBNET_PASSPHRASE).unwrap();
        assert_eq!(signed.xdr, V1_PUBNET);
        assert_eq!(
            signed.hash.to_hex(),
            "40a1855a9afaa19fbef064c833132096ba0cd5283138c0013f6151dd0b21aee9"
        );
        let signed = sign_transaction(tx, &w, TESTNET_PASSPHRASE).unwrap();
        assert_eq!(signed.xdr, V1_TESTNET);
        assert_eq!(
            signed.hash.to_hex(),
            "c7f3921ac2c14ca4d98993f6d89e433c2cfb00b5de0b25f8ec24094618f3b3ec"
        );
        let env = decode_envelope(V1_TESTNET).unwrap();
        assert_eq!(
            verify_envelope(&env, TESTNET_PASSPHRASE).unwrap(),
            signed.hash
        );
        // The same envelope does not verify for another network.
        assert!(matches!(
            verify_envelope(&env, PUBNET_PASSPHRASE),
            Err(TxError::BadSignature)
        ));
    }

    #[test]
    fn decodes_and_verifies_a_published_testnet_transaction() {
        let env = decode_envelope(V2).unwrap();
        assert_eq!(env.to_xdr_base64(Limits::none()).unwrap(), V2);
        let hash = verify_envelope(&env, TESTNET_PASSPHRASE).unwrap();
        assert_eq!(
            hash.to_hex(),
            "8ef0c6d60357bf91b0b0d7800b747ff02bf73117d3e017690cbff641ca67f124"
        );
        let tx = envelope_tx(&env).unwrap();
        assert_eq!(tx.fee, 100);
        assert_eq!(tx.seq_num.0, 599_336_916_353_025);
        assert!(
            matches!(&tx.memo, Memo::Text(t) if t.to_utf8_string_lossy() == "Test Transaction")
        );
        let pays = envelope_payments(&env).unwrap();
        assert_eq!(
            pays,
            vec![Payment {
                destination: "GCIHAQVWZH2AB5BB5NP63FBSIREG77LQZZNUVKD2LN2IOCLOT6N72MJN".into(),
                amount_stroops: 100_000_000,
            }]
        );
        // A flipped signature bit no longer verifies.
        let mut bad = env.clone();
        if let TransactionEnvelope::Tx(v1) = &mut bad {
            let mut sigs = v1.signatures.to_vec();
            let mut bytes = sigs[0].signature.0.to_vec();
            bytes[0] ^= 1;
            sigs[0].signature = stellar_xdr::Signature(bytes.try_into().unwrap());
            v1.signatures = sigs.try_into().unwrap();
        }
        assert!(matches!(
            verify_envelope(&bad, TESTNET_PASSPHRASE),
            Err(TxError::BadSignature)
        ));
    }

    #[test]
    fn batches_are_bounded_and_fees_scale_with_operations() {
        let w = Wallet::from_seed([5; 32]);
        let params = TxParams {
            sequence: 7,
            base_fee_stroops: 100,
            min_time: 0,
            max_time: 1000,
            memo: Memo::Hash(stellar_xdr::Hash([9; 32])),
        };
        let pay = |n: usize| {
            (0..n)
                .map(|i| Payment {
                    destination: Wallet::from_seed([i as u8; 32]).address(),
                    amount_stroops: 1 + i as i64,
                })
                .collect::<Vec<_>>()
        };
        let tx = build_payments(&w.public_key(), &params, &pay(100)).unwrap();
        assert_eq!(tx.fee, 10_000);
        assert_eq!(tx.operations.len(), 100);
        assert!(matches!(
            build_payments(&w.public_key(), &params, &pay(101)),
            Err(TxError::TooManyPayments(101))
        ));
        assert!(matches!(
            build_payments(&w.public_key(), &params, &[]),
            Err(TxError::NoPayments)
        ));
        let mut bad = pay(1);
        bad[0].amount_stroops = 0;
        assert!(matches!(
            build_payments(&w.public_key(), &params, &bad),
            Err(TxError::BadAmount(0))
        ));
        bad[0] = Payment {
            destination: "GABC".into(),
            amount_stroops: 5,
        };
        assert!(matches!(
            build_payments(&w.public_key(), &params, &bad),
            Err(TxError::BadDestination(_))
        ));
    }

    #[test]
    fn garbage_envelopes_are_errors() {
        assert!(decode_envelope("").is_err());
        assert!(decode_envelope("!!!!").is_err());
        assert!(decode_envelope(&"A".repeat(MAX_ENVELOPE_BASE64 + 4)).is_err());
        // Trailing bytes after a valid envelope.
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut padded = engine.decode(V2).unwrap();
        padded.extend_from_slice(&[0, 0, 0, 0]);
        let b64 = engine.encode(&padded);
        assert!(decode_envelope(&b64).is_err());
    }
}
