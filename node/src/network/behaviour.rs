//! The composed `NetworkBehaviour` and the swarm builder.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, allow_block_list, autonat, connection_limits, dcutr,
    gossipsub, identify, kad, memory_connection_limits, noise, ping, relay, request_response, tcp,
    yamux,
};

use super::codec::{TASK_PROTOCOL, TaskCodec};
use super::per_ip::{IpLimitConfig, IpLimits};
use super::{KadMode, NetworkConfig, NetworkError, Role, secs};

/// Kademlia protocol name: our own DHT, not the IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/crank/kad/1.0.0");

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/crank/1.0.0";

/// Gossipsub topic carrying capability adverts.
pub const ADVERT_TOPIC: &str = "crank/adverts/1";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // First: refuse connections over the limits before other behaviours do work for them.
    pub limits: connection_limits::Behaviour,
    pub per_ip: IpLimits,
    pub memory: memory_connection_limits::Behaviour,
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub autonat: autonat::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub tasks: request_response::Behaviour<TaskCodec>,
}

fn setup<E: std::fmt::Display>(e: E) -> NetworkError {
    NetworkError::Setup(e.to_string())
}

pub(crate) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    config: &NetworkConfig,
    role: &Role,
) -> Result<Swarm<Behaviour>, NetworkError> {
    let idle = secs(config.idle_connection_timeout_secs);
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(setup)?
        .with_quic()
        .with_dns()
        .map_err(setup)?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(setup)?
        .with_behaviour(|key, relay_client| build_behaviour(key, relay_client, config, role))
        .map_err(setup)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

fn build_behaviour(
    key: &libp2p::identity::Keypair,
    relay_client: relay::client::Behaviour,
    config: &NetworkConfig,
    role: &Role,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();

    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(64)),
    );

    let per_ip = IpLimits::new(IpLimitConfig {
        max_per_ip: config.max_connections_per_ip.max(1),
        limit_loopback: config.limit_loopback,
    });
    // Memory, not connection counts, is what runs out on a phone or a small VM: past the
    // limit new connections are refused (existing ones keep working).
    let memory = if config.max_memory_bytes > 0 {
        memory_connection_limits::Behaviour::with_max_bytes(
            usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX),
        )
    } else {
        memory_connection_limits::Behaviour::with_max_percentage(
            f64::from(config.max_memory_percent.clamp(1, 100)) / 100.0,
        )
    };

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
            .with_agent_version(format!("crank-node/{}", env!("CARGO_PKG_VERSION")))
            .with_push_listen_addr_updates(true)
            .with_interval(Duration::from_secs(60)),
    );

    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_query_timeout(Duration::from_secs(20))
        .set_record_ttl(Some(Duration::from_secs(15 * 60)))
        .set_provider_record_ttl(Some(Duration::from_secs(30 * 60)))
        .set_provider_publication_interval(Some(Duration::from_secs(10 * 60)))
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(5 * 60)));
    let store = kad::store::MemoryStore::with_config(
        peer_id,
        kad::store::MemoryStoreConfig {
            max_records: 1024,
            max_value_bytes: 16 * 1024,
            max_providers_per_key: kad::K_VALUE.get(),
            max_provided_keys: 4096,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    let mode = if role.bootstrap {
        KadMode::Server
    } else {
        config.kad_mode
    };
    // Auto starts as a client: the event loop turns it into a server once the node is known
    // to be reachable directly. libp2p's own automatic mode would also count a relay
    // reservation as reachability and serve the DHT through a rate-limited relay.
    kad.set_mode(Some(match mode {
        KadMode::Auto | KadMode::Client => kad::Mode::Client,
        KadMode::Server => kad::Mode::Server,
    }));

    // Ids from the decoded content: one node's advert with one sequence number is one message
    // however it is framed, so a captured advert cannot come back as "new" gossip.
    // Anonymous envelopes: an advert is signed by the node it describes and checked before it
    // is accepted or forwarded, so a second, libp2p-level signature would only double the
    // signing and verifying on every hop (each copy a node receives from its mesh peers was
    // verified before being found a duplicate). In a 100-node mesh that was a tenth of the
    // CPU.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| advert_message_id(&m.data))
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(config.gossip_heartbeat_ms.max(100)))
        .heartbeat_initial_delay(Duration::from_millis(100))
        .mesh_n(6)
        .mesh_n_low(4)
        .mesh_n_high(12)
        .mesh_outbound_min(2)
        .gossip_lazy(6)
        .flood_publish(true)
        .max_transmit_size(crank_protocol::codec::MAX_ADVERT_FRAME)
        .build()?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)?;
    let (params, thresholds) = peer_score();
    gossipsub.with_peer_score(params, thresholds)?;
    gossipsub.subscribe(&gossipsub::IdentTopic::new(ADVERT_TOPIC))?;

    let tasks = request_response::Behaviour::with_codec(
        TaskCodec::default(),
        [(TASK_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(secs(config.request_timeout_secs))
            .with_max_concurrent_streams(256),
    );

    let relay_server = Toggle::from(role.bootstrap.then(|| {
        let l = &config.relay;
        relay::Behaviour::new(
            peer_id,
            relay::Config {
                max_reservations: l.max_reservations,
                max_reservations_per_peer: l.max_reservations_per_peer,
                reservation_duration: Duration::from_secs(l.reservation_secs),
                max_circuits: l.max_circuits,
                max_circuits_per_peer: l.max_circuits_per_peer,
                max_circuit_bytes: l.max_circuit_bytes,
                max_circuit_duration: Duration::from_secs(l.max_circuit_secs),
                ..relay::Config::default()
            },
        )
    }));

    // Probe soon after start (a NAT'd node needs the answer before it reserves a relay
    // slot) and retry sooner than libp2p's 90 s when a probe found no server yet.
    let autonat = autonat::Behaviour::new(
        peer_id,
        autonat::Config {
            only_global_ips: config.autonat_only_global_ips,
            boot_delay: Duration::from_secs(config.autonat_boot_delay_secs),
            retry_interval: Duration::from_secs(30),
            throttle_server_period: Duration::from_secs(30),
            ..Default::default()
        },
    );

    Ok(Behaviour {
        limits,
        per_ip,
        memory,
        blocked: allow_block_list::Behaviour::default(),
        relay_client,
        relay_server,
        dcutr: dcutr::Behaviour::new(peer_id),
        autonat,
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        kad,
        gossipsub,
        tasks,
    })
}

/// The gossip id of an advert: the hash of its node and sequence number when it decodes (the
/// advert's signature is checked before it is accepted or forwarded), of the raw bytes when it
/// does not (it is then rejected, and its sender penalised).
pub(crate) fn advert_message_id(data: &[u8]) -> gossipsub::MessageId {
    let decoded: Result<crank_protocol::Signed<crank_protocol::CapabilityAdvert>, _> =
        crank_protocol::codec::decode(data, crank_protocol::codec::MAX_ADVERT_FRAME);
    let hash = match decoded {
        Ok(advert) => {
            let mut h = blake3::Hasher::new();
            h.update(b"crank advert id\0");
            h.update(&advert.body.node.0);
            h.update(&advert.body.seq.to_be_bytes());
            h.finalize()
        }
        Err(_) => blake3::hash(data),
    };
    gossipsub::MessageId::from(hash.as_bytes().to_vec())
}

/// Gossipsub peer scoring for the advert topic.
///
/// Adverts are few (one per node per advert interval), so delivery-rate penalties (P3, P3b)
/// are off: they would punish honest peers on a quiet mesh. What counts:
/// - P1, time in the mesh: +0.01 a second, at most +3 (a peer that stays is worth keeping);
/// - P2, first deliveries of valid adverts: +1 each, decaying by 10 % a second, at most +10;
/// - P4, invalid adverts (undecodable, non-canonical, badly signed): −25 × count², decaying
///   by 1 % a second (half-life about 70 s), so a second invalid advert already takes a peer
///   below the graylist;
/// - P6, IP colocation: −5 × (peers at one IP − 8)², loopback exempt;
/// - P7, broken gossip promises: libp2p's default weight (−10) above 6 a decay period.
///
/// Thresholds: below −10 no gossip to or from the peer, below −50 we do not publish to it,
/// below −80 its messages are ignored (graylist).
fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -25.0,
        invalid_message_deliveries_decay: 0.99,
        ..gossipsub::TopicScoreParams::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        topic_score_cap: 10.0,
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: -5.0,
        ip_colocation_factor_threshold: 8.0,
        behaviour_penalty_threshold: 6.0,
        ..gossipsub::PeerScoreParams::default()
    };
    params.ip_colocation_factor_whitelist.extend([
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ]);
    params
        .topics
        .insert(gossipsub::IdentTopic::new(ADVERT_TOPIC).hash(), topic);
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 2.0,
    };
    (params, thresholds)
}
