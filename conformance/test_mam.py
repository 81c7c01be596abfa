"""XEP-0313 message archive management with slixmpp's xep_0313 and xep_0059
(RSM) plugins: both sides of a conversation archived, XEP-0359 stanza ids on
delivered messages matching the archive ids, filtering by `with`, paging
forwards and backwards with max/after/before, and a device that was away
catching up after the last id it saw."""

import datetime as dt

from xmppclient import close_all, connect, server_roundtrip

NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
PLUGINS = ("xep_0313", "xep_0059", "xep_0297", "xep_0203", "xep_0359")


async def query(client, *, with_jid=None, rsm=None, jid=None):
    """One MAM query; returns (results, fin) with results as slixmpp messages."""
    iq = await client.plugin["xep_0313"].retrieve(jid=jid, with_jid=with_jid, rsm=rsm, timeout=10)
    assert iq["type"] == "result", f"MAM query failed: {iq}"
    return list(iq["mam"]["results"]), iq["mam_fin"]


async def query_last_page(client, *, with_jid, max_items: int, before=True):
    """Like query(), built by hand: slixmpp's retrieve() cannot send the empty
    <before/> that asks for the last page (it would send the text "True")."""
    iq = client.make_iq_set()
    qid = iq["id"]
    iq["mam"]["queryid"] = qid
    iq["mam"]["with"] = with_jid
    iq["mam"]["rsm"]["max"] = str(max_items)
    iq["mam"]["rsm"]["before"] = before
    res = await iq.send(timeout=10)
    results = client.inbox.matching(
        lambda s: s.name == "message" and s["mam_result"]["queryid"] == qid)
    return results, res["mam_fin"]


def inner(result):
    """The archived message inside a MAM result."""
    return result["mam_result"]["forwarded"]["stanza"]


def body_list(results):
    return [inner(r)["body"] for r in results]


def complete(fin) -> bool:
    return fin.xml.get("complete") in ("true", "1")


def stanza_id(msg, by: str):
    for el in msg.xml.findall(f"{{{NS_SID}}}stanza-id"):
        if el.get("by") == by:
            return el.get("id")
    return None


async def chat(a, b, a_jid_full: str, b_jid_full: str, texts):
    """Send texts alternately a->b; wait for each at b (in order)."""
    for t in texts:
        a.send_message(mto=b_jid_full, mbody=t, mtype="chat")
    for t in texts:
        await b.wait_message(lambda m, t=t: m["body"] == t)


async def test_feature_advertised(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        info = await a.plugin["xep_0030"].get_info(jid=alice.jid, timeout=10)
        assert NS_MAM in info["disco_info"]["features"]
    finally:
        await close_all(a)


async def test_both_sides_archived_with_stanza_ids(server):
    alice, bob = server.accounts("alice", "bob")
    started = dt.datetime.now(dt.timezone.utc)
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        await chat(a, b, f"{alice.jid}/a", f"{bob.jid}/b", ["a1 <&>", "a2", "a3"])
        await chat(b, a, f"{bob.jid}/b", f"{alice.jid}/a", ["b1", "b2 ünï"])

        expected = ["a1 <&>", "a2", "a3", "b1", "b2 ünï"]
        for c, owner, peer in ((a, alice, bob), (b, bob, alice)):
            results, fin = await query(c, with_jid=peer.jid)
            assert body_list(results) == expected, f"{owner.jid}'s archive"
            assert complete(fin)
            ids = [r["mam_result"]["id"] for r in results]
            assert all(ids) and len(set(ids)) == len(ids), "archive ids must be present and unique"
            for r in results:
                m = inner(r)
                assert {m["from"].bare, m["to"].bare} == {alice.jid, bob.jid}
                stamp = r["mam_result"]["forwarded"]["delay"]["stamp"]
                assert stamp is not None and stamp >= started - dt.timedelta(minutes=1)
            # Sent ones carry the sender's full JID.
            assert inner(results[0])["from"].full == f"{alice.jid}/a"
            assert inner(results[3])["from"].full == f"{bob.jid}/b"

        # XEP-0359: what bob received carries a stanza-id by bob's bare JID,
        # the id of that message in bob's archive.
        b_results, _ = await query(b, with_jid=alice.jid)
        delivered = b.inbox.matching(lambda s: s.name == "message" and s["body"] == "a2")[0]
        sid = stanza_id(delivered, bob.jid)
        assert sid, f"no stanza-id by {bob.jid} on the delivered message: {delivered}"
        assert sid == b_results[1]["mam_result"]["id"]
    finally:
        await close_all(a, b)


async def test_query_filtered_by_with(server):
    alice, bob, carol = server.accounts("alice", "bob", "carol")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    c = await connect(server, carol, resource="c", plugins=PLUGINS)
    try:
        await chat(a, b, f"{alice.jid}/a", f"{bob.jid}/b", ["to bob 1"])
        await chat(a, c, f"{alice.jid}/a", f"{carol.jid}/c", ["to carol 1"])
        await chat(c, a, f"{carol.jid}/c", f"{alice.jid}/a", ["from carol 1"])
        await chat(a, b, f"{alice.jid}/a", f"{bob.jid}/b", ["to bob 2"])

        results, _ = await query(a, with_jid=bob.jid)
        assert body_list(results) == ["to bob 1", "to bob 2"]
        results, _ = await query(a, with_jid=carol.jid)
        assert body_list(results) == ["to carol 1", "from carol 1"]
        results, _ = await query(a)
        assert body_list(results) == ["to bob 1", "to carol 1", "from carol 1", "to bob 2"]
        # Bob's archive knows nothing of carol.
        results, _ = await query(b, with_jid=carol.jid)
        assert results == []
        # A full JID in `with` matches only that resource's messages.
        results, _ = await query(a, with_jid=f"{carol.jid}/c")
        assert "from carol 1" in body_list(results)
    finally:
        await close_all(a, b, c)


async def test_rsm_paging_forwards_and_backwards(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        texts = [f"page msg {i}" for i in range(7)]
        await chat(a, b, f"{alice.jid}/a", f"{bob.jid}/b", texts)

        # Forwards: max=3, then after=<last>.
        seen = []
        after = None
        pages = 0
        while True:
            rsm = {"max": 3}
            if after:
                rsm["after"] = after
            results, fin = await query(a, with_jid=bob.jid, rsm=rsm)
            pages += 1
            assert len(results) <= 3
            if results:
                assert fin["rsm"]["first"] == results[0]["mam_result"]["id"]
                assert fin["rsm"]["last"] == results[-1]["mam_result"]["id"]
            seen += body_list(results)
            if complete(fin):
                break
            assert results, "an incomplete page must not be empty"
            after = fin["rsm"]["last"]
            assert pages < 10, "paging does not terminate"
        assert seen == texts
        assert pages == 3
        if fin["rsm"]["count"] not in ("", None):
            assert int(fin["rsm"]["count"]) == 7

        # Backwards: <before/> (empty) = the last page; then before=<first>.
        results, fin = await query_last_page(a, with_jid=bob.jid, max_items=3)
        assert body_list(results) == texts[4:7]
        first = fin["rsm"]["first"]
        results, fin = await query(a, with_jid=bob.jid, rsm={"max": 3, "before": first})
        assert body_list(results) == texts[1:4]
        results, fin = await query(a, with_jid=bob.jid, rsm={"max": 3, "before": fin["rsm"]["first"]})
        assert body_list(results) == texts[0:1]
        assert complete(fin), "the page reaching the oldest message is complete"

        # after the very last id: empty and complete.
        all_results, _ = await query(a, with_jid=bob.jid)
        results, fin = await query(a, with_jid=bob.jid, rsm={"after": all_results[-1]["mam_result"]["id"]})
        assert results == [] and complete(fin)

        # slixmpp's own RSM iterator walks the same archive.
        got = [inner(m)["body"] async for m in a.plugin["xep_0313"].iterate(with_jid=bob.jid, rsm={"max": 2})]
        assert got == texts
    finally:
        await close_all(a, b)


async def test_unknown_after_id_is_an_error(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="a", plugins=PLUGINS)
    try:
        iq = a.plugin["xep_0313"].retrieve(rsm={"after": "no-such-archive-id"}, timeout=10)
        try:
            res = await iq
        except Exception as e:  # IqError
            cond = e.iq["error"]["condition"]
            assert cond in ("item-not-found", "bad-request"), cond
        else:
            raise AssertionError(f"unknown RSM id accepted: {res}")
    finally:
        await close_all(a)


async def test_third_device_catches_up_after_last_seen_id(server):
    alice, bob = server.accounts("alice", "bob")
    d1 = await connect(server, alice, resource="d1", priority=5, plugins=PLUGINS)
    d3 = await connect(server, alice, resource="d3", priority=1, plugins=PLUGINS)
    b = await connect(server, bob, resource="b", plugins=PLUGINS)
    try:
        # d3 sees one message live (to its full JID) and remembers its archive id.
        b.send_message(mto=f"{alice.jid}/d3", mbody="seen by d3", mtype="chat")
        seen = await d3.wait_message(lambda m: m["body"] == "seen by d3")
        last_seen = stanza_id(seen, alice.jid)
        assert last_seen, f"no stanza-id by {alice.jid}: {seen}"
        await d3.close()

        # The conversation goes on without d3, in both directions, from d1.
        expected = []
        for i in range(3):
            b.send_message(mto=alice.jid, mbody=f"while d3 away, bob {i}", mtype="chat")
            await d1.wait_message(lambda m, i=i: m["body"] == f"while d3 away, bob {i}")
            d1.send_message(mto=bob.jid, mbody=f"while d3 away, alice {i}", mtype="chat")
            await b.wait_message(lambda m, i=i: m["body"] == f"while d3 away, alice {i}")
            expected += [f"while d3 away, bob {i}", f"while d3 away, alice {i}"]
        await server_roundtrip(d1)

        d3 = await connect(server, alice, resource="d3", priority=1, plugins=PLUGINS)
        results, fin = await query(d3, rsm={"after": last_seen})
        assert body_list(results) == expected, "catch-up must give exactly what came after the last seen id"
        assert complete(fin)
        # d1's sent messages are in alice's archive from d1.
        assert inner(results[1])["from"].full == f"{alice.jid}/d1"
        # Paged catch-up gives the same.
        paged, after = [], last_seen
        for _ in range(10):
            res, fin = await query(d3, rsm={"after": after, "max": 4})
            paged += body_list(res)
            if complete(fin):
                break
            after = fin["rsm"]["last"]
        assert paged == expected
    finally:
        await close_all(d1, d3, b)
