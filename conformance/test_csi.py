"""XEP-0352 client state indication with slixmpp's xep_0352 plugin: while a
client is inactive the server holds presence updates back, keeping only the
latest per contact, and lets them through (before it) when a message with a
body arrives; `<active/>` flushes what is held.

Holding is proven without timing: contacts send several updates in a row;
had they been passed through, all of them would arrive, but only the last of
each contact does (and only once something flushes)."""

from xmppclient import close_all, connect, server_roundtrip, subscribe_mutually

PLUGINS = ("xep_0352",)


async def setup(server, n_contacts=1):
    """bob (CSI-capable) subscribed both ways with n contacts; inboxes cleared."""
    bob = server.account("bob")
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    contacts = []
    for i in range(n_contacts):
        acct = server.account(f"contact{i}")
        c = await connect(server, acct, resource="c", plugins=PLUGINS)
        await subscribe_mutually(b, c)
        await b.wait_presence(lambda p, a=acct: p["from"].full == f"{a.jid}/c" and p["type"] == "available")
        # The handshake can send the contact's presence more than once: a
        # sentinel on the same path makes sure all of it is in before mark().
        c.send_message(mto=f"{bob.jid}/b", mbody=f"setup sentinel {i}", mtype="chat")
        await b.wait_message(lambda m, i=i: m["body"] == f"setup sentinel {i}")
        contacts.append((acct, c))
    assert b.plugin["xep_0352"].enabled, "the server did not advertise <csi/>"
    b.inbox.mark()
    b.since = len(b.inbox.items)  # statuses() looks at what came after this
    return bob, b, contacts


def presences(client, full: str) -> list:
    """Presences from `full` received since setup()."""
    return [p for p in client.inbox.items[client.since:]
            if p.name == "presence" and p["from"].full == full]


def statuses(client, full: str) -> list[str]:
    return [p["status"] for p in presences(client, full) if p["type"] != "unavailable"]


async def go_inactive(b):
    b.plugin["xep_0352"].send_inactive()
    await server_roundtrip(b)  # <inactive/> handled before anything that follows


async def test_csi_feature_offered(server):
    bob = server.account("bob")
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        assert b.plugin["xep_0352"].enabled
    finally:
        await close_all(b)


async def test_inactive_holds_presence_and_message_flushes_latest(server):
    bob, b, [(alice, a)] = await setup(server)
    full = f"{alice.jid}/c"
    try:
        await go_inactive(b)
        for s in ("first", "second", "third"):
            a.send_presence(pstatus=s, pshow="away")
        await server_roundtrip(a)  # all three routed to bob's session
        a.send_message(mto=f"{bob.jid}/b", mbody="wake up", mtype="chat")
        msg = await b.wait_message(lambda m: m["body"] == "wake up")
        assert statuses(b, full) == ["third"], \
            f"while inactive only the latest presence must be delivered, got {statuses(b, full)}"
        held = presences(b, full)[0]
        assert b.inbox.items.index(held) < b.inbox.items.index(msg), \
            "the held presence must be flushed before the message"
        assert held["type"] == "away"
    finally:
        await close_all(a, b)


async def test_latest_per_contact(server):
    bob, b, [(alice, a), (carol, c)] = await setup(server, n_contacts=2)
    try:
        await go_inactive(b)
        a.send_presence(pstatus="alice 1")
        c.send_presence(pstatus="carol 1")
        a.send_presence(pstatus="alice 2")
        c.send_presence(pstatus="carol 2")
        c.send_presence(pstatus="carol 3")
        await server_roundtrip(a)
        await server_roundtrip(c)
        c.send_message(mto=f"{bob.jid}/b", mbody="flush", mtype="chat")
        await b.wait_message(lambda m: m["body"] == "flush")
        assert statuses(b, f"{alice.jid}/c") == ["alice 2"]
        assert statuses(b, f"{carol.jid}/c") == ["carol 3"]
    finally:
        await close_all(a, c, b)


async def test_message_without_body_does_not_flush(server):
    """A chat-state-only message is not important: presence stays held (and
    the chat state with it) until a message with a body comes."""
    bob, b, [(alice, a)] = await setup(server)
    full = f"{alice.jid}/c"
    try:
        await go_inactive(b)
        a.send_presence(pstatus="one")
        a.send_presence(pstatus="two")
        m = a.make_message(mto=f"{bob.jid}/b", mtype="chat")
        m.xml.append(m.xml.makeelement("{http://jabber.org/protocol/chatstates}composing", {}))
        m.send()
        a.send_presence(pstatus="three")
        await server_roundtrip(a)
        a.send_message(mto=f"{bob.jid}/b", mbody="now", mtype="chat")
        await b.wait_message(lambda m: m["body"] == "now")
        # Had the composing notification flushed, "two" would have come through.
        assert statuses(b, full) == ["three"], statuses(b, full)
    finally:
        await close_all(a, b)


async def test_active_flushes_held_presence(server):
    bob, b, [(alice, a)] = await setup(server)
    full = f"{alice.jid}/c"
    try:
        await go_inactive(b)
        a.send_presence(pstatus="held 1", pshow="dnd")
        a.send_presence(pstatus="held 2", pshow="xa")
        await server_roundtrip(a)
        b.plugin["xep_0352"].send_active()
        p = await b.wait_presence(lambda p: p["from"].full == full, "bob: held presence after <active/>")
        assert p["status"] == "held 2" and p["type"] == "xa"
        # Active again: every update passes straight through.
        a.send_presence(pstatus="live 1")
        a.send_presence(pstatus="live 2")
        await b.wait_presence(lambda p: p["from"].full == full and p["status"] == "live 2")
        assert statuses(b, full) == ["held 2", "live 1", "live 2"]
    finally:
        await close_all(a, b)


async def test_unavailable_held_and_replaced(server):
    """Unavailable is presence too: a contact who flaps off and on while bob is
    inactive shows up once, in its final state."""
    bob, b, [(alice, a)] = await setup(server)
    full = f"{alice.jid}/c"
    try:
        await go_inactive(b)
        a.send_presence(ptype="unavailable", pstatus="gone")
        a.send_presence(pstatus="back")
        await server_roundtrip(a)
        a.send_message(mto=f"{bob.jid}/b", mbody="hello again", mtype="chat")
        await b.wait_message(lambda m: m["body"] == "hello again")
        got = [(p["type"], p["status"]) for p in presences(b, full)]
        assert got == [("available", "back")], got
    finally:
        await close_all(a, b)
