//! The local HTTP API: status, receipts, model upload and task submission for any program on
//! the device, plus Prometheus `/metrics`.
//!
//! It binds to loopback only and every endpoint except `/health` and `/metrics` needs
//! `Authorization: Bearer <token>`, where the token is in `<data dir>/api.token` (0600,
//! created on first start). The bound address is written to `<data dir>/api.addr` so the
//! CLI finds a node started with port 0.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use crank_protocol::ModelId;
use crank_scheduler::Preference;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::identity::{check_secret_permissions, write_secret_file};
use crate::node::NodeHandle;
use crate::tensor_io::{self, JsonTensor, Prediction};
use crate::{ModelSource, SubmitError, SubmitRequest, TaskOutcome};

/// File holding the API bearer token.
pub const TOKEN_FILE: &str = "api.token";
/// File holding the API's bound address.
pub const ADDR_FILE: &str = "api.addr";

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The token file could not be read or created.
    #[error("API token {path}: {message}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The address does not parse or is not loopback.
    #[error("API address {0:?} must be a loopback socket address such as 127.0.0.1:7070")]
    Address(String),
    /// Binding failed.
    #[error("cannot bind the API to {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The API is disabled in the config.
    #[error("the API is disabled ([api] enabled = false)")]
    Disabled,
}

/// Loads the token, creating it on first use.
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

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    token: String,
}

/// Starts the API in the background; returns the bound address.
pub async fn serve(node: NodeHandle) -> Result<SocketAddr, ApiError> {
    let config = node.config().clone();
    if !config.api.enabled {
        return Err(ApiError::Disabled);
    }
    let addr: SocketAddr = config
        .api
        .listen
        .parse()
        .map_err(|_| ApiError::Address(config.api.listen.clone()))?;
    if !addr.ip().is_loopback() {
        return Err(ApiError::Address(config.api.listen.clone()));
    }
    let token = load_or_create_token(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ApiError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    if let Err(e) = std::fs::write(config.data_dir.join(ADDR_FILE), format!("{bound}\n")) {
        tracing::warn!(error = %e, "cannot write the API address file");
    }
    let max_body = usize::try_from(config.engine.max_model_bytes)
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .max(1 << 20);
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/receipts", get(receipts))
        .route("/models", post(upload_model))
        .route("/tasks", post(submit_task))
        .route("/wallet", get(wallet_balance))
        .route("/wallet/settle", post(wallet_settle))
        .route("/wallet/history", get(wallet_history))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(AppState { node, token });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "local API stopped");
        }
    });
    Ok(bound)
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
    let ok = given.is_some_and(|g| {
        g.len() == state.token.len()
            && g.bytes()
                .zip(state.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
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
    let id = state
        .node
        .add_model(&body)
        .await
        .map_err(|e| http_error(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(json!({ "model": id.to_hex(), "bytes": body.len() })))
}

/// A task submission as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskJson {
    /// Content id of a model already in the node's store.
    #[serde(default)]
    pub model: Option<String>,
    /// Path of an ONNX file readable by the node.
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
        }
    }
}

/// Turns a JSON submission into a request (reading the model file if named).
pub async fn request_from_json(node: &NodeHandle, task: TaskJson) -> Result<SubmitRequest, String> {
    let model = match (task.model, task.model_path, task.model_base64) {
        (Some(id), None, None) => {
            ModelSource::Id(id.parse::<ModelId>().map_err(|e| e.to_string())?)
        }
        (None, Some(path), None) => ModelSource::Bytes(
            tokio::fs::read(&path)
                .await
                .map_err(|e| format!("cannot read model {path}: {e}"))?,
        ),
        (None, None, Some(b64)) => ModelSource::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("model_base64: {e}"))?,
        ),
        _ => return Err("give exactly one of model, model_path, model_base64".into()),
    };
    // Unnamed input tensors take the model's input names, so the model must be known first.
    let id = match &model {
        ModelSource::Id(id) => *id,
        ModelSource::Bytes(bytes) => node.add_model(bytes).await.map_err(|e| e.to_string())?,
    };
    let names = node.input_names(&id).map_err(|e| e.to_string())?;
    let inputs =
        tensor_io::parse_inputs(&task.input.to_string(), &names).map_err(|e| e.to_string())?;
    let prefer = match task.prefer {
        Some(p) => p.parse::<Preference>().map_err(|e| e.to_string())?,
        None => Preference::Balanced,
    };
    Ok(SubmitRequest {
        model: ModelSource::Id(id),
        inputs,
        max_price_stroops: task.max_price_stroops,
        deadline_ms: task.deadline_ms,
        bid_window_ms: task.bid_window_ms,
        prefer,
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
