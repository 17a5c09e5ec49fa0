//! The command-line interface: flags (clap) and what each subcommand does.
//!
//! `main.rs` parses, sets up logging and calls [`dispatch`]; every subcommand is a function
//! here so tests can call it.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use crank_protocol::RunPolicy;
use crank_scheduler::{AuctionTrace, Preference};

use crate::api::{self, TaskJson, TaskResultJson};
use crate::config::Config;
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
    /// Local API address (loopback; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
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
        config.api.listen = a.clone();
    }
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
        Command::Models(cmd) => models(config, cmd, json).await,
        Command::Wallet(cmd) => wallet(config, cmd, json).await,
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Id => id(&config, json),
    }
}

async fn ctrl_c() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    tracing::info!("shutting down");
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
        let id = node
            .handle()
            .add_model(&bytes)
            .await
            .with_context(|| format!("model {}", m.display()))?;
        tracing::info!(model = %id, file = %m.display(), "model added");
    }
    serve_until_interrupted(node).await
}

async fn serve_until_interrupted(node: Node) -> Result<()> {
    let handle = node.handle();
    match api::serve(handle.clone()).await {
        Ok(addr) => tracing::info!(addr = %addr, "local API listening (token in api.token)"),
        Err(e) => tracing::warn!(error = %e, "local API not started"),
    }
    for a in handle.listen_addrs().await {
        println!("listening on {a}");
    }
    ctrl_c().await;
    node.shutdown().await;
    Ok(())
}

/// `bootstrap`: run a bootstrap node until interrupted.
pub async fn bootstrap(config: Config) -> Result<()> {
    let node = Node::start(config, Role { bootstrap: true }).await?;
    serve_until_interrupted(node).await
}

fn api_client(config: &Config) -> Option<(String, String)> {
    let addr = std::fs::read_to_string(config.data_dir.join(api::ADDR_FILE)).ok()?;
    let token = std::fs::read_to_string(config.data_dir.join(api::TOKEN_FILE)).ok()?;
    Some((format!("http://{}", addr.trim()), token.trim().to_string()))
}

async fn running_api(config: &Config) -> Option<(reqwest::Client, String, String)> {
    let (base, token) = api_client(config)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let up = http
        .get(format!("{base}/health"))
        .send()
        .await
        .ok()?
        .status()
        .is_success();
    up.then_some((http, base, token))
}

/// `status`: ask the running node.
pub async fn status(config: &Config, json: bool) -> Result<()> {
    let Some((http, base, token)) = running_api(config).await else {
        bail!(
            "no crank-node is running with data dir {} (start one with `crank-node join`, or pass --data-dir)",
            config.data_dir.display()
        );
    };
    let resp = http
        .get(format!("{base}/status"))
        .bearer_auth(token)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "the node answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let value: serde_json::Value = resp.json().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let s: crate::status::NodeStatus = serde_json::from_value(value)?;
        print!("{}", s.render());
    }
    Ok(())
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

/// `submit`: run one task, through the running node's API or a temporary node.
pub async fn submit(mut config: Config, args: SubmitArgs, json: bool) -> Result<()> {
    let input = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let input_json: serde_json::Value = serde_json::from_str(&input)
        .with_context(|| format!("input {} is not valid JSON", args.input.display()))?;
    let model_path = std::fs::canonicalize(&args.model)
        .with_context(|| format!("cannot read model {}", args.model.display()))?;
    let task = TaskJson {
        model: None,
        model_path: Some(model_path.display().to_string()),
        model_base64: None,
        input: input_json,
        max_price_stroops: args.max_price,
        deadline_ms: args.deadline_ms,
        bid_window_ms: None,
        prefer: Some(args.prefer.to_string()),
    };

    let result: TaskResultJson = if let Some((_, base, token)) =
        if args.no_api || !args.bootstrap.is_empty() {
            None
        } else {
            running_api(&config).await
        } {
        let pb = spinner("running the task through the local node", json);
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{base}/tasks"))
            .bearer_auth(token)
            .json(&task)
            .send()
            .await?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error")
                .to_string();
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
    s
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
            let had = store.has(&crank_protocol::ModelId::of(&bytes));
            let id = store.put(&bytes)?;
            // Load it once so a broken file is refused now, not on a worker later.
            let store = std::sync::Arc::new(store);
            let engine = crank_inference::Engine::new(config.engine.clone(), store.clone())?;
            if let Err(e) = engine.inspect(&id) {
                if !had {
                    let _ = store.remove(&id);
                }
                bail!("{} is not a model crank-node can run: {e}", file.display());
            }
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
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>> {
    let Some((http, base, token)) = running_api(config).await else {
        return Ok(None);
    };
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(300));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let value: serde_json::Value = resp.json().await?;
    if !status.is_success() {
        bail!(
            "{}",
            value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("the node refused the request")
        );
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
            let value = match api_call(&config, reqwest::Method::GET, "/wallet", None).await? {
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
            let value = match api_call(&config, reqwest::Method::POST, "/wallet/settle", Some(body))
                .await?
            {
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
                reqwest::Method::GET,
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
