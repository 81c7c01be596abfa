#!/usr/bin/env bash
# Conformance suite runner.
#
#   conformance/run.sh                 # against $XMPPD_BIN (default target/debug/xmppd),
#                                      # once with SQLite and once with PostgreSQL
#   conformance/run.sh -k presence     # extra arguments go to pytest
#   conformance/run.sh --prosody       # reference run against Debian's Prosody
#   XMPP_TARGET=external conformance/run.sh   # against a server described by XMPP_* (README.md)
#
# Installs what is missing (a venv in conformance/.venv, node_modules via npm ci)
# and exits non-zero if anything failed.  Environment:
#   XMPPD_BIN        server binary (default: <repo>/target/debug/xmppd)
#   XMPPD_STORAGES   storages to run (default: "sqlite postgres")
#   XMPPD_PG_URL     admin URL for creating scratch databases
#                    (default: postgres://postgres@127.0.0.1:5432/postgres)
#   SKIP_JS=1        skip the @xmpp/client scenarios;  SKIP_PY=1 skip pytest
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

log() { printf '\n==== %s ====\n' "$*"; }

# ------------------------------------------------------------------ install
ensure_python() {
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/.requirements.installed; then
    log "installing Python requirements into conformance/.venv"
    [ -x .venv/bin/python ] || "$py" -m venv .venv || return 1
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt || return 1
    cp requirements.txt .venv/.requirements.installed
  fi
}

ensure_node() {
  if [ ! -f node_modules/@xmpp/client/package.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "installing npm packages (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error || return 1
  fi
}

ensure_postgres() {
  local url="${XMPPD_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  if .venv/bin/python - "$url" <<'EOF' 2>/dev/null; then return 0; fi
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=3).close()
EOF
  # Best effort: start a local Debian cluster if one is installed but down.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    log "PostgreSQL not reachable; trying to start the local cluster"
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do
      pg_ctlcluster "$ver" "$name" start 2>/dev/null || true
    done
    sleep 2
    .venv/bin/python - "$url" <<'EOF' && return 0
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=5).close()
EOF
  fi
  echo "run.sh: PostgreSQL at $url is not reachable (set XMPPD_PG_URL)" >&2
  return 1
}

# ------------------------------------------------------------------ runs
rc=0
run_py() {   # extra pytest args...
  [ "${SKIP_PY:-0}" = 1 ] && return 0
  .venv/bin/python -m pytest -p no:cacheprovider "$@" || rc=1
}
run_js() {   # extra harness args...
  [ "${SKIP_JS:-0}" = 1 ] && return 0
  .venv/bin/python harness.py run "$@" -- node --test js/ || rc=1
}

ensure_python || { echo "run.sh: Python setup failed" >&2; exit 2; }
if [ "${SKIP_JS:-0}" != 1 ]; then
  ensure_node || { echo "run.sh: npm setup failed" >&2; exit 2; }
fi

if [ "${1:-}" = "--prosody" ]; then
  shift
  command -v prosody >/dev/null 2>&1 || { echo "run.sh: prosody not installed (apt-get install prosody)" >&2; exit 2; }
  PDIR="$(mktemp -d /tmp/conformance-prosody.XXXXXX)"
  chmod 755 "$PDIR"   # the prosody user must reach its directory
  trap '.venv/bin/python tools/prosody.py stop --dir "$PDIR" >/dev/null 2>&1; rm -rf "$PDIR"' EXIT
  log "Prosody, registration closed"
  .venv/bin/python tools/prosody.py start --dir "$PDIR/closed" || exit 2
  eval "$(.venv/bin/python tools/prosody.py env --dir "$PDIR/closed")"
  run_py "$@"
  run_js
  .venv/bin/python tools/prosody.py stop --dir "$PDIR/closed"
  log "Prosody, registration open (test_register.py)"
  .venv/bin/python tools/prosody.py start --dir "$PDIR/open" --registration-open || exit 2
  eval "$(.venv/bin/python tools/prosody.py env --dir "$PDIR/open")"
  run_py test_register.py "$@"
  .venv/bin/python tools/prosody.py stop --dir "$PDIR/open"
  exit $rc
fi

if [ "${XMPP_TARGET:-xmppd}" = "external" ]; then
  log "external server ${XMPP_HOST:-127.0.0.1}:${XMPP_STARTTLS_PORT:-5222}"
  run_py "$@"
  run_js
  exit $rc
fi

export XMPPD_BIN="${XMPPD_BIN:-$(cd "$HERE/.." && pwd)/target/debug/xmppd}"
if [ ! -x "$XMPPD_BIN" ]; then
  echo "run.sh: xmppd binary not found at $XMPPD_BIN (build it, or set XMPPD_BIN)" >&2
  exit 2
fi

# Run a private copy, so a rebuild in the middle of the run cannot swap binaries
# between (or during) the two storage passes.
SNAPDIR="$(mktemp -d /tmp/xmppd-conformance-bin.XXXXXX)"
trap 'rm -rf "$SNAPDIR"' EXIT
cp "$XMPPD_BIN" "$SNAPDIR/xmppd" || exit 2
echo "xmppd under test: $XMPPD_BIN ($("$SNAPDIR/xmppd" --version 2>/dev/null || echo 'no --version'))"
export XMPPD_BIN="$SNAPDIR/xmppd"

for storage in ${XMPPD_STORAGES:-sqlite postgres}; do
  if [ "$storage" = postgres ]; then
    ensure_postgres || { rc=1; continue; }
  fi
  export XMPPD_STORAGE="$storage"
  log "xmppd, storage=$storage: pytest"
  run_py "$@"
  log "xmppd, storage=$storage: @xmpp/client (node --test)"
  run_js
done
exit $rc
