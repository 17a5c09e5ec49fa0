//! The command-line interface: flags (clap) and what each subcommand does.
//!
//! `main.rs` parses, sets up logging and calls [`dispatch`]; every subcommand is a function
//! here so tests can call it.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use crank_protocol::RunPolicy;
use crank_scheduler::{AuctionTrace, Preference};

use crate::api::{self, TaskJson, TaskResultJson};
use crate::config::Config;
use crate::identity::IdentityError;
use crate::network::{self, KadMode, Role};
use crate::node::{Node, NodeHandle};

/// One binary for every device in a peer-to-peer AI inference mesh.
///
/// Device owners `join` the mesh and earn Stellar micropayments for running small ONNX models
/// while their device is plugged in and idle. Task submitters `submit` a model and an input and
/// get the output with a signed, counter-signed receipt. Operators run `bootstrap` nodes.
///
/// Configuration: defaults, then a TOML file (--config, or config.toml in the data dir), then
/// CRANK_* environment variables (CRANK_NETWORK__KAD_MODE=server), then these flags.
/// `crank-node config` prints the effective configuration.
#[derive(Debug, Parser)]
#[command(name = "crank-node", version, propagate_version = true)]
pub struct Cli {
    /// Where keys, models, the receipt ledger and the API token live.
    #[arg(long, global = true, env = "CRANK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (default: config.toml in the data dir, if present).
    #[arg(long, global = true, env = "CRANK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. info, debug, crank_node=debug (also RUST_LOG).
    #[arg(
        long,
        global = true,
        env = "CRANK_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log: String,
    /// Machine-readable JSON output (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the mesh and work for it until interrupted (Ctrl-C).
    ///
    /// Example: crank-node join --bootstrap /ip4/203.0.113.7/tcp/7400/p2p/12D3KooW...
    Join(JoinArgs),
    /// Run a bootstrap node: the node others dial first (Kademlia server, relay, AutoNAT).
    ///
    /// It prints its full addresses at start; give one to `join --bootstrap`.
    Bootstrap(BootstrapArgs),
    /// Run one inference task on the mesh and print the output and the receipt.
    ///
    /// Uses the node running on this data dir if there is one (through its local API);
    /// otherwise starts a temporary node that joins through --bootstrap.
    ///
    /// Example: crank-node submit --model models/digits-mlp.onnx --input models/samples/digit-3.json
    Submit(SubmitArgs),
    /// Show a running node: peers, adverts, power gate, queue, receipts.
    Status,
    /// Show what the running node knows of one peer and why it trusts it as it does: its
    /// tasks here, spot checks agreed and outvoted, claims against measurements, money.
    ///
    /// Example: crank-node peer 12D3KooW...   (a peer id, or a node id in hex)
    Peer {
        /// The peer's libp2p peer id or node id (hex), as `crank-node status` lists them.
        id: String,
    },
    /// Open the owner's dashboard in a browser on this machine: earnings and spending over
    /// time, energy per task, tasks served, the power gate's history, peers and trust.
    ///
    /// Asks the node running on this data dir for a one-time link and prints it. The link
    /// works once, within two minutes, and signs that browser in for eight hours; the page
    /// is served on loopback only (`[api] dashboard_listen`, default a free port).
    #[command(after_help = DASHBOARD_EXAMPLES)]
    Dashboard,
    /// Manage the local model store.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// The Stellar payout wallet: address, testnet funding, balances, settlement, history.
    ///
    /// Payments go to the Stellar testnet by default ([stellar] in the config to change).
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Print the effective configuration (defaults, file, environment, flags).
    Config,
    /// Print this node's ids (creating the keys on first run).
    Id,
    /// Check that this machine can earn: the power gate's inputs, the data dir and ledger,
    /// free disk, bootstrap peers, Horizon, the clock, the payout account, a running node.
    ///
    /// Each check prints ok, warn or fail with what to fix; the exit code is 1 when any check
    /// fails. Nothing is changed (a probe file is written to the data dir and removed).
    #[command(after_help = DOCTOR_EXAMPLES)]
    Doctor(DoctorArgs),
    /// Run the node in the background under systemd: write, remove or inspect its unit.
    ///
    /// A user unit (~/.config/systemd/user/crank-node.service) runs as you; `--system` writes
    /// /etc/systemd/system/crank-node.service running as a dedicated user. Both run
    /// `crank-node --data-dir DIR join` with the sandboxing a node allows (see the comments
    /// in the unit).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Owner and submitter policies (Rego): check a policy directory, or evaluate one policy
    /// on an example input, as the node would.
    ///
    /// The node reads `*.rego` and `data.json` from `policies/` in its data dir (`[policy]
    /// dir`) and reloads them when they change. Examples: docs/policies/.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per subcommand into a directory.
    #[command(hide = true)]
    Man {
        /// Write crank-node.1 and crank-node-<command>.1 here instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate a policy file on an input document and print the decision, like `opa eval`.
    ///
    /// The decision is the one the node would act on: deny reasons and the price multiplier
    /// (admission), exclusion reasons (placement), or the outputs withheld (output). The
    /// kind comes from the file's package (crank.admission, crank.placement, crank.output).
    #[command(after_help = POLICY_TEST_EXAMPLES)]
    Test {
        /// The Rego file.
        file: PathBuf,
        /// The input document (JSON); without it, the built-in sample input of the kind.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// The data document (JSON); default: data.json beside FILE, if there is one.
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
    },
    /// Load a policy directory as the node would (default: this node's) and list what it
    /// decides; the exit code is 1 when it does not load.
    Check {
        /// The directory.
        dir: Option<PathBuf>,
    },
}

const POLICY_TEST_EXAMPLES: &str = "Examples:
  crank-node policy test docs/policies/admission.rego
  crank-node policy test docs/policies/placement.rego --input my-task.json
  crank-node --json policy test ~/.local/share/crank-node/policies/owner.rego --input call.json
  crank-node policy check";

const DOCTOR_EXAMPLES: &str = "Examples:
  crank-node doctor
  crank-node doctor --bootstrap /ip4/203.0.113.7/tcp/7400/p2p/12D3KooW...
  crank-node --json doctor | jq '.checks[] | select(.verdict != \"ok\")'
  sudo -u crank-node crank-node --data-dir /var/lib/crank-node doctor";

const DASHBOARD_EXAMPLES: &str = "Examples:
  crank-node dashboard                  # prints http://127.0.0.1:PORT/login?code=...
  xdg-open \"$(crank-node --json dashboard | jq -r .url)\"
  ssh -L 7071:127.0.0.1:7071 pi@raspberrypi    # a remote node, with [api] dashboard_listen = \"127.0.0.1:7071\"";

const COMPLETIONS_EXAMPLES: &str = "Examples:
  crank-node completions bash > ~/.local/share/bash-completion/completions/crank-node
  crank-node completions zsh > ~/.zfunc/_crank-node    # with fpath+=(~/.zfunc) in .zshrc
  crank-node completions fish > ~/.config/fish/completions/crank-node.fish
The Debian package installs them for bash, zsh and fish.";

const SERVICE_INSTALL_EXAMPLES: &str = "Examples:
  crank-node service install --print
  crank-node service install --bootstrap /ip4/203.0.113.7/tcp/7400/p2p/12D3KooW... --enable
  sudo crank-node service install --system --run-as crank-node --memory-max 2G --cpu-quota 200%
Without --enable it prints the commands to run next (daemon-reload, enable --now, and for a
user unit `loginctl enable-linger`, so the node keeps running after you log out).";

/// `doctor` flags.
#[derive(Debug, Args, Default)]
pub struct DoctorArgs {
    /// Also check this bootstrap peer (repeatable), besides the configured ones.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
}

/// `service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the unit file (or only print it), and say what to run next.
    #[command(after_help = SERVICE_INSTALL_EXAMPLES)]
    Install {
        /// What the unit runs.
        #[command(flatten)]
        unit: ServiceArgs,
        /// Print the unit instead of writing it.
        #[arg(long, alias = "dry-run")]
        print: bool,
        /// Then run `systemctl daemon-reload` and `systemctl enable --now crank-node`.
        #[arg(long)]
        enable: bool,
    },
    /// Remove the unit file.
    ///
    /// Example: crank-node service uninstall --disable
    Uninstall {
        /// The system unit, not the user unit.
        #[arg(long)]
        system: bool,
        /// First run `systemctl disable --now crank-node` (stops the node).
        #[arg(long)]
        disable: bool,
    },
    /// Whether the unit is installed, matches what `install` with these flags would write,
    /// and is active.
    ///
    /// Example: crank-node service status --bootstrap /ip4/203.0.113.7/tcp/7400/p2p/12D3KooW...
    Status {
        /// The unit `install` would write.
        #[command(flatten)]
        unit: ServiceArgs,
    },
}

/// What a unit runs: the same flags for `install` and `status`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// A system unit (/etc/systemd/system) running as --run-as, not a user unit.
    #[arg(long)]
    pub system: bool,
    /// The system unit's user (create it with `useradd --system`).
    #[arg(long, value_name = "USER", default_value = crate::service::DEFAULT_SYSTEM_USER)]
    pub run_as: String,
    /// Bootstrap peer for `join` (repeatable); config.toml's are used as well.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/7401.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// When to work: always, idle, charging, charging-idle (default: the configured policy).
    #[arg(long, value_name = "POLICY")]
    pub run_when: Option<RunPolicy>,
    /// Memory limit of the node and its model runners: a size (2G) or a share of RAM.
    #[arg(long, value_name = "SIZE", default_value = crate::service::DEFAULT_MEMORY_MAX)]
    pub memory_max: String,
    /// CPU limit, e.g. 200% for two cores (default: none; the node works only when idle).
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<String>,
    /// The crank-node binary the unit runs (default: this one).
    #[arg(long, value_name = "FILE")]
    pub exe: Option<PathBuf>,
}

/// Flags shared by the commands that run a node.
#[derive(Debug, Args, Default)]
pub struct NodeArgs {
    /// Bootstrap peer to dial (repeatable), a multiaddr ending in /p2p/<peer id>.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/7401.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Kademlia mode: auto, server or client.
    #[arg(long, value_name = "MODE")]
    pub kad_mode: Option<KadMode>,
    /// Also serve the local API over TCP on this loopback address (port 0 picks one); by
    /// default it is only on the Unix socket api.sock in the data dir.
    #[arg(long = "api-addr", alias = "api", value_name = "ADDR")]
    pub api: Option<String>,
    /// Address peers can reach this node at (repeatable), e.g. /ip4/203.0.113.7/tcp/7400:
    /// a public server's address or a forwarded port. A bootstrap node needs one for its relay.
    #[arg(long, value_name = "MULTIADDR")]
    pub external_address: Vec<String>,
}

/// `join` flags.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Network flags.
    #[command(flatten)]
    pub node: NodeArgs,
    /// When to work: always, idle, charging, charging-idle (default; as BOINC).
    #[arg(long, value_name = "POLICY")]
    pub run_when: Option<RunPolicy>,
    /// Add these ONNX models to the store at start (repeatable).
    #[arg(long, value_name = "FILE")]
    pub model: Vec<PathBuf>,
}

/// `bootstrap` flags.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Network flags.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `submit` flags.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The ONNX model file.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// The input as JSON: a nested array, or {"shape": [...], "data": [...], "dtype": "float32"}.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Bootstrap peer for a temporary node (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Highest price to pay, stroops (1 XLM = 10,000,000 stroops).
    #[arg(long, value_name = "STROOPS")]
    pub max_price: Option<u64>,
    /// Time allowed from submit to result, milliseconds.
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<u64>,
    /// What the winner should be best at: cheap, fast, green or balanced.
    #[arg(long, default_value = "balanced", value_name = "PREFERENCE")]
    pub prefer: Preference,
    /// A label for this task (repeatable): seen by this node's placement and output
    /// policies (`sensitivity=confidential`) and kept for reports; never sent to a worker.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Show the auction: bids received with their scores, the winner and why.
    #[arg(long, short)]
    pub verbose: bool,
    /// Never use a running node's API; always start a temporary node.
    #[arg(long)]
    pub no_api: bool,
}

/// `wallet` subcommands.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Print the payout address (G…), creating the key on first run.
    Address,
    /// Create and fund the account through friendbot (testnet only).
    Fund,
    /// On-chain XLM, what we owe others (unsettled) and what others owe us.
    Balance,
    /// Pay what we owe now, in batched transactions (one payment per worker, up to 100 per
    /// transaction), exactly once.
    Settle {
        /// Print the signed envelopes as base64 XDR, one per line, without submitting.
        #[arg(long)]
        dry_run: bool,
        /// Pay everything owed, not only workers over the threshold.
        #[arg(long)]
        all: bool,
    },
    /// Each settlement with its transaction hash and the receipts it paid.
    History {
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// `models` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Add an ONNX model to the store (checked by loading it) and print its content id.
    Add {
        /// The file.
        file: PathBuf,
    },
    /// List the models in the store.
    List,
}

/// Builds the config from file, environment and global flags.
pub fn load_config(cli: &Cli) -> Result<Config> {
    let data_dir_flag = cli.data_dir.clone();
    let file = match &cli.config {
        Some(f) => Some(f.clone()),
        None => {
            let dir = data_dir_flag
                .clone()
                .unwrap_or_else(crate::config::default_data_dir);
            let candidate = dir.join("config.toml");
            candidate.exists().then_some(candidate)
        }
    };
    let mut config = Config::load(file.as_deref(), std::env::vars())?;
    if let Some(d) = data_dir_flag {
        config.data_dir = d;
    }
    Ok(config)
}

fn apply_node_args(config: &mut Config, args: &NodeArgs) -> Result<()> {
    for b in &args.bootstrap {
        network::parse_bootstrap(b)?;
        config.network.bootstrap.push(b.clone());
    }
    if !args.listen.is_empty() {
        config.network.listen = args.listen.clone();
    }
    if let Some(m) = args.kad_mode {
        config.network.kad_mode = m;
    }
    if let Some(a) = &args.api {
        config.api.listen = Some(a.clone());
    }
    config
        .network
        .external_addresses
        .extend(args.external_address.iter().cloned());
    Ok(())
}

/// Runs the parsed command.
pub async fn dispatch(cli: Cli) -> Result<()> {
    let mut config = load_config(&cli)?;
    let json = cli.json;
    match cli.command {
        Command::Join(args) => {
            apply_node_args(&mut config, &args.node)?;
            if let Some(p) = args.run_when {
                config.device.run_when = p;
            }
            join(config, &args.model).await
        }
        Command::Bootstrap(args) => {
            apply_node_args(&mut config, &args.node)?;
            if args.node.listen.is_empty() {
                config.network.listen = crank_bootstrap::default_listen();
            }
            bootstrap(config).await
        }
        Command::Submit(args) => submit(config, args, json).await,
        Command::Status => status(&config, json).await,
        Command::Peer { id } => peer(&config, &id, json).await,
        Command::Dashboard => dashboard(&config, json).await,
        Command::Models(cmd) => models(config, cmd, json).await,
        Command::Wallet(cmd) => wallet(config, cmd, json).await,
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Id => id(&config, json),
        Command::Doctor(args) => {
            for b in &args.bootstrap {
                network::parse_bootstrap(b)?;
                config.network.bootstrap.push(b.clone());
            }
            doctor(&config, json).await
        }
        Command::Service(cmd) => service(&config, cli.config.as_deref(), cmd, json).await,
        Command::Policy(cmd) => policy(&config, cmd, json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "crank-node",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { out_dir } => man(out_dir.as_deref()),
    }
}

/// `man`: the man page on stdout, or every page into `out_dir`.
pub fn man(out_dir: Option<&Path>) -> Result<()> {
    use clap::CommandFactory;
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
        }
    }
    Ok(())
}

/// The doctor's verdict was "fail": the report is printed, the exit code says so.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} checks failed")]
pub struct DoctorFailed {
    /// Checks that failed.
    pub failed: usize,
    /// Checks run.
    pub total: usize,
}

/// `doctor`: run every check, print the report, fail when a check fails.
pub async fn doctor(config: &Config, json: bool) -> Result<()> {
    let report = crate::doctor::run(config).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.failed() {
        let failed = report
            .checks
            .iter()
            .filter(|c| c.verdict == crate::doctor::Verdict::Fail)
            .count();
        return Err(DoctorFailed {
            failed,
            total: report.checks.len(),
        }
        .into());
    }
    Ok(())
}

fn unit_options(
    config: &Config,
    config_file: Option<&Path>,
    args: &ServiceArgs,
) -> Result<crate::service::UnitOptions> {
    use crate::service::{Scope, UnitOptions};
    for b in &args.bootstrap {
        network::parse_bootstrap(b)?;
    }
    let exe = match &args.exe {
        Some(e) => std::path::absolute(e)?,
        None => std::env::current_exe().context("cannot tell where this binary is; pass --exe")?,
    };
    let scope = if args.system {
        Scope::System
    } else {
        Scope::User
    };
    let mut o = UnitOptions::new(scope, exe, std::path::absolute(&config.data_dir)?);
    o.config = config_file.map(std::path::absolute).transpose()?;
    o.user = args.run_as.clone();
    o.bootstrap = args.bootstrap.clone();
    o.listen = args.listen.clone();
    o.run_when = args.run_when;
    o.memory_max = args.memory_max.clone();
    o.cpu_quota = args.cpu_quota.clone();
    Ok(o)
}

/// Where `systemctl` is, when it is installed.
fn systemctl_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("systemctl"))
        .find(|p| p.is_file())
}

/// Runs `systemctl [--user] ARGS`; its trimmed stdout, or why it failed.
async fn systemctl(scope: crate::service::Scope, args: &[&str]) -> Result<String, String> {
    let Some(bin) = systemctl_path() else {
        return Err("systemctl is not installed".into());
    };
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(scope.systemctl_flag())
        .args(args)
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Err(_) => Err("systemctl did not answer within 30 s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) => {
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() {
                Ok(stdout)
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let why = stderr.lines().next().unwrap_or("").trim();
                Err(if stdout.is_empty() {
                    why.to_string()
                } else {
                    stdout
                })
            }
        }
    }
}

/// `service install|uninstall|status`.
pub async fn service(
    config: &Config,
    config_file: Option<&Path>,
    cmd: ServiceCommand,
    json: bool,
) -> Result<()> {
    use crate::service::{self as svc, Scope, UNIT_NAME};
    match cmd {
        ServiceCommand::Install {
            unit,
            print,
            enable,
        } => {
            let o = unit_options(config, config_file, &unit)?;
            let text = svc::render(&o)?;
            let path = svc::unit_dir(o.scope)?.join(UNIT_NAME);
            if print {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "path": path, "written": false, "enabled": false, "unit": text, "next": [],
                        }))?
                    );
                } else {
                    print!("{text}");
                }
                return Ok(());
            }
            if o.scope == Scope::User {
                // The unit's ReadWritePaths= must exist when it starts.
                std::fs::create_dir_all(&o.data_dir)
                    .with_context(|| format!("cannot create {}", o.data_dir.display()))?;
                std::fs::set_permissions(&o.data_dir, std::fs::Permissions::from_mode(0o700))?;
            }
            svc::write_unit(&path, &text)?;
            let next = if enable {
                for args in [&["daemon-reload"][..], &["enable", "--now", UNIT_NAME]] {
                    systemctl(o.scope, args).await.map_err(|e| {
                        anyhow!(
                            "wrote {}, but `{} {}` failed: {e}",
                            path.display(),
                            o.scope.systemctl(),
                            args.join(" ")
                        )
                    })?;
                }
                let logs = match o.scope {
                    Scope::User => "journalctl --user -u crank-node -f",
                    Scope::System => "journalctl -u crank-node -f",
                };
                vec![logs.to_string()]
            } else {
                svc::next_steps(&o, svc::system_user_exists(&o.user))
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "path": path, "written": true, "enabled": enable, "unit": text, "next": next,
                    }))?
                );
            } else {
                println!("wrote {}", path.display());
                if enable {
                    println!("enabled and started crank-node");
                }
                println!("next:");
                for n in next {
                    println!("  {n}");
                }
            }
        }
        ServiceCommand::Uninstall { system, disable } => {
            let scope = if system { Scope::System } else { Scope::User };
            let path = svc::unit_dir(scope)?.join(UNIT_NAME);
            if disable {
                systemctl(scope, &["disable", "--now", UNIT_NAME])
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "`{} disable --now crank-node` failed: {e}",
                            scope.systemctl()
                        )
                    })?;
            }
            let removed = match std::fs::remove_file(&path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(anyhow!("cannot remove {}: {e}", path.display())),
            };
            let next = if disable {
                let _ = systemctl(scope, &["daemon-reload"]).await;
                Vec::new()
            } else if removed {
                vec![
                    format!("{} disable --now crank-node", scope.systemctl()),
                    format!("{} daemon-reload", scope.systemctl()),
                ]
            } else {
                Vec::new()
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "path": path, "removed": removed, "next": next,
                    }))?
                );
            } else {
                if removed {
                    println!("removed {}", path.display());
                } else {
                    println!("{} was not installed", path.display());
                }
                if !next.is_empty() {
                    println!("next (the node keeps running until stopped):");
                    for n in next {
                        println!("  {n}");
                    }
                }
            }
        }
        ServiceCommand::Status { unit } => {
            let o = unit_options(config, config_file, &unit)?;
            let text = svc::render(&o)?;
            let path = svc::unit_dir(o.scope)?.join(UNIT_NAME);
            let file = svc::file_state(&path, &text)?;
            let (active, systemctl_error) =
                match systemctl(o.scope, &["is-active", UNIT_NAME]).await {
                    Ok(state) => (Some(state), None),
                    // `is-active` exits non-zero for inactive and failed units, with the state
                    // on stdout; only an empty answer means systemctl could not tell.
                    Err(e)
                        if matches!(
                            e.as_str(),
                            "inactive" | "failed" | "activating" | "deactivating" | "reloading"
                        ) =>
                    {
                        (Some(e), None)
                    }
                    Err(e) => (None, Some(e)),
                };
            let next = match (file.installed, file.up_to_date) {
                (false, _) => Some("crank-node service install".to_string()),
                (true, Some(false)) => Some(format!(
                    "crank-node service install (same flags) && {} daemon-reload && {} restart crank-node",
                    o.scope.systemctl(),
                    o.scope.systemctl()
                )),
                _ => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "unit": UNIT_NAME,
                        "scope": o.scope,
                        "path": file.path,
                        "installed": file.installed,
                        "up_to_date": file.up_to_date,
                        "active": active,
                        "systemctl_error": systemctl_error,
                        "next": next,
                    }))?
                );
            } else {
                let state = match (file.installed, file.up_to_date) {
                    (false, _) => "not installed",
                    (true, Some(false)) => {
                        "installed, but differs from what install would write now"
                    }
                    _ => "installed, up to date",
                };
                println!("unit      {} ({state})", file.path.display());
                match (&active, &systemctl_error) {
                    (Some(a), _) => println!("active    {a}"),
                    (None, Some(e)) => println!("active    unknown ({e})"),
                    (None, None) => {}
                }
                if let Some(n) = next {
                    println!("next      {n}");
                }
            }
        }
    }
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from before the node says it is up: a signal
/// sent as soon as it prints its address stops it cleanly, ledger closed, instead of meeting
/// the default action and killing it.
struct Interrupts {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind, name: &str| {
            signal(kind)
                .inspect_err(
                    |e| tracing::warn!(signal = name, error = %e, "cannot listen for a signal"),
                )
                .ok()
        };
        Self {
            int: listen(SignalKind::interrupt(), "SIGINT"),
            term: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for either signal.
    async fn wait(mut self) {
        async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(self.int.as_mut()) => {}
            _ = recv(self.term.as_mut()) => {}
        }
        tracing::info!("shutting down");
    }
}

/// `join`: run a worker node until interrupted.
pub async fn join(config: Config, models: &[PathBuf]) -> Result<()> {
    if config.network.bootstrap.is_empty() {
        tracing::warn!(
            "no bootstrap peers configured: this node waits for others to dial it (pass --bootstrap)"
        );
    }
    let node = Node::start(config, Role::default()).await?;
    for m in models {
        let bytes =
            std::fs::read(m).with_context(|| format!("cannot read model {}", m.display()))?;
        let id = api::add_checked_model(&node.handle(), bytes)
            .await
            .map_err(|e| anyhow!("model {}: {e}", m.display()))?;
        tracing::info!(model = %id, file = %m.display(), "model added");
    }
    serve_until_interrupted(node).await
}

async fn serve_until_interrupted(node: Node) -> Result<()> {
    let interrupts = Interrupts::listen();
    let handle = node.handle();
    // Held until shutdown: dropping it stops the API and removes api.sock and api.addr.
    let api = api::serve(handle.clone()).await;
    match &api {
        Ok(addr) => tracing::info!(addr = %addr, "local API listening (token in api.token)"),
        Err(e) => tracing::warn!(error = %e, "local API not started"),
    }
    for a in handle.listen_addrs().await {
        println!("listening on {a}");
    }
    interrupts.wait().await;
    drop(api);
    node.shutdown().await;
    Ok(())
}

/// `bootstrap`: run a bootstrap node until interrupted.
pub async fn bootstrap(config: Config) -> Result<()> {
    let node = Node::start(config, Role { bootstrap: true }).await?;
    serve_until_interrupted(node).await
}

/// Why the CLI could not use a running node's local API.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The token file is not private to this user.
    #[error(transparent)]
    Secret(#[from] IdentityError),
    /// The token file could not be read.
    #[error("cannot read the API token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The socket is not one only this user could have made; connecting would hand the
    /// token to whoever did.
    #[error("{path}: {why}; not sending the API token there")]
    UntrustedSocket {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// `api.addr` is not a loopback address.
    #[error("{path} holds {text:?}, not a loopback address; remove it if no crank-node is running")]
    BadAddress {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// The server could not prove it holds the token, so the token was not sent.
    #[error(
        "the server at {endpoint} could not prove it is the crank-node of this data dir ({why}); the API token was not sent. If no node is running here, remove {hint}"
    )]
    NotAuthenticated {
        /// Where it answered.
        endpoint: String,
        /// What was wrong with its answer.
        why: String,
        /// The file that pointed at it.
        hint: PathBuf,
    },
    /// HTTP failed.
    #[error("local API at {endpoint}: {source}")]
    Http {
        /// Where.
        endpoint: String,
        /// The HTTP error.
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("local API at {endpoint}: no answer within {secs} s")]
    Timeout {
        /// Where.
        endpoint: String,
        /// The limit.
        secs: u64,
    },
}

/// Where a running node's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiEndpoint {
    /// The Unix socket in the data dir.
    Unix(PathBuf),
    /// A loopback TCP address (from `api.addr`).
    Tcp(SocketAddr),
}

impl std::fmt::Display for ApiEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

type ApiBody = http_body_util::Full<hyper::body::Bytes>;

/// The CLI's connection to a running node's API: one HTTP/1 connection on which the server
/// first proves it holds the token (`/hello`), and only then is the token sent.
pub struct ApiClient {
    endpoint: ApiEndpoint,
    token: String,
    sender: hyper::client::conn::http1::SendRequest<ApiBody>,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for ApiClient {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket must be a socket, owned by this user and closed to others: then only this user
/// (or root) made it, and nobody else can have swapped in a server of their own.
fn check_socket(path: &Path) -> Result<(), ApiClientError> {
    let untrusted = |why: String| ApiClientError::UntrustedSocket {
        path: path.into(),
        why,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| untrusted(e.to_string()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_socket() {
        return Err(untrusted("not a socket".into()));
    }
    if meta.uid() != me {
        return Err(untrusted(format!(
            "owned by user {}, not by this user ({me})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(untrusted(format!(
            "other users can reach it (mode {mode:o})"
        )));
    }
    Ok(())
}

impl ApiClient {
    /// Finds the node serving `data_dir` (its socket, else the TCP address in `api.addr`) and
    /// authenticates it. `Ok(None)`: no node is running there.
    pub async fn connect(data_dir: &Path) -> Result<Option<Self>, ApiClientError> {
        let token_path = data_dir.join(api::TOKEN_FILE);
        let token = match std::fs::read_to_string(&token_path) {
            Ok(t) => t.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ApiClientError::Token {
                    path: token_path,
                    source,
                });
            }
        };
        crate::identity::check_secret_permissions(&token_path)?;
        let socket = data_dir.join(api::SOCKET_FILE);
        if std::fs::symlink_metadata(&socket).is_ok() {
            check_socket(&socket)?;
            if let Some(c) = Self::connect_to(ApiEndpoint::Unix(socket), token.clone()).await? {
                return Ok(Some(c));
            }
        }
        let addr_path = data_dir.join(api::ADDR_FILE);
        let Ok(text) = std::fs::read_to_string(&addr_path) else {
            return Ok(None);
        };
        let addr = text
            .trim()
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| a.ip().is_loopback())
            .ok_or_else(|| ApiClientError::BadAddress {
                path: addr_path,
                text: text.trim().to_string(),
            })?;
        Self::connect_to(ApiEndpoint::Tcp(addr), token).await
    }

    /// Connects to `endpoint` and has it prove it holds `token` before the token is ever
    /// sent. `Ok(None)`: nothing listens there.
    pub async fn connect_to(
        endpoint: ApiEndpoint,
        token: String,
    ) -> Result<Option<Self>, ApiClientError> {
        let name = endpoint.to_string();
        let hint = match &endpoint {
            ApiEndpoint::Unix(p) => p.clone(),
            ApiEndpoint::Tcp(_) => PathBuf::from(api::ADDR_FILE),
        };
        let http = |source| ApiClientError::Http {
            endpoint: name.clone(),
            source,
        };
        let handshake = async {
            match &endpoint {
                ApiEndpoint::Unix(p) => match tokio::net::UnixStream::connect(p).await {
                    Ok(s) => Some(handshake(s).await),
                    Err(_) => None,
                },
                ApiEndpoint::Tcp(a) => match tokio::net::TcpStream::connect(a).await {
                    Ok(s) => Some(handshake(s).await),
                    Err(_) => None,
                },
            }
        };
        let Ok(Some(conn)) = tokio::time::timeout(CONNECT_TIMEOUT, handshake).await else {
            return Ok(None);
        };
        let (sender, conn) = conn.map_err(http)?;
        let mut client = Self {
            endpoint,
            token,
            sender,
            conn,
        };
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| ApiClientError::NotAuthenticated {
            endpoint: name.clone(),
            why: format!("no randomness for a nonce: {e}"),
            hint: hint.clone(),
        })?;
        let proof_addr = match &client.endpoint {
            ApiEndpoint::Unix(_) => api::UNIX_PROOF_ADDR.to_string(),
            ApiEndpoint::Tcp(a) => a.to_string(),
        };
        let expected = api::token_proof(&client.token, &nonce, &proof_addr);
        let path = format!("/hello?nonce={}", hex::encode(nonce));
        let answer = client
            .send(hyper::Method::GET, &path, None, false, CONNECT_TIMEOUT)
            .await;
        let why = match answer {
            Ok((status, body)) if status.is_success() => {
                let proof = body
                    .get("proof")
                    .and_then(|p| p.as_str())
                    .and_then(|p| hex::decode(p).ok())
                    .unwrap_or_default();
                if api::constant_time_eq(&proof, &expected) {
                    return Ok(Some(client));
                }
                "wrong proof".to_string()
            }
            Ok((status, _)) => format!("it answered {status} to the challenge"),
            Err(e) => e.to_string(),
        };
        Err(ApiClientError::NotAuthenticated {
            endpoint: name,
            why,
            hint,
        })
    }

    /// Where the node answered.
    pub fn endpoint(&self) -> &ApiEndpoint {
        &self.endpoint
    }

    /// Calls the API with the token; returns the status and the JSON body (a string when
    /// the body is not JSON).
    pub async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        limit: Duration,
    ) -> Result<(hyper::StatusCode, serde_json::Value), ApiClientError> {
        self.send(method, path, body, true, limit).await
    }

    async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        with_token: bool,
        limit: Duration,
    ) -> Result<(hyper::StatusCode, serde_json::Value), ApiClientError> {
        use http_body_util::BodyExt as _;
        let name = self.endpoint.to_string();
        let host = match &self.endpoint {
            ApiEndpoint::Unix(_) => "localhost".to_string(),
            ApiEndpoint::Tcp(a) => a.to_string(),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if with_token {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                serde_json::to_vec(b).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let req =
            req.body(ApiBody::new(bytes.into()))
                .map_err(|e| ApiClientError::NotAuthenticated {
                    endpoint: name.clone(),
                    why: format!("cannot build the request: {e}"),
                    hint: PathBuf::new(),
                })?;
        let http = |source| ApiClientError::Http {
            endpoint: name.clone(),
            source,
        };
        let exchange = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| ApiClientError::Timeout {
                endpoint: name.clone(),
                secs: limit.as_secs(),
            })?
            .map_err(http)?;
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        Ok((status, value))
    }
}

async fn handshake<S>(
    stream: S,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<ApiBody>,
        tokio::task::JoinHandle<()>,
    ),
    hyper::Error,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "local API connection closed");
        }
    });
    Ok((sender, task))
}

/// The error text of a failed API call.
fn api_error_text(body: &serde_json::Value) -> String {
    body.get("error")
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string())
}

/// `status`: ask the running node.
pub async fn status(config: &Config, json: bool) -> Result<()> {
    let value = get_from_running_node(config, "/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let s: crate::status::NodeStatus = serde_json::from_value(value)?;
        print!("{}", s.render());
    }
    Ok(())
}

/// `peer ID`: one peer, through the running node's API.
pub async fn peer(config: &Config, id: &str, json: bool) -> Result<()> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("`{id}` is not a peer id or node id; `crank-node status` lists the peers");
    }
    let value = get_from_running_node(config, &format!("/peers/{id}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let r: crate::status::PeerReport = serde_json::from_value(value)?;
        print!("{}", r.render());
    }
    Ok(())
}

/// `dashboard`: a one-time link to the running node's web page.
pub async fn dashboard(config: &Config, json: bool) -> Result<()> {
    let value = call_running_node(config, hyper::Method::POST, "/dashboard").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let link: crate::dashboard::DashboardLink = serde_json::from_value(value)?;
        println!(
            "Open this on this machine within {} s (it works once):",
            link.expires_in_secs
        );
        println!("  {}", link.url);
    }
    Ok(())
}

/// `GET path` on the node running with this data dir, its answer when it succeeded.
async fn get_from_running_node(config: &Config, path: &str) -> Result<serde_json::Value> {
    call_running_node(config, hyper::Method::GET, path).await
}

/// `method path` (no body) on the node running with this data dir, its answer when it
/// succeeded.
async fn call_running_node(
    config: &Config,
    method: hyper::Method,
    path: &str,
) -> Result<serde_json::Value> {
    let Some(mut api) = ApiClient::connect(&config.data_dir).await? else {
        bail!(
            "no crank-node is running with data dir {} (start one with `crank-node join`, or pass --data-dir)",
            config.data_dir.display()
        );
    };
    let (code, value) = api
        .call(method, path, None, Duration::from_secs(30))
        .await?;
    if !code.is_success() {
        bail!("the node answered {code}: {}", api_error_text(&value));
    }
    Ok(value)
}

fn spinner(msg: &str, json: bool) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

/// Parses `KEY=VALUE` for `--label`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write a label as KEY=VALUE, e.g. team=search"))?;
    let one: std::collections::BTreeMap<String, String> = [(k.to_string(), v.to_string())].into();
    crate::requester::check_labels(&one)?;
    Ok((k.to_string(), v.to_string()))
}

/// `policy test` and `policy check`.
fn policy(config: &Config, cmd: PolicyCommand, json: bool) -> Result<()> {
    use crank_policy::{Kind, Policies, sample};
    match cmd {
        PolicyCommand::Test { file, input, data } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let data_path = data.or_else(|| {
                let beside = file.with_file_name("data.json");
                beside.is_file().then_some(beside)
            });
            let data_text = match &data_path {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?,
                ),
                None => None,
            };
            let name = file.display().to_string();
            let data_name = data_path.as_ref().map(|p| p.display().to_string());
            let policies = Policies::from_sources(
                &[(name.clone(), text)],
                data_name.as_deref().zip(data_text.as_deref()),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let Some(kind) = policies.kinds().first().copied() else {
                bail!(
                    "{name} declares none of the packages crank.admission, crank.placement or crank.output: the node would ignore it"
                );
            };
            let input_json: serde_json::Value = match &input {
                Some(p) => {
                    let t = std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    serde_json::from_str(&t)
                        .with_context(|| format!("{} is not valid JSON", p.display()))?
                }
                None => match kind {
                    Kind::Admission => serde_json::to_value(sample::admission())?,
                    Kind::Placement => serde_json::to_value(sample::placement())?,
                    Kind::Output => serde_json::to_value(sample::output())?,
                },
            };
            // The typed reading says what the node would do; a raw evaluation error is
            // shown as such (the node would fail closed).
            let (decision, error) = match kind {
                Kind::Admission => {
                    let typed: crank_policy::AdmissionInput =
                        serde_json::from_value(input_json.clone()).with_context(
                            || "the input is not an admission input (see docs/policies/README.md)",
                        )?;
                    match policies.try_admission(&typed) {
                        Ok(d) => (Some(serde_json::to_value(d)?), None),
                        Err(e) => (None, Some(e.to_string())),
                    }
                }
                Kind::Placement => {
                    let typed: crank_policy::PlacementInput =
                        serde_json::from_value(input_json.clone()).with_context(
                            || "the input is not a placement input (see docs/policies/README.md)",
                        )?;
                    match policies.try_placement(&typed) {
                        Ok(d) => (Some(serde_json::to_value(d)?), None),
                        Err(e) => (None, Some(e.to_string())),
                    }
                }
                Kind::Output => {
                    let typed: crank_policy::OutputInput =
                        serde_json::from_value(input_json.clone()).with_context(
                            || "the input is not an output input (see docs/policies/README.md)",
                        )?;
                    match policies.try_output(&typed) {
                        Ok(d) => (Some(serde_json::to_value(d)?), None),
                        Err(e) => (None, Some(e.to_string())),
                    }
                }
            };
            let out = serde_json::json!({
                "file": name,
                "kind": kind.name(),
                "input": if input.is_some() { "file" } else { "sample" },
                "decision": decision,
                "error": error,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{} policy {name}", kind.name());
                match (&decision, &error) {
                    (_, Some(e)) => println!("  fails: {e}\n  the node would fail closed"),
                    (Some(d), None) => println!("  {}", describe_decision(kind, d)),
                    (None, None) => {}
                }
            }
            if error.is_some() {
                std::process::exit(1);
            }
            Ok(())
        }
        PolicyCommand::Check { dir } => {
            let dir = dir.unwrap_or_else(|| config.policy.dir_in(&config.data_dir));
            let loaded = Policies::load_dir(&dir);
            let out = match &loaded {
                Ok(p) => serde_json::json!({
                    "dir": dir.display().to_string(),
                    "ok": true,
                    "files": p.files(),
                    "kinds": p.kinds().iter().map(|k| k.name()).collect::<Vec<_>>(),
                    "error": null,
                }),
                Err(e) => serde_json::json!({
                    "dir": dir.display().to_string(),
                    "ok": false,
                    "files": [],
                    "kinds": [],
                    "error": e.to_string(),
                }),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                match &loaded {
                    Ok(p) if p.kinds().is_empty() => {
                        println!(
                            "{}: no policies; everything is admitted and placed anywhere",
                            dir.display()
                        )
                    }
                    Ok(p) => {
                        println!("{}: loads", dir.display());
                        for k in p.kinds() {
                            println!("  {} ({})", k.name(), k.package());
                        }
                    }
                    Err(e) => println!("{}: does not load\n  {e}", dir.display()),
                }
            }
            if loaded.is_err() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn describe_decision(kind: crank_policy::Kind, d: &serde_json::Value) -> String {
    let list = |field: &str| -> Vec<String> {
        d[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    match kind {
        crank_policy::Kind::Admission => {
            let deny = list("deny");
            if deny.is_empty() {
                format!("quote, price × {}", d["price_multiplier"])
            } else {
                format!("decline: policy: {}", deny.join("; "))
            }
        }
        crank_policy::Kind::Placement => {
            let ex = list("exclude");
            if ex.is_empty() {
                "candidate may take part".into()
            } else {
                format!("candidate left out: {}", ex.join("; "))
            }
        }
        crank_policy::Kind::Output => {
            let r = list("redact");
            if r.is_empty() {
                "every output handed back".into()
            } else {
                format!("withheld: {}", r.join(", "))
            }
        }
    }
}

/// `submit`: run one task, through the running node's API or a temporary node.
pub async fn submit(mut config: Config, args: SubmitArgs, json: bool) -> Result<()> {
    let input = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let input_json: serde_json::Value = serde_json::from_str(&input)
        .with_context(|| format!("input {} is not valid JSON", args.input.display()))?;
    // The bytes travel, not the path: the node reads no file on the API's behalf.
    let model = std::fs::read(&args.model)
        .with_context(|| format!("cannot read model {}", args.model.display()))?;
    let task = TaskJson {
        model: None,
        model_path: None,
        model_base64: Some(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &model,
        )),
        input: input_json,
        max_price_stroops: args.max_price,
        deadline_ms: args.deadline_ms,
        bid_window_ms: None,
        prefer: Some(args.prefer.to_string()),
        labels: args.labels.iter().cloned().collect(),
    };

    let running = if args.no_api || !args.bootstrap.is_empty() {
        None
    } else {
        ApiClient::connect(&config.data_dir).await?
    };
    let result: TaskResultJson = if let Some(mut api) = running {
        let pb = spinner("running the task through the local node", json);
        let (status, body) = api
            .call(
                hyper::Method::POST,
                "/tasks",
                Some(&serde_json::to_value(&task)?),
                Duration::from_secs(600),
            )
            .await?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        if !status.is_success() {
            let msg = api_error_text(&body);
            if args.verbose
                && let Some(t) = body
                    .get("auction")
                    .and_then(|t| serde_json::from_value::<AuctionTrace>(t.clone()).ok())
            {
                eprint!("{}", render_trace(&t));
            }
            bail!("{msg}");
        }
        serde_json::from_value(body)?
    } else {
        // A temporary node: requester only, no API, listening on an ephemeral port.
        for b in &args.bootstrap {
            network::parse_bootstrap(b)?;
            config.network.bootstrap.push(b.clone());
        }
        if config.network.bootstrap.is_empty() {
            bail!(
                "no crank-node is running on this data dir and no --bootstrap was given: nothing to submit to"
            );
        }
        config.worker.enabled = false;
        config.api.enabled = false;
        config.worker.benchmark_ms = 0;
        let pb = spinner("joining the mesh", json);
        let node = Node::start(config.clone(), Role::default()).await?;
        let handle = node.handle();
        let outcome = async {
            wait_for_bootstrap(&handle, Duration::from_secs(15)).await?;
            if let Some(pb) = &pb {
                pb.set_message("looking for workers and running the task");
            }
            let req = api::request_from_json(&handle, task)
                .await
                .map_err(|e| anyhow!(e))?;
            match handle.submit(req).await {
                Ok(o) => Ok(TaskResultJson::from(&o)),
                Err(crate::SubmitError::Failed { explanation, trace }) => {
                    if args.verbose {
                        eprint!("{}", render_trace(&trace));
                    }
                    Err(anyhow!("task failed: {explanation}"))
                }
                Err(e) => Err(anyhow!(e)),
            }
        }
        .await;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        node.shutdown().await;
        outcome?
    };

    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", render_result(&result));
        if args.verbose {
            print!("{}", render_trace(&result.auction));
        }
    }
    Ok(())
}

/// Waits until a bootstrap node answers; explains each failure when none does.
async fn wait_for_bootstrap(handle: &NodeHandle, limit: Duration) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let status = handle.status().await?;
        if status.network.bootstrap.iter().any(|b| b.connected)
            || status.network.bootstrap.is_empty()
        {
            return Ok(());
        }
        let all_failed = status
            .network
            .bootstrap
            .iter()
            .all(|b| b.last_error.is_some());
        if started.elapsed() >= limit || (all_failed && started.elapsed() >= Duration::from_secs(3))
        {
            let mut msg = String::from("none of the bootstrap nodes answered:");
            for b in &status.network.bootstrap {
                let _ = write!(
                    msg,
                    "\n  {}: {}",
                    b.addr,
                    b.last_error.as_deref().unwrap_or("no answer yet")
                );
            }
            msg.push_str("\ncheck the address (the bootstrap node prints it at start) and that it is running");
            bail!(msg);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The result for people: prediction, worker, price, receipt.
pub fn render_result(r: &TaskResultJson) -> String {
    let mut s = String::new();
    match &r.predictions {
        Some(preds) => {
            for (i, p) in preds.iter().enumerate() {
                let row = if preds.len() > 1 {
                    format!(" (row {i})")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "prediction{row}: class {} with probability {:.3}",
                    p.class, p.probability
                );
            }
        }
        None => {
            for o in &r.outputs {
                let shown: Vec<String> = o.data.iter().take(10).map(ToString::to_string).collect();
                let more = if o.data.len() > 10 { ", …" } else { "" };
                let _ = writeln!(
                    s,
                    "output {} {:?} {}: [{}{more}]",
                    o.name.as_deref().unwrap_or("?"),
                    o.shape,
                    o.dtype,
                    shown.join(", ")
                );
            }
        }
    }
    let b = &r.receipt.inner.body;
    let _ = writeln!(s, "task      {}", r.task_id);
    let _ = writeln!(s, "worker    {}", r.worker_peer_id);
    let _ = writeln!(
        s,
        "price     {} stroops ({:.7} XLM)",
        r.price_stroops,
        r.price_stroops as f64 / 1e7
    );
    let _ = writeln!(
        s,
        "time      {:.1} ms end to end, {} µs inference on {}",
        r.elapsed_ms, b.timings.run_micros, b.path
    );
    let _ = writeln!(
        s,
        "energy    {:.3} mJ, {}",
        b.energy.microjoules as f64 / 1000.0,
        b.energy.method
    );
    let verified = if r.receipt.verify().is_ok() {
        "verified"
    } else {
        "NOT VERIFIED"
    };
    let _ = writeln!(
        s,
        "receipt   signed by the worker and counter-signed by us ({verified}); pair #{}, {} stroops owed in all",
        b.pair_seq, b.cumulative_stroops
    );
    if let Some(c) = &r.check {
        let _ = writeln!(s, "check     {}", render_check(c));
    }
    s
}

/// One line on a task's spot check.
fn render_check(c: &crate::CheckReport) -> String {
    use crate::CheckOutcome as O;
    let rate = c.rate * 100.0;
    let cost = format!(
        "{} more stroops, {:.0} ms more",
        c.extra_stroops, c.extra_ms
    );
    let how = c
        .independence
        .map(|i| format!(" on {i}"))
        .unwrap_or_default();
    match c.outcome {
        O::NotSampled => {
            format!("not drawn this time ({rate:.0} % of this worker's tasks are checked)")
        }
        O::Agreed => format!("an independent replica{how} agreed ({rate:.0} % drawn; {cost})"),
        O::FirstOutvoted => format!(
            "the first answer was outvoted by two independent runs and is not paid; this is the majority's answer ({cost}): {}",
            c.detail.as_deref().unwrap_or("")
        ),
        O::ReplicaOutvoted => format!(
            "the replica was outvoted by a third run and is not paid; the first answer stands ({cost})"
        ),
        O::Unresolved => format!(
            "replicas disagreed with no majority; the first answer is given unconfirmed ({cost}): {}",
            c.detail.as_deref().unwrap_or("")
        ),
        O::NoReplica => format!(
            "drawn, but no independent worker ran a replica; the answer is unchecked: {}",
            c.detail.as_deref().unwrap_or("")
        ),
    }
}

/// The auction for people (`--verbose`): every answer with its score, the award and why.
pub fn render_trace(t: &AuctionTrace) -> String {
    format!("auction\n{t}")
}

/// `models add|list`.
pub async fn models(config: Config, cmd: ModelsCommand, json: bool) -> Result<()> {
    let store = crank_inference::ModelStore::open(
        &config.data_dir.join("models"),
        config.engine.max_model_bytes,
    )?;
    match cmd {
        ModelsCommand::Add { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Load it once before storing, so a broken file is refused now (and never
            // served to peers), not on a worker later.
            api::check_model_bytes(&config, &bytes)
                .with_context(|| format!("{} is refused", file.display()))?;
            let id = store.put(&bytes)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "model": id.to_hex(), "bytes": bytes.len() })
                );
            } else {
                println!("{id}  {}", file.display());
            }
        }
        ModelsCommand::List => {
            let list: Vec<_> = store
                .list()
                .into_iter()
                .map(|id| (id, store.size(&id).unwrap_or(0)))
                .collect();
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(id, n)| serde_json::json!({ "model": id.to_hex(), "bytes": n }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (id, n) in list {
                    println!("{id}  {n} bytes");
                }
            }
        }
    }
    Ok(())
}

async fn api_call(
    config: &Config,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>> {
    let Some(mut api) = ApiClient::connect(&config.data_dir).await? else {
        return Ok(None);
    };
    let (status, value) = api
        .call(method, path, body.as_ref(), Duration::from_secs(300))
        .await?;
    if !status.is_success() {
        bail!("{}", api_error_text(&value));
    }
    Ok(Some(value))
}

/// `wallet …`: through the running node when there is one (it holds the ledger), else directly.
pub async fn wallet(config: Config, cmd: WalletCommand, json: bool) -> Result<()> {
    use crate::wallet::{NodeWallet, SettleView, render_history, render_settle};
    std::fs::create_dir_all(&config.data_dir)?;
    match cmd {
        WalletCommand::Address => {
            let w = crank_payments::stellar::Wallet::load_or_create(
                &config.data_dir.join(crate::PAYOUT_KEY_FILE),
            )?;
            if json {
                println!("{}", serde_json::json!({ "address": w.address() }));
            } else {
                println!("{}", w.address());
            }
        }
        WalletCommand::Fund => {
            let w = crank_payments::stellar::Wallet::load_or_create(
                &config.data_dir.join(crate::PAYOUT_KEY_FILE),
            )?;
            let funded = crank_payments::cli::fund(&config.stellar, &w)
                .await
                .with_context(|| {
                    format!(
                        "funding {} through {}",
                        w.address(),
                        config.stellar.friendbot_url
                    )
                })?;
            let text = match funded {
                crank_payments::horizon::Funded::Funded(Some(tx)) => {
                    format!("funded {} (tx {})", w.address(), tx.to_hex())
                }
                crank_payments::horizon::Funded::Funded(None) => format!("funded {}", w.address()),
                crank_payments::horizon::Funded::AlreadyFunded => {
                    format!("{} was already funded", w.address())
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "address": w.address(), "result": text })
                );
            } else {
                println!("{text}");
            }
        }
        WalletCommand::Balance => {
            let value = match api_call(&config, hyper::Method::GET, "/wallet", None).await? {
                Some(v) => v,
                None => serde_json::to_value(
                    NodeWallet::open_dir(&config)
                        .map_err(|e| anyhow!(e))?
                        .balance()
                        .await
                        .map_err(|e| anyhow!(e))?,
                )?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let b: crank_payments::cli::WalletBalance = serde_json::from_value(value)?;
                println!("{b}");
            }
        }
        WalletCommand::Settle { dry_run, all } => {
            let body = serde_json::json!({ "all": all, "dry_run": dry_run });
            let value =
                match api_call(&config, hyper::Method::POST, "/wallet/settle", Some(body)).await? {
                    Some(v) => v,
                    None => serde_json::to_value(
                        NodeWallet::open_dir(&config)
                            .map_err(|e| anyhow!(e))?
                            .settle(all, dry_run)
                            .await
                            .map_err(|e| anyhow!(e))?,
                    )?,
                };
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let v: SettleView = serde_json::from_value(value)?;
                print!("{}", render_settle(&v));
            }
        }
        WalletCommand::History { limit } => {
            let value = match api_call(
                &config,
                hyper::Method::GET,
                &format!("/wallet/history?limit={limit}"),
                None,
            )
            .await?
            {
                Some(v) => v,
                None => serde_json::to_value(
                    NodeWallet::open_dir(&config)
                        .map_err(|e| anyhow!(e))?
                        .history(limit)
                        .map_err(|e| anyhow!(e))?,
                )?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let list: Vec<crank_payments::IntentRecord> = serde_json::from_value(value)?;
                print!("{}", render_history(&list));
            }
        }
    }
    Ok(())
}

/// `id`: node id, peer id, payout address.
pub fn id(config: &Config, json: bool) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let (identity, _) = crate::identity::load_or_create(&config.data_dir)?;
    let wallet = crank_payments::stellar::Wallet::load_or_create(
        &config.data_dir.join(crate::PAYOUT_KEY_FILE),
    )?;
    let node = identity.node_id();
    let peer = network::peer_id_string(&node);
    if json {
        println!(
            "{}",
            serde_json::json!({ "node_id": node.to_hex(), "peer_id": peer, "payout": wallet.address() })
        );
    } else {
        println!(
            "node id   {node}\npeer id   {peer}\npayout    {}",
            wallet.address()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_submit() {
        let cli = Cli::try_parse_from([
            "crank-node",
            "--json",
            "submit",
            "--model",
            "m.onnx",
            "--input",
            "i.json",
            "--prefer",
            "green",
            "--max-price",
            "500",
        ])
        .unwrap();
        match cli.command {
            Command::Submit(a) => {
                assert_eq!(a.prefer, Preference::Green);
                assert_eq!(a.max_price, Some(500));
            }
            _ => panic!("wrong command"),
        }
        assert!(cli.json);
    }
}
