//! Hostile-peer attacks: network.
