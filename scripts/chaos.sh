#!/usr/bin/env bash
# Chaos run: real nines-server processes behind a fault-injecting proxy,
# every nemesis, every workload, then a linearizability / invariant check.
#
#   scripts/chaos.sh [quick|long] [extra nines-jepsen args]
#
#   quick  ~75 s of load and faults (the default)
#   long   10 minutes (override with --time-limit SECS)
#
# Exits non-zero when the checker finds an anomaly or cannot decide.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-quick}"
case "$mode" in
  quick) shift || true; defaults=(--time-limit 75 --nemesis-interval 4) ;;
  long) shift; defaults=(--time-limit 600 --nemesis-interval 6) ;;
  -*) defaults=(--time-limit 75 --nemesis-interval 4) ;;
  *) echo "usage: $0 [quick|long] [nines-jepsen args...]" >&2; exit 2 ;;
esac

cargo build --release -p nines-server -p nines-jepsen

out="$(mktemp -t nines-chaos.XXXXXX.log)"
status=0
# clap rejects a single-valued flag given twice, so a mode default is dropped
# when the caller passes the same flag.
args=()
for ((i = 0; i < ${#defaults[@]}; i += 2)); do
  flag="${defaults[i]}"
  if [[ " $* " != *" $flag "* && " $* " != *" $flag="* ]]; then
    args+=("$flag" "${defaults[i + 1]}")
  fi
done
target/release/nines-jepsen --workload all --nemesis all \
  --server-bin target/release/nines-server "${args[@]}" "$@" 2>&1 | tee "$out" || status=$?

dir="$(sed -n 's/^run dir: //p' "$out" | tail -1)"
if [[ -n "$dir" ]]; then
  echo
  echo "report:  $dir/report.json"
  echo "history: $dir/history.jsonl"
  echo "logs:    $dir/n*.log"
fi
echo "console: $out"
exit "$status"
