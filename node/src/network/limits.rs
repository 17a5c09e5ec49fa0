//! Per-peer limits on inbound requests: token-bucket rate limits per request kind, and fair
//! shares of the node's request-handler slots.
//!
//! Both are pure bookkeeping with the time passed in (the rate limiter) or no time at all
//! (the slots), so tests drive them directly; the event loop and the node's dispatcher apply
//! them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A token bucket: `burst` tokens, refilled at `per_sec` a second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst.max(1)),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let burst = f64::from(rate.burst.max(1));
        self.tokens = (self.tokens + elapsed * f64::from(rate.per_sec)).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again (so the peer's entry can be forgotten).
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(rate.per_sec) >= f64::from(rate.burst.max(1))
    }
}

/// One rate: a sustained number of requests a second and a burst above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests a second, sustained.
    pub per_sec: u32,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

/// Inbound request rates per peer, per kind of request (the `[network.rate_limits]` table).
///
/// The defaults leave an honest requester far more than it needs (a call for bids per task;
/// a few hundred model chunks a second) while a flood is cut to a trickle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Calls for bids: each makes the worker quote, sign and hold a bid.
    pub call_for_bids: Rate,
    /// Model chunk fetches.
    pub fetch_model: Rate,
    /// Advert requests (a peer needs one per connection).
    pub get_advert: Rate,
    /// Every other request.
    pub other: Rate,
    /// Refused requests that count as one offence towards the ban threshold.
    pub refusals_per_offence: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            call_for_bids: Rate {
                per_sec: 50,
                burst: 200,
            },
            fetch_model: Rate {
                per_sec: 500,
                burst: 1000,
            },
            get_advert: Rate {
                per_sec: 2,
                burst: 10,
            },
            other: Rate {
                per_sec: 100,
                burst: 400,
            },
            refusals_per_offence: 20,
        }
    }
}

impl RateLimits {
    /// The rate for a request kind (as [`crank_protocol::Request::kind`] names it).
    pub fn for_kind(&self, kind: &str) -> Rate {
        match kind {
            "call_for_bids" => self.call_for_bids,
            "fetch_model" => self.fetch_model,
            "get_advert" => self.get_advert,
            _ => self.other,
        }
    }
}

/// What the rate limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate.
    Allowed,
    /// Over the rate: answer with an error. `offence` is true when this refusal completes
    /// another [`RateLimits::refusals_per_offence`] refusals, to count against the peer.
    Refused {
        /// The rate the peer went over.
        rate: Rate,
        /// Whether to count an offence now.
        offence: bool,
    },
}

/// Token buckets per (peer, request kind).
#[derive(Debug)]
pub struct RateLimiter<P> {
    limits: RateLimits,
    buckets: HashMap<(P, &'static str), TokenBucket>,
    refusals: HashMap<P, u32>,
}

impl<P: Eq + Hash + Copy> RateLimiter<P> {
    /// A limiter with no history.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: HashMap::new(),
            refusals: HashMap::new(),
        }
    }

    /// Counts one request of `kind` from `peer`.
    pub fn check(&mut self, peer: P, kind: &'static str, now: Instant) -> RateVerdict {
        let rate = self.limits.for_kind(kind);
        let bucket = self
            .buckets
            .entry((peer, kind))
            .or_insert_with(|| TokenBucket::full(rate, now));
        if bucket.take(rate, now) {
            return RateVerdict::Allowed;
        }
        let n = self.refusals.entry(peer).or_insert(0);
        *n += 1;
        let every = self.limits.refusals_per_offence.max(1);
        RateVerdict::Refused {
            rate,
            offence: n.is_multiple_of(every),
        }
    }

    /// Forgets a peer (it disconnected): a full bucket is what a new peer gets anyway, and a
    /// partly drained one is kept so that reconnecting does not refill it.
    pub fn forget_idle(&mut self, now: Instant) {
        let limits = self.limits;
        self.buckets
            .retain(|(_, kind), b| !b.is_full(limits.for_kind(kind), now));
        let active: std::collections::HashSet<P> = self.buckets.keys().map(|(p, _)| *p).collect();
        self.refusals.retain(|p, _| active.contains(p));
    }

    /// Peers with state held (for bounds checks).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Why a request got no handler slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefusal {
    /// Every slot is taken.
    #[error("all {total} request handlers are busy; try later")]
    AllBusy {
        /// Slots in all.
        total: usize,
    },
    /// The peer holds its fair share of the slots while others wait.
    #[error(
        "this peer has {held} requests in progress, its fair share of the {total} request handlers with {peers} peers asking; wait for answers before sending more"
    )]
    OverShare {
        /// Slots the peer holds.
        held: usize,
        /// Slots in all.
        total: usize,
        /// Peers holding slots, this one included.
        peers: usize,
    },
}

#[derive(Debug)]
struct SlotState<P> {
    held: HashMap<P, usize>,
    in_use: usize,
}

/// Request-handler slots shared fairly between peers: one peer may hold at most
/// `max(min_share, total / peers holding slots)`, so that a peer sending hundreds of slow
/// requests leaves room for everyone else.
#[derive(Debug, Clone)]
pub struct FairSlots<P> {
    total: usize,
    min_share: usize,
    state: Arc<Mutex<SlotState<P>>>,
}

/// One slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SlotPermit<P: Eq + Hash> {
    peer: P,
    state: Arc<Mutex<SlotState<P>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The counts stay consistent even if a holder panicked mid-update: each update is one
    // statement.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: Eq + Hash + Copy> FairSlots<P> {
    /// `total` slots (at least 1); each peer is always allowed `min_share` of them.
    pub fn new(total: usize, min_share: usize) -> Self {
        Self {
            total: total.max(1),
            min_share: min_share.max(1),
            state: Arc::new(Mutex::new(SlotState {
                held: HashMap::new(),
                in_use: 0,
            })),
        }
    }

    /// Takes a slot for `peer`, or says why not.
    pub fn try_acquire(&self, peer: P) -> Result<SlotPermit<P>, SlotRefusal> {
        let mut s = locked(&self.state);
        if s.in_use >= self.total {
            return Err(SlotRefusal::AllBusy { total: self.total });
        }
        let held = s.held.get(&peer).copied().unwrap_or(0);
        let peers = s.held.len() + usize::from(held == 0);
        let share = (self.total / peers.max(1)).max(self.min_share);
        if held >= share {
            return Err(SlotRefusal::OverShare {
                held,
                total: self.total,
                peers,
            });
        }
        *s.held.entry(peer).or_insert(0) += 1;
        s.in_use += 1;
        Ok(SlotPermit {
            peer,
            state: self.state.clone(),
        })
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        locked(&self.state).in_use
    }

    /// Slots `peer` holds now.
    pub fn held_by(&self, peer: &P) -> usize {
        locked(&self.state).held.get(peer).copied().unwrap_or(0)
    }
}

impl<P: Eq + Hash> Drop for SlotPermit<P> {
    fn drop(&mut self) {
        let mut s = locked(&self.state);
        s.in_use = s.in_use.saturating_sub(1);
        if let Some(n) = s.held.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.held.remove(&self.peer);
            }
        }
    }
}

/// The newest advert sequence number seen from each node, so that a replayed or late copy is
/// dropped instead of being forwarded as news. Bounded: past `capacity` nodes, expired entries
/// go first, then the one that expires soonest.
#[derive(Debug)]
pub struct AdvertSeqs<N> {
    /// Node → (newest sequence number, its advert's expiry in Unix milliseconds).
    seqs: HashMap<N, (u64, u64)>,
    capacity: usize,
}

impl<N: Eq + Hash + Copy> AdvertSeqs<N> {
    /// An empty table of at most `capacity` nodes.
    pub fn new(capacity: usize) -> Self {
        Self {
            seqs: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Notes an advert; `Err(newest)` when its sequence number is not newer than `newest`.
    pub fn note(&mut self, node: N, seq: u64, expires_at: u64, now_ms: u64) -> Result<(), u64> {
        if let Some(&(have, _)) = self.seqs.get(&node)
            && seq <= have
        {
            return Err(have);
        }
        if self.seqs.len() >= self.capacity && !self.seqs.contains_key(&node) {
            self.seqs.retain(|_, (_, expires)| *expires > now_ms);
            if self.seqs.len() >= self.capacity
                && let Some(first) = self
                    .seqs
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(n, _)| *n)
            {
                self.seqs.remove(&first);
            }
        }
        self.seqs.insert(node, (seq, expires_at));
        Ok(())
    }

    /// Nodes remembered.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether no node is remembered.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate {
            per_sec: 10,
            burst: 5,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!((0..5).all(|_| b.take(rate, t0)));
        assert!(!b.take(rate, t0));
        // 100 ms later one token is back, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(rate, t1));
        assert!(!b.take(rate, t1));
        // A long pause refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(rate, t2)).count(), 5);
    }

    #[test]
    fn the_limiter_is_per_peer_and_per_kind_and_counts_offences() {
        let limits = RateLimits {
            call_for_bids: Rate {
                per_sec: 1,
                burst: 2,
            },
            refusals_per_offence: 3,
            ..RateLimits::default()
        };
        let mut l = RateLimiter::new(limits);
        let t = Instant::now();
        assert_eq!(l.check(1u8, "call_for_bids", t), RateVerdict::Allowed);
        assert_eq!(l.check(1u8, "call_for_bids", t), RateVerdict::Allowed);
        let offences: Vec<bool> = (0..6)
            .map(|_| match l.check(1u8, "call_for_bids", t) {
                RateVerdict::Refused { offence, rate } => {
                    assert_eq!(rate, limits.call_for_bids);
                    offence
                }
                RateVerdict::Allowed => panic!("over the burst"),
            })
            .collect();
        assert_eq!(offences, [false, false, true, false, false, true]);
        // Another kind from the same peer and the same kind from another peer still pass.
        assert_eq!(l.check(1u8, "fetch_model", t), RateVerdict::Allowed);
        assert_eq!(l.check(2u8, "call_for_bids", t), RateVerdict::Allowed);
        // Idle peers are forgotten once their buckets refill.
        assert_eq!(l.tracked(), 3);
        l.forget_idle(t);
        assert_eq!(l.tracked(), 3);
        l.forget_idle(t + Duration::from_secs(10));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn slots_are_shared_fairly_and_freed_on_drop() {
        let slots = FairSlots::new(8, 2);
        // Alone, a peer may take every slot.
        let mut a: Vec<_> = (0..8).map(|_| slots.try_acquire('a').unwrap()).collect();
        assert_eq!(
            slots.try_acquire('b').unwrap_err(),
            SlotRefusal::AllBusy { total: 8 }
        );
        // Once some free up, a newcomer gets in and the hog is held to its share.
        a.truncate(5);
        let b: Vec<_> = (0..3).map(|_| slots.try_acquire('b').unwrap()).collect();
        assert_eq!(slots.in_use(), 8);
        a.truncate(4);
        assert_eq!(
            slots.try_acquire('a').unwrap_err(),
            SlotRefusal::OverShare {
                held: 4,
                total: 8,
                peers: 2
            }
        );
        let b2 = slots.try_acquire('b').unwrap();
        assert_eq!(slots.held_by(&'b'), 4);
        // A third peer gets its minimum once a slot frees up.
        a.truncate(3);
        let c = slots.try_acquire('c').unwrap();
        drop((b, b2, c));
        assert_eq!(slots.held_by(&'b'), 0);
        assert_eq!(slots.in_use(), 3);
        drop(a);
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn only_newer_adverts_pass_and_the_table_stays_bounded() {
        let mut seqs = AdvertSeqs::new(2);
        assert_eq!(seqs.note('a', 5, 1_000, 0), Ok(()));
        assert_eq!(seqs.note('a', 5, 1_000, 0), Err(5), "a replay");
        assert_eq!(seqs.note('a', 4, 2_000, 0), Err(5), "an older advert");
        assert_eq!(seqs.note('a', 6, 1_500, 0), Ok(()));
        assert_eq!(seqs.note('b', 1, 3_000, 0), Ok(()));
        // Full: the entry expiring first makes room, and its node could replay again; the
        // advert table behind still refuses what is not newer than it holds.
        assert_eq!(seqs.note('c', 1, 4_000, 0), Ok(()));
        assert_eq!(seqs.len(), 2);
        assert_eq!(seqs.note('b', 1, 3_000, 0), Err(1));
        assert_eq!(seqs.note('a', 6, 1_500, 0), Ok(()));
        assert_eq!(seqs.len(), 2);
    }
}
