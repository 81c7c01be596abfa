"""XEP-0160 offline storage with XEP-0203 delay stamps (slixmpp, xep_0203 and
xep_0184): messages to an account with no available resource are kept and
delivered, in order and once, at its next login; headlines are not kept;
receipts (type normal, no body) are; over the per-user cap the sender gets an
error instead of a silent drop."""

import datetime as dt

import pytest

from xmppclient import close_all, connect, server_roundtrip

OFFLINE_CAP = 8
# The cap is per account and every test uses fresh accounts, so only
# test_offline_cap_bounces_the_excess comes near it.
SERVER_OPTIONS = {"config": {"modules.offline": {"max_per_user": OFFLINE_CAP}}}

PLUGINS = ("xep_0203", "xep_0184")
NS_RECEIPTS = "urn:xmpp:receipts"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def delay_of(msg):
    """The XEP-0203 <delay/> of a message (None if absent)."""
    return msg.get_plugin("delay", check=True)


def assert_delayed(msg, *, domain: str, not_before: dt.datetime):
    d = delay_of(msg)
    assert d is not None, f"offline message without a XEP-0203 delay stamp: {msg}"
    stamp = d["stamp"]
    assert stamp is not None and stamp.tzinfo is not None, f"unparseable delay stamp in {msg}"
    # Sanity of the clock, not a timing assertion: stored after the test began
    # (one minute of slack for a coarse clock) and not in the future.
    assert not_before - dt.timedelta(minutes=1) <= stamp <= now() + dt.timedelta(minutes=1), \
        f"delay stamp {stamp} outside [{not_before}, now]"
    assert d["from"].full in ("", domain), f"delay from should be the server: {d['from']}"


def chats(client, pred=lambda m: True):
    return client.inbox.matching(lambda s: s.name == "message" and s["type"] != "error" and pred(s))


async def test_feature_advertised(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a")
    try:
        info = await a.plugin["xep_0030"].get_info(jid=server.domain, timeout=10)
        assert "msgoffline" in info["disco_info"]["features"]
    finally:
        await close_all(a)


async def test_offline_messages_arrive_in_order_with_delay(server):
    alice, bob = server.accounts("alice", "bob")
    started = now()
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = None
    try:
        n = 6
        for i in range(n):
            m = a.make_message(mto=bob.jid, mbody=f"offline {i} <&> ünïcödé", mtype="chat")
            m["id"] = f"off-{i}"
            m.send()
        await server_roundtrip(a)  # all six handled (stored) before bob logs in
        assert not a.inbox.matching(lambda s: s.name == "message" and s["type"] == "error"), \
            "a message to an offline account bounced"

        b = await connect(server, bob, resource="b", plugins=PLUGINS)
        for i in range(n):
            got = await b.wait_message(lambda m: m["body"].startswith("offline "), f"bob: offline message {i}")
            assert got["body"] == f"offline {i} <&> ünïcödé", "offline messages out of order"
            assert got["id"] == f"off-{i}"
            assert got["type"] == "chat"
            assert got["from"].full == f"{alice.jid}/a"
            assert got["to"].bare == bob.jid
            assert_delayed(got, domain=server.domain, not_before=started)
    finally:
        await close_all(a, b)


async def test_message_to_offline_full_jid_is_stored(server):
    """RFC 6121 §8.5.3.2.1: a chat message to a full JID with no session is
    treated as addressed to the bare JID, so it is stored."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = None
    try:
        a.send_message(mto=f"{bob.jid}/gone", mbody="to a vanished resource", mtype="chat")
        await server_roundtrip(a)
        b = await connect(server, bob, resource="b", plugins=PLUGINS)
        got = await b.wait_message(lambda m: m["body"] == "to a vanished resource")
        assert delay_of(got) is not None
    finally:
        await close_all(a, b)


async def test_headline_not_stored_but_normal_is(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = None
    try:
        a.send_message(mto=bob.jid, mbody="breaking news", mtype="headline")
        a.send_message(mto=bob.jid, mbody="a normal message", mtype="normal", msubject="subj")
        a.send_message(mto=bob.jid, mbody="sentinel chat", mtype="chat")
        await server_roundtrip(a)
        b = await connect(server, bob, resource="b", plugins=PLUGINS)
        normal = await b.wait_message(lambda m: m["body"] == "a normal message")
        assert normal["type"] == "normal"
        assert normal["subject"] == "subj"
        assert delay_of(normal) is not None
        # Stored messages come in order: once the later chat is here, a stored
        # headline would be too.
        await b.wait_message(lambda m: m["body"] == "sentinel chat")
        assert not chats(b, lambda m: m["body"] == "breaking news"), "headline was stored offline"
        # XEP-0160 §3: a headline to an offline user is discarded silently.
        assert not a.inbox.matching(lambda s: s.name == "message" and s["type"] == "error")
    finally:
        await close_all(a, b)


async def test_receipt_without_body_is_stored(server):
    """A XEP-0184 receipt (type normal, no body) for an offline sender is kept,
    so the sender learns of the delivery at its next login."""
    alice, bob = server.accounts("alice", "bob")
    started = now()
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = None
    try:
        r = a.make_message(mto=bob.jid)  # no type: normal
        r["receipt"] = "orig-msg-42"
        r.send()
        a.send_message(mto=bob.jid, mbody="sentinel after receipt", mtype="chat")
        await server_roundtrip(a)

        b = await connect(server, bob, resource="b", plugins=PLUGINS)
        got = await b.wait_message(lambda m: m.xml.find(f"{{{NS_RECEIPTS}}}received") is not None,
                                   "bob: stored receipt")
        assert got["receipt"] == "orig-msg-42"
        assert got["body"] == ""
        assert got["from"].full == f"{alice.jid}/a"
        assert_delayed(got, domain=server.domain, not_before=started)
        # ...and it came before the message sent after it.
        sentinel = await b.wait_message(lambda m: m["body"] == "sentinel after receipt")
        assert b.inbox.items.index(got) < b.inbox.items.index(sentinel)
    finally:
        await close_all(a, b)


async def test_delivered_once_only(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b1 = b2 = b3 = None
    try:
        for i in range(3):
            a.send_message(mto=bob.jid, mbody=f"once {i}", mtype="chat")
        await server_roundtrip(a)

        b1 = await connect(server, bob, resource="first", plugins=PLUGINS)
        for i in range(3):
            await b1.wait_message(lambda m, i=i: m["body"] == f"once {i}")
        # A second resource logging in while the first is online gets nothing
        # from storage (it was emptied by the first delivery).
        b2 = await connect(server, bob, resource="second", plugins=PLUGINS)
        a.send_message(mto=f"{bob.jid}/second", mbody="sentinel-2", mtype="chat")
        await b2.wait_message(lambda m: m["body"] == "sentinel-2")
        assert not chats(b2, lambda m: m["body"].startswith("once ")), "offline messages delivered twice"
        await close_all(b1, b2)
        b1 = b2 = None

        # A later login after everyone went offline: still nothing replayed.
        b3 = await connect(server, bob, resource="third", plugins=PLUGINS)
        a.send_message(mto=f"{bob.jid}/third", mbody="sentinel-3", mtype="chat")
        got = await b3.wait_message(lambda m: m["body"] == "sentinel-3")
        assert delay_of(got) is None, "a live message carried a delay stamp"
        assert not chats(b3, lambda m: m["body"].startswith("once ")), "offline messages replayed"
    finally:
        await close_all(a, b1, b2, b3)


async def test_negative_priority_session_does_not_take_bare_jid_messages(server):
    """RFC 6121 §8.5.2.1.1: a resource with negative priority never receives
    messages to the bare JID; with no other resource they are stored."""
    alice, bob = server.accounts("alice", "bob")
    neg = await connect(server, bob, resource="neg", priority=-1, plugins=PLUGINS)
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    pos = None
    try:
        a.send_message(mto=bob.jid, mbody="for a real device", mtype="chat")
        await server_roundtrip(a)
        pos = await connect(server, bob, resource="pos", priority=1, plugins=PLUGINS)
        got = await pos.wait_message(lambda m: m["body"] == "for a real device")
        assert delay_of(got) is not None, "expected the stored copy"
        a.send_message(mto=f"{bob.jid}/neg", mbody="sentinel-neg", mtype="chat")
        await neg.wait_message(lambda m: m["body"] == "sentinel-neg")
        assert not chats(neg, lambda m: m["body"] == "for a real device"), \
            "bare-JID message delivered to a negative-priority resource"
    finally:
        await close_all(a, neg, pos)


@pytest.mark.xmppd_only
async def test_offline_cap_bounces_the_excess(server):
    """Over `[modules.offline] max_per_user` the sender gets an error for each
    message that was not kept; the ones kept are delivered intact."""
    alice, carol = server.accounts("alice", "carol")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    c = None
    try:
        total = OFFLINE_CAP + 3
        for i in range(total):
            m = a.make_message(mto=carol.jid, mbody=f"cap {i}", mtype="chat")
            m["id"] = f"cap-{i}"
            m.send()
        await server_roundtrip(a)
        errors = []
        for _ in range(total - OFFLINE_CAP):
            errors.append(await a.wait_message(lambda m: m["type"] == "error", "alice: bounce for the excess"))
        assert [e["id"] for e in errors] == [f"cap-{i}" for i in range(OFFLINE_CAP, total)], \
            "the bounced messages must be exactly the ones over the cap, in order"
        for e in errors:
            assert e["from"].bare == carol.jid
            assert e["error"]["condition"] == "service-unavailable"
            assert e["error"]["type"] in ("cancel", "wait")
        assert len(a.inbox.matching(lambda s: s.name == "message" and s["type"] == "error")) == total - OFFLINE_CAP

        c = await connect(server, carol, resource="c", plugins=PLUGINS)
        for i in range(OFFLINE_CAP):
            got = await c.wait_message(lambda m: m["body"].startswith("cap "), f"carol: stored message {i}")
            assert got["body"] == f"cap {i}"
        a.send_message(mto=f"{carol.jid}/c", mbody="sentinel-cap", mtype="chat")
        await c.wait_message(lambda m: m["body"] == "sentinel-cap")
        assert len(chats(c, lambda m: m["body"].startswith("cap "))) == OFFLINE_CAP

        # Delivery emptied the store: the cap applies afresh.
        await c.close()
        c = None
        a.send_message(mto=carol.jid, mbody="after emptying", mtype="chat")
        await server_roundtrip(a)
        assert len(a.inbox.matching(lambda s: s.name == "message" and s["type"] == "error")) == total - OFFLINE_CAP
        c = await connect(server, carol, resource="c2", plugins=PLUGINS)
        await c.wait_message(lambda m: m["body"] == "after emptying")
    finally:
        await close_all(a, c)
