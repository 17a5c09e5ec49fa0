//! `crank-node doctor`: checks what a node needs to earn, each with a verdict (ok, warn,
//! fail) and a line saying what to fix.
//!
//! The checks read; they change nothing but a probe file in the data dir (written and removed
//! to prove it is writable). The verdict rules are pure functions of what was read
//! ([`power_check`], [`disk_check`], [`skew_check`], …), tested without the machine; [`run`]
//! reads the machine and the network and applies them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crank_inference::device::idle::{IdleSource, UserIdle};
use crank_inference::device::power::{PowerReading, PowerSource};
use crank_inference::device::probe;
use crank_payments::horizon::AccountInfo;
use crank_protocol::RunPolicy;
use serde::Serialize;

use crate::commands::ApiClient;
use crate::config::Config;
use crate::plumbing::chain;

/// How long one network probe (a TCP connect, an HTTP request, a logind call) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Free space in the data dir below which models and the ledger may not fit.
pub const DISK_WARN_BYTES: u64 = 1 << 30;
/// Free space below which the node cannot be expected to keep its ledger.
pub const DISK_FAIL_BYTES: u64 = 100 << 20;
/// Clock difference from Horizon worth a warning: receipts and transactions carry times.
pub const SKEW_WARN_SECS: i64 = 5;
/// Clock difference at which transactions' time bounds and receipts' ages go wrong.
pub const SKEW_FAIL_SECS: i64 = 120;

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but worth fixing (or could not be checked).
    Warn,
    /// The node cannot do its job until this is fixed.
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        })
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`power`, `idle`, `data_dir`, `ledger`, `disk`, `bootstrap`,
    /// `horizon`, `clock`, `wallet`, `node`).
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found, in a line.
    pub summary: String,
    /// What to do about it (absent when there is nothing to do).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, summary: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Ok,
            summary: summary.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Warn,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Fail,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in the order run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The worst verdict of all.
    pub verdict: Verdict,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Self {
        let verdict = checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok);
        Self { verdict, checks }
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.verdict == Verdict::Fail
    }

    /// The report for people: one line per check, and the fix under it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.checks {
            let _ = writeln!(s, "{:<4}  {:<9} {}", c.verdict, c.name, c.summary);
            if let Some(fix) = &c.fix {
                let _ = writeln!(s, "                fix: {fix}");
            }
        }
        let n = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        let _ = writeln!(
            s,
            "{} ok, {} warnings, {} failed",
            n(Verdict::Ok),
            n(Verdict::Warn),
            n(Verdict::Fail)
        );
        s
    }
}

/// Whether `policy` reads the power source.
fn reads_power(policy: RunPolicy) -> bool {
    matches!(policy, RunPolicy::Charging | RunPolicy::ChargingIdle)
}

/// Whether `policy` reads user activity.
fn reads_idle(policy: RunPolicy) -> bool {
    matches!(policy, RunPolicy::Idle | RunPolicy::ChargingIdle)
}

/// The power input: an unknown source fails only where the policy reads it, because there
/// the fail-closed gate never opens.
pub fn power_check(reading: &PowerReading, policy: RunPolicy, root: &Path) -> Check {
    const NAME: &str = "power";
    let battery = reading
        .battery_percent
        .map(|p| format!(" (battery {p} %)"))
        .unwrap_or_default();
    match reading.source {
        PowerSource::External => Check::ok(NAME, format!("on external power{battery}")),
        PowerSource::Battery if reads_power(policy) => Check::ok(
            NAME,
            format!("on battery{battery}: the {policy} policy waits for a charger"),
        ),
        PowerSource::Battery => Check::ok(NAME, format!("on battery{battery}")),
        PowerSource::Unknown if reads_power(policy) => Check::fail(
            NAME,
            format!(
                "power source unknown ({} unreadable): the {policy} policy never opens the gate",
                root.display()
            ),
            "set device.power_supply_root to the power_supply directory, or run_when = \"always\" or \"idle\"",
        ),
        PowerSource::Unknown => Check::warn(
            NAME,
            format!(
                "power source unknown ({} unreadable); the {policy} policy does not read it",
                root.display()
            ),
            "none needed for this policy; charging policies would keep the gate closed",
        ),
    }
}

/// The user-activity input; `logind_error` says why logind was not used, when it was not.
pub fn idle_check(idle: &UserIdle, policy: RunPolicy, logind_error: Option<&str>) -> Check {
    const NAME: &str = "idle";
    let via = match idle.source {
        IdleSource::Logind => "logind".to_string(),
        IdleSource::TtyAccess => match logind_error {
            Some(e) => format!("terminal access times (logind: {e})"),
            None => "terminal access times".to_string(),
        },
        IdleSource::System => "the system's input counter".to_string(),
        IdleSource::Unknown => String::new(),
    };
    if idle.is_known() {
        let state = match idle.idle_secs {
            Some(secs) => format!("user idle for {secs} s"),
            None => "no user session".to_string(),
        };
        return Check::ok(NAME, format!("{state}, from {via}"));
    }
    let why = logind_error
        .map(|e| format!(" (logind: {e})"))
        .unwrap_or_default();
    if reads_idle(policy) {
        Check::fail(
            NAME,
            format!("user activity unknown{why}: the {policy} policy never opens the gate"),
            "run logind (or give the node read access to device.dev_root), or run_when = \"always\" or \"charging\"",
        )
    } else {
        Check::warn(
            NAME,
            format!("user activity unknown{why}; the {policy} policy does not read it"),
            "none needed for this policy; idle policies would keep the gate closed",
        )
    }
}

/// Free space in the data dir.
pub fn disk_check(free_bytes: u64) -> Check {
    const NAME: &str = "disk";
    let shown = format!(
        "{:.1} GiB free in the data dir",
        free_bytes as f64 / f64::from(1 << 30)
    );
    if free_bytes < DISK_FAIL_BYTES {
        Check::fail(
            NAME,
            shown,
            "free space, or move the data dir (--data-dir) to a larger disk",
        )
    } else if free_bytes < DISK_WARN_BYTES {
        Check::warn(
            NAME,
            shown,
            "models and the ledger need room; free at least 1 GiB",
        )
    } else {
        Check::ok(NAME, shown)
    }
}

/// The local clock against Horizon's (`local - horizon`, seconds).
pub fn skew_check(skew_secs: i64) -> Check {
    const NAME: &str = "clock";
    let shown = format!("{skew_secs:+} s from Horizon's clock");
    let fix = "synchronise the clock (timedatectl set-ntp true, or chrony/ntpd)";
    if skew_secs.abs() > SKEW_FAIL_SECS {
        Check::fail(NAME, shown, fix)
    } else if skew_secs.abs() > SKEW_WARN_SECS {
        Check::warn(NAME, shown, fix)
    } else {
        Check::ok(NAME, shown)
    }
}

/// The payout account as Horizon has it (`None`: it does not exist).
pub fn wallet_check(address: &str, account: Option<&AccountInfo>, base_reserve: i64) -> Check {
    const NAME: &str = "wallet";
    let xlm = crank_payments::stellar::format_xlm;
    match account {
        None => Check::fail(
            NAME,
            format!("{address} does not exist on the network: payments to it fail"),
            "crank-node wallet fund (testnet), or send the address at least 1 XLM",
        ),
        Some(a) => {
            let min = a.min_balance_stroops(base_reserve);
            if a.balance_stroops > min {
                Check::ok(
                    NAME,
                    format!(
                        "{address} holds {} XLM ({} XLM reserve)",
                        xlm(a.balance_stroops),
                        xlm(min)
                    ),
                )
            } else {
                Check::warn(
                    NAME,
                    format!(
                        "{address} holds {} XLM, no more than its {} XLM reserve: it cannot pay anyone",
                        xlm(a.balance_stroops),
                        xlm(min)
                    ),
                    "send the address some XLM before submitting tasks",
                )
            }
        }
    }
}

/// The TCP endpoint of a bootstrap multiaddr: host and port, where it has `/tcp/`.
pub fn tcp_target(addr: &libp2p::Multiaddr) -> Option<(String, u16)> {
    use libp2p::multiaddr::Protocol;
    let mut host = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(ip) => host = Some(ip.to_string()),
            Protocol::Ip6(ip) => host = Some(ip.to_string()),
            Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => host = Some(h.to_string()),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some((host?, port?))
}

/// Bootstrap peers, from what dialling each one's TCP port gave (`Err`: why not).
pub fn bootstrap_check(results: &[(String, Result<(), String>)]) -> Check {
    const NAME: &str = "bootstrap";
    if results.is_empty() {
        return Check::warn(
            NAME,
            "no bootstrap peers configured: the node waits for others to dial it",
            "pass --bootstrap to join or service install, or set network.bootstrap in config.toml",
        );
    }
    let up = results.iter().filter(|(_, r)| r.is_ok()).count();
    let down: Vec<String> = results
        .iter()
        .filter_map(|(a, r)| r.as_ref().err().map(|e| format!("{a}: {e}")))
        .collect();
    let fix = "check the address (a bootstrap node prints it at start), that it runs, and that no firewall blocks its port";
    if up == results.len() {
        Check::ok(NAME, format!("{up} of {} reachable", results.len()))
    } else if up == 0 {
        Check::fail(
            NAME,
            format!("none of {} reachable ({})", results.len(), down.join("; ")),
            fix,
        )
    } else {
        Check::warn(
            NAME,
            format!("{up} of {} reachable ({})", results.len(), down.join("; ")),
            fix,
        )
    }
}

/// Dials each bootstrap peer's TCP port.
async fn probe_bootstrap(addrs: &[String]) -> Vec<(String, Result<(), String>)> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let result = match a.parse::<libp2p::Multiaddr>() {
            Err(e) => Err(format!("not a multiaddr: {e}")),
            Ok(m) => match tcp_target(&m) {
                None => {
                    Err("no /tcp/ address to check (QUIC-only addresses are not probed)".into())
                }
                Some((host, port)) => {
                    match tokio::time::timeout(
                        PROBE_TIMEOUT,
                        tokio::net::TcpStream::connect((host.as_str(), port)),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
                    }
                }
            },
        };
        out.push((a.clone(), result));
    }
    out
}

/// What Horizon's root answered.
struct HorizonRoot {
    passphrase: Option<String>,
    /// `local - horizon`, seconds, from the `Date` header.
    skew_secs: Option<i64>,
}

async fn probe_horizon(url: &str) -> Result<HorizonRoot, String> {
    let http = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| chain(&e))?;
    let root = format!("{}/", url.trim_end_matches('/'));
    let resp = http
        .get(&root)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let now = SystemTime::now();
    let status = resp.status();
    let skew_secs = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .map(|theirs| match now.duration_since(theirs) {
            Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
        });
    if !status.is_success() {
        return Err(format!("{root} answered {status}"));
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| chain(&e))?;
    Ok(HorizonRoot {
        passphrase: body
            .get("network_passphrase")
            .and_then(|p| p.as_str())
            .map(str::to_string),
        skew_secs,
    })
}

async fn probe_idle(config: &Config) -> (UserIdle, Option<String>) {
    use crank_inference::device::idle::Logind;
    let now = SystemTime::now();
    let mut logind_error = None;
    if config.device.use_logind && probe::HAS_LOGIND {
        let ask = async {
            let logind = match &config.device.system_bus_address {
                Some(a) => Logind::connect_to(a).await,
                None => Logind::connect().await,
            }
            .map_err(|e| chain(&e))?;
            logind.idle(now).await.map_err(|e| chain(&e))
        };
        match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
            Ok(Ok(idle)) => return (idle, None),
            Ok(Err(e)) => logind_error = Some(e),
            Err(_) => logind_error = Some("no answer".into()),
        }
    }
    let idle = probe::idle_probe(&config.device).read_idle(now);
    (idle, logind_error)
}

fn data_dir_check(dir: &Path) -> Check {
    const NAME: &str = "data_dir";
    let fix = "create it, owned by the user the node runs as (mode 0700), or pass --data-dir";
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::fail(NAME, format!("cannot create {}: {e}", dir.display()), fix);
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"probe") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Check::ok(NAME, format!("{} is writable", dir.display()))
        }
        Err(e) => Check::fail(NAME, format!("cannot write in {}: {e}", dir.display()), fix),
    }
}

fn ledger_check(dir: &Path, node_running: bool) -> Check {
    const NAME: &str = "ledger";
    let path = dir.join("ledger.redb");
    if node_running {
        return Check::ok(NAME, "held by the node running on this data dir");
    }
    if !path.exists() {
        return Check::ok(NAME, "none yet (created when the node first starts)");
    }
    match crank_payments::Ledger::open(&path) {
        Ok(l) if l.repaired_on_open() => Check::warn(
            NAME,
            "opens, after a repair: the last run did not stop cleanly",
            "stop the node with SIGTERM or Ctrl-C (systemctl stop does), not SIGKILL",
        ),
        Ok(_) => Check::ok(NAME, format!("{} opens cleanly", path.display())),
        Err(e @ crank_payments::LedgerError::InUse { .. }) => Check::warn(
            NAME,
            chain(&e),
            "another crank-node holds it; `crank-node status` reaches it through its API",
        ),
        Err(e) => Check::fail(
            NAME,
            chain(&e),
            "restore the data dir from a backup; the keys (node.secret, payout.secret) matter most",
        ),
    }
}

fn free_bytes(dir: &Path) -> Result<u64, String> {
    let s = rustix::fs::statvfs(dir).map_err(|e| e.to_string())?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

async fn node_check(dir: &Path) -> Check {
    const NAME: &str = "node";
    match ApiClient::connect(dir).await {
        Ok(None) => Check::warn(
            NAME,
            format!("no crank-node is running on {}", dir.display()),
            "start one: crank-node join, or crank-node service install --enable",
        ),
        Err(e) => Check::fail(
            NAME,
            chain(&e),
            "see the message; remove stale api.* files if no node runs",
        ),
        Ok(Some(mut api)) => {
            match api
                .call(hyper::Method::GET, "/status", None, Duration::from_secs(10))
                .await
            {
                Ok((code, body)) if code.is_success() => {
                    let peers = body["network"]["peers"].as_array().map_or(0, Vec::len);
                    let gate = if body["gate"]["open"].as_bool() == Some(true) {
                        "gate open".to_string()
                    } else {
                        format!(
                            "gate closed: {}",
                            body["gate"]["reason"].as_str().unwrap_or("?")
                        )
                    };
                    Check::ok(
                        NAME,
                        format!(
                            "running (up {} s, {peers} peers, {gate})",
                            body["uptime_secs"].as_u64().unwrap_or(0)
                        ),
                    )
                }
                Ok((code, _)) => Check::fail(
                    NAME,
                    format!("the running node answered {code}"),
                    "look at its log (journalctl -u crank-node)",
                ),
                Err(e) => Check::fail(
                    NAME,
                    chain(&e),
                    "look at its log (journalctl -u crank-node)",
                ),
            }
        }
    }
}

/// Runs every check on `config`'s data dir, devices and network.
pub async fn run(config: &Config) -> Report {
    let dir = &config.data_dir;
    let policy = config.device.run_when;
    let mut checks = Vec::new();

    let power = probe::power_probe(&config.device).read_power();
    checks.push(power_check(
        &power,
        policy,
        &config.device.power_supply_root,
    ));
    let (idle, logind_error) = probe_idle(config).await;
    checks.push(idle_check(&idle, policy, logind_error.as_deref()));

    let node = node_check(dir).await;
    let running = node.verdict == Verdict::Ok;
    let data = data_dir_check(dir);
    let writable = data.verdict == Verdict::Ok;
    checks.push(data);
    if writable {
        checks.push(ledger_check(dir, running));
    }
    checks.push(match free_bytes(dir) {
        Ok(n) => disk_check(n),
        Err(e) => Check::warn(
            "disk",
            format!("free space unknown: {e}"),
            "check the data dir's file system",
        ),
    });

    checks.push(bootstrap_check(
        &probe_bootstrap(&config.network.bootstrap).await,
    ));

    let horizon = probe_horizon(&config.stellar.horizon_url).await;
    let url = &config.stellar.horizon_url;
    let reachable = match &horizon {
        Ok(root) => {
            match &root.passphrase {
                Some(p) if *p != config.stellar.network_passphrase => {
                    checks.push(Check::fail(
                    "horizon",
                    format!("{url} serves {p:?}, but this node signs for {:?}", config.stellar.network_passphrase),
                    "set stellar.horizon_url and stellar.network_passphrase to the same network",
                ));
                    false
                }
                _ => {
                    checks.push(Check::ok("horizon", format!("{url} answers")));
                    true
                }
            }
        }
        Err(e) => {
            checks.push(Check::fail(
                "horizon",
                format!("{url} unreachable: {e}"),
                "check stellar.horizon_url and this machine's network; settlement waits until it answers",
            ));
            false
        }
    };
    checks.push(match horizon.as_ref().ok().and_then(|r| r.skew_secs) {
        Some(skew) => skew_check(skew),
        None => Check::warn(
            "clock",
            "not checked: no Date from Horizon",
            "fix the horizon check first",
        ),
    });

    checks.push(wallet(config, reachable).await);
    checks.push(node);
    Report::new(checks)
}

async fn wallet(config: &Config, horizon_up: bool) -> Check {
    const NAME: &str = "wallet";
    let key = config.data_dir.join(crate::PAYOUT_KEY_FILE);
    if !key.exists() {
        return Check::warn(
            NAME,
            "no payout key yet",
            "crank-node wallet address creates it; crank-node wallet fund funds it on testnet",
        );
    }
    let w = match crank_payments::Wallet::load_or_create(&key) {
        Ok(w) => w,
        Err(e) => {
            return Check::fail(
                NAME,
                chain(&e),
                "the payout key must be a private (0600) S… secret",
            );
        }
    };
    if !horizon_up {
        return Check::warn(
            NAME,
            format!("{} not checked: Horizon unreachable", w.address()),
            "fix the horizon check first",
        );
    }
    let mut stellar = config.stellar.clone();
    stellar.request_timeout_secs = PROBE_TIMEOUT.as_secs();
    let account = match crank_payments::Horizon::new(&stellar) {
        Ok(h) => h.account(&w.address()).await,
        Err(e) => Err(e),
    };
    match account {
        Ok(a) => wallet_check(
            &w.address(),
            a.as_ref(),
            config.stellar.base_reserve_stroops,
        ),
        Err(e) => Check::warn(
            NAME,
            format!("{} not checked: {}", w.address(), chain(&e)),
            "fix the horizon check first",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(source: PowerSource) -> PowerReading {
        PowerReading {
            source,
            ..PowerReading::unknown()
        }
    }

    #[test]
    fn unknown_inputs_fail_only_where_the_policy_reads_them() {
        let root = Path::new("/sys/class/power_supply");
        let unknown = reading(PowerSource::Unknown);
        assert_eq!(
            power_check(&unknown, RunPolicy::ChargingIdle, root).verdict,
            Verdict::Fail
        );
        assert_eq!(
            power_check(&unknown, RunPolicy::Charging, root).verdict,
            Verdict::Fail
        );
        assert_eq!(
            power_check(&unknown, RunPolicy::Idle, root).verdict,
            Verdict::Warn
        );
        assert_eq!(
            power_check(&unknown, RunPolicy::Always, root).verdict,
            Verdict::Warn
        );
        let ext = reading(PowerSource::External);
        assert_eq!(
            power_check(&ext, RunPolicy::Charging, root).verdict,
            Verdict::Ok
        );

        let idle = UserIdle::unknown();
        assert_eq!(
            idle_check(&idle, RunPolicy::Idle, Some("no bus")).verdict,
            Verdict::Fail
        );
        assert_eq!(
            idle_check(&idle, RunPolicy::Charging, None).verdict,
            Verdict::Warn
        );
        let known = UserIdle {
            idle_secs: Some(400),
            source: IdleSource::TtyAccess,
        };
        let c = idle_check(&known, RunPolicy::ChargingIdle, Some("no bus"));
        assert_eq!(c.verdict, Verdict::Ok);
        assert!(
            c.summary.contains("400 s") && c.summary.contains("logind: no bus"),
            "{c:?}"
        );
    }

    #[test]
    fn thresholds_of_disk_and_clock() {
        assert_eq!(disk_check(DISK_FAIL_BYTES - 1).verdict, Verdict::Fail);
        assert_eq!(disk_check(DISK_WARN_BYTES - 1).verdict, Verdict::Warn);
        assert_eq!(disk_check(DISK_WARN_BYTES).verdict, Verdict::Ok);
        assert_eq!(skew_check(0).verdict, Verdict::Ok);
        assert_eq!(skew_check(-SKEW_WARN_SECS).verdict, Verdict::Ok);
        assert_eq!(skew_check(SKEW_WARN_SECS + 1).verdict, Verdict::Warn);
        assert_eq!(skew_check(-(SKEW_FAIL_SECS + 1)).verdict, Verdict::Fail);
    }

    #[test]
    fn wallet_needs_an_account_above_its_reserve() {
        let a = |balance| AccountInfo {
            id: "G".into(),
            sequence: 1,
            balance_stroops: balance,
            subentry_count: 0,
        };
        assert_eq!(wallet_check("G", None, 5_000_000).verdict, Verdict::Fail);
        assert_eq!(
            wallet_check("G", Some(&a(10_000_000)), 5_000_000).verdict,
            Verdict::Warn
        );
        assert_eq!(
            wallet_check("G", Some(&a(10_000_001)), 5_000_000).verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn bootstrap_verdicts_and_targets() {
        assert_eq!(bootstrap_check(&[]).verdict, Verdict::Warn);
        let up = ("a".to_string(), Ok(()));
        let down = ("b".to_string(), Err("refused".to_string()));
        assert_eq!(
            bootstrap_check(std::slice::from_ref(&up)).verdict,
            Verdict::Ok
        );
        assert_eq!(bootstrap_check(&[up, down.clone()]).verdict, Verdict::Warn);
        let c = bootstrap_check(&[down]);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.summary.contains("b: refused"), "{c:?}");
        let m: libp2p::Multiaddr =
            "/dns4/boot.example/tcp/7400/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
                .parse()
                .unwrap();
        assert_eq!(tcp_target(&m), Some(("boot.example".into(), 7400)));
        let quic: libp2p::Multiaddr = "/ip4/10.0.0.1/udp/7400/quic-v1".parse().unwrap();
        assert_eq!(tcp_target(&quic), None);
    }

    #[test]
    fn the_report_takes_the_worst_verdict() {
        let r = Report::new(vec![
            Check::ok("a", "fine"),
            Check::warn("b", "meh", "do x"),
        ]);
        assert_eq!(r.verdict, Verdict::Warn);
        assert!(!r.failed());
        let text = r.render();
        assert!(
            text.contains("fix: do x") && text.contains("1 ok, 1 warnings, 0 failed"),
            "{text}"
        );
        let r = Report::new(vec![Check::fail("c", "broken", "fix it")]);
        assert!(r.failed());
    }
}
