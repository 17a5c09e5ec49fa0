//! User idle time: from systemd-logind where it runs, from tty access times otherwise.
//!
//! **logind** (`org.freedesktop.login1` on the system bus) keeps, per session, `IdleHint`
//! and `IdleSinceHint` (wall-clock microseconds). Only sessions of class `user` and of type
//! `tty`, `x11`, `wayland` or `mir` count; greeters, lock screens and background sessions
//! say nothing about a person at the keyboard. For a text session logind derives both from
//! the tty's access time, so its idle time is `now - IdleSinceHint` either way. A graphical
//! session is idle only once its desktop has set `IdleHint` (GNOME does after its idle delay,
//! swayidle with `idlehint`); a desktop that never sets it (older KDE) reads as always active,
//! so such an owner who wants work while at the machine chooses `run_when = "charging"`.
//! The user's idle time is the shortest over the counted sessions; no counted session at all
//! means nobody is logged in, which is idle.
//!
//! **tty access times** are the fallback when there is no system bus (containers, minimal
//! systems): the kernel updates a terminal's access time when it is read, that is, on input,
//! so the newest access time of `/dev/tty<N>` and `/dev/pts/<N>` is the last keystroke in a
//! terminal (what `w` shows as IDLE). Writes (a program printing) change only the modification
//! time and are ignored. A readable `/dev` (and `/dev/pts`, where it exists) without terminal
//! nodes is a machine nobody is logged in to: idle, and known to be. A `/dev` or `/dev/pts`
//! that cannot be listed says nothing, so the reading is [`IdleSource::Unknown`] and the gate
//! closes under the policies that need idleness ([`gate`](super::gate)).
//!
//! [`TerminalIdle`] is the Linux [`IdleProbe`]: it reads terminal access times, and the gate
//! monitor asks logind first. Other platforms have their own probes ([`probe`](super::probe)).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::debug;
use zbus::OwnedVariant;

use super::probe::IdleProbe;

/// Where an idle figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleSource {
    /// systemd-logind's idle hints.
    Logind,
    /// Access times of terminal device nodes.
    TtyAccess,
    /// The operating system's own input idle counter (macOS `HIDIdleTime`, Windows
    /// `GetLastInputInfo`).
    System,
    /// Nothing could be read: no reader for this platform, or its sources could not be read.
    /// The user may be at the machine.
    Unknown,
}

/// How long the user has been idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIdle {
    /// Seconds since the last user input; `None` when no user session exists (idle) or when
    /// the source is [`IdleSource::Unknown`].
    pub idle_secs: Option<u64>,
    /// Where the figure came from.
    pub source: IdleSource,
}

impl UserIdle {
    /// A reading that could not be taken.
    pub fn unknown() -> Self {
        Self {
            idle_secs: None,
            source: IdleSource::Unknown,
        }
    }

    /// Whether anything is known about the user: a figure, or knowing that nobody is there.
    pub fn is_known(&self) -> bool {
        self.source != IdleSource::Unknown
    }

    /// Whether the user is known to have been idle for at least `required_secs`; an unknown
    /// reading never is.
    pub fn is_idle_for(&self, required_secs: u64) -> bool {
        self.is_known() && self.idle_secs.is_none_or(|s| s >= required_secs)
    }
}

/// Reads terminal access times under `dev_root` (`tty<N>` and `pts/<N>`) and returns the idle
/// time at `now`. Unreadable nodes are skipped; with none present there is no session. A
/// `dev_root` that cannot be listed, or a `pts` directory that exists but cannot be listed,
/// gives [`UserIdle::unknown`].
pub fn tty_idle(dev_root: &Path, now: SystemTime) -> UserIdle {
    let ttys = match newest_access(dev_root, "tty") {
        Ok(t) => t,
        Err(e) => {
            debug!(dir = %dev_root.display(), error = %e, "terminals unreadable; user activity unknown");
            return UserIdle::unknown();
        }
    };
    let pts_dir = dev_root.join("pts");
    let pts = match newest_access(&pts_dir, "") {
        Ok(t) => t,
        // Without a devpts mount no pseudo-terminal (ssh, terminal emulator) can exist.
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            debug!(dir = %pts_dir.display(), error = %e, "pseudo-terminals unreadable; user activity unknown");
            return UserIdle::unknown();
        }
    };
    let newest = ttys.max(pts);
    UserIdle {
        // An access time in the future (clock step) means input just now.
        idle_secs: newest.map(|t| now.duration_since(t).map_or(0, |d| d.as_secs())),
        source: IdleSource::TtyAccess,
    }
}

/// The newest access time of the nodes in `dir` named `prefix` followed by digits.
fn newest_access(dir: &Path, prefix: &str) -> io::Result<Option<SystemTime>> {
    let mut newest: Option<SystemTime> = None;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(atime) = entry.metadata().and_then(|m| m.accessed())
            && newest.is_none_or(|n| atime > n)
        {
            newest = Some(atime);
        }
    }
    Ok(newest)
}

/// The Linux idle probe: terminal access times under a `/dev` root (the gate monitor asks
/// logind first, asynchronously, and uses this when logind does not answer).
#[derive(Debug, Clone)]
pub struct TerminalIdle {
    dev_root: PathBuf,
}

impl TerminalIdle {
    /// A probe reading `dev_root` (`/dev` on a real machine).
    pub fn new(dev_root: impl Into<PathBuf>) -> Self {
        Self {
            dev_root: dev_root.into(),
        }
    }
}

impl IdleProbe for TerminalIdle {
    fn read_idle(&self, now: SystemTime) -> UserIdle {
        tty_idle(&self.dev_root, now)
    }
}

/// One logind session's idle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogindSession {
    /// Session id.
    pub id: String,
    /// `Class`: user, greeter, lock-screen, background, manager, …
    pub class: String,
    /// `Type`: tty, x11, wayland, mir, unspecified.
    pub kind: String,
    /// `IdleHint`.
    pub idle_hint: bool,
    /// `IdleSinceHint`, microseconds since the Unix epoch (0 when never set).
    pub idle_since_usec: u64,
}

impl LogindSession {
    fn counts(&self) -> bool {
        self.class == "user" && matches!(self.kind.as_str(), "tty" | "x11" | "wayland" | "mir")
    }
}

/// The user's idle time at `now` from logind's sessions (see the module docs for the rules).
pub fn idle_from_sessions(sessions: &[LogindSession], now: SystemTime) -> UserIdle {
    let now_usec = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let idle_secs = sessions
        .iter()
        .filter(|s| s.counts())
        .map(|s| {
            if s.idle_hint || s.kind == "tty" {
                now_usec.saturating_sub(s.idle_since_usec) / 1_000_000
            } else {
                0
            }
        })
        .min();
    UserIdle {
        idle_secs,
        source: IdleSource::Logind,
    }
}

/// Why logind could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    /// No system bus to connect to (containers, minimal systems).
    #[error("cannot connect to the system D-Bus")]
    Connect(#[source] zbus::Error),
    /// A call to logind failed (logind not running, access denied, …).
    #[error("logind call {method} failed")]
    Call {
        /// The method called.
        method: &'static str,
        /// The D-Bus error.
        #[source]
        source: zbus::Error,
    },
    /// A session lacks a property or has one of the wrong type.
    #[error("logind session {session} has no usable {property} property")]
    Property {
        /// The session.
        session: String,
        /// The property.
        property: &'static str,
    },
}

const LOGIN1: &str = "org.freedesktop.login1";
const MANAGER_PATH: &str = "/org/freedesktop/login1";
const MANAGER_IFACE: &str = "org.freedesktop.login1.Manager";
const SESSION_IFACE: &str = "org.freedesktop.login1.Session";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// A connection to logind on the system bus.
#[derive(Debug, Clone)]
pub struct Logind {
    conn: zbus::Connection,
}

impl Logind {
    /// Connects to the standard system bus (must run inside a Tokio runtime).
    pub async fn connect() -> Result<Self, LogindError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(LogindError::Connect)?;
        Ok(Self { conn })
    }

    /// Connects to the bus at a D-Bus address such as `unix:path=/run/dbus/system_bus_socket`.
    pub async fn connect_to(address: &str) -> Result<Self, LogindError> {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(LogindError::Connect)?;
        Ok(Self { conn })
    }

    /// Lists the sessions and reads each one's class, type and idle hints.
    pub async fn sessions(&self) -> Result<Vec<LogindSession>, LogindError> {
        let reply = self
            .conn
            .call_method(
                Some(LOGIN1),
                MANAGER_PATH,
                Some(MANAGER_IFACE),
                "ListSessions",
                &(),
            )
            .await
            .map_err(|source| LogindError::Call {
                method: "ListSessions",
                source,
            })?;
        // (id, uid, user name, seat, object path)
        type Row = (String, u32, String, String, zbus::OwnedObjectPath);
        let rows: Vec<Row> = reply
            .body()
            .deserialize()
            .map_err(|source| LogindError::Call {
                method: "ListSessions",
                source,
            })?;
        let mut sessions = Vec::with_capacity(rows.len());
        for (id, _uid, _user, _seat, path) in rows {
            let reply = self
                .conn
                .call_method(
                    Some(LOGIN1),
                    path.as_str(),
                    Some(PROPERTIES_IFACE),
                    "GetAll",
                    &(SESSION_IFACE,),
                )
                .await;
            let props: HashMap<String, OwnedVariant> =
                match reply.and_then(|r| r.body().deserialize()) {
                    Ok(p) => p,
                    Err(e) => {
                        // A session may end between the listing and this call.
                        debug!(session = %id, error = %e, "logind session vanished or unreadable");
                        continue;
                    }
                };
            sessions.push(session_from_props(id, &props)?);
        }
        Ok(sessions)
    }

    /// The user's idle time from logind, at `now`.
    pub async fn idle(&self, now: SystemTime) -> Result<UserIdle, LogindError> {
        Ok(idle_from_sessions(&self.sessions().await?, now))
    }
}

fn session_from_props(
    id: String,
    props: &HashMap<String, OwnedVariant>,
) -> Result<LogindSession, LogindError> {
    let missing = |property| LogindError::Property {
        session: id.clone(),
        property,
    };
    let text = |name: &'static str| -> Result<String, LogindError> {
        props
            .get(name)
            .and_then(|v| <&str>::try_from(v).ok())
            .map(str::to_owned)
            .ok_or_else(|| missing(name))
    };
    let class = text("Class")?;
    let kind = text("Type")?;
    let idle_hint = props
        .get("IdleHint")
        .and_then(|v| bool::try_from(v).ok())
        .ok_or_else(|| missing("IdleHint"))?;
    let idle_since_usec = props
        .get("IdleSinceHint")
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| missing("IdleSinceHint"))?;
    Ok(LogindSession {
        id,
        class,
        kind,
        idle_hint,
        idle_since_usec,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn session(class: &str, kind: &str, idle_hint: bool, since_secs: u64) -> LogindSession {
        LogindSession {
            id: "1".into(),
            class: class.into(),
            kind: kind.into(),
            idle_hint,
            idle_since_usec: since_secs * 1_000_000,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn graphical_session_idle_only_with_hint() {
        let now = at(10_000);
        let active = idle_from_sessions(&[session("user", "wayland", false, 1_000)], now);
        assert_eq!(active.idle_secs, Some(0));
        let idle = idle_from_sessions(&[session("user", "x11", true, 9_000)], now);
        assert_eq!(idle.idle_secs, Some(1_000));
        assert_eq!(idle.source, IdleSource::Logind);
    }

    #[test]
    fn tty_session_uses_since_hint_and_minimum_wins() {
        let now = at(10_000);
        let sessions = [
            session("user", "tty", false, 9_960),
            session("user", "x11", true, 5_000),
        ];
        assert_eq!(idle_from_sessions(&sessions, now).idle_secs, Some(40));
    }

    #[test]
    fn greeters_and_background_sessions_do_not_count() {
        let now = at(10_000);
        let sessions = [
            session("greeter", "x11", false, 0),
            session("background", "unspecified", false, 0),
            session("user", "unspecified", false, 0),
        ];
        let idle = idle_from_sessions(&sessions, now);
        assert_eq!(idle.idle_secs, None);
        assert!(idle.is_idle_for(u64::MAX));
    }

    #[test]
    fn readable_dev_without_terminals_is_known_and_idle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pts")).unwrap();
        std::fs::write(dir.path().join("null"), "").unwrap();
        let idle = tty_idle(dir.path(), SystemTime::now());
        assert_eq!(idle.source, IdleSource::TtyAccess);
        assert_eq!(idle.idle_secs, None);
        assert!(idle.is_known() && idle.is_idle_for(u64::MAX));
        // No devpts at all: no pseudo-terminal can exist, still known.
        std::fs::remove_dir(dir.path().join("pts")).unwrap();
        assert!(tty_idle(dir.path(), SystemTime::now()).is_known());
    }

    #[test]
    fn unreadable_terminals_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let missing = tty_idle(&dir.path().join("no-dev"), SystemTime::now());
        assert_eq!(missing, UserIdle::unknown());
        assert!(!missing.is_idle_for(0));
        // A pts that exists but cannot be listed (here: not a directory).
        std::fs::write(dir.path().join("pts"), "").unwrap();
        assert_eq!(tty_idle(dir.path(), SystemTime::now()), UserIdle::unknown());
        let probe = TerminalIdle::new(dir.path().join("no-dev"));
        assert_eq!(probe.read_idle(SystemTime::now()), UserIdle::unknown());
    }

    #[test]
    fn session_props_parse_and_missing_ones_are_errors() {
        let mut props = HashMap::new();
        props.insert(
            "Class".to_owned(),
            OwnedVariant::from(zbus::Str::from("user")),
        );
        props.insert(
            "Type".to_owned(),
            OwnedVariant::from(zbus::Str::from("tty")),
        );
        props.insert("IdleHint".to_owned(), OwnedVariant::from(true));
        props.insert(
            "IdleSinceHint".to_owned(),
            OwnedVariant::from(5_000_000_u64),
        );
        let s = session_from_props("c1".into(), &props).unwrap();
        assert_eq!(
            s,
            LogindSession {
                id: "c1".into(),
                class: "user".into(),
                kind: "tty".into(),
                idle_hint: true,
                idle_since_usec: 5_000_000,
            }
        );
        props.remove("IdleHint");
        let err = session_from_props("c1".into(), &props).unwrap_err();
        assert!(err.to_string().contains("IdleHint"), "{err}");
    }
}
