//! What a crank-node bootstrap node does differently, and the default bootstrap list.
//!
//! A bootstrap node is the same binary (`crank-node bootstrap`): it listens on a fixed,
//! well-known port, always serves the Kademlia DHT (a new node learns the mesh from it), runs a
//! circuit-relay v2 server so nodes behind NAT can be reached and can hole-punch, answers
//! AutoNAT probes so nodes learn whether they are publicly reachable, and takes no tasks. This
//! crate holds those settings as plain data; the node's network module applies them, so only
//! that module knows libp2p.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use serde::{Deserialize, Serialize};

/// Port a bootstrap node listens on unless told otherwise (TCP and QUIC).
pub const DEFAULT_PORT: u16 = 7400;

/// Listen addresses of a bootstrap node unless told otherwise.
pub fn default_listen() -> Vec<String> {
    vec![
        format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}"),
        format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1"),
    ]
}

/// Bootstrap peers every node dials unless its config says otherwise.
///
/// Empty until public crank-node bootstrap nodes are operated: a mesh is started by running
/// `crank-node bootstrap` somewhere reachable and passing its address to `join --bootstrap`
/// (or `[network] bootstrap` in the config).
pub const DEFAULT_PEERS: &[&str] = &[];

/// Limits of the relay server on bootstrap nodes.
///
/// A relayed connection carries hole-punching and, when punching fails, whole tasks; the
/// byte limit is set to fit a task's inputs and outputs (libp2p's default of 128 KiB does
/// not), and the duration to fit a task's deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    /// Reservations held at once, in all.
    pub max_reservations: usize,
    /// Reservations per peer.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts, seconds (clients renew).
    pub reservation_secs: u64,
    /// Relayed connections at once, in all.
    pub max_circuits: usize,
    /// Relayed connections per peer.
    pub max_circuits_per_peer: usize,
    /// Bytes one relayed connection may carry (both directions).
    pub max_circuit_bytes: u64,
    /// How long one relayed connection may last, seconds.
    pub max_circuit_secs: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 256,
            max_reservations_per_peer: 4,
            reservation_secs: 3600,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_bytes: 16 * 1024 * 1024,
            max_circuit_secs: 600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_a_task() {
        let l = RelayLimits::default();
        // A task's inputs travel in one frame of at most 8 MiB; the circuit must carry it.
        assert!(l.max_circuit_bytes >= 8 * 1024 * 1024);
        assert!(
            default_listen()
                .iter()
                .all(|a| a.contains(&DEFAULT_PORT.to_string()))
        );
    }
}
