//! What every part of a running node shares: its identity, config, network client, stores,
//! ledger, metrics, the power gate and the table of other nodes' adverts. The worker side
//! (`worker`) and the requester side (`requester`) each own their own state beside it; the
//! runtime (`node`) routes between them. Neither side imports the other or the runtime.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crank_inference::device::{GateMonitor, GateSnapshot, GateState};
use crank_inference::{Engine, ModelStore};
use crank_payments::Ledger;
use crank_protocol::adverts::AdvertTable;
use crank_protocol::validate::Limits;
use crank_protocol::{CapabilityAdvert, GateReason, ModelId, NodeId, Signed};
use crank_scheduler::TrustBook;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::network::{self, Client};
use crate::plumbing::lock;
use crate::wallet::NodeWallet;

/// Most adverts of other nodes the node keeps.
pub(crate) const ADVERT_TABLE_CAPACITY: usize = 4096;

/// Meta key under which the trust book is persisted in the ledger.
pub(crate) const TRUST_KEY: &str = "trust-book";

/// State every part of a running node shares.
pub(crate) struct Core {
    /// The node key; signs protocol messages.
    pub identity: crank_protocol::Identity,
    /// Its public half.
    pub node_id: NodeId,
    /// The effective configuration.
    pub config: Config,
    /// Handle to the swarm's event loop.
    pub client: Client,
    /// Content-addressed models.
    pub store: Arc<ModelStore>,
    /// The inference engine.
    pub engine: Engine,
    /// The receipt ledger.
    pub ledger: Arc<Ledger>,
    /// Payout key and settlement.
    pub wallet: Arc<NodeWallet>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The power gate as the monitor last saw it.
    pub gate: watch::Receiver<GateSnapshot>,
    /// The power gate monitor (pause and resume).
    pub monitor: GateMonitor,
    /// The freshest advert of every other node.
    pub adverts: Mutex<AdvertTable>,
    /// Trust in workers, from our own evidence.
    pub trust: Mutex<TrustBook>,
    /// Our Stellar payout account.
    pub payout: String,
    /// Message limits.
    pub limits: Limits,
    /// When the node started.
    pub started: Instant,
    /// Bootstrap or ordinary node.
    pub role: network::Role,
    /// Addresses the swarm listens on.
    pub listen_addrs: Mutex<Vec<String>>,
    /// Woken when something in our advert may have changed.
    pub advert_changed: Notify,
    /// The owner's and submitter's policies, reloaded when their files change.
    pub policies: Arc<crank_policy::Watched>,
}

impl Core {
    pub fn gate_snapshot(&self) -> GateSnapshot {
        self.gate.borrow().clone()
    }

    /// The gate as this node sees it: the monitor's state, or closed as paused on a node
    /// that takes no work (requester-only or bootstrap).
    pub fn gate_state(&self) -> GateState {
        if !self.config.worker.enabled || self.role.bootstrap {
            return GateState::Closed(GateReason::Paused);
        }
        self.gate_snapshot().state
    }

    /// Why this node will not take work now, as peers are told (None when it will).
    pub fn gate_closed(&self) -> Option<GateReason> {
        self.gate_state().reason()
    }

    /// Persists the trust book (small; written after each change).
    pub fn save_trust(&self) {
        let bytes = match serde_json::to_vec(&*lock(&self.trust)) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode the trust book");
                return;
            }
        };
        if let Err(e) = self.ledger.put_meta(TRUST_KEY, &bytes) {
            warn!(error = %e, "cannot persist the trust book");
        }
    }

    /// Whether this node offers work at all: bootstrap nodes and requester-only nodes do
    /// not advertise, so requesters never ask them for bids.
    pub fn offers_work(&self) -> bool {
        self.config.worker.enabled && !self.role.bootstrap
    }

    /// Stores an advert in the table (already verified and validated by the network).
    pub fn accept_advert(&self, advert: Signed<CapabilityAdvert>) {
        if advert.body.node == self.node_id {
            return;
        }
        let node = advert.body.node;
        let addrs = advert.body.addrs.clone();
        let now = clock::now_ms();
        let mut table = lock(&self.adverts);
        // Full: make room by our own history with the nodes, so that fresh identities with
        // long-lived adverts cannot push out peers we have worked with.
        if table.len() >= ADVERT_TABLE_CAPACITY
            && table.get(&node, now).is_none()
            && crank_protocol::validate::advert(&advert, now, &self.limits).is_ok()
            && table.prune(now) == 0
        {
            let stored: Vec<(NodeId, u64)> =
                table.fresh(now).map(|a| (a.node, a.expires_at)).collect();
            let room = lock(&self.trust).advert_room(stored.iter().map(|(n, e)| (n, *e)), &node);
            match room {
                crank_scheduler::AdvertRoom::Evict(victim) => {
                    table.remove(&victim);
                }
                crank_scheduler::AdvertRoom::RefuseNewcomer => {
                    debug!(peer = %node.short(), "advert not stored: the table is full of peers with history");
                    return;
                }
            }
        }
        match table.insert(advert, now) {
            Ok(_) => {
                debug!(peer = %node.short(), "advert stored");
                self.client.add_peer_addresses(&node, &addrs);
            }
            Err(e) => debug!(peer = %node.short(), reason = %e, "advert not stored"),
        }
    }

    /// Adds a model to the store and announces it.
    pub async fn add_model(&self, bytes: &[u8]) -> Result<ModelId, crank_inference::StoreError> {
        let had = self.store.list().len();
        let id = self.store.put(bytes)?;
        // Provider records say "ask me to run it": only nodes that take work announce.
        if self.store.list().len() != had && self.offers_work() {
            if let Err(e) = self.client.provide(id.provider_key()).await {
                warn!(error = %e, "cannot announce the model");
            }
            self.advert_changed.notify_one();
        }
        Ok(id)
    }
}
