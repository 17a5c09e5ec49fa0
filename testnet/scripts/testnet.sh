#!/usr/bin/env bash
# The local testnet: real crank-node processes (a bootstrap node, N workers, a requester, each
# with its own data dir) and the local Horizon-compatible Stellar server, on loopback or in
# network namespaces over a bridge; a workload through the requester's API; faults (kill -9 and
# restart a worker, stop the bootstrap, cut a node's link, Horizon faults); and a summary that
# checks the invariants and exits non-zero when one breaks.
#
# Usage: testnet/scripts/testnet.sh COMMAND [ARGS]   (see testnet/README.md)
#   run [--small] [--workers N] [--tasks M] [--concurrency C] [--interval S] [--netns]
#       [--wide-every K] [--negative] [--json] [--keep]
#   up [--workers N] [--netns]      down
#   submit [--tasks M] [--concurrency C] [--interval S] [--wide-every K] [--tag T]
#   fault kill9 NODE | restart NODE | stop NODE | stop-bootstrap | pause NODE | resume NODE
#         | partition NODE | heal NODE | horizon FAULT [COUNT] | double-pay NODE
#   settle                          collect        summary [--json]
#   status                          api NODE METHOD PATH [JSON]
# State lives in $TESTNET_RUN (default ${CARGO_TARGET_DIR:-target}/testnet/current, a link to
# the latest run dir). Binaries: ${CARGO_TARGET_DIR:-target}/debug, built with
#   cargo build -p crank-node -p crank-testnet
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/debug
SCRIPTS=$ROOT/testnet/scripts
PY=${PYTHON:-python3}
RUN=${TESTNET_RUN:-$TARGET/testnet/current}

say() { printf '%s\n' "$*" >&2; }
for tool in curl jq awk setsid; do
  command -v "$tool" >/dev/null || { printf 'testnet: %s is needed\n' "$tool" >&2; exit 2; }
done
die() { say "testnet: $*"; exit 2; }
now() { date -u +%H:%M:%S; }
# Records a fault or milestone for the summary.
event() { printf '%s\t%s\n' "$(date +%s.%N)" "$*" >>"$RUN/events.tsv"; say "[$(now)] $*"; }

load_env() {
  [ -f "$RUN/env.sh" ] || die "no testnet at $RUN (run 'up' first)"
  # shellcheck disable=SC1091
  . "$RUN/env.sh"
}

# The command prefix that runs a program in NAME's network (empty on loopback).
nsx() {
  if [ "${MODE:-loopback}" = netns ] && [ "$1" != horizon ]; then
    echo "ip netns exec crank$NETID-$1"
  fi
}

pid_of() { cat "$RUN/pids/$1.pid" 2>/dev/null || true; }
# A zombie (killed, not yet reaped by whoever inherited it) counts as dead.
pid_alive() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null
}
alive() { pid_alive "$(pid_of "$1")"; }

# Waits until a new line matching $2 appears in $1 after line $3; prints it.
wait_line() {
  local file=$1 pat=$2 from=${3:-0} tries=${4:-600} line
  for _ in $(seq 1 "$tries"); do
    line=$(tail -n +"$((from + 1))" "$file" 2>/dev/null | grep -m1 -- "$pat" || true)
    if [ -n "$line" ]; then printf '%s\n' "$line"; return 0; fi
    sleep 0.1
  done
  say "timed out waiting for '$pat' in $file"; tail -n 20 "$file" >&2 || true; return 1
}

lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# The node's own IP in netns mode: 10.<a>.<b>.X.
node_ip() {
  case $1 in
    bootstrap) echo "$NET.2" ;;
    requester) echo "$NET.3" ;;
    worker*) echo "$NET.$((10 + ${1#worker}))" ;;
  esac
}

# The bootstrap keeps one port across restarts, so that the others can find it again.
listen_addr() {
  local port=0
  [ "$1" = bootstrap ] && port=$BOOT_PORT
  if [ "$MODE" = netns ]; then echo "/ip4/$(node_ip "$1")/tcp/$port"; else echo "/ip4/127.0.0.1/tcp/$port"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts (or restarts, with the same data dir) one node and waits until it listens.
start_node() {
  local name=$1 dir=$RUN/$1 off pfx
  mkdir -p "$dir"
  rm -f "$dir/api.addr"
  off=$(lines "$RUN/$name.out")
  pfx=$(nsx "$name")
  case $name in
    bootstrap)
      # shellcheck disable=SC2086
      setsid $pfx "$BIN/crank-node" --data-dir "$dir" bootstrap --listen "$(listen_addr "$name")" \
        --api 127.0.0.1:0 >>"$RUN/$name.out" 2>>"$RUN/$name.log" </dev/null &
      ;;
    requester)
      # shellcheck disable=SC2086
      CRANK_WORKER__ENABLED=false setsid $pfx "$BIN/crank-node" --data-dir "$dir" join \
        --bootstrap "$BOOT" --listen "$(listen_addr "$name")" --api 127.0.0.1:0 \
        >>"$RUN/$name.out" 2>>"$RUN/$name.log" </dev/null &
      ;;
    worker*)
      # shellcheck disable=SC2086
      setsid $pfx "$BIN/crank-node" --data-dir "$dir" join --bootstrap "$BOOT" \
        --listen "$(listen_addr "$name")" --api 127.0.0.1:0 --run-when always \
        >>"$RUN/$name.out" 2>>"$RUN/$name.log" </dev/null &
      ;;
    *) die "unknown node $name" ;;
  esac
  echo $! >"$RUN/pids/$name.pid"
  wait_line "$RUN/$name.out" "listening on /ip4/" "$off" >/dev/null
  for _ in $(seq 1 100); do [ -s "$dir/api.addr" ] && break; sleep 0.1; done
  [ -s "$dir/api.addr" ] || die "$name wrote no api.addr"
}

# Calls a node's local API: api NAME METHOD PATH [JSON BODY]; prints the body.
api() {
  local name=$1 method=$2 path=$3 body=${4:-} addr token pfx
  addr=$(tr -d '\n' <"$RUN/$name/api.addr")
  token=$(tr -d '\n' <"$RUN/$name/api.token")
  pfx=$(nsx "$name")
  # shellcheck disable=SC2086
  $pfx curl -sS -m "${API_TIMEOUT:-60}" -X "$method" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' ${body:+--data "$body"} "http://$addr$path"
}

node_id() { api "$1" GET /status | jq -r '.node_id // empty'; }

netns_up() {
  ip netns list >/dev/null 2>&1 || die "network namespaces are not available here"
  ip link add "crbr$NETID" type bridge || die "cannot create a bridge (need root and CAP_NET_ADMIN)"
  ip addr add "$NET.1/24" dev "crbr$NETID"
  ip link set "crbr$NETID" up
  local n
  for n in $NODES; do
    ip netns add "crank$NETID-$n"
    ip netns exec "crank$NETID-$n" ip link set lo up
    ip link add "$(veth "$n")" type veth peer name "$(veth "$n")i"
    ip link set "$(veth "$n")i" netns "crank$NETID-$n"
    ip netns exec "crank$NETID-$n" ip link set "$(veth "$n")i" name eth0
    ip netns exec "crank$NETID-$n" ip addr add "$(node_ip "$n")/24" dev eth0
    ip netns exec "crank$NETID-$n" ip link set eth0 up
    ip link set "$(veth "$n")" master "crbr$NETID" up
  done
}

# Host-side veth of a node (at most 15 characters).
veth() {
  case $1 in
    bootstrap) echo "cr${NETID}b" ;; requester) echo "cr${NETID}r" ;; worker*) echo "cr${NETID}w${1#worker}" ;;
  esac
}

netns_down() {
  local n
  for n in $NODES; do
    ip link del "$(veth "$n")" 2>/dev/null || true
    ip netns del "crank$NETID-$n" 2>/dev/null || true
  done
  ip link del "crbr$NETID" 2>/dev/null || true
}

cmd_up() {
  local workers=3 mode=loopback
  while [ $# -gt 0 ]; do
    case $1 in
      --workers) workers=$2; shift ;;
      --netns) mode=netns ;;
      *) die "up: unknown argument $1" ;;
    esac
    shift
  done
  for b in crank-node crank-horizon; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing; build with: cargo build -p crank-node -p crank-testnet"
  done
  if [ -z "${TESTNET_RUN:-}" ]; then
    local dir
    dir=$TARGET/testnet/run-$(date +%Y%m%d-%H%M%S)-$$
    mkdir -p "$dir"
    ln -sfn "$(basename "$dir")" "$TARGET/testnet/current"
    RUN=$TARGET/testnet/current
  fi
  [ ! -f "$RUN/env.sh" ] || die "$RUN already holds a testnet; run 'down' or pick another TESTNET_RUN"
  mkdir -p "$RUN/pids"
  MODE=$mode
  NODES="bootstrap requester $(seq -f 'worker%g' -s ' ' 1 "$workers")"
  NETID=$(($$ % 200 + 20))
  # Another run (or a crashed one) may hold this bridge; take the next free id.
  while ip link show "crbr$NETID" >/dev/null 2>&1; do NETID=$(((NETID - 19) % 200 + 20)); done
  NET=10.231.$NETID
  BOOT_PORT=7400
  [ "$MODE" = loopback ] && BOOT_PORT=$(free_port)
  {
    echo "MODE=$MODE"; echo "WORKERS=$workers"; echo "NODES='$NODES'"
    echo "NETID=$NETID"; echo "NET=$NET"; echo "BOOT_PORT=$BOOT_PORT"
  } >"$RUN/env.sh"
  if [ "$MODE" = netns ]; then
    event "netns: bridge crbr$NETID $NET.0/24, one namespace per node"
    netns_up
  fi
  local listen=127.0.0.1:0
  [ "$MODE" = netns ] && listen=$NET.1:0
  "$BIN/crank-horizon" --listen "$listen" >>"$RUN/horizon.log" 2>&1 </dev/null &
  echo $! >"$RUN/pids/horizon.pid"
  HORIZON=$(wait_line "$RUN/horizon.log" "crank-horizon serving" | sed -E 's/.*serving (http[^ ]+).*/\1/')
  echo "HORIZON=$HORIZON" >>"$RUN/env.sh"
  export CRANK_STELLAR__HORIZON_URL="\"$HORIZON\""
  export CRANK_STELLAR__FRIENDBOT_URL="\"$HORIZON/friendbot\""
  export CRANK_STELLAR__NETWORK_PASSPHRASE='"Standalone Network ; February 2017"'
  # Settlement is triggered by the scenario, so that the summary can check it.
  export CRANK_SETTLEMENT__AUTO=false
  export CRANK_ADVERT__INTERVAL_SECS=2
  {
    echo "export CRANK_STELLAR__HORIZON_URL='$CRANK_STELLAR__HORIZON_URL'"
    echo "export CRANK_STELLAR__FRIENDBOT_URL='$CRANK_STELLAR__FRIENDBOT_URL'"
    echo "export CRANK_STELLAR__NETWORK_PASSPHRASE='$CRANK_STELLAR__NETWORK_PASSPHRASE'"
    echo "export CRANK_SETTLEMENT__AUTO=false"
    echo "export CRANK_ADVERT__INTERVAL_SECS=2"
  } >>"$RUN/env.sh"
  event "horizon up at $HORIZON ($MODE)"
  start_node bootstrap
  BOOT=$(grep -m1 "listening on /ip4/" "$RUN/bootstrap.out" | awk '{print $3}')
  echo "BOOT=$BOOT" >>"$RUN/env.sh"
  event "bootstrap up at $BOOT"
  local n starters=()
  for n in $NODES; do
    [ "$n" = bootstrap ] && continue
    start_node "$n" &
    starters+=($!)
  done
  wait_all "${starters[@]}"
  node_id bootstrap >"$RUN/bootstrap/node_id"
  for n in $NODES; do
    [ "$n" = bootstrap ] && continue
    # shellcheck disable=SC2046
    $(nsx "$n") "$BIN/crank-node" --data-dir "$RUN/$n" wallet fund >/dev/null
    node_id "$n" >"$RUN/$n/node_id"
  done
  event "up: $NODES (wallets funded by friendbot)"
  wait_adverts "$workers"
}

# Waits for the given background jobs; fails if one did.
wait_all() {
  local rc=0 j
  for j in "$@"; do wait "$j" || rc=1; done
  [ $rc = 0 ] || die "a node did not start (see logs in $RUN)"
}

# Waits until the requester has seen adverts from N workers.
wait_adverts() {
  local want=$1 seen=0
  for _ in $(seq 1 60); do
    seen=$(api requester GET /status | jq '[.adverts[]?] | length' 2>/dev/null || echo 0)
    [ "${seen:-0}" -ge "$want" ] && { event "requester sees $seen worker adverts"; return 0; }
    sleep 0.5
  done
  event "requester sees only $seen of $want worker adverts after 30 s"
}

cmd_down() {
  [ -f "$RUN/env.sh" ] || { say "nothing to stop at $RUN"; return 0; }
  load_env
  local f p
  for f in "$RUN"/pids/*.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f")
    kill "$p" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    local any=0
    for f in "$RUN"/pids/*.pid; do
      [ -f "$f" ] && pid_alive "$(cat "$f")" && any=1
    done
    [ $any = 0 ] && break
    sleep 0.1
  done
  for f in "$RUN"/pids/*.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  [ "$MODE" = netns ] && netns_down
  event "down"
  mv "$RUN/env.sh" "$RUN/env.stopped.sh"
}

cmd_submit() {
  load_env
  local tasks=10 conc=4 tag=workload first interval=0 wide=${WIDE_EVERY:-0}
  while [ $# -gt 0 ]; do
    case $1 in
      --wide-every) wide=$2; shift ;;
      --tasks) tasks=$2; shift ;;
      --interval) interval=$2; shift ;;
      --concurrency) conc=$2; shift ;;
      --tag) tag=$2; shift ;;
      *) die "submit: unknown argument $1" ;;
    esac
    shift
  done
  first=$(lines "$RUN/outcomes.jsonl")
  event "submit $tasks tasks ($tag, $conc at a time)"
  # shellcheck disable=SC2046
  $(nsx requester) "$PY" "$SCRIPTS/workload.py" --api "http://$(tr -d '\n' <"$RUN/requester/api.addr")" \
    --token-file "$RUN/requester/api.token" --tasks "$tasks" --first "$first" \
    --concurrency "$conc" --interval "$interval" --wide-every "$wide" --tag "$tag" \
    --out "$RUN/outcomes.jsonl"
}

cmd_fault() {
  load_env
  local what=${1:-} node=${2:-}
  case $what in
    kill9)
      alive "$node" || die "$node is not running"
      kill -9 "$(pid_of "$node")"
      for _ in $(seq 1 100); do alive "$node" || break; sleep 0.05; done
      event "fault: kill -9 $node (pid $(pid_of "$node"))"
      ;;
    stop)
      alive "$node" || die "$node is not running"
      kill "$(pid_of "$node")"
      for _ in $(seq 1 100); do alive "$node" || break; sleep 0.1; done
      event "fault: stopped $node (SIGTERM)"
      ;;
    stop-bootstrap) cmd_fault stop bootstrap ;;
    pause|resume)
      # SIGSTOP freezes the process with its connections open: a hung node, not a dead one.
      alive "$node" || die "$node is not running"
      local sig=STOP
      [ "$what" = resume ] && sig=CONT
      kill -"$sig" "$(pid_of "$node")"
      event "fault: $what $node (SIG$sig)"
      ;;
    restart)
      ! alive "$node" || die "$node is still running"
      local before after
      before=$(cat "$RUN/$node/node_id" 2>/dev/null || true)
      start_node "$node"
      after=$(node_id "$node")
      event "fault: restarted $node with the same data dir (node id ${after:0:16}, before ${before:0:16})"
      if [ -n "$before" ] && [ "$before" != "$after" ]; then
        event "INVARIANT: $node came back with another identity"
        echo "$node" >>"$RUN/identity-changed"
      fi
      ;;
    partition|heal)
      [ "$MODE" = netns ] || die "partition needs a testnet started with 'up --netns'"
      local state=down
      [ "$what" = heal ] && state=up
      ip link set "$(veth "$node")" "$state"
      event "fault: $what $node (link $(veth "$node") $state)"
      ;;
    horizon)
      local count=${3:-1}
      curl -sS -m 10 -X POST -H 'Content-Type: application/json' \
        --data "{\"fault\":\"$node\",\"count\":$count}" "$HORIZON/admin/faults" >/dev/null
      event "fault: horizon will answer the next $count submission(s) with $node"
      ;;
    double-pay)
      # A second payment for work already paid, made outside the node; the summary must catch it.
      local dest amount tx
      dest=$(api "$node" GET /wallet | jq -r .address)
      amount=$(api requester GET '/receipts?limit=10000' | jq --arg w "$(cat "$RUN/$node/node_id")" \
        '[.[] | select(.receipt.inner.body.worker == $w) | .receipt.inner.body.price_stroops] | add // 100')
      # shellcheck disable=SC2046
      tx=$($(nsx requester) "$ROOT/.venv/bin/python" "$SCRIPTS/double_pay.py" "$HORIZON" \
        "$RUN/requester/payout.secret" "$dest" "$amount")
      event "fault: paid $node $amount stroops a second time, outside the node (tx ${tx:0:16})"
      ;;
    *) die "fault: kill9|stop|restart|pause|resume NODE, stop-bootstrap, partition|heal NODE, horizon FAULT [COUNT], double-pay NODE" ;;
  esac
}

# Settles everything the requester owes; repeats while a payment's outcome is pending.
cmd_settle() {
  load_env
  local out pending
  for round in 1 2 3 4 5 6; do
    out=$(API_TIMEOUT=120 api requester POST /wallet/settle '{"all":true}' || true)
    printf '%s\n' "$out" >>"$RUN/settle.jsonl"
    pending=$(printf '%s' "$out" | jq -r '.submitted.pending // 0' 2>/dev/null || echo "?")
    event "settle round $round: $(printf '%s' "$out" | jq -c '{paid: (.submitted.paid // [] | length), receipts_paid: .submitted.receipts_paid, stroops_paid: .submitted.stroops_paid, pending: .submitted.pending, failed: (.submitted.failed // [] | length), stopped: .submitted.stopped, error: .error}' 2>/dev/null || printf '%s' "$out" | head -c 300)"
    if [ "$pending" = 0 ] && ! api requester GET '/wallet/history?limit=1000' | jq -e '.[] | select(.state == "pending")' >/dev/null 2>&1; then
      break
    fi
    sleep 2
  done
}

cmd_collect() {
  load_env
  mkdir -p "$RUN/collect"
  local n
  for n in $NODES; do
    [ "$n" = bootstrap ] && continue
    if ! alive "$n"; then event "collect: $n is not running; its side is missing"; continue; fi
    api "$n" GET /status >"$RUN/collect/$n.status.json" || true
    api "$n" GET '/receipts?limit=10000' >"$RUN/collect/$n.receipts.json" || true
    api "$n" GET /wallet >"$RUN/collect/$n.wallet.json" || true
    api "$n" GET '/wallet/history?limit=10000' >"$RUN/collect/$n.history.json" || true
    curl -sS -m 10 "http://$(tr -d '\n' <"$RUN/$n/api.addr")/metrics" >"$RUN/collect/$n.metrics.txt" 2>/dev/null \
      || $(nsx "$n") curl -sS -m 10 "http://$(tr -d '\n' <"$RUN/$n/api.addr")/metrics" >"$RUN/collect/$n.metrics.txt" || true
  done
  curl -sS -m 10 "$HORIZON/admin/state" >"$RUN/collect/horizon.state.json"
}

cmd_summary() {
  [ -f "$RUN/env.sh" ] || [ -f "$RUN/env.stopped.sh" ] || die "no testnet at $RUN"
  "$PY" "$SCRIPTS/summary.py" --run "$RUN" "$@"
}

cmd_status() {
  load_env
  local n
  for n in horizon $NODES; do
    if alive "$n"; then say "$n: running (pid $(pid_of "$n"))"; else say "$n: stopped"; fi
  done
}

# Waits until N outcomes are recorded or the workload ends.
wait_outcomes() {
  local want=$1 job=$2
  for _ in $(seq 1 1200); do
    [ "$(lines "$RUN/outcomes.jsonl")" -ge "$want" ] && return 0
    kill -0 "$job" 2>/dev/null || return 0
    sleep 0.1
  done
}

# The worker that has won the most tasks so far (the one whose loss hurts), or worker1.
busy_worker() {
  local top n
  top=$(jq -r 'select(.status == "completed") | .worker' "$RUN/outcomes.jsonl" 2>/dev/null \
    | sort | uniq -c | sort -rn | awk 'NR == 1 {print $2}')
  for n in $NODES; do
    if [ -n "$top" ] && [ "$(cat "$RUN/$n/node_id" 2>/dev/null)" = "$top" ]; then echo "$n"; return; fi
  done
  echo worker1
}

# Waits until the requester holds NODE's fresh advert (the restarted node's own, not the one
# from before the kill) or is connected to it; records how long it took. Nodes dial peers
# lazily, when they have something to ask, so an advert is what "back in the mesh" means.
wait_advert_of() {
  local node=$1 id start old
  id=$(cat "$RUN/$node/node_id")
  start=$(date +%s.%N)
  old=$(api requester GET /status | jq -r --arg id "$id" '[.adverts[]? | select(.node == $id) | .expires_in_secs][0] // -1' 2>/dev/null || echo -1)
  for _ in $(seq 1 120); do
    if api requester GET /status | jq -e --arg id "$id" --argjson old "$old" \
      '(.network.peers[]? | select(.node == $id)) // (.adverts[]? | select(.node == $id and .expires_in_secs > $old + 1))' >/dev/null 2>&1; then
      event "requester sees $node again $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s after its restart"
      return 0
    fi
    sleep 0.5
  done
  event "requester has not seen $node 60 s after its restart"
}

cmd_run() {
  local workers=5 tasks=100 conc=4 interval=0.1 netns=0 json=() keep=0 negative=0 wide=10
  while [ $# -gt 0 ]; do
    case $1 in
      --small) workers=3; tasks=20; conc=3; interval=0.25; negative=1; wide=0 ;;
      --wide-every) wide=$2; shift ;;
      --negative) negative=1 ;;
      --interval) interval=$2; shift ;;
      --workers) workers=$2; shift ;;
      --tasks) tasks=$2; shift ;;
      --concurrency) conc=$2; shift ;;
      --netns) netns=1 ;;
      --json) json=(--json) ;;
      --keep) keep=1 ;;
      *) die "run: unknown argument $1" ;;
    esac
    shift
  done
  if [ $netns = 1 ] && ! { [ "$(id -u)" = 0 ] && ip netns add "crank-probe-$$" 2>/dev/null && ip netns del "crank-probe-$$"; }; then
    say "testnet: network namespaces are not allowed here (need root); running on loopback without the partition step"
    netns=0
  fi
  local up_args=(--workers "$workers")
  [ $netns = 1 ] && up_args+=(--netns)
  export WIDE_EVERY=$wide
  trap 'cleanup_run' EXIT INT TERM
  cmd_up "${up_args[@]}"
  load_env
  local wave1 wave2 wave3=0 wave4=0 wave5=0 last victim
  last=$((tasks / 10))
  [ "$last" -lt 2 ] && last=2
  if [ $netns = 1 ]; then
    wave1=$((tasks * 2 / 5)); wave2=$((tasks / 5)); wave3=$((tasks / 10)); wave4=$((tasks / 10))
    [ "$wave4" -gt 5 ] && wave4=5
    wave5=$((tasks - wave1 - wave2 - wave3 - wave4 - last))
  else
    wave1=$((tasks / 2)); wave2=$((tasks - wave1 - last))
  fi

  # Wave 1 with a worker killed (kill -9) in the middle and restarted on the same data dir.
  cmd_submit --tasks "$wave1" --concurrency "$conc" --interval "$interval" --tag wave1-kill9 &
  local job=$!
  wait_outcomes $((wave1 / 3)) $job
  victim=$(busy_worker)
  # Aim for a moment when the victim is running a task (tried for about three seconds).
  local running=0
  for _ in $(seq 1 100); do
    running=$(API_TIMEOUT=2 api "$victim" GET /status 2>/dev/null | jq '.queue.running + .queue.queued' 2>/dev/null || echo 0)
    [ "${running:-0}" -gt 0 ] 2>/dev/null && break
    kill -0 $job 2>/dev/null || break
  done
  event "killing $victim while it runs ${running:-0} task(s)"
  cmd_fault kill9 "$victim"
  sleep 2
  cmd_fault restart "$victim"
  wait_advert_of "$victim"
  wait $job || true

  # Wave 2 with the bootstrap node stopped: connected nodes keep working.
  cmd_fault stop-bootstrap
  cmd_submit --tasks "$wave2" --concurrency "$conc" --interval "$interval" --tag wave2-no-bootstrap || true

  if [ $netns = 1 ]; then
    # Wave 3: the busiest worker's link cut; the others take the work.
    local cut
    cut=$(busy_worker)
    cmd_fault partition "$cut"
    cmd_submit --tasks "$wave3" --concurrency "$conc" --interval "$interval" --tag wave3-partition-worker || true
    cmd_fault heal "$cut"
    # Wave 4: the requester cut off from everyone; its tasks must fail with an error.
    cmd_fault partition requester
    cmd_submit --tasks "$wave4" --concurrency "$conc" --interval "$interval" --tag wave4-isolated-requester || true
    cmd_fault heal requester
    sleep 1
    # Wave 5: healed.
    cmd_submit --tasks "$wave5" --concurrency "$conc" --interval "$interval" --tag wave5-healed || true
  fi

  # Settlement, with Horizon cutting the connection after applying each of the next three
  # submissions and the requester killed (kill -9) in the middle of it, then restarted: the
  # payment must still be made exactly once.
  cmd_fault horizon drop_after_apply 3
  event "settle started in the background"
  API_TIMEOUT=120 api requester POST /wallet/settle '{"all":true}' >>"$RUN/settle.jsonl" 2>&1 &
  local settling=$!
  sleep 0.5
  cmd_fault kill9 requester
  wait $settling || true
  cmd_fault restart requester
  for _ in $(seq 1 100); do
    grep -q "pending settlements resolved\|pending settlements not resolved" "$RUN/requester.log" && break
    sleep 0.1
  done
  if grep -q "resolving settlements left pending" "$RUN/requester.log"; then
    event "the restarted requester found a settlement left pending by the kill and resolved it"
  else
    event "the kill did not catch the settlement in flight (it had finished)"
  fi

  # The requester came back while the bootstrap was down, so it knows no one. The bootstrap
  # returns on its old port and address; the mesh must heal and take work again.
  cmd_fault restart bootstrap
  wait_adverts "$workers"
  cmd_submit --tasks "$last" --concurrency "$conc" --interval "$interval" --tag wave-last-rejoined || true

  # A second settlement pays for the last wave, with one more Horizon timeout after applying.
  cmd_fault horizon timeout_after_apply 1
  cmd_settle
  cmd_collect
  local rc=0
  cmd_summary "${json[@]}" || rc=$?
  if [ $negative = 1 ] && [ $rc = 0 ] && ! "$ROOT/.venv/bin/python" -c 'import stellar_sdk' 2>/dev/null; then
    say "testnet: negative check skipped: .venv has no stellar-sdk (scripts/setup-python.sh installs it)"
  elif [ $negative = 1 ] && [ $rc = 0 ]; then
    # The checks must be able to fail: pay the busiest worker twice and expect a breach.
    cmd_fault double-pay "$(busy_worker)"
    cmd_collect
    if "$PY" "$SCRIPTS/summary.py" --run "$RUN" --json --out summary-negative.json >/dev/null; then
      say "testnet: a deliberate double payment was NOT caught by the summary"
      rc=1
    else
      event "negative check: the deliberate double payment was caught ($(jq -r '[.breaches[].detail] | join("; ")' "$RUN/summary-negative.json"))"
    fi
  fi
  [ $keep = 1 ] && { trap - EXIT INT TERM; say "testnet left running at $RUN ('$0 down' stops it)"; }
  return $rc
}

cleanup_run() {
  local rc=$?
  trap - EXIT INT TERM
  # Stop any workload still submitting.
  local j
  for j in $(jobs -p); do kill "$j" 2>/dev/null || true; done
  cmd_down >/dev/null 2>&1 || true
  say "logs, data dirs and the summary are in $(readlink -f "$RUN")"
  exit $rc
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  run) cmd_run "$@" ;;
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  submit) cmd_submit "$@" ;;
  fault) cmd_fault "$@" ;;
  settle) cmd_settle ;;
  collect) cmd_collect ;;
  summary) cmd_summary "$@" ;;
  status) cmd_status ;;
  api) load_env; api "$@"; echo ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
