//! Wall-clock time for the pure crates, which take time as an argument.

use std::time::{SystemTime, UNIX_EPOCH};

use crank_protocol::UnixMillis;

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
