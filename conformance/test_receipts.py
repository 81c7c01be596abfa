"""XEP-0184 delivery receipts and XEP-0333 chat markers end to end, through
slixmpp's xep_0184 (which answers receipt requests by itself) and xep_0333
plugins: both parties online, the recipient offline (the request waits in
offline storage, the receipt comes when it logs in), and the sender offline
when the receipt or marker comes back (kept for the sender)."""

from xmppclient import Events, close_all, connect, server_roundtrip

PLUGINS = ("xep_0184", "xep_0333", "xep_0203")


def send_requesting(client, to: str, body: str, mid: str):
    """A chat message asking for a receipt and markable (XEP-0184 + XEP-0333)."""
    m = client.make_message(mto=to, mbody=body, mtype="chat")
    m["id"] = mid
    m["request_receipt"] = True
    m.enable("markable")
    m.send()
    return m


async def test_receipt_and_markers_both_online(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    receipts = Events(a, "receipt_received")
    displayed = Events(a, "marker_displayed")
    try:
        send_requesting(a, f"{bob.jid}/b", "please confirm", "rcpt-1")
        got = await b.wait_message(lambda m: m["id"] == "rcpt-1")
        assert got["request_receipt"], "the receipt request was stripped in transit"
        assert got.get_plugin("markable", check=True) is not None, "<markable/> stripped in transit"

        # bob's slixmpp answered the request by itself (auto_ack).
        r = await receipts.wait(lambda s: s["receipt"] == "rcpt-1", "for rcpt-1")
        assert r["from"].full == f"{bob.jid}/b"
        assert r["to"].full == f"{alice.jid}/a"

        b.plugin["xep_0333"].send_marker(got["from"], "rcpt-1", "displayed", mtype="chat")
        d = await displayed.wait(lambda s: s["displayed"]["id"] == "rcpt-1", "for rcpt-1")
        assert d["from"].full == f"{bob.jid}/b"
        assert d.get_plugin("delay", check=True) is None, "a live marker must not carry a delay"
    finally:
        await close_all(a, b)


async def test_request_stored_while_recipient_offline_receipt_sent_later(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    receipts = Events(a, "receipt_received")
    received_markers = Events(a, "marker_received")
    b = None
    try:
        send_requesting(a, bob.jid, "read this when you are back", "rcpt-off-1")
        await server_roundtrip(a)
        assert not receipts.items, "a receipt before the recipient was ever online"

        b = await connect(server, bob, resource="b", plugins=PLUGINS)
        got = await b.wait_message(lambda m: m["id"] == "rcpt-off-1", "bob: the stored message")
        assert got["request_receipt"], "receipt request lost in offline storage"
        assert got.get_plugin("markable", check=True) is not None, "<markable/> lost in offline storage"
        assert got.get_plugin("delay", check=True) is not None

        r = await receipts.wait(lambda s: s["receipt"] == "rcpt-off-1", "for the stored message")
        assert r["from"].full == f"{bob.jid}/b"
        b.plugin["xep_0333"].send_marker(got["from"], "rcpt-off-1", "received", mtype="chat")
        m = await received_markers.wait(lambda s: s["received"]["id"] == "rcpt-off-1")
        assert m["from"].full == f"{bob.jid}/b"
    finally:
        await close_all(a, b)


async def test_receipt_and_marker_stored_while_sender_offline(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    b.plugin["xep_0184"].auto_ack = False  # bob answers once alice has gone
    a2 = None
    try:
        send_requesting(a, f"{bob.jid}/b", "are you there?", "rcpt-late-1")
        got = await b.wait_message(lambda m: m["id"] == "rcpt-late-1")
        await a.close()

        # The receipt goes to alice's full JID, which no longer exists: like
        # any normal message it falls back to the bare JID and is stored.
        b.plugin["xep_0184"].ack(got)
        b.plugin["xep_0333"].send_marker(got["from"], "rcpt-late-1", "displayed", mtype="chat")
        await server_roundtrip(b)
        assert not b.inbox.matching(lambda s: s.name == "message" and s["type"] == "error"), \
            "a receipt or marker to an offline sender bounced"

        a2 = await connect(server, alice, resource="a2", plugins=PLUGINS, presence=False)
        receipts = Events(a2, "receipt_received")
        displayed = Events(a2, "marker_displayed")
        a2.send_presence()  # initial presence triggers offline delivery
        r = await receipts.wait(lambda s: s["receipt"] == "rcpt-late-1", "stored receipt")
        assert r["from"].full == f"{bob.jid}/b"
        assert r.get_plugin("delay", check=True) is not None, "stored receipt without delay stamp"
        d = await displayed.wait(lambda s: s["displayed"]["id"] == "rcpt-late-1", "stored marker")
        assert d["from"].full == f"{bob.jid}/b"
        assert d.get_plugin("delay", check=True) is not None
        # In the order bob sent them.
        assert a2.inbox.items.index(r) < a2.inbox.items.index(d)
    finally:
        await close_all(a, b, a2)


async def test_receipt_to_offline_sender_with_other_device_online(server):
    """The sender's device that asked is gone but another is online: the
    receipt (to a vanished full JID) reaches the remaining device."""
    alice, bob = server.accounts("alice", "bob")
    phone = await connect(server, alice, resource="phone", plugins=PLUGINS)
    laptop = await connect(server, alice, resource="laptop", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    b.plugin["xep_0184"].auto_ack = False
    receipts = Events(laptop, "receipt_received")
    try:
        send_requesting(phone, f"{bob.jid}/b", "from my phone", "rcpt-dev-1")
        got = await b.wait_message(lambda m: m["id"] == "rcpt-dev-1")
        await phone.close()
        b.plugin["xep_0184"].ack(got)
        r = await receipts.wait(lambda s: s["receipt"] == "rcpt-dev-1")
        assert r["from"].full == f"{bob.jid}/b"
    finally:
        await close_all(phone, laptop, b)
