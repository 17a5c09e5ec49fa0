//! In-process multi-node tests: real nodes on loopback TCP, real models, real receipts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crank_node::config::Config;
use crank_node::network::{KadMode, Role};
use crank_node::{ModelSource, Node, NodeHandle, SubmitRequest, tensor_io};
use crank_protocol::RunPolicy;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter(filter).try_init();
}

fn config(dir: &Path, bootstrap: Option<&str>) -> Config {
    logs();
    let mut c = Config::default();
    c.data_dir = dir.to_path_buf();
    c.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.network.bootstrap = bootstrap.map(|b| vec![b.to_string()]).unwrap_or_default();
    c.network.kad_mode = KadMode::Server;
    c.api.enabled = false;
    c.advert.interval_secs = 1;
    c.device.run_when = RunPolicy::Always;
    c.device.sample_interval_ms = 250;
    c.worker.benchmark_ms = 50;
    c
}

struct Mesh {
    _dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Node>,
}

impl Mesh {
    /// A bootstrap node, `workers` worker nodes and one requester-only node (last).
    async fn start(workers: usize, tweak: impl Fn(usize, &mut Config)) -> Mesh {
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        let d = tempfile::tempdir().unwrap();
        let boot = Node::start(config(d.path(), None), Role { bootstrap: true }).await.unwrap();
        let addr = boot.handle().listen_addrs().await[0].clone();
        dirs.push(d);
        nodes.push(boot);
        for i in 0..=workers {
            let d = tempfile::tempdir().unwrap();
            let mut c = config(d.path(), Some(&addr));
            if i == workers {
                c.worker.enabled = false;
            }
            tweak(i, &mut c);
            nodes.push(Node::start(c, Role::default()).await.unwrap());
            dirs.push(d);
        }
        Mesh { _dirs: dirs, nodes }
    }

    fn requester(&self) -> NodeHandle {
        self.nodes.last().unwrap().handle()
    }

    fn workers(&self) -> Vec<NodeHandle> {
        self.nodes[1..self.nodes.len() - 1].iter().map(Node::handle).collect()
    }

    async fn wait_for_adverts(&self, n: usize) {
        let started = Instant::now();
        while self.requester().known_adverts() < n {
            assert!(started.elapsed() < Duration::from_secs(30), "requester saw {} adverts, expected {n}", self.requester().known_adverts());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

fn digits_request(model: &str, sample: &str, input_name: &str) -> SubmitRequest {
    let bytes = std::fs::read(repo().join("models").join(model)).unwrap();
    let text = std::fs::read_to_string(repo().join("models/samples").join(sample)).unwrap();
    let inputs = tensor_io::parse_inputs(&text, &[input_name.to_string()]).unwrap();
    SubmitRequest::new(ModelSource::Bytes(bytes), inputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_join_advertise_run_and_both_sides_keep_the_receipt() {
    let mesh = Mesh::start(3, |_, _| {}).await;
    // Bootstrap + 3 workers advertise; the requester sees them all.
    mesh.wait_for_adverts(4).await;

    for (model, sample, input, expected) in [
        ("digits-mlp.onnx", "digit-3.json", "X", 3),
        ("digits-cnn.onnx", "digit-7-cnn.json", "input", 7),
    ] {
        let outcome = mesh.requester().submit(digits_request(model, sample, input)).await.unwrap();
        let preds = tensor_io::predictions(&outcome.outputs).expect("classifier outputs");
        assert_eq!(preds[0].class, expected, "{model} on {sample}");
        assert!(preds[0].probability > 0.5);
        // Both signatures verify, and the receipt names both parties.
        let body = outcome.receipt.verify().unwrap();
        assert_eq!(body.requester, mesh.requester().node_id());
        assert_eq!(body.worker, outcome.worker);
        assert!(body.energy.millijoules > 0);

        // The worker stores the same counter-signed receipt when our answer reaches it.
        let worker = mesh.workers().into_iter().find(|w| w.node_id() == outcome.worker).unwrap();
        let started = Instant::now();
        while !worker.receipts(10).iter().any(|r| r.receipt == outcome.receipt) {
            assert!(started.elapsed() < Duration::from_secs(10), "worker never stored the receipt");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mine = mesh.requester().receipts(10);
        assert!(mine.iter().any(|r| r.receipt == outcome.receipt), "requester lacks the receipt");
    }
    let status = mesh.requester().status().await.unwrap();
    assert_eq!(status.balances.total.receipts_as_requester, 2);
    assert!(status.adverts.len() >= 3);
    mesh.stop().await;
}
