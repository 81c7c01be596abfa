"""XEP-0114 external components and XEP-0357 push notifications, with
slixmpp's ComponentXMPP as the component and ordinary slixmpp clients:
a component authenticates with its configured secret on the component port
(a wrong secret is refused with `<not-authorized/>`, a forged `from` ends its
stream) and exchanges messages and IQs with a client in both directions with
the right addresses. The component then plays a push app server
(`push.<domain>`): a client enables push (jid = the component, a node, a
publish-options form), goes offline cleanly, and a chat message sent to it
makes the server publish to the component a `<notification/>` with a
`urn:xmpp:push:summary` form (message-count, last-message-sender), from the
account's bare JID, with the publish-options, which the component answers;
after `<disable/>` no notification arrives (a later probe stanza on the same
path comes first). The same for a device whose session hibernates under
XEP-0198 (connection dropped): notified while asleep, then it resumes and
gets the message."""

import asyncio
from xml.etree import ElementTree as ET

import pytest
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmppclient import TIMEOUT, Client, Inbox, close_all, connect, server_roundtrip

DOMAIN = "localhost"  # the harness's default domain
GATEWAY, GATEWAY_SECRET = f"gateway.{DOMAIN}", "gw-s3cret & <more>"
PUSH, PUSH_SECRET = f"push.{DOMAIN}", "push-secret"
SERVER_OPTIONS = {"config": {"components": {"services": [
    {"domain": GATEWAY, "secret": GATEWAY_SECRET},
    {"domain": PUSH, "secret": PUSH_SECRET},
]}}}
pytestmark = pytest.mark.xmppd_only  # configures the server's components

ACCEPT = "jabber:component:accept"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"


class Component(slixmpp.ComponentXMPP):
    """A XEP-0114 component on the harness server's component port, with an
    inbox of everything it receives; pubsub publish IQs are answered with a
    result only when `answer_publish` is set (as a push app server does)."""

    def __init__(self, server, domain: str, secret: str):
        super().__init__(domain, secret, server.host, server.component_port)
        self.whitespace_keepalive = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0092")
        self.plugin["xep_0092"].software_name = "conformance-component"
        self.inbox = Inbox()
        self.stream_errors: list = []
        self.answer_publish = True
        self._session = self.loop.create_future()
        self._session.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.add_filter("in", self._capture)
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("stream_error", self.stream_errors.append)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.register_handler(Callback("push publish", MatchXPath(f"{{{ACCEPT}}}iq/{{{NS_PUBSUB}}}pubsub"),
                                       self._on_publish))

    def _capture(self, stanza):
        self.inbox.add(stanza)
        return stanza

    def _on_start(self, _event):
        if not self._session.done():
            self._session.set_result(True)

    def _on_disconnected(self, reason):
        if not self._session.done():
            cond = self.stream_errors[-1]["condition"] if self.stream_errors else None
            self._session.set_exception(ConnectionError(f"component refused: {cond} ({reason})"))

    def _on_publish(self, iq):
        if self.answer_publish and iq["type"] == "set":
            iq.reply().send()

    async def start(self) -> "Component":
        self.connect()
        await asyncio.wait_for(asyncio.shield(self._session), TIMEOUT)
        return self

    async def close(self) -> None:
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=TIMEOUT / 2), TIMEOUT)
            except asyncio.TimeoutError:
                self.abort()
        task = getattr(self, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()

    async def wait_stanza(self, pred, what: str):
        return await self.inbox.wait_for(pred, TIMEOUT, what)


async def component(server, domain: str, secret: str) -> Component:
    if not server.component_port:
        pytest.skip("the server has no component listener")
    return await Component(server, domain, secret).start()


def form_values(x: ET.Element) -> dict[str, str]:
    out = {}
    for f in x.findall(f"{{{NS_DATA}}}field"):
        v = f.find(f"{{{NS_DATA}}}value")
        out[f.get("var")] = (v.text or "") if v is not None else ""
    return out


def notification(iq) -> tuple[str, dict[str, str], dict[str, str] | None]:
    """(node, summary form values, publish-options values) of a XEP-0357 publish."""
    publish = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
    assert publish is not None, f"not a pubsub publish: {iq}"
    x = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
    assert x is not None, f"no <notification><x/></notification> in {iq}"
    opts = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    return publish.get("node"), form_values(x), (form_values(opts) if opts is not None else None)


def is_push_publish(s) -> bool:
    return s.name == "iq" and s.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish") is not None


async def push_enable(client: Client, node: str, secret: str | None = None):
    """XEP-0357 §5 (slixmpp has no xep_0357 plugin: the IQ is built by hand)."""
    iq = client.make_iq_set()
    enable = ET.SubElement(iq.xml, f"{{{NS_PUSH}}}enable", {"jid": PUSH, "node": node})
    if secret is not None:
        form = client.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(var="FORM_TYPE", ftype="hidden",
                       value="http://jabber.org/protocol/pubsub#publish-options")
        form.add_field(var="secret", value=secret)
        enable.append(form.xml)
    return await iq.send(timeout=TIMEOUT)


async def push_disable(client: Client, node: str):
    iq = client.make_iq_set()
    ET.SubElement(iq.xml, f"{{{NS_PUSH}}}disable", {"jid": PUSH, "node": node})
    return await iq.send(timeout=TIMEOUT)


def assert_notification(iq, *, owner: str, node: str, sender: str, secret: str | None, body: str):
    assert iq["type"] == "set", iq
    assert iq["from"].full == owner, f"notification from {iq['from']}, not the account's bare JID {owner}"
    assert iq["to"].full == PUSH, iq
    got_node, summary, opts = notification(iq)
    assert got_node == node, f"published to node {got_node!r}, registered {node!r}"
    assert summary.get("FORM_TYPE") == "urn:xmpp:push:summary", summary
    assert int(summary.get("message-count", "0")) >= 1, summary
    assert summary.get("last-message-sender") in (sender, sender.split("/")[0]), summary
    # include_body is off by default: the body stays on the server.
    assert body not in ET.tostring(iq.xml, encoding="unicode"), f"message body leaked to the app server: {iq}"
    if secret is not None:
        assert opts is not None and opts.get("secret") == secret, \
            f"publish-options from <enable/> not carried (XEP-0357 §7): {iq}"


# ----------------------------------------------------------------- XEP-0114
async def test_component_and_client_exchange_messages_and_iqs(server):
    alice = server.account("alice")
    gw = await component(server, GATEWAY, GATEWAY_SECRET)
    a = await connect(server, alice, resource="desk")
    try:
        # Client -> component: delivered with the sender's full JID, body intact.
        m = a.make_message(mto=f"bot@{GATEWAY}", mbody="hello gateway <&> ☃", mtype="chat")
        m["id"] = "c1"
        m.send()
        m = await gw.wait_stanza(lambda s: s.name == "message" and s["id"] == "c1", "message from alice")
        assert m["from"].full == a.boundjid.full and m["to"].full == f"bot@{GATEWAY}"
        assert m["body"] == "hello gateway <&> ☃" and m["type"] == "chat"

        # Component -> client: any JID of its domain as sender, to the full and the bare JID.
        gw.send_message(mto=a.boundjid.full, mfrom=f"bot@{GATEWAY}", mbody="hello human ✓", mtype="chat")
        m = await a.wait_message(lambda s: s["body"] == "hello human ✓", "message from the gateway")
        assert m["from"].full == f"bot@{GATEWAY}" and m["to"].full == a.boundjid.full
        gw.send_message(mto=alice.jid, mfrom=f"other@{GATEWAY}/res", mbody="to your bare JID", mtype="chat")
        m = await a.wait_message(lambda s: s["body"] == "to your bare JID")
        assert m["from"].full == f"other@{GATEWAY}/res"

        # An IQ round trip: slixmpp's xep_0092 on the component answers the client.
        v = await a.plugin["xep_0092"].get_version(GATEWAY, timeout=TIMEOUT)
        assert v["from"].full == GATEWAY
        assert v["software_version"]["name"] == "conformance-component"

        # A subscription request to a gateway contact reaches the component (from the bare JID).
        a.send_presence(pto=f"bot@{GATEWAY}", ptype="subscribe")
        p = await gw.wait_stanza(lambda s: s.name == "presence" and s["type"] == "subscribe", "subscribe")
        assert p["from"].full == alice.jid
    finally:
        await close_all(a)
        await gw.close()


async def test_component_wrong_secret_refused(server):
    bad = Component(server, GATEWAY, GATEWAY_SECRET + "x")
    with pytest.raises(ConnectionError):
        await bad.start()
    assert [e["condition"] for e in bad.stream_errors] == ["not-authorized"], bad.stream_errors
    await bad.close()
    # The right secret still works afterwards (nothing left behind by the failure).
    gw = await component(server, GATEWAY, GATEWAY_SECRET)
    await gw.close()


async def test_component_cannot_forge_a_sender(server):
    alice = server.account("alice")
    gw = await component(server, GATEWAY, GATEWAY_SECRET)
    a = await connect(server, alice, resource="desk")
    try:
        gw.send_message(mto=a.boundjid.full, mfrom=f"mallory@{DOMAIN}", mbody="forged", mtype="chat")
        await gw.wait_stanza(lambda s: s.name == "error", "a stream error for the forged from")
        assert [e["condition"] for e in gw.stream_errors] == ["invalid-from"], gw.stream_errors
        # Never delivered (a ping answer from the server comes first and nothing else).
        await server_roundtrip(a)
        assert not [m for m in a.inbox.items if m.name == "message" and m["body"] == "forged"]
    finally:
        await close_all(a)
        await gw.close()


# ----------------------------------------------------------------- XEP-0357
async def test_push_for_an_offline_account_then_disable(server):
    alice, bob = server.accounts("alice", "bob")
    app = await component(server, PUSH, PUSH_SECRET)
    a = await connect(server, alice, resource="phone", plugins=("xep_0004",))
    b = await connect(server, bob, resource="b")
    try:
        info = await a.plugin["xep_0030"].get_info(jid=alice.jid, timeout=TIMEOUT)
        assert NS_PUSH in info["disco_info"]["features"], "urn:xmpp:push:0 not on the account"
        r = await push_enable(a, "node-offline-1", secret="app-token-1")
        assert r["type"] == "result"
        await a.close()

        b.send_message(mto=alice.jid, mbody="while you sleep", mtype="chat")
        iq = await app.wait_stanza(is_push_publish, "push notification for the offline message")
        assert_notification(iq, owner=alice.jid, node="node-offline-1", sender=b.boundjid.full,
                            secret="app-token-1", body="while you sleep")
        # Our result went back (the component answered); a second message, a second push.
        b.send_message(mto=alice.jid, mbody="second one", mtype="chat")
        iq = await app.wait_stanza(is_push_publish, "second push notification")
        assert_notification(iq, owner=alice.jid, node="node-offline-1", sender=b.boundjid.full,
                            secret="app-token-1", body="second one")

        # The messages themselves wait in offline storage.
        a = await connect(server, alice, resource="phone", plugins=("xep_0004",))
        for body in ("while you sleep", "second one"):
            await a.wait_message(lambda m, body=body: m["body"] == body, f"offline message {body!r}")
        r = await push_disable(a, "node-offline-1")
        assert r["type"] == "result"
        await a.close()

        # Disabled: the next message is stored but not pushed. The probe
        # (same sender, later) reaches the component first.
        mark = len(app.inbox.items)
        b.send_message(mto=alice.jid, mbody="after disable", mtype="chat")
        await server_roundtrip(b)
        m = b.make_message(mto=f"probe@{PUSH}", mbody="probe", mtype="chat")
        m["id"] = "probe-1"
        m.send()
        await app.wait_stanza(lambda s: s.name == "message" and s["id"] == "probe-1", "probe message")
        pushed = [s for s in app.inbox.items[mark:] if is_push_publish(s)]
        assert not pushed, f"notification after <disable/>: {pushed[0]}"
    finally:
        await close_all(a, b)
        await app.close()


class SmClient(Client):
    """A client with xep_0198 (resumption), as a phone would use it."""

    def __init__(self, server, account, **kw):
        super().__init__(server, account, plugins=("xep_0198", "xep_0004"), **kw)
        self.sm = self.plugin["xep_0198"]
        self.sm_enabled = self.loop.create_future()
        self.add_event_handler("sm_enabled", lambda s: self.sm_enabled.done() or self.sm_enabled.set_result(s))

    async def resume(self) -> None:
        resumed = self.loop.create_future()

        def ok(stanza):
            resumed.done() or resumed.set_result(stanza)

        def failed(stanza):
            resumed.done() or resumed.set_exception(AssertionError(f"resumption refused: {stanza}"))

        self.add_event_handler("session_resumed", ok)
        self.add_event_handler("sm_failed", failed)
        self._closed = self.loop.create_future()
        self.connect(self.target.host, self.target.starttls_port)
        try:
            await asyncio.wait_for(resumed, TIMEOUT)
        finally:
            self.del_event_handler("session_resumed", ok)
            self.del_event_handler("sm_failed", failed)


async def wait_log(server, offset: int, parts: tuple[str, ...], what: str) -> None:
    """Bounded wait for a line of xmppd's log (written since `offset`) that
    contains all `parts`: the only outside sign that the server has noticed
    a dropped connection (a hibernated session looks online to everyone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not any(all(p in line for p in parts)
                  for line in server.log_since(offset, limit=10**7).splitlines()):
        if loop.time() > deadline:
            raise AssertionError(f"{what}: no log line with {parts} within {TIMEOUT}s "
                                 f"(needs XMPPD_LOG_LEVEL info or lower)")
        await asyncio.sleep(0.05)


async def test_push_for_a_hibernated_session_then_resume(server):
    alice, bob = server.accounts("alice", "bob")
    app = await component(server, PUSH, PUSH_SECRET)
    a = SmClient(server, alice, resource="phone")
    b = await connect(server, bob, resource="b")
    try:
        await a.login()
        enabled = await asyncio.wait_for(asyncio.shield(a.sm_enabled), TIMEOUT)
        assert enabled.xml.get("resume") in ("true", "1"), enabled
        r = await push_enable(a, "node-sm-1")
        assert r["type"] == "result"
        full = a.boundjid.full

        # The phone's connection dies; once the server has noticed (the
        # session hibernates), a message to it is pushed, not written.
        offset = server.log_size()
        a.drop()
        await a.wait_closed()
        await wait_log(server, offset, ("session hibernates", f"jid={full}"), "the session hibernating")
        b.send_message(mto=full, mbody="wake up", mtype="chat")
        iq = await app.wait_stanza(is_push_publish, "push notification for the hibernated session")
        assert_notification(iq, owner=alice.jid, node="node-sm-1", sender=b.boundjid.full,
                            secret=None, body="wake up")

        # Woken by its app server, the phone resumes and gets the message.
        await a.resume()
        assert a.boundjid.full == full
        m = await a.wait_message(lambda s: s["body"] == "wake up", "the message after resuming")
        assert m["from"].full == b.boundjid.full
        assert (await push_disable(a, "node-sm-1"))["type"] == "result"
    finally:
        await close_all(a, b)
        await app.close()
