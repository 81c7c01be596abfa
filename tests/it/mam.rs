//! XEP-0313 archives with XEP-0359 stanza ids and XEP-0059 paging.

use crate::common::*;
use minidom::Element;

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";

/// Run a MAM query; returns (result messages' (archive id, inner message), fin).
async fn query(c: &mut Client, form: &str, rsm: &str) -> (Vec<(String, Element)>, Element) {
    let id = c.id();
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='q{id}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>{form}</x>{rsm}</query></iq>"
    ))
    .await;
    let mut results = Vec::new();
    loop {
        let e = c
            .recv_until(|e| {
                (e.name() == "message" && e.has_child("result", MAM))
                    || (e.name() == "iq" && e.attr("id") == Some(id.as_str()))
            })
            .await;
        if e.name() == "iq" {
            return (results, e);
        }
        let r = e.get_child("result", MAM).unwrap();
        assert_eq!(r.attr("queryid"), Some(format!("q{id}").as_str()));
        let fwd = r.get_child("forwarded", "urn:xmpp:forward:0").unwrap();
        assert!(fwd.has_child("delay", "urn:xmpp:delay"));
        let inner = fwd.get_child("message", "jabber:client").unwrap().clone();
        results.push((r.attr("id").unwrap().to_string(), inner));
    }
}

fn bodies(r: &[(String, Element)]) -> Vec<String> {
    r.iter()
        .map(|(_, m)| {
            m.get_child("body", "jabber:client")
                .map(|b| b.text())
                .unwrap_or_default()
        })
        .collect()
}

fn fin_info(fin: &Element) -> (bool, i64) {
    let f = fin
        .get_child("fin", MAM)
        .unwrap_or_else(|| panic!("no fin: {}", xml(fin)));
    let count = f
        .get_child("set", RSM)
        .unwrap()
        .get_child("count", RSM)
        .unwrap()
        .text()
        .parse()
        .unwrap();
    (f.attr("complete") == Some("true"), count)
}

async fn archive_and_page(backend: Backend) {
    let s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    for i in 0..5 {
        alice.send(&format!("<message to='bob@localhost' type='chat'><body>a{i}</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='bob@localhost'/></message>")).await;
    }
    let mut bob_ids = Vec::new();
    for i in 0..5 {
        let m = bob.recv_until(|e| e.name() == "message").await;
        assert_eq!(
            m.get_child("body", "jabber:client").unwrap().text(),
            format!("a{i}")
        );
        let sids: Vec<&Element> = m
            .children()
            .filter(|c| c.is("stanza-id", "urn:xmpp:sid:0"))
            .collect();
        assert_eq!(sids.len(), 1, "forged stanza-id removed: {}", xml(&m));
        assert_eq!(sids[0].attr("by"), Some("bob@localhost"));
        bob_ids.push(sids[0].attr("id").unwrap().to_string());
    }
    for i in 0..2 {
        bob.send(&format!(
            "<message to='alice@localhost' type='chat'><body>b{i}</body></message>"
        ))
        .await;
    }
    alice
        .recv_until(|e| {
            e.name() == "message"
                && e.get_child("body", "jabber:client").map(|b| b.text()) == Some("b1".into())
        })
        .await;
    // Headlines and bodiless chat states are not archived.
    alice
        .send("<message to='bob@localhost' type='headline'><body>h</body></message>")
        .await;
    alice.send("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    alice.sync().await;

    // Alice's archive: both directions, in order.
    let (all, fin) = query(&mut alice, "", "").await;
    assert_eq!(bodies(&all), vec!["a0", "a1", "a2", "a3", "a4", "b0", "b1"]);
    assert_eq!(fin_info(&fin), (true, 7));
    // Paging forward.
    let (p1, fin) = query(
        &mut alice,
        "",
        &format!("<set xmlns='{RSM}'><max>3</max></set>"),
    )
    .await;
    assert_eq!(bodies(&p1), vec!["a0", "a1", "a2"]);
    assert_eq!(fin_info(&fin), (false, 7));
    let last = &p1[2].0;
    let (p2, _) = query(
        &mut alice,
        "",
        &format!("<set xmlns='{RSM}'><max>3</max><after>{last}</after></set>"),
    )
    .await;
    assert_eq!(bodies(&p2), vec!["a3", "a4", "b0"]);
    // The last page (RSM empty <before/>), and before an id.
    let (lp, fin) = query(
        &mut alice,
        "",
        &format!("<set xmlns='{RSM}'><max>2</max><before/></set>"),
    )
    .await;
    assert_eq!(bodies(&lp), vec!["b0", "b1"]);
    assert!(!fin_info(&fin).0);
    let (bp, _) = query(
        &mut alice,
        "",
        &format!(
            "<set xmlns='{RSM}'><max>2</max><before>{}</before></set>",
            lp[0].0
        ),
    )
    .await;
    assert_eq!(bodies(&bp), vec!["a3", "a4"]);
    // Filters: with, ids, after-id.
    let (w, _) = query(
        &mut alice,
        "<field var='with'><value>bob@localhost</value></field>",
        "",
    )
    .await;
    assert_eq!(w.len(), 7);
    let (w, _) = query(
        &mut alice,
        "<field var='with'><value>carol@localhost</value></field>",
        "",
    )
    .await;
    assert!(w.is_empty());
    let (ids, _) = query(
        &mut alice,
        &format!(
            "<field var='ids'><value>{}</value><value>{}</value></field>",
            all[1].0, all[5].0
        ),
        "",
    )
    .await;
    assert_eq!(bodies(&ids), vec!["a1", "b0"]);
    let (after, _) = query(
        &mut alice,
        &format!("<field var='after-id'><value>{}</value></field>", all[4].0),
        "",
    )
    .await;
    assert_eq!(bodies(&after), vec!["b0", "b1"]);
    let (future, _) = query(
        &mut alice,
        "<field var='start'><value>2999-01-01T00:00:00Z</value></field>",
        "",
    )
    .await;
    assert!(future.is_empty());
    let (_, fin) = query(
        &mut alice,
        "",
        &format!("<set xmlns='{RSM}'><after>nonexistent</after></set>"),
    )
    .await;
    assert_eq!(error_condition(&fin).as_deref(), Some("item-not-found"));

    // Bob's archive uses the ids he was given.
    let (b, _) = query(&mut bob, "", "").await;
    assert_eq!(
        b.iter()
            .take(5)
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        bob_ids
    );
    // Nobody reads another's archive.
    let r = bob
        .iq(&format!(
            "<iq type='set' id='{{id}}' to='alice@localhost'><query xmlns='{MAM}'/></iq>"
        ))
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
}

on_both_backends!(archive_and_page => archive_both_sides_and_page_sqlite, archive_both_sides_and_page_postgres);

#[tokio::test]
async fn multi_device_carbons_and_catch_up_from_last_id() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut desk = Client::online(s.addr(), "alice", "pw", "desk").await;
    let mut phone = Client::online(s.addr(), "alice", "pw", "phone").await;
    for c in [&mut desk, &mut phone] {
        c.iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await;
    }
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    // To the bare JID: both devices have it (equal priority), no duplicate carbons.
    bob.send("<message to='alice@localhost' type='chat' id='m1'><body>one</body></message>")
        .await;
    let d = desk.recv_until(|e| e.name() == "message").await;
    let p = phone.recv_until(|e| e.name() == "message").await;
    assert_eq!(d.attr("id"), Some("m1"));
    assert_eq!(p.attr("id"), Some("m1"));
    let seen = d
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .unwrap()
        .attr("id")
        .unwrap()
        .to_string();
    // Desk talks; the phone sees it by carbons.
    desk.send("<message to='bob@localhost' type='chat' id='m2'><body>two</body></message>")
        .await;
    let c = phone.recv_until(|e| e.name() == "message").await;
    assert!(c.has_child("sent", "urn:xmpp:carbons:2"), "{}", xml(&c));
    bob.send("<message to='alice@localhost/desk' type='chat' id='m3'><body>three</body></message>")
        .await;
    desk.recv_until(|e| e.attr("id") == Some("m3")).await;
    // A tablet that last saw m1 catches up with exactly what followed.
    let mut tablet = Client::login(s.addr(), "alice", "pw", "tablet").await;
    let (after, fin) = query(
        &mut tablet,
        "",
        &format!("<set xmlns='{RSM}'><after>{seen}</after></set>"),
    )
    .await;
    assert_eq!(bodies(&after), vec!["two", "three"]);
    assert!(fin_info(&fin).0);
}

#[tokio::test]
async fn preferences_and_form() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let r = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}'><query xmlns='{MAM}'/></iq>"
        ))
        .await;
    assert!(
        r.get_child("query", MAM)
            .unwrap()
            .has_child("x", "jabber:x:data")
    );
    let r = alice.iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(
        xml(&r).contains(MAM),
        "MAM advertised on the account: {}",
        xml(&r)
    );
    let r = alice
        .iq(&format!("<iq type='set' id='{{id}}'><prefs xmlns='{MAM}' default='never'><always><jid>carol@localhost</jid></always><never/></prefs></iq>"))
        .await;
    assert_eq!(
        r.get_child("prefs", MAM).unwrap().attr("default"),
        Some("never")
    );
    alice
        .send("<message to='bob@localhost' type='chat'><body>unarchived</body></message>")
        .await;
    alice.sync().await;
    let (res, _) = query(&mut alice, "", "").await;
    assert!(res.is_empty(), "default=never keeps nothing of Alice's");
    let r = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}'><prefs xmlns='{MAM}'/></iq>"
        ))
        .await;
    let p = r.get_child("prefs", MAM).unwrap();
    assert_eq!(
        p.get_child("always", MAM)
            .unwrap()
            .children()
            .next()
            .unwrap()
            .text(),
        "carol@localhost"
    );
    // Bob's own archive still has it (his preference is the default).
    let mut bob = s.login("bob", "pw", "r").await;
    let (res, _) = query(&mut bob, "", "").await;
    assert_eq!(bodies(&res), vec!["unarchived"]);
}
