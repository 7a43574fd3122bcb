#!/usr/bin/env bash
# Starts the service for client tests: a fresh database, application traffic through PgBouncer,
# migrations direct, rate limits off. Writes the connection details to $dir/env.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
dir=/tmp/field-attendance-ci
mkdir -p "$dir"
port=${SERVICE_PORT:-18080}
db=field_attendance_ci
if ! command -v curl >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi
# A service left by an earlier run would answer in this one's place.
bash "$here/stop-service.sh"
if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
  echo "service: port $port is already in use" >&2
  exit 1
fi
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
cargo build --locked --quiet
cat > "$dir/env" <<ENV
export BASE_URL=http://127.0.0.1:$port
export ADMIN_EMAIL=admin@ci.example
export ADMIN_PASSWORD=ci-admin-password-123
ENV
# shellcheck disable=SC1091
source "$dir/env"
APP_ENV=production \
DATABASE_URL=postgres://postgres@127.0.0.1:6432/$db \
MIGRATION_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db \
JWT_SECRET=ci-signing-secret-that-is-long-enough-000 \
BIND_ADDR=127.0.0.1:$port RATE_LIMIT_ENABLED=false LOG_FORMAT=json LOG_LEVEL=warn \
DB_MIN_CONNECTIONS=2 \
  nohup target/debug/field-attendance serve > "$dir/service.log" 2>&1 &
pid=$!
echo $pid > "$dir/pid"
for _ in $(seq 1 120); do
  if ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  if curl -fsS "$BASE_URL/ready" >/dev/null 2>&1; then
    echo "service: ready on $BASE_URL"
    exit 0
  fi
  sleep 0.5
done
echo "service: not ready; log follows" >&2
cat "$dir/service.log" >&2
bash "$here/stop-service.sh"
exit 1
