"""XEP-0402 PEP native bookmarks and their XEP-0048/XEP-0049 compatibility
(`urn:xmpp:bookmarks:1#compat`), driven with slixmpp's xep_0060/xep_0402
(new clients) and xep_0048/xep_0049 (old clients): the feature is advertised
on the account; conferences published to `urn:xmpp:bookmarks:1` (item id =
room JID, publish-options persist_items, max_items=max,
send_last_published_item=never, access_model=whitelist) are all kept, the
node is configured as asked and closed to a contact, and an old client reads
them from private storage (`storage:bookmarks`) with name, autojoin and nick;
a retraction removes one there too. The reverse: bookmarks an old client
stores through XEP-0049 become XEP-0402 items (pushed as PEP events to the
account's `+notify` client), other stored children such as URLs are kept, and
a conference dropped from the old storage is retracted from the node."""

import pytest
from slixmpp.plugins.xep_0402.stanza import Conference as Conference402

from pep import (PEP_PLUGINS, announce_interest, event_items, items_of, node_config, publish,
                 pubsub_error)
from xmppclient import IqError, close_all, connect, subscribe_mutually

BOOKMARKS = "urn:xmpp:bookmarks:1"
COMPAT = "urn:xmpp:bookmarks:1#compat"
OPTIONS = {
    "pubsub#persist_items": "true",
    "pubsub#max_items": "max",
    "pubsub#send_last_published_item": "never",
    "pubsub#access_model": "whitelist",
}
PLUGINS = (*PEP_PLUGINS, "xep_0402", "xep_0048", "xep_0049")


def conference(name: str, autojoin: bool, nick: str | None) -> Conference402:
    c = Conference402()
    c["name"] = name
    c["autojoin"] = autojoin
    if nick is not None:
        c["nick"] = nick
    return c


def as_402(payload) -> dict:
    """A XEP-0402 <conference/> payload read back with slixmpp's stanza."""
    assert payload is not None and payload.tag == f"{{{BOOKMARKS}}}conference", payload
    c = Conference402(xml=payload)
    return {"name": c["name"], "autojoin": c["autojoin"], "nick": c["nick"] or None}


async def private_bookmarks(client) -> dict[str, dict]:
    """The account's XEP-0048 bookmarks from XEP-0049 private storage (slixmpp xep_0048)."""
    r = await client.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=10)
    out = {}
    for c in r["private"]["bookmarks"]["conferences"]:
        out[c["jid"]] = {"name": c["name"], "autojoin": c["autojoin"], "nick": c["nick"] or None}
    return out


async def pep_bookmarks(client, owner: str) -> dict[str, dict]:
    r = await client.plugin["xep_0060"].get_items(owner, BOOKMARKS, timeout=10)
    return {item_id: as_402(payload) for item_id, payload in items_of(r)}


async def test_compat_advertised_on_the_account(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="new", plugins=PLUGINS)
    try:
        info = await a.plugin["xep_0030"].get_info(jid=alice.jid, timeout=10)
        feats = set(info["disco_info"]["features"])
        assert COMPAT in feats, f"{COMPAT} not in {alice.jid}'s disco#info: {sorted(feats)}"
        assert "http://jabber.org/protocol/pubsub#publish-options" in feats
    finally:
        await close_all(a)


async def test_xep0402_bookmarks_seen_by_an_old_client(server):
    alice, bob = server.accounts("alice", "bob")
    new = await connect(server, alice, resource="new", plugins=PLUGINS)
    old = await connect(server, alice, resource="old", plugins=PLUGINS)
    b = await connect(server, bob, resource="contact", plugins=PLUGINS)
    try:
        await subscribe_mutually(new, b)
        muc = f"conference.{server.domain}"
        wanted = {
            f"team@{muc}": {"name": "Team & <Friends> ☕", "autojoin": True, "nick": "alïce"},
            f"lobby@{muc}": {"name": "Lobby", "autojoin": False, "nick": None},
            f"dev@{muc}": {"name": "Dev", "autojoin": True, "nick": "al"},
        }
        # Every publish carries the options (the first creates the node, the
        # others are checked against it as preconditions).
        for room, b_ in wanted.items():
            r = await publish(new, BOOKMARKS, room, conference(**b_).xml, OPTIONS)
            assert r["type"] == "result", r

        # All kept (max_items=max), as published, under the room JIDs.
        assert await pep_bookmarks(new, alice.jid) == wanted
        cfg = node_config(await new.plugin["xep_0060"].get_node_config(None, BOOKMARKS, timeout=10))
        assert cfg.get("pubsub#access_model") == "whitelist" and cfg.get("pubsub#max_items") == "max", cfg
        # Private to the account: even a mutual contact may not read them.
        with pytest.raises(IqError) as ei:
            await b.plugin["xep_0060"].get_items(alice.jid, BOOKMARKS, timeout=10)
        cond, specific = pubsub_error(ei.value)
        assert cond == "not-allowed" and specific == ["closed-node"], ei.value.iq

        # The old client finds the same conferences in private storage.
        assert await private_bookmarks(old) == wanted

        # A XEP-0402 retraction removes it for the old client too.
        await new.plugin["xep_0060"].retract(None, BOOKMARKS, f"lobby@{muc}", notify=True, timeout=10)
        del wanted[f"lobby@{muc}"]
        assert await private_bookmarks(old) == wanted
        assert await pep_bookmarks(new, alice.jid) == wanted
    finally:
        await close_all(new, old, b)


async def test_whitelist_refusal_is_not_allowed(server):
    """XEP-0060 §6.5.9.8: items of a whitelist node requested by someone not on
    the whitelist → <not-allowed/> (cancel) with <closed-node/>."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="new", plugins=PLUGINS)
    b = await connect(server, bob, resource="contact", plugins=PLUGINS)
    try:
        r = await publish(a, BOOKMARKS, f"x@conference.{server.domain}",
                          conference("X", False, None).xml, OPTIONS)
        assert r["type"] == "result"
        with pytest.raises(IqError) as ei:
            await b.plugin["xep_0060"].get_items(alice.jid, BOOKMARKS, timeout=10)
        assert pubsub_error(ei.value) == ("not-allowed", ["closed-node"]), ei.value.iq
        assert ei.value.iq["error"]["type"] == "cancel", ei.value.iq
    finally:
        await close_all(a, b)


async def test_private_storage_bookmarks_seen_by_a_new_client(server):
    alice = server.account("alice")
    new = await connect(server, alice, resource="new", plugins=PLUGINS)
    old = await connect(server, alice, resource="old", plugins=PLUGINS)
    try:
        # The new client follows its bookmarks node through +notify (XEP-0402 §4).
        await announce_interest(new, BOOKMARKS)
        muc = f"conference.{server.domain}"
        bm = old.plugin["xep_0048"].stanza.Bookmarks()
        bm.add_conference(f"games@{muc}", "Gamer ☺", name="Games <&>", autojoin=True)
        bm.add_conference(f"quiet@{muc}", "q", name="Quiet", autojoin=False)
        bm.add_url("https://example.org/wiki?a=1&b=2", name="Wiki")
        r = await old.plugin["xep_0048"].set_bookmarks(bm, method="xep_0049", timeout=10)
        assert r["type"] == "result"

        wanted = {
            f"games@{muc}": {"name": "Games <&>", "autojoin": True, "nick": "Gamer ☺"},
            f"quiet@{muc}": {"name": "Quiet", "autojoin": False, "nick": "q"},
        }
        # The new client is told, item by item, from its own bare JID.
        seen = {}
        while set(seen) != set(wanted):
            ev = await new.wait_message(lambda m: event_items(m, BOOKMARKS) is not None,
                                        f"bookmarks events for {sorted(set(wanted) - set(seen))}")
            assert ev["from"].full == alice.jid
            for item_id, payload in event_items(ev, BOOKMARKS):
                seen[item_id] = as_402(payload)
        assert seen == wanted
        # And reads them as XEP-0402 items.
        assert await pep_bookmarks(new, alice.jid) == wanted

        # The old client's storage comes back whole (the URL too).
        r = await old.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=10)
        urls = [(u["name"], u["url"]) for u in r["private"]["bookmarks"]["urls"]]
        assert urls == [("Wiki", "https://example.org/wiki?a=1&b=2")], urls
        assert await private_bookmarks(old) == wanted

        # Dropping a conference in the old storage retracts it from the node.
        bm = old.plugin["xep_0048"].stanza.Bookmarks()
        bm.add_conference(f"games@{muc}", "Gamer ☺", name="Games <&>", autojoin=True)
        await old.plugin["xep_0048"].set_bookmarks(bm, method="xep_0049", timeout=10)
        del wanted[f"quiet@{muc}"]
        assert await pep_bookmarks(new, alice.jid) == wanted
        assert await private_bookmarks(old) == wanted

        # A new client then adds one with the XEP-0402 options on the node the
        # bridge created: accepted, and visible to the old client.
        r = await publish(new, BOOKMARKS, f"news@{muc}",
                          conference("News", True, "reader").xml, OPTIONS)
        assert r["type"] == "result"
        wanted[f"news@{muc}"] = {"name": "News", "autojoin": True, "nick": "reader"}
        assert await private_bookmarks(old) == wanted
    finally:
        await close_all(new, old)
