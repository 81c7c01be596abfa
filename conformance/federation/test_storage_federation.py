"""What xmppd stores works for federated chats too (issue 8): a message
from a Prosody or ejabberd user to an offline xmppd user waits in offline
storage (XEP-0160) and arrives, with its delay stamp, at the next login;
both directions of a federated conversation are in the xmppd user's
XEP-0313 archive."""

from __future__ import annotations

import secrets

import pytest

from test_peers_federate import expect, login
from test_xmppd_federation import warm_up
from xmppclient import close_all

MAM_PLUGINS = ("xep_0313", "xep_0059", "xep_0297", "xep_0203", "xep_0359")


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request, peers):
    return peers[request.param]


async def test_offline_message_from_remote_sender(xm, peer):
    a = await login(xm, "alice", "fed-off")
    b = await login(peer, "alice", "fed-off")
    try:
        await warm_up(a, b)  # the streams are up; bob@xmppd is not logged in
        body = f"while you were away {secrets.token_hex(4)}"
        b.send_message(mto=f"bob@{xm.domain}", mbody=body, mtype="chat")
        # The bare-JID message is stored, not bounced: an ack round trip to
        # the peer's user through xmppd proves it was processed first.
        await b.plugin["xep_0199"].send_ping(a.boundjid, timeout=30)
        assert not b.inbox.matching(lambda m: m.name == "message" and m["type"] == "error")
    finally:
        await close_all(a)
    bob = await login(xm, "bob", "fed-off", ("xep_0203",))
    try:
        m = await bob.wait_message(lambda m: m["body"] == body, "offline message at login", timeout=30)
        assert m["from"].bare == b.boundjid.bare, m["from"]
        assert m["delay"]["stamp"] is not None, "offline delivery carries a XEP-0203 delay"
    finally:
        await close_all(bob, b)


async def test_federated_chat_is_archived(xm, peer):
    a = await login(xm, "alice", "fed-mam", MAM_PLUGINS)
    b = await login(peer, "bob", "fed-mam")
    try:
        await warm_up(a, b)
        token = secrets.token_hex(4)
        a.send_message(mto=b.boundjid, mbody=f"out {token}", mtype="chat")
        await expect(b, lambda m: m.name == "message" and m["body"] == f"out {token}", "outgoing", sender=a)
        b.send_message(mto=a.boundjid, mbody=f"in {token}", mtype="chat")
        incoming = await expect(a, lambda m: m.name == "message" and m["body"] == f"in {token}",
                                "incoming", sender=b)
        # The incoming message carries the archive id xmppd gave it.
        sid = [e.get("id") for e in incoming.xml.findall("{urn:xmpp:sid:0}stanza-id")
               if e.get("by") == a.boundjid.bare]
        assert sid and sid[0], incoming

        iq = await a.plugin["xep_0313"].retrieve(with_jid=b.boundjid.bare, timeout=30)
        assert iq["type"] == "result", iq
        archived = [(r["mam_result"]["id"], r["mam_result"]["forwarded"]["stanza"]) for r in iq["mam"]["results"]]
        bodies = [m["body"] for _, m in archived]
        assert f"out {token}" in bodies and f"in {token}" in bodies, bodies
        inbound = [(i, m) for i, m in archived if m["body"] == f"in {token}"][0]
        assert inbound[0] == sid[0], "the archive id is the stanza-id the message carried"
        assert inbound[1]["from"].bare == b.boundjid.bare
    finally:
        await close_all(a, b)
