//! Hostile-peer attacks: models. A stranger awards a worker a tiny model built to exhaust its
//! memory (a tensor sized by an input value). With isolation on, the model runs in a runner
//! process of the node's own binary under a memory limit: that task fails with a clear
//! reason, the runner is replaced, the worker stays up and its next honest task completes.

use std::time::Duration;

use crank_node::tensor_io;
use crank_protocol::{
    ErrorCode, FailureReason, ModelChunk, ModelId, NamedTensor, Request, Response,
};
use crank_protocol::{Tensor, TensorData};

use crate::adversary::Adversary;
use crate::{Mesh, bid_and_award, digits_request, failure_of};

/// The runner's memory limit on the attacked worker, MiB.
const LIMIT_MIB: u64 = 512;

/// Protobuf wire encoding, just enough for a small ONNX graph.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

const INT64: u64 = 7;

/// A `ValueInfoProto` of an int64 tensor; `scalar` gives it an empty (rank 0) shape.
fn int64_value(name: &str, scalar: bool) -> Vec<u8> {
    let mut tensor_type = Vec::new();
    field_varint(&mut tensor_type, 1, INT64);
    if scalar {
        field_bytes(&mut tensor_type, 2, &[]);
    }
    let mut type_proto = Vec::new();
    field_bytes(&mut type_proto, 1, &tensor_type);
    let mut v = Vec::new();
    field_bytes(&mut v, 1, name.as_bytes());
    field_bytes(&mut v, 2, &type_proto);
    v
}

/// A scalar int64 initializer.
fn int64_scalar(name: &str, value: i64) -> Vec<u8> {
    let mut t = Vec::new();
    field_varint(&mut t, 2, INT64);
    field_varint(&mut t, 7, value as u64);
    field_bytes(&mut t, 8, name.as_bytes());
    t
}

/// `r = Range(0, n, 1)`, `n` an int64 scalar input: ~150 bytes whose output is as large as
/// the requester asks.
fn input_sized_range() -> Vec<u8> {
    let mut node = Vec::new();
    for input in ["zero", "n", "one"] {
        field_bytes(&mut node, 1, input.as_bytes());
    }
    field_bytes(&mut node, 2, b"r");
    field_bytes(&mut node, 3, b"range");
    field_bytes(&mut node, 4, b"Range");
    let mut graph = Vec::new();
    field_bytes(&mut graph, 1, &node);
    field_bytes(&mut graph, 2, b"hostile");
    field_bytes(&mut graph, 5, &int64_scalar("zero", 0));
    field_bytes(&mut graph, 5, &int64_scalar("one", 1));
    field_bytes(&mut graph, 11, &int64_value("n", true));
    field_bytes(&mut graph, 12, &int64_value("r", false));
    let mut opset = Vec::new();
    field_varint(&mut opset, 2, 17);
    let mut model = Vec::new();
    field_varint(&mut model, 1, 8);
    field_bytes(&mut model, 7, &graph);
    field_bytes(&mut model, 8, &opset);
    model
}

fn n(value: i64) -> Vec<NamedTensor> {
    vec![NamedTensor {
        name: "n".into(),
        tensor: Tensor {
            shape: vec![],
            data: TensorData::I64(vec![value]),
        },
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_exhausts_memory_fails_alone_and_the_worker_carries_on() {
    let mesh = Mesh::start(1, |i, c| {
        if i == 0 {
            c.engine.runner_exe = Some(env!("CARGO_BIN_EXE_crank-node").into());
            c.engine.runner_memory_mib = LIMIT_MIB;
        }
    })
    .await;
    mesh.wait_for_adverts(1).await;
    let worker = mesh.workers()[0].clone();
    let addr = worker.listen_addrs().await[0].clone();
    let peer = crank_node::network::peer_id_of(&worker.node_id()).unwrap();
    let me = worker.node_id();
    let hostile = input_sized_range();
    assert!(hostile.len() < 200, "{} bytes", hostile.len());
    let served = hostile.clone();
    let mut adv = Adversary::new(
        211,
        Box::new(move |req| match req {
            Request::FetchModel(f) if f.model == ModelId::of(&served) => {
                Response::ModelChunk(ModelChunk {
                    model: f.model,
                    total_len: served.len() as u64,
                    offset: 0,
                    bytes: served.clone(),
                })
            }
            Request::Failure(f) => Response::Ack {
                task_id: f.body.task_id,
            },
            _ => Response::error(ErrorCode::NotFound, "no"),
        }),
    );
    adv.connect(&addr).await;

    // Ten billion int64s (80 GB) from a one-element input.
    assert!(matches!(
        bid_and_award(&mut adv, peer, &me, 41, &hostile, n(10_000_000_000)).await,
        Response::Accepted { .. }
    ));
    adv.pump_until(Duration::from_secs(60), |r| failure_of(r, 41).is_some())
        .await;
    match failure_of(&adv.received, 41).unwrap() {
        FailureReason::Inference { message } => assert_eq!(
            message,
            format!("the model exhausted the runner's memory limit of {LIMIT_MIB} MiB")
        ),
        other => panic!("unexpected {other:?}"),
    }

    // The worker is still up and serves the next honest task right.
    let status = worker.status().await.unwrap();
    assert!(status.models.contains(&ModelId::of(&hostile)));
    mesh.wait_for_adverts(1).await;
    let outcome = mesh
        .requester()
        .submit(digits_request("digits-mlp.onnx", "digit-5.json", "X"))
        .await
        .unwrap();
    assert_eq!(
        tensor_io::predictions(&outcome.outputs).unwrap()[0].class,
        5
    );
    mesh.stop().await;
}
