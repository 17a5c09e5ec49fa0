//! Conversions between wire tensors ([`crank_protocol::Tensor`]) and tract tensors.
//!
//! Wire tensors carry f32, f64, i64, i32 or u8 data. Runtime outputs of other element types
//! are widened to the nearest wire type (bool and u16 to i32 via u8/i32, f16 to f32, i8/i16 to
//! i32, u32 and tract's symbolic integers to i64) so that every ONNX classifier output can
//! travel back.

// Sizes here come from untrusted models and inputs: every product and sum is checked.

use crank_protocol::{Tensor as WireTensor, TensorData};
use tract_onnx::prelude::{DatumType, Tensor};

/// Why a tensor could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The wire tensor's shape does not match its data, or has too many dimensions.
    #[error("{0}")]
    Malformed(#[from] crank_protocol::TensorError),
    /// A dimension does not fit in this machine's address space.
    #[error("dimension {0} is too large for this machine")]
    DimensionTooLarge(u64),
    /// The runtime tensor has an element type no wire type can carry.
    #[error("element type {0} cannot be sent as a tensor")]
    UnsupportedType(String),
    /// The runtime refused the data (for example, storage it cannot read back).
    #[error("runtime tensor: {0}")]
    Runtime(String),
}

/// The runtime element type matching a wire tensor's data.
pub fn datum_type(data: &TensorData) -> DatumType {
    match data {
        TensorData::F32(_) => DatumType::F32,
        TensorData::F64(_) => DatumType::F64,
        TensorData::I64(_) => DatumType::I64,
        TensorData::I32(_) => DatumType::I32,
        TensorData::U8(_) => DatumType::U8,
    }
}

/// The ONNX name of a runtime element type, as [`TensorData::dtype`] spells the wire ones.
pub fn dtype_name(dt: DatumType) -> String {
    match dt {
        DatumType::F32 => "float32".into(),
        DatumType::F64 => "float64".into(),
        DatumType::F16 => "float16".into(),
        DatumType::I64 => "int64".into(),
        DatumType::I32 => "int32".into(),
        DatumType::I16 => "int16".into(),
        DatumType::I8 => "int8".into(),
        DatumType::U64 => "uint64".into(),
        DatumType::U32 => "uint32".into(),
        DatumType::U16 => "uint16".into(),
        DatumType::U8 => "uint8".into(),
        DatumType::Bool => "bool".into(),
        // Integer values tract tracks symbolically; they arrive as int64.
        DatumType::TDim => "int64".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The shape of a wire tensor in the runtime's units.
pub fn shape_usize(shape: &[u64]) -> Result<Vec<usize>, ConvertError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| ConvertError::DimensionTooLarge(d)))
        .collect()
}

/// Copies a wire tensor into a runtime tensor (checks shape against data first).
pub fn to_tract(t: &WireTensor) -> Result<Tensor, ConvertError> {
    t.check_shape()?;
    let shape = shape_usize(&t.shape)?;
    let r = match &t.data {
        TensorData::F32(v) => Tensor::from_shape(&shape, v),
        TensorData::F64(v) => Tensor::from_shape(&shape, v),
        TensorData::I64(v) => Tensor::from_shape(&shape, v),
        TensorData::I32(v) => Tensor::from_shape(&shape, v),
        TensorData::U8(v) => Tensor::from_shape(&shape, v),
    };
    r.map_err(|e| ConvertError::Runtime(format!("{e:#}")))
}

/// Copies rows `[start, end)` along axis 0 of a runtime tensor into a wire tensor; the whole
/// tensor when `rows` is `None`.
pub fn from_tract(t: &Tensor, rows: Option<(usize, usize)>) -> Result<WireTensor, ConvertError> {
    let shape = t.shape();
    let dims = || -> Vec<u64> {
        shape
            .iter()
            .map(|&d| u64::try_from(d).unwrap_or(u64::MAX))
            .collect()
    };
    let (lo, hi, out_shape) = match rows {
        None => (0, t.len(), dims()),
        Some((start, end)) => {
            let bad = || {
                ConvertError::Runtime(format!(
                    "rows {start}..{end} are outside a tensor of shape {shape:?}"
                ))
            };
            let row = shape
                .iter()
                .skip(1)
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(bad)?;
            if shape.is_empty() || start > end || end > shape[0] {
                return Err(bad());
            }
            let mut s = dims();
            s[0] = u64::try_from(end.checked_sub(start).ok_or_else(bad)?).map_err(|_| bad())?;
            let lo = start.checked_mul(row).ok_or_else(bad)?;
            let hi = end.checked_mul(row).ok_or_else(bad)?;
            (lo, hi, s)
        }
    };
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(slice::<f32>(t, lo, hi)?),
        DatumType::F64 => TensorData::F64(slice::<f64>(t, lo, hi)?),
        DatumType::I64 => TensorData::I64(slice::<i64>(t, lo, hi)?),
        DatumType::I32 => TensorData::I32(slice::<i32>(t, lo, hi)?),
        DatumType::U8 => TensorData::U8(slice::<u8>(t, lo, hi)?),
        DatumType::Bool => TensorData::U8(cast::<u8>(t, DatumType::U8, lo, hi)?),
        DatumType::F16 => TensorData::F32(cast::<f32>(t, DatumType::F32, lo, hi)?),
        DatumType::I8 | DatumType::I16 | DatumType::U16 => {
            TensorData::I32(cast::<i32>(t, DatumType::I32, lo, hi)?)
        }
        // tract types some integer results (ArgMax indices, shapes) as symbolic dimensions;
        // at run time they are plain integers.
        DatumType::U32 | DatumType::TDim => {
            TensorData::I64(cast::<i64>(t, DatumType::I64, lo, hi)?)
        }
        other => return Err(ConvertError::UnsupportedType(dtype_name(other))),
    };
    Ok(WireTensor {
        shape: out_shape,
        data,
    })
}

fn slice<T: tract_onnx::prelude::Datum + Copy>(
    t: &Tensor,
    lo: usize,
    hi: usize,
) -> Result<Vec<T>, ConvertError> {
    let view = t
        .try_as_plain_ram()
        .map_err(|e| ConvertError::Runtime(format!("{e:#}")))?;
    let all = view
        .as_slice::<T>()
        .map_err(|e| ConvertError::Runtime(format!("{e:#}")))?;
    all.get(lo..hi)
        .map(<[T]>::to_vec)
        .ok_or_else(|| ConvertError::Runtime(format!("elements {lo}..{hi} out of range")))
}

fn cast<T: tract_onnx::prelude::Datum + Copy>(
    t: &Tensor,
    to: DatumType,
    lo: usize,
    hi: usize,
) -> Result<Vec<T>, ConvertError> {
    let cast = t
        .cast_to_dt(to)
        .map_err(|e| ConvertError::Runtime(format!("{e:#}")))?;
    slice::<T>(&cast, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tract_onnx::prelude::TDim;

    fn round_trip(t: WireTensor) {
        let tract = to_tract(&t).unwrap();
        assert_eq!(tract.shape().len(), t.shape.len());
        assert_eq!(tract.datum_type(), datum_type(&t.data));
        assert_eq!(from_tract(&tract, None).unwrap(), t);
    }

    #[test]
    fn every_wire_type_round_trips() {
        round_trip(WireTensor::f32(vec![2, 2], vec![1.0, -2.5, 3.25, 0.0]).unwrap());
        round_trip(WireTensor {
            shape: vec![3],
            data: TensorData::F64(vec![1.0, 2.0, f64::MAX]),
        });
        round_trip(WireTensor {
            shape: vec![1, 2],
            data: TensorData::I64(vec![i64::MIN, 7]),
        });
        round_trip(WireTensor {
            shape: vec![2],
            data: TensorData::I32(vec![-1, i32::MAX]),
        });
        round_trip(WireTensor {
            shape: vec![2, 1, 2],
            data: TensorData::U8(vec![0, 1, 254, 255]),
        });
        // A scalar.
        round_trip(WireTensor {
            shape: vec![],
            data: TensorData::F32(vec![4.0]),
        });
    }

    #[test]
    fn malformed_wire_tensors_are_errors() {
        let bad = WireTensor {
            shape: vec![2, 3],
            data: TensorData::F32(vec![0.0; 5]),
        };
        assert!(matches!(to_tract(&bad), Err(ConvertError::Malformed(_))));
    }

    #[test]
    fn rows_are_sliced_along_the_first_axis() {
        let t =
            to_tract(&WireTensor::f32(vec![3, 2], vec![0., 1., 2., 3., 4., 5.]).unwrap()).unwrap();
        let mid = from_tract(&t, Some((1, 3))).unwrap();
        assert_eq!(
            mid,
            WireTensor::f32(vec![2, 2], vec![2., 3., 4., 5.]).unwrap()
        );
        assert!(from_tract(&t, Some((2, 4))).is_err());
        assert!(from_tract(&t, Some((2, 1))).is_err());
    }

    #[test]
    fn other_runtime_types_are_widened() {
        let b = Tensor::from_shape(&[2], &[true, false]).unwrap();
        assert_eq!(
            from_tract(&b, None).unwrap().data,
            TensorData::U8(vec![1, 0])
        );
        let i = Tensor::from_shape(&[2], &[-3i8, 4]).unwrap();
        assert_eq!(
            from_tract(&i, None).unwrap().data,
            TensorData::I32(vec![-3, 4])
        );
        let d = tract_onnx::prelude::tensor1(&[TDim::from(7i64)]);
        assert_eq!(from_tract(&d, None).unwrap().data, TensorData::I64(vec![7]));
        let u = Tensor::from_shape(&[1], &[u32::MAX]).unwrap();
        assert_eq!(
            from_tract(&u, None).unwrap().data,
            TensorData::I64(vec![i64::from(u32::MAX)])
        );
        let s = tract_onnx::prelude::tensor1(&[String::from("x")]);
        assert!(matches!(
            from_tract(&s, None),
            Err(ConvertError::UnsupportedType(_))
        ));
    }

    proptest! {
        #[test]
        fn f32_round_trips(rows in 1usize..6, cols in 1usize..6, seed in any::<u32>()) {
            let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32) * 0.5 - seed as f32).collect();
            let t = WireTensor::f32(vec![rows as u64, cols as u64], values).unwrap();
            round_trip(t);
        }

        #[test]
        fn i64_rows_split_and_rejoin(rows in 1usize..8, cols in 1usize..5, cut in 0usize..8) {
            let cut = cut.min(rows);
            let values: Vec<i64> = (0..(rows * cols) as i64).collect();
            let wire = WireTensor { shape: vec![rows as u64, cols as u64], data: TensorData::I64(values.clone()) };
            let t = to_tract(&wire).unwrap();
            let a = from_tract(&t, Some((0, cut))).unwrap();
            let b = from_tract(&t, Some((cut, rows))).unwrap();
            let (TensorData::I64(mut x), TensorData::I64(y)) = (a.data, b.data) else { panic!("type changed") };
            x.extend(y);
            prop_assert_eq!(x, values);
        }
    }
}
