"""RFC 6121 §3 presence subscriptions: the state machine, pushes, pre-approval,
pending requests, and persistence across a server restart (slixmpp)."""

import pytest

from xmppclient import (
    close_all,
    connect,
    fetch_roster,
    roster_entry,
    subscribe_mutually,
)

SERVER_OPTIONS = {"pool_size": 64}  # the race test uses fresh pairs


def sub_of(roster_iq, jid):
    e = roster_entry(roster_iq, jid)
    return None if e is None else (e["subscription"], e["ask"])


def from_bare(p, jid):
    return p["from"].bare == jid


async def test_handshake_to_both(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", status="alice here")
    b = await connect(server, bob, resource="b", status="bob here")
    try:
        # 1. alice -> subscribe -> bob
        a.send_presence(pto=bob.jid, ptype="subscribe")
        push = await a.wait_roster_push(lambda it: it["jid"] == bob.jid, "alice: push for pending-out bob")
        assert sub_of(push, bob.jid) == ("none", "subscribe")
        req = await b.wait_presence(lambda p: p["type"] == "subscribe" and from_bare(p, alice.jid),
                                    "bob: subscribe request")
        assert req["from"].full == alice.jid, "subscription request must come from the bare JID"

        # 2. bob -> subscribed -> alice
        b.send_presence(pto=alice.jid, ptype="subscribed")
        push = await b.wait_roster_push(lambda it: it["jid"] == alice.jid, "bob: push subscription=from")
        assert sub_of(push, alice.jid) == ("from", None)
        ok = await a.wait_presence(lambda p: p["type"] == "subscribed" and from_bare(p, bob.jid),
                                   "alice: subscribed")
        assert ok["from"].full == bob.jid
        push = await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "to",
                                        "alice: push subscription=to")
        assert sub_of(push, bob.jid) == ("to", None)
        # §3.1.6: bob's server sends bob's current presence to alice.
        pres = await a.wait_presence(lambda p: p["type"] == "available" and p["from"].full == f"{bob.jid}/b",
                                     "alice: bob's available presence")
        assert pres["status"] == "bob here"

        # 3. bob -> subscribe -> alice, alice approves
        b.send_presence(pto=alice.jid, ptype="subscribe")
        await a.wait_presence(lambda p: p["type"] == "subscribe" and from_bare(p, bob.jid), "alice: request")
        a.send_presence(pto=bob.jid, ptype="subscribed")
        await b.wait_presence(lambda p: p["type"] == "subscribed" and from_bare(p, alice.jid), "bob: subscribed")
        await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "both", "alice: both")
        await b.wait_roster_push(lambda it: it["jid"] == alice.jid and it["subscription"] == "both", "bob: both")
        pres = await b.wait_presence(lambda p: p["type"] == "available" and p["from"].full == f"{alice.jid}/a",
                                     "bob: alice's available presence")
        assert pres["status"] == "alice here"

        assert sub_of(await fetch_roster(a), bob.jid) == ("both", None)
        assert sub_of(await fetch_roster(b), alice.jid) == ("both", None)
    finally:
        await close_all(a, b)


async def test_subscription_persists_across_restart(server):
    if not server.can_restart:
        pytest.skip("target cannot be restarted (set XMPP_RESTART_CMD)")
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    await subscribe_mutually(a, b)
    await close_all(a, b)

    server.restart()

    a = await connect(server, alice, resource="a2", status="back after restart")
    b = None
    try:
        assert sub_of(await fetch_roster(a), bob.jid) == ("both", None)
        b = await connect(server, bob, resource="b2", status="bob after restart")
        assert sub_of(await fetch_roster(b), alice.jid) == ("both", None)
        # The persisted subscription drives presence: broadcast to alice, probe answered for bob.
        p = await a.wait_presence(lambda p: p["from"].full == f"{bob.jid}/b2" and p["type"] == "available",
                                  "alice: bob's presence after restart")
        assert p["status"] == "bob after restart"
        p = await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a2" and p["type"] == "available",
                                  "bob: alice's presence (probe) after restart")
        assert p["status"] == "back after restart"
    finally:
        await close_all(a, b)


async def test_preapproval(server):
    """RFC 6121 §3.4: a contact's pre-approval makes the server answer the
    later request itself, without delivering it to the contact."""
    alice, bob = server.accounts("alice", "bob")
    b = await connect(server, bob, resource="b")
    a = await connect(server, alice, resource="a")
    try:
        feats = [s for s in b.inbox.items if s.name == "features"][-1]
        assert feats.xml.find("{urn:xmpp:features:pre-approval}sub") is not None, \
            "pre-approval stream feature not advertised"
        b.send_presence(pto=alice.jid, ptype="subscribed")  # pre-approve
        # Wait until the pre-approval is stored (its roster push; approved='true'
        # is checked by test_preapproval_in_roster) before alice asks.
        await b.wait_roster_push(lambda it: it["jid"] == alice.jid, "bob: push for the pre-approval")

        a.send_presence(pto=bob.jid, ptype="subscribe")
        await a.wait_presence(lambda p: p["type"] == "subscribed" and from_bare(p, bob.jid),
                              "alice: automatic subscribed")
        await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "to", "alice: to")
        await b.wait_roster_push(lambda it: it["jid"] == alice.jid and it["subscription"] == "from", "bob: from")
    finally:
        await close_all(a, b)


@pytest.mark.difference("preapproval-delivered")
async def test_preapproved_request_not_delivered(server):
    """RFC 6121 §3.4: the server answers a pre-approved request itself and
    does not deliver it to the contact."""
    alice, bob = server.accounts("alice", "bob")
    b = await connect(server, bob, resource="b")
    a = await connect(server, alice, resource="a")
    try:
        b.send_presence(pto=alice.jid, ptype="subscribed")
        await b.wait_roster_push(lambda it: it["jid"] == alice.jid)
        a.send_presence(pto=bob.jid, ptype="subscribe")
        await a.wait_presence(lambda p: p["type"] == "subscribed" and from_bare(p, bob.jid))
        await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "to")
        await b.wait_roster_push(lambda it: it["jid"] == alice.jid and it["subscription"] == "from")
        # Sentinel: a message sent after the request; once it arrives the request would have too.
        a.send_message(mto=f"{bob.jid}/b", mbody="sentinel", mtype="chat")
        await b.wait_message(lambda m: m["body"] == "sentinel")
        assert not [p for p in b.presences_from(alice.jid) if p["type"] == "subscribe"], \
            "pre-approved request was delivered to the contact"
    finally:
        await close_all(a, b)


RACE_ROUNDS = 20


async def test_simultaneous_preapproval_and_request_converge(server):
    """bob pre-approves while alice asks, without waiting for each other.
    In either processing order the outcome is the same (auto-answer, or a
    normal approval of the pending request): alice ends at subscription=to.
    Repeated with fresh pairs, since a lost update shows only in some orders."""
    for round_ in range(RACE_ROUNDS):
        alice, bob = server.accounts("alice", "bob")
        b = await connect(server, bob, resource="b")
        a = await connect(server, alice, resource="a")
        try:
            b.send_presence(pto=alice.jid, ptype="subscribed")
            a.send_presence(pto=bob.jid, ptype="subscribe")
            what = f"round {round_}: alice gets subscribed"
            await a.wait_presence(lambda p: p["type"] == "subscribed" and from_bare(p, bob.jid), what)
            await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "to",
                                     f"round {round_}: alice: to")
            await b.wait_roster_push(lambda it: it["jid"] == alice.jid and it["subscription"] == "from",
                                     f"round {round_}: bob: from")
            assert sub_of(await fetch_roster(a), bob.jid) == ("to", None)
            assert sub_of(await fetch_roster(b), alice.jid)[0] == "from"
        finally:
            await close_all(a, b)


@pytest.mark.difference("preapproval-roster-flag")
async def test_preapproval_in_roster(server):
    """RFC 6121 §3.4.1: the pre-approval is pushed with approved='true'."""
    alice, bob = server.accounts("alice", "bob")
    b = await connect(server, bob, resource="b")
    try:
        b.send_presence(pto=alice.jid, ptype="subscribed")
        push = await b.wait_roster_push(lambda it: it["jid"] == alice.jid, "bob: push for the pre-approval")
        item = push.xml.find("{jabber:iq:roster}query/{jabber:iq:roster}item")
        assert item.get("approved") == "true", f"pre-approval not shown in roster push: {push}"
        assert item.get("subscription", "none") == "none"
        got = (await fetch_roster(b)).xml.find(f"{{jabber:iq:roster}}query/{{jabber:iq:roster}}item[@jid='{alice.jid}']")
        assert got is not None and got.get("approved") == "true"
    finally:
        await close_all(b)


@pytest.mark.difference("unsubscribe-unavailable")
async def test_unsubscribe_sends_unavailable(server):
    """RFC 6121 §3.3.3: after alice unsubscribes from bob, bob's server sends
    alice unavailable presence from bob's available resources."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        await subscribe_mutually(a, b)
        await a.wait_presence(lambda p: p["from"].full == f"{bob.jid}/b" and p["type"] == "available")
        a.inbox.mark()
        a.send_presence(pto=bob.jid, ptype="unsubscribe")
        await a.wait_presence(lambda p: p["type"] == "unavailable" and p["from"].full == f"{bob.jid}/b",
                              "alice: unavailable from bob/b after unsubscribe")
    finally:
        await close_all(a, b)


async def test_pending_request_delivered_when_contact_comes_online(server):
    alice, carol = server.accounts("alice", "carol")
    a = await connect(server, alice, resource="a")
    c = None
    try:
        a.send_presence(pto=carol.jid, ptype="subscribe")
        await a.wait_roster_push(lambda it: it["jid"] == carol.jid and it["ask"] == "subscribe")
        c = await connect(server, carol, resource="c")  # offline until now; initial presence
        await c.wait_presence(lambda p: p["type"] == "subscribe" and from_bare(p, alice.jid),
                              "carol: stored subscription request")
        c.send_presence(pto=alice.jid, ptype="subscribed")
        await a.wait_presence(lambda p: p["type"] == "subscribed" and from_bare(p, carol.jid))
        await a.wait_roster_push(lambda it: it["jid"] == carol.jid and it["subscription"] == "to")
    finally:
        await close_all(a, c)


async def test_unsubscribe_and_cancel(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        await subscribe_mutually(a, b)
        await b.wait_presence(lambda p: p["from"].full == f"{alice.jid}/a" and p["type"] == "available")
        await a.wait_presence(lambda p: p["from"].full == f"{bob.jid}/b" and p["type"] == "available")
        a.inbox.mark()
        b.inbox.mark()

        # alice unsubscribes from bob's presence: alice both->from, bob both->to
        a.send_presence(pto=bob.jid, ptype="unsubscribe")
        await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "from", "alice: from")
        await b.wait_presence(lambda p: p["type"] == "unsubscribe" and from_bare(p, alice.jid), "bob: unsubscribe")
        await b.wait_roster_push(lambda it: it["jid"] == alice.jid and it["subscription"] == "to", "bob: to")
        # (the unavailable presence alice should get now is checked by
        # test_unsubscribe_sends_unavailable)

        # alice cancels bob's subscription to her: both sides -> none
        a.send_presence(pto=bob.jid, ptype="unsubscribed")
        await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "none", "alice: none")
        await b.wait_presence(lambda p: p["type"] == "unsubscribed" and from_bare(p, alice.jid),
                              "bob: unsubscribed")
        await b.wait_roster_push(lambda it: it["jid"] == alice.jid and it["subscription"] == "none", "bob: none")
        # §3.2.3: bob is told alice is unavailable to him now.
        await b.wait_presence(lambda p: p["type"] == "unavailable" and from_bare(p, alice.jid),
                              "bob: unavailable from alice after cancellation")

        assert sub_of(await fetch_roster(a), bob.jid) == ("none", None)
        assert sub_of(await fetch_roster(b), alice.jid) == ("none", None)

        # No presence flows any more: alice changes status, bob must not see it.
        a.send_presence(pstatus="you cannot see this")
        a.send_message(mto=f"{bob.jid}/b", mbody="sentinel-2", mtype="chat")
        await b.wait_message(lambda m: m["body"] == "sentinel-2")
        assert not [p for p in b.presences_from(alice.jid) if p["status"] == "you cannot see this"]
    finally:
        await close_all(a, b)


async def test_subscription_state_after_denial(server):
    """A denied request (unsubscribed) leaves both rosters at none, no ask."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a")
    b = await connect(server, bob, resource="b")
    try:
        a.send_presence(pto=bob.jid, ptype="subscribe")
        await b.wait_presence(lambda p: p["type"] == "subscribe" and from_bare(p, alice.jid))
        b.send_presence(pto=alice.jid, ptype="unsubscribed")
        await a.wait_presence(lambda p: p["type"] == "unsubscribed" and from_bare(p, bob.jid), "alice: denial")
        await a.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "none"
                                 and it["ask"] is None, "alice: pending-out cleared")
        assert sub_of(await fetch_roster(a), bob.jid) == ("none", None)
    finally:
        await close_all(a, b)
