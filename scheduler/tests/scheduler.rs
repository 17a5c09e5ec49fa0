//! Integration tests of crank-scheduler: workers quoting from their own state, a requester
//! selecting candidates and running the auction to the end, and property tests of the
//! auction's invariants under arbitrary bids and event sequences.

use std::collections::{BTreeMap, BTreeSet};

use crank_protocol::tensor::tensors_hash;
use crank_protocol::validate::{self, Limits};
use crank_protocol::{
    Bid, CallForBids, CapabilityAdvert, Capacity, ContentHash, Decline, DeclineReason, Energy,
    EnergyMethod, ExecPath, FailureReason, GateInfo, GateReason, Hardware, Identity, ModelId,
    NamedTensor, NodeId, PathBench, PowerInfo, Pricing, RunPolicy, Signed, TaskFailure, TaskId,
    Tensor, Timings, TrustSummary, UnixMillis, WorkReceipt,
};
use crank_scheduler::score::score_bid;
use crank_scheduler::{
    Auction, AuctionConfig, CandidateQuery, CostModel, CreditPolicy, FailCause, Input, Output,
    Preference, QueueState, RequesterStanding, Status, TaskOutcome, TaskSpec, TrustBook, Weights,
    WorkerLimits, WorkerState, check_award, quote, select_candidates,
};
use proptest::prelude::*;

const PAYOUT: &str = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";
const T0: UnixMillis = 1_700_000_000_000;
const PAYER: &str = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H";
const MODEL: ModelId = ModelId([7; 32]);
const NONCE: [u8; 16] = [3; 16];
const MAX_PRICE: u64 = 10_000;

/// The task's 64 input elements.
fn inputs() -> Vec<NamedTensor> {
    vec![NamedTensor {
        name: "x".into(),
        tensor: Tensor::f32(vec![1, 64], vec![0.5; 64]).unwrap(),
    }]
}

fn input_hash() -> ContentHash {
    tensors_hash(&inputs())
}

/// The task id, derived from the requester (node 0), the nonce, the model and the inputs.
fn task() -> TaskId {
    TaskId::derive(&node(0), &NONCE, &MODEL, &input_hash())
}

fn ident(n: u8) -> Identity {
    Identity::from_secret([n; 32])
}

fn node(n: u8) -> NodeId {
    ident(n).node_id()
}

fn spec(deadline: UnixMillis, weights: Weights) -> TaskSpec {
    TaskSpec {
        task_id: task(),
        requester: node(0),
        model: MODEL,
        model_bytes: 200_000,
        input_hash: input_hash(),
        input_elements: 64,
        nonce: NONCE,
        payer: PAYER.into(),
        max_price_stroops: MAX_PRICE,
        deadline,
        bid_window_ms: 500,
        weights,
    }
}

fn drain(a: &mut Auction) -> Vec<Output> {
    std::iter::from_fn(|| a.poll_output()).collect()
}

fn receipt(worker: &Identity, price: u64) -> Signed<WorkReceipt> {
    Signed::sign(
        WorkReceipt {
            task_id: task(),
            requester: node(0),
            worker: worker.node_id(),
            model: MODEL,
            input_hash: input_hash(),
            output_hash: ContentHash([9; 32]),
            price_stroops: price,
            energy: Energy {
                microjoules: 12_000,
                method: EnergyMethod::CpuTimeEstimate,
            },
            path: ExecPath::Cpu,
            timings: Timings {
                accepted_at: T0,
                started_at: T0,
                finished_at: T0,
                run_micros: 100,
            },
            pair_seq: 1,
            cumulative_stroops: price,
            payout: PAYOUT.into(),
            payer: PAYER.into(),
        },
        worker,
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// A whole task, from adverts to a completed result, with real quotes and signatures.
// ---------------------------------------------------------------------------------------

struct Worker {
    id: Identity,
    state: WorkerState,
    bid: Option<Bid>,
}

fn worker(n: u8, ips: f32, uj: u64, cached: bool) -> Worker {
    Worker {
        id: ident(n),
        state: WorkerState {
            node: node(n),
            gate_closed: None,
            on_battery: false,
            queue: QueueState {
                queued: 0,
                slots: 4,
                est_wait_ms: 0,
            },
            cached_models: if cached {
                [MODEL].into()
            } else {
                BTreeSet::new()
            },
            bench: vec![PathBench {
                path: ExecPath::Cpu,
                inferences_per_sec: ips,
                microjoules_per_inference: uj,
            }],
            measured: BTreeMap::new(),
            unservable: Default::default(),
            limits: WorkerLimits::default(),
            payout: PAYOUT.into(),
            credit: CreditPolicy::default(),
            requester: RequesterStanding::default(),
        },
        bid: None,
    }
}

fn advert_of(w: &Worker, now: UnixMillis) -> CapabilityAdvert {
    CapabilityAdvert {
        node: w.state.node,
        seq: 1,
        issued_at: now,
        expires_at: now + 60_000,
        agent: "crank-node/0.1".into(),
        hardware: Hardware {
            cpu_model: "test".into(),
            cores: 4,
            ram_mib: 8192,
            arch: "x86_64".into(),
            os: "linux".into(),
            gpus: vec![],
        },
        power: PowerInfo {
            external_power: Some(!w.state.on_battery),
            has_battery: w.state.on_battery,
            battery_percent: None,
            busy_milliwatts: 20_000,
        },
        gate: GateInfo {
            policy: RunPolicy::ChargingIdle,
            open: w.state.gate_closed.is_none(),
            reason: w.state.gate_closed.clone(),
        },
        models: w.state.cached_models.iter().copied().collect(),
        unservable: Vec::new(),
        pricing: Pricing {
            per_task_stroops: 100,
            per_second_stroops: 1000,
        },
        payout: PAYOUT.into(),
        trust: TrustSummary::default(),
        bench: w.state.bench.clone(),
        capacity: Capacity {
            workers: 1,
            queue_slots: w.state.queue.slots,
            queued: w.state.queue.queued,
        },
        addrs: vec![],
    }
}

/// Answers a call for bids the way a worker's node would.
fn answer(w: &mut Worker, cfb: &CallForBids, now: UnixMillis) -> Input {
    match quote(cfb, &w.state, &CostModel::default(), now) {
        Ok(bid) => {
            w.bid = Some(bid.clone());
            Input::Bid {
                from: w.state.node,
                bid: Signed::sign(bid, &w.id).unwrap(),
            }
        }
        Err(reason) => Input::Decline {
            from: w.state.node,
            decline: Signed::sign(
                Decline {
                    task_id: cfb.task_id,
                    worker: w.state.node,
                    reason,
                },
                &w.id,
            )
            .unwrap(),
        },
    }
}

#[test]
fn a_task_runs_from_adverts_to_a_counter_signable_result() {
    let mut workers = [
        worker(1, 2_000.0, 8_000, true),  // fast, cached
        worker(2, 200.0, 30_000, true),   // slow
        worker(3, 2_000.0, 8_000, false), // fast, must fetch
        worker(4, 5_000.0, 4_000, true),  // fastest, but on battery with a closed gate
        worker(5, 1_000.0, 10_000, true), // middling, queue full
        worker(6, 1_000.0, 10_000, true), // never answers
    ];
    workers[3].state.gate_closed = Some(GateReason::OnBattery { percent: Some(60) });
    workers[3].state.on_battery = true;
    workers[4].state.queue.queued = 4;
    let adverts: Vec<CapabilityAdvert> = workers.iter().map(|w| advert_of(w, T0)).collect();
    let mut trust = TrustBook::default();
    let providers: BTreeSet<NodeId> = [node(6)].into();
    let query = CandidateQuery {
        requester: node(0),
        model: MODEL,
        model_bytes: 200_000,
        providers: &providers,
        weights: Preference::Fast.weights(),
        k: 5,
        limit: 20,
        explore: 0,
        seed: 0,
    };
    let candidates = select_candidates(&adverts, &query, &trust, T0);
    assert_eq!(candidates.len(), 6);
    // The closed gate and the full queue rank last.
    assert_eq!(&candidates[4..], &[node(5), node(4)]);

    let mut a = Auction::new(
        spec(T0 + 30_000, Preference::Fast.weights()),
        AuctionConfig::default(),
        &candidates,
        &trust,
        T0,
    )
    .unwrap();
    let Some(Output::SendCallForBids { to, cfb, .. }) = a.poll_output() else {
        panic!("first output is a call for bids");
    };
    // Signed by the requester, the call passes a worker's checks: its task id derives from
    // the nonce, model and inputs, and it names the paying account.
    let limits = Limits::default();
    let signed_cfb = Signed::sign(cfb.clone(), &ident(0)).unwrap();
    assert_eq!(validate::call_for_bids(&signed_cfb, T0, &limits), Ok(&cfb));
    assert_eq!(cfb.payer, PAYER);
    assert_eq!(to.len(), 5);
    assert!(
        !to.contains(&node(4)),
        "top-K only: the closed gate is not asked"
    );
    for peer in &to {
        let w = workers.iter_mut().find(|w| w.state.node == *peer).unwrap();
        if w.state.node == node(6) {
            continue;
        }
        a.handle(answer(w, &cfb, T0 + 20), T0 + 20).unwrap();
    }
    // Node 6 never answers: the award waits for the window.
    assert!(drain(&mut a).is_empty());
    a.handle_timeout(T0 + 500);
    let out = drain(&mut a);
    let Some(Output::SendAward {
        to: winner,
        price_stroops,
    }) = out.first().cloned()
    else {
        panic!("{out:?}");
    };
    assert_eq!(winner, node(1), "fast and holding the model");
    let w1 = &workers[0];
    let bid = w1.bid.clone().unwrap();
    assert!(price_stroops >= bid.price_stroops && price_stroops <= MAX_PRICE);

    // The worker checks the award against its bid, accepts, runs and reports.
    let award = a.award_message(winner, price_stroops, inputs());
    assert_eq!(
        (award.task_id, award.input_hash, award.deadline),
        (task(), input_hash(), T0 + 30_000)
    );
    assert_eq!((award.nonce, award.payer.as_str()), (NONCE, PAYER));
    let signed_award = Signed::sign(award.clone(), &ident(0)).unwrap();
    assert_eq!(
        validate::award(&signed_award, &winner, T0 + 510, &limits),
        Ok(&award)
    );
    // Without its inputs, the award is not the work bid for.
    let empty = a.award_message(winner, price_stroops, Vec::new());
    assert_eq!(
        check_award(&bid, &empty, T0 + 510),
        Err(DeclineReason::NotBidFor)
    );
    let cancel = a.cancel_message(winner);
    assert_eq!((cancel.requester, cancel.worker), (node(0), winner));
    check_award(&bid, &award, T0 + 510).unwrap();
    a.handle(Input::AwardAccepted { from: winner }, T0 + 510)
        .unwrap();
    a.handle(
        Input::Result {
            from: winner,
            receipt: receipt(&w1.id, price_stroops),
        },
        T0 + 600,
    )
    .unwrap();
    for o in drain(&mut a) {
        if let Output::Trust { peer, outcome } = o {
            trust.record(peer, outcome, T0 + 600);
        }
    }
    assert_eq!(
        a.status(),
        Status::Completed {
            worker: winner,
            price_stroops
        }
    );
    assert_eq!(trust.get(&winner).unwrap().completed, 1);
    assert!(trust.score(&winner) > trust.score(&node(2)));
    let trace = a.trace();
    assert_eq!(trace.answers.len(), 5);
    assert_eq!(trace.awards.len(), 1);
    let json = serde_json::to_value(trace).unwrap();
    assert_eq!(json["awards"][0]["worker"], winner.to_hex());
}

#[test]
fn many_asked_none_able_explains_why() {
    let mut workers: Vec<Worker> = (1..=5).map(|n| worker(n, 1_000.0, 10_000, true)).collect();
    for w in &mut workers[..3] {
        w.state.gate_closed = Some(GateReason::OnBattery { percent: Some(20) });
    }
    workers[3].state.queue.queued = 4;
    let candidates: Vec<NodeId> = workers.iter().map(|w| w.state.node).collect();
    let mut a = Auction::new(
        spec(T0 + 30_000, Weights::default()),
        AuctionConfig::default(),
        &candidates,
        &TrustBook::default(),
        T0,
    )
    .unwrap();
    let Some(Output::SendCallForBids { cfb, .. }) = a.poll_output() else {
        panic!()
    };
    for w in &mut workers[..4] {
        a.handle(answer(w, &cfb, T0 + 5), T0 + 5).unwrap();
    }
    a.handle(
        Input::NoAnswer {
            peer: workers[4].state.node,
        },
        T0 + 7,
    )
    .unwrap();
    let out = drain(&mut a);
    let Some(Output::Failed(e)) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!(
        e.to_string(),
        "no acceptable bid; asked 5: 3 on battery, 1 queue full, 1 did not answer"
    );
    assert_eq!(e.cause, FailCause::NoAcceptableBid);
}

#[test]
fn a_requester_that_does_not_pay_is_refused_credit_until_it_does() {
    let credit = CreditPolicy {
        max_unpaid_stroops: 1_000_000,
        max_unpaid_age_secs: 24 * 3600,
    };
    let mut workers: Vec<Worker> = (1..=3).map(|n| worker(n, 1_000.0, 10_000, true)).collect();
    for w in &mut workers {
        w.state.credit = credit;
    }
    // Worker 1 is owed too much, worker 2 for too long, worker 3 little and recently.
    workers[0].state.requester = RequesterStanding {
        unpaid_stroops: 1_000_001,
        oldest_unpaid_at: Some(T0 - 1_000),
    };
    workers[1].state.requester = RequesterStanding {
        unpaid_stroops: 200,
        oldest_unpaid_at: Some(T0 - 24 * 3600 * 1000 - 1_000),
    };
    workers[2].state.requester = RequesterStanding {
        unpaid_stroops: 200,
        oldest_unpaid_at: Some(T0 - 1_000),
    };
    let run = |workers: &mut [Worker]| {
        let candidates: Vec<NodeId> = workers.iter().map(|w| w.state.node).collect();
        let mut a = Auction::new(
            spec(T0 + 30_000, Weights::default()),
            AuctionConfig::default(),
            &candidates,
            &TrustBook::default(),
            T0,
        )
        .unwrap();
        let Some(Output::SendCallForBids { cfb, .. }) = a.poll_output() else {
            panic!()
        };
        for w in workers.iter_mut() {
            a.handle(answer(w, &cfb, T0 + 5), T0 + 5).unwrap();
        }
        drain(&mut a)
    };

    // Only worker 3 bids; the other two decline with a credit reason.
    let out = run(&mut workers);
    assert_eq!(
        out.iter().find_map(|o| match o {
            Output::SendAward { to, .. } => Some(*to),
            _ => None,
        }),
        Some(node(3))
    );
    assert!(workers[0].bid.is_none() && workers[1].bid.is_none());
    // Worker 3 is owed too much as well: nobody bids, and the explanation says why.
    workers[2].state.requester.unpaid_stroops = 5_000_000;
    let out = run(&mut workers);
    let Some(Output::Failed(e)) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!(e.to_string(), "no acceptable bid; asked 3: 3 credit");

    // The requester pays everything: its standing is clear and all three bid again.
    for w in &mut workers {
        w.state.requester = RequesterStanding::default();
        w.bid = None;
    }
    let out = run(&mut workers);
    assert!(
        out.iter().any(|o| matches!(o, Output::SendAward { .. })),
        "{out:?}"
    );
    assert!(workers.iter().all(|w| w.bid.is_some()));
}

// ---------------------------------------------------------------------------------------
// Property: the award is the minimum-score acceptable bid, within [bid, max price].
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    BadSignature,
    WrongTask,
    WrongWorker,
    OtherWork,
    NotAsked,
}

#[derive(Debug, Clone)]
struct BidCase {
    price: u64,
    latency: u32,
    energy: u64,
    valid_for: u64,
    arrive: u64,
    completed: u8,
    failed: u8,
    fault: Fault,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::BadSignature),
        1 => Just(Fault::WrongTask),
        1 => Just(Fault::WrongWorker),
        1 => Just(Fault::OtherWork),
        1 => Just(Fault::NotAsked),
    ]
}

fn bid_case() -> impl Strategy<Value = BidCase> {
    (
        0u64..15_000,
        0u32..20_000,
        0u64..100_000,
        0u64..3_000,
        0u64..900,
        0u8..10,
        0u8..5,
        fault(),
    )
        .prop_map(
            |(price, latency, energy, valid_for, arrive, completed, failed, fault)| BidCase {
                price,
                latency,
                energy,
                valid_for,
                arrive,
                completed,
                failed,
                fault,
            },
        )
}

fn signed_bid(n: u8, c: &BidCase) -> Signed<Bid> {
    let body = Bid {
        task_id: if c.fault == Fault::WrongTask {
            TaskId([1; 32])
        } else {
            task()
        },
        worker: if c.fault == Fault::WrongWorker {
            node(200)
        } else {
            node(n)
        },
        // A bid for another model than called for.
        model: if c.fault == Fault::OtherWork {
            ModelId([70; 32])
        } else {
            MODEL
        },
        model_bytes: 200_000,
        input_hash: input_hash(),
        input_elements: 64,
        price_stroops: c.price,
        est_latency_ms: c.latency,
        est_energy_mj: c.energy,
        path: ExecPath::Cpu,
        model_cached: true,
        queue_len: 0,
        valid_until: T0 + c.valid_for,
        payout: PAYOUT.into(),
    };
    let signer = if c.fault == Fault::BadSignature {
        ident(201)
    } else {
        ident(n)
    };
    let mut s = Signed::sign(body, &signer).unwrap();
    s.signer = node(n);
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn award_is_the_minimum_score_acceptable_bid(
        cases in proptest::collection::vec(bid_case(), 1..10),
        deadline_off in 200u64..25_000,
        pref in 0usize..4,
    ) {
        let weights = Preference::ALL[pref].weights();
        let deadline = T0 + deadline_off;
        let mut trust = TrustBook::default();
        for (i, c) in cases.iter().enumerate() {
            let n = i as u8 + 1;
            for _ in 0..c.completed { trust.record(node(n), TaskOutcome::Completed, T0 - 1); }
            for _ in 0..c.failed { trust.record(node(n), TaskOutcome::Failed, T0 - 1); }
        }
        let asked: Vec<u8> = (1..=cases.len() as u8)
            .filter(|n| cases[*n as usize - 1].fault != Fault::NotAsked)
            .collect();
        let candidates: Vec<NodeId> = asked.iter().map(|n| node(*n)).collect();
        let config = AuctionConfig { fanout: 16, ..AuctionConfig::default() };
        let mut a = Auction::new(spec(deadline, weights), config, &candidates, &trust, T0).unwrap();

        let mut order: Vec<usize> = (0..cases.len()).collect();
        order.sort_by_key(|i| (cases[*i].arrive, *i));
        let mut outputs = drain(&mut a);
        for &i in &order {
            let c = &cases[i];
            let n = i as u8 + 1;
            // A driver fires due timers before delivering what arrived later.
            while let Some(t) = a.poll_timeout().filter(|t| *t <= T0 + c.arrive) {
                a.handle_timeout(t);
                outputs.extend(drain(&mut a));
            }
            let _ = a.handle(Input::Bid { from: node(n), bid: signed_bid(n, c) }, T0 + c.arrive);
            outputs.extend(drain(&mut a));
        }
        a.handle_timeout(T0 + 500);
        outputs.extend(drain(&mut a));

        // The oracle, computed independently of the auction's internals.
        let closes = 500u64.min(deadline_off);
        let all_answered = asked.iter().all(|n| cases[*n as usize - 1].arrive < closes);
        let award_at = if all_answered && !asked.is_empty() {
            asked.iter().map(|n| cases[*n as usize - 1].arrive).max().unwrap_or(0)
        } else {
            closes
        };
        let usable: Vec<(u8, &BidCase)> = asked.iter().map(|n| (*n, &cases[*n as usize - 1]))
            .filter(|(_, c)| c.fault == Fault::None
                && c.arrive < closes
                && c.valid_for > c.arrive
                && c.price <= MAX_PRICE
                && c.arrive + u64::from(c.latency) < deadline_off
                && c.valid_for > award_at
                && award_at + u64::from(c.latency) < deadline_off)
            .collect();
        let expected = if award_at >= deadline_off {
            None
        } else {
            usable.iter().min_by(|(na, a), (nb, b)| {
                let sa = score_bid(&signed_bid(*na, a).body, trust.score(&node(*na)), &weights).total;
                let sb = score_bid(&signed_bid(*nb, b).body, trust.score(&node(*nb)), &weights).total;
                sa.total_cmp(&sb)
                    .then(a.price.cmp(&b.price))
                    .then(a.latency.cmp(&b.latency))
                    .then(node(*na).cmp(&node(*nb)))
            }).copied()
        };
        let award = outputs.iter().find_map(|o| match o {
            Output::SendAward { to, price_stroops } => Some((*to, *price_stroops)),
            _ => None,
        });
        match (expected, award) {
            (None, None) => {
                prop_assert!(a.is_finished(), "no usable bid and nobody left: failed");
            }
            (Some((n, c)), Some((to, price))) => {
                prop_assert_eq!(to, node(n));
                prop_assert!(price >= c.price && price <= MAX_PRICE, "{} not in [{}, {}]", price, c.price, MAX_PRICE);
                prop_assert!(award_at < deadline_off);
            }
            (e, got) => prop_assert!(false, "expected {:?}, got {:?}", e.map(|(n, _)| n), got),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Property: any sequence of events and advancing time ends in Completed or Failed.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Event {
    Bid {
        peer: u8,
        asked: bool,
        price: u64,
        latency: u32,
        valid_for: u64,
    },
    Decline {
        peer: u8,
        asked: bool,
    },
    NoAnswer {
        peer: u8,
    },
    Accept {
        peer: u8,
        holder: bool,
    },
    Reject {
        peer: u8,
        holder: bool,
    },
    Fail {
        peer: u8,
        holder: bool,
        reason: u8,
    },
    Result {
        peer: u8,
        holder: bool,
        right_price: bool,
    },
    ResultInvalid {
        peer: u8,
        holder: bool,
    },
    Tick,
}

fn event() -> impl Strategy<Value = Event> {
    let peer = 1u8..12;
    prop_oneof![
        6 => (peer.clone(), prop::bool::weighted(0.8), 0u64..12_000, 0u32..10_000, 0u64..60_000)
            .prop_map(|(peer, asked, price, latency, valid_for)| Event::Bid { peer, asked, price, latency, valid_for }),
        2 => (peer.clone(), any::<bool>()).prop_map(|(peer, asked)| Event::Decline { peer, asked }),
        1 => peer.clone().prop_map(|peer| Event::NoAnswer { peer }),
        3 => (peer.clone(), prop::bool::weighted(0.8)).prop_map(|(peer, holder)| Event::Accept { peer, holder }),
        1 => (peer.clone(), prop::bool::weighted(0.8)).prop_map(|(peer, holder)| Event::Reject { peer, holder }),
        2 => (peer.clone(), prop::bool::weighted(0.8), 0u8..7).prop_map(|(peer, holder, reason)| Event::Fail { peer, holder, reason }),
        2 => (peer, prop::bool::weighted(0.8), prop::bool::weighted(0.8)).prop_map(|(peer, holder, right_price)| Event::Result { peer, holder, right_price }),
        1 => (1u8..12, prop::bool::weighted(0.8)).prop_map(|(peer, holder)| Event::ResultInvalid { peer, holder }),
        2 => Just(Event::Tick),
    ]
}

fn holder_of(a: &Auction) -> Option<(NodeId, u64)> {
    match a.status() {
        Status::Awarded {
            worker,
            price_stroops,
        }
        | Status::Running {
            worker,
            price_stroops,
        } => Some((worker, price_stroops)),
        _ => None,
    }
}

fn peer_num(id: NodeId) -> u8 {
    (1..=255u8).find(|n| node(*n) == id).unwrap_or(1)
}

fn to_input(e: &Event, a: &Auction) -> Option<Input> {
    let pick = |peer: u8, holder: bool| -> u8 {
        match (holder, holder_of(a)) {
            (true, Some((w, _))) => peer_num(w),
            _ => peer,
        }
    };
    // A peer of the latest call for bids, so that most answers come from peers that were asked.
    let in_round = |peer: u8, asked: bool| -> u8 {
        match a.trace().rounds.last() {
            Some(r) if asked && !r.asked.is_empty() => {
                peer_num(r.asked[peer as usize % r.asked.len()])
            }
            _ => peer,
        }
    };
    Some(match *e {
        Event::Bid {
            peer,
            asked,
            price,
            latency,
            valid_for,
        } => {
            let peer = in_round(peer, asked);
            Input::Bid {
                from: node(peer),
                bid: Signed::sign(
                    Bid {
                        task_id: task(),
                        worker: node(peer),
                        model: MODEL,
                        model_bytes: 200_000,
                        input_hash: input_hash(),
                        input_elements: 64,
                        price_stroops: price,
                        est_latency_ms: latency,
                        est_energy_mj: 10,
                        path: ExecPath::Cpu,
                        model_cached: false,
                        queue_len: 0,
                        valid_until: T0 + valid_for,
                        payout: PAYOUT.into(),
                    },
                    &ident(peer),
                )
                .unwrap(),
            }
        }
        Event::Decline { peer, asked } => {
            let peer = in_round(peer, asked);
            Input::Decline {
                from: node(peer),
                decline: decline(peer),
            }
        }
        Event::NoAnswer { peer } => Input::NoAnswer { peer: node(peer) },
        Event::Accept { peer, holder } => Input::AwardAccepted {
            from: node(pick(peer, holder)),
        },
        Event::Reject { peer, holder } => {
            let p = pick(peer, holder);
            Input::AwardRejected {
                from: node(p),
                decline: decline(p),
            }
        }
        Event::Fail {
            peer,
            holder,
            reason,
        } => {
            let p = pick(peer, holder);
            let reason = match reason {
                0 => FailureReason::Aborted {
                    reason: GateReason::Paused,
                },
                1 => FailureReason::TimedOut { limit_ms: 10 },
                2 => FailureReason::ShuttingDown,
                3 => FailureReason::ModelUnavailable {
                    message: "gone".into(),
                },
                4 => FailureReason::Inference {
                    message: "nan".into(),
                },
                5 => FailureReason::ModelInvalid {
                    message: "op".into(),
                },
                _ => FailureReason::InputInvalid {
                    message: "shape".into(),
                },
            };
            Input::WorkerFailed {
                from: node(p),
                failure: Signed::sign(
                    TaskFailure {
                        task_id: task(),
                        requester: node(0),
                        worker: node(p),
                        reason,
                    },
                    &ident(p),
                )
                .unwrap(),
            }
        }
        Event::Result {
            peer,
            holder,
            right_price,
        } => {
            let p = pick(peer, holder);
            let price = match (right_price, holder_of(a)) {
                (true, Some((_, price))) => price,
                _ => 1,
            };
            Input::Result {
                from: node(p),
                receipt: receipt(&ident(p), price),
            }
        }
        Event::ResultInvalid { peer, holder } => Input::ResultInvalid {
            from: node(pick(peer, holder)),
            reason: "outputs do not match the receipt".into(),
        },
        Event::Tick => return None,
    })
}

fn decline(peer: u8) -> Signed<Decline> {
    Signed::sign(
        Decline {
            task_id: task(),
            worker: node(peer),
            reason: DeclineReason::QueueFull {
                queued: 1,
                slots: 1,
            },
        },
        &ident(peer),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_auction_ends_completed_or_failed(
        events in proptest::collection::vec((event(), prop_oneof![4 => 0u64..300, 1 => 0u64..5_000]), 0..40),
        n_candidates in 0u8..10,
        fanout in 1usize..4,
        deadline_off in 1u64..40_000,
    ) {
        let candidates: Vec<NodeId> = (1..=n_candidates).map(node).collect();
        let config = AuctionConfig { fanout, ..AuctionConfig::default() };
        let deadline = T0 + deadline_off;
        let mut a = Auction::new(spec(deadline, Weights::default()), config, &candidates, &TrustBook::default(), T0).unwrap();
        let mut outputs = drain(&mut a);
        let mut now = T0;
        let mut asked: BTreeSet<NodeId> = BTreeSet::new();
        // Price, expiry and latency of each bid the auction took.
        let mut bids: BTreeMap<NodeId, (u64, UnixMillis, u64)> = BTreeMap::new();
        let check = |outs: &[Output], asked: &mut BTreeSet<NodeId>, bids: &BTreeMap<NodeId, (u64, UnixMillis, u64)>, now: UnixMillis| -> Result<(), TestCaseError> {
            for o in outs {
                match o {
                    Output::SendCallForBids { to, cfb, .. } => {
                        prop_assert!(to.len() <= fanout);
                        prop_assert!(cfb.bid_deadline <= deadline);
                        for p in to { prop_assert!(asked.insert(*p), "asked twice"); }
                    }
                    Output::SendAward { to, price_stroops } => {
                        prop_assert!(asked.contains(to), "award to a peer never asked");
                        prop_assert!(now < deadline, "award at or after the deadline");
                        let Some(&(bid, valid_until, latency)) = bids.get(to) else {
                            return Err(TestCaseError::fail("award without an accepted bid"));
                        };
                        prop_assert!(now < valid_until, "award of an expired bid");
                        prop_assert!(now + latency < deadline, "award of a bid too slow for the deadline");
                        prop_assert!(*price_stroops >= bid && *price_stroops <= MAX_PRICE);
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        check(&outputs, &mut asked, &bids, now)?;
        for (e, dt) in &events {
            now += dt;
            let before = outputs.len();
            match to_input(e, &a) {
                Some(input) => {
                    let offer = match &input {
                        Input::Bid { from, bid } => Some((
                            *from,
                            (bid.body.price_stroops, bid.body.valid_until, u64::from(bid.body.est_latency_ms)),
                        )),
                        _ => None,
                    };
                    // Remember the price of each bid the auction took, for the award check.
                    if a.handle(input, now).is_ok()
                        && let Some((from, terms)) = offer
                    {
                        prop_assert!(bids.insert(from, terms).is_none(), "two bids taken from one peer");
                    }
                }
                None => a.handle_timeout(now),
            }
            outputs.extend(drain(&mut a));
            check(&outputs[before..], &mut asked, &bids, now)?;
            if let Some(t) = a.poll_timeout() {
                prop_assert!(t > now && t <= deadline, "timer {} not in ({}, {}]", t, now, deadline);
            } else {
                prop_assert!(a.is_finished());
            }
        }
        // Whatever happened, the deadline ends it.
        a.handle_timeout(deadline);
        outputs.extend(drain(&mut a));
        prop_assert!(a.is_finished());
        prop_assert_eq!(a.poll_timeout(), None);
        let ends: Vec<&Output> = outputs.iter()
            .filter(|o| matches!(o, Output::Completed { .. } | Output::Failed(_)))
            .collect();
        prop_assert_eq!(ends.len(), 1, "exactly one end: {:?}", ends);
        if let Output::Failed(e) = ends[0] {
            prop_assert!(!e.to_string().is_empty());
            prop_assert_eq!(e.asked as usize, asked.len());
            prop_assert!(e.asked > 0 || e.cause == FailCause::NoCandidates || e.cause == FailCause::DeadlinePassed);
        }
        prop_assert!(a.trace().outcome.is_some());
    }
}
