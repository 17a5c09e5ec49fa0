//! The audit log: an append-only, hash-chained, signed record of every task this node took
//! part in, kept in its own redb file and verifiable offline with nothing but the file.
//!
//! Each record is a [`Signed<AuditEntry>`] by the node's [`Identity`]. An entry carries its
//! sequence number (contiguous from 0) and `prev`, the blake3 hash of the previous record's
//! stored bytes (all zero for the first), so every record commits to the whole history before
//! it. A record's hash is blake3 of its stored bytes, which must be the canonical postcard
//! encoding of what was signed. Records are never rewritten: a task whose settlement changes
//! (counter-signed, then paid or disputed) gets a new entry with the same task id.
//!
//! # What [`verify`] proves
//!
//! That every record was signed by one key (the expected node's, if named), that none was
//! altered, inserted, removed or reordered, and that times never go backwards, up to the head
//! it reports.
//!
//! # What it does not prove
//!
//! - **Completeness at the tail**: whoever holds the file can cut records off the end and the
//!   rest still verifies, only with fewer entries. The head hash (and entry count) that
//!   [`verify`] reports is what an operator pins, e.g. in a ticket or a report; a later
//!   verify must reach the same head at that sequence number.
//! - **Honesty of the key holder**: the node's key can re-sign a whole rewritten history. The
//!   log holds a node to what it recorded, against anyone without its key.
//! - **Wall-clock truth**: `at_ms` is the caller's clock, clamped so that it never decreases.
//!
//! # Table
//!
//! | table | key | value |
//! |---|---|---|
//! | `audit_entries` | sequence number | postcard [`Signed<AuditEntry>`] |
//! | `audit_info` | name | `schema` version |

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crank_protocol::sign::Signable;
use crank_protocol::{
    ContentHash, Identity, ModelId, NodeId, SignatureError, Signed, TaskId, UnixMillis,
};
use redb::{
    Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, TableError,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::types::Role;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_entries");
const INFO: TableDefinition<&str, u64> = TableDefinition::new("audit_info");
/// The on-disk layout this code writes; a file with a higher number is refused.
const SCHEMA_VERSION: u64 = 1;
/// `prev` of the first record.
const GENESIS: ContentHash = ContentHash([0; 32]);

/// One policy decision taken on a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDecision {
    /// Which policy: "admission", "placement", "output", …
    pub kind: String,
    /// What it decided: "allow", "deny", "exclude", "redact", "multiplier", …
    pub decision: String,
    /// Why, in the policy's own words; may be empty.
    pub reasons: Vec<String>,
}

/// One audit record's content, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, contiguous from 0.
    pub seq: u64,
    /// When it was recorded (caller's clock, never less than the previous entry's).
    pub at_ms: UnixMillis,
    /// Which side of the task this node was on.
    pub role: Role,
    /// The task.
    pub task_id: TaskId,
    /// Who asked for the work.
    pub requester: NodeId,
    /// Who did it.
    pub worker: NodeId,
    /// The model it ran.
    pub model: ModelId,
    /// blake3 of the inputs.
    pub input_hash: ContentHash,
    /// blake3 of the outputs.
    pub output_hash: ContentHash,
    /// The agreed price.
    pub price_stroops: u64,
    /// Energy the worker reported.
    pub energy_microjoules: u64,
    /// Policy decisions, in the order they were taken.
    pub policy: Vec<PolicyDecision>,
    /// Settlement state at this point: "counter-signed", "disputed", "paid", …
    pub settlement: String,
    /// The requester's own labels (requester side only; may be empty).
    pub labels: BTreeMap<String, String>,
    /// blake3 of the previous record's stored bytes; all zero for the first.
    pub prev: ContentHash,
}

impl Signable for AuditEntry {
    const DOMAIN: &'static str = "crank/1/audit-entry";
}

/// What the caller says about a task; [`AuditLog::append`] adds `seq`, `at_ms` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    /// Which side of the task this node was on.
    pub role: Role,
    /// The task.
    pub task_id: TaskId,
    /// Who asked for the work.
    pub requester: NodeId,
    /// Who did it.
    pub worker: NodeId,
    /// The model it ran.
    pub model: ModelId,
    /// blake3 of the inputs.
    pub input_hash: ContentHash,
    /// blake3 of the outputs.
    pub output_hash: ContentHash,
    /// The agreed price.
    pub price_stroops: u64,
    /// Energy the worker reported.
    pub energy_microjoules: u64,
    /// Policy decisions, in the order they were taken.
    pub policy: Vec<PolicyDecision>,
    /// Settlement state at this point.
    pub settlement: String,
    /// The requester's own labels.
    pub labels: BTreeMap<String, String>,
}

/// A stored record and its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The entry with its signer and signature.
    pub signed: Signed<AuditEntry>,
    /// blake3 of the stored bytes: the next record's `prev`.
    pub hash: ContentHash,
}

impl AuditRecord {
    /// The entry.
    pub fn entry(&self) -> &AuditEntry {
        &self.signed.body
    }
}

/// What a successful [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records (the head's sequence number plus one).
    pub entries: u64,
    /// Time of the first record.
    pub first_at_ms: Option<UnixMillis>,
    /// Time of the last record.
    pub last_at_ms: Option<UnixMillis>,
    /// Hash of the last record: the value to pin against tail truncation.
    pub head: Option<ContentHash>,
    /// The key that signed every record.
    pub signer: Option<NodeId>,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line, every field kept (ids and hashes as hex).
    Jsonl,
    /// RFC 4180 CSV with a header row; policy and labels flattened into one column each.
    Csv,
}

/// Why an audit log operation or check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file could not be opened or created.
    #[error("cannot open audit log {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::DatabaseError,
    },
    /// Another process (or another handle in this one) has the file open for writing.
    #[error(
        "audit log {path} is already open, probably by a running crank-node; verify through it or stop it first"
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The file was not closed cleanly and a read-only open cannot repair it.
    #[error(
        "audit log {path} needs a repair after an unclean shutdown; start the node once (it repairs on open), then verify"
    )]
    NeedsRepair {
        /// The file.
        path: PathBuf,
    },
    /// The file is a redb database without an audit table (another node file, probably).
    #[error("{path} is not an audit log")]
    NotAnAuditLog {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer version of crank-node.
    #[error("audit log schema version {found} is newer than the supported version {supported}")]
    Schema {
        /// Version found in the file.
        found: u64,
        /// Highest version this build understands.
        supported: u64,
    },
    /// The log was written by another node's key; appending would break it.
    #[error("audit log {path} belongs to node {found}, not to this node {ours}")]
    ForeignLog {
        /// The file.
        path: PathBuf,
        /// The signer of its records.
        found: NodeId,
        /// This node.
        ours: NodeId,
    },
    /// The storage engine failed (I/O, corruption, a full disk).
    #[error("audit log storage error: {0}")]
    Storage(#[from] redb::Error),
    /// A record could not be encoded or signed (a bug, never caused by input).
    #[error("cannot encode audit record: {0}")]
    Encode(postcard::Error),
    /// Signing failed (a bug, never caused by input).
    #[error("cannot sign audit record: {0}")]
    Sign(SignatureError),
    /// The sequence number space is used up.
    #[error("audit log is full (sequence number overflow)")]
    Full,
    /// The slot for the next record was taken under this handle; nothing was written.
    #[error("audit record {seq} already exists; the log changed under this handle")]
    Conflict {
        /// The sequence number.
        seq: u64,
    },
    /// A record is missing: the next stored sequence number is not the expected one.
    #[error("audit log has a gap: expected record {expected}, found {found}")]
    Gap {
        /// The sequence number that should come next.
        expected: u64,
        /// The one stored next.
        found: u64,
    },
    /// A record does not decode: the file was damaged or altered.
    #[error("audit record {seq} does not decode: {source}")]
    Decode {
        /// The record.
        seq: u64,
        /// The decoder's complaint.
        source: postcard::Error,
    },
    /// A record's bytes are not the canonical encoding of what was signed.
    #[error("audit record {seq} is not stored in canonical form; it was altered")]
    NonCanonical {
        /// The record.
        seq: u64,
    },
    /// A record's signature does not verify: it was altered after signing.
    #[error("audit record {seq} has a bad signature: {source}")]
    BadSignature {
        /// The record.
        seq: u64,
        /// What the check found.
        source: SignatureError,
    },
    /// A record was validly signed, but by another key than the rest (or than expected).
    #[error("audit record {seq} was signed by {found}, expected {expected}")]
    WrongSigner {
        /// The record.
        seq: u64,
        /// The key that signed the log (or the one named).
        expected: NodeId,
        /// The key that signed this record.
        found: NodeId,
    },
    /// A record sits under another sequence number than its own (records were moved).
    #[error("audit record stored as {seq} says it is record {found}")]
    Misplaced {
        /// Where it is stored.
        seq: u64,
        /// The sequence number it was signed with.
        found: u64,
    },
    /// A record's `prev` is not the hash of the record before it.
    #[error(
        "audit chain broken at record {seq}: it follows {found}, but the record before it hashes to {expected}"
    )]
    BrokenChain {
        /// The record.
        seq: u64,
        /// Hash of the stored record before it (zero for the first).
        expected: ContentHash,
        /// Its `prev`.
        found: ContentHash,
    },
    /// A record is older than the one before it.
    #[error(
        "audit record {seq} is dated {at_ms} ms, before the previous record's {previous_ms} ms"
    )]
    TimeWentBack {
        /// The record.
        seq: u64,
        /// Its time.
        at_ms: UnixMillis,
        /// The previous record's time.
        previous_ms: UnixMillis,
    },
    /// Writing the export failed.
    #[error("cannot write audit export: {0}")]
    Write(#[from] std::io::Error),
    /// A JSON line could not be produced (a bug, never caused by input).
    #[error("cannot encode audit export as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for AuditError {
            fn from(e: $t) -> Self {
                Self::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Where the next record goes.
#[derive(Debug, Clone, Copy)]
struct Head {
    next_seq: u64,
    prev: ContentHash,
    last_at_ms: UnixMillis,
}

/// The audit log, open for appending. Appends are serialised, so the chain never forks.
pub struct AuditLog {
    db: Database,
    path: PathBuf,
    identity: Identity,
    /// `None` until loaded, and again after a failed append (reloaded from the file).
    head: Mutex<Option<Head>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("node", &self.identity.node_id())
            .finish()
    }
}

fn decode(seq: u64, bytes: &[u8]) -> Result<Signed<AuditEntry>, AuditError> {
    postcard::from_bytes(bytes).map_err(|source| AuditError::Decode { seq, source })
}

fn encode(signed: &Signed<AuditEntry>) -> Result<Vec<u8>, AuditError> {
    postcard::to_allocvec(signed).map_err(AuditError::Encode)
}

impl AuditLog {
    /// Opens the log at `path`, creating the file (and its directory) if needed; records are
    /// signed with `identity`. A log signed by another key is refused.
    pub fn open(path: &Path, identity: Identity) -> Result<AuditLog, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))?;
        }
        let shown = path.display().to_string();
        let db = Database::builder()
            .set_repair_callback(move |session| {
                warn!(path = %shown, progress = session.progress(), "repairing audit log after an unclean shutdown");
            })
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => AuditError::InUse {
                    path: path.to_path_buf(),
                },
                other => open_err(other),
            })?;
        let txn = db.begin_write()?;
        {
            let mut info = txn.open_table(INFO)?;
            let found = info.get("schema")?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(AuditError::Schema {
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    info.insert("schema", SCHEMA_VERSION)?;
                }
            }
            txn.open_table(ENTRIES)?;
        }
        txn.commit()?;
        let log = AuditLog {
            db,
            path: path.to_path_buf(),
            identity,
            head: Mutex::new(None),
        };
        let head = log.load_head()?;
        *log.head.lock().unwrap_or_else(PoisonError::into_inner) = Some(head);
        info!(path = %path.display(), entries = head.next_seq, "audit log opened");
        Ok(log)
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the last record: where the next one goes. Checks it is ours.
    fn load_head(&self) -> Result<Head, AuditError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let Some((k, v)) = table.last()? else {
            return Ok(Head {
                next_seq: 0,
                prev: GENESIS,
                last_at_ms: 0,
            });
        };
        let seq = k.value();
        let signed = decode(seq, v.value())?;
        let ours = self.identity.node_id();
        if signed.signer != ours {
            return Err(AuditError::ForeignLog {
                path: self.path.clone(),
                found: signed.signer,
                ours,
            });
        }
        if signed.body.seq != seq {
            return Err(AuditError::Misplaced {
                seq,
                found: signed.body.seq,
            });
        }
        Ok(Head {
            next_seq: seq.checked_add(1).ok_or(AuditError::Full)?,
            prev: ContentHash::of(v.value()),
            last_at_ms: signed.body.at_ms,
        })
    }

    /// Signs and durably stores one record, in one write transaction. `now_ms` is the
    /// caller's clock; it is raised to the previous record's time if the clock went back.
    pub fn append(&self, draft: AuditDraft, now_ms: UnixMillis) -> Result<AuditRecord, AuditError> {
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        let current = match *head {
            Some(h) => h,
            None => self.load_head()?,
        };
        match self.write_record(current, draft, now_ms) {
            Ok((record, next)) => {
                *head = Some(next);
                Ok(record)
            }
            Err(e) => {
                *head = None;
                Err(e)
            }
        }
    }

    fn write_record(
        &self,
        head: Head,
        draft: AuditDraft,
        now_ms: UnixMillis,
    ) -> Result<(AuditRecord, Head), AuditError> {
        let seq = head.next_seq;
        let next_seq = seq.checked_add(1).ok_or(AuditError::Full)?;
        let entry = AuditEntry {
            seq,
            at_ms: now_ms.max(head.last_at_ms),
            role: draft.role,
            task_id: draft.task_id,
            requester: draft.requester,
            worker: draft.worker,
            model: draft.model,
            input_hash: draft.input_hash,
            output_hash: draft.output_hash,
            price_stroops: draft.price_stroops,
            energy_microjoules: draft.energy_microjoules,
            policy: draft.policy,
            settlement: draft.settlement,
            labels: draft.labels,
            prev: head.prev,
        };
        let signed = Signed::sign(entry, &self.identity).map_err(AuditError::Sign)?;
        let bytes = encode(&signed)?;
        let hash = ContentHash::of(&bytes);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let taken = {
            let mut table = txn.open_table(ENTRIES)?;
            table.insert(seq, bytes.as_slice())?.is_some()
        };
        if taken {
            txn.abort()?;
            return Err(AuditError::Conflict { seq });
        }
        txn.commit()?;
        let next = Head {
            next_seq,
            prev: hash,
            last_at_ms: signed.body.at_ms,
        };
        Ok((AuditRecord { signed, hash }, next))
    }

    /// Number of records and the head hash (`None` while empty).
    pub fn head(&self) -> Result<(u64, Option<ContentHash>), AuditError> {
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        let h = match *head {
            Some(h) => h,
            None => {
                let h = self.load_head()?;
                *head = Some(h);
                h
            }
        };
        Ok((h.next_seq, (h.next_seq > 0).then_some(h.prev)))
    }

    /// Every record about `task`, oldest first (its settlement history). Scans the log.
    pub fn task_history(&self, task: &TaskId) -> Result<Vec<AuditRecord>, AuditError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let signed = decode(k.value(), v.value())?;
            if signed.body.task_id == *task {
                out.push(AuditRecord {
                    signed,
                    hash: ContentHash::of(v.value()),
                });
            }
        }
        Ok(out)
    }

    /// [`verify`] through this open handle, expecting this node as the signer.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        let txn = self.db.begin_read()?;
        verify_txn(&txn, &self.path, Some(self.identity.node_id()))
    }

    /// [`export`] through this open handle.
    pub fn export<W: Write>(
        &self,
        since_ms: Option<UnixMillis>,
        until_ms: Option<UnixMillis>,
        format: ExportFormat,
        writer: W,
    ) -> Result<u64, AuditError> {
        let txn = self.db.begin_read()?;
        export_txn(&txn, &self.path, since_ms, until_ms, format, writer)
    }
}

fn open_read_only(path: &Path) -> Result<ReadOnlyDatabase, AuditError> {
    ReadOnlyDatabase::open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => AuditError::InUse {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::RepairAborted => AuditError::NeedsRepair {
            path: path.to_path_buf(),
        },
        source => AuditError::Open {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Opens the entries table for reading, after checking the schema version.
fn entries_table(
    txn: &ReadTransaction,
    path: &Path,
) -> Result<redb::ReadOnlyTable<u64, &'static [u8]>, AuditError> {
    let not_audit = || AuditError::NotAnAuditLog {
        path: path.to_path_buf(),
    };
    let info = match txn.open_table(INFO) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Err(not_audit()),
        Err(e) => return Err(e.into()),
    };
    if let Some(found) = info.get("schema")?.map(|v| v.value())
        && found > SCHEMA_VERSION
    {
        return Err(AuditError::Schema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    match txn.open_table(ENTRIES) {
        Ok(t) => Ok(t),
        Err(TableError::TableDoesNotExist(_)) => Err(not_audit()),
        Err(e) => Err(e.into()),
    }
}

/// Checks the log at `path` without writing to it: sequence numbers contiguous from 0, every
/// record canonical and validly signed by one key (`expected_node`, if given), each `prev` the
/// hash of the record before, times non-decreasing. The first failure is returned, naming the
/// record. The file must not be open for writing (use [`AuditLog::verify`] on a running node).
///
/// A log cut short at the tail still verifies; compare the reported head with a pinned one.
pub fn verify(path: &Path, expected_node: Option<NodeId>) -> Result<VerifyReport, AuditError> {
    let db = open_read_only(path)?;
    let txn = db.begin_read()?;
    verify_txn(&txn, path, expected_node)
}

fn verify_txn(
    txn: &ReadTransaction,
    path: &Path,
    expected_node: Option<NodeId>,
) -> Result<VerifyReport, AuditError> {
    let table = entries_table(txn, path)?;
    let mut report = VerifyReport {
        entries: 0,
        first_at_ms: None,
        last_at_ms: None,
        head: None,
        signer: expected_node,
    };
    let mut prev = GENESIS;
    for item in table.iter()? {
        let (k, v) = item?;
        let (seq, bytes) = (k.value(), v.value());
        if seq != report.entries {
            return Err(AuditError::Gap {
                expected: report.entries,
                found: seq,
            });
        }
        let signed = decode(seq, bytes)?;
        if encode(&signed)? != bytes {
            return Err(AuditError::NonCanonical { seq });
        }
        signed
            .verify()
            .map_err(|source| AuditError::BadSignature { seq, source })?;
        match report.signer {
            Some(expected) if expected != signed.signer => {
                return Err(AuditError::WrongSigner {
                    seq,
                    expected,
                    found: signed.signer,
                });
            }
            Some(_) => {}
            None => report.signer = Some(signed.signer),
        }
        let entry = &signed.body;
        if entry.seq != seq {
            return Err(AuditError::Misplaced {
                seq,
                found: entry.seq,
            });
        }
        if entry.prev != prev {
            return Err(AuditError::BrokenChain {
                seq,
                expected: prev,
                found: entry.prev,
            });
        }
        if let Some(previous_ms) = report.last_at_ms
            && entry.at_ms < previous_ms
        {
            return Err(AuditError::TimeWentBack {
                seq,
                at_ms: entry.at_ms,
                previous_ms,
            });
        }
        prev = ContentHash::of(bytes);
        report.first_at_ms.get_or_insert(entry.at_ms);
        report.last_at_ms = Some(entry.at_ms);
        report.head = Some(prev);
        report.entries = seq.checked_add(1).ok_or(AuditError::Full)?;
    }
    if report.entries == 0 {
        report.signer = None;
    }
    Ok(report)
}

/// Writes the records with `since_ms <= at_ms < until_ms` (either bound optional) to
/// `writer`, oldest first; returns how many. The file must not be open for writing (use
/// [`AuditLog::export`] on a running node). Export does not verify: run [`verify`] for that.
///
/// JSONL keeps every field (the signature too, so a line can be checked on its own). CSV
/// flattens policy as `kind:decision(reason,reason);…` and labels as `k=v;…`, which is for
/// reading, not parsing back: a `;` or `=` inside a value is not escaped there.
pub fn export<W: Write>(
    path: &Path,
    since_ms: Option<UnixMillis>,
    until_ms: Option<UnixMillis>,
    format: ExportFormat,
    writer: W,
) -> Result<u64, AuditError> {
    let db = open_read_only(path)?;
    let txn = db.begin_read()?;
    export_txn(&txn, path, since_ms, until_ms, format, writer)
}

/// CSV columns, in order.
const CSV_HEADER: &str = "seq,at_ms,role,task_id,requester,worker,model,input_hash,output_hash,price_stroops,energy_microjoules,policy,settlement,labels,prev,hash,signer,signature";

#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    entry: &'a AuditEntry,
    hash: ContentHash,
    signer: NodeId,
    signature: crank_protocol::Signature,
}

fn export_txn<W: Write>(
    txn: &ReadTransaction,
    path: &Path,
    since_ms: Option<UnixMillis>,
    until_ms: Option<UnixMillis>,
    format: ExportFormat,
    mut writer: W,
) -> Result<u64, AuditError> {
    let table = entries_table(txn, path)?;
    if format == ExportFormat::Csv {
        writer.write_all(CSV_HEADER.as_bytes())?;
        writer.write_all(b"\r\n")?;
    }
    let mut written = 0u64;
    let mut line = String::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let signed = decode(k.value(), v.value())?;
        let at = signed.body.at_ms;
        if since_ms.is_some_and(|s| at < s) || until_ms.is_some_and(|u| at >= u) {
            continue;
        }
        let hash = ContentHash::of(v.value());
        line.clear();
        match format {
            ExportFormat::Jsonl => {
                line.push_str(&serde_json::to_string(&JsonRow {
                    entry: &signed.body,
                    hash,
                    signer: signed.signer,
                    signature: signed.signature,
                })?);
                line.push('\n');
            }
            ExportFormat::Csv => {
                csv_row(&mut line, &signed, &hash);
                line.push_str("\r\n");
            }
        }
        writer.write_all(line.as_bytes())?;
        written = written.saturating_add(1);
    }
    writer.flush()?;
    Ok(written)
}

fn csv_row(out: &mut String, signed: &Signed<AuditEntry>, hash: &ContentHash) {
    let e = &signed.body;
    let fields = [
        e.seq.to_string(),
        e.at_ms.to_string(),
        e.role.to_string(),
        e.task_id.to_hex(),
        e.requester.to_hex(),
        e.worker.to_hex(),
        e.model.to_hex(),
        e.input_hash.to_hex(),
        e.output_hash.to_hex(),
        e.price_stroops.to_string(),
        e.energy_microjoules.to_string(),
        flatten_policy(&e.policy),
        e.settlement.clone(),
        flatten_labels(&e.labels),
        e.prev.to_hex(),
        hash.to_hex(),
        signed.signer.to_hex(),
        hex::encode(signed.signature.0),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
}

/// `admission:allow;placement:exclude(too slow,busy)`.
fn flatten_policy(policy: &[PolicyDecision]) -> String {
    let parts: Vec<String> = policy
        .iter()
        .map(|p| {
            if p.reasons.is_empty() {
                format!("{}:{}", p.kind, p.decision)
            } else {
                format!("{}:{}({})", p.kind, p.decision, p.reasons.join(","))
            }
        })
        .collect();
    parts.join(";")
}

/// `k=v;k2=v2`.
fn flatten_labels(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(";")
}

/// RFC 4180: a field holding a comma, a quote, CR or LF is quoted, its quotes doubled.
fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use redb::Table;

    fn id(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    fn draft(i: u64) -> AuditDraft {
        let b = (i % 251) as u8;
        AuditDraft {
            role: if i.is_multiple_of(2) {
                Role::Requester
            } else {
                Role::Worker
            },
            task_id: TaskId([b; 32]),
            requester: id(1).node_id(),
            worker: id(2).node_id(),
            model: ModelId([7; 32]),
            input_hash: ContentHash([b.wrapping_add(1); 32]),
            output_hash: ContentHash([b.wrapping_add(2); 32]),
            price_stroops: 100 + i,
            energy_microjoules: 5_000 * i,
            policy: vec![PolicyDecision {
                kind: "admission".into(),
                decision: "allow".into(),
                reasons: vec![],
            }],
            settlement: "counter-signed".into(),
            labels: BTreeMap::new(),
        }
    }

    /// A log of `n` records at times 1000, 1010, … signed by node 1, closed again.
    fn fresh(n: u64) -> (tempfile::TempDir, PathBuf, Vec<AuditRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let log = AuditLog::open(&path, id(1)).unwrap();
        let records = (0..n)
            .map(|i| log.append(draft(i), 1000 + 10 * i).unwrap())
            .collect();
        (dir, path, records)
    }

    /// Edits the entries table directly, as someone holding the file could.
    fn tamper(path: &Path, f: impl FnOnce(&mut Table<u64, &[u8]>)) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(ENTRIES).unwrap();
            f(&mut t);
        }
        txn.commit().unwrap();
    }

    fn raw(t: &Table<u64, &[u8]>, seq: u64) -> Vec<u8> {
        t.get(seq).unwrap().unwrap().value().to_vec()
    }

    fn resign(
        t: &mut Table<u64, &[u8]>,
        seq: u64,
        by: &Identity,
        change: impl FnOnce(&mut AuditEntry),
    ) {
        let mut entry = decode(seq, &raw(t, seq)).unwrap().body;
        change(&mut entry);
        let bytes = encode(&Signed::sign(entry, by).unwrap()).unwrap();
        t.insert(seq, bytes.as_slice()).unwrap();
    }

    #[test]
    fn fifty_appends_verify() {
        let (_d, path, records) = fresh(50);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.entry().seq, i as u64);
            let prev = if i == 0 { GENESIS } else { records[i - 1].hash };
            assert_eq!(r.entry().prev, prev);
        }
        let report = verify(&path, Some(id(1).node_id())).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                entries: 50,
                first_at_ms: Some(1000),
                last_at_ms: Some(1490),
                head: Some(records[49].hash),
                signer: Some(id(1).node_id()),
            }
        );
        assert_eq!(verify(&path, None).unwrap(), report);
        // Through the open handle; the file itself is locked meanwhile.
        let log = AuditLog::open(&path, id(1)).unwrap();
        assert_eq!(log.verify().unwrap(), report);
        assert_eq!(log.head().unwrap(), (50, Some(records[49].hash)));
        assert!(matches!(
            verify(&path, None).unwrap_err(),
            AuditError::InUse { .. }
        ));
    }

    #[test]
    fn empty_log_verifies_with_no_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("audit.redb");
        drop(AuditLog::open(&path, id(1)).unwrap());
        let report = verify(&path, Some(id(1).node_id())).unwrap();
        assert_eq!(
            (report.entries, report.head, report.signer),
            (0, None, None)
        );
    }

    #[test]
    fn flipped_byte_fails_verification() {
        // A byte of the task id (inside the signed body) of record 4.
        let (_d, path, records) = fresh(10);
        let task = records[4].entry().task_id.0;
        tamper(&path, |t| {
            let mut v = raw(t, 4);
            let at = v.windows(32).position(|w| w == task).unwrap();
            v[at + 5] ^= 0x01;
            t.insert(4, v.as_slice()).unwrap();
        });
        assert!(matches!(
            verify(&path, None).unwrap_err(),
            AuditError::BadSignature { seq: 4, .. }
        ));

        // The last byte (of the signature) of the head record.
        let (_d, path, _) = fresh(10);
        tamper(&path, |t| {
            let mut v = raw(t, 9);
            *v.last_mut().unwrap() ^= 0x80;
            t.insert(9, v.as_slice()).unwrap();
        });
        assert!(matches!(
            verify(&path, None).unwrap_err(),
            AuditError::BadSignature { seq: 9, .. }
        ));

        // A trailing byte appended to a record: it still decodes, but not canonically.
        let (_d, path, _) = fresh(10);
        tamper(&path, |t| {
            let mut v = raw(t, 2);
            v.push(0);
            t.insert(2, v.as_slice()).unwrap();
        });
        assert!(matches!(
            verify(&path, None).unwrap_err(),
            AuditError::NonCanonical { seq: 2 }
        ));
    }

    #[test]
    fn deleted_middle_record_is_a_gap() {
        let (_d, path, _) = fresh(10);
        tamper(&path, |t| {
            t.remove(5).unwrap();
        });
        let err = verify(&path, None).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::Gap {
                    expected: 5,
                    found: 6
                }
            ),
            "{err}"
        );
        // The first record gone.
        let (_d, path, _) = fresh(3);
        tamper(&path, |t| {
            t.remove(0).unwrap();
        });
        assert!(matches!(
            verify(&path, None).unwrap_err(),
            AuditError::Gap {
                expected: 0,
                found: 1
            }
        ));
    }

    #[test]
    fn rewritten_records_fail_verification() {
        let mallory = id(9);
        // Re-signed by another key, chain intact.
        let (_d, path, _) = fresh(10);
        tamper(&path, |t| resign(t, 3, &mallory, |e| e.price_stroops = 1));
        let err = verify(&path, None).unwrap_err();
        assert!(
            matches!(err, AuditError::WrongSigner { seq: 3, found, .. } if found == mallory.node_id()),
            "{err}"
        );

        // Re-signed by the node's own key: the next record's `prev` no longer matches.
        let (_d, path, records) = fresh(10);
        tamper(&path, |t| {
            resign(t, 3, &id(1), |e| e.settlement = "paid".into())
        });
        let err = verify(&path, None).unwrap_err();
        assert!(
            matches!(err, AuditError::BrokenChain { seq: 4, found, .. } if found == records[3].hash),
            "{err}"
        );

        // Two records swapped.
        let (_d, path, _) = fresh(10);
        tamper(&path, |t| {
            let (a, b) = (raw(t, 2), raw(t, 3));
            t.insert(2, b.as_slice()).unwrap();
            t.insert(3, a.as_slice()).unwrap();
        });
        assert!(matches!(
            verify(&path, None).unwrap_err(),
            AuditError::Misplaced { seq: 2, found: 3 }
        ));

        // A whole history forged by another key is consistent on its own: only naming the
        // expected node catches it.
        let (_d, path, _) = fresh(5);
        tamper(&path, |t| {
            let mut prev = GENESIS;
            for seq in 0..5 {
                resign(t, seq, &mallory, |e| e.prev = prev);
                prev = ContentHash::of(&raw(t, seq));
            }
        });
        assert_eq!(verify(&path, None).unwrap().signer, Some(mallory.node_id()));
        assert!(matches!(
            verify(&path, Some(id(1).node_id())).unwrap_err(),
            AuditError::WrongSigner { seq: 0, .. }
        ));
    }

    #[test]
    fn time_going_back_fails_verification() {
        let (_d, path, _) = fresh(5);
        tamper(&path, |t| resign(t, 2, &id(1), |e| e.at_ms = 5));
        // Record 2's hash changed too, but the time is checked on record 2 itself first.
        assert!(matches!(
            verify(&path, None).unwrap_err(),
            AuditError::TimeWentBack {
                seq: 2,
                at_ms: 5,
                previous_ms: 1010
            }
        ));
    }

    /// Truncation is not detectable from the file alone: a log cut at the tail verifies with
    /// fewer entries. The head hash an operator pinned earlier is what exposes it.
    #[test]
    fn tail_truncation_shows_only_as_fewer_entries() {
        let (_d, path, records) = fresh(10);
        let pinned = verify(&path, None).unwrap();
        tamper(&path, |t| {
            for seq in 7..10 {
                t.remove(seq).unwrap();
            }
        });
        let now = verify(&path, None).unwrap();
        assert_eq!(now.entries, 7);
        assert_eq!(now.head, Some(records[6].hash));
        assert_ne!(now.head, pinned.head);
    }

    #[test]
    fn reopening_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let first: Vec<_> = {
            let log = AuditLog::open(&path, id(1)).unwrap();
            (0..3)
                .map(|i| log.append(draft(i), 100 + i).unwrap())
                .collect()
        };
        let log = AuditLog::open(&path, id(1)).unwrap();
        assert_eq!(log.head().unwrap(), (3, Some(first[2].hash)));
        // The clock went back across the restart: the time is held at the last one.
        let r = log.append(draft(3), 50).unwrap();
        assert_eq!(
            (r.entry().seq, r.entry().prev, r.entry().at_ms),
            (3, first[2].hash, 102)
        );
        let r2 = log.append(draft(4), 200).unwrap();
        assert_eq!((r2.entry().seq, r2.entry().prev), (4, r.hash));
        drop(log);
        let report = verify(&path, Some(id(1).node_id())).unwrap();
        assert_eq!((report.entries, report.head), (5, Some(r2.hash)));
    }

    #[test]
    fn another_nodes_log_is_refused() {
        let (_d, path, _) = fresh(2);
        assert!(matches!(
            AuditLog::open(&path, id(3)).unwrap_err(),
            AuditError::ForeignLog { found, .. } if found == id(1).node_id()
        ));
        assert!(matches!(
            verify(&path, Some(id(3).node_id())).unwrap_err(),
            AuditError::WrongSigner { seq: 0, .. }
        ));
    }

    #[test]
    fn a_settlement_change_is_a_new_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.redb"), id(1)).unwrap();
        let first = log.append(draft(1), 10).unwrap();
        log.append(draft(2), 11).unwrap();
        let paid = log
            .append(
                AuditDraft {
                    settlement: "paid".into(),
                    ..draft(1)
                },
                12,
            )
            .unwrap();
        let history = log.task_history(&draft(1).task_id).unwrap();
        assert_eq!(history, vec![first, paid]);
        let states: Vec<_> = history
            .iter()
            .map(|r| r.entry().settlement.as_str())
            .collect();
        assert_eq!(states, ["counter-signed", "paid"]);
        assert_eq!(log.verify().unwrap().entries, 3);
    }

    #[test]
    fn not_an_audit_log_or_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.redb");
        drop(Database::create(&other).unwrap());
        assert!(matches!(
            verify(&other, None).unwrap_err(),
            AuditError::NotAnAuditLog { .. }
        ));
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0xA5u8; 10_000]).unwrap();
        assert!(matches!(
            verify(&garbage, None).unwrap_err(),
            AuditError::Open { .. }
        ));
        assert!(verify(&dir.path().join("missing.redb"), None).is_err());
    }

    /// Five records at 100..=500 ms; the third carries labels and policy reasons.
    fn export_fixture() -> (tempfile::TempDir, PathBuf, Vec<AuditRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let log = AuditLog::open(&path, id(1)).unwrap();
        let records = (0..5u64)
            .map(|i| {
                let mut d = draft(i);
                if i == 2 {
                    d.labels = BTreeMap::from([
                        ("note".to_string(), r#"a,b "c""#.to_string()),
                        ("project".to_string(), "x".to_string()),
                    ]);
                    d.policy.push(PolicyDecision {
                        kind: "placement".into(),
                        decision: "exclude".into(),
                        reasons: vec!["too slow".into(), "busy".into()],
                    });
                }
                log.append(d, 100 * (i + 1)).unwrap()
            })
            .collect();
        (dir, path, records)
    }

    #[test]
    fn export_jsonl_filtered() {
        let (_d, path, records) = export_fixture();
        let mut out = Vec::new();
        let n = export(&path, Some(200), Some(400), ExportFormat::Jsonl, &mut out).unwrap();
        assert_eq!(n, 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want = |r: &AuditRecord, labels: serde_json::Value, policy: serde_json::Value| {
            let e = r.entry();
            serde_json::json!({
                "seq": e.seq,
                "at_ms": e.at_ms,
                "role": e.role.to_string(),
                "task_id": e.task_id.to_hex(),
                "requester": id(1).node_id().to_hex(),
                "worker": id(2).node_id().to_hex(),
                "model": ModelId([7; 32]).to_hex(),
                "input_hash": e.input_hash.to_hex(),
                "output_hash": e.output_hash.to_hex(),
                "price_stroops": e.price_stroops,
                "energy_microjoules": e.energy_microjoules,
                "policy": policy,
                "settlement": "counter-signed",
                "labels": labels,
                "prev": e.prev.to_hex(),
                "hash": r.hash.to_hex(),
                "signer": id(1).node_id().to_hex(),
                "signature": hex::encode(r.signed.signature.0),
            })
        };
        let allow = serde_json::json!({"kind": "admission", "decision": "allow", "reasons": []});
        assert_eq!(
            lines,
            vec![
                want(
                    &records[1],
                    serde_json::json!({}),
                    serde_json::json!([allow])
                ),
                want(
                    &records[2],
                    serde_json::json!({"note": "a,b \"c\"", "project": "x"}),
                    serde_json::json!([allow, {"kind": "placement", "decision": "exclude", "reasons": ["too slow", "busy"]}]),
                ),
            ]
        );
        assert_eq!(records[1].entry().at_ms, 200);
        // Open bounds: everything; since only; until only.
        let count = |s, u| export(&path, s, u, ExportFormat::Jsonl, std::io::sink()).unwrap();
        assert_eq!(count(None, None), 5);
        assert_eq!(count(Some(400), None), 2);
        assert_eq!(count(None, Some(101)), 1);
        assert_eq!(count(Some(600), None), 0);
    }

    #[test]
    fn export_csv_filtered_and_quoted() {
        let (_d, path, records) = export_fixture();
        let log = AuditLog::open(&path, id(1)).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            log.export(Some(300), Some(500), ExportFormat::Csv, &mut out)
                .unwrap(),
            2
        );
        let text = String::from_utf8(out).unwrap();
        let row = |r: &AuditRecord, policy: &str, labels: &str| {
            let e = r.entry();
            format!(
                "{},{},{},{},{},{},{},{},{},{},{},{policy},counter-signed,{labels},{},{},{},{}\r\n",
                e.seq,
                e.at_ms,
                e.role,
                e.task_id.to_hex(),
                id(1).node_id().to_hex(),
                id(2).node_id().to_hex(),
                ModelId([7; 32]).to_hex(),
                e.input_hash.to_hex(),
                e.output_hash.to_hex(),
                e.price_stroops,
                e.energy_microjoules,
                e.prev.to_hex(),
                r.hash.to_hex(),
                id(1).node_id().to_hex(),
                hex::encode(r.signed.signature.0),
            )
        };
        let want = format!(
            "{CSV_HEADER}\r\n{}{}",
            row(
                &records[2],
                r#""admission:allow;placement:exclude(too slow,busy)""#,
                r#""note=a,b ""c"";project=x""#,
            ),
            row(&records[3], "admission:allow", ""),
        );
        assert_eq!(text, want);
        assert!(text.starts_with("seq,at_ms,role,task_id,"));
    }

    #[test]
    fn csv_field_quoting() {
        let q = |s: &str| {
            let mut out = String::new();
            csv_field(&mut out, s);
            out
        };
        assert_eq!(q("plain"), "plain");
        assert_eq!(q(""), "");
        assert_eq!(q("a,b"), "\"a,b\"");
        assert_eq!(q("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(q("two\nlines"), "\"two\nlines\"");
        assert_eq!(q("cr\r"), "\"cr\r\"");
    }

    /// A minimal RFC 4180 reader, to check the writer against.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut field)),
                (false, '\r') if chars.peek() == Some(&'\n') => {
                    chars.next();
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                (false, c) => field.push(c),
            }
        }
        rows
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            labels: BTreeMap<String, String>,
            reasons: Vec<String>,
            settlement: String,
            /// Signed step of the caller's clock: it may go back.
            step: i64,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (
                proptest::collection::btree_map("[a-z,\"=;]{0,6}", any::<String>(), 0..3),
                proptest::collection::vec(".{0,12}", 0..3),
                "[a-z\\-]{0,14}",
                -50i64..200,
            )
                .prop_map(|(labels, reasons, settlement, step)| Op::Append {
                    labels,
                    reasons,
                    settlement,
                    step,
                }),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn any_sequence_of_appends_verifies(ops in proptest::collection::vec(op(), 0..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.redb");
            let mut log = Some(AuditLog::open(&path, id(1)).unwrap());
            let mut clock: i64 = 1_000;
            let mut appended: Vec<AuditRecord> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { labels, reasons, settlement, step } => {
                        clock = (clock + step).max(0);
                        let mut d = draft(i as u64);
                        d.labels = labels;
                        d.policy[0].reasons = reasons;
                        d.settlement = settlement;
                        let r = log.as_ref().unwrap().append(d.clone(), clock as u64).unwrap();
                        let e = r.entry();
                        prop_assert_eq!(e.seq, appended.len() as u64);
                        prop_assert_eq!(e.prev, appended.last().map_or(GENESIS, |p| p.hash));
                        prop_assert_eq!(e.at_ms, (clock as u64).max(appended.last().map_or(0, |p| p.entry().at_ms)));
                        prop_assert_eq!(&e.labels, &d.labels);
                        appended.push(r);
                    }
                    Op::Reopen => {
                        drop(log.take());
                        log = Some(AuditLog::open(&path, id(1)).unwrap());
                    }
                }
            }
            drop(log);
            let report = verify(&path, Some(id(1).node_id())).unwrap();
            prop_assert_eq!(report.entries, appended.len() as u64);
            prop_assert_eq!(report.head, appended.last().map(|r| r.hash));
            prop_assert_eq!(report.last_at_ms, appended.last().map(|r| r.entry().at_ms));

            let mut jsonl = Vec::new();
            export(&path, None, None, ExportFormat::Jsonl, &mut jsonl).unwrap();
            let lines: Vec<serde_json::Value> = String::from_utf8(jsonl).unwrap()
                .lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            prop_assert_eq!(lines.len(), appended.len());
            for (line, r) in lines.iter().zip(&appended) {
                let labels: BTreeMap<String, String> = serde_json::from_value(line["labels"].clone()).unwrap();
                prop_assert_eq!(&labels, &r.entry().labels);
                prop_assert_eq!(line["hash"].as_str().unwrap(), r.hash.to_hex());
            }

            let mut csv = Vec::new();
            export(&path, None, None, ExportFormat::Csv, &mut csv).unwrap();
            let rows = parse_csv(&String::from_utf8(csv).unwrap());
            prop_assert_eq!(rows.len(), appended.len() + 1);
            for (row, r) in rows[1..].iter().zip(&appended) {
                prop_assert_eq!(row.len(), 18);
                prop_assert_eq!(&row[13], &flatten_labels(&r.entry().labels));
                prop_assert_eq!(&row[11], &flatten_policy(&r.entry().policy));
                prop_assert_eq!(&row[15], &r.hash.to_hex());
            }
        }
    }
}
