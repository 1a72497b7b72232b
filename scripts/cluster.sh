#!/usr/bin/env bash
# Run a local three-node nines cluster on loopback.
#
#   scripts/cluster.sh up           build release binaries, start 3 nodes, show a write and a read
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

pid_of() { cat "$DIR/node$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start_node() {
  local n=$1
  if running "$n"; then echo "node $n already running (pid $(pid_of "$n"))"; return; fi
  mkdir -p "$DIR"
  NINES_LOG=${NINES_LOG:-info,openraft=warn} "$BIN/nines-server" \
    --id "$n" \
    --listen-client "$(client_addr "$n")" \
    --listen-peer "$(peer_addr "$n")" \
    --listen-metrics "$(metrics_addr "$n")" \
    --data-dir "$DIR/node$n" \
    --initial-cluster "$INITIAL" \
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

nines() { "$BIN/nines" --endpoints "$ENDPOINTS" "$@"; }

case "${1:-}" in
  up)
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
    ;;
  status) nines endpoint status -w table ;;
  kill) kill_node "${2:?node number}" KILL ;;
  restart) kill_node "${2:?node number}" KILL; start_node "$2" ;;
  down) for n in "${NODES[@]}"; do kill_node "$n" TERM; done ;;
  clean) for n in "${NODES[@]}"; do kill_node "$n" TERM; done; rm -rf "$DIR"; echo "removed $DIR" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
