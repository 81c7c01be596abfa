#!/usr/bin/env bash
# Runs every test of xmppd. Installs or starts what the tests need when it is
# missing (PostgreSQL; the conformance suite's Python venv and npm packages).
#   ./test.sh            everything
#   ./test.sh --quick    lints and cargo tests only
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

step() { echo; echo "=== $* ==="; }

step "PostgreSQL for the storage tests"
XMPPD_TEST_PG_URL="$(scripts/ensure-postgres.sh)"
export XMPPD_TEST_PG_URL
echo "using $XMPPD_TEST_PG_URL"

step "format and lints"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings

step "cargo tests (unit + integration, SQLite and PostgreSQL)"
cargo test --quiet 2>&1 | tee target/cargo-test.log
grep -q "test result: ok" target/cargo-test.log

if [ "${1:-}" = "--quick" ]; then
  exit 0
fi

if [ -x conformance/run.sh ]; then
  step "conformance: independent clients (slixmpp, @xmpp/client) against the server"
  cargo build --quiet
  XMPPD_BIN="$PWD/target/debug/xmppd" XMPPD_PG_URL="$XMPPD_TEST_PG_URL" conformance/run.sh
fi

if [ -x conformance/browser/run.sh ]; then
  step "browser: Converse.js in headless Chromium over WebSocket, with upload"
  XMPPD_BIN="$PWD/target/debug/xmppd" conformance/browser/run.sh
fi
if [ "${SKIP_FEDERATION:-0}" != 1 ]; then
  step "federation: xmppd with real Prosody and ejabberd over s2s (installs them when missing)"
  trap 'conformance/federation/peers.sh stop >/dev/null 2>&1 || true' EXIT
  conformance/federation/peers.sh start
  XMPPD_BIN="$PWD/target/debug/xmppd" FED_AUTOSTART=0 \
    conformance/.venv/bin/pytest -q -p no:cacheprovider conformance/federation
  conformance/federation/peers.sh stop
  trap - EXIT
fi
echo
echo "all tests passed"
