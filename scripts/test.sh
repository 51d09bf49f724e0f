#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (moto in a cached
# virtualenv; kinesalite and kinesis-local from npm), then runs every test. Each test starts its own servers on free 127.0.0.1 ports
# and stops them by PID.
#   SLUICE_TEST_ES_URL=http://127.0.0.1:9200 scripts/test.sh   # end-to-end tests against a real cluster
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_moto
ensure_kinesis_emulators
ensure_prometheus
export SLUICE_MOTO_SERVER="$MOTO_SERVER" SLUICE_NODE_MODULES="$NODE_MODULES"

# Against a real cluster, tests share its indices: run them one at a time. (Each test gets its
# own in-memory server otherwise.)
threads=()
[ -n "${SLUICE_TEST_ES_URL:-}" ] && threads=(-- --test-threads=1)

# benches (bench/) print figures and are run by hand: cargo bench --bench backpressure
cargo test --workspace --lib --bins --tests "$@" "${threads[@]}"
