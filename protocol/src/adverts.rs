//! A bounded table of the freshest verified advert per node.
//!
//! Pure state: the caller passes the time. An advert replaces the stored one only if its
//! sequence number is higher, so a replayed or reordered old advert can never roll a node's
//! state back.

use std::collections::BTreeMap;

use crate::UnixMillis;
use crate::ids::NodeId;
use crate::messages::CapabilityAdvert;
use crate::sign::Signed;
use crate::validate::{self, Limits, ValidationError};

/// Why an advert was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// It failed verification or validation.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A newer or equal sequence number is already stored.
    #[error("stale advert: sequence {got} is not newer than the stored {have}")]
    Stale {
        /// Stored sequence number.
        have: u64,
        /// Received sequence number.
        got: u64,
    },
}

/// What inserting an advert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// First advert from this node.
    New,
    /// Replaced an older advert.
    Updated,
}

/// The freshest advert per node, at most `capacity` nodes.
#[derive(Debug, Clone)]
pub struct AdvertTable {
    by_node: BTreeMap<NodeId, Signed<CapabilityAdvert>>,
    capacity: usize,
    limits: Limits,
}

impl AdvertTable {
    /// An empty table holding at most `capacity` nodes.
    pub fn new(capacity: usize, limits: Limits) -> Self {
        Self {
            by_node: BTreeMap::new(),
            capacity: capacity.max(1),
            limits,
        }
    }

    /// Verifies, validates and stores an advert if it is newer than what is stored.
    pub fn insert(
        &mut self,
        advert: Signed<CapabilityAdvert>,
        now: UnixMillis,
    ) -> Result<Inserted, AdvertError> {
        validate::advert(&advert, now, &self.limits)?;
        let node = advert.body.node;
        if let Some(have) = self.by_node.get(&node) {
            if advert.body.seq <= have.body.seq {
                return Err(AdvertError::Stale {
                    have: have.body.seq,
                    got: advert.body.seq,
                });
            }
            self.by_node.insert(node, advert);
            return Ok(Inserted::Updated);
        }
        if self.by_node.len() >= self.capacity {
            self.prune(now);
        }
        if self.by_node.len() >= self.capacity {
            // Still full: drop the advert that expires first.
            let victim = self
                .by_node
                .iter()
                .min_by_key(|(_, a)| a.body.expires_at)
                .map(|(id, _)| *id);
            if let Some(id) = victim {
                self.by_node.remove(&id);
            }
        }
        self.by_node.insert(node, advert);
        Ok(Inserted::New)
    }

    /// Removes expired adverts; returns how many.
    pub fn prune(&mut self, now: UnixMillis) -> usize {
        let before = self.by_node.len();
        self.by_node.retain(|_, a| a.body.expires_at > now);
        // `retain` only removes, so this never saturates.
        before.saturating_sub(self.by_node.len())
    }

    /// Removes a node's advert (it left the mesh).
    pub fn remove(&mut self, node: &NodeId) -> Option<Signed<CapabilityAdvert>> {
        self.by_node.remove(node)
    }

    /// The advert of one node, if fresh.
    pub fn get(&self, node: &NodeId, now: UnixMillis) -> Option<&CapabilityAdvert> {
        self.by_node
            .get(node)
            .map(|s| &s.body)
            .filter(|a| a.expires_at > now)
    }

    /// All fresh adverts.
    pub fn fresh(&self, now: UnixMillis) -> impl Iterator<Item = &CapabilityAdvert> {
        self.by_node
            .values()
            .map(|s| &s.body)
            .filter(move |a| a.expires_at > now)
    }

    /// Number of stored adverts (fresh or not yet pruned).
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}
