//! Hostile-peer attacks: store. A stranger cannot fetch models it was not awarded, cannot make
//! a worker keep (or offer others) a blob that is not a model, and cannot fill a worker's
//! disk: fetched models live under a quota, least recently used evicted first, the owner's
//! models never.

use std::collections::HashMap;
use std::time::Duration;

use crank_node::network::peer_id_of;
use crank_node::tensor_io;
use crank_protocol::tensor::tensors_hash;
use crank_protocol::{
    Award, ErrorCode, FailureReason, FetchModel, Identity, ModelChunk, ModelId, NodeId, Request,
    Response, Signed, TaskId,
};

use crate::adversary::Adversary;
use crate::{
    ADVERSARY_PAYER, Mesh, TASK_IDS, bid_and_award, digits_request, failure_of, mlp_input, now_ms,
    repo,
};

fn model(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("models").join(name)).unwrap()
}

/// The MLP with one byte of its producer name changed: a different, valid model per `n`.
fn variant(n: u8) -> Vec<u8> {
    let mut bytes = model("digits-mlp.onnx");
    let pos = bytes
        .windows(7)
        .position(|w| w == b"skl2onn")
        .expect("producer name");
    bytes[pos] = b'a' + n;
    bytes
}

/// An award of a task on `model` to `worker`, signed by `requester`, due at `deadline`.
fn award(requester: &Identity, worker: NodeId, model: &[u8], deadline: u64) -> Signed<Award> {
    let inputs = mlp_input(64);
    let id = ModelId::of(model);
    let nonce = [77; 16];
    let body = Award {
        task_id: TaskId::derive(&requester.node_id(), &nonce, &id, &tensors_hash(&inputs)),
        requester: requester.node_id(),
        worker,
        price_stroops: 10,
        model: id,
        model_bytes: model.len() as u64,
        input_hash: tensors_hash(&inputs),
        inputs,
        nonce,
        payer: ADVERSARY_PAYER.into(),
        deadline,
    };
    Signed::sign(body, requester).unwrap()
}

fn fetch(model: &[u8], award: Option<Signed<Award>>) -> Request {
    Request::FetchModel(FetchModel {
        model: ModelId::of(model),
        offset: 0,
        max_len: 1 << 20,
        award,
    })
}

/// Asserts a refusal with this code whose message contains `needle`.
fn refused(answer: Response, code: ErrorCode, needle: &str) {
    match answer {
        Response::Error(e) => {
            assert_eq!(e.code, code, "{e}");
            assert!(
                e.message.contains(needle),
                "{:?} lacks {needle:?}",
                e.message
            );
        }
        other => panic!("expected a refusal, got {}", other.kind()),
    }
}

/// Answers the node's fetches with these models (whole, in one chunk), failures with an ack,
/// anything else with an error.
fn serving(models: Vec<Vec<u8>>) -> Box<dyn FnMut(&Request) -> Response + Send> {
    let by_id: HashMap<ModelId, Vec<u8>> =
        models.into_iter().map(|m| (ModelId::of(&m), m)).collect();
    Box::new(move |req| match req {
        Request::FetchModel(f) if by_id.contains_key(&f.model) => {
            let bytes = by_id[&f.model].clone();
            Response::ModelChunk(ModelChunk {
                model: f.model,
                total_len: bytes.len() as u64,
                offset: 0,
                bytes,
            })
        }
        Request::Failure(f) => Response::Ack {
            task_id: f.body.task_id,
        },
        _ => Response::error(ErrorCode::NotFound, "no"),
    })
}

/// Whether the worker finished task number `task` (sent its result, or a failure).
fn finished(received: &[Request], task: u8) -> bool {
    let ids: Vec<TaskId> = TASK_IDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == task)
        .map(|(_, id)| *id)
        .collect();
    received.iter().any(|r| match r {
        Request::Result(res) => ids.contains(&res.receipt.body.task_id),
        Request::Failure(f) => ids.contains(&f.body.task_id),
        _ => false,
    })
}

/// The model ids stored in a node's model directory.
fn stored(node: &crank_node::NodeHandle) -> Vec<ModelId> {
    std::fs::read_dir(node.config().data_dir.join("models"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".onnx")?.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_are_served_only_against_an_award_naming_the_asker() {
    let mlp = model("digits-mlp.onnx");
    let cnn = model("digits-cnn.onnx");
    let public = variant(1);
    let public_id = ModelId::of(&public);
    let mesh = Mesh::start(1, move |i, c| {
        if i == 0 {
            c.worker.store.public_models = vec![public_id];
        }
    })
    .await;
    mesh.wait_for_adverts(1).await;
    let worker = mesh.workers()[0].clone();
    let requester = mesh.requester();
    worker.add_model(&public).await.unwrap();

    // An honest task on a model the worker lacks: it fetches it from the requester with its
    // award, runs it, and the requester gets its answer.
    let outcome = requester
        .submit(digits_request(
            "digits-cnn.onnx",
            "digit-7-cnn.json",
            "input",
        ))
        .await
        .unwrap();
    assert_eq!(
        tensor_io::predictions(&outcome.outputs).unwrap()[0].class,
        7
    );
    assert!(stored(&worker).contains(&ModelId::of(&cnn)));

    let mut stranger = Adversary::new(
        210,
        Box::new(|_| Response::error(ErrorCode::NotFound, "no")),
    );
    let me = stranger.identity.node_id();
    let at_requester = peer_id_of(&requester.node_id()).unwrap();
    let at_worker = peer_id_of(&worker.node_id()).unwrap();
    stranger.connect(&requester.listen_addrs().await[0]).await;
    stranger.connect(&worker.listen_addrs().await[0]).await;

    // No award: refused by the requester and by the worker, no bytes.
    for (peer, m) in [(at_requester, &cnn), (at_worker, &cnn), (at_worker, &mlp)] {
        refused(
            stranger.send(peer, &fetch(m, None)).await.unwrap(),
            ErrorCode::NotAuthorized,
            "send the requester's signed award",
        );
    }

    // Awards that do not entitle the stranger.
    let other = Identity::from_secret([211; 32]);
    let soon = now_ms() + 30_000;
    let cases = [
        (
            "another worker",
            fetch(&cnn, Some(award(&other, worker.node_id(), &cnn, soon))),
            ErrorCode::NotAuthorized,
            "names worker",
        ),
        (
            "another model",
            Request::FetchModel(FetchModel {
                model: ModelId::of(&cnn),
                offset: 0,
                max_len: 1 << 20,
                award: Some(award(&other, me, &mlp, soon)),
            }),
            ErrorCode::NotAuthorized,
            "is for model",
        ),
        (
            "long expired",
            fetch(&cnn, Some(award(&other, me, &cnn, now_ms() - 120_000))),
            ErrorCode::NotAuthorized,
            "expired",
        ),
        (
            "self-awarded",
            fetch(&cnn, Some(award(&stranger.identity, me, &cnn, soon))),
            ErrorCode::NotAuthorized,
            "its own worker",
        ),
        (
            "forged",
            fetch(&cnn, {
                let mut forged = award(&other, worker.node_id(), &cnn, soon);
                forged.body.worker = me;
                Some(forged)
            }),
            ErrorCode::BadSignature,
            "does not verify",
        ),
    ];
    for (what, req, code, needle) in cases {
        for peer in [at_requester, at_worker] {
            let answer = stranger.send(peer, &req).await.unwrap();
            assert!(
                matches!(answer, Response::Error(_)),
                "{what}: served {}",
                answer.kind()
            );
            refused(answer, code, needle);
        }
    }

    // A valid award naming the asker: any holder serves it, the requester and the worker.
    for peer in [at_requester, at_worker] {
        match stranger
            .send(peer, &fetch(&cnn, Some(award(&other, me, &cnn, soon))))
            .await
            .unwrap()
        {
            Response::ModelChunk(c) => assert_eq!(c.bytes, cnn),
            other => panic!("expected the model, got {other:?}"),
        }
    }
    // A model its owner made public needs no award.
    match stranger
        .send(at_worker, &fetch(&public, None))
        .await
        .unwrap()
    {
        Response::ModelChunk(c) => assert_eq!(c.bytes, public),
        other => panic!("expected the public model, got {other:?}"),
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_awarded_blob_that_is_not_onnx_fails_the_task_and_is_neither_kept_nor_announced() {
    let mesh = Mesh::start(1, |_, _| {}).await;
    mesh.wait_for_adverts(1).await;
    let worker = mesh.workers()[0].clone();
    let peer = peer_id_of(&worker.node_id()).unwrap();
    // Valid protobuf that is not a model, and plain garbage; both hash honestly.
    let not_a_model = b"\x08\x07\x08\x08\x08\x09".to_vec();
    let garbage: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut adv = Adversary::new(212, serving(vec![not_a_model.clone(), garbage.clone()]));
    adv.connect(&worker.listen_addrs().await[0]).await;
    let me = worker.node_id();

    for (task, blob) in [(61u8, &not_a_model), (62, &garbage)] {
        assert!(matches!(
            bid_and_award(&mut adv, peer, &me, task, blob, mlp_input(64)).await,
            Response::Accepted { .. }
        ));
        adv.pump_until(Duration::from_secs(20), |r| failure_of(r, task).is_some())
            .await;
        match failure_of(&adv.received, task).unwrap() {
            FailureReason::ModelInvalid { message } => {
                assert!(message.contains("discarded"), "{message}");
                assert!(message.contains("ONNX"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // The worker asked with its award.
        assert!(adv.received.iter().any(|r| matches!(
            r,
            Request::FetchModel(f) if f.model == ModelId::of(blob)
                && f.award.as_ref().is_some_and(|a| a.body.worker == me)
        )));
    }
    // Nothing kept: not in the store directory (no model, marker or temporary file), not in
    // the status, and never in an advert.
    let files: Vec<String> = std::fs::read_dir(worker.config().data_dir.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for blob in [&not_a_model, &garbage] {
        let hex = ModelId::of(blob).to_hex();
        assert!(!files.iter().any(|f| f.contains(&hex)), "{files:?}");
    }
    assert_eq!(files.len(), 1, "only the reference model: {files:?}");
    let status = worker.status().await.unwrap();
    assert_eq!(status.models.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let advert = mesh.requester().advert_of(&me).expect("worker's advert");
    assert_eq!(advert.models.len(), 1, "{:?}", advert.models);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn awarded_models_over_the_quota_evict_the_least_recently_used_never_a_pinned_one() {
    let size = variant(0).len() as u64;
    // The reference model and one model of the owner's (pinned), and room for two more.
    let mesh = Mesh::start(1, move |i, c| {
        if i == 0 {
            c.worker.store.quota_bytes = 4 * size + 100;
        }
    })
    .await;
    mesh.wait_for_adverts(1).await;
    let worker = mesh.workers()[0].clone();
    let peer = peer_id_of(&worker.node_id()).unwrap();
    let reference = ModelId::of(&model("digits-mlp.onnx"));
    let pinned = worker.add_model(&variant(0)).await.unwrap();
    let wide = model("digits-wide.onnx");
    let v: Vec<Vec<u8>> = (1..=4).map(variant).collect();
    let ids: Vec<ModelId> = v.iter().map(|m| ModelId::of(m)).collect();
    let mut served = v.clone();
    served.push(wide.clone());
    let mut adv = Adversary::new(213, serving(served));
    adv.connect(&worker.listen_addrs().await[0]).await;
    let me = worker.node_id();

    let mut task = 70u8;
    let mut run = async |adv: &mut Adversary, bytes: &[u8]| {
        task += 1;
        let t = task;
        assert!(matches!(
            bid_and_award(adv, peer, &me, t, bytes, mlp_input(64)).await,
            Response::Accepted { .. }
        ));
        adv.pump_until(Duration::from_secs(30), |r| finished(r, t))
            .await;
        assert!(failure_of(&adv.received, t).is_none(), "task {t} failed");
    };
    let has = |id: &ModelId| stored(&worker).contains(id);

    run(&mut adv, &v[0]).await;
    run(&mut adv, &v[1]).await;
    assert!(has(&ids[0]) && has(&ids[1]));
    // Running v1 again makes v2 the least recently used: v3 evicts v2, not v1.
    tokio::time::sleep(Duration::from_millis(20)).await;
    run(&mut adv, &v[0]).await;
    run(&mut adv, &v[2]).await;
    assert!(has(&ids[0]) && has(&ids[2]) && !has(&ids[1]));
    run(&mut adv, &v[3]).await;
    assert!(has(&ids[2]) && has(&ids[3]) && !has(&ids[0]));
    // The owner's models were never evicted, and the store stays within its quota.
    assert!(has(&reference) && has(&pinned));
    let all = stored(&worker);
    assert_eq!(all.len(), 4, "{all:?}");

    // A model larger than the quota is refused before any byte is fetched.
    task += 1;
    let t = task;
    assert!(matches!(
        bid_and_award(&mut adv, peer, &me, t, &wide, mlp_input(64)).await,
        Response::Accepted { .. }
    ));
    adv.pump_until(Duration::from_secs(20), |r| failure_of(r, t).is_some())
        .await;
    match failure_of(&adv.received, t).unwrap() {
        FailureReason::ModelUnavailable { message } => {
            assert!(message.contains("quota"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        !adv.received
            .iter()
            .any(|r| matches!(r, Request::FetchModel(f) if f.model == ModelId::of(&wide)))
    );
    assert_eq!(stored(&worker).len(), 4);
    mesh.stop().await;
}
