//! Wrong answers and the requesters' spot checks, as the node does them
//! (`node/src/requester.rs`, [`crank_scheduler::verify`]).
//!
//! Cheating devices ([`super::CheaterConfig`]) run their tasks like everyone else and sign
//! a receipt whose output hash is of a wrong answer. After a task's first answer is in, its
//! requester draws whether to check it at [`CheckPolicy::rate`] for that worker's record in
//! its own trust book. A checked task is run again as an ordinary task (a fresh nonce and id,
//! the same input) through the real auction, among the requester's adverts minus the first
//! worker; when the two answers differ, a third run among the rest decides
//! ([`crank_scheduler::verify::verdict`]). The outvoted worker's run is not paid and the
//! requester's trust book records it ([`crank_scheduler::TrustBook::record_check`]), which
//! suspends it from that requester's auctions; agreeing workers extend their streaks, which
//! lowers their rate. The accepted answer is the majority's, or the first answer when there
//! is none.
//!
//! What the simulation leaves out: devices have no network addresses or shared accounts
//! here, so replicas are independent by node id only (the node also prefers another /24 and
//! other hardware), and honest answers are bit-identical (the node compares floats within a
//! tolerance, so honest engines that differ slightly still agree).

use crank_protocol::{NodeId, TaskId};
use crank_scheduler::verify::{CheckPolicy, Verdict, verdict};
use serde::{Deserialize, Serialize};

use super::engine::{BaselineSide, Delivery, RIGHT_ANSWER, Shard, Side, Task};
use super::rng::{self, Purpose};
use super::stats::CheckSummary;
use super::workload::TaskDraw;
use super::{
    CheatMode, EPOCH_MS, MarketConfig, MarketError, Progress, SchedulerKind, run as run_market,
};

/// Marks a task as a replica or third run of another.
#[derive(Debug, Clone)]
pub(crate) struct CheckRole {
    /// The checked task.
    pub of: u32,
    /// The third, deciding run (else the replica).
    pub third: bool,
    /// Workers that answered this input already.
    pub avoid: Vec<NodeId>,
}

/// One answer in a check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    node: NodeId,
    slot: u32,
    answer: u64,
    price: u64,
}

/// A check in progress.
#[derive(Debug, Clone)]
pub(crate) struct CheckState {
    first: Answer,
    replica: Option<Answer>,
    /// What a further run needs of the checked task.
    draw: TaskDraw,
    model_id: crank_protocol::ModelId,
    model_bytes: u64,
    input_hash: crank_protocol::ContentHash,
    elements: u64,
    /// When the first answer came.
    answered_at: u64,
    /// The task arrived in the second half of the run.
    late: bool,
}

impl Shard<'_> {
    /// Which answer the worker on `slot` gives to the run `(task, attempt)`.
    pub(crate) fn answer_of(&self, slot: u32, task: u32, attempt: u32) -> u64 {
        let d = &self.devices[slot as usize];
        if !d.cheat {
            return RIGHT_ANSWER;
        }
        // Each cheater's own wrong answer: two cheaters that do not collude never agree.
        let own = 1 + u64::from(slot) + (u64::from(self.shard) << 32);
        let cheats = &self.cfg.cheaters;
        match cheats.mode {
            CheatMode::Always => own,
            CheatMode::Colluding => u64::MAX,
            CheatMode::Unchecked => {
                let is_check = self.tasks.get(&task).is_some_and(|t| t.check.is_some());
                if is_check { RIGHT_ANSWER } else { own }
            }
            CheatMode::Sometimes => {
                let key = [
                    u64::from(self.shard),
                    u64::from(task),
                    u64::from(slot),
                    u64::from(attempt),
                ];
                if rng::unit(self.cfg.seed, Purpose::Cheats, &key) < cheats.probability {
                    own
                } else {
                    RIGHT_ANSWER
                }
            }
        }
    }

    fn note_wrong(&mut self, slot: u32, answer: u64) {
        if answer != RIGHT_ANSWER {
            let now = self.now;
            let d = &mut self.devices[slot as usize];
            d.first_wrong_at.get_or_insert(now);
        }
    }

    /// A drawn task completed with its first answer: book it, and draw whether to check it.
    pub(crate) fn answered(&mut self, ix: u32, t: &Task, price: u64, delivery: Option<Delivery>) {
        let Some(dv) = delivery else { return };
        let late = t.draw.at >= EPOCH_MS + self.cfg.span_ms() / 2;
        if late {
            self.stats.check.late_completed += 1;
        }
        if dv.answer != RIGHT_ANSWER {
            self.stats.check.wrong_delivered += 1;
        }
        self.note_wrong(dv.slot, dv.answer);
        let policy = self.cfg.checks;
        if self.kind.is_auction() && policy.enabled {
            let trust = &self.requesters[t.draw.requester as usize].trust;
            let rate = policy.rate(trust.get(&dv.node), trust.score(&dv.node));
            let draw = rng::key(
                self.cfg.seed,
                Purpose::Checks,
                &[u64::from(self.shard), u64::from(ix)],
            );
            if CheckPolicy::sampled(rate, draw) {
                self.stats.check.checked += 1;
                let first = Answer {
                    node: dv.node,
                    slot: dv.slot,
                    answer: dv.answer,
                    price,
                };
                let state = CheckState {
                    first,
                    replica: None,
                    draw: t.draw,
                    model_id: t.model_id,
                    model_bytes: t.model_bytes,
                    input_hash: t.input_hash,
                    elements: t.elements,
                    answered_at: self.now,
                    late,
                };
                self.launch(ix, &state, false, vec![dv.node]);
                self.checks.insert(ix, state);
                return;
            }
        }
        self.accept(late, dv.answer);
    }

    fn accept(&mut self, late: bool, answer: u64) {
        if answer != RIGHT_ANSWER {
            self.stats.check.wrong_accepted += 1;
            if late {
                self.stats.check.late_wrong_accepted += 1;
            }
        }
    }

    /// Starts a replica (or third) run of the checked task `of`: an ordinary task with a fresh
    /// id, through the auction, among the requester's adverts minus `avoid`.
    fn launch(&mut self, of: u32, st: &CheckState, third: bool, avoid: Vec<NodeId>) {
        let SchedulerKind::Auction(pref) = self.kind else {
            return;
        };
        let ix = self.next_check_ix;
        self.next_check_ix = self.next_check_ix.saturating_add(1);
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&self.shard.to_le_bytes());
        nonce[4..8].copy_from_slice(&ix.to_le_bytes());
        nonce[8..].copy_from_slice(&self.cfg.seed.to_le_bytes());
        let r = st.draw.requester as usize;
        let requester = self.requesters[r].node;
        let now = self.now;
        let draw = TaskDraw { at: now, ..st.draw };
        let task = Task {
            draw,
            task_id: TaskId::derive(&requester, &nonce, &st.model_id, &st.input_hash),
            nonce,
            model_id: st.model_id,
            model_bytes: st.model_bytes,
            input_hash: st.input_hash,
            elements: st.elements,
            deadline: now + self.cfg.workload.deadline_ms,
            attempts: 0,
            timer_at: None,
            side: Side::Baseline(BaselineSide::default()),
            check: Some(CheckRole { of, third, avoid }),
        };
        let timing = self.timing;
        for &s in &self.requesters[r].view {
            self.devices[s as usize].refresh_advert(now, &timing);
        }
        self.auction_arrival(ix, task, pref);
    }

    /// Records a check's mark on a worker in the requester's trust book.
    fn mark(&mut self, requester: u32, a: Answer, agreed: bool) {
        let now = self.now;
        self.requesters[requester as usize]
            .trust
            .record_check(a.node, agreed, now);
        if !agreed {
            if a.answer == RIGHT_ANSWER {
                self.stats.check.honest_outvoted += 1;
            }
            let d = &mut self.devices[a.slot as usize];
            if d.cheat {
                d.caught_at.get_or_insert(now);
            }
        }
    }

    fn conclude(&mut self, st: &CheckState, outcome: &'static str, accepted: u64) {
        *self.stats.check.outcomes.entry(outcome).or_default() += 1;
        let delay = self.now.saturating_sub(st.answered_at);
        self.stats
            .check
            .delays_ms
            .push(u32::try_from(delay).unwrap_or(u32::MAX));
        self.accept(st.late, accepted);
    }

    /// A replica or third run completed.
    pub(crate) fn check_run_done(
        &mut self,
        role: CheckRole,
        price: u64,
        delivery: Option<Delivery>,
    ) {
        let Some(dv) = delivery else {
            self.check_run_failed(role);
            return;
        };
        self.stats.check.runs += 1;
        if self.checks.get(&role.of).is_some_and(|st| st.late) {
            self.stats.check.late_runs += 1;
        }
        self.stats.check.stroops += price;
        self.stats.check.third_runs += u64::from(role.third);
        self.note_wrong(dv.slot, dv.answer);
        let Some(mut st) = self.checks.remove(&role.of) else {
            return;
        };
        let requester = st.draw.requester;
        let run = Answer {
            node: dv.node,
            slot: dv.slot,
            answer: dv.answer,
            price,
        };
        let first = st.first;
        match (role.third, st.replica) {
            (false, _) if run.answer == first.answer => {
                self.mark(requester, first, true);
                self.mark(requester, run, true);
                self.conclude(&st, "agreed", first.answer);
            }
            (false, _) => {
                st.replica = Some(run);
                self.launch(role.of, &st, true, vec![first.node, run.node]);
                self.checks.insert(role.of, st);
            }
            (true, Some(replica)) => {
                let votes = (run.answer == first.answer, run.answer == replica.answer);
                match verdict(false, Some(votes)) {
                    Verdict::FirstWrong => {
                        self.mark(requester, first, false);
                        self.mark(requester, replica, true);
                        self.mark(requester, run, true);
                        self.stats.check.withheld_stroops += first.price;
                        self.conclude(&st, "first_outvoted", replica.answer);
                    }
                    Verdict::ReplicaWrong => {
                        self.mark(requester, replica, false);
                        self.mark(requester, first, true);
                        self.mark(requester, run, true);
                        // The replica was booked as paid when it completed; it is not.
                        self.stats.check.stroops -= replica.price.min(self.stats.check.stroops);
                        self.stats.check.withheld_stroops += replica.price;
                        self.conclude(&st, "replica_outvoted", first.answer);
                    }
                    Verdict::Agreed | Verdict::Unresolved => {
                        self.conclude(&st, "unresolved", first.answer);
                    }
                }
            }
            (true, None) => self.conclude(&st, "unresolved", first.answer),
        }
    }

    /// A replica or third run found no worker: the first answer stands unchecked (no
    /// replica) or undecided (no third run).
    pub(crate) fn check_run_failed(&mut self, role: CheckRole) {
        self.stats.check.runs_failed += 1;
        let Some(st) = self.checks.remove(&role.of) else {
            return;
        };
        let outcome = if role.third {
            "unresolved"
        } else {
            "no_replica"
        };
        self.conclude(&st, outcome, st.first.answer);
    }

    /// At the end of a shard: who cheated, who was caught, and how fast.
    pub(crate) fn finish_checks(&mut self) {
        let c = &mut self.stats.check;
        for d in &self.devices {
            c.cheat_devices += u64::from(d.cheat);
            if let Some(first) = d.first_wrong_at {
                c.cheaters_active += 1;
                if let Some(caught) = d.caught_at {
                    c.cheaters_caught += 1;
                    let ms = caught.saturating_sub(first);
                    c.detect_ms.push(u32::try_from(ms).unwrap_or(u32::MAX));
                }
            }
        }
    }
}

/// One run of the check grid: a cheater share and mode, with checks on or off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckGridRow {
    /// Share of cheating devices.
    pub share: f64,
    /// How they cheat.
    pub mode: CheatMode,
    /// Probability of a wrong answer (mode `sometimes`).
    pub probability: f64,
    /// Whether requesters checked.
    pub checks: bool,
    /// Completed tasks.
    pub completed: u64,
    /// Completion rate.
    pub completion_rate: f64,
    /// p95 latency of first answers, ms.
    pub latency_p95_ms: u64,
    /// Energy per completed task (check runs included), J.
    pub energy_per_task_j: f64,
    /// What checks found and cost.
    pub summary: CheckSummary,
}

/// Runs `base` (its first scheduler, which should be an auction) for every cheater share and
/// mode with checks on, and once per share with checks off as the reference.
pub fn check_grid(
    base: &MarketConfig,
    shares: &[f64],
    modes: &[CheatMode],
    progress: impl Fn(&str) -> Progress,
) -> Result<Vec<CheckGridRow>, MarketError> {
    let Some(&scheduler) = base.schedulers.first() else {
        return Err(MarketError::Config("no scheduler to run".into()));
    };
    if !scheduler.is_auction() {
        return Err(MarketError::Config(format!(
            "checks are the auction's requesters' own; {scheduler} does not check"
        )));
    }
    let mut rows = Vec::new();
    for &share in shares {
        let mut runs: Vec<(CheatMode, bool)> = vec![(CheatMode::Always, false)];
        runs.extend(modes.iter().map(|&m| (m, true)));
        for (mode, on) in runs {
            let mut cfg = base.clone();
            cfg.schedulers = vec![scheduler];
            cfg.cheaters.share = share;
            cfg.cheaters.mode = mode;
            cfg.checks.enabled = on;
            let label = if on {
                format!("{:.0} % {mode}", share * 100.0)
            } else {
                format!("{:.0} % no checks", share * 100.0)
            };
            let report = run_market(&cfg, &progress(&label))?;
            if !report.passed() {
                let broken: Vec<String> = report
                    .violation_counts
                    .iter()
                    .map(|(s, k, n)| format!("{s}: {k} ×{n}"))
                    .collect();
                return Err(MarketError::Invariants(format!(
                    "{label}: {}",
                    broken.join("; ")
                )));
            }
            let Some(s) = report.summaries.into_iter().next() else {
                continue;
            };
            rows.push(CheckGridRow {
                share,
                mode,
                probability: cfg.cheaters.probability,
                checks: on,
                completed: s.completed,
                completion_rate: s.completion_rate,
                latency_p95_ms: s.latency_p95_ms,
                energy_per_task_j: s.energy_per_task_j,
                summary: s.checks,
            });
        }
    }
    Ok(rows)
}
