//! XEP-0114 external components.

use crate::common::*;
use sha1::Digest;
use xmppd::xml::StreamEvent;

const ACCEPT: &str = "jabber:component:accept";

async fn component(s: &TestServer, domain: &str, secret: &str) -> (Client, Option<String>) {
    let addr = s.running().component_listener.unwrap();
    let mut c = Client::connect(addr).await;
    c.send(&format!("<stream:stream xmlns='{ACCEPT}' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>")).await;
    let id = match c.next_event().await {
        Some(StreamEvent::Header(h)) => h.id.unwrap(),
        other => panic!("no header: {other:?}"),
    };
    let digest: String = sha1::Sha1::digest(format!("{id}{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    c.send(&format!("<handshake>{digest}</handshake>")).await;
    match c.next_event().await {
        Some(StreamEvent::Stanza(e)) if e.name() == "handshake" => (c, None),
        Some(StreamEvent::Stanza(e)) if e.name() == "error" => {
            (c, e.children().next().map(|c| c.name().to_string()))
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn server() -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        c.components.port = 0;
        c.components.services = vec![xmppd::config::ComponentService {
            domain: "gateway.localhost".into(),
            secret: "s3cret".into(),
        }];
    })
    .await
}

#[tokio::test]
async fn a_component_owns_its_domain() {
    let s = server().await;
    s.add_user("alice", "pw").await;
    let (mut gw, err) = component(&s, "gateway.localhost", "s3cret").await;
    assert_eq!(err, None);
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    // Client → component.
    alice.send("<message to='bob@gateway.localhost' type='chat' id='a1'><body>to the gateway</body></message>").await;
    let m = gw.recv_until(|e| e.name() == "message").await;
    assert_eq!(m.ns(), ACCEPT, "stanzas arrive in the component namespace");
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
    assert_eq!(m.attr("id"), Some("a1"));
    // Component → client.
    gw.send(&format!("<message xmlns='{ACCEPT}' from='bob@gateway.localhost' to='alice@localhost/r' type='chat' id='g1'><body>from the gateway</body></message>")).await;
    let m = alice.recv_until(|e| e.attr("id") == Some("g1")).await;
    assert_eq!(m.attr("from"), Some("bob@gateway.localhost"));
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "from the gateway"
    );
    // IQ round trip through the component.
    alice
        .send(
            "<iq type='get' id='v1' to='gateway.localhost'><query xmlns='jabber:iq:version'/></iq>",
        )
        .await;
    let q = gw.recv_until(|e| e.name() == "iq").await;
    gw.send(&format!("<iq xmlns='{ACCEPT}' type='result' id='{}' from='gateway.localhost' to='alice@localhost/r'><query xmlns='jabber:iq:version'><name>gw</name></query></iq>", q.attr("id").unwrap())).await;
    let r = alice.recv_until(|e| e.attr("id") == Some("v1")).await;
    assert_eq!(r.attr("type"), Some("result"));
    // A subscription to a gateway contact reaches the gateway.
    alice
        .send("<presence to='bob@gateway.localhost' type='subscribe'/>")
        .await;
    let p = gw.recv_until(|e| e.name() == "presence").await;
    assert_eq!(
        (p.attr("type"), p.attr("from")),
        (Some("subscribe"), Some("alice@localhost"))
    );
    // A component cannot speak for others.
    gw.send(&format!("<message xmlns='{ACCEPT}' from='mallory@localhost' to='alice@localhost'><body>x</body></message>")).await;
    assert_eq!(gw.stream_error().await, "invalid-from");
}

#[tokio::test]
async fn wrong_secret_unknown_domain_and_duplicates_are_refused() {
    let s = server().await;
    let (_c, err) = component(&s, "gateway.localhost", "wrong").await;
    assert_eq!(err.as_deref(), Some("not-authorized"));
    let addr = s.running().component_listener.unwrap();
    let mut c = Client::connect(addr).await;
    c.send(&format!("<stream:stream xmlns='{ACCEPT}' xmlns:stream='http://etherx.jabber.org/streams' to='other.localhost'>")).await;
    assert_eq!(c.stream_error().await, "host-unknown");
    let (_first, err) = component(&s, "gateway.localhost", "s3cret").await;
    assert_eq!(err, None);
    let (_second, err) = component(&s, "gateway.localhost", "s3cret").await;
    assert_eq!(err.as_deref(), Some("conflict"));
}

#[tokio::test]
async fn push_notifications_reach_the_app_server() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.components.port = 0;
        c.components.services = vec![xmppd::config::ComponentService {
            domain: "push.localhost".into(),
            secret: "p".into(),
        }];
    })
    .await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let (mut app, err) = component(&s, "push.localhost", "p").await;
    assert_eq!(err, None);
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;

    // Alice's phone: stream management with resumption, then push.
    let mut phone = Client::online(s.addr(), "alice", "pw", "phone").await;
    phone
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    phone.recv_until(|e| e.name() == "enabled").await;
    let r = phone
        .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:push:0' jid='push.localhost' node='device-1'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>app-token</value></field></x></enable></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let r = phone.iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(xml(&r).contains("urn:xmpp:push:0"));
    // The phone goes to sleep (connection lost, session hibernates); Bob writes.
    phone.drop_connection();
    let jid: jid::FullJid = "alice@localhost/phone".parse().unwrap();
    bob.send(
        "<message to='alice@localhost/phone' type='chat' id='b1'><body>wake up</body></message>",
    )
    .await;
    let iq = app.recv_until(|e| e.name() == "iq").await;
    assert_eq!(iq.attr("from"), Some("alice@localhost"));
    let x = xml(&iq);
    assert!(
        x.contains("node='device-1'") && x.contains("urn:xmpp:push:summary"),
        "{x}"
    );
    assert!(x.contains("bob@localhost/r"), "last sender: {x}");
    assert!(x.contains("app-token"), "publish-options carried: {x}");
    assert!(!x.contains("wake up"), "no body unless configured: {x}");
    assert!(
        s.running().server.registry.session(&jid).is_some(),
        "still hibernating, resumable"
    );
    // The app server answers; nothing is forwarded to Alice's account.
    app.send(&format!("<iq xmlns='jabber:component:accept' type='result' id='{}' from='push.localhost' to='alice@localhost'/>", iq.attr("id").unwrap())).await;

    let regs = s
        .running()
        .server
        .storage
        .push
        .push_registrations("alice@localhost")
        .await
        .unwrap();
    assert_eq!(regs.len(), 1);
}

#[tokio::test]
async fn push_for_offline_accounts_and_disable() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.components.port = 0;
        c.components.services = vec![xmppd::config::ComponentService {
            domain: "push.localhost".into(),
            secret: "p".into(),
        }];
    })
    .await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let (mut app, _) = component(&s, "push.localhost", "p").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "phone").await;
    alice.iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:push:0' jid='push.localhost' node='n2'/></iq>").await;
    alice.close().await;
    // Alice has no session at all: the message waits offline and the app server is told.
    bob.send("<message to='alice@localhost' type='chat' id='o1'><body>while you were away</body></message>").await;
    let iq = app.recv_until(|e| e.name() == "iq").await;
    assert!(xml(&iq).contains("node='n2'"), "{}", xml(&iq));
    // Disabled: no more notifications.
    let mut alice = Client::online(s.addr(), "alice", "pw", "phone").await;
    let r = alice.iq("<iq type='set' id='{id}'><disable xmlns='urn:xmpp:push:0' jid='push.localhost' node='n2'/></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    alice.close().await;
    bob.send("<message to='alice@localhost' type='chat' id='o2'><body>again</body></message>")
        .await;
    bob.sync().await;
    // The app server's next stanza is our probe, not a notification.
    bob.send("<message to='probe@push.localhost' id='probe'><body>p</body></message>")
        .await;
    let next = app.recv_until(|_| true).await;
    assert_eq!(
        next.attr("id"),
        Some("probe"),
        "unexpected notification: {}",
        xml(&next)
    );
}
