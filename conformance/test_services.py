"""Server-side services: XEP-0199 ping, XEP-0092 version, XEP-0202 time,
XEP-0030 disco, XEP-0054 vcard-temp, XEP-0077 password change and closed
registration, unknown-namespace IQs (slixmpp + raw where needed)."""

import datetime as dt
import re
from xml.etree import ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from harness import Account
from rawxmpp import RawStream, stanza_error_conditions
from xmppclient import Client, LoginFailed, close_all, connect

REQUIRED_FEATURES = {
    "http://jabber.org/protocol/disco#info",
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "vcard-temp",
}


@pytest.fixture
async def alice(server):
    c = await connect(server, server.account("alice"), resource="svc")
    yield c
    await close_all(c)


async def test_ping_server(server, alice):
    res = await alice.plugin["xep_0199"].send_ping(server.domain, timeout=10)
    assert res["type"] == "result"
    assert res["from"].full == server.domain


async def test_ping_without_to_answered_by_server(alice):
    """An IQ with no 'to' is handled by the server on the account's behalf."""
    iq = alice.make_iq_get()
    ET.SubElement(iq.xml, "{urn:xmpp:ping}ping")
    res = await iq.send(timeout=10)
    assert res["type"] == "result"


async def test_version(server, alice):
    res = await alice.plugin["xep_0092"].get_version(server.domain, timeout=10)
    sv = res["software_version"]
    assert sv["name"], "no <name/>"
    assert sv["version"], "no <version/>"
    if server.version_name:
        assert sv["name"] == server.version_name


async def test_time(server, alice):
    res = await alice.plugin["xep_0202"].get_entity_time(server.domain, timeout=10)
    t = res.xml.find("{urn:xmpp:time}time")
    assert t is not None
    tzo = t.findtext("{urn:xmpp:time}tzo")
    utc = t.findtext("{urn:xmpp:time}utc")
    assert tzo and re.fullmatch(r"Z|[+-]\d\d:\d\d", tzo), tzo
    assert utc and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", utc), utc
    server_now = dt.datetime.fromisoformat(utc.replace("Z", "+00:00"))
    # Same machine: the clock must be sane (a day of slack, not a timing assertion).
    assert abs((server_now - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 86400


async def test_disco_info_server(server, alice):
    res = await alice.plugin["xep_0030"].get_info(jid=server.domain, timeout=10)
    info = res["disco_info"]
    identities = {(cat, typ) for cat, typ, _lang, _name in info["identities"]}
    assert ("server", "im") in identities, identities
    features = set(info["features"])
    missing = REQUIRED_FEATURES - features
    assert not missing, f"disco#info lacks {sorted(missing)}; has {sorted(features)}"


async def test_disco_items_server(server, alice):
    res = await alice.plugin["xep_0030"].get_items(jid=server.domain, timeout=10)
    assert res["type"] == "result"


@pytest.mark.parametrize("to", ["domain", "none"])
async def test_unknown_namespace_iq_service_unavailable(server, alice, to):
    iq = alice.make_iq_get(ito=server.domain if to == "domain" else None)
    ET.SubElement(iq.xml, "{urn:example:no-such-protocol}query")
    with pytest.raises(IqError) as ei:
        await iq.send(timeout=10)
    err = ei.value.iq
    assert err["error"]["condition"] == "service-unavailable"
    assert err["error"]["type"] == "cancel"
    assert err["id"] == iq["id"]


async def test_unknown_namespace_iq_set_service_unavailable(server, alice):
    iq = alice.make_iq_set(ito=server.domain)
    ET.SubElement(iq.xml, "{urn:example:no-such-protocol}command", {"action": "explode"})
    with pytest.raises(IqError) as ei:
        await iq.send(timeout=10)
    assert ei.value.iq["error"]["condition"] == "service-unavailable"


# ----------------------------------------------------------------- vCard
def one(v):
    """slixmpp gives some vCard fields as lists."""
    if isinstance(v, (list, tuple)):
        return v[0] if v else ""
    return v


def make_vcard(client, fn, nick, email):
    vc = client.plugin["xep_0054"].make_vcard()
    vc["FN"] = fn
    vc["NICKNAME"] = nick
    vc["EMAIL"]["USERID"] = email
    vc["EMAIL"]["INTERNET"] = True
    return vc


async def test_vcard_set_get_own_and_other(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="vc")
    b = await connect(server, bob, resource="vc")
    try:
        await a.plugin["xep_0054"].publish_vcard(make_vcard(a, "Alice Ünïcode & <Co>", "ally", "alice@example.org"),
                                                 timeout=10)
        own = await a.plugin["xep_0054"].get_vcard(local=False, timeout=10)
        assert own["vcard_temp"]["FN"] == "Alice Ünïcode & <Co>"
        assert one(own["vcard_temp"]["NICKNAME"]) == "ally"
        assert own["vcard_temp"]["EMAIL"]["USERID"] == "alice@example.org"

        other = await b.plugin["xep_0054"].get_vcard(alice.jid, local=False, timeout=10)
        assert other["from"].bare == alice.jid
        assert other["vcard_temp"]["FN"] == "Alice Ünïcode & <Co>"
        assert one(other["vcard_temp"]["NICKNAME"]) == "ally"

        # Replace, not merge.
        vc2 = a.plugin["xep_0054"].make_vcard()
        vc2["FN"] = "Alice Two"
        await a.plugin["xep_0054"].publish_vcard(vc2, timeout=10)
        again = await b.plugin["xep_0054"].get_vcard(alice.jid, local=False, timeout=10)
        assert again["vcard_temp"]["FN"] == "Alice Two"
        assert not one(again["vcard_temp"]["NICKNAME"]), "old NICKNAME survived a vCard replace"
    finally:
        await close_all(a, b)


async def test_vcard_persists_across_sessions(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="one")
    await a.plugin["xep_0054"].publish_vcard(make_vcard(a, "Persistent Alice", "pa", "pa@example.org"), timeout=10)
    await close_all(a)
    a = await connect(server, alice, resource="two")
    try:
        own = await a.plugin["xep_0054"].get_vcard(local=False, timeout=10)
        assert own["vcard_temp"]["FN"] == "Persistent Alice"
    finally:
        await close_all(a)


async def test_vcard_of_user_without_one(server):
    """XEP-0054: an empty vCard result or item-not-found."""
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="vc")
    try:
        try:
            res = await a.plugin["xep_0054"].get_vcard(bob.jid, local=False, timeout=10)
        except IqError as e:
            assert e.iq["error"]["condition"] == "item-not-found"
        else:
            assert not res["vcard_temp"]["FN"]
    finally:
        await close_all(a)


async def test_cannot_set_someone_elses_vcard(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="vc")
    b = await connect(server, bob, resource="vc")
    try:
        await b.plugin["xep_0054"].publish_vcard(make_vcard(b, "Real Bob", "bob", "bob@example.org"), timeout=10)
        with pytest.raises(IqError):
            await a.plugin["xep_0054"].publish_vcard(make_vcard(a, "Fake Bob", "x", "x@example.org"),
                                                     jid=bob.jid, timeout=10)
        res = await b.plugin["xep_0054"].get_vcard(local=False, timeout=10)
        assert res["vcard_temp"]["FN"] == "Real Bob"
    finally:
        await close_all(a, b)


# ----------------------------------------------------------------- XEP-0077 password change
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
async def test_password_change_then_login_with_new(server, mechanism):
    acct = server.account("pwchange")
    new_password = "new-pässwörd-" + acct.password[-6:]
    a = await connect(server, acct, resource="pw", mechanism=mechanism)
    res = await a.plugin["xep_0077"].change_password(new_password, jid=server.domain, timeout=10)
    assert res["type"] == "result"
    await close_all(a)

    old = Client(server, acct, mechanism=mechanism)
    with pytest.raises(LoginFailed) as ei:
        await old.login()
    assert ei.value.condition == "not-authorized"
    await close_all(old)

    fresh = Client(server, Account(acct.localpart, acct.domain, new_password), resource="pw2", mechanism=mechanism)
    try:
        await fresh.login()
        assert fresh.boundjid.bare == acct.jid
    finally:
        await close_all(fresh)


async def test_cannot_change_other_users_password(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="pw")
    try:
        iq = a.make_iq_set(ito=server.domain)
        q = ET.SubElement(iq.xml, "{jabber:iq:register}query")
        ET.SubElement(q, "{jabber:iq:register}username").text = bob.localpart
        ET.SubElement(q, "{jabber:iq:register}password").text = "hijacked"
        with pytest.raises(IqError):
            await iq.send(timeout=10)
    finally:
        await close_all(a)
    # bob's old password still works
    b = await connect(server, bob, resource="still-mine")
    await close_all(b)


# ----------------------------------------------------------------- registration closed (default)
async def test_inband_registration_closed_by_default(server):
    if server.registration_open:
        pytest.skip("target has open registration")
    localpart = server.unused_localpart("walkin")
    with RawStream(server.host, server.starttls_port, server.domain) as rs:
        rs.open_stream()
        feats = rs.starttls()
        assert b"http://jabber.org/features/iq-register" not in feats, \
            "registration feature advertised while registration is closed"
        rs.mark()
        rs.send(f"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
                f"<username>{localpart}</username><password>secret</password></query></iq>")
        got = rs.read_iq_reply("reg1")
        assert not re.search(rb"<iq[^>]*type=['\"]result['\"]", got), f"registration succeeded: {got!r}"
    c = Client(server, Account(localpart, server.domain, "secret"))
    with pytest.raises(LoginFailed):
        await c.login()
    await close_all(c)


async def test_legacy_session_establishment_accepted(server):
    """RFC 3921 <session/>: still accepted (answered with a result)."""
    acct = server.account("sess")
    with RawStream(server.host, server.tls_port, server.domain, direct_tls=True) as rs:
        rs.login(acct.localpart, acct.password, resource="legacy")
        rs.mark()
        rs.send("<iq type='set' id='sess-1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        got = rs.read_iq_reply("sess-1")
        assert re.search(rb"type=['\"]result['\"]", got), got
        assert not stanza_error_conditions(got), got
