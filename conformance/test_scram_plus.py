"""SCRAM-SHA-1-PLUS / SCRAM-SHA-256-PLUS with RFC 9266 tls-exporter channel
binding over TLS 1.3 (RFC 5802, RFC 7677).

Neither slixmpp nor @xmpp/client can do tls-exporter (Python's ssl module has
no keying-material exporter), so this drives a small independent SCRAM client
over pyOpenSSL, which exposes SSL_export_keying_material."""

import base64
import hashlib
import hmac
import os
import select
import socket

import pytest

from rawxmpp import NS_SASL, RawStream, has_stream_error, mechanisms_of

SSL = pytest.importorskip("OpenSSL.SSL")

plus = pytest.mark.difference("scram-plus")


class _OsslSocket:
    """Just enough of the socket API over a non-blocking pyOpenSSL connection."""

    def __init__(self, conn, raw: socket.socket):
        self.conn, self.raw = conn, raw
        self._timeout = 10.0

    def settimeout(self, t):
        self._timeout = t

    def _wait(self, readable: bool):
        r, w, _ = select.select([self.raw] if readable else [], [] if readable else [self.raw], [], self._timeout)
        if not r and not w:
            raise socket.timeout()

    def recv(self, n):
        if not self.conn.pending():
            self._wait(True)
        try:
            return self.conn.recv(n)
        except SSL.WantReadError:
            raise socket.timeout() from None
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:
                return b""
            raise ConnectionResetError(str(e)) from None

    def sendall(self, data):
        view = memoryview(data)
        while view:
            try:
                n = self.conn.send(view)
                view = view[n:]
            except SSL.WantWriteError:
                self._wait(False)
            except SSL.WantReadError:
                self._wait(True)

    def close(self):
        try:
            self.raw.close()
        except OSError:
            pass

    def version(self):
        return self.conn.get_protocol_version_name()


class PlusStream(RawStream):
    def _wrap_tls(self) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        raw = self.sock
        raw.setblocking(False)
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(self.domain.encode())
        conn.set_connect_state()
        wrapped = _OsslSocket(conn, raw)
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                wrapped._wait(True)
            except SSL.WantWriteError:
                wrapped._wait(False)
        self.sock = wrapped
        self.tls = True

    @property
    def tls_version(self):
        return self.sock.version() if isinstance(self.sock, _OsslSocket) else None

    def exporter(self) -> bytes:
        return self.sock.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, None)


def _hash(mech: str):
    return hashlib.sha256 if "SHA-256" in mech else hashlib.sha1


def scram(rs: PlusStream, mech: str, user: str, password: str, *, gs2_flag: str,
          cb_data: bytes = b"") -> tuple[bytes, bool]:
    """Run one SCRAM exchange. Returns (final server reply, server signature ok)."""
    h = _hash(mech)
    gs2 = f"{gs2_flag},,"
    cnonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={cnonce}"
    rs.mark()
    rs.send(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>"
            f"{base64.b64encode((gs2 + first_bare).encode()).decode()}</auth>")
    got = rs.read_until_contains(b"</challenge>", b"</failure>", b"<failure/>", b"</stream:error>")
    if b"<challenge" not in got:
        return got, False
    server_first = base64.b64decode(got.split(b">", 1)[1].split(b"<", 1)[0]).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert attrs["r"].startswith(cnonce), "server nonce does not extend ours"
    salt, iters = base64.b64decode(attrs["s"]), int(attrs["i"])
    assert iters >= 4096, f"iteration count {iters} below RFC 7677's minimum"
    cbind = base64.b64encode(gs2.encode() + (cb_data if gs2_flag.startswith("p=") else b"")).decode()
    without_proof = f"c={cbind},r={attrs['r']}"
    salted = hashlib.pbkdf2_hmac(h().name, password.encode(), salt, iters)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    stored_key = h(client_key).digest()
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, h).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_sig = hmac.new(hmac.new(salted, b"Server Key", h).digest(), auth_message, h).digest()
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    rs.mark()
    rs.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final.encode()).decode()}</response>")
    got = rs.read_until(lambda b: b"</success>" in b or b"<success" in b and b"/>" in b
                        or b"</failure>" in b or has_stream_error(b))
    ok = False
    if b"<success" in got:
        payload = got.split(b"<success", 1)[1].split(b">", 1)[1].split(b"<", 1)[0]
        if payload:
            v = base64.b64decode(payload).decode()
            ok = v == "v=" + base64.b64encode(server_sig).decode()
    return got, ok


def stream(server, transport: str) -> tuple[PlusStream, bytes]:
    if transport == "direct-tls":
        rs = PlusStream(server.host, server.tls_port, server.domain, direct_tls=True)
        feats = rs.open_stream()
    else:
        rs = PlusStream(server.host, server.starttls_port, server.domain)
        rs.open_stream()
        feats = rs.starttls()
    assert rs.tls_version == "TLSv1.3"
    return rs, feats


TRANSPORTS = ["starttls", "direct-tls"]


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_independent_scram_client_without_binding(server, mech):
    """Cross-checks this file's SCRAM code (and the server) without -PLUS:
    gs2 flag 'n', server signature verified."""
    acct = server.account("scramn")
    rs, _ = stream(server, "direct-tls")
    with rs:
        got, sig_ok = scram(rs, mech, acct.localpart, acct.password, gs2_flag="n")
        assert b"<success" in got, got
        assert sig_ok, "server signature (v=) missing or wrong"


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_independent_scram_client_wrong_password(server, mech):
    acct = server.account("scramx")
    rs, _ = stream(server, "direct-tls")
    with rs:
        got, _ = scram(rs, mech, acct.localpart, acct.password + "x", gs2_flag="n")
        assert b"<success" not in got
        assert b"not-authorized" in got, got


@plus
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_plus_mechanisms_advertised(server, transport):
    rs, feats = stream(server, transport)
    with rs:
        mechs = mechanisms_of(feats)
        assert "SCRAM-SHA-256-PLUS" in mechs and "SCRAM-SHA-1-PLUS" in mechs, mechs


@plus
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_plus_login_with_tls_exporter(server, transport, mech):
    acct = server.account("plus")
    rs, _ = stream(server, transport)
    with rs:
        got, sig_ok = scram(rs, mech, acct.localpart, acct.password, gs2_flag="p=tls-exporter",
                            cb_data=rs.exporter())
        assert b"<success" in got, got
        assert sig_ok, "server signature (v=) missing or wrong"
        rs.open_stream()
        assert rs.bind("plus") == f"{acct.jid}/plus"


@plus
def test_plus_wrong_binding_refused(server):
    acct = server.account("plusbad")
    rs, _ = stream(server, "direct-tls")
    with rs:
        got, _ = scram(rs, "SCRAM-SHA-256-PLUS", acct.localpart, acct.password, gs2_flag="p=tls-exporter",
                       cb_data=os.urandom(32))
        assert b"<success" not in got, "accepted channel-binding data from another TLS session"
        assert b"not-authorized" in got, got


@plus
def test_downgrade_flag_refused_when_plus_offered(server):
    """RFC 5802 §6: gs2 flag 'y' (client thinks the server lacks channel
    binding) must fail when the server did advertise -PLUS."""
    acct = server.account("ydown")
    rs, _ = stream(server, "direct-tls")
    with rs:
        got, _ = scram(rs, "SCRAM-SHA-256", acct.localpart, acct.password, gs2_flag="y")
        assert b"<success" not in got, "server accepted a 'y' flag although it offers -PLUS"
