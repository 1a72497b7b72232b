#!/usr/bin/env bash
# The test command of the README and of CI: build everything, then run every test.
# Needs only cargo (protobuf compiles with protox; no protoc).
set -euo pipefail
cd "$(dirname "$0")/.."

# The cluster tests start real nines-server processes: build the binaries first.
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${NINES_TEST_THREADS:-2}"

# A quick chaos run (kill, pause, partition, membership; all workloads) on
# every commit. NINES_SKIP_CHAOS=1 skips it.
if [ "${NINES_SKIP_CHAOS:-0}" != 1 ]; then
  if NINES_CHAOS_PROFILE=debug scripts/chaos.sh quick --time-limit "${NINES_CHAOS_SECS:-60}"; then
    echo "chaos: 1 passed, 0 failed"
  else
    echo "chaos: 0 passed, 1 failed"
    exit 1
  fi
fi
