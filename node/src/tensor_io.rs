//! Task inputs from files and outputs for people: JSON tensors in, class and probability out.
//!
//! Accepted input JSON:
//! - a nested array of numbers, e.g. `[[0, 3.5, …]]` (shape from the nesting, float32);
//! - one tensor object `{"shape": [1, 64], "data": [...], "dtype": "float32", "name": "x"}`
//!   (`dtype` defaults to float32; `name` defaults to the model's first input);
//! - a list of such objects, or an object mapping input names to arrays or tensor objects.

use crank_protocol::{NamedTensor, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why an input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The text is not JSON.
    #[error("input is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is not a tensor.
    #[error("input is not a tensor: {0}")]
    Shape(String),
}

/// A tensor as JSON: shape, dtype, flat data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonTensor {
    /// Graph input or output name (optional on input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Element type (float32, float64, int64, int32, uint8).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Row-major values.
    pub data: Vec<Value>,
}

fn default_dtype() -> String {
    "float32".into()
}

fn flatten(
    v: &Value,
    depth: usize,
    shape: &mut Vec<u64>,
    out: &mut Vec<f64>,
) -> Result<(), InputError> {
    match v {
        Value::Number(n) => {
            if depth != shape.len() {
                return Err(InputError::Shape("ragged nested array".into()));
            }
            out.push(
                n.as_f64()
                    .ok_or_else(|| InputError::Shape(format!("{n} is not a number")))?,
            );
            Ok(())
        }
        Value::Array(items) => {
            if depth == shape.len() {
                if !out.is_empty() {
                    return Err(InputError::Shape("ragged nested array".into()));
                }
                shape.push(items.len() as u64);
            } else if shape.get(depth) != Some(&(items.len() as u64)) {
                return Err(InputError::Shape(
                    "ragged nested array: rows differ in length".into(),
                ));
            }
            if depth >= crank_protocol::tensor::MAX_RANK {
                return Err(InputError::Shape("too many dimensions".into()));
            }
            for item in items {
                flatten(item, depth + 1, shape, out)?;
            }
            Ok(())
        }
        other => Err(InputError::Shape(format!(
            "expected numbers, found {other}"
        ))),
    }
}

fn from_nested(v: &Value) -> Result<Tensor, InputError> {
    let mut shape = Vec::new();
    let mut values = Vec::new();
    flatten(v, 0, &mut shape, &mut values)?;
    Ok(Tensor {
        shape,
        data: TensorData::F32(values.into_iter().map(|x| x as f32).collect()),
    })
}

fn numbers<T>(data: &[Value], conv: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>, InputError> {
    data.iter()
        .map(|v| conv(v).ok_or_else(|| InputError::Shape(format!("{v} does not fit the dtype"))))
        .collect()
}

fn from_object(t: &JsonTensor) -> Result<Tensor, InputError> {
    let data = match t.dtype.as_str() {
        "float32" | "f32" => TensorData::F32(numbers(&t.data, |v| v.as_f64().map(|x| x as f32))?),
        "float64" | "f64" => TensorData::F64(numbers(&t.data, Value::as_f64)?),
        "int64" | "i64" => TensorData::I64(numbers(&t.data, Value::as_i64)?),
        "int32" | "i32" => TensorData::I32(numbers(&t.data, |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })?),
        "uint8" | "u8" => TensorData::U8(numbers(&t.data, |v| {
            v.as_u64().and_then(|x| u8::try_from(x).ok())
        })?),
        other => return Err(InputError::Shape(format!("unknown dtype {other:?}"))),
    };
    let tensor = Tensor {
        shape: t.shape.clone(),
        data,
    };
    tensor
        .check_shape()
        .map_err(|e| InputError::Shape(e.to_string()))?;
    Ok(tensor)
}

fn tensor_value(v: &Value) -> Result<(Option<String>, Tensor), InputError> {
    if v.is_array() {
        return Ok((None, from_nested(v)?));
    }
    let t: JsonTensor = serde_json::from_value(v.clone())?;
    Ok((t.name.clone(), from_object(&t)?))
}

/// Parses input JSON. Unnamed tensors take `default_names` in order (the model's inputs).
pub fn parse_inputs(text: &str, default_names: &[String]) -> Result<Vec<NamedTensor>, InputError> {
    let v: Value = serde_json::from_str(text)?;
    let mut unnamed = default_names.iter();
    let mut name_or_default = |name: Option<String>| -> Result<String, InputError> {
        match name {
            Some(n) => Ok(n),
            None => unnamed.next().cloned().ok_or_else(|| {
                InputError::Shape("more unnamed tensors than the model has inputs".into())
            }),
        }
    };
    let mut out = Vec::new();
    match &v {
        Value::Object(map) if !map.contains_key("shape") => {
            for (name, value) in map {
                let (_, tensor) = tensor_value(value)?;
                out.push(NamedTensor {
                    name: name.clone(),
                    tensor,
                });
            }
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            for item in items {
                let (name, tensor) = tensor_value(item)?;
                out.push(NamedTensor {
                    name: name_or_default(name)?,
                    tensor,
                });
            }
        }
        other => {
            let (name, tensor) = tensor_value(other)?;
            out.push(NamedTensor {
                name: name_or_default(name)?,
                tensor,
            });
        }
    }
    Ok(out)
}

/// An output as JSON (flat data with shape).
pub fn to_json(t: &NamedTensor) -> JsonTensor {
    let data = match &t.tensor.data {
        TensorData::F32(v) => v.iter().map(|x| Value::from(f64::from(*x))).collect(),
        TensorData::F64(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::I64(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::I32(v) => v.iter().map(|x| Value::from(*x)).collect(),
        TensorData::U8(v) => v.iter().map(|x| Value::from(*x)).collect(),
    };
    JsonTensor {
        name: Some(t.name.clone()),
        shape: t.tensor.shape.clone(),
        dtype: t.tensor.data.dtype().into(),
        data,
    }
}

/// A classifier's answer for one row of the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Winning class index (or the model's own label output).
    pub class: i64,
    /// Its probability.
    pub probability: f32,
}

/// Reads class and probability per row when the outputs look like a classifier's: a
/// `[rows, classes]` float tensor of probabilities (each row sums to about 1), optionally
/// beside an int64 label tensor.
pub fn predictions(outputs: &[NamedTensor]) -> Option<Vec<Prediction>> {
    let probs = outputs
        .iter()
        .find_map(|o| match (&o.tensor.data, o.tensor.shape.as_slice()) {
            (TensorData::F32(v), [rows, classes]) if *classes > 1 && !v.is_empty() => {
                let c = usize::try_from(*classes).ok()?;
                let rows_ok = v.chunks(c).all(|r| {
                    (r.iter().sum::<f32>() - 1.0).abs() < 1e-3 && r.iter().all(|p| *p >= -1e-6)
                });
                (rows_ok && v.len() as u64 == rows * classes).then_some((v, c))
            }
            _ => None,
        })?;
    let labels = outputs.iter().find_map(|o| match &o.tensor.data {
        TensorData::I64(v) if o.tensor.shape.len() == 1 => Some(v),
        _ => None,
    });
    let (v, c) = probs;
    Some(
        v.chunks(c)
            .enumerate()
            .map(|(i, row)| {
                let (best, p) = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0usize, f32::MIN),
                        |acc, (j, p)| if *p > acc.1 { (j, *p) } else { acc },
                    );
                let class = labels
                    .and_then(|l| l.get(i).copied())
                    .unwrap_or(best as i64);
                Prediction {
                    class,
                    probability: p,
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_arrays_take_the_model_input_name() {
        let t = parse_inputs("[[1, 2, 3], [4, 5, 6]]", &["x".into()]).unwrap();
        assert_eq!(t[0].name, "x");
        assert_eq!(t[0].tensor.shape, vec![2, 3]);
    }

    #[test]
    fn objects_lists_and_maps() {
        let t = parse_inputs(
            r#"{"shape":[2],"dtype":"int64","data":[1,2]}"#,
            &["ids".into()],
        )
        .unwrap();
        assert_eq!(t[0].tensor.data, TensorData::I64(vec![1, 2]));
        let t = parse_inputs(r#"{"a":[[1.0]],"b":{"shape":[1],"data":[2]}}"#, &[]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "a");
    }

    #[test]
    fn bad_inputs_are_explained() {
        assert!(
            parse_inputs("[[1,2],[3]]", &["x".into()])
                .unwrap_err()
                .to_string()
                .contains("ragged")
        );
        assert!(parse_inputs("{", &["x".into()]).is_err());
        assert!(parse_inputs(r#"["a"]"#, &["x".into()]).is_err());
        assert!(parse_inputs(r#"{"shape":[3],"data":[1,2]}"#, &["x".into()]).is_err());
        assert!(
            parse_inputs("[1]", &[])
                .unwrap_err()
                .to_string()
                .contains("more unnamed")
        );
    }

    #[test]
    fn classifier_outputs_become_predictions() {
        let outs = vec![
            NamedTensor {
                name: "label".into(),
                tensor: Tensor {
                    shape: vec![1],
                    data: TensorData::I64(vec![7]),
                },
            },
            NamedTensor {
                name: "probabilities".into(),
                tensor: Tensor::f32(vec![1, 3], vec![0.1, 0.2, 0.7]).unwrap(),
            },
        ];
        assert_eq!(
            predictions(&outs),
            Some(vec![Prediction {
                class: 7,
                probability: 0.7
            }])
        );
        let raw = vec![NamedTensor {
            name: "y".into(),
            tensor: Tensor::f32(vec![1, 2], vec![3.0, 4.0]).unwrap(),
        }];
        assert_eq!(predictions(&raw), None);
    }
}
