//! RFC 6120 streams: TLS, SASL, bind, and every bad-input case.

use crate::common::*;
use std::time::Duration;

#[tokio::test]
async fn login_with_each_mechanism_over_starttls() {
    let s = TestServer::start().await;
    s.add_user("alice", "pencil").await;
    for mech in [
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
    ] {
        let mut c = Client::connect(s.addr()).await;
        c.starttls().await;
        let features = c.open().await;
        let mechs: Vec<String> = features
            .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .unwrap()
            .children()
            .map(|m| m.text())
            .collect();
        assert!(
            mechs.contains(&mech.to_string()),
            "{mech} offered in {mechs:?}"
        );
        assert!(features.has_child("sasl-channel-binding", "urn:xmpp:sasl-cb:0"));
        let r = c.scram(mech, "alice", "pencil").await;
        assert_eq!(r.name(), "success", "{mech}");
        let b = c.bind("desk").await;
        assert_eq!(c.jid, "alice@localhost/desk", "{mech}: {}", xml(&b));
        c.sync().await;
        c.close().await;
    }
    // PLAIN over TLS.
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    c.open().await;
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0pencil");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{b}</auth>"
    ))
    .await;
    assert_eq!(c.recv().await.name(), "success");
}

#[tokio::test]
async fn direct_tls_login_and_generated_resource() {
    let s = TestServer::start().await;
    s.add_user("bob", "secret").await;
    let mut c = Client::connect_direct(s.direct_addr()).await;
    let features = c.open().await;
    assert!(!features.has_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert_eq!(
        c.scram("SCRAM-SHA-1", "bob", "secret").await.name(),
        "success"
    );
    c.bind("").await;
    assert!(c.jid.starts_with("bob@localhost/"), "{}", c.jid);
    assert!(c.jid.len() > "bob@localhost/".len());
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused() {
    let s = TestServer::start().await;
    s.add_user("alice", "pencil").await;
    for (user, pass) in [("alice", "crayon"), ("nobody", "pencil")] {
        let mut c = Client::connect(s.addr()).await;
        c.starttls().await;
        c.open().await;
        let r = c.scram("SCRAM-SHA-256", user, pass).await;
        assert_eq!(r.name(), "failure");
        assert!(r.has_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl"));
    }
}

#[tokio::test]
async fn plus_refused_when_binding_differs_and_downgrade_detected() {
    let s = TestServer::start().await;
    s.add_user("alice", "pencil").await;
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    c.open().await;
    // 'y' says "I could bind but you cannot": a downgrade, since we offered -PLUS.
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(b"y,,n=alice,r=abc");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{b}</auth>"
    ))
    .await;
    assert_eq!(c.recv().await.name(), "failure");
}

#[tokio::test]
async fn tls_is_required_before_auth() {
    let s = TestServer::start().await;
    let mut c = Client::connect(s.addr()).await;
    let f = c.open().await;
    let tls = f
        .get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .unwrap();
    assert!(tls.has_child("required", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(!f.has_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl"));
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
        .await;
    let r = c.recv().await;
    assert!(r.has_child("encryption-required", "urn:ietf:params:xml:ns:xmpp-sasl"));
}

#[tokio::test]
async fn stanzas_before_authentication_are_not_authorized() {
    let s = TestServer::start().await;
    // Before TLS.
    let mut c = Client::connect(s.addr()).await;
    c.open().await;
    c.send("<message to='alice@localhost'><body>x</body></message>")
        .await;
    assert_eq!(c.stream_error().await, "not-authorized");
    // After TLS, before SASL.
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    c.open().await;
    c.send("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_eq!(c.stream_error().await, "not-authorized");
}

#[tokio::test]
async fn stream_level_errors() {
    let s = TestServer::start().await;
    s.add_user("alice", "pencil").await;
    let cases: &[(&str, &str)] = &[
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>",
            "host-unknown",
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>",
            "invalid-namespace",
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>",
            "unsupported-version",
        ),
        (
            "<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream>",
            "restricted-xml",
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'><?evil pi?>",
            "restricted-xml",
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'><!-- c -->",
            "restricted-xml",
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'><a></b>",
            "not-well-formed",
        ),
    ];
    for (input, expected) in cases {
        let mut c = Client::connect(s.addr()).await;
        c.send(input).await;
        assert_eq!(&c.stream_error().await, expected, "input {input}");
        assert!(c.closed().await);
    }
}

#[tokio::test]
async fn errors_after_login() {
    let s = TestServer::start_with(Backend::Sqlite, |c| c.limits.max_stanza_bytes = 20_000).await;
    s.add_user("alice", "pencil").await;

    // Oversized stanza.
    let mut c = s.login("alice", "pencil", "r").await;
    let big = format!(
        "<message to='alice@localhost'><body>{}</body></message>",
        "a".repeat(30_000)
    );
    c.send(&big).await;
    assert_eq!(c.stream_error().await, "policy-violation");

    // Malformed XML after login.
    let mut c = s.login("alice", "pencil", "r").await;
    c.send("<message><body>x</message>").await;
    assert_eq!(c.stream_error().await, "not-well-formed");

    // Spoofed from.
    let mut c = s.login("alice", "pencil", "r").await;
    c.send("<message from='bob@localhost/x' to='alice@localhost'><body>x</body></message>")
        .await;
    assert_eq!(c.stream_error().await, "invalid-from");

    // IQ errors are stanza errors; the stream stays up.
    let mut c = s.login("alice", "pencil", "r").await;
    c.send("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = c.recv_until(|e| e.name() == "iq").await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("bad-request"),
        "{}",
        xml(&r)
    );
    let r = c
        .iq("<iq type='fetch' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = c
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='urn:example:unknown'/></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    let r = c.iq("<iq type='get' id='{id}' to='localhost'/>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = c
        .iq("<iq type='get' id='{id}' to='nowhere.example'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("remote-server-not-found")
    );
    // Whitespace keepalives are fine.
    c.send("   \n  ").await;
    c.sync().await;
}

#[tokio::test]
async fn same_resource_replaces_older_session_with_conflict() {
    let s = TestServer::start().await;
    s.add_user("alice", "pencil").await;
    let mut first = s.login("alice", "pencil", "phone").await;
    let mut second = s.login("alice", "pencil", "phone").await;
    assert_eq!(first.stream_error().await, "conflict");
    second.sync().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off() {
    let s = TestServer::start_with(Backend::Sqlite, |c| c.limits.outbound_queue = 8).await;
    s.add_user("alice", "pencil").await;
    s.add_user("bob", "pencil").await;
    let _bob = Client::online(s.addr(), "bob", "pencil", "stuck").await;
    let mut alice = s.login("alice", "pencil", "r").await;
    let body = "x".repeat(8000);
    let bob_jid: jid::FullJid = "bob@localhost/stuck".parse().unwrap();
    let registry = &s.running().server.registry;
    // Bob never reads; his socket buffers fill, then his queue, then he is dropped.
    let mut dropped = false;
    for i in 0..5000 {
        alice
            .send(&format!(
                "<message to='bob@localhost/stuck' id='m{i}'><body>{body}</body></message>"
            ))
            .await;
        if i % 50 == 0 {
            alice.sync().await;
            if registry.session(&bob_jid).is_none() {
                dropped = true;
                break;
            }
        }
    }
    assert!(dropped, "the stuck session was not cut off");
    // Alice is unaffected.
    alice.sync().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn legacy_session_iq_is_accepted() {
    let s = TestServer::start().await;
    s.add_user("alice", "pencil").await;
    let mut c = s.login("alice", "pencil", "old").await;
    let r = c
        .iq("<iq type='set' id='{id}'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
}
