//! The engine's GPU side: per model, run on the GPU or fall back to tract.
//!
//! The first job for a model loads it on the GPU. A model the GPU cannot take (an operator
//! without a kernel, an unsupported attribute or element type, a tensor too large for the
//! device) is remembered as CPU-only, with one log line naming the operator. A GPU run that
//! fails or is abandoned also falls back, for that run, to tract, which then gives the job
//! its answer (or its precise error).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_protocol::{ExecPath, ModelId, NamedTensor, Tensor as WireTensor, TensorData};
use tracing::{debug, info, warn};

use super::{GpuError, GpuModel, GpuRuntime};
use crate::cache::PlanCache;
use crate::error::InferenceError;
use crate::model::{ModelInfo, concat_rows};
use crate::store::ModelStore;

/// What the GPU side decided for one model.
pub(crate) enum GpuSlot {
    /// Loaded on the GPU.
    Ready(GpuModel),
    /// Runs on tract, and why.
    Cpu(String),
}

/// Outputs of a batch run on the GPU.
#[derive(Debug)]
pub(crate) struct GpuBatch {
    /// Each job's outputs, named and ordered like the model's.
    pub outputs: Vec<Vec<NamedTensor>>,
    /// Wall time of the run.
    pub run: Duration,
    /// CPU time of the calling thread during the run (encoding, waiting, copying).
    pub cpu: Duration,
}

/// Runs models on a [`GpuRuntime`] for the engine, remembering which models fall back.
pub struct GpuExecutor {
    runtime: GpuRuntime,
    models: PlanCache<GpuSlot>,
}

impl std::fmt::Debug for GpuExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuExecutor")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl GpuExecutor {
    /// An executor keeping up to `runtime.config().models` models loaded.
    pub fn new(runtime: GpuRuntime) -> Self {
        let models = PlanCache::new(runtime.config().models);
        Self { runtime, models }
    }

    /// The runtime.
    pub fn runtime(&self) -> &GpuRuntime {
        &self.runtime
    }

    /// Which path jobs for this model take; loads it on the GPU on first use.
    pub fn path_for(&self, store: &ModelStore, id: &ModelId) -> Result<ExecPath, InferenceError> {
        Ok(match &*self.slot(store, id)? {
            GpuSlot::Ready(_) => ExecPath::Gpu,
            GpuSlot::Cpu(_) => ExecPath::Cpu,
        })
    }

    /// Why this model runs on tract (`None` when it runs on the GPU); loads it on first use.
    pub fn fallback_reason(
        &self,
        store: &ModelStore,
        id: &ModelId,
    ) -> Result<Option<String>, InferenceError> {
        Ok(match &*self.slot(store, id)? {
            GpuSlot::Ready(_) => None,
            GpuSlot::Cpu(reason) => Some(reason.clone()),
        })
    }

    fn slot(&self, store: &ModelStore, id: &ModelId) -> Result<Arc<GpuSlot>, InferenceError> {
        self.models.get_or_load(id, || {
            let bytes = store.read(id)?;
            Ok(match self.runtime.load(*id, &bytes) {
                Ok(m) => GpuSlot::Ready(m),
                Err(GpuError::UnsupportedOperator { op, node }) => {
                    info!(model = %id, op = %op, node = %node, "model runs on tract: no GPU kernel for this operator");
                    GpuSlot::Cpu(format!("operator {op} (node {node})"))
                }
                Err(e) if e.is_fallback() => {
                    info!(model = %id, reason = %e, "model runs on tract");
                    GpuSlot::Cpu(e.to_string())
                }
                Err(e) => {
                    warn!(model = %id, error = %e, "model could not be loaded on the GPU; it runs on tract");
                    GpuSlot::Cpu(e.to_string())
                }
            })
        })
    }

    /// Runs a batch of jobs (each job's inputs in graph order) as one GPU run. `None` means
    /// "run it on tract": the model falls back, or this run failed or was abandoned.
    ///
    /// With `pad_rows` (the model's rows are known to be independent), the batch is padded
    /// with zero rows up to a size bucket ([`row_bucket`]), so that the handful of plans per
    /// model serve every batch size instead of one plan per size.
    pub(crate) fn run_batch(
        &self,
        store: &ModelStore,
        info: &ModelInfo,
        jobs: &[Vec<&WireTensor>],
        pad_rows: bool,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Option<GpuBatch> {
        if self.runtime.is_lost() {
            // Logged once, by the device-lost callback.
            return None;
        }
        let slot = match self.slot(store, &info.id) {
            Ok(s) => s,
            Err(e) => {
                debug!(model = %info.id, error = %e, "GPU load skipped");
                return None;
            }
        };
        let GpuSlot::Ready(model) = &*slot else {
            return None;
        };
        let rows: Vec<u64> = jobs
            .iter()
            .map(|j| {
                j.first()
                    .and_then(|t| t.shape.first().copied())
                    .unwrap_or(1)
            })
            .collect();
        // Row counts come from the requests; a sum or bucket that overflows goes to tract,
        // which rejects the inputs with a precise error.
        let total = rows.iter().try_fold(0u64, |acc, r| acc.checked_add(*r))?;
        let padded = if pad_rows { row_bucket(total)? } else { total };
        let owned: Vec<WireTensor>;
        let inputs: Vec<&WireTensor> = if jobs.len() == 1 && padded == total {
            jobs.first()?.clone()
        } else {
            owned = (0..info.inputs.len())
                .map(|ix| {
                    let parts: Vec<&WireTensor> =
                        jobs.iter().filter_map(|j| j.get(ix).copied()).collect();
                    let joined = concat_rows(&parts).ok()?;
                    pad_zero_rows(joined, padded)
                })
                .collect::<Option<_>>()?;
            owned.iter().collect()
        };
        let started = Instant::now();
        let cpu_start = crate::device::thread_cpu_time();
        let result = model.run_ordered(&inputs, deadline, stop);
        let run = started.elapsed();
        let cpu = crate::device::thread_cpu_time().saturating_sub(cpu_start);
        let outputs = match result {
            Ok(o) => o,
            Err(e @ (GpuError::Cancelled | GpuError::TimedOut(_))) => {
                debug!(model = %info.id, error = %e, "GPU run abandoned");
                return None;
            }
            Err(e) => {
                warn!(model = %info.id, error = %e, "GPU run failed; running on tract");
                return None;
            }
        };
        if outputs.len() != info.outputs.len()
            || outputs
                .iter()
                .zip(&info.outputs)
                .any(|(t, i)| t.data.dtype() != i.dtype)
        {
            warn!(model = %info.id, "GPU outputs do not match the model's signature; running on tract");
            return None;
        }
        let mut per_job = Vec::with_capacity(jobs.len());
        let mut start = 0u64;
        for r in &rows {
            // At most `total`, which did not overflow.
            let end = start.checked_add(*r)?;
            let mut outs = Vec::with_capacity(outputs.len());
            for (t, i) in outputs.iter().zip(&info.outputs) {
                let tensor = if jobs.len() == 1 && padded == total {
                    t.clone()
                } else {
                    split_rows(t, padded, start, end)?
                };
                outs.push(NamedTensor {
                    name: i.name.clone(),
                    tensor,
                });
            }
            per_job.push(outs);
            start = end;
        }
        Some(GpuBatch {
            outputs: per_job,
            run,
            cpu,
        })
    }
}

/// The batch size a run of `rows` rows is padded to: a power of two up to 1024, then a
/// multiple of 1024. At most twice the work, and at most about a dozen plans per model.
/// `None` when the bucket does not fit in `u64`.
pub(crate) fn row_bucket(rows: u64) -> Option<u64> {
    if rows <= 1024 {
        Some(rows.max(1).next_power_of_two())
    } else {
        rows.checked_next_multiple_of(1024)
    }
}

/// Elements per row (along axis 0) of a wire shape; `None` when they overflow.
fn per_row(shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, d| acc.checked_mul(*d))
}

/// `t` with zero rows appended along axis 0 up to `rows` rows.
fn pad_zero_rows(mut t: WireTensor, rows: u64) -> Option<WireTensor> {
    let have = *t.shape.first()?;
    if have >= rows {
        return Some(t);
    }
    let extra = rows.checked_sub(have)?.checked_mul(per_row(&t.shape)?)?;
    let extra = usize::try_from(extra).ok()?;
    let len = t.data.len().checked_add(extra)?;
    match &mut t.data {
        TensorData::F32(v) => v.resize(len, 0.0),
        TensorData::F64(v) => v.resize(len, 0.0),
        TensorData::I64(v) => v.resize(len, 0),
        TensorData::I32(v) => v.resize(len, 0),
        TensorData::U8(v) => v.resize(len, 0),
    }
    t.shape[0] = rows;
    Some(t)
}

/// Rows `start..end` of a tensor whose axis 0 has `total` rows.
fn split_rows(t: &WireTensor, total: u64, start: u64, end: u64) -> Option<WireTensor> {
    if t.shape.first() != Some(&total) || end > total || start > end {
        return None;
    }
    let per_row = per_row(&t.shape)?;
    let at = |row: u64| usize::try_from(row.checked_mul(per_row)?).ok();
    let (a, b) = (at(start)?, at(end)?);
    let data = match &t.data {
        TensorData::F32(v) => TensorData::F32(v.get(a..b)?.to_vec()),
        TensorData::F64(v) => TensorData::F64(v.get(a..b)?.to_vec()),
        TensorData::I64(v) => TensorData::I64(v.get(a..b)?.to_vec()),
        TensorData::I32(v) => TensorData::I32(v.get(a..b)?.to_vec()),
        TensorData::U8(v) => TensorData::U8(v.get(a..b)?.to_vec()),
    };
    let mut shape = t.shape.clone();
    shape[0] = end.checked_sub(start)?;
    Some(WireTensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pad_to_few_sizes() {
        let sizes: Vec<u64> = [0, 1, 2, 3, 5, 8, 9, 33, 1000, 1024, 1025, 5000]
            .iter()
            .map(|r| row_bucket(*r).unwrap())
            .collect();
        assert_eq!(sizes, [1, 1, 2, 4, 8, 8, 16, 64, 1024, 1024, 2048, 5120]);
        for r in 1..5000 {
            let b = row_bucket(r).unwrap();
            assert!(b >= r && b < 2 * r + 1024);
        }
        let t = WireTensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let p = pad_zero_rows(t.clone(), 4).unwrap();
        assert_eq!(p.shape, vec![4, 2]);
        assert_eq!(split_rows(&p, 4, 0, 3).unwrap(), t);
        assert_eq!(pad_zero_rows(t.clone(), 2).unwrap(), t);
    }

    #[test]
    fn hostile_row_counts_do_not_overflow() {
        assert_eq!(row_bucket(u64::MAX), None);
        assert_eq!(row_bucket(u64::MAX - 2048), Some(u64::MAX - 2047));
        // Empty tensors whose other axes multiply past u64.
        let t = WireTensor {
            shape: vec![0, u64::MAX, 2],
            data: TensorData::F32(vec![]),
        };
        assert!(pad_zero_rows(t.clone(), 1).is_none());
        assert!(split_rows(&t, 0, 0, 0).is_none());
        let t = WireTensor {
            shape: vec![u64::MAX, 0],
            data: TensorData::F32(vec![]),
        };
        assert_eq!(
            split_rows(&t, u64::MAX, 1, u64::MAX).unwrap().shape,
            [u64::MAX - 1, 0]
        );
    }

    #[test]
    fn rows_split_back_out_of_a_batch() {
        let t = WireTensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(
            split_rows(&t, 3, 1, 3).unwrap(),
            WireTensor::f32(vec![2, 2], vec![3., 4., 5., 6.]).unwrap()
        );
        let labels = WireTensor {
            shape: vec![3],
            data: TensorData::I64(vec![7, 8, 9]),
        };
        assert_eq!(
            split_rows(&labels, 3, 0, 1).unwrap().data,
            TensorData::I64(vec![7])
        );
        assert!(split_rows(&t, 4, 0, 1).is_none());
        assert!(split_rows(&t, 3, 2, 4).is_none());
    }
}
