//! The conformance zoo: public ONNX models with a seeded input each and the outputs
//! onnxruntime computed for it, assembled by `scripts/zoo.py` (from models shipped inside
//! packages on the package registries, plus a few graphs built with `onnx.helper`).
//!
//! The zoo tests, the zoo benchmark and the mesh's zoo test read it through [`Zoo::open`];
//! [`agreement`] compares the engine's outputs with onnxruntime's within [`Tolerance`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crank_protocol::{NamedTensor, Tensor, TensorData};
use serde::Deserialize;

/// Where the zoo lives unless `CRANK_ZOO` says otherwise.
pub const DEFAULT_DIR: &str = "/var/tmp/crank-zoo";

/// The zoo's directory: `$CRANK_ZOO`, else [`DEFAULT_DIR`].
pub fn dir() -> PathBuf {
    std::env::var_os("CRANK_ZOO").map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

/// Why the zoo could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    /// The manifest or a file is missing or unreadable.
    #[error("{path}: {source} (assemble the zoo with `.venv/bin/python scripts/zoo.py`)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest or a tensor file does not match what it declares.
    #[error("zoo manifest: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct Manifest {
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
struct RawModel {
    name: String,
    file: String,
    source: String,
    bytes: u64,
    ops: BTreeMap<String, u64>,
    inputs: Vec<RawTensor>,
    outputs: Vec<RawTensor>,
    ort_median_us: f64,
}

#[derive(Deserialize)]
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    file: String,
}

/// One zoo model with its input and onnxruntime's outputs for it.
#[derive(Debug, Clone)]
pub struct ZooModel {
    /// Short name (`ppocr-v4-rec`).
    pub name: String,
    /// Where it came from (package and version, or how it was built).
    pub source: String,
    /// The ONNX file.
    pub path: PathBuf,
    /// Its size, bytes.
    pub bytes: u64,
    /// Operator counts in the graph.
    pub ops: BTreeMap<String, u64>,
    /// The input the zoo runs it on.
    pub inputs: Vec<NamedTensor>,
    /// onnxruntime's outputs for that input.
    pub expected: Vec<NamedTensor>,
    /// onnxruntime's median single-thread latency when the zoo was assembled, µs.
    pub ort_median_us: f64,
}

/// The assembled zoo.
#[derive(Debug, Clone)]
pub struct Zoo {
    /// Its directory.
    pub dir: PathBuf,
    /// Its models, in manifest order.
    pub models: Vec<ZooModel>,
}

impl Zoo {
    /// Reads the zoo at `dir` (see [`dir`]).
    pub fn open(dir: &Path) -> Result<Self, ZooError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ZooError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| ZooError::Invalid(e.to_string()))?;
        let models = manifest
            .models
            .into_iter()
            .map(|m| {
                Ok(ZooModel {
                    inputs: m
                        .inputs
                        .iter()
                        .map(|t| read_tensor(dir, t))
                        .collect::<Result<_, _>>()?,
                    expected: m
                        .outputs
                        .iter()
                        .map(|t| read_tensor(dir, t))
                        .collect::<Result<_, _>>()?,
                    path: dir.join(&m.file),
                    name: m.name,
                    source: m.source,
                    bytes: m.bytes,
                    ops: m.ops,
                    ort_median_us: m.ort_median_us,
                })
            })
            .collect::<Result<_, ZooError>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            models,
        })
    }
}

fn read_tensor(dir: &Path, t: &RawTensor) -> Result<NamedTensor, ZooError> {
    let path = dir.join(&t.file);
    let bytes = std::fs::read(&path).map_err(|source| ZooError::Io {
        path: path.clone(),
        source,
    })?;
    fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes
            .chunks_exact(N)
            .map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N]))
    }
    let data = match t.dtype.as_str() {
        "float32" => TensorData::F32(words::<4>(&bytes).map(f32::from_le_bytes).collect()),
        "float64" => TensorData::F64(words::<8>(&bytes).map(f64::from_le_bytes).collect()),
        "int64" => TensorData::I64(words::<8>(&bytes).map(i64::from_le_bytes).collect()),
        "int32" => TensorData::I32(words::<4>(&bytes).map(i32::from_le_bytes).collect()),
        "uint8" => TensorData::U8(bytes.clone()),
        // onnxruntime returns bool outputs; compare them as bytes.
        "bool" => TensorData::U8(bytes.clone()),
        other => {
            return Err(ZooError::Invalid(format!(
                "{}: dtype {other} is not carried on the wire",
                t.name
            )));
        }
    };
    let tensor = Tensor {
        shape: t.shape.clone(),
        data,
    };
    tensor
        .check_shape()
        .map_err(|e| ZooError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(NamedTensor {
        name: t.name.clone(),
        tensor,
    })
}

/// How close the engine's outputs must be to onnxruntime's: floats within
/// `abs + rel * |expected|`, integers exactly.
pub use crank_protocol::Tolerance;

/// How far one output was from onnxruntime's.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// Output name.
    pub name: String,
    /// The largest absolute difference (0 for exact integer agreement).
    pub max_abs: f64,
    /// Elements outside the tolerance.
    pub outside: usize,
    /// Elements compared.
    pub elements: usize,
}

/// Compares `got` with `expected` output by output (matched by position, since runtimes may
/// name outputs differently): same shapes and element types, values within `tol`.
pub fn agreement(
    got: &[NamedTensor],
    expected: &[NamedTensor],
    tol: Tolerance,
) -> Result<Vec<Agreement>, String> {
    if got.len() != expected.len() {
        return Err(format!(
            "{} outputs, onnxruntime gave {}",
            got.len(),
            expected.len()
        ));
    }
    got.iter()
        .zip(expected)
        .map(|(g, e)| {
            if g.tensor.shape != e.tensor.shape {
                return Err(format!(
                    "output `{}` has shape {:?}, onnxruntime's `{}` has {:?}",
                    g.name, g.tensor.shape, e.name, e.tensor.shape
                ));
            }
            let (max_abs, outside) = match (&g.tensor.data, &e.tensor.data) {
                (TensorData::F32(a), TensorData::F32(b)) => floats(
                    a.iter().map(|v| f64::from(*v)),
                    b.iter().map(|v| f64::from(*v)),
                    tol,
                ),
                (TensorData::F64(a), TensorData::F64(b)) => {
                    floats(a.iter().copied(), b.iter().copied(), tol)
                }
                (a, b) if a.dtype() == b.dtype() => {
                    let diff = match (a, b) {
                        (TensorData::I64(a), TensorData::I64(b)) => {
                            a.iter().zip(b).filter(|(x, y)| x != y).count()
                        }
                        (TensorData::I32(a), TensorData::I32(b)) => {
                            a.iter().zip(b).filter(|(x, y)| x != y).count()
                        }
                        (TensorData::U8(a), TensorData::U8(b)) => {
                            a.iter().zip(b).filter(|(x, y)| x != y).count()
                        }
                        _ => 0,
                    };
                    (if diff > 0 { f64::INFINITY } else { 0.0 }, diff)
                }
                (a, b) => {
                    return Err(format!(
                        "output `{}` is {}, onnxruntime's is {}",
                        g.name,
                        a.dtype(),
                        b.dtype()
                    ));
                }
            };
            Ok(Agreement {
                name: g.name.clone(),
                max_abs,
                outside,
                elements: g.tensor.data.len(),
            })
        })
        .collect()
}

fn floats(
    a: impl Iterator<Item = f64>,
    b: impl Iterator<Item = f64>,
    tol: Tolerance,
) -> (f64, usize) {
    let mut max_abs = 0f64;
    let mut outside = 0usize;
    for (x, y) in a.zip(b) {
        let d = (x - y).abs();
        let ok = tol.agrees(x, y);
        if !ok {
            outside = outside.saturating_add(1);
        }
        if d.is_finite() {
            max_abs = max_abs.max(d);
        } else if !ok {
            max_abs = f64::INFINITY;
        }
    }
    (max_abs, outside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: Vec<u64>, v: Vec<f32>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: Tensor::f32(shape, v).unwrap(),
        }
    }

    #[test]
    fn agreement_counts_what_is_outside_the_tolerance() {
        let want = [t("y", vec![3], vec![1.0, 100.0, 0.0])];
        let close = [t("out", vec![3], vec![1.00005, 100.05, 0.00002])];
        let a = agreement(&close, &want, Tolerance::default()).unwrap();
        assert_eq!(a[0].outside, 0);
        let far = [t("out", vec![3], vec![1.01, 100.0, f32::NAN])];
        let a = agreement(&far, &want, Tolerance::default()).unwrap();
        assert_eq!(a[0].outside, 2);
        assert!(
            agreement(
                &[t("y", vec![1, 3], vec![0.0; 3])],
                &want,
                Tolerance::default()
            )
            .is_err()
        );
        assert!(agreement(&[], &want, Tolerance::default()).is_err());
    }
}
