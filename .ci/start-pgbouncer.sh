#!/usr/bin/env bash
# Starts PgBouncer in transaction pooling mode on 127.0.0.1:${PGBOUNCER_PORT:-6432}, in front
# of the local Postgres, for the tests and the benchmark. Idempotent.
set -euo pipefail
port=${PGBOUNCER_PORT:-6432}
dir=${PGBOUNCER_DIR:-/tmp/field-attendance-pgbouncer}
bin=$(command -v /usr/local/bin/pgbouncer || command -v pgbouncer)

listening() { (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; }
if listening; then
  if [ -f "$dir/pgbouncer.pid" ] && kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; then
    echo "pgbouncer: already listening on $port"
    exit 0
  fi
  # Another PgBouncer holds the port: most likely the distribution's own service, which its
  # package starts on install, with no databases and password authentication. Stopped in CI
  # only: on a developer's machine it may be one set up on purpose.
  if [ "${CI:-}" = true ] && command -v systemctl >/dev/null && systemctl stop pgbouncer 2>/dev/null; then
    sleep 1
  fi
  if listening; then
    echo "pgbouncer: port $port is taken by another program; stop it (systemctl disable --now pgbouncer)" >&2
    exit 1
  fi
fi
mkdir -p "$dir"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
; any database name is passed through, so each test's own database is reachable
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 40
max_db_connections = 80
; sqlx prepares every statement: PgBouncer >= 1.21 tracks them across server connections
max_prepared_statements = 500
ignore_startup_parameters = extra_float_digits,options
server_reset_query =
; the benchmark's and the tests' databases come and go: their idle server connections are closed
; soon, so that they do not keep Postgres's connection slots from the next run
server_idle_timeout = 30
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
echo '"postgres" ""' > "$dir/userlist.txt"
chown -R postgres "$dir"
"$bin" -d -u postgres "$dir/pgbouncer.ini"
for _ in $(seq 1 50); do
  if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
    echo "pgbouncer: listening on $port ($("$bin" --version | head -1))"
    exit 0
  fi
  sleep 0.1
done
echo "pgbouncer: did not start; log follows" >&2
cat "$dir/pgbouncer.log" >&2 || true
exit 1
