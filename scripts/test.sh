#!/usr/bin/env bash
# The test command of the README and of CI: build everything, then run every test.
# Needs only cargo (protobuf compiles with protox; no protoc).
set -euo pipefail
cd "$(dirname "$0")/.."

# The cluster tests start real nines-server processes: build the binaries first.
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${NINES_TEST_THREADS:-2}"
