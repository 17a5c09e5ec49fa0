//! Prints settlement figures: receipts per transaction and fee per receipt when 10,000
//! receipts across 150 workers are settled through the local Horizon, plus how long it takes
//! to build and sign a 100-payment transaction and to store receipts durably.
//!
//! `cargo run -p crank-payments --example settle_figures [receipts] [workers]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crank_payments::horizon::Horizon;
use crank_payments::stellar::{
    Payment, TESTNET_PASSPHRASE, TxParams, build_payments, sign_transaction,
};
use crank_payments::{
    Check, Ledger, Role, SettleMode, SettlementConfig, Settler, StellarConfig, Wallet,
};
use crank_protocol::{
    ContentHash, CounterSigned, Energy, EnergyMethod, ExecPath, Identity, ModelId, Signed, TaskId,
    Timings, WorkReceipt,
};
use crank_testnet::{LocalHorizon, NetworkConfig};
use stellar_xdr::{Hash, Memo};

fn worker(i: usize) -> (Identity, Wallet) {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    id[8] = 0xAA;
    let mut pay = id;
    pay[8] = 0xBB;
    (Identity::from_secret(id), Wallet::from_seed(pay))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n_receipts: usize = args.get(1).map_or(Ok(10_000), |s| s.parse())?;
    let n_workers: usize = args.get(2).map_or(Ok(150), |s| s.parse())?;

    // Build and sign a 100-payment transaction.
    let payer = Wallet::from_seed([2; 32]);
    let payments: Vec<Payment> = (0..100)
        .map(|i| Payment {
            destination: worker(i).1.address(),
            amount_stroops: 1_000 + i as i64,
        })
        .collect();
    let mut build_us = Vec::new();
    let mut sign_us = Vec::new();
    for seq in 0..200 {
        let t = Instant::now();
        let tx = build_payments(
            &payer.public_key(),
            &TxParams {
                sequence: seq + 1,
                base_fee_stroops: 100,
                min_time: 0,
                max_time: 1_900_000_000,
                memo: Memo::Hash(Hash([7; 32])),
            },
            &payments,
        )?;
        let built = t.elapsed();
        let signed = sign_transaction(tx, &payer, TESTNET_PASSPHRASE)?;
        let total = t.elapsed();
        std::hint::black_box(signed);
        build_us.push(built.as_secs_f64() * 1e6);
        sign_us.push((total - built).as_secs_f64() * 1e6);
    }
    println!(
        "100-payment transaction: build {:.0} µs, hash+sign+encode {:.0} µs, total {:.0} µs (median of 200)",
        median(build_us.clone()),
        median(sign_us.clone()),
        median(build_us.iter().zip(&sign_us).map(|(a, b)| a + b).collect())
    );

    // A local network with the payer and every worker funded.
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let server = LocalHorizon::start(NetworkConfig::default(), listen).await?;
    let stellar = StellarConfig::local(&server.url(), &server.passphrase());
    let h = Horizon::new(&stellar)?;
    h.fund(&payer.address()).await?;
    let workers: Vec<(Identity, Wallet)> = (0..n_workers).map(worker).collect();
    for (_, w) in &workers {
        h.fund(&w.address()).await?;
    }

    // Receipts, round-robin over the workers.
    let requester = Identity::from_secret([1; 32]);
    let dir = tempfile::tempdir()?;
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.redb"))?);
    let mut seqs = vec![(0u64, 0u64); n_workers];
    let mut receipts = Vec::with_capacity(n_receipts);
    for k in 0..n_receipts {
        let i = k % n_workers;
        let (id, wallet) = &workers[i];
        let price = 1_000 + (k as u64 % 97) * 10;
        seqs[i].0 += 1;
        seqs[i].1 += price;
        let mut task = [0u8; 32];
        task[..8].copy_from_slice(&(k as u64).to_be_bytes());
        let body = WorkReceipt {
            task_id: TaskId(task),
            requester: requester.node_id(),
            worker: id.node_id(),
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
            pair_seq: seqs[i].0,
            cumulative_stroops: seqs[i].1,
            payout: wallet.address(),
            payer: payer.address(),
        };
        receipts.push(CounterSigned::countersign(
            Signed::sign(body, id)?,
            &requester,
        )?);
    }
    let t = Instant::now();
    for r in &receipts {
        ledger.store_receipt(r, Role::Requester, Check::Passed)?;
    }
    let store = t.elapsed();
    println!(
        "stored {n_receipts} counter-signed receipts (both signatures verified, durable commit each) in {:.2} s: {:.0} receipts/s",
        store.as_secs_f64(),
        n_receipts as f64 / store.as_secs_f64()
    );

    let settler = Settler::new(
        ledger.clone(),
        payer,
        stellar,
        SettlementConfig {
            threshold_stroops: 1,
            ..SettlementConfig::default()
        },
    )?;
    let t = Instant::now();
    let report = settler.settle(SettleMode::All).await?;
    let took = t.elapsed();
    if let Some(e) = &report.stopped {
        anyhow::bail!("settlement stopped: {e}");
    }
    let txs = report.paid.len();
    let fees: i64 = report.paid.iter().map(|p| p.fee_charged).sum();
    let paid = report.receipts_paid();
    let payments: usize = report.paid.iter().map(|p| p.payments.len()).sum();
    println!(
        "settled {paid} receipts owed to {n_workers} workers in {txs} transactions ({payments} payments) in {:.2} s against the local Horizon",
        took.as_secs_f64()
    );
    println!(
        "receipts per transaction: {:.1}; payments per transaction: {:.1}",
        paid as f64 / txs as f64,
        payments as f64 / txs as f64
    );
    println!(
        "fees: {fees} stroops in all = {:.2} stroops per receipt ({:.4} % of the {} stroops paid)",
        fees as f64 / paid as f64,
        100.0 * fees as f64 / report.stroops_paid() as f64,
        report.stroops_paid()
    );
    println!(
        "without batching (one transaction per receipt): {} stroops in fees, {:.1}× more",
        100 * paid,
        (100 * paid) as f64 / fees as f64
    );
    ledger.audit()?;
    server.stop().await;
    Ok(())
}
