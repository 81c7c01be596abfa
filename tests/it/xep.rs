//! Server basics: disco, ping, version, time, vcard, registration.

use crate::common::*;

#[tokio::test]
async fn disco_ping_version_time() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut c = s.login("alice", "pw", "r").await;
    let r = c.iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let id = q
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("server"), Some("im"))
    );
    let features: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
    for f in [
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
        "vcard-temp",
        "http://jabber.org/protocol/disco#info",
        "urn:xmpp:features:rosterver",
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    let r = c.iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(
        q.get_child("identity", "http://jabber.org/protocol/disco#info")
            .unwrap()
            .attr("category"),
        Some("account")
    );

    let r = c
        .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = c
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    assert_eq!(
        r.get_child("query", "jabber:iq:version")
            .unwrap()
            .get_child("name", "jabber:iq:version")
            .unwrap()
            .text(),
        "xmppd"
    );
    let r = c
        .iq("<iq type='get' id='{id}' to='localhost'><time xmlns='urn:xmpp:time'/></iq>")
        .await;
    let utc = r
        .get_child("time", "urn:xmpp:time")
        .unwrap()
        .get_child("utc", "urn:xmpp:time")
        .unwrap()
        .text();
    assert_eq!(utc.len(), 20, "{utc}");
    assert!(utc.ends_with('Z'));
}

#[tokio::test]
async fn server_pings_silent_clients_and_drops_dead_ones() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.c2s.ping_interval = 1;
        c.c2s.ping_timeout = 1;
    })
    .await;
    s.add_user("alice", "pw").await;
    let mut c = s.login("alice", "pw", "r").await;
    let ping = c
        .recv_until(|e| e.name() == "iq" && e.has_child("ping", "urn:xmpp:ping"))
        .await;
    assert_eq!(ping.attr("type"), Some("get"));
    // Answer it: the session lives on.
    c.send(&format!(
        "<iq type='result' id='{}' to='localhost'/>",
        ping.attr("id").unwrap()
    ))
    .await;
    c.sync().await;
    // Ignore the next one: the server gives up.
    c.recv_until(|e| e.name() == "iq" && e.has_child("ping", "urn:xmpp:ping"))
        .await;
    assert_eq!(c.stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn vcard_set_and_get() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut a = s.login("alice", "pw", "r").await;
    let mut b = s.login("bob", "pw", "r").await;
    let r = a.iq("<iq type='set' id='{id}'><vCard xmlns='vcard-temp'><FN>Alice &amp; Co</FN><NICKNAME>al</NICKNAME></vCard></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = a
        .iq("<iq type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    assert_eq!(
        r.get_child("vCard", "vcard-temp")
            .unwrap()
            .get_child("FN", "vcard-temp")
            .unwrap()
            .text(),
        "Alice & Co"
    );
    let r = b
        .iq("<iq type='get' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    assert_eq!(r.attr("from"), Some("alice@localhost"));
    assert_eq!(
        r.get_child("vCard", "vcard-temp")
            .unwrap()
            .get_child("NICKNAME", "vcard-temp")
            .unwrap()
            .text(),
        "al"
    );
    let r = b.iq("<iq type='set' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>x</FN></vCard></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    let r = b
        .iq("<iq type='get' id='{id}' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
}

async fn register(s: &TestServer, user: &str, pass: &str) -> minidom::Element {
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    let f = c.open().await;
    assert!(f.has_child("register", "http://jabber.org/features/iq-register"));
    let r = c
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    assert!(
        r.get_child("query", "jabber:iq:register")
            .unwrap()
            .has_child("password", "jabber:iq:register")
    );
    c.iq(&format!("<iq type='set' id='{{id}}'><query xmlns='jabber:iq:register'><username>{user}</username><password>{pass}</password></query></iq>")).await
}

#[tokio::test]
async fn in_band_registration_when_open_and_password_change() {
    let closed = TestServer::start().await;
    let mut c = Client::connect(closed.addr()).await;
    c.starttls().await;
    let f = c.open().await;
    assert!(!f.has_child("register", "http://jabber.org/features/iq-register"));
    c.send("<iq type='get' id='1'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    assert_eq!(c.stream_error().await, "not-authorized");

    let s = TestServer::start_with(Backend::Sqlite, |c| c.registration.open = true).await;
    let r = register(&s, "newbie", "first").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let r = register(&s, "newbie", "again").await;
    assert_eq!(error_condition(&r).as_deref(), Some("conflict"));

    let mut c = s.login("newbie", "first", "r").await;
    let r = c.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>newbie</username><password>second</password></query></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = c.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>other</username><password>x</password></query></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    c.close().await;
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    c.open().await;
    assert_eq!(
        c.scram("SCRAM-SHA-1", "newbie", "first").await.name(),
        "failure"
    );
    let mut c = s.login("newbie", "second", "r").await;

    // Account removal ends the session and the account.
    let r = c
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(c.stream_error().await, "not-authorized");
    assert!(
        !s.running()
            .server
            .storage
            .accounts
            .account_exists("newbie@localhost")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn turn_credentials_and_contact_addresses() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.modules.extdisco.services = vec![
            xmppd::config::ExternalService {
                kind: "stun".into(),
                host: "turn.example.org".into(),
                port: 3478,
                transport: "udp".into(),
                secret: None,
                ttl: 60,
            },
            xmppd::config::ExternalService {
                kind: "turn".into(),
                host: "turn.example.org".into(),
                port: 3478,
                transport: "udp".into(),
                secret: Some("s3cret".into()),
                ttl: 60,
            },
        ];
        c.modules
            .contact_addresses
            .insert("abuse".into(), vec!["mailto:abuse@example.org".into()]);
    })
    .await;
    s.add_user("alice", "pw").await;
    let mut c = s.login("alice", "pw", "r").await;
    let r = c
        .iq("<iq type='get' id='{id}' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>")
        .await;
    let services: Vec<minidom::Element> = r
        .get_child("services", "urn:xmpp:extdisco:2")
        .unwrap()
        .children()
        .cloned()
        .collect();
    assert_eq!(services.len(), 2);
    let turn = services
        .iter()
        .find(|s| s.attr("type") == Some("turn"))
        .unwrap();
    let user = turn.attr("username").unwrap();
    assert!(user.ends_with(":alice@localhost"), "{user}");
    let expires: u64 = user.split(':').next().unwrap().parse().unwrap();
    let (_, expected) =
        xmppd::xep::extdisco::turn_credentials("s3cret", "alice@localhost", expires);
    assert_eq!(
        turn.attr("password"),
        Some(expected.as_str()),
        "credentials a TURN server with the secret accepts"
    );
    assert!(
        services
            .iter()
            .find(|s| s.attr("type") == Some("stun"))
            .unwrap()
            .attr("password")
            .is_none()
    );
    let r = c.iq("<iq type='get' id='{id}' to='localhost'><services xmlns='urn:xmpp:extdisco:2' type='stun'/></iq>").await;
    assert_eq!(
        r.get_child("services", "urn:xmpp:extdisco:2")
            .unwrap()
            .children()
            .count(),
        1
    );
    let r = c.iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let x = xml(&r);
    assert!(
        x.contains("http://jabber.org/network/serverinfo")
            && x.contains("abuse-addresses")
            && x.contains("mailto:abuse@example.org"),
        "{x}"
    );
}
