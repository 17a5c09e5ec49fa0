//! Integration tests of the wire protocol: property tests for the codec and end-to-end
//! signing and validation of the task flow.

use crank_protocol::adverts::{AdvertError, AdvertTable, Inserted};
use crank_protocol::codec::{self, CodecError};
use crank_protocol::tensor::tensors_hash;
use crank_protocol::validate::{self, Limits, ValidationError};
use crank_protocol::*;
use proptest::prelude::*;

mod bounds;

const PAYOUT: &str = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";
const PAYER: &str = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H";

fn id(n: u8) -> Identity {
    Identity::from_secret([n; 32])
}

fn advert(node: &Identity, seq: u64, now: UnixMillis) -> Signed<CapabilityAdvert> {
    let body = CapabilityAdvert {
        node: node.node_id(),
        seq,
        issued_at: now,
        expires_at: now + 60_000,
        agent: "crank-node/test".into(),
        hardware: Hardware {
            cpu_model: "test cpu".into(),
            cores: 2,
            ram_mib: 1024,
            arch: "x86_64".into(),
            os: "linux".into(),
            gpus: vec![],
        },
        power: PowerInfo {
            external_power: Some(true),
            has_battery: false,
            battery_percent: None,
            busy_milliwatts: 15_000,
        },
        gate: GateInfo {
            policy: RunPolicy::ChargingIdle,
            open: true,
            reason: None,
        },
        models: vec![ModelId::of(b"m")],
        unservable: Vec::new(),
        pricing: Pricing {
            per_task_stroops: 100,
            per_second_stroops: 10,
        },
        payout: PAYOUT.into(),
        trust: TrustSummary::default(),
        bench: vec![PathBench {
            path: ExecPath::Cpu,
            inferences_per_sec: 1000.0,
            microjoules_per_inference: 50,
        }],
        capacity: Capacity {
            workers: 1,
            queue_slots: 8,
            queued: 0,
        },
        addrs: vec![],
    };
    Signed::sign(body, node).unwrap()
}

fn inputs(values: Vec<f32>) -> Vec<NamedTensor> {
    let n = values.len() as u64;
    vec![NamedTensor {
        name: "x".into(),
        tensor: Tensor::f32(vec![1, n], values).unwrap(),
    }]
}

#[test]
fn advert_table_accepts_fresh_rejects_stale_expired_and_forged() {
    let now = 1_000_000;
    let mut table = AdvertTable::new(16, Limits::default());
    let a = id(1);
    assert_eq!(table.insert(advert(&a, 1, now), now), Ok(Inserted::New));
    assert_eq!(table.insert(advert(&a, 2, now), now), Ok(Inserted::Updated));
    assert_eq!(
        table.insert(advert(&a, 2, now), now),
        Err(AdvertError::Stale { have: 2, got: 2 })
    );
    assert_eq!(
        table.insert(advert(&a, 1, now), now),
        Err(AdvertError::Stale { have: 2, got: 1 })
    );
    // Expired.
    let old = advert(&id(2), 1, now - 120_000);
    assert!(matches!(
        table.insert(old, now),
        Err(AdvertError::Invalid(ValidationError::Expired { .. }))
    ));
    // Forged: body altered after signing.
    let mut forged = advert(&id(3), 1, now);
    forged.body.pricing.per_task_stroops = 1;
    assert!(matches!(
        table.insert(forged, now),
        Err(AdvertError::Invalid(ValidationError::Signature(_)))
    ));
    // Signed by one node, claiming to be another.
    let mut impostor = advert(&id(4), 1, now);
    impostor.body.node = id(5).node_id();
    assert!(table.insert(impostor, now).is_err());
    assert_eq!(table.len(), 1);
    assert_eq!(table.fresh(now).count(), 1);
    assert_eq!(table.fresh(now + 61_000).count(), 0);
    assert_eq!(table.prune(now + 61_000), 1);
}

#[test]
fn advert_table_is_bounded() {
    let now = 1_000_000;
    let mut table = AdvertTable::new(3, Limits::default());
    for n in 1..=10 {
        table
            .insert(advert(&id(n), 1, now + u64::from(n)), now + 10)
            .unwrap();
    }
    assert_eq!(table.len(), 3);
}

const NONCE: [u8; 16] = [0x5a; 16];

/// A call for bids from `requester` whose task id derives from its nonce, model and inputs.
fn call_for_bids(requester: &Identity, ins: &[NamedTensor], now: UnixMillis) -> CallForBids {
    let model = ModelId::of(b"model");
    let input_hash = tensors_hash(ins);
    CallForBids {
        task_id: TaskId::derive(&requester.node_id(), &NONCE, &model, &input_hash),
        requester: requester.node_id(),
        model,
        model_bytes: 5,
        input_hash,
        input_elements: ins.iter().map(|t| t.tensor.data.len() as u64).sum(),
        max_price_stroops: 1_000,
        nonce: NONCE,
        payer: PAYER.into(),
        bid_deadline: now + 500,
        deadline: now + 10_000,
        issued_at: now,
    }
}

/// The award of `cfb` to `worker`, carrying `ins`.
fn award_for(cfb: &CallForBids, worker: &Identity, ins: Vec<NamedTensor>) -> Award {
    Award {
        task_id: cfb.task_id,
        requester: cfb.requester,
        worker: worker.node_id(),
        price_stroops: 100,
        model: cfb.model,
        model_bytes: cfb.model_bytes,
        input_hash: tensors_hash(&ins),
        inputs: ins,
        nonce: cfb.nonce,
        payer: cfb.payer.clone(),
        deadline: cfb.deadline,
    }
}

/// The receipt `worker` signs for `award`, committing to `outputs`.
fn receipt_for(award: &Award, outputs: &[NamedTensor], now: UnixMillis) -> WorkReceipt {
    WorkReceipt {
        task_id: award.task_id,
        requester: award.requester,
        worker: award.worker,
        model: award.model,
        input_hash: award.input_hash,
        output_hash: tensors_hash(outputs),
        price_stroops: award.price_stroops,
        energy: Energy {
            microjoules: 3_000,
            method: EnergyMethod::CpuTimeEstimate,
        },
        path: ExecPath::Cpu,
        timings: Timings {
            accepted_at: now,
            started_at: now + 1,
            finished_at: now + 2,
            run_micros: 900,
        },
        pair_seq: 1,
        cumulative_stroops: award.price_stroops,
        payout: PAYOUT.into(),
        payer: award.payer.clone(),
    }
}

fn is_field(r: Result<impl std::fmt::Debug, ValidationError>, name: &str) -> bool {
    matches!(r, Err(ValidationError::Field { field, .. }) if field == name)
}

#[test]
fn award_and_result_validation() {
    let now = 5_000_000;
    let requester = id(10);
    let worker = id(11);
    let ins = inputs(vec![0.5; 64]);
    let cfb = call_for_bids(&requester, &ins, now);
    let award = award_for(&cfb, &worker, ins.clone());
    let signed = Signed::sign(award.clone(), &requester).unwrap();
    let limits = Limits::default();
    assert!(validate::award(&signed, &worker.node_id(), now, &limits).is_ok());
    // Addressed to someone else.
    assert!(is_field(
        validate::award(&signed, &id(12).node_id(), now, &limits),
        "worker"
    ));
    // Past its deadline.
    assert!(matches!(
        validate::award(&signed, &worker.node_id(), now + 20_000, &limits),
        Err(ValidationError::Expired { .. })
    ));
    // Inputs swapped after hashing (and re-signed by the requester): hash mismatch.
    let mut swapped = award.clone();
    swapped.inputs = inputs(vec![0.25; 64]);
    let swapped = Signed::sign(swapped, &requester).unwrap();
    assert_eq!(
        validate::award(&swapped, &worker.node_id(), now, &limits).unwrap_err(),
        ValidationError::HashMismatch { what: "input" }
    );

    let outputs = inputs(vec![0.1; 10]);
    let receipt = receipt_for(&award, &outputs, now);
    let result = TaskResult {
        receipt: Signed::sign(receipt.clone(), &worker).unwrap(),
    };
    assert_eq!(
        validate::task_result(&result, &requester.node_id(), &worker.node_id(), &limits),
        Ok(&receipt)
    );
    // Receipt altered in transit (the signature no longer covers it).
    let mut tampered = result.clone();
    tampered.receipt.body.price_stroops = 1;
    assert!(matches!(
        validate::task_result(&tampered, &requester.node_id(), &worker.node_id(), &limits),
        Err(ValidationError::Signature(_))
    ));
    // Receipt signed by a third party.
    let third = TaskResult {
        receipt: Signed::sign(receipt.clone(), &id(13)).unwrap(),
    };
    assert!(matches!(
        validate::task_result(&third, &requester.node_id(), &worker.node_id(), &limits),
        Err(ValidationError::Signature(_))
    ));
    // A receipt for another requester.
    assert!(is_field(
        validate::task_result(&result, &id(14).node_id(), &worker.node_id(), &limits),
        "requester"
    ));

    let countersigned = CounterSigned::countersign(result.receipt, &requester).unwrap();
    assert!(countersigned.verify().is_ok());
    let frame = codec::encode(&Response::Receipt(Box::new(countersigned.clone()))).unwrap();
    let back: Response = codec::decode(&frame, codec::DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(back, Response::Receipt(Box::new(countersigned)));
}

#[test]
fn a_task_id_must_derive_from_the_nonce_model_and_inputs() {
    let now = 5_000_000;
    let requester = id(20);
    let worker = id(21);
    let limits = Limits::default();
    let ins = inputs(vec![0.5; 16]);
    let cfb = call_for_bids(&requester, &ins, now);
    let sign_cfb = |c: CallForBids| Signed::sign(c, &requester).unwrap();
    assert_eq!(
        validate::call_for_bids(&sign_cfb(cfb.clone()), now, &limits),
        Ok(&cfb)
    );

    // A task id that derives from nothing in the call.
    let made_up = CallForBids {
        task_id: TaskId([1; 32]),
        ..cfb.clone()
    };
    assert!(is_field(
        validate::call_for_bids(&sign_cfb(made_up), now, &limits),
        "task_id"
    ));
    // The same id with another nonce, model or input: the id no longer commits to the work.
    let other_nonce = CallForBids {
        nonce: [0xa5; 16],
        ..cfb.clone()
    };
    let other_model = CallForBids {
        model: ModelId::of(b"another model"),
        ..cfb.clone()
    };
    let other_input = CallForBids {
        input_hash: tensors_hash(&inputs(vec![0.25; 16])),
        ..cfb.clone()
    };
    for c in [other_nonce, other_model, other_input] {
        assert!(
            is_field(
                validate::call_for_bids(&sign_cfb(c), now, &limits),
                "task_id"
            ),
            "a task id that does not derive is refused"
        );
    }

    // The award: valid as derived, refused once any part of the derivation differs.
    let award = award_for(&cfb, &worker, ins.clone());
    let sign_award = |a: Award| Signed::sign(a, &requester).unwrap();
    let me = worker.node_id();
    assert!(validate::award(&sign_award(award.clone()), &me, now, &limits).is_ok());
    let made_up = Award {
        task_id: TaskId([1; 32]),
        ..award.clone()
    };
    let other_nonce = Award {
        nonce: [0; 16],
        ..award.clone()
    };
    let other_model = Award {
        model: ModelId::of(b"another model"),
        ..award.clone()
    };
    // Other inputs, consistently hashed: the hash check passes, the id check does not.
    let other_input = award_for(&cfb, &worker, inputs(vec![0.75; 16]));
    for a in [made_up, other_nonce, other_model, other_input] {
        assert!(
            is_field(
                validate::award(&sign_award(a), &me, now, &limits),
                "task_id"
            ),
            "an award whose task id does not derive is refused"
        );
    }
}

#[test]
fn the_payer_must_be_a_stellar_account() {
    let now = 5_000_000;
    let requester = id(30);
    let worker = id(31);
    let limits = Limits::default();
    let ins = inputs(vec![1.0; 8]);
    let cfb = call_for_bids(&requester, &ins, now);
    let award = award_for(&cfb, &worker, ins);
    let secret_seed = PAYOUT.replacen('G', "S", 1);
    for bad in ["", "GAAZ", "not an account", secret_seed.as_str()] {
        let c = CallForBids {
            payer: bad.into(),
            ..cfb.clone()
        };
        assert!(
            is_field(
                validate::call_for_bids(&Signed::sign(c, &requester).unwrap(), now, &limits),
                "payer"
            ),
            "call for bids paying from {bad:?}"
        );
        let a = Award {
            payer: bad.into(),
            ..award.clone()
        };
        assert!(
            is_field(
                validate::award(
                    &Signed::sign(a, &requester).unwrap(),
                    &worker.node_id(),
                    now,
                    &limits
                ),
                "payer"
            ),
            "award paying from {bad:?}"
        );
        let mut r = receipt_for(&award, &inputs(vec![0.0; 2]), now);
        r.payer = bad.into();
        let result = TaskResult {
            receipt: Signed::sign(r, &worker).unwrap(),
        };
        assert!(
            is_field(
                validate::task_result(&result, &requester.node_id(), &worker.node_id(), &limits),
                "payer"
            ),
            "receipt paying from {bad:?}"
        );
    }
    // The payer account may differ from the payout one; it only has to be an account.
    let a = Award {
        payer: PAYOUT.into(),
        ..award
    };
    assert!(
        validate::award(
            &Signed::sign(a, &requester).unwrap(),
            &worker.node_id(),
            now,
            &limits
        )
        .is_ok()
    );
}

#[test]
fn outputs_must_match_the_receipt_and_be_signed_by_its_worker() {
    let now = 5_000_000;
    let requester = id(40);
    let worker = id(41);
    let limits = Limits::default();
    let ins = inputs(vec![0.5; 8]);
    let award = award_for(&call_for_bids(&requester, &ins, now), &worker, ins);
    let outputs = inputs(vec![0.1; 10]);
    let receipt = receipt_for(&award, &outputs, now);
    let body = |outputs: Vec<NamedTensor>| TaskOutputs {
        task_id: receipt.task_id,
        worker: worker.node_id(),
        requester: requester.node_id(),
        outputs,
    };

    let good = Signed::sign(body(outputs.clone()), &worker).unwrap();
    assert_eq!(
        validate::task_outputs(&good, &receipt, &limits)
            .unwrap()
            .outputs,
        outputs
    );

    // Other tensors, signed by the worker: proof that it broke its commitment.
    let other = Signed::sign(body(inputs(vec![0.2; 10])), &worker).unwrap();
    assert_eq!(
        validate::task_outputs(&other, &receipt, &limits).unwrap_err(),
        ValidationError::HashMismatch { what: "output" }
    );

    // The right tensors, signed by someone else (naming the worker or themselves).
    let forged = Signed::sign(body(outputs.clone()), &id(42)).unwrap();
    assert!(matches!(
        validate::task_outputs(&forged, &receipt, &limits),
        Err(ValidationError::Signature(
            SignatureError::WrongSigner { .. }
        ))
    ));
    let mut own = body(outputs.clone());
    own.worker = id(42).node_id();
    let own = Signed::sign(own, &id(42)).unwrap();
    assert!(matches!(
        validate::task_outputs(&own, &receipt, &limits),
        Err(ValidationError::Signature(_))
    ));
    // Signed by the worker, then altered.
    let mut altered = good.clone();
    altered.body.outputs = inputs(vec![0.3; 10]);
    assert!(matches!(
        validate::task_outputs(&altered, &receipt, &limits),
        Err(ValidationError::Signature(SignatureError::Invalid(_)))
    ));

    // Outputs of another task, or for another requester.
    let mut elsewhere = body(outputs.clone());
    elsewhere.task_id = TaskId([3; 32]);
    assert!(is_field(
        validate::task_outputs(
            &Signed::sign(elsewhere, &worker).unwrap(),
            &receipt,
            &limits
        ),
        "task_id"
    ));
    let mut stranger = body(outputs);
    stranger.requester = id(43).node_id();
    assert!(is_field(
        validate::task_outputs(&Signed::sign(stranger, &worker).unwrap(), &receipt, &limits),
        "requester"
    ));
    // No tensors at all.
    assert!(is_field(
        validate::task_outputs(
            &Signed::sign(body(vec![]), &worker).unwrap(),
            &receipt,
            &limits
        ),
        "tensors"
    ));

    // Outputs travel in their own request and come back intact.
    let frame = codec::encode(&Request::Outputs(Box::new(good.clone()))).unwrap();
    assert_eq!(
        codec::decode::<Request>(&frame, codec::DEFAULT_MAX_FRAME).unwrap(),
        Request::Outputs(Box::new(good))
    );
}

#[test]
fn disputes_verify_against_the_workers_own_receipt() {
    let now = 5_000_000;
    let requester = id(50);
    let worker = id(51);
    let ins = inputs(vec![0.5; 8]);
    let award = award_for(&call_for_bids(&requester, &ins, now), &worker, ins);
    let outputs = inputs(vec![0.1; 4]);
    let receipt = Signed::sign(receipt_for(&award, &outputs, now), &worker).unwrap();
    let wrong_outputs = Signed::sign(
        TaskOutputs {
            task_id: award.task_id,
            worker: worker.node_id(),
            requester: requester.node_id(),
            outputs: inputs(vec![0.9; 4]),
        },
        &worker,
    )
    .unwrap();
    let dispute = |receipt: Signed<WorkReceipt>, requester_id: NodeId| Dispute {
        receipt,
        requester: requester_id,
        reason: DisputeReason::OutputMismatch {
            outputs: Box::new(wrong_outputs.clone()),
        },
        at: now + 5,
    };
    let me = worker.node_id();

    let good = Signed::sign(dispute(receipt.clone(), requester.node_id()), &requester).unwrap();
    let d = validate::dispute(&good, &me).unwrap();
    assert_eq!(d.receipt, receipt);
    assert_eq!(
        d.reason.to_string(),
        "outputs do not match the hash the receipt committed to"
    );

    // Not this node's receipt (it is checked against `me`).
    assert!(matches!(
        validate::dispute(&good, &id(52).node_id()),
        Err(ValidationError::Signature(
            SignatureError::WrongSigner { .. }
        ))
    ));
    // Signed by someone other than the requester it names.
    let impostor = Signed::sign(dispute(receipt.clone(), requester.node_id()), &id(53)).unwrap();
    assert!(matches!(
        validate::dispute(&impostor, &me),
        Err(ValidationError::Signature(
            SignatureError::WrongSigner { .. }
        ))
    ));
    // A third party disputing, in its own name, a receipt it did not request.
    let meddler = Signed::sign(dispute(receipt.clone(), id(53).node_id()), &id(53)).unwrap();
    assert!(is_field(validate::dispute(&meddler, &me), "requester"));
    // A receipt altered before it was put in evidence no longer verifies.
    let mut altered = receipt.clone();
    altered.body.price_stroops += 1;
    let altered = Signed::sign(dispute(altered, requester.node_id()), &requester).unwrap();
    assert!(matches!(
        validate::dispute(&altered, &me),
        Err(ValidationError::Signature(SignatureError::Invalid(_)))
    ));
    // A dispute altered after signing.
    let mut tampered = good.clone();
    tampered.body.at += 1;
    assert!(matches!(
        validate::dispute(&tampered, &me),
        Err(ValidationError::Signature(SignatureError::Invalid(_)))
    ));

    // Every reason travels, in a request and in a response.
    for reason in [
        DisputeReason::NotDelivered {
            gave_up_at: now + 9,
        },
        DisputeReason::CheckFailed {
            message: "shape".into(),
        },
        DisputeReason::InvalidOutputs {
            outputs: Box::new(wrong_outputs.clone()),
            message: "output `y` element 3 is NaN".into(),
        },
    ] {
        let d = Signed::sign(
            Dispute {
                reason,
                ..dispute(receipt.clone(), requester.node_id())
            },
            &requester,
        )
        .unwrap();
        assert!(validate::dispute(&d, &me).is_ok());
        let req = Request::Dispute(Box::new(d.clone()));
        let frame = codec::encode(&req).unwrap();
        assert_eq!(codec::decode::<Request>(&frame, 1 << 20).unwrap(), req);
        let resp = Response::Disputed(Box::new(d));
        let frame = codec::encode(&resp).unwrap();
        assert_eq!(codec::decode::<Response>(&frame, 1 << 20).unwrap(), resp);
    }
}

#[test]
fn frames_of_wire_versions_1_and_2_are_refused_with_an_upgrade_hint() {
    assert_eq!(codec::WIRE_VERSION, 3);
    let requester = id(60);
    let ins = inputs(vec![0.5; 8]);
    let cfb = call_for_bids(&requester, &ins, 1_000);
    let mut frame = codec::encode(&Request::CallForBids(
        Signed::sign(cfb, &requester).unwrap(),
    ))
    .unwrap();
    assert!(codec::decode::<Request>(&frame, codec::DEFAULT_MAX_FRAME).is_ok());
    frame[0] = 1;
    let err = codec::decode::<Request>(&frame, codec::DEFAULT_MAX_FRAME).unwrap_err();
    assert_eq!(err, CodecError::UnsupportedVersion { got: 1 });
    let text = err.to_string();
    assert!(text.contains("must upgrade"), "{text}");
    assert!(text.contains("version 1"), "{text}");
    // Even GetAdvert, which has no body to misread.
    assert_eq!(
        codec::decode::<Request>(&[codec::WIRE_VERSION, 8], codec::DEFAULT_MAX_FRAME),
        Ok(Request::GetAdvert)
    );
    let err = codec::decode::<Request>(&[1, 8], codec::DEFAULT_MAX_FRAME).unwrap_err();
    assert!(err.to_string().contains("must upgrade"), "{err}");
    // A version 2 peer (no onnxruntime path, no unservable models in adverts) is told too.
    frame[0] = 2;
    let err = codec::decode::<Request>(&frame, codec::DEFAULT_MAX_FRAME).unwrap_err();
    assert_eq!(err, CodecError::UnsupportedVersion { got: 2 });
    assert!(err.to_string().contains("must upgrade"), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn the_onnxruntime_path_and_unservable_models_cross_the_wire() {
    let worker = id(61);
    let requester = id(60);
    let ins = inputs(vec![0.5; 8]);
    let cfb = call_for_bids(&requester, &ins, 1_000);
    // The path is named in bids and receipts as `onnxruntime`.
    assert_eq!(ExecPath::Onnxruntime.to_string(), "onnxruntime");
    assert_eq!(
        serde_json::to_string(&ExecPath::Onnxruntime).unwrap(),
        "\"onnxruntime\""
    );
    // Receipts of the existing paths keep their version 2 encoding: what ledgers hold
    // still decodes (the new variant is appended).
    assert_eq!(postcard::to_stdvec(&ExecPath::Cpu).unwrap(), vec![0]);
    assert_eq!(postcard::to_stdvec(&ExecPath::Gpu).unwrap(), vec![1]);
    assert_eq!(
        postcard::to_stdvec(&ExecPath::Onnxruntime).unwrap(),
        vec![2]
    );
    let decline = Decline {
        task_id: cfb.task_id,
        worker: worker.node_id(),
        reason: DeclineReason::ModelUnsupported {
            message:
                "model uses operator `Foo` (node `n1`), which the CPU runtime does not support"
                    .into(),
        },
    };
    assert_eq!(decline.reason.category(), "model unsupported");
    let resp = Response::Decline(Signed::sign(decline, &worker).unwrap());
    let frame = codec::encode(&resp).unwrap();
    assert_eq!(codec::decode::<Response>(&frame, 1 << 20).unwrap(), resp);
}

fn arb_tensor() -> impl Strategy<Value = NamedTensor> {
    (prop::collection::vec(-1e6f32..1e6, 0..64), "[a-z]{0,8}").prop_map(|(v, name)| NamedTensor {
        name,
        tensor: Tensor::f32(vec![v.len() as u64], v).unwrap(),
    })
}

fn arb_request() -> impl Strategy<Value = Request> {
    let fetch = (any::<[u8; 32]>(), any::<u64>(), any::<u32>()).prop_map(|(m, offset, max_len)| {
        Request::FetchModel(FetchModel {
            model: ModelId(m),
            offset,
            max_len,
            award: None,
        })
    });
    let award = (
        any::<[u8; 32]>(),
        any::<u64>(),
        prop::collection::vec(arb_tensor(), 0..4),
        any::<u64>(),
    )
        .prop_map(|(t, price, inputs, deadline)| {
            let input_hash = tensors_hash(&inputs);
            let nonce: [u8; 16] = t[..16].try_into().unwrap();
            let body = Award {
                task_id: TaskId::derive(&id(1).node_id(), &nonce, &ModelId(t), &input_hash),
                requester: id(1).node_id(),
                worker: id(2).node_id(),
                price_stroops: price,
                model: ModelId(t),
                model_bytes: price / 3,
                input_hash,
                inputs,
                nonce,
                payer: PAYER.into(),
                deadline,
            };
            Request::Award(Signed::sign(body, &id(1)).unwrap())
        });
    let cfb = (
        any::<[u8; 32]>(),
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(t, nonce, p, d)| {
            let body = CallForBids {
                task_id: TaskId::derive(&id(1).node_id(), &nonce, &ModelId(t), &ContentHash(t)),
                requester: id(1).node_id(),
                model: ModelId(t),
                model_bytes: p,
                input_hash: ContentHash(t),
                input_elements: 64,
                max_price_stroops: p,
                nonce,
                payer: PAYER.into(),
                bid_deadline: d / 2,
                deadline: d,
                issued_at: d / 4,
            };
            Request::CallForBids(Signed::sign(body, &id(1)).unwrap())
        });
    prop_oneof![fetch, award, cfb]
}

proptest! {
    #[test]
    fn codec_round_trips_requests(req in arb_request()) {
        let frame = codec::encode(&req).unwrap();
        let back: Request = codec::decode(&frame, codec::DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(&back, &req);
        // A decoded signed message still verifies.
        match back {
            Request::Award(a) => prop_assert!(a.verify().is_ok()),
            Request::CallForBids(c) => prop_assert!(c.verify().is_ok()),
            _ => {}
        }
    }

    #[test]
    fn any_bytes_decode_to_a_value_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = codec::decode::<Request>(&bytes, codec::DEFAULT_MAX_FRAME);
        let _ = codec::decode::<Response>(&bytes, codec::DEFAULT_MAX_FRAME);
        let _ = codec::decode::<Signed<CapabilityAdvert>>(&bytes, codec::MAX_ADVERT_FRAME);
    }

    #[test]
    fn mutated_frames_never_panic(req in arb_request(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut frame = codec::encode(&req).unwrap();
        for (i, b) in flips {
            let i = i.index(frame.len());
            frame[i] ^= b;
        }
        if let Ok(Request::Award(a)) = codec::decode::<Request>(&frame, codec::DEFAULT_MAX_FRAME) {
            // Whatever decoded must either still verify (the flip hit nothing signed) or fail cleanly.
            let _ = a.verify();
        }
    }

    #[test]
    fn oversize_frames_are_refused(extra in 1usize..100) {
        let frame = vec![codec::WIRE_VERSION; 100 + extra];
        let is_too_large = matches!(codec::decode::<Request>(&frame, 100), Err(CodecError::TooLarge { .. }));
        prop_assert!(is_too_large);
    }
}

#[test]
fn every_response_kind_round_trips() {
    let w = id(2);
    let t = TaskId([9; 32]);
    let decline = |reason| {
        Response::Decline(
            Signed::sign(
                Decline {
                    task_id: t,
                    worker: w.node_id(),
                    reason,
                },
                &w,
            )
            .unwrap(),
        )
    };
    let all = vec![
        decline(DeclineReason::Gate {
            reason: GateReason::OnBattery { percent: Some(54) },
        }),
        decline(DeclineReason::Gate {
            reason: GateReason::UserActive {
                idle_secs: 40,
                required_secs: 180,
            },
        }),
        decline(DeclineReason::Gate {
            reason: GateReason::CpuBusy {
                percent: 63,
                limit: 25,
            },
        }),
        decline(DeclineReason::Gate {
            reason: GateReason::TooHot {
                celsius: 91,
                limit: 85,
            },
        }),
        decline(DeclineReason::QueueFull {
            queued: 8,
            slots: 8,
        }),
        decline(DeclineReason::PriceTooLow {
            min_price_stroops: 10,
        }),
        decline(DeclineReason::Credit {
            owed_stroops: 60_000_000,
            oldest_unpaid_secs: 3_600,
            limit: "limit 50000000 stroops".into(),
        }),
        decline(DeclineReason::Other {
            message: "x".into(),
        }),
        Response::Accepted { task_id: t },
        Response::Ack { task_id: t },
        Response::ModelChunk(ModelChunk {
            model: ModelId([1; 32]),
            total_len: 3,
            offset: 0,
            bytes: vec![1, 2, 3],
        }),
        Response::error(ErrorCode::BadSignature, "nope"),
    ];
    for r in all {
        let frame = codec::encode(&r).unwrap();
        assert_eq!(codec::decode::<Response>(&frame, 1 << 20).unwrap(), r);
    }
    let failure = Request::Failure(
        Signed::sign(
            TaskFailure {
                task_id: t,
                requester: id(1).node_id(),
                worker: w.node_id(),
                reason: FailureReason::Aborted {
                    reason: GateReason::OnBattery { percent: None },
                },
            },
            &w,
        )
        .unwrap(),
    );
    let frame = codec::encode(&failure).unwrap();
    assert_eq!(codec::decode::<Request>(&frame, 1 << 20).unwrap(), failure);
    // Settlement notices are signed by the paying node, and still verify after a round trip.
    let payer = id(1);
    let notice = Signed::sign(
        SettlementNotice {
            payer_node: payer.node_id(),
            payer_account: PAYER.into(),
            tx_hash: [4; 32],
            receipts: vec![PaidReceipt {
                payout: PAYOUT.into(),
                task_id: t,
                worker: w.node_id(),
                amount_stroops: 120,
            }],
        },
        &payer,
    )
    .unwrap();
    let req = Request::Settlement(notice.clone());
    let back = codec::decode::<Request>(&codec::encode(&req).unwrap(), 1 << 20).unwrap();
    assert_eq!(back, req);
    let Request::Settlement(back) = back else {
        unreachable!("decoded the settlement request as {back:?}")
    };
    assert_eq!(
        validate::settlement_notice(&back, &w.node_id()),
        Ok(&notice.body)
    );
    for r in [
        Response::Settlement(Box::new(notice)),
        Response::PaymentRecorded { receipts: 1 },
    ] {
        let frame = codec::encode(&r).unwrap();
        assert_eq!(codec::decode::<Response>(&frame, 1 << 20).unwrap(), r);
    }
    let credit = DeclineReason::Credit {
        owed_stroops: 60_000_000,
        oldest_unpaid_secs: 3_600,
        limit: "limit 50000000 stroops".into(),
    };
    assert_eq!(credit.category(), "credit");
    assert!(
        credit.to_string().contains("60000000 stroops unpaid"),
        "{credit}"
    );
    assert_eq!(
        DeclineReason::Gate {
            reason: GateReason::OnBattery { percent: Some(54) }
        }
        .to_string(),
        "on battery 54 %"
    );
}
