//! What `crank-node status` shows: a snapshot of a running node, served as JSON by the
//! local API and printed for people by the CLI.

use std::fmt::Write as _;

use crank_payments::{Balances, Role, StoredReceipt};
use crank_protocol::{ExecPath, ModelId, NodeId, PathBench, TaskId};
use serde::{Deserialize, Serialize};

use crate::network::NetworkStatus;

/// The power gate as shown: this node's own view, which tells an input it could not read
/// ("power source unknown", "user activity unknown") from a reading that closed the gate;
/// peers' adverts carry only the wire reasons.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateView {
    /// Owner policy.
    pub policy: String,
    /// Whether the node takes work now.
    pub open: bool,
    /// Why not, in words ("on battery 54 %", "power source unknown").
    pub reason: Option<String>,
    /// The kind of reason, without figures ("on battery", "power source unknown").
    #[serde(default)]
    pub category: Option<String>,
}

/// One known peer's advert, summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdvertView {
    /// The peer.
    pub node: NodeId,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its software.
    pub agent: String,
    /// Its gate.
    pub gate_open: bool,
    /// Why closed.
    pub gate_reason: Option<String>,
    /// Cores.
    pub cores: u16,
    /// Memory, MiB.
    pub ram_mib: u64,
    /// Models held.
    pub models: usize,
    /// Flat price per task, stroops.
    pub per_task_stroops: u64,
    /// Self-benchmark, inferences per second on the reference model (CPU).
    pub inferences_per_sec: Option<f32>,
    /// Self-benchmark on its GPU path, when it has one.
    #[serde(default)]
    pub gpu_inferences_per_sec: Option<f32>,
    /// GPU adapters it advertises ("name (backend)"); software renderers never appear.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// Completed tasks it reports.
    pub completed: u64,
    /// This node's trust score for it (its own record, not the advert's), in (0, 1].
    #[serde(default)]
    pub trust: f64,
    /// Tasks this node awarded it that completed.
    #[serde(default)]
    pub completed_here: u64,
    /// Of the tasks this node awarded it, those whose measured latency or reported energy
    /// belied its bid.
    #[serde(default)]
    pub overclaims: u64,
    /// Of its answers this node spot-checked, those independent replicas agreed with.
    #[serde(default)]
    pub verified: u64,
    /// Of its answers this node spot-checked, those independent replicas outvoted.
    #[serde(default)]
    pub outvoted: u64,
    /// Seconds it is still suspended for (asked for no work) after an outvoted answer.
    #[serde(default)]
    pub suspended_secs: Option<u64>,
    /// Why its trust is what it is: the score's terms in words.
    #[serde(default)]
    pub trust_because: String,
    /// Seconds until the advert expires.
    pub expires_in_secs: u64,
}

/// Everything this node knows of one peer, and why it trusts it as it does
/// (`GET /peers/{id}`). Trust is computed from this node's own evidence only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer.
    pub node: NodeId,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its current advert, summarised, when one is known.
    pub advert: Option<AdvertView>,
    /// Its connection, when connected.
    pub connection: Option<crate::network::PeerStatus>,
    /// What this node saw it do with the tasks it awarded it.
    pub record: crank_scheduler::TrustRecord,
    /// The score and why.
    pub trust: crank_scheduler::TrustExplanation,
    /// Its claims against what this node measured, per model and path.
    pub claims: Vec<ClaimView>,
    /// Money between us: what we owe it, paid it and dispute, and the reverse.
    pub payments: crank_payments::CounterpartyBalance,
}

/// One model and path of a peer: what its bids claimed and what this node measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimView {
    /// The model.
    pub model: crank_protocol::ModelId,
    /// The path it ran on.
    pub path: ExecPath,
    /// Tasks measured.
    pub tasks: u64,
    /// Tasks whose measurement belied the claims.
    pub overclaims: u64,
    /// Median claimed latency, ms.
    pub claimed_latency_ms: Option<u64>,
    /// Median measured latency, ms.
    pub measured_latency_ms: Option<u64>,
    /// Median claimed energy, mJ.
    pub claimed_energy_mj: Option<u64>,
    /// Median reported energy, mJ.
    pub measured_energy_mj: Option<u64>,
}

impl PeerReport {
    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "peer      {}  ({})", self.node, self.peer_id);
        match &self.connection {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "connected {}{}",
                    c.addr,
                    if c.relayed { " (relayed)" } else { "" }
                );
            }
            None => {
                let _ = writeln!(s, "connected no");
            }
        }
        if let Some(a) = &self.advert {
            let _ = writeln!(
                s,
                "advert    {}  {} cores {} MiB  {} stroops/task  gate {}",
                a.agent,
                a.cores,
                a.ram_mib,
                a.per_task_stroops,
                if a.gate_open { "open" } else { "closed" }
            );
        }
        let r = &self.record;
        let _ = writeln!(s, "trust     {}", self.trust.because);
        let _ = writeln!(
            s,
            "tasks     {} completed, {} failed, {} aborted, {} timed out, {} over-claimed",
            r.completed, r.failed, r.aborted, r.timed_out, r.overclaimed
        );
        let _ = writeln!(
            s,
            "checks    {} agreed with replicas, {} outvoted, agreeing streak {}",
            r.verified, r.disagreed, r.streak
        );
        for c in &self.claims {
            let ms = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
            let _ = writeln!(
                s,
                "claims    {} on {}: {} tasks, {} over-claimed; latency claimed {} ms, measured {} ms; energy claimed {} mJ, reported {} mJ",
                c.model.short(),
                c.path,
                c.tasks,
                c.overclaims,
                ms(c.claimed_latency_ms),
                ms(c.measured_latency_ms),
                ms(c.claimed_energy_mj),
                ms(c.measured_energy_mj)
            );
        }
        let p = &self.payments;
        let _ = writeln!(
            s,
            "money     we owe {} (paid {}, disputed {}); it owes us {} (paid {}, disputes {})",
            p.owed_by_us_stroops,
            p.paid_by_us_stroops,
            p.disputed_by_us_stroops,
            p.owed_to_us_stroops,
            p.paid_to_us_stroops,
            p.disputed_to_us_stroops
        );
        s
    }
}

/// One receipt, summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptView {
    /// The task.
    pub task_id: TaskId,
    /// Which side we were on.
    pub role: Role,
    /// The other party.
    pub counterparty: NodeId,
    /// The model.
    pub model: ModelId,
    /// Price, stroops.
    pub price_stroops: u64,
    /// Energy, microjoules.
    pub energy_uj: u64,
    /// How the energy was obtained.
    pub energy_method: String,
    /// Path used.
    pub path: ExecPath,
    /// Inference time, microseconds.
    pub run_micros: u64,
    /// Whether it has been paid.
    pub settled: bool,
    /// Paid so far, stroops (a partial payment leaves the rest owed).
    pub paid_stroops: u64,
    /// Where the requester's checks of the work stand: awaiting outputs, delivered, passed,
    /// or disputed (never paid).
    pub check: String,
}

impl From<&StoredReceipt> for ReceiptView {
    fn from(s: &StoredReceipt) -> Self {
        let b = s.body();
        Self {
            task_id: b.task_id,
            role: s.role,
            counterparty: s.counterparty(),
            model: b.model,
            price_stroops: b.price_stroops,
            energy_uj: b.energy.microjoules,
            energy_method: b.energy.method.to_string(),
            path: b.path,
            run_micros: b.timings.run_micros,
            settled: s.settlement.is_settled(),
            paid_stroops: s.paid_stroops,
            check: s.check.to_string(),
        }
    }
}

/// Inference queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueView {
    /// Worker threads.
    pub workers: usize,
    /// Queue slots.
    pub slots: usize,
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs running.
    pub running: usize,
    /// Tasks accepted and not finished (fetching, queued, running, delivering).
    pub tasks: usize,
}

/// A snapshot of a running node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id (ed25519 public key, hex).
    pub node_id: NodeId,
    /// Software version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Stellar account receiving payouts.
    pub payout: String,
    /// Network state.
    pub network: NetworkStatus,
    /// Power gate.
    pub gate: GateView,
    /// Inference queue.
    pub queue: QueueView,
    /// Models held.
    pub models: Vec<ModelId>,
    /// Self-benchmark.
    pub bench: Vec<PathBench>,
    /// Known adverts of other nodes.
    pub adverts: Vec<AdvertView>,
    /// Money owed and paid, per counterparty and in total.
    pub balances: Balances,
    /// Recent receipts, newest first.
    pub receipts: Vec<ReceiptView>,
    /// How each requester we worked for pays: its record, and whether it still gets credit.
    pub payers: Vec<PayerView>,
}

/// A requester's payment record on this worker (from the ledger), and its credit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayerView {
    /// The requester.
    pub node: NodeId,
    /// Receipts it counter-signed for us.
    pub receipts: u64,
    /// Paid to us, stroops.
    pub paid_stroops: u64,
    /// Counter-signed and not paid, stroops.
    pub unpaid_stroops: u64,
    /// Age of its oldest unpaid receipt, seconds.
    pub oldest_unpaid_secs: Option<u64>,
    /// Paid beyond the receipts, or for receipts we do not know, stroops.
    pub overpaid_stroops: u64,
    /// Of ours that it disputes, stroops.
    pub disputed_stroops: u64,
    /// Why its calls for bids are declined now (None: it has credit).
    pub credit_refused: Option<String>,
}

fn xlm(stroops: u64) -> String {
    format!("{}.{:07} XLM", stroops / 10_000_000, stroops % 10_000_000)
}

impl NodeStatus {
    /// A report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let n = &self.network;
        let _ = writeln!(s, "crank-node {}  up {} s", self.version, self.uptime_secs);
        let _ = writeln!(s, "node id   {}", self.node_id);
        let _ = writeln!(s, "peer id   {}", n.peer_id);
        let _ = writeln!(s, "payout    {}", self.payout);
        let _ = writeln!(
            s,
            "gate      {} ({}){}",
            if self.gate.open { "open" } else { "closed" },
            self.gate.policy,
            self.gate
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        if self
            .gate
            .category
            .as_deref()
            .is_some_and(|c| c.ends_with(" unknown"))
        {
            // The gate fails closed on what it cannot read; say how to run anyway.
            let _ = writeln!(
                s,
                "          (this machine's {} cannot be read; run_when = \"always\" works regardless)",
                self.gate
                    .category
                    .as_deref()
                    .and_then(|c| c.strip_suffix(" unknown"))
                    .unwrap_or("state")
            );
        }
        let q = &self.queue;
        let _ = writeln!(
            s,
            "queue     {} running, {} waiting, {} slots, {} workers",
            q.running, q.queued, q.slots, q.workers
        );
        for b in &self.bench {
            let _ = writeln!(
                s,
                "bench     {}: {:.0} rows/s, {} µJ per row (reference model, batches of 256)",
                b.path, b.inferences_per_sec, b.microjoules_per_inference
            );
        }
        let _ = writeln!(s, "\nlistening (kad {}):", n.kad_mode);
        for a in &n.listen_addrs {
            let _ = writeln!(s, "  {a}");
        }
        if !n.external_addrs.is_empty() {
            let _ = writeln!(s, "external addresses:");
            for a in &n.external_addrs {
                let _ = writeln!(s, "  {a}");
            }
        }
        let _ = writeln!(
            s,
            "reachability  {} (AutoNAT{}); hole punches: {} succeeded, {} failed",
            n.reachability,
            n.reachability_after_ms
                .map(|ms| format!(", {ms} ms after start"))
                .unwrap_or_default(),
            n.hole_punch.succeeded,
            n.hole_punch.failed
        );
        if !n.relay_reservations.is_empty() {
            let _ = writeln!(s, "relay reservations:");
            for r in &n.relay_reservations {
                let state = match (r.accepted, r.accepted_after_ms) {
                    (true, Some(ms)) => format!("accepted {ms} ms after start"),
                    (true, None) => "accepted".to_string(),
                    (false, _) => "requested".to_string(),
                };
                let limit = match (r.limit_bytes, r.limit_secs) {
                    (None, None) => String::new(),
                    (b, t) => format!(
                        ", circuits limited to {} / {}",
                        b.map_or("any size".to_string(), |b| format!("{b} bytes")),
                        t.map_or("any time".to_string(), |t| format!("{t} s"))
                    ),
                };
                let renewed = if r.renewals > 0 {
                    format!(", renewed {}×", r.renewals)
                } else {
                    String::new()
                };
                let _ = writeln!(s, "  {}  {state}{limit}{renewed}", r.addr);
            }
        }
        if let Some(r) = &n.relay_server {
            let _ = writeln!(
                s,
                "relay server  {}: {} reservations, {} circuits, {} refused",
                if r.enabled {
                    "on"
                } else {
                    "off until an external address is confirmed"
                },
                r.reservations,
                r.circuits,
                r.denied
            );
        }
        if !n.bootstrap.is_empty() {
            let _ = writeln!(s, "bootstrap:");
            for b in &n.bootstrap {
                let state = if b.connected {
                    "connected".to_string()
                } else {
                    format!(
                        "not connected ({} attempts{})",
                        b.attempts,
                        b.last_error
                            .as_deref()
                            .map(|e| format!(", last error: {e}"))
                            .unwrap_or_default()
                    )
                };
                let _ = writeln!(s, "  {}  {state}", b.addr);
            }
        }
        let _ = writeln!(
            s,
            "\npeers ({} connected, {} in routing table):",
            n.peers.len(),
            n.routing_table
        );
        for p in &n.peers {
            let path = match (&p.via_relay, p.relayed) {
                (Some(r), true) => format!("relayed via {r}"),
                (None, true) => "relayed".to_string(),
                (_, false) => "direct".to_string(),
            };
            let _ = writeln!(
                s,
                "  {}  {path}  {}{}{}",
                p.peer_id,
                p.addr,
                p.agent
                    .as_deref()
                    .map(|a| format!("  {a}"))
                    .unwrap_or_default(),
                p.hole_punch
                    .as_deref()
                    .map(|h| format!("  (hole punch: {h})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(s, "\nadverts ({}):", self.adverts.len());
        for a in &self.adverts {
            let _ = writeln!(
                s,
                "  {}  {}  {} cores {} MiB  {} models  {} stroops/task  {}  {} done",
                a.node.short(),
                a.agent,
                a.cores,
                a.ram_mib,
                a.models,
                a.per_task_stroops,
                if a.gate_open {
                    "open".to_string()
                } else {
                    format!("closed: {}", a.gate_reason.as_deref().unwrap_or("?"))
                },
                a.completed,
            );
            if a.completed_here > 0 || a.overclaims > 0 || a.verified > 0 || a.outvoted > 0 {
                let _ = writeln!(
                    s,
                    "      trust {:.2} here: {} completed, {} over-claimed, {} verified, {} outvoted{}",
                    a.trust,
                    a.completed_here,
                    a.overclaims,
                    a.verified,
                    a.outvoted,
                    a.suspended_secs
                        .map(|t| format!(" (suspended {t} s more)"))
                        .unwrap_or_default()
                );
                let _ = writeln!(s, "      why: {}", a.trust_because);
            }
            if !a.gpus.is_empty() || a.gpu_inferences_per_sec.is_some() {
                let _ = writeln!(
                    s,
                    "      gpu: {}{}",
                    if a.gpus.is_empty() {
                        "no adapter advertised".to_string()
                    } else {
                        a.gpus.join(", ")
                    },
                    a.gpu_inferences_per_sec
                        .map(|r| format!(", {r:.0} rows/s"))
                        .unwrap_or_default()
                );
            }
        }
        let t = &self.balances.total;
        let _ = writeln!(
            s,
            "\nreceipts: {} as worker, {} as requester; owed to us {}, owed by us {}, paid to us {}, paid by us {}",
            t.receipts_as_worker,
            t.receipts_as_requester,
            xlm(t.owed_to_us_stroops),
            xlm(t.owed_by_us_stroops),
            xlm(t.paid_to_us_stroops),
            xlm(t.paid_by_us_stroops)
        );
        if !self.payers.is_empty() {
            let _ = writeln!(s, "\nrequesters we worked for:");
        }
        for p in &self.payers {
            let _ = writeln!(
                s,
                "  {}  {} receipts, paid {}, unpaid {}{}{}{}",
                p.node.short(),
                p.receipts,
                xlm(p.paid_stroops),
                xlm(p.unpaid_stroops),
                p.oldest_unpaid_secs
                    .map(|a| format!(" (oldest {a} s)"))
                    .unwrap_or_default(),
                if p.disputed_stroops > 0 {
                    format!(", disputes {}", xlm(p.disputed_stroops))
                } else {
                    String::new()
                },
                p.credit_refused
                    .as_ref()
                    .map(|r| format!("  — no credit: {r}"))
                    .unwrap_or_default()
            );
        }
        for r in &self.receipts {
            let _ = writeln!(
                s,
                "  {}  {:9}  {}  model {}  {} stroops  {} µJ {}  {} µs {}{}",
                r.task_id.short(),
                format!("{:?}", r.role).to_lowercase(),
                r.counterparty.short(),
                r.model.short(),
                r.price_stroops,
                r.energy_uj,
                r.energy_method,
                r.run_micros,
                r.path,
                if r.settled {
                    "  settled".to_string()
                } else if r.check.starts_with("disputed") || r.check == "awaiting outputs" {
                    format!("  {}", r.check)
                } else {
                    String::new()
                }
            );
        }
        s
    }
}
