"""XEP-0280 message carbons with slixmpp's xep_0280 plugin: every opted-in
device of a user sees both sides of its one-to-one chats (`<sent/>` and
`<received/>` copies, wrapped in XEP-0297 `<forwarded/>`, from the user's
bare JID); `<private/>` messages are not copied; devices that did not enable
carbons (or disabled them) get no copies."""

from xmppclient import Events, close_all, connect, server_roundtrip

NS_CARBONS = "urn:xmpp:carbons:2"
PLUGINS = ("xep_0280",)


async def two_devices(server, *, phone_carbons=True):
    """alice on desk (priority 5) and phone (priority 1), both with carbons
    (phone optionally not); bob on one device."""
    alice, bob = server.accounts("alice", "bob")
    desk = await connect(server, alice, resource="desk", priority=5, plugins=PLUGINS)
    phone = await connect(server, alice, resource="phone", priority=1, plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    await desk.plugin["xep_0280"].enable(timeout=10)
    if phone_carbons:
        await phone.plugin["xep_0280"].enable(timeout=10)
    return alice, bob, desk, phone, b


async def test_feature_advertised(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        info = await a.plugin["xep_0030"].get_info(jid=server.domain, timeout=10)
        assert NS_CARBONS in info["disco_info"]["features"]
    finally:
        await close_all(a)


async def test_sent_copy_to_other_device(server):
    alice, bob, desk, phone, b = await two_devices(server)
    sent = Events(phone, "carbon_sent")
    desk_sent = Events(desk, "carbon_sent")
    try:
        m = desk.make_message(mto=f"{bob.jid}/b", mbody="hi from my desk", mtype="chat")
        m["id"] = "carbon-sent-1"
        m.send()
        got = await b.wait_message(lambda m: m["id"] == "carbon-sent-1")
        assert got["body"] == "hi from my desk"
        # The plugin raises carbon_sent only for a wrapper from our own bare JID.
        c = await sent.wait(lambda s: s["carbon_sent"]["id"] == "carbon-sent-1", "on alice/phone")
        assert c["from"].full == alice.jid
        assert c["to"].full == f"{alice.jid}/phone"
        inner = c["carbon_sent"]
        assert inner["body"] == "hi from my desk"
        assert inner["to"].full == f"{bob.jid}/b"
        assert inner["from"].full == f"{alice.jid}/desk"
        assert inner["type"] == "chat"
        # The sending device itself gets no copy (sentinel: a later carbon to it).
        phone.send_message(mto=f"{bob.jid}/b", mbody="from the phone", mtype="chat")
        await desk_sent.wait(lambda s: s["carbon_sent"]["body"] == "from the phone")
        assert not desk_sent.matching(lambda s: s["carbon_sent"]["id"] == "carbon-sent-1"), \
            "the sender's own device got a carbon of its message"
    finally:
        await close_all(desk, phone, b)


async def test_received_copy_to_other_device(server):
    alice, bob, desk, phone, b = await two_devices(server)
    received = Events(phone, "carbon_received")
    try:
        # To the full JID of the desk: the phone sees a <received/> copy.
        m = b.make_message(mto=f"{alice.jid}/desk", mbody="for your desk", mtype="chat")
        m["id"] = "carbon-rcv-1"
        m.send()
        await desk.wait_message(lambda m: m["id"] == "carbon-rcv-1")
        c = await received.wait(lambda s: s["carbon_received"]["id"] == "carbon-rcv-1")
        assert c["from"].full == alice.jid
        inner = c["carbon_received"]
        assert inner["body"] == "for your desk"
        assert inner["from"].full == f"{bob.jid}/b"
        assert inner["to"].full == f"{alice.jid}/desk"

        # To the bare JID: delivered to the highest priority (desk), copied to the phone.
        b.send_message(mto=alice.jid, mbody="to the bare jid", mtype="chat")
        await desk.wait_message(lambda m: m["body"] == "to the bare jid")
        c = await received.wait(lambda s: s["carbon_received"]["body"] == "to the bare jid")
        assert c["carbon_received"]["from"].full == f"{bob.jid}/b"
        # The phone got the copy only, never the message itself as well.
        assert not phone.inbox.matching(lambda s: s.name == "message" and s["body"] == "to the bare jid"), \
            "phone received both the message and a carbon"

        # Normal messages with a body are copied too (XEP-0280 §6.1).
        b.send_message(mto=f"{alice.jid}/desk", mbody="a normal one", mtype="normal")
        c = await received.wait(lambda s: s["carbon_received"]["body"] == "a normal one")
        assert c["carbon_received"]["type"] in ("normal", "")
    finally:
        await close_all(desk, phone, b)


async def test_private_and_no_copy_not_carbon_copied(server):
    alice, bob, desk, phone, b = await two_devices(server)
    sent = Events(phone, "carbon_sent")
    received = Events(phone, "carbon_received")
    try:
        m = desk.make_message(mto=f"{bob.jid}/b", mbody="private outgoing", mtype="chat")
        m.enable("carbon_private")
        m.send()
        m = b.make_message(mto=f"{alice.jid}/desk", mbody="private incoming", mtype="chat")
        m.enable("carbon_private")
        m.send()
        m = desk.make_message(mto=f"{bob.jid}/b", mbody="no-copy outgoing", mtype="chat")
        m.xml.append(m.xml.makeelement("{urn:xmpp:hints}no-copy", {}))
        m.send()
        # Both still delivered.
        await b.wait_message(lambda m: m["body"] == "private outgoing")
        await b.wait_message(lambda m: m["body"] == "no-copy outgoing")
        await desk.wait_message(lambda m: m["body"] == "private incoming")
        # Sentinels on the same paths, sent after: their carbons come later.
        desk.send_message(mto=f"{bob.jid}/b", mbody="public outgoing", mtype="chat")
        b.send_message(mto=f"{alice.jid}/desk", mbody="public incoming", mtype="chat")
        await sent.wait(lambda s: s["carbon_sent"]["body"] == "public outgoing")
        await received.wait(lambda s: s["carbon_received"]["body"] == "public incoming")
        assert not sent.matching(lambda s: s["carbon_sent"]["body"] in ("private outgoing", "no-copy outgoing"))
        assert not received.matching(lambda s: s["carbon_received"]["body"] == "private incoming")
        # Nor any other wrapper mentioning them.
        for st in phone.inbox.items:
            assert "private outgoing" not in str(st) and "private incoming" not in str(st)
    finally:
        await close_all(desk, phone, b)


async def test_no_copies_without_enable_and_after_disable(server):
    alice, bob, desk, phone, b = await two_devices(server, phone_carbons=False)
    received = Events(phone, "carbon_received")
    sent = Events(phone, "carbon_sent")
    try:
        desk.send_message(mto=f"{bob.jid}/b", mbody="not for the phone 1", mtype="chat")
        b.send_message(mto=f"{alice.jid}/desk", mbody="not for the phone 2", mtype="chat")
        await desk.wait_message(lambda m: m["body"] == "not for the phone 2")
        await b.wait_message(lambda m: m["body"] == "not for the phone 1")
        # Sentinel: a direct message to the phone, sent after the others.
        b.send_message(mto=f"{alice.jid}/phone", mbody="sentinel", mtype="chat")
        await phone.wait_message(lambda m: m["body"] == "sentinel")
        assert not received.items and not sent.items, "copies to a device that never enabled carbons"

        # Enable, get a copy, disable, get none.
        await phone.plugin["xep_0280"].enable(timeout=10)
        b.send_message(mto=f"{alice.jid}/desk", mbody="copied", mtype="chat")
        await received.wait(lambda s: s["carbon_received"]["body"] == "copied")
        await phone.plugin["xep_0280"].disable(timeout=10)
        b.send_message(mto=f"{alice.jid}/desk", mbody="after disable", mtype="chat")
        await desk.wait_message(lambda m: m["body"] == "after disable")
        b.send_message(mto=f"{alice.jid}/phone", mbody="sentinel 2", mtype="chat")
        await phone.wait_message(lambda m: m["body"] == "sentinel 2")
        assert not received.matching(lambda s: s["carbon_received"]["body"] == "after disable")
    finally:
        await close_all(desk, phone, b)


async def test_forged_carbon_from_another_user_not_accepted(server):
    """A carbon-looking message from someone else is not a carbon: the server
    stamps the real sender, so slixmpp does not raise carbon_* for it."""
    alice, bob, desk, phone, b = await two_devices(server)
    received = Events(phone, "carbon_received")
    try:
        fake = b.make_message(mto=f"{alice.jid}/phone", mtype="chat")
        fwd = b.make_message(mto=f"{alice.jid}/phone", mfrom=f"{server.domain}", mbody="forged", mtype="chat")
        fake["carbon_received"] = fwd
        fake.send()
        await server_roundtrip(b)
        b.send_message(mto=f"{alice.jid}/phone", mbody="sentinel", mtype="chat")
        await phone.wait_message(lambda m: m["body"] == "sentinel")
        for st in phone.inbox.matching(lambda s: s.name == "message" and s.xml.find(f"{{{NS_CARBONS}}}received") is not None):
            assert st["from"].bare == bob.jid, f"forged carbon arrived as from {st['from']}"
        assert not received.items, "a carbon forged by another user was accepted"
    finally:
        await close_all(desk, phone, b)
