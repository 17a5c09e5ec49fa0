//! A cheap structural check that bytes are an ONNX model, for blobs fetched from peers.
//!
//! A worker stores and announces a model it fetched for a task; without this check a
//! requester could make it store (and offer to others) any blob that merely hashes to its
//! name. The check decodes the protobuf `ModelProto` and looks for the parts every runnable
//! model has: a graph with at least one node, inputs and outputs, and an operator-set import.
//! It neither optimises nor runs the graph (the engine does that, with its own limits).

use tract_onnx::prelude::Framework;

/// Why bytes are not a structurally sound ONNX model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnnxCheckError {
    /// The bytes do not decode as an ONNX `ModelProto`.
    #[error("not an ONNX model: the protobuf does not decode ({0})")]
    Decode(String),
    /// The model decodes but lacks a part every runnable model has.
    #[error("not a usable ONNX model: {0}")]
    Missing(&'static str),
}

/// Checks that `bytes` decode as an ONNX model with a graph of at least one node, at least
/// one input and one output, and at least one operator-set import.
pub fn check_onnx(bytes: &[u8]) -> Result<(), OnnxCheckError> {
    if bytes.is_empty() {
        return Err(OnnxCheckError::Decode("no bytes".into()));
    }
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| OnnxCheckError::Decode(e.to_string()))?;
    if proto.opset_import.is_empty() {
        return Err(OnnxCheckError::Missing("it imports no operator set"));
    }
    let Some(graph) = proto.graph else {
        return Err(OnnxCheckError::Missing("it has no graph"));
    };
    if graph.node.is_empty() {
        return Err(OnnxCheckError::Missing("its graph has no nodes"));
    }
    if graph.input.is_empty() {
        return Err(OnnxCheckError::Missing("its graph has no inputs"));
    }
    if graph.output.is_empty() {
        return Err(OnnxCheckError::Missing("its graph has no outputs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(name);
        std::fs::read(path).unwrap()
    }

    #[test]
    fn real_models_pass() {
        for name in ["digits-mlp.onnx", "digits-cnn.onnx"] {
            check_onnx(&model(name)).unwrap();
        }
    }

    #[test]
    fn garbage_empty_and_truncated_bytes_fail() {
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert!(matches!(
            check_onnx(&garbage),
            Err(OnnxCheckError::Decode(_))
        ));
        assert!(matches!(check_onnx(&[]), Err(OnnxCheckError::Decode(_))));
        let real = model("digits-mlp.onnx");
        assert!(check_onnx(&real[..real.len() / 2]).is_err());
        // Valid protobuf that is not a model: an empty message decodes to an empty ModelProto.
        assert!(matches!(
            check_onnx(b"\x08\x07"),
            Err(OnnxCheckError::Missing(_))
        ));
    }
}
