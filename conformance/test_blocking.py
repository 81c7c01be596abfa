"""XEP-0191 blocking command with slixmpp's xep_0191 plugin: the blocklist
(get, block, unblock, unblock-all, pushes to the user's other resources), a
blocked contact's messages bounce and never arrive, the user's own messages to
it are refused, presence stops both ways while blocked and comes back on
unblock, and last activity is hidden from it."""

import pytest
from slixmpp import JID

from xmppclient import IqError, Events, close_all, connect, server_roundtrip, subscribe_mutually

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
PLUGINS = ("xep_0191", "xep_0012")


async def paired(server):
    """alice and bob, mutually subscribed and online; inboxes settled and cleared."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    await subscribe_mutually(a, b)
    for x, y, yacct in ((a, b, bob), (b, a, alice)):
        # A message on each path, so the handshake's presences are all in.
        x.send_message(mto=f"{yacct.jid}/{y.boundjid.resource}", mbody="settle", mtype="chat")
        await y.wait_message(lambda m: m["body"] == "settle")
    for c in (a, b):
        c.inbox.mark()
        c.since = len(c.inbox.items)
    return alice, bob, a, b


def presences_since(client, bare: str) -> list:
    return [p for p in client.inbox.items[client.since:]
            if p.name == "presence" and p["from"].bare == bare]


async def test_feature_advertised(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        info = await a.plugin["xep_0030"].get_info(jid=server.domain, timeout=10)
        assert NS_BLOCKING in info["disco_info"]["features"]
    finally:
        await close_all(a)


async def test_block_unblock_list_and_pushes(server):
    alice, bob, carol = server.accounts("alice", "bob", "carol")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    other = await connect(server, alice, resource="other", plugins=PLUGINS)
    blocked_push = Events(other, "blocked")
    unblocked_push = Events(other, "unblocked")
    try:
        blk = a.plugin["xep_0191"]
        assert await blk.get_blocked_jids(timeout=10) == set()

        await blk.block([bob.jid, carol.jid], timeout=10)
        assert {j.bare for j in await blk.get_blocked_jids(timeout=10)} == {bob.jid, carol.jid}
        push = await blocked_push.wait(what="block push to alice/other")
        assert {JID(i["jid"]).bare for i in push["block"]["items"]} == {bob.jid, carol.jid}
        # The list is kept by the server: a new session sees it.
        assert {j.bare for j in await other.plugin["xep_0191"].get_blocked_jids(timeout=10)} == {bob.jid, carol.jid}

        await blk.unblock([bob.jid], timeout=10)
        assert {j.bare for j in await blk.get_blocked_jids(timeout=10)} == {carol.jid}
        push = await unblocked_push.wait(what="unblock push")
        assert [JID(i["jid"]).bare for i in push["unblock"]["items"]] == [bob.jid]

        # An empty <unblock/> unblocks everything.
        iq = a.make_iq_set()
        iq.enable("unblock")
        await iq.send(timeout=10)
        assert await blk.get_blocked_jids(timeout=10) == set()
        await unblocked_push.wait(lambda p: len(p["unblock"]["items"]) == 0, "unblock-all push")

        # An empty <block/> is a bad request.
        iq = a.make_iq_set()
        iq.enable("block")
        with pytest.raises(IqError) as ei:
            await iq.send(timeout=10)
        assert ei.value.iq["error"]["condition"] == "bad-request"
    finally:
        await close_all(a, other)


async def test_blocked_contact_messages_bounce(server):
    alice, bob, a, b = await paired(server)
    try:
        await a.plugin["xep_0191"].block(bob.jid, timeout=10)
        m = b.make_message(mto=f"{alice.jid}/a", mbody="can you hear me?", mtype="chat")
        m["id"] = "blocked-1"
        m.send()
        b.send_message(mto=alice.jid, mbody="to the bare jid", mtype="chat")
        err = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "blocked-1",
                                   "bob: bounce for a message to someone who blocked him")
        assert err["error"]["condition"] == "service-unavailable"
        assert err["from"].bare == alice.jid
        await b.wait_message(lambda m: m["type"] == "error", "bob: bounce for the bare-JID message")
        # alice's queue: anything of bob's would be ahead of this round trip's answer.
        await server_roundtrip(a)
        assert not a.inbox.matching(lambda s: s.name == "message" and s["from"].bare == bob.jid
                                    and s["body"] in ("can you hear me?", "to the bare jid")), \
            "a blocked contact's message was delivered"

        # Nor is it stored for later.
        await a.close()
        m = b.make_message(mto=alice.jid, mbody="while you are away", mtype="chat")
        m["id"] = "blocked-offline"
        m.send()
        await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "blocked-offline",
                             "bob: bounce while alice is offline")
        a = await connect(server, alice, resource="a2", plugins=PLUGINS)
        await a.plugin["xep_0191"].unblock(bob.jid, timeout=10)
        b.send_message(mto=f"{alice.jid}/a2", mbody="after unblock", mtype="chat")
        await a.wait_message(lambda m: m["body"] == "after unblock")
        assert not a.inbox.matching(lambda s: s.name == "message" and s["body"] == "while you are away")
    finally:
        await close_all(a, b)


async def test_messages_to_blocked_contact_refused(server):
    alice, bob, a, b = await paired(server)
    try:
        await a.plugin["xep_0191"].block(bob.jid, timeout=10)
        m = a.make_message(mto=f"{bob.jid}/b", mbody="oops", mtype="chat")
        m["id"] = "to-blocked-1"
        m.send()
        err = await a.wait_message(lambda m: m["type"] == "error" and m["id"] == "to-blocked-1")
        assert err["error"]["condition"] == "not-acceptable"
        assert err.xml.find(f".//{{{NS_BLOCKING_ERRORS}}}blocked") is not None, \
            f"no <blocked xmlns='{NS_BLOCKING_ERRORS}'/> in {err}"
        await server_roundtrip(b)
        assert not b.inbox.matching(lambda s: s.name == "message" and s["body"] == "oops")
    finally:
        await close_all(a, b)


async def test_presence_stops_while_blocked_and_returns(server):
    alice, bob, a, b = await paired(server)
    try:
        await a.plugin["xep_0191"].block(bob.jid, timeout=10)
        # Blocking makes alice vanish for bob.
        await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["type"] == "unavailable",
                              "bob: alice unavailable once she blocked him")

        # alice's updates do not reach bob...
        a.send_presence(pstatus="secret status")
        # ...and bob's do not reach alice.
        b.send_presence(pstatus="bob's update")
        b.send_message(mto=f"{alice.jid}/a", mbody="ping?", mtype="chat")
        await b.wait_message(lambda m: m["type"] == "error")  # bob's stanzas handled
        await server_roundtrip(a)
        assert not [p for p in presences_since(a, bob.jid) if p["status"] == "bob's update"], \
            "a blocked contact's presence reached the user"

        # Unblocking brings presence back, current presence first: bob sees
        # alice's latest status, and nothing in between.
        before_unblock = len(b.inbox.items)
        await a.plugin["xep_0191"].unblock(bob.jid, timeout=10)
        p = await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["type"] == "available",
                                  "bob: alice's presence after unblock")
        assert p["status"] == "secret status"
        leaked = [p for p in b.inbox.items[b.since:before_unblock]
                  if p.name == "presence" and p["from"].bare == alice.jid and p["status"] == "secret status"]
        assert not leaked, "presence broadcast reached a blocked contact"
        p = await a.wait_presence(lambda p: p["from"].full == f"{bob.jid}/b" and p["type"] == "available",
                                  "alice: bob's presence after unblock")
        assert p["status"] == "bob's update"
    finally:
        await close_all(a, b)


async def test_last_activity_hidden_from_blocked(server):
    alice, bob, a, b = await paired(server)
    try:
        await a.plugin["xep_0191"].block(bob.jid, timeout=10)
        await a.close()
        with pytest.raises(IqError) as ei:
            await b.plugin["xep_0012"].get_last_activity(alice.jid, timeout=10)
        assert ei.value.iq["error"]["condition"] in ("forbidden", "service-unavailable", "not-acceptable")
    finally:
        await close_all(a, b)


async def test_domain_block(server):
    """Blocking the domain blocks every account on it."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        await a.plugin["xep_0191"].block(server.domain, timeout=10)
        m = b.make_message(mto=f"{alice.jid}/a", mbody="same domain", mtype="chat")
        m["id"] = "dom-1"
        m.send()
        err = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "dom-1")
        assert err["error"]["condition"] == "service-unavailable"
        await server_roundtrip(a)
        assert not a.inbox.matching(lambda s: s.name == "message" and s["body"] == "same domain")
    finally:
        await close_all(a, b)
