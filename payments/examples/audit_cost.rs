//! Prints the audit log's write cost per task: median and p99 time of one durable append, and
//! the file size per entry, over 10,000 appends to a temporary log; then how long verifying
//! the whole log takes.
//!
//! `cargo run --release -p crank-payments --example audit_cost [entries]`

use std::collections::BTreeMap;
use std::time::Instant;

use crank_payments::Role;
use crank_payments::audit::{self, AuditDraft, AuditLog, PolicyDecision};
use crank_protocol::{ContentHash, Identity, ModelId, TaskId};

/// A typical requester-side entry: two policy decisions, two labels.
fn draft(i: u64, us: &Identity, worker: &Identity) -> AuditDraft {
    let task = ContentHash::of(&i.to_be_bytes()).0;
    AuditDraft {
        role: Role::Requester,
        task_id: TaskId(task),
        requester: us.node_id(),
        worker: worker.node_id(),
        model: ModelId::of(b"model"),
        input_hash: ContentHash::of(&task[..16]),
        output_hash: ContentHash::of(&task[16..]),
        price_stroops: 25_000 + i % 1_000,
        energy_microjoules: 1_200_000 + i,
        policy: vec![
            PolicyDecision {
                kind: "admission".into(),
                decision: "allow".into(),
                reasons: vec![],
            },
            PolicyDecision {
                kind: "placement".into(),
                decision: "exclude".into(),
                reasons: vec!["no gpu".into()],
            },
        ],
        settlement: "counter-signed".into(),
        labels: BTreeMap::from([
            ("project".to_string(), "demo".to_string()),
            ("run".to_string(), format!("{}", i / 100)),
        ]),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> anyhow::Result<()> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 10_000,
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit.redb");
    let us = Identity::from_secret([1; 32]);
    let worker = Identity::from_secret([2; 32]);
    let log = AuditLog::open(&path, us.clone())?;
    let mut micros = Vec::with_capacity(n as usize);
    for i in 0..n {
        let d = draft(i, &us, &worker);
        let t = Instant::now();
        log.append(d, 1_700_000_000_000 + i)?;
        micros.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(log);
    micros.sort_by(f64::total_cmp);
    let bytes = std::fs::metadata(&path)?.len();
    let t = Instant::now();
    let report = audit::verify(&path, Some(us.node_id()))?;
    let verify_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("entries:        {}", report.entries);
    println!("append median:  {:.1} µs", percentile(&micros, 0.5));
    println!("append p99:     {:.1} µs", percentile(&micros, 0.99));
    println!(
        "file size:      {bytes} bytes, {:.0} bytes per entry",
        bytes as f64 / n.max(1) as f64
    );
    println!("verify all:     {verify_ms:.1} ms");
    Ok(())
}
