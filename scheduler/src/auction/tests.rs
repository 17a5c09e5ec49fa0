use crank_protocol::{
    Energy, EnergyMethod, ExecPath, GateReason, Identity, Signed, TaskFailure, Timings,
};

use super::*;
use crate::score::Preference;

const PAYOUT: &str = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";
const PAYER: &str = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H";
const NONCE: [u8; 16] = [6; 16];
const T0: UnixMillis = 1_000_000;

fn ident(n: u8) -> Identity {
    Identity::from_secret([n; 32])
}

fn node(n: u8) -> NodeId {
    ident(n).node_id()
}

/// The task every test auctions: its id derives from the requester, nonce, model and inputs.
fn task() -> TaskId {
    TaskId::derive(&node(0), &NONCE, &ModelId([7; 32]), &ContentHash([8; 32]))
}

fn spec(weights: Weights) -> TaskSpec {
    TaskSpec {
        task_id: task(),
        requester: node(0),
        model: ModelId([7; 32]),
        model_bytes: 50_000,
        input_hash: ContentHash([8; 32]),
        input_elements: 64,
        nonce: NONCE,
        payer: PAYER.into(),
        max_price_stroops: 10_000,
        deadline: T0 + 60_000,
        bid_window_ms: 500,
        weights,
    }
}

fn auction(weights: Weights, workers: &[u8]) -> Auction {
    let cands: Vec<NodeId> = workers.iter().map(|n| node(*n)).collect();
    Auction::new(
        spec(weights),
        AuctionConfig::default(),
        &cands,
        &TrustBook::default(),
        T0,
    )
    .unwrap()
}

fn bid_body(n: u8, price: u64, latency: u32, energy: u64) -> Bid {
    Bid {
        task_id: task(),
        worker: node(n),
        model: ModelId([7; 32]),
        model_bytes: 50_000,
        input_hash: ContentHash([8; 32]),
        input_elements: 64,
        price_stroops: price,
        est_latency_ms: latency,
        est_energy_mj: energy,
        path: ExecPath::Cpu,
        model_cached: true,
        queue_len: 0,
        valid_until: T0 + 30_000,
        payout: PAYOUT.into(),
    }
}

fn bid(n: u8, price: u64, latency: u32, energy: u64) -> Input {
    Input::Bid {
        from: node(n),
        bid: Signed::sign(bid_body(n, price, latency, energy), &ident(n)).unwrap(),
    }
}

fn decline(n: u8, reason: DeclineReason) -> Signed<Decline> {
    Signed::sign(
        Decline {
            task_id: task(),
            worker: node(n),
            reason,
        },
        &ident(n),
    )
    .unwrap()
}

fn failure(n: u8, reason: FailureReason) -> Input {
    Input::WorkerFailed {
        from: node(n),
        failure: Signed::sign(
            TaskFailure {
                task_id: task(),
                requester: node(0),
                worker: node(n),
                reason,
            },
            &ident(n),
        )
        .unwrap(),
    }
}

fn receipt(n: u8, price: u64) -> Input {
    receipt_from(receipt_body(n, price))
}

fn receipt_from(r: WorkReceipt) -> Input {
    let n = (0..=u8::MAX).find(|n| node(*n) == r.worker).unwrap();
    Input::Result {
        from: r.worker,
        receipt: Signed::sign(r, &ident(n)).unwrap(),
    }
}

fn receipt_body(n: u8, price: u64) -> WorkReceipt {
    WorkReceipt {
        task_id: task(),
        requester: node(0),
        worker: node(n),
        model: ModelId([7; 32]),
        input_hash: ContentHash([8; 32]),
        output_hash: ContentHash([9; 32]),
        price_stroops: price,
        energy: Energy {
            microjoules: 10_000,
            method: EnergyMethod::CpuTimeEstimate,
        },
        path: ExecPath::Cpu,
        timings: Timings {
            accepted_at: T0,
            started_at: T0,
            finished_at: T0,
            run_micros: 1,
        },
        pair_seq: 1,
        cumulative_stroops: price,
        payout: PAYOUT.into(),
        payer: PAYER.into(),
    }
}

fn drain(a: &mut Auction) -> Vec<Output> {
    std::iter::from_fn(|| a.poll_output()).collect()
}

fn award_of(outputs: &[Output]) -> Option<(NodeId, u64)> {
    outputs.iter().find_map(|o| match o {
        Output::SendAward { to, price_stroops } => Some((*to, *price_stroops)),
        _ => None,
    })
}

/// Five workers: 1 cheap and slow, 2 fast and dear, 3 frugal with energy, 4 middling,
/// 5 poor at everything.
fn five_bids(a: &mut Auction) {
    for input in [
        bid(1, 50, 5_000, 5_000),
        bid(2, 1_000, 50, 2_000),
        bid(3, 800, 3_000, 50),
        bid(4, 200, 300, 800),
        bid(5, 900, 4_000, 4_000),
    ] {
        a.handle(input, T0 + 10).unwrap();
    }
}

#[test]
fn each_preference_picks_its_worker() {
    for (pref, winner) in [
        (Preference::Cheap, 1),
        (Preference::Fast, 2),
        (Preference::Green, 3),
        (Preference::Balanced, 4),
    ] {
        let mut a = auction(pref.weights(), &[1, 2, 3, 4, 5]);
        let first = drain(&mut a);
        assert!(matches!(
            &first[..],
            [Output::SendCallForBids { round: 1, to, cfb }]
                if to.len() == 5 && cfb.bid_deadline == T0 + 500 && cfb.max_price_stroops == 10_000
        ));
        five_bids(&mut a);
        // Everyone answered: the award does not wait for the window to close.
        let out = drain(&mut a);
        let (to, price) = award_of(&out).unwrap();
        assert_eq!(to, node(winner), "{pref}");
        let bid = a.trace().awards[0].bid_price_stroops;
        assert!(
            price >= bid && price <= 10_000,
            "{pref}: {price} vs bid {bid}"
        );
        assert!(price > bid, "{pref}: second-score pays above the bid");
    }
}

#[test]
fn winner_fails_and_the_next_bid_is_awarded() {
    let mut a = auction(Preference::Balanced.weights(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    five_bids(&mut a);
    let (first, first_price) = award_of(&drain(&mut a)).unwrap();
    assert_eq!(first, node(4));
    a.handle(Input::AwardAccepted { from: node(4) }, T0 + 20)
        .unwrap();
    a.handle(
        failure(
            4,
            FailureReason::Aborted {
                reason: GateReason::OnBattery { percent: Some(80) },
            },
        ),
        T0 + 100,
    )
    .unwrap();
    let out = drain(&mut a);
    assert!(out.contains(&Output::Trust {
        peer: node(4),
        outcome: TaskOutcome::Aborted
    }));
    let (second, price) = award_of(&out).unwrap();
    assert_eq!(second, node(2), "balanced runner-up");
    assert!((1_000..=10_000).contains(&price));
    // The result of the withdrawn winner is no longer accepted.
    assert_eq!(
        a.handle(receipt(4, first_price), T0 + 150),
        Err(InputError::NotAwarded(node(4)))
    );
    a.handle(Input::AwardAccepted { from: node(2) }, T0 + 120)
        .unwrap();
    a.handle(receipt(2, price), T0 + 200).unwrap();
    let out = drain(&mut a);
    assert!(out.contains(&Output::Trust {
        peer: node(2),
        outcome: TaskOutcome::Completed
    }));
    assert!(out.contains(&Output::Completed {
        worker: node(2),
        price_stroops: price
    }));
    assert!(a.is_finished());
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(a.trace().awards.len(), 2);
    assert!(matches!(
        a.handle(bid(1, 1, 1, 1), T0 + 300),
        Err(InputError::Finished(_))
    ));
}

#[test]
fn all_decline_gives_aggregated_reasons() {
    let mut a = auction(Weights::default(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    let battery = DeclineReason::Gate {
        reason: GateReason::OnBattery { percent: Some(35) },
    };
    for n in [1, 3, 5] {
        a.handle(
            Input::Decline {
                from: node(n),
                decline: decline(n, battery.clone()),
            },
            T0 + 5,
        )
        .unwrap();
    }
    a.handle(
        Input::Decline {
            from: node(2),
            decline: decline(
                2,
                DeclineReason::QueueFull {
                    queued: 8,
                    slots: 8,
                },
            ),
        },
        T0 + 6,
    )
    .unwrap();
    assert_eq!(a.poll_timeout(), Some(T0 + 500));
    a.handle_timeout(T0 + 500);
    let out = drain(&mut a);
    let Some(Output::Failed(e)) = out.last() else {
        panic!("expected a failure, got {out:?}");
    };
    assert_eq!(
        e.to_string(),
        "no acceptable bid; asked 5: 3 on battery, 1 queue full, 1 did not answer"
    );
    assert_eq!(a.status(), Status::Failed);
}

#[test]
fn bad_bids_are_never_awarded() {
    let mut a = auction(Weights::default(), &[1, 2, 3, 4, 5, 6, 7]);
    drain(&mut a);
    // Not asked (6 and 7 are beyond the first K = 5) and a stranger.
    assert_eq!(
        a.handle(bid(6, 1, 1, 1), T0 + 1),
        Err(InputError::NotAsked(node(6)))
    );
    assert_eq!(
        a.handle(bid(9, 1, 1, 1), T0 + 1),
        Err(InputError::NotAsked(node(9)))
    );
    // Signed by someone else.
    let forged = Input::Bid {
        from: node(1),
        bid: Signed::sign(bid_body(1, 1, 1, 1), &ident(9)).unwrap(),
    };
    assert!(matches!(
        a.handle(forged, T0 + 1),
        Err(InputError::Rejected {
            reason: Rejection::BadSignature,
            ..
        })
    ));
    assert_eq!(
        a.handle(bid(1, 1, 1, 1), T0 + 2),
        Err(InputError::AlreadyAnswered(node(1)))
    );
    // Wrong task.
    let mut other = bid_body(2, 1, 1, 1);
    other.task_id = TaskId([1; 32]);
    let r = a.handle(
        Input::Bid {
            from: node(2),
            bid: Signed::sign(other, &ident(2)).unwrap(),
        },
        T0 + 2,
    );
    assert!(matches!(
        r,
        Err(InputError::Rejected {
            reason: Rejection::WrongTask,
            ..
        })
    ));
    // Expired, above max price, too slow.
    let mut expired = bid_body(3, 1, 1, 1);
    expired.valid_until = T0 + 2;
    let r = a.handle(
        Input::Bid {
            from: node(3),
            bid: Signed::sign(expired, &ident(3)).unwrap(),
        },
        T0 + 2,
    );
    assert!(matches!(
        r,
        Err(InputError::Rejected {
            reason: Rejection::Expired { .. },
            ..
        })
    ));
    assert!(matches!(
        a.handle(bid(4, 10_001, 1, 1), T0 + 3),
        Err(InputError::Rejected {
            reason: Rejection::AboveMaxPrice { .. },
            ..
        })
    ));
    assert!(matches!(
        a.handle(bid(5, 1, 60_000, 1), T0 + 3),
        Err(InputError::Rejected {
            reason: Rejection::TooSlow { .. },
            ..
        })
    ));
    // All five answered (badly): the round closes and round 2 asks 6 and 7.
    let out = drain(&mut a);
    assert!(award_of(&out).is_none());
    assert!(matches!(
        &out[..],
        [Output::SendCallForBids { round: 2, to, .. }] if to == &vec![node(6), node(7)]
    ));
    // A late bid from round 1 is still refused.
    assert!(matches!(
        a.handle(bid(1, 1, 1, 1), T0 + 4),
        Err(InputError::AlreadyAnswered(_))
    ));
    a.handle(bid(6, 300, 100, 10), T0 + 100).unwrap();
    // 7 answers after round 2's window: late.
    assert!(matches!(
        a.handle(bid(7, 1, 1, 1), T0 + 3 + 500 + 1),
        Err(InputError::Rejected {
            reason: Rejection::Late { .. },
            ..
        })
    ));
    let out = drain(&mut a);
    assert_eq!(
        award_of(&out),
        Some((node(6), 300)),
        "no runner-up: its own bid"
    );
}

#[test]
fn timeouts_cancel_and_move_on() {
    let mut a = auction(Preference::Balanced.weights(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    five_bids(&mut a);
    assert_eq!(award_of(&drain(&mut a)).unwrap().0, node(4));
    // 4 never accepts.
    let accept_by = a.poll_timeout().unwrap();
    assert_eq!(accept_by, T0 + 10 + 3_000);
    a.handle_timeout(accept_by);
    let out = drain(&mut a);
    assert!(out.contains(&Output::SendCancel { to: node(4) }));
    assert!(out.contains(&Output::Trust {
        peer: node(4),
        outcome: TaskOutcome::TimedOut
    }));
    assert_eq!(award_of(&out).unwrap().0, node(2));
    // 2 accepts but never delivers: due after 3 × 50 ms + 2 s.
    a.handle(Input::AwardAccepted { from: node(2) }, accept_by + 1)
        .unwrap();
    assert_eq!(a.poll_timeout(), Some(accept_by + 1 + 150 + 2_000));
    a.handle_timeout(accept_by + 5_000);
    let out = drain(&mut a);
    assert!(out.contains(&Output::SendCancel { to: node(2) }));
    let (next, _) = award_of(&out).unwrap();
    assert_ne!(next, node(2));
    assert_ne!(next, node(4));
    // Award rejected by the next one, the one after that does not get the award delivered.
    a.handle(
        Input::AwardRejected {
            from: next,
            decline: decline(
                (1..=5).find(|n| node(*n) == next).unwrap(),
                DeclineReason::QueueFull {
                    queued: 1,
                    slots: 1,
                },
            ),
        },
        accept_by + 5_001,
    )
    .unwrap();
    let (after, _) = award_of(&drain(&mut a)).unwrap();
    a.handle(Input::NoAnswer { peer: after }, accept_by + 5_002)
        .unwrap();
    let (last, _) = award_of(&drain(&mut a)).unwrap();
    // The deadline passes while the last bidder sits on the award.
    a.handle_timeout(T0 + 60_000);
    let out = drain(&mut a);
    assert!(out.contains(&Output::SendCancel { to: last }));
    let Some(Output::Failed(e)) = out.last() else {
        panic!("{out:?}");
    };
    assert_eq!(e.cause, FailCause::DeadlinePassed);
    assert_eq!(e.asked, 5);
    assert_eq!(e.count("result timed out"), 1);
    assert_eq!(e.count("rejected award (queue full)"), 1);
    assert_eq!(e.count("award not delivered"), 1);
    assert_eq!(e.count("did not accept in time"), 2, "{e}");
}

#[test]
fn a_failure_no_worker_can_avoid_ends_the_task() {
    let mut a = auction(Weights::default(), &[1, 2]);
    drain(&mut a);
    a.handle(bid(1, 100, 100, 100), T0 + 1).unwrap();
    a.handle(bid(2, 200, 100, 100), T0 + 1).unwrap();
    drain(&mut a);
    a.handle(
        failure(
            1,
            FailureReason::InputInvalid {
                message: "shape [1, 3] does not fit [1, 64]".into(),
            },
        ),
        T0 + 50,
    )
    .unwrap();
    let out = drain(&mut a);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Trust { .. })),
        "not the worker's fault"
    );
    let Some(Output::Failed(e)) = out.last() else {
        panic!("{out:?}");
    };
    assert!(matches!(e.cause, FailCause::TaskRejected { .. }));
    assert!(e.to_string().starts_with("task cannot run: input invalid"));
}

#[test]
fn no_candidates_fails_at_once_and_bad_specs_are_errors() {
    let mut a = auction(Weights::default(), &[0]);
    let out = drain(&mut a);
    assert!(matches!(&out[..], [Output::Failed(e)] if e.cause == FailCause::NoCandidates));
    let mut s = spec(Weights::default());
    s.deadline = T0;
    assert!(matches!(
        Auction::new(s, AuctionConfig::default(), &[], &TrustBook::default(), T0),
        Err(SpecError::DeadlinePassed { .. })
    ));
    let config = AuctionConfig {
        award_ack_ms: 0,
        ..AuctionConfig::default()
    };
    assert_eq!(
        Auction::new(
            spec(Weights::default()),
            config,
            &[node(1)],
            &TrustBook::default(),
            T0
        )
        .unwrap_err(),
        SpecError::ZeroSetting("award_ack_ms")
    );
    let mut s = spec(Weights::default());
    s.weights.price = 0.0;
    assert!(matches!(
        Auction::new(s, AuctionConfig::default(), &[], &TrustBook::default(), T0),
        Err(SpecError::Weights(_))
    ));
}

#[test]
fn trace_serialises_and_reads() {
    let mut a = auction(Preference::Fast.weights(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    five_bids(&mut a);
    a.handle(Input::AwardAccepted { from: node(2) }, T0 + 20)
        .unwrap();
    let price = a.trace().awards[0].price_stroops;
    a.handle(receipt(2, price), T0 + 90).unwrap();
    // Exact through a binary format; through JSON up to float parsing.
    let bin = postcard::to_allocvec(a.trace()).unwrap();
    assert_eq!(
        &postcard::from_bytes::<AuctionTrace>(&bin).unwrap(),
        a.trace()
    );
    let json = serde_json::to_string(a.trace()).unwrap();
    let back: AuctionTrace = serde_json::from_str(&json).unwrap();
    assert_eq!(back.answers.len(), 5);
    assert_eq!(back.awards[0].worker, node(2));
    assert_eq!(back.awards[0].price_stroops, price);
    assert!((back.awards[0].score.total - a.trace().awards[0].score.total).abs() < 1e-12);
    assert_eq!(back.outcome, a.trace().outcome);
    let value = serde_json::to_value(a.trace()).unwrap();
    assert_eq!(value["answers"][1]["answer"]["bid"]["price_stroops"], 1_000);
    assert_eq!(
        serde_json::to_value(a.status()).unwrap()["completed"]["price_stroops"],
        price
    );
    let text = a.trace().to_string();
    assert!(text.contains("round 1 at +0 ms: asked 5"), "{text}");
    assert!(text.contains("second-score price"), "{text}");
    assert!(
        text.contains(&format!("completed by {}", node(2).short())),
        "{text}"
    );
}

#[test]
fn first_price_pays_the_bid() {
    let cands: Vec<NodeId> = [1, 2, 3, 4, 5].iter().map(|n| node(*n)).collect();
    let config = AuctionConfig {
        payment: PaymentRule::FirstPrice,
        ..AuctionConfig::default()
    };
    let mut a = Auction::new(
        spec(Preference::Cheap.weights()),
        config,
        &cands,
        &TrustBook::default(),
        T0,
    )
    .unwrap();
    drain(&mut a);
    five_bids(&mut a);
    assert_eq!(award_of(&drain(&mut a)), Some((node(1), 50)));
}

#[test]
fn a_bad_result_or_an_unreachable_worker_is_re_awarded_at_once() {
    let mut a = auction(Preference::Balanced.weights(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    five_bids(&mut a);
    let (w, price) = award_of(&drain(&mut a)).unwrap();
    assert_eq!(w, node(4));
    a.handle(Input::AwardAccepted { from: w }, T0 + 20).unwrap();
    // A receipt that claims another price is refused, and the task moves on.
    assert_eq!(
        a.handle(receipt(4, price + 1), T0 + 30),
        Err(InputError::Mismatch {
            peer: node(4),
            field: "price_stroops"
        })
    );
    let out = drain(&mut a);
    assert!(out.contains(&Output::SendCancel { to: node(4) }));
    assert!(out.contains(&Output::Trust {
        peer: node(4),
        outcome: TaskOutcome::Failed
    }));
    let (w, _) = award_of(&out).unwrap();
    assert_eq!(w, node(2));
    // Outputs that do not match the receipt, found by the driver.
    a.handle(Input::AwardAccepted { from: w }, T0 + 40).unwrap();
    a.handle(
        Input::ResultInvalid {
            from: w,
            reason: "output hash does not match the content".into(),
        },
        T0 + 50,
    )
    .unwrap();
    let out = drain(&mut a);
    assert!(out.contains(&Output::SendCancel { to: node(2) }));
    let (w, _) = award_of(&out).unwrap();
    // The next holder becomes unreachable while running.
    a.handle(Input::AwardAccepted { from: w }, T0 + 60).unwrap();
    a.handle(Input::NoAnswer { peer: w }, T0 + 70).unwrap();
    let out = drain(&mut a);
    assert!(out.contains(&Output::SendCancel { to: w }));
    assert!(out.contains(&Output::Trust {
        peer: w,
        outcome: TaskOutcome::TimedOut
    }));
    assert!(award_of(&out).is_some());
    let ends: Vec<String> = a
        .trace()
        .awards
        .iter()
        .filter_map(|x| x.end.as_ref().map(AwardEnd::category))
        .collect();
    assert_eq!(
        ends,
        [
            "invalid result",
            "invalid result",
            "unreachable while running"
        ]
    );
    // Nobody else may slip a result in.
    assert_eq!(
        a.handle(
            Input::ResultInvalid {
                from: node(4),
                reason: String::new()
            },
            T0 + 80
        ),
        Err(InputError::NotAwarded(node(4)))
    );
}

#[test]
fn the_call_and_the_award_carry_the_nonce_and_the_payer() {
    let mut a = auction(Weights::default(), &[1, 2]);
    let out = drain(&mut a);
    let [Output::SendCallForBids { cfb, .. }] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(cfb.nonce, NONCE);
    assert_eq!(cfb.payer, PAYER);
    assert_eq!(
        TaskId::derive(&cfb.requester, &cfb.nonce, &cfb.model, &cfb.input_hash),
        cfb.task_id,
        "a worker can re-derive the task id"
    );
    let award = a.award_message(node(1), 300, Vec::new());
    assert_eq!(award.nonce, NONCE);
    assert_eq!(award.payer, PAYER);
    assert_eq!(award.task_id, task());
}

#[test]
fn a_bid_for_other_work_is_rejected() {
    let mut a = auction(Weights::default(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    let other = |n: u8, change: fn(&mut Bid)| {
        let mut b = bid_body(n, 1, 1, 1);
        change(&mut b);
        Input::Bid {
            from: node(n),
            bid: Signed::sign(b, &ident(n)).unwrap(),
        }
    };
    type Change = fn(&mut Bid);
    let cases: [(u8, Change); 4] = [
        (1, |b| b.model = ModelId([70; 32])),
        (2, |b| b.model_bytes = 1),
        (3, |b| b.input_hash = ContentHash([80; 32])),
        (4, |b| b.input_elements = 1),
    ];
    for (n, change) in cases {
        assert_eq!(
            a.handle(other(n, change), T0 + 1),
            Err(InputError::Rejected {
                peer: node(n),
                reason: Rejection::OtherWork
            }),
            "bid of worker {n}"
        );
    }
    // The rejected bidders had their answer: only worker 5's bid for the right work counts.
    a.handle(bid(5, 400, 100, 100), T0 + 2).unwrap();
    let out = drain(&mut a);
    assert_eq!(award_of(&out), Some((node(5), 400)));
    let rejected = a
        .trace()
        .answers
        .iter()
        .filter(|x| {
            matches!(
                x.answer,
                Answer::Rejected {
                    reason: Rejection::OtherWork
                }
            )
        })
        .count();
    assert_eq!(rejected, 4);
    assert_eq!(Rejection::OtherWork.to_string(), "bid for other work");
}

#[test]
fn a_receipt_naming_another_payer_is_refused() {
    let mut a = auction(Preference::Balanced.weights(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    five_bids(&mut a);
    let (w, price) = award_of(&drain(&mut a)).unwrap();
    assert_eq!(w, node(4));
    a.handle(Input::AwardAccepted { from: w }, T0 + 20).unwrap();
    let mut r = receipt_body(4, price);
    r.payer = PAYOUT.into();
    assert_eq!(
        a.handle(receipt_from(r), T0 + 30),
        Err(InputError::Mismatch {
            peer: node(4),
            field: "payer"
        })
    );
    let out = drain(&mut a);
    assert!(out.contains(&Output::SendCancel { to: node(4) }));
    assert!(!out.iter().any(|o| matches!(o, Output::Completed { .. })));
    // The next worker's receipt names the award's payer and completes the task.
    let (w, price) = award_of(&out).unwrap();
    let n = (1..=5).find(|n| node(*n) == w).unwrap();
    a.handle(Input::AwardAccepted { from: w }, T0 + 40).unwrap();
    a.handle(receipt(n, price), T0 + 50).unwrap();
    assert!(drain(&mut a).contains(&Output::Completed {
        worker: w,
        price_stroops: price
    }));
}
