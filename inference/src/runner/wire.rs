//! The runner protocol: length-prefixed postcard frames on the runner's stdin and stdout.
//!
//! A frame is a little-endian `u32` byte count followed by that many bytes of postcard.
//! Both sides refuse a frame longer than their limit before reading it, and read the body
//! incrementally, so a lying length prefix cannot make either side allocate it up front.

use std::io::{Read, Write};

use crank_protocol::{ModelId, NamedTensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::InferenceError;
use crate::model::{Dim, ModelInfo, TensorInfo};

/// What the parent tells a runner once, before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// Address-space limit the runner applies to itself, bytes.
    pub memory_bytes: u64,
    /// CPU-time backstop (`RLIMIT_CPU`), seconds over the runner's whole life.
    pub cpu_secs: u64,
    /// Threads one run may use for its matrix products.
    pub threads: usize,
    /// Loaded plans the runner keeps.
    pub plan_cache_entries: usize,
    /// The batching probe's budget in elements; `None` disables the probe.
    pub probe_elements: Option<u64>,
    /// Largest request frame the runner accepts, bytes.
    pub max_request_bytes: u64,
    /// The ONNX Runtime library to load before confinement, when the engine has that path.
    pub onnxruntime: Option<std::path::PathBuf>,
}

/// Which runtime a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Backend {
    /// tract (batches, runs checked between operators).
    Tract,
    /// ONNX Runtime (one job per run).
    Onnxruntime,
}

/// A request from the parent, as sent (borrowing the parent's buffers).
#[derive(Debug, Serialize)]
pub(crate) enum RequestRef<'a, 'b> {
    /// Load a model (if not cached) and describe it.
    Load {
        /// The runtime to load it in.
        backend: Backend,
        /// The model's content id.
        model: [u8; 32],
        /// Its bytes, when the runner asked for them.
        bytes: Option<&'b [u8]>,
    },
    /// Run a group of jobs (several only for a batchable model) as one batch.
    Run {
        /// The runtime to run it on.
        backend: Backend,
        /// The model's content id.
        model: [u8; 32],
        /// Its bytes, when the runner asked for them.
        bytes: Option<&'b [u8]>,
        /// Each job's inputs.
        jobs: &'a [&'a [NamedTensor]],
        /// The run-time cap the runner checks between operators, microseconds.
        max_run_micros: u64,
    },
}

/// A request from the parent, as received; the same layout as [`RequestRef`].
#[derive(Debug, Deserialize)]
pub(crate) enum Request {
    /// See [`RequestRef::Load`].
    Load {
        backend: Backend,
        model: [u8; 32],
        bytes: Option<Vec<u8>>,
    },
    /// See [`RequestRef::Run`].
    Run {
        backend: Backend,
        model: [u8; 32],
        bytes: Option<Vec<u8>>,
        jobs: Vec<Vec<NamedTensor>>,
        max_run_micros: u64,
    },
}

/// Which confinements a runner managed to apply to itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// The address-space limit (`RLIMIT_AS`) is in force.
    pub memory_limit: bool,
    /// The CPU-time backstop (`RLIMIT_CPU`) is in force.
    pub cpu_limit: bool,
    /// No new files may be written (`RLIMIT_FSIZE` 0), opened beyond a few descriptors
    /// (`RLIMIT_NOFILE`), no processes forked (`RLIMIT_NPROC` 0) and no core dumped.
    pub file_limits: bool,
    /// A seccomp filter allows only the system calls inference needs; a probe `open` of
    /// `/dev/null` after it was installed failed.
    pub seccomp: bool,
    /// What could not be applied, and why.
    pub notes: Vec<String>,
}

/// A runner's answer to one request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The runner applied its sandbox and waits for requests.
    Ready(SandboxReport),
    /// The runner does not hold the model; send the request again with its bytes.
    NeedModel,
    /// The answer to a load.
    Loaded(Result<WireInfo, InferenceError>),
    /// The answer to a run.
    Ran(Result<Ran, InferenceError>),
}

/// [`ModelInfo`] in a form postcard can carry ([`crate::Dim`] is untagged for JSON, which
/// a format without self-description cannot read back).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireInfo {
    id: ModelId,
    bytes: u64,
    inputs: Vec<WireTensorInfo>,
    outputs: Vec<WireTensorInfo>,
    batchable: bool,
    plan_nodes: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireTensorInfo {
    name: String,
    dtype: String,
    shape: Vec<WireDim>,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireDim {
    Fixed(u64),
    Symbol(String),
}

impl From<&ModelInfo> for WireInfo {
    fn from(m: &ModelInfo) -> Self {
        let tensors = |ts: &[TensorInfo]| {
            ts.iter()
                .map(|t| WireTensorInfo {
                    name: t.name.clone(),
                    dtype: t.dtype.clone(),
                    shape: t
                        .shape
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => WireDim::Fixed(*n),
                            Dim::Symbol(s) => WireDim::Symbol(s.clone()),
                        })
                        .collect(),
                })
                .collect()
        };
        Self {
            id: m.id,
            bytes: m.bytes,
            inputs: tensors(&m.inputs),
            outputs: tensors(&m.outputs),
            batchable: m.batchable,
            plan_nodes: m.plan_nodes,
        }
    }
}

impl From<WireInfo> for ModelInfo {
    fn from(w: WireInfo) -> Self {
        let tensors = |ts: Vec<WireTensorInfo>| {
            ts.into_iter()
                .map(|t| TensorInfo {
                    name: t.name,
                    dtype: t.dtype,
                    shape: t
                        .shape
                        .into_iter()
                        .map(|d| match d {
                            WireDim::Fixed(n) => Dim::Fixed(n),
                            WireDim::Symbol(s) => Dim::Symbol(s),
                        })
                        .collect(),
                })
                .collect()
        };
        Self {
            id: w.id,
            bytes: w.bytes,
            inputs: tensors(w.inputs),
            outputs: tensors(w.outputs),
            batchable: w.batchable,
            plan_nodes: w.plan_nodes,
        }
    }
}

/// The outcome of a run that finished.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ran {
    /// Each job's outputs or its own error (a job whose inputs do not fit the model).
    pub jobs: Vec<Result<Vec<NamedTensor>, InferenceError>>,
    /// Wall time of the run, microseconds.
    pub run_micros: u64,
    /// Thread CPU time of the run, microseconds.
    pub cpu_micros: u64,
    /// CPU time the runner process has used in all, microseconds (counts toward its
    /// `RLIMIT_CPU` backstop).
    pub process_cpu_micros: u64,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The other side closed the pipe between frames.
    #[error("end of stream")]
    Closed,
    /// The pipe failed, or closed inside a frame.
    #[error("pipe: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is longer than this side accepts.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced size, bytes.
        size: u64,
        /// The limit, bytes.
        limit: u64,
    },
    /// The frame's bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Decode(#[from] postcard::Error),
}

/// Writes one frame and flushes it.
pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let body = postcard::to_stdvec(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        size: u64::try_from(body.len()).unwrap_or(u64::MAX),
        limit: u64::from(u32::MAX),
    })?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes.
pub(crate) fn read_frame<T: DeserializeOwned>(
    r: &mut impl Read,
    limit: u64,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let size = u64::from(u32::from_le_bytes(len));
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    // Grows as bytes arrive: the prefix alone never decides an allocation.
    let mut body = Vec::with_capacity(usize::try_from(size.min(1 << 16)).unwrap_or(0));
    r.take(size).read_to_end(&mut body)?;
    if u64::try_from(body.len()).ok() != Some(size) {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crank_protocol::Tensor;

    #[test]
    fn borrowed_requests_decode_as_owned_ones() {
        let inputs = vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::f32(vec![1, 2], vec![1.0, 2.0]).unwrap(),
        }];
        let jobs: Vec<&[NamedTensor]> = vec![&inputs, &inputs];
        let mut buf = Vec::new();
        let req = RequestRef::Run {
            backend: Backend::Onnxruntime,
            model: [7; 32],
            bytes: Some(b"onnx"),
            jobs: &jobs,
            max_run_micros: 5,
        };
        write_frame(&mut buf, &req).unwrap();
        let back: Request = read_frame(&mut &buf[..], 1 << 20).unwrap();
        let Request::Run {
            backend,
            model,
            bytes,
            jobs,
            max_run_micros,
        } = back
        else {
            panic!("wrong variant")
        };
        assert_eq!(backend, Backend::Onnxruntime);
        assert_eq!(model, [7; 32]);
        assert_eq!(bytes.as_deref(), Some(&b"onnx"[..]));
        assert_eq!(jobs, vec![inputs.clone(), inputs]);
        assert_eq!(max_run_micros, 5);
    }

    #[test]
    fn model_signatures_cross_the_pipe() {
        let info = ModelInfo {
            id: ModelId([3; 32]),
            bytes: 10,
            inputs: vec![TensorInfo {
                name: "x".into(),
                dtype: "float32".into(),
                shape: vec![Dim::Symbol("N".into()), Dim::Fixed(64)],
            }],
            outputs: vec![],
            batchable: true,
            plan_nodes: 4,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &Reply::Loaded(Ok(WireInfo::from(&info)))).unwrap();
        let Reply::Loaded(Ok(back)) = read_frame(&mut &buf[..], 1 << 20).unwrap() else {
            panic!("wrong reply")
        };
        assert_eq!(ModelInfo::from(back), info);
    }

    #[test]
    fn oversize_and_truncated_frames_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Reply::NeedModel).unwrap();
        assert!(matches!(
            read_frame::<Reply>(&mut &buf[..], 0),
            Err(FrameError::TooLarge { .. })
        ));
        // A prefix announcing 4 GiB with three bytes behind it: refused without allocating.
        let lie = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            read_frame::<Reply>(&mut &lie[..], u64::MAX),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            read_frame::<Reply>(&mut &[][..], 10),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame::<Reply>(&mut &[1, 0, 0, 0, 200][..], 10),
            Err(FrameError::Decode(_))
        ));
    }
}
