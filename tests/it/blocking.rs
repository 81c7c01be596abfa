//! XEP-0191 blocking: no messages, presence, last activity or vCard across a block.

use crate::common::*;

const B: &str = "urn:xmpp:blocking";

async fn mutual(s: &TestServer) -> (Client, Client) {
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    for (a, b) in [("alice", "bob"), ("bob", "alice")] {
        let (x, y) = if a == "alice" {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        x.send(&format!("<presence to='{b}@localhost' type='subscribe'/>"))
            .await;
        y.recv_until(|e| e.attr("type") == Some("subscribe")).await;
        y.send(&format!("<presence to='{a}@localhost' type='subscribed'/>"))
            .await;
        x.recv_until(|e| e.attr("type") == Some("subscribed")).await;
    }
    alice.sync().await;
    bob.sync().await;
    (alice, bob)
}

#[tokio::test]
async fn block_and_unblock() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = mutual(&s).await;
    s.add_user("carol", "pw").await;
    let mut carol = s.login("carol", "pw", "r").await;
    let mut alice2 = Client::online(s.addr(), "alice", "pw", "r2").await;
    bob.sync().await;
    bob.clear();

    let r = alice
        .iq(&format!(
            "<iq type='set' id='{{id}}'><block xmlns='{B}'><item jid='bob@localhost'/></block></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Pushed to Alice's resources; Bob sees her go offline.
    let push = alice2.recv_until(|e| e.has_child("block", B)).await;
    assert!(xml(&push).contains("bob@localhost"));
    let p = bob.recv_until(|e| e.name() == "presence").await;
    assert_eq!(p.attr("type"), Some("unavailable"));
    let r = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}'><blocklist xmlns='{B}'/></iq>"
        ))
        .await;
    assert_eq!(
        r.get_child("blocklist", B)
            .unwrap()
            .children()
            .next()
            .unwrap()
            .attr("jid"),
        Some("bob@localhost")
    );

    // Bob cannot reach her; she cannot reach him by mistake.
    bob.send("<message to='alice@localhost' type='chat' id='b1'><body>hey</body></message>")
        .await;
    let e = bob.recv_until(|e| e.attr("id") == Some("b1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    alice
        .send("<message to='bob@localhost' type='chat' id='a1'><body>oops</body></message>")
        .await;
    let e = alice.recv_until(|e| e.attr("id") == Some("a1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));
    assert!(
        e.get_child("error", "jabber:client")
            .unwrap()
            .has_child("blocked", "urn:xmpp:blocking:errors")
    );
    // Nor see her last activity or vCard.
    for q in [
        "<query xmlns='jabber:iq:last'/>",
        "<vCard xmlns='vcard-temp'/>",
    ] {
        let r = bob
            .iq(&format!(
                "<iq type='get' id='{{id}}' to='alice@localhost'>{q}</iq>"
            ))
            .await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{q}"
        );
    }
    // Her presence changes do not reach him: the next thing he gets is Carol's message.
    bob.sync().await;
    bob.clear();
    alice.send("<presence><show>dnd</show></presence>").await;
    alice.sync().await;
    carol
        .send("<message to='bob@localhost/r' id='c1'><body>hi</body></message>")
        .await;
    let next = bob.recv_until(|e| e.name() != "iq").await;
    assert_eq!(next.attr("id"), Some("c1"), "leaked: {}", xml(&next));

    // Unblock: presence flows again, and so do messages.
    let r = alice.iq(&format!("<iq type='set' id='{{id}}'><unblock xmlns='{B}'><item jid='bob@localhost'/></unblock></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = bob.recv_until(|e| e.name() == "presence").await;
    assert_eq!(p.get_child("show", "jabber:client").unwrap().text(), "dnd");
    bob.send("<message to='alice@localhost' type='chat' id='b2'><body>back</body></message>")
        .await;
    assert_eq!(
        alice
            .recv_until(|e| e.attr("id") == Some("b2"))
            .await
            .attr("type"),
        Some("chat")
    );
}

#[tokio::test]
async fn domain_blocks_and_unblock_all() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = mutual(&s).await;
    let r = alice
        .iq(&format!(
            "<iq type='set' id='{{id}}'><block xmlns='{B}'><item jid='localhost'/></block></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    bob.send("<message to='alice@localhost' type='chat' id='b1'><body>hey</body></message>")
        .await;
    let e = bob.recv_until(|e| e.attr("id") == Some("b1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    let r = alice
        .iq(&format!(
            "<iq type='set' id='{{id}}'><unblock xmlns='{B}'/></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}'><blocklist xmlns='{B}'/></iq>"
        ))
        .await;
    assert_eq!(r.get_child("blocklist", B).unwrap().children().count(), 0);
    bob.send("<message to='alice@localhost' type='chat' id='b2'><body>ok</body></message>")
        .await;
    alice.recv_until(|e| e.attr("id") == Some("b2")).await;
    let r = alice
        .iq(&format!(
            "<iq type='set' id='{{id}}'><block xmlns='{B}'/></iq>"
        ))
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
}
