#!/usr/bin/env bash
# The load benchmark: starts PgBouncer if needed, builds in release, starts the service itself
# (rate limits off, through PgBouncer), seeds 100,000 users, and prints and writes the figures to
# target/bench/results.md and results.json, with a latency chart in target/bench/latency.png.
#   --quick            seeds 5,000 users for a smoke run
#   BENCH_PROFILE=1    records each scenario with `perf` (system-wide) and adds where the CPU went
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-pgbouncer.sh
bash .ci/start-pgbouncer.sh
need=()
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ "${BENCH_PROFILE:-}" = 1 ] && ! command -v perf >/dev/null; then need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}"
fi
ulimit -n 20000 2>/dev/null || true
cargo bench --bench load -- "$@"
