//! Small helpers for reading one-value sysfs and procfs attribute files.

use std::io;
use std::path::Path;
use std::str::FromStr;

/// Reads an attribute file and trims the trailing newline the kernel writes.
pub(crate) fn read_trimmed(path: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim().to_owned())
}

/// Reads and parses an attribute file; `None` when it is missing, unreadable or malformed,
/// because sysfs attributes are optional per driver and a bad one must not fail a whole reading.
pub(crate) fn read_parsed<T: FromStr>(path: &Path) -> Option<T> {
    read_trimmed(path).ok()?.parse().ok()
}
