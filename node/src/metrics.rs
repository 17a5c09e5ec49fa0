//! Prometheus metrics, served as text on the local API's `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

struct Inner {
    registry: Registry,
    peers: Gauge,
    requests_received: Family<Labels, Counter>,
    requests_sent: Family<Labels, Counter>,
    responses_sent: Family<Labels, Counter>,
    invalid_messages: Counter,
    adverts_received: Counter,
    events_dropped: Counter,
    tasks: Family<Labels, Counter>,
    task_seconds: Histogram,
    inference_seconds: Histogram,
    gate_open: Gauge,
    queued: Gauge,
    receipts: Family<Labels, Counter>,
    stroops_received: Counter,
    unmatched_payments: Counter,
    overclaims: Counter,
    checks: Family<Labels, Counter>,
    policy: Family<Labels, Counter>,
}

/// Cheap-to-clone handle to the node's metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("crank");
        let peers = Gauge::default();
        registry.register("peers", "Connected peers", peers.clone());
        let requests_received = Family::<Labels, Counter>::default();
        registry.register(
            "requests_received",
            "Task-protocol requests received, by kind",
            requests_received.clone(),
        );
        let requests_sent = Family::<Labels, Counter>::default();
        registry.register(
            "requests_sent",
            "Task-protocol requests sent, by kind",
            requests_sent.clone(),
        );
        let responses_sent = Family::<Labels, Counter>::default();
        registry.register(
            "responses_sent",
            "Task-protocol responses sent, by kind",
            responses_sent.clone(),
        );
        let invalid_messages = Counter::default();
        registry.register(
            "invalid_messages",
            "Messages refused as malformed, badly signed or invalid",
            invalid_messages.clone(),
        );
        let adverts_received = Counter::default();
        registry.register(
            "adverts_received",
            "Valid adverts received by gossip",
            adverts_received.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Network events dropped because the node was overloaded",
            events_dropped.clone(),
        );
        let tasks = Family::<Labels, Counter>::default();
        registry.register("tasks", "Tasks by role and outcome", tasks.clone());
        let task_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "task_seconds",
            "Submit-to-result time of requested tasks",
            task_seconds.clone(),
        );
        let inference_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "inference_seconds",
            "Inference run time of tasks done here",
            inference_seconds.clone(),
        );
        let gate_open = Gauge::default();
        registry.register(
            "gate_open",
            "1 when the power gate lets the node work",
            gate_open.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "queued_tasks",
            "Tasks accepted and not yet finished",
            queued.clone(),
        );
        let receipts = Family::<Labels, Counter>::default();
        registry.register(
            "receipts",
            "Counter-signed receipts stored, by role",
            receipts.clone(),
        );
        let stroops_received = Counter::default();
        registry.register(
            "stroops_received",
            "Stroops received in payments checked against the ledger",
            stroops_received.clone(),
        );
        let unmatched_payments = Counter::default();
        registry.register(
            "unmatched_payments",
            "Payments received that matched no receipt in whole or in part",
            unmatched_payments.clone(),
        );
        let overclaims = Counter::default();
        registry.register(
            "overclaims",
            "Completed tasks whose measured latency or reported energy belied the worker's bid",
            overclaims.clone(),
        );
        let checks = Family::<Labels, Counter>::default();
        registry.register(
            "spot_checks",
            "Completed tasks by what their spot check found (not_sampled, agreed, first_outvoted, replica_outvoted, unresolved, no_replica)",
            checks.clone(),
        );
        let policy = Family::<Labels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy decisions by kind (admission, placement, output) and decision",
            policy.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                policy,
                checks,
                overclaims,
                stroops_received,
                unmatched_payments,
                registry,
                peers,
                requests_received,
                requests_sent,
                responses_sent,
                invalid_messages,
                adverts_received,
                events_dropped,
                tasks,
                task_seconds,
                inference_seconds,
                gate_open,
                queued,
                receipts,
            }),
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn set_peers(&self, n: usize) {
        self.inner.peers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub(crate) fn request_received(&self, kind: &str) {
        self.inner
            .requests_received
            .get_or_create(&label("kind", kind))
            .inc();
    }
    pub(crate) fn request_sent(&self, kind: &str) {
        self.inner
            .requests_sent
            .get_or_create(&label("kind", kind))
            .inc();
    }
    pub(crate) fn response_sent(&self, kind: &str) {
        self.inner
            .responses_sent
            .get_or_create(&label("kind", kind))
            .inc();
    }
    pub(crate) fn spot_check(&self, outcome: &str) {
        self.inner
            .checks
            .get_or_create(&label("outcome", outcome))
            .inc();
    }
    pub(crate) fn overclaim(&self) {
        self.inner.overclaims.inc();
    }
    pub(crate) fn invalid_message(&self) {
        self.inner.invalid_messages.inc();
    }
    pub(crate) fn advert_received(&self) {
        self.inner.adverts_received.inc();
    }
    pub(crate) fn event_dropped(&self) {
        self.inner.events_dropped.inc();
    }
    pub(crate) fn task(&self, role: &str, outcome: &str) {
        self.inner
            .tasks
            .get_or_create(&vec![
                ("role".into(), role.into()),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }
    pub(crate) fn policy_decision(&self, kind: &str, decision: &str) {
        self.inner
            .policy
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("decision".into(), decision.into()),
            ])
            .inc();
    }
    pub(crate) fn task_seconds(&self, secs: f64) {
        self.inner.task_seconds.observe(secs);
    }
    pub(crate) fn inference_seconds(&self, secs: f64) {
        self.inner.inference_seconds.observe(secs);
    }
    pub(crate) fn gate_open(&self, open: bool) {
        self.inner.gate_open.set(i64::from(open));
    }
    pub(crate) fn queued(&self, n: usize) {
        self.inner.queued.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    /// A payment was checked and credited: `received` stroops, of which `unallocated`
    /// matched no receipt.
    pub(crate) fn payment_in(&self, received: u64, unallocated: u64) {
        self.inner.stroops_received.inc_by(received);
        if unallocated > 0 {
            self.inner.unmatched_payments.inc();
        }
    }

    pub(crate) fn receipt(&self, role: &str) {
        self.inner
            .receipts
            .get_or_create(&label("role", role))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_metrics() {
        let m = Metrics::new();
        m.request_received("award");
        m.set_peers(3);
        let text = m.encode();
        assert!(text.contains("crank_peers 3"), "{text}");
        assert!(
            text.contains("crank_requests_received_total{kind=\"award\"} 1"),
            "{text}"
        );
    }
}
