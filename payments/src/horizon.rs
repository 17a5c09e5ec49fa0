//! A small async Horizon client: accounts, transaction submission and lookup, an account's
//! transaction history paged with a cursor, friendbot.
//!
//! Only the endpoints a wallet needs. Horizon's result codes are turned into messages an
//! operator can act on ([`explain`]). Answers that leave the fate of a submitted transaction
//! unknown (a 504, another 5xx, a dropped connection, a timeout) are reported as such
//! ([`HorizonError::is_uncertain`]): the caller then looks the hash up rather than guessing.

use std::time::Duration;

use serde::Deserialize;
use tracing::debug;

use crate::config::StellarConfig;
use crate::stellar::parse_xlm;
use crate::types::TxHash;

/// Largest Horizon response body read, bytes.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most records Horizon gives in one page (its largest `limit`).
pub const MAX_PAGE_LIMIT: u32 = 200;
/// Longest paging token accepted, characters (Horizon's are 64-bit decimal integers).
const MAX_PAGING_TOKEN: usize = 64;

/// What Horizon said about a transaction it did not apply successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxFailure {
    /// The transaction result code (`tx_bad_seq`, `tx_failed`, …).
    pub tx_code: String,
    /// One result code per operation when `tx_code` is `tx_failed`.
    pub op_codes: Vec<String>,
    /// The result XDR, base64, when given.
    pub result_xdr: Option<String>,
}

impl TxFailure {
    /// Whether the transaction made it into a ledger (fee and sequence number consumed, no
    /// operation applied). Only `tx_failed` means that; other codes mean it was rejected
    /// before inclusion.
    pub fn was_included(&self) -> bool {
        self.tx_code == "tx_failed"
    }

    /// Indices of the operations that failed (code other than `op_success`).
    pub fn failed_ops(&self) -> Vec<usize> {
        self.op_codes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_str() != "op_success")
            .map(|(i, _)| i)
            .collect()
    }
}

impl std::fmt::Display for TxFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tx_code == "tx_failed" && !self.op_codes.is_empty() {
            let mut seen: Vec<&str> = Vec::new();
            for c in &self.op_codes {
                if c != "op_success" && !seen.contains(&c.as_str()) {
                    seen.push(c);
                }
            }
            let parts: Vec<String> = seen
                .iter()
                .map(|c| {
                    let n = self.op_codes.iter().filter(|x| x == c).count();
                    format!("{c} ×{n}: {}", explain(c))
                })
                .collect();
            write!(f, "transaction failed: {}", parts.join("; "))
        } else {
            write!(f, "{}: {}", self.tx_code, explain(&self.tx_code))
        }
    }
}

/// A plain-language explanation of a Horizon result code.
pub fn explain(code: &str) -> &'static str {
    match code {
        "tx_success" | "op_success" => "succeeded",
        "tx_failed" => "one or more operations failed; nothing was applied, the fee was charged",
        "tx_too_early" => "the transaction's time bounds have not started yet",
        "tx_too_late" => {
            "the transaction's time bounds expired before it was applied; it can never apply now"
        }
        "tx_missing_operation" => "the transaction has no operations",
        "tx_bad_seq" => {
            "the sequence number is not the paying account's next one (another transaction from this account was applied first, possibly this same one)"
        }
        "tx_bad_auth" => {
            "the signature does not match the paying account, or it was signed for another network passphrase"
        }
        "tx_insufficient_balance" => {
            "the fee would take the paying account below its minimum balance (reserve)"
        }
        "tx_no_source_account" | "tx_no_account" => {
            "the paying account does not exist; fund it first (on testnet: friendbot)"
        }
        "tx_insufficient_fee" => "the fee is below the network minimum (100 stroops per operation)",
        "tx_bad_auth_extra" => "the transaction carries signatures that are not needed",
        "tx_internal_error" => "Horizon or stellar-core hit an internal error",
        "tx_not_supported" => "the transaction type is not supported",
        "tx_malformed" => "the transaction is malformed",
        "tx_bad_sponsorship" => "sponsorship operations are unbalanced",
        "tx_bad_minseq_age_or_gap" => "the minimum sequence age or gap precondition is not met",
        "op_no_destination" => "the worker's account does not exist yet; it must be funded first",
        "op_underfunded" => {
            "the paying account does not hold enough XLM for these payments plus its reserve"
        }
        "op_malformed" => "a payment is malformed (non-positive amount or bad asset)",
        "op_low_reserve" => "a new account would start below the minimum balance",
        "op_already_exists" => "the account to create already exists",
        "op_line_full" => "the destination cannot hold more of this asset",
        "op_no_trust" => "the destination has no trustline for this asset",
        "op_src_no_trust" => "the paying account has no trustline for this asset",
        "op_not_authorized" | "op_src_not_authorized" => "the asset issuer has not authorised this",
        "op_no_issuer" => "the asset's issuer does not exist",
        "op_bad_auth" => "an operation lacks the required signature",
        "op_no_source_account" | "op_no_account" => "an operation's source account does not exist",
        "op_not_supported" => "the operation is not supported",
        "op_too_many_subentries" => "the account has too many subentries",
        "op_exceeded_work_limit" => "the operation exceeded the work limit",
        _ => "unrecognised result code",
    }
}

/// Why a Horizon or friendbot request did not give the wanted answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HorizonError {
    /// The HTTP client could not be built (bad TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// A configured URL is not usable.
    #[error("bad URL {url:?}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The request failed in transit: no connection, a dropped connection or a timeout.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// The client's error.
        source: reqwest::Error,
    },
    /// Horizon answered 504: it gave up waiting, the transaction may still apply.
    #[error("Horizon timed out (504) waiting for the transaction; it may still be applied")]
    Timeout,
    /// Horizon answered 429.
    #[error("Horizon is rate limiting this client (429)")]
    RateLimited,
    /// Horizon answered another 5xx.
    #[error("Horizon server error {status}: {detail}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Problem detail or body excerpt.
        detail: String,
    },
    /// The transaction was refused or failed; see the codes.
    #[error("{0}")]
    TxFailed(TxFailure),
    /// Horizon could not parse the transaction.
    #[error("Horizon says the transaction is malformed: {0}")]
    Malformed(String),
    /// Funding is not configured (empty friendbot URL).
    #[error("no friendbot URL is configured; fund the account by other means")]
    NoFriendbot,
    /// Some other 4xx answer.
    #[error("request to {url} refused ({status}): {detail}")]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Problem detail or body excerpt.
        detail: String,
    },
    /// The answer did not have the expected shape.
    #[error("unexpected answer from {url}: {why}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What was wrong.
        why: String,
    },
}

impl HorizonError {
    /// Whether a submission that ended with this error may or may not have been applied, so
    /// the outcome must be found by looking the hash up.
    pub fn is_uncertain(&self) -> bool {
        matches!(
            self,
            Self::Transport { .. } | Self::Timeout | Self::Server { .. } | Self::RateLimited
        )
    }
}

/// An account as Horizon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// The `G…` address.
    pub id: String,
    /// The last used sequence number; the next transaction uses this + 1.
    pub sequence: i64,
    /// Native balance, stroops.
    pub balance_stroops: i64,
    /// Trustlines, offers, signers and other entries that raise the minimum balance.
    pub subentry_count: u32,
}

impl AccountInfo {
    /// The minimum balance: (2 + subentries) × base reserve.
    pub fn min_balance_stroops(&self, base_reserve: i64) -> i64 {
        (2 + i64::from(self.subentry_count)).saturating_mul(base_reserve)
    }
}

/// A transaction Horizon knows (applied successfully or failed in a ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRecord {
    /// Its hash.
    pub hash: TxHash,
    /// The ledger it was included in.
    pub ledger: u32,
    /// Whether its operations applied.
    pub successful: bool,
    /// Fee charged, stroops.
    pub fee_charged: i64,
    /// Base64 envelope.
    pub envelope_xdr: String,
    /// Base64 result.
    pub result_xdr: String,
}

/// A transaction in an account's history, with its place in Horizon's paging order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountTx {
    /// Horizon's paging token for it; pass it as the cursor to list what came after.
    pub paging_token: String,
    /// The transaction.
    pub record: TxRecord,
    /// The account that submitted it (`G…`); a payment to the listed account has another.
    pub source_account: String,
}

/// One page of an account's transaction history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxPage {
    /// The transactions strictly after the cursor, oldest first.
    pub records: Vec<AccountTx>,
    /// The cursor for the next page: the last record's paging token, or the cursor asked
    /// with when the page is empty (`None` only for an empty page asked without one). Poll
    /// with it to see only newer transactions.
    pub next_cursor: Option<String>,
}

/// What friendbot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Funded {
    /// The account was created and funded (by this transaction, when friendbot said which).
    Funded(Option<TxHash>),
    /// The account already existed and was funded before.
    AlreadyFunded,
}

/// Server information from Horizon's root.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RootInfo {
    /// Horizon's version.
    #[serde(default)]
    pub horizon_version: String,
    /// The network passphrase it serves.
    pub network_passphrase: String,
    /// The latest ledger it ingested.
    #[serde(default)]
    pub history_latest_ledger: u64,
}

#[derive(Deserialize)]
struct AccountJson {
    id: String,
    sequence: String,
    #[serde(default)]
    subentry_count: u32,
    balances: Vec<BalanceJson>,
}

#[derive(Deserialize)]
struct BalanceJson {
    balance: String,
    asset_type: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(i64),
    Str(String),
}

impl NumOrString {
    fn value(&self) -> Option<i64> {
        match self {
            Self::Num(n) => Some(*n),
            Self::Str(s) => s.parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct TxJson {
    hash: String,
    ledger: u32,
    successful: bool,
    fee_charged: NumOrString,
    envelope_xdr: String,
    result_xdr: String,
}

#[derive(Deserialize)]
struct PageJson {
    #[serde(rename = "_embedded")]
    embedded: EmbeddedJson,
}

#[derive(Deserialize)]
struct EmbeddedJson {
    records: Vec<AccountTxJson>,
}

#[derive(Deserialize)]
struct AccountTxJson {
    paging_token: String,
    source_account: String,
    #[serde(flatten)]
    tx: TxJson,
}

/// A paging token as Horizon gives them for transactions: a non-negative decimal integer.
fn paging_token_value(token: &str) -> Option<u64> {
    if token.is_empty()
        || token.len() > MAX_PAGING_TOKEN
        || !token.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    token.parse().ok()
}

#[derive(Deserialize, Default)]
struct ProblemJson {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    extras: Option<ProblemExtras>,
}

#[derive(Deserialize, Default)]
struct ProblemExtras {
    #[serde(default)]
    result_codes: Option<ResultCodes>,
    #[serde(default)]
    result_xdr: Option<String>,
}

#[derive(Deserialize, Default)]
struct ResultCodes {
    #[serde(default)]
    transaction: String,
    #[serde(default)]
    operations: Vec<String>,
}

/// A Horizon client for one configured network.
#[derive(Debug, Clone)]
pub struct Horizon {
    http: reqwest::Client,
    base: String,
    friendbot: String,
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

impl Horizon {
    /// A client for the Horizon and friendbot URLs in `config`.
    pub fn new(config: &StellarConfig) -> Result<Self, HorizonError> {
        for url in [&config.horizon_url, &config.friendbot_url] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(HorizonError::BadUrl {
                    url: url.clone(),
                    why: "must start with http:// or https://".into(),
                });
            }
        }
        if config.horizon_url.is_empty() {
            return Err(HorizonError::BadUrl {
                url: String::new(),
                why: "the Horizon URL is empty".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.request_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(
                config.request_timeout_secs.clamp(1, 10),
            ))
            .user_agent(concat!("crank-node/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(HorizonError::Client)?;
        Ok(Self {
            http,
            base: config.horizon_url.trim_end_matches('/').to_owned(),
            friendbot: config.friendbot_url.clone(),
        })
    }

    /// The Horizon base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn read(
        url: &str,
        resp: reqwest::Response,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), HorizonError> {
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(HorizonError::BadResponse {
                url: url.into(),
                why: "response body too large".into(),
            });
        }
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| HorizonError::Transport {
                url: url.into(),
                source,
            })?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HorizonError::BadResponse {
                    url: url.into(),
                    why: "response body too large".into(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    fn parse<T: serde::de::DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, HorizonError> {
        serde_json::from_slice(body).map_err(|e| HorizonError::BadResponse {
            url: url.into(),
            why: format!("{e}; body starts {:?}", excerpt(body)),
        })
    }

    /// Maps a non-success answer to an error.
    fn problem(url: &str, status: reqwest::StatusCode, body: &[u8]) -> HorizonError {
        let p: ProblemJson = serde_json::from_slice(body).unwrap_or_default();
        let detail = if p.detail.is_empty() {
            if p.title.is_empty() {
                excerpt(body)
            } else {
                p.title.clone()
            }
        } else {
            p.detail.clone()
        };
        let code = status.as_u16();
        if code == 504 {
            return HorizonError::Timeout;
        }
        if code == 429 {
            return HorizonError::RateLimited;
        }
        if status.is_server_error() {
            return HorizonError::Server {
                status: code,
                detail,
            };
        }
        if let Some(codes) = p.extras.as_ref().and_then(|e| e.result_codes.as_ref())
            && !codes.transaction.is_empty()
        {
            return HorizonError::TxFailed(TxFailure {
                tx_code: codes.transaction.clone(),
                op_codes: codes.operations.clone(),
                result_xdr: p.extras.as_ref().and_then(|e| e.result_xdr.clone()),
            });
        }
        if p.kind.ends_with("transaction_malformed") {
            return HorizonError::Malformed(detail);
        }
        HorizonError::Refused {
            url: url.into(),
            status: code,
            detail,
        }
    }

    fn tx_record(url: &str, body: &[u8]) -> Result<TxRecord, HorizonError> {
        Self::to_record(url, Self::parse(url, body)?)
    }

    fn to_record(url: &str, t: TxJson) -> Result<TxRecord, HorizonError> {
        let bad = |why: &str| HorizonError::BadResponse {
            url: url.into(),
            why: why.into(),
        };
        Ok(TxRecord {
            hash: t.hash.parse().map_err(|_| bad("bad transaction hash"))?,
            ledger: t.ledger,
            successful: t.successful,
            fee_charged: t
                .fee_charged
                .value()
                .ok_or_else(|| bad("bad fee_charged"))?,
            envelope_xdr: t.envelope_xdr,
            result_xdr: t.result_xdr,
        })
    }

    async fn get(&self, url: &str) -> Result<(reqwest::StatusCode, Vec<u8>), HorizonError> {
        let resp = self
            .http
            .get(url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|source| HorizonError::Transport {
                url: url.into(),
                source,
            })?;
        Self::read(url, resp).await
    }

    /// Horizon's root: its version and the passphrase of the network it serves.
    pub async fn root(&self) -> Result<RootInfo, HorizonError> {
        let url = format!("{}/", self.base);
        let (status, body) = self.get(&url).await?;
        if !status.is_success() {
            return Err(Self::problem(&url, status, &body));
        }
        Self::parse(&url, &body)
    }

    /// The account at `address`, or `None` if it does not exist.
    pub async fn account(&self, address: &str) -> Result<Option<AccountInfo>, HorizonError> {
        if !crate::stellar::is_account_address(address) {
            return Err(HorizonError::BadUrl {
                url: address.chars().take(80).collect(),
                why: "not a Stellar account address (G… strkey)".into(),
            });
        }
        let url = format!("{}/accounts/{address}", self.base);
        let (status, body) = self.get(&url).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Self::problem(&url, status, &body));
        }
        let a: AccountJson = Self::parse(&url, &body)?;
        let bad = |why: String| HorizonError::BadResponse {
            url: url.clone(),
            why,
        };
        let sequence = a
            .sequence
            .parse()
            .map_err(|_| bad(format!("bad sequence {:?}", a.sequence)))?;
        let native = a
            .balances
            .iter()
            .find(|b| b.asset_type == "native")
            .ok_or_else(|| bad("no native balance".into()))?;
        let balance_stroops = parse_xlm(&native.balance)
            .ok_or_else(|| bad(format!("bad balance {:?}", native.balance)))?;
        Ok(Some(AccountInfo {
            id: a.id,
            sequence,
            balance_stroops,
            subentry_count: a.subentry_count,
        }))
    }

    /// Submits a signed envelope (base64 XDR) and waits for Horizon's verdict.
    ///
    /// On an uncertain error ([`HorizonError::is_uncertain`]) the transaction may or may not
    /// be applied: resubmit the identical envelope or look its hash up.
    pub async fn submit(&self, envelope_xdr: &str) -> Result<TxRecord, HorizonError> {
        let url = format!("{}/transactions", self.base);
        debug!(%url, "submitting transaction");
        let resp = self
            .http
            .post(&url)
            .header("Accept", "application/json")
            .form(&[("tx", envelope_xdr)])
            .send()
            .await
            .map_err(|source| HorizonError::Transport {
                url: url.clone(),
                source,
            })?;
        let (status, body) = Self::read(&url, resp).await?;
        if !status.is_success() {
            return Err(Self::problem(&url, status, &body));
        }
        Self::tx_record(&url, &body)
    }

    /// The transaction with this hash, or `None` if Horizon does not know it (yet).
    pub async fn transaction(&self, hash: &TxHash) -> Result<Option<TxRecord>, HorizonError> {
        let url = format!("{}/transactions/{}", self.base, hash.to_hex());
        let (status, body) = self.get(&url).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Self::problem(&url, status, &body));
        }
        Self::tx_record(&url, &body).map(Some)
    }

    /// One page of the transactions `address` takes part in (as source or as a payment's
    /// destination, as Horizon lists them), oldest first: those strictly after `cursor`
    /// (from the beginning when `None`), at most `limit` (clamped to 1..=200). Failed
    /// transactions are left out, as Horizon does by default.
    ///
    /// To find new payments, poll with the page's [`TxPage::next_cursor`]. An account that
    /// does not exist yet gives an empty page. A cursor must be a paging token from an earlier
    /// page.
    pub async fn account_transactions(
        &self,
        address: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<TxPage, HorizonError> {
        if !crate::stellar::is_account_address(address) {
            return Err(HorizonError::BadUrl {
                url: address.chars().take(80).collect(),
                why: "not a Stellar account address (G… strkey)".into(),
            });
        }
        if let Some(c) = cursor
            && paging_token_value(c).is_none()
        {
            return Err(HorizonError::BadUrl {
                url: c.chars().take(80).collect(),
                why: "the cursor is not a paging token".into(),
            });
        }
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let mut url = format!(
            "{}/accounts/{address}/transactions?order=asc&limit={limit}",
            self.base
        );
        if let Some(c) = cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let (status, body) = self.get(&url).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            debug!(%url, "account unknown to Horizon; empty page");
            return Ok(TxPage {
                records: Vec::new(),
                next_cursor: cursor.map(str::to_owned),
            });
        }
        if !status.is_success() {
            return Err(Self::problem(&url, status, &body));
        }
        let page = Self::tx_page(&url, &body, cursor, limit)?;
        debug!(
            %url,
            records = page.records.len(),
            next_cursor = page.next_cursor.as_deref().unwrap_or(""),
            "account transactions page"
        );
        Ok(page)
    }

    /// Checks and converts a page of `GET /accounts/{id}/transactions?order=asc`: at most
    /// `limit` records, each a valid transaction with a paging token, tokens increasing and
    /// after `cursor`.
    fn tx_page(
        url: &str,
        body: &[u8],
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<TxPage, HorizonError> {
        let bad = |why: String| HorizonError::BadResponse {
            url: url.into(),
            why,
        };
        let page: PageJson = Self::parse(url, body)?;
        let got = page.embedded.records.len();
        if got > limit as usize {
            return Err(bad(format!("{got} records in a page of at most {limit}")));
        }
        let mut after = cursor.and_then(paging_token_value);
        let mut records = Vec::with_capacity(got);
        for r in page.embedded.records {
            let token = paging_token_value(&r.paging_token).ok_or_else(|| {
                bad(format!(
                    "bad paging token {:?}",
                    excerpt(r.paging_token.as_bytes())
                ))
            })?;
            if let Some(a) = after
                && token <= a
            {
                return Err(bad(format!(
                    "paging token {token} is not after {a}; records out of order"
                )));
            }
            after = Some(token);
            if !crate::stellar::is_account_address(&r.source_account) {
                return Err(bad(format!(
                    "bad source account {:?}",
                    excerpt(r.source_account.as_bytes())
                )));
            }
            records.push(AccountTx {
                paging_token: r.paging_token,
                record: Self::to_record(url, r.tx)?,
                source_account: r.source_account,
            });
        }
        let next_cursor = records
            .last()
            .map(|r| r.paging_token.clone())
            .or_else(|| cursor.map(str::to_owned));
        Ok(TxPage {
            records,
            next_cursor,
        })
    }

    /// Asks friendbot to create and fund `address` (testnet only).
    pub async fn fund(&self, address: &str) -> Result<Funded, HorizonError> {
        if self.friendbot.is_empty() {
            return Err(HorizonError::NoFriendbot);
        }
        if !crate::stellar::is_account_address(address) {
            return Err(HorizonError::BadUrl {
                url: address.chars().take(80).collect(),
                why: "not a Stellar account address (G… strkey)".into(),
            });
        }
        let url = format!("{}?addr={address}", self.friendbot.trim_end_matches('/'));
        let (status, body) = self.get(&url).await?;
        if status.is_success() {
            // Friendbot versions differ in what else they return; the hash is enough.
            let hash = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("hash")?.as_str()?.parse().ok());
            return Ok(Funded::Funded(hash));
        }
        let p: ProblemJson = serde_json::from_slice(&body).unwrap_or_default();
        if status.as_u16() == 400
            && (p.detail.contains("already funded") || p.detail.contains("AlreadyExist"))
        {
            return Ok(Funded::AlreadyFunded);
        }
        match Self::problem(&url, status, &body) {
            HorizonError::TxFailed(f) if f.op_codes.iter().any(|c| c == "op_already_exists") => {
                Ok(Funded::AlreadyFunded)
            }
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_explain_themselves() {
        let f = TxFailure {
            tx_code: "tx_failed".into(),
            op_codes: vec!["op_success".into(), "op_no_destination".into()],
            result_xdr: None,
        };
        assert!(f.was_included());
        assert_eq!(f.failed_ops(), vec![1]);
        let msg = f.to_string();
        assert!(
            msg.contains("the worker's account does not exist yet; it must be funded first"),
            "{msg}"
        );
        let f = TxFailure {
            tx_code: "tx_bad_seq".into(),
            op_codes: vec![],
            result_xdr: None,
        };
        assert!(!f.was_included());
        assert!(f.to_string().starts_with("tx_bad_seq: the sequence number"));
    }

    #[test]
    fn problems_map_to_errors() {
        let url = "http://h/transactions";
        let body = br#"{"type":"https://stellar.org/horizon-errors/transaction_failed","title":"Transaction Failed","status":400,"detail":"x","extras":{"envelope_xdr":"e","result_codes":{"transaction":"tx_failed","operations":["op_underfunded"]},"result_xdr":"AAAAAAAAAGT/////AAAAAQAAAAAAAAAB/////gAAAAA="}}"#;
        match Horizon::problem(url, reqwest::StatusCode::BAD_REQUEST, body) {
            HorizonError::TxFailed(f) => {
                assert_eq!(f.op_codes, vec!["op_underfunded".to_string()]);
                assert!(f.to_string().contains("not hold enough XLM"));
            }
            other => panic!("{other:?}"),
        }
        assert!(Horizon::problem(url, reqwest::StatusCode::GATEWAY_TIMEOUT, b"{}").is_uncertain());
        assert!(Horizon::problem(url, reqwest::StatusCode::BAD_GATEWAY, b"<html>").is_uncertain());
        let malformed = br#"{"type":"https://stellar.org/horizon-errors/transaction_malformed","title":"Transaction Malformed","status":400,"detail":"bad xdr"}"#;
        assert!(matches!(
            Horizon::problem(url, reqwest::StatusCode::BAD_REQUEST, malformed),
            HorizonError::Malformed(_)
        ));
    }

    fn page_body(tokens: &[&str]) -> Vec<u8> {
        let source = crate::stellar::Wallet::from_seed([1; 32]).address();
        let records: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t| {
                serde_json::json!({
                    "paging_token": t,
                    "source_account": source,
                    "hash": "ab".repeat(32),
                    "ledger": 3,
                    "successful": true,
                    "fee_charged": "100",
                    "envelope_xdr": "AAAA",
                    "result_xdr": "AAAA",
                })
            })
            .collect();
        serde_json::json!({"_embedded": {"records": records}, "_links": {}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn pages_are_checked() {
        let url = "http://h/accounts/G/transactions";
        let page = Horizon::tx_page(url, &page_body(&["10", "20"]), Some("5"), 2).unwrap();
        assert_eq!(page.records.len(), 2);
        assert_eq!(page.records[0].paging_token, "10");
        assert_eq!(page.records[1].record.fee_charged, 100);
        assert_eq!(page.next_cursor.as_deref(), Some("20"));
        let empty = Horizon::tx_page(url, &page_body(&[]), Some("20"), 2).unwrap();
        assert!(empty.records.is_empty());
        assert_eq!(empty.next_cursor.as_deref(), Some("20"));
        assert_eq!(
            Horizon::tx_page(url, &page_body(&[]), None, 2)
                .unwrap()
                .next_cursor,
            None
        );
        for (tokens, cursor, why) in [
            (
                &["1", "2", "3"][..],
                None,
                "3 records in a page of at most 2",
            ),
            (&["20", "10"][..], None, "not after 20"),
            (&["5"][..], Some("5"), "not after 5"),
            (&["x1"][..], None, "bad paging token"),
            (&[""][..], None, "bad paging token"),
        ] {
            match Horizon::tx_page(url, &page_body(tokens), cursor, 2) {
                Err(HorizonError::BadResponse { why: w, .. }) => {
                    assert!(w.contains(why), "{w}");
                }
                other => panic!("{tokens:?}: {other:?}"),
            }
        }
        assert!(matches!(
            Horizon::tx_page(url, b"{\"_embedded\": {}}", None, 2),
            Err(HorizonError::BadResponse { .. })
        ));
    }

    #[test]
    fn bad_urls_are_refused() {
        let c = StellarConfig {
            horizon_url: "ftp://x".into(),
            ..StellarConfig::default()
        };
        assert!(matches!(Horizon::new(&c), Err(HorizonError::BadUrl { .. })));
    }
}
