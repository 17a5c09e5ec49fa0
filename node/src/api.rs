//! The local HTTP API: status, receipts, model upload and task submission for any program on
//! the device, plus Prometheus `/metrics`.
//!
//! It is served on the Unix socket `<data dir>/api.sock` (mode 0600: only the owner can
//! connect), and also over TCP on a loopback address when the owner asks (`[api] listen`,
//! `--api-addr`); the bound TCP address is written to `<data dir>/api.addr` (0600, removed on
//! clean shutdown). `POST /dashboard` starts the owner's web page ([`crate::dashboard`]) and
//! returns a one-time link to it. Every endpoint except `/health`, `/hello` and `/metrics` needs
//! `Authorization: Bearer <token>`, where the token is in `<data dir>/api.token` (0600,
//! created on first start).
//!
//! # Invariants
//!
//! - **A client learns that it talks to this node before it sends the token**: `GET
//!   /hello?nonce=<hex>` answers [`token_proof`] of the nonce and the address the server is
//!   bound to, which only a holder of the token can compute; binding the address in means a
//!   squatter that relays the question to the real node gets an answer for the wrong address.
//! - **The API never reads a file in the data dir on a caller's behalf**, and reads other
//!   files only under the directories the owner lists in `[api] model_dirs`, checked before
//!   the file is opened.
//! - **Nothing reaches the model store, and so nothing is announced to peers, until it loads
//!   as an ONNX model** ([`check_model_bytes`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use crank_protocol::{ModelId, NodeId};
use crank_scheduler::Preference;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;
use crate::identity::{NODE_KEY_FILE, check_secret_permissions, write_secret_file};
use crate::node::NodeHandle;
use crate::tensor_io::{self, JsonTensor, Prediction};
use crate::{ModelSource, SubmitError, SubmitRequest, TaskOutcome};

/// File holding the API bearer token.
pub const TOKEN_FILE: &str = "api.token";
/// File holding the API's bound TCP address (only while it serves TCP).
pub const ADDR_FILE: &str = "api.addr";
/// The API's Unix socket.
pub const SOCKET_FILE: &str = "api.sock";
/// What [`token_proof`] binds in for the Unix socket (whose owner the client checks).
pub const UNIX_PROOF_ADDR: &str = "unix";

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The token file could not be read or created, or others can read it.
    #[error("API token {path}: {message}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The address does not parse or is not loopback.
    #[error("API address {0:?} must be a loopback socket address such as 127.0.0.1:7070")]
    Address(String),
    /// Binding failed.
    #[error("cannot bind the API to {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A live node already answers on the data dir's socket.
    #[error(
        "another crank-node already serves {path}: two nodes cannot share a data dir (stop it, or pass another --data-dir)"
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket sits where the socket goes; it is left alone.
    #[error("{path} exists and is not a socket; move it away so the API can listen there")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The API is disabled in the config.
    #[error("the API is disabled ([api] enabled = false)")]
    Disabled,
}

/// Loads the token, creating it on first use; refuses a token file others can read.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, ApiError> {
    let path = data_dir.join(TOKEN_FILE);
    let err = |message: String| ApiError::Token {
        path: path.clone(),
        message,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            check_secret_permissions(&path).map_err(|e| err(e.to_string()))?;
            Ok(t.trim().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| err(e.to_string()))?;
            let token = hex::encode(bytes);
            write_secret_file(&path, format!("{token}\n").as_bytes())
                .map_err(|e| err(e.to_string()))?;
            Ok(token)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// The server's answer to a client's nonce: a keyed hash only a holder of `token` can make,
/// bound to the address the client meant to reach (`ip:port`, or [`UNIX_PROOF_ADDR`]).
pub fn token_proof(token: &str, nonce: &[u8; 32], addr: &str) -> [u8; 32] {
    let key = blake3::derive_key("crank-node local API server proof v1", token.as_bytes());
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(nonce);
    h.update(addr.as_bytes());
    *h.finalize().as_bytes()
}

/// Equality that takes the same time wherever the inputs differ (for secrets and proofs).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    token: Arc<str>,
    /// The address [`token_proof`] binds in on this listener.
    proof_addr: Arc<str>,
    /// The owner's web page, started by the first `POST /dashboard`.
    dashboard: Arc<crate::dashboard::Dashboard>,
}

/// The running API. Dropping it stops serving and removes the socket and `api.addr` (the
/// files this server made, not a later server's).
pub struct ApiServer {
    socket: PathBuf,
    /// Device and inode of the socket this server bound.
    socket_id: Option<(u64, u64)>,
    tcp: Option<SocketAddr>,
    addr_file: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dashboard: Arc<crate::dashboard::Dashboard>,
}

impl ApiServer {
    /// The Unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The TCP address, when the owner asked for one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }
}

impl fmt::Display for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix:{}", self.socket.display())?;
        if let Some(a) = self.tcp {
            write!(f, " and http://{a}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiServer({self})")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.dashboard.stop();
        let ours = std::fs::symlink_metadata(&self.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            let _ = std::fs::remove_file(&self.socket);
        }
        if let Some(a) = self.tcp
            && std::fs::read_to_string(&self.addr_file).is_ok_and(|t| t.trim() == a.to_string())
        {
            let _ = std::fs::remove_file(&self.addr_file);
        }
    }
}

/// Makes way for the socket: a socket nobody answers on (left by a node that died) is
/// removed; a live one, or anything that is not a socket, is an error.
async fn clear_stale_socket(path: &Path) -> Result<(), ApiError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiError::Bind {
                addr: path.display().to_string(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket { path: path.into() });
    }
    let live = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::UnixStream::connect(path),
    )
    .await;
    // A timeout means something holds it but is slow: not ours to remove.
    if !matches!(live, Ok(Err(_))) {
        return Err(ApiError::InUse { path: path.into() });
    }
    std::fs::remove_file(path).map_err(|source| ApiError::Bind {
        addr: path.display().to_string(),
        source,
    })
}

/// Starts the API in the background: the Unix socket, and TCP when configured.
pub async fn serve(node: NodeHandle) -> Result<ApiServer, ApiError> {
    let config = node.config().clone();
    if !config.api.enabled {
        return Err(ApiError::Disabled);
    }
    let tcp_addr = match &config.api.listen {
        Some(text) => Some(loopback_addr(text)?),
        None => None,
    };
    let dashboard_addr = loopback_addr(&config.api.dashboard_listen)?;
    let token: Arc<str> = load_or_create_token(&config.data_dir)?.into();
    let socket = config.data_dir.join(SOCKET_FILE);
    clear_stale_socket(&socket).await?;
    // No live node serves this data dir: an address left by one that died must not point
    // clients at whoever takes the port.
    let addr_file = config.data_dir.join(ADDR_FILE);
    let _ = std::fs::remove_file(&addr_file);
    let bind_err = |source| ApiError::Bind {
        addr: socket.display().to_string(),
        source,
    };
    let unix = tokio::net::UnixListener::bind(&socket).map_err(bind_err)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let socket_id = std::fs::symlink_metadata(&socket)
        .ok()
        .map(|m| (m.dev(), m.ino()));

    let max_body = usize::try_from(config.engine.max_model_bytes)
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .max(1 << 20);
    let dashboard = crate::dashboard::Dashboard::new(node.clone(), dashboard_addr);
    let mut server = ApiServer {
        socket: socket.clone(),
        socket_id,
        tcp: None,
        addr_file: addr_file.clone(),
        tasks: Vec::new(),
        dashboard: dashboard.clone(),
    };
    let unix_app = app(
        AppState {
            node: node.clone(),
            token: token.clone(),
            proof_addr: UNIX_PROOF_ADDR.into(),
            dashboard: dashboard.clone(),
        },
        max_body,
    );
    server.tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(unix, unix_app).await {
            tracing::warn!(error = %e, "local API (socket) stopped");
        }
    }));

    if let Some(addr) = tcp_addr {
        let tcp_err = |source| ApiError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(tcp_err)?;
        let bound = listener.local_addr().map_err(tcp_err)?;
        server.tcp = Some(bound);
        if let Err(e) = write_secret_file(&addr_file, format!("{bound}\n").as_bytes()) {
            tracing::warn!(error = %e, "cannot write the API address file");
        }
        let tcp_app = app(
            AppState {
                node,
                token,
                proof_addr: bound.to_string().into(),
                dashboard,
            },
            max_body,
        );
        server.tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, tcp_app).await {
                tracing::warn!(error = %e, "local API (TCP) stopped");
            }
        }));
    }
    Ok(server)
}

fn app(state: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/hello", get(hello))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/receipts", get(receipts))
        .route("/peers/{id}", get(peer))
        .route("/models", post(upload_model))
        .route("/tasks", post(submit_task))
        .route("/wallet", get(wallet_balance))
        .route("/wallet/settle", post(wallet_settle))
        .route("/wallet/history", get(wallet_history))
        .route("/dashboard", post(dashboard_link))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// A loopback socket address from the config, or why not.
fn loopback_addr(text: &str) -> Result<SocketAddr, ApiError> {
    text.parse::<SocketAddr>()
        .ok()
        .filter(|a| a.ip().is_loopback())
        .ok_or_else(|| ApiError::Address(text.to_string()))
}

/// `POST /dashboard`: starts the owner's web page if needed and mints a one-time link.
async fn dashboard_link(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let link = state
        .dashboard
        .link()
        .await
        .map_err(|e| http_error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    serde_json::to_value(link)
        .map(Json)
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

#[derive(Deserialize)]
struct Hello {
    nonce: String,
}

/// `GET /hello?nonce=<64 hex>`: proves this server holds the token, without revealing it.
async fn hello(
    State(state): State<AppState>,
    Query(q): Query<Hello>,
) -> Result<Json<Value>, HttpError> {
    let nonce: [u8; 32] = hex::decode(&q.nonce)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| http_error(StatusCode::BAD_REQUEST, "nonce must be 32 bytes in hex"))?;
    let proof = token_proof(&state.token, &nonce, &state.proof_addr);
    Ok(Json(
        json!({ "proof": hex::encode(proof), "addr": &*state.proof_addr }),
    ))
}

/// Why a model named by path was refused. Every check runs before the file is opened.
#[derive(Debug, thiserror::Error)]
pub enum ModelPathError {
    /// The path is relative: the node's working directory means nothing to the caller.
    #[error("model_path {0:?} must be an absolute path")]
    Relative(String),
    /// The path does not resolve.
    #[error("model_path {path}: {source}")]
    Resolve {
        /// The path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path resolves into the data dir, which holds the node's keys.
    #[error(
        "model_path {path} is inside the node's data dir {data_dir}, which holds its keys: the API never reads files there"
    )]
    InDataDir {
        /// The path as given.
        path: String,
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The path is outside every directory the owner allows.
    #[error(
        "model_path {path} is not under a directory the owner allows ([api] model_dirs = {allowed:?}); send the model's bytes instead (model_base64, or POST /models)"
    )]
    NotAllowed {
        /// The path as given.
        path: String,
        /// The allowed directories.
        allowed: Vec<PathBuf>,
    },
    /// Not a regular file (or the same file as one of the node's secrets).
    #[error("model_path {0} is not a model file the API may read")]
    NotAFile(String),
    /// The file changed between the check and the open (a link swapped in).
    #[error("model_path {0} changed while it was opened")]
    Changed(String),
    /// Larger than the model limit.
    #[error("model_path {path} is {size} bytes, over the {limit}-byte model limit")]
    TooLarge {
        /// The path as given.
        path: String,
        /// Its size.
        size: u64,
        /// `[engine] max_model_bytes`.
        limit: u64,
    },
}

/// Reads a model the caller named by path, if the owner allows that path: it must resolve
/// (links followed) under one of `[api] model_dirs` and outside the data dir, and be a
/// regular file that is not one of the node's secrets. All of this is checked before the
/// file is opened; the opened file must still be the one checked.
pub fn read_allowed_model(config: &Config, path: &str) -> Result<Vec<u8>, ModelPathError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let given = Path::new(path);
    if !given.is_absolute() {
        return Err(ModelPathError::Relative(path.into()));
    }
    let resolve = |source| ModelPathError::Resolve {
        path: path.into(),
        source,
    };
    let real = std::fs::canonicalize(given).map_err(resolve)?;
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or(config.data_dir.clone());
    if real.starts_with(&data_dir) {
        return Err(ModelPathError::InDataDir {
            path: path.into(),
            data_dir,
        });
    }
    let allowed = config
        .api
        .model_dirs
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .any(|d| real.starts_with(d));
    if !allowed {
        return Err(ModelPathError::NotAllowed {
            path: path.into(),
            allowed: config.api.model_dirs.clone(),
        });
    }
    let checked = std::fs::symlink_metadata(&real).map_err(resolve)?;
    // A hard link to a key elsewhere is still the key.
    let secret = [NODE_KEY_FILE, crate::PAYOUT_KEY_FILE, TOKEN_FILE]
        .iter()
        .filter_map(|f| std::fs::metadata(config.data_dir.join(f)).ok())
        .any(|m| (m.dev(), m.ino()) == (checked.dev(), checked.ino()));
    if !checked.file_type().is_file() || secret {
        return Err(ModelPathError::NotAFile(path.into()));
    }
    let limit = config.engine.max_model_bytes;
    if checked.len() > limit {
        return Err(ModelPathError::TooLarge {
            path: path.into(),
            size: checked.len(),
            limit,
        });
    }
    // No following a link swapped in after the check, no blocking on a FIFO.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(&real)
        .map_err(resolve)?;
    let opened = file.metadata().map_err(resolve)?;
    if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) || !opened.is_file() {
        return Err(ModelPathError::Changed(path.into()));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(resolve)?;
    if bytes.len() as u64 > limit {
        return Err(ModelPathError::TooLarge {
            path: path.into(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Why model bytes were refused before reaching the store.
#[derive(Debug, thiserror::Error)]
pub enum ModelCheckError {
    /// Not even shaped like an ONNX file (a protobuf `ModelProto` with a graph).
    #[error("not an ONNX model: {0}")]
    NotOnnx(&'static str),
    /// Shaped like one, but the runtime cannot load it.
    #[error("not a model crank-node can run: {0}")]
    Invalid(#[source] crank_inference::InferenceError),
    /// The scratch space for the trial load could not be made.
    #[error("cannot check the model: {0}")]
    Scratch(#[source] std::io::Error),
    /// The trial load's store refused the bytes (too large, for one).
    #[error("cannot check the model: {0}")]
    Store(#[source] crank_inference::StoreError),
}

/// A cheap structural check: the bytes parse as protobuf fields and hold a `graph` (field 7
/// of ONNX's `ModelProto`). Text, keys and most other files fail on their first bytes.
pub fn looks_like_onnx(bytes: &[u8]) -> Result<(), ModelCheckError> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let bad = ModelCheckError::NotOnnx;
    let mut i = 0;
    let mut graph = false;
    while i < bytes.len() {
        let key = varint(bytes, &mut i).ok_or(bad("truncated field key"))?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(bad("field number 0"));
        }
        match wire {
            0 => {
                varint(bytes, &mut i).ok_or(bad("truncated number"))?;
            }
            1 => i = i.checked_add(8).ok_or(bad("truncated"))?,
            5 => i = i.checked_add(4).ok_or(bad("truncated"))?,
            2 => {
                let len = varint(bytes, &mut i).ok_or(bad("truncated length"))?;
                let len = usize::try_from(len).map_err(|_| bad("length out of range"))?;
                graph |= field == 7 && len > 0;
                i = i.checked_add(len).ok_or(bad("length out of range"))?;
            }
            _ => return Err(bad("not a protobuf message")),
        }
        if i > bytes.len() {
            return Err(bad("truncated"));
        }
    }
    if graph { Ok(()) } else { Err(bad("no graph")) }
}

/// Checks that `bytes` are a model the node can run before anything is stored: the
/// structural check, then a trial load in a private scratch store (removed after). Blocks
/// while the model is parsed; call it from a blocking context.
pub fn check_model_bytes(config: &Config, bytes: &[u8]) -> Result<(), ModelCheckError> {
    looks_like_onnx(bytes)?;
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(|e| ModelCheckError::Scratch(std::io::Error::other(e)))?;
    let dir = config
        .data_dir
        .join("models.incoming")
        .join(hex::encode(tag));
    crate::identity::create_private_dir(&dir).map_err(ModelCheckError::Scratch)?;
    let result = trial_load(config, &dir, bytes);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Loads `bytes` with a one-worker engine over a scratch store in `dir`.
fn trial_load(config: &Config, dir: &Path, bytes: &[u8]) -> Result<(), ModelCheckError> {
    let store = crank_inference::ModelStore::open(dir, config.engine.max_model_bytes)
        .map_err(ModelCheckError::Store)?;
    let id = store.put(bytes).map_err(ModelCheckError::Store)?;
    let mut engine_config = config.engine.clone();
    engine_config.workers = 1;
    engine_config.queue_slots = 1;
    engine_config.threads_per_run = 1;
    engine_config.plan_cache_entries = 1;
    engine_config.batching = false;
    let engine = crank_inference::Engine::new(engine_config, Arc::new(store))
        .map_err(ModelCheckError::Invalid)?;
    let info = engine.inspect(&id);
    engine.shutdown();
    info.map(|_| ()).map_err(ModelCheckError::Invalid)
}

/// Adds model bytes to the node's store (announcing them) only once they pass
/// [`check_model_bytes`]; bytes already stored and loadable skip the trial load.
pub async fn add_checked_model(node: &NodeHandle, bytes: Vec<u8>) -> Result<ModelId, String> {
    let id = ModelId::of(&bytes);
    let known = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.input_names(&id).is_ok())
            .await
            .unwrap_or(false)
    };
    let bytes = if known {
        bytes
    } else {
        let config = node.config().clone();
        tokio::task::spawn_blocking(move || check_model_bytes(&config, &bytes).map(|()| bytes))
            .await
            .map_err(|e| format!("model check stopped: {e}"))?
            .map_err(|e| e.to_string())?
    };
    node.add_model(&bytes).await.map_err(|e| e.to_string())
}

struct HttpError(StatusCode, Value);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn http_error(code: StatusCode, message: impl std::fmt::Display) -> HttpError {
    HttpError(code, json!({ "error": message.to_string() }))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), HttpError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token is a secret.
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), state.token.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(http_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see api.token in the data dir)",
        ))
    }
}

async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, HttpError> {
    loopback_host(&headers)?;
    Ok((
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.node.metrics_text(),
    ))
}

/// `/metrics` needs no token, so it checks that the request was meant for this machine: a
/// web page the owner opens cannot read it through a domain that resolves to 127.0.0.1 (DNS
/// rebinding), because its requests carry that domain as their Host.
fn loopback_host(headers: &HeaderMap) -> Result<(), HttpError> {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        Ok(())
    } else {
        Err(http_error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {host:?} is not this machine's loopback address; use 127.0.0.1 or localhost"
            ),
        ))
    }
}

/// Whether a Host header names a loopback address (with or without a port).
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:port
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let s = state
        .node
        .status()
        .await
        .map_err(|e| http_error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    serde_json::to_value(s)
        .map(Json)
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// `GET /peers/{id}`: what this node knows of a peer (node id in hex, or its libp2p peer
/// id) and why it trusts it as it does.
async fn peer(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let node = parse_peer(&id).ok_or_else(|| {
        http_error(
            StatusCode::BAD_REQUEST,
            format!(
                "`{}` is neither a node id (64 hex digits) nor a peer id",
                clip_id(&id)
            ),
        )
    })?;
    let report = state
        .node
        .peer(&node)
        .await
        .map_err(|e| http_error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    serde_json::to_value(report)
        .map(Json)
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// A node id from hex, or from the libp2p peer id of an ed25519 key.
fn parse_peer(id: &str) -> Option<NodeId> {
    if let Ok(node) = id.parse::<NodeId>() {
        return Some(node);
    }
    let peer: libp2p::PeerId = id.parse().ok()?;
    crate::network::node_id_of(&peer)
}

/// An id echoed back in an error, cut to a readable length.
fn clip_id(id: &str) -> String {
    id.chars().take(80).collect()
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn receipts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let list = state.node.receipts(q.limit.unwrap_or(100).min(10_000));
    let views: Vec<Value> = list.iter().map(receipt_json).collect();
    Ok(Json(Value::Array(views)))
}

/// A stored receipt for scripts: the counter-signed receipt exactly as signed (`receipt`,
/// under the wire version it was made with, `wire_version`), where it stands with payment
/// (`settlement`, `paid_stroops`) and with the requester's checks (`check`: "awaiting
/// outputs", "delivered", "passed" or "disputed: …").
fn receipt_json(r: &crank_payments::StoredReceipt) -> Value {
    use crank_payments::ReceiptProof;
    let (receipt, wire_version) = match &r.proof {
        ReceiptProof::Current(c) => (serde_json::to_value(c), 2),
        ReceiptProof::V1(c) => (serde_json::to_value(c), 1),
    };
    serde_json::json!({
        "receipt": receipt.unwrap_or(Value::Null),
        "wire_version": wire_version,
        "role": r.role,
        "stored_at": r.stored_at,
        "order": r.order,
        "settlement": r.settlement,
        "paid_stroops": r.paid_stroops,
        "check": r.check.to_string(),
    })
}

async fn upload_model(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let len = body.len();
    let id = add_checked_model(&state.node, body.to_vec())
        .await
        .map_err(|e| http_error(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(json!({ "model": id.to_hex(), "bytes": len })))
}

/// A task submission as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskJson {
    /// Content id of a model already in the node's store.
    #[serde(default)]
    pub model: Option<String>,
    /// Path of an ONNX file under a directory in `[api] model_dirs` (never in the data dir).
    #[serde(default)]
    pub model_path: Option<String>,
    /// The ONNX bytes, base64.
    #[serde(default)]
    pub model_base64: Option<String>,
    /// Inputs (see `tensor_io` for the accepted forms).
    pub input: Value,
    /// Highest price, stroops.
    #[serde(default)]
    pub max_price_stroops: Option<u64>,
    /// Time allowed, ms.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Bid window, ms.
    #[serde(default)]
    pub bid_window_ms: Option<u64>,
    /// cheap, fast, green or balanced.
    #[serde(default)]
    pub prefer: Option<String>,
    /// The submitter's labels (`{"team": "search"}`), for its policies and reports; they stay
    /// on this node.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A completed task as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResultJson {
    /// The task.
    pub task_id: String,
    /// The model.
    pub model: String,
    /// The worker's node id.
    pub worker: String,
    /// The worker's peer id.
    pub worker_peer_id: String,
    /// Price owed, stroops.
    pub price_stroops: u64,
    /// Submit to result, ms.
    pub elapsed_ms: f64,
    /// Class and probability per row, for classifiers.
    pub predictions: Option<Vec<Prediction>>,
    /// All outputs.
    pub outputs: Vec<JsonTensor>,
    /// The counter-signed receipt.
    pub receipt: crank_protocol::Receipt,
    /// What the auction did.
    pub auction: crank_scheduler::AuctionTrace,
    /// The spot check, when checks are on.
    #[serde(default)]
    pub check: Option<crate::requester::CheckReport>,
    /// The submitter's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Outputs the output policy withheld.
    #[serde(default)]
    pub redacted: Vec<String>,
}

impl From<&TaskOutcome> for TaskResultJson {
    fn from(o: &TaskOutcome) -> Self {
        Self {
            task_id: o.task_id.to_hex(),
            model: o.model.to_hex(),
            worker: o.worker.to_hex(),
            worker_peer_id: crate::network::peer_id_string(&o.worker),
            price_stroops: o.price_stroops,
            elapsed_ms: o.elapsed_ms,
            predictions: tensor_io::predictions(&o.outputs),
            outputs: o.outputs.iter().map(tensor_io::to_json).collect(),
            receipt: o.receipt.clone(),
            auction: o.trace.clone(),
            check: o.check.clone(),
            labels: o.labels.clone(),
            redacted: o.redacted.clone(),
        }
    }
}

/// Turns a JSON submission into a request: a model named by path is read only if
/// [`read_allowed_model`] allows it, and new model bytes are stored only once they load.
pub async fn request_from_json(node: &NodeHandle, task: TaskJson) -> Result<SubmitRequest, String> {
    let model = match (task.model, task.model_path, task.model_base64) {
        (Some(id), None, None) => {
            ModelSource::Id(id.parse::<ModelId>().map_err(|e| e.to_string())?)
        }
        (None, Some(path), None) => {
            let config = node.config().clone();
            ModelSource::Bytes(
                tokio::task::spawn_blocking(move || read_allowed_model(&config, &path))
                    .await
                    .map_err(|e| format!("model_path: {e}"))?
                    .map_err(|e| e.to_string())?,
            )
        }
        (None, None, Some(b64)) => ModelSource::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("model_base64: {e}"))?,
        ),
        _ => return Err("give exactly one of model, model_path, model_base64".into()),
    };
    // Unnamed input tensors take the model's input names, so the model must be known first.
    let id = match model {
        ModelSource::Id(id) => id,
        ModelSource::Bytes(bytes) => add_checked_model(node, bytes).await?,
    };
    let names = node.input_names(&id).map_err(|e| e.to_string())?;
    let inputs =
        tensor_io::parse_inputs(&task.input.to_string(), &names).map_err(|e| e.to_string())?;
    let prefer = match task.prefer {
        Some(p) => p.parse::<Preference>().map_err(|e| e.to_string())?,
        None => Preference::Balanced,
    };
    crate::requester::check_labels(&task.labels)?;
    Ok(SubmitRequest {
        model: ModelSource::Id(id),
        inputs,
        max_price_stroops: task.max_price_stroops,
        deadline_ms: task.deadline_ms,
        bid_window_ms: task.bid_window_ms,
        prefer,
        labels: task.labels,
    })
}

async fn submit_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(task): Json<TaskJson>,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let req = request_from_json(&state.node, task)
        .await
        .map_err(|e| http_error(StatusCode::BAD_REQUEST, e))?;
    match state.node.submit(req).await {
        Ok(outcome) => serde_json::to_value(TaskResultJson::from(&outcome))
            .map(Json)
            .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(e) => {
            let code = match &e {
                SubmitError::Model(_) | SubmitError::Input(_) | SubmitError::Spec(_) => {
                    StatusCode::BAD_REQUEST
                }
                SubmitError::NoCandidates { .. } => StatusCode::SERVICE_UNAVAILABLE,
                // Refused by this node's own policy, not by the mesh.
                SubmitError::Placement { .. } => StatusCode::FORBIDDEN,
                SubmitError::Failed { .. } => StatusCode::BAD_GATEWAY,
            };
            let mut body = json!({ "error": e.to_string() });
            if let SubmitError::Failed { explanation, trace } = &e {
                body["explanation"] = serde_json::to_value(explanation).unwrap_or(Value::Null);
                body["auction"] = serde_json::to_value(trace).unwrap_or(Value::Null);
            }
            Err(HttpError(code, body))
        }
    }
}

async fn wallet_balance(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let b = state
        .node
        .wallet()
        .balance()
        .await
        .map_err(|e| http_error(StatusCode::BAD_GATEWAY, e))?;
    serde_json::to_value(b)
        .map(Json)
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// Body of `POST /wallet/settle`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettleJson {
    /// Pay everything owed, not only what crossed the threshold.
    pub all: bool,
    /// Sign but do not submit; return the envelopes.
    pub dry_run: bool,
}

async fn wallet_settle(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<SettleJson>,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let v = state
        .node
        .wallet()
        .settle(req.all, req.dry_run)
        .await
        .map_err(|e| http_error(StatusCode::BAD_GATEWAY, e))?;
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn wallet_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, HttpError> {
    authorize(&state, &headers)?;
    let list = state
        .node
        .wallet()
        .history(q.limit.unwrap_or(50).min(10_000))
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    serde_json::to_value(list)
        .map(Json)
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_protobuf_with_a_graph_looks_like_onnx() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        for m in ["digits-mlp.onnx", "digits-cnn.onnx"] {
            let bytes = std::fs::read(root.join(m)).unwrap();
            looks_like_onnx(&bytes).unwrap();
            // Cut anywhere inside, it no longer parses.
            assert!(looks_like_onnx(&bytes[..bytes.len() - 3]).is_err(), "{m}");
        }
        for bad in [
            &b"SBX4QJ2Y5GF6KJ3ZB3PD7C2R5NNOLQBVCFN6W3CS3LBDXUVM2D3FQSHV\n"[..],
            b"crank-node ed25519 secret key v1\n00ff\n",
            b"",
            b"\x08\x07", // ir_version only: no graph
        ] {
            assert!(looks_like_onnx(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_proof_binds_the_token_the_nonce_and_the_address() {
        let t = "ab".repeat(32);
        let p = token_proof(&t, &[1; 32], "127.0.0.1:7070");
        assert_eq!(p, token_proof(&t, &[1; 32], "127.0.0.1:7070"));
        assert_ne!(p, token_proof(&"ac".repeat(32), &[1; 32], "127.0.0.1:7070"));
        assert_ne!(p, token_proof(&t, &[2; 32], "127.0.0.1:7070"));
        assert_ne!(p, token_proof(&t, &[1; 32], "127.0.0.1:7071"));
        assert!(constant_time_eq(&p, &p) && !constant_time_eq(&p, &p[..31]));
    }

    #[test]
    fn only_loopback_hosts_reach_the_metrics() {
        for ok in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "localhost:7070",
            "LOCALHOST",
            "[::1]:7070",
            "127.1.2.3:9",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:7070",
            "evil.example",
            "10.0.0.1:7070",
            "[::2]:1",
            "localhost.evil.example",
            "127.0.0.1.evil.example:80",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
