"""A deliberately small raw XMPP client on plain `socket` + `ssl`.

Used for the negative tests (stream errors, malformed input, SASL edge cases)
that a well-behaved client library refuses to produce.  Replies are parsed
loosely: we search the received bytes for the element names we expect, but
assertions name the exact RFC 6120 condition.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
from xml.sax.saxutils import escape

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"

DEFAULT_TIMEOUT = 10.0


def insecure_context() -> ssl.SSLContext:
    """TLS context accepting the server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def stream_header(to: str, *, version: str = "1.0", xml_decl: bool = True) -> bytes:
    head = "<?xml version='1.0'?>" if xml_decl else ""
    return (
        f"{head}<stream:stream to='{escape(to)}' version='{version}' "
        f"xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'>"
    ).encode()


_STREAM_ERR_RE = re.compile(
    rb"<([A-Za-z][\w.-]*)(?=[\s/>])[^>]*xmlns=['\"]" + re.escape(NS_STREAMS_ERR.encode()) + rb"['\"]"
)
_STANZA_ERR_RE = re.compile(
    rb"<([A-Za-z][\w.-]*)(?=[\s/>])[^>]*xmlns=['\"]" + re.escape(NS_STANZAS_ERR.encode()) + rb"['\"]"
)


def stream_error_conditions(data: bytes) -> list[str]:
    """Names of the elements in the stream-error namespace (minus <text/>)."""
    return [m.group(1).decode() for m in _STREAM_ERR_RE.finditer(data) if m.group(1) != b"text"]


def stanza_error_conditions(data: bytes) -> list[str]:
    return [m.group(1).decode() for m in _STANZA_ERR_RE.finditer(data) if m.group(1) != b"text"]


_FEATURES_DONE_RE = re.compile(rb"</(?:[\w.-]+:)?features>|<(?:[\w.-]+:)?features(?:\s[^>]*)?/>")


def has_features(data: bytes) -> bool:
    """A complete <stream:features/> (any prefix, or the streams namespace as default)."""
    return _FEATURES_DONE_RE.search(data) is not None


def has_stream_error(data: bytes) -> bool:
    # <stream:error> or <error xmlns='http://etherx.jabber.org/streams'>
    return bool(re.search(rb"<stream:error[\s>]", data)) or bool(
        re.search(rb"<error[^>]*xmlns=['\"]" + re.escape(NS_STREAM.encode()), data)
    )


class RawStream:
    """One TCP connection speaking just enough XMPP to get where a test needs."""

    def __init__(self, host: str, port: int, domain: str, *, direct_tls: bool = False,
                 timeout: float = DEFAULT_TIMEOUT):
        self.host, self.port, self.domain = host, port, domain
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = False
        if direct_tls:
            self._wrap_tls()
        self.buf = b""          # everything received since the last mark()
        self.log = b""          # everything received on this connection
        self.closed = False     # peer closed (EOF/reset)

    # ---------------------------------------------------------------- basics
    def _wrap_tls(self) -> None:
        self.sock = insecure_context().wrap_socket(self.sock, server_hostname=self.domain)
        self.tls = True

    @property
    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def try_send(self, data: bytes | str) -> bool:
        """Send, tolerating a peer that already closed (returns False then)."""
        try:
            self.send(data)
            return True
        except OSError:
            return False

    def mark(self) -> None:
        self.buf = b""

    def _recv_some(self, deadline: float) -> bool:
        """Receive one chunk; False when the peer closed or the deadline passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(min(remaining, 1.0))
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return True
        except ssl.SSLWantReadError:
            return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        self.log += chunk
        return True

    def read_until(self, predicate, timeout: float | None = None) -> bytes:
        """Read until predicate(buf) is true, the peer closes, or the timeout passes.

        Returns the buffer (since the last mark) either way; callers assert on it.
        """
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not predicate(self.buf):
            if self.closed or time.monotonic() >= deadline:
                break
            if not self._recv_some(deadline):
                if self.closed:
                    break
        return self.buf

    def read_until_contains(self, *needles: bytes, timeout: float | None = None) -> bytes:
        return self.read_until(lambda b: any(n in b for n in needles), timeout)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """True when the peer closed the connection within the timeout."""
        self.read_until(lambda b: False, timeout)
        return self.closed

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------- XMPP steps
    def open_stream(self, to: str | None = None, header: bytes | None = None) -> bytes:
        """Send a stream header and read through the stream features."""
        self.mark()
        self.send(header if header is not None else stream_header(to or self.domain))
        return self.read_until(lambda b: has_features(b) or has_stream_error(b))

    def starttls(self) -> bytes:
        """Negotiate STARTTLS and restart the stream; returns the new features."""
        self.mark()
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        got = self.read_until_contains(b"<proceed", b"<failure")
        if b"<proceed" not in got:
            raise AssertionError(f"STARTTLS refused: {got!r}")
        self._wrap_tls()
        return self.open_stream()

    def auth_plain(self, username: str, password: str) -> bytes:
        """SASL PLAIN; returns the <success/> or <failure/> reply (stream restarted on success)."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self.mark()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        got = self.read_until(lambda b: b"<success" in b and (b"</success>" in b or b"/>" in b)
                              or b"</failure>" in b or has_stream_error(b))
        if b"<success" in got:
            self.open_stream()
        return got

    def bind(self, resource: str | None = None) -> str:
        res = f"<resource>{escape(resource)}</resource>" if resource else ""
        self.mark()
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{res}</bind></iq>")
        got = self.read_until_contains(b"</iq>")
        m = re.search(rb"<jid>([^<]+)</jid>", got)
        if not m:
            raise AssertionError(f"bind failed: {got!r}")
        return m.group(1).decode()

    def login(self, username: str, password: str, resource: str | None = "raw",
              starttls: bool = True) -> str:
        """Open, STARTTLS (unless already TLS), PLAIN, bind. Returns the full JID."""
        feats = self.open_stream()
        if not self.tls and starttls:
            feats = self.starttls()
        got = self.auth_plain(username, password)
        if b"<success" not in got:
            raise AssertionError(f"auth failed: {got!r} (features were {feats!r})")
        return self.bind(resource)

    def read_iq_reply(self, iq_id: str, timeout: float | None = None) -> bytes:
        """Read until the complete <iq/> answering iq_id (or a stream error)."""
        pat = re.compile(
            rb"<iq(?=[\s>])[^>]*\sid=['\"]" + re.escape(iq_id.encode()) + rb"['\"][^>]*?(/>|>.*?</iq>)", re.S)
        got = self.read_until(lambda b: pat.search(b) is not None or has_stream_error(b), timeout)
        m = pat.search(got)
        return m.group(0) if m else got

    def stream_error(self, timeout: float | None = None) -> tuple[list[str], bytes]:
        """Wait for a stream error; returns (conditions, bytes received)."""
        got = self.read_until(
            lambda b: has_stream_error(b) and (b"</stream:error>" in b or b"</error>" in b), timeout
        )
        return stream_error_conditions(got), got


def mechanisms_of(features: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb"<mechanism>([^<]+)</mechanism>", features)]
