"""Multi-user chat across servers (issue 8): a Prosody or ejabberd user joins
a room on xmppd's conference.xmppd.localhost, and an xmppd user joins a room
on the peer's conference service; in both, occupants of either server see
each other's joins, messages and departures."""

from __future__ import annotations

import secrets

import pytest
from slixmpp import JID

from test_peers_federate import FED_TIMEOUT, MUC_PLUGINS, login
from test_xmppd_federation import warm_up
from xmppclient import close_all


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request, peers):
    return peers[request.param]


async def join(client, room: JID, nick: str):
    """Join; accept the default configuration of a room this join created."""
    muc = client.plugin["xep_0045"]
    pres, _subject, occupants, _history = await muc.join_muc_wait(room, nick, timeout=FED_TIMEOUT)
    codes = set(pres["muc"]["status_codes"])
    assert 110 in codes, codes
    if 201 in codes:
        await muc.set_room_config(room, client.plugin["xep_0004"].make_form(ftype="submit"),
                                  timeout=FED_TIMEOUT)
    return pres, occupants


async def two_servers_one_room(owner, guest, room: JID):
    """`owner` (on the room's server) creates the room, `guest` (the other
    server) joins; both see each other, talk both ways, and the guest leaves."""
    pres, _ = await join(owner, room, "Owner")
    assert pres["muc"]["affiliation"] == "owner"

    pres, occupants = await join(guest, room, "Guest")
    assert f"{room.bare}/Owner" in {o["from"].full for o in occupants}, occupants
    # The room tells the guest its real JID went in (non-anonymous or not, the
    # self-presence reflects the guest's own nickname).
    assert pres["from"].full == f"{room.bare}/Guest"
    await owner.wait_presence(lambda p: p["from"].full == f"{room.bare}/Guest",
                              "the remote guest's join at the owner", timeout=FED_TIMEOUT)

    token = secrets.token_hex(3)
    guest.send_message(mto=room, mbody=f"guest {token} <&>", mtype="groupchat")
    for c in (owner, guest):
        await c.wait_message(lambda m: m["type"] == "groupchat" and m["body"] == f"guest {token} <&>"
                             and m["from"].full == f"{room.bare}/Guest",
                             f"{c.boundjid}: groupchat from the remote guest", timeout=FED_TIMEOUT)
    owner.send_message(mto=room, mbody=f"owner {token} é", mtype="groupchat")
    for c in (owner, guest):
        await c.wait_message(lambda m: m["type"] == "groupchat" and m["body"] == f"owner {token} é"
                             and m["from"].full == f"{room.bare}/Owner",
                             f"{c.boundjid}: groupchat from the owner", timeout=FED_TIMEOUT)

    # A private message between occupants crosses the servers too.
    guest.send_message(mto=JID(f"{room.bare}/Owner"), mbody=f"pm {token}", mtype="chat")
    await owner.wait_message(lambda m: m["body"] == f"pm {token}"
                             and m["from"].full == f"{room.bare}/Guest",
                             "private message through the room", timeout=FED_TIMEOUT)

    guest.plugin["xep_0045"].leave_muc(room, "Guest")
    await owner.wait_presence(lambda p: p["from"].full == f"{room.bare}/Guest"
                              and p["type"] == "unavailable", "the guest leaving", timeout=FED_TIMEOUT)


async def test_peer_user_joins_xmppd_room(xm, peer):
    room = JID(f"fed-{secrets.token_hex(4)}@conference.{xm.domain}")
    a = await login(xm, "alice", "fed-muc-x", MUC_PLUGINS)
    b = await login(peer, "bob", "fed-muc-x", MUC_PLUGINS)
    try:
        await warm_up(a, b)
        await two_servers_one_room(a, b, room)
    finally:
        await close_all(a, b)


async def test_xmppd_user_joins_peer_room(xm, peer):
    room = JID(f"fed-{secrets.token_hex(4)}@conference.{peer.domain}")
    a = await login(xm, "alice", "fed-muc-p", MUC_PLUGINS)
    b = await login(peer, "bob", "fed-muc-p", MUC_PLUGINS)
    try:
        await warm_up(a, b)
        await two_servers_one_room(b, a, room)
    finally:
        await close_all(a, b)
