//! The owner's dashboard: a small web page with earnings and spending over time, energy per
//! task, tasks served, the power gate's history, peers and trust, drawn from the ledger and
//! the node's own state.
//!
//! A browser cannot open the API's Unix socket, so the page is served on a loopback TCP port
//! of its own, started the first time the owner asks for it (`crank-node dashboard`, which
//! calls `POST /dashboard` on the API with the token). That call returns a one-time link; the
//! link sets a session cookie and redirects to the page, so the secret leaves the address bar
//! at once. The API token never reaches the browser.
//!
//! # Invariants
//!
//! - **Only the owner's browser gets in.** A login code works once, for
//!   [`CODE_TTL`]; only its hash is kept. A session is a random 256-bit cookie (`HttpOnly`,
//!   `SameSite=Strict`), of which only the hash is kept, for [`SESSION_TTL`].
//! - **Other web pages cannot use the owner's session.** Every request's `Host` must name
//!   the loopback address and port the page is served on (a page on a domain that resolves
//!   to 127.0.0.1, DNS rebinding, carries its own domain). The only state-changing request
//!   (`POST /logout`) also needs the session's CSRF token in a header and, when the browser
//!   sends them, a same-origin `Origin` and `Sec-Fetch-Site`.
//! - **The page runs only its own code.** A strict Content-Security-Policy (no inline script,
//!   no other origin, no framing); the data is rendered as text nodes and SVG attributes,
//!   never as HTML, so a peer's agent string or a gate reason cannot inject markup.
//! - **Bounded.** At most [`MAX_CODES`] codes and [`MAX_SESSIONS`] sessions are kept (the
//!   oldest go first); the data scans at most [`MAX_RECEIPTS`] receipts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crank_payments::{Ledger, Role, StoredReceipt};
use crank_protocol::NodeId;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::api::constant_time_eq;
use crate::node::NodeHandle;
use crate::plumbing::lock;
use crate::status::GateView;

/// How long a login link works.
pub const CODE_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most unused login codes kept.
pub const MAX_CODES: usize = 8;
/// Most sessions kept.
pub const MAX_SESSIONS: usize = 8;
/// Most receipts the data is computed from (the newest).
pub const MAX_RECEIPTS: usize = 20_000;
/// Most gate changes kept in the ledger.
pub const MAX_GATE_EVENTS: usize = 500;
/// Most points in the energy-per-task chart.
const MAX_ENERGY_POINTS: usize = 400;
/// Most buckets in the money and task charts.
const MAX_BUCKETS: usize = 120;
/// Most peers in the trust chart.
const MAX_PEERS: usize = 40;
/// Ledger meta key of the gate history.
pub(crate) const GATE_HISTORY_KEY: &str = "gate-history";
const COOKIE: &str = "crank_dashboard";

const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../assets/dashboard/app.css");

/// The headers every dashboard response carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// Binding the port failed.
    #[error("cannot serve the dashboard on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No randomness for the code.
    #[error("cannot make a login code: {0}")]
    Random(String),
}

/// A one-time login link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DashboardLink {
    /// Open this in a browser on this machine; it works once.
    pub url: String,
    /// Where the dashboard is served.
    pub addr: String,
    /// Seconds the link stays valid.
    pub expires_in_secs: u64,
}

struct Session {
    id_hash: [u8; 32],
    csrf: String,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    bound: Option<SocketAddr>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Hashes of unused login codes, with their expiry.
    codes: Vec<([u8; 32], Instant)>,
    sessions: Vec<Session>,
}

/// The dashboard server: started on the first link, stopped with the API.
pub struct Dashboard {
    node: NodeHandle,
    listen: SocketAddr,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dashboard({})", self.listen)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn random_hex() -> Result<String, DashboardError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| DashboardError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

fn hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

impl Dashboard {
    /// A dashboard for `node`, to be served on `listen` (a loopback address; port 0 picks one).
    pub fn new(node: NodeHandle, listen: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            node,
            listen,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Starts serving if not yet, and mints a one-time login link.
    pub async fn link(self: &Arc<Self>) -> Result<DashboardLink, DashboardError> {
        let addr = self.ensure_serving().await?;
        let code = random_hex()?;
        let now = Instant::now();
        {
            let mut inner = lock(&self.inner);
            inner.codes.retain(|(_, exp)| *exp > now);
            if inner.codes.len() >= MAX_CODES {
                inner.codes.remove(0);
            }
            inner.codes.push((hash(&code), now + CODE_TTL));
        }
        Ok(DashboardLink {
            url: format!("http://{addr}/login?code={code}"),
            addr: addr.to_string(),
            expires_in_secs: CODE_TTL.as_secs(),
        })
    }

    async fn ensure_serving(self: &Arc<Self>) -> Result<SocketAddr, DashboardError> {
        if let Some(addr) = lock(&self.inner).bound {
            return Ok(addr);
        }
        let bind = |source| DashboardError::Bind {
            addr: self.listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let mut inner = lock(&self.inner);
        // Two links asked for at once: the first listener wins, the second is dropped.
        if let Some(bound) = inner.bound {
            return Ok(bound);
        }
        let app = router(Arc::downgrade(self), addr);
        inner.bound = Some(addr);
        inner.task = Some(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "dashboard stopped");
            }
        }));
        info!(%addr, "dashboard listening");
        Ok(addr)
    }

    /// Stops serving and forgets every code and session.
    pub fn stop(&self) {
        let mut inner = lock(&self.inner);
        if let Some(t) = inner.task.take() {
            t.abort();
        }
        inner.bound = None;
        inner.codes.clear();
        inner.sessions.clear();
    }

    /// Spends a login code; a new session's cookie value when it was valid.
    fn redeem(&self, code: &str) -> Option<String> {
        let now = Instant::now();
        let h = hash(code);
        let mut inner = lock(&self.inner);
        inner.codes.retain(|(_, exp)| *exp > now);
        let at = inner
            .codes
            .iter()
            .position(|(c, _)| constant_time_eq(c, &h))?;
        inner.codes.remove(at);
        let id = random_hex().ok()?;
        let csrf = random_hex().ok()?;
        inner.sessions.retain(|s| s.expires > now);
        if inner.sessions.len() >= MAX_SESSIONS {
            inner.sessions.remove(0);
        }
        inner.sessions.push(Session {
            id_hash: hash(&id),
            csrf,
            expires: now + SESSION_TTL,
        });
        Some(id)
    }

    /// The CSRF token of the session this cookie header names, when it is live.
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let id = session_cookie(headers)?;
        let h = hash(id);
        let now = Instant::now();
        let inner = lock(&self.inner);
        inner
            .sessions
            .iter()
            .find(|s| s.expires > now && constant_time_eq(&s.id_hash, &h))
            .map(|s| s.csrf.clone())
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            let h = hash(id);
            lock(&self.inner).sessions.retain(|s| s.id_hash != h);
        }
    }
}

/// The value of our cookie in a request's `Cookie` headers.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Whether `host` (a Host header) names the address the dashboard is bound to.
pub fn host_matches(host: &str, bound: SocketAddr) -> bool {
    let port = bound.port();
    let names: &[&str] = match bound {
        SocketAddr::V4(a) if a.ip().is_loopback() => &["localhost"],
        SocketAddr::V6(a) if a.ip().is_loopback() => &["localhost"],
        _ => &[],
    };
    let ip = match bound {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>() == Ok(port)
        && (name == ip || names.iter().any(|n| name.eq_ignore_ascii_case(n)))
}

#[derive(Clone)]
struct Served {
    dashboard: std::sync::Weak<Dashboard>,
    bound: SocketAddr,
}

impl Served {
    /// The dashboard, unless the node is stopping.
    fn get(&self) -> Option<Arc<Dashboard>> {
        self.dashboard.upgrade()
    }
}

fn router(dashboard: std::sync::Weak<Dashboard>, bound: SocketAddr) -> Router {
    let served = Served { dashboard, bound };
    Router::new()
        .route("/", get(index))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/data", get(data))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/app.css", get(|| async { asset("text/css", APP_CSS) }))
        .layer(axum::middleware::from_fn_with_state(served.clone(), guard))
        .with_state(served)
}

fn stopping() -> Response {
    plain(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n")
}

fn plain(code: StatusCode, text: &'static str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
        body,
    )
        .into_response()
}

/// Refuses requests for another host (DNS rebinding) and sets the security headers on
/// every answer.
async fn guard(State(served): State<Served>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut response = if host_matches(host, served.bound) {
        next.run(request).await
    } else {
        plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers only on the loopback address crank-node printed\n",
        )
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

const SIGNED_OUT: &str = "<!doctype html><meta charset=utf-8><title>crank-node</title>\
<p>This dashboard needs a fresh link: run <code>crank-node dashboard</code> on this machine \
and open the address it prints.</p>\n";

async fn index(State(served): State<Served>, headers: HeaderMap) -> Response {
    let Some(dashboard) = served.get() else {
        return stopping();
    };
    match dashboard.session(&headers) {
        // The CSRF token is hex: safe inside the attribute.
        Some(csrf) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX_HTML.replace("{{csrf}}", &csrf),
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            SIGNED_OUT,
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct Login {
    code: String,
}

async fn login(State(served): State<Served>, Query(q): Query<Login>) -> Response {
    let Some(dashboard) = served.get() else {
        return stopping();
    };
    let Some(id) = dashboard.redeem(&q.code) else {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            SIGNED_OUT,
        )
            .into_response();
    };
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `POST /logout`: the one request that changes anything, so it takes the CSRF checks.
async fn logout(State(served): State<Served>, headers: HeaderMap) -> Response {
    let Some(dashboard) = served.get() else {
        return stopping();
    };
    let Some(csrf) = dashboard.session(&headers) else {
        return plain(StatusCode::UNAUTHORIZED, "not signed in\n");
    };
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|o| {
            o.strip_prefix("http://")
                .is_some_and(|h| host_matches(h, served.bound))
        });
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| s == "same-origin");
    if !constant_time_eq(given.as_bytes(), csrf.as_bytes()) || !origin_ok || !site_ok {
        return plain(
            StatusCode::FORBIDDEN,
            "cross-site request refused (CSRF token, Origin or Sec-Fetch-Site)\n",
        );
    }
    dashboard.end_session(&headers);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("crank_dashboard=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

async fn data(State(served): State<Served>, headers: HeaderMap) -> Response {
    let Some(dashboard) = served.get() else {
        return stopping();
    };
    if dashboard.session(&headers).is_none() {
        return plain(StatusCode::UNAUTHORIZED, "not signed in\n");
    }
    match dashboard.node.dashboard_data().await {
        Ok(d) => Json(d).into_response(),
        Err(e) => {
            warn!(error = %e, "dashboard data");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is not answering\n",
            )
        }
    }
}

/// One change of the power gate, as kept in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateEvent {
    /// When, Unix ms.
    pub at: u64,
    /// Open after the change.
    pub open: bool,
    /// Why closed, in words.
    pub reason: Option<String>,
}

/// The gate history kept in the ledger, oldest first (empty when none or unreadable).
pub fn gate_history(ledger: &Ledger) -> Vec<GateEvent> {
    ledger
        .get_meta(GATE_HISTORY_KEY)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Appends a gate change to the ledger's history unless it repeats the last one; keeps the
/// newest [`MAX_GATE_EVENTS`].
pub fn record_gate(ledger: &Ledger, event: GateEvent) {
    let mut history = gate_history(ledger);
    if history
        .last()
        .is_some_and(|l| l.open == event.open && l.reason == event.reason)
    {
        return;
    }
    history.push(event);
    let excess = history.len().saturating_sub(MAX_GATE_EVENTS);
    history.drain(..excess);
    match serde_json::to_vec(&history) {
        Ok(bytes) => {
            if let Err(e) = ledger.put_meta(GATE_HISTORY_KEY, &bytes) {
                warn!(error = %e, "cannot record the gate change");
            }
        }
        Err(e) => warn!(error = %e, "cannot encode the gate history"),
    }
}

/// Everything the page draws.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DashboardData {
    /// When this was computed, Unix ms.
    pub generated_at: u64,
    /// This node.
    pub node: NodeView,
    /// The gate now.
    pub gate: GateView,
    /// Width of each bucket, seconds (an hour for the last two days, else a day).
    pub bucket_secs: u64,
    /// Money and tasks per bucket, oldest first.
    pub buckets: Vec<Bucket>,
    /// Energy of recent tasks, oldest first.
    pub energy: Vec<EnergyPoint>,
    /// Gate changes, oldest first.
    pub gate_history: Vec<GateEvent>,
    /// Connections and trust.
    pub peers: PeersView,
    /// Sums over the receipts scanned.
    pub totals: Totals,
    /// Receipts the figures come from (at most [`MAX_RECEIPTS`], the newest).
    pub receipts_scanned: usize,
}

/// This node, in brief.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Its node id.
    pub node_id: NodeId,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its software version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Its Stellar payout account.
    pub payout: String,
}

/// One time bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start, Unix ms.
    pub start: u64,
    /// Earned as a worker (receipt prices).
    pub earned_stroops: u64,
    /// Of that, received.
    pub received_stroops: u64,
    /// Spent as a requester (receipt prices).
    pub spent_stroops: u64,
    /// Tasks served.
    pub served: u64,
    /// Tasks bought.
    pub bought: u64,
    /// Energy of the tasks served, mJ.
    pub energy_mj: u64,
}

/// One task's energy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyPoint {
    /// When it finished, Unix ms.
    pub at: u64,
    /// Energy, mJ.
    pub mj: f64,
    /// Served (`worker`) or bought (`requester`).
    pub role: String,
    /// `cpu` or `gpu`.
    pub path: String,
}

/// Peers and trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersView {
    /// Connected now.
    pub connected: usize,
    /// Fresh adverts known.
    pub known: usize,
    /// Known workers with this node's trust in each, most trusted first.
    pub trust: Vec<TrustView>,
}

/// One worker's trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustView {
    /// Its peer id.
    pub peer_id: String,
    /// Its software, as it advertises.
    pub agent: String,
    /// This node's trust score, (0, 1].
    pub trust: f64,
    /// Tasks it completed here.
    pub completed_here: u64,
    /// Answers outvoted by replicas.
    pub outvoted: u64,
    /// Why, in words.
    pub because: String,
}

/// Sums over the receipts scanned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Earned as a worker.
    pub earned_stroops: u64,
    /// Received as a worker.
    pub received_stroops: u64,
    /// Spent as a requester.
    pub spent_stroops: u64,
    /// Tasks served.
    pub served: u64,
    /// Tasks bought.
    pub bought: u64,
    /// Energy of the tasks served, mJ.
    pub energy_served_mj: u64,
}

/// When a receipt's task happened for the charts: its signed finish time, but never after
/// this node stored it nor more than 30 days before (a peer's clock moves only its own
/// points, and only into a window around our own record).
fn when(r: &StoredReceipt) -> u64 {
    let finished = r.terms.timings.finished_at;
    let stored = r.stored_at;
    finished.clamp(stored.saturating_sub(30 * 86_400_000), stored)
}

/// Buckets, energy points and totals from receipts (newest first, as the ledger gives them).
pub fn summarise(
    receipts: &[StoredReceipt],
    now: u64,
) -> (u64, Vec<Bucket>, Vec<EnergyPoint>, Totals) {
    let oldest = receipts.iter().map(when).min().unwrap_or(now);
    let bucket_ms: u64 = if now.saturating_sub(oldest) <= 2 * 86_400_000 {
        3_600_000
    } else {
        86_400_000
    };
    let last = now / bucket_ms;
    let first = (oldest / bucket_ms).max(last.saturating_sub(MAX_BUCKETS as u64 - 1));
    let mut buckets: Vec<Bucket> = (first..=last)
        .map(|b| Bucket {
            start: b * bucket_ms,
            ..Bucket::default()
        })
        .collect();
    let mut totals = Totals::default();
    let mut energy = Vec::new();
    for r in receipts {
        let at = when(r);
        let body = &r.terms;
        let mj = body.energy.microjoules / 1000;
        let slot = (at / bucket_ms)
            .checked_sub(first)
            .and_then(|i| buckets.get_mut(usize::try_from(i).ok()?));
        match r.role {
            Role::Worker => {
                totals.earned_stroops = totals.earned_stroops.saturating_add(body.price_stroops);
                totals.received_stroops = totals.received_stroops.saturating_add(r.paid_stroops);
                totals.served += 1;
                totals.energy_served_mj = totals.energy_served_mj.saturating_add(mj);
                if let Some(b) = slot {
                    b.earned_stroops = b.earned_stroops.saturating_add(body.price_stroops);
                    b.received_stroops = b.received_stroops.saturating_add(r.paid_stroops);
                    b.served += 1;
                    b.energy_mj = b.energy_mj.saturating_add(mj);
                }
            }
            Role::Requester => {
                totals.spent_stroops = totals.spent_stroops.saturating_add(body.price_stroops);
                totals.bought += 1;
                if let Some(b) = slot {
                    b.spent_stroops = b.spent_stroops.saturating_add(body.price_stroops);
                    b.bought += 1;
                }
            }
        }
        if energy.len() < MAX_ENERGY_POINTS {
            energy.push(EnergyPoint {
                at,
                mj: body.energy.microjoules as f64 / 1000.0,
                role: r.role.to_string(),
                path: body.path.to_string(),
            });
        }
    }
    energy.reverse();
    (bucket_ms / 1000, buckets, energy, totals)
}

/// The trust chart's rows: most trusted first, at most [`MAX_PEERS`].
pub(crate) fn trust_rows(adverts: Vec<crate::status::AdvertView>) -> Vec<TrustView> {
    let mut rows: Vec<TrustView> = adverts
        .into_iter()
        .map(|a| TrustView {
            peer_id: a.peer_id,
            agent: a.agent,
            trust: a.trust,
            completed_here: a.completed_here,
            outvoted: a.outvoted,
            because: a.trust_because,
        })
        .collect();
    rows.sort_by(|a, b| b.trust.total_cmp(&a.trust));
    rows.truncate(MAX_PEERS);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_must_name_the_bound_address_and_port() {
        let v4: SocketAddr = "127.0.0.1:7071".parse().unwrap();
        assert!(host_matches("127.0.0.1:7071", v4));
        assert!(host_matches("localhost:7071", v4));
        assert!(host_matches("LOCALHOST:7071", v4));
        for bad in [
            "127.0.0.1:7072",
            "127.0.0.1",
            "evil.example:7071",
            "127.0.0.1.evil.example:7071",
            "localhost.:7071",
            "",
            "[::1]:7071",
        ] {
            assert!(!host_matches(bad, v4), "{bad}");
        }
        let v6: SocketAddr = "[::1]:7071".parse().unwrap();
        assert!(host_matches("[::1]:7071", v6));
        assert!(!host_matches("127.0.0.1:7071", v6));
    }

    fn stored(role: Role, finished_at: u64, stored_at: u64, price: u64) -> StoredReceipt {
        use crank_protocol::*;
        let requester = Identity::from_secret([1; 32]);
        let worker = Identity::from_secret([2; 32]);
        let terms = WorkReceipt {
            task_id: TaskId([finished_at as u8; 32]),
            requester: requester.node_id(),
            worker: worker.node_id(),
            model: ModelId([3; 32]),
            input_hash: ContentHash([4; 32]),
            output_hash: ContentHash([5; 32]),
            price_stroops: price,
            energy: Energy {
                microjoules: 2_500,
                method: EnergyMethod::CpuTimeEstimate,
            },
            path: ExecPath::Cpu,
            timings: Timings {
                accepted_at: 0,
                started_at: 0,
                finished_at,
                run_micros: 1,
            },
            pair_seq: 1,
            cumulative_stroops: price,
            payout: String::new(),
            payer: String::new(),
        };
        let signed = Signed::sign(terms.clone(), &worker).unwrap();
        let cs = CounterSigned::countersign(signed, &requester).unwrap();
        StoredReceipt {
            terms,
            proof: crank_payments::ReceiptProof::Current(cs),
            role,
            stored_at,
            order: 0,
            settlement: crank_payments::Settlement::Unsettled,
            paid_stroops: price / 2,
            check: crank_payments::Check::Passed,
        }
    }

    #[test]
    fn receipts_are_bucketed_by_hour_for_two_days_and_by_day_beyond() {
        let now = 100 * 86_400_000;
        let hour = 3_600_000;
        // Newest first, as the ledger gives them.
        let recent = [
            stored(Role::Worker, now - hour, now - hour, 100),
            stored(Role::Requester, now - 5 * hour, now - 5 * hour, 40),
            stored(Role::Worker, now - 30 * hour, now - 30 * hour, 60),
        ];
        let (secs, buckets, energy, totals) = summarise(&recent, now);
        assert_eq!(secs, 3600);
        assert_eq!(buckets.len(), 31, "from the oldest receipt's hour to now's");
        assert_eq!(buckets.iter().map(|b| b.served).sum::<u64>(), 2);
        assert_eq!(buckets.last().unwrap().served, 0, "now's hour is empty");
        assert_eq!(buckets[buckets.len() - 2].earned_stroops, 100);
        assert_eq!(totals.earned_stroops, 160);
        assert_eq!(totals.received_stroops, 80);
        assert_eq!(totals.spent_stroops, 40);
        assert_eq!((totals.served, totals.bought), (2, 1));
        assert_eq!(
            totals.energy_served_mj, 4,
            "2.5 mJ each, whole mJ in the sums"
        );
        assert_eq!(energy.len(), 3);
        assert!(
            energy.windows(2).all(|w| w[0].at <= w[1].at),
            "oldest first"
        );
        assert_eq!(energy[0].mj, 2.5);

        let mut week = recent.to_vec();
        week.push(stored(
            Role::Worker,
            now - 6 * 86_400_000,
            now - 6 * 86_400_000,
            1,
        ));
        let (secs, buckets, _, _) = summarise(&week, now);
        assert_eq!(secs, 86_400);
        assert_eq!(buckets.len(), 7);
        assert_eq!(buckets.iter().map(|b| b.served).sum::<u64>(), 3);
    }

    #[test]
    fn a_peers_clock_cannot_move_a_task_outside_our_own_record() {
        let now = 100 * 86_400_000;
        let future = stored(Role::Worker, now + 365 * 86_400_000, now - 10, 7);
        let ancient = stored(Role::Worker, 1, now - 10, 7);
        assert_eq!(when(&future), now - 10, "never after we stored it");
        assert_eq!(
            when(&ancient),
            now - 10 - 30 * 86_400_000,
            "at most 30 days before"
        );
        let (_, buckets, _, totals) = summarise(&[future, ancient], now);
        assert_eq!(totals.served, 2);
        assert!(buckets.len() <= MAX_BUCKETS);
        assert_eq!(buckets.iter().map(|b| b.served).sum::<u64>(), 2);
    }

    #[test]
    fn no_receipts_give_one_empty_bucket() {
        let (secs, buckets, energy, totals) = summarise(&[], 1_000_000_000);
        assert_eq!(secs, 3600);
        assert_eq!(buckets.len(), 1);
        assert!(energy.is_empty());
        assert_eq!(totals, Totals::default());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; crank_dashboard=abc; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_static("crank_dashboardx=abc"),
        );
        assert_eq!(session_cookie(&other), None);
    }
}
