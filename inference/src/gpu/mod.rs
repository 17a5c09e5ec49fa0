//! The GPU inference path: WGSL compute kernels on wgpu, and a small ONNX graph runner.
//!
//! A [`GpuRuntime`] owns one device (the best real GPU, or with consent a CPU emulation such
//! as lavapipe, for tests), its compiled kernels and a buffer pool. [`GpuRuntime::load`] parses
//! a model and uploads its weights once, giving a [`GpuModel`]; [`GpuModel::run`] lowers the
//! graph for the given input shapes (once per shape set: shapes are static per plan), binds
//! it to buffers and runs every operator as one submission. A model with an operator the
//! kernels lack is refused at load with [`GpuError::UnsupportedOperator`], which the engine
//! ([`GpuExecutor`]) turns into a fallback to tract.
//!
//! # Layout
//!
//! - [`adapter`]: adapter ranking; CPU-emulated adapters are never advertised.
//! - `onnx`: ONNX protobuf to the runner's graph (values, nodes, parsed attributes).
//! - `lower`: shape inference, fusion (bias Add and Relu into the kernel before them),
//!   views, and each dispatch's parameters, for concrete input shapes. No device needed.
//! - `kernels`: the WGSL sources (`wgsl/*.wgsl`) and their pipelines.
//! - `plan`: a lowered program bound to buffers; running it and reading back.
//! - `pool`: the per-device buffer pool.
//! - `model`: [`GpuModel`], its weights and its plans per input shape.
//! - [`exec`]: [`GpuExecutor`], the engine's per-model GPU-or-tract decision.
//!
//! # Numerics
//!
//! Kernels compute in f32 like tract, but sum in a different order and use their own `exp`,
//! so results differ in the last bits: the agreement tests hold probabilities to 1e-4
//! absolute of tract's and labels to exactly tract's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crank_protocol::{GpuAdapter, ModelId};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub mod adapter;
mod error;
pub mod exec;
mod kernels;
mod lower;
mod model;
mod onnx;
mod plan;
mod pool;

pub use adapter::AdapterSummary;
pub use error::GpuError;
pub use exec::GpuExecutor;
pub use model::{GpuModel, GpuTensorInfo};
pub use onnx::SUPPORTED_OPERATORS;

use kernels::Kernels;
use pool::BufferPool;

/// GPU settings. Embeds in the node's TOML config; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// Whether to look for a GPU at all. Default true.
    pub enabled: bool,
    /// Run on a CPU-emulated adapter (lavapipe, SwiftShader, WARP) when no real GPU exists.
    /// For tests: such an adapter is never advertised. Default false.
    pub allow_cpu_adapter: bool,
    /// Only adapters whose name contains this (case-insensitive); empty for any. When empty,
    /// the `WGPU_ADAPTER_NAME` environment variable is used if set. Default empty.
    pub adapter_name: String,
    /// Most bytes of unused buffers the pool keeps for reuse. Default 256 MiB.
    pub pool_bytes: u64,
    /// Plans (one per set of input shapes, i.e. per batch size) kept per model. The engine
    /// pads batches to powers of two, so 8 covers batches up to 128 rows. Default 8.
    pub plans_per_model: usize,
    /// Longest one GPU run may take before it is abandoned; in TOML `max_run_time_ms`
    /// (milliseconds). Default 60 s.
    #[serde(rename = "max_run_time_ms", with = "millis")]
    pub max_run_time: Duration,
    /// GPU models kept loaded by the engine (least recently used is dropped). Default 8.
    pub models: usize,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_cpu_adapter: false,
            adapter_name: String::new(),
            pool_bytes: 256 * 1024 * 1024,
            plans_per_model: 8,
            max_run_time: Duration::from_secs(60),
            models: 8,
        }
    }
}

/// (De)serialises a [`Duration`] as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// The device and everything made for it, shared by the runtime and its models.
pub(crate) struct Shared {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub kernels: Kernels,
    pub pool: Arc<BufferPool>,
    pub limits: wgpu::Limits,
    pub adapter: AdapterSummary,
    pub config: GpuConfig,
    lost: Arc<AtomicBool>,
}

impl Shared {
    /// Whether the device was lost (driver reset, GPU removed).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Runs `f` inside the device's error scopes (see [`scoped`]), refusing at once when the
    /// device was lost.
    pub fn scoped<T>(&self, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
        if self.is_lost() {
            return Err(GpuError::Backend("the device was lost".into()));
        }
        scoped(&self.device, f)
    }
}

/// Runs `f` inside error scopes, so a validation, out-of-memory or internal error of the
/// device becomes a [`GpuError::Backend`] instead of reaching the uncaptured-error handler.
/// Scopes are per thread; `f` must not hand device work to other threads.
fn scoped<T>(
    device: &wgpu::Device,
    f: impl FnOnce() -> Result<T, GpuError>,
) -> Result<T, GpuError> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let out = f();
    let errors = [
        pollster::block_on(internal.pop()),
        pollster::block_on(validation.pop()),
        pollster::block_on(oom.pop()),
    ];
    if let Some(e) = errors.into_iter().flatten().next() {
        return Err(GpuError::Backend(e.to_string()));
    }
    out
}

/// Kernel limits the device must meet (wgpu's defaults meet them all).
fn fits(limits: &wgpu::Limits) -> Result<(), String> {
    let need = [
        (
            "storage buffers per stage",
            limits.max_storage_buffers_per_shader_stage,
            4,
        ),
        (
            "invocations per workgroup",
            limits.max_compute_invocations_per_workgroup,
            256,
        ),
        ("workgroup size x", limits.max_compute_workgroup_size_x, 256),
        ("workgroup size y", limits.max_compute_workgroup_size_y, 16),
        (
            "workgroup storage bytes",
            limits.max_compute_workgroup_storage_size,
            8192,
        ),
        (
            "uniform buffers per stage",
            limits.max_uniform_buffers_per_shader_stage,
            1,
        ),
    ];
    for (what, have, want) in need {
        if have < want {
            return Err(format!("{what}: {have} < {want}"));
        }
    }
    Ok(())
}

/// A GPU device ready to load and run models. Cheap to clone.
#[derive(Clone)]
pub struct GpuRuntime {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GpuRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuRuntime")
            .field("adapter", &self.shared.adapter)
            .finish_non_exhaustive()
    }
}

impl GpuRuntime {
    /// Every adapter wgpu can see (backends from `WGPU_BACKEND` when set), real or emulated.
    pub fn enumerate() -> Vec<AdapterSummary> {
        let found = std::panic::catch_unwind(|| {
            let instance = wgpu::Instance::new(
                wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
            );
            pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
                .iter()
                .map(|a| AdapterSummary::from_info(&a.get_info()))
                .collect()
        });
        found.unwrap_or_else(|_| {
            warn!("enumerating GPU adapters panicked; assuming none");
            Vec::new()
        })
    }

    /// Opens the GPU the configuration allows, or `None` (logged) when there is none or
    /// it cannot run the kernels. This is what the node calls at start.
    pub fn probe(cfg: &GpuConfig) -> Option<Self> {
        if !cfg.enabled {
            debug!("GPU disabled by configuration");
            return None;
        }
        match Self::open(cfg) {
            Ok(rt) => {
                info!(
                    adapter = %rt.shared.adapter.name,
                    backend = %rt.shared.adapter.backend,
                    kind = %rt.shared.adapter.kind,
                    emulated = rt.shared.adapter.emulated,
                    "GPU ready"
                );
                Some(rt)
            }
            Err(e) => {
                info!(reason = %e, "no GPU; inference runs on the CPU");
                None
            }
        }
    }

    /// Opens the GPU the configuration allows, saying why not when it cannot.
    pub fn open(cfg: &GpuConfig) -> Result<Self, GpuError> {
        let cfg = cfg.clone();
        std::panic::catch_unwind(move || Self::open_inner(cfg)).unwrap_or_else(|p| {
            Err(GpuError::Backend(format!(
                "opening the device panicked: {}",
                crate::model::panic_text(&*p)
            )))
        })
    }

    fn open_inner(cfg: GpuConfig) -> Result<Self, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        // Adapters that cannot run compute shaders at all are not candidates.
        let usable: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                a.get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
                    && fits(&a.limits()).is_ok()
            })
            .collect();
        let summaries: Vec<AdapterSummary> = usable
            .iter()
            .map(|a| AdapterSummary::from_info(&a.get_info()))
            .collect();
        let env_name = std::env::var("WGPU_ADAPTER_NAME").unwrap_or_default();
        let filter = if cfg.adapter_name.is_empty() {
            env_name.as_str()
        } else {
            cfg.adapter_name.as_str()
        };
        let Some(ix) = adapter::choose(&summaries, cfg.allow_cpu_adapter, filter) else {
            let seen: Vec<String> = summaries
                .iter()
                .map(|s| format!("{} ({}, {})", s.name, s.backend, s.kind))
                .collect();
            return Err(GpuError::NoAdapter(if seen.is_empty() {
                "no adapter with compute shaders".into()
            } else {
                format!(
                    "found only {}{}",
                    seen.join(", "),
                    if cfg.allow_cpu_adapter {
                        ""
                    } else {
                        "; CPU-emulated adapters are not used unless allow_cpu_adapter is set"
                    }
                )
            }));
        };
        let (Some(adapter), Some(summary)) = (usable.get(ix), summaries.get(ix)) else {
            return Err(GpuError::NoAdapter("adapter list changed".into()));
        };
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("crank-node"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device {
            adapter: summary.name.clone(),
            reason: e.to_string(),
        })?;
        // Errors outside an error scope are logged, never a panic (wgpu's default).
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            warn!(error = %e, "uncaptured GPU error");
        }));
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            flag.store(true, Ordering::Release);
            warn!(reason = ?reason, message = %message, "GPU device lost");
        });
        let kernels = scoped(&device, || Ok(Kernels::compile(&device)))?;
        let shared = Shared {
            kernels,
            pool: BufferPool::new(device.clone(), cfg.pool_bytes),
            device,
            queue,
            limits,
            adapter: summary.clone(),
            config: cfg,
            lost,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// The adapter this runtime runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.shared.adapter
    }

    /// The adapters to put in the capability advert: this runtime's, unless it is a CPU
    /// emulation (then none).
    pub fn adapters_for_advert(&self) -> Vec<GpuAdapter> {
        self.shared.adapter.to_advert().into_iter().collect()
    }

    /// The configuration the runtime was opened with.
    pub fn config(&self) -> &GpuConfig {
        &self.shared.config
    }

    /// Parses a model and uploads its weights. Fails with [`GpuError::UnsupportedOperator`]
    /// (or another [`GpuError::is_fallback`] error) when the model cannot run on the GPU.
    pub fn load(&self, id: ModelId, bytes: &[u8]) -> Result<GpuModel, GpuError> {
        GpuModel::load(self.shared.clone(), id, bytes)
    }

    /// Whether the device was lost (driver reset, GPU removed); every later run fails, so
    /// the engine stops trying and a node may probe again.
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// Bytes of idle buffers kept by the pool.
    pub fn pool_idle_bytes(&self) -> u64 {
        self.shared.pool.idle_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_toml_round_trip() {
        let c = GpuConfig::default();
        assert!(c.enabled && !c.allow_cpu_adapter);
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("max_run_time_ms = 60000"), "{text}");
        assert_eq!(toml::from_str::<GpuConfig>(&text).unwrap(), c);
        let partial: GpuConfig = toml::from_str("allow_cpu_adapter = true").unwrap();
        assert!(partial.allow_cpu_adapter);
        assert_eq!(partial.plans_per_model, 8);
        assert!(toml::from_str::<GpuConfig>("alow_cpu_adapter = true").is_err());
    }

    #[test]
    fn kernel_limits_are_checked() {
        assert!(fits(&wgpu::Limits::default()).is_ok());
        let small = wgpu::Limits {
            max_storage_buffers_per_shader_stage: 2,
            ..wgpu::Limits::default()
        };
        assert!(fits(&small).unwrap_err().contains("storage buffers"));
    }

    #[test]
    fn probe_respects_the_enabled_switch() {
        let off = GpuConfig {
            enabled: false,
            allow_cpu_adapter: true,
            ..GpuConfig::default()
        };
        assert!(GpuRuntime::probe(&off).is_none());
    }
}
