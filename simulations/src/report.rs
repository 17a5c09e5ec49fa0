//! Output of a market run: CSV files (summaries complete, per-task rows sampled), SVG plots
//! drawn with `plotters`, a JSON dump, and a markdown report that ties them together.
//!
//! Files written to the output directory:
//!
//! | file | content |
//! |---|---|
//! | `summary.csv` | one row per scheduler: completion, latency, energy, battery, prices |
//! | `earnings.csv` | per scheduler and device class: tasks, pay, energy, XLM per device-month |
//! | `hourly.csv` | per scheduler and hour: tasks arrived, completed, failed; devices online, gate open, leaves |
//! | `latency_quantiles.csv` | per scheduler: latency at each percentile 0..=100 |
//! | `failures.csv` | per scheduler: failure categories and counts |
//! | `tasks.csv` | one row per sampled task |
//! | `violations.csv` | broken invariants (only the header when the run passed) |
//! | `sweep.csv` | completion and latency per churn rate (when a churn sweep ran) |
//! | `report.json` | the whole report |
//! | `*.svg` | latency distribution, energy per task, earnings by class, completion by hour, churn sweep |
//! | `report.md` | the report |
//!
//! `crank-sim checks` writes `checks.csv`, `checks.json` and `checks.md` ([`write_checks`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::market::{CheckGridRow, MarketConfig, MarketReport, SchedulerSummary, SweepPoint};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A CSV file could not be written.
    #[error("cannot write CSV {path}: {source}")]
    Csv {
        /// The path.
        path: PathBuf,
        /// The error.
        source: csv::Error,
    },
    /// A plot could not be drawn.
    #[error("cannot draw {path}: {message}")]
    Plot {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The JSON dump could not be encoded.
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// How the run was made, for the report's header.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// The command line.
    pub command: String,
    /// Wall-clock seconds of the simulation (not part of the results).
    pub wall_seconds: f64,
    /// Threads used.
    pub threads: usize,
}

/// The error for an I/O failure on `path`, for `map_err`.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError {
    let path = path.to_path_buf();
    move |source| ReportError::Io { path, source }
}

fn csv_writer(path: &Path) -> Result<csv::Writer<std::fs::File>, ReportError> {
    csv::Writer::from_path(path).map_err(|source| ReportError::Csv {
        path: path.to_path_buf(),
        source,
    })
}

fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), ReportError> {
    write_rows_or_header(path, rows, &[])
}

/// Like [`write_rows`], but writes `header` when there are no rows, so an empty table still
/// names its columns.
fn write_rows_or_header<T: Serialize>(
    path: &Path,
    rows: &[T],
    header: &[&str],
) -> Result<(), ReportError> {
    let mut w = csv_writer(path)?;
    let err = |source| ReportError::Csv {
        path: path.to_path_buf(),
        source,
    };
    if rows.is_empty() && !header.is_empty() {
        w.write_record(header).map_err(err)?;
    }
    for r in rows {
        w.serialize(r).map_err(err)?;
    }
    w.flush().map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Serialize)]
struct SummaryRow<'a> {
    scheduler: &'a str,
    tasks: u64,
    completed: u64,
    failed: u64,
    completion_rate: f64,
    latency_p50_ms: u64,
    latency_p95_ms: u64,
    latency_p99_ms: u64,
    latency_mean_ms: f64,
    energy_per_task_j: f64,
    wasted_energy_share: f64,
    battery_energy_share: f64,
    battery_energy_default_policy_j: f64,
    mean_price_stroops: f64,
    mean_ask_stroops: f64,
    attempts: u64,
    aborted_runs: u64,
    lost_jobs: u64,
    gpu_share: f64,
    signed_messages: u64,
}

impl<'a> From<&'a SchedulerSummary> for SummaryRow<'a> {
    fn from(s: &'a SchedulerSummary) -> Self {
        Self {
            scheduler: &s.scheduler,
            tasks: s.tasks,
            completed: s.completed,
            failed: s.failed,
            completion_rate: s.completion_rate,
            latency_p50_ms: s.latency_p50_ms,
            latency_p95_ms: s.latency_p95_ms,
            latency_p99_ms: s.latency_p99_ms,
            latency_mean_ms: s.latency_mean_ms,
            energy_per_task_j: s.energy_per_task_j,
            wasted_energy_share: s.wasted_energy_share,
            battery_energy_share: s.battery_energy_share,
            battery_energy_default_policy_j: s.battery_energy_default_policy_j,
            mean_price_stroops: s.mean_price_stroops,
            mean_ask_stroops: s.mean_ask_stroops,
            attempts: s.attempts,
            aborted_runs: s.aborted_runs,
            lost_jobs: s.lost_jobs,
            gpu_share: s.gpu_share,
            signed_messages: s.signed_messages,
        }
    }
}

#[derive(Serialize)]
struct EarningsRow<'a> {
    scheduler: &'a str,
    class: &'a str,
    devices: u64,
    tasks: u64,
    paid_stroops: u64,
    energy_kwh: f64,
    xlm_per_device_month: f64,
    electricity_xlm_per_device_month: f64,
}

#[derive(Serialize)]
struct QuantileRow<'a> {
    scheduler: &'a str,
    percentile: usize,
    latency_ms: u64,
}

#[derive(Serialize)]
struct FailureRow<'a> {
    scheduler: &'a str,
    reason: &'a str,
    tasks: u64,
}

#[derive(Serialize)]
struct ViolationRow<'a> {
    scheduler: &'a str,
    shard: u32,
    kind: String,
    detail: &'a str,
}

/// Writes every file of the report into `dir` (created if missing); returns the report's path.
pub fn write(
    dir: &Path,
    report: &MarketReport,
    sweep: &[SweepPoint],
    info: &RunInfo,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let summaries: Vec<SummaryRow<'_>> = report.summaries.iter().map(SummaryRow::from).collect();
    write_rows(&dir.join("summary.csv"), &summaries)?;
    let earnings: Vec<EarningsRow<'_>> = report
        .summaries
        .iter()
        .flat_map(|s| {
            s.earnings.iter().map(move |e| EarningsRow {
                scheduler: &s.scheduler,
                class: &e.class,
                devices: e.devices,
                tasks: e.tasks,
                paid_stroops: e.paid_stroops,
                energy_kwh: e.energy_kwh,
                xlm_per_device_month: e.xlm_per_device_month,
                electricity_xlm_per_device_month: e.electricity_xlm_per_device_month,
            })
        })
        .collect();
    write_rows(&dir.join("earnings.csv"), &earnings)?;
    write_rows(&dir.join("hourly.csv"), &report.hourly)?;
    let quantiles: Vec<QuantileRow<'_>> = report
        .summaries
        .iter()
        .flat_map(|s| {
            s.latency_quantiles_ms
                .iter()
                .enumerate()
                .map(move |(p, ms)| QuantileRow {
                    scheduler: &s.scheduler,
                    percentile: p,
                    latency_ms: *ms,
                })
        })
        .collect();
    write_rows(&dir.join("latency_quantiles.csv"), &quantiles)?;
    let failures: Vec<FailureRow<'_>> = report
        .summaries
        .iter()
        .flat_map(|s| {
            s.failures.iter().map(move |(r, n)| FailureRow {
                scheduler: &s.scheduler,
                reason: r,
                tasks: *n,
            })
        })
        .collect();
    write_rows_or_header(
        &dir.join("failures.csv"),
        &failures,
        &["scheduler", "reason", "tasks"],
    )?;
    write_rows(&dir.join("tasks.csv"), &report.samples)?;
    let violations: Vec<ViolationRow<'_>> = report
        .violations
        .iter()
        .map(|v| ViolationRow {
            scheduler: &v.scheduler,
            shard: v.shard,
            kind: v.kind.to_string(),
            detail: &v.detail,
        })
        .collect();
    write_rows_or_header(
        &dir.join("violations.csv"),
        &violations,
        &["scheduler", "shard", "kind", "detail"],
    )?;
    if !sweep.is_empty() {
        write_rows(&dir.join("sweep.csv"), sweep)?;
    }
    let json = serde_json::to_vec_pretty(report)?;
    let path = dir.join("report.json");
    std::fs::write(&path, json).map_err(|source| ReportError::Io { path, source })?;

    plot_latency(&dir.join("latency_cdf.svg"), report)?;
    plot_energy(&dir.join("energy_per_task.svg"), report)?;
    plot_earnings(&dir.join("earnings_by_class.svg"), report)?;
    plot_hourly(&dir.join("completion_by_hour.svg"), report)?;
    if !sweep.is_empty() {
        plot_sweep(&dir.join("completion_under_churn.svg"), sweep)?;
    }
    let md = markdown(report, sweep, info);
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn plot_err(path: &Path) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Plot {
        path: path.to_path_buf(),
        message,
    }
}

fn plot_latency(path: &Path, report: &MarketReport) -> Result<(), ReportError> {
    let e = plot_err(path);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    #[allow(clippy::cast_precision_loss)]
    let max = report
        .summaries
        .iter()
        .flat_map(|s| s.latency_quantiles_ms.iter().copied())
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency of completed tasks (submission to result)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((10f64..max * 1.2).log_scale(), 0f64..100f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("percent of completed tasks")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, s) in report.summaries.iter().enumerate() {
        let c = color(i);
        #[allow(clippy::cast_precision_loss)]
        let pts: Vec<(f64, f64)> = s
            .latency_quantiles_ms
            .iter()
            .enumerate()
            .map(|(p, ms)| ((*ms).max(10) as f64, p as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(&s.scheduler)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Vertical bars with category labels under them.
fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    labels: &[String],
    groups: &[(String, Vec<f64>)],
) -> Result<(), ReportError> {
    let e = plot_err(path);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    #[allow(clippy::cast_precision_loss)]
    let n = labels.len() as f64;
    let names = labels.to_vec();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, 0f64..max * 1.15)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let ix = i as usize;
            if (x - i - 0.5).abs() < 1e-6 {
                names.get(ix).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    #[allow(clippy::cast_precision_loss)]
    let width = 0.8 / groups.len().max(1) as f64;
    for (g, (name, values)) in groups.iter().enumerate() {
        let c = color(g);
        #[allow(clippy::cast_precision_loss)]
        let rects = values.iter().enumerate().map(move |(i, v)| {
            let x0 = i as f64 + 0.1 + width * g as f64;
            Rectangle::new([(x0, 0.0), (x0 + width, *v)], c.filled())
        });
        chart
            .draw_series(rects)
            .map_err(|x| e(x.to_string()))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
    }
    if groups.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))
}

fn plot_energy(path: &Path, report: &MarketReport) -> Result<(), ReportError> {
    let labels: Vec<String> = report
        .summaries
        .iter()
        .map(|s| s.scheduler.clone())
        .collect();
    let useful: Vec<f64> = report
        .summaries
        .iter()
        .map(|s| s.energy_per_task_j * (1.0 - s.wasted_energy_share))
        .collect();
    let wasted: Vec<f64> = report
        .summaries
        .iter()
        .map(|s| s.energy_per_task_j * s.wasted_energy_share)
        .collect();
    let battery: Vec<f64> = report
        .summaries
        .iter()
        .map(|s| s.energy_per_task_j * s.battery_energy_share)
        .collect();
    bars(
        path,
        "Energy per completed task",
        "joules per completed task",
        &labels,
        &[
            ("delivered runs".into(), useful),
            ("wasted runs (aborted, lost, late)".into(), wasted),
            ("drawn from batteries".into(), battery),
        ],
    )
}

fn plot_earnings(path: &Path, report: &MarketReport) -> Result<(), ReportError> {
    let labels: Vec<String> = report
        .summaries
        .first()
        .map(|s| s.earnings.iter().map(|e| e.class.clone()).collect())
        .unwrap_or_default();
    let groups: Vec<(String, Vec<f64>)> = report
        .summaries
        .iter()
        .map(|s| {
            (
                s.scheduler.clone(),
                s.earnings.iter().map(|e| e.xlm_per_device_month).collect(),
            )
        })
        .collect();
    bars(
        path,
        "Earnings per device per month, by class",
        "XLM per device per 30 days",
        &labels,
        &groups,
    )
}

fn plot_hourly(path: &Path, report: &MarketReport) -> Result<(), ReportError> {
    let e = plot_err(path);
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let (top, bottom) = root.split_vertically(420);
    let hours = report.hourly.iter().map(|r| r.hour).max().unwrap_or(0) + 1;
    #[allow(clippy::cast_precision_loss)]
    let lowest = report
        .hourly
        .iter()
        .filter(|r| r.arrived > 0)
        .map(|r| 100.0 * r.completed as f64 / r.arrived as f64)
        .fold(100.0f64, f64::min);
    let floor = ((lowest - 2.0) / 5.0).floor().max(0.0) * 5.0;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Completion by hour of arrival, under churn",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..f64::from(hours), floor..100.5f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("hour")
        .y_desc("completed, % of arrived")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, s) in report.summaries.iter().enumerate() {
        let c = color(i);
        #[allow(clippy::cast_precision_loss)]
        let pts: Vec<(f64, f64)> = report
            .hourly
            .iter()
            .filter(|r| r.scheduler == s.scheduler && r.arrived > 0)
            .map(|r| {
                (
                    f64::from(r.hour) + 0.5,
                    100.0 * r.completed as f64 / r.arrived as f64,
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(&s.scheduler)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;

    let first = report.summaries.first().map(|s| s.scheduler.clone());
    let world: Vec<_> = report
        .hourly
        .iter()
        .filter(|r| Some(&r.scheduler) == first.as_ref())
        .collect();
    let devices: u64 = report.world.devices_by_class.iter().map(|(_, n)| n).sum();
    #[allow(clippy::cast_precision_loss)]
    let pct = |x: u64| 100.0 * x as f64 / devices.max(1) as f64;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "The world: devices online, gate open, leaving",
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..f64::from(hours), 0f64..100f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("hour")
        .y_desc("% of devices")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    #[allow(clippy::type_complexity)]
    let series: [(
        &str,
        Box<dyn Fn(&crate::market::HourRow) -> f64 + '_>,
        RGBColor,
    ); 3] = [
        ("online", Box::new(|r| pct(r.online)), color(0)),
        ("gate open", Box::new(|r| pct(r.gate_open)), color(2)),
        (
            "left the mesh during the hour",
            Box::new(|r| pct(r.leaves)),
            color(3),
        ),
    ];
    for (name, f, c) in series {
        let pts: Vec<(f64, f64)> = world.iter().map(|r| (f64::from(r.hour), f(r))).collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

fn plot_sweep(path: &Path, sweep: &[SweepPoint]) -> Result<(), ReportError> {
    let e = plot_err(path);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let max_x = sweep
        .iter()
        .map(|p| p.leaves_per_device_day)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let min_y = sweep
        .iter()
        .map(|p| p.completion_rate * 100.0)
        .fold(100.0f64, f64::min);
    let mut chart = ChartBuilder::on(&root)
        .caption("Completion under churn", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max_x * 1.05, (min_y - 5.0).max(0.0)..100f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("leaves per device per day")
        .y_desc("completed, % of tasks")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    let mut names: Vec<&str> = sweep.iter().map(|p| p.scheduler.as_str()).collect();
    names.dedup();
    names.sort_unstable();
    names.dedup();
    for (i, name) in names.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = sweep
            .iter()
            .filter(|p| p.scheduler == *name)
            .map(|p| (p.leaves_per_device_day, p.completion_rate * 100.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(|x| e(x.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// The markdown report.
#[allow(clippy::too_many_lines)]
pub fn markdown(report: &MarketReport, sweep: &[SweepPoint], info: &RunInfo) -> String {
    let c = &report.config;
    let mut s = String::new();
    let _ = writeln!(s, "# crank-sim market report: `{}` preset\n", c.name);
    let _ = writeln!(
        s,
        "{} devices, {} tasks over {} day(s), {} requesters in {} shards, seed {}. \
         Command: `{}`. Simulation wall time {:.1} s on {} thread(s) (not part of the results, \
         which depend only on the seed and the shard count).\n",
        c.devices,
        c.tasks,
        c.days,
        c.requesters,
        c.shards,
        c.seed,
        info.command,
        info.wall_seconds,
        info.threads
    );
    let verdict = if report.passed() {
        "**All invariant checks passed**: no task lost without an error, no work on battery \
         under the default policy for the auction, every completed task paid exactly one worker \
         once, every award within [bid, max price], no completion after its deadline."
            .to_string()
    } else {
        let mut v = "**Invariant checks FAILED**:\n\n".to_string();
        for (sched, kind, n) in &report.violation_counts {
            let _ = writeln!(v, "- {sched}: {kind} ×{n}");
        }
        v
    };
    let _ = writeln!(s, "{verdict}\n");

    let _ = writeln!(s, "## Side by side\n");
    let _ = writeln!(
        s,
        "| scheduler | completed | p50 latency | p95 latency | energy per task | wasted energy | work on battery | battery energy (default policy) | mean price paid | mean ask | GPU share | attempts per task |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for x in &report.summaries {
        #[allow(clippy::cast_precision_loss)]
        let attempts = x.attempts as f64 / x.tasks.max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {} ms | {} ms | {:.2} J | {} | {} | {:.1} J | {:.0} stroops | {:.0} stroops | {} | {:.2} |",
            x.scheduler,
            pct(x.completion_rate),
            x.latency_p50_ms,
            x.latency_p95_ms,
            x.energy_per_task_j,
            pct(x.wasted_energy_share),
            pct(x.battery_energy_share),
            x.battery_energy_default_policy_j,
            x.mean_price_stroops,
            x.mean_ask_stroops,
            pct(x.gpu_share),
            attempts,
        );
    }
    let _ = writeln!(
        s,
        "\n*Energy per task* is all run energy (wasted runs included) over completed tasks. \
         *Work on battery* is the share of that energy drawn from batteries. *Price paid* is \
         what the requester owes (the auction pays its configured rule, pay-as-bid by default; \
         the baselines pay the worker's quote); *ask* is the winning worker's own price. Latency runs from \
         submission to the result reaching the requester.\n"
    );
    let _ = writeln!(s, "![latency](latency_cdf.svg)\n");
    let _ = writeln!(s, "![energy](energy_per_task.svg)\n");

    let _ = writeln!(s, "## Why tasks failed\n");
    for x in &report.summaries {
        if x.failures.is_empty() {
            let _ = writeln!(s, "- **{}**: none", x.scheduler);
            continue;
        }
        let mut f: Vec<(&String, &u64)> = x.failures.iter().collect();
        f.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = f
            .iter()
            .take(6)
            .map(|(k, v)| format!("{k} ({v})"))
            .collect();
        let _ = writeln!(s, "- **{}**: {}", x.scheduler, list.join("; "));
    }

    let _ = writeln!(
        s,
        "\n## Earnings per device class (XLM per device per 30 days)\n"
    );
    let _ = write!(s, "| class | devices |");
    for x in &report.summaries {
        let _ = write!(s, " {} |", x.scheduler);
    }
    let _ = writeln!(
        s,
        " electricity ({}) |",
        report
            .summaries
            .first()
            .map_or("", |x| x.scheduler.as_str())
    );
    let _ = write!(s, "|---|---|");
    for _ in &report.summaries {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s, "---|");
    if let Some(first) = report.summaries.first() {
        for (i, e) in first.earnings.iter().enumerate() {
            let _ = write!(s, "| {} | {} |", e.class, e.devices);
            for x in &report.summaries {
                let v = x.earnings.get(i).map_or(0.0, |e| e.xlm_per_device_month);
                let _ = write!(s, " {v:.4} |");
            }
            let _ = writeln!(s, " {:.4} |", e.electricity_xlm_per_device_month);
        }
    }
    let _ = writeln!(
        s,
        "\nEarnings scale the run's payments to a 30-day month. The electricity column is what \
         the class's runs cost its owners at their tariff under the first scheduler.\n"
    );
    let _ = writeln!(s, "![earnings](earnings_by_class.svg)\n");

    let _ = writeln!(s, "## Stated prices and devices\n");
    let _ = writeln!(
        s,
        "| class | share | cores | runs at once | queue | battery | CPU inf/s | CPU µJ/inf | GPU share | GPU inf/s | GPU µJ/inf | tariff stroops/kWh | per task | per second |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for k in &c.classes {
        let _ = writeln!(
            s,
            "| {} | {:.0} % | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} % | {:.0} | {:.0} | {} | {} | {} |",
            k.class,
            k.share * 100.0,
            k.cores,
            k.workers,
            k.slots,
            if k.has_battery { "yes" } else { "no" },
            k.cpu_ips,
            k.cpu_microjoules_per_inference(),
            k.gpu_share * 100.0,
            k.gpu_ips,
            if k.gpu_share > 0.0 {
                k.gpu_microjoules_per_inference()
            } else {
                0.0
            },
            k.tariff_stroops_per_kwh,
            k.per_task_stroops,
            k.per_second_stroops,
        );
    }
    let _ = writeln!(
        s,
        "\nSpeeds are medians on the reference model (100 kB, 64 inputs); each device draws its \
         own (log-normal, σ 0.25) and advertises a benchmark that is off by its own error \
         (σ 0.1); each run varies again (σ 0.1). Other cost figures are `CostModel` defaults \
         (battery wear 27 XLM/kWh, 10 % margin, 50 % surcharge at a full queue). Tasks: \
         {}; max price {} stroops, deadline {} ms, bid window {} ms. Churn: sessions of {} h \
         on average, absences of {} h, {:.0} % of returns are new devices; owners with the \
         `always` policy: {:.0} %.\n",
        c.workload
            .models
            .iter()
            .map(|m| format!(
                "{} {:.0} % (batch 1..{})",
                m.name,
                m.share * 100.0,
                m.max_batch
            ))
            .collect::<Vec<_>>()
            .join(", "),
        c.workload.max_price_stroops,
        c.workload.deadline_ms,
        c.workload.bid_window_ms,
        c.churn.mean_session_h,
        c.churn.mean_offline_h,
        c.churn.new_identity_share * 100.0,
        c.always_share * 100.0
    );

    let w = &report.world;
    let _ = writeln!(s, "## The world\n");
    let _ = writeln!(
        s,
        "Devices by class: {}. Over the run {} devices left the mesh and {} came back as new \
         devices. At the hourly samples, on average {} of devices were online and {} had an \
         open gate.\n",
        w.devices_by_class
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        w.leaves,
        w.new_identities,
        pct(w.mean_online_share),
        pct(w.mean_gate_open_share),
    );
    let _ = writeln!(s, "![hourly](completion_by_hour.svg)\n");
    if !sweep.is_empty() {
        let _ = writeln!(s, "## Completion under churn\n");
        let _ = writeln!(
            s,
            "| churn × | leaves per device-day | scheduler | completed | p95 latency | attempts per task |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for p in sweep {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {} | {} ms | {:.2} |",
                p.multiplier,
                p.leaves_per_device_day,
                p.scheduler,
                pct(p.completion_rate),
                p.latency_p95_ms,
                p.attempts_per_task
            );
        }
        let _ = writeln!(s, "\n![churn](completion_under_churn.svg)\n");
    }
    let _ = writeln!(
        s,
        "## Files\n\n`summary.csv`, `earnings.csv`, `hourly.csv`, `latency_quantiles.csv`, \
         `failures.csv`, `tasks.csv` (one task in {}), `violations.csv`, `report.json`{}.",
        c.sample_every,
        if sweep.is_empty() {
            ""
        } else {
            ", `sweep.csv`"
        }
    );
    s
}

/// A CDF plot of several series of milliseconds (log scale).
#[cfg(feature = "mesh")]
fn plot_cdf(path: &Path, title: &str, series: &[(&str, Vec<f64>)]) -> Result<(), ReportError> {
    let e = plot_err(path);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((1f64..max * 1.2).log_scale(), 0f64..100f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("ms (log scale)")
        .y_desc("percent")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, (name, values)) in series.iter().enumerate() {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            continue;
        }
        let c = color(i);
        #[allow(clippy::cast_precision_loss)]
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(k, x)| (x.max(1.0), 100.0 * (k + 1) as f64 / v.len() as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Writes a mesh run's files into `dir` (created if missing): `mesh_tasks.csv`,
/// `mesh_probes.csv`, `mesh_churn.csv`, `mesh_violations.csv`, `mesh_report.json`,
/// `mesh_latency_cdf.svg`, `mesh_propagation_cdf.svg` and `mesh_report.md`; returns the
/// markdown report's path.
#[cfg(feature = "mesh")]
pub fn write_mesh(
    dir: &Path,
    report: &crate::mesh::MeshReport,
    info: &RunInfo,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    write_rows(&dir.join("mesh_tasks.csv"), &report.tasks)?;
    write_rows(&dir.join("mesh_probes.csv"), &report.probes)?;
    write_rows_or_header(
        &dir.join("mesh_churn.csv"),
        &report.churn,
        &["at_s", "kind", "node", "running"],
    )?;
    write_rows_or_header(
        &dir.join("mesh_violations.csv"),
        &report.violations,
        &["kind", "detail"],
    )?;
    let json = dir.join("mesh_report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?).map_err(io_error(&json))?;
    #[allow(clippy::cast_precision_loss)]
    let latency: Vec<f64> = report.tasks.iter().filter_map(|t| t.latency_ms).collect();
    #[allow(clippy::cast_precision_loss)]
    let auction: Vec<f64> = report
        .tasks
        .iter()
        .filter_map(|t| t.auction_ms.map(|m| m as f64))
        .collect();
    plot_cdf(
        &dir.join("mesh_latency_cdf.svg"),
        "Mesh: submit to result, and auction start to award",
        &[("submit to result", latency), ("auction to award", auction)],
    )?;
    #[allow(clippy::cast_precision_loss)]
    let by = |change: &str, half: bool| -> Vec<f64> {
        report
            .probes
            .iter()
            .filter(|p| p.change == change || (change == "change" && p.change != "join"))
            .filter_map(|p| if half { p.half_ms } else { p.all_ms })
            .map(|m| m as f64)
            .collect()
    };
    plot_cdf(
        &dir.join("mesh_propagation_cdf.svg"),
        "Mesh: advert propagation",
        &[
            ("change reaches every node", by("change", false)),
            ("change reaches half the nodes", by("change", true)),
            ("newcomer reaches every requester", by("join", false)),
        ],
    )?;
    let md = dir.join("mesh_report.md");
    std::fs::write(&md, mesh_markdown(report, info)).map_err(io_error(&md))?;
    Ok(md)
}

#[cfg(feature = "mesh")]
fn mesh_markdown(r: &crate::mesh::MeshReport, info: &RunInfo) -> String {
    let c = &r.config;
    let s = &r.summary;
    let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
    let optf = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    let mut m = String::new();
    let _ = writeln!(m, "# crank-sim mesh: {} preset\n", c.name);
    let _ = writeln!(
        m,
        "`{}` — {:.1} s wall clock, {} tokio threads.\n",
        info.command, info.wall_seconds, info.threads
    );
    let _ = writeln!(
        m,
        "Real crank-node nodes in one process over loopback TCP: 1 bootstrap, {} workers, {} \
         requesters; advert interval {} s; self-benchmark {} ms; the digits MLP \
         (`models/digits-mlp.onnx`) on the repository's digit samples; {} tasks, {} in flight; \
         one worker leaves and a new one joins every {} ms (0: no churn).\n",
        c.workers,
        c.requesters,
        c.advert_interval_secs,
        c.benchmark_ms,
        c.tasks,
        c.concurrency,
        c.churn_every_ms
    );
    let _ = writeln!(m, "| figure | value |\n|---|---|");
    let rows: Vec<(&str, String)> = vec![
        (
            "nodes started (peak at once)",
            format!("{} ({})", s.nodes_started, s.peak_nodes),
        ),
        ("start of the initial nodes, s", format!("{:.1}", s.start_s)),
        (
            "every requester holds every advert after, s",
            format!(
                "{:.1}{}",
                s.ready_s,
                if s.ready { "" } else { " (timed out)" }
            ),
        ),
        (
            "advert change reaches every node, p50 ms",
            opt(s.propagation_p50_ms),
        ),
        (
            "advert change reaches every node, p95 ms",
            opt(s.propagation_p95_ms),
        ),
        (
            "advert change reaches half the nodes, p50 ms",
            opt(s.propagation_half_p50_ms),
        ),
        (
            "changes that did not reach every node",
            s.propagation_incomplete.to_string(),
        ),
        (
            "newcomer's advert reaches every requester, p50 ms",
            opt(s.join_p50_ms),
        ),
        (
            "newcomer's advert reaches every requester, p95 ms",
            opt(s.join_p95_ms),
        ),
        (
            "tasks: completed / failed / lost",
            format!("{} / {} / {}", s.completed, s.failed, s.lost),
        ),
        (
            "completion rate",
            format!("{:.1} %", 100.0 * s.completion_rate),
        ),
        ("submit to result, p50 ms", optf(s.latency_p50_ms)),
        ("submit to result, p95 ms", optf(s.latency_p95_ms)),
        (
            "auction start to first award, p50 ms",
            opt(s.auction_p50_ms),
        ),
        (
            "auction start to first award, p95 ms",
            opt(s.auction_p95_ms),
        ),
        ("tasks re-awarded", s.reawarded.to_string()),
        (
            "spot checks: tasks checked / extra runs per task / disagreements",
            format!(
                "{} / {:.2} / {}",
                s.checked, s.check_overhead, s.check_disagreements
            ),
        ),
        ("time a check added, p50 ms", optf(s.check_p50_ms)),
        (
            "workers left / joined during the workload",
            format!("{} / {}", s.leaves, s.joins),
        ),
        ("workload, s", format!("{:.1}", s.workload_s)),
        (
            "receipts checked at workers",
            s.worker_receipts_checked.to_string(),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(m, "| {k} | {v} |");
    }
    if !s.failures.is_empty() {
        let _ = writeln!(m, "\nFailures by kind (each ended with an error):\n");
        for (k, n) in &s.failures {
            let _ = writeln!(m, "- {k}: {n}");
        }
    }
    let _ = writeln!(
        m,
        "\n![latency](mesh_latency_cdf.svg)\n\n![propagation](mesh_propagation_cdf.svg)\n"
    );
    let _ = writeln!(
        m,
        "Propagation is measured by polling every node's status every 100 ms, so figures are \
         rounded up to that. An advert change is a worker pausing (its gate closes) or \
         resuming; it counts as arrived at a node once that node holds the changed advert.\n"
    );
    let _ = writeln!(m, "## Invariant checks\n");
    let _ = writeln!(
        m,
        "Each fails the run: a task with neither result nor error within {} ms (lost); a \
         result whose receipt is not signed by the worker and counter-signed by the \
         requester; a worker still in the mesh without the counter-signed receipt of a task \
         it ran, or holding a receipt that does not verify; a prediction that is not the \
         sample's digit.\n",
        c.task_timeout_ms
    );
    if r.passed() {
        let _ = writeln!(m, "All invariant checks passed.");
    } else {
        let _ = writeln!(m, "**{} violations**:\n", r.violations.len());
        for v in r.violations.iter().take(20) {
            let _ = writeln!(m, "- {}: {}", v.kind, v.detail);
        }
    }
    m
}

/// A check-grid row, flat for CSV.
#[derive(Serialize)]
struct CheckCsvRow {
    cheater_share: f64,
    mode: String,
    probability: f64,
    checks: bool,
    completed: u64,
    completion_rate: f64,
    latency_p95_ms: u64,
    energy_per_task_j: f64,
    wrong_delivered: u64,
    wrong_accepted: u64,
    wrong_accepted_share: f64,
    late_wrong_accepted_share: f64,
    checked: u64,
    check_runs: u64,
    third_runs: u64,
    check_runs_failed: u64,
    extra_task_share: f64,
    late_extra_task_share: f64,
    extra_energy_share: f64,
    extra_stroops_share: f64,
    withheld_stroops: u64,
    honest_outvoted: u64,
    cheaters_active: u64,
    cheaters_caught: u64,
    detect_p50_s: f64,
    detect_p95_s: f64,
    check_delay_p50_ms: u64,
    check_delay_p95_ms: u64,
}

impl From<&CheckGridRow> for CheckCsvRow {
    fn from(r: &CheckGridRow) -> Self {
        let c = &r.summary;
        Self {
            cheater_share: r.share,
            mode: r.mode.to_string(),
            probability: r.probability,
            checks: r.checks,
            completed: r.completed,
            completion_rate: r.completion_rate,
            latency_p95_ms: r.latency_p95_ms,
            energy_per_task_j: r.energy_per_task_j,
            wrong_delivered: c.wrong_delivered,
            wrong_accepted: c.wrong_accepted,
            wrong_accepted_share: c.wrong_accepted_share,
            late_wrong_accepted_share: c.late_wrong_accepted_share,
            checked: c.checked,
            check_runs: c.check_runs,
            third_runs: c.third_runs,
            check_runs_failed: c.check_runs_failed,
            extra_task_share: c.extra_task_share,
            late_extra_task_share: c.late_extra_task_share,
            extra_energy_share: c.extra_energy_share,
            extra_stroops_share: c.extra_stroops_share,
            withheld_stroops: c.withheld_stroops,
            honest_outvoted: c.honest_outvoted,
            cheaters_active: c.cheaters_active,
            cheaters_caught: c.cheaters_caught,
            detect_p50_s: c.detect_p50_s,
            detect_p95_s: c.detect_p95_s,
            check_delay_p50_ms: c.check_delay_p50_ms,
            check_delay_p95_ms: c.check_delay_p95_ms,
        }
    }
}

/// The check grid as a markdown table (one row per run).
pub fn checks_table(rows: &[CheckGridRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| cheaters | mode | checks | wrong accepted | 2nd half | extra runs | 2nd half | extra energy | extra pay | caught | detect p50 / p95 | honest outvoted |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let c = &r.summary;
        let mode = match (r.checks, r.mode) {
            (false, _) => "any".to_string(),
            (true, crate::market::CheatMode::Sometimes) => {
                format!("sometimes (q = {})", r.probability)
            }
            (true, m) => m.to_string(),
        };
        let (caught, detect) = if r.checks {
            (
                format!("{} / {}", c.cheaters_caught, c.cheaters_active),
                format!("{:.1} / {:.1} s", c.detect_p50_s, c.detect_p95_s),
            )
        } else {
            ("-".into(), "-".into())
        };
        let _ = writeln!(
            s,
            "| {:.0} % | {mode} | {} | {} ({}) | {} | {} | {} | {} | {} | {caught} | {detect} | {} |",
            r.share * 100.0,
            if r.checks { "on" } else { "off" },
            pct3(c.wrong_accepted_share),
            c.wrong_accepted,
            pct3(c.late_wrong_accepted_share),
            pct(c.extra_task_share),
            pct(c.late_extra_task_share),
            pct(c.extra_energy_share),
            pct(c.extra_stroops_share),
            c.honest_outvoted,
        );
    }
    s
}

fn pct3(x: f64) -> String {
    format!("{:.3} %", x * 100.0)
}

/// Writes the check grid into `dir`: `checks.csv`, `checks.json` and `checks.md`; returns
/// the markdown report's path.
pub fn write_checks(
    dir: &Path,
    base: &MarketConfig,
    rows: &[CheckGridRow],
    info: &RunInfo,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let flat: Vec<CheckCsvRow> = rows.iter().map(CheckCsvRow::from).collect();
    write_rows(&dir.join("checks.csv"), &flat)?;
    let json = dir.join("checks.json");
    std::fs::write(&json, serde_json::to_vec_pretty(rows)?).map_err(io_error(&json))?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# crank-sim checks: spot checks against cheating workers\n"
    );
    let _ = writeln!(
        s,
        "`{}`: {} devices, {} tasks over {} days, {} requesters with {} adverts each, {} shards; scheduler {}; check policy: every task until {} agreeing checks in a row (doubled after each time a worker is outvoted), then {}, halved every {} more, at least {}; every task at or below trust {}; an outvoted worker is suspended {} s, doubling. {} threads, {:.1} s wall.\n",
        info.command,
        base.devices,
        base.tasks,
        base.days,
        base.requesters,
        base.view,
        base.shards,
        base.schedulers
            .first()
            .map_or_else(String::new, ToString::to_string),
        base.checks.halving_streak,
        base.checks.new_rate,
        base.checks.halving_streak,
        base.checks.floor_rate,
        base.checks.low_trust,
        base.trust_prior.suspend_secs,
        info.threads,
        info.wall_seconds,
    );
    let _ = writeln!(
        s,
        "*wrong accepted*: completed tasks whose accepted answer (the majority's after a check, else the first) was wrong, and how many; *2nd half*: the same over tasks that arrived in the second half, once requesters have history; *extra runs*: replica and third runs per completed task, overall and for the second half; *extra energy / pay*: their energy and pay against the tasks' own; *caught*: cheaters outvoted at least once, of those that gave a wrong answer; *detect*: from a cheater's first wrong answer to the first check that outvoted it; *honest outvoted*: right answers outvoted by a colluding majority.\n"
    );
    s.push_str(&checks_table(rows));
    let md = dir.join("checks.md");
    std::fs::write(&md, s).map_err(io_error(&md))?;
    Ok(md)
}
