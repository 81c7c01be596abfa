#!/usr/bin/env bash
# Real-browser interop test: Converse.js in Debian's headless Chromium (driven
# by playwright-core) against xmppd over WebSocket, with a second user on TCP.
#
#   conformance/browser/run.sh            # against $XMPPD_BIN (default <repo>/target/debug/xmppd)
#
# Installs what is missing (Debian's chromium, node_modules via npm ci), then
# runs `node --test`. Exits non-zero if anything failed (2: setup failed).
# Artifacts of the last run beside this script (git-ignored): last-run.png,
# last-run-ws.log, last-run-console.log, last-run-bob.log, last-run-xmppd.log.
# Environment: XMPPD_BIN, CHROMIUM_BIN (default /usr/bin/chromium),
# BROWSER_STEP_TIMEOUT_MS (default 20000), XMPPD_LOG_LEVEL (default debug),
# XMPPD_KEEP_TMP=1 (keep the server's temp dir).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

log() { printf '\n==== %s ====\n' "$*"; }

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_BIN" ]; then
  if [ "$CHROMIUM_BIN" != /usr/bin/chromium ]; then
    echo "run.sh: CHROMIUM_BIN=$CHROMIUM_BIN is not executable" >&2
    exit 2
  fi
  log "installing Debian's chromium"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
    { echo "run.sh: could not install chromium (apt-get install chromium)" >&2; exit 2; }
fi
export CHROMIUM_BIN

if [ ! -f node_modules/playwright-core/package.json ] || [ ! -f node_modules/converse.js/package.json ] ||
   [ ! -f node_modules/@xmpp/client/package.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error || { echo "run.sh: npm ci failed" >&2; exit 2; }
fi

XMPPD_BIN="${XMPPD_BIN:-$(cd "$HERE/../.." && pwd)/target/debug/xmppd}"
if [ ! -x "$XMPPD_BIN" ]; then
  echo "run.sh: xmppd binary not found at $XMPPD_BIN (build it, or set XMPPD_BIN)" >&2
  exit 2
fi
# Run a private copy, so a rebuild during the run cannot swap the binary.
SNAPDIR="$(mktemp -d /tmp/xmppd-browser-bin.XXXXXX)"
trap 'rm -rf "$SNAPDIR"' EXIT
cp "$XMPPD_BIN" "$SNAPDIR/xmppd" || exit 2
echo "xmppd under test: $XMPPD_BIN ($("$SNAPDIR/xmppd" --version 2>/dev/null || echo 'no --version'))"
echo "browser: $("$CHROMIUM_BIN" --version 2>/dev/null | head -1)"
export XMPPD_BIN="$SNAPDIR/xmppd"
# bob connects over STARTTLS to xmppd's self-signed certificate.
export NODE_TLS_REJECT_UNAUTHORIZED=0
export NODE_NO_WARNINGS=1

log "Converse.js in headless Chromium against xmppd (node --test)"
node --test converse.test.mjs
rc=$?
[ -f last-run.png ] && echo "screenshot: $HERE/last-run.png"
exit $rc
