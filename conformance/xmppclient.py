"""slixmpp client wrapper for the scenarios: bounded waits, an inbox of every
received stanza, and no automatic subscription handling (the tests drive the
subscription state machine by hand)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout  # noqa: F401  (re-exported for tests)

from harness import Account, Server

TIMEOUT = 10.0  # every await in the suite is bounded by this


class LoginFailed(Exception):
    def __init__(self, condition: str | None, detail: str = ""):
        super().__init__(f"login failed: {condition} {detail}".strip())
        self.condition = condition


class Inbox:
    """Every stanza a client received, in order, with waiting helpers."""

    def __init__(self) -> None:
        self.items: list = []
        self._consumed: set[int] = set()
        self._waiters: list[asyncio.Future] = []

    def add(self, stanza) -> None:
        self.items.append(stanza)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _find(self, pred: Callable):
        for i, st in enumerate(self.items):
            if i not in self._consumed and pred(st):
                return i, st
        return None

    async def wait_for(self, pred: Callable, timeout: float = TIMEOUT, what: str = "stanza"):
        """Return (and consume) the first unconsumed stanza matching pred."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            hit = self._find(pred)
            if hit:
                self._consumed.add(hit[0])
                return hit[1]
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = "\n  ".join(str(s)[:400] for s in self.items[-15:])
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; last received:\n  {seen}")
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                pass

    def mark(self) -> None:
        """Treat everything received so far as consumed."""
        self._consumed.update(range(len(self.items)))

    def matching(self, pred: Callable) -> list:
        return [st for st in self.items if pred(st)]


def is_tag(stanza, name: str) -> bool:
    return stanza.name == name if hasattr(stanza, "name") else False


class Client(slixmpp.ClientXMPP):
    def __init__(self, server: Server, account: Account, *, resource: str | None = None,
                 password: str | None = None, mechanism: str | None = None,
                 direct_tls: bool = False, plugins: tuple[str, ...] = ()):
        jid = account.jid + (f"/{resource}" if resource else "")
        super().__init__(jid, password if password is not None else account.password, sasl_mech=mechanism)
        self.target = server
        self.account = account
        self.direct_tls = direct_tls
        # Accept the self-signed certificate.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        # Exactly one transport; never plaintext.
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.whitespace_keepalive = False
        # The tests drive subscriptions by hand.
        self.auto_authorize = None
        self.auto_subscribe = False
        for p in ("xep_0030", "xep_0199", "xep_0092", "xep_0202", "xep_0054", "xep_0077", *plugins):
            self.register_plugin(p)
        self.plugin["xep_0199"].keepalive = False
        self.plugin["xep_0077"].force_registration = False
        self.inbox = Inbox()
        self.stream_errors: list = []
        self.sasl_failures: list = []
        self._session = self.loop.create_future()
        self._closed = self.loop.create_future()
        # A login failure that arrives after the test stopped waiting is not an error.
        self._session.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.add_filter("in", self._capture)
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("failed_all_auth", self._on_failed_all_auth)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("disconnected", self._on_disconnected)

    # ---------------------------------------------------------------- events
    def _capture(self, stanza):
        self.inbox.add(stanza)
        return stanza

    def _on_session_start(self, _event) -> None:
        if not self._session.done():
            self._session.set_result(True)

    def _on_failed_auth(self, failure) -> None:
        self.sasl_failures.append(failure)

    def _on_failed_all_auth(self, _event=None) -> None:
        if not self._session.done():
            cond = self.sasl_failures[-1]["condition"] if self.sasl_failures else None
            self._session.set_exception(LoginFailed(cond))

    def _on_stream_error(self, err) -> None:
        self.stream_errors.append(err)

    def _on_disconnected(self, reason) -> None:
        if not self._session.done():
            cond = self.sasl_failures[-1]["condition"] if self.sasl_failures else None
            self._session.set_exception(LoginFailed(cond, f"disconnected: {reason}"))
        if not self._closed.done():
            self._closed.set_result(reason)

    # ---------------------------------------------------------------- actions
    async def login(self, *, presence: bool = True, roster: bool = True, priority: int | None = None,
                    show: str | None = None, status: str | None = None,
                    timeout: float = TIMEOUT) -> "Client":
        port = self.target.tls_port if self.direct_tls else self.target.starttls_port
        self.connect(self.target.host, port)
        try:
            await asyncio.wait_for(asyncio.shield(self._session), timeout)
        except asyncio.TimeoutError:
            self.cancel_connection_attempt()
            self.abort()
            raise AssertionError(f"{self.boundjid or self.requested_jid}: no session within {timeout}s") from None
        except LoginFailed:
            self.cancel_connection_attempt()
            raise
        if roster:
            await self.get_roster(timeout=timeout)
        if presence:
            self.send_presence(pshow=show, pstatus=status, ppriority=priority)
        return self

    @property
    def tls_version(self) -> str | None:
        t = self.transport
        obj = t.get_extra_info("ssl_object") if t else None
        return obj.version() if obj else None

    @property
    def sasl_mechanism(self) -> str | None:
        mech = self.plugin["feature_mechanisms"].mech
        return mech.name if mech else None

    async def close(self, timeout: float = TIMEOUT) -> None:
        """Clean disconnect: </stream:stream> and wait for the server to close."""
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=timeout / 2), timeout)
            except asyncio.TimeoutError:
                self.abort()
        self._stop_background()

    def _stop_background(self) -> None:
        # slixmpp keeps its outgoing-filter task alive after a disconnect.
        task = getattr(self, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()

    def drop(self) -> None:
        """Abruptly close the TCP connection (no </stream:stream>, no TLS close_notify)."""
        t = self.transport
        if t is not None:
            sock = t.get_extra_info("socket")
            if sock is not None:
                try:  # make the kernel send RST rather than a graceful FIN
                    import socket as _s
                    import struct
                    sock.setsockopt(_s.SOL_SOCKET, _s.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            t.abort()
        self._stop_background()

    async def wait_closed(self, timeout: float = TIMEOUT):
        try:
            return await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.boundjid}: connection not closed within {timeout}s") from None

    # ---------------------------------------------------------------- waits
    async def wait_message(self, pred: Callable = lambda m: True, what: str = "message", timeout: float = TIMEOUT):
        return await self.inbox.wait_for(lambda s: s.name == "message" and pred(s), timeout, what)

    async def wait_presence(self, pred: Callable = lambda p: True, what: str = "presence", timeout: float = TIMEOUT):
        return await self.inbox.wait_for(lambda s: s.name == "presence" and pred(s), timeout, what)

    async def wait_roster_push(self, pred: Callable = lambda item: True, what: str = "roster push",
                               timeout: float = TIMEOUT):
        """Wait for a roster push whose (single) item satisfies pred(item dict)."""

        def match(s):
            if s.name != "iq" or s["type"] != "set":
                return False
            items = roster_items(s)
            return len(items) == 1 and pred(items[0])

        return await self.inbox.wait_for(match, timeout, what)

    async def iq(self, iq, timeout: float = TIMEOUT):
        return await iq.send(timeout=timeout)

    def presences_from(self, bare: str, ptype: str | None = None) -> list:
        return [s for s in self.inbox.items if s.name == "presence" and s["from"].bare == bare
                and (ptype is None or s["type"] == ptype)]


NS_ROSTER = "jabber:iq:roster"


def roster_items(iq) -> list[dict]:
    """Items of a roster result or push as plain dicts (parsed from the XML)."""
    q = iq.xml.find(f"{{{NS_ROSTER}}}query")
    if q is None:
        return []
    out = []
    for it in q.findall(f"{{{NS_ROSTER}}}item"):
        out.append({
            "jid": it.get("jid"),
            "name": it.get("name"),
            "subscription": it.get("subscription", "none"),
            "ask": it.get("ask"),
            "groups": [g.text or "" for g in it.findall(f"{{{NS_ROSTER}}}group")],
        })
    return out


def roster_ver(iq) -> str | None:
    q = iq.xml.find(f"{{{NS_ROSTER}}}query")
    return None if q is None else q.get("ver")


async def fetch_roster(client: Client, ver: str | None = None):
    """Raw roster get (bypassing slixmpp's cache); returns the result iq."""
    iq = client.make_iq_get(queryxmlns=NS_ROSTER)
    if ver is not None:
        iq.xml.find(f"{{{NS_ROSTER}}}query").set("ver", ver)
    return await iq.send(timeout=TIMEOUT)


async def roster_set(client: Client, jid: str, *, name: str | None = None, groups=(),
                     remove: bool = False):
    iq = client.make_iq_set(sub=None)
    from xml.etree import ElementTree as ET
    q = ET.SubElement(iq.xml, f"{{{NS_ROSTER}}}query")
    it = ET.SubElement(q, f"{{{NS_ROSTER}}}item", {"jid": jid})
    if remove:
        it.set("subscription", "remove")
    if name is not None:
        it.set("name", name)
    for g in groups:
        ET.SubElement(it, f"{{{NS_ROSTER}}}group").text = g
    return await iq.send(timeout=TIMEOUT)


def roster_entry(iq, jid: str) -> dict | None:
    for it in roster_items(iq):
        if it["jid"] == jid:
            return it
    return None


async def connect(server: Server, account: Account, **kw) -> Client:
    """Create a client, log in, fetch the roster and send initial presence."""
    login_kw = {k: kw.pop(k) for k in ("presence", "roster", "priority", "show", "status") if k in kw}
    c = Client(server, account, **kw)
    await c.login(**login_kw)
    return c


async def subscribe_mutually(a: Client, b: Client) -> None:
    """Drive the RFC 6121 handshake a<->b to subscription=both on both sides."""
    for x, y in ((a, b), (b, a)):
        x.send_presence(pto=y.boundjid.bare, ptype="subscribe")
        await y.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare == x.boundjid.bare,
                              "subscribe request")
        y.send_presence(pto=x.boundjid.bare, ptype="subscribed")
        await x.wait_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == y.boundjid.bare,
                              "subscribed")
    for x, y in ((a, b), (b, a)):
        await x.wait_roster_push(lambda it, y=y: it["jid"] == y.boundjid.bare and it["subscription"] == "both",
                                 "roster push subscription=both")


async def close_all(*clients: Client) -> None:
    await asyncio.gather(*(c.close() for c in clients if c is not None), return_exceptions=True)


async def server_roundtrip(client: Client) -> None:
    """Ping the client's own server and wait for the answer.  The server handles
    one session's stanzas in order, so everything the client sent before has
    been processed (routed, stored) when this returns."""
    await client.plugin["xep_0199"].send_ping(client.boundjid.domain, timeout=TIMEOUT)


class Events:
    """Collects every occurrence of one slixmpp event on a client (e.g. a
    plugin's `carbon_received`); wait() for one matching a predicate."""

    def __init__(self, client: Client, name: str):
        self.items: list = []
        self._changed = asyncio.Event()
        self.name = name
        client.add_event_handler(name, self._on)

    def _on(self, payload) -> None:
        self.items.append(payload)
        self._changed.set()

    def matching(self, pred: Callable) -> list:
        return [s for s in self.items if pred(s)]

    async def wait(self, pred: Callable = lambda s: True, what: str = "", timeout: float = TIMEOUT):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for s in self.items:
                if pred(s):
                    return s
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = "\n  ".join(str(s)[:400] for s in self.items[-10:])
                raise AssertionError(f"no {self.name} event {what} within {timeout}s; got:\n  {seen}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
