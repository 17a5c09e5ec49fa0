//! Reaching peers through a relay, in one process on loopback: a bootstrap node with a relay
//! server and two nodes that listen on nothing, so the only way between them is a circuit
//! through the relay (and hole punching has nothing to punch). Checks that tasks still run
//! over the relay, that status says so, and that a request larger than the relay's circuit
//! limit is refused with an error naming the limit.
//!
//! The real-NAT version (network namespaces, masquerading routers, hole punching that can
//! succeed) is `testnet/nat/run.sh`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crank_node::config::Config;
use crank_node::metrics::Metrics;
use crank_node::network::{
    self, Client, KadMode, NetworkEvent, NetworkStatus, RelayClientMode, RequestError, Role,
};
use crank_node::{ModelSource, Node, SubmitRequest, tensor_io};
use crank_protocol::{
    Award, Identity, ModelId, NamedTensor, NodeId, Request, Response, RunPolicy, Signed, TaskId,
    Tensor,
};
use tokio::sync::watch;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
}

/// A loopback TCP address nobody listens on yet, so the relay can announce it before start.
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("/ip4/127.0.0.1/tcp/{}", l.local_addr().unwrap().port())
}

fn base_config(dir: &Path) -> Config {
    logs();
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.network.listen = Vec::new();
    c.network.bootstrap = Vec::new();
    c.network.autonat_only_global_ips = false;
    c.network.hole_punch_wait_ms = 1000;
    c.api.enabled = false;
    c.advert.interval_secs = 1;
    c.device.run_when = RunPolicy::Always;
    c.device.sample_interval_ms = 250;
    c.worker.benchmark_ms = 50;
    c
}

/// The bootstrap node's config: a relay that announces `listen` and limits circuits to
/// `circuit_bytes`.
fn relay_config(dir: &Path, listen: &str, circuit_bytes: u64) -> Config {
    let mut c = base_config(dir);
    c.network.listen = vec![listen.to_string()];
    c.network.external_addresses = vec![listen.to_string()];
    c.network.kad_mode = KadMode::Server;
    c.network.relay.max_circuit_bytes = circuit_bytes;
    c
}

/// A node behind "NAT": it listens on nothing and reaches the mesh through the relay.
fn hidden_config(dir: &Path, relay: &str) -> Config {
    let mut c = base_config(dir);
    c.network.bootstrap = vec![relay.to_string()];
    c.network.relay_client = RelayClientMode::Always;
    c
}

async fn wait_until<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn accepted_reservation(s: &NetworkStatus) -> Option<()> {
    s.relay_reservations
        .iter()
        .any(|r| r.accepted)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_run_through_the_relay_when_no_direct_path_exists() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let listen = free_addr();
    let relay = Node::start(
        relay_config(dirs[0].path(), &listen, 16 * 1024 * 1024),
        Role { bootstrap: true },
    )
    .await
    .unwrap();
    let relay_id = network::peer_id_string(&relay.handle().node_id());
    let relay_addr = format!("{listen}/p2p/{relay_id}");

    let worker = Node::start(hidden_config(dirs[1].path(), &relay_addr), Role::default())
        .await
        .unwrap();
    let mut rc = hidden_config(dirs[2].path(), &relay_addr);
    rc.worker.enabled = false;
    rc.network.relay_client = RelayClientMode::Never;
    let requester = Node::start(rc, Role::default()).await.unwrap();

    // The worker reserves a slot and announces the circuit address.
    let w = worker.handle();
    wait_until(
        "the worker's reservation",
        Duration::from_secs(20),
        async || accepted_reservation(&w.status().await.ok()?.network),
    )
    .await;
    let ws = w.status().await.unwrap().network;
    let r = &ws.relay_reservations[0];
    assert_eq!(r.relay, relay_id);
    assert!(r.addr.contains("/p2p-circuit/p2p/"), "{}", r.addr);
    assert_eq!(r.limit_bytes, Some(16 * 1024 * 1024));
    assert!(r.accepted_after_ms.is_some());
    assert!(
        ws.external_addrs.iter().any(|a| a.contains("/p2p-circuit")),
        "circuit address not announced: {:?}",
        ws.external_addrs
    );
    // A reservation must not make the node a DHT server.
    assert_eq!(ws.kad_mode, "client");
    let rs = relay.handle().status().await.unwrap().network;
    let server = rs.relay_server.expect("bootstrap nodes report their relay");
    assert!(server.enabled);
    assert!(server.reservations >= 1);
    assert_eq!(rs.kad_mode, "server");

    // The requester hears of the worker by gossip and reaches it through the relay.
    let q = requester.handle();
    let worker_node = w.node_id();
    wait_until("the worker's advert", Duration::from_secs(20), async || {
        let s = q.status().await.ok()?;
        s.adverts
            .iter()
            .any(|a| a.node == worker_node)
            .then_some(())
    })
    .await;
    let bytes = std::fs::read(repo().join("models/digits-mlp.onnx")).unwrap();
    let text = std::fs::read_to_string(repo().join("models/samples/digit-3.json")).unwrap();
    let inputs = tensor_io::parse_inputs(&text, &["X".to_string()]).unwrap();
    let outcome = q
        .submit(SubmitRequest::new(ModelSource::Bytes(bytes), inputs))
        .await
        .unwrap();
    assert_eq!(outcome.worker, w.node_id());
    let preds = tensor_io::predictions(&outcome.outputs).unwrap();
    assert_eq!(preds[0].class, 3);
    outcome.receipt.verify().unwrap();

    let qs = q.status().await.unwrap().network;
    let peer = qs
        .peers
        .iter()
        .find(|p| p.node == w.node_id())
        .expect("requester still connected to the worker");
    assert!(peer.relayed, "{peer:?}");
    assert_eq!(peer.via_relay.as_deref(), Some(relay_id.as_str()));
    // Nothing listens at the addresses a hole punch would try.
    let punch = peer.hole_punch.clone().unwrap_or_default();
    assert!(punch.starts_with("failed"), "hole punch: {punch}");
    assert_eq!(qs.hole_punch.succeeded, 0);

    for n in [requester, worker, relay] {
        n.shutdown().await;
    }
}

/// A bare network endpoint: the client plus a task that answers every inbound request: a
/// model fetch with as many bytes as asked for, anything else with an error.
async fn endpoint(
    identity: &Identity,
    config: &Config,
    role: Role,
    stop: watch::Receiver<bool>,
) -> Client {
    let (client, mut events, event_loop) =
        network::new(identity, &config.network, role, Metrics::new()).unwrap();
    let mut s1 = stop.clone();
    tokio::spawn(event_loop.run(async move {
        let _ = s1.wait_for(|v| *v).await;
    }));
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let NetworkEvent::InboundRequest {
                responder, request, ..
            } = e
            {
                responder.send(match *request {
                    Request::FetchModel(f) => Response::ModelChunk(crank_protocol::ModelChunk {
                        model: f.model,
                        total_len: u64::from(f.max_len),
                        offset: 0,
                        bytes: vec![7; f.max_len as usize],
                    }),
                    _ => Response::error(crank_protocol::ErrorCode::Internal, "test endpoint"),
                });
            }
        }
    });
    client
}

fn big_award(requester: &Identity, worker: NodeId, bytes: usize) -> Request {
    let values = vec![0.5f32; bytes / 4];
    let n = values.len() as u64;
    let inputs = vec![NamedTensor {
        name: "X".into(),
        tensor: Tensor::f32(vec![n / 64, 64], values).unwrap(),
    }];
    let award = Award {
        task_id: TaskId([9; 32]),
        requester: requester.node_id(),
        worker,
        price_stroops: 1,
        model: ModelId([1; 32]),
        model_bytes: 1,
        input_hash: crank_protocol::tensor::tensors_hash(&inputs),
        inputs,
        nonce: [9; 16],
        payer: "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7".into(),
        deadline: crank_node::clock::now_ms() + 60_000,
    };
    Request::Award(Signed::sign(award, requester).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_larger_than_the_circuit_limit_names_the_limit() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (stop_tx, stop) = watch::channel(false);
    let listen = free_addr();
    let limit: u64 = 64 * 1024;
    let relay_id = Identity::from_secret([21; 32]);
    let _relay = endpoint(
        &relay_id,
        &relay_config(dirs[0].path(), &listen, limit),
        Role { bootstrap: true },
        stop.clone(),
    )
    .await;
    let relay_addr = format!(
        "{listen}/p2p/{}",
        network::peer_id_string(&relay_id.node_id())
    );
    let worker_id = Identity::from_secret([22; 32]);
    let worker = endpoint(
        &worker_id,
        &hidden_config(dirs[1].path(), &relay_addr),
        Role::default(),
        stop.clone(),
    )
    .await;
    let requester_id = Identity::from_secret([23; 32]);
    let mut rc = hidden_config(dirs[2].path(), &relay_addr);
    rc.network.relay_client = RelayClientMode::Never;
    let requester = endpoint(&requester_id, &rc, Role::default(), stop.clone()).await;

    wait_until("the reservation", Duration::from_secs(20), async || {
        accepted_reservation(&worker.status().await.ok()?)
    })
    .await;
    wait_until(
        "the requester's bootstrap connection",
        Duration::from_secs(20),
        async || {
            let s = requester.status().await.ok()?;
            s.bootstrap.iter().any(|b| b.connected).then_some(())
        },
    )
    .await;
    // Give identify a moment to tell the requester that the bootstrap node is a relay.
    let target = worker_id.node_id();
    let small = wait_until(
        "a small request over the relay",
        Duration::from_secs(20),
        async || requester.request(&target, Request::GetAdvert).await.ok(),
    )
    .await;
    assert!(matches!(small, Response::Error(_)), "{small:?}");

    let err = requester
        .request(&target, big_award(&requester_id, target, 256 * 1024))
        .await
        .unwrap_err();
    match &err {
        RequestError::RelayLimit {
            frame_bytes,
            limit_bytes,
            ..
        } => {
            assert!(*frame_bytes > 256 * 1024);
            assert_eq!(*limit_bytes, limit);
        }
        other => panic!("expected a relay limit error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&limit.to_string()), "{text}");
    assert!(text.contains("relay"), "{text}");

    // Small requests still pass afterwards.
    assert!(requester.request(&target, Request::GetAdvert).await.is_ok());

    // An answer too large for the circuit comes back as an error naming the limit, and the
    // circuit survives it.
    let fetch = |max_len| {
        Request::FetchModel(crank_protocol::FetchModel {
            model: ModelId([1; 32]),
            offset: 0,
            max_len,
            award: None,
        })
    };
    match requester.request(&target, fetch(4096)).await.unwrap() {
        Response::ModelChunk(c) => assert_eq!(c.bytes.len(), 4096),
        other => panic!("expected a chunk, got {other:?}"),
    }
    match requester.request(&target, fetch(200 * 1024)).await.unwrap() {
        Response::Error(e) => {
            assert_eq!(e.code, crank_protocol::ErrorCode::Busy);
            assert!(e.message.contains(&limit.to_string()), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(requester.request(&target, fetch(1024)).await.is_ok());

    // Answers that fit one by one but not together: the relay cuts the circuit at its byte
    // limit, the failed request says so, and the next one gets a fresh circuit.
    let mut cut = None;
    for _ in 0..4 {
        match requester.request(&target, fetch(40 * 1024)).await {
            Ok(Response::ModelChunk(_)) => {}
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    match cut {
        Some(RequestError::RelayClosed { limits, .. }) => {
            assert!(limits.contains(&limit.to_string()), "{limits}")
        }
        other => panic!("expected the relay to cut the circuit, got {other:?}"),
    }
    let again = wait_until("a fresh circuit", Duration::from_secs(10), async || {
        requester.request(&target, fetch(1024)).await.ok()
    })
    .await;
    assert!(matches!(again, Response::ModelChunk(_)), "{again:?}");
    let _ = stop_tx.send(true);
}
