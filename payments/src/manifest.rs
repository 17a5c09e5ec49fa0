//! Settlement manifests: which receipts a payment transaction pays, and the blake3
//! commitment to them that the transaction carries as its `Memo::Hash`.
//!
//! A manifest is a list of lines `(payout address, task, worker, amount)`, sorted by payout,
//! then task, then worker. The transaction holds one payment per payout address, of the sum of
//! that address's lines, in the same order. The commitment is
//!
//! ```text
//! blake3::derive_key("crank-node 1 settlement manifest",
//!     u64be(line count) ‖ for each line: u8(len(payout)) ‖ payout ‖ task(32) ‖ worker(32) ‖ u64be(amount))
//! ```
//!
//! A worker that receives the manifest (over the mesh, in the payer's signed notice) checks a
//! payment with [`verify_payout`]: the memo must equal the commitment; it learns its own lines
//! and what the payer's account actually paid its address. The ledger then credits each of
//! its receipts by that money, line by line ([`Ledger::record_payment`](crate::Ledger::record_payment)),
//! never by what a line claims.

use std::collections::BTreeMap;

use crank_protocol::{NodeId, TaskId};
use serde::{Deserialize, Serialize};
use stellar_xdr::{Memo, TransactionEnvelope};

use crate::stellar::{Payment, TxError, envelope_paid, envelope_tx, is_account_address};
use crate::types::ReceiptKey;

const DOMAIN: &str = "crank-node 1 settlement manifest";

/// Why a manifest cannot be built or a payment does not match it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A manifest needs at least one line.
    #[error("the manifest is empty")]
    Empty,
    /// The same receipt appears twice.
    #[error("receipt {0} appears twice in the manifest")]
    Duplicate(ReceiptKey),
    /// A payout address is not a `G…` account.
    #[error("payout {0:?} is not a Stellar account (G… strkey)")]
    BadPayout(String),
    /// A line has a zero amount (nothing to pay).
    #[error("receipt {0} has a zero amount")]
    ZeroAmount(ReceiptKey),
    /// An address's total does not fit a Stellar amount.
    #[error("the total for {0} does not fit a Stellar amount")]
    Overflow(String),
    /// The transaction's memo is not this manifest's commitment.
    #[error("the transaction memo does not commit to this manifest")]
    MemoMismatch,
    /// The manifest has no lines for this payout address.
    #[error("the manifest pays nothing to {0}")]
    NotInManifest(String),
    /// The envelope could not be read.
    #[error("cannot read the transaction: {0}")]
    Tx(String),
}

impl From<TxError> for ManifestError {
    fn from(e: TxError) -> Self {
        Self::Tx(e.to_string())
    }
}

/// One receipt paid by a settlement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ManifestLine {
    /// The Stellar account paid (`G…`).
    pub payout: String,
    /// The receipt's task.
    pub task: TaskId,
    /// The receipt's worker.
    pub worker: NodeId,
    /// The receipt's price, stroops.
    pub amount_stroops: u64,
}

impl ManifestLine {
    /// The receipt this line pays.
    pub fn key(&self) -> ReceiptKey {
        ReceiptKey {
            task: self.task,
            worker: self.worker,
        }
    }
}

/// The receipts one settlement transaction pays, in canonical order.
///
/// Decoding goes through [`Manifest::new`], so a manifest read back from storage or a peer
/// holds the same invariants as one built here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ManifestRepr")]
pub struct Manifest {
    lines: Vec<ManifestLine>,
}

/// A manifest as encoded, before its checks (same shape as [`Manifest`]).
#[derive(Deserialize)]
struct ManifestRepr {
    lines: Vec<ManifestLine>,
}

impl TryFrom<ManifestRepr> for Manifest {
    type Error = ManifestError;

    fn try_from(repr: ManifestRepr) -> Result<Self, Self::Error> {
        Self::new(repr.lines)
    }
}

impl Manifest {
    /// A manifest from lines in any order; they are sorted and checked.
    pub fn new(mut lines: Vec<ManifestLine>) -> Result<Self, ManifestError> {
        if lines.is_empty() {
            return Err(ManifestError::Empty);
        }
        lines.sort();
        for w in lines.windows(2) {
            if w[0].key() == w[1].key() {
                return Err(ManifestError::Duplicate(w[0].key()));
            }
        }
        for l in &lines {
            if !is_account_address(&l.payout) {
                return Err(ManifestError::BadPayout(
                    l.payout.chars().take(80).collect(),
                ));
            }
            if l.amount_stroops == 0 {
                return Err(ManifestError::ZeroAmount(l.key()));
            }
        }
        let m = Self { lines };
        // Every per-address total must fit an i64 Stellar amount.
        m.totals()?;
        Ok(m)
    }

    /// The lines, sorted by payout, task, worker.
    pub fn lines(&self) -> &[ManifestLine] {
        &self.lines
    }

    /// The receipts paid.
    pub fn keys(&self) -> Vec<ReceiptKey> {
        self.lines.iter().map(ManifestLine::key).collect()
    }

    /// The sum of all lines, stroops (saturating: each payout's total fits an i64, but a
    /// manifest paying many addresses may not fit a u64).
    pub fn total_stroops(&self) -> u64 {
        self.lines
            .iter()
            .fold(0u64, |sum, l| sum.saturating_add(l.amount_stroops))
    }

    fn totals(&self) -> Result<BTreeMap<&str, i64>, ManifestError> {
        let mut out: BTreeMap<&str, i64> = BTreeMap::new();
        for l in &self.lines {
            let amount = i64::try_from(l.amount_stroops)
                .map_err(|_| ManifestError::Overflow(l.payout.clone()))?;
            let t = out.entry(&l.payout).or_insert(0);
            *t = t
                .checked_add(amount)
                .ok_or_else(|| ManifestError::Overflow(l.payout.clone()))?;
        }
        Ok(out)
    }

    /// One payment per payout address, in address order.
    pub fn payments(&self) -> Vec<Payment> {
        self.totals()
            .map(|t| {
                t.into_iter()
                    .map(|(d, a)| Payment {
                        destination: d.to_owned(),
                        amount_stroops: a,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The blake3 commitment carried as the transaction's `Memo::Hash`.
    pub fn commitment(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(DOMAIN);
        h.update(&(self.lines.len() as u64).to_be_bytes());
        for l in &self.lines {
            // Payout strkeys are 56 ASCII characters; the length byte keeps the encoding
            // unambiguous anyway.
            h.update(&[l.payout.len().min(255) as u8]);
            h.update(l.payout.as_bytes());
            h.update(&l.task.0);
            h.update(&l.worker.0);
            h.update(&l.amount_stroops.to_be_bytes());
        }
        *h.finalize().as_bytes()
    }
}

/// What a transaction whose memo commits to a manifest paid one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered {
    /// The manifest's lines for the address, in canonical order.
    pub lines: Vec<ManifestLine>,
    /// What the payer's account paid the address in the transaction, stroops.
    pub received_stroops: u64,
}

/// Checks that a transaction's memo commits to `manifest`; returns the manifest's lines for
/// `payout` and what `payer` actually paid `payout` in it.
///
/// What the lines claim and what arrived may differ: the ledger records what arrived,
/// receipt by receipt. This checks content only; whether the transaction was applied is
/// Horizon's answer (`successful` for its hash).
pub fn verify_payout(
    manifest: &Manifest,
    envelope: &TransactionEnvelope,
    payer: &str,
    payout: &str,
) -> Result<Covered, ManifestError> {
    let tx = envelope_tx(envelope)?;
    match &tx.memo {
        Memo::Hash(h) if h.0 == manifest.commitment() => {}
        _ => return Err(ManifestError::MemoMismatch),
    }
    let lines: Vec<ManifestLine> = manifest
        .lines
        .iter()
        .filter(|l| l.payout == payout)
        .cloned()
        .collect();
    if lines.is_empty() {
        return Err(ManifestError::NotInManifest(
            payout.chars().take(80).collect(),
        ));
    }
    let paid = envelope_paid(envelope, payer, payout)?;
    Ok(Covered {
        lines,
        received_stroops: u64::try_from(paid).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stellar::{TxParams, Wallet, build_payments, sign_transaction};
    use proptest::prelude::*;

    fn line(payout: &Wallet, task: u8, worker: u8, amount: u64) -> ManifestLine {
        ManifestLine {
            payout: payout.address(),
            task: TaskId([task; 32]),
            worker: NodeId([worker; 32]),
            amount_stroops: amount,
        }
    }

    fn envelope(m: &Manifest, memo: [u8; 32]) -> TransactionEnvelope {
        let payer = Wallet::from_seed([100; 32]);
        let tx = build_payments(
            &payer.public_key(),
            &TxParams {
                sequence: 1,
                base_fee_stroops: 100,
                min_time: 0,
                max_time: 10,
                memo: Memo::Hash(stellar_xdr::Hash(memo)),
            },
            &m.payments(),
        )
        .unwrap();
        sign_transaction(tx, &payer, "x").unwrap().envelope
    }

    #[test]
    fn decoding_checks_what_new_checks() {
        #[derive(Serialize)]
        struct Raw {
            lines: Vec<ManifestLine>,
        }
        let a = Wallet::from_seed([1; 32]);
        let good = Manifest::new(vec![line(&a, 1, 1, 10)]).unwrap();
        let bytes = postcard::to_stdvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<Manifest>(&bytes).unwrap(), good);
        for bad in [
            vec![],
            vec![line(&a, 1, 1, 10), line(&a, 1, 1, 20)],
            vec![line(&a, 1, 1, 0)],
            vec![line(&a, 1, 1, u64::MAX)],
        ] {
            let bytes = postcard::to_stdvec(&Raw { lines: bad.clone() }).unwrap();
            assert!(
                postcard::from_bytes::<Manifest>(&bytes).is_err(),
                "{bad:?} decoded"
            );
        }
        let many = Manifest::new(
            (0..3u8)
                .map(|i| line(&Wallet::from_seed([i + 1; 32]), i, 1, i64::MAX as u64))
                .collect(),
        )
        .unwrap();
        assert_eq!(many.total_stroops(), u64::MAX);
    }

    #[test]
    fn one_payment_per_address_and_verification() {
        let (a, b) = (Wallet::from_seed([1; 32]), Wallet::from_seed([2; 32]));
        let m = Manifest::new(vec![
            line(&b, 3, 2, 30),
            line(&a, 1, 1, 10),
            line(&a, 2, 1, 20),
        ])
        .unwrap();
        let pays = m.payments();
        assert_eq!(pays.len(), 2);
        assert_eq!(m.total_stroops(), 60);
        let env = envelope(&m, m.commitment());
        let payer = Wallet::from_seed([100; 32]).address();
        let c = verify_payout(&m, &env, &payer, &a.address()).unwrap();
        assert_eq!(c.received_stroops, 30);
        assert_eq!(c.lines.len(), 2);
        assert_eq!(
            verify_payout(&m, &env, &payer, &b.address())
                .unwrap()
                .received_stroops,
            30
        );
        // Paid by another account: nothing received from the payer named.
        let stranger = Wallet::from_seed([8; 32]).address();
        assert_eq!(
            verify_payout(&m, &env, &stranger, &a.address())
                .unwrap()
                .received_stroops,
            0
        );
        let other = Wallet::from_seed([9; 32]).address();
        assert!(matches!(
            verify_payout(&m, &env, &payer, &other),
            Err(ManifestError::NotInManifest(_))
        ));
        // A memo for another manifest.
        let env = envelope(&m, [0; 32]);
        assert_eq!(
            verify_payout(&m, &env, &payer, &a.address()),
            Err(ManifestError::MemoMismatch)
        );
        // A transaction that underpays one address under the right memo: what arrived is
        // what counts.
        let mut short = m.clone();
        let i = short
            .lines
            .iter()
            .position(|l| l.payout == a.address())
            .unwrap();
        short.lines[i].amount_stroops -= 1;
        let env = envelope(&short, m.commitment());
        assert_eq!(
            verify_payout(&m, &env, &payer, &a.address())
                .unwrap()
                .received_stroops,
            29
        );
    }

    #[test]
    fn bad_manifests_are_refused() {
        let a = Wallet::from_seed([1; 32]);
        assert_eq!(Manifest::new(vec![]), Err(ManifestError::Empty));
        assert!(matches!(
            Manifest::new(vec![line(&a, 1, 1, 10), line(&a, 1, 1, 10)]),
            Err(ManifestError::Duplicate(_))
        ));
        assert!(matches!(
            Manifest::new(vec![line(&a, 1, 1, 0)]),
            Err(ManifestError::ZeroAmount(_))
        ));
        let mut bad = line(&a, 1, 1, 1);
        bad.payout = "G123".into();
        assert!(matches!(
            Manifest::new(vec![bad]),
            Err(ManifestError::BadPayout(_))
        ));
        assert!(matches!(
            Manifest::new(vec![
                line(&a, 1, 1, u64::MAX / 2),
                line(&a, 2, 1, u64::MAX / 2)
            ]),
            Err(ManifestError::Overflow(_))
        ));
    }

    proptest! {
        #[test]
        fn commitment_is_order_independent_and_content_sensitive(
            lines in proptest::collection::btree_map((0u8..20, 0u8..4), 1u64..1_000_000, 1..30),
            tweak in 0usize..30,
        ) {
            let payouts: Vec<Wallet> = (0..4).map(|i| Wallet::from_seed([i + 50; 32])).collect();
            let mk = |v: &[((u8, u8), u64)]| v.iter().map(|((t, w), a)| line(&payouts[*w as usize], *t, *w, *a)).collect::<Vec<_>>();
            let v: Vec<((u8, u8), u64)> = lines.into_iter().collect();
            let m = Manifest::new(mk(&v)).unwrap();
            let mut rev = v.clone();
            rev.reverse();
            let r = Manifest::new(mk(&rev)).unwrap();
            prop_assert_eq!(m.commitment(), r.commitment());
            let total: u64 = m.payments().iter().map(|p| p.amount_stroops as u64).sum();
            prop_assert_eq!(total, m.total_stroops());
            let mut changed = v.clone();
            let i = tweak % changed.len();
            changed[i].1 += 1;
            prop_assert_ne!(Manifest::new(mk(&changed)).unwrap().commitment(), m.commitment());
        }
    }
}
