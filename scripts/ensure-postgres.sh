#!/usr/bin/env bash
# Print a PostgreSQL URL the tests can create databases on.
# Uses the machine's server on 127.0.0.1:5432 when it answers; otherwise
# installs PostgreSQL from Debian if needed and starts a private cluster
# (trust auth, loopback only) under target/pg on port 55432.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

if [ -n "${XMPPD_TEST_PG_URL:-}" ]; then
  echo "$XMPPD_TEST_PG_URL"; exit 0
fi
if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 -U postgres 2>/dev/null \
   && psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  echo "postgres://postgres@127.0.0.1:5432/postgres"; exit 0
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$bindir" ]; then
  echo "ensure-postgres: installing PostgreSQL from Debian" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
data="$here/target/pg/data"
port=55432
run_as=()
if [ "$(id -u)" = 0 ]; then
  # initdb refuses to run as root.
  id postgres >/dev/null 2>&1 || useradd -r -M postgres
  mkdir -p "$here/target/pg"; chown -R postgres "$here/target/pg"
  run_as=(runuser -u postgres --)
fi
if [ ! -f "$data/PG_VERSION" ]; then
  "${run_as[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust >&2
fi
if ! "$bindir/pg_isready" -q -h 127.0.0.1 -p $port; then
  "${run_as[@]}" "$bindir/pg_ctl" -D "$data" -l "$here/target/pg/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k /tmp" start >&2
fi
echo "postgres://postgres@127.0.0.1:$port/postgres"
