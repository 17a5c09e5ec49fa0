//! crank-node's inference side: the content-addressed model store and the CPU inference
//! engine (tract), with a bounded job queue served by dedicated worker threads.
//!
//! This crate knows nothing about the network: the node hands it model bytes and jobs, and
//! gets back outputs with timings for receipts and energy estimates.
//!
//! # Layout
//!
//! - [`store`]: [`ModelStore`], models on disk named by the blake3 hash of their bytes.
//! - [`engine`]: [`Engine`], [`EngineConfig`], [`Job`], [`JobHandle`], [`RunOutput`]: the
//!   queue, the workers, batching, and the limits on model size, input size and run time.
//! - [`model`]: loading ONNX into an optimised tract plan; [`ModelInfo`], a model's signature.
//! - [`onnxruntime`]: the optional ONNX Runtime path, loaded at run time from a library the
//!   owner names (`EngineConfig::onnxruntime`); jobs bid on it carry `ExecPath::Onnxruntime`.
//! - [`declared`]: what an ONNX file declares about its inputs and outputs, read without
//!   the weights, and the requester's check that a worker's outputs fit it.
//! - [`convert`]: wire tensors (f32, f64, i64, i32, u8) to and from tract tensors.
//! - [`error`]: [`StoreError`] and [`InferenceError`].
//! - [`zoo`]: the conformance zoo of public models with onnxruntime's outputs for them.
//! - [`runner`]: isolated execution: the runner process ([`runner::serve`]), its sandbox
//!   (resource limits, seccomp), the framed protocol, and the parent's side that kills and
//!   replaces a runner that crashes, runs out of memory or overruns its time.
//! - [`device`]: the device probe (hardware, power source, battery, user idle, CPU load,
//!   thermal), the power gate and its monitor, the energy meter and the self-benchmark.
//! - `gpu` (cargo feature `gpu`): the wgpu path: WGSL kernels, an ONNX graph runner, the
//!   adapter probe; `Engine::use_gpu` routes supported models to it, others stay on tract.
//!
//! # Invariants
//!
//! - Inference never runs on the caller's thread: [`Engine::submit`] only queues, and a full
//!   queue is an explicit [`InferenceError::QueueFull`].
//! - A model is parsed and optimised once per content id while it stays in the plan cache.
//! - Bad input (malformed ONNX, unsupported operators, wrong shapes or types, oversize
//!   models or inputs) is a typed error; a panic inside the runtime is caught and reported.
//! - Jobs from different requesters share a batch only when the model's rows are independent.
//! - With isolation on (a runner executable known), no untrusted model is parsed, probed or
//!   run in the engine's process: a model that crashes, exhausts memory or stalls fails its
//!   own batch and the runner is replaced.
//! - Every job handed to a worker is answered, even when the worker panics; the running
//!   count is released by a guard.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

mod cache;
pub mod convert;
pub mod declared;
pub mod device;
pub mod engine;
pub mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod model;
pub mod onnxruntime;
pub mod runner;
pub mod store;
pub mod validate;
pub mod zoo;

pub use engine::{CancelToken, Engine, EngineConfig, Job, JobHandle, QueueState, RunOutput};
pub use error::{InferenceError, StoreError};
pub use model::{Dim, ModelInfo, PlanStats, TensorInfo};
pub use store::ModelStore;
