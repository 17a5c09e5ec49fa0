//! CPU cost of the scheduler core: auction decisions per second for 5 and 50 bidders, with
//! and without the signature checks, plus quoting and candidate selection.
//!
//! Run with `cargo bench -p crank-scheduler --bench auction`. Figures are printed, not
//! asserted. A decision is: create the auction, feed every bidder's signed bid (each is
//! verified), close the round, score, pick the winner and price the award.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use crank_protocol::{
    Bid, CapabilityAdvert, Capacity, ContentHash, ExecPath, GateInfo, Hardware, Identity, ModelId,
    NodeId, PathBench, PowerInfo, Pricing, RunPolicy, Signed, TaskId, TrustSummary,
};
use crank_scheduler::score::{PayTerms, award_price, score_bid};
use crank_scheduler::{
    Auction, AuctionConfig, CandidateQuery, CostModel, CreditPolicy, Input, Output, PaymentRule,
    Preference, QueueState, RequesterStanding, TaskSpec, TrustBook, WorkerLimits, WorkerState,
    quote, select_candidates,
};

const PAYOUT: &str = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7";
const PAYER: &str = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H";
const NONCE: [u8; 16] = [4; 16];
const T0: u64 = 1_000_000;

/// The benchmarked task, its id derived as a requester derives it.
fn task() -> TaskId {
    TaskId::derive(
        &identity(usize::MAX).node_id(),
        &NONCE,
        &ModelId([2; 32]),
        &ContentHash([3; 32]),
    )
}

fn identity(i: usize) -> Identity {
    let mut secret = [7u8; 32];
    secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Identity::from_secret(secret)
}

fn spec() -> TaskSpec {
    TaskSpec {
        task_id: task(),
        requester: identity(usize::MAX).node_id(),
        model: ModelId([2; 32]),
        model_bytes: 100_000,
        input_hash: ContentHash([3; 32]),
        input_elements: 64,
        nonce: NONCE,
        payer: PAYER.into(),
        max_price_stroops: 1_000_000,
        deadline: T0 + 60_000,
        bid_window_ms: 500,
        weights: Preference::Balanced.weights(),
    }
}

fn bids(n: usize) -> (Vec<NodeId>, Vec<Signed<Bid>>) {
    let mut nodes = Vec::new();
    let mut signed = Vec::new();
    for i in 0..n {
        let id = identity(i);
        let k = i as u64;
        let body = Bid {
            task_id: task(),
            worker: id.node_id(),
            model: ModelId([2; 32]),
            model_bytes: 100_000,
            input_hash: ContentHash([3; 32]),
            input_elements: 64,
            price_stroops: 100 + (k * 37) % 900,
            est_latency_ms: 20 + ((k * 53) % 2000) as u32,
            est_energy_mj: 5 + (k * 71) % 5000,
            path: ExecPath::Cpu,
            model_cached: i.is_multiple_of(2),
            queue_len: 0,
            valid_until: T0 + 30_000,
            payout: PAYOUT.into(),
        };
        nodes.push(id.node_id());
        signed.push(Signed::sign(body, &id).expect("sign"));
    }
    (nodes, signed)
}

/// Runs `f` repeatedly for about `budget` and returns runs per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> (f64, u64) {
    // Warm-up.
    for _ in 0..10 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..10 {
            f();
        }
        n += 10;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

fn decide(nodes: &[NodeId], signed: &[Signed<Bid>], trust: &TrustBook) -> Option<(NodeId, u64)> {
    let config = AuctionConfig {
        fanout: nodes.len(),
        max_candidates: nodes.len(),
        ..AuctionConfig::default()
    };
    let mut a = Auction::new(spec(), config, nodes, trust, T0).expect("spec");
    for (node, bid) in nodes.iter().zip(signed) {
        let _ = a.handle(
            Input::Bid {
                from: *node,
                bid: bid.clone(),
            },
            T0 + 10,
        );
    }
    std::iter::from_fn(|| a.poll_output()).find_map(|o| match o {
        Output::SendAward { to, price_stroops } => Some((to, price_stroops)),
        _ => None,
    })
}

fn score_only(signed: &[Signed<Bid>], trust: &TrustBook) -> u64 {
    let w = Preference::Balanced.weights();
    let mut scored: Vec<(f64, PayTerms)> = signed
        .iter()
        .map(|s| {
            let t = trust.score(&s.body.worker);
            (
                score_bid(&s.body, t, &w).total,
                PayTerms {
                    price_stroops: s.body.price_stroops,
                    trust: t,
                    measured: None,
                },
            )
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    award_price(
        PaymentRule::SecondScore,
        &scored[0].1,
        scored.get(1).map(|s| &s.1),
        1_000_000,
        &w,
    )
}

fn advert(i: usize) -> CapabilityAdvert {
    let id = identity(i);
    CapabilityAdvert {
        node: id.node_id(),
        seq: 1,
        issued_at: T0,
        expires_at: T0 + 600_000,
        agent: "crank-node/0.1".into(),
        hardware: Hardware {
            cpu_model: "bench".into(),
            cores: 4,
            ram_mib: 4096,
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
            open: !i.is_multiple_of(5),
            reason: i
                .is_multiple_of(5)
                .then_some(crank_protocol::GateReason::Paused),
        },
        models: if i.is_multiple_of(3) {
            vec![ModelId([2; 32])]
        } else {
            vec![]
        },
        unservable: Vec::new(),
        pricing: Pricing {
            per_task_stroops: 100 + (i as u64 * 13) % 500,
            per_second_stroops: 1000,
        },
        payout: PAYOUT.into(),
        trust: TrustSummary::default(),
        bench: vec![PathBench {
            path: ExecPath::Cpu,
            inferences_per_sec: 100.0 + (i % 50) as f32 * 20.0,
            microjoules_per_inference: 10_000,
        }],
        capacity: Capacity {
            workers: 2,
            queue_slots: 8,
            queued: (i % 9) as u16,
        },
        addrs: vec![],
    }
}

fn main() {
    let budget = Duration::from_millis(1500);
    let trust = TrustBook::default();
    println!("crank-scheduler core, single thread, {budget:?} per figure");
    for n in [5usize, 50] {
        let (nodes, signed) = bids(n);
        assert!(decide(&nodes, &signed, &trust).is_some());
        let (full, runs) = rate(budget, || {
            black_box(decide(black_box(&nodes), black_box(&signed), &trust));
        });
        let (pure, _) = rate(budget, || {
            black_box(score_only(black_box(&signed), &trust));
        });
        let (verify, _) = rate(budget, || {
            for s in &signed {
                black_box(s.verify().is_ok());
            }
        });
        println!(
            "{n:>3} bidders: {full:>9.0} decisions/s ({:>7.1} µs each, {runs} runs) with signature checks; \
             {pure:>10.0} decisions/s ({:>6.2} µs) scoring and pricing alone; \
             signature checks alone {:>7.1} µs",
            1e6 / full,
            1e6 / pure,
            1e6 / verify,
        );
    }

    let worker = WorkerState {
        node: identity(1).node_id(),
        gate_closed: None,
        on_battery: false,
        queue: QueueState {
            queued: 1,
            slots: 8,
            est_wait_ms: 40,
        },
        cached_models: [ModelId([2; 32])].into(),
        bench: vec![
            PathBench {
                path: ExecPath::Cpu,
                inferences_per_sec: 800.0,
                microjoules_per_inference: 20_000,
            },
            PathBench {
                path: ExecPath::Gpu,
                inferences_per_sec: 9000.0,
                microjoules_per_inference: 6_000,
            },
        ],
        measured: Default::default(),
        unservable: Default::default(),
        limits: WorkerLimits::default(),
        payout: PAYOUT.into(),
        credit: CreditPolicy::default(),
        requester: RequesterStanding::default(),
    };
    let cfb = crank_protocol::CallForBids {
        task_id: task(),
        requester: identity(usize::MAX).node_id(),
        model: ModelId([2; 32]),
        model_bytes: 100_000,
        input_hash: ContentHash([3; 32]),
        input_elements: 64,
        max_price_stroops: 1_000_000,
        nonce: NONCE,
        payer: PAYER.into(),
        bid_deadline: T0 + 500,
        deadline: T0 + 60_000,
        issued_at: T0,
    };
    let cost = CostModel::default();
    assert!(quote(&cfb, &worker, &cost, T0).is_ok());
    let (q, _) = rate(budget, || {
        black_box(quote(black_box(&cfb), &worker, &cost, T0).ok());
    });
    println!("quote: {q:>10.0} quotes/s ({:.2} µs each)", 1e6 / q);

    let adverts: Vec<CapabilityAdvert> = (0..1000).map(advert).collect();
    let providers: BTreeSet<NodeId> = BTreeSet::new();
    let query = CandidateQuery {
        requester: identity(usize::MAX).node_id(),
        model: ModelId([2; 32]),
        model_bytes: 100_000,
        providers: &providers,
        weights: Preference::Balanced.weights(),
        k: 5,
        limit: 20,
        explore: 1,
        seed: 7,
    };
    let (s, _) = rate(budget, || {
        black_box(select_candidates(&adverts, &query, &trust, T0 + 1));
    });
    println!(
        "select_candidates over 1000 adverts: {s:>8.0} selections/s ({:.1} µs each)",
        1e6 / s
    );
}
