"""RFC 6120 §5 (TLS), §6 (SASL), §7 (bind); XEP-0368 direct TLS.  Driven by slixmpp."""

import pytest

from xmppclient import Client, LoginFailed, close_all, connect

MECHS = ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"]


@pytest.mark.parametrize("transport", ["starttls", "direct-tls"])
@pytest.mark.parametrize("mechanism", MECHS)
async def test_login(server, transport, mechanism):
    acct = server.account("login")
    c = Client(server, acct, resource="laptop", mechanism=mechanism, direct_tls=transport == "direct-tls")
    try:
        await c.login()
        assert c.sasl_mechanism == mechanism
        assert c.tls_version is not None, "session is not over TLS"
        assert c.boundjid.bare == acct.jid
        assert c.boundjid.resource == "laptop", "client-chosen resource not honoured"
        # The session works: the server answers a ping.
        await c.plugin["xep_0199"].ping(server.domain, timeout=10)
    finally:
        await close_all(c)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
async def test_wrong_password_refused(server, mechanism):
    acct = server.account("badpw")
    c = Client(server, acct, password="definitely-not-" + acct.password, mechanism=mechanism)
    with pytest.raises(LoginFailed) as ei:
        await c.login()
    assert ei.value.condition == "not-authorized"
    assert c.sasl_failures, "no SASL <failure/> received"
    assert not c.authenticated
    await close_all(c)


async def test_unknown_user_refused(server):
    from harness import Account
    ghost = Account(server.unused_localpart("ghost"), server.domain, "whatever")
    c = Client(server, ghost, mechanism="SCRAM-SHA-256")
    with pytest.raises(LoginFailed) as ei:
        await c.login()
    assert ei.value.condition == "not-authorized"
    await close_all(c)


async def test_server_generates_resource(server):
    acct = server.account("nores")
    c = Client(server, acct)  # no resource requested: the server must generate one
    try:
        await c.login()
        assert c.boundjid.bare == acct.jid
        assert c.boundjid.resource, "server did not assign a resource"
    finally:
        await close_all(c)


async def test_two_generated_resources_differ(server):
    acct = server.account("nores2")
    a = Client(server, acct)
    b = Client(server, acct)
    try:
        await a.login()
        await b.login()
        assert a.boundjid.resource != b.boundjid.resource
        # Both sessions stay usable.
        await a.plugin["xep_0199"].ping(server.domain, timeout=10)
        await b.plugin["xep_0199"].ping(server.domain, timeout=10)
    finally:
        await close_all(a, b)


async def test_same_resource_conflict_kicks_old_session(server):
    """RFC 6120 §7.7.2.2: the server terminates the old session with <conflict/>."""
    acct = server.account("dup")
    first = await connect(server, acct, resource="phone")
    second = None
    try:
        second = await connect(server, acct, resource="phone")
        assert second.boundjid.full == f"{acct.jid}/phone"
        await first.wait_closed()
        conditions = [e["condition"] for e in first.stream_errors]
        assert conditions == ["conflict"], f"old session got stream errors {conditions}"
        # The new session is the live one.
        await second.plugin["xep_0199"].ping(server.domain, timeout=10)
    finally:
        await close_all(first, second)
