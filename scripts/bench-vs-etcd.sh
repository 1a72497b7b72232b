#!/usr/bin/env bash
# Side-by-side benchmark: a 3-node etcd and a 3-node nines on loopback, data
# on the same disk, both durable (etcd fsyncs its WAL; nines fsyncs its log),
# driven by the same `nines bench` code (the etcd side through the etcd-client
# crate). Installs etcd and protoc from Debian if missing. Stops only what it
# started, by PID.
#
#   scripts/bench-vs-etcd.sh            # every workload, RUNS=3 runs each, median
#   RUNS=1 DURATION=5s scripts/bench-vs-etcd.sh
#   WORKLOADS="put-64 get-64" scripts/bench-vs-etcd.sh
#   WORKLOADS="watch-1 watch-100 watch-1000 watch-10000" scripts/bench-vs-etcd.sh throughput
#   RSS_KEYS=1000000 scripts/bench-vs-etcd.sh large # put/get at 10k then 1M keys (same
#                                   # cluster, same run: the ratio), memory, disk at 1M
#   NINES_BEFORE=/path/to/old/nines-server scripts/bench-vs-etcd.sh throughput
#                                   # also an older nines build, same run (before/after);
#                                   # NINES_BEFORE_CLI=/path/to/old/nines drives it with
#                                   # its own CLI (builds before the etcd API need theirs)
#   FLOOR=1 WORKLOADS="watch-1000" scripts/bench-vs-etcd.sh throughput
#                                   # also the watch floor (target floor): etcd's
#                                   # Put and Watch over nines' client transport and
#                                   # nothing else (crates/nines-server/examples/
#                                   # watch_floor.rs), through etcd-client; watch
#                                   # workloads only
#   ETCD_CLIENT_ON_NINES=1 scripts/bench-vs-etcd.sh throughput
#                                   # also the unmodified etcd-client crate against
#                                   # nines (target nines-etcd-client), same run
#   TLS=1 WORKLOADS="put-64 get-64" scripts/bench-vs-etcd.sh throughput
#                                   # what TLS costs each: also an etcd and a nines
#                                   # with TLS on every port (client TLS with client
#                                   # certificate auth, peer mutual TLS with an
#                                   # allowed CN; targets etcd-tls and nines-tls,
#                                   # certificates from scripts/gen-certs.sh), same
#                                   # run, same bench code and client TLS files;
#                                   # prints TLS/plain per store
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RSS_KEYS=${RSS_KEYS:-1000000}
DIR=${BENCH_DIR:-$PWD/target/bench-vs-etcd}
OUT=${BENCH_OUT:-$DIR/results.jsonl}
MODE=${1:-all}
# name: nines bench flags
declare -A SPEC=(
  [put-1]="--workload put --clients 1 --connections 1"
  [put-64]="--workload put --clients 64 --connections 8"
  [put-256]="--workload put --clients 256 --connections 16"
  [get-64]="--workload get --clients 64 --connections 8"
  [get-serializable-64]="--workload get-serializable --clients 64 --connections 8"
  [mixed-64]="--workload mixed --clients 64 --connections 8 --read-ratio 0.9"
  [txn-cas-64]="--workload txn-cas --clients 64 --connections 8"
  [range-16]="--workload range --clients 16 --connections 4 --range-limit 100"
  # N watchers on one prefix, one writer at 500 puts/s: events/s delivered
  # and put-ack -> event latency.
  [watch-1]="--workload watch --watchers 1 --connections 1"
  [watch-100]="--workload watch --watchers 100 --connections 8"
  [watch-1000]="--workload watch --watchers 1000 --connections 8"
  [watch-10000]="--workload watch --watchers 10000 --connections 8"
  # 1000 watchers that ask for each event's prev_kv (as Kubernetes' watch
  # cache does).
  [watch-1000-prev]="--workload watch --watchers 1000 --connections 8 --watch-prev-kv"
  # 1000 leases kept alive over 8 LeaseKeepAlive streams, 64 keepalives in
  # flight: keepalives/s and send -> answer latency (both targets through
  # nines-client's streams; see crates/nines-cli/src/bench/lease.rs).
  [lease-keepalive-1000]="--workload lease-keepalive --leases 1000 --clients 64 --connections 8"
  # The same with every stream on the leader: no follower forwarding.
  [lease-keepalive-1000-leader]="--workload lease-keepalive --leases 1000 --clients 64 --connections 8 --leader-only"
)
WORKLOADS=${WORKLOADS:-"put-1 put-64 put-256 get-64 get-serializable-64 mixed-64 txn-cas-64 range-16 watch-1 watch-100 watch-1000 watch-10000 lease-keepalive-1000 lease-keepalive-1000-leader"}

if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
  echo "installing etcd-server and protobuf-compiler from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler >/dev/null
fi
cargo build --release -p nines-server
cargo build --release -p nines-cli --features etcd
[ "${FLOOR:-0}" = 1 ] && cargo build --release -p nines-server --example watch_floor
# Where cargo put them: CARGO_TARGET_DIR when set (a worktree building
# into its own dir), else target/.
TARGET=$(realpath "${CARGO_TARGET_DIR:-target}")
NINES=$TARGET/release/nines

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# TLS=1: one CA, a member certificate pair for 127.0.0.1 (client port,
# and peer port with CN nines-peer) and a client certificate, used by
# both stores alike.
TLS_DIR=$DIR/tls
ETCD_TLS=(--cert-file "$TLS_DIR/member.crt" --key-file "$TLS_DIR/member.key"
  --trusted-ca-file "$TLS_DIR/ca.crt" --client-cert-auth
  --peer-cert-file "$TLS_DIR/member-peer.crt" --peer-key-file "$TLS_DIR/member-peer.key"
  --peer-trusted-ca-file "$TLS_DIR/ca.crt" --peer-client-cert-auth --peer-cert-allowed-cn nines-peer)
# nines takes etcd's flags.
NINES_TLS=("${ETCD_TLS[@]}")
CLI_TLS=(--cacert "$TLS_DIR/ca.crt" --cert "$TLS_DIR/client.crt" --key "$TLS_DIR/client.key")

start_etcd() { # [name] [port base]; name etcd-tls turns TLS on
  local name=${1:-etcd} base=${2:-3279} scheme=http tls=() ctl_tls=()
  if [ "$name" = etcd-tls ]; then scheme=https tls=("${ETCD_TLS[@]}") ctl_tls=("${CLI_TLS[@]}"); fi
  rm -rf "${DIR:?}/$name" && mkdir -p "$DIR/$name"
  local cluster="" eps=""
  for n in 1 2 3; do cluster+="e$n=$scheme://127.0.0.1:$((base + 1 + 100 * n)),"; done
  for n in 1 2 3; do
    etcd --name "e$n" --data-dir "$DIR/$name/e$n" \
      --listen-client-urls "$scheme://127.0.0.1:$((base + 100 * n))" \
      --advertise-client-urls "$scheme://127.0.0.1:$((base + 100 * n))" \
      --listen-peer-urls "$scheme://127.0.0.1:$((base + 1 + 100 * n))" \
      --initial-advertise-peer-urls "$scheme://127.0.0.1:$((base + 1 + 100 * n))" \
      --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token bench \
      ${tls[@]+"${tls[@]}"} \
      --quota-backend-bytes 8589934592 --log-level error >"$DIR/$name/e$n.log" 2>&1 &
    PIDS+=($!)
    [ "$name" = etcd ] && ETCD_PIDS+=($!)
    eps+="127.0.0.1:$((base + 100 * n)),"
  done
  eps=${eps%,}
  if [ "$name" = etcd ]; then ETCD_ENDPOINTS=$eps; else ETCD_TLS_ENDPOINTS=$eps; fi
  local urls=$scheme://${eps//,/,$scheme://}
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$urls" ${ctl_tls[@]+"${ctl_tls[@]}"} endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "$name did not become healthy" >&2; exit 1
}

start_nines() { # [binary] [name] [port base]; name nines-tls turns TLS on
  local bin=${1:-$TARGET/release/nines-server} name=${2:-nines} base=${3:-4279} tls=() cli_tls=()
  if [ "$name" = nines-tls ]; then tls=("${NINES_TLS[@]}") cli_tls=("${CLI_TLS[@]}"); fi
  rm -rf "${DIR:?}/$name" && mkdir -p "$DIR/$name"
  local cluster="" eps=""
  for n in 1 2 3; do cluster+="$n=127.0.0.1:$((base + 1 + 100 * n))/127.0.0.1:$((base + 100 * n)),"; done
  for n in 1 2 3; do
    NINES_LOG=warn "$bin" --id "$n" --data-dir "$DIR/$name/n$n" \
      --listen-client "127.0.0.1:$((base + 100 * n))" --listen-peer "127.0.0.1:$((base + 1 + 100 * n))" \
      --initial-cluster "${cluster%,}" ${tls[@]+"${tls[@]}"} >"$DIR/$name/n$n.log" 2>&1 &
    PIDS+=($!)
    [ "$name" = nines ] && NINES_PIDS+=($!)
    eps+="127.0.0.1:$((base + 100 * n)),"
  done
  eps=${eps%,}
  case $name in
    nines) NINES_ENDPOINTS=$eps ;;
    nines-tls) NINES_TLS_ENDPOINTS=$eps ;;
    *) BEFORE_ENDPOINTS=$eps ;;
  esac
  for _ in $(seq 1 100); do
    local cli=$NINES
    [ "$name" = nines-before ] && cli=${NINES_BEFORE_CLI:-$NINES}
    "$cli" --endpoints "$eps" ${cli_tls[@]+"${cli_tls[@]}"} endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "$name did not become healthy" >&2; exit 1
}

bench_row() { # target endpoints name: a run that fails is a FAILED row in the summary, not fatal
  run_bench "$1" "$2" "$3" >>"$OUT" || echo "{\"name\":\"$3\",\"target\":\"$1\",\"failed\":true}" >>"$OUT"
}

run_bench() { # target endpoints name
  local target=$1 cli=$NINES tls=()
  case $target in
    nines-before) target=nines; cli=${NINES_BEFORE_CLI:-$NINES} ;;
    nines-etcd-client | floor) target=etcd ;;
    etcd-tls) target=etcd tls=("${CLI_TLS[@]}") ;;
    nines-tls) target=nines tls=("${CLI_TLS[@]}") ;;
  esac
  # shellcheck disable=SC2086
  "$cli" --endpoints "$2" ${tls[@]+"${tls[@]}"} bench --target "$target" ${SPEC[$3]} --duration "$DURATION" --warmup "$WARMUP" \
    --quiet -w json | sed "s/^{/{\"name\":\"$3\",/; s/\"target\":\"[a-z]*\"/\"target\":\"$1\"/"
}

settle() { # let the previous run's dirty pages reach the disk
  sync
  sleep "${SETTLE_SECS:-2}"
}

rss_kb() { # pids...
  local max=0
  for pid in "$@"; do
    local kb; kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    ((kb > max)) && max=$kb
  done
  echo "$max"
}

mkdir -p "$DIR"
ETCD_PIDS=(); NINES_PIDS=()
start_etcd
start_nines
TARGETS="etcd nines"
if [ -n "${NINES_BEFORE:-}" ]; then
  start_nines "$NINES_BEFORE" nines-before 7279
  TARGETS="$TARGETS nines-before"
fi
[ "${ETCD_CLIENT_ON_NINES:-0}" = 1 ] && TARGETS="$TARGETS nines-etcd-client"
if [ "${FLOOR:-0}" = 1 ]; then
  FLOOR_ENDPOINTS=127.0.0.1:8301,127.0.0.1:8302,127.0.0.1:8303
  "$TARGET/release/examples/watch_floor" ${FLOOR_ENDPOINTS//,/ } >"$DIR/floor.log" 2>&1 &
  PIDS+=($!)
  TARGETS="$TARGETS floor"
fi
if [ "${TLS:-0}" = 1 ]; then
  rm -rf "$TLS_DIR"
  scripts/gen-certs.sh "$TLS_DIR" >/dev/null
  start_etcd etcd-tls 5279
  start_nines "$TARGET/release/nines-server" nines-tls 6279
  TARGETS="$TARGETS etcd-tls nines-tls"
fi
"$NINES" bench --workload put --clients 1 --duration 1s --warmup 0s --quiet --endpoints "$NINES_ENDPOINTS" \
  --fsync-dir "$DIR" -w json | python3 -c 'import json,sys; f=json.load(sys.stdin)["fsync_floor"]; print(json.dumps({"name":"fsync-floor", **f}))' >"$OUT"

if [ "$MODE" = all ] || [ "$MODE" = throughput ]; then
  for name in $WORKLOADS; do
    for run in $(seq 1 "$RUNS"); do
      # Rotate who goes first: a later run otherwise competes with the
      # writeback of the earlier ones' data.
      read -ra t <<<"$TARGETS"
      k=$(((run - 1) % ${#t[@]}))
      order="${t[*]:k} ${t[*]:0:k}"
      echo "== $name run $run: $order" >&2
      for target in $order; do
        # An old CLI (builds before the etcd API) has no watch workload,
        # nor before leases a lease one; the lease workload drives both
        # targets through nines-client, so etcd-client on nines adds
        # nothing. Driven by this CLI, an older build with etcd's Watch
        # service runs the watch workloads too.
        [[ $name == watch-* && $target == nines-before && -n ${NINES_BEFORE_CLI:-} ]] && continue
        [[ $name == lease-* && $target == nines-before ]] && continue
        [[ $name == lease-* && $target == nines-etcd-client ]] && continue
        [[ $name != watch-* && $target == floor ]] && continue
        settle
        case $target in
          etcd) eps=$ETCD_ENDPOINTS ;;
          etcd-tls) eps=$ETCD_TLS_ENDPOINTS ;;
          nines-tls) eps=$NINES_TLS_ENDPOINTS ;;
          nines | nines-etcd-client) eps=$NINES_ENDPOINTS ;;
          nines-before) eps=$BEFORE_ENDPOINTS ;;
          floor) eps=$FLOOR_ENDPOINTS ;;
        esac
        bench_row "$target" "$eps" "$name"
      done
    done
  done
fi

if [ "$MODE" = all ] || [ "$MODE" = large ]; then
  # Cost as data grows: load RSS_KEYS keys of 256 B, then the same put and
  # get workloads as above over all of them; memory and disk per node after.
  for target in etcd nines; do
    if [ $target = etcd ]; then eps=$ETCD_ENDPOINTS; pids=("${ETCD_PIDS[@]}"); dir=$DIR/etcd
    else eps=$NINES_ENDPOINTS; pids=("${NINES_PIDS[@]}"); dir=$DIR/nines; fi
    if [ "$MODE" = large ]; then
      # The same workloads at 10,000 keys first, on the same cluster in the
      # same run: the cost of growth is the ratio of the two.
      for name in put-64 get-64; do
        settle
        bench_row $target "$eps" $name
      done
    fi
    echo "== loading $RSS_KEYS keys of 256 B into $target" >&2
    "$NINES" --endpoints "$eps" bench --target $target --workload get-serializable --keys "$RSS_KEYS" \
      --value-size 256 --clients 64 --connections 8 --duration 1s --warmup 0s --quiet -w json >/dev/null
    for name in put-64 get-64; do
      settle
      # shellcheck disable=SC2086
      "$NINES" --endpoints "$eps" bench --target $target ${SPEC[$name]} --keys "$RSS_KEYS" --no-preload \
        --duration "$DURATION" --warmup "$WARMUP" --quiet -w json | sed "s/^{/{\"name\":\"$name-$RSS_KEYS\",/" >>"$OUT"
    done
    settle
    sleep 5
    disk=0
    for n in 1 2 3; do
      d=$(du -sb "$dir"/?"$n" | awk '{print $1}'); ((d > disk)) && disk=$d
    done
    echo "{\"name\":\"large\",\"target\":\"$target\",\"keys\":$RSS_KEYS,\"max_rss_kb\":$(rss_kb "${pids[@]}"),\"max_disk_bytes\":$disk}" >>"$OUT"
  done
fi

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
floor = next((r for r in rows if r["name"] == "fsync-floor"), None)
if floor:
    print(f"fsync floor (4 KiB write + fdatasync): p50 {floor['p50_us']:.0f} us, p99 {floor['p99_us']:.0f} us")
runs = {}
for r in rows:
    if "throughput" in r:
        runs.setdefault((r["name"], r["target"]), []).append(r)
def med(name, target, key):
    vals = [(r["throughput"] if key == "ops" else r["latency"][key]) for r in runs.get((name, target), [])]
    return statistics.median(vals) if vals else float("nan")
before = any(t == "nines-before" for _, t in runs)
via_etcd = any(t == "nines-etcd-client" for _, t in runs)
with_floor = any(t == "floor" for _, t in runs)
print(f"{'workload':<22}{'etcd ops/s':>12}{'nines ops/s':>13}{'ratio':>7}{'etcd p50':>10}{'nines p50':>11}{'etcd p99':>10}{'nines p99':>11}"
      + (f"{'before ops/s':>14}{'after/before':>14}" if before else "")
      + (f"{'etcd-client on nines':>22}{'/nines':>8}" if via_etcd else "")
      + (f"{'floor ops/s':>13}{'/etcd':>7}{'floor p99':>11}" if with_floor else "")
      + "  (latency in us, median of runs)")
for name in dict.fromkeys(n for n, _ in runs):
    e, n = med(name, "etcd", "ops"), med(name, "nines", "ops")
    line = (f"{name:<22}{e:>12.0f}{n:>13.0f}{n / e if e else float('nan'):>7.2f}"
            f"{med(name,'etcd','p50_us'):>10.0f}{med(name,'nines','p50_us'):>11.0f}"
            f"{med(name,'etcd','p99_us'):>10.0f}{med(name,'nines','p99_us'):>11.0f}")
    if before:
        b = med(name, "nines-before", "ops")
        line += f"{b:>14.0f}{n / b if b else float('nan'):>14.2f}"
    if via_etcd:
        v = med(name, "nines-etcd-client", "ops")
        line += f"{v:>22.0f}{v / n if n else float('nan'):>8.2f}"
    if with_floor and runs.get((name, "floor")):
        f = med(name, "floor", "ops")
        line += f"{f:>13.0f}{f / e if e else float('nan'):>7.2f}{med(name, 'floor', 'p99_us'):>11.0f}"
    print(line)
    if len(runs.get((name, "nines"), [])) > 1:
        vals = [r["throughput"] for r in runs[(name, "nines")]]
        spread = (max(vals) - min(vals)) / statistics.median(vals)
        print(f"{'':<22}nines run-to-run spread (max-min)/median: {spread:.0%}")
tls_rows = [name for name in dict.fromkeys(n for n, _ in runs)
            if runs.get((name, "etcd-tls")) or runs.get((name, "nines-tls"))]
if tls_rows:
    print()
    print("TLS cost: client TLS with client certificates, peer mutual TLS; TLS/plain of ops/s (median of runs)")
    print(f"{'workload':<22}{'etcd':>10}{'etcd TLS':>10}{'ratio':>7}{'p50':>8}{'TLS p50':>9}"
          f"{'nines':>10}{'nines TLS':>11}{'ratio':>7}{'p50':>8}{'TLS p50':>9}")
    for name in tls_rows:
        line = f"{name:<22}"
        for plain, tls in (("etcd", "etcd-tls"), ("nines", "nines-tls")):
            p, t = med(name, plain, "ops"), med(name, tls, "ops")
            line += (f"{p:>10.0f}{t:>{10 if plain == 'etcd' else 11}.0f}{t / p if p else float('nan'):>7.2f}"
                     f"{med(name, plain, 'p50_us'):>8.0f}{med(name, tls, 'p50_us'):>9.0f}")
        print(line)
for r in rows:
    if r.get("failed"):
        print(f"{r['name']} {r['target']}: FAILED (see the bench's stderr above)")
for r in rows:
    if r.get("errors"):
        print(f"{r['name']} {r['target']}: {r['errors']} errors in {r['ops']} ops")
for target in ("etcd", "nines"):
    for w in ("put-64", "get-64"):
        big = [r for r in rows if r["name"].startswith(w + "-") and r["target"] == target and "throughput" in r]
        if big and runs.get((w, target)):
            k = big[0]["name"][len(w) + 1:]
            print(f"{target} {w}: {big[0]['throughput'] / med(w, target, 'ops'):.2f} of its 10,000-key figure at {k} keys")
for r in rows:
    if r["name"] == "large":
        print(f"after {r['keys']} keys of 256 B, {r['target']}: RSS {r['max_rss_kb'] / 1024:.0f} MiB, "
              f"disk {r['max_disk_bytes'] / 2**20:.0f} MiB (largest node)")
PY
echo "raw results: $OUT" >&2
