"""IQs across servers (issue 8): service discovery of the other server,
vCards (XEP-0054) of users on the other server in both directions, last
activity (XEP-0012) of an xmppd user asked by a subscribed remote contact
(and refused to a stranger), and chat markers (XEP-0333) travelling with
the conversation."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError

from test_peers_federate import FED_TIMEOUT, expect, login
from test_xmppd_federation import warm_up
from xmppclient import close_all

PLUGINS = ("xep_0030", "xep_0054", "xep_0012", "xep_0333")


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request, peers):
    return peers[request.param]


async def test_disco_of_the_other_server(xm, peer):
    a = await login(xm, "alice", "fed-disco", PLUGINS)
    b = await login(peer, "bob", "fed-disco", PLUGINS)
    try:
        await warm_up(a, b)
        info = await b.plugin["xep_0030"].get_info(jid=JID(xm.domain), timeout=FED_TIMEOUT)
        features = set(info["disco_info"]["features"])
        assert "urn:xmpp:ping" in features and "http://jabber.org/protocol/disco#info" in features, features
        assert ("server", "im") in {(i[0], i[1]) for i in info["disco_info"]["identities"]}
        info = await a.plugin["xep_0030"].get_info(jid=JID(peer.domain), timeout=FED_TIMEOUT)
        assert ("server", "im") in {(i[0], i[1]) for i in info["disco_info"]["identities"]}
    finally:
        await close_all(a, b)


async def test_vcards_both_ways(xm, peer):
    a = await login(xm, "alice", "fed-vcard", PLUGINS)
    b = await login(peer, "bob", "fed-vcard", PLUGINS)
    try:
        await warm_up(a, b)
        token = secrets.token_hex(3)
        for c, name in ((a, f"Alice {token}"), (b, f"Bob {token}")):
            vc = c.plugin["xep_0054"].make_vcard()
            vc["FN"] = name
            await c.plugin["xep_0054"].publish_vcard(vc, timeout=FED_TIMEOUT)
        got = await b.plugin["xep_0054"].get_vcard(JID(a.boundjid.bare), timeout=FED_TIMEOUT)
        assert got["vcard_temp"]["FN"] == f"Alice {token}", got
        got = await a.plugin["xep_0054"].get_vcard(JID(b.boundjid.bare), timeout=FED_TIMEOUT)
        assert got["vcard_temp"]["FN"] == f"Bob {token}", got
    finally:
        await close_all(a, b)


async def test_last_activity_for_a_subscribed_remote_contact(xm, peer):
    bob = await login(xm, "bob", "fed-last", PLUGINS)
    friend = await login(peer, "alice", "fed-last", PLUGINS)
    stranger = await login(peer, "bob", "fed-last", PLUGINS)
    try:
        await warm_up(bob, friend)
        # Start from no relationship: the peers keep rosters between runs.
        for c, other in ((friend, bob), (bob, friend)):
            try:
                await asyncio.wait_for(c.del_roster_item(JID(other.boundjid.bare)), FED_TIMEOUT)
            except Exception:
                pass
        await asyncio.sleep(1)
        for c in (bob, friend):  # what the clean-up caused is not what we test
            c.inbox._consumed.update(range(len(c.inbox.items)))
        # friend subscribes to bob@xmppd's presence; bob approves.
        friend.send_presence(pto=JID(bob.boundjid.bare), ptype="subscribe")
        await expect(bob, lambda s: s.name == "presence" and s["type"] == "subscribe"
                     and s["from"].bare == friend.boundjid.bare, "subscription request", sender=friend)
        bob.send_presence(pto=JID(friend.boundjid.bare), ptype="subscribed")
        await expect(friend, lambda s: s.name == "presence" and s["type"] == "subscribed"
                     and s["from"].bare == bob.boundjid.bare, "approval", sender=bob)
        status = f"gone fishing {secrets.token_hex(2)}"
        bob.send_presence(ptype="unavailable", pstatus=status)
        await close_all(bob)
        await expect(friend, lambda s: s.name == "presence" and s["type"] == "unavailable"
                     and s["from"].bare == bob.boundjid.bare, "bob leaving", sender=friend)

        last = await friend.plugin["xep_0012"].get_last_activity(JID(bob.boundjid.bare), timeout=FED_TIMEOUT)
        assert last["type"] == "result", last
        assert int(last["last_activity"]["seconds"]) >= 0
        assert last["last_activity"]["status"] == status, last
        # Someone without a subscription learns nothing (XEP-0012 §4).
        with pytest.raises(IqError) as err:
            await stranger.plugin["xep_0012"].get_last_activity(JID(bob.boundjid.bare), timeout=FED_TIMEOUT)
        assert err.value.iq["error"]["condition"] in ("forbidden", "subscription-required"), err.value.iq
    finally:
        await close_all(bob, friend, stranger)


async def test_chat_markers_travel_with_the_chat(xm, peer):
    a = await login(xm, "alice", "fed-mark", PLUGINS)
    b = await login(peer, "bob", "fed-mark", PLUGINS)
    try:
        await warm_up(a, b)
        mid = f"m-{secrets.token_hex(4)}"
        a.send_raw(f"<message xmlns='jabber:client' to='{b.boundjid}' id='{mid}' type='chat'>"
                   "<body>read me</body><markable xmlns='urn:xmpp:chat-markers:0'/></message>")
        m = await expect(b, lambda m: m.name == "message" and m["id"] == mid, "markable message", sender=a)
        assert m.xml.find("{urn:xmpp:chat-markers:0}markable") is not None
        b.send_raw(f"<message xmlns='jabber:client' to='{a.boundjid}' id='d-{mid}' type='chat'>"
                   f"<displayed xmlns='urn:xmpp:chat-markers:0' id='{mid}'/></message>")
        d = await expect(a, lambda m: m.name == "message" and m["id"] == f"d-{mid}", "displayed marker", sender=b)
        assert d.xml.find("{urn:xmpp:chat-markers:0}displayed").get("id") == mid
    finally:
        await close_all(a, b)
