//! Errors of the GPU path: probing an adapter, loading a model, running it.
//!
//! The engine treats the "this model cannot run here" kinds ([`GpuError::is_fallback`]) as a
//! reason to run the model on tract instead; the others are failures of one run.

use std::time::Duration;

/// Why the GPU path could not probe, load or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// No usable adapter: none exists, or only CPU-emulated ones and those are not allowed.
    #[error("no usable GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused to open a device with the features and limits the kernels need.
    #[error("GPU device could not be opened on `{adapter}`: {reason}")]
    Device {
        /// The adapter name.
        adapter: String,
        /// What the driver said.
        reason: String,
    },
    /// The model bytes are not an ONNX graph the GPU runner can read.
    #[error("model is not a valid ONNX graph for the GPU runner: {0}")]
    ModelInvalid(String),
    /// The model uses an operator the GPU kernels do not implement.
    #[error("operator `{op}` (node `{node}`) has no GPU kernel")]
    UnsupportedOperator {
        /// The ONNX operator type (with its domain when not the default one).
        op: String,
        /// The graph node that uses it.
        node: String,
    },
    /// An operator the GPU implements is used in a form it does not support (an attribute
    /// value, an element type, a shape computed at run time).
    #[error("node `{node}` ({op}) is not supported on the GPU: {reason}")]
    UnsupportedUse {
        /// The ONNX operator type.
        op: String,
        /// The graph node.
        node: String,
        /// What is not supported.
        reason: String,
    },
    /// The inputs do not match the model (names, element types, shapes).
    #[error("invalid input for the GPU runner: {0}")]
    InputInvalid(String),
    /// Shapes do not fit together inside the graph for these inputs.
    #[error("node `{node}`: {reason}")]
    Shape {
        /// The graph node whose inputs do not fit.
        node: String,
        /// Why.
        reason: String,
    },
    /// A tensor is larger than one GPU buffer binding may be on this device.
    #[error("tensor `{value}` needs {bytes} bytes; this device binds at most {limit} bytes")]
    TooLarge {
        /// The graph value.
        value: String,
        /// Bytes it needs.
        bytes: u64,
        /// The device's limit.
        limit: u64,
    },
    /// A kernel found bad data while running (an index out of range).
    #[error("GPU kernel reported: {0}")]
    Kernel(String),
    /// The device reported a validation, out-of-memory or internal error, or was lost.
    #[error("GPU error: {0}")]
    Backend(String),
    /// The run did not finish in time and its results were abandoned.
    #[error("GPU run did not finish within {0:?}")]
    TimedOut(Duration),
    /// The caller withdrew the run while it waited for the GPU.
    #[error("GPU run was cancelled")]
    Cancelled,
}

impl GpuError {
    /// Whether this error means "run this model on the CPU instead": the graph or its
    /// inputs are fine, the GPU path just cannot take them.
    pub fn is_fallback(&self) -> bool {
        matches!(
            self,
            Self::UnsupportedOperator { .. } | Self::UnsupportedUse { .. } | Self::TooLarge { .. }
        )
    }

    pub(crate) fn unsupported(op: &str, node: &str, reason: impl Into<String>) -> Self {
        Self::UnsupportedUse {
            op: op.to_string(),
            node: node.to_string(),
            reason: reason.into(),
        }
    }
}
