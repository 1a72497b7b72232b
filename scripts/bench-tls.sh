#!/usr/bin/env bash
# What TLS costs: two three-node nines clusters on loopback, one plain and
# one with every TLS flag (client TLS with client certificates, peer mutual
# TLS), driven by the same `nines bench` in one run. Runs alternate between
# the clusters; the medians and the TLS/plain ratio are printed.
#
#   scripts/bench-tls.sh                          # put-64 and get-64, RUNS=3
#   RUNS=1 DURATION=5s WORKLOADS="put-64" scripts/bench-tls.sh
#
# Needs release binaries in $NINES_BIN_DIR (default target/release; built
# here when missing) and the openssl CLI (scripts/gen-certs.sh makes the
# certificates).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${NINES_BIN_DIR:-$PWD/target/release}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WORKLOADS=${WORKLOADS:-put-64 get-64}
BASE_PORT=${BASE_PORT:-33000}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/nines-bench-tls.XXXXXX")
declare -A FLAGS=(
  [put-64]="--workload put --clients 64 --connections 8"
  [get-64]="--workload get --clients 64 --connections 8"
  [put-1]="--workload put --clients 1 --connections 1"
  [get-1]="--workload get --clients 1 --connections 1"
)

if [ ! -x "$BIN/nines-server" ] || [ ! -x "$BIN/nines" ]; then
  cargo build --release --bin nines-server --bin nines
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# start NAME OFFSET [server flags...]: a three-node cluster on ports from
# BASE_PORT + OFFSET; sets STARTED to its endpoints (not printed: a
# command substitution would run it in a subshell, losing PIDS).
start() {
  local name=$1 offset=$2
  shift 2
  local initial="" endpoints="" n
  for n in 1 2 3; do
    local c=$((BASE_PORT + offset + 10 * n)) p=$((BASE_PORT + offset + 10 * n + 1))
    initial+="$n=127.0.0.1:$p/127.0.0.1:$c,"
    endpoints+="127.0.0.1:$c,"
  done
  for n in 1 2 3; do
    local c=$((BASE_PORT + offset + 10 * n)) p=$((BASE_PORT + offset + 10 * n + 1))
    NINES_LOG=warn "$BIN/nines-server" --id "$n" --listen-client "127.0.0.1:$c" \
      --listen-peer "127.0.0.1:$p" --data-dir "$DIR/$name/node$n" \
      --initial-cluster "${initial%,}" "$@" >>"$DIR/$name-node$n.log" 2>&1 &
    PIDS+=($!)
  done
  STARTED=${endpoints%,}
}

# One CA; a member certificate (both usages: members forward to the
# leader's client port with it), a peer certificate and a client one.
T=$DIR/tls
scripts/gen-certs.sh "$T" >/dev/null
start plain 0
PLAIN=$STARTED
start tls 100 --cert-file "$T/member.crt" --key-file "$T/member.key" \
  --trusted-ca-file "$T/ca.crt" --client-cert-auth \
  --peer-cert-file "$T/member-peer.crt" --peer-key-file "$T/member-peer.key" \
  --peer-trusted-ca-file "$T/ca.crt" --peer-client-cert-auth --peer-cert-allowed-cn nines-peer
TLS=$STARTED
CLIENT_TLS=(--cacert "$T/ca.crt" --cert "$T/client.crt" --key "$T/client.key")

ready() {
  for _ in $(seq 1 150); do
    "$BIN/nines" "$@" put bench/ready 1 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster did not become ready: $*" >&2
  tail -n 5 "$DIR"/*.log >&2
  exit 1
}
ready --endpoints "$PLAIN"
ready --endpoints "$TLS" "${CLIENT_TLS[@]}"

results=$DIR/results.jsonl
for run in $(seq 1 "$RUNS"); do
  for w in $WORKLOADS; do
    # Who goes first alternates per run.
    order=(plain tls)
    [ $((run % 2)) -eq 0 ] && order=(tls plain)
    for which in "${order[@]}"; do
      args=(--endpoints "$PLAIN")
      [ "$which" = tls ] && args=(--endpoints "$TLS" "${CLIENT_TLS[@]}")
      # shellcheck disable=SC2086 # FLAGS holds several words
      "$BIN/nines" "${args[@]}" -w json bench ${FLAGS[$w]} --duration "$DURATION" --quiet \
        | jq -c --arg w "$w" --arg t "$which" '{w: $w, t: $t, ops: .throughput, p50: .latency.p50_us, p99: .latency.p99_us, errors: .errors}' \
        >>"$results"
      sync
    done
  done
done

echo "nines TLS cost, $RUNS run(s) of $DURATION, median (ops/s; latency µs)"
printf '%-8s %10s %10s %7s %9s %9s %9s %9s\n' workload plain tls ratio p50-plain p50-tls p99-plain p99-tls
for w in $WORKLOADS; do
  jq -rs --arg w "$w" '
    def med: sort | .[(length - 1) / 2 | floor];
    def of($t; $k): [.[] | select(.w == $w and .t == $t) | .[$k]] | med;
    [$w, of("plain"; "ops"), of("tls"; "ops"), (of("tls"; "ops") / of("plain"; "ops") * 100 | round / 100),
     of("plain"; "p50"), of("tls"; "p50"), of("plain"; "p99"), of("tls"; "p99")] | @tsv' "$results" |
    awk -F'\t' '{ printf "%-8s %10.0f %10.0f %7.2f %9s %9s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
done
jq -rs '[.[] | .errors] | add | "errors: \(.)"' "$results"
