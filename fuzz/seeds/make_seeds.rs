//! Writes the seed corpus of every fuzz target (fuzz/corpus/<target>/) from real encoded
//! messages: signed with real keys, addresses with valid checksums, envelopes as a payer
//! builds them, the repository's own ONNX models. Run by `scripts/fuzz.sh --seeds`; its
//! output is committed, so a change of wire format shows as a change of the seeds.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use crank_payments::manifest::{Manifest, ManifestLine};
use crank_payments::stellar::{TxParams, Wallet, build_payments, sign_transaction};
use crank_payments::types::{
    Balances, Check, CounterpartyBalance, PendingReceipt, ReceiptProof, Role, Settlement,
    StoredReceipt, TxHash,
};
use crank_payments::{IntentDraft, IntentRecord, IntentState, PaymentIn};
use crank_protocol::codec;
use crank_protocol::legacy::WorkReceiptV1;
use crank_protocol::tensor::tensors_hash;
use crank_protocol::*;

// Built with the targets' coverage flags, so it links the libFuzzer runtime that defines
// their counters (its `main` is not used: this file has its own).
use libfuzzer_sys as _;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn id(n: u8) -> Identity {
    Identity::from_secret([n; 32])
}

fn tensors() -> Vec<NamedTensor> {
    let t = |name: &str, shape: Vec<u64>, data| NamedTensor {
        name: name.into(),
        tensor: Tensor { shape, data },
    };
    vec![
        t(
            "f32",
            vec![2, 2],
            TensorData::F32(vec![0.5, -1.0, 2.0, 0.0]),
        ),
        t("f64", vec![1], TensorData::F64(vec![1.5])),
        t("i64", vec![3], TensorData::I64(vec![-1, 0, 300])),
        t("i32", vec![2], TensorData::I32(vec![7, -7])),
        t("u8", vec![4], TensorData::U8(vec![0, 1, 127, 255])),
    ]
}

struct World {
    requester: Identity,
    worker: Identity,
    payer: Wallet,
    payee: Wallet,
    cfb: CallForBids,
    award: Award,
    receipt: WorkReceipt,
}

fn world() -> World {
    let (requester, worker) = (id(1), id(2));
    let (payer, payee) = (Wallet::from_seed([3; 32]), Wallet::from_seed([4; 32]));
    let inputs = tensors();
    let model = ModelId::of(b"model");
    let input_hash = tensors_hash(&inputs);
    let nonce = [9; 16];
    let cfb = CallForBids {
        task_id: TaskId::derive(&requester.node_id(), &nonce, &model, &input_hash),
        requester: requester.node_id(),
        model,
        model_bytes: 20_308,
        input_hash,
        input_elements: 14,
        max_price_stroops: 5_000,
        nonce,
        payer: payer.address(),
        bid_deadline: 1_700_000_000_500,
        deadline: 1_700_000_010_000,
        issued_at: 1_700_000_000_000,
    };
    let award = Award {
        task_id: cfb.task_id,
        requester: cfb.requester,
        worker: worker.node_id(),
        price_stroops: 1_000,
        model,
        model_bytes: cfb.model_bytes,
        inputs,
        input_hash,
        nonce,
        payer: payer.address(),
        deadline: cfb.deadline,
    };
    let outputs = tensors();
    let receipt = WorkReceipt {
        task_id: award.task_id,
        requester: award.requester,
        worker: award.worker,
        model,
        input_hash,
        output_hash: tensors_hash(&outputs),
        price_stroops: 1_000,
        energy: Energy {
            microjoules: 4_200,
            method: EnergyMethod::CpuTimeEstimate,
        },
        path: ExecPath::Cpu,
        timings: Timings {
            accepted_at: 1_700_000_001_000,
            started_at: 1_700_000_001_010,
            finished_at: 1_700_000_001_020,
            run_micros: 9_000,
        },
        pair_seq: 1,
        cumulative_stroops: 1_000,
        payout: payee.address(),
        payer: payer.address(),
    };
    World {
        requester,
        worker,
        payer,
        payee,
        cfb,
        award,
        receipt,
    }
}

fn advert(w: &World) -> Result<Signed<CapabilityAdvert>> {
    let body = CapabilityAdvert {
        node: w.worker.node_id(),
        seq: 3,
        issued_at: 1_700_000_000_000,
        expires_at: 1_700_000_600_000,
        agent: "crank-node/0.1.0".into(),
        hardware: Hardware {
            cpu_model: "AMD EPYC".into(),
            cores: 16,
            ram_mib: 65_536,
            arch: "x86_64".into(),
            os: "linux 6.8".into(),
            gpus: vec![GpuAdapter {
                name: "NVIDIA H200".into(),
                backend: "vulkan".into(),
                kind: "discrete".into(),
            }],
        },
        power: PowerInfo {
            external_power: Some(true),
            has_battery: true,
            battery_percent: Some(80),
            busy_milliwatts: 45_000,
        },
        gate: GateInfo {
            policy: RunPolicy::ChargingIdle,
            open: false,
            reason: Some(GateReason::UserActive {
                idle_secs: 3,
                required_secs: 300,
            }),
        },
        models: vec![ModelId::of(b"model"), ModelId::of(b"other")],
        unservable: Vec::new(),
        pricing: Pricing {
            per_task_stroops: 100,
            per_second_stroops: 10,
        },
        payout: w.payee.address(),
        trust: TrustSummary {
            completed: 12,
            failed: 1,
        },
        bench: vec![
            PathBench {
                path: ExecPath::Cpu,
                inferences_per_sec: 900.0,
                microjoules_per_inference: 40,
            },
            PathBench {
                path: ExecPath::Gpu,
                inferences_per_sec: 9000.0,
                microjoules_per_inference: 4,
            },
        ],
        capacity: Capacity {
            workers: 4,
            queue_slots: 16,
            queued: 2,
        },
        addrs: vec![
            "/ip4/192.0.2.1/tcp/4001".into(),
            "/ip4/192.0.2.1/udp/4001/quic-v1".into(),
        ],
    };
    Ok(Signed::sign(body, &w.worker)?)
}

fn notice(w: &World, lines: &[(&Wallet, u8, u64)]) -> Result<Signed<SettlementNotice>> {
    let body = SettlementNotice {
        payer_node: w.requester.node_id(),
        payer_account: w.payer.address(),
        tx_hash: [5; 32],
        receipts: lines
            .iter()
            .map(|(wallet, task, amount)| PaidReceipt {
                payout: wallet.address(),
                task_id: TaskId([*task; 32]),
                worker: w.worker.node_id(),
                amount_stroops: *amount,
            })
            .collect(),
    };
    Ok(Signed::sign(body, &w.requester)?)
}

fn requests(w: &World) -> Result<Vec<Request>> {
    let signed_receipt = Signed::sign(w.receipt.clone(), &w.worker)?;
    let outputs = Signed::sign(
        TaskOutputs {
            task_id: w.award.task_id,
            worker: w.worker.node_id(),
            requester: w.requester.node_id(),
            outputs: tensors(),
        },
        &w.worker,
    )?;
    let dispute = |reason| -> Result<Box<Signed<Dispute>>> {
        Ok(Box::new(Signed::sign(
            Dispute {
                receipt: signed_receipt.clone(),
                requester: w.requester.node_id(),
                reason,
                at: 1_700_000_002_000,
            },
            &w.requester,
        )?))
    };
    let award = Signed::sign(w.award.clone(), &w.requester)?;
    Ok(vec![
        Request::CallForBids(Signed::sign(w.cfb.clone(), &w.requester)?),
        Request::Award(award.clone()),
        Request::FetchModel(FetchModel {
            model: w.award.model,
            offset: 0,
            max_len: 65_536,
            award: Some(award),
        }),
        Request::FetchModel(FetchModel {
            model: w.award.model,
            offset: 65_536,
            max_len: 65_536,
            award: None,
        }),
        Request::Result(TaskResult {
            receipt: signed_receipt.clone(),
        }),
        Request::Outputs(Box::new(outputs.clone())),
        Request::Dispute(dispute(DisputeReason::OutputMismatch {
            outputs: Box::new(outputs),
        })?),
        Request::Dispute(dispute(DisputeReason::NotDelivered {
            gave_up_at: 1_700_000_003_000,
        })?),
        Request::Dispute(dispute(DisputeReason::CheckFailed {
            message: "shape [1, 10] expected".into(),
        })?),
        Request::Failure(Signed::sign(
            TaskFailure {
                task_id: w.award.task_id,
                requester: w.requester.node_id(),
                worker: w.worker.node_id(),
                reason: FailureReason::Aborted {
                    reason: GateReason::OnBattery { percent: Some(40) },
                },
            },
            &w.worker,
        )?),
        Request::Failure(Signed::sign(
            TaskFailure {
                task_id: w.award.task_id,
                requester: w.requester.node_id(),
                worker: w.worker.node_id(),
                reason: FailureReason::ModelInvalid {
                    message: "unsupported operator".into(),
                },
            },
            &w.worker,
        )?),
        Request::Cancel(Signed::sign(
            Cancel {
                task_id: w.award.task_id,
                requester: w.requester.node_id(),
                worker: w.worker.node_id(),
            },
            &w.requester,
        )?),
        Request::GetAdvert,
        Request::Settlement(notice(w, &[(&w.payee, 1, 1_000), (&w.payer, 2, 500)])?),
        Request::GetSettlement { tx_hash: [5; 32] },
        Request::GetReceipt {
            task_id: w.award.task_id,
        },
    ])
}

fn receipt(w: &World) -> Result<Receipt> {
    let signed = Signed::sign(w.receipt.clone(), &w.worker)?;
    Ok(CounterSigned::countersign(signed, &w.requester)?)
}

fn receipt_v1(w: &World) -> Result<legacy::ReceiptV1> {
    let r = &w.receipt;
    let v1 = WorkReceiptV1 {
        task_id: r.task_id,
        requester: r.requester,
        worker: r.worker,
        model: r.model,
        input_hash: r.input_hash,
        output_hash: r.output_hash,
        price_stroops: r.price_stroops,
        energy: r.energy,
        path: r.path,
        timings: r.timings,
        pair_seq: r.pair_seq,
        cumulative_stroops: r.cumulative_stroops,
        payout: r.payout.clone(),
    };
    Ok(CounterSigned::countersign(
        Signed::sign(v1, &w.worker)?,
        &w.requester,
    )?)
}

fn responses(w: &World) -> Result<Vec<Response>> {
    let bid = Bid {
        task_id: w.cfb.task_id,
        worker: w.worker.node_id(),
        model: w.cfb.model,
        model_bytes: w.cfb.model_bytes,
        input_hash: w.cfb.input_hash,
        input_elements: w.cfb.input_elements,
        price_stroops: 1_000,
        est_latency_ms: 250,
        est_energy_mj: 5,
        path: ExecPath::Cpu,
        model_cached: true,
        queue_len: 1,
        valid_until: 1_700_000_001_000,
        payout: w.payee.address(),
    };
    let decline = |reason| -> Result<Response> {
        Ok(Response::Decline(Signed::sign(
            Decline {
                task_id: w.cfb.task_id,
                worker: w.worker.node_id(),
                reason,
            },
            &w.worker,
        )?))
    };
    let Request::Dispute(dispute) = requests(w)?.swap_remove(8) else {
        return Err("the ninth request is a dispute".into());
    };
    Ok(vec![
        Response::Bid(Signed::sign(bid, &w.worker)?),
        decline(DeclineReason::QueueFull {
            queued: 16,
            slots: 16,
        })?,
        decline(DeclineReason::Credit {
            owed_stroops: 90_000,
            oldest_unpaid_secs: 3_600,
            limit: "max owed".into(),
        })?,
        decline(DeclineReason::Gate {
            reason: GateReason::TooHot {
                celsius: 90,
                limit: 85,
            },
        })?,
        Response::Accepted {
            task_id: w.cfb.task_id,
        },
        Response::ModelChunk(ModelChunk {
            model: w.cfb.model,
            total_len: 20_308,
            offset: 0,
            bytes: (0..=255u8).collect(),
        }),
        Response::Receipt(Box::new(receipt(w)?)),
        Response::LegacyReceipt(Box::new(receipt_v1(w)?)),
        Response::Settlement(Box::new(notice(w, &[(&w.payee, 1, 1_000)])?)),
        Response::Disputed(dispute),
        Response::Ack {
            task_id: w.cfb.task_id,
        },
        Response::Advert(Box::new(advert(w)?)),
        Response::PaymentRecorded { receipts: 2 },
        Response::error(ErrorCode::Busy, "queue full"),
    ])
}

fn manifest(w: &World) -> Result<Manifest> {
    let line = |wallet: &Wallet, task: u8, amount| ManifestLine {
        payout: wallet.address(),
        task: TaskId([task; 32]),
        worker: w.worker.node_id(),
        amount_stroops: amount,
    };
    Ok(Manifest::new(vec![
        line(&w.payee, 1, 1_000),
        line(&w.payee, 2, 700),
        line(&w.payer, 3, 300),
    ])?)
}

/// Raw XDR of a signed envelope paying `manifest`, as Horizon would return it (decoded).
fn envelope(w: &World, manifest: &Manifest) -> Result<(Vec<u8>, String)> {
    let tx = build_payments(
        &w.payer.public_key(),
        &TxParams {
            sequence: 42,
            base_fee_stroops: 100,
            min_time: 0,
            max_time: 1_700_000_600,
            memo: stellar_xdr::Memo::Hash(stellar_xdr::Hash(manifest.commitment())),
        },
        &manifest.payments(),
    )?;
    let signed = sign_transaction(tx, &w.payer, "crank fuzz network")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(&signed.xdr)?;
    Ok((raw, signed.xdr))
}

fn ledger_records(w: &World) -> Result<Vec<(u8, Vec<u8>)>> {
    let p = |v: &dyn erased::Encode| v.encode();
    let stored = StoredReceipt {
        terms: w.receipt.clone(),
        proof: ReceiptProof::Current(receipt(w)?),
        role: Role::Worker,
        stored_at: 1_700_000_002_000,
        order: 7,
        settlement: Settlement::Settled {
            tx_hash: TxHash([5; 32]),
            settled_at: 1_700_000_100_000,
        },
        paid_stroops: 1_000,
        check: Check::Passed,
    };
    let stored_v1 = StoredReceipt {
        proof: ReceiptProof::V1(receipt_v1(w)?),
        settlement: Settlement::InFlight { intent: 3 },
        check: Check::Delivered {
            at: 1_700_000_002_500,
        },
        ..stored.clone()
    };
    let pending = PendingReceipt {
        receipt: Signed::sign(w.receipt.clone(), &w.worker)?,
        issued_at: 1_700_000_001_030,
    };
    let balance = CounterpartyBalance {
        owed_by_us_stroops: 1_000,
        paid_to_us_stroops: 700,
        receipts_as_worker: 2,
        ..CounterpartyBalance::default()
    };
    let mut balances = Balances::default();
    balances
        .counterparties
        .insert(w.requester.node_id(), balance);
    balances.total = balance;
    let m = manifest(w)?;
    let (_, xdr) = envelope(w, &m)?;
    let intent = IntentRecord {
        id: 3,
        created_at: 1_700_000_050_000,
        draft: IntentDraft {
            payer: w.payer.address(),
            sequence: 42,
            max_time: 1_700_000_600,
            tx_hash: TxHash([5; 32]),
            envelope_xdr: xdr,
            manifest: m.clone(),
        },
        state: IntentState::Failed {
            reason: "tx_bad_seq".into(),
            failed_at: 1_700_000_060_000,
        },
        attempts: 2,
        last_error: Some("timeout".into()),
    };
    let payment = PaymentIn {
        tx_hash: TxHash([5; 32]),
        payer_node: w.requester.node_id(),
        payer_account: w.payer.address(),
        received_stroops: 1_700,
        credits: vec![],
        ignored: vec![],
        unallocated_stroops: 0,
        recorded_at: 1_700_000_100_000,
    };
    // The first byte picks the type, as in the target.
    Ok(vec![
        (0, p(&stored)?),
        (0, p(&stored_v1)?),
        (1, p(&pending)?),
        (3, p(&balance)?),
        (4, p(&intent)?),
        (5, p(&payment)?),
        (6, p(&m)?),
        (7, p(&balances)?),
    ])
}

/// Postcard encoding behind a trait object, so records of several types share one list.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Result<Vec<u8>, postcard::Error>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
            postcard::to_allocvec(self)
        }
    }
}

/// Replaces `dir`'s seeds with `seeds`, named by index and a label.
fn write(root: &Path, target: &str, seeds: Vec<(String, Vec<u8>)>) -> Result<()> {
    let dir = root.join(target);
    if dir.exists() {
        // Keep hand-added regression inputs (named `regression-*`).
        for e in fs::read_dir(&dir)? {
            let path = e?.path();
            let keep = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("regression-"));
            if !keep {
                fs::remove_file(path)?;
            }
        }
    }
    fs::create_dir_all(&dir)?;
    let n = seeds.len();
    for (i, (label, bytes)) in seeds.into_iter().enumerate() {
        fs::write(dir.join(format!("{i:02}-{label}")), bytes)?;
    }
    println!("{target}: {n} seeds");
    Ok(())
}

fn main() -> Result<()> {
    let repo: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: make_seeds <repository root>")?;
    let root = repo.join("fuzz/corpus");
    let w = world();

    let reqs = requests(&w)?
        .iter()
        .map(|r| Ok((r.kind().to_owned(), codec::encode(r)?)))
        .collect::<Result<_>>()?;
    write(&root, "decode_request", reqs)?;
    let resps = responses(&w)?
        .iter()
        .map(|r| Ok((r.kind().to_owned(), codec::encode(r)?)))
        .collect::<Result<_>>()?;
    write(&root, "decode_response", resps)?;
    write(
        &root,
        "decode_advert",
        vec![("advert".into(), codec::encode(&advert(&w)?)?)],
    )?;

    let tagged = |tag: u8, frame: Vec<u8>| [vec![tag], frame].concat();
    let n = notice(&w, &[(&w.payee, 1, 1_000), (&w.payer, 2, 500)])?;
    write(
        &root,
        "decode_signed",
        vec![
            ("notice".into(), tagged(0, codec::encode(&n)?)),
            ("receipt".into(), tagged(1, codec::encode(&receipt(&w)?)?)),
            (
                "receipt-v1".into(),
                tagged(2, codec::encode(&receipt_v1(&w)?)?),
            ),
        ],
    )?;

    let m = manifest(&w)?;
    write(
        &root,
        "payout_manifest",
        vec![
            ("notice-two-addresses".into(), codec::encode(&n)?),
            (
                "notice-one-address".into(),
                codec::encode(&notice(&w, &[(&w.payee, 1, 1_000), (&w.payee, 2, 1)])?)?,
            ),
            ("stored-manifest".into(), postcard::to_allocvec(&m)?),
        ],
    )?;

    let (raw, xdr) = envelope(&w, &m)?;
    write(
        &root,
        "decode_envelope",
        vec![
            ("envelope-xdr".into(), raw),
            ("envelope-base64".into(), xdr.into_bytes()),
        ],
    )?;

    let records = ledger_records(&w)?
        .into_iter()
        .enumerate()
        .map(|(i, (tag, bytes))| (format!("record-{i}"), tagged(tag, bytes)))
        .collect();
    write(&root, "decode_ledger_record", records)?;

    let models = [
        "digits-mlp.onnx",
        "digits-cnn.onnx",
        "fixtures/unsupported-op.onnx",
    ]
    .iter()
    .map(|m| {
        let bytes = fs::read(repo.join("models").join(m))?;
        Ok((m.replace('/', "-"), bytes))
    })
    .collect::<Result<_>>()?;
    write(&root, "load_model", models)?;
    Ok(())
}
