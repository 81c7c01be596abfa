"""XEP-0012 last activity with slixmpp's xep_0012 plugin: how long ago an
offline contact's last resource went away and with what status, zero while
online, forbidden to non-contacts, and the server's uptime."""

import pytest

from xmppclient import IqError, close_all, connect, server_roundtrip, subscribe_mutually

PLUGINS = ("xep_0012",)
NS_LAST = "jabber:iq:last"


async def last(client, jid):
    iq = await client.plugin["xep_0012"].get_last_activity(jid, timeout=10)
    assert iq["type"] == "result"
    return iq["last_activity"]["seconds"], iq["last_activity"]["status"]


async def test_feature_advertised(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        info = await a.plugin["xep_0030"].get_info(jid=server.domain, timeout=10)
        assert NS_LAST in info["disco_info"]["features"]
    finally:
        await close_all(a)


async def test_offline_contact_seconds_and_status(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        await subscribe_mutually(a, b)
        # Online: zero seconds (XEP-0012 §4: the account is available now).
        secs, _ = await last(a, bob.jid)
        assert secs == 0

        b.send_presence(ptype="unavailable", pstatus="gone fishing 🎣 <&>")
        await a.wait_presence(lambda p: p["from"].bare == bob.jid and p["type"] == "unavailable")
        await b.close()
        secs, status = await last(a, bob.jid)
        assert isinstance(secs, int) and 0 <= secs < 3600, secs
        assert status == "gone fishing 🎣 <&>"

        # A later query never goes backwards.
        await server_roundtrip(a)
        secs2, status2 = await last(a, bob.jid)
        assert secs2 >= secs and status2 == status
    finally:
        await close_all(a, b)


async def test_last_status_from_dropped_connection(server):
    """A dropped connection counts as going offline too (status may be empty)."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        await subscribe_mutually(a, b)
        b.drop()
        await a.wait_presence(lambda p: p["from"].bare == bob.jid and p["type"] == "unavailable")
        secs, _ = await last(a, bob.jid)
        assert 0 <= secs < 3600
    finally:
        await close_all(a)


async def test_still_online_with_one_of_two_resources(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b1 = await connect(server, bob, resource="b1", plugins=PLUGINS)
    b2 = await connect(server, bob, resource="b2", plugins=PLUGINS)
    try:
        await subscribe_mutually(a, b1)
        await b1.close()
        await a.wait_presence(lambda p: p["from"].full == f"{bob.jid}/b1" and p["type"] == "unavailable")
        secs, _ = await last(a, bob.jid)
        assert secs == 0, "an account with an available resource was reported offline"
    finally:
        await close_all(a, b1, b2)


async def test_forbidden_for_non_contact(server):
    alice, bob, eve = server.accounts("alice", "bob", "eve")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    e = await connect(server, eve, resource="e", plugins=PLUGINS)
    try:
        await subscribe_mutually(a, b)
        await b.close()
        await a.wait_presence(lambda p: p["from"].bare == bob.jid and p["type"] == "unavailable")
        assert (await last(a, bob.jid))[0] >= 0  # the contact may ask...
        with pytest.raises(IqError) as ei:  # ...a stranger may not
            await last(e, bob.jid)
        assert ei.value.iq["error"]["condition"] == "forbidden"

        # A one-way subscription the wrong way round is not enough either:
        # bob must share his presence with the asker (subscription from).
        e.send_presence(pto=alice.jid, ptype="subscribe")
        await a.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare == eve.jid)
        a.send_presence(pto=eve.jid, ptype="subscribed")
        await e.wait_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == alice.jid)
        # eve now sees alice (alice: from), but alice does not see eve.
        with pytest.raises(IqError) as ei:
            await last(a, eve.jid)
        assert ei.value.iq["error"]["condition"] == "forbidden"
        secs, _ = await last(e, alice.jid)
        assert secs == 0
    finally:
        await close_all(a, b, e)


async def test_own_account(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        secs, _ = await last(a, alice.jid)
        assert secs == 0
    finally:
        await close_all(a)


async def test_server_uptime(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        up, status = await last(a, server.domain)
        assert isinstance(up, int) and up >= 0
        assert not status  # the server has no status
        up2, _ = await last(a, server.domain)
        assert up2 >= up, "uptime went backwards"
    finally:
        await close_all(a)
