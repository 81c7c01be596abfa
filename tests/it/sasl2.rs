//! XEP-0388 SASL2 with XEP-0386 Bind2, XEP-0484 FAST tokens and XEP-0198
//! resumption inlined; the classic path is covered everywhere else.

use crate::common::*;
use minidom::Element;

const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";
const FAST: &str = "urn:xmpp:fast:0";
const SM: &str = "urn:xmpp:sm:3";
const AGENT: &str =
    "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>it</software></user-agent>";
const OTHER_AGENT: &str = "<user-agent id='9a1b8f52-0000-4000-8000-000000000000'/>";

async fn opened(s: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    let features = c.open().await;
    (c, features)
}

fn token_of(success: &Element) -> String {
    success
        .get_child("token", FAST)
        .unwrap_or_else(|| panic!("a FAST token in {}", xml(success)))
        .attr("token")
        .unwrap()
        .to_string()
}

fn condition(failure: &Element) -> String {
    assert_eq!(failure.name(), "failure", "{}", xml(failure));
    assert_eq!(failure.ns(), SASL2);
    failure.children().next().unwrap().name().to_string()
}

async fn scenario(backend: Backend) {
    let s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;

    // The feature lists mechanisms and what can be inlined.
    let (mut c, features) = opened(&s).await;
    let auth = features
        .get_child("authentication", SASL2)
        .expect("SASL2 offered");
    let mechs: Vec<String> = auth.children().map(|m| m.text()).collect();
    assert!(mechs.contains(&"SCRAM-SHA-1".to_string()), "{mechs:?}");
    let inline = auth.get_child("inline", SASL2).expect("inline features");
    assert!(inline.has_child("bind", BIND2));
    assert!(inline.has_child("sm", SM));
    let fast = inline.get_child("fast", FAST).expect("FAST offered");
    assert!(fast.children().any(|m| m.text() == "HT-SHA-256-NONE"));

    // Password login with Bind2 (carbons + resumable SM) and a token request.
    let ok = c
        .sasl2_scram(
            "SCRAM-SHA-1",
            "alice",
            "pw",
            &format!(
                "{AGENT}<bind xmlns='{BIND2}'><tag>it</tag><enable xmlns='urn:xmpp:carbons:2'/>\
                 <enable xmlns='{SM}' resume='true'/></bind>\
                 <request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>"
            ),
        )
        .await;
    assert_eq!(ok.name(), "success", "{}", xml(&ok));
    let full = c.jid.clone();
    assert!(full.starts_with("alice@localhost/it."), "{full}");
    let enabled = ok
        .get_child("bound", BIND2)
        .and_then(|b| b.get_child("enabled", SM))
        .expect("SM enabled inline");
    let previd = enabled.attr("id").expect("resumable").to_string();
    let token1 = token_of(&ok);

    // No stream restart: the session works at once, and carbons are on.
    c.send("<presence/>").await;
    c.recv_until(|e| e.name() == "presence" && e.attr("from") == Some(full.as_str()))
        .await;
    let mut other = Client::online(s.addr(), "alice", "pw", "other").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "b").await;
    bob.send(
        "<message to='alice@localhost/other' type='chat' id='m1'><body>to other</body></message>",
    )
    .await;
    other.recv_until(|e| e.name() == "message").await;
    let copy = c.recv_until(|e| e.name() == "message").await;
    assert!(
        copy.has_child("received", "urn:xmpp:carbons:2"),
        "carbons enabled by Bind2: {}",
        xml(&copy)
    );

    // A message the client never acknowledges, then the connection drops.
    bob.send(&format!(
        "<message to='{full}' type='chat' id='m2'><body>while asleep</body></message>"
    ))
    .await;
    c.recv_until(|e| e.attr("id") == Some("m2")).await;
    c.drop_connection();

    // FAST login that resumes inline: same full JID, the message again.
    let (mut c, _) = opened(&s).await;
    let ok = c
        .sasl2_fast(
            "alice",
            &token1,
            &format!("{AGENT}<resume xmlns='{SM}' previd='{previd}' h='1'/><fast xmlns='{FAST}'/>"),
        )
        .await;
    assert_eq!(ok.name(), "success", "{}", xml(&ok));
    assert!(ok.has_child("resumed", SM), "{}", xml(&ok));
    assert_eq!(c.jid, full, "resumed the same session");
    let again = c.recv_until(|e| e.attr("id") == Some("m2")).await;
    assert_eq!(again.name(), "message", "unacknowledged message resent");
    c.close().await;

    // Token rotation: logging in with token 1 and asking for a new one
    // keeps token 1 valid until token 2 is used, then only token 2 works.
    let (mut c, _) = opened(&s).await;
    let ok = c
        .sasl2_fast(
            "alice",
            &token1,
            &format!(
                "{AGENT}<bind xmlns='{BIND2}'><tag>it</tag></bind><fast xmlns='{FAST}'/>\
                 <request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>"
            ),
        )
        .await;
    assert_eq!(ok.name(), "success", "{}", xml(&ok));
    assert_eq!(c.jid, full, "Bind2 resource is stable per user agent");
    let token2 = token_of(&ok);
    assert_ne!(token1, token2);
    c.close().await;
    let (mut c, _) = opened(&s).await;
    let ok = c
        .sasl2_fast("alice", &token2, &format!("{AGENT}<fast xmlns='{FAST}'/>"))
        .await;
    assert_eq!(ok.name(), "success", "{}", xml(&ok));
    // Without Bind2 the client binds classically on the same stream.
    assert_eq!(c.jid, "alice@localhost", "bare JID before binding");
    let b = c
        .iq("<iq type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>classic</resource></bind></iq>")
        .await;
    assert_eq!(b.attr("type"), Some("result"), "{}", xml(&b));
    c.close().await;

    // Refusals: the rotated-away token, another installation, a wrong token.
    for (token, agent) in [
        (token1.as_str(), AGENT),
        (token2.as_str(), OTHER_AGENT),
        ("not-a-token", AGENT),
    ] {
        let (mut c, _) = opened(&s).await;
        let f = c.sasl2_fast("alice", token, agent).await;
        assert_eq!(condition(&f), "not-authorized", "{token} {agent}");
        // The stream stays usable: a password login follows.
        let ok = c.sasl2_scram("SCRAM-SHA-256", "alice", "pw", AGENT).await;
        assert_eq!(ok.name(), "success", "{}", xml(&ok));
        c.close().await;
    }

    // Wrong password: SASL2 failure; a password change revokes tokens.
    let (mut c, _) = opened(&s).await;
    let f = c.sasl2_scram("SCRAM-SHA-1", "alice", "wrong", AGENT).await;
    assert_eq!(condition(&f), "not-authorized");
    c.close().await;
    s.running()
        .server
        .storage
        .accounts
        .set_credentials(
            "alice@localhost",
            &xmppd::storage::AccountCredentials::from_password("pw2"),
        )
        .await
        .unwrap();
    let (mut c, _) = opened(&s).await;
    let f = c
        .sasl2_fast("alice", &token2, &format!("{AGENT}<fast xmlns='{FAST}'/>"))
        .await;
    assert_eq!(condition(&f), "not-authorized", "token revoked");
    c.close().await;

    // Logging out of a client with invalidate ends its token.
    let (mut c, _) = opened(&s).await;
    let ok = c
        .sasl2_scram(
            "SCRAM-SHA-1",
            "alice",
            "pw2",
            &format!("{AGENT}<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>"),
        )
        .await;
    let token3 = token_of(&ok);
    c.close().await;
    let (mut c, _) = opened(&s).await;
    let ok = c
        .sasl2_fast(
            "alice",
            &token3,
            &format!("{AGENT}<fast xmlns='{FAST}' invalidate='true'/>"),
        )
        .await;
    assert_eq!(ok.name(), "success");
    c.close().await;
    let (mut c, _) = opened(&s).await;
    let f = c.sasl2_fast("alice", &token3, AGENT).await;
    assert_eq!(condition(&f), "not-authorized", "invalidated token");
}

on_both_backends!(scenario => sasl2_bind2_fast_resume_sqlite, sasl2_bind2_fast_resume_postgres);

#[tokio::test]
async fn sasl2_is_only_offered_over_tls() {
    let s = TestServer::start().await;
    let mut c = Client::connect(s.addr()).await;
    let features = c.open().await;
    assert!(!features.has_child("authentication", SASL2));
}
