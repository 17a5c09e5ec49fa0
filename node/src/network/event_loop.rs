//! The event loop: owns the swarm, turns swarm events into domain events and commands into
//! swarm calls.
//!
//! Besides routing, it gets nodes through NAT: it follows AutoNAT's verdict on reachability,
//! keeps Kademlia in client mode until the node is directly reachable, reserves slots on relay
//! nodes while it is not, reaches peers it has no address for through the relays it uses,
//! and lets requests to a peer reached only through a relay wait briefly for the hole punch
//! (DCUtR) so that task payloads go over the direct connection when there is one.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crank_protocol::codec::{self, MAX_ADVERT_FRAME};
use crank_protocol::validate::{self, Limits};
use crank_protocol::{CapabilityAdvert, ErrorCode, NodeId, Request, Response, Signed};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, kad, relay};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, trace, warn};

use super::behaviour::{ADVERT_TOPIC, Behaviour, BehaviourEvent, KAD_PROTOCOL};
use super::codec::{Frame, TASK_PROTOCOL};
use super::limits::{AdvertSeqs, RateLimiter, RateVerdict};
use super::nat::{self, CircuitLimit, Punch, PunchOutcome};
use super::per_ip::{IpKey, source_ip};
use super::{
    BootstrapStatus, Command, HolePunchStats, KadMode, NetworkConfig, NetworkError, NetworkEvent,
    NetworkStatus, PeerStatus, Reachability, RelayClientMode, RelayServerStatus, RequestError,
    ReservationStatus, Responder, Role, node_id_of,
};
use crate::metrics::Metrics;

type PendingReply = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    PeerId,
                    ConnectionId,
                    Result<Response, oneshot::error::RecvError>,
                    ResponseChannel<Frame<Response>>,
                ),
            > + Send,
    >,
>;

/// The loop's two channels to the rest of the node.
pub(super) struct Channels {
    /// Commands from [`super::Client`]s.
    pub commands: mpsc::Receiver<Command>,
    /// Domain events to the node.
    pub events: mpsc::Sender<NetworkEvent>,
}

struct Bootstrap {
    text: String,
    addr: Multiaddr,
    attempts: u32,
    next_attempt: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

/// One established connection.
struct Conn {
    peer: PeerId,
    addr: Multiaddr,
    relayed: bool,
    relay: Option<PeerId>,
    limit: Option<CircuitLimit>,
    opened: Instant,
    /// We asked libp2p to close it (a direct connection took over).
    closing: bool,
}

/// What we know about a connected peer beyond its connections.
#[derive(Default)]
struct Peer {
    agent: Option<String>,
    punch: Option<Punch>,
}

/// A request waiting for a better path to its peer.
struct Held {
    request: Box<Request>,
    reply: oneshot::Sender<Result<Response, RequestError>>,
    since: Instant,
}

/// A request on the wire.
struct Pending {
    peer: PeerId,
    reply: oneshot::Sender<Result<Response, RequestError>>,
}

/// Requests in flight with one peer, both ways; a relayed connection is closed only when none is.
#[derive(Default, Clone, Copy)]
struct InFlight {
    outbound: u32,
    inbound: u32,
}

/// Our reservation on one relay.
struct Reservation {
    listener: ListenerId,
    addr: Multiaddr,
    accepted: bool,
    accepted_after: Option<Duration>,
    renewals: u32,
    limit: Option<CircuitLimit>,
}

/// A relayed connection that closed, remembered briefly to explain failed requests.
struct ClosedCircuit {
    at: Instant,
    reason: String,
    limit: Option<CircuitLimit>,
}

/// Most requests held for one peer; beyond this they go out at once.
const MAX_HELD_PER_PEER: usize = 64;
/// A relayed connection is closed once a direct one has been up this long and nothing is in flight.
const RELAYED_CLOSE_GRACE: Duration = Duration::from_millis(200);
/// How long a closed circuit is remembered.
const CLOSED_CIRCUIT_MEMORY: Duration = Duration::from_secs(60);
/// First retry after a refused or lost reservation (doubles up to a minute).
const RESERVATION_RETRY: Duration = Duration::from_secs(2);
/// Direct dials DCUtR makes before it gives up (libp2p-dcutr's `MAX_NUMBER_OF_UPGRADE_ATTEMPTS`).
const PUNCH_ATTEMPTS: u32 = 3;
/// A hole punch with no direct connection after this long has failed. DCUtR reports failures
/// only on the side that accepted the relayed connection; the other side learns it this way.
const PUNCH_GIVE_UP: Duration = Duration::from_secs(10);

/// Nodes whose newest advert sequence number the loop remembers, to drop replays; about
/// twice the node's advert table.
const MAX_ADVERT_SEQS: usize = 8192;

/// Why a gossiped advert was not accepted.
enum AdvertRefusal {
    /// It expired before it arrived: not forwarded, and not held against the relaying peer.
    Expired,
    /// Its sequence number is not newer than one already seen from its node: a replay or a
    /// late copy. Not forwarded; not held against the relaying peer, which may simply be
    /// slower than another.
    Stale {
        /// Newest sequence number seen.
        have: u64,
        /// The advert's.
        got: u64,
    },
    /// It is malformed, badly signed or breaks a limit: the relaying peer is penalised.
    Invalid(String),
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    config: NetworkConfig,
    role: Role,
    limits: Limits,
    metrics: Metrics,
    started: Instant,
    pending_requests: HashMap<OutboundRequestId, Pending>,
    pending_providers: HashMap<kad::QueryId, (oneshot::Sender<Vec<NodeId>>, HashSet<NodeId>)>,
    pending_replies: FuturesUnordered<PendingReply>,
    bootstrap: BTreeMap<PeerId, Bootstrap>,
    all_bootstrap_failed_warned: Option<Instant>,
    conns: HashMap<ConnectionId, Conn>,
    peers: HashMap<PeerId, Peer>,
    held: HashMap<PeerId, VecDeque<Held>>,
    in_flight: HashMap<PeerId, InFlight>,
    offences: HashMap<PeerId, u32>,
    banned: HashMap<PeerId, Instant>,
    pending_bans: Vec<(PeerId, Instant)>,
    /// Banned identities seen at each address; enough of them block the address.
    banned_at: HashMap<IpKey, (std::net::IpAddr, HashSet<PeerId>)>,
    /// Inbound request rates per peer and request kind.
    rates: RateLimiter<PeerId>,
    /// Newest advert sequence number per node, from gossip.
    advert_seqs: AdvertSeqs<NodeId>,
    listen_addrs: Vec<Multiaddr>,
    /// Every listen address ever reported to the node.
    announced_listen: HashSet<Multiaddr>,
    reachability: Reachability,
    reachability_since: Option<Duration>,
    /// Connected relay servers and the address we dialed each at.
    relays: BTreeMap<PeerId, Multiaddr>,
    reservations: BTreeMap<PeerId, Reservation>,
    reservation_retry: HashMap<PeerId, (Instant, Duration)>,
    /// Limits announced for circuits through a relay (outbound) or from a peer (inbound).
    relay_limits: HashMap<PeerId, CircuitLimit>,
    inbound_limits: HashMap<PeerId, CircuitLimit>,
    closed_circuits: HashMap<ConnectionId, ClosedCircuit>,
    punches: HolePunchStats,
    relay_server: RelayServerStatus,
    last_slow_tick: Instant,
    /// Our latest advert when it found no subscribed peer (a node just started), with its
    /// expiry: it goes out as soon as a first peer subscribes instead of an interval later.
    unpublished_advert: Option<(Vec<u8>, u64)>,
}

impl EventLoop {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        channels: Channels,
        config: NetworkConfig,
        role: Role,
        bootstrap: BTreeMap<PeerId, (String, Multiaddr)>,
        metrics: Metrics,
    ) -> Self {
        let now = Instant::now();
        let retry = Duration::from_secs(config.bootstrap_retry_secs.max(1));
        let bootstrap = bootstrap
            .into_iter()
            .map(|(peer, (text, addr))| {
                (
                    peer,
                    Bootstrap {
                        text,
                        addr,
                        attempts: 0,
                        next_attempt: now,
                        backoff: retry,
                        last_error: None,
                    },
                )
            })
            .collect();
        let relay_server = RelayServerStatus::default();
        let rates = RateLimiter::new(config.rate_limits);
        Self {
            swarm,
            commands: channels.commands,
            events: channels.events,
            config,
            role,
            limits: Limits::default(),
            metrics,
            started: now,
            pending_requests: HashMap::new(),
            pending_providers: HashMap::new(),
            pending_replies: FuturesUnordered::new(),
            bootstrap,
            all_bootstrap_failed_warned: None,
            conns: HashMap::new(),
            peers: HashMap::new(),
            held: HashMap::new(),
            in_flight: HashMap::new(),
            offences: HashMap::new(),
            banned: HashMap::new(),
            pending_bans: Vec::new(),
            banned_at: HashMap::new(),
            rates,
            advert_seqs: AdvertSeqs::new(MAX_ADVERT_SEQS),
            listen_addrs: Vec::new(),
            announced_listen: HashSet::new(),
            reachability: Reachability::Unknown,
            reachability_since: None,
            relays: BTreeMap::new(),
            reservations: BTreeMap::new(),
            reservation_retry: HashMap::new(),
            relay_limits: HashMap::new(),
            inbound_limits: HashMap::new(),
            closed_circuits: HashMap::new(),
            punches: HolePunchStats::default(),
            relay_server,
            last_slow_tick: now,
            unpublished_advert: None,
        }
    }

    pub(super) fn listen(&mut self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.swarm
            .listen_on(addr.clone())
            .map(|_| ())
            .map_err(|e| NetworkError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })
    }

    /// Announces an address the operator says we are reachable at.
    pub(super) fn add_external_address(&mut self, addr: Multiaddr) {
        info!(addr = %addr, "external address from the configuration");
        self.swarm.add_external_address(addr);
        self.update_kad_mode();
    }

    /// Runs until every [`super::Client`] is dropped or `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        if self.role.bootstrap && self.swarm.external_addresses().next().is_none() {
            warn!(
                "no external address configured: the relay server stays off until AutoNAT confirms one (pass --external-address <multiaddr> so that NAT'd nodes can reserve slots at once)"
            );
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                Some((peer, connection, answer, channel)) = self.pending_replies.next(), if !self.pending_replies.is_empty() => {
                    let response = answer.unwrap_or_else(|_| Response::error(ErrorCode::Internal, "the node dropped the request"));
                    let response = self.fit_relay(peer, connection, response);
                    self.metrics.response_sent(response.kind());
                    if let Some(f) = self.in_flight.get_mut(&peer) {
                        f.inbound = f.inbound.saturating_sub(1);
                        if f.outbound == 0 && f.inbound == 0 {
                            self.in_flight.remove(&peer);
                        }
                    }
                    if self.swarm.behaviour_mut().tasks.send_response(channel, Frame::Valid(response)).is_err() {
                        debug!(peer = %peer, "response not sent: the connection closed");
                    }
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        debug!("network event loop stopped");
    }

    fn emit(&self, event: NetworkEvent) {
        // A full queue means the node is overloaded; dropping a domain event is safer than
        // stalling the swarm. Inbound requests then time out on the peer's side.
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!("node event queue full; event dropped");
                self.metrics.event_dropped();
            }
            // The node is shutting down and no longer reads events.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!("node stopped; event dropped");
            }
        }
    }

    fn since_start_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.dial_bootstrap(now);
        let (due, later): (Vec<_>, Vec<_>) =
            self.pending_bans.drain(..).partition(|(_, at)| *at <= now);
        self.pending_bans = later;
        for (peer, _) in due {
            self.block_addresses_of(peer, now);
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            warn!(peer = %peer, secs = self.config.ban_secs, "peer blocked after repeated bad messages");
        }
        let expired: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.banned.remove(&peer);
            self.offences.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            info!(peer = %peer, "peer unblocked");
        }
        for ip in self.swarm.behaviour_mut().per_ip.expire_blocks(now) {
            self.banned_at.remove(&ip);
            info!(ip = %ip, "address unblocked");
        }

        let waiting: Vec<PeerId> = self.held.keys().copied().collect();
        for peer in waiting {
            self.flush(peer);
        }
        self.close_superseded_circuits(now);
        if now.duration_since(self.last_slow_tick) >= Duration::from_secs(1) {
            self.last_slow_tick = now;
            self.give_up_punches(now);
            self.ensure_reservations(now);
            self.closed_circuits
                .retain(|_, c| now.duration_since(c.at) < CLOSED_CIRCUIT_MEMORY);
            self.rates.forget_idle(now);
        }
    }

    /// Notes the addresses of a peer about to be blocked; an address that several blocked
    /// identities came from is blocked too (identities are free, addresses are not), and its
    /// other connections closed.
    fn block_addresses_of(&mut self, peer: PeerId, now: Instant) {
        let after = self.config.ip_ban_after_peers;
        if after == 0 {
            return;
        }
        let ips: HashSet<std::net::IpAddr> = self
            .conns
            .values()
            .filter(|c| c.peer == peer)
            .filter_map(|c| source_ip(&c.addr))
            .collect();
        let until = now + Duration::from_secs(self.config.ban_secs);
        for ip in ips {
            let key = IpKey::of(ip);
            let (_, peers) = self
                .banned_at
                .entry(key)
                .or_insert_with(|| (ip, HashSet::new()));
            peers.insert(peer);
            if peers.len() < after as usize || !self.swarm.behaviour_mut().per_ip.block(ip, until) {
                continue;
            }
            warn!(ip = %key, identities = peers.len(), secs = self.config.ban_secs, "address blocked: several of its identities were banned");
            let doomed: Vec<ConnectionId> = self
                .conns
                .iter()
                .filter(|(_, c)| source_ip(&c.addr).map(IpKey::of) == Some(key))
                .map(|(id, _)| *id)
                .collect();
            for id in doomed {
                self.swarm.close_connection(id);
            }
        }
        // Bounded: an address map entry lives only while its block or its peers' bans do.
        let banned = &self.banned;
        self.banned_at.retain(|_, (_, peers)| {
            peers.retain(|p| banned.contains_key(p));
            !peers.is_empty()
        });
    }

    /// Remembers the advert's sequence number if it is the newest seen from its node.
    fn note_advert_seq(
        &mut self,
        advert: &CapabilityAdvert,
        now_ms: u64,
    ) -> Result<(), AdvertRefusal> {
        self.advert_seqs
            .note(advert.node, advert.seq, advert.expires_at, now_ms)
            .map_err(|have| AdvertRefusal::Stale {
                have,
                got: advert.seq,
            })
    }

    fn dial_bootstrap(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .bootstrap
            .iter()
            .filter(|(peer, b)| b.next_attempt <= now && !self.swarm.is_connected(peer))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            let Some(b) = self.bootstrap.get_mut(&peer) else {
                continue;
            };
            b.attempts += 1;
            b.next_attempt = now + b.backoff;
            b.backoff = (b.backoff * 2).min(Duration::from_secs(60));
            let addr = b.addr.clone();
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, nat::strip_p2p(&addr));
            if let Err(e) = self.swarm.dial(addr.clone()) {
                warn!(addr = %addr, error = %e, "cannot dial bootstrap node");
                if let Some(b) = self.bootstrap.get_mut(&peer) {
                    b.last_error = Some(e.to_string());
                }
            }
        }
        // One clear line when no bootstrap node answers at all, repeated at most every minute.
        let none_answer = !self.bootstrap.is_empty()
            && self
                .bootstrap
                .iter()
                .all(|(p, b)| !self.swarm.is_connected(p) && b.last_error.is_some());
        if none_answer
            && self
                .all_bootstrap_failed_warned
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            self.all_bootstrap_failed_warned = Some(now);
            let next = self
                .bootstrap
                .values()
                .map(|b| b.next_attempt.saturating_duration_since(now).as_millis() as u64)
                .min()
                .unwrap_or(0);
            warn!(
                bootstrap_nodes = self.bootstrap.len(),
                retry_in_ms = next,
                "none of the bootstrap nodes answers; this node is alone until one does (check the addresses and that they run)"
            );
        } else if !none_answer {
            self.all_bootstrap_failed_warned = None;
        }
    }

    fn penalize(&mut self, peer: PeerId, reason: &str) {
        self.metrics.invalid_message();
        let count = self.offences.entry(peer).or_insert(0);
        *count += 1;
        warn!(peer = %peer, offences = *count, reason, "bad message from peer");
        if *count >= self.config.ban_threshold && !self.banned.contains_key(&peer) {
            // Block a moment later, so the answer explaining the last offence still goes out.
            let until = Instant::now() + Duration::from_secs(self.config.ban_secs);
            self.banned.insert(peer, until);
            self.pending_bans
                .push((peer, Instant::now() + Duration::from_millis(200)));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                let result = self.swarm.dial(addr).map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                self.metrics.request_sent(request.kind());
                self.held.entry(peer).or_default().push_back(Held {
                    request,
                    reply,
                    since: Instant::now(),
                });
                self.flush(peer);
            }
            Command::Publish { advert } => match codec::encode(&*advert) {
                Ok(bytes) => self.publish_advert(bytes, advert.body.expires_at),
                Err(e) => warn!(error = %e, "cannot encode advert"),
            },
            Command::Provide { key } => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(&key))
                {
                    warn!(error = ?e, "cannot register provider record");
                }
            }
            Command::GetProviders { key, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.pending_providers.insert(id, (reply, HashSet::new()));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Penalize { peer, reason } => self.penalize(peer, &reason),
            Command::AddAddresses { peer, addrs } => {
                let seen_at = self
                    .conns
                    .values()
                    .filter(|c| c.peer == peer)
                    .min_by_key(|c| c.relayed)
                    .map(|c| c.addr.clone());
                for addr in nat::advertised_worth_dialing(&addrs, &peer, seen_at.as_ref()) {
                    self.swarm.add_peer_address(peer, addr);
                }
            }
        }
    }

    /// Connections to `peer`: (direct ones, relayed ones).
    fn paths(&self, peer: &PeerId) -> (Vec<ConnectionId>, Vec<ConnectionId>) {
        let mut direct = Vec::new();
        let mut relayed = Vec::new();
        for (id, c) in &self.conns {
            if c.peer == *peer {
                if c.relayed {
                    relayed.push(*id);
                } else {
                    direct.push(*id);
                }
            }
        }
        (direct, relayed)
    }

    fn punch_wait(&self) -> Duration {
        Duration::from_millis(self.config.hole_punch_wait_ms)
    }

    /// Sends the requests held for `peer` once the path to it is settled: a direct connection
    /// alone, or a relayed one whose hole punch is over (or took too long), or none (then
    /// libp2p dials, through our relays if need be).
    fn flush(&mut self, peer: PeerId) {
        let now = Instant::now();
        let Some(oldest) = self
            .held
            .get(&peer)
            .and_then(|q| q.front())
            .map(|h| h.since)
        else {
            self.held.remove(&peer);
            return;
        };
        let overfull = self
            .held
            .get(&peer)
            .is_some_and(|q| q.len() > MAX_HELD_PER_PEER);
        let waited = now.saturating_duration_since(oldest);
        let (direct, relayed) = self.paths(&peer);
        let go = overfull
            || match (direct.is_empty(), relayed.is_empty()) {
                (true, true) => true,
                (false, true) => true,
                // A direct connection exists but the relayed one is still open; it closes as
                // soon as nothing is in flight on it. Requests sent meanwhile could be put on
                // either connection, so they wait, but not for ever.
                (false, false) => waited >= self.punch_wait() * 2,
                (true, false) => !self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.punch.as_ref())
                    .is_some_and(|p| p.pending(now, self.punch_wait())),
            };
        if !go {
            return;
        }
        let relay_only = direct.is_empty() && !relayed.is_empty();
        let Some(queue) = self.held.remove(&peer) else {
            return;
        };
        if !self.swarm.is_connected(&peer) {
            self.add_relay_candidates(peer);
        }
        let path = match (direct.is_empty(), relay_only) {
            (false, _) => "direct",
            (true, true) => "relayed",
            (true, false) => "new connection",
        };
        for held in queue {
            if relay_only && let Err(e) = self.check_relay_limit(&peer, &relayed, &held.request) {
                warn!(peer = %peer, error = %e, "request refused: it does not fit the relay");
                let _ = held.reply.send(Err(e));
                continue;
            }
            debug!(
                peer = %peer,
                kind = held.request.kind(),
                path,
                held_ms = now.saturating_duration_since(held.since).as_millis() as u64,
                "request sent"
            );
            let id = self
                .swarm
                .behaviour_mut()
                .tasks
                .send_request(&peer, Frame::Valid(*held.request));
            self.in_flight.entry(peer).or_default().outbound += 1;
            self.pending_requests.insert(
                id,
                Pending {
                    peer,
                    reply: held.reply,
                },
            );
        }
    }

    /// Refuses a request that cannot cross the relayed connection(s) to `peer`.
    fn check_relay_limit(
        &self,
        peer: &PeerId,
        relayed: &[ConnectionId],
        request: &Request,
    ) -> Result<(), RequestError> {
        // The roomiest relayed connection decides; an unknown or absent limit never refuses.
        let mut roomiest: Option<(u64, Option<PeerId>)> = None;
        for id in relayed {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            match c.limit.and_then(|l| l.bytes).filter(|b| *b > 0) {
                None => return Ok(()),
                Some(b) => {
                    if roomiest.is_none_or(|(x, _)| b > x) {
                        roomiest = Some((b, c.relay));
                    }
                }
            }
        }
        let Some((limit_bytes, relay)) = roomiest else {
            return Ok(());
        };
        let limit = CircuitLimit::new(Some(limit_bytes), None);
        let frame = codec::encode(request)
            .map(|b| b.len() as u64)
            .map_err(|e| RequestError::Local(e.to_string()))?;
        if limit.fits(frame) {
            return Ok(());
        }
        let punch = self
            .peers
            .get(peer)
            .and_then(|p| p.punch.as_ref())
            .map_or("not attempted".to_string(), ToString::to_string);
        Err(RequestError::RelayLimit {
            frame_bytes: frame,
            limit_bytes,
            relay: relay.map_or("?".to_string(), |r| r.to_string()),
            punch,
        })
    }

    /// Marks hole punches that never produced a direct connection as failed.
    fn give_up_punches(&mut self, now: Instant) {
        let give_up = PUNCH_GIVE_UP.max(self.punch_wait() * 3);
        for (peer, state) in &mut self.peers {
            if let Some(p) = state.punch.as_mut()
                && p.outcome.is_none()
                && now.saturating_duration_since(p.started) >= give_up
            {
                let why = format!("no direct connection within {} s", give_up.as_secs());
                warn!(peer = %peer, reason = %why, "hole punch failed: staying on the relay");
                p.outcome = Some(PunchOutcome::Failed(why));
                self.punches.failed += 1;
            }
        }
    }

    /// Whether `peer` is in our Kademlia table, i.e. a DHT server reachable directly.
    fn in_routing_table(&mut self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .kbucket(*peer)
            .is_some_and(|b| b.iter().any(|e| e.node.key.preimage() == peer))
    }

    /// Lets libp2p try `peer` through every relay we are connected to: a peer behind NAT
    /// holds a reservation on the bootstrap relays it reached, and adverts say nothing about
    /// addresses. Peers in the DHT table are reachable directly and are left alone.
    fn add_relay_candidates(&mut self, peer: PeerId) {
        if self.in_routing_table(&peer) {
            return;
        }
        let candidates: Vec<Multiaddr> = self
            .relays
            .iter()
            .filter(|(relay, _)| **relay != peer)
            .map(|(relay, addr)| nat::circuit_via(addr, *relay, Some(peer)))
            .collect();
        for addr in candidates {
            trace!(peer = %peer, addr = %addr, "relayed address candidate");
            self.swarm.add_peer_address(peer, addr);
        }
    }

    /// Closes relayed connections to peers we also reach directly, once nothing is in flight.
    fn close_superseded_circuits(&mut self, now: Instant) {
        let mut direct_since: HashMap<PeerId, Instant> = HashMap::new();
        for c in self.conns.values().filter(|c| !c.relayed) {
            let e = direct_since.entry(c.peer).or_insert(c.opened);
            *e = (*e).min(c.opened);
        }
        let to_close: Vec<(ConnectionId, PeerId)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.relayed && !c.closing)
            .filter(|(_, c)| {
                direct_since
                    .get(&c.peer)
                    .is_some_and(|t| now.saturating_duration_since(*t) >= RELAYED_CLOSE_GRACE)
            })
            .filter(|(_, c)| {
                self.in_flight
                    .get(&c.peer)
                    .is_none_or(|f| f.outbound == 0 && f.inbound == 0)
            })
            .map(|(id, c)| (*id, c.peer))
            .collect();
        for (id, peer) in to_close {
            if self.swarm.close_connection(id) {
                debug!(peer = %peer, "closing the relayed connection: a direct one took over");
            }
            if let Some(c) = self.conns.get_mut(&id) {
                c.closing = true;
            }
        }
    }

    /// Whether this node should hold relay reservations now.
    fn wants_reservations(&self) -> bool {
        if self.role.bootstrap {
            return false;
        }
        match self.config.relay_client {
            RelayClientMode::Never => false,
            RelayClientMode::Always => true,
            // Until AutoNAT answers (seconds to tens of seconds behind a NAT that drops probes),
            // a node is treated as unreachable, so that peers can reach it from the start.
            RelayClientMode::Auto => self.reachability != Reachability::Public,
        }
    }

    /// Reserves slots on connected relays while wanted, releases them when not.
    fn ensure_reservations(&mut self, now: Instant) {
        if !self.wants_reservations() {
            let held: Vec<PeerId> = self.reservations.keys().copied().collect();
            for relay in held {
                if let Some(r) = self.reservations.remove(&relay) {
                    info!(relay = %relay, reachability = %self.reachability, "relay reservation released");
                    self.swarm.remove_listener(r.listener);
                }
            }
            return;
        }
        let max = self.config.max_relay_reservations.max(1);
        let candidates: Vec<(PeerId, Multiaddr)> = self
            .relays
            .iter()
            .filter(|(relay, _)| !self.reservations.contains_key(relay))
            .filter(|(relay, _)| {
                self.reservation_retry
                    .get(relay)
                    .is_none_or(|(at, _)| *at <= now)
            })
            .map(|(r, a)| (*r, a.clone()))
            .collect();
        for (relay, addr) in candidates {
            if self.reservations.len() >= max {
                break;
            }
            let circuit = nat::circuit_via(&addr, relay, None);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    info!(relay = %relay, addr = %circuit, reachability = %self.reachability, "asking the relay for a reservation");
                    self.reservations.insert(
                        relay,
                        Reservation {
                            listener,
                            addr: circuit,
                            accepted: false,
                            accepted_after: None,
                            renewals: 0,
                            limit: None,
                        },
                    );
                }
                Err(e) => {
                    warn!(relay = %relay, error = %e, "cannot listen through the relay");
                    self.retry_reservation_later(relay, now);
                }
            }
        }
    }

    fn retry_reservation_later(&mut self, relay: PeerId, now: Instant) {
        let backoff = self
            .reservation_retry
            .get(&relay)
            .map_or(RESERVATION_RETRY, |(_, b)| {
                (*b * 2).min(Duration::from_secs(60))
            });
        self.reservation_retry
            .insert(relay, (now + backoff, backoff));
    }

    /// Kademlia serves only while we are directly reachable (see `behaviour`).
    fn update_kad_mode(&mut self) {
        let reachable = self.reachability != Reachability::Private
            && self.swarm.external_addresses().any(|a| !nat::is_relayed(a));
        let mode = if self.role.bootstrap {
            kad::Mode::Server
        } else {
            match self.config.kad_mode {
                KadMode::Server => kad::Mode::Server,
                KadMode::Client => kad::Mode::Client,
                KadMode::Auto if reachable => kad::Mode::Server,
                KadMode::Auto => kad::Mode::Client,
            }
        };
        if self.swarm.behaviour_mut().kad.mode() != mode {
            info!(mode = %mode, reachability = %self.reachability, "kademlia mode changed");
            self.swarm.behaviour_mut().kad.set_mode(Some(mode));
        }
    }

    fn status(&mut self) -> NetworkStatus {
        let now = Instant::now();
        let local = *self.swarm.local_peer_id();
        let with_p2p = |a: &Multiaddr| a.clone().with_p2p(local).unwrap_or_else(|a| a).to_string();
        let routing_table = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        let mut by_peer: BTreeMap<PeerId, Vec<&Conn>> = BTreeMap::new();
        for c in self.conns.values() {
            by_peer.entry(c.peer).or_default().push(c);
        }
        let peers: Vec<PeerStatus> = by_peer
            .into_iter()
            .filter_map(|(peer, mut conns)| {
                conns.sort_by_key(|c| (c.relayed, c.opened));
                let best = conns.first()?;
                let info = self.peers.get(&peer);
                Some(PeerStatus {
                    node: node_id_of(&peer)?,
                    peer_id: peer.to_string(),
                    addr: best.addr.to_string(),
                    relayed: best.relayed,
                    agent: info.and_then(|p| p.agent.clone()),
                    connections: conns.len(),
                    via_relay: if best.relayed {
                        best.relay.map(|r| r.to_string())
                    } else {
                        None
                    },
                    hole_punch: info.and_then(|p| p.punch.as_ref()).map(|p| {
                        if p.pending(now, Duration::MAX) {
                            format!(
                                "in progress for {} ms",
                                now.duration_since(p.started).as_millis()
                            )
                        } else {
                            p.to_string()
                        }
                    }),
                })
            })
            .collect();
        let relay_reservations = self
            .reservations
            .iter()
            .map(|(relay, r)| ReservationStatus {
                relay: relay.to_string(),
                addr: with_p2p(&r.addr),
                accepted: r.accepted,
                accepted_after_ms: r
                    .accepted_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                renewals: r.renewals,
                limit_bytes: r.limit.and_then(|l| l.bytes),
                limit_secs: r.limit.and_then(|l| l.secs),
            })
            .collect();
        NetworkStatus {
            peer_id: local.to_string(),
            listen_addrs: self.listen_addrs.iter().map(with_p2p).collect(),
            external_addrs: {
                // The same address can be both configured and confirmed by AutoNAT.
                let mut a: Vec<String> = self.swarm.external_addresses().map(with_p2p).collect();
                a.sort();
                a.dedup();
                a
            },
            peers,
            routing_table,
            kad_mode: self.swarm.behaviour_mut().kad.mode().to_string(),
            bootstrap: self
                .bootstrap
                .iter()
                .map(|(peer, b)| BootstrapStatus {
                    addr: b.text.clone(),
                    connected: self.swarm.is_connected(peer),
                    attempts: b.attempts,
                    last_error: b.last_error.clone(),
                })
                .collect(),
            blocked: self
                .banned
                .keys()
                .map(|p| p.to_string())
                .chain(
                    self.swarm
                        .behaviour()
                        .per_ip
                        .blocked()
                        .map(|ip| format!("address {ip}")),
                )
                .collect(),
            reachability: self.reachability,
            reachability_after_ms: self
                .reachability_since
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            relay_reservations,
            hole_punch: self.punches,
            relay_server: self.role.bootstrap.then(|| self.relay_server.clone()),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                let local = *self.swarm.local_peer_id();
                let full = address.clone().with_p2p(local).unwrap_or_else(|a| a);
                if let Some((relay, _)) = self
                    .reservations
                    .iter()
                    .find(|(_, r)| r.listener == listener_id)
                {
                    info!(relay = %relay, addr = %full, "reachable through the relay");
                } else {
                    info!(addr = %full, "listening");
                }
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address.clone());
                }
                // A relay may list one address twice, and a new reservation on a relay that
                // restarted brings the same addresses again: the node keeps every address it
                // is told, so tell it each one once.
                if self.announced_listen.insert(address) {
                    self.emit(NetworkEvent::Listening {
                        addr: full.to_string(),
                    });
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                addresses,
            } => {
                for a in &addresses {
                    self.listen_addrs.retain(|l| l != a);
                }
                self.on_reservation_lost(listener_id, reason.err().map(|e| e.to_string()));
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                warn!(error = %error, "listener error");
                if self
                    .reservations
                    .values()
                    .any(|r| r.listener == listener_id)
                {
                    self.swarm.remove_listener(listener_id);
                    self.on_reservation_lost(listener_id, Some(error.to_string()));
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(addr = %address, "external address confirmed");
                self.update_kad_mode();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                info!(addr = %address, "external address expired");
                self.update_kad_mode();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.on_connection_established(
                peer_id,
                connection_id,
                &endpoint,
                num_established.get(),
            ),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Some(c) = self.conns.remove(&connection_id)
                    && c.relayed
                {
                    let reason = cause.map_or("closed".to_string(), |e| e.to_string());
                    debug!(peer = %peer_id, reason = %reason, "relayed connection closed");
                    self.closed_circuits.insert(
                        connection_id,
                        ClosedCircuit {
                            at: Instant::now(),
                            reason,
                            limit: c.limit,
                        },
                    );
                }
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                    self.relays.remove(&peer_id);
                    self.metrics.set_peers(self.peers.len());
                    if let Some(node) = node_id_of(&peer_id) {
                        self.emit(NetworkEvent::PeerDisconnected { node });
                    }
                }
                self.flush(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let why = nat::dial_error_summary(&error);
                if let Some(b) = self.bootstrap.get_mut(&peer) {
                    let retry_in_ms = b
                        .next_attempt
                        .saturating_duration_since(Instant::now())
                        .as_millis() as u64;
                    warn!(addr = %b.text, error = %why, retry_in_ms, "bootstrap node did not answer");
                    b.last_error = Some(why.clone());
                } else {
                    debug!(peer = %peer, error = %error, "dial failed");
                }
                self.on_punch_dial_failed(peer, &why);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            other => trace!(event = ?other, "swarm event"),
        }
    }

    fn on_reservation_lost(&mut self, listener: ListenerId, reason: Option<String>) {
        let Some(relay) = self
            .reservations
            .iter()
            .find(|(_, r)| r.listener == listener)
            .map(|(p, _)| *p)
        else {
            return;
        };
        self.reservations.remove(&relay);
        if self.wants_reservations() {
            warn!(relay = %relay, reason = reason.as_deref().unwrap_or("the relay connection closed"), "relay reservation lost; retrying later");
            self.retry_reservation_later(relay, Instant::now());
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
        num_established: u32,
    ) {
        let now = Instant::now();
        let (addr, relay) = match endpoint {
            ConnectedPoint::Dialer { address, .. } => (address.clone(), nat::relay_of(address)),
            ConnectedPoint::Listener {
                send_back_addr,
                local_addr,
            } => (send_back_addr.clone(), nat::relay_of(local_addr)),
        };
        let relayed = endpoint.is_relayed();
        let limit = if !relayed {
            None
        } else if endpoint.is_dialer() {
            relay.and_then(|r| self.relay_limits.get(&r).copied())
        } else {
            self.inbound_limits.get(&peer).copied()
        };
        if let Some(b) = self.bootstrap.get_mut(&peer) {
            if b.attempts > 1 || b.last_error.is_some() {
                info!(addr = %b.text, "bootstrap node answered");
            }
            b.last_error = None;
            b.backoff = Duration::from_secs(self.config.bootstrap_retry_secs.max(1));
            if endpoint.is_dialer() && !relayed {
                // Learn the rest of the mesh from the bootstrap node.
                if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                    debug!(error = ?e, "kademlia bootstrap not started");
                }
            }
        }
        let had_direct = self.conns.values().any(|c| c.peer == peer && !c.relayed);
        self.conns.insert(
            id,
            Conn {
                peer,
                addr: addr.clone(),
                relayed,
                relay,
                limit,
                opened: now,
                closing: false,
            },
        );
        let state = self.peers.entry(peer).or_default();
        if relayed && !had_direct {
            // The side that accepted the relayed connection starts DCUtR; the dialer answers.
            if state.punch.as_ref().is_none_or(|p| p.outcome.is_some()) {
                debug!(peer = %peer, via = ?relay, "relayed connection; hole punch expected");
                state.punch = Some(Punch::new(now));
            }
        } else if !relayed
            && let Some(p) = state.punch.as_mut()
            && p.outcome.is_none()
        {
            let took = now.saturating_duration_since(p.started);
            p.outcome = Some(PunchOutcome::Direct(took));
            self.punches.succeeded += 1;
            info!(peer = %peer, addr = %addr, ms = took.as_millis() as u64, "hole punch succeeded: direct connection");
        }
        if num_established == 1 {
            self.metrics.set_peers(self.peers.len());
            if let Some(node) = node_id_of(&peer) {
                self.emit(NetworkEvent::PeerConnected { node });
            }
        }
        self.flush(peer);
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => self.on_identified(peer_id, connection_id, info),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = self.check_advert(&message).and_then(|advert| {
                    self.note_advert_seq(&advert.body, crate::clock::now_ms())
                        .map(|()| advert)
                });
                let acceptance = match &verdict {
                    Ok(_) => gossipsub::MessageAcceptance::Accept,
                    Err(AdvertRefusal::Expired | AdvertRefusal::Stale { .. }) => {
                        gossipsub::MessageAcceptance::Ignore
                    }
                    Err(AdvertRefusal::Invalid(_)) => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                match verdict {
                    Ok(advert) => {
                        self.metrics.advert_received();
                        self.emit(NetworkEvent::Advert(Box::new(advert)));
                    }
                    // Expired on the way (a loaded relay, a short-lived farewell advert):
                    // dropped, not forwarded, and nobody's fault.
                    Err(AdvertRefusal::Expired) => {
                        debug!(peer = %propagation_source, "expired advert dropped");
                    }
                    // A replay or a late copy: dropped, not forwarded.
                    Err(AdvertRefusal::Stale { have, got }) => {
                        debug!(peer = %propagation_source, have, got, "stale advert dropped");
                    }
                    Err(AdvertRefusal::Invalid(reason)) => {
                        warn!(peer = %propagation_source, reason = %reason, "advert rejected");
                        self.penalize(propagation_source, &reason);
                    }
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. })
                if topic == gossipsub::IdentTopic::new(ADVERT_TOPIC).hash() =>
            {
                self.publish_pending_advert();
            }
            BehaviourEvent::Tasks(event) => self.on_task_event(event),
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => {
                if let kad::QueryResult::GetProviders(result) = result {
                    if let Some((_, found)) = self.pending_providers.get_mut(&id)
                        && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
                    {
                        found.extend(providers.iter().filter_map(node_id_of));
                    }
                    if step.last
                        && let Some((reply, found)) = self.pending_providers.remove(&id)
                    {
                        let _ = reply.send(found.into_iter().collect());
                    }
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                let reachability = match &new {
                    autonat::NatStatus::Public(_) => Reachability::Public,
                    autonat::NatStatus::Private => Reachability::Private,
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                info!(
                    old = ?old,
                    new = ?new,
                    reachability = %reachability,
                    after_ms = self.since_start_ms(),
                    "reachability changed"
                );
                self.reachability = reachability;
                self.reachability_since = Some(self.started.elapsed());
                self.update_kad_mode();
                self.ensure_reservations(Instant::now());
            }
            BehaviourEvent::Autonat(event) => trace!(event = ?event, "autonat"),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::RelayServer(event) => self.on_relay_server_event(event),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => self.on_hole_punch(remote_peer_id, result.map_err(|e| e.to_string())),
            other => trace!(event = ?other, "behaviour event"),
        }
    }

    fn on_identified(&mut self, peer: PeerId, connection: ConnectionId, info: identify::Info) {
        if info.protocols.contains(&KAD_PROTOCOL) {
            let seen_at = self.conns.get(&connection).map(|c| c.addr.clone());
            for addr in &info.listen_addrs {
                // Circuit addresses are reached through the relay; keep the table direct, and
                // keep out addresses that mean nothing from where we see the peer.
                let plausible = seen_at
                    .as_ref()
                    .is_none_or(|seen| nat::worth_dialing(addr, seen));
                if !nat::is_relayed(addr) && plausible {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                }
            }
        }
        // A relay server we dialed directly is a relay we can reserve on and reach others through.
        if info.protocols.contains(&relay::HOP_PROTOCOL_NAME)
            && let Some(c) = self.conns.get(&connection)
            && !c.relayed
        {
            let addr = match self.bootstrap.get(&peer) {
                Some(b) => nat::strip_p2p(&b.addr),
                None => nat::strip_p2p(&c.addr),
            };
            if self.relays.insert(peer, addr.clone()).is_none() {
                debug!(relay = %peer, addr = %addr, "relay available");
                self.ensure_reservations(Instant::now());
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.agent = Some(info.agent_version.clone());
        }
        if let Some(node) = node_id_of(&peer) {
            let speaks_crank = info.protocols.contains(&TASK_PROTOCOL);
            self.emit(NetworkEvent::PeerIdentified { node, speaks_crank });
        }
    }

    fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                limit,
            } => {
                let limit = limit.map(|l| CircuitLimit::new(l.data_in_bytes(), l.duration()));
                if let Some(l) = limit {
                    self.relay_limits.insert(relay_peer_id, l);
                }
                self.reservation_retry.remove(&relay_peer_id);
                let after = self.started.elapsed();
                if let Some(r) = self.reservations.get_mut(&relay_peer_id) {
                    r.limit = limit;
                    if renewal {
                        r.renewals += 1;
                    }
                    if !r.accepted {
                        r.accepted = true;
                        r.accepted_after = Some(after);
                        info!(
                            relay = %relay_peer_id,
                            addr = %r.addr,
                            after_ms = after.as_millis() as u64,
                            limit = %limit.unwrap_or_default(),
                            "relay reservation accepted"
                        );
                    }
                } else {
                    debug!(relay = %relay_peer_id, "reservation accepted for a listener we no longer track");
                }
            }
            relay::client::Event::OutboundCircuitEstablished {
                relay_peer_id,
                limit,
            } => {
                if let Some(l) = limit {
                    self.relay_limits.insert(
                        relay_peer_id,
                        CircuitLimit::new(l.data_in_bytes(), l.duration()),
                    );
                }
                debug!(relay = %relay_peer_id, "outbound circuit established");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                if let Some(l) = limit {
                    self.inbound_limits.insert(
                        src_peer_id,
                        CircuitLimit::new(l.data_in_bytes(), l.duration()),
                    );
                }
                debug!(peer = %src_peer_id, "inbound circuit established");
            }
        }
    }

    fn on_relay_server_event(&mut self, event: relay::Event) {
        let s = &mut self.relay_server;
        match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                if !renewed {
                    s.reservations += 1;
                    info!(peer = %src_peer_id, reservations = s.reservations, "relay: reservation accepted");
                }
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                s.denied += 1;
                warn!(peer = %src_peer_id, status = ?status, "relay: reservation refused");
            }
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                s.reservations = s.reservations.saturating_sub(1);
                debug!(peer = %src_peer_id, reservations = s.reservations, "relay: reservation ended");
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                s.circuits += 1;
                info!(src = %src_peer_id, dst = %dst_peer_id, circuits = s.circuits, "relay: circuit opened");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                s.denied += 1;
                warn!(src = %src_peer_id, dst = %dst_peer_id, status = ?status, "relay: circuit refused");
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                s.circuits = s.circuits.saturating_sub(1);
                match error {
                    Some(e) => {
                        info!(src = %src_peer_id, dst = %dst_peer_id, error = %e, "relay: circuit closed")
                    }
                    None => debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit closed"),
                }
            }
            relay::Event::StatusChanged { status } => {
                s.enabled = matches!(status, relay::Status::Enable);
                info!(status = ?status, "relay server status");
            }
            other => debug!(event = ?other, "relay server event"),
        }
    }

    /// A failed direct dial to a peer we are hole punching with is a failed punch attempt.
    /// DCUtR reports failures only on the side that accepted the relayed connection; this is
    /// how the other side learns them, and stops holding requests for the punch.
    fn on_punch_dial_failed(&mut self, peer: PeerId, error: &str) {
        let relayed = self.conns.values().any(|c| c.peer == peer && c.relayed);
        let direct = self.conns.values().any(|c| c.peer == peer && !c.relayed);
        let Some(p) = self.peers.get_mut(&peer).and_then(|s| s.punch.as_mut()) else {
            return;
        };
        if !relayed || direct || p.outcome.is_some() {
            return;
        }
        p.dial_failures += 1;
        if p.dial_failures >= PUNCH_ATTEMPTS {
            let took = p.started.elapsed();
            let error = nat::first_line(error, 200);
            warn!(peer = %peer, ms = took.as_millis() as u64, error = %error, "hole punch failed: staying on the relay");
            p.outcome = Some(PunchOutcome::Failed(format!(
                "{} direct dials failed, the last with: {error}",
                p.dial_failures
            )));
            self.punches.failed += 1;
            self.flush(peer);
        }
    }

    fn on_hole_punch(&mut self, peer: PeerId, result: Result<ConnectionId, String>) {
        let now = Instant::now();
        let Some(state) = self.peers.get_mut(&peer) else {
            debug!(peer = %peer, "hole punch result for a peer no longer connected");
            return;
        };
        let punch = state.punch.get_or_insert_with(|| Punch::new(now));
        let took = now.saturating_duration_since(punch.started);
        match result {
            Ok(_) => {
                if punch.outcome.is_none() {
                    self.punches.succeeded += 1;
                    info!(peer = %peer, ms = took.as_millis() as u64, "hole punch succeeded: direct connection");
                }
                punch.outcome = Some(PunchOutcome::Direct(took));
            }
            Err(e) => {
                // A direct connection may already exist (both sides dial); that one counts.
                let direct = self.conns.values().any(|c| c.peer == peer && !c.relayed);
                if !direct && punch.outcome.is_none() {
                    self.punches.failed += 1;
                    let e = nat::first_line(&e, 160);
                    warn!(peer = %peer, ms = took.as_millis() as u64, error = %e, "hole punch failed: staying on the relay");
                    punch.outcome = Some(PunchOutcome::Failed(e));
                }
            }
        }
        self.flush(peer);
    }

    /// Publishes our advert; one that finds no subscribed peer yet is kept and sent when the
    /// first peer subscribes ([`Self::publish_pending_advert`]).
    fn publish_advert(&mut self, bytes: Vec<u8>, expires_at: u64) {
        self.unpublished_advert = None;
        let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, bytes.clone())
        {
            Ok(_) => debug!("advert published"),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                debug!("advert not published: no subscribed peers yet");
                self.unpublished_advert = Some((bytes, expires_at));
            }
            Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => warn!(error = %e, "advert not published"),
        }
    }

    /// Publishes the advert that found no subscribed peer, unless it is about to expire
    /// (peers would drop it; the advert loop sends a fresh one soon anyway).
    fn publish_pending_advert(&mut self) {
        if let Some((bytes, expires_at)) = self.unpublished_advert.take()
            && expires_at > crate::clock::now_ms() + 10_000
        {
            self.publish_advert(bytes, expires_at);
        }
    }

    fn check_advert(
        &self,
        message: &gossipsub::Message,
    ) -> Result<Signed<CapabilityAdvert>, AdvertRefusal> {
        let advert: Signed<CapabilityAdvert> = codec::decode(&message.data, MAX_ADVERT_FRAME)
            .map_err(|e| AdvertRefusal::Invalid(format!("undecodable advert: {e}")))?;
        let now = crate::clock::now_ms();
        validate::advert(&advert, now, &self.limits).map_err(|e| {
            if advert.body.expires_at <= now {
                AdvertRefusal::Expired
            } else {
                AdvertRefusal::Invalid(e.to_string())
            }
        })?;
        // The envelope is anonymous: the advert's own signature, checked above, is what ties
        // it to its node. A copy relayed by another peer is the same message (content id), and
        // an old copy loses to the node's newer sequence number in the advert table.
        Ok(advert)
    }

    /// Replaces a response that cannot cross the relayed connection it must go back on with
    /// an error naming the limit: sending it would only make the relay cut the circuit.
    fn fit_relay(&self, peer: PeerId, connection: ConnectionId, response: Response) -> Response {
        let Some(c) = self.conns.get(&connection) else {
            return response;
        };
        let Some(limit) = c
            .limit
            .filter(|l| c.relayed && l.bytes.is_some_and(|b| b > 0))
        else {
            return response;
        };
        let Ok(frame) = codec::encode(&response).map(|b| b.len() as u64) else {
            return response;
        };
        if limit.fits(frame) {
            return response;
        }
        let limit_bytes = limit.bytes.unwrap_or(0);
        warn!(peer = %peer, frame, limit_bytes, "response refused: it does not fit the relay");
        Response::error(
            ErrorCode::Busy,
            format!(
                "the {} answer is {frame} bytes but this relayed connection may carry at most {limit_bytes} bytes; ask again over a direct connection or for less",
                response.kind()
            ),
        )
    }

    /// Explains a request that failed on a relayed connection by the relay's limits.
    fn relay_failure(
        &self,
        connection: ConnectionId,
        error: &OutboundFailure,
    ) -> Option<RequestError> {
        let limits =
            |l: Option<CircuitLimit>| l.map_or("not announced".to_string(), |l| l.to_string());
        if let Some(c) = self.closed_circuits.get(&connection) {
            return Some(RequestError::RelayClosed {
                reason: format!("{error}; {}", c.reason),
                limits: limits(c.limit),
            });
        }
        let c = self.conns.get(&connection)?;
        (c.relayed
            && matches!(
                error,
                OutboundFailure::ConnectionClosed | OutboundFailure::Io(_)
            ))
        .then(|| RequestError::RelayClosed {
            reason: error.to_string(),
            limits: limits(c.limit),
        })
    }

    fn on_task_event(&mut self, event: request_response::Event<Frame<Request>, Frame<Response>>) {
        match event {
            request_response::Event::Message {
                peer,
                message,
                connection_id,
            } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Some(node) = node_id_of(&peer) else {
                        let _ = self.swarm.behaviour_mut().tasks.send_response(
                            channel,
                            Frame::Valid(Response::error(
                                ErrorCode::NotAuthorized,
                                "peer id is not an ed25519 key",
                            )),
                        );
                        return;
                    };
                    match request {
                        Frame::Valid(request) => {
                            self.metrics.request_received(request.kind());
                            if let RateVerdict::Refused { rate, offence } =
                                self.rates.check(peer, request.kind(), Instant::now())
                            {
                                let reason = format!(
                                    "rate limited: more than {} {} requests a second (burst {}) from this peer; slow down",
                                    rate.per_sec,
                                    request.kind(),
                                    rate.burst
                                );
                                debug!(peer = %peer, kind = request.kind(), "request over the rate limit");
                                let answer = Response::error(ErrorCode::Busy, reason);
                                self.metrics.response_sent(answer.kind());
                                let _ = self
                                    .swarm
                                    .behaviour_mut()
                                    .tasks
                                    .send_response(channel, Frame::Valid(answer));
                                if offence {
                                    self.penalize(peer, "repeatedly over the request rate limit");
                                }
                                return;
                            }
                            let (tx, rx) = oneshot::channel();
                            self.in_flight.entry(peer).or_default().inbound += 1;
                            self.pending_replies.push(Box::pin(async move {
                                (peer, connection_id, rx.await, channel)
                            }));
                            self.emit(NetworkEvent::InboundRequest {
                                peer: node,
                                request: Box::new(request),
                                responder: Responder { tx },
                            });
                        }
                        Frame::Invalid(e) => {
                            let reason = e.to_string();
                            let _ = self.swarm.behaviour_mut().tasks.send_response(
                                channel,
                                Frame::Valid(Response::error(ErrorCode::Malformed, &reason)),
                            );
                            self.penalize(peer, &reason);
                        }
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let result = match response {
                        Frame::Valid(r) => Ok(r),
                        Frame::Invalid(e) => {
                            self.penalize(peer, &e.to_string());
                            Err(RequestError::BadResponse(e.to_string()))
                        }
                    };
                    self.finish_request(request_id, result);
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                connection_id,
            } => {
                let err = self
                    .relay_failure(connection_id, &error)
                    .unwrap_or(match error {
                        OutboundFailure::DialFailure => RequestError::Unreachable,
                        OutboundFailure::Timeout => RequestError::Timeout,
                        OutboundFailure::ConnectionClosed => RequestError::ConnectionClosed,
                        OutboundFailure::UnsupportedProtocols => RequestError::Unsupported,
                        OutboundFailure::Io(ref e) => RequestError::Io(e.to_string()),
                    });
                debug!(peer = %peer, error = %err, "request failed");
                self.finish_request(request_id, Err(err));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, error = %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn finish_request(&mut self, id: OutboundRequestId, result: Result<Response, RequestError>) {
        if let Some(p) = self.pending_requests.remove(&id) {
            if let Some(f) = self.in_flight.get_mut(&p.peer) {
                f.outbound = f.outbound.saturating_sub(1);
                if f.outbound == 0 && f.inbound == 0 {
                    self.in_flight.remove(&p.peer);
                }
            }
            let _ = p.reply.send(result);
        }
    }
}
