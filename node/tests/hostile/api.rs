//! A local user (or a web page) against the local API: reading the owner's keys through
//! `model_path`, squatting the API's port to collect the token, and keys left readable.
//! Real nodes, real sockets, the real CLI client and binary.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crank_node::api::{self, ApiServer};
use crank_node::commands::{ApiClient, ApiClientError, ApiEndpoint};
use crank_node::config::Config;
use crank_node::network::Role;
use crank_node::{Node, PAYOUT_KEY_FILE};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A lone node serving its API (the Unix socket, and TCP when `tweak` asks).
async fn api_node(data: &Path, tweak: impl FnOnce(&mut Config)) -> (Node, ApiServer) {
    let mut c = crate::config(data, None);
    c.api.enabled = true;
    tweak(&mut c);
    let node = Node::start(c, Role::default()).await.unwrap();
    let server = api::serve(node.handle()).await.unwrap();
    (node, server)
}

/// Every file in the model store, with its bytes.
fn store_files(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(data.join("models"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .map(|p| {
                    let b = std::fs::read(&p).unwrap_or_default();
                    (p, b)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

async fn submit_path(api: &mut ApiClient, path: &Path) -> (StatusCode, Value) {
    let body = json!({
        "model_path": path.display().to_string(),
        "input": [[0.0]],
        "bid_window_ms": 200,
        "deadline_ms": 2_000,
    });
    api.call(Method::POST, "/tasks", Some(&body), LIMIT)
        .await
        .unwrap()
}

fn error_text(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_path_never_reads_the_nodes_keys_and_nothing_reaches_the_store() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // The owner allows the whole tree that holds the data dir: the data-dir rule alone must
    // keep the keys out.
    let allowed = root.path().to_path_buf();
    let (node, _server) = api_node(&data, |c| c.api.model_dirs = vec![allowed.clone()]).await;
    let secret = std::fs::read(data.join(PAYOUT_KEY_FILE)).unwrap();
    let before = store_files(&data);
    let mut api = ApiClient::connect(&data)
        .await
        .unwrap()
        .expect("node is up");

    // Directly, through a link outside the data dir, and through a hard link (same file).
    let sym = root.path().join("innocent.onnx");
    std::os::unix::fs::symlink(data.join(PAYOUT_KEY_FILE), &sym).unwrap();
    let hard = root.path().join("hard.onnx");
    std::fs::hard_link(data.join(PAYOUT_KEY_FILE), &hard).unwrap();
    for (path, says) in [
        (data.join(PAYOUT_KEY_FILE), "data dir"),
        (data.join("node.key"), "data dir"),
        (data.join(api::TOKEN_FILE), "data dir"),
        (data.join("ledger.redb"), "data dir"),
        (sym.clone(), "data dir"),
        (hard.clone(), "not a model file"),
    ] {
        let (code, body) = submit_path(&mut api, &path).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{}: {body}", path.display());
        assert!(
            error_text(&body).contains(says),
            "{}: {body}",
            path.display()
        );
        assert!(
            !body
                .to_string()
                .contains(&String::from_utf8_lossy(&secret).trim().to_string())
        );
    }
    // The secret uploaded as bytes is no model either: refused before the store.
    let (code, body) = api
        .call(
            Method::POST,
            "/tasks",
            Some(&json!({
                "model_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &secret),
                "input": [[0.0]],
            })),
            LIMIT,
        )
        .await
        .unwrap();
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_text(&body).contains("not an ONNX model"), "{body}");

    let after = store_files(&data);
    assert_eq!(before, after, "the model store changed");
    assert!(after.iter().all(|(_, b)| b != &secret));
    // No trial-load scratch left behind either.
    let scratch = data.join("models.incoming");
    assert!(
        std::fs::read_dir(&scratch).map_or(true, |mut d| d.next().is_none()),
        "scratch left in {}",
        scratch.display()
    );
    drop(api);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_path_is_read_only_under_the_owners_model_dirs_and_only_real_models_are_stored() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let allowed = root.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let mlp = std::fs::read(crate::repo().join("models/digits-mlp.onnx")).unwrap();
    std::fs::write(allowed.join("digits-mlp.onnx"), &mlp).unwrap();
    std::fs::write(allowed.join("notes.onnx"), "not a model at all\n").unwrap();
    let (node, _server) = api_node(&data, |c| c.api.model_dirs = vec![allowed.clone()]).await;
    let mut api = ApiClient::connect(&data)
        .await
        .unwrap()
        .expect("node is up");
    let before = store_files(&data);

    // Outside the allowed dirs (a real model, still refused), relative, missing.
    let outside = std::fs::canonicalize(crate::repo().join("models/digits-mlp.onnx")).unwrap();
    let (code, body) = submit_path(&mut api, &outside).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        error_text(&body).contains("not under a directory the owner allows"),
        "{body}"
    );
    let (code, body) = submit_path(&mut api, Path::new("models/digits-mlp.onnx")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_text(&body).contains("absolute"), "{body}");
    // Inside, but not a model: refused, not stored.
    let (code, body) = submit_path(&mut api, &allowed.join("notes.onnx")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_text(&body).contains("not an ONNX model"), "{body}");
    assert_eq!(store_files(&data), before);

    // Inside and a real model: read, stored, and the task goes to the auction (no workers
    // here, so it fails there, past every check on the path).
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::repo().join("models/samples/digit-3.json")).unwrap(),
    )
    .unwrap();
    let body = json!({
        "model_path": allowed.join("digits-mlp.onnx").display().to_string(),
        "input": input,
        "bid_window_ms": 200,
        "deadline_ms": 2_000,
    });
    let (code, body) = api
        .call(Method::POST, "/tasks", Some(&body), LIMIT)
        .await
        .unwrap();
    assert_ne!(code, StatusCode::BAD_REQUEST, "{body}");
    let id = crank_protocol::ModelId::of(&mlp).to_hex();
    assert!(
        store_files(&data)
            .iter()
            .any(|(p, b)| p.to_string_lossy().contains(&id) && b == &mlp),
        "the allowed model is not in the store"
    );
    drop(api);
    node.shutdown().await;
}

/// A TCP server that records every byte sent to it and answers every request with a JSON
/// body (a fake proof), as a user squatting the API's port would.
async fn squatter() -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    let body = format!("{{\"proof\":\"{}\"}}", "00".repeat(32));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A TCP proxy to `target` that records what clients send: a squatter relaying the
/// challenge to the real node.
async fn relay(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn run_cli(data: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_crank-node"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("CRANK_LOG", "warn")
        .env_remove("CRANK_CONFIG")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_squatting_the_api_port_never_receives_the_token() {
    // A data dir whose node is down, with a stale api.addr now pointing at a squatter.
    let client_dir = tempfile::tempdir().unwrap();
    let data = client_dir.path().join("data");
    crank_node::identity::create_private_dir(&data).unwrap();
    let token = "ab".repeat(32);
    crank_node::identity::write_secret_file(
        &data.join(api::TOKEN_FILE),
        format!("{token}\n").as_bytes(),
    )
    .unwrap();
    let (fake, seen) = squatter().await;
    std::fs::write(data.join(api::ADDR_FILE), format!("{fake}\n")).unwrap();

    let err = ApiClient::connect(&data).await.err().expect("refused");
    assert!(
        matches!(err, ApiClientError::NotAuthenticated { .. }),
        "{err}"
    );
    // The CLI itself, for each command that talks to the API.
    let model = crate::repo().join("models/digits-mlp.onnx");
    let input = crate::repo().join("models/samples/digit-3.json");
    let (model, input) = (model.to_str().unwrap(), input.to_str().unwrap());
    for args in [
        &["status"][..],
        &["--json", "wallet", "balance"][..],
        &["wallet", "history"][..],
        &["submit", "--model", model, "--input", input][..],
    ] {
        let out = run_cli(&data, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains("could not prove"), "{args:?}: {stderr}");
    }
    let got = seen.lock().unwrap().clone();
    assert!(
        contains(&got, "/hello?nonce="),
        "the squatter saw no challenge"
    );
    assert!(!contains(&got, &token), "the squatter received the token");
    assert!(
        !contains(&got, "authorization"),
        "an Authorization header was sent"
    );

    // A squatter that relays the challenge to the real node gets an answer bound to the real
    // node's address, not its own: still refused.
    let real_dir = tempfile::tempdir().unwrap();
    let real_data = real_dir.path().join("data");
    let (node, server) = api_node(&real_data, |c| c.api.listen = Some("127.0.0.1:0".into())).await;
    let real = server.tcp_addr().expect("TCP asked for");
    assert_eq!(
        std::fs::read_to_string(real_data.join(api::ADDR_FILE))
            .unwrap()
            .trim(),
        real.to_string()
    );
    assert_eq!(mode(&real_data.join(api::ADDR_FILE)), 0o600);
    let real_token = api::load_or_create_token(&real_data).unwrap();
    let (proxy, relayed) = relay(real).await;
    let err = ApiClient::connect_to(ApiEndpoint::Tcp(proxy), real_token.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, ApiClientError::NotAuthenticated { .. }),
        "{err}"
    );
    let got = relayed.lock().unwrap().clone();
    assert!(contains(&got, "/hello?nonce="));
    assert!(!contains(&got, &real_token), "the relay received the token");
    // The same client reaches the real node directly: the check is not simply always "no".
    let mut direct = ApiClient::connect_to(ApiEndpoint::Tcp(real), real_token)
        .await
        .unwrap()
        .expect("up");
    let (code, status) = direct
        .call(Method::GET, "/status", None, LIMIT)
        .await
        .unwrap();
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["node_id"], node.handle().node_id().to_hex());
    drop(direct);

    // A clean shutdown removes api.addr and the socket; a stale address with nothing
    // behind it means "no node", not an error.
    drop(server);
    assert!(!real_data.join(api::ADDR_FILE).exists());
    assert!(!real_data.join(api::SOCKET_FILE).exists());
    node.shutdown().await;
    std::fs::write(real_data.join(api::ADDR_FILE), format!("{real}\n")).unwrap();
    assert!(ApiClient::connect(&real_data).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_is_a_0600_socket_that_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (node, server) = api_node(&data, |_| {}).await;
    let socket = data.join(api::SOCKET_FILE);
    assert_eq!(server.socket_path(), socket);
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&socket), 0o600);
    assert!(server.tcp_addr().is_none() && !data.join(api::ADDR_FILE).exists());

    // With the token: works, over the socket.
    let mut api = ApiClient::connect(&data).await.unwrap().expect("up");
    assert_eq!(api.endpoint(), &ApiEndpoint::Unix(socket.clone()));
    let (code, status) = api.call(Method::GET, "/status", None, LIMIT).await.unwrap();
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["node_id"], node.handle().node_id().to_hex());
    drop(api);
    // The binary too.
    let out = run_cli(&data, &["--json", "status"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["node_id"], node.handle().node_id().to_hex());

    // Without it, or with a wrong one: refused.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    raw.write_all(b"GET /status HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let wrong = ApiClient::connect_to(ApiEndpoint::Unix(socket.clone()), "00".repeat(32))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(wrong, ApiClientError::NotAuthenticated { .. }),
        "{wrong}"
    );

    // A socket others can reach is not trusted with the token.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let loose = ApiClient::connect(&data).await.err().expect("refused");
    assert!(
        matches!(loose, ApiClientError::UntrustedSocket { .. }),
        "{loose}"
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A second server on the same data dir does not take over a live socket.
    let again = api::serve(node.handle()).await.expect_err("in use");
    assert!(matches!(again, api::ApiError::InUse { .. }), "{again}");

    // Stopped: the socket is gone. A stale one (left by a crash) is replaced at start.
    drop(server);
    assert!(!socket.exists());
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = api::serve(node.handle()).await.unwrap();
    assert_eq!(mode(&socket), 0o600);
    let mut api = ApiClient::connect(&data).await.unwrap().expect("up");
    let (code, _) = api.call(Method::GET, "/status", None, LIMIT).await.unwrap();
    assert_eq!(code, StatusCode::OK);
    drop(api);
    drop(server);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_files_others_can_read_are_refused_with_the_chmod_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(crate::config(&data, None), Role::default())
        .await
        .unwrap();
    // The token is made by the API on first start.
    api::load_or_create_token(&data).unwrap();
    node.shutdown().await;

    for file in ["node.key", PAYOUT_KEY_FILE] {
        let path = data.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Node::start(crate::config(&data, None), Role::default())
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!("chmod 600 {}", path.display())),
            "{file}: {text}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let token = data.join(api::TOKEN_FILE);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = api::load_or_create_token(&data).expect_err("refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    // The CLI will not read it either.
    let err = ApiClient::connect(&data).await.err().expect("refused");
    assert!(matches!(err, ApiClientError::Secret(_)), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    // Nor serve with it.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = crate::config(&data, None);
    c.api.enabled = true;
    let node = Node::start(c, Role::default()).await.unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o604)).unwrap();
    let err = api::serve(node.handle()).await.expect_err("refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    node.shutdown().await;
}
