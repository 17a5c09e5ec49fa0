//! What an ONNX file declares about its inputs and outputs, and the check a requester runs on
//! the outputs a worker delivers.
//!
//! A worker that returns garbage with a matching hash would otherwise be counter-signed,
//! paid and recorded as a success. The requester holds the model, so it can check what any
//! runtime must deliver, without running the model itself (it may not be able to): every
//! declared output, once, under its name; the element type the wire carries for the declared
//! type; the declared rank; fixed dimensions exactly; named dimensions (`dim_param`) equal to
//! what the task's inputs bound them to, and equal wherever the same name appears again
//! (ONNX gives one name one size within a graph); values within the declared type's range
//! (bools 0 or 1, narrow integers widened on the wire); and floats finite unless the
//! submitter allows otherwise. Dimensions the file leaves unnamed, or names only on the
//! outputs, are data-dependent: they are bounded by the message limits and by consistency,
//! nothing more.
//!
//! Reading the declaration decodes only the graph's inputs, outputs and initializer names:
//! the weights are skipped, so checking every task's outputs costs microseconds, not a parse
//! of the whole model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crank_protocol::{NamedTensor, TensorData};
use prost::Message;
use tract_onnx::pb::{ValueInfoProto, tensor_shape_proto::dimension, type_proto};

/// The model file as far as the declaration goes: the graph's inputs, outputs and the names
/// of its initializers (older files list initializers among the inputs).
#[derive(Clone, PartialEq, Message)]
struct ModelHead {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphHead>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphHead {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<NameOnly>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// A `TensorProto` of which only the name is decoded.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "8")]
    name: String,
}

/// One declared dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredDim {
    /// `dim_value`: this size exactly.
    Fixed(u64),
    /// `dim_param`: one size per run, the same wherever the name appears.
    Named(String),
    /// Neither (or a non-positive `dim_value`, which some exporters write for "dynamic").
    Unknown,
}

impl fmt::Display for DeclaredDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Named(s) => f.write_str(s),
            Self::Unknown => f.write_str("?"),
        }
    }
}

/// One declared input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTensor {
    /// The graph name.
    pub name: String,
    /// The ONNX element type (`TensorProto.DataType`), 0 when the file leaves it out.
    pub elem_type: i32,
    /// The dimensions, or `None` when the file declares no shape (any rank).
    pub shape: Option<Vec<DeclaredDim>>,
}

impl DeclaredTensor {
    fn of(v: &ValueInfoProto) -> Self {
        let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
            Some(type_proto::Value::TensorType(t)) => Some(t),
            _ => None,
        });
        let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(n)) if *n > 0 => {
                        DeclaredDim::Fixed(n.unsigned_abs())
                    }
                    Some(dimension::Value::DimParam(p)) if !p.is_empty() => {
                        DeclaredDim::Named(p.clone())
                    }
                    _ => DeclaredDim::Unknown,
                })
                .collect()
        });
        Self {
            name: v.name.clone(),
            elem_type: tensor.map_or(0, |t| t.elem_type),
            shape,
        }
    }

    fn signature(&self) -> String {
        let shape = self.shape.as_ref().map_or_else(
            || "[any shape]".to_owned(),
            |s| {
                let dims: Vec<String> = s.iter().map(ToString::to_string).collect();
                format!("[{}]", dims.join(","))
            },
        );
        format!("{shape} {}", onnx_type_name(self.elem_type))
    }
}

/// A model's declared inputs (initializers left out) and outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The inputs a task supplies, in graph order.
    pub inputs: Vec<DeclaredTensor>,
    /// The outputs, in graph order.
    pub outputs: Vec<DeclaredTensor>,
}

/// Why a declaration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ONNX model: {0}")]
pub struct DeclarationError(String);

/// Why delivered outputs do not fit the model. The message names the output and what it
/// should have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutputMismatch(String);

/// Whether floats in the outputs may be NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Any NaN or infinity fails the check (the default: no published model we run means
    /// one as an answer, and a cheap cheat is a tensor of NaNs).
    #[default]
    Refuse,
    /// The submitter says the model may produce them (masked scores set to -inf, say).
    Allow,
}

/// Reads what `bytes` declare; weights are skipped, not decoded.
pub fn declared(bytes: &[u8]) -> Result<Declared, DeclarationError> {
    let head = ModelHead::decode(bytes).map_err(|e| DeclarationError(e.to_string()))?;
    let graph = head
        .graph
        .ok_or_else(|| DeclarationError("it has no graph".into()))?;
    let initializers: BTreeSet<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(DeclaredTensor::of)
        .collect();
    let outputs: Vec<DeclaredTensor> = graph.output.iter().map(DeclaredTensor::of).collect();
    if outputs.is_empty() {
        return Err(DeclarationError("its graph declares no outputs".into()));
    }
    Ok(Declared { inputs, outputs })
}

impl Declared {
    /// Checks a worker's `outputs` for a task whose inputs were `inputs`.
    pub fn check_outputs(
        &self,
        inputs: &[NamedTensor],
        outputs: &[NamedTensor],
        non_finite: NonFinite,
    ) -> Result<(), OutputMismatch> {
        let fail = |m: String| Err(OutputMismatch(m));
        // Named dimensions, bound first by the inputs the requester itself sent.
        let mut bound: BTreeMap<&str, (u64, String)> = BTreeMap::new();
        for spec in &self.inputs {
            let (Some(shape), Some(t)) = (&spec.shape, inputs.iter().find(|t| t.name == spec.name))
            else {
                continue;
            };
            for (axis, (d, got)) in shape.iter().zip(&t.tensor.shape).enumerate() {
                if let DeclaredDim::Named(n) = d {
                    bound
                        .entry(n.as_str())
                        .or_insert((*got, format!("input `{}` axis {axis}", spec.name)));
                }
            }
        }
        for t in outputs {
            if !self.outputs.iter().any(|o| o.name == t.name) {
                return fail(format!(
                    "the model has no output `{}`; its outputs are {}",
                    t.name,
                    self.output_names()
                ));
            }
        }
        for spec in &self.outputs {
            let mut given = outputs.iter().filter(|t| t.name == spec.name);
            let Some(t) = given.next() else {
                return fail(format!(
                    "output `{}` {} is missing",
                    spec.name,
                    spec.signature()
                ));
            };
            if given.next().is_some() {
                return fail(format!("output `{}` is delivered twice", spec.name));
            }
            let got = &t.tensor;
            let describe = || {
                let dims: Vec<String> = got.shape.iter().map(ToString::to_string).collect();
                format!("[{}] {}", dims.join(","), got.data.dtype())
            };
            if let Some(want) = wire_dtype(spec.elem_type)
                && want != got.data.dtype()
            {
                return fail(format!(
                    "output `{}` should be {} (carried as {want}), got {}",
                    spec.name,
                    spec.signature(),
                    describe()
                ));
            }
            if let Err(e) = got.check_shape() {
                return fail(format!("output `{}`: {e}", spec.name));
            }
            if let Some(shape) = &spec.shape {
                if shape.len() != got.shape.len() {
                    return fail(format!(
                        "output `{}` should be {}, got {} (rank {} for {})",
                        spec.name,
                        spec.signature(),
                        describe(),
                        got.shape.len(),
                        shape.len()
                    ));
                }
                for (axis, (want, &size)) in shape.iter().zip(&got.shape).enumerate() {
                    match want {
                        DeclaredDim::Fixed(n) if *n != size => {
                            return fail(format!(
                                "output `{}` should be {}, got {} (axis {axis} is {size}, not {n})",
                                spec.name,
                                spec.signature(),
                                describe()
                            ));
                        }
                        DeclaredDim::Named(n) => match bound.get(n.as_str()) {
                            Some((v, by)) if *v != size => {
                                return fail(format!(
                                    "output `{}` should be {}, got {} (axis {axis} is {size}, but {n} = {v} from {by})",
                                    spec.name,
                                    spec.signature(),
                                    describe()
                                ));
                            }
                            Some(_) => {}
                            None => {
                                bound.insert(
                                    n.as_str(),
                                    (size, format!("output `{}` axis {axis}", spec.name)),
                                );
                            }
                        },
                        _ => {}
                    }
                }
            }
            check_values(spec, &got.data, non_finite)?;
        }
        Ok(())
    }

    fn output_names(&self) -> String {
        self.outputs
            .iter()
            .map(|o| format!("`{}` {}", o.name, o.signature()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Values the declared type cannot hold: a bool that is not 0 or 1, a narrow integer out of
/// range after widening, a NaN or infinity where they are refused.
fn check_values(
    spec: &DeclaredTensor,
    data: &TensorData,
    non_finite: NonFinite,
) -> Result<(), OutputMismatch> {
    let out_of_range = |i: usize, v: String| {
        Err(OutputMismatch(format!(
            "output `{}` element {i} is {v}, which a {} cannot hold",
            spec.name,
            onnx_type_name(spec.elem_type)
        )))
    };
    let range: Option<(i64, i64)> = match spec.elem_type {
        BOOL => Some((0, 1)),
        INT8 => Some((i8::MIN.into(), i8::MAX.into())),
        INT16 => Some((i16::MIN.into(), i16::MAX.into())),
        UINT16 => Some((0, u16::MAX.into())),
        UINT32 => Some((0, u32::MAX.into())),
        _ => None,
    };
    match data {
        TensorData::F32(v) if non_finite == NonFinite::Refuse => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return non_finite_at(spec, i, f64::from(v[i]));
            }
        }
        TensorData::F64(v) if non_finite == NonFinite::Refuse => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return non_finite_at(spec, i, v[i]);
            }
        }
        TensorData::U8(v) => {
            if let Some((lo, hi)) = range
                && let Some(i) = v.iter().position(|x| !(lo..=hi).contains(&i64::from(*x)))
            {
                return out_of_range(i, v[i].to_string());
            }
        }
        TensorData::I32(v) => {
            if let Some((lo, hi)) = range
                && let Some(i) = v.iter().position(|x| !(lo..=hi).contains(&i64::from(*x)))
            {
                return out_of_range(i, v[i].to_string());
            }
        }
        TensorData::I64(v) => {
            if let Some((lo, hi)) = range
                && let Some(i) = v.iter().position(|x| !(lo..=hi).contains(x))
            {
                return out_of_range(i, v[i].to_string());
            }
        }
        _ => {}
    }
    Ok(())
}

fn non_finite_at(spec: &DeclaredTensor, i: usize, v: f64) -> Result<(), OutputMismatch> {
    Err(OutputMismatch(format!(
        "output `{}` element {i} is {v}; the submitter did not allow NaN or infinite outputs",
        spec.name
    )))
}

// ONNX `TensorProto.DataType` values.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const UINT16: i32 = 4;
const INT16: i32 = 5;
const INT32: i32 = 6;
const INT64: i32 = 7;
const BOOL: i32 = 9;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const UINT32: i32 = 12;

/// The wire element type a runtime delivers an ONNX type as (the engine's conversions, on
/// tract and on ONNX Runtime alike); `None` for types it cannot deliver or a file that does
/// not say.
fn wire_dtype(elem_type: i32) -> Option<&'static str> {
    Some(match elem_type {
        FLOAT | FLOAT16 => "float32",
        DOUBLE => "float64",
        INT64 | UINT32 => "int64",
        INT32 | INT8 | INT16 | UINT16 => "int32",
        UINT8 | BOOL => "uint8",
        _ => return None,
    })
}

fn onnx_type_name(elem_type: i32) -> &'static str {
    match elem_type {
        0 => "(any type)",
        FLOAT => "float32",
        UINT8 => "uint8",
        INT8 => "int8",
        UINT16 => "uint16",
        INT16 => "int16",
        INT32 => "int32",
        INT64 => "int64",
        8 => "string",
        BOOL => "bool",
        FLOAT16 => "float16",
        DOUBLE => "float64",
        UINT32 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => "(another type)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crank_protocol::Tensor;

    fn model(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(name);
        std::fs::read(path).unwrap()
    }

    fn named(name: &str, tensor: Tensor) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor,
        }
    }

    fn digits_input(rows: u64) -> Vec<NamedTensor> {
        let n = usize::try_from(rows * 64).unwrap();
        vec![named(
            "X",
            Tensor::f32(vec![rows, 64], vec![0.5; n]).unwrap(),
        )]
    }

    /// What the digits MLP returns for `rows` rows: labels and probabilities.
    fn digits_outputs(rows: u64) -> Vec<NamedTensor> {
        let n = usize::try_from(rows).unwrap();
        vec![
            named(
                "label",
                Tensor {
                    shape: vec![rows],
                    data: TensorData::I64(vec![3; n]),
                },
            ),
            named(
                "probabilities",
                Tensor::f32(vec![rows, 10], vec![0.1; n * 10]).unwrap(),
            ),
        ]
    }

    #[test]
    fn the_digits_models_declare_their_signature_and_honest_outputs_pass() {
        let d = declared(&model("digits-mlp.onnx")).unwrap();
        assert_eq!(
            d.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["X"]
        );
        let names: BTreeSet<&str> = d.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["label", "probabilities"]), "{d:?}");
        for rows in [1, 7] {
            d.check_outputs(
                &digits_input(rows),
                &digits_outputs(rows),
                NonFinite::Refuse,
            )
            .unwrap();
        }
    }

    #[test]
    fn outputs_that_do_not_fit_the_declaration_are_named_and_refused() {
        let d = declared(&model("digits-mlp.onnx")).unwrap();
        let input = digits_input(2);
        let check = |outputs: Vec<NamedTensor>| {
            d.check_outputs(&input, &outputs, NonFinite::Refuse)
                .unwrap_err()
                .to_string()
        };
        let honest = digits_outputs(2);
        // A missing output.
        assert!(check(honest[..1].to_vec()).contains("`probabilities`"));
        // An output the model does not have.
        let mut extra = honest.clone();
        extra.push(named("bonus", Tensor::f32(vec![1], vec![1.0]).unwrap()));
        assert!(check(extra).contains("no output `bonus`"));
        // Twice the same output.
        let mut twice = honest.clone();
        twice.push(honest[0].clone());
        assert!(check(twice).contains("twice"));
        // The wrong element type.
        let mut wrong_type = honest.clone();
        wrong_type[0] = named("label", Tensor::f32(vec![2], vec![3.0, 3.0]).unwrap());
        assert!(check(wrong_type).contains("int64"));
        // The wrong rank, a wrong fixed dimension, a batch that is not the input's.
        for shape in [vec![20], vec![2, 9], vec![3, 10]] {
            let n = usize::try_from(shape.iter().product::<u64>()).unwrap();
            let mut bad = honest.clone();
            bad[1] = named(
                "probabilities",
                Tensor::f32(shape.clone(), vec![0.1; n]).unwrap(),
            );
            let err = check(bad);
            assert!(err.contains("`probabilities`"), "{shape:?}: {err}");
        }
        // NaN or infinity, unless allowed.
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut bad = honest.clone();
            let mut p = vec![0.1; 20];
            p[13] = v;
            bad[1] = named("probabilities", Tensor::f32(vec![2, 10], p).unwrap());
            assert!(check(bad.clone()).contains("element 13"), "{v}");
            d.check_outputs(&input, &bad, NonFinite::Allow).unwrap();
        }
        // An empty delivery.
        assert!(check(Vec::new()).contains("missing"));
    }

    #[test]
    fn named_dimensions_bind_across_inputs_and_outputs_and_values_fit_narrow_types() {
        use tract_onnx::pb::{
            GraphProto, ModelProto, TensorProto, TensorShapeProto, TypeProto, tensor_shape_proto,
        };
        let dim = |d: &str| tensor_shape_proto::Dimension {
            value: Some(match d.parse::<i64>() {
                Ok(n) => dimension::Value::DimValue(n),
                Err(_) => dimension::Value::DimParam(d.into()),
            }),
            ..Default::default()
        };
        let value = |name: &str, elem_type: i32, dims: &[&str]| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type,
                    shape: Some(TensorShapeProto {
                        dim: dims.iter().map(|d| dim(d)).collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = ModelProto {
            graph: Some(GraphProto {
                input: vec![
                    value("tokens", INT64, &["batch", "seq"]),
                    // Listed as an input but an initializer: the task does not supply it.
                    value("weights", FLOAT, &["4"]),
                ],
                initializer: vec![TensorProto {
                    name: "weights".into(),
                    float_data: vec![1.0; 4],
                    ..Default::default()
                }],
                output: vec![
                    value("logits", FLOAT, &["batch", "seq", "4"]),
                    value("boxes", FLOAT, &["boxes", "4"]),
                    value("keep", BOOL, &["boxes"]),
                    value("small", INT8, &["batch"]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let d = declared(&bytes).unwrap();
        assert_eq!(d.inputs.len(), 1, "initializers are not inputs: {d:?}");
        let inputs = vec![named(
            "tokens",
            Tensor {
                shape: vec![2, 3],
                data: TensorData::I64(vec![1; 6]),
            },
        )];
        let outputs = |logits: Vec<u64>, boxes: u64, keep: u64, keep_value: u8, small: i32| {
            let n = |s: &[u64]| usize::try_from(s.iter().product::<u64>()).unwrap();
            vec![
                named(
                    "logits",
                    Tensor::f32(logits.clone(), vec![0.0; n(&logits)]).unwrap(),
                ),
                named(
                    "boxes",
                    Tensor::f32(vec![boxes, 4], vec![1.0; n(&[boxes, 4])]).unwrap(),
                ),
                named(
                    "keep",
                    Tensor {
                        shape: vec![keep],
                        data: TensorData::U8(vec![keep_value; n(&[keep])]),
                    },
                ),
                named(
                    "small",
                    Tensor {
                        shape: vec![2],
                        data: TensorData::I32(vec![small; 2]),
                    },
                ),
            ]
        };
        let check = |o: Vec<NamedTensor>| d.check_outputs(&inputs, &o, NonFinite::Refuse);
        // Data-dependent `boxes`: any count, the same in both outputs.
        check(outputs(vec![2, 3, 4], 5, 5, 1, -128)).unwrap();
        check(outputs(vec![2, 3, 4], 0, 0, 0, 127)).unwrap();
        let err = check(outputs(vec![2, 3, 4], 5, 4, 1, 0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("boxes = 5 from output `boxes` axis 0"),
            "{err}"
        );
        // `seq` is bound by the input.
        let err = check(outputs(vec![2, 4, 4], 5, 5, 1, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("seq = 3 from input `tokens` axis 1"), "{err}");
        // A bool that is 2, an int8 that is 300.
        let err = check(outputs(vec![2, 3, 4], 1, 1, 2, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bool cannot hold"), "{err}");
        let err = check(outputs(vec![2, 3, 4], 1, 1, 1, 300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("int8 cannot hold"), "{err}");
    }

    #[test]
    fn bytes_that_are_not_a_model_are_an_error_not_a_panic() {
        assert!(declared(b"").is_err());
        assert!(declared(&[0xff; 64]).is_err());
        let real = model("digits-cnn.onnx");
        let _ = declared(&real[..real.len() / 3]);
    }
}
