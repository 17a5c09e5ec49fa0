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
        assert_eq!(price, bid, "{pref}: pay-as-bid pays the bid");
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
fn policy_declines_and_exclusions_are_explained_by_their_reasons() {
    let mut a = auction(Weights::default(), &[1, 2, 3]);
    drain(&mut a);
    for n in [1, 2] {
        a.handle(
            Input::Decline {
                from: node(n),
                decline: decline(
                    n,
                    DeclineReason::Other {
                        message: "policy: device too hot".into(),
                    },
                ),
            },
            T0 + 5,
        )
        .unwrap();
    }
    // Worker 3 bids, and the submitter's policy leaves the bid out: it is never awarded.
    a.handle(bid(3, 100, 10, 1), T0 + 6).unwrap();
    let e = a
        .handle(
            Input::Excluded {
                from: node(3),
                reason: "not allow-listed".into(),
            },
            T0 + 6,
        )
        .unwrap_err();
    assert!(matches!(e, InputError::AlreadyAnswered(_)), "{e:?}");
    let mut a = auction(Weights::default(), &[1, 2, 3]);
    drain(&mut a);
    for n in [1, 2] {
        a.handle(
            Input::Decline {
                from: node(n),
                decline: decline(
                    n,
                    DeclineReason::Other {
                        message: "policy: device too hot".into(),
                    },
                ),
            },
            T0 + 5,
        )
        .unwrap();
    }
    // The driver judges the bid before handing it in.
    a.handle(
        Input::Excluded {
            from: node(3),
            reason: "not allow-listed".into(),
        },
        T0 + 6,
    )
    .unwrap_err();
    let out = drain(&mut a);
    assert!(award_of(&out).is_none(), "{out:?}");
    let Some(Output::Failed(e)) = out.last() else {
        panic!("expected a failure, got {out:?}");
    };
    assert_eq!(
        e.to_string(),
        "no acceptable bid; asked 3: 2 policy: device too hot, 1 policy: not allow-listed"
    );
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

fn bid_on(n: u8, price: u64, path: ExecPath) -> Input {
    let body = Bid {
        path,
        ..bid_body(n, price, 100, 100)
    };
    Input::Bid {
        from: node(n),
        bid: Signed::sign(body, &ident(n)).unwrap(),
    }
}

fn model_invalid(n: u8) -> Input {
    failure(
        n,
        FailureReason::ModelInvalid {
            message: "op Foo (node foo_1) is not supported".into(),
        },
    )
}

/// A runtime that refuses the model does not end the task while a worker on another runtime
/// bid: the award moves to it, skipping bids on the refused path, and nobody loses trust.
/// With no bid on another path the refusal ends the task, as any other fault of the model.
#[test]
fn a_model_one_runtime_refuses_goes_to_a_worker_on_another() {
    let mut a = auction(Weights::default(), &[1, 2, 3]);
    drain(&mut a);
    a.handle(bid_on(1, 100, ExecPath::Cpu), T0 + 1).unwrap();
    a.handle(bid_on(2, 150, ExecPath::Cpu), T0 + 1).unwrap();
    a.handle(bid_on(3, 300, ExecPath::Onnxruntime), T0 + 1)
        .unwrap();
    let (first, _) = award_of(&drain(&mut a)).unwrap();
    assert_eq!(first, node(1));
    a.handle(model_invalid(1), T0 + 50).unwrap();
    let out = drain(&mut a);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Trust { .. })),
        "not the worker's fault: {out:?}"
    );
    let (next, _) = award_of(&out).unwrap();
    assert_eq!(
        next,
        node(3),
        "the onnxruntime bid, not the cheaper tract one"
    );

    // The onnxruntime worker refuses too: no other path bid, so the task ends.
    a.handle(model_invalid(3), T0 + 60).unwrap();
    let out = drain(&mut a);
    let Some(Output::Failed(e)) = out.last() else {
        panic!("{out:?}");
    };
    assert!(matches!(e.cause, FailCause::TaskRejected { .. }), "{e}");
    assert!(
        e.to_string().starts_with("task cannot run: model invalid"),
        "{e}"
    );
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
    assert!(text.contains("pay-as-bid: pays its bid"), "{text}");
    assert!(
        text.contains(&format!("completed by {}", node(2).short())),
        "{text}"
    );
}

#[test]
fn second_score_without_measurements_pays_for_price_and_trust_only() {
    let cands: Vec<NodeId> = [1, 2, 3, 4, 5].iter().map(|n| node(*n)).collect();
    let config = AuctionConfig {
        payment: PaymentRule::SecondScore,
        ..AuctionConfig::default()
    };
    let mut a = Auction::new(
        spec(Preference::Fast.weights()),
        config,
        &cands,
        &TrustBook::default(),
        T0,
    )
    .unwrap();
    drain(&mut a);
    five_bids(&mut a);
    // Worker 2 wins on its claimed 50 ms at 1000 stroops; the runner-up (4) asks 200, so on
    // price and trust alone the winner is the dearer one and is paid its bid. Before the
    // quality gap was paid from claims, this price was near the max.
    assert_eq!(award_of(&drain(&mut a)), Some((node(2), 1_000)));
    assert!(a.trace().to_string().contains("second-score price 1000"));
}

/// A trust book in which this node measured `worker` on the test model at `latency_ms`.
fn measured_book(entries: &[(u8, u64, u64)]) -> TrustBook {
    let mut book = TrustBook::default();
    for &(n, latency_ms, energy_mj) in entries {
        let obs = Observation {
            peer: node(n),
            model: ModelId([7; 32]),
            path: ExecPath::Cpu,
            input_elements: 64,
            claimed_latency_ms: latency_ms,
            claimed_energy_mj: energy_mj,
            observed_latency_ms: latency_ms,
            network_ms: 0,
            reported_energy_mj: energy_mj,
        };
        book.record_observation(&obs, T0 - 1);
    }
    book
}

/// Runs one auction among `bids` (worker, price, claimed latency, claimed energy) and
/// returns who was awarded at what price.
fn run_auction(
    rule: PaymentRule,
    weights: Weights,
    trust: &TrustBook,
    bids: &[(u8, u64, u32, u64)],
) -> Option<(NodeId, u64)> {
    let cands: Vec<NodeId> = bids.iter().map(|b| node(b.0)).collect();
    let config = AuctionConfig {
        payment: rule,
        ..AuctionConfig::default()
    };
    let mut a = Auction::new(spec(weights), config, &cands, trust, T0).unwrap();
    drain(&mut a);
    for &(n, price, latency, energy) in bids {
        let _ = a.handle(bid(n, price, latency, energy), T0 + 10);
    }
    award_of(&drain(&mut a))
}

#[test]
fn measured_history_replaces_claims_in_the_score() {
    // Worker 1 claims 10 ms but was measured at 2 s; worker 2 claims and was measured at
    // 100 ms. Under `fast`, claims alone would pick 1; measurements pick 2.
    let fast = Preference::Fast.weights();
    let bids = [(1, 100, 10, 1), (2, 100, 100, 100)];
    let naive = run_auction(PaymentRule::PayAsBid, fast, &TrustBook::default(), &bids);
    assert_eq!(naive.map(|w| w.0), Some(node(1)));
    let book = measured_book(&[(1, 2_000, 2_000), (2, 100, 100)]);
    let held = run_auction(PaymentRule::PayAsBid, fast, &book, &bids);
    assert_eq!(held, Some((node(2), 100)));
    // The trace shows the measurement beside the claim.
    let cands = [node(1), node(2)];
    let mut a = Auction::new(spec(fast), AuctionConfig::default(), &cands, &book, T0).unwrap();
    drain(&mut a);
    a.handle(bid(1, 100, 10, 1), T0 + 10).unwrap();
    assert!(
        a.trace()
            .to_string()
            .contains("(measured 2000 ms, 2000 mJ)"),
        "{}",
        a.trace()
    );
}

#[test]
fn a_completed_task_reports_what_was_measured_and_overclaims_cost_trust() {
    let mut a = auction(Preference::Balanced.weights(), &[1, 2, 3, 4, 5]);
    drain(&mut a);
    five_bids(&mut a);
    let (w, price) = award_of(&drain(&mut a)).unwrap();
    assert_eq!(w, node(4));
    a.handle(Input::AwardAccepted { from: w }, T0 + 20).unwrap();
    // Worker 4 claimed 300 ms; the result comes 1990 ms after the award.
    a.handle(receipt(4, price), T0 + 2_000).unwrap();
    let out = drain(&mut a);
    let obs = out
        .iter()
        .find_map(|o| match o {
            Output::Observed(obs) => Some(*obs),
            _ => None,
        })
        .expect("an observation");
    assert_eq!(obs.peer, node(4));
    assert_eq!(obs.claimed_latency_ms, 300);
    assert_eq!(obs.observed_latency_ms, 1_990);
    assert_eq!(obs.network_ms, 10, "award at +10, accepted at +20");
    assert_eq!(obs.reported_energy_mj, 10);
    let mut book = TrustBook::default();
    let before = book.score(&node(4));
    assert!(book.record_observation(&obs, T0).is_some());
    book.record(node(4), TaskOutcome::Completed, T0);
    let honest = {
        let mut b = TrustBook::default();
        b.record(node(4), TaskOutcome::Completed, T0);
        b.score(&node(4))
    };
    assert!(book.score(&node(4)) < honest, "an over-claim costs trust");
    assert!(book.score(&node(4)) < before + 0.01);
    assert_eq!(book.get(&node(4)).unwrap().overclaimed, 1);
    let m = book
        .claims()
        .measured(&node(4), &ModelId([7; 32]), ExecPath::Cpu, 64)
        .unwrap();
    // 800 mJ claimed for 300 ms; the work took 1980 ms (less the round trip): 800 · 1980 / 300.
    assert_eq!((m.latency_ms, m.energy_mj), (1_990, 5_280));
}

mod pay {
    use super::*;
    use proptest::prelude::*;

    fn weights() -> impl Strategy<Value = Weights> {
        prop_oneof![
            Just(Preference::Cheap.weights()),
            Just(Preference::Fast.weights()),
            Just(Preference::Green.weights()),
            Just(Preference::Balanced.weights()),
        ]
    }

    fn rule() -> impl Strategy<Value = PaymentRule> {
        prop_oneof![Just(PaymentRule::PayAsBid), Just(PaymentRule::SecondScore)]
    }

    /// Up to five bids from workers 1..=5: (price, claimed latency, claimed energy).
    fn bids() -> impl Strategy<Value = Vec<(u64, u32, u64)>> {
        proptest::collection::vec((1u64..=10_000, 1u32..=20_000, 0u64..=50_000), 1..=5)
    }

    /// Measured history for some of workers 1..=5: (latency, energy) or none.
    fn history() -> impl Strategy<Value = Vec<Option<(u64, u64)>>> {
        proptest::collection::vec(proptest::option::of((1u64..=20_000, 1u64..=50_000)), 5)
    }

    fn book(h: &[Option<(u64, u64)>]) -> TrustBook {
        let entries: Vec<(u8, u64, u64)> = h
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.map(|(l, e)| (i as u8 + 1, l, e)))
            .collect();
        measured_book(&entries)
    }

    fn with_numbers(bids: &[(u64, u32, u64)]) -> Vec<(u8, u64, u32, u64)> {
        bids.iter()
            .enumerate()
            .map(|(i, &(p, l, e))| (i as u8 + 1, p, l, e))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the other bids and the history, a winner that changes only its claimed
        /// latency and energy is never paid more for it: it is paid the same or loses.
        #[test]
        fn claims_never_raise_the_winners_pay(
            bids in bids(), h in history(), w in weights(), rule in rule(),
            latency in 1u32..=20_000, energy in 0u64..=50_000,
        ) {
            let trust = book(&h);
            let base = with_numbers(&bids);
            let Some((winner, paid)) = run_auction(rule, w, &trust, &base) else {
                return Ok(());
            };
            let mut lied = base.clone();
            let i = lied.iter().position(|b| node(b.0) == winner).unwrap();
            lied[i].2 = latency;
            lied[i].3 = energy;
            if let Some((again, paid_now)) = run_auction(rule, w, &trust, &lied)
                && again == winner
            {
                prop_assert_eq!(paid_now, paid);
            }
        }

        /// Pay is within [bid, max price] under every rule.
        #[test]
        fn pay_never_exceeds_the_max_price(
            bids in bids(), h in history(), w in weights(), rule in rule(),
        ) {
            let base = with_numbers(&bids);
            if let Some((winner, paid)) = run_auction(rule, w, &book(&h), &base) {
                let ask = base.iter().find(|b| node(b.0) == winner).unwrap().1;
                prop_assert!(paid >= ask && paid <= 10_000, "{paid} vs ask {ask}");
            }
        }

        /// Once this node has measured a worker on the model, what it claims changes neither
        /// whether it wins nor what it is paid; and a lie it is caught in costs it trust, so
        /// in the next auction it does no better than if it had told the truth.
        #[test]
        fn a_truthful_bidder_is_never_worse_off_than_a_liar_once_history_counts(
            bids in bids(), h in history(), w in weights(), rule in rule(),
            true_latency in 1u64..=20_000, factor in 2u32..=100,
        ) {
            let mut h = h;
            h[0] = Some((true_latency, true_latency));
            let trust = book(&h);
            let mut honest = with_numbers(&bids);
            let true_ms = u32::try_from(true_latency).unwrap();
            if honest[0].0 != 1 { return Ok(()); }
            honest[0].2 = true_ms;
            honest[0].3 = true_latency;
            let mut liar = honest.clone();
            liar[0].2 = (true_ms / factor).max(1);
            liar[0].3 = true_latency / u64::from(factor);
            let utility = |o: Option<(NodeId, u64)>| match o {
                Some((w, paid)) if w == node(1) => paid,
                _ => 0,
            };
            let truthful = run_auction(rule, w, &trust, &honest);
            let lying = run_auction(rule, w, &trust, &liar);
            prop_assert_eq!(utility(lying), utility(truthful));
            // The lie is measured: an over-claim when it is far enough off.
            let obs = Observation {
                peer: node(1),
                model: ModelId([7; 32]),
                path: ExecPath::Cpu,
                input_elements: 64,
                claimed_latency_ms: u64::from(liar[0].2),
                claimed_energy_mj: liar[0].3,
                observed_latency_ms: true_latency,
                network_ms: 0,
                reported_energy_mj: true_latency,
            };
            let mut after_lie = trust.clone();
            let caught = after_lie.record_observation(&obs, T0).is_some();
            let mut after_truth = trust.clone();
            let honest_obs = Observation {
                claimed_latency_ms: true_latency,
                claimed_energy_mj: true_latency,
                ..obs
            };
            prop_assert!(after_truth.record_observation(&honest_obs, T0).is_none());
            prop_assert!(after_lie.score(&node(1)) <= after_truth.score(&node(1)));
            if caught {
                prop_assert!(after_lie.score(&node(1)) < after_truth.score(&node(1)));
            }
            prop_assert!(
                utility(run_auction(rule, w, &after_lie, &liar))
                    <= utility(run_auction(rule, w, &after_truth, &honest))
            );
        }
    }
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
