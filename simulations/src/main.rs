//! `crank-sim`: the market simulation (`crank-sim market`) and the many-node mesh
//! (`crank-sim mesh`); see the crate docs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use crank_sim::market::{self, CheatMode, MarketConfig, Progress, SchedulerKind};
use crank_sim::report::{self, RunInfo};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "crank-sim",
    version,
    about = "Simulations of the crank-node mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Market simulation: the real auction against baselines over a device population.
    Market(MarketArgs),
    /// Spot checks against cheating workers: the auction with a share of devices returning
    /// wrong outputs (always, sometimes, only when not a replica, or colluding), with checks
    /// and without, reporting wrong answers accepted, time to catch a cheater and what
    /// checking costs.
    Checks(ChecksArgs),
    /// Many real crank-node nodes in one process over loopback TCP, with churn.
    #[cfg(feature = "mesh")]
    Mesh(MeshArgs),
}

#[cfg(feature = "mesh")]
#[derive(clap::Args)]
struct MeshArgs {
    /// The small preset (12 workers, 60 tasks, churn every 0.4 s): well under a minute. The default is the full
    /// one (100 workers, 200 tasks).
    #[arg(long)]
    small: bool,
    /// Seed of the churn and task choices.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker nodes (overrides the preset).
    #[arg(long)]
    workers: Option<usize>,
    /// Requester-only nodes (overrides the preset).
    #[arg(long)]
    requesters: Option<usize>,
    /// Tasks (overrides the preset).
    #[arg(long)]
    tasks: Option<usize>,
    /// Tasks in flight (overrides the preset).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Advert propagation probes (overrides the preset).
    #[arg(long)]
    probes: Option<usize>,
    /// One worker leaves and a new one joins this often, ms; 0 turns churn off.
    #[arg(long)]
    churn_every_ms: Option<u64>,
    /// Nodes' advert interval, seconds.
    #[arg(long)]
    advert_interval_secs: Option<u64>,
    /// How long requesters collect bids, ms (a loaded machine answers slowly).
    #[arg(long)]
    bid_window_ms: Option<u64>,
    /// Output directory.
    #[arg(long, default_value = "simulations/out")]
    out: PathBuf,
    /// Tokio worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[cfg(feature = "mesh")]
fn mesh_cmd(args: MeshArgs) -> Result<ExitCode> {
    use crank_sim::mesh::{self, MeshConfig};
    let mut cfg = if args.small {
        MeshConfig::small()
    } else {
        MeshConfig::full()
    };
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.workers {
        cfg.workers = v;
    }
    if let Some(v) = args.requesters {
        cfg.requesters = v;
    }
    if let Some(v) = args.tasks {
        cfg.tasks = v;
    }
    if let Some(v) = args.concurrency {
        cfg.concurrency = v;
    }
    if let Some(v) = args.probes {
        cfg.probes = v;
    }
    if let Some(v) = args.churn_every_ms {
        cfg.churn_every_ms = v;
    }
    if let Some(v) = args.advert_interval_secs {
        cfg.advert_interval_secs = v;
    }
    if let Some(v) = args.bid_window_ms {
        cfg.bid_window_ms = v;
    }
    cfg.threads = args.threads;
    cfg.validate()?;
    let show = !args.quiet && std::io::stderr().is_terminal();
    let bar = if show {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<28} {bar:40.cyan/blue} {pos:>5}/{len:5} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let threads = threads_of(cfg.threads);
    eprintln!(
        "crank-sim mesh: {} workers, {} requesters, {} tasks, churn every {} ms",
        cfg.workers, cfg.requesters, cfg.tasks, cfg.churn_every_ms
    );
    let started = Instant::now();
    let report = mesh::run(&cfg, &bar)?;
    let wall = started.elapsed().as_secs_f64();
    let info = RunInfo {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        wall_seconds: wall,
        threads,
    };
    let path = report::write_mesh(&args.out, &report, &info)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    let s = &report.summary;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "nodes {} (peak {}), ready after {:.1} s",
        s.nodes_started, s.peak_nodes, s.ready_s
    );
    println!(
        "advert change to every node: p50 {} ms, p95 {} ms ({} incomplete); newcomer to every requester: p50 {} ms, p95 {} ms",
        opt(s.propagation_p50_ms),
        opt(s.propagation_p95_ms),
        s.propagation_incomplete,
        opt(s.join_p50_ms),
        opt(s.join_p95_ms)
    );
    println!(
        "tasks {}: completed {} ({:.1} %), failed {}, lost {}; latency p50 {:.0} ms p95 {:.0} ms; auction to award p50 {} ms p95 {} ms; churn {} left / {} joined",
        s.tasks,
        s.completed,
        100.0 * s.completion_rate,
        s.failed,
        s.lost,
        s.latency_p50_ms.unwrap_or(0.0),
        s.latency_p95_ms.unwrap_or(0.0),
        opt(s.auction_p50_ms),
        opt(s.auction_p95_ms),
        s.leaves,
        s.joins
    );
    println!(
        "spot checks: {} of {} completed tasks checked, {:.2} extra runs per task, {} disagreements, check adds p50 {:.0} ms",
        s.checked,
        s.completed,
        s.check_overhead,
        s.check_disagreements,
        s.check_p50_ms.unwrap_or(0.0)
    );
    println!("ran in {wall:.1} s; report: {}", path.display());
    if report.passed() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("invariant checks FAILED:");
        for v in report.violations.iter().take(20) {
            eprintln!("  {}: {}", v.kind, v.detail);
        }
        Ok(ExitCode::FAILURE)
    }
}

#[derive(clap::Args)]
struct MarketArgs {
    /// The small preset (2,000 devices, 20,000 tasks): seconds. The default is the full one
    /// (100,000 devices, 1,000,000 tasks).
    #[arg(long)]
    small: bool,
    /// Seed of every random stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Devices (overrides the preset).
    #[arg(long)]
    devices: Option<u64>,
    /// Tasks (overrides the preset).
    #[arg(long)]
    tasks: Option<u64>,
    /// Days over which tasks arrive (overrides the preset).
    #[arg(long)]
    days: Option<f64>,
    /// Shards (independent regions run in parallel; results depend on it).
    #[arg(long)]
    shards: Option<u32>,
    /// Requesters in all.
    #[arg(long)]
    requesters: Option<u32>,
    /// Schedulers, comma-separated: auction[-cheap|-fast|-green|-balanced], random, fastest,
    /// cheapest.
    #[arg(long, value_delimiter = ',')]
    schedulers: Option<Vec<SchedulerKind>>,
    /// Mean hours a device stays in the mesh (0 turns churn off).
    #[arg(long)]
    session_hours: Option<f64>,
    /// Share of owners with the `always` policy (default 0: everyone keeps charging-idle).
    #[arg(long)]
    always_share: Option<f64>,
    /// Also run the configuration at these churn multipliers (e.g. 0,1,4,16) and plot
    /// completion against churn.
    #[arg(long, value_delimiter = ',')]
    churn_sweep: Option<Vec<f64>>,
    /// Output directory.
    #[arg(long, default_value = "simulations/out")]
    out: PathBuf,
    /// Worker threads (0: one per core); results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Whether to draw progress bars (not with `--quiet`, nor when stderr is no terminal), and
/// the place they draw to.
fn progress_target(quiet: bool) -> (bool, MultiProgress) {
    let show = !quiet && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    (show, multi)
}

/// The worker threads a run uses (0: one per core).
fn threads_of(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    }
}

fn progress(multi: &MultiProgress, names: &[SchedulerKind], tasks: u64, show: bool) -> Progress {
    let style = ProgressStyle::with_template(
        "{prefix:>18} {bar:40.cyan/blue} {pos:>9}/{len:9} tasks {per_sec:>12} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bars = names
        .iter()
        .map(|n| {
            let bar = if show {
                multi.add(ProgressBar::new(tasks))
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(style.clone());
            bar.set_prefix(n.to_string());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        })
        .collect();
    Progress::new(bars)
}

fn market_cmd(args: MarketArgs) -> Result<ExitCode> {
    let mut cfg = if args.small {
        MarketConfig::small()
    } else {
        MarketConfig::full()
    };
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.devices {
        cfg.devices = v;
    }
    if let Some(v) = args.tasks {
        cfg.tasks = v;
    }
    if let Some(v) = args.days {
        cfg.days = v;
    }
    if let Some(v) = args.shards {
        cfg.shards = v;
    }
    if let Some(v) = args.requesters {
        cfg.requesters = v;
    }
    if let Some(v) = args.schedulers {
        cfg.schedulers = v;
    }
    if let Some(v) = args.session_hours {
        cfg.churn.mean_session_h = v;
    }
    if let Some(v) = args.always_share {
        cfg.always_share = v;
    }
    cfg.threads = args.threads;
    cfg.validate()?;
    let (show, multi) = progress_target(args.quiet);
    let threads = threads_of(cfg.threads);
    eprintln!(
        "crank-sim market: {} devices, {} tasks, {} schedulers, {} shards, {} threads",
        cfg.devices,
        cfg.tasks,
        cfg.schedulers.len(),
        cfg.shards,
        threads
    );
    let started = Instant::now();
    let report = market::run(&cfg, &progress(&multi, &cfg.schedulers, cfg.tasks, show))?;
    let wall = started.elapsed().as_secs_f64();
    let sweep = match &args.churn_sweep {
        Some(ms) => {
            eprintln!("churn sweep over multipliers {ms:?}");
            market::churn_sweep(&cfg, ms, |_| {
                progress(&multi, &cfg.schedulers, cfg.tasks, show)
            })?
        }
        None => Vec::new(),
    };
    let info = RunInfo {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        wall_seconds: wall,
        threads,
    };
    let path = report::write(&args.out, &report, &sweep, &info)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    println!(
        "{:<18} {:>10} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10}",
        "scheduler", "completed", "p50 ms", "p95 ms", "J/task", "battery", "price", "ask"
    );
    for s in &report.summaries {
        println!(
            "{:<18} {:>9.2}% {:>9} {:>9} {:>10.3} {:>8.2}% {:>10.0} {:>10.0}",
            s.scheduler,
            s.completion_rate * 100.0,
            s.latency_p50_ms,
            s.latency_p95_ms,
            s.energy_per_task_j,
            s.battery_energy_share * 100.0,
            s.mean_price_stroops,
            s.mean_ask_stroops
        );
    }
    println!("simulated in {wall:.1} s; report: {}", path.display());
    if report.passed() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("invariant checks FAILED:");
        for (sched, kind, n) in &report.violation_counts {
            eprintln!("  {sched}: {kind} ×{n}");
        }
        for v in report.violations.iter().take(10) {
            eprintln!("  e.g. {} shard {}: {}", v.scheduler, v.shard, v.detail);
        }
        Ok(ExitCode::FAILURE)
    }
}

#[derive(clap::Args)]
struct ChecksArgs {
    /// Seed of every random stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Devices (default: the small market preset's 2,000).
    #[arg(long)]
    devices: Option<u64>,
    /// Tasks (default 40,000: two days of the small preset's rate).
    #[arg(long, default_value_t = 40_000)]
    tasks: u64,
    /// Days over which tasks arrive.
    #[arg(long, default_value_t = 2.0)]
    days: f64,
    /// Requesters in all.
    #[arg(long)]
    requesters: Option<u32>,
    /// Shares of cheating devices, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,0.3")]
    shares: Vec<f64>,
    /// How they cheat, comma-separated: always, sometimes, unchecked, colluding.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "always,sometimes,unchecked,colluding"
    )]
    modes: Vec<CheatMode>,
    /// Probability of a wrong answer in mode `sometimes`.
    #[arg(long, default_value_t = 0.2)]
    probability: f64,
    /// Lowest check rate, reached after long agreeing streaks (the node's default 0.05).
    #[arg(long)]
    floor_rate: Option<f64>,
    /// Scheduler preference of the auction: auction[-cheap|-fast|-green|-balanced].
    #[arg(long, default_value = "auction-balanced")]
    scheduler: SchedulerKind,
    /// Output directory.
    #[arg(long, default_value = "simulations/out")]
    out: PathBuf,
    /// Worker threads (0: one per core); results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn checks_cmd(args: ChecksArgs) -> Result<ExitCode> {
    let mut cfg = MarketConfig::small();
    cfg.name = "checks".into();
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.devices {
        cfg.devices = v;
    }
    if let Some(v) = args.requesters {
        cfg.requesters = v;
    }
    cfg.tasks = args.tasks;
    cfg.days = args.days;
    cfg.schedulers = vec![args.scheduler];
    cfg.cheaters.probability = args.probability;
    cfg.checks.enabled = true;
    if let Some(v) = args.floor_rate {
        cfg.checks.floor_rate = v;
    }
    cfg.sample_every = 0;
    cfg.threads = args.threads;
    cfg.validate()?;
    for &share in &args.shares {
        let mut c = cfg.clone();
        c.cheaters.share = share;
        c.validate()?;
    }
    let (show, multi) = progress_target(args.quiet);
    let threads = threads_of(cfg.threads);
    eprintln!(
        "crank-sim checks: {} devices, {} tasks over {} days, cheater shares {:?}, modes {:?}: {} runs",
        cfg.devices,
        cfg.tasks,
        cfg.days,
        args.shares,
        args.modes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        args.shares.len() * (args.modes.len() + 1)
    );
    let started = Instant::now();
    let rows = market::check_grid(&cfg, &args.shares, &args.modes, |label| {
        let p = progress(&multi, &cfg.schedulers, cfg.tasks, show);
        p.set_prefix(label);
        p
    })?;
    let info = RunInfo {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        wall_seconds: started.elapsed().as_secs_f64(),
        threads,
    };
    let path = report::write_checks(&args.out, &cfg, &rows, &info)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    print!("{}", report::checks_table(&rows));
    println!(
        "simulated in {:.1} s; report: {}",
        info.wall_seconds,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // A hundred nodes under churn warn about every closed connection: only errors by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Market(args) => market_cmd(args),
        Command::Checks(args) => checks_cmd(args),
        #[cfg(feature = "mesh")]
        Command::Mesh(args) => mesh_cmd(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crank-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
