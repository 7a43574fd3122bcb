#!/usr/bin/env bash
# The load benchmark: starts PgBouncer if needed, builds in release, starts the service itself
# (rate limits off, through PgBouncer), seeds 100,000 users, and prints and writes the figures to
# target/bench/results.md and results.json. `--quick` seeds 5,000 users for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-pgbouncer.sh
bash .ci/start-pgbouncer.sh
ulimit -n 20000 2>/dev/null || true
cargo bench --bench load -- "$@"
