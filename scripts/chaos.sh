#!/usr/bin/env bash
# Chaos run: real nines-server processes behind a fault-injecting proxy,
# every nemesis, every workload, then a linearizability / invariant check.
#
#   scripts/chaos.sh [quick|long] [extra nines-jepsen args]
#
#   quick  ~75 s of load and faults (the default)
#   long   10 minutes (override with --time-limit SECS)
#
#   scripts/chaos.sh long --tls --seed 8080
#          the same with TLS on every port: nines-jepsen makes certificates
#          for the run, members serve clients over TLS with client
#          certificate auth and each other over mutual TLS, and every
#          client of the harness presents a certificate
#
# Exits non-zero when the checker finds an anomaly or cannot decide.
# NINES_CHAOS_PROFILE=debug uses debug builds (what scripts/test.sh does, to
# reuse the test build); the default is release.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-quick}"
case "$mode" in
  quick) shift || true; defaults=(--time-limit 75 --nemesis-interval 4) ;;
  long) shift; defaults=(--time-limit 600 --nemesis-interval 6) ;;
  -*) mode=quick; defaults=(--time-limit 75 --nemesis-interval 4) ;;
  *) echo "usage: $0 [quick|long] [nines-jepsen args...]" >&2; exit 2 ;;
esac

profile="${NINES_CHAOS_PROFILE:-release}"
case "$profile" in
  release) cargo build --release -p nines-server -p nines-jepsen ;;
  # test-hooks: the negative control in scripts/test.sh passes a test-only switch.
  debug) cargo build -p nines-server -p nines-jepsen --features nines-server/test-hooks ;;
  *) echo "NINES_CHAOS_PROFILE must be debug or release" >&2; exit 2 ;;
esac
# Where cargo put them: CARGO_TARGET_DIR when set (a worktree building
# into its own dir), else target/.
bin_dir="${CARGO_TARGET_DIR:-target}/$profile"
defaults+=(--workload all --nemesis all --server-bin "$bin_dir/nines-server")

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
echo "chaos ($mode): nines-jepsen ${args[*]} $*"
"$bin_dir/nines-jepsen" "${args[@]}" "$@" 2>&1 | tee "$out" || status=$?

dir="$(sed -n 's/^run dir: //p' "$out" | tail -1)"
# Without a report (setup failed) the run dir is only in the start banner.
[[ -n "$dir" ]] || dir="$(sed -n 's/.*run dir \([^,]*\),.*/\1/p' "$out" | head -1)"
if [[ -n "$dir" ]]; then
  echo
  echo "report:  $dir/report.json"
  echo "history: $dir/history.jsonl"
  echo "logs:    $dir/node*.log"
fi
echo "console: $out"
exit "$status"
