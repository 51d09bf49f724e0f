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

# On a clean clone incremental compilation saves nothing and its cache would take gigabytes of
# disk; set CARGO_INCREMENTAL=1 to keep it between local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "warning: $((free_kb / 1024)) MB free here; a clean build of the suite needs about 6 GB" >&2
fi

# benches (bench/) print figures and are run by hand: cargo bench --bench backpressure
cargo test --workspace --lib --bins --tests "$@" "${threads[@]}"
