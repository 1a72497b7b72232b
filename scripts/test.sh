#!/usr/bin/env bash
# The test command of the README and of CI: build everything, then run every test.
# Needs cargo (protobuf compiles with protox; no protoc) and promtool (installed
# from Debian when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# The alerting rules (deploy/prometheus): valid, and firing when they should on
# recorded series. promtool comes with Debian's prometheus package (installed
# here if missing; its service is not started).
if ! command -v promtool >/dev/null; then
  echo "installing prometheus (for promtool) from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/*.yml
promtool test rules deploy/prometheus/tests/*.yml

# The cluster tests start real nines-server processes: build the binaries first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${NINES_TEST_THREADS:-2}"

# A quick chaos run (kill, pause, partition, membership; all workloads) on
# every commit. NINES_SKIP_CHAOS=1 skips it.
if [ "${NINES_SKIP_CHAOS:-0}" != 1 ]; then
  passed=0 failed=0
  if NINES_CHAOS_PROFILE=debug scripts/chaos.sh quick --time-limit "${NINES_CHAOS_SECS:-60}"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  # The harness must be able to fail: servers that answer linearizable reads
  # from local state (a test-only flag) must be caught.
  set +e
  NINES_CHAOS_PROFILE=debug scripts/chaos.sh quick --time-limit 30 --workload register \
    --nemesis partition --server-arg=--unsafe-local-reads >/tmp/nines-chaos-negative.log 2>&1
  status=$?
  set -e
  if [ "$status" = 1 ] && grep -q "NOT LINEARIZABLE" /tmp/nines-chaos-negative.log; then
    echo "chaos negative control: broken build caught"
    passed=$((passed + 1))
  else
    echo "chaos negative control: broken build NOT caught (exit $status, see /tmp/nines-chaos-negative.log)"
    failed=$((failed + 1))
  fi
  echo "chaos: $passed passed, $failed failed"
  [ "$failed" = 0 ] || exit 1
fi
