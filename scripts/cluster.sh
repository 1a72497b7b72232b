#!/usr/bin/env bash
# Run a local three-node nines cluster on loopback.
#
#   scripts/cluster.sh up           build release binaries, start 3 nodes, show a write and a read
#   scripts/cluster.sh up --tls     the same with TLS: makes a local CA and certificates under
#                                   $NINES_CLUSTER_DIR/tls (scripts/gen-certs.sh), client TLS with client
#                                   certificates, mutual TLS between members
#   scripts/cluster.sh status       endpoint status of every node
#   scripts/cluster.sh kill N       kill -9 node N
#   scripts/cluster.sh restart N    kill -9 node N (if running) and start it again
#   scripts/cluster.sh down         stop every node (SIGTERM) and keep the data
#   scripts/cluster.sh clean        down, then delete the data
#
# Data and logs live under $NINES_CLUSTER_DIR (default ./.cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${NINES_CLUSTER_DIR:-$PWD/.cluster}
BIN=${NINES_BIN_DIR:-$PWD/target/release}
NODES=(1 2 3)
client_addr() { echo "127.0.0.1:$((2279 + 100 * $1))"; }   # 2379, 2479, 2579
peer_addr() { echo "127.0.0.1:$((2280 + 100 * $1))"; }     # 2380, 2480, 2580
metrics_addr() { echo "127.0.0.1:$((2281 + 100 * $1))"; }  # 2381, 2481, 2581 (metrics, health)
ENDPOINTS=$(for n in "${NODES[@]}"; do printf '%s,' "$(client_addr "$n")"; done)
ENDPOINTS=${ENDPOINTS%,}
INITIAL=$(for n in "${NODES[@]}"; do printf '%s=%s/%s,' "$n" "$(peer_addr "$n")" "$(client_addr "$n")"; done)
INITIAL=${INITIAL%,}

TLS_DIR=$DIR/tls
# TLS stays on for restarts once `up --tls` made the certificates.
tls_on() { [ -f "$TLS_DIR/on" ]; }

# A local CA and, signed by it, a member certificate for both ports (CN
# nines-member, usable as server and client: members present it when they
# forward calls to the leader), a peer certificate (CN nines-peer, the only
# CN the peer ports admit) and a client certificate for the CLI (CN root).
make_certs() {
  scripts/gen-certs.sh "$TLS_DIR"
  touch "$TLS_DIR/on"
  echo "certificates under $TLS_DIR (CA ca.crt; replace member files to rotate, no restart needed)"
}

# The TLS flags as arrays (paths may hold spaces); empty without TLS.
tls_flags() {
  SERVER_TLS=() CLI_TLS=()
  tls_on || return 0
  SERVER_TLS=(--cert-file "$TLS_DIR/member.crt" --key-file "$TLS_DIR/member.key"
    --trusted-ca-file "$TLS_DIR/ca.crt" --client-cert-auth
    --peer-cert-file "$TLS_DIR/member-peer.crt" --peer-key-file "$TLS_DIR/member-peer.key"
    --peer-trusted-ca-file "$TLS_DIR/ca.crt" --peer-client-cert-auth
    --peer-cert-allowed-cn nines-peer)
  CLI_TLS=(--cacert "$TLS_DIR/ca.crt" --cert "$TLS_DIR/client.crt" --key "$TLS_DIR/client.key")
}

pid_of() { cat "$DIR/node$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start_node() {
  local n=$1
  if running "$n"; then echo "node $n already running (pid $(pid_of "$n"))"; return; fi
  mkdir -p "$DIR"
  tls_flags
  NINES_LOG=${NINES_LOG:-info,openraft=warn} "$BIN/nines-server" \
    --id "$n" \
    --listen-client "$(client_addr "$n")" \
    --listen-peer "$(peer_addr "$n")" \
    --listen-metrics "$(metrics_addr "$n")" \
    --data-dir "$DIR/node$n" \
    --initial-cluster "$INITIAL" \
    ${SERVER_TLS[@]+"${SERVER_TLS[@]}"} \
    >>"$DIR/node$n.log" 2>&1 &
  echo $! >"$DIR/node$n.pid"
  echo "node $n: pid $!, client $(client_addr "$n"), peer $(peer_addr "$n"), metrics http://$(metrics_addr "$n")/metrics (also /livez, /readyz, /health), data $DIR/node$n"
}

kill_node() {
  local n=$1 sig=${2:-KILL}
  if running "$n"; then
    kill "-$sig" "$(pid_of "$n")"
    for _ in $(seq 1 100); do running "$n" || break; sleep 0.1; done
    echo "node $n stopped ($sig)"
  fi
  rm -f "$DIR/node$n.pid"
}

nines() { tls_flags; "$BIN/nines" --endpoints "$ENDPOINTS" ${CLI_TLS[@]+"${CLI_TLS[@]}"} "$@"; }

case "${1:-}" in
  up)
    if [ "${2:-}" = "--tls" ]; then make_certs; fi
    cargo build --release --bin nines-server --bin nines
    for n in "${NODES[@]}"; do start_node "$n"; done
    echo "data and logs under $DIR"
    for _ in $(seq 1 100); do
      nines endpoint health >/dev/null 2>&1 && break
      sleep 0.2
    done
    nines endpoint status -w table
    echo "\$ nines put greeting 'hello, nines'"
    nines put greeting 'hello, nines'
    echo "\$ nines get greeting"
    nines get greeting
    echo "endpoints: $ENDPOINTS  (export NINES_ENDPOINTS=$ENDPOINTS)"
    if tls_on; then
      tls_flags
      echo "TLS: nines ${CLI_TLS[*]} ...  (etcdctl: the same --cacert/--cert/--key, https:// endpoints)"
    fi
    ;;
  status) nines endpoint status -w table ;;
  kill) kill_node "${2:?node number}" KILL ;;
  restart) kill_node "${2:?node number}" KILL; start_node "$2" ;;
  down) for n in "${NODES[@]}"; do kill_node "$n" TERM; done ;;
  clean) for n in "${NODES[@]}"; do kill_node "$n" TERM; done; rm -rf "$DIR"; echo "removed $DIR" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
