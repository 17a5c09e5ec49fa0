//! Owner and submitter policies written in Rego and evaluated in-process with `regorus`.
//!
//! A node's policies are the `*.rego` files of one directory (and an optional `data.json`
//! beside them, the `data` document, for allow-lists and the like). Three packages have a
//! meaning; each is optional:
//!
//! - `crank.admission` (worker side, before quoting a call for bids): `deny contains reason`
//!   declines with `policy: <reason>`; `price_multiplier := x` (0.1-100) scales the quote.
//! - `crank.placement` (requester side, for each candidate before the call for bids and for
//!   each bid before the award): `exclude contains reason` leaves the candidate out.
//!   Requirements ("only these operators", "only my own devices") are exclusions of everyone
//!   else: `exclude contains "not allow-listed" if not input.candidate.id in data.allowed`.
//! - `crank.output` (requester side, after the result is verified): `redact contains name`
//!   withholds that output from the submitter.
//!
//! Policies are compiled once per load ([`Policies::load_dir`]) and evaluated through the
//! compiled form, which is shared between threads. Evaluation fails closed: a policy that
//! errors or yields the wrong type denies, excludes or redacts everything it governs, with a
//! reason that says so. Each evaluation is bounded in time.

pub mod input;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use regorus::{CompiledPolicy, Engine, Value};
use serde::Serialize;

pub use input::{
    AdmissionInput, BidInfo, Candidate, CandidateTrust, Device, Gate, Model, OutputInput,
    OutputTensor, PlacementInput, Price, Requester, RequesterTrust, Task, TaskInput, Time,
};

/// Longest one evaluation may run before it is stopped (and fails closed).
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(50);
/// Largest policy file read, bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most policy files in a directory.
pub const MAX_FILES: usize = 64;
/// Bounds of an admission price multiplier.
pub const MULTIPLIER_RANGE: (f64, f64) = (0.1, 100.0);
/// Longest reason kept from a policy (reasons travel in signed declines).
pub const MAX_REASON_CHARS: usize = 200;

/// The decisions a policy can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The owner's admission of work (worker side).
    Admission,
    /// The submitter's placement of work (requester side).
    Placement,
    /// The submitter's handling of results (requester side).
    Output,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 3] = [Kind::Admission, Kind::Placement, Kind::Output];

    /// The Rego package that defines it.
    pub fn package(self) -> &'static str {
        match self {
            Kind::Admission => "crank.admission",
            Kind::Placement => "crank.placement",
            Kind::Output => "crank.output",
        }
    }

    /// Its name, as in `policy test --kind`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Admission => "admission",
            Kind::Placement => "placement",
            Kind::Output => "output",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The host module that gathers the package's rules into one decision object, so one
    /// evaluation answers everything (undefined rules become empty sets and defaults).
    fn host_module(self) -> &'static str {
        match self {
            Kind::Admission => {
                r#"package crank_host.admission
import rego.v1
deny := [r | some r in data.crank.admission.deny]
default price_multiplier := 1
price_multiplier := m if { m := data.crank.admission.price_multiplier }
decision := {"deny": deny, "price_multiplier": price_multiplier}
"#
            }
            Kind::Placement => {
                r#"package crank_host.placement
import rego.v1
exclude := [r | some r in data.crank.placement.exclude]
decision := {"exclude": exclude}
"#
            }
            Kind::Output => {
                r#"package crank_host.output
import rego.v1
redact := [r | some r in data.crank.output.redact]
decision := {"redact": redact}
"#
            }
        }
    }

    fn entrypoint(self) -> String {
        format!("data.crank_host.{}.decision", self.name())
    }
}

/// Why policies could not be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is over [`MAX_FILE_BYTES`], or the directory holds over [`MAX_FILES`] files.
    #[error("{0}")]
    TooLarge(String),
    /// A Rego file does not parse (the message names file, line and column).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// Regorus' message, with the line, column and the offending text.
        message: String,
    },
    /// A file declares a `crank.*` package that means nothing here (a typo, usually).
    #[error(
        "{file}: package {package} is not one of crank.admission, crank.placement, crank.output"
    )]
    UnknownPackage {
        /// The file.
        file: String,
        /// The package it declares.
        package: String,
    },
    /// `data.json` is not a JSON object.
    #[error("{file}: {message}")]
    Data {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The policies do not compile, or fail on the sample input (the message names the rule).
    #[error("{kind:?} policy: {message}")]
    Compile {
        /// Which decision.
        kind: Kind,
        /// Regorus' message.
        message: String,
    },
    /// An evaluation failed or returned the wrong type.
    #[error("{kind:?} policy: {message}")]
    Eval {
        /// Which decision.
        kind: Kind,
        /// What went wrong.
        message: String,
    },
}

/// What the admission policy decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Admission {
    /// Reasons to decline (empty: quote).
    pub deny: Vec<String>,
    /// Factor on the quoted price.
    pub price_multiplier: f64,
}

impl Admission {
    /// No policy: quote at the cost model's price.
    pub fn allow() -> Self {
        Self {
            deny: Vec::new(),
            price_multiplier: 1.0,
        }
    }

    /// The reason a decline gives (`policy: <first reason>`), or None to quote.
    pub fn decline_reason(&self) -> Option<String> {
        self.deny.first().map(|r| format!("policy: {r}"))
    }
}

/// What the placement policy decided about one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Reasons to leave the candidate out (empty: it may take part).
    pub exclude: Vec<String>,
}

/// What the output policy decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputHandling {
    /// Outputs withheld from the submitter.
    pub redact: Vec<String>,
}

/// The compiled policies of one directory (or none).
#[derive(Clone, Default)]
pub struct Policies {
    compiled: Vec<(Kind, CompiledPolicy)>,
    files: Vec<String>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("kinds", &self.kinds())
            .field("files", &self.files)
            .finish()
    }
}

/// The directory's policy files as last seen: names, sizes and modification times. Policies
/// are reloaded when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(String, u64, Option<SystemTime>)>);

/// The policy files in `dir` (`*.rego` and `data.json`), sorted; none when it does not exist.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PolicyError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let is_policy = path.extension().is_some_and(|e| e == "rego") || name == "data.json";
        if is_policy && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.len() > MAX_FILES {
        return Err(PolicyError::TooLarge(format!(
            "{} holds {} policy files; at most {MAX_FILES} are read",
            dir.display(),
            files.len()
        )));
    }
    Ok(files)
}

/// The fingerprint of `dir`'s policy files now.
pub fn fingerprint(dir: &Path) -> Result<Fingerprint, PolicyError> {
    let mut out = Vec::new();
    for path in policy_files(dir)? {
        let meta = std::fs::metadata(&path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        out.push((path.display().to_string(), meta.len(), meta.modified().ok()));
    }
    Ok(Fingerprint(out))
}

fn install_time_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Process-wide: compiled policies evaluate on engines that take the fallback limit.
        regorus::utils::limits::set_fallback_execution_timer_config(Some(
            regorus::utils::limits::ExecutionTimerConfig {
                limit: EVAL_TIME_LIMIT,
                check_interval: std::num::NonZeroU32::MIN,
            },
        ));
    });
}

impl Policies {
    /// No policies: everything is admitted, placed anywhere, handed back whole.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loads and compiles the policies in `dir` (none when it does not exist or is empty),
    /// and checks each decision on a sample input.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let mut sources = Vec::new();
        let mut data = None;
        for path in policy_files(dir)? {
            let len = std::fs::metadata(&path)
                .map_err(|source| PolicyError::Read {
                    path: path.clone(),
                    source,
                })?
                .len();
            if len > MAX_FILE_BYTES {
                return Err(PolicyError::TooLarge(format!(
                    "{} is {len} bytes; a policy file may be at most {MAX_FILE_BYTES}",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
                path: path.clone(),
                source,
            })?;
            let file = path.display().to_string();
            if path.extension().is_some_and(|e| e == "json") {
                data = Some((file, text));
            } else {
                sources.push((file, text));
            }
        }
        Self::from_sources(
            &sources,
            data.as_ref().map(|(f, t)| (f.as_str(), t.as_str())),
        )
    }

    /// Compiles Rego `sources` (file name, text) with an optional `data` document (file name,
    /// JSON text).
    pub fn from_sources(
        sources: &[(String, String)],
        data: Option<(&str, &str)>,
    ) -> Result<Self, PolicyError> {
        install_time_limit();
        let mut engine = Engine::new();
        let mut kinds = Vec::new();
        for (file, text) in sources {
            let package =
                engine
                    .add_policy(file.clone(), text.clone())
                    .map_err(|e| PolicyError::Parse {
                        file: file.clone(),
                        message: e.to_string(),
                    })?;
            let package = package
                .strip_prefix("data.")
                .unwrap_or(&package)
                .to_string();
            match Kind::ALL.into_iter().find(|k| k.package() == package) {
                Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
                Some(_) => {}
                None if package == "crank" || package.starts_with("crank.") => {
                    return Err(PolicyError::UnknownPackage {
                        file: file.clone(),
                        package,
                    });
                }
                // Helper packages (shared functions, data) are fine.
                None => {}
            }
        }
        if let Some((file, text)) = data {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| PolicyError::Data {
                    file: file.to_string(),
                    message: e.to_string(),
                })?;
            if !value.is_object() {
                return Err(PolicyError::Data {
                    file: file.to_string(),
                    message: "the data document must be a JSON object".into(),
                });
            }
            engine
                .add_data(Value::from(value))
                .map_err(|e| PolicyError::Data {
                    file: file.to_string(),
                    message: e.to_string(),
                })?;
        }
        let mut compiled = Vec::new();
        for kind in Kind::ALL {
            if !kinds.contains(&kind) {
                continue;
            }
            let mut engine = engine.clone();
            engine
                .add_policy(
                    format!("<crank host: {}>", kind.name()),
                    kind.host_module().to_string(),
                )
                .map_err(|e| PolicyError::Compile {
                    kind,
                    message: e.to_string(),
                })?;
            let entry: regorus::Rc<str> = kind.entrypoint().into();
            let policy =
                engine
                    .compile_with_entrypoint(&entry)
                    .map_err(|e| PolicyError::Compile {
                        kind,
                        message: e.to_string(),
                    })?;
            compiled.push((kind, policy));
        }
        let policies = Self {
            compiled,
            files: sources.iter().map(|(f, _)| f.clone()).collect(),
        };
        policies.check_samples()?;
        Ok(policies)
    }

    /// Evaluates each decision once on a sample input, so a policy whose rules yield the wrong
    /// types is refused at load rather than failing every task.
    fn check_samples(&self) -> Result<(), PolicyError> {
        let compile = |e: PolicyError| match e {
            PolicyError::Eval { kind, message } => PolicyError::Compile {
                kind,
                message: format!("on the sample input: {message}"),
            },
            other => other,
        };
        if self.has(Kind::Admission) {
            self.try_admission(&sample::admission()).map_err(compile)?;
        }
        if self.has(Kind::Placement) {
            self.try_placement(&sample::placement()).map_err(compile)?;
        }
        if self.has(Kind::Output) {
            self.try_output(&sample::output()).map_err(compile)?;
        }
        Ok(())
    }

    /// Whether a policy for `kind` is loaded.
    pub fn has(&self, kind: Kind) -> bool {
        self.compiled.iter().any(|(k, _)| *k == kind)
    }

    /// The decisions with a policy.
    pub fn kinds(&self) -> Vec<Kind> {
        self.compiled.iter().map(|(k, _)| *k).collect()
    }

    /// The Rego files loaded.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Evaluates `kind`'s decision object on `input` (any JSON), as the node would before
    /// interpreting it; None when no policy for `kind` is loaded.
    pub fn evaluate(
        &self,
        kind: Kind,
        input: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, PolicyError> {
        self.evaluate_owned(kind, input.clone())
    }

    fn evaluate_owned(
        &self,
        kind: Kind,
        input: serde_json::Value,
    ) -> Result<Option<serde_json::Value>, PolicyError> {
        let Some((_, policy)) = self.compiled.iter().find(|(k, _)| *k == kind) else {
            return Ok(None);
        };
        let eval = |message: String| PolicyError::Eval { kind, message };
        let out = policy
            .eval_with_input(Value::from(input))
            .map_err(|e| eval(e.to_string()))?;
        let json = serde_json::to_value(&out).map_err(|e| eval(e.to_string()))?;
        Ok(Some(json))
    }

    fn eval_typed<T: Serialize>(
        &self,
        kind: Kind,
        input: &T,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, PolicyError> {
        if !self.has(kind) {
            return Ok(None);
        }
        let eval = |message: String| PolicyError::Eval { kind, message };
        let json = serde_json::to_value(input).map_err(|e| eval(e.to_string()))?;
        match self.evaluate_owned(kind, json)? {
            None => Ok(None),
            Some(serde_json::Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(eval(format!("decision is not an object: {other}"))),
        }
    }

    /// The admission decision, or why the policy failed.
    pub fn try_admission(&self, input: &AdmissionInput) -> Result<Admission, PolicyError> {
        let kind = Kind::Admission;
        let Some(map) = self.eval_typed(kind, input)? else {
            return Ok(Admission::allow());
        };
        let deny = reasons(kind, &map, "deny")?;
        let m = map.get("price_multiplier");
        let price_multiplier =
            m.and_then(serde_json::Value::as_f64)
                .ok_or_else(|| PolicyError::Eval {
                    kind,
                    message: format!(
                        "rule crank.admission.price_multiplier must be a number, got {}",
                        m.map_or("nothing".to_string(), ToString::to_string)
                    ),
                })?;
        let (lo, hi) = MULTIPLIER_RANGE;
        if !(lo..=hi).contains(&price_multiplier) {
            return Err(PolicyError::Eval {
                kind,
                message: format!(
                    "rule crank.admission.price_multiplier is {price_multiplier}, outside {lo}-{hi}"
                ),
            });
        }
        Ok(Admission {
            deny,
            price_multiplier,
        })
    }

    /// The admission decision; a failing policy denies, saying so.
    pub fn admission(&self, input: &AdmissionInput) -> Admission {
        self.try_admission(input).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "admission policy failed; declining");
            Admission {
                deny: vec!["the owner's admission policy failed".into()],
                price_multiplier: 1.0,
            }
        })
    }

    /// The placement decision for one candidate, or why the policy failed.
    pub fn try_placement(&self, input: &PlacementInput) -> Result<Placement, PolicyError> {
        let kind = Kind::Placement;
        let Some(map) = self.eval_typed(kind, input)? else {
            return Ok(Placement {
                exclude: Vec::new(),
            });
        };
        Ok(Placement {
            exclude: reasons(kind, &map, "exclude")?,
        })
    }

    /// The placement decision; a failing policy excludes the candidate, saying so.
    pub fn placement(&self, input: &PlacementInput) -> Placement {
        self.try_placement(input).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "placement policy failed; excluding the candidate");
            Placement {
                exclude: vec!["the placement policy failed".into()],
            }
        })
    }

    /// The output decision, or why the policy failed.
    pub fn try_output(&self, input: &OutputInput) -> Result<OutputHandling, PolicyError> {
        let kind = Kind::Output;
        let Some(map) = self.eval_typed(kind, input)? else {
            return Ok(OutputHandling { redact: Vec::new() });
        };
        Ok(OutputHandling {
            redact: reasons(kind, &map, "redact")?,
        })
    }

    /// The output decision; a failing policy withholds every output, saying so in the log.
    pub fn output(&self, input: &OutputInput) -> OutputHandling {
        self.try_output(input).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "output policy failed; withholding every output");
            OutputHandling {
                redact: input.outputs.iter().map(|o| o.name.clone()).collect(),
            }
        })
    }
}

/// The strings of rule `field` of the decision, sorted and bounded.
fn reasons(
    kind: Kind,
    map: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Vec<String>, PolicyError> {
    let wrong = || PolicyError::Eval {
        kind,
        message: format!(
            "rule {}.{field} must be a set of strings, got {}",
            kind.package(),
            map.get(field)
                .map_or("nothing".to_string(), ToString::to_string)
        ),
    };
    let items = map
        .get(field)
        .and_then(serde_json::Value::as_array)
        .ok_or_else(wrong)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = item.as_str().ok_or_else(wrong)?;
        out.push(s.chars().take(MAX_REASON_CHARS).collect::<String>());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A set of policies that reloads itself when its directory changes. Readers get the policies
/// in force (an `Arc`, cheap to take); a reload that fails keeps the last good set and says
/// why in [`Watched::last_error`].
#[derive(Debug)]
pub struct Watched {
    dir: PathBuf,
    state: std::sync::RwLock<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    current: Arc<Policies>,
    seen: Fingerprint,
    last_error: Option<String>,
}

impl Watched {
    /// Loads `dir`'s policies; an error here (a policy that does not load at start) is the
    /// caller's to report, so a node never starts with policies it cannot apply.
    pub fn open(dir: &Path) -> Result<Self, PolicyError> {
        let seen = fingerprint(dir)?;
        let current = Arc::new(Policies::load_dir(dir)?);
        Ok(Self {
            dir: dir.to_path_buf(),
            state: std::sync::RwLock::new(WatchState {
                current,
                seen,
                last_error: None,
            }),
        })
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policies in force.
    pub fn current(&self) -> Arc<Policies> {
        match self.state.read() {
            Ok(s) => s.current.clone(),
            Err(poisoned) => poisoned.into_inner().current.clone(),
        }
    }

    /// Why the last reload failed (None when the policies in force are the directory's).
    pub fn last_error(&self) -> Option<String> {
        match self.state.read() {
            Ok(s) => s.last_error.clone(),
            Err(poisoned) => poisoned.into_inner().last_error.clone(),
        }
    }

    /// Reloads when the directory's files changed since the last look. Returns whether the
    /// policies in force changed.
    pub fn refresh(&self) -> Result<bool, PolicyError> {
        let now = fingerprint(&self.dir);
        let mut state = match self.state.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = match now {
            Ok(f) => f,
            Err(e) => {
                state.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        if now == state.seen {
            return Ok(false);
        }
        state.seen = now;
        match Policies::load_dir(&self.dir) {
            Ok(p) => {
                state.current = Arc::new(p);
                state.last_error = None;
                Ok(true)
            }
            Err(e) => {
                state.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// Sample inputs: checked at load, and shown by `policy test --sample`.
pub mod sample {
    use super::*;

    fn model() -> Model {
        Model {
            hash: "00".repeat(32),
            bytes: 100_000,
            cached: true,
            package: None,
        }
    }

    /// A call for bids from a requester with some history, on a device on mains.
    pub fn admission() -> AdmissionInput {
        AdmissionInput {
            requester: Requester {
                id: "11".repeat(32),
                trust: RequesterTrust {
                    known: true,
                    receipts: 10,
                    paid_stroops: 10_000,
                    unpaid_stroops: 500,
                    oldest_unpaid_secs: 60,
                },
            },
            model: model(),
            input: TaskInput { elements: 64 },
            price: Price {
                max_stroops: 10_000,
            },
            time: Time::at(1_796_601_600_000),
            gate: Gate {
                open: true,
                reason: None,
                on_battery: false,
                battery_percent: None,
            },
            device: Device {
                temperature_c: Some(45.0),
                cpu_load_percent: Some(5.0),
            },
        }
    }

    fn task() -> Task {
        Task {
            labels: [("team".to_string(), "search".to_string())].into(),
            model: model(),
            input: TaskInput { elements: 64 },
            max_price_stroops: 10_000,
            time: Time::at(1_796_601_600_000),
        }
    }

    /// A candidate with a bid.
    pub fn placement() -> PlacementInput {
        PlacementInput {
            stage: "bid".into(),
            task: task(),
            candidate: Candidate {
                id: "22".repeat(32),
                own: false,
                advert: Some(serde_json::json!({
                    "hardware": {"cpu_model": "sample", "cores": 4, "ram_mib": 4096,
                                 "arch": "x86_64", "os": "Linux", "gpus": []},
                    "payout": "G...",
                })),
                trust: CandidateTrust {
                    known: true,
                    score: 0.8,
                    completed: 5,
                    failed: 0,
                },
                bid: Some(BidInfo {
                    price_stroops: 1_000,
                    path: "cpu".into(),
                    latency_ms: 30,
                }),
            },
        }
    }

    /// A result with one output.
    pub fn output() -> OutputInput {
        OutputInput {
            task: task(),
            worker: "22".repeat(32),
            outputs: vec![OutputTensor {
                name: "logits".into(),
                dtype: "f32".into(),
                shape: vec![1, 10],
                head: vec![0.0; 10],
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<Policies, PolicyError> {
        let sources: Vec<(String, String)> = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        Policies::from_sources(&sources, None)
    }

    #[test]
    fn no_policy_allows_everything() {
        let p = Policies::none();
        assert_eq!(p.admission(&sample::admission()), Admission::allow());
        assert!(p.placement(&sample::placement()).exclude.is_empty());
        assert!(p.output(&sample::output()).redact.is_empty());
    }

    #[test]
    fn a_package_without_the_rule_decides_nothing() {
        let p = load(&[(
            "a.rego",
            "package crank.admission\nimport rego.v1\nhelper := 1\n",
        )])
        .unwrap();
        assert_eq!(p.admission(&sample::admission()), Admission::allow());
    }

    #[test]
    fn deny_and_multiplier_are_read() {
        let p = load(&[(
            "a.rego",
            r#"package crank.admission
import rego.v1
deny contains "too hot" if input.device.temperature_c > 40
deny contains "night" if input.time.hour_utc < 6
price_multiplier := 2.5 if input.requester.trust.receipts < 100
"#,
        )])
        .unwrap();
        let mut input = sample::admission();
        input.time = Time::at(12 * 3600 * 1000);
        let d = p.admission(&input);
        assert_eq!(d.deny, vec!["too hot".to_string()]);
        assert_eq!(d.price_multiplier, 2.5);
        assert_eq!(d.decline_reason().as_deref(), Some("policy: too hot"));
        input.device.temperature_c = Some(30.0);
        input.requester.trust.receipts = 500;
        assert_eq!(p.admission(&input), Admission::allow());
    }

    #[test]
    fn parse_errors_name_the_file_and_line() {
        let e = load(&[(
            "owner.rego",
            "package crank.admission\nimport rego.v1\ndeny contains \"x\" if {\n  input.a ==\n}\n",
        )])
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("owner.rego"), "{text}");
        assert!(text.contains(":5:") || text.contains(":4:"), "{text}");
    }

    #[test]
    fn a_misspelt_package_is_refused() {
        let e = load(&[("a.rego", "package crank.admision\nx := 1\n")]).unwrap_err();
        assert!(matches!(e, PolicyError::UnknownPackage { .. }), "{e}");
        assert!(e.to_string().contains("crank.admision"));
    }

    #[test]
    fn wrong_types_are_refused_at_load_naming_the_rule() {
        let e = load(&[(
            "a.rego",
            "package crank.admission\nimport rego.v1\nprice_multiplier := \"cheap\"\n",
        )])
        .unwrap_err();
        assert!(e.to_string().contains("price_multiplier"), "{e}");
        let e = load(&[(
            "a.rego",
            "package crank.admission\nimport rego.v1\nprice_multiplier := 1000\n",
        )])
        .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = load(&[(
            "p.rego",
            "package crank.placement\nimport rego.v1\nexclude contains 7 if true\n",
        )])
        .unwrap_err();
        assert!(e.to_string().contains("set of strings"), "{e}");
    }

    #[test]
    fn a_policy_failing_at_run_time_fails_closed() {
        // Right on the sample input (one output), the wrong type with two.
        let p = load(&[(
            "o.rego",
            "package crank.output\nimport rego.v1\nredact contains 7 if count(input.outputs) == 2\n",
        )])
        .unwrap();
        let mut input = sample::output();
        assert!(p.output(&input).redact.is_empty());
        let mut second = input.outputs[0].clone();
        second.name = "boxes".into();
        input.outputs.push(second);
        assert!(p.try_output(&input).is_err());
        assert_eq!(
            p.output(&input).redact,
            vec!["logits".to_string(), "boxes".to_string()]
        );
    }

    #[test]
    fn a_runaway_policy_is_stopped() {
        let p = load(&[(
            "p.rego",
            r#"package crank.placement
import rego.v1
exclude contains "loop" if {
  input.stage == "call"
  some i in numbers.range(1, 10000)
  some j in numbers.range(1, 10000)
  i * j < 0
}
"#,
        )])
        .unwrap();
        let mut input = sample::placement();
        input.stage = "call".into();
        let started = std::time::Instant::now();
        let d = p.placement(&input);
        assert_eq!(d.exclude, vec!["the placement policy failed".to_string()]);
        let took = started.elapsed();
        eprintln!("stopped after {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn data_json_feeds_allow_lists() {
        let sources = vec![(
            "p.rego".to_string(),
            r#"package crank.placement
import rego.v1
exclude contains "not allow-listed" if not input.candidate.id in data.allowed
"#
            .to_string(),
        )];
        let allowed = format!(r#"{{"allowed": ["{}"]}}"#, "22".repeat(32));
        let p = Policies::from_sources(&sources, Some(("data.json", &allowed))).unwrap();
        assert!(p.placement(&sample::placement()).exclude.is_empty());
        let mut other = sample::placement();
        other.candidate.id = "33".repeat(32);
        assert_eq!(
            p.placement(&other).exclude,
            vec!["not allow-listed".to_string()]
        );
        let e = Policies::from_sources(&sources, Some(("data.json", "[1]"))).unwrap_err();
        assert!(e.to_string().contains("JSON object"), "{e}");
    }

    #[test]
    fn the_watched_directory_reloads_and_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watched::open(dir.path()).unwrap();
        assert!(w.current().kinds().is_empty());
        let file = dir.path().join("owner.rego");
        std::fs::write(
            &file,
            "package crank.admission\nimport rego.v1\ndeny contains \"closed\" if true\n",
        )
        .unwrap();
        assert!(w.refresh().unwrap());
        assert_eq!(w.current().admission(&sample::admission()).deny, ["closed"]);
        assert!(!w.refresh().unwrap(), "nothing changed");
        std::fs::write(&file, "package crank.admission\ndeny contains if {\n").unwrap();
        assert!(w.refresh().is_err());
        assert!(w.last_error().unwrap().contains("owner.rego"));
        // The last good policy stays in force.
        assert_eq!(w.current().admission(&sample::admission()).deny, ["closed"]);
        std::fs::remove_file(&file).unwrap();
        assert!(w.refresh().unwrap());
        assert!(w.last_error().is_none());
        assert!(w.current().kinds().is_empty());
    }

    #[test]
    fn weekday_and_hour() {
        // 2026-12-07 was a Monday.
        let t = Time::at(1_796_601_600_000 + 13 * 3_600_000);
        assert_eq!(t.weekday_utc, "mon");
        assert_eq!(t.hour_utc, 13);
    }
}
