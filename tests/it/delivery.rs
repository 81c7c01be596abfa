//! Issue 4 behaviour so far: offline storage (XEP-0160 + XEP-0203 delay),
//! last activity (XEP-0012) and message carbons (XEP-0280).

use crate::common::*;

fn body(e: &minidom::Element) -> String {
    e.get_child("body", "jabber:client")
        .map(|b| b.text())
        .unwrap_or_default()
}

async fn offline_in_order(backend: Backend) {
    let mut s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    for i in 0..5 {
        alice.send(&format!("<message to='bob@localhost' type='chat' id='c{i}'><body>msg {i}</body><request xmlns='urn:xmpp:receipts'/></message>")).await;
    }
    alice
        .send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        .await;
    alice.send("<message to='bob@localhost' id='rcpt'><received xmlns='urn:xmpp:receipts' id='x1'/></message>").await;
    alice.sync().await;
    // Nothing bounced back to Alice: the messages were accepted for storage.
    alice
        .send("<message to='nobody@localhost' id='probe'><body>?</body></message>")
        .await;
    let e = alice.recv_until(|e| e.name() == "message").await;
    assert_eq!(
        e.attr("id"),
        Some("probe"),
        "an offline message was bounced: {}",
        xml(&e)
    );

    // Survives a restart.
    s.restart().await;
    let mut bob = Client::login(s.addr(), "bob", "pw", "phone").await;
    bob.send("<presence/>").await;
    for i in 0..5 {
        let m = bob.recv_until(|e| e.name() == "message").await;
        assert_eq!(m.attr("id"), Some(format!("c{i}").as_str()), "in order");
        assert_eq!(body(&m), format!("msg {i}"));
        assert_eq!(m.attr("from"), Some("alice@localhost/r"));
        let d = m
            .get_child("delay", "urn:xmpp:delay")
            .expect("XEP-0203 delay stamp");
        assert!(d.attr("stamp").unwrap().ends_with('Z'));
        assert!(m.has_child("request", "urn:xmpp:receipts"));
    }
    let m = bob.recv_until(|e| e.name() == "message").await;
    assert_eq!(
        m.attr("id"),
        Some("rcpt"),
        "receipts are stored, headlines are not: {}",
        xml(&m)
    );
    bob.close().await;
    // Delivered once only.
    let mut bob = Client::login(s.addr(), "bob", "pw", "phone").await;
    bob.send("<presence/>").await;
    bob.send("<message to='bob@localhost/phone' id='self'><body>me</body></message>")
        .await;
    let m = bob.recv_until(|e| e.name() == "message").await;
    assert_eq!(
        m.attr("id"),
        Some("self"),
        "offline messages delivered twice"
    );
}

on_both_backends!(offline_in_order => offline_messages_wait_and_arrive_in_order_sqlite, offline_messages_wait_and_arrive_in_order_postgres);

#[tokio::test]
async fn offline_cap_bounces_and_negative_priority_waits() {
    let s = TestServer::start_with(Backend::Sqlite, |c| c.modules.offline.max_per_user = 2).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    let e = alice.recv_until(|e| e.name() == "message").await;
    assert_eq!(e.attr("id"), Some("m2"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));

    // A resource with negative priority does not take offline messages.
    let mut bob = Client::login(s.addr(), "bob", "pw", "bg").await;
    bob.send("<presence><priority>-1</priority></presence>")
        .await;
    bob.send("<message to='bob@localhost/bg' id='self'/>").await;
    let m = bob.recv_until(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("self"));
    bob.send("<presence><priority>0</priority></presence>")
        .await;
    bob.sync().await;
    let mut bob2 = Client::login(s.addr(), "bob", "pw", "fg").await;
    bob2.send("<presence/>").await;
    assert_eq!(
        bob2.recv_until(|e| e.name() == "message").await.attr("id"),
        Some("m0")
    );
    assert_eq!(
        bob2.recv_until(|e| e.name() == "message").await.attr("id"),
        Some("m1")
    );
}

#[tokio::test]
async fn last_activity_for_contacts_only() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    // Alice subscribes to Bob; Bob approves.
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    bob.recv_until(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    alice
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("subscribed"))
        .await;

    let q = "<iq type='get' id='{id}' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>";
    let r = alice.iq(q).await;
    assert_eq!(
        r.get_child("query", "jabber:iq:last")
            .unwrap()
            .attr("seconds"),
        Some("0"),
        "online → 0"
    );
    bob.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    bob.sync().await;
    let r = alice.iq(q).await;
    let last = r.get_child("query", "jabber:iq:last").unwrap();
    assert!(last.attr("seconds").unwrap().parse::<u64>().is_ok());
    assert_eq!(last.text(), "gone fishing");
    // A stranger is refused.
    let mut carol = s.login("carol", "pw", "r").await;
    let r = carol.iq(q).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    // The server's uptime.
    let r = carol
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert!(
        r.get_child("query", "jabber:iq:last")
            .unwrap()
            .attr("seconds")
            .is_some()
    );
}

#[tokio::test]
async fn carbons_copy_both_directions() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut desk = Client::online(s.addr(), "alice", "pw", "desk").await;
    let mut phone = Client::online(s.addr(), "alice", "pw", "phone").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    for c in [&mut desk, &mut phone] {
        let r = c
            .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await;
        assert_eq!(r.attr("type"), Some("result"));
    }
    // Received on desk → copy on phone.
    bob.send(
        "<message to='alice@localhost/desk' type='chat' id='b1'><body>hi desk</body></message>",
    )
    .await;
    assert_eq!(
        body(&desk.recv_until(|e| e.name() == "message").await),
        "hi desk"
    );
    let c = phone.recv_until(|e| e.name() == "message").await;
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    let inner = c
        .get_child("received", "urn:xmpp:carbons:2")
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .expect("received carbon");
    assert_eq!(body(inner), "hi desk");
    assert_eq!(inner.attr("from"), Some("bob@localhost/r"));
    // Sent from desk → copy on phone.
    desk.send("<message to='bob@localhost' type='chat' id='a1'><body>hello bob</body></message>")
        .await;
    bob.recv_until(|e| e.name() == "message").await;
    let c = phone.recv_until(|e| e.name() == "message").await;
    let inner = c
        .get_child("sent", "urn:xmpp:carbons:2")
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .expect("sent carbon");
    assert_eq!(inner.attr("from"), Some("alice@localhost/desk"));
    assert_eq!(body(inner), "hello bob");
    // <private/> is not copied; disabling stops copies.
    desk.send("<message to='bob@localhost' type='chat' id='a2'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>").await;
    bob.recv_until(|e| e.attr("id") == Some("a2")).await;
    let r = phone
        .iq("<iq type='set' id='{id}'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    desk.send(
        "<message to='bob@localhost' type='chat' id='a3'><body>after disable</body></message>",
    )
    .await;
    bob.recv_until(|e| e.attr("id") == Some("a3")).await;
    phone
        .send("<message to='alice@localhost/phone' id='marker'><body>mark</body></message>")
        .await;
    let next = phone.recv_until(|e| e.name() == "message").await;
    assert_eq!(
        next.attr("id"),
        Some("marker"),
        "unexpected copy: {}",
        xml(&next)
    );
}

#[tokio::test]
async fn inactive_clients_get_noise_later_and_important_at_once() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::login(s.addr(), "alice", "pw", "phone").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    // Mutual subscription so Bob's presence reaches Alice.
    alice.send("<presence/>").await;
    async fn subscribe(a: &mut Client, b: &mut Client, an: &str, bn: &str) {
        a.send(&format!("<presence to='{bn}@localhost' type='subscribe'/>"))
            .await;
        b.recv_until(|e| {
            e.attr("type") == Some("subscribe")
                && e.attr("from") == Some(format!("{an}@localhost").as_str())
        })
        .await;
        b.send(&format!(
            "<presence to='{an}@localhost' type='subscribed'/>"
        ))
        .await;
        a.recv_until(|e| e.attr("type") == Some("subscribed")).await;
    }
    subscribe(&mut alice, &mut bob, "alice", "bob").await;
    subscribe(&mut bob, &mut alice, "bob", "alice").await;
    alice.sync().await;
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    alice.sync().await;
    alice.clear();
    // Each processed separately: if they were not held, both would be written.
    bob.send("<presence><show>away</show></presence>").await;
    bob.sync().await;
    bob.send("<presence><show>xa</show></presence>").await;
    bob.sync().await;
    bob.send("<message to='alice@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    bob.sync().await;
    // A real message flushes: the latest presence only, the chat state, then the message.
    bob.send("<message to='alice@localhost' type='chat' id='hi'><body>hi</body></message>")
        .await;
    let p = alice.recv_until(|_| true).await;
    assert_eq!(p.name(), "presence", "{}", xml(&p));
    assert_eq!(
        p.get_child("show", "jabber:client").unwrap().text(),
        "xa",
        "older presence dropped"
    );
    let cs = alice.recv_until(|_| true).await;
    assert!(cs.has_child("composing", "http://jabber.org/protocol/chatstates"));
    assert_eq!(alice.recv_until(|_| true).await.attr("id"), Some("hi"));
    // Active again: presence flows immediately.
    alice.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    bob.send("<presence/>").await;
    let p = alice.recv_until(|e| e.name() == "presence").await;
    assert!(p.get_child("show", "jabber:client").is_none());
}

#[tokio::test]
async fn receipts_and_markers_in_every_state() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "phone").await;

    // Recipient offline: the request waits with the message.
    bob.send("<message to='alice@localhost' type='chat' id='r1'><body>ping</body><request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>").await;
    bob.sync().await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "desk").await;
    let m = alice.recv_until(|e| e.attr("id") == Some("r1")).await;
    assert!(m.has_child("request", "urn:xmpp:receipts"));
    // A second device of Alice with carbons sees her receipt and marker too.
    let mut alice2 = Client::online(s.addr(), "alice", "pw", "tab").await;
    alice2
        .iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    // Both online: the receipt goes straight back (second tick).
    alice.send("<message to='bob@localhost/phone' id='rc1'><received xmlns='urn:xmpp:receipts' id='r1'/></message>").await;
    let r = bob.recv_until(|e| e.attr("id") == Some("rc1")).await;
    assert_eq!(
        r.get_child("received", "urn:xmpp:receipts")
            .unwrap()
            .attr("id"),
        Some("r1")
    );
    let c = alice2
        .recv_until(|e| e.has_child("sent", "urn:xmpp:carbons:2"))
        .await;
    assert!(
        xml(&c).contains("urn:xmpp:receipts"),
        "receipt copied to the other device"
    );

    // Sender offline when the read marker comes back: stored for the sender.
    bob.close().await;
    alice.send("<message to='bob@localhost' type='chat' id='mk1'><displayed xmlns='urn:xmpp:chat-markers:0' id='r1'/></message>").await;
    alice.sync().await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "phone").await;
    let mk = bob.recv_until(|e| e.attr("id") == Some("mk1")).await;
    assert_eq!(
        mk.get_child("displayed", "urn:xmpp:chat-markers:0")
            .unwrap()
            .attr("id"),
        Some("r1")
    );
    assert!(mk.has_child("delay", "urn:xmpp:delay"));

    // The archive keeps message, receipt and marker, so a new device rebuilds the ticks.
    let id = bob.id();
    bob.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2'/></iq>"
    ))
    .await;
    let mut kinds = Vec::new();
    loop {
        let e = bob
            .recv_until(|e| {
                e.has_child("result", "urn:xmpp:mam:2") || e.attr("id") == Some(id.as_str())
            })
            .await;
        if e.name() == "iq" {
            break;
        }
        kinds.push(
            e.get_child("result", "urn:xmpp:mam:2")
                .unwrap()
                .get_child("forwarded", "urn:xmpp:forward:0")
                .unwrap()
                .get_child("message", "jabber:client")
                .unwrap()
                .attr("id")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(kinds, vec!["r1", "rc1", "mk1"]);
}

/// An offline backlog larger than the session's outbound queue is delivered
/// whole and in order, without the session being cut off as a slow reader.
async fn offline_backlog_beyond_the_queue(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.limits.outbound_queue = 16;
        c.modules.offline.max_per_user = 10_000;
    })
    .await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    const N: usize = 600; // beyond the first page (xep/offline.rs FIRST_PAGE)
    for i in 0..N {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='b{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    alice.sync().await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    for i in 0..N {
        let m = bob.recv_until(|e| e.name() == "message").await;
        assert_eq!(body(&m), i.to_string(), "message {i} in order");
    }
    // Still connected, and nothing is left for the next login.
    bob.sync().await;
    bob.close().await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r2").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='after'><body>after</body></message>")
        .await;
    let m = bob.recv_until(|e| e.name() == "message").await;
    assert_eq!(body(&m), "after", "no offline message delivered twice");
}
on_both_backends!(offline_backlog_beyond_the_queue => offline_backlog_beyond_the_queue_sqlite, offline_backlog_beyond_the_queue_postgres);
