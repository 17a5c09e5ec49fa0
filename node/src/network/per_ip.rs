//! Per-IP limits on inbound connections, and IP blocks.
//!
//! Peer ids cost nothing to mint, so a limit per peer does not stop one host from opening
//! hundreds of connections under fresh identities. This behaviour counts inbound
//! connections (pending and established) per source address — one IPv4 address, or one
//! IPv6 /64, the block a single host or household usually gets — and denies those over the
//! limit before the security handshake is spent on them. It also refuses every connection
//! from an address the event loop blocked (several banned identities from it).
//!
//! Relayed connections are not counted: their source address is the relay's, shared by
//! every peer it relays; the relay's own per-peer limits apply to them. Loopback addresses
//! are exempt unless [`IpLimitConfig::limit_loopback`] is set, since on a real network they
//! are the operator's own processes (tests set it to exercise the limit on 127.0.0.1).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// The part of a source address that names one host: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    /// One IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            Self::V6(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

impl IpKey {
    /// The key of an IP address (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(p)
                }
            },
        }
    }
}

/// The host a remote address names, when it names one directly: none for relayed addresses
/// (the IP in them is the relay's) or addresses without an IP.
pub fn source_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Settings of the per-IP limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLimitConfig {
    /// Most inbound connections (pending and established) from one IPv4 address or IPv6 /64.
    pub max_per_ip: u32,
    /// Whether loopback addresses are limited too.
    pub limit_loopback: bool,
}

/// Why a connection was refused by [`IpLimits`].
#[derive(Debug, thiserror::Error)]
pub enum IpDenied {
    /// The source already holds the most connections allowed.
    #[error("{ip} already holds {held} connections to this node, the most one address may")]
    TooMany {
        /// The source.
        ip: IpKey,
        /// Connections it holds.
        held: u32,
    },
    /// The source is blocked for misbehaviour.
    #[error("{ip} is blocked for misbehaviour")]
    Blocked {
        /// The source.
        ip: IpKey,
    },
}

/// Counts inbound connections per source and refuses those over the limit.
pub struct IpLimits {
    config: IpLimitConfig,
    /// Source of every counted inbound connection.
    conns: HashMap<ConnectionId, IpKey>,
    per_ip: HashMap<IpKey, u32>,
    blocked: HashMap<IpKey, Instant>,
}

impl IpLimits {
    /// Limits with `config`, nothing counted yet.
    pub fn new(config: IpLimitConfig) -> Self {
        Self {
            config,
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            blocked: HashMap::new(),
        }
    }

    /// The key this behaviour counts `addr` under, if it counts it at all.
    fn key(&self, addr: &Multiaddr) -> Option<IpKey> {
        let ip = source_ip(addr)?;
        (self.config.limit_loopback || !ip.is_loopback()).then(|| IpKey::of(ip))
    }

    /// Counts a new inbound connection from `remote`, or says why it is refused.
    pub fn admit(
        &mut self,
        id: ConnectionId,
        remote: &Multiaddr,
        now: Instant,
    ) -> Result<(), IpDenied> {
        let Some(ip) = self.key(remote) else {
            return Ok(());
        };
        if self.blocked.get(&ip).is_some_and(|until| *until > now) {
            return Err(IpDenied::Blocked { ip });
        }
        let held = self.per_ip.get(&ip).copied().unwrap_or(0);
        if held >= self.config.max_per_ip {
            return Err(IpDenied::TooMany { ip, held });
        }
        self.per_ip.insert(ip, held + 1);
        self.conns.insert(id, ip);
        Ok(())
    }

    /// Forgets a connection that closed or failed.
    pub fn release(&mut self, id: ConnectionId) {
        if let Some(ip) = self.conns.remove(&id)
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Inbound connections counted from `ip` now.
    pub fn held(&self, ip: &IpKey) -> u32 {
        self.per_ip.get(ip).copied().unwrap_or(0)
    }

    /// Refuses new connections from the host of `ip` until `until` (loopback only when
    /// loopback is limited). Returns whether it was blocked.
    pub fn block(&mut self, ip: IpAddr, until: Instant) -> bool {
        if ip.is_loopback() && !self.config.limit_loopback {
            return false;
        }
        self.blocked.insert(IpKey::of(ip), until);
        true
    }

    /// Lifts blocks that ran out; returns the lifted ones.
    pub fn expire_blocks(&mut self, now: Instant) -> Vec<IpKey> {
        let lifted: Vec<IpKey> = self
            .blocked
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &lifted {
            self.blocked.remove(ip);
        }
        lifted
    }

    /// Sources blocked now.
    pub fn blocked(&self) -> impl Iterator<Item = &IpKey> {
        self.blocked.keys()
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(connection_id, remote_addr, Instant::now())
            .map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Counted when pending; the same connection id carries over.
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.release(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_hosts_count_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::of(a), IpKey::of(b));
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(IpKey::of(mapped), IpKey::V4([192, 0, 2, 7]));
        assert_eq!(IpKey::of(a).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn one_address_gets_at_most_n_connections_and_others_are_unaffected() {
        let mut limits = IpLimits::new(IpLimitConfig {
            max_per_ip: 2,
            limit_loopback: false,
        });
        let now = Instant::now();
        let from = addr("/ip4/198.51.100.4/tcp/5000");
        let ids: Vec<ConnectionId> = (1..=4).map(ConnectionId::new_unchecked).collect();
        limits.admit(ids[0], &from, now).unwrap();
        limits
            .admit(ids[1], &addr("/ip4/198.51.100.4/tcp/5001"), now)
            .unwrap();
        assert!(matches!(
            limits.admit(ids[2], &from, now),
            Err(IpDenied::TooMany { held: 2, .. })
        ));
        // Another host, a relayed connection and loopback are not held against it.
        limits
            .admit(ids[2], &addr("/ip4/198.51.100.5/tcp/5000"), now)
            .unwrap();
        let relayed = addr(
            "/ip4/198.51.100.4/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        limits.admit(ids[3], &relayed, now).unwrap();
        for _ in 0..5 {
            limits
                .admit(
                    ConnectionId::new_unchecked(99),
                    &addr("/ip4/127.0.0.1/tcp/1"),
                    now,
                )
                .unwrap();
        }
        // A closed connection frees its place.
        limits.release(ids[0]);
        assert_eq!(limits.held(&IpKey::V4([198, 51, 100, 4])), 1);
        limits.admit(ids[0], &from, now).unwrap();
        // Releasing what was never counted changes nothing.
        limits.release(ids[3]);
        assert_eq!(limits.held(&IpKey::V4([198, 51, 100, 4])), 2);
    }

    #[test]
    fn loopback_is_limited_only_when_asked_and_blocks_expire() {
        let mut limits = IpLimits::new(IpLimitConfig {
            max_per_ip: 1,
            limit_loopback: true,
        });
        let now = Instant::now();
        let lo = addr("/ip4/127.0.0.1/tcp/1");
        limits
            .admit(ConnectionId::new_unchecked(1), &lo, now)
            .unwrap();
        assert!(
            limits
                .admit(ConnectionId::new_unchecked(2), &lo, now)
                .is_err()
        );
        // 127.0.0.2 is another address.
        limits
            .admit(
                ConnectionId::new_unchecked(3),
                &addr("/ip4/127.0.0.2/tcp/1"),
                now,
            )
            .unwrap();

        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(limits.block(ip, now + Duration::from_secs(10)));
        assert!(matches!(
            limits.admit(
                ConnectionId::new_unchecked(4),
                &addr("/ip4/203.0.113.9/tcp/7"),
                now
            ),
            Err(IpDenied::Blocked { .. })
        ));
        assert!(limits.expire_blocks(now).is_empty());
        assert_eq!(
            limits.expire_blocks(now + Duration::from_secs(10)),
            vec![IpKey::V4([203, 0, 113, 9])]
        );
        limits
            .admit(
                ConnectionId::new_unchecked(4),
                &addr("/ip4/203.0.113.9/tcp/7"),
                now,
            )
            .unwrap();

        let mut open = IpLimits::new(IpLimitConfig {
            max_per_ip: 1,
            limit_loopback: false,
        });
        assert!(!open.block("127.0.0.1".parse().unwrap(), now + Duration::from_secs(1)));
    }
}
