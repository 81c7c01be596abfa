"""How servers authenticate each other (issue 8; RFC 6120 §13.7.2, XEP-0178,
XEP-0220): certificates valid for the domain authenticate by SASL EXTERNAL,
both ways; without them dialback does, unless the policy
(`[s2s] require_valid_certificates`) refuses the peer; a certificate that is
not valid for the claimed domain is refused SASL EXTERNAL."""

from __future__ import annotations

import base64
import secrets

import pytest

from conftest import (FEATURES_END, STATE, XMPPD2_DOMAIN, XMPPD2_HOST, cert_mode, raw_s2s_stream,
                      read_until, run_xmppd)
from test_peers_federate import FED_TIMEOUT, expect, login
from test_xmppd_federation import warm_up
from xmppclient import close_all


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request, peers):
    return peers[request.param]


async def chat_both_ways(a, b):
    token = secrets.token_hex(4)
    a.send_message(mto=b.boundjid, mbody=f"to peer {token}", mtype="chat")
    await expect(b, lambda m: m.name == "message" and m["body"] == f"to peer {token}", "outgoing", sender=a)
    b.send_message(mto=a.boundjid, mbody=f"to xmppd {token}", mtype="chat")
    await expect(a, lambda m: m.name == "message" and m["body"] == f"to xmppd {token}", "incoming", sender=b)


async def test_valid_certificates_authenticate_by_sasl_external(xm, peer):
    if cert_mode() != "ca":
        pytest.skip("the peers present self-signed certificates (FED_CERTS=self)")
    a = await login(xm, "alice", "fed-ext")
    b = await login(peer, "bob", "fed-ext")
    try:
        await warm_up(a, b)
        await chat_both_ways(a, b)
        # xm requires valid certificates: nothing was authenticated by dialback.
        assert xm.s2s_auth("in", "external") >= 1 and xm.s2s_auth("out", "external") >= 1
        assert xm.s2s_auth("in", "dialback") == 0 and xm.s2s_auth("out", "dialback") == 0
    finally:
        await close_all(a, b)


async def test_dialback_where_certificates_do_not_validate(peer, tmp_path):
    """xmppd2.localhost with a self-signed certificate, trusting only the
    system's authorities: neither side can verify the other."""
    with run_xmppd(tmp_path, XMPPD2_DOMAIN, XMPPD2_HOST, STATE / "certs" / "self") as xm2:
        a = await login(xm2, "alice", "fed-db")
        b = await login(peer, "bob", "fed-db")
        try:
            await warm_up(a, b)
            await chat_both_ways(a, b)
            assert xm2.s2s_auth("in", "dialback") >= 1 and xm2.s2s_auth("out", "dialback") >= 1
            assert xm2.s2s_auth("in", "external") == 0 and xm2.s2s_auth("out", "external") == 0
        finally:
            await close_all(a, b)


async def test_policy_refuses_peers_without_valid_certificates(peer, tmp_path):
    """xmppd2.localhost, self-signed and not trusting the test CA, requiring
    valid certificates: no peer can be accepted, either way."""
    with run_xmppd(tmp_path, XMPPD2_DOMAIN, XMPPD2_HOST, STATE / "certs" / "self",
                   "require_valid_certificates = true") as xm2:
        a = await login(xm2, "alice", "fed-strict")
        b = await login(peer, "bob", "fed-strict")
        try:
            # Ours to theirs: their certificate cannot be verified here, so the
            # stream is not set up and the message bounces.
            a.send_message(mto=b.boundjid, mbody="refused", mtype="chat")
            err = await a.inbox.wait_for(lambda m: m.name == "message" and m["type"] == "error",
                                         FED_TIMEOUT, "bounce at the xmppd sender")
            assert err["error"]["condition"] == "remote-server-not-found", err
            # Theirs to ours: dialback is refused, so the peer bounces it.
            b.send_message(mto=a.boundjid, mbody="refused too", mtype="chat")
            await b.inbox.wait_for(lambda m: m.name == "message" and m["type"] == "error",
                                   FED_TIMEOUT + 15, "bounce at the peer's sender")
            assert not a.inbox.matching(lambda m: m.name == "message" and m["body"] == "refused too")
            assert xm2.s2s_auth("in", "dialback") == 0 and xm2.s2s_auth("out", "dialback") == 0
        finally:
            await close_all(a, b)


def test_certificate_not_valid_for_the_domain_is_refused_external(xm):
    """A peer presenting a self-signed certificate for the domain it claims is
    offered no EXTERNAL and gets <not-authorized/> if it tries; under the
    strict policy (xm with test-CA certificates) it is refused at once."""
    claimed = XMPPD2_DOMAIN
    certs = STATE / "certs" / "self"  # self-signed: not valid, whoever trusts the test CA
    tls = raw_s2s_stream(xm, claimed, (certs / f"{claimed}.crt", certs / f"{claimed}.key"))
    if cert_mode() == "ca":
        # xm runs with require_valid_certificates = true: neither EXTERNAL nor
        # dialback could succeed, so the stream is refused at once.
        answer = read_until(tls, b"</stream:stream>")
        assert b"policy-violation" in answer, answer
        tls.close()
        return
    features = read_until(tls, FEATURES_END)
    assert b"EXTERNAL" not in features, features
    tls.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
    assert b"not-authorized" in read_until(tls, b"</failure>")
    tls.close()


def test_external_for_the_wrong_domain_and_retries(peers, tmp_path):
    """On an xmppd that allows dialback (xmppd2): a certificate valid for
    pr.localhost cannot authenticate as another domain (not-authorized), nor as
    xmppd2's own domain; the fourth refusal ends the stream."""
    certs = STATE / "certs" / "ca"
    with run_xmppd(tmp_path, XMPPD2_DOMAIN, XMPPD2_HOST, STATE / "certs" / "self",
                   f'ca_files = ["{certs / "ca.crt"}"]') as xm2:
        tls = raw_s2s_stream(xm2, "pr.localhost", (certs / "pr.localhost.crt", certs / "pr.localhost.key"))
        features = read_until(tls, FEATURES_END)
        assert b"EXTERNAL" in features, features  # valid for the domain it names
        # Three refusals are answered; the fourth ends the stream.
        for other in ("ej.localhost", xm2.domain, "ej.localhost", "ej.localhost"):
            tls.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                        f"{base64.b64encode(other.encode()).decode()}</auth>".encode())
        answer = read_until(tls, b"</stream:stream>")
        assert answer.count(b"<not-authorized/>") == 3, answer
        assert b"policy-violation" in answer, answer
        tls.close()
