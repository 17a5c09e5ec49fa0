//! Tensors carried as task inputs and outputs.

use serde::{Deserialize, Serialize};

use crate::bounded::{self, MAX_DIMS, MAX_ELEMENTS};
use crate::ids::ContentHash;

/// Most dimensions a tensor on the wire may have.
pub const MAX_RANK: usize = 8;

/// Why a tensor is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The shape has more dimensions than [`MAX_RANK`].
    #[error("tensor has {0} dimensions; at most {MAX_RANK} are allowed")]
    RankTooHigh(usize),
    /// The product of the shape overflows or does not match the data length.
    #[error("shape {shape:?} needs {expected} elements but the data has {actual}")]
    ShapeMismatch {
        /// The declared shape.
        shape: Vec<u64>,
        /// Elements implied by the shape (saturating).
        expected: u64,
        /// Elements present.
        actual: u64,
    },
    /// More elements than the receiver accepts.
    #[error("tensor has {actual} elements; the limit is {limit}")]
    TooManyElements {
        /// Elements present.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// A float is NaN or infinite where a finite value is required.
    #[error("tensor holds a non-finite value at index {0}")]
    NonFinite(usize),
}

/// Element data of a tensor, by element type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorData {
    /// 32-bit floats.
    F32(#[serde(deserialize_with = "bounded::seq::<{ MAX_ELEMENTS }, _, _>")] Vec<f32>),
    /// 64-bit floats.
    F64(#[serde(deserialize_with = "bounded::seq::<{ MAX_ELEMENTS }, _, _>")] Vec<f64>),
    /// 64-bit signed integers (class labels, token ids).
    I64(#[serde(deserialize_with = "bounded::seq::<{ MAX_ELEMENTS }, _, _>")] Vec<i64>),
    /// 32-bit signed integers.
    I32(#[serde(deserialize_with = "bounded::seq::<{ MAX_ELEMENTS }, _, _>")] Vec<i32>),
    /// Bytes (quantised images).
    U8(#[serde(deserialize_with = "bounded::seq::<{ MAX_ELEMENTS }, _, _>")] Vec<u8>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::U8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name, as ONNX spells it.
    pub fn dtype(&self) -> &'static str {
        match self {
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::I64(_) => "int64",
            Self::I32(_) => "int32",
            Self::U8(_) => "uint8",
        }
    }

    /// Bytes per element.
    pub fn element_size(&self) -> usize {
        match self {
            Self::F32(_) | Self::I32(_) => 4,
            Self::F64(_) | Self::I64(_) => 8,
            Self::U8(_) => 1,
        }
    }
}

/// A dense tensor: a shape and row-major data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Dimensions, outermost first.
    #[serde(deserialize_with = "bounded::seq::<{ MAX_DIMS }, _, _>")]
    pub shape: Vec<u64>,
    /// Row-major elements.
    pub data: TensorData,
}

impl Tensor {
    /// A float tensor; checks that the shape matches the data.
    pub fn f32(shape: Vec<u64>, values: Vec<f32>) -> Result<Self, TensorError> {
        let t = Self {
            shape,
            data: TensorData::F32(values),
        };
        t.check_shape()?;
        Ok(t)
    }

    /// Elements implied by the shape, saturating on overflow.
    pub fn shape_elements(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, d| acc.saturating_mul(*d))
    }

    /// Checks rank and that the shape matches the data length.
    pub fn check_shape(&self) -> Result<(), TensorError> {
        if self.shape.len() > MAX_RANK {
            return Err(TensorError::RankTooHigh(self.shape.len()));
        }
        let expected = self.shape_elements();
        let actual = self.data.len() as u64;
        if expected != actual {
            return Err(TensorError::ShapeMismatch {
                shape: self.shape.clone(),
                expected,
                actual,
            });
        }
        Ok(())
    }

    /// Full structural check: rank, shape, element limit and finite floats.
    pub fn validate(&self, max_elements: u64) -> Result<(), TensorError> {
        self.check_shape()?;
        let actual = self.data.len() as u64;
        if actual > max_elements {
            return Err(TensorError::TooManyElements {
                actual,
                limit: max_elements,
            });
        }
        let bad = match &self.data {
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::F64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        };
        match bad {
            Some(i) => Err(TensorError::NonFinite(i)),
            None => Ok(()),
        }
    }
}

/// A tensor with the graph name it binds to (inputs) or came from (outputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// The ONNX graph input or output name.
    #[serde(deserialize_with = "bounded::text")]
    pub name: String,
    /// The value.
    pub tensor: Tensor,
}

/// The content hash of a list of tensors: blake3 of their postcard encoding.
///
/// Receipts commit to inputs and outputs through this hash.
pub fn tensors_hash(tensors: &[NamedTensor]) -> ContentHash {
    match postcard::to_allocvec(tensors) {
        Ok(bytes) => ContentHash::of(&bytes),
        // Encoding plain vectors cannot fail; hash the debug form rather than panic.
        Err(_) => ContentHash::of(format!("{tensors:?}").as_bytes()),
    }
}

/// How close two float answers must be to count as the same: `|got − expected| ≤ abs +
/// rel·|expected|`; NaN agrees only with NaN and an infinity only with itself. Integers are
/// compared exactly, not through this. One bound for the conformance zoo (our engine against
/// onnxruntime), the GPU path (against tract) and the requesters' spot checks (one worker's
/// answer against another's), so honest engines agree wherever they are compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tolerance {
    /// Absolute slack.
    pub abs: f64,
    /// Relative slack, times `|expected|`.
    pub rel: f64,
}

impl Default for Tolerance {
    /// float32: 1e-4 absolute plus 1e-3 relative. Two runtimes sum in different orders and
    /// fuse differently, so bit equality is not expected; a wrong kernel is off by far more.
    fn default() -> Self {
        Self {
            abs: 1e-4,
            rel: 1e-3,
        }
    }
}

impl Tolerance {
    /// Whether `got` agrees with `expected`.
    pub fn agrees(self, got: f64, expected: f64) -> bool {
        if got.is_nan() || expected.is_nan() {
            return got.is_nan() && expected.is_nan();
        }
        // An infinite `expected` would make the relative bound infinite and let anything agree.
        if got.is_infinite() || expected.is_infinite() {
            return got == expected;
        }
        (got - expected).abs() <= self.abs + self.rel * expected.abs()
    }

    /// Whether both slacks are finite and not negative.
    pub fn is_usable(self) -> bool {
        self.abs.is_finite() && self.abs >= 0.0 && self.rel.is_finite() && self.rel >= 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_bounds_floats_and_nan_agrees_only_with_nan() {
        let t = Tolerance::default();
        assert!(t.agrees(1.0005, 1.0));
        assert!(!t.agrees(1.01, 1.0));
        assert!(t.agrees(f64::INFINITY, f64::INFINITY));
        assert!(!t.agrees(f64::INFINITY, f64::NEG_INFINITY));
        assert!(!t.agrees(5.0, f64::INFINITY) && !t.agrees(f64::INFINITY, 5.0));
        assert!(!t.agrees(f64::MAX, f64::INFINITY));
        assert!(t.agrees(f64::NAN, f64::NAN));
        assert!(!t.agrees(f64::NAN, 0.0) && !t.agrees(0.0, f64::NAN));
        assert!(t.is_usable());
        assert!(
            !Tolerance {
                abs: -1.0,
                rel: 0.0
            }
            .is_usable()
        );
        assert!(
            !Tolerance {
                abs: 0.0,
                rel: f64::NAN
            }
            .is_usable()
        );
    }

    #[test]
    fn shape_must_match_data() {
        assert!(Tensor::f32(vec![2, 3], vec![0.0; 6]).is_ok());
        let e = Tensor::f32(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert!(matches!(
            e,
            TensorError::ShapeMismatch {
                expected: 6,
                actual: 5,
                ..
            }
        ));
    }

    #[test]
    fn overflowing_shape_is_rejected_not_panicking() {
        let t = Tensor {
            shape: vec![u64::MAX, u64::MAX],
            data: TensorData::U8(vec![1]),
        };
        assert!(t.check_shape().is_err());
    }

    #[test]
    fn limits_and_non_finite() {
        let t = Tensor::f32(vec![4], vec![1.0, 2.0, f32::NAN, 0.0]).unwrap();
        assert_eq!(t.validate(10), Err(TensorError::NonFinite(2)));
        let t = Tensor::f32(vec![4], vec![0.0; 4]).unwrap();
        assert!(matches!(
            t.validate(3),
            Err(TensorError::TooManyElements { .. })
        ));
        let t = Tensor {
            shape: vec![1; 9],
            data: TensorData::I64(vec![1]),
        };
        assert_eq!(t.validate(10), Err(TensorError::RankTooHigh(9)));
    }

    #[test]
    fn hash_changes_with_content() {
        let a = vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::f32(vec![1], vec![1.0]).unwrap(),
        }];
        let mut b = a.clone();
        b[0].tensor.data = TensorData::F32(vec![2.0]);
        assert_ne!(tensors_hash(&a), tensors_hash(&b));
        assert_eq!(tensors_hash(&a), tensors_hash(&a.clone()));
    }
}
