"""RFC 6121 §5 and §8 message routing: full and bare JIDs, priorities, bodies
intact, `from` stamped by the server, bounces for unknown users (slixmpp)."""

import asyncio

import pytest
from slixmpp.exceptions import IqError

from xmppclient import close_all, connect

BODIES = {
    "ascii": "hello bob",
    "markup-chars": "5 < 6 && 7 > 3; \"quoted\" and 'single' & done </body><evil/>",
    "unicode": "Grüße — 日本語 — עברית — Ελληνικά — emoji 😀🎉👩‍👩‍👧",
    "whitespace": "  line one\n\tline two\n\n  trailing  ",
    "cdata-like": "<![CDATA[not cdata]]> ]]> &amp; &#x41; &lt;",
}


@pytest.mark.parametrize("body", list(BODIES), ids=list(BODIES))
async def test_chat_both_ways_bodies_intact(server, body):
    text = BODIES[body]
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        msg = a.make_message(mto=f"{bob.jid}/b", mbody=text, mtype="chat")
        msg["id"] = "m-a2b"
        msg.send()
        got = await b.wait_message(lambda m: m["id"] == "m-a2b", "bob: message from alice")
        assert got["body"] == text
        assert got["from"].full == f"{alice.jid}/a", "server must stamp the sender's full JID"
        assert got["to"].full == f"{bob.jid}/b"
        assert got["type"] == "chat"

        reply = b.make_message(mto=got["from"], mbody=text[::-1], mtype="chat")
        reply["id"] = "m-b2a"
        reply.send()
        got = await a.wait_message(lambda m: m["id"] == "m-b2a", "alice: reply from bob")
        assert got["body"] == text[::-1]
        assert got["from"].full == f"{bob.jid}/b"
    finally:
        await close_all(a, b)


async def test_many_messages_arrive_in_order(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        n = 50
        for i in range(n):
            a.send_message(mto=f"{bob.jid}/b", mbody=f"seq {i}", mtype="chat")
        await b.wait_message(lambda m: m["body"] == f"seq {n - 1}", "last message")
        seq = [m["body"] for m in b.inbox.items if m.name == "message" and m["body"].startswith("seq ")]
        assert seq == [f"seq {i}" for i in range(n)]
    finally:
        await close_all(a, b)


async def test_bare_jid_message_goes_to_highest_priority_resource(server):
    alice, bob = server.accounts("alice", "bob")
    high = await connect(server, bob, resource="high", priority=10)
    low = await connect(server, bob, resource="low", priority=1)
    a = await connect(server, alice, resource="a")
    try:
        a.send_message(mto=bob.jid, mbody="to the bare JID", mtype="chat")
        got = await high.wait_message(lambda m: m["body"] == "to the bare JID", "bob/high: bare-JID message")
        assert got["from"].full == f"{alice.jid}/a"
        # Sentinel to the low-priority resource: sent later, so if the bare-JID
        # message had gone there it would already be in its inbox.
        a.send_message(mto=f"{bob.jid}/low", mbody="sentinel", mtype="chat")
        await low.wait_message(lambda m: m["body"] == "sentinel")
        assert not low.inbox.matching(lambda s: s.name == "message" and s["body"] == "to the bare JID"), \
            "bare-JID message delivered to a lower-priority resource"

        # Priorities change: now 'low' is the most available one.
        low.send_presence(ppriority=20)
        await low.plugin["xep_0199"].ping(server.domain, timeout=10)
        a.send_message(mto=bob.jid, mbody="second bare message", mtype="chat")
        await low.wait_message(lambda m: m["body"] == "second bare message", "bob/low after priority change")
    finally:
        await close_all(a, high, low)


async def test_full_jid_message_only_to_that_resource(server):
    alice, bob = server.accounts("alice", "bob")
    one = await connect(server, bob, resource="one", priority=5)
    two = await connect(server, bob, resource="two", priority=5)
    a = await connect(server, alice, resource="a")
    try:
        a.send_message(mto=f"{bob.jid}/one", mbody="only for one", mtype="chat")
        await one.wait_message(lambda m: m["body"] == "only for one")
        a.send_message(mto=f"{bob.jid}/two", mbody="sentinel", mtype="chat")
        await two.wait_message(lambda m: m["body"] == "sentinel")
        assert not two.inbox.matching(lambda s: s.name == "message" and s["body"] == "only for one")
    finally:
        await close_all(a, one, two)


async def test_message_to_unknown_user_bounces_service_unavailable(server):
    alice = server.account("alice")
    ghost = f"{server.unused_localpart('ghost')}@{server.domain}"
    a = await connect(server, alice, resource="a")
    try:
        msg = a.make_message(mto=ghost, mbody="anyone there?", mtype="chat")
        msg["id"] = "to-ghost-1"
        msg.send()
        err = await a.wait_message(lambda m: m["type"] == "error", "error bounce")
        assert err["id"] == "to-ghost-1"
        assert err["from"].bare == ghost
        assert err["error"]["condition"] == "service-unavailable"
        assert err["error"]["type"] == "cancel"
    finally:
        await close_all(a)


async def test_iq_to_unknown_user_service_unavailable(server):
    alice = server.account("alice")
    ghost = f"{server.unused_localpart('ghost')}@{server.domain}"
    a = await connect(server, alice, resource="a")
    try:
        with pytest.raises(IqError) as ei:
            await a.plugin["xep_0199"].send_ping(f"{ghost}/res", timeout=10)
        assert ei.value.iq["error"]["condition"] == "service-unavailable"
    finally:
        await close_all(a)


async def test_iq_to_offline_full_jid_service_unavailable(server):
    """RFC 6121 §8.5.3.2.1: IQ to a full JID with no such session."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    try:
        with pytest.raises(IqError) as ei:
            await a.plugin["xep_0199"].send_ping(f"{bob.jid}/not-online", timeout=10)
        assert ei.value.iq["error"]["condition"] == "service-unavailable"
    finally:
        await close_all(a)


async def test_iq_routed_between_full_jids(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        # slixmpp answers XEP-0199 pings and XEP-0092 version queries itself.
        res = await a.plugin["xep_0199"].send_ping(f"{bob.jid}/b", timeout=10)
        assert res["type"] == "result"
        assert res["from"].full == f"{bob.jid}/b"
        ver = await a.plugin["xep_0092"].get_version(f"{bob.jid}/b", timeout=10)
        assert ver["software_version"]["name"], "version reply lost in routing"
    finally:
        await close_all(a, b)


async def test_server_stamps_from_over_a_forged_one(server):
    """A client cannot send as someone else: the server either overwrites the
    forged `from` with the real full JID or rejects the stanza."""
    alice, bob, mallory = server.accounts("alice", "bob", "mallory")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        msg = a.make_message(mto=f"{bob.jid}/b", mbody="forged", mtype="chat")
        msg["from"] = f"{mallory.jid}/evil"
        msg["id"] = "forged-1"
        msg.send()
        a.send_message(mto=f"{bob.jid}/b", mbody="sentinel-forge", mtype="chat")
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(b.wait_message(lambda m: m["body"] == "sentinel-forge")),
             asyncio.ensure_future(a.wait_closed())],
            timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert done, "neither the sentinel arrived nor was alice disconnected"
        forged = b.inbox.matching(lambda s: s.name == "message" and s["body"] == "forged")
        for m in forged:
            assert m["from"].full == f"{alice.jid}/a", f"forged from delivered: {m['from']}"
    finally:
        await close_all(a, b)


async def test_large_message_under_limit_delivered_intact(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        text = ("0123456789abcdef" * (server.max_stanza_bytes // 2 // 16 + 1))[: server.max_stanza_bytes // 2]
        a.send_message(mto=f"{bob.jid}/b", mbody=text, mtype="chat")
        got = await b.wait_message(lambda m: len(m["body"]) > 1000)
        assert got["body"] == text
    finally:
        await close_all(a, b)


async def test_headline_and_normal_types_preserved(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        for t in ("normal", "headline"):
            a.send_message(mto=f"{bob.jid}/b", mbody=f"type {t}", mtype=t, msubject=f"subj {t}")
            got = await b.wait_message(lambda m, t=t: m["body"] == f"type {t}")
            assert got["type"] == t
            assert got["subject"] == f"subj {t}"
    finally:
        await close_all(a, b)
