#!/usr/bin/env bash
# Real Prosody and ejabberd on loopback, each with its own address, domain and
# certificate, federating by default discovery (no SRV record -> the domain's
# A record, port 5269).  See README.md beside this file.
#
#   conformance/federation/peers.sh start    # install if missing, start, wait until ready
#   conformance/federation/peers.sh stop     # stop everything it started
#   conformance/federation/peers.sh status   # what runs, where; exit 0 only when all is up
#   conformance/federation/peers.sh clean    # stop, then delete the state dir
#
#   xmppd.localhost  127.0.0.2   (xmppd, not started here; cert made for it)
#   xmppd2.localhost 127.0.0.5   (a second xmppd for the certificate-policy tests)
#   pr.localhost     127.0.0.3   Prosody 0.12  c2s 5222 (STARTTLS) 5223 (TLS)  s2s 5269
#   ej.localhost     127.0.0.4   ejabberd 23.01 c2s 5222 (STARTTLS) 5223 (TLS) s2s 5269
#   conference.<each of them>    MUC on the same address
#
# Environment:
#   FED_STATE          state dir (default /tmp/xmppd-fed): certs, configs, data, logs, pids
#   FED_CERTS          ca (default): peers present certs signed by the local test CA,
#                      which both trust (SASL EXTERNAL between servers that trust it);
#                      self: peers present self-signed certs (dialback only)
#   FED_LOGLEVEL       debug (default) | info
#   FED_START_TIMEOUT  seconds to wait for readiness (default 90)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
S="${FED_STATE:-/tmp/xmppd-fed}"
CERT_MODE="${FED_CERTS:-ca}"
LOGLEVEL="${FED_LOGLEVEL:-debug}"
START_TIMEOUT="${FED_START_TIMEOUT:-90}"

XD_DOM=xmppd.localhost XD_IP=127.0.0.2
XD2_DOM=xmppd2.localhost XD2_IP=127.0.0.5
PR_DOM=pr.localhost    PR_IP=127.0.0.3
EJ_DOM=ej.localhost    EJ_IP=127.0.0.4
EJ_NODE=xmppdfed@localhost   # Erlang node name of the private ejabberd
EJ_DIST_PORT=24370           # its distribution port (127.0.0.1; no epmd needed)
USERS="alice bob"
PASSWORD=secret

log() { printf 'peers.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get, /etc/hosts, runs the peers as the prosody/ejabberd users)"
case "$CERT_MODE" in self|ca) ;; *) die "FED_CERTS must be self or ca";; esac

PR="$S/prosody" EJ="$S/ejabberd" CERTS="$S/certs"

# ------------------------------------------------------------------ install
ensure_packages() {
  local missing=() p
  for p in prosody ejabberd openssl python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # No recommends: lua-unbound (Prosody's recommended resolver) answers every
  # *.localhost with 127.0.0.1; the etc_hosts plugin below makes it harmless anyway.
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"/tmp/xmppd-fed-apt.log" 2>&1; then
    apt-get update -q >>"/tmp/xmppd-fed-apt.log" 2>&1 || true
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"/tmp/xmppd-fed-apt.log" 2>&1 \
      || { tail -20 /tmp/xmppd-fed-apt.log >&2; die "apt-get install failed (log: /tmp/xmppd-fed-apt.log)"; }
  fi
  disable_system_services
}

# Where an init system lets apt start them, Debian starts its own prosody and
# ejabberd on *:5222/5269/5280.  Stop and disable those (only right after we
# installed the packages: a system instance someone runs on purpose is left alone
# and reported by check_ports).
disable_system_services() {
  local svc
  for svc in prosody ejabberd; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    else
      invoke-rc.d "$svc" stop >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
}

ensure_hosts() {
  local line
  for line in "$XD_IP $XD_DOM conference.$XD_DOM" \
              "$XD2_IP $XD2_DOM conference.$XD2_DOM" \
              "$PR_IP $PR_DOM conference.$PR_DOM" \
              "$EJ_IP $EJ_DOM conference.$EJ_DOM"; do
    local name="${line#* }"; name="${name%% *}"
    if ! grep -qE "^[[:space:]]*${line%% *}[[:space:]].*\b${name//./\\.}\b" /etc/hosts; then
      grep -q "xmppd federation harness" /etc/hosts || echo "# xmppd federation harness (conformance/federation/peers.sh)" >>/etc/hosts
      echo "$line" >>/etc/hosts
    fi
    # getaddrinfo takes the first match: an older line for the name would win
    [ "$(getent ahostsv4 "$name" | awk 'NR==1 {print $1}')" = "${line%% *}" ] \
      || die "/etc/hosts maps $name to something other than ${line%% *}; fix that line"
  done
}

# ------------------------------------------------------------------ certificates
# certs/self/D.{crt,key}: self-signed; certs/ca/D.{crt,key}: signed by certs/ca/ca.crt.
# Each names D and conference.D (subjectAltName DNS), EC P-256, serverAuth+clientAuth.
gen_certs() {
  mkdir -p "$CERTS/self" "$CERTS/ca"
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth"
  if [ ! -f "$CERTS/ca/ca.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=xmppd federation test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$CERTS/ca/ca.key" -out "$CERTS/ca/ca.crt" 2>/dev/null
  fi
  local d
  for d in "$XD_DOM" "$XD2_DOM" "$PR_DOM" "$EJ_DOM"; do
    local san="subjectAltName=DNS:$d,DNS:conference.$d"
    if [ ! -f "$CERTS/self/$d.crt" ]; then
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=$d" -addext "$san" -addext "basicConstraints=critical,CA:FALSE" \
        -addext "extendedKeyUsage=serverAuth,clientAuth" \
        -keyout "$CERTS/self/$d.key" -out "$CERTS/self/$d.crt" 2>/dev/null
    fi
    if [ ! -f "$CERTS/ca/$d.crt" ]; then
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$d" \
        -keyout "$CERTS/ca/$d.key" -out "$CERTS/ca/$d.csr" 2>/dev/null
      openssl x509 -req -in "$CERTS/ca/$d.csr" -CA "$CERTS/ca/ca.crt" -CAkey "$CERTS/ca/ca.key" \
        -CAcreateserial -days 3650 -extfile <(printf '%s\n%s\n' "$san" "$ext") \
        -out "$CERTS/ca/$d.crt" 2>/dev/null
      rm -f "$CERTS/ca/$d.csr"
    fi
  done
  # Throwaway test keys: readable by the prosody and ejabberd users.
  chmod 755 "$CERTS" "$CERTS/self" "$CERTS/ca"
  chmod 644 "$CERTS"/self/* "$CERTS"/ca/*
  chmod 600 "$CERTS/ca/ca.key"
}

cert() { echo "$CERTS/$CERT_MODE/$1.crt"; }
key() { echo "$CERTS/$CERT_MODE/$1.key"; }

# ------------------------------------------------------------------ Prosody
write_prosody() {
  mkdir -p "$PR/data" "$PR/plugins" "$PR/certs"
  cp "$HERE/prosody-plugins/mod_etc_hosts.lua" "$PR/plugins/"
  # Prosody 0.12 picks SNI certificates (direct TLS, the MUC host) from a
  # directory, indexed by the names in each certificate.
  cp "$(cert $PR_DOM)" "$PR/certs/$PR_DOM.crt"
  cp "$(key $PR_DOM)" "$PR/certs/$PR_DOM.key"
  cat >"$PR/prosody.cfg.lua" <<EOF
-- written by conformance/federation/peers.sh (certificates: $CERT_MODE)
daemonize = false
pidfile = "$PR/prosody.pid"
data_path = "$PR/data"
plugin_paths = { "$PR/plugins" }
log = { $LOGLEVEL = "$PR/prosody.log" }
certificates = "$PR/certs"

interfaces = { "$PR_IP" }
local_interfaces = { "$PR_IP" }
c2s_ports = { 5222 }
c2s_direct_tls_ports = { 5223 }
s2s_ports = { 5269 }
s2s_direct_tls_ports = { }
http_ports = { }
https_ports = { }
component_ports = { }

c2s_require_encryption = true
s2s_require_encryption = true   -- TLS on s2s (STARTTLS), certificate not necessarily valid
s2s_secure_auth = false         -- accept dialback when a peer's certificate cannot be verified
-- trust the local test CA (certs/ca/ca.crt): certificates it signed authenticate by SASL EXTERNAL
ssl = { cafile = "$CERTS/ca/ca.crt" }

authentication = "internal_hashed"
storage = "internal"
allow_registration = true
min_seconds_between_registrations = 0
-- mod_limits is not loaded: no rate limits

modules_enabled = {
  "etc_hosts";  -- s2s names listed in /etc/hosts resolved from it (see the plugin)
  "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix"; "register";
  "version"; "time"; "uptime"; "private"; "vcard_legacy"; "offline"; "carbons";
}

VirtualHost "$PR_DOM"
  ssl = { certificate = "$(cert $PR_DOM)"; key = "$(key $PR_DOM)"; cafile = "$CERTS/ca/ca.crt" }

Component "conference.$PR_DOM" "muc"
  ssl = { certificate = "$(cert $PR_DOM)"; key = "$(key $PR_DOM)"; cafile = "$CERTS/ca/ca.crt" }
  restrict_room_creation = false
EOF
  chown -R prosody:prosody "$PR"
}

as_prosody() { runuser -u prosody -- "$@"; }

start_prosody() {
  if pid_alive "$PR/prosody.pid"; then return 0; fi
  local u
  for u in $USERS; do   # offline registration (internal storage), idempotent
    as_prosody prosodyctl --config "$PR/prosody.cfg.lua" register "$u" "$PR_DOM" "$PASSWORD" \
      >>"$PR/prosodyctl.log" 2>&1 || die "prosodyctl register $u failed (see $PR/prosodyctl.log)"
  done
  setsid runuser -u prosody -- prosody --config "$PR/prosody.cfg.lua" \
    </dev/null >>"$PR/stdout.log" 2>&1 &
}

# ------------------------------------------------------------------ ejabberd
write_ejabberd() {
  mkdir -p "$EJ/conf" "$EJ/spool" "$EJ/logs"
  # A private ejabberdctl.cfg (ejabberdctl --config-dir): /etc/ejabberd is never read.
  cat >"$EJ/conf/ejabberdctl.cfg" <<EOF
# written by conformance/federation/peers.sh
ERLANG_NODE=$EJ_NODE
ERL_DIST_PORT=$EJ_DIST_PORT
INET_DIST_INTERFACE=127.0.0.1
EJABBERD_PID_PATH=$EJ/ejabberd.pid
EJABBERD_CONFIG_PATH=$EJ/conf/ejabberd.yml
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EOF
  # ejabberdctl sets ERL_INETRC=<config dir>/inetrc.  ejabberd 23.01 looks up
  # _xmpps-server/_xmpp-server SRV records with inet_res (DNS only: the name
  # servers of /etc/resolv.conf) and, when there are none, the domain's addresses
  # with getaddrinfo (so /etc/hosts), port 5269.  Nothing to change: this is
  # Debian's /etc/ejabberd/inetrc, minus its "hostalias" line.
  cat >"$EJ/conf/inetrc" <<EOF
%% written by conformance/federation/peers.sh
{lookup, ["file", "native"]}.
{file, resolv, "/etc/resolv.conf"}.
EOF
  cat >"$EJ/conf/ejabberd.yml" <<EOF
# written by conformance/federation/peers.sh (certificates: $CERT_MODE)
hosts:
  - $EJ_DOM
loglevel: $LOGLEVEL
log_rotate_count: 0
certfiles:
  - "$(cert $EJ_DOM)"
  - "$(key $EJ_DOM)"
# trust the local test CA: certificates it signed authenticate by SASL EXTERNAL
ca_file: "$CERTS/ca/ca.crt"

listen:
  -
    port: 5222
    ip: "$EJ_IP"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: 262144
    shaper: none
    access: c2s
    backlog: 1024
  -
    port: 5223
    ip: "$EJ_IP"
    module: ejabberd_c2s
    tls: true
    max_stanza_size: 262144
    shaper: none
    access: c2s
    backlog: 1024
  -
    port: 5269
    ip: "$EJ_IP"
    module: ejabberd_s2s_in
    max_stanza_size: 524288
    shaper: none
    backlog: 1024

# s2s: STARTTLS when offered, certificate not necessarily valid; dialback
# (mod_s2s_dialback) authenticates a peer whose certificate cannot be verified.
s2s_use_starttls: optional
s2s_access: s2s
outgoing_s2s_families:
  - ipv4
outgoing_s2s_ipv4_address: "$EJ_IP"
# bounded SRV lookups (they fail for *.localhost; a resolver that times out
# instead of answering NXDOMAIN delays the first connection by 2 x 3 s)
s2s_dns_timeout: 3
s2s_dns_retries: 1
s2s_max_retry_delay: 5

auth_method: internal
registration_timeout: infinity

acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
  register:
    allow: all
  muc_create:
    allow: all
shaper_rules:
  max_user_sessions: 100
  max_user_offline_messages: 5000
  c2s_shaper: none
  s2s_shaper: none

modules:
  mod_adhoc: {}
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_register:
    access: register
    ip_access: all
  mod_s2s_dialback: {}
  mod_offline: {}
  mod_version:
    show_os: false
  mod_vcard: {}
  mod_last: {}
  mod_carboncopy: {}
  mod_time: {}
  mod_muc:
    host: "conference.$EJ_DOM"
    access: all
    access_create: muc_create
    access_persistent: muc_create
    access_admin: none
    history_size: 20
EOF
  chown -R ejabberd:ejabberd "$EJ"
}

ejctl() {
  ejabberdctl --config-dir "$EJ/conf" --spool "$EJ/spool" --logs "$EJ/logs" "$@"
}

start_ejabberd() {
  if pid_alive "$EJ/ejabberd.pid"; then return 0; fi
  setsid bash -c "$(declare -f ejctl); EJ='$EJ'; ejctl foreground" \
    </dev/null >>"$EJ/logs/stdout.log" 2>&1 &
  echo $! >"$EJ/wrapper.pid"   # bash -> su -> beam.smp; ejabberd.pid is the VM's own
}

register_ejabberd_users() {
  local u out
  for u in $USERS; do
    out="$(ejctl register "$u" "$EJ_DOM" "$PASSWORD" 2>&1)" \
      || grep -q "already registered" <<<"$out" \
      || die "ejabberdctl register $u failed: $out"
  done
}

# ------------------------------------------------------------------ readiness
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# probe KIND HOST PORT DOMAIN: c2s (STARTTLS port), tls (direct TLS) and s2s answer a
# stream header with <stream:features>.  Exit 0 if so.
probe() {
  python3 - "$@" <<'EOF'
import socket, sys
kind, host, port, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
try:
    ns = "jabber:server' xmlns:db='jabber:server:dialback" if kind == "s2s" else "jabber:client"
    s = socket.create_connection((host, port), timeout=3)
    if kind == "tls":  # XEP-0368 direct TLS, SNI = the domain, any certificate
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname=name)
    s.sendall((f"<?xml version='1.0'?><stream:stream to='{name}' version='1.0' xmlns='{ns}' "
               "xmlns:stream='http://etherx.jabber.org/streams'>").encode())
    buf = b""
    while b"features" not in buf and len(buf) < 65536:
        d = s.recv(4096)
        if not d:
            break
        buf += d
    s.close()
    sys.exit(0 if b"features" in buf else 1)
except OSError:
    sys.exit(1)
EOF
}

ENDPOINTS="c2s:$PR_IP:5222:$PR_DOM tls:$PR_IP:5223:$PR_DOM s2s:$PR_IP:5269:$PR_DOM
c2s:$EJ_IP:5222:$EJ_DOM tls:$EJ_IP:5223:$EJ_DOM s2s:$EJ_IP:5269:$EJ_DOM"

endpoint_up() {  # kind:host:port:domain
  local kind host port dom
  IFS=: read -r kind host port dom <<<"$1"
  probe "$kind" "$host" "$port" "$dom" >/dev/null 2>&1
}

wait_ready() {
  local t0=$SECONDS e pending
  while :; do
    pending=""
    for e in $ENDPOINTS; do endpoint_up "$e" || pending="$pending $e"; done
    [ -z "$pending" ] && return 0
    if [ $((SECONDS - t0)) -ge 15 ]; then   # both write their pid file within seconds
      pid_alive "$PR/prosody.pid" || die "Prosody is not running (logs: $PR/prosody.log $PR/stdout.log)"
      pid_alive "$EJ/ejabberd.pid" || die "ejabberd is not running (logs: $EJ/logs/)"
    fi
    [ $((SECONDS - t0)) -lt "$START_TIMEOUT" ] || die "not ready after ${START_TIMEOUT}s:$pending (logs under $S)"
    sleep 0.5
  done
}

# Refuse to start when something else holds one of our ports (e.g. a system
# prosody/ejabberd or xmppd listening on *:5222).
check_ports() {
  local busy
  busy="$(ss -Htlnp 2>/dev/null | awk '{print $4, $6}' \
    | grep -E "^(0\.0\.0\.0|\*|\[::\]|127\.0\.0\.[345]):(5222|5223|5269|5280) " || true)"
  busy="$(grep -vE "^127\.0\.0\.3:.*prosody|^127\.0\.0\.4:.*beam" <<<"$busy" || true)"
  [ -z "$busy" ] || die "ports needed by the peers are taken:
$busy
(stop that server, e.g. a system instance: service prosody stop / ejabberdctl stop)"
}

# ------------------------------------------------------------------ commands
cmd_start() {
  local t0=$SECONDS
  ensure_packages
  ensure_hosts
  mkdir -p "$S" && chmod 755 "$S"
  if ! pid_alive "$PR/prosody.pid" && ! pid_alive "$EJ/ejabberd.pid"; then
    check_ports
  fi
  gen_certs
  if [ -f "$S/.certs" ] && [ "$(cat "$S/.certs")" != "$CERT_MODE" ] \
      && { pid_alive "$PR/prosody.pid" || pid_alive "$EJ/ejabberd.pid"; }; then
    die "running with FED_CERTS=$(cat "$S/.certs"); stop first to switch to $CERT_MODE"
  fi
  echo "$CERT_MODE" >"$S/.certs"
  # From here on a failure stops whatever runs (logs stay in the state dir).
  trap 'log "start failed; stopping the peers (logs kept under $S)"; cmd_stop' EXIT
  pid_alive "$PR/prosody.pid" || write_prosody
  pid_alive "$EJ/ejabberd.pid" || write_ejabberd
  start_prosody
  start_ejabberd
  wait_ready
  register_ejabberd_users
  trap - EXIT
  log "ready in $((SECONDS - t0))s (certificates: $CERT_MODE)"
  cmd_status >&2 || true
}

stop_pid() {  # pidfile name: TERM, wait up to 15 s, then KILL
  local f="$1" name="$2" pid i
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid="$(cat "$f")"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop on SIGTERM; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cmd_stop() {
  set +e   # best effort: stop everything even if one step fails
  if pid_alive "$EJ/ejabberd.pid"; then   # a clean stop first (it removes its pid file)
    local pid i; pid="$(cat "$EJ/ejabberd.pid")"
    timeout 30 bash -c "$(declare -f ejctl); EJ='$EJ'; ejctl stop" >/dev/null 2>&1 || true
    for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "$pid" >"$EJ/ejabberd.pid"; fi
  fi
  stop_pid "$EJ/ejabberd.pid" ejabberd
  stop_pid "$EJ/wrapper.pid" "ejabberdctl wrapper"   # gone with the VM, normally
  stop_pid "$PR/prosody.pid" prosody
  log "stopped"
}

cmd_status() {
  local rc=0 e
  printf '%-9s %s\n' prosody "$(pid_alive "$PR/prosody.pid" && echo "pid $(cat "$PR/prosody.pid")" || echo down)"
  printf '%-9s %s\n' ejabberd "$(pid_alive "$EJ/ejabberd.pid" && echo "pid $(cat "$EJ/ejabberd.pid")" || echo down)"
  for e in $ENDPOINTS; do
    if endpoint_up "$e"; then printf '  up    %s\n' "$e"; else printf '  DOWN  %s\n' "$e"; rc=1; fi
  done
  cat <<EOF
state:    $S (certificates: $(cat "$S/.certs" 2>/dev/null || echo "$CERT_MODE"))
CA:       $CERTS/ca/ca.crt
xmppd:    $XD_DOM -> $XD_IP; cert $CERTS/self/$XD_DOM.crt (self-signed) or $CERTS/ca/$XD_DOM.crt (CA), keys beside
users:    $(for u in $USERS; do printf '%s@%s %s@%s ' "$u" "$PR_DOM" "$u" "$EJ_DOM"; done)(password: $PASSWORD)
logs:     $PR/prosody.log $EJ/logs/ejabberd.log
EOF
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  clean) cmd_stop; rm -rf "$S"; log "removed $S" ;;
  *) echo "usage: $0 start|stop|status|clean" >&2; exit 2 ;;
esac
