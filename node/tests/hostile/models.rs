//! Hostile-peer attacks: models.
