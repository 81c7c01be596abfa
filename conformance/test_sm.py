"""XEP-0198 stream management with slixmpp's xep_0198 plugin: enable with
resumption, acknowledgements both ways, resumption after an abrupt TCP drop
(the same client object keeps the plugin state and resumes), nothing lost or
duplicated across it; and, on a server with a short `[c2s] resume_timeout`,
what was never acknowledged goes to offline storage and arrives at the next
normal login."""

import asyncio
from collections import Counter

import pytest

import harness
from xmppclient import TIMEOUT, Client, close_all, connect, server_roundtrip

NS_SM = "urn:xmpp:sm:3"
SHORT_RESUME_TIMEOUT = 2  # seconds; only the server of the *_after_timeout tests


class SmClient(Client):
    """A slixmpp client with xep_0198 whose sm events can be awaited."""

    def __init__(self, server, account, **kw):
        super().__init__(server, account, plugins=("xep_0198", "xep_0203"), **kw)
        self.sm = self.plugin["xep_0198"]
        self.sm.window = 1000  # the tests ask for acks explicitly
        self.sm_enabled = self.loop.create_future()
        self.add_event_handler("sm_enabled", self._on_enabled)

    def _on_enabled(self, stanza):
        if not self.sm_enabled.done():
            self.sm_enabled.set_result(stanza)

    async def login_sm(self, **kw) -> "SmClient":
        await self.login(**kw)
        enabled = await asyncio.wait_for(asyncio.shield(self.sm_enabled), TIMEOUT)
        assert enabled is not None
        return self

    async def wait_acked(self, what: str = "all sent stanzas acked"):
        """Ask for an ack and wait until the server's h covers everything sent."""
        # slixmpp writes <r/> directly, ahead of stanzas still in its send
        # queue: a round trip first, so the <r/> comes after all of them.
        await server_roundtrip(self)
        self.sm.request_ack()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while self.sm.unacked_queue or self.sm.last_ack != self.sm.seq:
            if loop.time() > deadline:
                raise AssertionError(f"{what}: last_ack={self.sm.last_ack} seq={self.sm.seq} "
                                     f"unacked={len(self.sm.unacked_queue)}")
            await asyncio.sleep(0.02)

    async def resume(self) -> None:
        """Reconnect and resume the previous stream (XEP-0198 §5)."""
        assert self.sm.sm_id, "no stream management id to resume"
        loop = asyncio.get_running_loop()
        resumed = loop.create_future()

        def ok(stanza):
            if not resumed.done():
                resumed.set_result(stanza)

        def failed(stanza):
            if not resumed.done():
                resumed.set_exception(AssertionError(f"resumption refused: {stanza}"))

        def bound(_event):
            if not resumed.done():
                resumed.set_exception(AssertionError("client bound a new session instead of resuming"))

        self.add_event_handler("session_resumed", ok)
        self.add_event_handler("sm_failed", failed)
        self.add_event_handler("session_bind", bound)
        self._closed = self.loop.create_future()
        port = self.target.tls_port if self.direct_tls else self.target.starttls_port
        self.connect(self.target.host, port)
        try:
            await asyncio.wait_for(resumed, TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.boundjid}: stream not resumed within {TIMEOUT}s") from None
        finally:
            self.del_event_handler("session_resumed", ok)
            self.del_event_handler("sm_failed", failed)
            self.del_event_handler("session_bind", bound)


async def until(cond, what: str):
    """Poll a client-side condition (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.01)


def bodies(client, prefix: str) -> list[str]:
    return [s["body"] for s in client.inbox.items
            if s.name == "message" and s["type"] != "error" and s["body"].startswith(prefix)]


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def _short_resume_server():
    if harness.target() != "xmppd":
        pytest.skip("needs a server configured with a short [c2s] resume_timeout")
    try:
        srv = harness.start_server(config={"c2s": {"resume_timeout": SHORT_RESUME_TIMEOUT}})
    except harness.HarnessError as e:
        pytest.fail(f"could not start the server: {e}", pytrace=False)
    yield srv
    srv.stop()


@pytest.fixture
def short_server(request, _short_resume_server):
    """The short-timeout server, watched like conftest's `server`."""
    srv = _short_resume_server
    note = srv.ensure_running()
    request.node._xmpp_server = (srv, srv.log_size(), note)
    yield srv
    if not srv.alive():
        pytest.fail("xmppd exited during this test", pytrace=False)


# ----------------------------------------------------------------- tests
async def test_enable_with_resumption(server):
    alice = server.account("alice")
    a = SmClient(server, alice, resource="sm")
    try:
        await a.login_sm()
        enabled = a.sm_enabled.result()
        assert enabled["id"], "<enabled/> without an id although resumption was requested"
        assert enabled.xml.get("resume") in ("true", "1"), f"resumption not granted: {enabled}"
        assert a.sm.sm_id == enabled["id"]
        # `max` (the resumption window) is optional; if given it must be a positive number.
        if enabled.xml.get("max") is not None:
            assert int(enabled.xml.get("max")) > 0
    finally:
        await close_all(a)


async def test_acks_both_ways(server):
    alice, bob = server.accounts("alice", "bob")
    a = SmClient(server, alice, resource="sm")
    b = await connect(server, bob, resource="b")
    try:
        await a.login_sm()
        # Client -> server: the server's <a h/> counts exactly the stanzas we sent.
        for i in range(7):
            a.send_message(mto=f"{bob.jid}/b", mbody=f"counted {i}", mtype="chat")
        await a.wait_acked("server ack after 7 messages")
        assert a.sm.last_ack == a.sm.seq and a.sm.seq >= 7
        for i in range(7):
            await b.wait_message(lambda m, i=i: m["body"] == f"counted {i}")

        # Server -> client: after a handful of unacknowledged stanzas the server
        # asks (<r/>) and slixmpp answers with its handled count.
        handled_before = a.sm.handled
        for i in range(12):
            b.send_message(mto=f"{alice.jid}/sm", mbody=f"to sm {i}", mtype="chat")
        for i in range(12):
            await a.wait_message(lambda m, i=i: m["body"] == f"to sm {i}")
        assert a.sm.handled - handled_before >= 12
        await a.inbox.wait_for(lambda s: s.name == "r" or s.xml.tag == f"{{{NS_SM}}}r",
                               what="<r/> from the server after 12 unacked stanzas")
    finally:
        await close_all(a, b)


async def test_resume_after_dropped_connection_exactly_once(server):
    alice, bob = server.accounts("alice", "bob")
    a = SmClient(server, alice, resource="sm")
    b = await connect(server, bob, resource="b")
    try:
        await a.login_sm()
        full = a.boundjid.full
        # Directed presence: bob would see an unavailable if the session ended.
        a.send_presence(pto=f"{bob.jid}/b", pstatus="resumable")
        await b.wait_presence(lambda p: p["from"].full == full and p["type"] == "available")

        for i in range(3):
            b.send_message(mto=full, mbody=f"before {i}", mtype="chat")
        for i in range(3):
            await a.wait_message(lambda m, i=i: m["body"] == f"before {i}")
        a.sm.send_ack()
        await server_roundtrip(a)  # the server has taken our <a/> into account
        b.send_message(mto=full, mbody="seen but unacked", mtype="chat")
        await a.wait_message(lambda m: m["body"] == "seen but unacked")

        # A message of ours racing the drop: the <resumed h/> tells slixmpp
        # whether the server got it; either way bob must see it once.
        a.send_message(mto=f"{bob.jid}/b", mbody="racing the drop", mtype="chat")
        await until(lambda: any(st["body"] == "racing the drop" for _, st in a.sm.unacked_queue),
                    "slixmpp hands the message to the transport")
        a.drop()
        await a.wait_closed()

        for i in range(3):
            b.send_message(mto=full, mbody=f"while away {i}", mtype="chat")
        b.send_message(mto=alice.jid, mbody="while away bare", mtype="chat")
        await server_roundtrip(b)

        await a.resume()
        assert a.boundjid.full == full
        for i in range(3):
            await a.wait_message(lambda m, i=i: m["body"] == f"while away {i}", f"alice: while away {i}")
        await a.wait_message(lambda m: m["body"] == "while away bare")
        await b.wait_message(lambda m: m["body"] == "racing the drop")

        # Sentinels both ways: anything duplicated would have arrived before them.
        b.send_message(mto=full, mbody="zz sentinel to a", mtype="chat")
        await a.wait_message(lambda m: m["body"] == "zz sentinel to a")
        a.send_message(mto=f"{bob.jid}/b", mbody="zz sentinel to b", mtype="chat")
        await b.wait_message(lambda m: m["body"] == "zz sentinel to b")

        got = Counter(bodies(a, ""))
        expected = [f"before {i}" for i in range(3)] + ["seen but unacked"] + \
                   [f"while away {i}" for i in range(3)] + ["while away bare", "zz sentinel to a"]
        assert {k: got[k] for k in expected} == {k: 1 for k in expected}, f"alice received {got}"
        assert Counter(bodies(b, "racing"))["racing the drop"] == 1, "message duplicated or lost by the resumption"
        # The session never ended, so bob never saw alice go unavailable.
        assert not b.presences_from(alice.jid, "unavailable"), "session ended instead of hibernating"

        # The resumed stream keeps counting: acks still line up.
        await a.wait_acked("acks after resumption")
    finally:
        await close_all(a, b)


async def test_resume_with_unknown_id_fails_then_binds(server):
    """<resume/> with an id the server does not know → <failed/>; slixmpp
    then binds a fresh session (which works normally)."""
    alice, bob = server.accounts("alice", "bob")
    a = SmClient(server, alice, resource="sm")
    b = await connect(server, bob, resource="b")
    try:
        await a.login_sm()
        a.drop()
        await a.wait_closed()
        a.sm.sm_id = "no-such-stream-id"
        failed = a.loop.create_future()
        bound = a.loop.create_future()
        a.add_event_handler("sm_failed", lambda s: failed.done() or failed.set_result(s))
        a.add_event_handler("session_bind", lambda j: bound.done() or bound.set_result(j))
        a._closed = a.loop.create_future()
        a.connect(server.host, server.starttls_port)
        f = await asyncio.wait_for(failed, TIMEOUT)
        assert f.xml.tag == f"{{{NS_SM}}}failed"
        await asyncio.wait_for(bound, TIMEOUT)
        await a.plugin["xep_0199"].send_ping(server.domain, timeout=TIMEOUT)
    finally:
        await close_all(a, b)


async def test_unacked_go_offline_after_resume_timeout(short_server):
    server = short_server
    alice, bob = server.accounts("alice", "bob")
    a = SmClient(server, alice, resource="sm")
    b = await connect(server, bob, resource="b")
    fresh = None
    try:
        await a.login_sm()
        full = a.boundjid.full
        a.send_presence(pto=f"{bob.jid}/b")
        await b.wait_presence(lambda p: p["from"].full == full and p["type"] == "available")

        for i in range(2):
            b.send_message(mto=full, mbody=f"acked {i}", mtype="chat")
        for i in range(2):
            await a.wait_message(lambda m, i=i: m["body"] == f"acked {i}")
        a.sm.send_ack()
        await server_roundtrip(a)
        # Received by the client but never acknowledged: must not be lost.
        b.send_message(mto=full, mbody="unacked 0", mtype="chat")
        await a.wait_message(lambda m: m["body"] == "unacked 0")
        a.drop()
        await a.wait_closed()
        b.send_message(mto=full, mbody="unacked 1", mtype="chat")
        b.send_message(mto=alice.jid, mbody="unacked 2", mtype="chat")

        # The hibernating session ends after resume_timeout: bob, who had
        # alice's directed presence, sees her go unavailable.
        await b.wait_presence(lambda p: p["from"].full == full and p["type"] == "unavailable",
                              "bob: alice unavailable once the resumption window closed",
                              timeout=TIMEOUT + SHORT_RESUME_TIMEOUT)

        # The old stream cannot be resumed any more.
        with pytest.raises(AssertionError, match="resumption refused|bound a new session"):
            await a.resume()
        await a.close()

        # A normal login gets what was never acknowledged, from offline storage, in order.
        fresh = await connect(server, alice, resource="fresh", plugins=("xep_0203",))
        for i in range(3):
            got = await fresh.wait_message(lambda m: m["body"].startswith("unacked "), f"fresh: unacked {i}")
            assert got["body"] == f"unacked {i}"
        b.send_message(mto=f"{alice.jid}/fresh", mbody="zz sentinel", mtype="chat")
        await fresh.wait_message(lambda m: m["body"] == "zz sentinel")
        got = Counter(bodies(fresh, ""))
        assert got["unacked 0"] == got["unacked 1"] == got["unacked 2"] == 1, f"fresh login received {got}"
        assert not got["acked 0"] and not got["acked 1"], "acknowledged messages were delivered again"
        for m in fresh.inbox.matching(lambda s: s.name == "message" and s["body"].startswith("unacked ")):
            assert m.get_plugin("delay", check=True) is not None, f"not from offline storage: {m}"
    finally:
        await close_all(a, b, fresh)
