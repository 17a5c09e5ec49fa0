//! crank-payments against the local Horizon (crank-testnet) and the official Python SDK.
//!
//! Every settlement test ends by checking that each receipt was paid exactly once: the
//! network's applied payments per address equal the sum of that address's receipts, every
//! receipt is settled in the ledger, and the ledger's totals agree with its receipts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crank_payments::horizon::{Funded, Horizon, HorizonError};
use crank_payments::ledger::IntentState;
use crank_payments::settle::Outcome;
use crank_payments::stellar::{
    Payment, TESTNET_PASSPHRASE, TxParams, build_payments, decode_envelope, sign_transaction,
};
use crank_payments::{
    Ledger, Role, SettleError, SettleMode, SettlementConfig, Settler, StellarConfig, Wallet,
    verify_payout,
};
use crank_protocol::{
    ContentHash, CounterSigned, Energy, EnergyMethod, ExecPath, Identity, ModelId, Receipt, Signed,
    TaskId, Timings, WorkReceipt,
};
use crank_testnet::{Fault, LocalHorizon, NetworkConfig};
use stellar_xdr::{Hash, Memo};

/// The requester's node identity; the payer wallet is separate.
fn requester() -> Identity {
    Identity::from_secret([1; 32])
}

fn payer() -> Wallet {
    Wallet::from_seed([2; 32])
}

/// Worker `i`: its node identity and its payout wallet.
fn worker(i: u16) -> (Identity, Wallet) {
    let mut id = [0u8; 32];
    id[..2].copy_from_slice(&i.to_be_bytes());
    id[2] = 0xAA;
    let mut pay = id;
    pay[2] = 0xBB;
    (Identity::from_secret(id), Wallet::from_seed(pay))
}

/// Counter-signed receipts: `per_worker` receipts for each of workers `0..n`, prices varying.
fn receipts(n: u16, per_worker: u64) -> Vec<Receipt> {
    let req = requester();
    let mut out = Vec::new();
    for i in 0..n {
        let (w, wallet) = worker(i);
        let mut cumulative = 0;
        for seq in 1..=per_worker {
            let price = 1_000 + u64::from(i) * 10 + seq;
            cumulative += price;
            let mut task = [0u8; 32];
            task[..2].copy_from_slice(&i.to_be_bytes());
            task[2..10].copy_from_slice(&seq.to_be_bytes());
            let body = WorkReceipt {
                task_id: TaskId(task),
                requester: req.node_id(),
                worker: w.node_id(),
                model: ModelId([3; 32]),
                input_hash: ContentHash([4; 32]),
                output_hash: ContentHash([5; 32]),
                price_stroops: price,
                energy: Energy {
                    microjoules: 100_000,
                    method: EnergyMethod::CpuTimeEstimate,
                },
                path: ExecPath::Cpu,
                timings: Timings {
                    accepted_at: 1,
                    started_at: 2,
                    finished_at: 3,
                    run_micros: 1000,
                },
                pair_seq: seq,
                cumulative_stroops: cumulative,
                payout: wallet.address(),
            };
            let signed = Signed::sign(body, &w).unwrap();
            out.push(CounterSigned::countersign(signed, &req).unwrap());
        }
    }
    out
}

/// What each payout address is owed by `rs`.
fn owed(rs: &[Receipt]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for r in rs {
        *m.entry(r.inner.body.payout.clone()).or_insert(0) += r.inner.body.price_stroops as i64;
    }
    m
}

struct Fixture {
    horizon: LocalHorizon,
    dir: tempfile::TempDir,
    stellar: StellarConfig,
}

impl Fixture {
    /// A local network with the payer and workers `0..n` funded.
    async fn new(n: u16) -> Self {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let horizon = LocalHorizon::start(NetworkConfig::default(), listen)
            .await
            .unwrap();
        let stellar = StellarConfig::local(&horizon.url(), &horizon.passphrase());
        let h = Horizon::new(&stellar).unwrap();
        assert!(matches!(
            h.fund(&payer().address()).await.unwrap(),
            Funded::Funded(_)
        ));
        for i in 0..n {
            h.fund(&worker(i).1.address()).await.unwrap();
        }
        Self {
            horizon,
            dir: tempfile::tempdir().unwrap(),
            stellar,
        }
    }

    fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("ledger.redb")
    }

    fn ledger_with(&self, rs: &[Receipt]) -> Arc<Ledger> {
        let l = Ledger::open(&self.ledger_path()).unwrap();
        for r in rs {
            l.store_receipt(r, Role::Requester).unwrap();
        }
        Arc::new(l)
    }

    fn settler(&self, ledger: Arc<Ledger>, config: SettlementConfig) -> Settler {
        Settler::new(ledger, payer(), self.stellar.clone(), config).unwrap()
    }

    /// Checks that every receipt in `rs` was paid exactly once, on the network and in the
    /// ledger.
    fn assert_paid_exactly_once(&self, ledger: &Ledger, rs: &[Receipt]) {
        let mut got: BTreeMap<String, i64> = BTreeMap::new();
        for p in self.horizon.payments() {
            assert_eq!(p.from, payer().address());
            *got.entry(p.to).or_insert(0) += p.amount;
        }
        assert_eq!(got, owed(rs), "what arrived per address");
        for r in rs {
            let b = &r.inner.body;
            let s = ledger.receipt(&b.task_id, &b.worker).unwrap().unwrap();
            assert!(s.settlement.is_settled(), "{:?}", s.settlement);
        }
        ledger.audit().unwrap();
        let total = ledger.balances().unwrap().total;
        assert_eq!(total.owed_by_us_stroops, 0);
        assert_eq!(
            total.paid_by_us_stroops as i64,
            owed(rs).values().sum::<i64>()
        );
    }
}

fn quick() -> SettlementConfig {
    SettlementConfig {
        threshold_stroops: 1,
        retry_delay_ms: 20,
        max_submit_attempts: 3,
        validity_secs: 60,
        ..SettlementConfig::default()
    }
}

#[tokio::test]
async fn python_sdk_accepts_our_envelopes() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !python.exists() {
        println!(
            "SKIPPED: {} is missing; run scripts/setup-python.sh to check envelopes with the Python SDK",
            python.display()
        );
        return;
    }
    let w = payer();
    let single = [Payment {
        destination: worker(0).1.address(),
        amount_stroops: 12_345,
    }];
    let batch: Vec<Payment> = (0..100)
        .map(|i| Payment {
            destination: worker(i).1.address(),
            amount_stroops: 1 + i64::from(i) * 1_000,
        })
        .collect();
    let mut built = Vec::new();
    for (seq, pays) in [(7i64, &single[..]), (8, &batch[..])] {
        let tx = build_payments(
            &w.public_key(),
            &TxParams {
                sequence: seq,
                base_fee_stroops: 100,
                min_time: 0,
                max_time: 1_900_000_000,
                memo: Memo::Hash(Hash([seq as u8; 32])),
            },
            pays,
        )
        .unwrap();
        built.push((
            sign_transaction(tx, &w, TESTNET_PASSPHRASE).unwrap(),
            pays.to_vec(),
        ));
    }
    let input: Vec<serde_json::Value> = built
        .iter()
        .map(|(s, _)| serde_json::json!({"xdr": s.xdr, "passphrase": TESTNET_PASSPHRASE}))
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/check_envelopes.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&input).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python SDK rejected our envelopes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.len(), 2);
    for ((signed, pays), r) in built.iter().zip(&report) {
        assert_eq!(r["hash"], signed.hash.to_hex(), "same hash");
        assert_eq!(r["source"], w.address());
        let got: Vec<(String, i64)> = r["payments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_i64().unwrap()))
            .collect();
        let want: Vec<(String, i64)> = pays
            .iter()
            .map(|p| (p.destination.clone(), p.amount_stroops))
            .collect();
        assert_eq!(got, want);
        assert_eq!(r["fee"].as_i64().unwrap(), 100 * pays.len() as i64);
    }
    assert_eq!(report[1]["memo_hash"], hex::encode([8u8; 32]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn horizon_client_speaks_to_the_local_server() {
    let f = Fixture::new(1).await;
    let h = Horizon::new(&f.stellar).unwrap();
    assert_eq!(
        h.root().await.unwrap().network_passphrase,
        f.horizon.passphrase()
    );
    let p = payer();
    assert_eq!(h.fund(&p.address()).await.unwrap(), Funded::AlreadyFunded);
    let acct = h.account(&p.address()).await.unwrap().unwrap();
    assert_eq!(acct.balance_stroops, 100_000_000_000);
    assert_eq!(acct.min_balance_stroops(5_000_000), 10_000_000);
    let nobody = Wallet::from_seed([99; 32]).address();
    assert_eq!(h.account(&nobody).await.unwrap(), None);
    assert!(h.account("GNOPE").await.is_err());

    let build = |seq: i64, to: &str| {
        let tx = build_payments(
            &p.public_key(),
            &TxParams {
                sequence: seq,
                base_fee_stroops: 100,
                min_time: 0,
                max_time: 0,
                memo: Memo::None,
            },
            &[Payment {
                destination: to.to_owned(),
                amount_stroops: 500,
            }],
        )
        .unwrap();
        sign_transaction(tx, &p, &f.stellar.network_passphrase).unwrap()
    };
    let ok = build(acct.sequence + 1, &worker(0).1.address());
    let rec = h.submit(&ok.xdr).await.unwrap();
    assert_eq!(rec.hash, ok.hash);
    assert!(rec.successful);
    assert_eq!(rec.fee_charged, 100);
    assert_eq!(h.transaction(&ok.hash).await.unwrap().unwrap(), rec);

    let bad_seq = build(acct.sequence + 5, &worker(0).1.address());
    match h.submit(&bad_seq.xdr).await {
        Err(HorizonError::TxFailed(fail)) => {
            assert_eq!(fail.tx_code, "tx_bad_seq");
            assert!(!fail.was_included());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.transaction(&bad_seq.hash).await.unwrap(), None);

    let no_dest = build(acct.sequence + 2, &nobody);
    let err = h.submit(&no_dest.xdr).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the worker's account does not exist yet; it must be funded first"),
        "{err}"
    );
    assert!(matches!(&err, HorizonError::TxFailed(f) if f.was_included()));
    assert!(matches!(
        h.submit("garbage").await,
        Err(HorizonError::Malformed(_))
    ));
    // A server that is not there is an uncertain transport error, not a crash.
    let gone = Horizon::new(&StellarConfig::local("http://127.0.0.1:9", "x")).unwrap();
    let e = gone.submit(&ok.xdr).await.unwrap_err();
    assert!(e.is_uncertain(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_transactions_page_with_a_cursor() {
    let f = Fixture::new(2).await;
    let h = Horizon::new(&f.stellar).unwrap();
    let p = payer();
    let me = worker(0).1.address();
    let other = worker(1).1.address();
    let nobody = Wallet::from_seed([98; 32]).address();
    let build = |seq: i64, to: &[&str]| {
        let pays: Vec<Payment> = to
            .iter()
            .map(|d| Payment {
                destination: (*d).to_owned(),
                amount_stroops: 1_000,
            })
            .collect();
        let params = TxParams {
            sequence: seq,
            base_fee_stroops: 100,
            min_time: 0,
            max_time: 0,
            memo: Memo::None,
        };
        let tx = build_payments(&p.public_key(), &params, &pays).unwrap();
        sign_transaction(tx, &p, &f.stellar.network_passphrase).unwrap()
    };
    let mut seq = h.account(&p.address()).await.unwrap().unwrap().sequence;
    // Five payments to this worker, one to another worker in between.
    let mut paid_me = Vec::new();
    for to in [&me, &me, &other, &me, &me, &me] {
        seq += 1;
        let t = build(seq, &[to]);
        assert!(h.submit(&t.xdr).await.unwrap().successful);
        if to == &me {
            paid_me.push(t.hash);
        }
    }
    // A failed transaction that would have paid it: not listed.
    seq += 1;
    let failed = build(seq, &[&me, &nobody]);
    assert!(matches!(
        h.submit(&failed.xdr).await,
        Err(HorizonError::TxFailed(fail)) if fail.was_included()
    ));

    // Two at a time with the cursor: every transaction once, oldest first.
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let page = h
            .account_transactions(&me, cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.records.len() <= 2, "{page:?}");
        let Some(last) = page.records.last() else {
            assert_eq!(page.next_cursor, cursor, "an empty page keeps the cursor");
            break;
        };
        assert_eq!(page.next_cursor.as_ref(), Some(&last.paging_token));
        cursor = page.next_cursor.clone();
        seen.extend(page.records);
    }
    // The worker's account was created by friendbot first, then paid.
    assert_eq!(seen.len(), 1 + paid_me.len());
    assert_ne!(seen[0].source_account, p.address());
    let hashes: Vec<_> = seen[1..].iter().map(|t| t.record.hash).collect();
    assert_eq!(hashes, paid_me);
    assert!(seen[1..].iter().all(|t| t.source_account == p.address()));
    assert!(seen.iter().all(|t| t.record.successful));
    let tokens: Vec<u64> = seen
        .iter()
        .map(|t| t.paging_token.parse().unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    assert_eq!(
        h.transaction(&paid_me[0]).await.unwrap().as_ref(),
        Some(&seen[1].record)
    );

    // A cursor at the end gives an empty page that keeps the cursor.
    let end = h
        .account_transactions(&me, cursor.as_deref(), 2)
        .await
        .unwrap();
    assert!(end.records.is_empty());
    assert_eq!(end.next_cursor, cursor);
    // Polling with it finds the next payment, and only that.
    seq += 1;
    let newer = build(seq, &[&me]);
    h.submit(&newer.xdr).await.unwrap();
    let page = h
        .account_transactions(&me, cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].record.hash, newer.hash);

    // An account that does not exist yet: an empty page, not an error.
    let unborn = Wallet::from_seed([97; 32]).address();
    let page = h.account_transactions(&unborn, None, 2).await.unwrap();
    assert_eq!(page, Default::default());
    let page = h
        .account_transactions(&unborn, Some("42"), 2)
        .await
        .unwrap();
    assert!(page.records.is_empty());
    assert_eq!(page.next_cursor.as_deref(), Some("42"));
    // The failed payment's missing destination only took part in a failed transaction.
    let page = h.account_transactions(&nobody, None, 200).await.unwrap();
    assert!(page.records.is_empty());

    // The limit is clamped to 1..=200.
    let one = h.account_transactions(&me, None, 0).await.unwrap();
    assert_eq!(one.records.len(), 1);
    let all = h.account_transactions(&me, None, 10_000).await.unwrap();
    assert_eq!(all.records.len(), seen.len() + 1);
    // Bad inputs are refused before asking.
    assert!(matches!(
        h.account_transactions("GNOPE", None, 2).await,
        Err(HorizonError::BadUrl { .. })
    ));
    for bad in ["1&order=desc", "now", "", "-1"] {
        assert!(
            matches!(
                h.account_transactions(&me, Some(bad), 2).await,
                Err(HorizonError::BadUrl { .. })
            ),
            "{bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_150_workers_in_two_transactions_exactly_once() {
    let f = Fixture::new(150).await;
    let rs = receipts(150, 3);
    let ledger = f.ledger_with(&rs);
    let s = f.settler(ledger.clone(), quick());

    let before = f.horizon.submissions();
    let dry = s.dry_run(SettleMode::All).await.unwrap();
    assert_eq!(dry.len(), 2);
    assert_eq!(f.horizon.submissions(), before, "a dry run submits nothing");
    assert!(ledger.pending_intents().unwrap().is_empty());
    for d in &dry {
        let env = decode_envelope(&d.envelope_xdr).unwrap();
        crank_payments::stellar::verify_envelope(&env, &f.stellar.network_passphrase).unwrap();
    }

    let report = s.settle(SettleMode::All).await.unwrap();
    assert!(report.stopped.is_none(), "{:?}", report.stopped);
    assert_eq!(report.paid.len(), 2);
    assert_eq!(report.paid[0].payments.len(), 100);
    assert_eq!(report.paid[1].payments.len(), 50);
    assert_eq!(report.receipts_paid(), 450);
    assert_eq!(report.paid[0].fee_charged, 10_000);
    f.assert_paid_exactly_once(&ledger, &rs);

    // A worker checks its payment from the memo and the manifest.
    let history = ledger.intents(10).unwrap();
    assert_eq!(history.len(), 2);
    let intent = &history[1];
    let line = &intent.draft.manifest.lines()[0];
    let h = Horizon::new(&f.stellar).unwrap();
    let on_chain = h.transaction(&intent.draft.tx_hash).await.unwrap().unwrap();
    let env = decode_envelope(&on_chain.envelope_xdr).unwrap();
    let covered = verify_payout(&intent.draft.manifest, &env, &line.payout).unwrap();
    assert_eq!(covered.receipts.len(), 3);
    assert_eq!(
        f.horizon.memo_hash(&intent.draft.tx_hash.to_hex()),
        Some(intent.draft.manifest.commitment())
    );

    // Nothing is left; another round pays nothing.
    let again = s.settle(SettleMode::All).await.unwrap();
    assert!(again.paid.is_empty() && again.stopped.is_none());
    f.assert_paid_exactly_once(&ledger, &rs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_decides_who_is_due() {
    let f = Fixture::new(2).await;
    // Worker 0 is owed about 3,000 stroops, worker 1 about 1,000.
    let mut rs = receipts(1, 3);
    rs.extend(receipts(2, 1).into_iter().skip(1));
    let ledger = f.ledger_with(&rs);
    let s = f.settler(
        ledger.clone(),
        SettlementConfig {
            threshold_stroops: 2_000,
            ..quick()
        },
    );
    let plan = s.plan(SettleMode::Due).await.unwrap();
    assert_eq!(plan.batches.len(), 1);
    assert_eq!(plan.batches[0].lines().len(), 3);
    assert!(plan.not_due_stroops > 0);
    let r = s.settle(SettleMode::Due).await.unwrap();
    assert_eq!(r.receipts_paid(), 3);
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.receipts_paid(), 1);
    f.assert_paid_exactly_once(&ledger, &rs);
}

async fn settle_through_fault(faults: &[(Fault, usize)]) {
    let f = Fixture::new(3).await;
    let rs = receipts(3, 2);
    let ledger = f.ledger_with(&rs);
    let s = f.settler(ledger.clone(), quick());
    for (fault, n) in faults {
        f.horizon.inject(*fault, *n);
    }
    let report = s.settle(SettleMode::All).await.unwrap();
    assert!(report.stopped.is_none(), "{:?}", report.stopped);
    assert_eq!(report.paid.len(), 1);
    assert_eq!(f.horizon.pending_faults(), 0);
    f.assert_paid_exactly_once(&ledger, &rs);
    let intent = &ledger.intents(1).unwrap()[0];
    assert!(intent.attempts >= 2, "the envelope was resubmitted");
    assert_eq!(
        f.horizon.included(),
        4 + 1,
        "four friendbot transactions and one payment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_after_apply_is_paid_once() {
    settle_through_fault(&[(Fault::TimeoutAfterApply, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_before_apply_is_paid_once() {
    settle_through_fault(&[(Fault::TimeoutBeforeApply, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_after_apply_is_paid_once() {
    settle_through_fault(&[(Fault::DropAfterApply, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_before_apply_and_503_are_paid_once() {
    settle_through_fault(&[
        (Fault::DropBeforeApply, 1),
        (Fault::UnavailableBeforeApply, 1),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcome_waits_for_the_time_bound_before_rebuilding() {
    let f = Fixture::new(2).await;
    let rs = receipts(2, 2);
    let ledger = f.ledger_with(&rs);
    let config = quick();
    let s = f.settler(ledger.clone(), config);
    // Every submission of the first envelope times out before applying.
    f.horizon.inject(Fault::TimeoutBeforeApply, 3);
    let r = s.settle(SettleMode::All).await.unwrap();
    assert!(r.paid.is_empty());
    assert_eq!(r.pending.len(), 1);
    assert!(matches!(r.stopped, Some(SettleError::StillPending { .. })));
    let first = r.pending[0].clone();
    assert_eq!(ledger.balances().unwrap().total.paid_by_us_stroops, 0);
    // The next round resubmits the identical envelope (the faults are used up): it applies.
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.paid.len(), 1, "{:?}", r.stopped);
    assert_eq!(r.paid[0].tx_hash, first.draft.tx_hash, "the same envelope");
    assert_eq!(ledger.intents(10).unwrap().len(), 1);
    f.assert_paid_exactly_once(&ledger, &rs);

    // Now a transaction that never applies: it must expire before a new one is built.
    let f = Fixture::new(2).await;
    let ledger = f.ledger_with(&rs);
    let s = f.settler(
        ledger.clone(),
        SettlementConfig {
            validity_secs: 3,
            expiry_margin_secs: 1,
            ..quick()
        },
    );
    f.horizon.inject(Fault::TimeoutBeforeApply, 6);
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.pending.len(), 1);
    let first = r.pending[0].clone();
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.pending.len(), 1, "still inside its time bound");
    assert!(r.paid.is_empty());
    assert_eq!(
        ledger.intents(10).unwrap().len(),
        1,
        "no second envelope yet"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.failed.len(), 1, "{:?}", r.stopped);
    assert_eq!(r.failed[0].tx_hash, first.draft.tx_hash);
    assert!(
        r.failed[0].reason.contains("time bound passed"),
        "{}",
        r.failed[0].reason
    );
    assert_eq!(r.paid.len(), 1);
    assert_ne!(r.paid[0].tx_hash, first.draft.tx_hash, "a new envelope");
    f.assert_paid_exactly_once(&ledger, &rs);
    // The expired envelope can never apply now.
    let h = Horizon::new(&f.stellar).unwrap();
    assert!(h.submit(&first.draft.envelope_xdr).await.is_err());
    f.assert_paid_exactly_once(&ledger, &rs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_destination_is_skipped_with_a_clear_reason() {
    let f = Fixture::new(2).await;
    // Worker 2's payout account does not exist.
    let rs = receipts(3, 2);
    let ledger = f.ledger_with(&rs);
    let s = f.settler(ledger.clone(), quick());
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.paid.len(), 1);
    assert_eq!(r.receipts_paid(), 4);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].payout, worker(2).1.address());
    assert_eq!(r.skipped[0].receipts, 2);
    assert_eq!(
        r.skipped[0].reason,
        "the worker's account does not exist yet; it must be funded first"
    );
    let unpaid = ledger
        .receipt(&rs[4].inner.body.task_id, &rs[4].inner.body.worker)
        .unwrap()
        .unwrap();
    assert!(!unpaid.settlement.is_settled());
    ledger.audit().unwrap();

    // Once the worker funds its account, the next round pays it.
    Horizon::new(&f.stellar)
        .unwrap()
        .fund(&worker(2).1.address())
        .await
        .unwrap();
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.receipts_paid(), 2);
    f.assert_paid_exactly_once(&ledger, &rs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_vanishing_after_planning_is_left_out_and_others_paid() {
    // The destination check happens at planning; the network is the final word. Simulate a
    // destination that the plan saw but the ledger does not have by preparing by hand.
    let f = Fixture::new(2).await;
    let rs = receipts(3, 1);
    let ledger = f.ledger_with(&rs);
    let s = f.settler(ledger.clone(), quick());
    let manifest = crank_payments::Manifest::new(
        rs.iter()
            .map(|r| crank_payments::ManifestLine {
                payout: r.inner.body.payout.clone(),
                task: r.inner.body.task_id,
                worker: r.inner.body.worker,
                amount_stroops: r.inner.body.price_stroops,
            })
            .collect(),
    )
    .unwrap();
    let intent = s.prepare(manifest).await.unwrap();
    let outcome = s.resolve(&intent).await.unwrap();
    let Outcome::Failed {
        failure: Some(fail),
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(fail.to_string().contains("must be funded first"), "{fail}");
    // Fee and sequence were consumed, nothing was paid, the receipts are owed again.
    assert!(f.horizon.payments().is_empty());
    assert_eq!(ledger.balances().unwrap().total.in_flight_stroops, 0);
    ledger.audit().unwrap();
    // A normal round skips the missing address and pays the others.
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.receipts_paid(), 2);
    assert_eq!(r.skipped.len(), 1);
    let paid_rs: Vec<Receipt> = rs[..2].to_vec();
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for p in f.horizon.payments() {
        *got.entry(p.to).or_insert(0) += p.amount;
    }
    assert_eq!(got, owed(&paid_rs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underfunded_payer_gets_a_clear_error_and_nothing_is_marked_paid() {
    let f = Fixture::new(2).await;
    let rs = receipts(2, 2);
    let ledger = f.ledger_with(&rs);
    let s = f.settler(ledger.clone(), quick());
    // Just above the reserve: cannot cover the payments.
    f.horizon
        .set_account(&payer().address(), 10_000_100)
        .unwrap();
    let r = s.settle(SettleMode::All).await.unwrap();
    assert!(r.paid.is_empty());
    let err = r.stopped.expect("an error");
    assert!(matches!(err, SettleError::Underfunded { .. }), "{err}");
    assert!(err.to_string().contains("nothing was paid"), "{err}");
    assert!(ledger.intents(10).unwrap().is_empty());
    assert_eq!(ledger.balances().unwrap().total.paid_by_us_stroops, 0);

    // The balance drops after the intent was recorded: the network refuses the payments,
    // the fee is spent, and the receipts are owed again.
    f.horizon
        .set_account(&payer().address(), 100_000_000)
        .unwrap();
    let plan = s.plan(SettleMode::All).await.unwrap();
    let intent = s.prepare(plan.batches[0].clone()).await.unwrap();
    f.horizon
        .set_account(&payer().address(), 10_000_500)
        .unwrap();
    let outcome = s.resolve(&intent).await.unwrap();
    let Outcome::Failed {
        failure: Some(fail),
        intent,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        fail.to_string()
            .contains("does not hold enough XLM for these payments plus its reserve"),
        "{fail}"
    );
    assert!(matches!(intent.state, IntentState::Failed { .. }));
    assert!(f.horizon.payments().is_empty());
    let total = ledger.balances().unwrap().total;
    assert_eq!((total.paid_by_us_stroops, total.in_flight_stroops), (0, 0));
    ledger.audit().unwrap();

    // Refunded, everything is paid once.
    f.horizon
        .set_account(&payer().address(), 100_000_000)
        .unwrap();
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.receipts_paid(), 4, "{:?}", r.stopped);
    f.assert_paid_exactly_once(&ledger, &rs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_network_and_missing_payer_are_clear_errors() {
    let f = Fixture::new(1).await;
    let rs = receipts(1, 1);
    let ledger = f.ledger_with(&rs);
    let mut wrong = f.stellar.clone();
    wrong.network_passphrase = TESTNET_PASSPHRASE.into();
    let s = Settler::new(ledger.clone(), payer(), wrong, quick()).unwrap();
    let e = s.settle(SettleMode::All).await.unwrap_err();
    assert!(matches!(e, SettleError::WrongNetwork { .. }), "{e}");
    let s = Settler::new(
        ledger,
        Wallet::from_seed([77; 32]),
        f.stellar.clone(),
        quick(),
    )
    .unwrap();
    let r = s.settle(SettleMode::All).await.unwrap();
    let e = r.stopped.unwrap();
    assert!(
        e.to_string().contains("does not exist yet; fund it first"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_records_a_verified_payment() {
    let f = Fixture::new(1).await;
    let rs = receipts(1, 2);
    // The requester's ledger pays.
    let requester_ledger = f.ledger_with(&rs);
    let s = f.settler(requester_ledger.clone(), quick());
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.paid.len(), 1);
    // The worker has the same receipts on its side.
    let worker_ledger = Ledger::open(&f.dir.path().join("worker.redb")).unwrap();
    for r in &rs {
        worker_ledger.store_receipt(r, Role::Worker).unwrap();
    }
    let intent = &requester_ledger.intents(1).unwrap()[0];
    let h = Horizon::new(&f.stellar).unwrap();
    let rec = h.transaction(&intent.draft.tx_hash).await.unwrap().unwrap();
    assert!(rec.successful);
    let covered = verify_payout(
        &intent.draft.manifest,
        &decode_envelope(&rec.envelope_xdr).unwrap(),
        &worker(0).1.address(),
    )
    .unwrap();
    assert_eq!(
        worker_ledger
            .record_payment_received(&covered.receipts, rec.hash)
            .unwrap(),
        2
    );
    let total = worker_ledger.balances().unwrap().total;
    assert_eq!(total.owed_to_us_stroops, 0);
    assert_eq!(total.paid_to_us_stroops as i64, covered.amount_stroops);
}

// ---------------------------------------------------------------------------------------
// Crashes: a child process (this test binary, re-run on one ignored test) records an
// intent, optionally submits it, and aborts. The parent then recovers.

const CHILD_ENV: &str = "CRANK_PAYMENTS_CRASH_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests in a child process"]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        // Only meaningful as the crash tests' child; `--include-ignored` runs land here.
        println!("not started by a crash test; nothing to do");
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let ledger = Arc::new(Ledger::open(Path::new(v["ledger"].as_str().unwrap())).unwrap());
    let stellar = StellarConfig::local(
        v["horizon"].as_str().unwrap(),
        v["passphrase"].as_str().unwrap(),
    );
    let s = Settler::new(ledger.clone(), payer(), stellar.clone(), quick()).unwrap();
    let plan = s.plan(SettleMode::All).await.unwrap();
    let intent = s.prepare(plan.batches[0].clone()).await.unwrap();
    if v["mode"] == "after_submit" {
        let h = Horizon::new(&stellar).unwrap();
        h.submit(&intent.draft.envelope_xdr).await.unwrap();
    }
    // Die without unwinding, destructors or a clean ledger close.
    std::process::abort();
}

async fn crash_and_recover(mode: &str) {
    let f = Fixture::new(4).await;
    let rs = receipts(4, 3);
    drop(f.ledger_with(&rs));
    let spec = serde_json::json!({
        "ledger": f.ledger_path(),
        "horizon": f.horizon.url(),
        "passphrase": f.horizon.passphrase(),
        "mode": mode,
    });
    let exe = std::env::current_exe().unwrap();
    let status = tokio::process::Command::new(exe)
        .args(["--ignored", "--exact", "crash_child", "--test-threads=1"])
        .env(CHILD_ENV, spec.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!status.success(), "the child must die");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(6),
            "killed by SIGABRT, not a test failure"
        );
    }
    let ledger = Arc::new(Ledger::open(&f.ledger_path()).unwrap());
    let pending = ledger.pending_intents().unwrap();
    assert_eq!(pending.len(), 1, "the intent survived the crash");
    assert_eq!(
        ledger.balances().unwrap().total.in_flight_stroops,
        owed(&rs).values().sum::<i64>() as u64
    );
    let expect_applied = mode == "after_submit";
    assert_eq!(f.horizon.payments().is_empty(), !expect_applied);

    let s = f.settler(ledger.clone(), quick());
    let outcomes = s.recover().await.unwrap();
    assert!(
        matches!(&outcomes[..], [Outcome::Settled(i)] if i.draft.tx_hash == pending[0].draft.tx_hash)
    );
    let r = s.settle(SettleMode::All).await.unwrap();
    assert!(r.paid.is_empty(), "nothing left to pay");
    f.assert_paid_exactly_once(&ledger, &rs);
    assert_eq!(ledger.intents(10).unwrap().len(), 1, "one envelope in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_intent_and_submit_is_paid_once() {
    crash_and_recover("after_intent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_submit_is_paid_once() {
    crash_and_recover("after_submit").await;
}
