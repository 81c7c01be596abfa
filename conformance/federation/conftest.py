"""Federation tests: Prosody and ejabberd run by peers.sh, their logs attached to
failing tests.

The `peers` fixture uses peers that already run (`peers.sh start` beforehand), or
starts them and stops them again at the end of the session (FED_AUTOSTART=0:
fail instead; FED_KEEP_PEERS=1: leave the ones it started running).  The main
conformance run does not collect this directory (norecursedirs in pytest.ini);
run it by path:  conformance/.venv/bin/pytest conformance/federation
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness import LOOPBACK, Account, Server

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers.sh"
STATE = Path(os.environ.get("FED_STATE", "/tmp/xmppd-fed"))
PASSWORD = "secret"  # alice and bob on each peer (peers.sh)
LOGS = {
    "prosody": STATE / "prosody" / "prosody.log",
    "ejabberd": STATE / "ejabberd" / "logs" / "ejabberd.log",
}


class Peer(Server):
    """A peer server as the slixmpp wrapper (xmppclient.Client) sees it."""

    def __init__(self, kind: str, domain: str, host: str, log: Path):
        self.kind = kind
        self.domain = domain
        self.host = host or LOOPBACK
        self.starttls_port = 5222
        self.tls_port = 5223
        self._log = log

    def account(self, hint: str = "alice") -> Account:
        return Account(hint, self.domain, PASSWORD)

    def log_path(self) -> Path:
        return self._log


def _peers(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(PEERS), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def peers():
    started = False
    if _peers("status", timeout=60).returncode != 0:
        if os.environ.get("FED_AUTOSTART", "1") == "0":
            pytest.fail("the peers are not running (conformance/federation/peers.sh start)", pytrace=False)
        cp = _peers("start", timeout=900)  # a first start installs the packages
        if cp.returncode != 0:
            pytest.fail(f"peers.sh start failed:\n{cp.stderr[-6000:]}", pytrace=False)
        started = True
    yield {
        "prosody": Peer("prosody", "pr.localhost", "127.0.0.3", LOGS["prosody"]),
        "ejabberd": Peer("ejabberd", "ej.localhost", "127.0.0.4", LOGS["ejabberd"]),
    }
    if started and os.environ.get("FED_KEEP_PEERS") != "1":
        _peers("stop", timeout=120)


@pytest.fixture
def pr(peers) -> Peer:
    return peers["prosody"]


@pytest.fixture
def ej(peers) -> Peer:
    return peers["ejabberd"]


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def _log_offsets(request):
    request.node._fed_log_offsets = {name: _size(p) for name, p in LOGS.items()}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    offsets = getattr(item, "_fed_log_offsets", None)
    if not offsets or not rep.failed:
        return
    for name, path in LOGS.items():
        try:
            with open(path, "rb") as f:
                f.seek(offsets[name])
                data = f.read()
        except OSError:
            continue
        if len(data) > 30000:
            data = b"[... cut ...]\n" + data[-30000:]
        if data:
            rep.sections.append((f"{name} log during this test ({rep.when})", data.decode("utf-8", "replace")))


# ------------------------------------------------------------------ xmppd
XMPPD_DOMAIN = "xmppd.localhost"
XMPPD_HOST = "127.0.0.2"
XMPPD2_DOMAIN = "xmppd2.localhost"  # a second xmppd, for the certificate-policy tests
XMPPD2_HOST = "127.0.0.5"
XMPPD_BIN = Path(os.environ.get("XMPPD_BIN", Path(__file__).resolve().parents[2] / "target" / "debug" / "xmppd"))
CA_FILE = STATE / "certs" / "ca" / "ca.crt"


def cert_mode() -> str:
    """What the running peers present: "ca" (test-CA-signed) or "self"."""
    try:
        return (STATE / ".certs").read_text().strip()
    except OSError:
        return os.environ.get("FED_CERTS", "ca")


class Xmppd(Peer):
    """An xmppd beside the peers (c2s 5222, s2s 5269, HTTP 5280 on its address)."""

    def metrics(self) -> dict[str, float]:
        import urllib.request
        with urllib.request.urlopen(f"http://{self.host}:5280/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def s2s_auth(self, direction: str, method: str) -> float:
        return self.metrics().get(
            f'xmppd_s2s_authenticated_total{{direction="{direction}",method="{method}"}}', 0)


@contextlib.contextmanager
def run_xmppd(d: Path, domain: str, host: str, certs: Path, s2s_extra: str = ""):
    """Run xmppd serving `domain` on `host` with the certificate in `certs`;
    users alice and bob. Yields an Xmppd; stops it afterwards."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "xmppd.toml"
    cfg.write_text(f"""
hosts = ["{domain}"]
data_dir = "{d / 'data'}"
log_level = "debug"
[[listeners]]
address = "{host}"
port = 5222
tls = "starttls"
[[certificates]]
cert = "{certs / (domain + '.crt')}"
key = "{certs / (domain + '.key')}"
[http]
listeners = [{{ address = "{host}", port = 5280, tls = false }}]
[s2s]
address = "{host}"
port = 5269
connect_timeout = 15
{s2s_extra}
""")
    for user in ("alice", "bob"):
        subprocess.run([str(XMPPD_BIN), "--config", str(cfg), "user", "add", f"{user}@{domain}", "--password", PASSWORD],
                       check=True, capture_output=True, timeout=60)
    log = d / "xmppd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(XMPPD_BIN), "--config", str(cfg), "serve"],
                                stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            for port in (5269, 5222, 5280):
                socket.create_connection((host, port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"xmppd did not start:\n{log.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.1)
    LOGS[domain] = log
    try:
        yield Xmppd("xmppd", domain, host, log)
    finally:
        LOGS.pop(domain, None)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def xm(peers, tmp_path_factory):
    """xmppd.localhost beside the peers. With the peers on test-CA certificates
    (the default) it trusts that CA, presents a CA-signed certificate and
    requires valid certificates: every stream authenticates by SASL EXTERNAL."""
    ca = cert_mode() == "ca"
    extra = f'ca_files = ["{CA_FILE}"]\nrequire_valid_certificates = {"true" if ca else "false"}'
    with run_xmppd(tmp_path_factory.mktemp("xmppd-fed"), XMPPD_DOMAIN, XMPPD_HOST,
                   STATE / "certs" / cert_mode(), extra) as x:
        yield x


# ------------------------------------------------------------------ raw s2s streams
FEATURES_END = (b"</stream:features>", b"<stream:features/>")


def read_until(sock, needle, limit: float = 10.0) -> bytes:
    """Bytes from `sock` until one of `needle` (bytes or a tuple) appears, EOF
    or `limit` seconds."""
    sock.settimeout(limit)
    data = b""
    needles = needle if isinstance(needle, tuple) else (needle,)
    while not any(n in data for n in needles):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def raw_s2s_stream(server, claimed: str, cert: tuple[Path, Path] | None = None):
    """A hand-made server stream to `server` that claims to come from
    `claimed`: header, STARTTLS (presenting `cert`, if given), header again.
    Returns the TLS socket; the post-TLS features are still to be read."""
    import ssl
    header = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
              f"from='{claimed}' to='{server.domain}' version='1.0'>").encode()
    raw = socket.create_connection((server.host, 5269), timeout=10)
    raw.sendall(header)
    assert b"starttls" in read_until(raw, b"</stream:features>")
    raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert b"proceed" in read_until(raw, b"proceed")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    tls = ctx.wrap_socket(raw, server_hostname=server.domain)
    tls.sendall(header)
    return tls
