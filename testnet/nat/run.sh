#!/usr/bin/env bash
# Two crank-nodes, each behind its own NAT router, and one public bootstrap/relay node, all in
# Linux network namespaces on this machine. Real `crank-node` processes: both NAT'd nodes join
# through the bootstrap node, learn through AutoNAT that they are private, reserve a relay
# slot, and the requester (worker disabled) submits a real ONNX task that only the other node
# can run. Prints, per run, the times to the relay reservation and to the task's receipt and
# whether the two nodes ended up connected directly (hole punching, DCUtR) or through the relay.
#
#   internet 10.77.0.0/24 (a bridge in its own namespace; nothing routes beyond it)
#     ├── boot   10.77.0.10    crank-node bootstrap (Kademlia server, relay, AutoNAT server)
#     ├── nat-a  10.77.0.11 ── LAN 192.168.10.0/24 ── a 192.168.10.2  requester only
#     └── nat-b  10.77.0.12 ── LAN 192.168.20.0/24 ── b 192.168.20.2  worker
#
# The NAT routers masquerade LAN traffic (nftables, or iptables) and forward nothing from the
# internet side that is not a reply. Unsolicited packets from the internet side are dropped
# silently, as consumer routers do ("stealth" firewall); --refuse lets the router's kernel
# answer them instead (TCP reset, ICMP port unreachable), as a bare Linux masquerade does.
#
# Usage: testnet/nat/run.sh [--repeat N] [--bin PATH] [--symmetric] [--refuse] [--autonat] [--status]
#                           [--restart-relay] [--keep DIR]
#   --repeat N    repeat with fresh namespaces, nodes and keys (hole-punch success rate);
#                 default 1 (--runs N is the same)
#   --bin PATH    the crank-node binary (default: build with cargo, debug)
#   --symmetric   routers pick a random external port per connection (endpoint-dependent
#                 mapping): hole punching cannot work and tasks must go over the relay
#   --refuse      routers answer unsolicited inbound packets with a reset instead of dropping
#   --autonat     also wait (up to 60 s) for the worker's AutoNAT verdict and report its time
#   --status      print `crank-node status` of the three nodes after each task
#   --restart-relay  after the task, restart the bootstrap/relay node, wait for the worker to
#                 reserve again and run a second task
#   --quic        the NAT'd nodes reach the bootstrap node over QUIC (UDP) instead of TCP, so
#                 hole punching tries UDP
#   --keep DIR    keep data dirs and logs in DIR
#
# Needs root and `ip netns`; without them it prints why and exits 0 (a skip). Installs
# iproute2, nftables and python3 with apt-get if they are missing. Removes everything it made
# on exit. Ends with one line, "nat-test: PASS ..." or "nat-test: FAIL ...", and exits 1 on FAIL.
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=1
bin=""
symmetric=0
drop=1
keep=""
autonat=0
show_status=0
restart_relay=0
quic=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs|--repeat) runs="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --symmetric) symmetric=1; shift ;;
    --refuse) drop=0; shift ;;
    --autonat) autonat=1; shift ;;
    --status) show_status=1; shift ;;
    --restart-relay) restart_relay=1; shift ;;
    --quic) quic=1; shift ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "nat-test: $*"; }
skip() { say "SKIP: $*"; exit 0; }

# --- can we do this here? -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "needs root for network namespaces (run as root, e.g. in CI)"
need=""
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v nft >/dev/null 2>&1 || command -v iptables >/dev/null 2>&1 || need="$need nftables"
command -v python3 >/dev/null 2>&1 || need="$need python3"
if [ -n "$need" ]; then
  command -v apt-get >/dev/null 2>&1 || skip "needs$need and there is no apt-get to install them"
  say "installing$need"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  { apt-get install -y -qq --no-install-recommends $need ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends $need; }; } >/dev/null 2>&1 ||
    skip "$need missing and apt-get could not install them"
fi
command -v ip >/dev/null 2>&1 || skip "no ip command (iproute2)"
command -v python3 >/dev/null 2>&1 || skip "needs python3 to read the nodes' JSON status"
P="cn$$"   # namespace prefix: unique per run of this script
probe="${P}probe"
ip netns add "$probe" 2>/dev/null || skip "cannot create network namespaces here (ip netns add failed: no CAP_SYS_ADMIN?)"
# veth pairs, bridges and a NAT table must work too (kernel modules a container may lack).
fw=""
probe_ok=0
if ip -n "$probe" link add pv0 type veth peer name pv1 2>/dev/null &&
   ip -n "$probe" link add pbr type bridge 2>/dev/null; then
  probe_ok=1
  if command -v nft >/dev/null 2>&1 &&
     ip netns exec "$probe" nft add table ip probe 2>/dev/null &&
     ip netns exec "$probe" nft add chain ip probe p '{ type nat hook postrouting priority srcnat; }' 2>/dev/null; then
    fw=nft
  elif command -v iptables >/dev/null 2>&1 &&
     ip netns exec "$probe" iptables -t nat -A POSTROUTING -o pv0 -j MASQUERADE 2>/dev/null; then
    fw=iptables
  fi
fi
ip netns del "$probe"
[ "$probe_ok" = 1 ] || skip "cannot make veth pairs or bridges in a namespace here (kernel modules veth/bridge?)"
[ -n "$fw" ] || skip "neither nftables nor iptables can make a NAT table here (kernel modules nf_tables/nf_nat?)"

# --- the binary ---------------------------------------------------------------------------------
if [ -z "$bin" ]; then
  say "building crank-node (cargo build --locked -p crank-node)"
  cargo build -q --locked -p crank-node
  bin="${CARGO_TARGET_DIR:-target}/debug/crank-node"
fi
[ -x "$bin" ] || { echo "no crank-node binary at $bin" >&2; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
model="$PWD/models/digits-mlp.onnx"
[ -f "$model" ] || { echo "missing $model" >&2; exit 1; }

work="$(mktemp -d /tmp/crank-nat.XXXXXX)"
pids=()
namespaces=()

stop_nodes() {
  local p ns
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  # Anything still running inside our namespaces was started by this script.
  for ns in "${namespaces[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
}
cleanup() {
  local rc=$?
  stop_nodes
  local ns
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ -n "$keep" ]; then
    mkdir -p "$keep" && cp -r "$work"/. "$keep"/ && say "logs and data kept in $keep"
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT INT TERM

# The input: a test image of a 3 (the committed sample, or the first 3 of the test split).
input="$work/digit-3.json"
if [ -f models/samples/digit-3.json ]; then
  cp models/samples/digit-3.json "$input"
else
  python3 - "$input" <<'EOF'
import json, sys
t = json.load(open("models/digits-test.json"))
i = t["labels"].index(3)
json.dump([t["features"][i]], open(sys.argv[1], "w"))
EOF
fi

# --- the network --------------------------------------------------------------------------------
NS_INET="${P}inet" NS_BOOT="${P}boot" NS_RA="${P}nat-a" NS_RB="${P}nat-b" NS_A="${P}a" NS_B="${P}b"
in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

router_rules() {  # ns: masquerade out of wan, forward only LAN->WAN and replies
  local ns="$1" masq="masquerade"
  [ "$symmetric" = 1 ] && masq="masquerade random"
  if [ "$fw" = nft ]; then
    in_ns "$ns" nft -f - <<EOF
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $masq
  }
}
table ip filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "wan" ct state new $( [ "$drop" = 1 ] && echo drop || echo accept )
  }
}
EOF
  else
    local flags=""
    [ "$symmetric" = 1 ] && flags="--random"
    in_ns "$ns" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE $flags
    in_ns "$ns" iptables -P FORWARD DROP
    in_ns "$ns" iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    in_ns "$ns" iptables -A FORWARD -i lan -o wan -j ACCEPT
    [ "$drop" = 1 ] && in_ns "$ns" iptables -A INPUT -i wan -m conntrack --ctstate NEW -j DROP
  fi
}

make_network() {
  local ns
  for ns in "$NS_INET" "$NS_BOOT" "$NS_RA" "$NS_RB" "$NS_A" "$NS_B"; do
    ip netns add "$ns"
    namespaces+=("$ns")
    in_ns "$ns" ip link set lo up
  done
  in_ns "$NS_INET" ip link add br0 type bridge
  in_ns "$NS_INET" ip link set br0 up
  # hosts on the internet segment: namespace, bridge port, interface name, address
  local spec port name addr
  for spec in "$NS_BOOT vboot eth0 10.77.0.10" "$NS_RA vnata wan 10.77.0.11" "$NS_RB vnatb wan 10.77.0.12"; do
    read -r ns port name addr <<<"$spec"
    ip link add "$port" netns "$NS_INET" type veth peer name "$name" netns "$ns"
    in_ns "$NS_INET" ip link set "$port" master br0 up
    in_ns "$ns" ip addr add "$addr/24" dev "$name"
    in_ns "$ns" ip link set "$name" up
  done
  # LANs behind the routers
  for spec in "$NS_RA $NS_A 192.168.10" "$NS_RB $NS_B 192.168.20"; do
    read -r ns name addr <<<"$spec"
    ip link add lan netns "$ns" type veth peer name eth0 netns "$name"
    in_ns "$ns" ip addr add "$addr.1/24" dev lan
    in_ns "$ns" ip link set lan up
    in_ns "$name" ip addr add "$addr.2/24" dev eth0
    in_ns "$name" ip link set eth0 up
    in_ns "$name" ip route add default via "$addr.1"
    in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1
    router_rules "$ns"
  done
}

# The setup runs where bash ignores `set -e` (inside `one_run || ...`), so check its result:
# every LAN host has a route to the bootstrap node and every router masquerades.
network_ok() {
  local ns
  for ns in "$NS_A" "$NS_B"; do
    ip -n "$ns" route get 10.77.0.10 >/dev/null 2>&1 || { say "network setup failed: no route from $ns"; return 1; }
  done
  for ns in "$NS_RA" "$NS_RB"; do
    local rules  # read whole, not piped to `grep -q`: with pipefail its early exit fails the pipe
    if [ "$fw" = nft ]; then
      rules="$(in_ns "$ns" nft list table ip nat 2>/dev/null || true)"
    else
      rules="$(in_ns "$ns" iptables -t nat -S POSTROUTING 2>/dev/null || true)"
    fi
    case "$rules" in
      *masquerade* | *MASQUERADE*) ;;
      *) say "network setup failed: router $ns has no masquerade rule"; return 1 ;;
    esac
  done
}

remove_network() {
  local ns
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  namespaces=()
}

# --- one run ------------------------------------------------------------------------------------
export CRANK_NETWORK__AUTONAT_ONLY_GLOBAL_IPS=false   # every address here is private
export CRANK_ADVERT__INTERVAL_SECS=2                  # the requester hears the worker soon
export CRANK_WORKER__BENCHMARK_MS=200
export NO_COLOR=1                                     # plain logs, for grep and for people

json_get() {  # file, python expression over `s` (the parsed JSON)
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
now_ms() { date +%s%3N; }

start_node() {  # name ns args...; `ip netns exec` execs the node, so $! is the node itself
  local name="$1" ns="$2"; shift 2
  ip netns exec "$ns" "$bin" --data-dir "$work/$run/$name" --log "info,crank_node=debug,libp2p_dcutr=debug" "$@" \
    >"$work/$run/$name.log" 2>&1 &
  pids+=($!)
}

all_alive() {  # every node this run started is still running; else say so, with its logs
  local p f
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      say "$run: a node (pid $p) stopped early; the last lines of each log:"
      for f in "$work/$run"/*.log; do [ -s "$f" ] && { echo "--- $f"; tail -n 5 "$f"; }; done >&2
      return 1
    fi
  done
}

status_json() {  # name ns out
  in_ns "$2" "$bin" --data-dir "$work/$run/$1" --json status >"$3" 2>/dev/null
}

results=()
one_run() {
  run="run$1"
  mkdir -p "$work/$run"
  make_network
  network_ok || { results+=("fail"); return 1; }
  local boot_id
  boot_id="$("$bin" --data-dir "$work/$run/boot" --json id 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])')"
  local boot="/ip4/10.77.0.10/tcp/7400/p2p/$boot_id"
  [ "$quic" = 1 ] && boot="/ip4/10.77.0.10/udp/7400/quic-v1/p2p/$boot_id"
  start_boot() {
    start_node boot "$NS_BOOT" bootstrap --listen /ip4/0.0.0.0/tcp/7400 --listen /ip4/0.0.0.0/udp/7400/quic-v1 \
      --external-address /ip4/10.77.0.10/tcp/7400 --external-address /ip4/10.77.0.10/udp/7400/quic-v1 --api 127.0.0.1:0
    boot_pid=$!
  }
  start_boot
  local t0
  t0="$(now_ms)"
  start_node b "$NS_B" join --bootstrap "$boot" --listen /ip4/0.0.0.0/tcp/4001 --listen /ip4/0.0.0.0/udp/4001/quic-v1 \
    --run-when always --api 127.0.0.1:0
  CRANK_WORKER__ENABLED=false start_node a "$NS_A" join --bootstrap "$boot" --listen /ip4/0.0.0.0/tcp/4001 \
    --listen /ip4/0.0.0.0/udp/4001/quic-v1 --api 127.0.0.1:0

  # Wait for the worker's relay reservation.
  local s="$work/$run/status.json" reserved="" deadline=$(( $(now_ms) + 60000 ))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    all_alive || break
    if status_json b "$NS_B" "$s" &&
       reserved="$(json_get "$s" '[r["accepted_after_ms"] for r in s["network"]["relay_reservations"] if r["accepted"]][0] if any(r["accepted"] for r in s["network"]["relay_reservations"]) else ""')" &&
       [ -n "$reserved" ]; then
      break
    fi
    sleep 0.2
  done
  local t_reserved
  t_reserved="$(now_ms)"
  if [ -z "$reserved" ]; then
    say "run $1: the worker got no relay reservation (waited up to 60 s)"
    tail -n 30 "$work/$run/b.log" >&2 || true
    results+=("fail")
    return 1
  fi
  local reach b_node
  reach="$(json_get "$s" 's["network"]["reachability"]')"
  b_node="$(json_get "$s" 's["node_id"]')"

  # Wait until the requester has heard the worker's advert (gossip through the bootstrap node),
  # so that the auction has the worker to ask.
  local sa0="$work/$run/status-a0.json" heard=""
  deadline=$(( $(now_ms) + 30000 ))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    all_alive || break
    if status_json a "$NS_A" "$sa0" &&
       [ "$(json_get "$sa0" "any(a['node'] == '$b_node' for a in s['adverts'])")" = True ]; then
      heard=1
      break
    fi
    sleep 0.2
  done
  if [ -z "$heard" ]; then
    say "run $1: the requester never heard the worker's advert within 30 s"
    results+=("fail")
    return 1
  fi

  # The task: from a (requester only) to b (the only worker).
  local out="$work/$run/submit.json" rc=0 t_sub
  t_sub="$(now_ms)"
  in_ns "$NS_A" "$bin" --data-dir "$work/$run/a" --json submit --model "$model" --input "$input" \
    >"$out" 2>"$work/$run/submit.err" || rc=$?
  local t_done
  t_done="$(now_ms)"
  if [ $rc != 0 ]; then
    say "run $1: the task failed: $(tail -n 5 "$work/$run/submit.err")"
    results+=("fail")
    return 1
  fi
  local class
  class="$(json_get "$out" 's["predictions"][0]["class"]')"
  [ "$class" = 3 ] || { say "run $1: wrong prediction $class"; results+=("fail"); return 1; }

  # How are a and b connected now? Give a punch that is under way a moment to finish.
  sleep 1
  local sa="$work/$run/status-a.json" sb="$work/$run/status-b.json" b_id a_id
  status_json a "$NS_A" "$sa"
  status_json b "$NS_B" "$sb"
  b_id="$(json_get "$sb" 's["network"]["peer_id"]')"
  a_id="$(json_get "$sa" 's["network"]["peer_id"]')"
  local path_a path_b punch_a punch_b
  path_a="$(json_get "$sa" "next(('relayed' if p['relayed'] else 'direct') for p in s['network']['peers'] if p['peer_id']=='$b_id')")"
  path_b="$(json_get "$sb" "next(('relayed' if p['relayed'] else 'direct') for p in s['network']['peers'] if p['peer_id']=='$a_id')")"
  punch_a="$(json_get "$sa" "next(p.get('hole_punch') for p in s['network']['peers'] if p['peer_id']=='$b_id')")"
  punch_b="$(json_get "$sb" "next(p.get('hole_punch') for p in s['network']['peers'] if p['peer_id']=='$a_id')")"
  local receipts
  receipts="$(json_get "$sb" 's["balances"]["total"]["receipts_as_worker"]')"
  # From the logs (one clock): the worker's network start to the requester's completed task,
  # which leaves out the worker's self-benchmark before its network starts.
  local task_after_net
  task_after_net="$(python3 - "$work/$run/b.log" "$work/$run/a.log" <<'EOF'
import datetime, sys
def stamp(path, text):
    for line in open(path, errors="replace"):
        if text in line:
            return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
start, done = stamp(sys.argv[1], "node started"), stamp(sys.argv[2], "task completed")
print(round((done - start).total_seconds() * 1000) if start and done else "?")
EOF
)"
  say "run $1: b $reach, relay reservation ${reserved} ms after its network started ($(( t_reserved - t0 )) ms after launch, polled; the rest is the self-benchmark); task done $(( t_done - t0 )) ms after launch, ${task_after_net} ms after the worker's network started (submit took $(( t_done - t_sub )) ms), class $class, receipt stored by the worker: $receipts"
  say "run $1: a sees b $path_a (hole punch: $punch_a); b sees a $path_b (hole punch: $punch_b)"
  # Which connection carried the task's inputs (a's award) and outputs (b's result)?
  local award_path result_path
  award_path="$(sed 's/\x1b\[[0-9;]*m//g' "$work/$run/a.log" | grep -a 'request sent' | grep -a 'kind="\?award' | tail -1 | grep -ao 'path="\?[a-z ]*' | sed 's/path="\?//')"
  result_path="$(sed 's/\x1b\[[0-9;]*m//g' "$work/$run/b.log" | grep -a 'request sent' | grep -a 'kind="\?result' | tail -1 | grep -ao 'path="\?[a-z ]*' | sed 's/path="\?//')"
  say "run $1: the award (inputs) went ${award_path:-?}, the result (outputs) came back ${result_path:-?}"
  if [ "$show_status" = 1 ]; then
    local who ns
    for who in "boot $NS_BOOT" "a $NS_A" "b $NS_B"; do
      read -r who ns <<<"$who"
      echo "----- crank-node status ($who) -----"
      in_ns "$ns" "$bin" --data-dir "$work/$run/$who" status | sed -n '/^listening/,/^adverts/p' | sed '$d'
    done
  fi
  if [ "$autonat" = 1 ]; then
    local verdict="" sb2="$work/$run/status-b2.json"
    deadline=$(( $(now_ms) + 60000 ))
    while [ "$(now_ms)" -lt "$deadline" ]; do
      status_json b "$NS_B" "$sb2" &&
        verdict="$(json_get "$sb2" "'%s after %s ms, kad %s' % (s['network']['reachability'], s['network']['reachability_after_ms'], s['network']['kad_mode']) if s['network']['reachability'] != 'unknown' else ''")" &&
        [ -n "$verdict" ] && break
      sleep 0.5
    done
    say "run $1: b's AutoNAT verdict: ${verdict:-none within 60 s}"
  fi
  results+=("ok $reserved $(( t_done - t0 )) $path_a $(( t_reserved - t0 )) $task_after_net")
  if [ "$restart_relay" = 1 ]; then
    # The relay goes away and comes back (same key, same address): the worker must notice,
    # redial, reserve again, and the mesh must run the next task.
    local t_kill back="" s3="$work/$run/status-b3.json"
    t_kill="$(now_ms)"
    kill "$boot_pid"; wait "$boot_pid" 2>/dev/null || true
    mv "$work/$run/boot.log" "$work/$run/boot-1.log"
    sleep 1
    start_boot
    deadline=$(( $(now_ms) + 90000 ))
    while [ "$(now_ms)" -lt "$deadline" ]; do
      status_json b "$NS_B" "$s3" &&
        back="$(json_get "$s3" "next((r['accepted_after_ms'] for r in s['network']['relay_reservations'] if r['accepted'] and r['accepted_after_ms'] > $reserved), '')")" &&
        [ -n "$back" ] && break
      sleep 0.2
    done
    if [ -z "$back" ]; then
      say "run $1: no new reservation within 90 s of the relay's restart"
      tail -n 20 "$work/$run/b.log" >&2 || true
      return 1
    fi
    say "run $1: relay restarted; the worker reserved again $(( $(now_ms) - t_kill )) ms after the relay went away (polled; the relay was down 1 s)"
    local out2="$work/$run/submit2.json"
    in_ns "$NS_A" "$bin" --data-dir "$work/$run/a" --json submit --model "$model" --input "$input" \
      >"$out2" 2>"$work/$run/submit2.err" || { say "run $1: the task after the restart failed: $(tail -n 3 "$work/$run/submit2.err")"; return 1; }
    say "run $1: task after the relay restart: class $(json_get "$out2" 's["predictions"][0]["class"]')"
  fi
  stop_nodes
  remove_network
}

say "$runs run(s); NAT: $([ "$symmetric" = 1 ] && echo "random ports (endpoint-dependent)" || echo "port-preserving masquerade"), unsolicited inbound $([ "$drop" = 1 ] && echo dropped || echo refused)"
failed=0
for i in $(seq 1 "$runs"); do
  one_run "$i" || { failed=$((failed + 1)); stop_nodes; remove_network; }
done

python3 - "${results[@]}" <<'EOF'
import statistics, sys
rows = [r.split() for r in sys.argv[1:]]
ok = [r for r in rows if r[0] == "ok"]
direct = sum(1 for r in ok if r[3] == "direct")
line = f"nat-test: {len(ok)} task(s) done, {direct} direct after hole punching, {len(ok) - direct} over the relay"
def spread(name, values, note):
    v = [int(x) / 1000 for x in values]
    return f"{name} median {statistics.median(v):.2f} s (min {min(v):.2f}, max {max(v):.2f}) {note}"
if ok:
    line += "; " + spread("relay reservation", [r[1] for r in ok], "after the worker's network started")
    line += "; " + spread("reservation seen", [r[4] for r in ok], "after launch")
    line += "; " + spread("first task done", [r[2] for r in ok], "after launch")
    net = [r[5] for r in ok if r[5] != "?"]
    if net:
        line += ", " + spread("", net, "after the worker's network started").lstrip()
print(line)
EOF
if [ "$failed" = 0 ]; then
  say "PASS: $runs run(s), every task ran between the two NAT'd nodes"
else
  say "FAIL: $failed of $runs run(s) failed (see above; --keep DIR keeps the logs)"
  exit 1
fi
