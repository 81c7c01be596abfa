"""XEP-0045 multi-user chat on conference.<domain> with slixmpp's xep_0045
plugin (join_muc_wait, set_role, set_affiliation, room configuration forms):
creating and joining (status 201/110), groupchat to every occupant, nickname
conflicts, private messages, history on join, the subject, kick (307) and ban
(301), the owner's configuration form (members-only, password), a persistent
room across a server restart, and catching up from the room's XEP-0313
archive."""

import asyncio
import secrets
import warnings

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError

from xmppclient import close_all, connect, server_roundtrip

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_SID = "urn:xmpp:sid:0"
NS_MAM = "urn:xmpp:mam:2"
PLUGINS = ("xep_0045", "xep_0004", "xep_0203", "xep_0313", "xep_0059", "xep_0297", "xep_0359")


def service(server) -> str:
    return f"conference.{server.domain}"


def new_room(server, hint="room") -> JID:
    return JID(f"{hint}-{secrets.token_hex(4)}@{service(server)}")


async def join(client, room: JID, nick: str, **kw):
    """Join and wait for our own presence and the subject (XEP-0045 §7.2)."""
    return await client.plugin["xep_0045"].join_muc_wait(room, nick, timeout=10, **kw)


def codes(pres) -> set[int]:
    return set(pres["muc"]["status_codes"])


def groupchat(client, room: JID, body: str):
    client.send_message(mto=room, mbody=body, mtype="groupchat")


async def wait_groupchat(client, room: JID, body: str, what: str = ""):
    return await client.wait_message(
        lambda m: m["type"] == "groupchat" and m["from"].bare == room.bare and m["body"] == body,
        what or f"{client.boundjid}: groupchat {body!r}")


def room_stanza_id(msg, room: JID):
    for e in msg.xml.findall(f"{{{NS_SID}}}stanza-id"):
        if e.get("by") == room.bare:
            return e.get("id")
    return None


async def room_with(server, n: int, hint="room"):
    """A fresh room: the first account creates it (owner), the others join."""
    room = new_room(server, hint)
    accts = server.accounts(*[f"u{i}" for i in range(n)])
    clients = []
    for i, acct in enumerate(accts):
        c = await connect(server, acct, resource="r", plugins=PLUGINS)
        clients.append(c)
        await join(c, room, f"nick{i}")
    return room, accts, clients


# ---------------------------------------------------------------- service
async def test_service_discovery(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        items = await a.plugin["xep_0030"].get_items(jid=server.domain, timeout=10)
        assert service(server) in {i[0] for i in items["disco_items"]["items"]}, \
            "the MUC service is not listed in the server's disco#items"
        info = await a.plugin["xep_0030"].get_info(jid=service(server), timeout=10)
        ids = info["disco_info"]["identities"]
        assert any(cat == "conference" and typ == "text" for cat, typ, *_ in ids), ids
        assert NS_MUC in info["disco_info"]["features"]
    finally:
        await close_all(a)


# ---------------------------------------------------------------- join/create
async def test_create_and_join(server):
    alice, bob = server.accounts("alice", "bob")
    room = new_room(server)
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        pres, subject, occupants, history = await join(a, room, "Alice")
        assert {201, 110} <= codes(pres), f"creating a room: expected 201 and 110, got {codes(pres)}"
        assert pres["from"].full == f"{room.bare}/Alice"
        assert pres["muc"]["affiliation"] == "owner"
        assert pres["muc"]["role"] == "moderator"
        # (slixmpp lists our own presence among the occupants)
        assert [o for o in occupants if 110 not in codes(o)] == [] and history == []
        assert not subject["subject"], "a new room has an empty subject"

        pres, _, occupants, _ = await join(b, room, "Bob")
        assert 110 in codes(pres) and 201 not in codes(pres), codes(pres)
        assert pres["muc"]["affiliation"] == "none"
        assert pres["muc"]["role"] == "participant"
        # The newcomer learns of those present, before its own presence.
        occupants = [o for o in occupants if 110 not in codes(o)]
        assert [o["from"].full for o in occupants] == [f"{room.bare}/Alice"]
        assert b.inbox.items.index(occupants[0]) < b.inbox.items.index(pres)
        # Existing occupants learn of the newcomer (no 110 for them).
        p = await a.wait_presence(lambda p: p["from"].full == f"{room.bare}/Bob")
        assert 110 not in codes(p)
        assert p["muc"]["role"] == "participant"
        # Semi-anonymous by default: bob does not see alice's real JID...
        assert not occupants[0]["muc"]["jid"], f"real JID leaked: {occupants[0]}"
        # ...but alice, a moderator, sees bob's.
        assert p["muc"]["jid"].bare == bob.jid

        # Leaving: unavailable to everyone, with 110 for the one who left.
        b.plugin["xep_0045"].leave_muc(room, "Bob")
        p = await b.wait_presence(lambda p: p["from"].full == f"{room.bare}/Bob" and p["type"] == "unavailable")
        assert 110 in codes(p)
        await a.wait_presence(lambda p: p["from"].full == f"{room.bare}/Bob" and p["type"] == "unavailable")
    finally:
        await close_all(a, b)


async def test_groupchat_reaches_every_occupant(server):
    room, accts, clients = await room_with(server, 3)
    try:
        a, b, c = clients
        groupchat(b, room, "hello room <&> 🎉")
        for cl in clients:  # the sender gets its own message back too
            m = await wait_groupchat(cl, room, "hello room <&> 🎉")
            assert m["from"].full == f"{room.bare}/nick1", "groupchat must come from room/nick"
            assert room_stanza_id(m, room), "no XEP-0359 stanza-id by the room"
        ids = {room_stanza_id(cl.inbox.matching(lambda s: s.name == "message" and s["body"] == "hello room <&> 🎉")[0], room)
               for cl in clients}
        assert len(ids) == 1, "every occupant must see the same room stanza-id"

        # A non-occupant cannot post.
        outsider = await connect(server, server.account("out"), resource="o", plugins=PLUGINS)
        try:
            m = outsider.make_message(mto=room, mbody="let me in", mtype="groupchat")
            m["id"] = "outsider-1"
            m.send()
            err = await outsider.wait_message(lambda m: m["type"] == "error" and m["id"] == "outsider-1")
            assert err["error"]["condition"] in ("not-acceptable", "forbidden")
            groupchat(a, room, "sentinel")
            await wait_groupchat(c, room, "sentinel")
            assert not c.inbox.matching(lambda s: s.name == "message" and s["body"] == "let me in")
        finally:
            await close_all(outsider)
    finally:
        await close_all(*clients)


async def test_nickname_conflict(server):
    room, (alice, _), (a, b) = await room_with(server, 2)
    carol = server.account("carol")
    c = await connect(server, carol, resource="c", plugins=PLUGINS)
    try:
        with pytest.raises(PresenceError) as ei:
            await join(c, room, "nick0")
        assert ei.value.condition == "conflict"
        assert ei.value.presence["from"].full == f"{room.bare}/nick0"
        # The occupant holding the nick was not disturbed.
        groupchat(a, room, "still me")
        await wait_groupchat(b, room, "still me")
        m = b.inbox.matching(lambda s: s.name == "message" and s["body"] == "still me")[0]
        assert m["from"].resource == "nick0"
        # Another nick works.
        pres, *_ = await join(c, room, "carol")
        assert 110 in codes(pres)
        # Changing to a taken nick is refused too; to a free one, 303 then the new presence.
        c.send_presence(pto=f"{room.bare}/nick1")
        err = await c.wait_presence(lambda p: p["type"] == "error")
        assert err["error"]["condition"] == "conflict"
        c.send_presence(pto=f"{room.bare}/carol2")
        gone = await a.wait_presence(lambda p: p["from"].full == f"{room.bare}/carol" and p["type"] == "unavailable")
        assert 303 in codes(gone) and gone["muc"]["item_nick"] == "carol2"
        await a.wait_presence(lambda p: p["from"].full == f"{room.bare}/carol2" and p["type"] != "unavailable")
    finally:
        await close_all(a, b, c)


async def test_private_messages(server):
    room, (alice, bob, carol), (a, b, c) = await room_with(server, 3)
    try:
        m = b.make_message(mto=f"{room.bare}/nick0", mbody="just between us", mtype="chat")
        m["id"] = "pm-1"
        m.send()
        got = await a.wait_message(lambda m: m["id"] == "pm-1")
        assert got["body"] == "just between us"
        assert got["from"].full == f"{room.bare}/nick1", "a PM must come from the sender's occupant JID"
        assert got["to"].full == f"{alice.jid}/r"
        assert got.xml.find(f"{{{NS_MUC_USER}}}x") is not None
        # The reply goes back the same way.
        a.send_message(mto=got["from"], mbody="agreed", mtype="chat")
        r = await b.wait_message(lambda m: m["body"] == "agreed")
        assert r["from"].full == f"{room.bare}/nick0"
        # Not seen by the third occupant (sentinel: a groupchat sent after).
        groupchat(b, room, "sentinel")
        await wait_groupchat(c, room, "sentinel")
        assert not c.inbox.matching(lambda s: s.name == "message" and s["body"] in ("just between us", "agreed"))
        # A PM to a nick nobody has bounces.
        m = b.make_message(mto=f"{room.bare}/nobody", mbody="hello?", mtype="chat")
        m["id"] = "pm-nobody"
        m.send()
        err = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "pm-nobody")
        assert err["error"]["condition"] == "item-not-found"
    finally:
        await close_all(a, b, c)


async def test_history_on_join(server):
    room, _, (a, b) = await room_with(server, 2)
    carol, dave = server.accounts("carol", "dave")
    c = d = None
    try:
        for i in range(4):
            groupchat(a if i % 2 == 0 else b, room, f"history {i}")
        for i in range(4):
            await wait_groupchat(b, room, f"history {i}")
        # Two senders on two connections: the room's order is the order it
        # broadcast them in, as every occupant saw.
        order = [m["body"] for m in b.inbox.matching(
            lambda s: s.name == "message" and s["body"].startswith("history "))]

        c = await connect(server, carol, resource="c", plugins=PLUGINS)
        pres, subject, occupants, history = await join(c, room, "carol")
        assert [h["body"] for h in history] == order
        for h in history:
            delay = h.get_plugin("delay", check=True)
            assert delay is not None and delay["from"].bare == room.bare, "history needs a delay from the room"
            assert h["from"].resource in ("nick0", "nick1")
        # Order of the join: occupants, own presence, history, subject last.
        idx = c.inbox.items.index
        assert idx(pres) < idx(history[0]) and idx(history[-1]) < idx(subject)
        assert all(idx(o) < idx(pres) for o in occupants if 110 not in codes(o))

        d = await connect(server, dave, resource="d", plugins=PLUGINS)
        _, _, _, history = await join(d, room, "dave", maxstanzas=2)
        assert [h["body"] for h in history] == order[2:]
    finally:
        await close_all(a, b, c, d)


async def test_subject(server):
    room, _, (a, b) = await room_with(server, 2)
    carol = server.account("carol")
    c = None
    try:
        a.plugin["xep_0045"].set_subject(room, "Today: interop ✓")
        for cl in (a, b):
            m = await cl.wait_message(lambda m: m["type"] == "groupchat" and m["subject"] == "Today: interop ✓")
            assert m["from"].full == f"{room.bare}/nick0"
        # A participant may not change it (default configuration).
        m = b.make_message(mto=room, mtype="groupchat")
        m["subject"] = "hijacked"
        m["id"] = "subj-b"
        m.send()
        err = await b.wait_message(lambda m: m["type"] == "error" and m["id"] == "subj-b")
        assert err["error"]["condition"] == "forbidden"
        # A newcomer gets the current subject as the last step of joining.
        c = await connect(server, carol, resource="c", plugins=PLUGINS)
        _, subject, _, _ = await join(c, room, "carol")
        assert subject["subject"] == "Today: interop ✓"
        assert subject["from"].full == f"{room.bare}/nick0"
    finally:
        await close_all(a, b, c)


# ---------------------------------------------------------------- moderation
async def test_kick(server):
    room, (alice, bob, carol), (a, b, c) = await room_with(server, 3)
    try:
        # A participant cannot kick.
        with pytest.raises(IqError) as ei:
            await b.plugin["xep_0045"].set_role(room, "nick2", "none", timeout=10)
        assert ei.value.iq["error"]["condition"] in ("not-allowed", "forbidden")

        await a.plugin["xep_0045"].set_role(room, "nick1", "none", reason="be nice", timeout=10)
        p = await b.wait_presence(lambda p: p["from"].full == f"{room.bare}/nick1" and p["type"] == "unavailable")
        assert {307, 110} <= codes(p), codes(p)
        assert p.xml.find(f".//{{{NS_MUC_USER}}}reason").text == "be nice"
        for cl in (a, c):
            p = await cl.wait_presence(lambda p: p["from"].full == f"{room.bare}/nick1" and p["type"] == "unavailable")
            assert 307 in codes(p) and 110 not in codes(p)
        # Kicked: no more groupchat for bob.
        groupchat(a, room, "after the kick")
        await wait_groupchat(c, room, "after the kick")
        await server_roundtrip(b)
        assert not b.inbox.matching(lambda s: s.name == "message" and s["body"] == "after the kick")
        # A kick is not a ban: bob may come back.
        pres, *_ = await join(b, room, "nick1")
        assert 110 in codes(pres)
    finally:
        await close_all(a, b, c)


async def test_ban(server):
    room, (alice, bob, carol), (a, b, c) = await room_with(server, 3)
    try:
        await a.plugin["xep_0045"].set_affiliation(room, "outcast", jid=bob.jid, reason="spam", timeout=10)
        p = await b.wait_presence(lambda p: p["from"].full == f"{room.bare}/nick1" and p["type"] == "unavailable")
        assert {301, 110} <= codes(p), codes(p)
        assert p["muc"]["affiliation"] == "outcast"
        p = await c.wait_presence(lambda p: p["from"].full == f"{room.bare}/nick1" and p["type"] == "unavailable")
        assert 301 in codes(p)

        outcasts = await a.plugin["xep_0045"].get_affiliation_list(room, "outcast", timeout=10)
        assert [JID(j).bare for j in outcasts] == [bob.jid]

        with pytest.raises(PresenceError) as ei:
            await join(b, room, "nick1-again")
        assert ei.value.condition == "forbidden"
        # Another device of the banned user is banned too.
        b2 = await connect(server, bob, resource="other", plugins=PLUGINS)
        try:
            with pytest.raises(PresenceError) as ei:
                await join(b2, room, "sneaky")
            assert ei.value.condition == "forbidden"
        finally:
            await close_all(b2)

        # Lifting the ban lets him in again.
        await a.plugin["xep_0045"].set_affiliation(room, "none", jid=bob.jid, timeout=10)
        pres, *_ = await join(b, room, "nick1")
        assert 110 in codes(pres)
    finally:
        await close_all(a, b, c)


# ---------------------------------------------------------------- configuration
def form_value(form, var):
    return form.get_fields()[var]["value"]


async def configure(client, room, values: dict):
    muc = client.plugin["xep_0045"]
    form = await muc.get_room_config(room, timeout=10)
    fields = form.get_fields()
    for var in values:
        assert var in fields, f"{var} not in the configuration form: {sorted(fields)}"
    form.set_values(values)
    await muc.set_room_config(room, form, timeout=10)


async def test_owner_configuration_form(server):
    room, (alice, bob), (a, b) = await room_with(server, 2)
    try:
        form = await a.plugin["xep_0045"].get_room_config(room, timeout=10)
        fields = form.get_fields()
        form_type = form_value(form, "FORM_TYPE")
        assert form_type in ("http://jabber.org/protocol/muc#roomconfig",
                             ["http://jabber.org/protocol/muc#roomconfig"]), form_type
        for var in ("muc#roomconfig_roomname", "muc#roomconfig_persistentroom", "muc#roomconfig_membersonly",
                    "muc#roomconfig_passwordprotectedroom", "muc#roomconfig_roomsecret"):
            assert var in fields, f"{var} missing from the form"
        # Only the owner may configure.
        with pytest.raises(IqError) as ei:
            await b.plugin["xep_0045"].get_room_config(room, timeout=10)
        assert ei.value.iq["error"]["condition"] == "forbidden"

        await configure(a, room, {"muc#roomconfig_roomname": "Interop Lab"})
        note = await b.wait_message(lambda m: m["type"] == "groupchat" and 104 in codes(m))
        assert note["from"].full == room.bare
        assert form_value(await a.plugin["xep_0045"].get_room_config(room, timeout=10),
                          "muc#roomconfig_roomname") == "Interop Lab"
        info = await a.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert any(i[3] == "Interop Lab" for i in info["disco_info"]["identities"])
    finally:
        await close_all(a, b)


async def test_members_only(server):
    room, (alice, bob), (a, b) = await room_with(server, 2)
    carol = server.account("carol")
    c = await connect(server, carol, resource="c", plugins=PLUGINS)
    try:
        await configure(a, room, {"muc#roomconfig_membersonly": True})
        # bob (no affiliation) is removed with 322.
        p = await b.wait_presence(lambda p: p["from"].full == f"{room.bare}/nick1" and p["type"] == "unavailable")
        assert 322 in codes(p), codes(p)
        info = await a.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert "muc_membersonly" in info["disco_info"]["features"]

        with pytest.raises(PresenceError) as ei:
            await join(c, room, "carol")
        assert ei.value.condition == "registration-required"

        await a.plugin["xep_0045"].set_affiliation(room, "member", jid=carol.jid, timeout=10)
        pres, *_ = await join(c, room, "carol")
        assert pres["muc"]["affiliation"] == "member"
        members = await a.plugin["xep_0045"].get_affiliation_list(room, "member", timeout=10)
        assert carol.jid in [JID(j).bare for j in members]
    finally:
        await close_all(a, b, c)


async def test_password_protected(server):
    room, (alice,), (a,) = await room_with(server, 1)
    bob = server.account("bob")
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        await configure(a, room, {"muc#roomconfig_passwordprotectedroom": True,
                                  "muc#roomconfig_roomsecret": "s3cret & <sure>"})
        info = await a.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert "muc_passwordprotected" in info["disco_info"]["features"]
        with pytest.raises(PresenceError) as ei:
            await join(b, room, "bob")
        assert ei.value.condition == "not-authorized"
        with pytest.raises(PresenceError) as ei:
            await join(b, room, "bob", password="wrong")
        assert ei.value.condition == "not-authorized"
        pres, *_ = await join(b, room, "bob", password="s3cret & <sure>")
        assert 110 in codes(pres)
    finally:
        await close_all(a, b)


async def test_persistent_room_survives_restart(server):
    if not server.can_restart:
        pytest.skip("target cannot be restarted (set XMPP_RESTART_CMD)")
    alice, bob = server.accounts("alice", "bob")
    room = new_room(server, "persist")
    temp = new_room(server, "temp")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    await join(a, room, "owner")
    await join(a, temp, "owner")
    await configure(a, room, {"muc#roomconfig_persistentroom": True,
                              "muc#roomconfig_roomname": "Survivor",
                              "muc#roomconfig_membersonly": True})
    await a.plugin["xep_0045"].set_affiliation(room, "member", jid=bob.jid, timeout=10)
    a.plugin["xep_0045"].set_subject(room, "kept across restarts")
    await a.wait_message(lambda m: m["type"] == "groupchat" and m["subject"] == "kept across restarts")
    await join(b, room, "bob")
    groupchat(b, room, "archived before restart")
    await wait_groupchat(a, room, "archived before restart")
    await close_all(a, b)

    server.restart()

    a = await connect(server, alice, resource="a2", plugins=PLUGINS)
    b = await connect(server, bob, resource="b2", plugins=PLUGINS)
    try:
        info = await a.plugin["xep_0030"].get_info(jid=room, timeout=10)
        feats = info["disco_info"]["features"]
        assert "muc_persistent" in feats and "muc_membersonly" in feats
        assert any(i[3] == "Survivor" for i in info["disco_info"]["identities"])
        # bob's membership survived: he may join the members-only room.
        pres, subject, _, _ = await join(b, room, "bob")
        assert 201 not in codes(pres), "a persistent room was created afresh"
        assert pres["muc"]["affiliation"] == "member"
        assert subject["subject"] == "kept across restarts"
        pres, *_ = await join(a, room, "owner")
        assert pres["muc"]["affiliation"] == "owner"
        # So did the room's archive.
        iq = await a.plugin["xep_0313"].retrieve(jid=room, timeout=10)
        assert "archived before restart" in [r["mam_result"]["forwarded"]["stanza"]["body"]
                                             for r in iq["mam"]["results"]]
        # The temporary room did not survive: joining creates it anew.
        pres, *_ = await join(a, temp, "owner")
        assert 201 in codes(pres)
    finally:
        await close_all(a, b)


# ---------------------------------------------------------------- archive
async def test_room_mam_catch_up(server):
    room, (alice, bob, carol), (a, b, c) = await room_with(server, 3, "mam")
    try:
        info = await a.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert NS_MAM in info["disco_info"]["features"]

        groupchat(a, room, "before carol leaves")
        seen = await wait_groupchat(c, room, "before carol leaves")
        last_seen = room_stanza_id(seen, room)
        assert last_seen
        c.plugin["xep_0045"].leave_muc(room, "nick2")
        await a.wait_presence(lambda p: p["from"].full == f"{room.bare}/nick2" and p["type"] == "unavailable")

        expected = []
        for i in range(5):
            sender = a if i % 2 == 0 else b
            groupchat(sender, room, f"while carol was away {i}")
            expected.append(f"while carol was away {i}")
        for body in expected:
            await wait_groupchat(b, room, body)
        # The room's order (two senders): as the occupants saw it live.
        live_msgs = b.inbox.matching(lambda s: s.name == "message" and s["body"] in expected)
        expected = [m["body"] for m in live_msgs]

        # carol asks the room's archive for what came after the last id she saw.
        # xmppd writes room archives through a background group-commit writer,
        # after the broadcast, so a query right after delivery may not see the
        # newest messages yet (reported as a finding; see the README). Catch-up
        # must be complete once the writer caught up: bounded retries.
        # (The lag shows as missing results, or as item-not-found for the id
        # carol saw live: not archived yet.)
        got = []
        for attempt in range(50):
            try:
                iq = await c.plugin["xep_0313"].retrieve(jid=room, rsm={"after": last_seen}, timeout=10)
            except IqError as e:
                if e.iq["error"]["condition"] != "item-not-found":
                    raise
                got = f"item-not-found for {last_seen}"
            else:
                results = list(iq["mam"]["results"])
                got = [r["mam_result"]["forwarded"]["stanza"]["body"] for r in results]
                if len(got) >= len(expected):
                    break
            await asyncio.sleep(0.1)
        if attempt:
            warnings.warn(f"xmppd: room archive lagged behind delivery ({attempt} retries before "
                          f"messages broadcast to occupants were in the MAM results)")
        assert got == expected, f"room catch-up gave {got}"
        assert iq["mam_fin"].xml.get("complete") in ("true", "1")
        for r in results:
            inner = r["mam_result"]["forwarded"]["stanza"]
            assert inner["from"].bare == room.bare and inner["from"].resource in ("nick0", "nick1")
            assert inner["type"] == "groupchat"
            assert r["from"].bare == room.bare, "results of a room query come from the room"
        # The archive ids are the stanza-ids the occupants saw.
        live = [room_stanza_id(m, room) for m in live_msgs]
        assert [r["mam_result"]["id"] for r in results] == live

        # Paging through the room archive with RSM gives the same.
        paged, after = [], last_seen
        for _ in range(10):
            iq = await c.plugin["xep_0313"].retrieve(jid=room, rsm={"after": after, "max": 2}, timeout=10)
            page = list(iq["mam"]["results"])
            paged += [r["mam_result"]["forwarded"]["stanza"]["body"] for r in page]
            if iq["mam_fin"].xml.get("complete") in ("true", "1"):
                break
            after = iq["mam_fin"]["rsm"]["last"]
        assert paged == expected
    finally:
        await close_all(a, b, c)


async def test_room_mam_forbidden_for_outsiders_of_members_only_room(server):
    room, (alice,), (a,) = await room_with(server, 1, "private")
    eve = server.account("eve")
    e = await connect(server, eve, resource="e", plugins=PLUGINS)
    try:
        await configure(a, room, {"muc#roomconfig_membersonly": True})
        groupchat(a, room, "members only talk")
        await wait_groupchat(a, room, "members only talk")
        with pytest.raises(IqError) as ei:
            await e.plugin["xep_0313"].retrieve(jid=room, timeout=10)
        assert ei.value.iq["error"]["condition"] == "forbidden"
    finally:
        await close_all(a, e)
