//! The ledger rules of the local network: accounts, sequence numbers, fees, reserves,
//! signatures, time bounds and atomic payment application.
//!
//! Pure and synchronous: [`Network::submit`] takes an envelope and the current time and returns
//! the HTTP status and JSON body Horizon would answer with. The HTTP layer adds faults.
//!
//! Written against stellar-xdr and ed25519-dalek only, independently of crank-payments, so it
//! can referee that crate's transactions.

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stellar_xdr::{
    AccountId, Asset, CreateAccountOp, CreateAccountResult, DecoratedSignature, Hash, Limits, Memo,
    MuxedAccount, Operation, OperationBody, OperationResult, OperationResultTr, PaymentResult,
    Preconditions, PublicKey, ReadXdr, SequenceNumber, Signature, SignatureHint, Transaction,
    TransactionEnvelope, TransactionExt, TransactionResult, TransactionResultExt,
    TransactionResultResult, TransactionV1Envelope, Uint256, WriteXdr,
};

/// Passphrase of a quickstart `--local` network, the default here.
pub const STANDALONE_PASSPHRASE: &str = "Standalone Network ; February 2017";
/// Longest envelope accepted, base64 characters.
const MAX_ENVELOPE_B64: usize = 256 * 1024;
/// Most records one page of a listing holds (Horizon's maximum `limit`).
pub const MAX_PAGE_LIMIT: usize = 200;
/// Records in a page when the request names no `limit` (Horizon's default).
pub const DEFAULT_PAGE_LIMIT: usize = 10;

/// Rules and amounts of the local network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Passphrase signatures must be made for.
    pub passphrase: String,
    /// Minimum fee per operation, stroops.
    pub base_fee: u32,
    /// Base reserve, stroops; an account keeps (2 + subentries) × this.
    pub base_reserve: i64,
    /// What friendbot gives a new account, stroops.
    pub friendbot_amount: i64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            passphrase: STANDALONE_PASSPHRASE.into(),
            base_fee: 100,
            base_reserve: 5_000_000,
            friendbot_amount: 10_000 * 10_000_000,
        }
    }
}

/// An account's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Native balance, stroops.
    pub balance: i64,
    /// Last used sequence number.
    pub seq: i64,
    /// Subentries (always 0 here: no trustlines or offers).
    pub subentries: u32,
}

/// A payment that was applied, for tests that count what arrived where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPayment {
    /// Hash of the transaction that carried it (hex).
    pub tx_hash: String,
    /// Paying account (`G…`).
    pub from: String,
    /// Receiving account (`G…`).
    pub to: String,
    /// Stroops.
    pub amount: i64,
}

/// A transaction that made it into a ledger (successful or failed).
#[derive(Debug, Clone)]
struct StoredTx {
    /// The Horizon transaction resource.
    record: Value,
    /// The answer given when it was submitted, replayed on resubmission.
    status: u16,
    answer: Value,
    /// Whether its operations applied (failed ones are listed only on request).
    successful: bool,
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first (Horizon's default).
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

impl Order {
    /// The query-parameter spelling, `asc` or `desc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }

    fn reversed(self) -> Self {
        match self {
            Self::Asc => Self::Desc,
            Self::Desc => Self::Asc,
        }
    }
}

/// Where a page starts: after a paging token, or after everything so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// A paging token (a record's `paging_token`).
    Token(i64),
    /// `now`: the end of the latest ledger, as Horizon resolves it.
    Now,
}

/// The paging parameters of a Horizon listing, read as Horizon reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery {
    /// Only records strictly after this cursor in `order`; `None` starts at the beginning
    /// (the oldest record for `asc`, the newest for `desc`).
    pub cursor: Option<Cursor>,
    /// Ascending (oldest first) or descending.
    pub order: Order,
    /// Records at most, 1 to [`MAX_PAGE_LIMIT`].
    pub limit: usize,
    /// Whether failed transactions are listed too (Horizon leaves them out by default).
    pub include_failed: bool,
}

impl Default for PageQuery {
    fn default() -> Self {
        Self {
            cursor: None,
            order: Order::Asc,
            limit: DEFAULT_PAGE_LIMIT,
            include_failed: false,
        }
    }
}

impl PageQuery {
    /// Reads `cursor`, `order`, `limit` and `include_failed` from query parameters. An
    /// absent or empty parameter takes Horizon's default; an unusable one is Horizon's 400
    /// naming the field.
    ///
    /// A cursor is a paging token (a non-negative decimal integer) or `now`.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, Answer> {
        let get = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mut q = Self::default();
        if let Some(c) = get("cursor") {
            q.cursor = Some(if c == "now" {
                Cursor::Now
            } else {
                Cursor::Token(c.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| {
                    Answer::bad_request("cursor", "the cursor must be a paging token or `now`")
                })?)
            });
        }
        if let Some(o) = get("order") {
            q.order = match o {
                "asc" => Order::Asc,
                "desc" => Order::Desc,
                _ => {
                    return Err(Answer::bad_request(
                        "order",
                        "order must be either `asc` or `desc`",
                    ));
                }
            };
        }
        if let Some(l) = get("limit") {
            q.limit = l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_PAGE_LIMIT).contains(l))
                .ok_or_else(|| {
                    Answer::bad_request(
                        "limit",
                        format!("limit must be an integer from 1 to {MAX_PAGE_LIMIT}"),
                    )
                })?;
        }
        if let Some(f) = get("include_failed") {
            q.include_failed = match f {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(Answer::bad_request(
                        "include_failed",
                        "include_failed must be `true` or `false`",
                    ));
                }
            };
        }
        Ok(q)
    }
}

/// The paging token of the `order`-th transaction (from 1) of `ledger`: Horizon's TOID,
/// `ledger << 32 | order << 12`, which grows with application order.
fn paging_token(ledger: u32, order: u32) -> i64 {
    (i64::from(ledger) << 32) | (i64::from(order & 0xF_FFFF) << 12)
}

/// The accounts a transaction concerns: its source, operation sources and the
/// destinations of its payments and account creations (Horizon's participants, for the
/// operations modelled here). Whether the operations applied does not matter.
fn participants(tx: &Transaction) -> Vec<[u8; 32]> {
    let mut out = vec![muxed_key(&tx.source_account)];
    for op in tx.operations.iter() {
        if let Some(m) = &op.source_account {
            out.push(muxed_key(m));
        }
        match &op.body {
            OperationBody::Payment(p) => out.push(muxed_key(&p.destination)),
            OperationBody::CreateAccount(c) => out.push(account_key(&c.destination)),
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// An answer of the network: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl Answer {
    fn problem(status: u16, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({
                "type": format!("https://stellar.org/horizon-errors/{kind}"),
                "title": title,
                "status": status,
                "detail": detail.into(),
            }),
        }
    }

    /// Horizon's 404.
    pub fn not_found() -> Self {
        Self::problem(
            404,
            "not_found",
            "Resource Missing",
            "The resource at the url requested was not found.  This usually occurs for one of two reasons:  The url requested is not valid, or no data in our database could be found with the parameters provided.",
        )
    }

    /// Horizon's 504.
    pub fn timeout() -> Self {
        Self::problem(
            504,
            "timeout",
            "Timeout",
            "Your request timed out before completing.  Please try your request again. If you are submitting a transaction make sure you are sending exactly the same transaction (with the same sequence number).",
        )
    }

    /// Horizon's 400 for a request parameter it cannot use.
    pub fn bad_request(field: &str, reason: impl Into<String>) -> Self {
        let mut a = Self::problem(
            400,
            "bad_request",
            "Bad Request",
            "The request you sent was invalid in some way.",
        );
        if let Some(obj) = a.body.as_object_mut() {
            obj.insert(
                "extras".into(),
                json!({"invalid_field": field, "reason": reason.into()}),
            );
        }
        a
    }

    fn malformed(detail: impl Into<String>) -> Self {
        Self::problem(
            400,
            "transaction_malformed",
            "Transaction Malformed",
            detail,
        )
    }
}

/// The state of the local network.
#[derive(Debug)]
pub struct Network {
    config: NetworkConfig,
    network_id: [u8; 32],
    accounts: HashMap<[u8; 32], Account>,
    txs: HashMap<[u8; 32], StoredTx>,
    /// Included transactions in ledger order (hashes).
    history: Vec<[u8; 32]>,
    /// Per account, the included transactions it takes part in: (paging token, hash), in
    /// ledger order, so tokens increase.
    by_account: HashMap<[u8; 32], Vec<(i64, [u8; 32])>>,
    payments: Vec<AppliedPayment>,
    ledger: u32,
    friendbot: SigningKey,
    submissions: u64,
}

fn g(key: &[u8; 32]) -> String {
    stellar_strkey::ed25519::PublicKey(*key)
        .to_string()
        .as_str()
        .to_owned()
}

fn muxed_key(m: &MuxedAccount) -> [u8; 32] {
    match m {
        MuxedAccount::Ed25519(Uint256(k)) => *k,
        MuxedAccount::MuxedEd25519(m) => m.ed25519.0,
    }
}

fn account_key(a: &AccountId) -> [u8; 32] {
    let PublicKey::PublicKeyTypeEd25519(Uint256(k)) = &a.0;
    *k
}

fn format_amount(stroops: i64) -> String {
    format!("{}.{:07}", stroops / 10_000_000, stroops % 10_000_000)
}

fn op_code(r: &OperationResult) -> &'static str {
    match r {
        OperationResult::OpInner(OperationResultTr::Payment(p)) => match p {
            PaymentResult::Success => "op_success",
            PaymentResult::Malformed => "op_malformed",
            PaymentResult::Underfunded => "op_underfunded",
            PaymentResult::SrcNoTrust => "op_src_no_trust",
            PaymentResult::SrcNotAuthorized => "op_src_not_authorized",
            PaymentResult::NoDestination => "op_no_destination",
            PaymentResult::NoTrust => "op_no_trust",
            PaymentResult::NotAuthorized => "op_not_authorized",
            PaymentResult::LineFull => "op_line_full",
            PaymentResult::NoIssuer => "op_no_issuer",
        },
        OperationResult::OpInner(OperationResultTr::CreateAccount(c)) => match c {
            CreateAccountResult::Success => "op_success",
            CreateAccountResult::Malformed => "op_malformed",
            CreateAccountResult::Underfunded => "op_underfunded",
            CreateAccountResult::LowReserve => "op_low_reserve",
            CreateAccountResult::AlreadyExist => "op_already_exists",
        },
        OperationResult::OpBadAuth => "op_bad_auth",
        OperationResult::OpNoAccount => "op_no_source_account",
        OperationResult::OpNotSupported => "op_not_supported",
        _ => "op_not_supported",
    }
}

/// Why a transaction was refused before it could be included.
fn reject_code(r: &TransactionResultResult) -> &'static str {
    match r {
        TransactionResultResult::TxTooEarly => "tx_too_early",
        TransactionResultResult::TxTooLate => "tx_too_late",
        TransactionResultResult::TxMissingOperation => "tx_missing_operation",
        TransactionResultResult::TxBadSeq => "tx_bad_seq",
        TransactionResultResult::TxBadAuth => "tx_bad_auth",
        TransactionResultResult::TxInsufficientBalance => "tx_insufficient_balance",
        TransactionResultResult::TxNoAccount => "tx_no_source_account",
        TransactionResultResult::TxInsufficientFee => "tx_insufficient_fee",
        TransactionResultResult::TxBadAuthExtra => "tx_bad_auth_extra",
        TransactionResultResult::TxNotSupported => "tx_not_supported",
        TransactionResultResult::TxMalformed => "tx_malformed",
        TransactionResultResult::TxFailed(_) => "tx_failed",
        TransactionResultResult::TxSuccess(_) => "tx_success",
        _ => "tx_internal_error",
    }
}

fn result_xdr(fee_charged: i64, result: TransactionResultResult) -> String {
    TransactionResult {
        fee_charged,
        result,
        ext: TransactionResultExt::V0,
    }
    .to_xdr_base64(Limits::none())
    // Encoding a value we just built cannot fail; an empty string would only show up in JSON.
    .unwrap_or_default()
}

fn memo_json(memo: &Memo) -> (String, Option<String>) {
    use base64::Engine;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match memo {
        Memo::None => ("none".into(), None),
        Memo::Text(t) => ("text".into(), Some(t.to_utf8_string_lossy())),
        Memo::Id(id) => ("id".into(), Some(id.to_string())),
        Memo::Hash(h) => ("hash".into(), Some(encode(&h.0))),
        Memo::Return(h) => ("return".into(), Some(encode(&h.0))),
    }
}

impl Network {
    /// A fresh network with only the friendbot account (holding 10^11 XLM).
    pub fn new(config: NetworkConfig) -> Self {
        let network_id: [u8; 32] = Sha256::digest(config.passphrase.as_bytes()).into();
        // A fixed friendbot key per passphrase, so restarts look the same.
        let seed: [u8; 32] =
            Sha256::digest(format!("crank-horizon friendbot {}", config.passphrase)).into();
        let friendbot = SigningKey::from_bytes(&seed);
        let mut accounts = HashMap::new();
        accounts.insert(
            friendbot.verifying_key().to_bytes(),
            Account {
                balance: 100_000_000_000 * 10_000_000,
                seq: 1 << 32,
                subentries: 0,
            },
        );
        Self {
            config,
            network_id,
            accounts,
            txs: HashMap::new(),
            history: Vec::new(),
            by_account: HashMap::new(),
            payments: Vec::new(),
            ledger: 2,
            friendbot,
            submissions: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The latest closed ledger.
    pub fn ledger(&self) -> u32 {
        self.ledger
    }

    /// Submissions seen (including rejected and replayed ones).
    pub fn submissions(&self) -> u64 {
        self.submissions
    }

    /// Transactions included in ledgers.
    pub fn included(&self) -> usize {
        self.history.len()
    }

    /// An account's state.
    pub fn account(&self, address: &str) -> Option<Account> {
        let k = stellar_strkey::ed25519::PublicKey::from_string(address).ok()?;
        self.accounts.get(&k.0).copied()
    }

    /// Creates or overwrites an account directly (a genesis entry), for tests that need an
    /// exact balance.
    pub fn set_account(&mut self, address: &str, balance: i64) -> Result<(), String> {
        let k = stellar_strkey::ed25519::PublicKey::from_string(address)
            .map_err(|_| format!("{address:?} is not a G… address"))?;
        let seq = i64::from(self.ledger) << 32;
        let e = self.accounts.entry(k.0).or_insert(Account {
            balance,
            seq,
            subentries: 0,
        });
        e.balance = balance;
        Ok(())
    }

    /// Every payment applied so far, in order.
    pub fn payments(&self) -> &[AppliedPayment] {
        &self.payments
    }

    fn min_balance(&self, a: &Account) -> i64 {
        (2 + i64::from(a.subentries)) * self.config.base_reserve
    }

    /// Horizon's root document.
    pub fn root(&self) -> Value {
        json!({
            "horizon_version": concat!("crank-horizon ", env!("CARGO_PKG_VERSION")),
            "core_version": "crank-horizon (in-memory ledger)",
            "network_passphrase": self.config.passphrase,
            "history_latest_ledger": self.ledger,
            "core_latest_ledger": self.ledger,
            "current_protocol_version": 23,
        })
    }

    /// `GET /accounts/{id}`.
    pub fn account_json(&self, address: &str) -> Answer {
        let Ok(k) = stellar_strkey::ed25519::PublicKey::from_string(address) else {
            return Answer::problem(
                400,
                "bad_request",
                "Bad Request",
                "The request you sent was invalid in some way.",
            );
        };
        let Some(a) = self.accounts.get(&k.0) else {
            return Answer::not_found();
        };
        Answer {
            status: 200,
            body: json!({
                "id": address,
                "account_id": address,
                "sequence": a.seq.to_string(),
                "subentry_count": a.subentries,
                "last_modified_ledger": self.ledger,
                "thresholds": {"low_threshold": 0, "med_threshold": 0, "high_threshold": 0},
                "balances": [{"balance": format_amount(a.balance), "asset_type": "native"}],
                "signers": [{"weight": 1, "key": address, "type": "ed25519_public_key"}],
                // Account data entries (none here); SDKs read it for the memo-required check.
                "data": {},
                "flags": {"auth_required": false, "auth_revocable": false, "auth_immutable": false, "auth_clawback_enabled": false},
            }),
        }
    }

    /// `GET /transactions/{hash}`.
    pub fn transaction_json(&self, hash_hex: &str) -> Answer {
        let Some(h) = hex::decode(hash_hex)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return Answer::problem(
                400,
                "bad_request",
                "Bad Request",
                "The request you sent was invalid in some way.",
            );
        };
        match self.txs.get(&h) {
            Some(t) => Answer {
                status: 200,
                body: t.record.clone(),
            },
            None => Answer::not_found(),
        }
    }

    /// `GET /accounts/{id}/transactions`: one page of the included transactions the
    /// account takes part in (as source, operation source or destination), paged as
    /// Horizon pages: records strictly after `page.cursor` in `page.order`, at most
    /// `page.limit`, failed ones only with `page.include_failed`.
    ///
    /// `base_url` prefixes the `_links` (`http://host:port`, or empty for relative links).
    /// An account the network has never seen is a 404, as in Horizon.
    pub fn account_transactions_json(
        &self,
        address: &str,
        page: &PageQuery,
        base_url: &str,
    ) -> Answer {
        let Ok(k) = stellar_strkey::ed25519::PublicKey::from_string(address) else {
            return Answer::bad_request(
                "account_id",
                "Account ID must start with `G` and contain 56 alphanum characters",
            );
        };
        let listed = self.by_account.get(&k.0);
        if listed.is_none() && !self.accounts.contains_key(&k.0) {
            return Answer::not_found();
        }
        let listed = listed.map_or(&[][..], Vec::as_slice);
        let limit = page.limit.clamp(1, MAX_PAGE_LIMIT);
        let wanted = |(token, hash): &(i64, [u8; 32])| {
            let t = self.txs.get(hash)?;
            (page.include_failed || t.successful).then_some((*token, t))
        };
        // `now` is the first token of the next ledger: after everything so far, and a
        // concrete cursor in the links to poll with.
        let cursor = page.cursor.map(|c| match c {
            Cursor::Token(t) => t,
            Cursor::Now => paging_token(self.ledger.saturating_add(1), 0),
        });
        let chosen: Vec<(i64, &StoredTx)> = match page.order {
            Order::Asc => {
                let start = cursor.map_or(0, |c| listed.partition_point(|(t, _)| *t <= c));
                listed[start..]
                    .iter()
                    .filter_map(wanted)
                    .take(limit)
                    .collect()
            }
            Order::Desc => {
                let end = cursor.map_or(listed.len(), |c| listed.partition_point(|(t, _)| *t < c));
                listed[..end]
                    .iter()
                    .rev()
                    .filter_map(wanted)
                    .take(limit)
                    .collect()
            }
        };
        let href = |cursor: Option<i64>, order: Order| {
            let mut h = format!(
                "{base_url}/accounts/{address}/transactions?cursor={}&limit={limit}&order={}",
                cursor.map(|c| c.to_string()).unwrap_or_default(),
                order.as_str(),
            );
            if page.include_failed {
                h.push_str("&include_failed=true");
            }
            h
        };
        let next = chosen.last().map(|(t, _)| *t).or(cursor);
        let prev = chosen.first().map(|(t, _)| *t).or(cursor);
        let records: Vec<Value> = chosen.iter().map(|(_, t)| t.record.clone()).collect();
        Answer {
            status: 200,
            body: json!({
                "_links": {
                    "self": {"href": href(cursor, page.order)},
                    "next": {"href": href(next, page.order)},
                    "prev": {"href": href(prev, page.order.reversed())},
                },
                "_embedded": {"records": records},
            }),
        }
    }

    /// `POST /transactions`: validates, applies and records a transaction.
    ///
    /// `now` is the network's clock, Unix seconds. An envelope whose hash is already in a
    /// ledger gets the original answer again and is not applied twice.
    pub fn submit(&mut self, envelope_b64: &str, now: u64) -> Answer {
        self.submissions += 1;
        let envelope_b64 = envelope_b64.trim();
        if envelope_b64.len() > MAX_ENVELOPE_B64 {
            return Answer::malformed("The transaction is too large.");
        }
        let limits = Limits {
            depth: 200,
            len: MAX_ENVELOPE_B64,
        };
        let env = match TransactionEnvelope::from_xdr_base64(envelope_b64, limits) {
            Ok(e) => e,
            Err(e) => {
                return Answer::malformed(format!(
                    "Horizon could not decode the transaction envelope in this request ({e}). A transaction should be an XDR TransactionEnvelope struct encoded using base64."
                ));
            }
        };
        let TransactionEnvelope::Tx(v1) = &env else {
            // V0 and fee-bump envelopes are valid on the real network but unused here.
            return self.reject(&env, envelope_b64, TransactionResultResult::TxNotSupported);
        };
        let Ok(hash) = v1.tx.hash(self.network_id) else {
            return Answer::malformed("The transaction cannot be hashed.");
        };
        if let Some(t) = self.txs.get(&hash) {
            return Answer {
                status: t.status,
                body: t.answer.clone(),
            };
        }
        let tx = &v1.tx;
        let source = muxed_key(&tx.source_account);
        let Some(src) = self.accounts.get(&source).copied() else {
            return self.reject(&env, envelope_b64, TransactionResultResult::TxNoAccount);
        };
        if tx.operations.is_empty() {
            return self.reject(
                &env,
                envelope_b64,
                TransactionResultResult::TxMissingOperation,
            );
        }
        let n_ops = tx.operations.len() as u64;
        if u64::from(tx.fee) < u64::from(self.config.base_fee) * n_ops {
            return self.reject(
                &env,
                envelope_b64,
                TransactionResultResult::TxInsufficientFee,
            );
        }
        if let Preconditions::Time(tb)
        | Preconditions::V2(stellar_xdr::PreconditionsV2 {
            time_bounds: Some(tb),
            ..
        }) = &tx.cond
        {
            if tb.min_time.0 > now {
                return self.reject(&env, envelope_b64, TransactionResultResult::TxTooEarly);
            }
            if tb.max_time.0 != 0 && tb.max_time.0 < now {
                return self.reject(&env, envelope_b64, TransactionResultResult::TxTooLate);
            }
        }
        if matches!(tx.cond, Preconditions::V2(_)) {
            // Ledger bounds, minimum sequence age and extra signers are not modelled.
            return self.reject(&env, envelope_b64, TransactionResultResult::TxNotSupported);
        }
        if src.seq.checked_add(1) != Some(tx.seq_num.0) {
            return self.reject(&env, envelope_b64, TransactionResultResult::TxBadSeq);
        }
        // Signatures: each required signer (the source and any other operation source) must
        // have a valid signature; signatures nobody needed are an error too.
        let mut used = vec![false; v1.signatures.len()];
        let mut signed_by = |key: &[u8; 32]| -> bool {
            let Ok(vk) = VerifyingKey::from_bytes(key) else {
                return false;
            };
            let mut ok = false;
            for (i, s) in v1.signatures.iter().enumerate() {
                if s.hint.0 != key[28..] {
                    continue;
                }
                let Ok(sig) = <[u8; 64]>::try_from(s.signature.0.as_slice()) else {
                    continue;
                };
                if vk
                    .verify(&hash, &ed25519_dalek::Signature::from_bytes(&sig))
                    .is_ok()
                {
                    used[i] = true;
                    ok = true;
                }
            }
            ok
        };
        if !signed_by(&source) {
            return self.reject(&env, envelope_b64, TransactionResultResult::TxBadAuth);
        }
        let op_auth: Vec<bool> = tx
            .operations
            .iter()
            .map(|op| match &op.source_account {
                Some(m) if muxed_key(m) != source => signed_by(&muxed_key(m)),
                _ => true,
            })
            .collect();
        if used.iter().any(|u| !u) {
            return self.reject(&env, envelope_b64, TransactionResultResult::TxBadAuthExtra);
        }
        let fee = i64::from(tx.fee);
        if src.balance - self.min_balance(&src) < fee {
            return self.reject(
                &env,
                envelope_b64,
                TransactionResultResult::TxInsufficientBalance,
            );
        }

        // Included: the fee and the sequence number are consumed whatever the operations do.
        self.ledger += 1;
        if let Some(a) = self.accounts.get_mut(&source) {
            a.balance -= fee;
            a.seq = tx.seq_num.0;
        }
        let mut scratch = self.accounts.clone();
        let mut results = Vec::with_capacity(tx.operations.len());
        let mut pays = Vec::new();
        for (op, authed) in tx.operations.iter().zip(op_auth) {
            let op_source = op.source_account.as_ref().map_or(source, muxed_key);
            let r = if authed {
                self.apply_op(&mut scratch, op_source, op, &mut pays)
            } else {
                OperationResult::OpBadAuth
            };
            results.push(r);
        }
        let success = results.iter().all(|r| op_code(r) == "op_success");
        let hash_hex = hex::encode(hash);
        if success {
            self.accounts = scratch;
            for (from, to, amount) in pays {
                self.payments.push(AppliedPayment {
                    tx_hash: hash_hex.clone(),
                    from: g(&from),
                    to: g(&to),
                    amount,
                });
            }
        }
        let codes: Vec<&str> = results.iter().map(op_code).collect();
        let result = if success {
            TransactionResultResult::TxSuccess(results.try_into().unwrap_or_default())
        } else {
            TransactionResultResult::TxFailed(results.try_into().unwrap_or_default())
        };
        let result_xdr = result_xdr(fee, result);
        let (memo_type, memo) = memo_json(&tx.memo);
        // One transaction per ledger here, so it is the ledger's first.
        let token = paging_token(self.ledger, 1);
        let mut record = json!({
            "id": hash_hex,
            "paging_token": token.to_string(),
            "hash": hash_hex,
            "ledger": self.ledger,
            "successful": success,
            "source_account": g(&source),
            "source_account_sequence": tx.seq_num.0.to_string(),
            "fee_charged": fee.to_string(),
            "max_fee": fee.to_string(),
            "operation_count": n_ops,
            "envelope_xdr": envelope_b64,
            "result_xdr": result_xdr,
            "memo_type": memo_type,
            "created_at_unix": now,
        });
        if let (Some(m), Some(obj)) = (memo, record.as_object_mut()) {
            obj.insert("memo".into(), Value::String(m));
        }
        let (status, answer) = if success {
            (200, record.clone())
        } else {
            (
                400,
                json!({
                    "type": "https://stellar.org/horizon-errors/transaction_failed",
                    "title": "Transaction Failed",
                    "status": 400,
                    "detail": "The transaction failed when submitted to the stellar network. The `extras.result_codes` field on this response contains further details.  Descriptions of each code can be found at: https://developers.stellar.org/docs/data/apis/horizon/api-reference/errors/result-codes",
                    "extras": {
                        "envelope_xdr": envelope_b64,
                        "result_xdr": result_xdr,
                        "result_codes": {"transaction": "tx_failed", "operations": codes},
                        "hash": hash_hex,
                    },
                }),
            )
        };
        self.txs.insert(
            hash,
            StoredTx {
                record,
                status,
                answer: answer.clone(),
                successful: success,
            },
        );
        self.history.push(hash);
        for k in participants(tx) {
            self.by_account.entry(k).or_default().push((token, hash));
        }
        Answer {
            status,
            body: answer,
        }
    }

    /// A refusal before inclusion: nothing is consumed and nothing recorded.
    fn reject(
        &self,
        env: &TransactionEnvelope,
        envelope_b64: &str,
        result: TransactionResultResult,
    ) -> Answer {
        let code = reject_code(&result);
        let hash = match env {
            TransactionEnvelope::Tx(v1) => v1.tx.hash(self.network_id).ok().map(hex::encode),
            _ => None,
        };
        Answer {
            status: 400,
            body: json!({
                "type": "https://stellar.org/horizon-errors/transaction_failed",
                "title": "Transaction Failed",
                "status": 400,
                "detail": "The transaction failed when submitted to the stellar network. The `extras.result_codes` field on this response contains further details.  Descriptions of each code can be found at: https://developers.stellar.org/docs/data/apis/horizon/api-reference/errors/result-codes",
                "extras": {
                    "envelope_xdr": envelope_b64,
                    "result_xdr": result_xdr(0, result),
                    "result_codes": {"transaction": code},
                    "hash": hash,
                },
            }),
        }
    }

    fn apply_op(
        &self,
        accounts: &mut HashMap<[u8; 32], Account>,
        source: [u8; 32],
        op: &Operation,
        pays: &mut Vec<([u8; 32], [u8; 32], i64)>,
    ) -> OperationResult {
        let Some(src) = accounts.get(&source).copied() else {
            return OperationResult::OpNoAccount;
        };
        let min = self.min_balance(&src);
        match &op.body {
            OperationBody::Payment(p) => {
                let r = |x| OperationResult::OpInner(OperationResultTr::Payment(x));
                if p.amount <= 0 {
                    return r(PaymentResult::Malformed);
                }
                if !matches!(p.asset, Asset::Native) {
                    // Only native XLM exists here: there are no trustlines.
                    return r(PaymentResult::SrcNoTrust);
                }
                let dest = muxed_key(&p.destination);
                let Some(dst) = accounts.get(&dest).copied() else {
                    return r(PaymentResult::NoDestination);
                };
                if src.balance - p.amount < min {
                    return r(PaymentResult::Underfunded);
                }
                if dest != source {
                    let Some(new_dst) = dst.balance.checked_add(p.amount) else {
                        return r(PaymentResult::LineFull);
                    };
                    if let Some(a) = accounts.get_mut(&source) {
                        a.balance -= p.amount;
                    }
                    if let Some(a) = accounts.get_mut(&dest) {
                        a.balance = new_dst;
                    }
                }
                pays.push((source, dest, p.amount));
                r(PaymentResult::Success)
            }
            OperationBody::CreateAccount(CreateAccountOp {
                destination,
                starting_balance,
            }) => {
                let r = |x| OperationResult::OpInner(OperationResultTr::CreateAccount(x));
                let dest = account_key(destination);
                if *starting_balance <= 0 || dest == source {
                    return r(CreateAccountResult::Malformed);
                }
                if accounts.contains_key(&dest) {
                    return r(CreateAccountResult::AlreadyExist);
                }
                if *starting_balance < 2 * self.config.base_reserve {
                    return r(CreateAccountResult::LowReserve);
                }
                if src.balance - starting_balance < min {
                    return r(CreateAccountResult::Underfunded);
                }
                if let Some(a) = accounts.get_mut(&source) {
                    a.balance -= starting_balance;
                }
                accounts.insert(
                    dest,
                    Account {
                        balance: *starting_balance,
                        seq: i64::from(self.ledger) << 32,
                        subentries: 0,
                    },
                );
                r(CreateAccountResult::Success)
            }
            _ => OperationResult::OpNotSupported,
        }
    }

    /// Friendbot: creates `address` with the configured amount through a real
    /// `CreateAccount` transaction signed by the friendbot account.
    pub fn friendbot(&mut self, address: &str, now: u64) -> Answer {
        let Ok(dest) = stellar_strkey::ed25519::PublicKey::from_string(address) else {
            return Answer {
                status: 400,
                body: json!({
                    "type": "https://stellar.org/friendbot-errors/bad_request",
                    "title": "Bad Request",
                    "status": 400,
                    "detail": "The request you sent was invalid in some way.",
                    "extras": {"invalid_field": "addr", "reason": "invalid address: must be a valid G or C address"},
                }),
            };
        };
        if self.accounts.contains_key(&dest.0) {
            return Answer {
                status: 400,
                body: json!({
                    "type": "https://stellar.org/friendbot-errors/bad_request",
                    "title": "Bad Request",
                    "status": 400,
                    "detail": "account already funded to starting balance",
                }),
            };
        }
        let fb = self.friendbot.verifying_key().to_bytes();
        let seq = self.accounts.get(&fb).map_or(0, |a| a.seq) + 1;
        let tx = Transaction {
            source_account: MuxedAccount::Ed25519(Uint256(fb)),
            fee: self.config.base_fee,
            seq_num: SequenceNumber(seq),
            cond: Preconditions::None,
            memo: Memo::None,
            operations: vec![Operation {
                source_account: None,
                body: OperationBody::CreateAccount(CreateAccountOp {
                    destination: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(dest.0))),
                    starting_balance: self.config.friendbot_amount,
                }),
            }]
            .try_into()
            .unwrap_or_default(),
            ext: TransactionExt::V0,
        };
        let Ok(hash) = tx.hash(self.network_id) else {
            return Answer::problem(500, "server_error", "Internal Server Error", "hash failed");
        };
        let sig = DecoratedSignature {
            hint: SignatureHint(fb[28..].try_into().unwrap_or_default()),
            signature: Signature(
                self.friendbot
                    .sign(&hash)
                    .to_bytes()
                    .to_vec()
                    .try_into()
                    .unwrap_or_default(),
            ),
        };
        let env = TransactionEnvelope::Tx(TransactionV1Envelope {
            tx,
            signatures: vec![sig].try_into().unwrap_or_default(),
        });
        match env.to_xdr_base64(Limits::none()) {
            Ok(b64) => self.submit(&b64, now),
            Err(e) => Answer::problem(500, "server_error", "Internal Server Error", e.to_string()),
        }
    }

    /// Balances of all accounts (for the admin endpoint and tests), by address.
    pub fn balances(&self) -> BTreeMap<String, i64> {
        self.accounts
            .iter()
            .map(|(k, a)| (g(k), a.balance))
            .collect()
    }

    /// The memo hash of an included transaction, if it has one (tests use it).
    pub fn memo_hash(&self, hash_hex: &str) -> Option<[u8; 32]> {
        let h: [u8; 32] = hex::decode(hash_hex).ok()?.try_into().ok()?;
        let t = self.txs.get(&h)?;
        let env = t.record.get("envelope_xdr")?.as_str()?;
        let env = TransactionEnvelope::from_xdr_base64(env, Limits::none()).ok()?;
        match env {
            TransactionEnvelope::Tx(v1) => match v1.tx.memo {
                Memo::Hash(Hash(h)) => Some(h),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellar_xdr::{PaymentOp, TimeBounds, TimePoint};

    const NOW: u64 = 1_700_000_000;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn addr(k: &SigningKey) -> String {
        g(&k.verifying_key().to_bytes())
    }

    struct TxSpec {
        fee: u32,
        seq: i64,
        bounds: Option<(u64, u64)>,
        pays: Vec<(String, i64)>,
    }

    fn envelope(net: &Network, from: &SigningKey, spec: TxSpec, signers: &[&SigningKey]) -> String {
        let ops: Vec<Operation> = spec
            .pays
            .iter()
            .map(|(to, amount)| Operation {
                source_account: None,
                body: OperationBody::Payment(PaymentOp {
                    destination: to.parse().unwrap(),
                    asset: Asset::Native,
                    amount: *amount,
                }),
            })
            .collect();
        let tx = Transaction {
            source_account: MuxedAccount::Ed25519(Uint256(from.verifying_key().to_bytes())),
            fee: spec.fee,
            seq_num: SequenceNumber(spec.seq),
            cond: spec.bounds.map_or(Preconditions::None, |(a, b)| {
                Preconditions::Time(TimeBounds {
                    min_time: TimePoint(a),
                    max_time: TimePoint(b),
                })
            }),
            memo: Memo::None,
            operations: ops.try_into().unwrap(),
            ext: TransactionExt::V0,
        };
        let hash = tx.hash(net.network_id).unwrap();
        let sigs: Vec<DecoratedSignature> = signers
            .iter()
            .map(|k| {
                let pk = k.verifying_key().to_bytes();
                DecoratedSignature {
                    hint: SignatureHint(pk[28..].try_into().unwrap()),
                    signature: Signature(k.sign(&hash).to_bytes().to_vec().try_into().unwrap()),
                }
            })
            .collect();
        TransactionEnvelope::Tx(TransactionV1Envelope {
            tx,
            signatures: sigs.try_into().unwrap(),
        })
        .to_xdr_base64(Limits::none())
        .unwrap()
    }

    fn code(a: &Answer) -> String {
        a.body["extras"]["result_codes"]["transaction"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn funded() -> (Network, SigningKey, SigningKey, i64) {
        let mut net = Network::new(NetworkConfig::default());
        let (a, b) = (key(1), key(2));
        assert_eq!(net.friendbot(&addr(&a), NOW).status, 200);
        assert_eq!(net.friendbot(&addr(&b), NOW).status, 200);
        let seq = net.account(&addr(&a)).unwrap().seq;
        (net, a, b, seq)
    }

    #[test]
    fn friendbot_funds_once() {
        let (mut net, a, _, _) = funded();
        assert_eq!(net.account(&addr(&a)).unwrap().balance, 100_000_000_000);
        let again = net.friendbot(&addr(&a), NOW);
        assert_eq!(again.status, 400);
        assert_eq!(
            again.body["detail"],
            "account already funded to starting balance"
        );
        assert_eq!(
            net.friendbot("GBAD", NOW).body["extras"]["invalid_field"],
            "addr"
        );
    }

    #[test]
    fn payment_applies_once_and_resubmission_replays() {
        let (mut net, a, b, seq) = funded();
        let env = envelope(
            &net,
            &a,
            TxSpec {
                fee: 100,
                seq: seq + 1,
                bounds: Some((0, NOW + 60)),
                pays: vec![(addr(&b), 5_000)],
            },
            &[&a],
        );
        let first = net.submit(&env, NOW);
        assert_eq!(first.status, 200, "{}", first.body);
        let again = net.submit(&env, NOW);
        assert_eq!(again, first);
        assert_eq!(
            net.account(&addr(&b)).unwrap().balance,
            100_000_000_000 + 5_000
        );
        assert_eq!(
            net.account(&addr(&a)).unwrap().balance,
            100_000_000_000 - 5_000 - 100
        );
        assert_eq!(net.payments().len(), 1);
        let h = first.body["hash"].as_str().unwrap();
        assert_eq!(net.transaction_json(h).status, 200);
    }

    #[test]
    fn rejections_consume_nothing() {
        let (mut net, a, b, seq) = funded();
        let spec = |fee, s, bounds| TxSpec {
            fee,
            seq: s,
            bounds,
            pays: vec![(addr(&b), 1)],
        };
        let cases = [
            (
                envelope(&net, &a, spec(100, seq + 2, None), &[&a]),
                "tx_bad_seq",
            ),
            (
                envelope(&net, &a, spec(99, seq + 1, None), &[&a]),
                "tx_insufficient_fee",
            ),
            (
                envelope(&net, &a, spec(100, seq + 1, Some((0, NOW - 1))), &[&a]),
                "tx_too_late",
            ),
            (
                envelope(&net, &a, spec(100, seq + 1, Some((NOW + 10, 0))), &[&a]),
                "tx_too_early",
            ),
            (
                envelope(&net, &a, spec(100, seq + 1, None), &[&b]),
                "tx_bad_auth",
            ),
            (
                envelope(&net, &a, spec(100, seq + 1, None), &[&a, &b]),
                "tx_bad_auth_extra",
            ),
            (
                envelope(&net, &key(9), spec(100, 1, None), &[&key(9)]),
                "tx_no_source_account",
            ),
        ];
        for (env, want) in cases {
            let ans = net.submit(&env, NOW);
            assert_eq!(ans.status, 400);
            assert_eq!(code(&ans), want, "{}", ans.body);
        }
        let acct = net.account(&addr(&a)).unwrap();
        assert_eq!((acct.seq, acct.balance), (seq, 100_000_000_000));
        // Signed for another network.
        let other = Network::new(NetworkConfig {
            passphrase: "Test SDF Network ; September 2015".into(),
            ..NetworkConfig::default()
        });
        let env = envelope(&other, &a, spec(100, seq + 1, None), &[&a]);
        assert_eq!(code(&net.submit(&env, NOW)), "tx_bad_auth");
        assert_eq!(
            net.submit("AAAA", NOW).body["type"],
            "https://stellar.org/horizon-errors/transaction_malformed"
        );
    }

    #[test]
    fn failed_operation_rolls_back_but_charges_fee_and_sequence() {
        let (mut net, a, b, seq) = funded();
        let nobody = addr(&key(7));
        let env = envelope(
            &net,
            &a,
            TxSpec {
                fee: 200,
                seq: seq + 1,
                bounds: None,
                pays: vec![(addr(&b), 10), (nobody, 10)],
            },
            &[&a],
        );
        let ans = net.submit(&env, NOW);
        assert_eq!(ans.status, 400);
        assert_eq!(code(&ans), "tx_failed");
        assert_eq!(
            ans.body["extras"]["result_codes"]["operations"],
            json!(["op_success", "op_no_destination"])
        );
        let acct = net.account(&addr(&a)).unwrap();
        assert_eq!((acct.seq, acct.balance), (seq + 1, 100_000_000_000 - 200));
        assert_eq!(net.account(&addr(&b)).unwrap().balance, 100_000_000_000);
        // The failed transaction is in the ledger; resubmitting replays the failure.
        assert_eq!(net.submit(&env, NOW), ans);
        let h = ans.body["extras"]["hash"].as_str().unwrap();
        assert_eq!(net.transaction_json(h).body["successful"], false);
        assert!(net.payments().is_empty());
    }

    fn query(pairs: &[(&str, &str)]) -> Result<PageQuery, Answer> {
        PageQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn page_parameters_are_read_as_horizon_reads_them() {
        assert_eq!(query(&[]).unwrap(), PageQuery::default());
        assert_eq!(
            query(&[("cursor", ""), ("order", ""), ("limit", "")]).unwrap(),
            PageQuery::default()
        );
        assert_eq!(
            query(&[
                ("cursor", "17179873280"),
                ("order", "desc"),
                ("limit", "200"),
                ("include_failed", "true"),
            ])
            .unwrap(),
            PageQuery {
                cursor: Some(Cursor::Token(17_179_873_280)),
                order: Order::Desc,
                limit: 200,
                include_failed: true,
            }
        );
        assert_eq!(
            query(&[("cursor", "now")]).unwrap().cursor,
            Some(Cursor::Now)
        );
        for (name, value) in [
            ("cursor", "-1"),
            ("cursor", "abc"),
            ("order", "up"),
            ("limit", "0"),
            ("limit", "201"),
            ("limit", "ten"),
            ("include_failed", "yes"),
        ] {
            let a = query(&[(name, value)]).unwrap_err();
            assert_eq!(a.status, 400);
            assert_eq!(a.body["extras"]["invalid_field"], name, "{value}");
        }
    }

    #[test]
    fn account_listing_follows_participants_and_leaves_failed_out() {
        let (mut net, a, b, seq) = funded();
        let nobody = addr(&key(7));
        let pay = envelope(
            &net,
            &a,
            TxSpec {
                fee: 100,
                seq: seq + 1,
                bounds: None,
                pays: vec![(addr(&b), 10)],
            },
            &[&a],
        );
        assert_eq!(net.submit(&pay, NOW).status, 200);
        let failed = envelope(
            &net,
            &a,
            TxSpec {
                fee: 200,
                seq: seq + 2,
                bounds: None,
                pays: vec![(addr(&b), 10), (nobody.clone(), 10)],
            },
            &[&a],
        );
        assert_eq!(code(&net.submit(&failed, NOW)), "tx_failed");
        let listed = |who: &str, page: PageQuery| -> Vec<Value> {
            let ans = net.account_transactions_json(who, &page, "");
            assert_eq!(ans.status, 200, "{}", ans.body);
            ans.body["_embedded"]["records"].as_array().unwrap().clone()
        };
        let with_failed = PageQuery {
            include_failed: true,
            ..PageQuery::default()
        };
        // b: created by friendbot, then paid; the failed payment only on request.
        let fb = g(&net.friendbot.verifying_key().to_bytes());
        let recs = listed(&addr(&b), PageQuery::default());
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["source_account"], fb);
        assert_eq!(recs[1]["source_account"], addr(&a));
        let all = listed(&addr(&b), with_failed);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2]["successful"], false);
        let tokens: Vec<i64> = all
            .iter()
            .map(|r| r["paging_token"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
        // Newest first, and strictly before the cursor.
        let desc = listed(
            &addr(&b),
            PageQuery {
                order: Order::Desc,
                cursor: Some(Cursor::Token(tokens[2])),
                ..with_failed
            },
        );
        assert_eq!(desc.len(), 2);
        assert_eq!(desc[0]["paging_token"], tokens[1].to_string());
        // `now`: nothing yet in ascending order, everything in descending order, and a
        // concrete cursor in the links that the next transaction comes after.
        let now = PageQuery {
            cursor: Some(Cursor::Now),
            ..with_failed
        };
        let ans = net.account_transactions_json(&addr(&b), &now, "");
        assert_eq!(ans.body["_embedded"]["records"], json!([]));
        let next = ans.body["_links"]["next"]["href"].as_str().unwrap();
        let after: i64 = next
            .split("cursor=")
            .nth(1)
            .and_then(|c| c.split('&').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(after > tokens[2]);
        assert_eq!(
            listed(
                &addr(&b),
                PageQuery {
                    order: Order::Desc,
                    ..now
                }
            )
            .len(),
            3
        );
        // The failed payment's missing destination took part in it: a page, not a 404.
        assert!(listed(&nobody, PageQuery::default()).is_empty());
        assert_eq!(listed(&nobody, with_failed).len(), 1);
        // The friendbot account is the source of both creations.
        assert_eq!(listed(&fb, PageQuery::default()).len(), 2);
        let never = net.account_transactions_json(&addr(&key(8)), &PageQuery::default(), "");
        assert_eq!(never.status, 404);
        let bad = net.account_transactions_json("GNOPE", &PageQuery::default(), "");
        assert_eq!(bad.body["extras"]["invalid_field"], "account_id");
    }

    #[test]
    fn reserve_is_enforced() {
        let (mut net, a, b, seq) = funded();
        // Leaves exactly the 1 XLM minimum after fee: allowed.
        let all = 100_000_000_000 - 10_000_000 - 100;
        let env = envelope(
            &net,
            &a,
            TxSpec {
                fee: 100,
                seq: seq + 1,
                bounds: None,
                pays: vec![(addr(&b), all + 1)],
            },
            &[&a],
        );
        let ans = net.submit(&env, NOW);
        assert_eq!(
            ans.body["extras"]["result_codes"]["operations"],
            json!(["op_underfunded"])
        );
        let env = envelope(
            &net,
            &a,
            TxSpec {
                fee: 100,
                seq: seq + 2,
                bounds: None,
                pays: vec![(addr(&b), all - 100)],
            },
            &[&a],
        );
        assert_eq!(net.submit(&env, NOW).status, 200);
        assert_eq!(net.account(&addr(&a)).unwrap().balance, 10_000_000);
        // Now the fee itself would dig into the reserve.
        let env = envelope(
            &net,
            &a,
            TxSpec {
                fee: 100,
                seq: seq + 3,
                bounds: None,
                pays: vec![(addr(&b), 1)],
            },
            &[&a],
        );
        assert_eq!(code(&net.submit(&env, NOW)), "tx_insufficient_balance");
    }

    #[test]
    fn hundred_payments_fit_and_more_do_not_decode() {
        let (mut net, a, b, seq) = funded();
        let pays = vec![(addr(&b), 1); 100];
        let env = envelope(
            &net,
            &a,
            TxSpec {
                fee: 10_000,
                seq: seq + 1,
                bounds: None,
                pays,
            },
            &[&a],
        );
        assert_eq!(net.submit(&env, NOW).status, 200);
        // The same envelope with a 101st operation: patch the count (after the envelope type,
        // source, fee, sequence, no preconditions and no memo) and repeat one 56-byte payment.
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut bytes = engine.decode(&env).unwrap();
        let at = 4 + 36 + 4 + 8 + 4 + 4;
        assert_eq!(bytes[at..at + 4], 100u32.to_be_bytes());
        bytes[at..at + 4].copy_from_slice(&101u32.to_be_bytes());
        let op: Vec<u8> = bytes[at + 4..at + 4 + 56].to_vec();
        bytes.splice(at + 4..at + 4, op);
        let ans = net.submit(&engine.encode(&bytes), NOW);
        assert_eq!(ans.status, 400);
        assert_eq!(
            ans.body["type"],
            "https://stellar.org/horizon-errors/transaction_malformed"
        );
        assert_eq!(net.included(), 3);
    }
}
