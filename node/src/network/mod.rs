//! The libp2p side of the node: the only module that knows libp2p types.
//!
//! [`new`] builds the swarm and returns three parts, following rust-libp2p's file-sharing
//! example: a cloneable [`Client`] that sends commands, a bounded receiver of
//! [`NetworkEvent`]s (domain events: adverts, inbound requests, peers), and the
//! [`EventLoop`] that owns the `Swarm` and must be spawned. The rest of the node never sees a
//! `SwarmEvent`, a `PeerId` or a `Multiaddr`; it speaks [`NodeId`]s and strings.
//!
//! Every message from the network is size-limited (codec), decoded, signature-checked and
//! validated here or in the node before anything acts on it. A peer that keeps sending bad
//! messages is blocked for a while.

mod behaviour;
mod codec;
mod event_loop;
pub mod limits;
mod nat;
pub mod per_ip;

use std::collections::BTreeMap;
use std::time::Duration;

use crank_protocol::{CapabilityAdvert, Identity, NodeId, Request, Response, Signed};
use libp2p::identity::{self, PublicKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use event_loop::EventLoop;
pub use limits::{FairSlots, Rate, RateLimits, SlotPermit, SlotRefusal};

use crate::metrics::Metrics;

/// How the node takes part in the Kademlia DHT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KadMode {
    /// Serve DHT queries once an external address is confirmed (libp2p's default).
    #[default]
    Auto,
    /// Always serve DHT queries (bootstrap nodes, LAN and loopback meshes).
    Server,
    /// Never serve DHT queries (phones, battery devices).
    Client,
}

/// When a node reserves a slot on relay nodes so that peers can reach it through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayClientMode {
    /// Reserve unless AutoNAT says the node is publicly reachable (so also before it knows).
    #[default]
    Auto,
    /// Always reserve (a device known to sit behind NAT, e.g. a phone on a mobile network).
    Always,
    /// Never reserve (a public server, or a node that must not be reached through relays).
    Never,
}

/// Whether others can dial this node directly, as AutoNAT last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// A peer dialed us back at an address we announced.
    Public,
    /// Peers tried to dial us back and could not (behind NAT or a firewall).
    Private,
    /// Not known yet (no probe answered, or no peer to ask).
    #[default]
    Unknown,
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Unknown => "unknown",
        })
    }
}

/// Network settings (the `[network]` table of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Addresses to listen on (multiaddrs). Port 0 picks a free port.
    pub listen: Vec<String>,
    /// Bootstrap peers to dial first (multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Kademlia mode.
    pub kad_mode: KadMode,
    /// Whole request/response exchange timeout, seconds.
    pub request_timeout_secs: u64,
    /// Close connections idle for this long, seconds.
    pub idle_connection_timeout_secs: u64,
    /// Most established connections in all.
    pub max_connections: u32,
    /// Most established connections per peer.
    pub max_connections_per_peer: u32,
    /// Most inbound connections (pending and established) from one IPv4 address or one
    /// IPv6 /64: peer ids are free to mint, addresses are not.
    pub max_connections_per_ip: u32,
    /// Whether the per-IP limit and IP blocks apply to loopback addresses too. Off by
    /// default: on a real network they are the operator's own processes.
    pub limit_loopback: bool,
    /// Refuse new connections while this process uses more than this share of the
    /// machine's physical memory, percent (1..=100).
    pub max_memory_percent: u8,
    /// Refuse new connections while this process uses more than this many bytes of
    /// physical memory; 0 uses `max_memory_percent` instead.
    pub max_memory_bytes: u64,
    /// Inbound requests handled at once, from all peers together; more are answered "busy".
    pub inbound_handlers: usize,
    /// Handlers one peer may always hold; beyond it, a peer gets at most
    /// `inbound_handlers / peers with requests in progress`.
    pub inbound_handlers_min_share: usize,
    /// Inbound request rates per peer and request kind.
    pub rate_limits: RateLimits,
    /// Banned identities seen at one address before the address itself is blocked for
    /// `ban_secs` (0 never blocks addresses).
    pub ip_ban_after_peers: u32,
    /// Gossipsub heartbeat, milliseconds.
    pub gossip_heartbeat_ms: u64,
    /// Offences (malformed or badly signed messages) before a peer is blocked.
    pub ban_threshold: u32,
    /// How long a blocked peer stays blocked, seconds.
    pub ban_secs: u64,
    /// First retry delay for an unanswered bootstrap peer, seconds (doubles up to 60 s).
    pub bootstrap_retry_secs: u64,
    /// Relay server limits (bootstrap nodes only).
    pub relay: crank_bootstrap::RelayLimits,
    /// Addresses others can reach this node at, as its operator knows them (a public VM, a
    /// forwarded port). Announced to peers at once and put in relay reservations; bootstrap
    /// nodes need one unless AutoNAT confirms an address first.
    pub external_addresses: Vec<String>,
    /// When to reserve a slot on relay nodes: auto (unless known to be publicly reachable),
    /// always, never.
    pub relay_client: RelayClientMode,
    /// Relays to hold a reservation on at once (each is a way in for peers).
    pub max_relay_reservations: usize,
    /// How long a request to a peer reached only through a relay waits for a hole punch in
    /// flight, milliseconds, before it goes over the relay.
    pub hole_punch_wait_ms: u64,
    /// AutoNAT: count only publicly routable addresses as reachable. Turn off on a LAN or a
    /// test network where every address is private.
    pub autonat_only_global_ips: bool,
    /// AutoNAT: first probe this long after start, seconds.
    pub autonat_boot_delay_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
            ],
            bootstrap: crank_bootstrap::DEFAULT_PEERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            kad_mode: KadMode::Auto,
            request_timeout_secs: 30,
            idle_connection_timeout_secs: 300,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_connections_per_ip: 16,
            limit_loopback: false,
            max_memory_percent: 80,
            max_memory_bytes: 0,
            inbound_handlers: 512,
            inbound_handlers_min_share: 8,
            rate_limits: RateLimits::default(),
            ip_ban_after_peers: 3,
            gossip_heartbeat_ms: 1000,
            ban_threshold: 5,
            ban_secs: 600,
            bootstrap_retry_secs: 1,
            relay: crank_bootstrap::RelayLimits::default(),
            external_addresses: Vec::new(),
            relay_client: RelayClientMode::Auto,
            max_relay_reservations: 2,
            hole_punch_wait_ms: 1000,
            autonat_only_global_ips: true,
            autonat_boot_delay_secs: 3,
        }
    }
}

/// Why the network could not be set up or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// An address in the config or on the command line does not parse.
    #[error("`{addr}` is not a valid multiaddr: {reason}")]
    BadAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bootstrap address lacks the `/p2p/<peer id>` suffix.
    #[error(
        "bootstrap address `{0}` must end in /p2p/<peer id> (the bootstrap node prints its full address at start)"
    )]
    MissingPeerId(String),
    /// Building the transport or a behaviour failed.
    #[error("cannot set up the network: {0}")]
    Setup(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The relay limits in the config cannot be used.
    #[error("[network.relay]: {0}")]
    RelayLimits(#[from] crank_bootstrap::RelayLimitsError),
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
}

/// Why an outbound request got no usable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No connection could be made to the peer.
    #[error("could not reach the peer")]
    Unreachable,
    /// No response in time.
    #[error("the peer did not answer in time")]
    Timeout,
    /// The connection closed before the response.
    #[error("the connection closed before the answer")]
    ConnectionClosed,
    /// The peer does not speak the task protocol.
    #[error("the peer does not speak the crank task protocol")]
    Unsupported,
    /// The response was oversize or malformed.
    #[error("the peer sent a bad response: {0}")]
    BadResponse(String),
    /// The request cannot cross the relay, the only way to the peer: it is larger than the
    /// relay's per-circuit byte limit.
    #[error(
        "the request is {frame_bytes} bytes but the relay {relay} lets a relayed connection carry at most {limit_bytes} bytes, and no direct connection to the peer exists (hole punch: {punch})"
    )]
    RelayLimit {
        /// Size of the encoded request frame.
        frame_bytes: u64,
        /// The relay's circuit byte limit.
        limit_bytes: u64,
        /// The relay's peer id.
        relay: String,
        /// What became of the hole punch.
        punch: String,
    },
    /// The relayed connection carrying the request closed before the answer, as a relay does
    /// when a circuit reaches its byte or time limit.
    #[error(
        "the relayed connection closed before the answer ({reason}); the relay's circuit limits are {limits}"
    )]
    RelayClosed {
        /// Why the connection closed, as libp2p reports it.
        reason: String,
        /// The circuit limits the relay announced.
        limits: String,
    },
    /// Any other transport failure.
    #[error("transport error: {0}")]
    Io(String),
    /// The node id is not a valid key, or the event loop stopped.
    #[error("{0}")]
    Local(String),
}

/// Answers one inbound request. Dropping it unanswered sends the peer an internal error.
#[derive(Debug)]
pub struct Responder {
    tx: oneshot::Sender<Response>,
}

impl Responder {
    /// Sends the response.
    pub fn send(self, response: Response) {
        // The receiver is gone only if the event loop stopped; nothing to do then.
        let _ = self.tx.send(response);
    }
}

/// What the network tells the rest of the node.
#[derive(Debug)]
pub enum NetworkEvent {
    /// A listen address became active.
    Listening {
        /// The address (with `/p2p/<peer id>`).
        addr: String,
    },
    /// First connection to a peer.
    PeerConnected {
        /// The peer.
        node: NodeId,
    },
    /// Last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        node: NodeId,
    },
    /// A peer told us what it speaks.
    PeerIdentified {
        /// The peer.
        node: NodeId,
        /// Whether it speaks the task protocol.
        speaks_crank: bool,
    },
    /// A verified, validated advert arrived by gossip.
    Advert(Box<Signed<CapabilityAdvert>>),
    /// A decoded request from a peer; answer through the responder.
    InboundRequest {
        /// Who asked.
        peer: NodeId,
        /// The request (decoded, not yet verified or validated).
        request: Box<Request>,
        /// Where the answer goes.
        responder: Responder,
    },
}

/// One connected peer, for the status view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's node id.
    pub node: NodeId,
    /// The libp2p peer id.
    pub peer_id: String,
    /// Remote address of the first connection.
    pub addr: String,
    /// Whether every connection to the peer goes through a relay (no direct connection).
    pub relayed: bool,
    /// Software the peer reports (after identify).
    pub agent: Option<String>,
    /// Open connections to the peer (direct and relayed).
    #[serde(default)]
    pub connections: usize,
    /// The relay in use when `relayed` (its peer id).
    #[serde(default)]
    pub via_relay: Option<String>,
    /// The latest hole punch with this peer: "in progress", "direct after N ms" or "failed: …".
    #[serde(default)]
    pub hole_punch: Option<String>,
}

/// One reservation this node holds (or asked for) on a relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationStatus {
    /// The relay's peer id.
    pub relay: String,
    /// The address peers reach us at through it (`…/p2p-circuit/p2p/<us>`).
    pub addr: String,
    /// Whether the relay accepted it (false while the request is in flight).
    pub accepted: bool,
    /// Milliseconds from node start to the first acceptance.
    pub accepted_after_ms: Option<u64>,
    /// Times the reservation was renewed.
    pub renewals: u32,
    /// Bytes one relayed connection may carry, as the relay announced.
    pub limit_bytes: Option<u64>,
    /// Seconds one relayed connection may last, as the relay announced.
    pub limit_secs: Option<u64>,
}

/// Hole punching (DCUtR) outcomes since start.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct HolePunchStats {
    /// Punches that ended in a direct connection.
    pub succeeded: u32,
    /// Punches that failed (the peers stay on the relay).
    pub failed: u32,
}

/// The relay server of a bootstrap node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayServerStatus {
    /// Whether it serves (libp2p turns it on only once the node has a confirmed external
    /// address, so that reservations carry an address peers can dial).
    pub enabled: bool,
    /// Reservations held by peers now.
    pub reservations: usize,
    /// Relayed connections open now.
    pub circuits: usize,
    /// Reservations and circuits refused since start (over a limit, or no reservation).
    pub denied: u64,
}

/// State of one configured bootstrap peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapStatus {
    /// The address as configured.
    pub addr: String,
    /// Whether we are connected to it now.
    pub connected: bool,
    /// Dial attempts so far.
    pub attempts: u32,
    /// The last dial error, if any.
    pub last_error: Option<String>,
}

/// A snapshot of the network for `crank-node status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Our libp2p peer id.
    pub peer_id: String,
    /// Addresses we listen on (with `/p2p/<peer id>`).
    pub listen_addrs: Vec<String>,
    /// Addresses others confirmed reach us.
    pub external_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Peers in the Kademlia routing table.
    pub routing_table: usize,
    /// Kademlia mode in effect.
    pub kad_mode: String,
    /// Configured bootstrap peers.
    pub bootstrap: Vec<BootstrapStatus>,
    /// Peers blocked for misbehaviour.
    pub blocked: Vec<String>,
    /// Whether peers can dial us directly, as AutoNAT last found.
    #[serde(default)]
    pub reachability: Reachability,
    /// Milliseconds from node start to AutoNAT's latest verdict (none while unknown from the start).
    #[serde(default)]
    pub reachability_after_ms: Option<u64>,
    /// Our relay reservations.
    #[serde(default)]
    pub relay_reservations: Vec<ReservationStatus>,
    /// Hole punching outcomes.
    #[serde(default)]
    pub hole_punch: HolePunchStats,
    /// The relay server, on bootstrap nodes.
    #[serde(default)]
    pub relay_server: Option<RelayServerStatus>,
}

#[derive(Debug)]
enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Request {
        peer: PeerId,
        request: Box<Request>,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Publish {
        advert: Box<Signed<CapabilityAdvert>>,
    },
    Provide {
        key: Vec<u8>,
    },
    GetProviders {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    Status {
        reply: oneshot::Sender<NetworkStatus>,
    },
    Penalize {
        peer: PeerId,
        reason: String,
    },
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
}

/// A cheap, cloneable handle for sending commands to the event loop.
#[derive(Debug, Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
}

impl Client {
    async fn send(&self, cmd: Command) -> Result<(), NetworkError> {
        self.tx.send(cmd).await.map_err(|_| NetworkError::Stopped)
    }

    /// Dials an address (e.g. a bootstrap peer given on the command line).
    pub async fn dial(&self, addr: &str) -> Result<(), NetworkError> {
        let addr = parse_addr(addr)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Dial {
            addr: addr.clone(),
            reply,
        })
        .await?;
        rx.await
            .map_err(|_| NetworkError::Stopped)?
            .map_err(|reason| NetworkError::BadAddress {
                addr: addr.to_string(),
                reason,
            })
    }

    /// Sends a request to a peer and waits for its response.
    pub async fn request(&self, peer: &NodeId, request: Request) -> Result<Response, RequestError> {
        let peer = peer_id_of(peer).map_err(RequestError::Local)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request: Box::new(request),
            reply,
        })
        .await
        .map_err(|e| RequestError::Local(e.to_string()))?;
        rx.await
            .map_err(|_| RequestError::Local("the network event loop has stopped".into()))?
    }

    /// Publishes our advert on gossipsub.
    pub async fn publish_advert(
        &self,
        advert: Signed<CapabilityAdvert>,
    ) -> Result<(), NetworkError> {
        self.send(Command::Publish {
            advert: Box::new(advert),
        })
        .await
    }

    /// Registers a Kademlia provider record for `key`.
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.send(Command::Provide { key }).await
    }

    /// Finds providers of `key` in the DHT.
    pub async fn providers(&self, key: Vec<u8>) -> Result<Vec<NodeId>, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::GetProviders { key, reply }).await?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// A snapshot of the network state.
    pub async fn status(&self) -> Result<NetworkStatus, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Remembers addresses a peer advertised, so requests to it can dial it. Addresses that
    /// do not parse are skipped; if the command queue is full the hint is dropped.
    pub fn add_peer_addresses(&self, peer: &NodeId, addrs: &[String]) {
        let Ok(peer) = peer_id_of(peer) else { return };
        let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        if !addrs.is_empty() {
            let _ = self.tx.try_send(Command::AddAddresses { peer, addrs });
        }
    }

    /// Counts an offence against a peer (a message that failed verification or validation).
    pub async fn penalize(&self, peer: &NodeId, reason: impl Into<String>) {
        if let Ok(peer) = peer_id_of(peer) {
            let _ = self
                .send(Command::Penalize {
                    peer,
                    reason: reason.into(),
                })
                .await;
        }
    }
}

/// The libp2p peer id of a node id (its ed25519 public key).
pub fn peer_id_of(node: &NodeId) -> Result<PeerId, String> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(&node.0)
        .map_err(|e| format!("node id {} is not an ed25519 key: {e}", node.short()))?;
    Ok(PeerId::from_public_key(&PublicKey::from(pk)))
}

/// The node id of a peer id, when the peer uses an inlined ed25519 key (every crank node).
pub fn node_id_of(peer: &PeerId) -> Option<NodeId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(NodeId(ed.to_bytes()))
}

/// The peer id string of a node id, for display.
pub fn peer_id_string(node: &NodeId) -> String {
    peer_id_of(node)
        .map(|p| p.to_string())
        .unwrap_or_else(|e| e)
}

fn parse_addr(s: &str) -> Result<Multiaddr, NetworkError> {
    s.trim()
        .parse::<Multiaddr>()
        .map_err(|e| NetworkError::BadAddress {
            addr: s.to_string(),
            reason: e.to_string(),
        })
}

/// Parses and checks a bootstrap address (must name the peer).
pub fn parse_bootstrap(s: &str) -> Result<(), NetworkError> {
    bootstrap_peer(s).map(|_| ())
}

fn bootstrap_peer(s: &str) -> Result<(PeerId, Multiaddr), NetworkError> {
    let addr = parse_addr(s)?;
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok((peer, addr)),
        _ => Err(NetworkError::MissingPeerId(s.to_string())),
    }
}

/// Role-specific settings for the swarm.
#[derive(Debug, Clone, Default)]
pub struct Role {
    /// A bootstrap node: DHT server, reachable first.
    pub bootstrap: bool,
}

/// Builds the swarm, starts listening and returns the client, the event stream and the loop.
pub fn new(
    identity: &Identity,
    config: &NetworkConfig,
    role: Role,
    metrics: Metrics,
) -> Result<(Client, mpsc::Receiver<NetworkEvent>, EventLoop), NetworkError> {
    let keypair = identity::Keypair::ed25519_from_bytes(identity.secret_bytes())
        .map_err(|e| NetworkError::Setup(e.to_string()))?;
    let mut bootstrap = BTreeMap::new();
    for s in &config.bootstrap {
        let (peer, addr) = bootstrap_peer(s)?;
        bootstrap.insert(peer, (s.clone(), addr));
    }
    let listen: Vec<Multiaddr> = config
        .listen
        .iter()
        .map(|s| parse_addr(s))
        .collect::<Result<_, _>>()?;
    if role.bootstrap {
        config.relay.check()?;
    }
    let external: Vec<Multiaddr> = config
        .external_addresses
        .iter()
        .map(|s| parse_addr(s))
        .collect::<Result<_, _>>()?;
    let swarm = behaviour::build_swarm(keypair, config, &role)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (event_tx, event_rx) = mpsc::channel(1024);
    let mut event_loop = EventLoop::new(
        swarm,
        event_loop::Channels {
            commands: cmd_rx,
            events: event_tx,
        },
        config.clone(),
        role,
        bootstrap,
        metrics,
    );
    for addr in listen {
        event_loop.listen(addr)?;
    }
    for addr in external {
        event_loop.add_external_address(addr);
    }
    Ok((Client { tx: cmd_tx }, event_rx, event_loop))
}

/// Request timeout as a `Duration`.
fn secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_and_peer_ids_convert_both_ways() {
        let id = Identity::from_secret([7; 32]);
        let peer = peer_id_of(&id.node_id()).unwrap();
        assert_eq!(node_id_of(&peer), Some(id.node_id()));
        let kp = identity::Keypair::ed25519_from_bytes(id.secret_bytes()).unwrap();
        assert_eq!(kp.public().to_peer_id(), peer);
    }

    #[test]
    fn bootstrap_addresses_must_name_the_peer() {
        assert!(matches!(
            parse_bootstrap("/ip4/127.0.0.1/tcp/4001"),
            Err(NetworkError::MissingPeerId(_))
        ));
        assert!(matches!(
            parse_bootstrap("not an address"),
            Err(NetworkError::BadAddress { .. })
        ));
        let peer = peer_id_of(&Identity::from_secret([1; 32]).node_id()).unwrap();
        assert!(parse_bootstrap(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")).is_ok());
    }
}
