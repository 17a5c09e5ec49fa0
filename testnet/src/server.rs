//! The HTTP face of the local network: Horizon's endpoints, friendbot, fault injection and a
//! small admin API, served with axum.
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /` | root: passphrase, latest ledger |
//! | `GET /accounts/{id}` | account (sequence, balances) or 404 |
//! | `GET /accounts/{id}/transactions?cursor=&order=&limit=&include_failed=` | a page of the account's included transactions, paged as in Horizon (oldest first by default) |
//! | `POST /transactions` | submit (form field `tx`, or query `tx`) |
//! | `GET /transactions/{hash}` | an included transaction or 404 |
//! | `GET /friendbot?addr=` (also `POST`) | create and fund an account |
//! | `POST /admin/faults` | queue faults: `{"fault": "timeout_after_apply", "count": 1}` |
//! | `DELETE /admin/faults` | clear queued faults |
//! | `POST /admin/clock` | move the network clock: `{"advance_secs": 300}` |
//! | `GET /admin/state` | balances, payments, counters |

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::network::{Account, Answer, AppliedPayment, Network, NetworkConfig, PageQuery};

/// A misbehaviour the server shows on the next `POST /transactions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Apply the transaction, then answer 504 as Horizon does when it gives up waiting.
    TimeoutAfterApply,
    /// Answer 504 without applying the transaction.
    TimeoutBeforeApply,
    /// Apply the transaction, then cut the connection in the middle of the answer.
    DropAfterApply,
    /// Cut the connection without applying the transaction.
    DropBeforeApply,
    /// Answer 503 without applying (a load balancer in trouble).
    UnavailableBeforeApply,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
            format!(
                "unknown fault {s:?}; expected timeout_after_apply, timeout_before_apply, drop_after_apply, drop_before_apply or unavailable_before_apply"
            )
        })
    }
}

#[derive(Debug)]
struct Inner {
    net: Network,
    faults: VecDeque<Fault>,
    /// Seconds added to the system clock (moved by tests to expire time bounds).
    clock_offset: i64,
}

/// Shared server state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ledger half-updated in a way that
        // matters for a test double, so a poisoned lock is simply taken over.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> u64 {
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        sys.saturating_add_signed(self.lock().clock_offset)
    }
}

/// A running local Horizon: its address and handles to inspect and steer it.
#[derive(Debug)]
pub struct LocalHorizon {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LocalHorizon {
    /// Starts the server on `listen` (use port 0 for a free port) in the current tokio
    /// runtime.
    pub async fn start(config: NetworkConfig, listen: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Shared(Arc::new(Mutex::new(Inner {
            net: Network::new(config),
            faults: VecDeque::new(),
            clock_offset: 0,
        })));
        let app = router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                warn!(error = %e, "local Horizon stopped with an error");
            }
        });
        info!(%addr, "local Horizon listening");
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The base URL, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The network passphrase.
    pub fn passphrase(&self) -> String {
        self.shared.lock().net.config().passphrase.clone()
    }

    /// Queues `count` faults for the next submissions.
    pub fn inject(&self, fault: Fault, count: usize) {
        let mut g = self.shared.lock();
        for _ in 0..count {
            g.faults.push_back(fault);
        }
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.len()
    }

    /// Moves the network clock forward.
    pub fn advance_clock(&self, secs: i64) {
        self.shared.lock().clock_offset += secs;
    }

    /// The network's current time, Unix seconds.
    pub fn now(&self) -> u64 {
        self.shared.now()
    }

    /// An account's state.
    pub fn account(&self, address: &str) -> Option<Account> {
        self.shared.lock().net.account(address)
    }

    /// Creates or overwrites an account with an exact balance.
    pub fn set_account(&self, address: &str, balance: i64) -> Result<(), String> {
        self.shared.lock().net.set_account(address, balance)
    }

    /// Every payment applied so far.
    pub fn payments(&self) -> Vec<AppliedPayment> {
        self.shared.lock().net.payments().to_vec()
    }

    /// Transactions included in ledgers so far.
    pub fn included(&self) -> usize {
        self.shared.lock().net.included()
    }

    /// Submissions received so far.
    pub fn submissions(&self) -> u64 {
        self.shared.lock().net.submissions()
    }

    /// The memo hash of an included transaction.
    pub fn memo_hash(&self, tx_hash_hex: &str) -> Option<[u8; 32]> {
        self.shared.lock().net.memo_hash(tx_hash_hex)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for LocalHorizon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn json_response(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ctype = if a.status >= 400 {
        "application/problem+json; charset=utf-8"
    } else {
        "application/hal+json; charset=utf-8"
    };
    (status, [(header::CONTENT_TYPE, ctype)], a.body.to_string()).into_response()
}

/// A response whose body breaks off after a few bytes, so the client sees the connection
/// drop mid-answer.
fn dropped_response() -> Response {
    let stream = futures::stream::iter([
        Ok::<Bytes, std::io::Error>(Bytes::from_static(b"{\"hash\":")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fault injected: connection dropped",
        )),
    ]);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/hal+json; charset=utf-8")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The router, for embedding in another server.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/accounts/{id}", get(account))
        .route("/accounts/{id}/transactions", get(account_transactions))
        .route("/transactions", post(submit))
        .route("/transactions/{hash}", get(transaction))
        .route("/friendbot", get(friendbot_get).post(friendbot_post))
        .route("/admin/faults", post(add_faults).delete(clear_faults))
        .route("/admin/clock", post(move_clock))
        .route("/admin/state", get(state))
        .with_state(shared)
}

async fn root(State(s): State<Shared>) -> Response {
    let body = s.lock().net.root();
    json_response(Answer { status: 200, body })
}

async fn account(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    json_response(s.lock().net.account_json(&id))
}

async fn account_transactions(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let page = match PageQuery::parse(&q) {
        Ok(p) => p,
        Err(a) => return json_response(a),
    };
    json_response(
        s.lock()
            .net
            .account_transactions_json(&id, &page, &base_url(&headers)),
    )
}

/// `http://` and the request's `Host`, for absolute `_links` as Horizon gives; empty (relative
/// links) when the header is missing or holds anything but a host and port.
fn base_url(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!("http://{h}"))
        .unwrap_or_default()
}

async fn transaction(State(s): State<Shared>, Path(hash): Path<String>) -> Response {
    json_response(s.lock().net.transaction_json(&hash))
}

type FormFields = Result<Form<HashMap<String, String>>, FormRejection>;

fn form_field(form: FormFields, name: &str) -> Option<String> {
    form.ok().and_then(|Form(mut f)| f.remove(name))
}

async fn submit(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    form: FormFields,
) -> Response {
    let Some(tx) = form_field(form, "tx").or_else(|| q.get("tx").cloned()) else {
        return json_response(Answer {
            status: 400,
            body: json!({
                "type": "https://stellar.org/horizon-errors/bad_request",
                "title": "Bad Request",
                "status": 400,
                "detail": "The request you sent was invalid in some way.",
                "extras": {"invalid_field": "tx", "reason": "Transaction is empty"},
            }),
        });
    };
    let now = s.now();
    let mut g = s.lock();
    let fault = g.faults.pop_front();
    match fault {
        Some(Fault::TimeoutBeforeApply) => {
            info!("fault: 504 before applying");
            return json_response(Answer::timeout());
        }
        Some(Fault::DropBeforeApply) => {
            info!("fault: connection dropped before applying");
            return dropped_response();
        }
        Some(Fault::UnavailableBeforeApply) => {
            info!("fault: 503 before applying");
            return (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response();
        }
        _ => {}
    }
    let answer = g.net.submit(&tx, now);
    drop(g);
    match fault {
        Some(Fault::TimeoutAfterApply) => {
            info!(status = answer.status, "fault: 504 after applying");
            json_response(Answer::timeout())
        }
        Some(Fault::DropAfterApply) => {
            info!(
                status = answer.status,
                "fault: connection dropped after applying"
            );
            dropped_response()
        }
        _ => json_response(answer),
    }
}

async fn friendbot_get(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let addr = q.get("addr").cloned().unwrap_or_default();
    let now = s.now();
    json_response(s.lock().net.friendbot(&addr, now))
}

async fn friendbot_post(State(s): State<Shared>, form: FormFields) -> Response {
    let addr = form_field(form, "addr").unwrap_or_default();
    let now = s.now();
    json_response(s.lock().net.friendbot(&addr, now))
}

#[derive(Deserialize)]
struct FaultRequest {
    fault: String,
    #[serde(default = "one")]
    count: usize,
}

fn one() -> usize {
    1
}

async fn add_faults(State(s): State<Shared>, body: Bytes) -> Response {
    let req: FaultRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("bad fault request: {e}")).into_response();
        }
    };
    let fault: Fault = match req.fault.parse() {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let mut g = s.lock();
    for _ in 0..req.count.min(10_000) {
        g.faults.push_back(fault);
    }
    let queued = g.faults.len();
    json_response(Answer {
        status: 200,
        body: json!({"queued": queued}),
    })
}

async fn clear_faults(State(s): State<Shared>) -> Response {
    s.lock().faults.clear();
    json_response(Answer {
        status: 200,
        body: json!({"queued": 0}),
    })
}

#[derive(Deserialize)]
struct ClockRequest {
    advance_secs: i64,
}

async fn move_clock(State(s): State<Shared>, body: Bytes) -> Response {
    let req: ClockRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("bad clock request: {e}")).into_response();
        }
    };
    s.lock().clock_offset += req.advance_secs;
    let now = s.now();
    json_response(Answer {
        status: 200,
        body: json!({"now": now}),
    })
}

async fn state(State(s): State<Shared>) -> Response {
    let g = s.lock();
    let payments: Vec<Value> = g
        .net
        .payments()
        .iter()
        .map(|p| json!({"tx_hash": p.tx_hash, "from": p.from, "to": p.to, "amount": p.amount}))
        .collect();
    let body = json!({
        "ledger": g.net.ledger(),
        "submissions": g.net.submissions(),
        "included": g.net.included(),
        "queued_faults": g.faults.len(),
        "clock_offset_secs": g.clock_offset,
        "balances": g.net.balances(),
        "payments": payments,
    });
    drop(g);
    json_response(Answer { status: 200, body })
}
