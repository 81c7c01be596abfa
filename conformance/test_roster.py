"""RFC 6121 §2 roster management and §2.6 / XEP-0237 roster versioning (slixmpp)."""

import pytest

from xmppclient import (
    close_all,
    connect,
    fetch_roster,
    roster_entry,
    roster_items,
    roster_set,
    roster_ver,
)

NS_ROSTERVER = "urn:xmpp:features:rosterver"


def last_features(client):
    feats = [s for s in client.inbox.items if s.name == "features"]
    assert feats, "no stream features captured"
    return feats[-1]


async def test_fresh_roster_is_empty(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="r1", presence=False, roster=False)
    try:
        res = await fetch_roster(a)
        assert res["type"] == "result"
        assert res.xml.find("{jabber:iq:roster}query") is not None, "roster result without <query/>"
        assert roster_items(res) == []
    finally:
        await close_all(a)


async def test_add_update_remove_with_pushes_to_all_resources(server):
    alice, bob = server.accounts("alice", "bob")
    a1 = await connect(server, alice, resource="one")
    a2 = await connect(server, alice, resource="two")
    try:
        # add
        await roster_set(a1, bob.jid, name="Bob Ünïcode & <co>", groups=["Friends"])
        for c in (a1, a2):
            push = await c.wait_roster_push(lambda it: it["jid"] == bob.jid, "push for the added item")
            assert push["from"].bare in ("", alice.jid), f"push from {push['from']}"
            (it,) = roster_items(push)
            assert it["name"] == "Bob Ünïcode & <co>"
            assert it["groups"] == ["Friends"]
            assert it["subscription"] == "none"
            assert it["ask"] is None
        got = roster_entry(await fetch_roster(a2), bob.jid)
        assert got and got["name"] == "Bob Ünïcode & <co>" and got["groups"] == ["Friends"]
        assert got["subscription"] == "none"

        # update
        await roster_set(a2, bob.jid, name="Robert", groups=["Work", "Chess"])
        for c in (a1, a2):
            await c.wait_roster_push(lambda it: it["jid"] == bob.jid and it["name"] == "Robert",
                                     "push for the updated item")
        got = roster_entry(await fetch_roster(a1), bob.jid)
        assert got["name"] == "Robert"
        assert sorted(got["groups"]) == ["Chess", "Work"]

        # remove
        await roster_set(a1, bob.jid, remove=True)
        for c in (a1, a2):
            await c.wait_roster_push(lambda it: it["jid"] == bob.jid and it["subscription"] == "remove",
                                     "push for the removed item")
        assert roster_entry(await fetch_roster(a2), bob.jid) is None
    finally:
        await close_all(a1, a2)


async def test_roster_persists_across_sessions(server):
    alice, carol = server.accounts("alice", "carol")
    a = await connect(server, alice, resource="x")
    await roster_set(a, carol.jid, name="Carol", groups=["G1"])
    await a.wait_roster_push(lambda it: it["jid"] == carol.jid)
    await close_all(a)
    b = await connect(server, alice, resource="y")
    try:
        got = roster_entry(await fetch_roster(b), carol.jid)
        assert got and got["name"] == "Carol" and got["groups"] == ["G1"]
    finally:
        await close_all(b)


async def test_roster_set_with_two_items_rejected(server):
    """RFC 6121 §2.3.3: a roster set MUST contain exactly one item (bad-request)."""
    from xml.etree import ElementTree as ET

    from slixmpp.exceptions import IqError

    alice, b1, b2 = server.accounts("alice", "b1", "b2")
    a = await connect(server, alice, resource="r")
    try:
        iq = a.make_iq_set()
        q = ET.SubElement(iq.xml, "{jabber:iq:roster}query")
        ET.SubElement(q, "{jabber:iq:roster}item", {"jid": b1.jid})
        ET.SubElement(q, "{jabber:iq:roster}item", {"jid": b2.jid})
        try:
            await iq.send(timeout=10)
        except IqError as e:
            assert e.iq["error"]["condition"] == "bad-request"
        else:
            raise AssertionError("server accepted a roster set with two items")
    finally:
        await close_all(a)


async def test_roster_versioning(server):
    alice, carol, dave = server.accounts("alice", "carol", "dave")
    a = await connect(server, alice, resource="v", roster=False, presence=False)
    try:
        feats = last_features(a)
        assert feats.xml.find(f"{{{NS_ROSTERVER}}}ver") is not None, "roster versioning not advertised"

        r0 = await fetch_roster(a, ver="")
        assert roster_ver(r0) is not None, "roster result carries no ver attribute"

        await roster_set(a, carol.jid, name="Carol")
        v1 = roster_ver(await a.wait_roster_push(lambda it: it["jid"] == carol.jid))
        await roster_set(a, dave.jid, name="Dave")
        v2 = roster_ver(await a.wait_roster_push(lambda it: it["jid"] == dave.jid))
        assert v1 and v2, "roster push carries no ver attribute"
        assert v2 != v1, "roster version did not change on modification"

        # Up to date: an empty result (no items).
        same = await fetch_roster(a, ver=v2)
        assert same["type"] == "result"
        assert roster_items(same) == [], "unchanged roster was sent again"

        # Stale: either the full roster with the new version, or an empty
        # result followed by pushes for what changed (RFC 6121 §2.6.3).
        stale = await fetch_roster(a, ver=v1)
        if stale.xml.find("{jabber:iq:roster}query") is not None and roster_items(stale):
            assert roster_entry(stale, dave.jid) is not None
            assert roster_entry(stale, carol.jid) is not None
            assert roster_ver(stale) == v2
        else:
            await a.wait_roster_push(lambda it: it["jid"] == dave.jid, "push replaying the change")
    finally:
        await close_all(a)


@pytest.mark.difference("roster-ver-initial")
async def test_roster_version_changes_on_first_item(server):
    alice, erin = server.accounts("alice", "erin")
    a = await connect(server, alice, resource="v0", roster=False, presence=False)
    try:
        v0 = roster_ver(await fetch_roster(a, ver=""))
        await roster_set(a, erin.jid)
        v1 = roster_ver(await a.wait_roster_push(lambda it: it["jid"] == erin.jid))
        assert v1 != v0, f"empty roster and one-item roster share version {v0!r}"
    finally:
        await close_all(a)
