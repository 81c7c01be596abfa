"""RFC 6120 §4.9 stream errors and §8 stanza-level rejects, driven over raw
sockets (plain `socket` + `ssl`), since client libraries won't send bad XML.

Every stream error test also checks that the server then closes the
connection (§4.9.1.1: stream errors are unrecoverable)."""

import pytest

from rawxmpp import (
    RawStream,
    has_features,
    has_stream_error,
    mechanisms_of,
    stanza_error_conditions,
    stream_error_conditions,
    stream_header,
)


def raw(server, *, direct_tls: bool = True) -> RawStream:
    port = server.tls_port if direct_tls else server.starttls_port
    return RawStream(server.host, port, server.domain, direct_tls=direct_tls)


def assert_stream_error(rs: RawStream, condition: str) -> None:
    conditions, got = rs.stream_error()
    assert has_stream_error(got), f"no stream error; received {got[-800:]!r}"
    assert conditions and conditions[0] == condition, f"expected <{condition}/>, got {conditions}: {got[-800:]!r}"
    assert rs.wait_closed(), "server kept the connection open after a stream error"


# --------------------------------------------------------------- malformed XML
@pytest.mark.parametrize("direct_tls", [True, False], ids=["direct-tls", "plain-before-starttls"])
def test_not_well_formed_mismatched_tag(server, direct_tls):
    with raw(server, direct_tls=direct_tls) as rs:
        feats = rs.open_stream()
        assert has_features(feats), feats
        rs.mark()
        rs.send("<message><body>hello</bdy></message>")
        assert_stream_error(rs, "not-well-formed")


def test_not_well_formed_after_auth(server):
    acct = server.account("nwf")
    with raw(server, direct_tls=False) as rs:
        rs.login(acct.localpart, acct.password)
        rs.mark()
        rs.send("<presence><<</presence>")
        assert_stream_error(rs, "not-well-formed")


def test_not_well_formed_duplicate_attribute(server):
    with raw(server) as rs:
        rs.open_stream()
        rs.mark()
        rs.send("<message to='a@localhost' to='b@localhost'><body>x</body></message>")
        assert_stream_error(rs, "not-well-formed")


# --------------------------------------------------------------- restricted XML (RFC 6120 §11.1)
RESTRICTED = {
    # A DOCTYPE with an internal subset declaring an entity, before the stream header.
    "doctype-entity": lambda dom: b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY xxe 'boom'>]>"
    + stream_header(dom, xml_decl=False),
    "processing-instruction": lambda dom: stream_header(dom) + b"<?evil instruction?>",
    "comment": lambda dom: stream_header(dom) + b"<!-- a comment is restricted XML -->",
}


@pytest.mark.difference("restricted-xml")
@pytest.mark.parametrize("construct", list(RESTRICTED))
def test_restricted_xml(server, construct):
    with raw(server) as rs:
        rs.mark()
        rs.send(RESTRICTED[construct](server.domain))
        assert_stream_error(rs, "restricted-xml")


@pytest.mark.difference("restricted-xml")
def test_restricted_xml_comment_inside_stanza_after_auth(server):
    acct = server.account("cmt")
    with raw(server) as rs:
        rs.login(acct.localpart, acct.password)
        rs.mark()
        rs.send("<message to='nobody@localhost'><!-- sneaky --><body>x</body></message>")
        assert_stream_error(rs, "restricted-xml")


# --------------------------------------------------------------- limits
def _send_oversized(rs: RawStream, total: int) -> None:
    """Send one stanza of about `total` bytes in chunks, stopping early if the
    server has already answered with a stream error (so little is left unread)."""
    rs.mark()
    if not rs.try_send("<message to='nobody@localhost' type='chat'><body>"):
        return
    sent, chunk = 0, b"A" * 8192
    while sent < total:
        if not rs.try_send(chunk):
            return
        sent += len(chunk)
        rs.read_until(has_stream_error, timeout=0.01)
        if has_stream_error(rs.buf) or rs.closed:
            return
    rs.try_send("</body></message>")


def test_policy_violation_oversized_stanza(server):
    acct = server.account("big")
    with raw(server) as rs:
        rs.login(acct.localpart, acct.password)
        _send_oversized(rs, server.max_stanza_bytes + 16384)
        assert_stream_error(rs, "policy-violation")


def test_policy_violation_oversized_before_auth(server):
    with raw(server) as rs:
        rs.open_stream()
        _send_oversized(rs, server.max_stanza_bytes + 16384)
        assert_stream_error(rs, "policy-violation")


# --------------------------------------------------------------- addressing
@pytest.mark.parametrize("direct_tls", [True, False], ids=["direct-tls", "plain-before-starttls"])
def test_host_unknown(server, direct_tls):
    with raw(server, direct_tls=direct_tls) as rs:
        rs.open_stream(to="no-such-domain.invalid")
        assert_stream_error(rs, "host-unknown")


# --------------------------------------------------------------- authentication required
PREAUTH_STANZAS = {
    "message": "<message to='someone@{d}' type='chat' id='m1'><body>hi</body></message>",
    "presence": "<presence/>",
    "iq-roster": "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
}


@pytest.mark.difference("preauth-not-authorized")
@pytest.mark.parametrize("kind", list(PREAUTH_STANZAS))
def test_stanza_before_auth_not_authorized(server, kind):
    with raw(server) as rs:
        feats = rs.open_stream()
        assert b"mechanisms" in feats, "direct-TLS stream should offer SASL"
        rs.mark()
        rs.send(PREAUTH_STANZAS[kind].format(d=server.domain))
        assert_stream_error(rs, "not-authorized")


@pytest.mark.difference("preauth-not-authorized")
def test_stanza_after_starttls_before_auth_not_authorized(server):
    with raw(server, direct_tls=False) as rs:
        rs.open_stream()
        rs.starttls()
        rs.mark()
        rs.send(PREAUTH_STANZAS["message"].format(d=server.domain))
        assert_stream_error(rs, "not-authorized")


def test_starttls_required_before_sasl(server):
    """TLS is mandatory: the plain stream advertises <starttls><required/>, and
    SASL PLAIN attempted in the clear never succeeds."""
    acct = server.account("cleartext")
    with raw(server, direct_tls=False) as rs:
        feats = rs.open_stream()
        assert b"urn:ietf:params:xml:ns:xmpp-tls" in feats
        assert b"<required" in feats, f"STARTTLS not marked required: {feats!r}"
        assert "PLAIN" not in mechanisms_of(feats), "PLAIN offered before TLS"
        got = rs.auth_plain(acct.localpart, acct.password)
        assert b"<success" not in got, "server accepted SASL PLAIN before TLS"
        assert b"<failure" in got or has_stream_error(got) or rs.closed, got


def test_features_after_tls_offer_required_mechanisms(server):
    with raw(server, direct_tls=False) as rs:
        rs.open_stream()
        feats = rs.starttls()
        assert rs.tls_version is not None
        mechs = mechanisms_of(feats)
        for m in ("SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"):
            assert m in mechs, f"{m} not offered after STARTTLS: {mechs}"


def test_starttls_not_offered_twice(server):
    with raw(server, direct_tls=False) as rs:
        rs.open_stream()
        feats = rs.starttls()
        assert b"urn:ietf:params:xml:ns:xmpp-tls" not in feats, "STARTTLS offered again inside TLS"


# --------------------------------------------------------------- IQ semantics (RFC 6120 §8.2.3)
def test_iq_without_id_bad_request(server):
    """The contract allows a bad-request stanza error, or a stream error when
    the server considers the IQ unanswerable (no id to echo)."""
    acct = server.account("noid")
    with raw(server) as rs:
        rs.login(acct.localpart, acct.password)
        rs.mark()
        rs.send("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        got = rs.read_until_contains(b"</iq>", b"</stream:error>")
        if has_stream_error(got):
            conds = stream_error_conditions(got)
            assert conds and conds[0] in ("bad-format", "invalid-xml"), conds
        else:
            assert b"type='error'" in got or b'type="error"' in got, got
            assert "bad-request" in stanza_error_conditions(got), got


def test_iq_bad_type_bad_request(server):
    acct = server.account("badtype")
    with raw(server) as rs:
        rs.login(acct.localpart, acct.password)
        rs.mark()
        rs.send("<iq type='fetch' id='bt-1'><ping xmlns='urn:xmpp:ping'/></iq>")
        got = rs.read_until_contains(b"</iq>", b"</stream:error>")
        assert not has_stream_error(got), got
        assert b"bt-1" in got, "error reply does not echo the id"
        assert "bad-request" in stanza_error_conditions(got), got
        # The stream survives a stanza error.
        rs.mark()
        rs.send("<iq type='get' id='after-1'><ping xmlns='urn:xmpp:ping'/></iq>")
        got = rs.read_until_contains(b"after-1")
        assert b"result" in got


def test_server_survives_stream_errors(server):
    """After the abuse above, a normal login still works."""
    acct = server.account("after")
    with raw(server, direct_tls=False) as rs:
        full = rs.login(acct.localpart, acct.password, resource="ok")
        assert full == f"{acct.jid}/ok"
