//! The baselines: direct dispatch by a simple rule, with retries until the deadline.
//!
//! A baseline sees the same advert table as the auction and the same devices, but knows
//! nothing of power gates: a device takes a dispatched task whenever it is awake and has a
//! free slot, prices it with its own cost model (battery wear included when on battery) and
//! runs it. A dispatch that is refused, unanswered, or not delivered in the time the worker
//! announced (with the auction's slack and grace) is cancelled and the task goes to the next
//! device the rule picks, until the deadline.

use crank_protocol::CallForBids;
use crank_scheduler::quote::path_quotes;

use super::SchedulerKind;
use super::device::payout_for;
use super::engine::{BaselineSide, Current, Ev, Reply, Shard, Side, Task};
use super::rng::{self, Purpose};

impl Shard<'_> {
    pub(crate) fn baseline_arrival(&mut self, ix: u32, mut task: Task) {
        task.side = Side::Baseline(BaselineSide::default());
        self.tasks.insert(ix, task);
        self.redispatch(ix);
    }

    /// Best advertised speed of a device, inferences per second.
    fn advertised_ips(&self, slot: u32) -> f64 {
        self.devices[slot as usize]
            .advert
            .bench
            .iter()
            .map(|b| f64::from(b.inferences_per_sec))
            .fold(0.0, f64::max)
    }

    /// The next device by the baseline's rule, among adverts not tried yet.
    fn pick(&self, ix: u32) -> Option<u32> {
        let t = self.tasks.get(&ix)?;
        let Side::Baseline(b) = &t.side else {
            return None;
        };
        let now = self.now;
        let view = &self.requesters[t.draw.requester as usize].view;
        let fresh = view
            .iter()
            .copied()
            .filter(|s| !b.tried.contains(s) && self.devices[*s as usize].advert.expires_at > now);
        let free = |s: &u32| {
            let c = &self.devices[*s as usize].advert.capacity;
            c.queued < c.queue_slots
        };
        match self.kind {
            SchedulerKind::Random => {
                let all: Vec<u32> = fresh.collect();
                if all.is_empty() {
                    return None;
                }
                let u = rng::unit(
                    self.cfg.seed,
                    Purpose::Baseline,
                    &[u64::from(self.shard), u64::from(ix), u64::from(t.attempts)],
                );
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let i = ((u * all.len() as f64) as usize).min(all.len() - 1);
                Some(all[i])
            }
            SchedulerKind::Fastest => fresh
                .filter(free)
                .map(|s| (self.advertised_ips(s), s))
                .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(_, s)| s),
            SchedulerKind::Cheapest => fresh
                .filter(free)
                .map(|s| {
                    let a = &self.devices[s as usize].advert;
                    let work = self.work_of(t.model_bytes, t.elements, s);
                    let secs = work / self.advertised_ips(s).max(1e-9);
                    #[allow(clippy::cast_precision_loss)]
                    let price = a.pricing.per_task_stroops as f64
                        + a.pricing.per_second_stroops as f64 * secs;
                    (price, s)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                .map(|(_, s)| s),
            SchedulerKind::Auction(_) => None,
        }
    }

    /// Dispatches to the next device, or fails the task when none is left or time is up.
    fn redispatch(&mut self, ix: u32) {
        let Some(t) = self.tasks.get(&ix) else { return };
        let (deadline, r) = (t.deadline, t.draw.requester as usize);
        if self.now >= deadline {
            self.fail(ix, "deadline passed".into(), "deadline passed".into());
            return;
        }
        let (now, timing) = (self.now, self.timing);
        for &s in &self.requesters[r].view {
            self.devices[s as usize].refresh_advert(now, &timing);
        }
        let Some(slot) = self.pick(ix) else {
            let tried = self.tasks.get(&ix).map_or(0, |t| t.attempts);
            self.fail(
                ix,
                "no device left to try".into(),
                format!("no untried device with a fresh advert after {tried} dispatches"),
            );
            return;
        };
        let era = self.devices[slot as usize].era;
        let ack = self.cfg.auction.award_ack_ms;
        let Some(t) = self.tasks.get_mut(&ix) else {
            return;
        };
        t.attempts += 1;
        let attempt = t.attempts;
        let timer = (now + ack).min(t.deadline);
        if let Side::Baseline(b) = &mut t.side {
            b.tried.push(slot);
            b.current = Some(Current { slot, era, attempt });
        }
        t.timer_at = Some(timer);
        self.stats.attempts += 1;
        self.push(
            timer,
            Ev::Timer {
                task: ix,
                at: timer,
            },
        );
        let delay = self.delay(slot);
        self.push(
            now + delay,
            Ev::Dispatch {
                task: ix,
                slot,
                era,
                attempt,
            },
        );
    }

    /// A dispatch reaches a device: it takes the task if it is awake, has a slot, can meet
    /// the deadline and its price is within the max price.
    pub(crate) fn on_dispatch(&mut self, ix: u32, slot: u32, era: u32, attempt: u32) {
        let now = self.now;
        let d = &self.devices[slot as usize];
        if d.era != era || !d.online() {
            let at = now + self.cfg.unreachable_ms;
            let reply = Reply::Unreachable;
            self.push(
                at,
                Ev::Reply {
                    task: ix,
                    attempt,
                    reply,
                },
            );
            return;
        }
        let Some(t) = self.tasks.get(&ix) else { return };
        let cfb = CallForBids {
            task_id: t.task_id,
            requester: self.requesters[t.draw.requester as usize].node,
            model: t.model_id,
            model_bytes: t.model_bytes,
            input_hash: t.input_hash,
            input_elements: t.elements,
            max_price_stroops: self.cfg.workload.max_price_stroops,
            nonce: t.nonce,
            payer: payout_for(&self.requesters[t.draw.requester as usize].node),
            bid_deadline: now,
            deadline: t.deadline,
            issued_at: now,
        };
        let d = &mut self.devices[slot as usize];
        d.refresh_worker_state(now);
        let full = d.jobs.len() >= usize::from(d.slots);
        let limit = d.worker.limits.max_run_ms;
        let best = path_quotes(&cfb, &d.worker, &d.cost)
            .into_iter()
            .filter(|q| q.run_ms <= limit && now.saturating_add(q.latency_ms) < cfb.deadline)
            .min_by_key(|q| (q.price_stroops, q.latency_ms, q.path));
        let delay = self.delay(slot);
        let reply = match best {
            Some(q) if !full && q.price_stroops <= cfb.max_price_stroops => {
                self.accept_job(slot, ix, attempt, q.path, q.price_stroops);
                Reply::Accepted {
                    est_latency_ms: q.latency_ms,
                }
            }
            _ => Reply::Rejected,
        };
        self.push(
            now + delay,
            Ev::Reply {
                task: ix,
                attempt,
                reply,
            },
        );
    }

    /// A device's answer reaches the dispatcher.
    pub(crate) fn on_reply(&mut self, ix: u32, attempt: u32, reply: Reply) {
        let now = self.now;
        let Some(t) = self.tasks.get_mut(&ix) else {
            return;
        };
        let Side::Baseline(b) = &mut t.side else {
            return;
        };
        if b.current.map(|c| c.attempt) != Some(attempt) {
            return;
        }
        match reply {
            Reply::Unreachable | Reply::Rejected => {
                b.current = None;
                self.redispatch(ix);
            }
            Reply::Accepted { est_latency_ms } => {
                let a = &self.cfg.auction;
                let allowance =
                    est_latency_ms.saturating_mul(u64::from(a.result_slack_percent)) / 100;
                let at = (now + allowance + a.result_grace_ms).min(t.deadline);
                t.timer_at = Some(at);
                self.push(at, Ev::Timer { task: ix, at });
            }
            Reply::Result { price, delivery } => {
                b.current = None;
                self.complete(ix, price, price, Some(delivery));
            }
        }
    }

    /// The current dispatch was not answered or not delivered in time.
    pub(crate) fn baseline_timer(&mut self, ix: u32) {
        let Some(t) = self.tasks.get_mut(&ix) else {
            return;
        };
        let Side::Baseline(b) = &mut t.side else {
            return;
        };
        if let Some(c) = b.current.take() {
            let delay = self.delay(c.slot);
            self.push(
                self.now + delay,
                Ev::Cancel {
                    task: ix,
                    slot: c.slot,
                    era: c.era,
                },
            );
        }
        self.redispatch(ix);
    }
}
