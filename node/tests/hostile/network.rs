//! Hostile-peer attacks: network. Floods of calls for bids, swarms of connections from one
//! address, replayed and re-encoded adverts, request floods over the rate limit — each made
//! over real libp2p against in-process nodes, with what must still hold after it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crank_node::Node;
use crank_node::network::{Rate, Role, peer_id_of};
use crank_protocol::tensor::tensors_hash;
use crank_protocol::{
    CallForBids, CapabilityAdvert, DeclineReason, ErrorCode, Identity, ModelId, NodeId, Request,
    Response, Signed, TaskId, codec,
};
use futures::StreamExt;
use libp2p::swarm::{SwarmEvent, dummy};
use libp2p::{Multiaddr, Swarm, SwarmBuilder, gossipsub, noise, tcp, yamux};
use tokio::task::JoinHandle;

use crate::adversary::Adversary;
use crate::{ADVERSARY_PAYER, Mesh, config, digits_request, mlp_input, now_ms, repo};

/// The adverts topic, as nodes name it.
const ADVERT_TOPIC: &str = "crank/adverts/1";

/// A call for bids for task number `n` of `identity`, on `model` with the MLP's input.
pub(super) fn flood_cfb(identity: &Identity, n: u32, model: &[u8]) -> Signed<CallForBids> {
    let now = now_ms();
    let inputs = mlp_input(64);
    let mut nonce = [0u8; 16];
    nonce[..4].copy_from_slice(&n.to_be_bytes());
    let body = CallForBids {
        task_id: TaskId::derive(
            &identity.node_id(),
            &nonce,
            &ModelId::of(model),
            &tensors_hash(&inputs),
        ),
        nonce,
        payer: ADVERSARY_PAYER.into(),
        requester: identity.node_id(),
        model: ModelId::of(model),
        model_bytes: model.len() as u64,
        input_hash: tensors_hash(&inputs),
        input_elements: 64,
        max_price_stroops: 1_000_000,
        bid_deadline: now + 5_000,
        deadline: now + 120_000,
        issued_at: now,
    };
    Signed::sign(body, identity).unwrap()
}

fn quiet_adversary(seed: u8) -> Adversary {
    Adversary::new(
        seed,
        Box::new(|_| Response::error(ErrorCode::NotFound, "nothing here")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_calls_for_bids_from_one_host_does_not_stop_an_honest_requester() {
    // The rate limit is opened wide so that the flood reaches the bid book: what is tested
    // here is the book's fair share (the rate limit has its own test below).
    let mesh = Mesh::start(1, |i, c| {
        if i == 0 {
            c.network.rate_limits.call_for_bids = Rate {
                per_sec: 1_000_000,
                burst: 1_000_000,
            };
        }
    })
    .await;
    mesh.wait_for_adverts(1).await;
    let worker = mesh.workers()[0].clone();
    let addr = worker.listen_addrs().await[0].clone();
    let peer = peer_id_of(&worker.node_id()).unwrap();
    let model = std::fs::read(repo().join("models/digits-mlp.onnx")).unwrap();

    // Four identities from one host call for bids as fast as the worker answers, 4,800 calls
    // in all against a book of 4,096 open bids (each valid for 30 s).
    let started = Instant::now();
    let floods: Vec<JoinHandle<(usize, Vec<String>)>> = (0..4u8)
        .map(|i| {
            let addr = addr.clone();
            let model = model.clone();
            tokio::spawn(async move {
                let mut adv = quiet_adversary(210 + i);
                adv.connect(&addr).await;
                let mut bids = 0;
                let mut declines = Vec::new();
                for n in 0..1_200u32 {
                    let call = Request::CallForBids(flood_cfb(&adv.identity, n, &model));
                    match adv.send(peer, &call).await {
                        Ok(Response::Bid(_)) => bids += 1,
                        Ok(Response::Decline(d)) => declines.push(match &d.body.reason {
                            DeclineReason::Other { message } => message.clone(),
                            other => other.to_string(),
                        }),
                        other => panic!("flood call {n}: {other:?}"),
                    }
                }
                (bids, declines)
            })
        })
        .collect();
    let mut bids = 0;
    let mut declines = Vec::new();
    for f in floods {
        let (b, d) = f.await.unwrap();
        bids += b;
        declines.extend(d);
    }
    let flood_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "flood: {} calls in {flood_secs:.1} s ({:.0}/s): {bids} bids, {} declines",
        bids + declines.len(),
        (bids + declines.len()) as f64 / flood_secs,
        declines.len()
    );
    assert!(
        flood_secs < 30.0,
        "the flood took {flood_secs:.1} s, longer than a bid stays open: the book never filled"
    );
    assert!(bids >= 4_096, "the flood got only {bids} bids");
    assert!(
        declines.iter().any(|d| d.contains("fair share")),
        "no flood call was declined for its share: {:?}",
        declines.first()
    );

    // The book is full of the flood's bids, yet the honest requester gets a bid and its task
    // runs.
    let outcome = mesh
        .requester()
        .submit(digits_request("digits-mlp.onnx", "digit-3.json", "X"))
        .await
        .expect("the honest task completes despite the flood");
    assert_eq!(outcome.worker, worker.node_id());
    mesh.stop().await;
}

/// A fresh identity dialing `addr` with nothing but a connection; the connection stays open
/// while the returned task runs.
async fn dial_fresh(addr: &str) -> Result<JoinHandle<()>, String> {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| dummy::Behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm.dial(addr.parse::<Multiaddr>().unwrap()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error.to_string()),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    outcome?;
    // Make sure the node did not close it right after the handshake.
    let closed = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let SwarmEvent::ConnectionClosed { cause, .. } = swarm.select_next_some().await {
                return format!("closed at once: {cause:?}");
            }
        }
    })
    .await;
    if let Ok(why) = closed {
        return Err(why);
    }
    Ok(tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_from_one_address_beyond_the_limit_are_refused_while_others_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), None);
    c.worker.enabled = false;
    c.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into(), "/ip6/::1/tcp/0".into()];
    c.network.limit_loopback = true;
    c.network.max_connections_per_ip = 4;
    let node = Node::start(c, Role::default()).await.unwrap();
    let addrs = node.handle().listen_addrs().await;
    let v4 = addrs
        .iter()
        .find(|a| a.starts_with("/ip4/127.0.0.1/"))
        .unwrap()
        .clone();
    let v6 = addrs
        .iter()
        .find(|a| a.starts_with("/ip6/::1/"))
        .expect("an IPv6 loopback listener")
        .clone();

    // Four identities from 127.0.0.1 get in; the fifth and sixth do not.
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            dial_fresh(&v4)
                .await
                .unwrap_or_else(|e| panic!("connection {i} refused: {e}")),
        );
    }
    for i in 4..6 {
        assert!(
            dial_fresh(&v4).await.is_err(),
            "connection {i} from one address got in"
        );
    }
    // Another address (::1 is another host as far as the limit knows) still gets in.
    let other = dial_fresh(&v6)
        .await
        .expect("a connection from another address is refused");
    // A connection that closes frees its place.
    held.remove(0).abort();
    let started = Instant::now();
    let again = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match dial_fresh(&v4).await {
            Ok(h) => break h,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "no place freed: {e}"
            ),
        }
    };
    for h in held.into_iter().chain([other, again]) {
        h.abort();
    }
    node.shutdown().await;
}

/// A raw gossipsub peer on the adverts topic that never validates or forwards anything, and
/// gives every message its own id so it can publish what it already received.
fn gossip_peer() -> Swarm<gossipsub::Behaviour> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            let config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .message_id_fn(|m: &gossipsub::Message| {
                    let mut h = DefaultHasher::new();
                    m.data.hash(&mut h);
                    NEXT.fetch_add(1, Ordering::Relaxed).hash(&mut h);
                    gossipsub::MessageId::from(h.finish().to_be_bytes().to_vec())
                })
                .validate_messages()
                .heartbeat_interval(Duration::from_millis(200))
                .max_transmit_size(codec::MAX_ADVERT_FRAME)
                .build()
                .unwrap();
            let mut g =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
                    .unwrap();
            g.subscribe(&gossipsub::IdentTopic::new(ADVERT_TOPIC))
                .unwrap();
            g
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

/// The adverts a gossip peer received, in order, raw.
async fn pump_gossip(
    swarm: &mut Swarm<gossipsub::Behaviour>,
    until: Instant,
    got: &mut Vec<Vec<u8>>,
    done: impl Fn(&[Vec<u8>]) -> bool,
) {
    while !done(got) {
        let Ok(event) = tokio::time::timeout_at(until.into(), swarm.select_next_some()).await
        else {
            return;
        };
        if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = event {
            got.push(message.data);
        }
    }
}

fn advert_of(bytes: &[u8]) -> Option<CapabilityAdvert> {
    codec::decode::<Signed<CapabilityAdvert>>(bytes, codec::MAX_ADVERT_FRAME)
        .ok()
        .map(|a| a.body)
}

/// The newest sequence number of `node`'s adverts among `got`.
fn newest_seq(got: &[Vec<u8>], node: &NodeId) -> Option<u64> {
    got.iter()
        .filter_map(|b| advert_of(b))
        .filter(|a| a.node == *node)
        .map(|a| a.seq)
        .max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_reencoded_and_stale_adverts_are_not_news_and_go_no_further() {
    let mesh = Mesh::start(1, |_, _| {}).await;
    mesh.wait_for_adverts(1).await;
    let worker = mesh.workers()[0].node_id();
    // The victim relays adverts: the requester-only node.
    let victim = mesh.requester();
    let victim_addr: Multiaddr = victim.listen_addrs().await[0].parse().unwrap();

    // The attacker joins the victim's gossip and captures two of the worker's adverts.
    let mut attacker = gossip_peer();
    attacker.dial(victim_addr.clone()).unwrap();
    let mut captured = Vec::new();
    pump_gossip(
        &mut attacker,
        Instant::now() + Duration::from_secs(30),
        &mut captured,
        |got| {
            let seqs: Vec<u64> = got
                .iter()
                .filter_map(|b| advert_of(b))
                .filter(|a| a.node == worker)
                .map(|a| a.seq)
                .collect();
            seqs.len() >= 2 && seqs.iter().max() > seqs.iter().min()
        },
    )
    .await;
    let old = captured
        .iter()
        .find(|b| advert_of(b).is_some_and(|a| a.node == worker))
        .expect("the attacker saw the worker's advert")
        .clone();
    let old_seq = advert_of(&old).unwrap().seq;
    let newest = captured
        .iter()
        .rfind(|b| advert_of(b).is_some_and(|a| a.node == worker))
        .unwrap()
        .clone();
    assert!(advert_of(&newest).unwrap().seq > old_seq);
    // A re-encoding of the newest advert: its sequence number as an overlong varint (the
    // frame is the version byte, the 32-byte node id, then the sequence number).
    let mut reencoded = newest[..33].to_vec();
    let mut rest = &newest[33..];
    let mut varint = Vec::new();
    while let Some((&b, tail)) = rest.split_first() {
        varint.push(b);
        rest = tail;
        if b & 0x80 == 0 {
            break;
        }
    }
    let last = varint.len() - 1;
    varint[last] |= 0x80;
    varint.push(0);
    reencoded.extend_from_slice(&varint);
    reencoded.extend_from_slice(rest);
    assert!(
        matches!(
            codec::decode::<Signed<CapabilityAdvert>>(&reencoded, codec::MAX_ADVERT_FRAME),
            Err(codec::CodecError::NonCanonical)
        ),
        "the test's re-encoding must be the same advert, encoded otherwise"
    );

    // An observer joins the victim and sees fresh adverts come through it.
    let mut observer = gossip_peer();
    observer.dial(victim_addr).unwrap();
    let mut seen = Vec::new();
    let newest_seq_then = advert_of(&newest).unwrap().seq;
    pump_gossip(
        &mut observer,
        Instant::now() + Duration::from_secs(30),
        &mut seen,
        |got| newest_seq(got, &worker).is_some_and(|s| s > newest_seq_then),
    )
    .await;
    let before = newest_seq(&seen, &worker).expect("the observer gets the victim's adverts");
    seen.clear();

    // The attacker replays the old advert and the newest one, and sends the re-encoding.
    let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
    for bytes in [old.clone(), newest.clone(), reencoded.clone()] {
        if let Err(e) = attacker.behaviour_mut().publish(topic.clone(), bytes) {
            panic!("the attacker could not publish: {e}");
        }
    }
    let until = Instant::now() + Duration::from_secs(4);
    let mut ignored = Vec::new();
    tokio::join!(
        pump_gossip(&mut attacker, until, &mut ignored, |_| false),
        pump_gossip(&mut observer, until, &mut seen, |_| false),
    );
    assert!(
        !seen.contains(&reencoded),
        "the re-encoded advert reached another node"
    );
    for a in seen.iter().filter_map(|b| advert_of(b)) {
        assert!(
            a.node != worker || a.seq > before,
            "an advert with sequence {} (the observer had seen {before}) reached it again",
            a.seq
        );
    }
    // The victim counted the re-encoding against the attacker.
    let metrics = victim.metrics_text();
    let invalid: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("crank_invalid_messages_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        invalid >= 1,
        "the re-encoded advert was not counted: {invalid}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_over_the_rate_limit_is_told_so_and_then_blocked() {
    let mesh = Mesh::start(1, |i, c| {
        if i == 0 {
            c.network.rate_limits.get_advert = Rate {
                per_sec: 1,
                burst: 3,
            };
            c.network.rate_limits.refusals_per_offence = 2;
        }
    })
    .await;
    mesh.wait_for_adverts(1).await;
    let worker = mesh.workers()[0].clone();
    let addr = worker.listen_addrs().await[0].clone();
    let peer = peer_id_of(&worker.node_id()).unwrap();
    let mut adv = quiet_adversary(230);
    adv.connect(&addr).await;

    // Ban threshold 5 × 2 refusals per offence: ten refusals make the peer a repeat offender.
    let mut adverts = 0;
    let mut limited = Vec::new();
    while limited.len() < 10 {
        match adv.send(peer, &Request::GetAdvert).await {
            Ok(Response::Advert(_)) => adverts += 1,
            Ok(Response::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Busy, "{e}");
                limited.push(e.message);
            }
            other => panic!("unexpected answer {other:?}"),
        }
        assert!(adverts < 10, "{adverts} advert requests answered in a row");
    }
    assert!(
        (3..=5).contains(&adverts),
        "{adverts} advert requests answered"
    );
    assert!(
        limited[0].contains("rate limited") && limited[0].contains("get_advert"),
        "{limited:?}"
    );
    // The node blocks us a moment later and drops the connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let blocked = adv.send(peer, &Request::GetAdvert).await;
    assert!(
        blocked.is_err(),
        "a blocked peer still got an answer: {blocked:?}"
    );
    let status = worker.status().await.unwrap();
    let me = peer_id_of(&adv.identity.node_id()).unwrap().to_string();
    assert!(
        status.network.blocked.contains(&me),
        "{:?}",
        status.network.blocked
    );
    // Everyone else is served as before.
    let outcome = mesh
        .requester()
        .submit(digits_request("digits-mlp.onnx", "digit-3.json", "X"))
        .await
        .unwrap();
    assert_eq!(outcome.worker, worker.node_id());
    mesh.stop().await;
}
