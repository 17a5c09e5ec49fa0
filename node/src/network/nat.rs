//! Address arithmetic and bookkeeping for getting through NAT: relayed addresses, circuit
//! limits, hole-punch state.
//!
//! The event loop owns the swarm and calls these; they hold no libp2p state of their own, so
//! they can be tested without a network.

use std::fmt;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Bytes a request frame may need on the wire beyond its encoded length: the length prefix,
/// yamux frame headers and noise tags for a frame of up to 16 MiB, plus room for the stream's
/// protocol negotiation and the small answer.
const WIRE_OVERHEAD: u64 = 8 * 1024;

/// Whether the address goes through a relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The relay named in a relayed address: the `/p2p/<relay>` just before `/p2p-circuit`.
pub(crate) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last_peer = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last_peer = Some(peer),
            Protocol::P2pCircuit => return last_peer,
            _ => {}
        }
    }
    None
}

/// The address without any `/p2p/<peer>` component.
pub(crate) fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// The address without a trailing `/p2p/<peer>` naming `peer` itself. Other `/p2p/`
/// components stay: in a relayed address they name the relay, which the dial needs.
pub(crate) fn without_peer_suffix(addr: &Multiaddr, peer: &PeerId) -> Multiaddr {
    let mut addr = addr.clone();
    if addr.iter().last() == Some(Protocol::P2p(*peer)) {
        addr.pop();
    }
    addr
}

/// `<relay addr>/p2p/<relay>/p2p-circuit`, and `/p2p/<target>` when given: the address to
/// listen on for a reservation (no target) or to dial a peer through the relay.
pub(crate) fn circuit_via(
    relay_addr: &Multiaddr,
    relay: PeerId,
    target: Option<PeerId>,
) -> Multiaddr {
    let mut addr = strip_p2p(relay_addr)
        .with(Protocol::P2p(relay))
        .with(Protocol::P2pCircuit);
    if let Some(t) = target {
        addr.push(Protocol::P2p(t));
    }
    addr
}

/// The IP address at the start of a multiaddr, if any.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// How far an IP address is meaningful: this host, a private network, or everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Host,
    Private,
    Global,
}

fn scope(ip: std::net::IpAddr) -> Scope {
    match ip {
        std::net::IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Scope::Host
            } else if v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                // 100.64.0.0/10: carrier-grade NAT space, private to the carrier.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
            {
                Scope::Private
            } else {
                Scope::Global
            }
        }
        std::net::IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Scope::Host
            } else if v6.is_unspecified() || v6.is_unique_local() || v6.is_unicast_link_local() {
                Scope::Private
            } else {
                Scope::Global
            }
        }
    }
}

/// Whether a listen address a peer announced is worth dialing, given the address we reach it
/// at: a loopback address only from the same host, a private one only from a private network
/// (or the same host). Others would send our dials to some unrelated machine on our side.
pub(crate) fn worth_dialing(announced: &Multiaddr, seen_at: &Multiaddr) -> bool {
    match (ip_of(announced), ip_of(seen_at)) {
        (Some(a), Some(seen)) => scope(a) >= scope(seen) || scope(a) == Scope::Global,
        // DNS names and addresses we cannot place are left to the dialer.
        _ => true,
    }
}

/// The addresses from a peer's advert worth handing to the dialer. A loopback address is kept
/// only when the peer announced nothing wider (a mesh on one host): otherwise it names our own
/// host, where a dial may reach a different node (even ourselves), and a connection to the
/// wrong peer fails the whole dial. Where we already see the peer (`seen_at`), addresses that
/// mean nothing from there go too. Relayed addresses are kept whole.
pub(crate) fn advertised_worth_dialing(
    addrs: &[Multiaddr],
    peer: &PeerId,
    seen_at: Option<&Multiaddr>,
) -> Vec<Multiaddr> {
    let addrs: Vec<Multiaddr> = addrs.iter().map(|a| without_peer_suffix(a, peer)).collect();
    let only_host = addrs
        .iter()
        .filter(|a| !is_relayed(a))
        .filter_map(ip_of)
        .all(|ip| scope(ip) == Scope::Host);
    addrs
        .into_iter()
        .filter(|a| {
            is_relayed(a)
                || match ip_of(a) {
                    Some(ip) if scope(ip) == Scope::Host => only_host,
                    _ => seen_at.is_none_or(|seen| is_relayed(seen) || worth_dialing(a, seen)),
                }
        })
        .collect()
}

/// A dial error in one line per address: the innermost cause, which is what a person can act
/// on ("Connection refused"), rather than libp2p's nested, multi-line report.
pub(crate) fn dial_error_summary(error: &libp2p::swarm::DialError) -> String {
    use libp2p::swarm::DialError;
    match error {
        DialError::Transport(errors) if errors.len() == 1 => {
            errors.iter().map(|(_, e)| innermost(e)).collect()
        }
        DialError::Transport(errors) if !errors.is_empty() => errors
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", innermost(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => first_line(&other.to_string(), 200),
    }
}

/// The deepest cause in an error's source chain, on one line.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = error;
    while let Some(next) = cur.source() {
        cur = next;
    }
    first_line(&cur.to_string(), 200)
}

/// The first line of a (often multi-line) libp2p error, at most `max` characters.
pub(crate) fn first_line(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches([':', ' ']);
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// What a relay allows one relayed connection, as it announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CircuitLimit {
    /// Bytes in both directions together.
    pub bytes: Option<u64>,
    /// Lifetime.
    pub secs: Option<u64>,
}

impl CircuitLimit {
    /// From the optional limit libp2p reports (its type is not exported, so take the parts).
    pub fn new(bytes: Option<u64>, duration: Option<Duration>) -> Self {
        Self {
            bytes,
            secs: duration.map(|d| d.as_secs()),
        }
    }

    /// Whether a request frame of `frame_bytes` can cross a circuit with this limit.
    pub fn fits(&self, frame_bytes: u64) -> bool {
        match self.bytes {
            Some(limit) if limit > 0 => frame_bytes.saturating_add(WIRE_OVERHEAD) <= limit,
            _ => true,
        }
    }
}

impl fmt::Display for CircuitLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.bytes, self.secs) {
            (None, None) => f.write_str("none announced"),
            (b, s) => {
                let bytes = b.map_or("unlimited bytes".to_string(), |b| format!("{b} bytes"));
                let secs = s.map_or("no time limit".to_string(), |s| format!("{s} s"));
                write!(f, "{bytes}, {secs}")
            }
        }
    }
}

/// One hole punch with one peer.
#[derive(Debug, Clone)]
pub(crate) struct Punch {
    /// When the relayed connection that starts it came up.
    pub started: Instant,
    /// How it ended, once it has.
    pub outcome: Option<PunchOutcome>,
    /// Direct dials to the peer that failed meanwhile.
    pub dial_failures: u32,
}

/// How a hole punch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PunchOutcome {
    /// A direct connection after this long.
    Direct(Duration),
    /// No direct connection; why.
    Failed(String),
}

impl Punch {
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            outcome: None,
            dial_failures: 0,
        }
    }

    /// Whether requests should still wait for it.
    pub fn pending(&self, now: Instant, wait: Duration) -> bool {
        self.outcome.is_none() && now.saturating_duration_since(self.started) < wait
    }
}

impl fmt::Display for Punch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            None => f.write_str("in progress"),
            Some(PunchOutcome::Direct(d)) => write!(f, "direct after {} ms", d.as_millis()),
            Some(PunchOutcome::Failed(why)) => write!(f, "failed: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        let kp = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        kp.public().to_peer_id()
    }

    #[test]
    fn relayed_addresses_name_their_relay() {
        let (r, t) = (peer(1), peer(2));
        let base: Multiaddr = "/ip4/10.77.0.10/tcp/7400".parse().unwrap();
        let listen = circuit_via(&base, r, None);
        assert_eq!(
            listen.to_string(),
            format!("/ip4/10.77.0.10/tcp/7400/p2p/{r}/p2p-circuit")
        );
        let dial = circuit_via(&base.clone().with(Protocol::P2p(r)), r, Some(t));
        assert_eq!(
            dial.to_string(),
            format!("/ip4/10.77.0.10/tcp/7400/p2p/{r}/p2p-circuit/p2p/{t}")
        );
        assert!(is_relayed(&dial));
        assert_eq!(relay_of(&dial), Some(r));
        assert_eq!(relay_of(&listen), Some(r));
        assert!(!is_relayed(&base));
        assert_eq!(relay_of(&base.with(Protocol::P2p(t))), None);
        // An inbound circuit's remote address is only `/p2p/<src>`: no relay in it.
        assert_eq!(relay_of(&Multiaddr::empty().with(Protocol::P2p(t))), None);
    }

    #[test]
    fn a_peer_suffix_goes_but_a_relay_stays() {
        let (r, t) = (peer(1), peer(2));
        let base: Multiaddr = "/ip4/10.0.0.1/tcp/7400".parse().unwrap();
        assert_eq!(
            without_peer_suffix(&base.clone().with(Protocol::P2p(t)), &t),
            base
        );
        let circuit = circuit_via(&base, r, Some(t));
        assert_eq!(
            without_peer_suffix(&circuit, &t),
            circuit_via(&base, r, None)
        );
        // Someone else's suffix is not ours to drop.
        assert_eq!(without_peer_suffix(&circuit, &r), circuit);
        assert_eq!(without_peer_suffix(&base, &t), base);
    }

    #[test]
    fn advertised_loopback_addresses_count_only_on_a_one_host_mesh() {
        let t = peer(2);
        let a = |s: &str| -> Multiaddr { s.parse().unwrap() };
        let lo = a("/ip4/127.0.0.1/tcp/4001");
        let lan = a("/ip4/192.168.20.2/tcp/4001");
        let public = a("/ip4/203.0.113.5/tcp/4001");
        let circuit = circuit_via(&a("/ip4/10.77.0.10/tcp/7400"), peer(1), Some(t));
        let with_id = |m: &Multiaddr| m.clone().with(Protocol::P2p(t));
        // A node on a LAN: its loopback address would be our own host.
        let kept =
            advertised_worth_dialing(&[with_id(&lo), with_id(&lan), circuit.clone()], &t, None);
        assert_eq!(
            kept,
            vec![
                lan.clone(),
                circuit_via(&a("/ip4/10.77.0.10/tcp/7400"), peer(1), None)
            ]
        );
        // A loopback-only mesh: the peer is on this host.
        assert_eq!(
            advertised_worth_dialing(&[with_id(&lo)], &t, None),
            vec![lo.clone()]
        );
        // Seen at a public address: its private LAN address is not ours to dial.
        let kept = advertised_worth_dialing(&[lan.clone(), public.clone()], &t, Some(&public));
        assert_eq!(kept, vec![public.clone()]);
        // Seen only through a relay: we cannot tell, so the dialer may try.
        let kept = advertised_worth_dialing(std::slice::from_ref(&lan), &t, Some(&circuit));
        assert_eq!(kept, vec![lan]);
    }

    #[test]
    fn announced_addresses_are_dialed_only_where_they_mean_something() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let public = a("/ip4/203.0.113.7/tcp/7400");
        let lan = a("/ip4/192.168.1.20/tcp/4001");
        let loopback = a("/ip4/127.0.0.1/tcp/4001");
        let cgnat = a("/ip4/100.72.1.1/tcp/4001");
        // Seen over the internet: only its public addresses are worth a dial.
        assert!(worth_dialing(&public, &public));
        assert!(!worth_dialing(&lan, &public));
        assert!(!worth_dialing(&loopback, &public));
        assert!(!worth_dialing(&cgnat, &public));
        // Seen on the LAN: its LAN and public addresses, not its loopback.
        assert!(worth_dialing(&lan, &lan));
        assert!(worth_dialing(&public, &lan));
        assert!(!worth_dialing(&loopback, &lan));
        // Same host: anything.
        assert!(worth_dialing(&loopback, &loopback));
        assert!(worth_dialing(&lan, &loopback));
        // Names are left alone.
        assert!(worth_dialing(&a("/dns4/boot.example/tcp/7400"), &public));
        assert!(worth_dialing(&a("/ip6/::1/tcp/1"), &a("/ip6/::1/tcp/2")));
        assert!(!worth_dialing(
            &a("/ip6/fd00::1/tcp/1"),
            &a("/ip6/2001:db8::1/tcp/2")
        ));
    }

    #[test]
    fn errors_are_cut_to_their_first_line() {
        assert_eq!(first_line("a: b\n  c\n", 100), "a: b");
        assert_eq!(first_line("Failed to dial: \n  [x]", 100), "Failed to dial");
        assert_eq!(first_line("ééééé", 3), "ééé…");
        assert_eq!(first_line("", 3), "");
    }

    #[test]
    fn circuit_limits_leave_room_for_framing() {
        let l = CircuitLimit::new(Some(128 * 1024), Some(Duration::from_secs(120)));
        assert!(l.fits(64 * 1024));
        assert!(!l.fits(128 * 1024));
        assert!(!l.fits(128 * 1024 - 100));
        assert_eq!(l.to_string(), "131072 bytes, 120 s");
        assert!(CircuitLimit::new(None, None).fits(u64::MAX));
        assert!(CircuitLimit::new(Some(0), None).fits(1 << 40));
        assert_eq!(CircuitLimit::default().to_string(), "none announced");
    }

    #[test]
    fn punches_stop_holding_requests_when_done_or_late() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(3);
        let mut p = Punch::new(t0);
        assert!(p.pending(t0 + Duration::from_secs(1), wait));
        assert!(!p.pending(t0 + Duration::from_secs(4), wait));
        assert_eq!(p.to_string(), "in progress");
        p.outcome = Some(PunchOutcome::Direct(Duration::from_millis(250)));
        assert!(!p.pending(t0, wait));
        assert_eq!(p.to_string(), "direct after 250 ms");
        p.outcome = Some(PunchOutcome::Failed("timed out".into()));
        assert_eq!(p.to_string(), "failed: timed out");
    }
}
