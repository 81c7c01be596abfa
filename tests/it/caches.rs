//! What the server keeps in memory in front of storage (credentials, rosters,
//! the offline hint, last activity written behind) and messages handled in
//! groups: each stays correct when something changes behind it.

use crate::common::*;
use xmppd::storage::{AccountCredentials, Storage};

/// A SCRAM attempt on a fresh connection: `true` on `<success/>`.
async fn password_works(s: &TestServer, user: &str, password: &str) -> bool {
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    c.open().await;
    c.scram("SCRAM-SHA-1", user, password).await.name() == "success"
}

async fn cli_password_change(backend: Backend) {
    let s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "old").await;
    // The running server has alice's credentials cached now.
    assert!(password_works(&s, "alice", "old").await);
    // The admin CLI is another process with its own connection to the database.
    let cli = Storage::open(&s.config.storage_url(), Some(1))
        .await
        .unwrap();
    let creds = AccountCredentials::from_password("new");
    assert!(
        cli.accounts
            .set_credentials("alice@localhost", &creds)
            .await
            .unwrap()
    );
    // The CLI returns once the running server has dropped its caches.
    assert!(cli.external_change().await.unwrap(), "the server confirmed");
    assert!(password_works(&s, "alice", "new").await);
    assert!(!password_works(&s, "alice", "old").await);
}
on_both_backends!(cli_password_change => cli_password_change_reaches_running_server_sqlite, cli_password_change_reaches_running_server_postgres);

async fn offline_after_empty_login(backend: Backend) {
    let s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    // Bob's login finds nothing waiting: the server remembers that.
    let bob = Client::online(s.addr(), "bob", "pw", "r").await;
    bob.close().await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    alice
        .send("<message to='bob@localhost/r' type='chat' id='m1'><body>while you were out</body></message>")
        .await;
    alice.sync().await;
    let mut bob = Client::login(s.addr(), "bob", "pw", "phone").await;
    bob.send("<presence/>").await;
    let m = bob.recv_until(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("m1"));
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "while you were out"
    );
    // Stored for the account, so addressed to it (RFC 6121 §8.5.2), and stamped.
    assert_eq!(m.attr("to"), Some("bob@localhost"));
    assert!(m.has_child("delay", "urn:xmpp:delay"), "{}", xml(&m));
    bob.sync().await;
    bob.close().await;
    // Delivered once: the next login gets nothing more.
    let mut bob = Client::login(s.addr(), "bob", "pw", "tablet").await;
    bob.send("<presence/>").await;
    bob.sync().await;
    assert!(
        !bob.stash_has(|e| e.name() == "message"),
        "redelivered an offline message"
    );
}
on_both_backends!(offline_after_empty_login => offline_message_after_a_login_that_found_none_sqlite, offline_message_after_a_login_that_found_none_postgres);

#[tokio::test]
async fn last_activity_survives_restart() {
    let mut s = TestServer::start().await;
    s.add_user("bob", "pw").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    bob.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    bob.sync().await;
    // Written behind: readable at once, and stored by the time shutdown ends.
    assert_eq!(
        last_status(&s, "bob").await.as_deref(),
        Some("gone fishing")
    );
    drop(bob);
    s.restart().await;
    assert_eq!(
        last_status(&s, "bob").await.as_deref(),
        Some("gone fishing")
    );
}

async fn last_status(s: &TestServer, user: &str) -> Option<String> {
    let last = &s.running().server.storage.last;
    let seen = last.last_activity(&format!("{user}@localhost")).await;
    seen.unwrap().map(|(_, status)| status)
}

async fn messages_in_one_write(backend: Backend) {
    let s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    // 30 messages in one write (one group), one with a malformed address in
    // the middle, and a ping after them.
    let mut batch = String::new();
    for i in 0..30 {
        if i == 12 {
            batch.push_str("<message to='@@bad' type='chat' id='bad'><body>x</body></message>");
        }
        batch.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='g{i}'><body>g{i}</body></message>"
        ));
    }
    alice.send(&batch).await;
    let err = alice
        .recv_until(|e| e.name() == "message" && e.attr("id") == Some("bad"))
        .await;
    assert_eq!(error_condition(&err).as_deref(), Some("jid-malformed"));
    for i in 0..30 {
        let m = bob.recv_until(|e| e.name() == "message").await;
        assert_eq!(m.attr("id"), Some(format!("g{i}").as_str()), "in order");
        assert!(m.has_child("stanza-id", "urn:xmpp:sid:0"), "{}", xml(&m));
    }
    // All archived, in order, for both sides.
    let r = alice
        .iq("<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='q'><set xmlns='http://jabber.org/protocol/rsm'><max>100</max></set></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let archived: Vec<String> = alice
        .stash_all(|e| e.name() == "message" && e.has_child("result", "urn:xmpp:mam:2"))
        .iter()
        .map(|m| {
            m.get_child("result", "urn:xmpp:mam:2")
                .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
                .and_then(|f| f.get_child("message", "jabber:client"))
                .and_then(|m| m.attr("id"))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("g{i}")).collect();
    assert_eq!(archived, expected);

    // A forged sender ends the stream, after the messages before it went out.
    alice
        .send("<message to='bob@localhost' type='chat' id='h0'><body>h0</body></message>\
               <message to='bob@localhost' type='chat' id='h1'><body>h1</body></message>\
               <message from='bob@localhost' to='bob@localhost' type='chat' id='h2'><body>h2</body></message>")
        .await;
    assert_eq!(alice.stream_error().await, "invalid-from");
    for id in ["h0", "h1"] {
        let m = bob.recv_until(|e| e.name() == "message").await;
        assert_eq!(m.attr("id"), Some(id));
    }
    bob.sync().await;
    assert!(!bob.stash_has(|e| e.attr("id") == Some("h2")));
}
on_both_backends!(messages_in_one_write => messages_sent_together_keep_order_and_are_all_archived_sqlite, messages_sent_together_keep_order_and_are_all_archived_postgres);
