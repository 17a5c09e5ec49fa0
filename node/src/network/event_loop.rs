//! The event loop: owns the swarm, turns swarm events into domain events and commands into
//! swarm calls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crank_protocol::codec::{self, MAX_ADVERT_FRAME};
use crank_protocol::validate::{self, Limits};
use crank_protocol::{CapabilityAdvert, ErrorCode, NodeId, Response, Signed};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, trace, warn};

use super::behaviour::{ADVERT_TOPIC, Behaviour, BehaviourEvent, KAD_PROTOCOL};
use super::codec::{Frame, TASK_PROTOCOL};
use super::{
    BootstrapStatus, Command, NetworkConfig, NetworkError, NetworkEvent, NetworkStatus, PeerStatus,
    RequestError, Responder, node_id_of,
};
use crate::metrics::Metrics;

type PendingReply = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Result<Response, oneshot::error::RecvError>,
                    ResponseChannel<Frame<Response>>,
                ),
            > + Send,
    >,
>;

struct Bootstrap {
    text: String,
    addr: Multiaddr,
    attempts: u32,
    next_attempt: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

struct Conn {
    addr: Multiaddr,
    relayed: bool,
    agent: Option<String>,
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    config: NetworkConfig,
    limits: Limits,
    metrics: Metrics,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, RequestError>>>,
    pending_providers: HashMap<kad::QueryId, (oneshot::Sender<Vec<NodeId>>, HashSet<NodeId>)>,
    pending_replies: FuturesUnordered<PendingReply>,
    bootstrap: BTreeMap<PeerId, Bootstrap>,
    connections: HashMap<PeerId, Conn>,
    offences: HashMap<PeerId, u32>,
    banned: HashMap<PeerId, Instant>,
    pending_bans: Vec<(PeerId, Instant)>,
    listen_addrs: Vec<Multiaddr>,
}

impl EventLoop {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetworkEvent>,
        config: NetworkConfig,
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
        Self {
            swarm,
            commands,
            events,
            config,
            limits: Limits::default(),
            metrics,
            pending_requests: HashMap::new(),
            pending_providers: HashMap::new(),
            pending_replies: FuturesUnordered::new(),
            bootstrap,
            connections: HashMap::new(),
            offences: HashMap::new(),
            banned: HashMap::new(),
            pending_bans: Vec::new(),
            listen_addrs: Vec::new(),
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

    /// Runs until every [`super::Client`] is dropped or `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
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
                Some((answer, channel)) = self.pending_replies.next(), if !self.pending_replies.is_empty() => {
                    let response = answer.unwrap_or_else(|_| Response::error(ErrorCode::Internal, "the node dropped the request"));
                    self.metrics.response_sent(response.kind());
                    if self.swarm.behaviour_mut().tasks.send_response(channel, Frame::Valid(response)).is_err() {
                        debug!("response not sent: the connection closed");
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
        if let Err(e) = self.events.try_send(event) {
            warn!(error = %e, "node event queue full; event dropped");
            self.metrics.event_dropped();
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
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
                .add_address(&peer, strip_p2p(&addr));
            if let Err(e) = self.swarm.dial(addr.clone()) {
                warn!(addr = %addr, error = %e, "cannot dial bootstrap node");
                if let Some(b) = self.bootstrap.get_mut(&peer) {
                    b.last_error = Some(e.to_string());
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) =
            self.pending_bans.drain(..).partition(|(_, at)| *at <= now);
        self.pending_bans = later;
        for (peer, _) in due {
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
                let id = self
                    .swarm
                    .behaviour_mut()
                    .tasks
                    .send_request(&peer, Frame::Valid(*request));
                self.pending_requests.insert(id, reply);
            }
            Command::Publish { advert } => match codec::encode(&*advert) {
                Ok(bytes) => {
                    let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
                    match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                        Ok(_) => debug!(seq = advert.body.seq, "advert published"),
                        Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                            debug!("advert not published: no subscribed peers yet")
                        }
                        Err(gossipsub::PublishError::Duplicate) => {}
                        Err(e) => warn!(error = %e, "advert not published"),
                    }
                }
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
                for addr in addrs {
                    // Strip our own suffix: the address names the peer already.
                    let addr: Multiaddr = addr
                        .iter()
                        .filter(|p| !matches!(p, Protocol::P2p(_)))
                        .collect();
                    self.swarm.add_peer_address(peer, addr);
                }
            }
        }
    }

    fn status(&mut self) -> NetworkStatus {
        let local = *self.swarm.local_peer_id();
        let with_p2p = |a: &Multiaddr| a.clone().with_p2p(local).unwrap_or_else(|a| a).to_string();
        let routing_table = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        let mut peers: Vec<PeerStatus> = self
            .connections
            .iter()
            .filter_map(|(peer, c)| {
                Some(PeerStatus {
                    node: node_id_of(peer)?,
                    peer_id: peer.to_string(),
                    addr: c.addr.to_string(),
                    relayed: c.relayed,
                    agent: c.agent.clone(),
                })
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        NetworkStatus {
            peer_id: local.to_string(),
            listen_addrs: self.listen_addrs.iter().map(with_p2p).collect(),
            external_addrs: self.swarm.external_addresses().map(with_p2p).collect(),
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
            blocked: self.banned.keys().map(|p| p.to_string()).collect(),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                let full = address.clone().with_p2p(local).unwrap_or_else(|a| a);
                info!(addr = %full, "listening");
                self.listen_addrs.push(address);
                self.emit(NetworkEvent::Listening {
                    addr: full.to_string(),
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                let relayed = endpoint.is_relayed();
                if let Some(b) = self.bootstrap.get_mut(&peer_id) {
                    if b.attempts > 1 || b.last_error.is_some() {
                        info!(addr = %b.text, "bootstrap node answered");
                    }
                    b.last_error = None;
                    b.backoff = Duration::from_secs(self.config.bootstrap_retry_secs.max(1));
                    // Learn the rest of the mesh from the bootstrap node.
                    if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                        debug!(error = ?e, "kademlia bootstrap not started");
                    }
                }
                if num_established.get() == 1 {
                    self.connections.insert(
                        peer_id,
                        Conn {
                            addr,
                            relayed,
                            agent: None,
                        },
                    );
                    self.metrics.set_peers(self.connections.len());
                    if let Some(node) = node_id_of(&peer_id) {
                        self.emit(NetworkEvent::PeerConnected { node });
                    }
                } else if let Some(c) = self.connections.get_mut(&peer_id) {
                    // Prefer reporting a direct connection once one exists (after hole punching).
                    if c.relayed && !relayed {
                        c.addr = addr;
                        c.relayed = false;
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.metrics.set_peers(self.connections.len());
                    if let Some(node) = node_id_of(&peer_id) {
                        self.emit(NetworkEvent::PeerDisconnected { node });
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let Some(b) = self.bootstrap.get_mut(&peer) {
                    warn!(addr = %b.text, error = %error, retry_in_secs = b.backoff.as_secs(), "bootstrap node did not answer");
                    b.last_error = Some(error.to_string());
                } else {
                    debug!(peer = %peer, error = %error, "dial failed");
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            other => trace!(event = ?other, "swarm event"),
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in &info.listen_addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
                if let Some(c) = self.connections.get_mut(&peer_id) {
                    c.agent = Some(info.agent_version.clone());
                }
                if let Some(node) = node_id_of(&peer_id) {
                    let speaks_crank = info.protocols.contains(&TASK_PROTOCOL);
                    self.emit(NetworkEvent::PeerIdentified { node, speaks_crank });
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = self.check_advert(&message);
                let acceptance = match &verdict {
                    Ok(_) => gossipsub::MessageAcceptance::Accept,
                    Err(_) => gossipsub::MessageAcceptance::Reject,
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
                    Err(reason) => {
                        warn!(peer = %propagation_source, reason = %reason, "advert rejected");
                        self.penalize(propagation_source, &reason);
                    }
                }
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
            BehaviourEvent::Autonat(libp2p::autonat::Event::StatusChanged { old, new }) => {
                info!(old = ?old, new = ?new, "reachability changed");
            }
            other => trace!(event = ?other, "behaviour event"),
        }
    }

    fn check_advert(
        &self,
        message: &gossipsub::Message,
    ) -> Result<Signed<CapabilityAdvert>, String> {
        let advert: Signed<CapabilityAdvert> = codec::decode(&message.data, MAX_ADVERT_FRAME)
            .map_err(|e| format!("undecodable advert: {e}"))?;
        validate::advert(&advert, crate::clock::now_ms(), &self.limits)
            .map_err(|e| e.to_string())?;
        let author = message.source.as_ref().and_then(node_id_of);
        if author != Some(advert.body.node) {
            return Err("advert published by a different peer than the one it describes".into());
        }
        Ok(advert)
    }

    fn on_task_event(
        &mut self,
        event: request_response::Event<Frame<crank_protocol::Request>, Frame<Response>>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
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
                            let (tx, rx) = oneshot::channel();
                            self.pending_replies
                                .push(Box::pin(async move { (rx.await, channel) }));
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
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(result);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(peer = %peer, error = %error, "request failed");
                let err = match error {
                    OutboundFailure::DialFailure => RequestError::Unreachable,
                    OutboundFailure::Timeout => RequestError::Timeout,
                    OutboundFailure::ConnectionClosed => RequestError::ConnectionClosed,
                    OutboundFailure::UnsupportedProtocols => RequestError::Unsupported,
                    OutboundFailure::Io(e) => RequestError::Io(e.to_string()),
                };
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(err));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, error = %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}
