//! The local Horizon over real HTTP: endpoint shapes, submission, idempotent resubmission,
//! faults and the admin API.

use std::net::SocketAddr;

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use stellar_xdr::{
    Asset, DecoratedSignature, Limits, Memo, MuxedAccount, Operation, OperationBody, PaymentOp,
    Preconditions, SequenceNumber, Signature, SignatureHint, TimeBounds, TimePoint, Transaction,
    TransactionEnvelope, TransactionExt, TransactionV1Envelope, Uint256, WriteXdr,
};

use crank_testnet::{Fault, LocalHorizon, NetworkConfig};

fn addr(k: &SigningKey) -> String {
    stellar_strkey::ed25519::PublicKey(k.verifying_key().to_bytes())
        .to_string()
        .as_str()
        .to_owned()
}

fn pay_envelope(
    passphrase: &str,
    from: &SigningKey,
    seq: i64,
    max_time: u64,
    to: &[(&SigningKey, i64)],
) -> (String, String) {
    use sha2::Digest;
    let ops: Vec<Operation> = to
        .iter()
        .map(|(k, amount)| Operation {
            source_account: None,
            body: OperationBody::Payment(PaymentOp {
                destination: MuxedAccount::Ed25519(Uint256(k.verifying_key().to_bytes())),
                asset: Asset::Native,
                amount: *amount,
            }),
        })
        .collect();
    let tx = Transaction {
        source_account: MuxedAccount::Ed25519(Uint256(from.verifying_key().to_bytes())),
        fee: 100 * ops.len() as u32,
        seq_num: SequenceNumber(seq),
        cond: Preconditions::Time(TimeBounds {
            min_time: TimePoint(0),
            max_time: TimePoint(max_time),
        }),
        memo: Memo::Hash(stellar_xdr::Hash([7; 32])),
        operations: ops.try_into().unwrap(),
        ext: TransactionExt::V0,
    };
    let hash = tx
        .hash(sha2::Sha256::digest(passphrase.as_bytes()).into())
        .unwrap();
    let pk = from.verifying_key().to_bytes();
    let sig = DecoratedSignature {
        hint: SignatureHint(pk[28..].try_into().unwrap()),
        signature: Signature(from.sign(&hash).to_bytes().to_vec().try_into().unwrap()),
    };
    let env = TransactionEnvelope::Tx(TransactionV1Envelope {
        tx,
        signatures: vec![sig].try_into().unwrap(),
    });
    (
        env.to_xdr_base64(Limits::none()).unwrap(),
        hex::encode(hash),
    )
}

async fn start() -> LocalHorizon {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    LocalHorizon::start(NetworkConfig::default(), listen)
        .await
        .unwrap()
}

async fn get(url: String) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

async fn post_tx(base: &str, env: &str) -> Result<(u16, Value), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{base}/transactions"))
        .form(&[("tx", env)])
        .send()
        .await?;
    let s = r.status().as_u16();
    let bytes = r.bytes().await?;
    Ok((s, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn endpoints_speak_horizon_json() {
    let h = start().await;
    let base = h.url();
    let (a, b) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );

    let (s, root) = get(format!("{base}/")).await;
    assert_eq!(s, 200);
    assert_eq!(root["network_passphrase"], h.passphrase());

    let (s, nf) = get(format!("{base}/accounts/{}", addr(&a))).await;
    assert_eq!(s, 404);
    assert_eq!(nf["type"], "https://stellar.org/horizon-errors/not_found");

    let (s, fb) = get(format!("{base}/friendbot?addr={}", addr(&a))).await;
    assert_eq!(s, 200, "{fb}");
    assert_eq!(fb["successful"], true);
    let (s, again) = get(format!("{base}/friendbot?addr={}", addr(&a))).await;
    assert_eq!(s, 400);
    assert_eq!(
        again["detail"],
        "account already funded to starting balance"
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/friendbot"))
        .form(&[("addr", addr(&b))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let (s, acct) = get(format!("{base}/accounts/{}", addr(&a))).await;
    assert_eq!(s, 200);
    assert_eq!(acct["balances"][0]["balance"], "10000.0000000");
    assert_eq!(acct["balances"][0]["asset_type"], "native");
    let seq: i64 = acct["sequence"].as_str().unwrap().parse().unwrap();

    let (env, hash) = pay_envelope(&h.passphrase(), &a, seq + 1, h.now() + 60, &[(&b, 12_345)]);
    let (s, ok) = post_tx(&base, &env).await.unwrap();
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["hash"], hash);
    assert_eq!(ok["memo_type"], "hash");
    let (s, again) = post_tx(&base, &env).await.unwrap();
    assert_eq!((s, &again), (200, &ok), "resubmission replays the answer");
    assert_eq!(h.payments().len(), 1, "applied once");

    let (s, tx) = get(format!("{base}/transactions/{hash}")).await;
    assert_eq!(s, 200);
    assert_eq!(tx["successful"], true);
    assert_eq!(tx["fee_charged"], "100");
    let (s, list) = get(format!(
        "{base}/accounts/{}/transactions?order=desc&limit=1",
        addr(&a)
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(list["_embedded"]["records"][0]["hash"], hash);
    assert_eq!(
        list["_embedded"]["records"][0]["paging_token"],
        tx["paging_token"]
    );

    let (s, missing) = get(format!("{base}/transactions/{}", "00".repeat(32))).await;
    assert_eq!((s, missing["status"].as_u64()), (404, Some(404)));

    let (s, bad) = post_tx(&base, "not xdr").await.unwrap();
    assert_eq!(s, 400);
    assert_eq!(
        bad["type"],
        "https://stellar.org/horizon-errors/transaction_malformed"
    );
    h.stop().await;
}

#[tokio::test]
async fn faults_behave_as_advertised() {
    let h = start().await;
    let base = h.url();
    let (a, b) = (
        SigningKey::from_bytes(&[3; 32]),
        SigningKey::from_bytes(&[4; 32]),
    );
    for k in [&a, &b] {
        get(format!("{base}/friendbot?addr={}", addr(k))).await;
    }
    let seq = h.account(&addr(&a)).unwrap().seq;

    // 504 before applying: nothing happens; the same envelope applies afterwards.
    let (env, hash) = pay_envelope(&h.passphrase(), &a, seq + 1, h.now() + 60, &[(&b, 1)]);
    h.inject(Fault::TimeoutBeforeApply, 1);
    let (s, body) = post_tx(&base, &env).await.unwrap();
    assert_eq!(s, 504);
    assert_eq!(body["type"], "https://stellar.org/horizon-errors/timeout");
    assert_eq!(get(format!("{base}/transactions/{hash}")).await.0, 404);

    // 504 after applying: the hash is then known.
    h.inject(Fault::TimeoutAfterApply, 1);
    assert_eq!(post_tx(&base, &env).await.unwrap().0, 504);
    assert_eq!(get(format!("{base}/transactions/{hash}")).await.0, 200);
    assert_eq!(h.payments().len(), 1);

    // Dropped connection after applying the next transaction.
    let (env2, hash2) = pay_envelope(&h.passphrase(), &a, seq + 2, h.now() + 60, &[(&b, 2)]);
    h.inject(Fault::DropAfterApply, 1);
    assert!(
        post_tx(&base, &env2).await.is_err(),
        "the client sees a broken answer"
    );
    assert_eq!(get(format!("{base}/transactions/{hash2}")).await.0, 200);
    assert_eq!(h.payments().len(), 2);

    // Dropped connection before applying.
    let (env3, hash3) = pay_envelope(&h.passphrase(), &a, seq + 3, h.now() + 60, &[(&b, 3)]);
    h.inject(Fault::DropBeforeApply, 1);
    assert!(post_tx(&base, &env3).await.is_err());
    assert_eq!(get(format!("{base}/transactions/{hash3}")).await.0, 404);

    // The admin API queues faults and moves the clock, so the envelope expires.
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/faults"))
        .json(&json!({"fault": "timeout_before_apply", "count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(h.pending_faults(), 2);
    reqwest::Client::new()
        .delete(format!("{base}/admin/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.pending_faults(), 0);
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/clock"))
        .json(&json!({"advance_secs": 120}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (s, late) = post_tx(&base, &env3).await.unwrap();
    assert_eq!(s, 400);
    assert_eq!(late["extras"]["result_codes"]["transaction"], "tx_too_late");
    let bad = reqwest::Client::new()
        .post(format!("{base}/admin/faults"))
        .json(&json!({"fault": "meteor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let (s, state) = get(format!("{base}/admin/state")).await;
    assert_eq!(s, 200);
    assert_eq!(state["payments"].as_array().unwrap().len(), 2);
    h.stop().await;
}

/// The records of a page and its `next` link.
async fn page(url: String) -> (Vec<Value>, String) {
    let (s, body) = get(url.clone()).await;
    assert_eq!(s, 200, "{url}: {body}");
    let records = body["_embedded"]["records"].as_array().unwrap().clone();
    let next = body["_links"]["next"]["href"].as_str().unwrap().to_owned();
    (records, next)
}

fn token(r: &Value) -> u64 {
    r["paging_token"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn account_transactions_page_with_a_cursor() {
    let h = start().await;
    let base = h.url();
    let [a, b, other, never, missing] = [5u8, 6, 7, 8, 9].map(|n| SigningKey::from_bytes(&[n; 32]));
    let mut want = Vec::new();
    for k in [&a, &b, &other] {
        let (s, fb) = get(format!("{base}/friendbot?addr={}", addr(k))).await;
        assert_eq!(s, 200, "{fb}");
        if k == &b {
            // b's history starts with its creation.
            want.push(fb["hash"].as_str().unwrap().to_owned());
        }
    }
    let seq = h.account(&addr(&a)).unwrap().seq;
    let pass = h.passphrase();
    let max_time = h.now() + 60;
    // Five payments to b, with one to another account in between that b must not see.
    for (i, to) in [&b, &b, &other, &b, &b, &b].into_iter().enumerate() {
        let (env, hash) = pay_envelope(&pass, &a, seq + 1 + i as i64, max_time, &[(to, 100)]);
        let (s, body) = post_tx(&base, &env).await.unwrap();
        assert_eq!(s, 200, "{body}");
        if to == &b {
            want.push(hash);
        }
    }
    // A failed transaction paying b: listed only with include_failed=true.
    let (env, failed) = pay_envelope(&pass, &a, seq + 7, max_time, &[(&b, 1), (&missing, 1)]);
    let (s, body) = post_tx(&base, &env).await.unwrap();
    assert_eq!(s, 400);
    assert_eq!(body["extras"]["result_codes"]["transaction"], "tx_failed");

    // Two at a time, following the `next` links: every transaction once, in order.
    let b_list = format!("{base}/accounts/{}/transactions", addr(&b));
    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    let mut url = format!("{b_list}?limit=2");
    let end = loop {
        let (records, next) = page(url.clone()).await;
        assert!(records.len() <= 2);
        if records.is_empty() {
            break next;
        }
        let last = records.last().unwrap();
        assert_eq!(
            next,
            format!(
                "{b_list}?cursor={}&limit=2&order=asc",
                last["paging_token"].as_str().unwrap()
            )
        );
        for r in &records {
            assert_eq!(r["successful"], true);
            seen.push(r["hash"].as_str().unwrap().to_owned());
            tokens.push(token(r));
        }
        url = next;
    };
    assert_eq!(seen, want);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    // The page after the last one is empty and its `next` stays where it is.
    let last = *tokens.last().unwrap();
    assert_eq!(end, format!("{b_list}?cursor={last}&limit=2&order=asc"));
    let (records, again) = page(format!("{b_list}?cursor={last}&limit=2")).await;
    assert!(records.is_empty());
    assert_eq!(again, end);

    // Each record's token is the one the transaction resource carries.
    let (_, tx) = get(format!("{base}/transactions/{}", want[1])).await;
    assert_eq!(tx["paging_token"], tokens[1].to_string());

    // The failed transaction comes last with include_failed=true, and the flag is carried
    // in the links.
    let (records, next) = page(format!("{b_list}?cursor={last}&include_failed=true")).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["hash"], failed);
    assert_eq!(records[0]["successful"], false);
    assert!(next.ends_with("&include_failed=true"), "{next}");

    // Newest first, from a cursor.
    let (records, next) = page(format!("{b_list}?order=desc&limit=2&cursor={last}")).await;
    let got: Vec<&str> = records
        .iter()
        .map(|r| r["hash"].as_str().unwrap())
        .collect();
    assert_eq!(got, [want[4].as_str(), want[3].as_str()]);
    assert!(next.contains("&order=desc"), "{next}");

    // An account that was never created is a 404, as in Horizon.
    let (s, nf) = get(format!("{base}/accounts/{}/transactions", addr(&never))).await;
    assert_eq!(s, 404);
    assert_eq!(nf["type"], "https://stellar.org/horizon-errors/not_found");

    // Parameters Horizon refuses.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("order=sideways", "order"),
        ("cursor=yesterday", "cursor"),
        ("include_failed=maybe", "include_failed"),
    ] {
        let (s, bad) = get(format!("{b_list}?{query}")).await;
        assert_eq!(s, 400, "{query}");
        assert_eq!(bad["extras"]["invalid_field"], field, "{query}");
    }
    h.stop().await;
}
