//! Integration tests of the wire protocol: property tests for the codec and end-to-end
//! signing and validation of the task flow.

use crank_protocol::adverts::{AdvertError, AdvertTable, Inserted};
use crank_protocol::codec::{self, CodecError};
use crank_protocol::tensor::tensors_hash;
use crank_protocol::validate::{self, Limits, ValidationError};
use crank_protocol::*;
use proptest::prelude::*;

const PAYOUT: &str = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";

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

#[test]
fn award_and_result_validation() {
    let now = 5_000_000;
    let requester = id(10);
    let worker = id(11);
    let ins = inputs(vec![0.5; 64]);
    let award = Award {
        task_id: TaskId([1; 32]),
        requester: requester.node_id(),
        worker: worker.node_id(),
        price_stroops: 100,
        model: ModelId::of(b"model"),
        model_bytes: 5,
        input_hash: tensors_hash(&ins),
        inputs: ins.clone(),
        deadline: now + 10_000,
    };
    let signed = Signed::sign(award.clone(), &requester).unwrap();
    let limits = Limits::default();
    assert!(validate::award(&signed, &worker.node_id(), now, &limits).is_ok());
    // Addressed to someone else.
    assert!(validate::award(&signed, &id(12).node_id(), now, &limits).is_err());
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
    let receipt = WorkReceipt {
        task_id: award.task_id,
        requester: requester.node_id(),
        worker: worker.node_id(),
        model: award.model,
        input_hash: award.input_hash,
        output_hash: tensors_hash(&outputs),
        price_stroops: 100,
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
        cumulative_stroops: 100,
        payout: PAYOUT.into(),
    };
    let result = TaskResult {
        receipt: Signed::sign(receipt.clone(), &worker).unwrap(),
        outputs: outputs.clone(),
    };
    assert!(
        validate::task_result(&result, &requester.node_id(), &worker.node_id(), &limits).is_ok()
    );
    // Outputs replaced in transit.
    let tampered = TaskResult {
        outputs: inputs(vec![0.2; 10]),
        ..result.clone()
    };
    assert!(
        validate::task_result(&tampered, &requester.node_id(), &worker.node_id(), &limits).is_err()
    );
    // Receipt signed by a third party.
    let third = TaskResult {
        receipt: Signed::sign(receipt, &id(13)).unwrap(),
        outputs,
    };
    assert!(
        validate::task_result(&third, &requester.node_id(), &worker.node_id(), &limits).is_err()
    );

    let countersigned = CounterSigned::countersign(result.receipt, &requester).unwrap();
    assert!(countersigned.verify().is_ok());
    let frame = codec::encode(&Response::Receipt(Box::new(countersigned.clone()))).unwrap();
    let back: Response = codec::decode(&frame, codec::DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(back, Response::Receipt(Box::new(countersigned)));
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
        })
    });
    let award = (
        any::<[u8; 32]>(),
        any::<u64>(),
        prop::collection::vec(arb_tensor(), 0..4),
        any::<u64>(),
    )
        .prop_map(|(t, price, inputs, deadline)| {
            let body = Award {
                task_id: TaskId(t),
                requester: id(1).node_id(),
                worker: id(2).node_id(),
                price_stroops: price,
                model: ModelId(t),
                model_bytes: price / 3,
                input_hash: tensors_hash(&inputs),
                inputs,
                deadline,
            };
            Request::Award(Signed::sign(body, &id(1)).unwrap())
        });
    let cfb = (any::<[u8; 32]>(), any::<u64>(), any::<u64>()).prop_map(|(t, p, d)| {
        let body = CallForBids {
            task_id: TaskId(t),
            requester: id(1).node_id(),
            model: ModelId(t),
            model_bytes: p,
            input_hash: ContentHash(t),
            input_elements: 64,
            max_price_stroops: p,
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
    assert_eq!(
        DeclineReason::Gate {
            reason: GateReason::OnBattery { percent: Some(54) }
        }
        .to_string(),
        "on battery 54 %"
    );
}
