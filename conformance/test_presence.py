"""RFC 6121 §4 presence: broadcast, probes, unavailable on disconnect (clean
and dropped TCP), directed presence, no leaks (slixmpp)."""

import asyncio

from xmppclient import close_all, connect, subscribe_mutually


async def paired(server, *, a_res="a", b_res="b"):
    """alice and bob online with a mutual subscription; inboxes cleared."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource=a_res)
    b = await connect(server, bob, resource=b_res)
    await subscribe_mutually(a, b)
    await a.wait_presence(lambda p: p["from"].full == f"{bob.jid}/{b_res}" and p["type"] == "available")
    await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/{a_res}" and p["type"] == "available")
    a.inbox.mark()
    b.inbox.mark()
    return alice, bob, a, b


async def test_initial_presence_broadcast_to_subscriber_and_own_resources(server):
    alice, bob, a, b = await paired(server)
    t = None
    try:
        t = await connect(server, alice, resource="tablet", show="away", status="at lunch ☕ <&>", priority=3)
        p = await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/tablet", "bob: alice/tablet presence")
        assert p["type"] == "away"  # slixmpp reports <show/> as the type
        assert p["status"] == "at lunch ☕ <&>"
        assert p["priority"] == 3
        assert p["to"].bare == bob.jid
        # §4.2.2: also to the user's own other available resources.
        p = await a.wait_presence(lambda p: p["from"].full == f"{alice.jid}/tablet", "alice/a: own tablet presence")
        assert p["status"] == "at lunch ☕ <&>"
    finally:
        await close_all(a, b, t)


async def test_presence_update_broadcast(server):
    alice, bob, a, b = await paired(server)
    try:
        a.send_presence(pshow="dnd", pstatus="in a meeting")
        p = await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["status"] == "in a meeting")
        assert p["type"] == "dnd"
    finally:
        await close_all(a, b)


async def test_probe_answered_with_current_presence(server):
    """Contact comes online after the user changed status: the server's probe
    on the contact's behalf returns the user's *current* presence."""
    alice, bob, a, b = await paired(server)
    b2 = None
    try:
        await b.close()
        a.send_presence(pshow="xa", pstatus="gone fishing")
        # Let the update be processed before bob returns (bounded round trip).
        await a.plugin["xep_0199"].ping(server.domain, timeout=10)
        b2 = await connect(server, bob, resource="b2")
        p = await b2.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a", "bob: alice's presence via probe")
        assert p["type"] == "xa"
        assert p["status"] == "gone fishing"
    finally:
        await close_all(a, b2)


async def test_unavailable_on_clean_disconnect(server):
    alice, bob, a, b = await paired(server)
    try:
        await a.close()
        p = await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["type"] == "unavailable",
                                  "bob: unavailable after alice's </stream:stream>")
        assert p["to"].bare == bob.jid
    finally:
        await close_all(a, b)


async def test_unavailable_on_dropped_tcp_connection(server):
    alice, bob, a, b = await paired(server)
    try:
        a.drop()  # RST, no </stream:stream>, no TLS close_notify
        await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["type"] == "unavailable",
                              "bob: unavailable after alice's TCP connection dropped")
    finally:
        await close_all(b)


async def test_explicit_unavailable_broadcast(server):
    alice, bob, a, b = await paired(server)
    try:
        a.send_presence(ptype="unavailable", pstatus="bye for now")
        p = await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["type"] == "unavailable")
        assert p["status"] == "bye for now"
    finally:
        await close_all(a, b)


async def test_directed_presence_and_its_unavailable(server):
    """§4.6: directed presence reaches a non-subscriber; when the sender goes
    offline the server sends that entity unavailable presence too."""
    alice, dave = server.accounts("alice", "dave")
    a = await connect(server, alice, resource="a")
    d = await connect(server, dave, resource="d")
    try:
        a.send_presence(pto=f"{dave.jid}/d", pstatus="just for you")
        p = await d.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a", "dave: directed presence")
        assert p["status"] == "just for you"
        assert p["type"] == "available"
        await a.close()
        await d.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["type"] == "unavailable",
                              "dave: unavailable after directed presence")
    finally:
        await close_all(a, d)


async def test_no_presence_leak_to_non_subscriber(server):
    alice, eve = server.accounts("alice", "eve")
    e = await connect(server, eve, resource="e")
    a = await connect(server, alice, resource="a", status="private status")
    try:
        a.send_presence(pstatus="still private")
        # Sentinel: once this message arrives, any leaked presence would have too.
        a.send_message(mto=f"{eve.jid}/e", mbody="sentinel", mtype="chat")
        await e.wait_message(lambda m: m["body"] == "sentinel")
        assert e.presences_from(alice.jid) == [], "presence broadcast leaked to a non-subscriber"
    finally:
        await close_all(a, e)


async def test_presence_not_broadcast_before_initial_presence(server):
    """A resource that never sent initial presence is not available: the
    contact must not see it, and a message to the bare JID is not routed to it
    ahead of available resources."""
    alice, bob, a, b = await paired(server)
    silent = None
    try:
        silent = await connect(server, alice, resource="silent", presence=False)
        a.send_message(mto=f"{bob.jid}/b", mbody="sentinel-silent", mtype="chat")
        await b.wait_message(lambda m: m["body"] == "sentinel-silent")
        assert not [p for p in b.presences_from(alice.jid) if p["from"].resource == "silent"]
    finally:
        await close_all(a, b, silent)


async def test_many_contacts_receive_broadcast(server):
    """One user, several subscribers: each receives exactly the broadcast."""
    hub = server.account("hub")
    h = await connect(server, hub, resource="h")
    peers = []
    try:
        for i in range(3):
            acct = server.account(f"peer{i}")
            c = await connect(server, acct, resource="p")
            await subscribe_mutually(h, c)
            peers.append(c)
        for c in peers:
            c.inbox.mark()
        h.send_presence(pstatus="hello all")
        await asyncio.gather(*(c.wait_presence(lambda p: p["from"].full == f"{hub.jid}/h"
                                               and p["status"] == "hello all") for c in peers))
    finally:
        await close_all(h, *peers)
