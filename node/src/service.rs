//! `crank-node service`: a systemd unit that runs `crank-node join` in the background, as
//! the owner (a *user* unit, `~/.config/systemd/user/crank-node.service`) or as a dedicated
//! system user (`/etc/systemd/system/crank-node.service`).
//!
//! [`render`] is a pure function from [`UnitOptions`] to the unit's text, so the unit can be
//! tested, compared with what is installed (`service status`), and shipped in the Debian
//! package (`node/debian/crank-node.service` is `render` of [`UnitOptions::debian`]).
//!
//! # Hardening, and what is left out
//!
//! The unit confines the node as far as the node's own work allows. Left out on purpose:
//!
//! - `SystemCallFilter=`: every model runs in a child of this binary that installs its own,
//!   tighter seccomp allow-list (`crank_inference::runner`) with `seccomp(2)`, which is not in
//!   `@system-service`; a unit-wide filter would kill the runner with `SIGSYS` at start (and
//!   would have to follow whatever a GPU driver calls).
//! - `MemoryDenyWriteExecute=`: GPU drivers (Mesa's Vulkan drivers compile shaders with LLVM)
//!   map writable and executable memory.
//! - `PrivateDevices=`: it hides `/dev/dri` (the GPU path) and the terminals whose access times
//!   tell the power gate that the user is idle.
//! - `ProtectProc=invisible`, `ProcSubset=pid`: the gate reads other processes' CPU use and
//!   `/proc/stat`; hidden, the machine would look idle while the owner works.
//! - `PrivateNetwork=`, `IPAddressDeny=`: it is a network node.
//! - `DynamicUser=`: the data dir holds the node key and the payout key, which must keep their
//!   owner across restarts and upgrades; a named system user does.
//!
//! Kept, because nothing the node does needs them: no new privileges (the runner's seccomp
//! needs only `PR_SET_NO_NEW_PRIVS`, which it sets itself), a read-only file system but the
//! data dir, private `/tmp`, no namespaces (the runner creates none), no realtime, native
//! system calls only, and sockets limited to Unix (the API, logind on D-Bus), IPv4, IPv6 and
//! netlink (libp2p watches interfaces). `/sys` stays readable for the power supply.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crank_protocol::RunPolicy;
use serde::Serialize;

/// The unit's file name.
pub const UNIT_NAME: &str = "crank-node.service";

/// Where the system unit goes.
pub const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// The dedicated user of a system unit, unless another is named.
pub const DEFAULT_SYSTEM_USER: &str = "crank-node";

/// Default `MemoryMax=`: half the machine's memory, so a runaway model cannot push the
/// owner's own programs into swap.
pub const DEFAULT_MEMORY_MAX: &str = "50%";

/// Whose service manager runs the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The owner's own manager (`systemctl --user`); runs as the owner.
    User,
    /// The system manager, as a dedicated user.
    System,
}

impl Scope {
    /// The flag `systemctl` needs for this scope, if any.
    pub fn systemctl_flag(self) -> Option<&'static str> {
        match self {
            Self::User => Some("--user"),
            Self::System => None,
        }
    }

    /// `systemctl` or `systemctl --user`, as an owner would type it.
    pub fn systemctl(self) -> &'static str {
        match self {
            Self::User => "systemctl --user",
            Self::System => "systemctl",
        }
    }
}

/// Everything the unit's text depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOptions {
    /// User or system unit.
    pub scope: Scope,
    /// The `crank-node` binary `ExecStart=` runs.
    pub exe: PathBuf,
    /// The node's data dir (the only path it may write).
    pub data_dir: PathBuf,
    /// A config file to pass with `--config`; `None`: `config.toml` in the data dir.
    pub config: Option<PathBuf>,
    /// The system unit's `User=` (ignored for a user unit).
    pub user: String,
    /// Bootstrap peers for `join --bootstrap`.
    pub bootstrap: Vec<String>,
    /// Listen addresses for `join --listen`.
    pub listen: Vec<String>,
    /// `join --run-when`; `None`: the configured policy.
    pub run_when: Option<RunPolicy>,
    /// `MemoryMax=`, e.g. `50%`, `2G`.
    pub memory_max: String,
    /// `CPUQuota=`, e.g. `200%` (two cores); `None`: no quota.
    pub cpu_quota: Option<String>,
}

impl UnitOptions {
    /// A unit for `data_dir` running `exe` with the defaults.
    pub fn new(scope: Scope, exe: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            scope,
            exe,
            data_dir,
            config: None,
            user: DEFAULT_SYSTEM_USER.into(),
            bootstrap: Vec::new(),
            listen: Vec::new(),
            run_when: None,
            memory_max: DEFAULT_MEMORY_MAX.into(),
            cpu_quota: None,
        }
    }

    /// The system unit the Debian package ships: `/usr/bin/crank-node` as user `crank-node`
    /// on `/var/lib/crank-node` (its `config.toml` names the bootstrap peers).
    pub fn debian() -> Self {
        Self::new(
            Scope::System,
            PathBuf::from("/usr/bin/crank-node"),
            PathBuf::from("/var/lib/crank-node"),
        )
    }
}

/// Why a unit could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A path or value cannot be written into a unit file.
    #[error("{what} {value:?} cannot go into a unit file: {why}")]
    Unrepresentable {
        /// Which setting.
        what: &'static str,
        /// The value.
        value: String,
        /// Why not.
        why: &'static str,
    },
    /// No home directory to put a user unit in.
    #[error("no $XDG_CONFIG_HOME or $HOME to put a user unit in; pass --system or set HOME")]
    NoHome,
    /// Reading, writing or removing the unit file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Quotes one `ExecStart=` word the way systemd reads it back: plain when it can be, else in
/// double quotes; `%` and `$` are doubled so systemd expands neither specifiers nor variables.
fn exec_word(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'));
    if plain {
        return escaped;
    }
    let mut s = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            _ => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A path for a path-list setting (`ReadWritePaths=`): absolute, one line, specifiers escaped,
/// quoted when it holds spaces.
fn unit_path(what: &'static str, path: &Path) -> Result<String, ServiceError> {
    let text = path.to_str().ok_or_else(|| ServiceError::Unrepresentable {
        what,
        value: path.display().to_string(),
        why: "not UTF-8",
    })?;
    let bad = |why| ServiceError::Unrepresentable {
        what,
        value: text.to_string(),
        why,
    };
    if !path.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    if text.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    Ok(exec_word(text))
}

/// A plain value (`MemoryMax=`, `User=`): one word, no quoting needed.
fn unit_word(what: &'static str, value: &str) -> Result<String, ServiceError> {
    if value.is_empty()
        || value.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\' | '%' | '$')
        })
    {
        return Err(ServiceError::Unrepresentable {
            what,
            value: value.to_string(),
            why: "must be one plain word",
        });
    }
    Ok(value.to_string())
}

/// `StateDirectory=` for a data dir under `/var/lib` with a plain name (systemd takes it
/// relative to `/var/lib`).
fn state_directory(data_dir: &Path) -> Option<String> {
    let rest = data_dir.strip_prefix("/var/lib").ok()?.to_str()?;
    unit_word("StateDirectory", rest).ok()
}

/// A size or share (`MemoryMax=2G`, `50%`, `CPUQuota=200%`): systemd expands no specifiers
/// in these, so `%` stays as it is.
fn unit_quantity(what: &'static str, value: &str) -> Result<String, ServiceError> {
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '%')
    {
        return Err(ServiceError::Unrepresentable {
            what,
            value: value.to_string(),
            why: "must be a size (2G), a percentage (50%) or infinity",
        });
    }
    Ok(value.to_string())
}

/// The `ExecStart=` command line.
fn exec_start(o: &UnitOptions) -> Result<String, ServiceError> {
    let mut words = vec![
        unit_path("the binary", &o.exe)?,
        "--data-dir".into(),
        unit_path("the data dir", &o.data_dir)?,
    ];
    if let Some(c) = &o.config {
        words.push("--config".into());
        words.push(unit_path("the config file", c)?);
    }
    words.push("join".into());
    for b in &o.bootstrap {
        words.push("--bootstrap".into());
        words.push(exec_word(b));
    }
    for l in &o.listen {
        words.push("--listen".into());
        words.push(exec_word(l));
    }
    if let Some(p) = o.run_when {
        words.push("--run-when".into());
        words.push(p.to_string());
    }
    Ok(words.join(" "))
}

/// The unit's text for `o`.
pub fn render(o: &UnitOptions) -> Result<String, ServiceError> {
    let system = o.scope == Scope::System;
    let data_dir = unit_path("the data dir", &o.data_dir)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by `crank-node service install`; `crank-node service status` tells whether it\n\
         # still matches what install would write. Edits are overwritten by the next install:\n\
         # put local changes in a drop-in (`{} edit crank-node`).",
        o.scope.systemctl()
    );
    s.push_str("[Unit]\n");
    s.push_str("Description=crank-node: peer-to-peer inference worker\n");
    s.push_str("Documentation=man:crank-node(1)\n");
    if system {
        // The user manager has no network-online.target; a user node retries its dials.
        s.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    s.push_str("\n[Service]\n");
    s.push_str("Type=exec\n");
    let _ = writeln!(s, "ExecStart={}", exec_start(o)?);
    if system {
        let user = unit_word("the user", &o.user)?;
        let _ = writeln!(s, "User={user}\nGroup={user}");
        if let Some(dir) = state_directory(&o.data_dir) {
            // systemd creates it, owned by the user, and keeps it writable.
            let _ = writeln!(s, "StateDirectory={dir}\nStateDirectoryMode=0700");
        }
    }
    s.push_str(
        "# SIGTERM stops the node cleanly (ledger closed); give it time to finish the task in hand.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=60s\n\
         Restart=on-failure\n\
         RestartSec=10s\n",
    );
    s.push_str("# Background work: the owner's programs come first.\nNice=10\n");
    let _ = writeln!(
        s,
        "MemoryMax={}",
        unit_quantity("MemoryMax", &o.memory_max)?
    );
    if let Some(q) = &o.cpu_quota {
        let _ = writeln!(s, "CPUQuota={}", unit_quantity("CPUQuota", q)?);
    }
    s.push_str(
        "\n# Hardening. Left out because the node needs what they forbid:\n\
         #  SystemCallFilter=        model runners install their own seccomp allow-list with\n\
         #                           seccomp(2), which @system-service lacks (SIGSYS at start);\n\
         #  MemoryDenyWriteExecute=  GPU drivers (Mesa Vulkan) compile shaders at run time;\n\
         #  PrivateDevices=          hides /dev/dri (GPU) and the terminals the idle gate reads;\n\
         #  ProtectProc=, ProcSubset= hide the other processes' CPU use and /proc/stat the\n\
         #                           power gate reads.\n",
    );
    if !system {
        s.push_str(
            "# In a user unit the file-system options below run in a user namespace\n\
             # (PrivateUsers= is implied), which needs unprivileged user namespaces.\n",
        );
    }
    s.push_str("UMask=0077\nNoNewPrivileges=yes\nProtectSystem=strict\n");
    if system {
        // A data dir under /home stays reachable, read-only but for itself.
        let home = ["/home", "/root", "/run/user"]
            .iter()
            .any(|h| o.data_dir.starts_with(h));
        let _ = writeln!(s, "ProtectHome={}", if home { "read-only" } else { "yes" });
    }
    let _ = writeln!(s, "ReadWritePaths={data_dir}");
    s.push_str(
        "PrivateTmp=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n",
    );
    if system {
        s.push_str(
            "ProtectClock=yes\n\
             ProtectHostname=yes\n\
             CapabilityBoundingSet=\n\
             RemoveIPC=yes\n",
        );
    }
    s.push_str(
        "RestrictNamespaces=yes\n\
         RestrictSUIDSGID=yes\n\
         RestrictRealtime=yes\n\
         LockPersonality=yes\n\
         SystemCallArchitectures=native\n\
         # Unix: the local API and logind on D-Bus; netlink: libp2p watches the interfaces.\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n",
    );
    s.push_str("\n[Install]\n");
    let _ = writeln!(
        s,
        "WantedBy={}",
        if system {
            "multi-user.target"
        } else {
            "default.target"
        }
    );
    Ok(s)
}

/// The directory a unit of `scope` goes in: `$XDG_CONFIG_HOME/systemd/user` (else
/// `~/.config/systemd/user`), or `/etc/systemd/system`.
pub fn unit_dir(scope: Scope) -> Result<PathBuf, ServiceError> {
    match scope {
        Scope::System => Ok(PathBuf::from(SYSTEM_UNIT_DIR)),
        Scope::User => {
            let env = |k| std::env::var_os(k).filter(|v| !v.is_empty());
            if let Some(x) = env("XDG_CONFIG_HOME") {
                return Ok(PathBuf::from(x).join("systemd/user"));
            }
            env("HOME")
                .map(|h| PathBuf::from(h).join(".config/systemd/user"))
                .ok_or(ServiceError::NoHome)
        }
    }
}

/// What the installed unit file is, next to what install would write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitFileState {
    /// The unit file.
    pub path: PathBuf,
    /// Whether it exists.
    pub installed: bool,
    /// Whether it is byte for byte what install would write now (`None`: not installed).
    pub up_to_date: Option<bool>,
}

/// Compares the unit file at `path` with `expected`.
pub fn file_state(path: &Path, expected: &str) -> Result<UnitFileState, ServiceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(UnitFileState {
            path: path.into(),
            installed: true,
            up_to_date: Some(text == expected),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UnitFileState {
            path: path.into(),
            installed: false,
            up_to_date: None,
        }),
        Err(source) => Err(ServiceError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// Writes `text` to `path` (creating its directory), replacing the file atomically.
pub fn write_unit(path: &Path, text: &str) -> Result<(), ServiceError> {
    let io = |source| ServiceError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("service.tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The commands an owner runs after `install` without `--enable`.
pub fn next_steps(o: &UnitOptions, user_exists: bool) -> Vec<String> {
    let ctl = o.scope.systemctl();
    let mut steps = Vec::new();
    if o.scope == Scope::System && !user_exists {
        steps.push(format!(
            "useradd --system --home-dir {} --shell /usr/sbin/nologin {}",
            o.data_dir.display(),
            o.user
        ));
    }
    if o.scope == Scope::System && !o.data_dir.starts_with("/var/lib") {
        steps.push(format!(
            "install -d -o {u} -g {u} -m 0700 {}",
            o.data_dir.display(),
            u = o.user
        ));
    }
    steps.push(format!("{ctl} daemon-reload"));
    steps.push(format!("{ctl} enable --now crank-node"));
    if o.scope == Scope::User {
        // Without lingering, a user unit stops when the owner logs out.
        steps.push("loginctl enable-linger \"$USER\"".into());
        steps.push("journalctl --user -u crank-node -f".into());
    } else {
        steps.push("journalctl -u crank-node -f".into());
    }
    steps
}

/// Whether `name` is a user in `/etc/passwd`.
pub fn system_user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|t| {
            t.lines()
                .any(|l| l.split(':').next().is_some_and(|u| u == name))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_unit() -> UnitOptions {
        UnitOptions::new(
            Scope::User,
            "/usr/local/bin/crank-node".into(),
            "/home/ada/.local/share/crank-node".into(),
        )
    }

    #[test]
    fn a_user_unit_runs_join_on_the_data_dir_with_hardening() {
        let mut o = user_unit();
        o.bootstrap = vec!["/ip4/203.0.113.7/tcp/7400/p2p/12D3KooWabc".into()];
        o.run_when = Some(RunPolicy::Idle);
        let text = render(&o).unwrap();
        assert!(text.contains(
            "ExecStart=/usr/local/bin/crank-node --data-dir /home/ada/.local/share/crank-node join --bootstrap /ip4/203.0.113.7/tcp/7400/p2p/12D3KooWabc --run-when idle\n"
        ), "{text}");
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "MemoryMax=50%",
            "ReadWritePaths=/home/ada/.local/share/crank-node",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "LockPersonality=yes",
            "RestrictRealtime=yes",
            "SystemCallArchitectures=native",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=60s",
            "WantedBy=default.target",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}: {text}");
        }
        // System-only settings stay out of a user unit.
        for key in [
            "User=",
            "ProtectHome=",
            "CPUQuota=",
            "CapabilityBoundingSet=",
        ] {
            assert!(!text.lines().any(|l| l.starts_with(key)), "{key}: {text}");
        }
        // Options that would break the runner's sandbox or the gate are absent, not just
        // commented on.
        for key in [
            "SystemCallFilter=",
            "MemoryDenyWriteExecute=",
            "PrivateDevices=",
            "ProtectProc=",
            "ProcSubset=",
        ] {
            assert!(!text.lines().any(|l| l.starts_with(key)), "{key}: {text}");
        }
    }

    #[test]
    fn a_system_unit_runs_as_its_own_user_with_a_state_directory() {
        let mut o = UnitOptions::debian();
        o.cpu_quota = Some("200%".into());
        o.memory_max = "2G".into();
        let text = render(&o).unwrap();
        for line in [
            "User=crank-node",
            "Group=crank-node",
            "StateDirectory=crank-node",
            "ProtectHome=yes",
            "CPUQuota=200%",
            "MemoryMax=2G",
            "ReadWritePaths=/var/lib/crank-node",
            "After=network-online.target",
            "WantedBy=multi-user.target",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}: {text}");
        }
        // A data dir in a home directory stays reachable.
        let mut o = UnitOptions::debian();
        o.data_dir = "/home/ada/crank".into();
        let text = render(&o).unwrap();
        assert!(text.lines().any(|l| l == "ProtectHome=read-only"), "{text}");
        assert!(!text.contains("StateDirectory="), "{text}");
    }

    #[test]
    fn awkward_paths_are_quoted_and_specifiers_escaped() {
        let mut o = user_unit();
        o.data_dir = "/home/ada/my data/100%".into();
        let text = render(&o).unwrap();
        assert!(
            text.contains("--data-dir \"/home/ada/my data/100%%\" join"),
            "{text}"
        );
        assert!(
            text.contains("ReadWritePaths=\"/home/ada/my data/100%%\"\n"),
            "{text}"
        );
        o.data_dir = "relative/dir".into();
        assert!(render(&o).is_err());
        o.data_dir = "/ok".into();
        o.memory_max = "2 G".into();
        assert!(render(&o).is_err());
        o.memory_max = "2G".into();
        o.scope = Scope::System;
        o.user = "x y".into();
        assert!(render(&o).is_err());
    }

    #[test]
    fn the_debian_unit_is_what_render_writes() {
        let shipped = include_str!("../debian/crank-node.service");
        assert_eq!(shipped, render(&UnitOptions::debian()).unwrap());
    }

    #[test]
    fn status_tells_missing_current_and_stale_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UNIT_NAME);
        let text = render(&user_unit()).unwrap();
        let s = file_state(&path, &text).unwrap();
        assert!(!s.installed);
        assert_eq!(s.up_to_date, None);
        write_unit(&path, &text).unwrap();
        assert_eq!(file_state(&path, &text).unwrap().up_to_date, Some(true));
        std::fs::write(&path, "[Unit]\n").unwrap();
        assert_eq!(file_state(&path, &text).unwrap().up_to_date, Some(false));
    }

    #[test]
    fn next_steps_name_the_right_manager() {
        let steps = next_steps(&user_unit(), true);
        assert!(steps.contains(&"systemctl --user enable --now crank-node".to_string()));
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with("loginctl enable-linger"))
        );
        let steps = next_steps(&UnitOptions::debian(), false);
        assert!(steps[0].starts_with("useradd --system"));
        assert!(steps.contains(&"systemctl enable --now crank-node".to_string()));
    }
}
