"""The federation harness works: Prosody (pr.localhost, 127.0.0.3) and ejabberd
(ej.localhost, 127.0.0.4), started by peers.sh, federate over s2s found by
default discovery (no SRV record -> A record, port 5269), dialback with
certificates they cannot verify.  Clients log in over c2s STARTTLS with
self-signed certificates accepted (xmppclient.Client)."""

from __future__ import annotations

import asyncio
import secrets

from slixmpp import JID

from xmppclient import Client, close_all

# The first stanza to a domain waits for the s2s connection: DNS, TCP, STARTTLS
# and dialback (the receiver connects back to verify), both ways.
FED_TIMEOUT = 30.0
MUC_PLUGINS = ("xep_0045", "xep_0004", "xep_0203")


async def expect(receiver: Client, pred, what: str, sender: Client):
    """The first stanza at `receiver` matching pred, within FED_TIMEOUT; fails at once
    (instead of timing out) when `sender` gets an error bounce, e.g.
    remote-server-not-found when the s2s connection could not be made."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FED_TIMEOUT
    while True:
        bounces = sender.inbox.matching(lambda s: s.name == "message" and s["type"] == "error")
        assert not bounces, f"{what}: bounced to the sender: {bounces[-1]}"
        if receiver.inbox.matching(pred) or loop.time() >= deadline:
            return await receiver.inbox.wait_for(pred, 0.1, what)
        await asyncio.sleep(0.1)


async def login(peer, user: str, resource: str, plugins=()) -> Client:
    c = Client(peer, peer.account(user), resource=resource, plugins=plugins)
    await c.login()
    assert c.tls_version, f"{c.boundjid}: c2s not encrypted"
    return c


async def warm_up(a, b):
    """Have both servers' s2s streams up before asserting: a peer's first
    attempt can fail on its own (ejabberd may try an address where nothing
    listens first and bounce what it queued); the RFC leaves retrying to
    the sender. Bounded: a few pings each way."""
    for src, dst in ((a, JID(b.boundjid.domain)), (b, JID(a.boundjid.domain))):
        for attempt in range(5):
            try:
                await src.plugin["xep_0199"].send_ping(dst, timeout=FED_TIMEOUT)
                break
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(1)
    for c in (a, b):
        c.inbox._consumed.update(range(len(c.inbox.items)))


async def test_messages_both_ways(pr, ej):
    a = await login(pr, "alice", "fed-msg")
    b = await login(ej, "bob", "fed-msg")
    try:
        await warm_up(a, b)
        token = secrets.token_hex(4)
        a.send_message(mto="bob@ej.localhost", mbody=f"hello ej {token} <&>", mtype="chat")
        m = await expect(b, lambda m: m.name == "message" and m["body"] == f"hello ej {token} <&>",
                         "alice@pr -> bob@ej over s2s", sender=a)
        assert m["from"] == a.boundjid, m["from"]
        assert m["type"] == "chat"

        b.send_message(mto=a.boundjid, mbody=f"hello pr {token} \u00e9\U0001f44b", mtype="chat")
        m = await expect(a, lambda m: m.name == "message" and m["body"] == f"hello pr {token} \u00e9\U0001f44b",
                         "bob@ej -> alice@pr over s2s", sender=b)
        assert m["from"] == b.boundjid, m["from"]
    finally:
        await close_all(a, b)


async def test_iq_ping_across(pr, ej):
    a = await login(pr, "alice", "fed-ping")
    b = await login(ej, "bob", "fed-ping")
    try:
        # client to remote client (full JIDs), both directions
        await a.plugin["xep_0199"].send_ping(b.boundjid, timeout=FED_TIMEOUT)
        await b.plugin["xep_0199"].send_ping(a.boundjid, timeout=FED_TIMEOUT)
        # client to the remote server itself
        await a.plugin["xep_0199"].send_ping(JID("ej.localhost"), timeout=FED_TIMEOUT)
        await b.plugin["xep_0199"].send_ping(JID("pr.localhost"), timeout=FED_TIMEOUT)
    finally:
        await close_all(a, b)


async def test_prosody_user_in_ejabberd_room(pr, ej):
    room = JID(f"fed-{secrets.token_hex(4)}@conference.ej.localhost")
    a = await login(pr, "alice", "fed-muc", MUC_PLUGINS)
    b = await login(ej, "bob", "fed-muc", MUC_PLUGINS)
    try:
        muc_a, muc_b = a.plugin["xep_0045"], b.plugin["xep_0045"]
        pres, _subject, _occupants, _history = await muc_a.join_muc_wait(room, "Alice", timeout=FED_TIMEOUT)
        codes = set(pres["muc"]["status_codes"])
        assert 110 in codes, codes
        assert pres["muc"]["affiliation"] == "owner", "the remote creator owns the room"
        if 201 in codes:  # a new room may stay locked until configured: accept the defaults
            await muc_a.set_room_config(room, a.plugin["xep_0004"].make_form(ftype="submit"),
                                        timeout=FED_TIMEOUT)

        pres, _, occupants, _ = await muc_b.join_muc_wait(room, "Bob", timeout=FED_TIMEOUT)
        assert f"{room.bare}/Alice" in {o["from"].full for o in occupants}, occupants
        await a.wait_presence(lambda p: p["from"].full == f"{room.bare}/Bob",
                              "bob's join seen by the remote occupant", timeout=FED_TIMEOUT)

        a.send_message(mto=room, mbody="from pr", mtype="groupchat")
        for c in (a, b):
            await c.wait_message(lambda m: m["type"] == "groupchat" and m["body"] == "from pr"
                                 and m["from"].full == f"{room.bare}/Alice",
                                 f"{c.boundjid}: groupchat from the Prosody user", timeout=FED_TIMEOUT)
        b.send_message(mto=room, mbody="from ej", mtype="groupchat")
        await a.wait_message(lambda m: m["type"] == "groupchat" and m["body"] == "from ej"
                             and m["from"].full == f"{room.bare}/Bob",
                             "groupchat from the ejabberd user, at the Prosody user", timeout=FED_TIMEOUT)

        muc_a.leave_muc(room, "Alice")
        await b.wait_presence(lambda p: p["from"].full == f"{room.bare}/Alice" and p["type"] == "unavailable",
                              "the Prosody user leaving", timeout=FED_TIMEOUT)
    finally:
        await close_all(a, b)
