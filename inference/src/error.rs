//! Errors of the model store and of the inference engine, one enum per concern.

use std::path::PathBuf;
use std::time::Duration;

use crank_protocol::ModelId;

/// Why a model store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the store could not be read or written.
    #[error("model store I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not hash to the model id they were offered as.
    #[error("model bytes hash to {actual}, expected {expected}")]
    HashMismatch {
        /// The id the caller expected.
        expected: ModelId,
        /// The blake3 hash of the bytes received.
        actual: ModelId,
    },
    /// The model is larger than the store accepts.
    #[error("model is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Size of the model, bytes.
        size: u64,
        /// The configured limit, bytes.
        limit: u64,
    },
    /// No model with this id is stored.
    #[error("model {0} is not in the store")]
    NotFound(ModelId),
    /// A stored file no longer hashes to its name (disk corruption or tampering); it was
    /// removed so that a fresh copy can be fetched.
    #[error("stored model {id} was corrupt (its bytes hash to {actual}) and has been removed")]
    Corrupt {
        /// The id the file was stored under.
        id: ModelId,
        /// What its bytes hash to now.
        actual: ModelId,
    },
    /// A chunk was asked for past the end of the model.
    #[error("offset {offset} is past the end of model {id} ({total} bytes)")]
    OffsetOutOfRange {
        /// The model.
        id: ModelId,
        /// The requested offset, bytes.
        offset: u64,
        /// The model's size, bytes.
        total: u64,
    },
}

/// Why an inference job, or the engine itself, failed. Serialisable: a model runner
/// process sends it back to the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum InferenceError {
    /// The bounded job queue is full; the caller should decline or retry later.
    #[error("inference queue is full ({slots} slots, {workers} workers busy)")]
    QueueFull {
        /// Queue capacity, jobs.
        slots: usize,
        /// Worker threads.
        workers: usize,
    },
    /// The model is not in the model store.
    #[error("model {0} is not in the model store")]
    ModelNotFound(ModelId),
    /// The model is larger than the engine accepts.
    #[error("model is {size} bytes; the limit is {limit} bytes")]
    ModelTooLarge {
        /// Size of the model, bytes.
        size: u64,
        /// The configured limit, bytes.
        limit: u64,
    },
    /// The model bytes are not a loadable ONNX graph (malformed protobuf, bad graph,
    /// shapes that cannot be inferred).
    #[error("model is not a valid ONNX graph: {0}")]
    ModelInvalid(String),
    /// The model uses an operator that the CPU runtime does not implement.
    #[error("model uses operator `{op}` (node `{node}`), which the CPU runtime does not support")]
    UnsupportedOperator {
        /// The ONNX operator type.
        op: String,
        /// The graph node that uses it.
        node: String,
    },
    /// The inputs do not match what the model expects (names, dtypes, shapes).
    #[error("invalid input: {0}")]
    InputInvalid(String),
    /// An input tensor, or the inputs together, hold more elements than the engine accepts.
    #[error("input has {actual} elements; the limit is {limit}")]
    TooManyElements {
        /// Elements in the input(s).
        actual: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The runtime failed while running the model.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The job ran past its deadline or the engine's run-time limit and was stopped.
    #[error("inference stopped after {elapsed:?}; the limit was {limit:?}")]
    TimedOut {
        /// Time spent, from submission, when the job was stopped.
        elapsed: Duration,
        /// The limit that was hit (the earlier of the deadline and the run-time cap).
        limit: Duration,
    },
    /// The job was cancelled by its submitter.
    #[error("inference job was cancelled")]
    Cancelled,
    /// The engine is shutting down and no longer runs jobs.
    #[error("inference engine is shutting down")]
    ShuttingDown,
    /// The model store failed while loading the model.
    #[error("model store: {0}")]
    Store(String),
    /// The engine could not be started (for example, a worker thread could not be spawned).
    #[error("inference engine could not start: {0}")]
    Startup(String),
    /// The model asked for more memory than its isolated runner may use; the runner was
    /// stopped and replaced, and other jobs are unaffected. Most likely a hostile or broken
    /// model (huge declared shapes, a tensor sized by an input value).
    #[error("the model exhausted the runner's memory limit of {limit_mib} MiB")]
    MemoryExhausted {
        /// The runner's address-space limit, MiB.
        limit_mib: u64,
    },
    /// The isolated runner died while running the model (a signal, an unexpected exit, a
    /// malformed reply); it was replaced and other jobs are unaffected.
    #[error("runner crashed: {0}")]
    RunnerCrashed(String),
    /// No runner process could be started (the runner executable is missing or cannot be
    /// executed); check the engine's `runner_exe`.
    #[error("model runner unavailable: {0}")]
    RunnerUnavailable(String),
    /// A worker thread failed while handling the job (a bug, caught); the worker carried on.
    #[error("inference worker failed: {0}")]
    WorkerFailed(String),
}

impl From<StoreError> for InferenceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::ModelNotFound(id),
            StoreError::TooLarge { size, limit } => Self::ModelTooLarge { size, limit },
            other => Self::Store(other.to_string()),
        }
    }
}
