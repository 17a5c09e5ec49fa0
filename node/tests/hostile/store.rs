//! Hostile-peer attacks: store.
