#!/usr/bin/env bash
# Provides PgBouncer >= 1.21 (the first release with max_prepared_statements, which sqlx's
# prepared statements need under transaction pooling). Debian 12 ships 1.18, so when the
# installed one is older we build Debian trixie's source package (a plain configure/make;
# its build dependencies all exist in bookworm).
set -euo pipefail

min_ok() {
  local v
  v=$("$1" --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+' | head -1) || return 1
  [ -n "$v" ] || return 1
  local major=${v%%.*} minor=${v#*.}
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 21 ]; }
}

for candidate in /usr/local/bin/pgbouncer "$(command -v pgbouncer || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && min_ok "$candidate"; then
    echo "pgbouncer: using $candidate ($("$candidate" --version | head -1))"
    exit 0
  fi
done

echo "pgbouncer: building a current release from Debian trixie's source package"
export DEBIAN_FRONTEND=noninteractive
cat > /etc/apt/sources.list.d/trixie-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential dpkg-dev pkg-config libevent-dev libssl-dev libc-ares-dev >/dev/null
work=$(mktemp -d)
cd "$work"
apt-get source -qq --download-only pgbouncer/trixie >/dev/null
# Unpacked with Debian's patches (its security fixes among them), not the bare upstream tarball.
dpkg-source -x pgbouncer_*.dsc src >/dev/null
cd src
./configure --prefix=/usr/local --without-systemd --without-pam >/dev/null
make -j"$(nproc)" >/dev/null
make install >/dev/null
cd / && rm -rf "$work"
echo "pgbouncer: installed $(/usr/local/bin/pgbouncer --version | head -1)"
