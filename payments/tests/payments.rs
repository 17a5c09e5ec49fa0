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

use crank_payments::horizon::{Funded, Horizon, HorizonError, TxRecord};
use crank_payments::ledger::IntentState;
use crank_payments::settle::Outcome;
use crank_payments::stellar::{
    Payment, TESTNET_PASSPHRASE, TxParams, build_payments, decode_envelope, sign_transaction,
};
use crank_payments::{
    Check, ExchangeError, Ledger, Manifest, ManifestError, ManifestLine, ReceiptProof,
    RecordedPayment, RequesterReceipts, Role, SettleError, SettleMode, Settlement,
    SettlementConfig, Settler, StellarConfig, StoredReceipt, TxHash, Wallet, WorkerReceipts,
    verify_payout,
};
use crank_protocol::{
    ContentHash, CounterSigned, Energy, EnergyMethod, ExecPath, Identity, ModelId, PaidReceipt,
    Receipt, SettlementNotice, Signed, TaskId, Timings, WorkReceipt,
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

/// Counter-signed receipts: `per_worker` receipts for each of workers `0..n`, prices varying,
/// paid from the payer's wallet.
fn receipts(n: u16, per_worker: u64) -> Vec<Receipt> {
    receipts_from(&requester(), &payer().address(), n, per_worker)
}

/// Counter-signed receipts of requester `req`, naming `payer` as the paying account.
fn receipts_from(req: &Identity, payer: &str, n: u16, per_worker: u64) -> Vec<Receipt> {
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
                payer: payer.to_owned(),
            };
            let signed = Signed::sign(body, &w).unwrap();
            out.push(CounterSigned::countersign(signed, req).unwrap());
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
            l.store_receipt(r, Role::Requester, Check::Passed).unwrap();
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

/// Worker `i`'s side of the receipt exchange over `ledger`, checking notices on the
/// fixture's network.
fn worker_side(f: &Fixture, ledger: &Arc<Ledger>, i: u16) -> WorkerReceipts {
    let (id, wallet) = worker(i);
    WorkerReceipts::new(ledger.clone(), id, wallet.address(), f.stellar.clone())
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
    let covered = verify_payout(
        &intent.draft.manifest,
        &env,
        &payer().address(),
        &line.payout,
    )
    .unwrap();
    assert_eq!(covered.lines.len(), 3);
    assert_eq!(
        covered.received_stroops,
        covered.lines.iter().map(|l| l.amount_stroops).sum::<u64>()
    );
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
async fn receipts_naming_another_paying_account_are_skipped_with_a_reason() {
    let f = Fixture::new(2).await;
    // The payout key was replaced: receipts made earlier name the old account as payer.
    let old = Wallet::from_seed([0x5e; 32]).address();
    let rs = receipts_from(&requester(), &old, 2, 2);
    let ledger = f.ledger_with(&rs);
    let s = f.settler(ledger.clone(), quick());
    let r = s.settle(SettleMode::All).await.unwrap();
    assert_eq!(r.receipts_paid(), 0);
    assert_eq!(r.skipped.len(), 2, "one entry per worker account");
    for k in &r.skipped {
        assert_eq!(k.receipts, 2);
        assert!(k.reason.contains(&old), "{}", k.reason);
        assert!(
            k.reason.contains("pay them from that account"),
            "{}",
            k.reason
        );
    }
    assert_eq!(ledger.owed_receipts().unwrap().len(), 4, "still owed");
    ledger.audit().unwrap();
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
    // Receipts name the account that pays them: a settler paying from another account
    // leaves them alone.
    let missing = Wallet::from_seed([77; 32]);
    let s = Settler::new(
        ledger,
        Wallet::from_seed([77; 32]),
        f.stellar.clone(),
        quick(),
    )
    .unwrap();
    let r = s.settle(SettleMode::All).await.unwrap();
    assert!(r.paid.is_empty() && r.stopped.is_none(), "{:?}", r.stopped);
    // Receipts naming an account that does not exist: a clear error.
    let other = Ledger::open(&f.dir.path().join("other.redb")).unwrap();
    for r in receipts_from(&requester(), &missing.address(), 1, 1) {
        other
            .store_receipt(&r, Role::Requester, Check::Passed)
            .unwrap();
    }
    let s = Settler::new(Arc::new(other), missing, f.stellar.clone(), quick()).unwrap();
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
    let worker_ledger = Arc::new(Ledger::open(&f.dir.path().join("worker.redb")).unwrap());
    for r in &rs {
        worker_ledger
            .store_receipt(r, Role::Worker, Check::Passed)
            .unwrap();
    }
    let intent = &requester_ledger.intents(1).unwrap()[0];
    let h = Horizon::new(&f.stellar).unwrap();
    let rec = h.transaction(&intent.draft.tx_hash).await.unwrap().unwrap();
    assert!(rec.successful);
    let covered = verify_payout(
        &intent.draft.manifest,
        &decode_envelope(&rec.envelope_xdr).unwrap(),
        &payer().address(),
        &worker(0).1.address(),
    )
    .unwrap();
    assert_eq!(covered.lines.len(), 2);
    // The requester's signed notice, checked by the worker against the network.
    let notice = RequesterReceipts::new(requester_ledger.clone(), requester())
        .notice(intent)
        .unwrap();
    let w = worker_side(&f, &worker_ledger, 0);
    let first = w.record_notice(&notice).await.unwrap();
    let RecordedPayment::New(p) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(p.credits.len(), 2);
    assert_eq!(p.unallocated_stroops, 0);
    assert_eq!(
        w.record_notice(&notice).await.unwrap(),
        RecordedPayment::AlreadyRecorded(p.clone())
    );
    let total = worker_ledger.balances().unwrap().total;
    assert_eq!(total.owed_to_us_stroops, 0);
    assert_eq!(total.paid_to_us_stroops, covered.received_stroops);
    worker_ledger.audit().unwrap();
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

// ---------------------------------------------------------------------------------------
// Crediting on the worker's side, against the local network: a worker credits a receipt
// only with what the account the receipt names actually paid it, announced by a notice the
// receipt's requester signed, and each transaction once.

/// Worker `i`'s ledger holding its receipts among `rs`.
fn worker_ledger(f: &Fixture, i: u16, rs: &[Receipt]) -> Arc<Ledger> {
    let l = Ledger::open(&f.dir.path().join(format!("worker-{i}.redb"))).unwrap();
    let me = worker(i).0.node_id();
    for r in rs.iter().filter(|r| r.inner.body.worker == me) {
        l.store_receipt(r, Role::Worker, Check::Passed).unwrap();
    }
    Arc::new(l)
}

/// Manifest lines for `rs`, each claiming `amount(receipt)` stroops.
fn lines_for(rs: &[Receipt], amount: impl Fn(&WorkReceipt) -> u64) -> Vec<ManifestLine> {
    rs.iter()
        .map(|r| ManifestLine {
            payout: r.inner.body.payout.clone(),
            task: r.inner.body.task_id,
            worker: r.inner.body.worker,
            amount_stroops: amount(&r.inner.body),
        })
        .collect()
}

/// The memo committing to `lines`.
fn memo_for(lines: &[ManifestLine]) -> Memo {
    Memo::Hash(Hash(Manifest::new(lines.to_vec()).unwrap().commitment()))
}

/// Submits a transaction from `from` making `payments` with `memo`: its hash and Horizon's
/// answer.
async fn pay(
    f: &Fixture,
    from: &Wallet,
    memo: Memo,
    payments: &[Payment],
) -> (TxHash, Result<TxRecord, HorizonError>) {
    let h = Horizon::new(&f.stellar).unwrap();
    let sequence = h.account(&from.address()).await.unwrap().unwrap().sequence + 1;
    let params = TxParams {
        sequence,
        base_fee_stroops: 100,
        min_time: 0,
        max_time: 0,
        memo,
    };
    let tx = build_payments(&from.public_key(), &params, payments).unwrap();
    let signed = sign_transaction(tx, from, &f.stellar.network_passphrase).unwrap();
    (signed.hash, h.submit(&signed.xdr).await)
}

/// A settlement notice for `tx` listing `lines`, signed by `by` and naming `account` as the
/// paying account.
fn notice(
    by: &Identity,
    account: &str,
    tx: TxHash,
    lines: &[ManifestLine],
) -> Signed<SettlementNotice> {
    let body = SettlementNotice {
        payer_node: by.node_id(),
        payer_account: account.to_owned(),
        tx_hash: tx.0,
        receipts: lines
            .iter()
            .map(|l| PaidReceipt {
                payout: l.payout.clone(),
                task_id: l.task,
                worker: l.worker,
                amount_stroops: l.amount_stroops,
            })
            .collect(),
    };
    Signed::sign(body, by).unwrap()
}

/// The stored receipt for `r`.
fn stored(l: &Ledger, r: &Receipt) -> StoredReceipt {
    l.receipt(&r.inner.body.task_id, &r.inner.body.worker)
        .unwrap()
        .unwrap()
}

fn price_sum(rs: &[Receipt]) -> u64 {
    rs.iter().map(|r| r.inner.body.price_stroops).sum()
}

/// Settles everything `ledger` owes through the Settler and returns the signed notice of
/// the (single) transaction.
async fn settle_and_notice(f: &Fixture, ledger: &Arc<Ledger>) -> Signed<SettlementNotice> {
    let r = f
        .settler(ledger.clone(), quick())
        .settle(SettleMode::All)
        .await
        .unwrap();
    assert_eq!(r.paid.len(), 1, "{:?}", r.stopped);
    let intent = &ledger.intents(1).unwrap()[0];
    RequesterReceipts::new(ledger.clone(), requester())
        .notice(intent)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_paying_one_stroop_per_receipt_is_credited_one_stroop_each() {
    let f = Fixture::new(1).await;
    let rs = receipts(1, 3);
    let total = price_sum(&rs);
    let requester_ledger = f.ledger_with(&rs);
    let wl = worker_ledger(&f, 0, &rs);
    let w = worker_side(&f, &wl, 0);
    let payout = worker(0).1.address();

    // The payer's memo commits to a manifest claiming one stroop per receipt, and each
    // receipt gets a one-stroop payment from the account the receipts name.
    let cheap = lines_for(&rs, |_| 1);
    let one = Payment {
        destination: payout.clone(),
        amount_stroops: 1,
    };
    let (tx, res) = pay(&f, &payer(), memo_for(&cheap), &vec![one; rs.len()]).await;
    assert!(res.unwrap().successful);
    let cheat = notice(&requester(), &payer().address(), tx, &cheap);
    let got = w.record_notice(&cheat).await.unwrap();
    let RecordedPayment::New(p) = &got else {
        panic!("{got:?}")
    };
    assert_eq!(p.received_stroops, 3);
    assert_eq!(
        p.credits.iter().map(|c| c.stroops).collect::<Vec<_>>(),
        [1, 1, 1]
    );
    assert_eq!(p.unallocated_stroops, 0);
    for r in &rs {
        let s = stored(&wl, r);
        assert_eq!(s.paid_stroops, 1);
        assert_eq!(
            s.settlement,
            Settlement::Unsettled,
            "one stroop settles nothing"
        );
        assert_eq!(s.remaining_stroops(), r.inner.body.price_stroops - 1);
    }
    let b = wl.balances().unwrap().total;
    assert_eq!(
        (
            b.paid_to_us_stroops,
            b.owed_to_us_stroops,
            b.overpaid_to_us_stroops
        ),
        (3, total - 3, 0)
    );
    let standing = wl.standing(&requester().node_id()).unwrap();
    assert_eq!(standing.unpaid_stroops, total - 3);
    assert!(standing.oldest_unpaid_at.is_some());
    // Announcing it again credits nothing more.
    assert_eq!(
        w.record_notice(&cheat).await.unwrap(),
        RecordedPayment::AlreadyRecorded(p.clone())
    );
    wl.audit().unwrap();

    // The requester's own ledger never heard of those stroops; its honest settlement pays
    // the full prices, and the three stroops end up recorded as overpaid, exactly.
    let honest = settle_and_notice(&f, &requester_ledger).await;
    let got = w.record_notice(&honest).await.unwrap();
    let RecordedPayment::New(p) = &got else {
        panic!("{got:?}")
    };
    assert_eq!(p.credits.len(), 3);
    assert_eq!(p.received_stroops, total);
    for r in &rs {
        let s = stored(&wl, r);
        assert!(s.settlement.is_settled());
        assert_eq!(s.paid_stroops, r.inner.body.price_stroops + 1);
    }
    let b = wl.balances().unwrap().total;
    assert_eq!(
        (
            b.paid_to_us_stroops,
            b.owed_to_us_stroops,
            b.overpaid_to_us_stroops
        ),
        (total, 0, 3)
    );
    wl.audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_paying_someone_elses_receipts_gets_nothing_credited() {
    let f = Fixture::new(1).await;
    let rs = receipts(1, 2);
    let total = price_sum(&rs);
    let requester_ledger = f.ledger_with(&rs);
    let wl = worker_ledger(&f, 0, &rs);
    let w = worker_side(&f, &wl, 0);
    let payout = worker(0).1.address();
    // A third party: its own node key and its own funded wallet.
    let (stranger, stranger_wallet) = (
        Identity::from_secret([0x44; 32]),
        Wallet::from_seed([0x45; 32]),
    );
    Horizon::new(&f.stellar)
        .unwrap()
        .fund(&stranger_wallet.address())
        .await
        .unwrap();
    let before = wl.balances().unwrap();

    // It pays the worker's receipts in full under a memo committing to them.
    let full = lines_for(&rs, |b| b.price_stroops);
    let (tx, res) = pay(
        &f,
        &stranger_wallet,
        memo_for(&full),
        &[Payment {
            destination: payout.clone(),
            amount_stroops: total as i64,
        }],
    )
    .await;
    assert!(res.unwrap().successful);
    let nothing = |got: &RecordedPayment, why: &str| {
        let RecordedPayment::New(p) = got else {
            panic!("{got:?}")
        };
        assert!(p.credits.is_empty(), "{p:?}");
        assert_eq!(p.ignored.len(), 2, "{p:?}");
        assert!(p.ignored.iter().all(|(_, w)| w.contains(why)), "{p:?}");
    };
    // Its own signed notice: not the receipts' requester.
    let got = w
        .record_notice(&notice(&stranger, &stranger_wallet.address(), tx, &full))
        .await
        .unwrap();
    nothing(&got, "not signed by the receipt's requester");
    // The same, naming the requester's account (which paid nothing in it).
    let got = w
        .record_notice(&notice(&stranger, &payer().address(), tx, &full))
        .await
        .unwrap();
    nothing(&got, "not signed by the receipt's requester");
    // A notice naming the requester as payer node but signed by the third party: refused.
    let mut forged = notice(&stranger, &stranger_wallet.address(), tx, &full);
    forged.body.payer_node = requester().node_id();
    let err = w.record_notice(&forged).await.unwrap_err();
    assert!(matches!(err, ExchangeError::Invalid(_)), "{err}");
    // Even the requester vouching for the third party's account: the receipts name the
    // requester's own account, and only a payment from it counts.
    let got = w
        .record_notice(&notice(&requester(), &stranger_wallet.address(), tx, &full))
        .await
        .unwrap();
    nothing(&got, "the receipt is paid from");
    assert_eq!(wl.balances().unwrap(), before, "nothing credited");
    for r in &rs {
        let s = stored(&wl, r);
        assert_eq!((s.paid_stroops, s.settlement), (0, Settlement::Unsettled));
    }
    assert_eq!(wl.payment_in(&tx).unwrap(), None);
    wl.audit().unwrap();

    // The honest payment afterwards is credited in full.
    let honest = settle_and_notice(&f, &requester_ledger).await;
    let got = w.record_notice(&honest).await.unwrap();
    let RecordedPayment::New(p) = &got else {
        panic!("{got:?}")
    };
    assert_eq!(p.credits.iter().map(|c| c.stroops).sum::<u64>(), total);
    assert_eq!(p.unallocated_stroops, 0);
    for r in &rs {
        let s = stored(&wl, r);
        assert!(s.settlement.is_settled());
        assert_eq!(s.paid_stroops, r.inner.body.price_stroops);
    }
    let b = wl.balances().unwrap().total;
    assert_eq!(
        (
            b.paid_to_us_stroops,
            b.owed_to_us_stroops,
            b.overpaid_to_us_stroops
        ),
        (total, 0, 0)
    );
    wl.audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_by_another_node_cannot_use_up_the_requesters_payment() {
    // Another worker paid in the same transaction holds the whole notice (it lists every
    // receipt the memo commits to), so it can announce the transaction first, signed with
    // its own key. That must not keep the requester's notice from crediting it.
    let f = Fixture::new(2).await;
    let rs = receipts(2, 2);
    let requester_ledger = f.ledger_with(&rs);
    let wl = worker_ledger(&f, 0, &rs);
    let w = worker_side(&f, &wl, 0);
    let honest = settle_and_notice(&f, &requester_ledger).await;
    let tx = TxHash(honest.body.tx_hash);
    let lines: Vec<ManifestLine> = honest
        .body
        .receipts
        .iter()
        .map(|r| ManifestLine {
            payout: r.payout.clone(),
            task: r.task_id,
            worker: r.worker,
            amount_stroops: r.amount_stroops,
        })
        .collect();
    let (other_worker, _) = worker(1);
    for account in [payer().address(), worker(1).1.address()] {
        let front = notice(&other_worker, &account, tx, &lines);
        let got = w.record_notice(&front).await.unwrap();
        assert!(got.record().credits.is_empty(), "{got:?}");
        assert_eq!(
            wl.payment_in(&tx).unwrap(),
            None,
            "the transaction is not used up"
        );
    }
    let got = w.record_notice(&honest).await.unwrap();
    let RecordedPayment::New(p) = &got else {
        panic!("{got:?}")
    };
    let mine: Vec<Receipt> = rs
        .iter()
        .filter(|r| r.inner.body.worker == worker(0).0.node_id())
        .cloned()
        .collect();
    assert_eq!(p.credits.len(), mine.len());
    assert_eq!(
        p.credits.iter().map(|c| c.stroops).sum::<u64>(),
        price_sum(&mine)
    );
    // Once credited, the transaction is used up, whoever announces it next.
    let late = notice(&other_worker, &payer().address(), tx, &lines);
    assert_eq!(
        w.record_notice(&late).await.unwrap(),
        RecordedPayment::AlreadyRecorded(p.clone())
    );
    assert_eq!(wl.balances().unwrap().total.owed_to_us_stroops, 0);
    wl.audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_for_failed_unknown_or_other_transactions_credit_nothing() {
    let f = Fixture::new(1).await;
    let rs = receipts(1, 2);
    let total = price_sum(&rs);
    let requester_ledger = f.ledger_with(&rs);
    let wl = worker_ledger(&f, 0, &rs);
    let w = worker_side(&f, &wl, 0);
    let payout = worker(0).1.address();
    let full = lines_for(&rs, |b| b.price_stroops);
    let before = wl.balances().unwrap();

    // A transaction that failed in a ledger (its second payment goes to an account that
    // does not exist): it paid nothing.
    let nobody = Wallet::from_seed([0x46; 32]).address();
    let (failed, res) = pay(
        &f,
        &payer(),
        memo_for(&full),
        &[
            Payment {
                destination: payout.clone(),
                amount_stroops: total as i64,
            },
            Payment {
                destination: nobody,
                amount_stroops: 1,
            },
        ],
    )
    .await;
    assert!(
        matches!(res, Err(HorizonError::TxFailed(ref e)) if e.was_included()),
        "{res:?}"
    );
    let err = w
        .record_notice(&notice(&requester(), &payer().address(), failed, &full))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExchangeError::TxFailed(h) if h == failed),
        "{err}"
    );

    // A transaction the network does not know.
    let unknown = TxHash([0xAB; 32]);
    let err = w
        .record_notice(&notice(&requester(), &payer().address(), unknown, &full))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExchangeError::UnknownTx(h) if h == unknown),
        "{err}"
    );

    // An applied transaction whose memo does not commit to the notice's list.
    let (other, res) = pay(
        &f,
        &payer(),
        Memo::None,
        &[Payment {
            destination: payout.clone(),
            amount_stroops: total as i64,
        }],
    )
    .await;
    assert!(res.unwrap().successful);
    let err = w
        .record_notice(&notice(&requester(), &payer().address(), other, &full))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExchangeError::Manifest(ManifestError::MemoMismatch)),
        "{err}"
    );

    assert_eq!(wl.balances().unwrap(), before, "nothing credited");
    for h in [failed, unknown, other] {
        assert_eq!(wl.payment_in(&h).unwrap(), None);
    }
    wl.audit().unwrap();

    // The honest settlement is credited in full.
    let honest = settle_and_notice(&f, &requester_ledger).await;
    let got = w.record_notice(&honest).await.unwrap();
    assert_eq!(
        got.record().credits.iter().map(|c| c.stroops).sum::<u64>(),
        total
    );
    assert_eq!(wl.balances().unwrap().total.owed_to_us_stroops, 0);
    wl.audit().unwrap();
}

// ---------------------------------------------------------------------------------------
// Upgrade: ledgers written by the previous release (schema 1, wire version 1).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_from_the_previous_release_settles_exactly_once() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger-v1");
    let files = ["requester.redb", "worker-a.redb", "worker-b.redb"];
    let committed: Vec<Vec<u8>> = files
        .iter()
        .map(|n| std::fs::read(fixtures.join(n)).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files.iter().zip(&committed) {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let requester_id = Identity::from_secret([0x51; 32]);
    let me = requester_id.node_id();
    // (node key, payout wallet, file, counter-signed receipts, what they come to).
    let workers = [
        (
            Identity::from_secret([0x61; 32]),
            Wallet::from_seed([0x71; 32]),
            "worker-a.redb",
            3usize,
            1_007 + 1_014 + 1_021,
        ),
        (
            Identity::from_secret([0x62; 32]),
            Wallet::from_seed([0x72; 32]),
            "worker-b.redb",
            2,
            2_007 + 2_014,
        ),
    ];

    // Opening migrates; every receipt keeps its version 1 signatures.
    let rl = Arc::new(Ledger::open(&dir.path().join("requester.redb")).unwrap());
    rl.audit().unwrap();
    let owed = rl.owed_receipts().unwrap();
    assert_eq!(owed.len(), 5);
    assert_eq!(owed.iter().map(|r| r.price_stroops()).sum::<u64>(), 7_063);
    let total = rl.balances().unwrap().total;
    assert_eq!(
        (
            total.owed_by_us_stroops,
            total.receipts_as_requester,
            total.receipts_as_worker
        ),
        (7_063, 5, 0)
    );
    assert_eq!(
        rl.get_meta("trust-book").unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    let check_v1 = |r: &StoredReceipt| {
        assert!(matches!(r.proof, ReceiptProof::V1(_)), "{:?}", r.proof);
        assert_eq!(r.proof.verify().unwrap(), r.terms);
        assert!(r.current().is_none());
        assert_eq!(r.terms.requester, me);
        assert_eq!(r.terms.payer, "", "version 1 named no paying account");
        assert_eq!(r.check, Check::Passed);
        assert_eq!((r.settlement, r.paid_stroops), (Settlement::Unsettled, 0));
    };
    for r in &owed {
        check_v1(r);
        assert_eq!(r.role, Role::Requester);
    }
    let mut wls = Vec::new();
    for (id, wallet, file, n, sum) in &workers {
        let wl = Arc::new(Ledger::open(&dir.path().join(file)).unwrap());
        wl.audit().unwrap();
        let mine = wl.receipts(None, 100).unwrap();
        assert_eq!(mine.len(), *n);
        for r in &mine {
            check_v1(r);
            assert_eq!(r.role, Role::Worker);
            assert_eq!(r.terms.worker, id.node_id());
            assert_eq!(r.terms.payout, wallet.address());
        }
        assert!(wl.pending_receipts(10).unwrap().is_empty());
        let legacy = wl.legacy_pending_receipts(10).unwrap();
        assert_eq!(legacy.len(), 1, "the receipt never counter-signed");
        assert_eq!(legacy[0].receipt.body.pair_seq, *n as u64 + 1);
        let standing = wl.standing(&me).unwrap();
        assert_eq!(
            (standing.unpaid_stroops, standing.receipts),
            (*sum, *n as u64)
        );
        assert!(standing.oldest_unpaid_at.is_some());
        wls.push(wl);
    }
    // Reopening a migrated ledger (schema 2 now) changes nothing.
    let snapshot = |l: &Ledger| {
        (
            l.receipts(None, 100).unwrap(),
            l.balances().unwrap(),
            l.legacy_pending_receipts(10).unwrap(),
        )
    };
    let before = snapshot(&wls[1]);
    drop(wls.pop());
    wls.push(Arc::new(
        Ledger::open(&dir.path().join(workers[1].2)).unwrap(),
    ));
    assert_eq!(snapshot(&wls[1]), before);

    // The requester pays from any funded wallet: the receipts named none.
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let horizon = LocalHorizon::start(NetworkConfig::default(), listen)
        .await
        .unwrap();
    let stellar = StellarConfig::local(&horizon.url(), &horizon.passphrase());
    let h = Horizon::new(&stellar).unwrap();
    let paying = Wallet::from_seed([0x52; 32]);
    h.fund(&paying.address()).await.unwrap();
    for (_, wallet, ..) in &workers {
        h.fund(&wallet.address()).await.unwrap();
    }
    let settler = Settler::new(
        rl.clone(),
        Wallet::from_seed([0x52; 32]),
        stellar.clone(),
        quick(),
    )
    .unwrap();
    let report = settler.settle(SettleMode::All).await.unwrap();
    assert!(report.stopped.is_none(), "{:?}", report.stopped);
    assert_eq!(report.receipts_paid(), 5);
    let payments = horizon.payments();
    let to_workers: Vec<_> = payments
        .iter()
        .filter(|p| p.from == paying.address())
        .collect();
    assert_eq!(
        to_workers.len(),
        2,
        "exactly one payment per worker account"
    );
    for (_, wallet, _, _, sum) in &workers {
        let p: Vec<_> = to_workers
            .iter()
            .filter(|p| p.to == wallet.address())
            .collect();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].amount, *sum as i64);
    }
    // Again: nothing left to pay.
    let again = settler.settle(SettleMode::All).await.unwrap();
    assert!(
        again.paid.is_empty() && again.stopped.is_none(),
        "{:?}",
        again.stopped
    );
    assert_eq!(horizon.payments().len(), payments.len());
    rl.audit().unwrap();
    let total = rl.balances().unwrap().total;
    assert_eq!(
        (total.owed_by_us_stroops, total.paid_by_us_stroops),
        (0, 7_063)
    );

    // Each worker checks the requester's signed notice and credits its receipts once.
    let intents = rl.intents(10).unwrap();
    assert_eq!(intents.len(), 1);
    let intent = &intents[0];
    let requester_side = RequesterReceipts::new(rl.clone(), requester_id.clone());
    let signed = requester_side.notice(intent).unwrap();
    let unacked = rl.unacknowledged_notices(10).unwrap();
    assert_eq!(unacked.len(), 1);
    assert_eq!(unacked[0].1.len(), 2);
    for ((id, wallet, _, n, sum), wl) in workers.iter().zip(&wls) {
        let w = WorkerReceipts::new(wl.clone(), id.clone(), wallet.address(), stellar.clone());
        let got = w.record_notice(&signed).await.unwrap();
        let RecordedPayment::New(p) = &got else {
            panic!("{got:?}")
        };
        assert_eq!(p.credits.len(), *n);
        assert_eq!(p.credits.iter().map(|c| c.stroops).sum::<u64>(), *sum);
        assert_eq!((p.received_stroops, p.unallocated_stroops), (*sum, 0));
        assert!(p.ignored.is_empty(), "{:?}", p.ignored);
        assert_eq!(
            w.record_notice(&signed).await.unwrap(),
            RecordedPayment::AlreadyRecorded(p.clone())
        );
        for r in wl.receipts(None, 100).unwrap() {
            assert!(
                matches!(r.settlement, Settlement::Settled { tx_hash, .. } if tx_hash == intent.draft.tx_hash),
                "{:?}",
                r.settlement
            );
            assert_eq!(r.paid_stroops, r.price_stroops());
        }
        let b = wl.balances().unwrap().total;
        assert_eq!(
            (
                b.owed_to_us_stroops,
                b.paid_to_us_stroops,
                b.overpaid_to_us_stroops
            ),
            (0, *sum, 0)
        );
        let standing = wl.standing(&me).unwrap();
        assert_eq!(
            (standing.unpaid_stroops, standing.oldest_unpaid_at),
            (0, None)
        );
        wl.audit().unwrap();
        requester_side
            .acknowledged(intent.id, id.node_id())
            .await
            .unwrap();
    }
    assert!(rl.unacknowledged_notices(10).unwrap().is_empty());

    // Reopened, every ledger reads the same, and nothing is migrated twice.
    let snaps: Vec<_> = wls.iter().map(|l| snapshot(l)).collect();
    let req_snap = (snapshot(&rl), rl.intents(10).unwrap());
    drop((wls, settler, requester_side, rl));
    let rl = Ledger::open(&dir.path().join("requester.redb")).unwrap();
    assert_eq!((snapshot(&rl), rl.intents(10).unwrap()), req_snap);
    rl.audit().unwrap();
    for ((.., file, _, _), snap) in workers.iter().zip(&snaps) {
        let wl = Ledger::open(&dir.path().join(file)).unwrap();
        assert_eq!(&snapshot(&wl), snap);
        assert!(wl.payment_in(&intent.draft.tx_hash).unwrap().is_some());
        wl.audit().unwrap();
    }
    // The committed fixtures were never touched.
    for (name, bytes) in files.iter().zip(&committed) {
        assert_eq!(
            &std::fs::read(fixtures.join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    horizon.stop().await;
}

// ---------------------------------------------------------------------------------------
// Upgrade: ledgers written under wire version 2 (schema 2, receipts naming the payer).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_from_wire_version_2_settles_exactly_once() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger-v2");
    let files = ["requester.redb", "worker-a.redb", "worker-b.redb"];
    let committed: Vec<Vec<u8>> = files
        .iter()
        .map(|n| std::fs::read(fixtures.join(n)).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files.iter().zip(&committed) {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let requester_id = Identity::from_secret([0x51; 32]);
    let me = requester_id.node_id();
    let paying = Wallet::from_seed([0x81; 32]);
    // (node key, payout wallet, file, counter-signed receipts, what they come to, GPU ones).
    let workers = [
        (
            Identity::from_secret([0x61; 32]),
            Wallet::from_seed([0x71; 32]),
            "worker-a.redb",
            3usize,
            1_007 + 1_014 + 1_021,
            1usize,
        ),
        (
            Identity::from_secret([0x62; 32]),
            Wallet::from_seed([0x72; 32]),
            "worker-b.redb",
            2,
            2_007 + 2_014,
            1,
        ),
    ];

    // Every receipt verifies with the signatures it was stored with and reads as before.
    let check_v2 = |r: &StoredReceipt| {
        assert!(matches!(r.proof, ReceiptProof::Current(_)), "{:?}", r.proof);
        assert_eq!(r.proof.verify().unwrap(), r.terms);
        assert_eq!(r.terms.requester, me);
        assert_eq!(r.terms.payer, paying.address());
        assert!(matches!(r.terms.path, ExecPath::Cpu | ExecPath::Gpu));
        assert_eq!(r.check, Check::Passed);
        assert_eq!((r.settlement, r.paid_stroops), (Settlement::Unsettled, 0));
    };
    let rl = Arc::new(Ledger::open(&dir.path().join("requester.redb")).unwrap());
    rl.audit().unwrap();
    let owed = rl.owed_receipts().unwrap();
    assert_eq!(owed.len(), 5);
    assert_eq!(owed.iter().map(|r| r.price_stroops()).sum::<u64>(), 7_063);
    for r in &owed {
        check_v2(r);
        assert_eq!(r.role, Role::Requester);
    }
    assert_eq!(
        rl.get_meta("trust-book").unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    let mut wls = Vec::new();
    for (id, wallet, file, n, sum, gpu) in &workers {
        let wl = Arc::new(Ledger::open(&dir.path().join(file)).unwrap());
        wl.audit().unwrap();
        let mine = wl.receipts(None, 100).unwrap();
        assert_eq!(mine.len(), *n);
        for r in &mine {
            check_v2(r);
            assert_eq!(r.role, Role::Worker);
            assert_eq!(r.terms.worker, id.node_id());
            assert_eq!(r.terms.payout, wallet.address());
        }
        assert_eq!(
            mine.iter()
                .filter(|r| r.terms.path == ExecPath::Gpu)
                .count(),
            *gpu
        );
        let pending = wl.pending_receipts(10).unwrap();
        assert_eq!(pending.len(), 1, "the receipt never counter-signed");
        assert_eq!(pending[0].receipt.body.pair_seq, *n as u64 + 1);
        pending[0].receipt.verify().unwrap();
        assert!(wl.legacy_pending_receipts(10).unwrap().is_empty());
        let standing = wl.standing(&me).unwrap();
        assert_eq!(
            (standing.unpaid_stroops, standing.receipts),
            (*sum, *n as u64)
        );
        wls.push(wl);
    }

    // The requester pays from the account its receipts name, one payment per worker.
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let horizon = LocalHorizon::start(NetworkConfig::default(), listen)
        .await
        .unwrap();
    let stellar = StellarConfig::local(&horizon.url(), &horizon.passphrase());
    let h = Horizon::new(&stellar).unwrap();
    h.fund(&paying.address()).await.unwrap();
    for (_, wallet, ..) in &workers {
        h.fund(&wallet.address()).await.unwrap();
    }
    let settler = Settler::new(
        rl.clone(),
        Wallet::from_seed([0x81; 32]),
        stellar.clone(),
        quick(),
    )
    .unwrap();
    let report = settler.settle(SettleMode::All).await.unwrap();
    assert!(report.stopped.is_none(), "{:?}", report.stopped);
    assert_eq!(report.receipts_paid(), 5);
    let to_workers: Vec<_> = horizon
        .payments()
        .into_iter()
        .filter(|p| p.from == paying.address())
        .collect();
    assert_eq!(
        to_workers.len(),
        2,
        "exactly one payment per worker account"
    );
    for (_, wallet, _, _, sum, _) in &workers {
        let p: Vec<_> = to_workers
            .iter()
            .filter(|p| p.to == wallet.address())
            .collect();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].amount, *sum as i64);
    }
    let paid_so_far = horizon.payments().len();
    let again = settler.settle(SettleMode::All).await.unwrap();
    assert!(again.paid.is_empty() && again.stopped.is_none());
    assert_eq!(horizon.payments().len(), paid_so_far);
    let total = rl.balances().unwrap().total;
    assert_eq!(
        (total.owed_by_us_stroops, total.paid_by_us_stroops),
        (0, 7_063)
    );

    // Each worker credits its receipts once from the requester's signed notice.
    let intents = rl.intents(10).unwrap();
    assert_eq!(intents.len(), 1);
    let intent = &intents[0];
    let requester_side = RequesterReceipts::new(rl.clone(), requester_id.clone());
    let signed = requester_side.notice(intent).unwrap();
    for ((id, wallet, _, n, sum, _), wl) in workers.iter().zip(&wls) {
        let w = WorkerReceipts::new(wl.clone(), id.clone(), wallet.address(), stellar.clone());
        let got = w.record_notice(&signed).await.unwrap();
        let RecordedPayment::New(p) = &got else {
            panic!("{got:?}")
        };
        assert_eq!(p.credits.len(), *n);
        assert_eq!((p.received_stroops, p.unallocated_stroops), (*sum, 0));
        assert_eq!(
            w.record_notice(&signed).await.unwrap(),
            RecordedPayment::AlreadyRecorded(p.clone())
        );
        let b = wl.balances().unwrap().total;
        assert_eq!(
            (
                b.owed_to_us_stroops,
                b.paid_to_us_stroops,
                b.overpaid_to_us_stroops
            ),
            (0, *sum, 0)
        );
        wl.audit().unwrap();
        requester_side
            .acknowledged(intent.id, id.node_id())
            .await
            .unwrap();
    }
    assert!(rl.unacknowledged_notices(10).unwrap().is_empty());
    rl.audit().unwrap();
    // The committed fixtures were never touched.
    for (name, bytes) in files.iter().zip(&committed) {
        assert_eq!(
            &std::fs::read(fixtures.join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    horizon.stop().await;
}

/// With nothing owed and nothing in flight, `wallet settle` (dry run or not) answers at
/// once that there is nothing to pay, without needing Horizon: here no Horizon listens.
#[tokio::test]
async fn settling_with_nothing_owed_needs_no_horizon() {
    use crank_payments::cli::{SettleOutput, settle};
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.redb")).unwrap());
    let stellar = StellarConfig::local("http://127.0.0.1:9", "Standalone Network ; nothing");
    let settler = Settler::new(ledger, Wallet::from_seed([0x53; 32]), stellar, quick()).unwrap();
    for mode in [SettleMode::Due, SettleMode::All] {
        match settle(&settler, mode, true).await.unwrap() {
            SettleOutput::DryRun(txs) => assert!(txs.is_empty()),
            other => panic!("{other:?}"),
        }
        match settle(&settler, mode, false).await.unwrap() {
            SettleOutput::Submitted(r) => {
                assert!(r.paid.is_empty() && r.failed.is_empty() && r.pending.is_empty());
                assert!(r.stopped.is_none());
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A ledger closed cleanly opens again without a repair (and without rescanning the file),
/// however many times, with data in it.
#[test]
fn a_ledger_closed_cleanly_opens_without_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    for round in 0..3u8 {
        let l = Ledger::open(&path).unwrap();
        assert!(!l.repaired_on_open(), "round {round}");
        l.put_meta("round", &[round]).unwrap();
        l.audit().unwrap();
        drop(l);
    }
    let l = Ledger::open(&path).unwrap();
    assert!(!l.repaired_on_open());
    assert_eq!(l.get_meta("round").unwrap().as_deref(), Some(&[2u8][..]));
}
