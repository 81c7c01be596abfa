//! XEP-0198 stream management: acks, resumption, and nothing lost on timeout.

use crate::common::*;

const SM: &str = "urn:xmpp:sm:3";

async fn enable(c: &mut Client) -> String {
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let e = c.recv_until(|e| e.ns() == SM).await;
    assert_eq!(e.name(), "enabled", "{}", xml(&e));
    assert_eq!(e.attr("resume"), Some("true"));
    e.attr("id").unwrap().to_string()
}

async fn ack_h(c: &mut Client) -> u32 {
    c.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = c.recv_until(|e| e.is("a", SM)).await;
    a.attr("h").unwrap().parse().unwrap()
}

fn is_msg(e: &minidom::Element) -> bool {
    e.name() == "message"
}

#[tokio::test]
async fn counts_handled_stanzas_and_requests_acks() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    c.open().await;
    c.scram("SCRAM-SHA-256", "alice", "pw").await;
    assert!(
        c.reopen().await.has_child("sm", SM),
        "stream management is advertised"
    );
    c.iq("<iq type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>").await;
    enable(&mut c).await;
    assert_eq!(ack_h(&mut c).await, 0);
    c.send("<presence/>").await;
    for i in 0..3 {
        c.send(&format!(
            "<message to='alice@localhost/r' id='m{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    assert_eq!(ack_h(&mut c).await, 4);
    // The server asks for acks once enough is unacknowledged; answering clears it.
    for i in 3..8 {
        c.send(&format!(
            "<message to='alice@localhost/r' id='m{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    c.recv_until(|e| e.is("r", SM)).await;
    c.send(&format!("<a xmlns='{SM}' h='3'/>")).await;
    c.sync().await;
    // Acknowledging more than was sent is a stream error.
    c.send(&format!("<a xmlns='{SM}' h='1000'/>")).await;
    assert_eq!(c.stream_error().await, "undefined-condition");
}

#[tokio::test]
async fn resumption_redelivers_exactly_the_unacknowledged() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "phone").await;
    let id = enable(&mut alice).await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    for i in 0..3 {
        bob.send(&format!(
            "<message to='alice@localhost/phone' type='chat' id='b{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    for i in 0..3 {
        assert_eq!(
            alice.recv_until(is_msg).await.attr("id"),
            Some(format!("b{i}").as_str())
        );
    }
    // Alice handled the first two, then her network dies.
    alice.drop_connection();
    for i in 3..5 {
        bob.send(&format!(
            "<message to='alice@localhost/phone' type='chat' id='b{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    bob.sync().await;
    // While hibernating she stays online for others: a message to her full JID is not bounced.
    let mut alice = Client::connect(s.addr()).await;
    alice.starttls().await;
    alice.open().await;
    assert_eq!(
        alice.scram("SCRAM-SHA-256", "alice", "pw").await.name(),
        "success"
    );
    alice.reopen().await;
    alice
        .send(&format!("<resume xmlns='{SM}' previd='{id}' h='2'/>"))
        .await;
    let r = alice.recv_until(|e| e.ns() == SM && e.name() != "r").await;
    assert_eq!(r.name(), "resumed", "{}", xml(&r));
    for i in 2..5 {
        let m = alice.recv_until(is_msg).await;
        assert_eq!(
            m.attr("id"),
            Some(format!("b{i}").as_str()),
            "exactly the unacked, in order"
        );
    }
    alice.sync().await;
    // The resumed session is the same session: it still routes.
    bob.send("<message to='alice@localhost/phone' type='chat' id='b5'><body>5</body></message>")
        .await;
    assert_eq!(alice.recv_until(is_msg).await.attr("id"), Some("b5"));
    // Nothing for Bob bounced.
    bob.send("<message to='bob@localhost/r' id='own'/>").await;
    assert_eq!(bob.recv_until(is_msg).await.attr("id"), Some("own"));
}

#[tokio::test]
async fn unknown_resumption_fails_and_bind_still_works() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    c.open().await;
    c.scram("SCRAM-SHA-256", "alice", "pw").await;
    c.reopen().await;
    c.send(&format!("<resume xmlns='{SM}' previd='nope' h='0'/>"))
        .await;
    let f = c.recv().await;
    assert_eq!(f.name(), "failed");
    assert!(f.has_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    let r = c
        .iq("<iq type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test]
async fn unacked_messages_go_offline_when_resumption_times_out() {
    let s = TestServer::start_with(Backend::Sqlite, |c| c.c2s.resume_timeout = 1).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "phone").await;
    enable(&mut alice).await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    for i in 0..3 {
        bob.send(&format!(
            "<message to='alice@localhost' type='chat' id='b{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    alice.recv_until(|e| e.attr("id") == Some("b2")).await;
    alice.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    alice.sync().await;
    alice.drop_connection();
    bob.send("<message to='alice@localhost' type='chat' id='b3'><body>3</body></message>")
        .await;
    bob.sync().await;
    // Wait (bounded) until the hibernated session gives up.
    let jid: jid::FullJid = "alice@localhost/phone".parse().unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if s.running().server.registry.session(&jid).is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "session did not time out");
    let mut alice = Client::login(s.addr(), "alice", "pw", "laptop").await;
    alice.send("<presence/>").await;
    // b0 was acknowledged (h=1); b1, b2 were read but never acknowledged; b3 arrived while hibernating.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let m = alice.recv_until(is_msg).await;
        assert!(m.has_child("delay", "urn:xmpp:delay"), "{}", xml(&m));
        ids.push(m.attr("id").unwrap().to_string());
    }
    assert_eq!(ids, vec!["b1", "b2", "b3"], "unacked ones, in order, once");
}

#[tokio::test]
async fn a_stuck_clients_queue_goes_offline() {
    let s = TestServer::start_with(Backend::Sqlite, |c| c.limits.outbound_queue = 8).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let _bob = Client::online(s.addr(), "bob", "pw", "stuck").await;
    let mut alice = s.login("alice", "pw", "r").await;
    let body = "x".repeat(8000);
    let bob_jid: jid::FullJid = "bob@localhost/stuck".parse().unwrap();
    let mut sent = 0;
    for i in 0..5000 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>{body}</body></message>"
            ))
            .await;
        sent += 1;
        if i % 20 == 0 {
            alice.sync().await;
            if s.running().server.registry.session(&bob_jid).is_none() {
                break;
            }
        }
    }
    alice.sync().await;
    assert!(s.running().server.registry.session(&bob_jid).is_none());
    // What was still queued for the stuck session waits offline, once the
    // session has finished leaving (bounded wait).
    let offline = &s.running().server.storage.offline;
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = offline
            .offline_messages("bob@localhost", 0, i64::MAX)
            .await
            .unwrap();
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !stored.is_empty() && stored.len() <= sent,
        "queued messages were stored offline ({} of {sent})",
        stored.len()
    );
}
