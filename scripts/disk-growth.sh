#!/usr/bin/env bash
# Disk over time under continuous overwrites: a 3-node cluster on loopback,
# `nines bench` putting 256 B values over 10,000 keys for MINUTES minutes,
# and node 1's sizes every minute: the state dir on disk (sled and
# snapshots), the Raft log on disk, and the data the store holds (every
# retained revision). Run once with the default auto-compaction and once
# with it off to see the difference:
#
#   scripts/disk-growth.sh                                     # defaults (periodic 5m)
#   scripts/disk-growth.sh --auto-compaction-retention 0       # no compaction
#   MINUTES=3 scripts/disk-growth.sh --auto-compaction-retention 1m
#   PORT_BASE=6279 GROWTH_DIR=/tmp/g2 scripts/disk-growth.sh ...  # a second run beside the first
#
# Extra arguments go to every nines-server. Stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-10}
DIR=${GROWTH_DIR:-$PWD/target/disk-growth}
BASE=${PORT_BASE:-5279}
cargo build --release -p nines-server -p nines-cli >&2
BIN=$PWD/target/release

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

rm -rf "$DIR" && mkdir -p "$DIR"
cluster=""
for n in 1 2 3; do cluster+="$n=127.0.0.1:$((BASE + 1 + 100 * n))/127.0.0.1:$((BASE + 100 * n)),"; done
for n in 1 2 3; do
  NINES_LOG=warn "$BIN/nines-server" --id "$n" --data-dir "$DIR/n$n" \
    --listen-client "127.0.0.1:$((BASE + 100 * n))" --listen-peer "127.0.0.1:$((BASE + 1 + 100 * n))" \
    --listen-metrics "127.0.0.1:$((BASE + 2 + 100 * n))" \
    --initial-cluster "${cluster%,}" "$@" >"$DIR/n$n.log" 2>&1 &
  PIDS+=($!)
done
EPS="127.0.0.1:$((BASE + 100)),127.0.0.1:$((BASE + 200)),127.0.0.1:$((BASE + 300))"
for _ in $(seq 1 100); do
  "$BIN/nines" --endpoints "$EPS" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

"$BIN/nines" --endpoints "$EPS" bench --workload put --keys 10000 --value-size 256 --clients 64 \
  --connections 8 --duration "${MINUTES}m" --warmup 0s --quiet -w json >"$DIR/bench.json" &
BENCH=$!
PIDS+=("$BENCH")

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
echo "flags: ${*:-(defaults)}"
printf '%-8s %10s %14s %12s %12s %14s\n' minute revision "state dir MiB" "log MiB" "in use MiB" "compacted rev"
for m in $(seq 1 "$MINUTES"); do
  sleep 60
  metrics=$(curl -s "http://127.0.0.1:$((BASE + 102))/metrics" || true)
  metric() { awk -v n="nines_$1" '$1 == n { print $2 }' <<<"$metrics"; }
  rev=$(metric store_revision); in_use=$(metric store_data_bytes); compacted=$(metric store_compacted_revision)
  printf '%-8s %10s %14s %12s %12s %14s\n' "$m" "$rev" "$(mib "$(du -sb "$DIR/n1/state" | cut -f1)")" \
    "$(mib "$(du -sb "$DIR/n1/log" | cut -f1)")" "$(mib "${in_use:-0}")" "${compacted:--}"
done
wait "$BENCH" || true
python3 - "$DIR/bench.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print(f"puts: {r['throughput']:.0f} ops/s over the run, {r.get('errors', 0)} errors")
PY
