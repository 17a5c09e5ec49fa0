//! The `crank-node` binary, command by command, on a temp data dir: every command leaves the
//! receipt ledger closed cleanly (it reopens in this process without a repair), and so does a
//! running node stopped with SIGTERM or SIGINT; a node killed with SIGKILL leaves a ledger that
//! still opens (redb repairs it) and is clean again after the next command.
//!
//! The children talk to nothing but loopback: no bootstrap peers, listening on 127.0.0.1, and
//! Stellar endpoints on a closed loopback port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crank_payments::Ledger;
use rustix::process::{Pid, Signal, kill_process};

use crate::repo;

/// Service unit, completions, man pages, doctor, the package, and the JSON schemas.
pub(crate) mod living;

/// The owner's dashboard: its login, Host and CSRF checks, and a real headless browser.
mod dashboard;

/// How long a node may take to start (benchmark, GPU probe) on a busy 2-core machine.
const START: Duration = Duration::from_secs(120);
/// How long a node may take to shut down after a signal.
const STOP: Duration = Duration::from_secs(60);
/// A loopback port nothing listens on (discard): Horizon and friendbot calls fail at once.
const CLOSED: &str = "http://127.0.0.1:9";

/// `crank-node` on `dir`, with only loopback endpoints and none of this environment's
/// `CRANK_*` settings.
fn crank(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crank-node"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CRANK_") {
            c.env_remove(key);
        }
    }
    c.env_remove("RUST_LOG")
        .env("CRANK_STELLAR__HORIZON_URL", CLOSED)
        .env(
            "CRANK_STELLAR__FRIENDBOT_URL",
            format!("{CLOSED}/friendbot"),
        )
        .env("CRANK_SETTLEMENT__AUTO", "false")
        .env("CRANK_WORKER__BENCHMARK_MS", "50")
        .arg("--data-dir")
        .arg(dir)
        .args(["--log", "warn"])
        .stdin(Stdio::null());
    c
}

fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger.redb")
}

/// Opens the data dir's ledger here, after the child is gone; whether it needed a repair.
fn reopen(dir: &Path) -> bool {
    let ledger = Ledger::open(&ledger_path(dir)).unwrap();
    ledger.repaired_on_open()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A bootstrap address that refuses connections: a port just freed on loopback, and a peer
/// id nobody has.
fn dead_bootstrap() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", libp2p::PeerId::random())
}

#[test]
fn every_command_closes_the_ledger_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The ledger exists before the first command, so every reopen checks what the command
    // left behind (a fresh file never needs a repair).
    drop(Ledger::open(&ledger_path(dir)).unwrap());
    let model = repo().join("models/digits-mlp.onnx");
    let input = repo().join("models/samples/digit-3.json");
    let dead = dead_bootstrap();
    let missing = dir.join("no-such-model.onnx");

    // (arguments, whether it succeeds here)
    let commands: Vec<(Vec<String>, bool)> = [
        (vec!["id"], true),
        (vec!["--json", "id"], true),
        (vec!["config"], true),
        (vec!["wallet", "address"], true),
        (vec!["wallet", "history"], true),
        (vec!["--json", "wallet", "history", "--limit", "3"], true),
        (vec!["wallet", "settle", "--dry-run"], true),
        (vec!["wallet", "settle", "--dry-run", "--all"], true),
        // Nothing is owed: says so without Horizon.
        (vec!["wallet", "settle"], true),
        // Horizon is unreachable: the command fails after opening the ledger.
        (vec!["wallet", "balance"], false),
        (vec!["wallet", "fund"], false),
        (vec!["models", "list"], true),
        (vec!["models", "add", model.to_str().unwrap()], true),
        (vec!["--json", "models", "list"], true),
        // No node runs on this data dir.
        (vec!["status"], false),
        (vec!["peer", "12D3KooWAbc"], false),
        // Opens the ledger to check it; Horizon is unreachable, so a check fails.
        (vec!["doctor"], false),
        (vec!["service", "status"], true),
        // A node that starts, then fails on a model it was asked to add: it stops with an
        // error, never having served.
        (
            vec![
                "join",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--run-when",
                "always",
                "--model",
                missing.to_str().unwrap(),
            ],
            false,
        ),
        (
            vec![
                "join",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--run-when",
                "always",
                "--model",
                input.to_str().unwrap(),
            ],
            false,
        ),
        // A temporary node opens the ledger, finds no bootstrap peer and shuts down.
        (
            vec![
                "submit",
                "--model",
                model.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--bootstrap",
                &dead,
            ],
            false,
        ),
    ]
    .into_iter()
    .map(|(args, ok)| (args.into_iter().map(str::to_owned).collect(), ok))
    .collect();

    for (args, succeeds) in commands {
        let out = crank(dir).args(&args).output().unwrap();
        assert_eq!(
            out.status.success(),
            succeeds,
            "crank-node {}: {}",
            args.join(" "),
            text(&out)
        );
        assert!(
            !reopen(dir),
            "crank-node {} left the ledger needing a repair: {}",
            args.join(" "),
            text(&out)
        );
    }
}

/// A node started by the binary, killed when dropped (a failed assertion included).
struct Daemon {
    child: Child,
    /// The first address it printed it listens on (with `/p2p/<peer id>`).
    addr: String,
}

impl Daemon {
    /// Runs `crank-node <args>` on `dir` with extra environment and waits until it prints a
    /// listen address.
    fn start(dir: &Path, args: &[&str], env: &[(String, String)]) -> Daemon {
        let mut child = crank(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("node.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reports the first listen address, then keeps the pipe drained.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let mut daemon = Daemon {
            child,
            addr: String::new(),
        };
        match rx.recv_timeout(START) {
            Ok(addr) => daemon.addr = addr,
            Err(e) => panic!(
                "crank-node {} printed no address ({e}): {}",
                args.join(" "),
                log(dir)
            ),
        }
        daemon
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_child(&self.child);
        kill_process(pid, signal).unwrap();
    }

    /// Waits for the process to exit.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
}

/// One daemon run: what it is started with, how it is stopped, and what its gate must say.
struct Run {
    args: &'static [&'static str],
    /// `CRANK_DEVICE__*` overrides; the `*_ROOT` ones are paths relative to the data dir.
    device: &'static [(&'static str, &'static str)],
    signal: Signal,
    /// The gate's `(open, reason)` in `status --json`; `None` for a bootstrap node.
    gate: Option<(bool, Option<&'static str>)>,
}

#[test]
fn a_node_stopped_by_sigterm_or_sigint_closes_the_ledger_cleanly() {
    let runs = [
        // This container's own readings are known: `always` and the demo's `charging` open.
        Run {
            args: &["join", "--run-when", "always"],
            device: &[],
            signal: Signal::TERM,
            gate: Some((true, None)),
        },
        Run {
            args: &["join", "--run-when", "charging"],
            device: &[],
            signal: Signal::INT,
            gate: Some((true, None)),
        },
        // Inputs that cannot be read close the gate, and status says which.
        Run {
            args: &["join", "--run-when", "charging"],
            device: &[("POWER_SUPPLY_ROOT", "no-power-supply")],
            signal: Signal::INT,
            gate: Some((false, Some("power source unknown"))),
        },
        Run {
            args: &["join", "--run-when", "idle"],
            device: &[("DEV_ROOT", "no-dev"), ("USE_LOGIND", "false")],
            signal: Signal::TERM,
            gate: Some((false, Some("user activity unknown"))),
        },
        Run {
            args: &["bootstrap"],
            device: &[],
            signal: Signal::TERM,
            gate: None,
        },
    ];
    for run in runs {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let shown = run.args.join(" ");
        let device: Vec<(String, String)> = run
            .device
            .iter()
            .map(|(key, value)| {
                let value = if key.ends_with("_ROOT") {
                    dir.join(value).display().to_string()
                } else {
                    value.to_string()
                };
                (format!("CRANK_DEVICE__{key}"), value)
            })
            .collect();
        let mut node = Daemon::start(dir, run.args, &device);
        if let Some((open, reason)) = run.gate {
            // The CLI reaches the running node through its API while it holds the ledger.
            let out = crank(dir).args(["--json", "status"]).output().unwrap();
            assert!(out.status.success(), "{shown}: status: {}", text(&out));
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            living::check_schema("status", &status);
            let gate = &status["gate"];
            assert_eq!(gate["policy"], run.args[2], "{shown}: {gate}");
            assert_eq!(gate["open"], open, "{shown}: {gate}");
            assert_eq!(gate["reason"].as_str(), reason, "{shown}: {gate}");
            assert_eq!(gate["category"].as_str(), reason, "{shown}: {gate}");
            let out = crank(dir).arg("status").output().unwrap();
            let shown_status = String::from_utf8_lossy(&out.stdout);
            if let Some(reason) = reason {
                let line = format!("closed ({}): {reason}", run.args[2]);
                assert!(shown_status.contains(&line), "{shown}: {shown_status}");
                assert!(
                    shown_status.contains("run_when = \"always\" works regardless"),
                    "{shown}: {shown_status}"
                );
            }
            let out = crank(dir).args(["wallet", "history"]).output().unwrap();
            assert!(out.status.success(), "{shown}: history: {}", text(&out));
        }
        node.signal(run.signal);
        let Some(exit) = node.wait(STOP) else {
            panic!(
                "crank-node {shown} did not stop within {STOP:?} of {:?}: {}",
                run.signal,
                log(dir)
            );
        };
        assert!(
            exit.success(),
            "crank-node {shown} exited with {exit} on {:?}: {}",
            run.signal,
            log(dir)
        );
        assert!(
            !reopen(dir),
            "crank-node {shown} stopped by {:?} left the ledger needing a repair: {}",
            run.signal,
            log(dir)
        );
    }
}

#[test]
fn a_node_killed_by_sigkill_leaves_a_ledger_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut node = Daemon::start(dir, &["join", "--run-when", "always"], &[]);
    node.signal(Signal::KILL);
    assert!(node.wait(STOP).is_some(), "SIGKILL did not end the node");
    // A repair is allowed here (the process never closed the file); opening must succeed.
    let repaired = reopen(dir);
    eprintln!("ledger after SIGKILL: repaired on open = {repaired}");
    // The repair is written back: after one more command the ledger is clean.
    let out = crank(dir).args(["wallet", "history"]).output().unwrap();
    assert!(out.status.success(), "history: {}", text(&out));
    assert!(
        !reopen(dir),
        "the ledger still needs a repair after a clean command"
    );
}
