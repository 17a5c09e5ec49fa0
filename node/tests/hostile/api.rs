//! Hostile-peer attacks: api.
