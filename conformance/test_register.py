"""XEP-0077 in-band registration with `[registration] open = true`.

The registration itself is driven over a raw socket (after STARTTLS, before
SASL, as a client does); the new account is then used with slixmpp."""

import re

import pytest

from harness import Account
from rawxmpp import RawStream, stanza_error_conditions
from xmppclient import Client, LoginFailed, close_all

SERVER_OPTIONS = {"registration_open": True}

NS_REG = "jabber:iq:register"


@pytest.fixture(autouse=True)
def _needs_open_registration(server):
    if not server.registration_open:
        pytest.skip("target does not have open registration (XMPP_REGISTRATION_OPEN=1)")


def tls_stream(server) -> tuple[RawStream, bytes]:
    rs = RawStream(server.host, server.starttls_port, server.domain)
    rs.open_stream()
    feats = rs.starttls()
    return rs, feats


def register(rs: RawStream, localpart: str, password: str, iq_id: str = "reg-1") -> bytes:
    rs.mark()
    rs.send(f"<iq type='set' id='{iq_id}'><query xmlns='{NS_REG}'>"
            f"<username>{localpart}</username><password>{password}</password></query></iq>")
    return rs.read_iq_reply(iq_id)


def is_result(reply: bytes) -> bool:
    return re.search(rb"<iq[^>]*type=['\"]result['\"]", reply) is not None


def test_registration_advertised_and_form(server):
    rs, feats = tls_stream(server)
    with rs:
        assert b"http://jabber.org/features/iq-register" in feats, feats
        rs.mark()
        rs.send(f"<iq type='get' id='form-1'><query xmlns='{NS_REG}'/></iq>")
        got = rs.read_iq_reply("form-1")
        assert is_result(got), got
        assert b"<username" in got and b"<password" in got, got


async def test_register_then_login(server):
    localpart = server.unused_localpart("newbie")
    password = "fresh-päss-1"
    rs, _ = tls_stream(server)
    with rs:
        got = register(rs, localpart, password)
        assert is_result(got), f"registration failed: {got!r}"
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        c = Client(server, Account(localpart, server.domain, password), resource="r", mechanism=mech)
        try:
            await c.login()
            assert c.boundjid.bare == f"{localpart}@{server.domain}"
        finally:
            await close_all(c)
    bad = Client(server, Account(localpart, server.domain, "wrong"), mechanism="SCRAM-SHA-256")
    with pytest.raises(LoginFailed):
        await bad.login()
    await close_all(bad)


def test_register_existing_username_conflict(server):
    existing = server.account("taken")
    rs, _ = tls_stream(server)
    with rs:
        got = register(rs, existing.localpart, "another-password")
        assert not is_result(got), "re-registering an existing username succeeded"
        assert "conflict" in stanza_error_conditions(got), got


async def test_register_does_not_change_existing_password(server):
    existing = server.account("keeper")
    rs, _ = tls_stream(server)
    with rs:
        register(rs, existing.localpart, "hijack-attempt")
    c = Client(server, existing, resource="still-works")
    try:
        await c.login()
    finally:
        await close_all(c)


def test_register_without_password_rejected(server):
    rs, _ = tls_stream(server)
    with rs:
        rs.mark()
        rs.send(f"<iq type='set' id='nopw'><query xmlns='{NS_REG}'>"
                f"<username>{server.unused_localpart('nopw')}</username></query></iq>")
        got = rs.read_iq_reply("nopw")
        assert not is_result(got), got
        conds = stanza_error_conditions(got)
        assert conds and conds[0] in ("bad-request", "not-acceptable"), got


@pytest.mark.xmppd_only
async def test_registered_account_listed_by_cli(server):
    localpart = server.unused_localpart("listed")
    rs, _ = tls_stream(server)
    with rs:
        assert is_result(register(rs, localpart, "pw-listed"))
    out = server.cli("user", "list").stdout.split()
    assert f"{localpart}@{server.domain}" in out
