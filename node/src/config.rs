//! Configuration: documented defaults, then a TOML file, then `CRANK_*` environment
//! variables, then command-line flags.
//!
//! Environment variables name a key path with `__` between levels:
//! `CRANK_DATA_DIR=/srv/crank`, `CRANK_NETWORK__KAD_MODE=server`,
//! `CRANK_WORKER__PER_TASK_STROOPS=2000`. Values are read as TOML (numbers, booleans,
//! `["lists"]`) and fall back to plain strings. `example.config.toml` lists every key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crank_inference::EngineConfig;
use crank_inference::device::DeviceConfig;
use crank_scheduler::{AuctionConfig, CheckPolicy, CostModel, CreditPolicy, TrustPrior};

use crank_payments::StellarConfig;

use crate::network::NetworkConfig;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
    /// An environment override does not fit the config.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

/// The local HTTP API (`[api]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API at all (on the Unix socket `api.sock` in the data dir, mode 0600).
    pub enabled: bool,
    /// Also serve it over TCP on this loopback address, e.g. `127.0.0.1:7070` (port 0 picks
    /// a free port, written to `api.addr`). Unset by default: only the socket. Other addresses
    /// are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Directories whose ONNX files `POST /tasks` may name by `model_path` (the node reads
    /// them for the caller). Empty by default: callers upload the bytes instead. The data dir
    /// is never readable this way.
    pub model_dirs: Vec<PathBuf>,
    /// Where `crank-node dashboard` serves the owner's web page, a loopback address (port 0
    /// picks a free port). Nothing listens there until the owner asks for a link.
    pub dashboard_listen: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            model_dirs: Vec::new(),
            dashboard_listen: "127.0.0.1:0".into(),
        }
    }
}

/// Adverts (`[advert]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvertConfig {
    /// Re-publish at least this often, seconds (also on every change).
    pub interval_secs: u64,
    /// How long an advert stays valid, seconds.
    pub ttl_secs: u64,
}

impl Default for AdvertConfig {
    fn default() -> Self {
        Self {
            interval_secs: 30,
            ttl_secs: 120,
        }
    }
}

/// Defaults for tasks this node submits (`[requester]`); the CLI can override each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequesterConfig {
    /// Highest price to pay per task, stroops (1 XLM = 10,000,000 stroops).
    pub max_price_stroops: u64,
    /// Time from submit to result before giving up, milliseconds.
    pub deadline_ms: u64,
    /// How long to collect bids, milliseconds.
    pub bid_window_ms: u64,
    /// How long `submit` waits to discover capable peers, milliseconds.
    pub discovery_ms: u64,
    /// The auction: peers asked per round, award and result timeouts, payment rule.
    pub auction: AuctionConfig,
    /// Prior of the trust score given to peers we have no record of.
    pub trust_prior: TrustPrior,
    /// How long a counter-signed receipt waits for its outputs, and for checks still
    /// running on delivered outputs, seconds. A receipt whose outputs never come in this
    /// window is disputed (never paid); one delivered this long ago with no failed check is
    /// paid. Default 600.
    pub dispute_window_secs: u64,
    /// Spot checks: how often a completed task is run again on an independent worker and
    /// the answers compared (see `crank_scheduler::verify`).
    pub checks: CheckPolicy,
}

impl Default for RequesterConfig {
    fn default() -> Self {
        Self {
            max_price_stroops: 100_000,
            deadline_ms: 60_000,
            bid_window_ms: 500,
            discovery_ms: 10_000,
            auction: AuctionConfig::default(),
            trust_prior: TrustPrior::default(),
            dispute_window_secs: 600,
            checks: CheckPolicy::default(),
        }
    }
}

/// Working for others (`[worker]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Take tasks at all (a node can be a requester only).
    pub enabled: bool,
    /// Length of the self-benchmark at start, milliseconds (0 skips it).
    pub benchmark_ms: u64,
    /// How the node prices its work: tariff, battery wear, margin, per-task and per-second prices.
    pub cost: CostModel,
    /// The GPU path (binaries built with the `gpu` feature, the default).
    pub gpu: GpuSettings,
    /// How much a requester may owe this node before its calls are declined (`credit`).
    pub credit: CreditPolicy,
    /// How often to look for payments to the payout account on Horizon, seconds, so a
    /// settlement notice that never arrived strands no receipt (0: rely on notices alone).
    /// Default 60.
    pub watch_payments_secs: u64,
    /// The model store: its quota, and the models served to anyone (`[worker.store]`).
    pub store: StoreSettings,
    /// The execution paths this node bids with, of those it has: `cpu` (tract),
    /// `onnxruntime` (when `[engine] onnxruntime` names the library) and `gpu`. Empty (the
    /// default): every path it has; each task goes to the cheapest that meets its deadline.
    /// A path it lacks is ignored with a warning.
    pub paths: Vec<crank_protocol::ExecPath>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            benchmark_ms: 500,
            cost: CostModel::default(),
            gpu: GpuSettings::default(),
            credit: CreditPolicy::default(),
            watch_payments_secs: 60,
            store: StoreSettings::default(),
            paths: Vec::new(),
        }
    }
}

/// The model store (`[worker.store]`). Models fetched for tasks are evicted, least recently
/// used first, to keep the store within its quota; models the owner added never are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Bytes all stored models may take together, the owner's included. Default 2 GiB.
    pub quota_bytes: u64,
    /// Most models stored, the owner's included. Default 256.
    pub max_models: usize,
    /// Models (content ids) this node serves to any peer; every other model only to a worker
    /// holding a requester's award of a task on it. Default none.
    pub public_models: Vec<crank_protocol::ModelId>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let quota = crank_inference::store::Quota::default();
        Self {
            quota_bytes: quota.max_bytes,
            max_models: quota.max_models,
            public_models: Vec::new(),
        }
    }
}

impl StoreSettings {
    /// The store's quota.
    pub fn quota(&self) -> crank_inference::store::Quota {
        crank_inference::store::Quota {
            max_bytes: self.quota_bytes,
            max_models: self.max_models,
        }
    }
}

/// The GPU path (`[worker.gpu]`). The node looks for a GPU at start, benchmarks it beside the
/// CPU, advertises both paths and bids with whichever is cheaper for each task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuSettings {
    /// Look for a GPU at all.
    pub enabled: bool,
    /// Also run on a CPU-emulated adapter (lavapipe, SwiftShader) when no real GPU exists; for
    /// tests. Such an adapter is never advertised as a GPU.
    pub allow_cpu_adapter: bool,
    /// Only adapters whose name contains this (case-insensitive); empty for any.
    pub adapter_name: String,
}

impl Default for GpuSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_cpu_adapter: false,
            adapter_name: String::new(),
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Keys, models, the ledger and the API token live here.
    pub data_dir: PathBuf,
    /// libp2p settings.
    pub network: NetworkConfig,
    /// Local HTTP API.
    pub api: ApiConfig,
    /// Adverts.
    pub advert: AdvertConfig,
    /// Defaults for submitted tasks.
    pub requester: RequesterConfig,
    /// Working for others.
    pub worker: WorkerConfig,
    /// The inference engine: workers, queue, limits, plan cache.
    pub engine: EngineConfig,
    /// The device: power gate policy and thresholds, sysfs roots, energy figures.
    pub device: DeviceConfig,
    /// Stellar: Horizon and friendbot URLs, network passphrase, fees (default: public testnet).
    pub stellar: StellarConfig,
    /// Settlement of what this node owes: automatic threshold payments, batch size, validity.
    pub settlement: SettlementSettings,
    /// Owner and submitter policies in Rego (admission, placement, output handling).
    pub policy: PolicySettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            network: NetworkConfig::default(),
            api: ApiConfig::default(),
            advert: AdvertConfig::default(),
            requester: RequesterConfig::default(),
            worker: WorkerConfig::default(),
            engine: EngineConfig::default(),
            device: DeviceConfig::default(),
            stellar: StellarConfig::default(),
            settlement: SettlementSettings::default(),
            policy: PolicySettings::default(),
        }
    }
}

/// `$XDG_DATA_HOME/crank-node`, else `~/.local/share/crank-node`, else `./crank-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("crank-node");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/crank-node");
    }
    PathBuf::from("crank-data")
}

const TOP_LEVEL: &[&str] = &[
    "data_dir",
    "network",
    "api",
    "advert",
    "requester",
    "worker",
    "engine",
    "device",
    "stellar",
    "settlement",
    "policy",
];

impl Config {
    /// Loads defaults, then `file` (if given), then environment overrides from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.into(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut env_vars: Vec<String> = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("CRANK_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if !path
                .first()
                .is_some_and(|p| TOP_LEVEL.contains(&p.as_str()))
                || path.iter().any(String::is_empty)
            {
                continue;
            }
            set_path(&mut table, &path, parse_env_value(&value));
            env_vars.push(var);
        }
        let source = file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("(defaults)"));
        Self::deserialize(toml::Value::Table(table)).map_err(|e| {
            if env_vars.is_empty() {
                ConfigError::Parse {
                    path: source,
                    message: e.to_string(),
                }
            } else {
                ConfigError::Env {
                    var: env_vars.join(", "),
                    message: e.to_string(),
                }
            }
        })
    }

    /// The config with every default filled in, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn parse_env_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = table;
    for key in parents {
        let entry = cur
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = entry else { return };
        cur = t;
    }
    cur.insert(last.clone(), value);
}

/// Automatic settlement (`[settlement]`); the payment rules themselves are in
/// `crank_payments::SettlementConfig` (threshold, batch size, validity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SettlementSettings {
    /// Pay automatically when what we owe a worker crosses the threshold.
    pub auto: bool,
    /// How often to check, seconds.
    pub interval_secs: u64,
    /// Threshold, batch size, validity window and retries.
    #[serde(flatten)]
    pub policy: crank_payments::SettlementConfig,
}

impl Default for SettlementSettings {
    fn default() -> Self {
        Self {
            auto: true,
            interval_secs: 60,
            policy: crank_payments::SettlementConfig::default(),
        }
    }
}

/// Policies (`[policy]`): where the Rego files are and how often they are looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// The directory of `*.rego` files and an optional `data.json` (default: `policies` in
    /// the data dir). None there, or no such directory: no policy applies.
    pub dir: Option<PathBuf>,
    /// How often the directory is checked for changes, seconds (a changed file is reloaded;
    /// one that does not load leaves the last good policies in force).
    pub reload_secs: u64,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            dir: None,
            reload_secs: 2,
        }
    }
}

impl PolicySettings {
    /// The policy directory for a node whose data dir is `data_dir`.
    pub fn dir_in(&self, data_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| data_dir.join("policies"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/tmp/x\"\n[network]\nkad_mode = \"client\"\nrequest_timeout_secs = 9\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("CRANK_NETWORK__KAD_MODE", "server"),
                ("CRANK_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.network.kad_mode, crate::network::KadMode::Server);
        assert_eq!(c.network.request_timeout_secs, 9);
        assert_eq!(c.api, ApiConfig::default());
    }

    #[test]
    fn env_lists_and_numbers() {
        let c = Config::load(
            None,
            env(&[
                ("CRANK_NETWORK__LISTEN", "[\"/ip4/127.0.0.1/tcp/0\"]"),
                ("CRANK_ADVERT__TTL_SECS", "60"),
            ]),
        )
        .unwrap();
        assert_eq!(c.network.listen, vec!["/ip4/127.0.0.1/tcp/0".to_string()]);
        assert_eq!(c.advert.ttl_secs, 60);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[network]\nlisten_on = []\n").unwrap();
        let e = Config::load(Some(&file), vec![]).unwrap_err().to_string();
        assert!(e.contains("listen_on"), "{e}");
        let e = Config::load(None, env(&[("CRANK_ADVERT__TTL_SECS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CRANK_ADVERT__TTL_SECS"), "{e}");
    }

    #[test]
    fn example_config_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../example.config.toml");
        let c = Config::load(Some(&path), vec![]).unwrap();
        let d = Config::default();
        assert_eq!(c.network, d.network);
        assert_eq!(c.api, d.api);
        assert_eq!(c.advert, d.advert);
        assert_eq!(c.requester, d.requester);
        assert_eq!(c.worker, d.worker);
        assert_eq!(c.engine, d.engine);
        assert_eq!(c.device, d.device);
        assert_eq!(c.stellar, d.stellar);
        assert_eq!(c.settlement, d.settlement);
    }
}
