//! The crank-node reverse auction, as a pure state machine, and trust scoring.
//!
//! A requester picks a few candidates ([`select_candidates`]), asks them for sealed bids,
//! awards the task to the bid with the lowest score and, when the winner fails, re-awards to
//! the next bid or asks the next candidates, until the task's deadline ([`Auction`]). A worker
//! prices a call for bids from its own costs or declines with a reason ([`quote()`]). What each
//! peer did with the tasks it was awarded feeds a trust score ([`TrustBook`]) that enters
//! every later score.
//!
//! This crate does no I/O, reads no clock and draws no randomness: time comes in as
//! [`UnixMillis`], the exploration lottery is seeded by the caller, and the same inputs always
//! give the same outputs. The driver (the node's event loop, or the simulator) owns the
//! network and the timers. A decision costs microseconds of CPU, most of it checking bid
//! signatures (see `benches/auction.rs`).
//!
//! # Layout
//!
//! - [`auction`]: the requester's [`Auction`] (`handle(input, now)`, `handle_timeout(now)`,
//!   `poll_output()`, `poll_timeout()`), its [`auction::trace::AuctionTrace`] and the
//!   aggregated [`FailureExplanation`].
//! - [`score`]: the score formula, [`Preference`] presets, [`Weights`] and the payment rule.
//! - [`quote`](mod@quote): the worker's [`quote()`], [`check_award`] and the bounded
//!   [`BidBook`] of its open bids.
//! - [`trust`]: [`TrustBook`] and its score.
//! - [`verify`]: spot-check replication: [`CheckPolicy`] (how often), [`verify::compare`]
//!   (whether two answers agree) and [`verify::verdict`] (who was wrong).
//! - [`candidates`]: [`select_candidates`] and [`rank_candidates`].
//!
//! # Usage
//!
//! The driver loop, reduced to one worker that quotes, wins and delivers:
//!
//! ```
//! use crank_protocol::*;
//! use crank_scheduler::*;
//!
//! let (me, worker) = (Identity::from_secret([1; 32]), Identity::from_secret([2; 32]));
//! let now = 1_700_000_000_000;
//! let payer = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H"; // pays from here
//! let inputs = vec![NamedTensor { name: "x".into(), tensor: Tensor::f32(vec![1, 64], vec![0.5; 64])? }];
//! let input_hash = tensor::tensors_hash(&inputs);
//! // A fresh random nonce per task; the id commits to it, the model and the inputs.
//! let nonce = [7; 16];
//! let model = ModelId([3; 32]);
//! let spec = TaskSpec {
//!     task_id: TaskId::derive(&me.node_id(), &nonce, &model, &input_hash),
//!     requester: me.node_id(),
//!     model,
//!     model_bytes: 100_000,
//!     input_hash,
//!     input_elements: 64,
//!     nonce,
//!     payer: payer.into(),
//!     max_price_stroops: 5_000,
//!     deadline: now + 30_000,
//!     bid_window_ms: 300,
//!     weights: "fast".parse()?,
//! };
//! let trust = TrustBook::default();
//! let mut auction =
//!     Auction::new(spec, AuctionConfig::default(), &[worker.node_id()], &trust, now)?;
//!
//! // The driver signs and sends the call for bids; the worker quotes from its own costs.
//! let Some(Output::SendCallForBids { to, cfb, .. }) = auction.poll_output() else { panic!() };
//! assert_eq!(to, vec![worker.node_id()]);
//! let state = WorkerState {
//!     node: worker.node_id(),
//!     gate_closed: None,
//!     on_battery: false,
//!     queue: QueueState { queued: 0, slots: 4, est_wait_ms: 0 },
//!     cached_models: [ModelId([3; 32])].into(),
//!     bench: vec![PathBench {
//!         path: ExecPath::Cpu,
//!         inferences_per_sec: 500.0,
//!         microjoules_per_inference: 20_000,
//!     }],
//!     measured: Default::default(),
//!     unservable: Default::default(),
//!     limits: WorkerLimits::default(),
//!     payout: "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7".into(),
//!     // What the worker's ledger says this requester owes it: nothing yet.
//!     credit: CreditPolicy::default(),
//!     requester: RequesterStanding::default(),
//! };
//! let bid = quote(&cfb, &state, &CostModel::default(), now + 5).expect("a bid");
//! let asked = bid.price_stroops;
//! let my_bid = bid.clone();
//! let bid = Signed::sign(bid, &worker)?;
//! auction.handle(Input::Bid { from: worker.node_id(), bid }, now + 5)?;
//!
//! // Everyone asked has answered, so the award is out, paid as bid.
//! let Some(Output::SendAward { to, price_stroops }) = auction.poll_output() else { panic!() };
//! assert_eq!((to, price_stroops), (worker.node_id(), asked));
//! let award = auction.award_message(to, price_stroops, inputs); // sign and send
//! // The worker takes it only for the work it bid for (task, model, inputs, price).
//! check_award(&my_bid, &award, now + 8).expect("the award matches the bid");
//! auction.handle(Input::AwardAccepted { from: to }, now + 10)?;
//! // Until the result arrives, the driver wakes the auction at `poll_timeout()`.
//! assert!(auction.poll_timeout().is_some_and(|t| t <= now + 30_000));
//! # let receipt = Signed::sign(WorkReceipt {
//! #     task_id: award.task_id, requester: me.node_id(), worker: to, model,
//! #     input_hash, output_hash: ContentHash([5; 32]),
//! #     price_stroops, energy: Energy { microjoules: 1_000, method: EnergyMethod::CpuTimeEstimate },
//! #     path: ExecPath::Cpu, timings: Timings { accepted_at: 0, started_at: 0, finished_at: 0,
//! #     run_micros: 1 }, pair_seq: 1, cumulative_stroops: price_stroops,
//! #     payout: "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7".into(),
//! #     payer: payer.into() }, &worker)?;
//! auction.handle(Input::Result { from: to, receipt }, now + 90)?;
//! let mut trust = trust;
//! while let Some(out) = auction.poll_output() {
//!     match out {
//!         // What the requester measured: from now on it scores this worker's bids on this
//!         // model with that, not with the claims.
//!         Output::Observed(obs) => {
//!             trust.record_observation(&obs, now + 90);
//!         }
//!         Output::Trust { peer, outcome } => trust.record(peer, outcome, now + 90),
//!         Output::Completed { worker, price_stroops } => println!("{worker} earned {price_stroops}"),
//!         other => unreachable!("{other:?}"),
//!     }
//! }
//! println!("{}", auction.trace()); // what `--verbose` prints
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Score
//!
//! Lower wins:
//!
//! ```text
//! score = w_price · ln(1 + price_stroops) + w_latency · ln(1 + est_latency_ms)
//!       + w_energy · ln(1 + est_energy_mj) + w_trust · −ln(trust)
//! ```
//!
//! Logarithms make the rule free of units and scale: only ratios matter (twice the price,
//! half the latency), a bid's score does not depend on the other bids, and a weight reads as
//! "one doubling of this is worth `w / w_price` doublings of price". Trust is this node's
//! Beta-smoothed success rate for the peer, in `[0.001, 1]` ([`trust`]). Presets, as
//! (price, latency, energy, trust): `cheap` (1, 0.2, 0.1, 1), `fast` (0.5, 1, 0.1, 1),
//! `green` (0.5, 0.2, 1, 1), `balanced` (1, 1, 0.5, 1). Under `fast`, a bid twice as fast is
//! worth four times the price (`2^(1/0.5)`); under `cheap`, only 15 % more (`2^0.2`). Ties go
//! to the lower price, then the lower latency, then the lower node id.
//!
//! # Claims and measurements
//!
//! A bid's latency and energy are the worker's own estimates. The requester measures every
//! task it awards (latency from award to result; energy as the time the work took at the
//! power the bid implied, and at least what the receipt reports) and keeps the record per worker, model and path in its
//! trust book ([`claims`]). Once it has one, the auction scores that worker's bids for that
//! model and path with the medians of its measurements, not the claims; a task whose
//! measurement belies the claims by more than the noise allows is an over-claim and costs
//! trust like a failure. Claims thus count only until a worker has been seen, and a lie is
//! paid for after its first task.
//!
//! # Payment rule: pay-as-bid
//!
//! The winner is paid its own bid ([`PaymentRule::PayAsBid`]), which is never above the
//! task's max price (higher bids are refused). Why:
//!
//! - **Claims cannot inflate pay.** Claimed latency and energy decide only who wins; what the
//!   winner is paid is its ask. Under the second-score rule this crate used before (pay the
//!   price at which the winner's score would equal the runner-up's), the score gap included
//!   the winner's own claims, which nothing checks at bid time: a worker claiming to be ten
//!   times faster raised its own pay ~85× under `fast`, and one claiming 0 mJ reached the max
//!   price under `green`. On the full-scale market run requesters paid 5.8× the winning ask.
//! - **Truth is the best claim once history counts.** With a measurement on record, claims
//!   change neither the winner nor the price, and an over-claim costs trust in every later
//!   auction; a liar's only gain is its first award from each requester per model and path.
//!   Property tests in `auction::tests::pay` check, for random bid sets, histories,
//!   preferences and both rules: a winner changing only its claims is never paid more; pay is
//!   within `[bid, max price]`; with history, a liar's pay equals the truthful bidder's and it
//!   does no better in the next auction.
//! - **Price.** Pay-as-bid gives up second-price's "bid your cost" argument: a worker may ask
//!   above its cost. Bids are sealed, several workers are asked, the max price caps the ask,
//!   and asking more only risks losing the task to the next bid, as in posted-price markets
//!   (Akash's bids, Golem's offers). [`quote()`] asks cost plus the owner's margin.
//!
//! [`PaymentRule::SecondScore`] remains for comparison, computed from price, trust and the
//! requester's measurements only (quality terms count when both bids have measured history;
//! claims never do), so it too cannot be inflated by claims. Extra identities cannot raise a
//! winner's pay under either rule.
//!
//! # Invariants
//!
//! - **Only bids that verify, come from a peer that was asked, name this task and that peer,
//!   arrive inside the peer's bid window, are not expired, ask at most the max price and can
//!   meet the deadline are ever awarded.**
//! - **The award price is within `[bid, max price]`.**
//! - **Every auction ends in `Completed` or `Failed` (with aggregated reasons) by its
//!   deadline**: every state has a timer no later than the deadline.
//! - Traces, answers and rounds are bounded by the number of candidates, which is capped.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod auction;
pub mod candidates;
pub mod claims;
pub mod quote;
pub mod score;
pub mod trust;
pub mod verify;

pub use auction::trace::{
    Answer, AnswerTrace, AuctionTrace, FailCause, FailureExplanation, Rejection,
};
pub use auction::{Auction, AuctionConfig, Input, InputError, Output, SpecError, Status, TaskSpec};
pub use candidates::{CandidateQuery, RankedCandidate, rank_candidates, select_candidates};
pub use claims::{ClaimBook, ClaimRecord, Measured, Observation, Overclaim};
pub use crank_protocol::UnixMillis;
pub use quote::{
    BidBook, BidBookError, CostModel, CostModelError, CreditPolicy, MeasuredRun, QueueState,
    RequesterStanding, WorkerLimits, WorkerState, check_award, quote,
};
pub use score::{PayTerms, PaymentRule, Preference, Score, Weights, WeightsError};
pub use trust::{
    AdvertRoom, TaskOutcome, TrustBook, TrustError, TrustExplanation, TrustPrior, TrustRecord,
};
pub use verify::{
    Answerer, CheckPolicy, CheckPolicyError, Disagreement, HardwareClass, Independence, Network,
    Verdict,
};
