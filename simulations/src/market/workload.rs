//! The task stream: which models are asked for, with how many inputs, when and by whom.
//!
//! Tasks arrive as a Poisson process whose rate follows the day (a sine with its peak at
//! 14:00 and its trough at 02:00). A shard's arrival times are drawn as the order statistics
//! of that process with a fixed count, so every run has exactly the configured number of
//! tasks. The models are the repository's real ones (`models/manifest.json`): their content
//! ids and sizes are what a requester would put in its call for bids.

use crank_protocol::ModelId;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::population::{DAY_MS, HOUR_MS};
use super::rng::{self, Purpose};

/// A model tasks ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Name in `models/manifest.json`.
    pub name: String,
    /// blake3 of the ONNX bytes, hex (the model's content id).
    pub blake3: String,
    /// Size of the ONNX file, bytes.
    pub bytes: u64,
    /// Input elements per sample (one row of the batch).
    pub elements_per_sample: u64,
    /// Share of tasks that use it.
    pub share: f64,
    /// Largest batch; batch sizes are log-uniform in `1..=max_batch`.
    pub max_batch: u32,
}

impl ModelSpec {
    /// The content id, or an error naming the model when the hex is malformed.
    pub fn id(&self) -> Result<ModelId, String> {
        self.blake3
            .parse()
            .map_err(|e| format!("model {}: bad blake3 {:?}: {e}", self.name, self.blake3))
    }
}

/// The repository's three digit classifiers (see `models/manifest.json`), asked to classify
/// batches of up to a few thousand images: bulk jobs from a few milliseconds on a GPU to
/// minutes on a phone.
pub fn default_models() -> Vec<ModelSpec> {
    let m = |name: &str, blake3: &str, bytes, share, max_batch| ModelSpec {
        name: name.into(),
        blake3: blake3.into(),
        bytes,
        elements_per_sample: 64,
        share,
        max_batch,
    };
    vec![
        m(
            "digits-mlp",
            "bbaf3e8522dcafcd42b4b575961881e283011bbba3e54c637faf4851a449b5ac",
            20_308,
            0.4,
            4096,
        ),
        m(
            "digits-cnn",
            "76a3c98eed6d750790986f6b924d20fe19f30b8dab69c1c1a73016adca7858eb",
            15_934,
            0.3,
            4096,
        ),
        m(
            "digits-wide",
            "af69f4b637100fe9ad9613cd0d62944c14294cbbbb3b6a6901740ea4d680c148",
            2_386_456,
            0.3,
            8192,
        ),
    ]
}

/// What the requesters ask for and on what terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadConfig {
    /// Models and their shares.
    pub models: Vec<ModelSpec>,
    /// Relative swing of the arrival rate over the day (0 = flat, 1 = none at 02:00).
    pub diurnal_amplitude: f64,
    /// Highest price a requester pays, stroops (the node's default).
    pub max_price_stroops: u64,
    /// Time from submission to the deadline, ms (the node's default).
    pub deadline_ms: u64,
    /// Bid window, ms (the node's default).
    pub bid_window_ms: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            models: default_models(),
            diurnal_amplitude: 0.6,
            max_price_stroops: 100_000,
            deadline_ms: 60_000,
            bid_window_ms: 500,
        }
    }
}

/// One task of the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TaskDraw {
    /// Arrival, absolute ms.
    pub at: u64,
    /// Index of the requester within the shard.
    pub requester: u32,
    /// Index into the model list.
    pub model: u16,
    /// Samples in the batch.
    pub batch: u32,
}

/// Arrival rate relative to the mean at `t_ms` since the start of the run.
fn diurnal(t_ms: u64, amplitude: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let hour = (t_ms % DAY_MS) as f64 / HOUR_MS as f64;
    1.0 + amplitude * (std::f64::consts::TAU * (hour - 8.0) / 24.0).sin()
}

/// Draws a shard's `count` tasks over `span_ms` from `epoch`, sorted by arrival.
pub(crate) fn draw_tasks(
    cfg: &WorkloadConfig,
    seed: u64,
    shard: u64,
    count: u64,
    span_ms: u64,
    requesters: u32,
    epoch: u64,
) -> Vec<TaskDraw> {
    let mut rng = rng::stream(seed, Purpose::Tasks, &[shard]);
    let amp = cfg.diurnal_amplitude.clamp(0.0, 1.0);
    let mut times = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while (times.len() as u64) < count {
        let t = rng.random_range(0..span_ms.max(1));
        // Thinning: keep a point with probability rate(t) / max rate.
        if rng.random::<f64>() * (1.0 + amp) <= diurnal(t, amp) {
            times.push(t);
        }
    }
    times.sort_unstable();
    let total: f64 = cfg.models.iter().map(|m| m.share.max(0.0)).sum();
    times
        .into_iter()
        .map(|t| {
            let mut pick = rng.random::<f64>() * total;
            let mut model = 0u16;
            for (i, m) in cfg.models.iter().enumerate() {
                pick -= m.share.max(0.0);
                if pick < 0.0 {
                    model = u16::try_from(i).unwrap_or(0);
                    break;
                }
            }
            let max_batch = cfg
                .models
                .get(usize::from(model))
                .map_or(1, |m| m.max_batch.max(1));
            let u: f64 = rng.random();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let batch = ((f64::from(max_batch) + 1.0).ln() * u).exp().floor() as u32;
            TaskDraw {
                at: epoch + t,
                requester: rng.random_range(0..requesters.max(1)),
                model,
                batch: batch.clamp(1, max_batch),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_catalog_matches_the_repository_manifest() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/manifest.json"),
        )
        .unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        let listed = manifest["models"].as_array().unwrap();
        for m in default_models() {
            let entry = listed
                .iter()
                .find(|e| e["name"] == m.name.as_str())
                .unwrap();
            assert_eq!(entry["blake3"], m.blake3.as_str(), "{}", m.name);
            assert_eq!(entry["bytes"], m.bytes, "{}", m.name);
            m.id().unwrap();
            // The content id is the blake3 hash of the file's bytes.
            let bytes = std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../models")
                    .join(entry["file"].as_str().unwrap()),
            )
            .unwrap();
            assert_eq!(ModelId::of(&bytes), m.id().unwrap());
        }
    }

    #[test]
    fn the_stream_has_the_count_order_and_daily_shape_asked_for() {
        let cfg = WorkloadConfig::default();
        let tasks = draw_tasks(&cfg, 1, 0, 50_000, DAY_MS, 10, 1_000);
        assert_eq!(tasks.len(), 50_000);
        assert!(tasks.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(tasks.iter().all(|t| t.at >= 1_000 && t.at < 1_000 + DAY_MS));
        let hour = |h: u64| {
            tasks
                .iter()
                .filter(|t| (t.at - 1_000) / HOUR_MS == h)
                .count()
        };
        // 14:00 is the peak, 02:00 the trough: 1.6 against 0.4 of the mean rate.
        assert!(hour(14) > 3 * hour(2), "{} vs {}", hour(14), hour(2));
        assert!(
            tasks
                .iter()
                .all(|t| t.batch >= 1 && t.batch <= 8192 && t.requester < 10)
        );
        let wide = tasks.iter().filter(|t| t.model == 2).count();
        assert!((wide as f64 / 50_000.0 - 0.3).abs() < 0.01);
        assert_eq!(tasks, draw_tasks(&cfg, 1, 0, 50_000, DAY_MS, 10, 1_000));
    }
}
