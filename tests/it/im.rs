//! RFC 6121: roster, subscriptions, presence and message routing.

use crate::common::*;

const R: &str = "jabber:iq:roster";

fn roster_items(r: &minidom::Element) -> Vec<(String, String, Option<String>)> {
    r.get_child("query", R)
        .map(|q| {
            q.children()
                .map(|i| {
                    (
                        i.attr("jid").unwrap_or("").to_string(),
                        i.attr("subscription").unwrap_or("").to_string(),
                        i.attr("ask").map(String::from),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn roster_push(c: &mut Client) -> (String, String, Option<String>) {
    let push = c
        .recv_until(|e| {
            e.name() == "iq" && e.attr("type") == Some("set") && e.has_child("query", R)
        })
        .await;
    // Acknowledge the push as RFC 6121 asks.
    let id = push.attr("id").unwrap().to_string();
    c.send(&format!("<iq type='result' id='{id}'/>")).await;
    roster_items(&push).remove(0)
}

#[tokio::test]
async fn roster_set_get_push_version_and_remove() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut a1 = s.login("alice", "pw", "one").await;
    let mut a2 = s.login("alice", "pw", "two").await;
    let r = a1
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert!(roster_items(&r).is_empty());
    let ver0 = r
        .get_child("query", R)
        .unwrap()
        .attr("ver")
        .unwrap()
        .to_string();
    a2.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;

    let r = a1
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='Bob@localhost' name='Bob'><group>Friends</group></item></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Both interested resources get the push, with the JID normalised.
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            roster_push(c).await,
            ("bob@localhost".into(), "none".into(), None)
        );
    }
    let r = a1
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let q = r.get_child("query", R).unwrap();
    let ver1 = q.attr("ver").unwrap().to_string();
    assert_ne!(ver0, ver1);
    let item = q.children().next().unwrap();
    assert_eq!(item.attr("name"), Some("Bob"));
    assert_eq!(item.get_child("group", R).unwrap().text(), "Friends");

    // XEP-0237: same version → empty result.
    let r = a1
        .iq(&format!(
            "<iq type='get' id='{{id}}'><query xmlns='jabber:iq:roster' ver='{ver1}'/></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert!(r.get_child("query", R).is_none());
    // An old version → full roster.
    let r = a1
        .iq(&format!(
            "<iq type='get' id='{{id}}'><query xmlns='jabber:iq:roster' ver='{ver0}'/></iq>"
        ))
        .await;
    assert_eq!(roster_items(&r).len(), 1);

    // Bad roster sets.
    let r = a1.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='a@localhost'/><item jid='b@localhost'/></query></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = a1.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='c@localhost'><group>g</group><group>g</group></item></query></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = a1.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='zed@localhost' subscription='remove'/></query></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));

    // Remove.
    let r = a1.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(roster_push(&mut a2).await.1, "remove");
}

async fn subscribe_both(alice: &mut Client, bob: &mut Client) {
    // Alice asks Bob.
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    assert_eq!(
        roster_push(alice).await,
        (
            "bob@localhost".into(),
            "none".into(),
            Some("subscribe".into())
        )
    );
    let req = bob
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(
        req.attr("from"),
        Some("alice@localhost"),
        "stamped with the bare JID"
    );
    // Bob approves and asks back.
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    assert_eq!(roster_push(bob).await.1, "from");
    assert_eq!(
        roster_push(alice).await,
        ("bob@localhost".into(), "to".into(), None)
    );
    alice
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("subscribed"))
        .await;
    // Bob's presence reaches Alice once she is subscribed.
    alice
        .recv_until(|e| {
            e.name() == "presence"
                && e.attr("type").is_none()
                && e.attr("from") == Some("bob@localhost/r")
        })
        .await;
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    assert_eq!(
        roster_push(bob).await,
        (
            "alice@localhost".into(),
            "from".into(),
            Some("subscribe".into())
        )
    );
    alice
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    assert_eq!(roster_push(alice).await.1, "both");
    assert_eq!(roster_push(bob).await.1, "both");
}

async fn two_online(s: &TestServer) -> (Client, Client) {
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    alice
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    bob.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    (alice, bob)
}

async fn subscription_handshake_persists(backend: Backend) {
    let mut s = TestServer::start_with(backend, |_| {}).await;
    let (mut alice, mut bob) = two_online(&s).await;
    subscribe_both(&mut alice, &mut bob).await;
    alice.close().await;
    bob.close().await;
    s.restart().await;
    let mut alice = s.login("alice", "pw", "r").await;
    let r = alice
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_eq!(
        roster_items(&r),
        vec![("bob@localhost".to_string(), "both".to_string(), None)]
    );
}

on_both_backends!(subscription_handshake_persists => subscription_handshake_persists_sqlite, subscription_handshake_persists_postgres);

#[tokio::test]
async fn presence_broadcast_probe_and_unavailable() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = two_online(&s).await;
    subscribe_both(&mut alice, &mut bob).await;

    // Status change is broadcast.
    bob.send("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    let p = alice
        .recv_until(|e| e.name() == "presence" && e.has_child("show", "jabber:client"))
        .await;
    assert_eq!(p.attr("from"), Some("bob@localhost/r"));
    assert_eq!(
        p.get_child("status", "jabber:client").unwrap().text(),
        "lunch"
    );

    // A new resource of Alice probes and learns Bob's current presence.
    let mut alice2 = Client::login(s.addr(), "alice", "pw", "second").await;
    alice2.send("<presence/>").await;
    let p = alice2
        .recv_until(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost/r"))
        .await;
    assert_eq!(p.get_child("show", "jabber:client").unwrap().text(), "away");
    // ... and sees its sibling resource.
    alice2
        .recv_until(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/r"))
        .await;

    // Clean close → unavailable.
    bob.close().await;
    let p = alice
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    assert_eq!(p.attr("from"), Some("bob@localhost/r"));

    // Dropped TCP → unavailable too.
    let bob = Client::online(s.addr(), "bob", "pw", "r").await;
    alice
        .recv_until(|e| {
            e.name() == "presence"
                && e.attr("from") == Some("bob@localhost/r")
                && e.attr("type").is_none()
        })
        .await;
    bob.drop_connection();
    let p = alice
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    assert_eq!(p.attr("from"), Some("bob@localhost/r"));
}

#[tokio::test]
async fn no_presence_without_subscription_but_directed_works() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = two_online(&s).await;
    bob.send("<presence><status>not for alice</status></presence>")
        .await;
    // Directed presence from Bob reaches Alice, and its end does too.
    bob.send("<presence to='alice@localhost/r'><status>hi alice</status></presence>")
        .await;
    let p = alice.recv_until(|e| e.name() == "presence").await;
    assert_eq!(
        p.get_child("status", "jabber:client").unwrap().text(),
        "hi alice",
        "undirected presence leaked"
    );
    bob.close().await;
    let p = alice.recv_until(|e| e.name() == "presence").await;
    assert_eq!(p.attr("type"), Some("unavailable"));
}

#[tokio::test]
async fn pending_request_is_redelivered_and_preapproval_works() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    alice
        .send(
            "<presence to='bob@localhost' type='subscribe'><status>it is alice</status></presence>",
        )
        .await;
    alice.sync().await;
    // Bob was offline; the request waits for his initial presence.
    let mut bob = Client::login(s.addr(), "bob", "pw", "r").await;
    bob.send("<presence/>").await;
    let req = bob
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(
        req.get_child("status", "jabber:client").unwrap().text(),
        "it is alice"
    );
    // A pending-in request is not a roster item.
    let r = bob
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert!(roster_items(&r).is_empty());

    // Pre-approval: Bob approves Carol before she asks.
    s.add_user("carol", "pw").await;
    bob.send("<presence to='carol@localhost' type='subscribed'/>")
        .await;
    bob.sync().await;
    let mut carol = Client::online(s.addr(), "carol", "pw", "r").await;
    carol
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    carol
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    carol
        .recv_until(|e| {
            e.name() == "presence"
                && e.attr("type") == Some("subscribed")
                && e.attr("from") == Some("bob@localhost")
        })
        .await;
    let r = carol
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_eq!(
        roster_items(&r),
        vec![("bob@localhost".to_string(), "to".to_string(), None)]
    );

    // Subscribing to a user who does not exist is refused.
    carol
        .send("<presence to='ghost@localhost' type='subscribe'/>")
        .await;
    carol
        .recv_until(|e| {
            e.name() == "presence"
                && e.attr("type") == Some("unsubscribed")
                && e.attr("from") == Some("ghost@localhost")
        })
        .await;
}

#[tokio::test]
async fn unsubscribe_and_cancel_end_presence() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = two_online(&s).await;
    subscribe_both(&mut alice, &mut bob).await;
    // Bob cancels Alice's subscription to him.
    bob.send("<presence to='alice@localhost' type='unsubscribed'/>")
        .await;
    assert_eq!(roster_push(&mut bob).await.1, "to");
    alice
        .recv_until(|e| {
            e.name() == "presence"
                && e.attr("type") == Some("unavailable")
                && e.attr("from") == Some("bob@localhost/r")
        })
        .await;
    assert_eq!(roster_push(&mut alice).await.1, "from");
    // Alice unsubscribes... she has no 'to' left; roster removal cancels the rest.
    let r = alice.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(roster_push(&mut bob).await.1, "none");
}

#[tokio::test]
async fn messages_route_by_jid_and_priority() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob_hi = Client::login(s.addr(), "bob", "pw", "hi").await;
    bob_hi
        .send("<presence><priority>10</priority></presence>")
        .await;
    bob_hi.sync().await;
    let mut bob_lo = Client::login(s.addr(), "bob", "pw", "lo").await;
    bob_lo
        .send("<presence><priority>1</priority></presence>")
        .await;
    bob_lo.sync().await;

    // Bare JID → the highest priority resource, body intact, from stamped.
    alice.send("<message to='bob@localhost' type='chat' id='m1'><body>h\u{e9}llo &amp; &lt;tags&gt; \u{1F600}</body></message>").await;
    let m = bob_hi.recv_until(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "h\u{e9}llo & <tags> \u{1F600}"
    );
    // Full JID → exactly that resource.
    alice
        .send("<message to='bob@localhost/lo' type='chat' id='m2'><body>to lo</body></message>")
        .await;
    let m = bob_lo.recv_until(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("m2"));
    // A reply comes back.
    bob_lo
        .send("<message to='alice@localhost/r' type='chat'><body>back</body></message>")
        .await;
    let m = alice.recv_until(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("bob@localhost/lo"));
    // Unknown full JID resource falls back to the bare JID for chat.
    alice
        .send(
            "<message to='bob@localhost/gone' type='chat' id='m3'><body>fallback</body></message>",
        )
        .await;
    let m = bob_hi.recv_until(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("m3"));
    // bob_lo did not get m1 or m3.
    bob_lo.sync().await;

    // Unknown user → service-unavailable bounce with the original id.
    alice
        .send("<message to='nobody@localhost' type='chat' id='m4'><body>?</body></message>")
        .await;
    let e = alice.recv_until(|e| e.name() == "message").await;
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(e.attr("id"), Some("m4"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    // Remote domain (no federation yet) → remote-server-not-found.
    alice
        .send("<message to='x@elsewhere.example' id='m5'><body>?</body></message>")
        .await;
    let e = alice.recv_until(|e| e.name() == "message").await;
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("remote-server-not-found")
    );
}
