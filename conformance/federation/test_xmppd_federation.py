"""xmppd federates with real Prosody and ejabberd (issue 8): users on each
side subscribe, see each other's presence, chat both ways with receipts and
ping each other; a domain nobody serves bounces remote-server-not-found."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from slixmpp import JID

from test_peers_federate import FED_TIMEOUT, expect, login, warm_up  # noqa: F401 (re-exported)
from xmppclient import close_all


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request, peers):
    return peers[request.param]


async def test_chat_both_ways_with_receipts(xm, peer):
    a = await login(xm, "alice", "fed-chat")
    b = await login(peer, "bob", "fed-chat")
    try:
        await warm_up(a, b)
        token = secrets.token_hex(4)
        body = f"from xmppd {token} <&> é👋"
        a.send_message(mto=b.boundjid, mbody=body, mtype="chat")
        m = await expect(b, lambda m: m.name == "message" and m["body"] == body,
                         f"alice@xmppd -> bob@{peer.domain}", sender=a)
        assert m["from"] == a.boundjid, m["from"]
        # A delivery receipt (XEP-0184) travels back as an ordinary message.
        b.send_message(mto=a.boundjid, mbody=f"reply {token}", mtype="chat")
        b.send_raw(f"<message xmlns='jabber:client' to='{a.boundjid}' id='r-{token}'>"
                   f"<received xmlns='urn:xmpp:receipts' id='m-{token}'/></message>")
        m = await expect(a, lambda m: m.name == "message" and m["body"] == f"reply {token}",
                         f"bob@{peer.domain} -> alice@xmppd", sender=b)
        assert m["from"] == b.boundjid
        got = await expect(a, lambda m: m.name == "message" and m["id"] == f"r-{token}",
                           "receipt back", sender=b)
        assert got["from"] == b.boundjid
        assert got.xml.find("{urn:xmpp:receipts}received").get("id") == f"m-{token}"
    finally:
        await close_all(a, b)


async def test_subscription_and_presence(xm, peer):
    a = await login(xm, "alice", "fed-sub")
    b = await login(peer, "bob", "fed-sub")
    try:
        await warm_up(a, b)
        bob = JID(b.boundjid.bare)
        alice = JID(a.boundjid.bare)
        # Start from no relationship: the peers keep rosters between runs.
        for c, other in ((a, bob), (b, alice)):
            try:
                await asyncio.wait_for(c.del_roster_item(other), FED_TIMEOUT)
            except Exception:
                pass
        await asyncio.sleep(1)
        for c in (a, b):  # what the clean-up caused is not what we test
            c.inbox._consumed.update(range(len(c.inbox.items)))
        a.send_presence(pto=bob, ptype="subscribe")
        await expect(b, lambda s: s.name == "presence" and s["type"] == "subscribe"
                     and s["from"].bare == alice.bare, "subscribe at the peer", sender=a)
        b.send_presence(pto=alice, ptype="subscribed")
        await expect(a, lambda s: s.name == "presence" and s["type"] == "subscribed"
                     and s["from"].bare == bob.bare, "subscribed back", sender=b)
        # Now alice sees bob's presence (the peer answers our probe or broadcasts).
        b.send_presence(pstatus=f"here {secrets.token_hex(2)}")
        await expect(a, lambda s: s.name == "presence" and s["from"] == b.boundjid
                     and s["type"] in ("available", ""), "bob's presence at alice", sender=b)
        # And the reverse: bob subscribes to alice, alice approves, bob sees alice.
        b.send_presence(pto=alice, ptype="subscribe")
        await expect(a, lambda s: s.name == "presence" and s["type"] == "subscribe"
                     and s["from"].bare == bob.bare, "subscribe at xmppd", sender=b)
        a.send_presence(pto=bob, ptype="subscribed")
        await expect(b, lambda s: s.name == "presence" and s["from"] == a.boundjid
                     and s["type"] in ("available", ""), "alice's presence at bob", sender=a)
    finally:
        await close_all(a, b)


async def test_ping_across(xm, peer):
    a = await login(xm, "alice", "fed-ping")
    b = await login(peer, "bob", "fed-ping")
    try:
        await warm_up(a, b)
        await a.plugin["xep_0199"].send_ping(b.boundjid, timeout=FED_TIMEOUT)
        await b.plugin["xep_0199"].send_ping(a.boundjid, timeout=FED_TIMEOUT)
        await a.plugin["xep_0199"].send_ping(JID(peer.domain), timeout=FED_TIMEOUT)
        await b.plugin["xep_0199"].send_ping(JID(xm.domain), timeout=FED_TIMEOUT)
    finally:
        await close_all(a, b)


async def test_unreachable_domain_bounces(xm):
    a = await login(xm, "alice", "fed-bounce")
    try:
        a.send_message(mto="nobody@nowhere.invalid", mbody="hello?", mtype="chat")
        err = await a.inbox.wait_for(lambda m: m.name == "message" and m["type"] == "error",
                                     FED_TIMEOUT, "bounce")
        assert err["error"]["condition"] in ("remote-server-not-found", "remote-server-timeout"), err
    finally:
        await close_all(a)


def test_unauthenticated_sending_domain_is_refused(peers, tmp_path):
    """A server stream that never authenticated (no SASL, no dialback) and sends a
    stanza anyway is closed with <invalid-from/> (RFC 6120 §4.9.3.10). Against an
    xmppd that allows dialback (xmppd2, self-signed): a strict one refuses such a
    stream before any stanza (test_s2s_auth.py)."""
    from conftest import STATE, XMPPD2_DOMAIN, XMPPD2_HOST, run_xmppd
    with run_xmppd(tmp_path, XMPPD2_DOMAIN, XMPPD2_HOST, STATE / "certs" / "self") as xm:
        _spoof(xm)


def _spoof(xm):
    from conftest import FEATURES_END, raw_s2s_stream, read_until
    tls = raw_s2s_stream(xm, "evil.localhost")
    assert b"stream:features" in read_until(tls, FEATURES_END)
    tls.sendall(f"<message from='mallory@evil.localhost' to='alice@{xm.domain}' type='chat'>"
                "<body>spoofed</body></message>".encode())
    answer = read_until(tls, b"</stream:stream>")
    assert b"invalid-from" in answer, answer
    tls.close()
