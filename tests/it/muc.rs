//! XEP-0045 Multi-User Chat on conference.localhost.

use crate::common::*;
use minidom::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const USER: &str = "http://jabber.org/protocol/muc#user";
const ROOM: &str = "room@conference.localhost";

fn codes(p: &Element) -> Vec<String> {
    p.get_child("x", USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn item(p: &Element) -> Element {
    p.get_child("x", USER)
        .and_then(|x| x.get_child("item", USER))
        .cloned()
        .unwrap_or_else(|| panic!("no item: {}", xml(p)))
}

/// Join and return own presence (skipping others' presences, history and subject are left stashed).
async fn join(c: &mut Client, nick: &str, extra: &str) -> Element {
    c.send(&format!(
        "<presence to='{ROOM}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>"
    ))
    .await;
    let me = format!("{ROOM}/{nick}");
    c.recv_until(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
        .await
}

async fn users(s: &TestServer, names: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in names {
        s.add_user(n, "pw").await;
        out.push(Client::online(s.addr(), n, "pw", "r").await);
    }
    out
}

#[tokio::test]
async fn create_join_talk_history_subject_pm_leave() {
    let s = TestServer::start().await;
    let mut c = users(&s, &["alice", "bob", "carol"]).await;
    let (alice, rest) = c.split_first_mut().unwrap();
    let (bob, carol) = rest.split_at_mut(1);
    let (bob, carol) = (&mut bob[0], &mut carol[0]);

    let me = join(alice, "Alice", "").await;
    let mut cs = codes(&me);
    cs.sort();
    assert!(
        cs.contains(&"110".into()) && cs.contains(&"201".into()),
        "{cs:?}"
    );
    assert_eq!(
        (item(&me).attr("affiliation"), item(&me).attr("role")),
        (Some("owner"), Some("moderator"))
    );
    let subj = alice
        .recv_until(|e| e.has_child("subject", "jabber:client"))
        .await;
    assert_eq!(subj.attr("type"), Some("groupchat"));

    let me = join(bob, "Bob", "").await;
    let mut bc = codes(&me);
    bc.sort();
    assert_eq!(bc, vec!["110", "170"], "self presence, room archived");
    assert_eq!(item(&me).attr("role"), Some("participant"));
    assert!(
        bob.recv_until(|e| e.attr("from") == Some(&format!("{ROOM}/Alice")))
            .await
            .name()
            == "presence"
    );
    let seen = alice
        .recv_until(|e| e.attr("from") == Some(&format!("{ROOM}/Bob")))
        .await;
    assert_eq!(
        item(&seen).attr("jid"),
        Some("bob@localhost/r"),
        "moderators see real JIDs"
    );

    // Nickname conflict.
    carol
        .send(&format!(
            "<presence to='{ROOM}/Bob'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    let e = carol.recv_until(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"));
    // Non-occupants cannot talk.
    carol
        .send(&format!(
            "<message to='{ROOM}' type='groupchat' id='x'><body>hi</body></message>"
        ))
        .await;
    let e = carol.recv_until(|e| e.attr("id") == Some("x")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));

    // Subject by the moderator; messages reach everyone, stamped by the room.
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><subject>Plans</subject></message>"
        ))
        .await;
    bob.recv_until(|e| {
        e.get_child("subject", "jabber:client").map(|s| s.text()) == Some("Plans".into())
    })
    .await;
    for i in 0..3 {
        bob.send(&format!(
            "<message to='{ROOM}' type='groupchat' id='g{i}'><body>msg {i}</body></message>"
        ))
        .await;
    }
    for c in [&mut *alice, &mut *bob] {
        for i in 0..3 {
            let m = c
                .recv_until(|e| e.attr("id") == Some(&format!("g{i}")))
                .await;
            assert_eq!(m.attr("from"), Some(format!("{ROOM}/Bob").as_str()));
            assert_eq!(
                m.get_child("stanza-id", "urn:xmpp:sid:0")
                    .unwrap()
                    .attr("by"),
                Some(ROOM)
            );
        }
    }
    // Bob may not change the subject.
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='s2'><subject>Mine</subject></message>"
    ))
    .await;
    assert_eq!(
        error_condition(&bob.recv_until(|e| e.attr("id") == Some("s2")).await).as_deref(),
        Some("forbidden")
    );

    // A latecomer asks for one message of history: it comes with a delay, then the subject.
    join(carol, "Carol", "<history maxstanzas='1'/>").await;
    let h = carol.recv_until(|e| e.name() == "message").await;
    assert_eq!(h.attr("id"), Some("g2"));
    assert!(h.has_child("delay", "urn:xmpp:delay"));
    let subj = carol.recv_until(|e| e.name() == "message").await;
    assert_eq!(
        subj.get_child("subject", "jabber:client").unwrap().text(),
        "Plans"
    );

    // Private message between occupants.
    alice
        .send(&format!(
            "<message to='{ROOM}/Carol' type='chat' id='pm'><body>psst</body></message>"
        ))
        .await;
    let pm = carol.recv_until(|e| e.attr("id") == Some("pm")).await;
    assert_eq!(pm.attr("from"), Some(format!("{ROOM}/Alice").as_str()));

    // Nick change: 303, then the new nick.
    bob.send(&format!("<presence to='{ROOM}/Robert'/>")).await;
    let gone = alice
        .recv_until(|e| {
            e.attr("from") == Some(&format!("{ROOM}/Bob")) && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(codes(&gone).contains(&"303".into()));
    assert_eq!(item(&gone).attr("nick"), Some("Robert"));
    alice
        .recv_until(|e| e.attr("from") == Some(&format!("{ROOM}/Robert")))
        .await;

    // Leaving, and a dropped connection, both end the occupancy for others.
    carol
        .send(&format!("<presence to='{ROOM}/Carol' type='unavailable'/>"))
        .await;
    let own = carol
        .recv_until(|e| {
            e.attr("type") == Some("unavailable")
                && e.attr("from") == Some(&format!("{ROOM}/Carol"))
        })
        .await;
    assert!(codes(&own).contains(&"110".into()));
    alice
        .recv_until(|e| {
            e.attr("from") == Some(&format!("{ROOM}/Carol"))
                && e.attr("type") == Some("unavailable")
        })
        .await;
    let bob_client = std::mem::replace(bob, Client::login(s.addr(), "bob", "pw", "other").await);
    bob_client.drop_connection();
    alice
        .recv_until(|e| {
            e.attr("from") == Some(&format!("{ROOM}/Robert"))
                && e.attr("type") == Some("unavailable")
        })
        .await;
    // Self-ping (XEP-0410).
    let r = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{ROOM}/Alice'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = alice
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{ROOM}/Robert'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
}

#[tokio::test]
async fn moderation_configuration_and_destruction() {
    let s = TestServer::start().await;
    let mut c = users(&s, &["alice", "bob", "carol"]).await;
    let mut carol = c.pop().unwrap();
    let mut bob = c.pop().unwrap();
    let mut alice = c.pop().unwrap();
    join(&mut alice, "Alice", "").await;
    join(&mut bob, "Bob", "").await;
    join(&mut carol, "Carol", "").await;

    // Only the owner configures.
    let r = bob.iq(&format!("<iq type='get' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    let r = alice.iq(&format!("<iq type='get' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>")).await;
    assert!(xml(&r).contains("muc#roomconfig_roomname"));

    // Kick Bob (307), ban Carol (301) who then cannot come back.
    let r = alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Bob' role='none'><reason>spam</reason></item></query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let k = bob
        .recv_until(|e| {
            e.attr("type") == Some("unavailable") && e.attr("from") == Some(&format!("{ROOM}/Bob"))
        })
        .await;
    let mut kc = codes(&k);
    kc.sort();
    assert_eq!(kc, vec!["110", "307"]);
    let r = alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='carol@localhost' affiliation='outcast'/></query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let b = carol
        .recv_until(|e| {
            e.attr("type") == Some("unavailable")
                && e.attr("from") == Some(&format!("{ROOM}/Carol"))
        })
        .await;
    assert!(codes(&b).contains(&"301".into()));
    carol
        .send(&format!(
            "<presence to='{ROOM}/Carol'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    let e = carol
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"));
    let r = alice.iq(&format!("<iq type='get' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query></iq>")).await;
    assert!(xml(&r).contains("carol@localhost"));
    // Bob, a participant, may not kick.
    join(&mut bob, "Bob", "").await;
    let r = bob.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Alice' role='none'/></query></iq>")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));

    // Password and members-only.
    let form = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
        <field var='muc#roomconfig_roomname'><value>Secret Room</value></field>\
        <field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>\
        <field var='muc#roomconfig_roomsecret'><value>sesame</value></field></x>";
    let r = alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let note = bob
        .recv_until(|e| e.name() == "message" && e.has_child("x", USER))
        .await;
    assert!(codes(&note).contains(&"104".into()));
    s.add_user("dave", "pw").await;
    let mut dave = Client::online(s.addr(), "dave", "pw", "r").await;
    dave.send(&format!(
        "<presence to='{ROOM}/Dave'><x xmlns='{MUC}'/></presence>"
    ))
    .await;
    let e = dave.recv_until(|e| e.attr("type") == Some("error")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-authorized"));
    join(&mut dave, "Dave", "<password>sesame</password>").await;
    let r = dave.iq(&format!("<iq type='get' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")).await;
    let x = xml(&r);
    assert!(
        x.contains("muc_passwordprotected")
            && x.contains("Secret Room")
            && x.contains("muc#roominfo_occupants"),
        "{x}"
    );

    // Discovery: the server lists the service; the service lists the room.
    let r = dave.iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(xml(&r).contains("conference.localhost"), "{}", xml(&r));
    let r = dave.iq("<iq type='get' id='{id}' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(xml(&r).contains(ROOM));

    // Destruction tells everyone where to go.
    let r = alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='new@conference.localhost'><reason>moved</reason></destroy></query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let d = dave
        .recv_until(|e| e.attr("type") == Some("unavailable"))
        .await;
    let destroy = d
        .get_child("x", USER)
        .unwrap()
        .get_child("destroy", USER)
        .unwrap();
    assert_eq!(destroy.attr("jid"), Some("new@conference.localhost"));
    let r = dave.iq("<iq type='get' id='{id}' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(!xml(&r).contains(ROOM));
}

#[tokio::test]
async fn two_devices_one_nick_and_invitations() {
    let s = TestServer::start().await;
    let mut c = users(&s, &["alice", "bob"]).await;
    let mut bob = c.pop().unwrap();
    let mut desk = c.pop().unwrap();
    let mut phone = Client::online(s.addr(), "alice", "pw", "phone").await;
    join(&mut desk, "Alice", "").await;
    join(&mut phone, "Alice", "").await;
    // A mediated invitation reaches Bob.
    desk.send(&format!("<message to='{ROOM}'><x xmlns='{USER}'><invite to='bob@localhost'><reason>join us</reason></invite></x></message>")).await;
    let inv = bob.recv_until(|e| e.name() == "message").await;
    let i = inv
        .get_child("x", USER)
        .unwrap()
        .get_child("invite", USER)
        .unwrap();
    assert_eq!(i.attr("from"), Some("alice@localhost"));
    join(&mut bob, "Bob", "").await;
    // Both of Alice's devices get the groupchat.
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='hello'><body>hello</body></message>"
    ))
    .await;
    desk.recv_until(|e| e.attr("id") == Some("hello")).await;
    phone.recv_until(|e| e.attr("id") == Some("hello")).await;
    // One device leaving does not make Alice leave.
    phone
        .send(&format!("<presence to='{ROOM}/Alice' type='unavailable'/>"))
        .await;
    phone
        .recv_until(|e| e.attr("type") == Some("unavailable"))
        .await;
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='again'><body>again</body></message>"
    ))
    .await;
    let m = bob
        .recv_until(|e| {
            e.attr("id") == Some("again")
                || (e.name() == "presence" && e.attr("type") == Some("unavailable"))
        })
        .await;
    assert_eq!(
        m.attr("id"),
        Some("again"),
        "Alice was reported gone: {}",
        xml(&m)
    );
    desk.recv_until(|e| e.attr("id") == Some("again")).await;
}

async fn persistent_room_survives_restart(backend: Backend) {
    let mut s = TestServer::start_with(backend, |_| {}).await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    join(&mut alice, "Alice", "").await;
    let form = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
        <field var='muc#roomconfig_roomname'><value>Team\nRoom</value></field>\
        <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
        <field var='muc#roomconfig_membersonly'><value>1</value></field></x>";
    let r = alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let r = alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@localhost' affiliation='member'/></query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"));
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><subject>Kept</subject></message>"
        ))
        .await;
    alice.sync().await;
    alice.close().await;

    s.restart().await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    let r = bob.iq("<iq type='get' id='{id}' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(
        xml(&r).contains(ROOM),
        "persistent room listed after restart: {}",
        xml(&r)
    );
    join(&mut bob, "Bob", "").await;
    let subj = bob
        .recv_until(|e| e.has_child("subject", "jabber:client"))
        .await;
    assert_eq!(
        subj.get_child("subject", "jabber:client").unwrap().text(),
        "Kept"
    );
    let mut carol = Client::online(s.addr(), "carol", "pw", "r").await;
    carol
        .send(&format!(
            "<presence to='{ROOM}/Carol'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    let e = carol.recv_until(|e| e.attr("type") == Some("error")).await;
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("registration-required"),
        "still members-only"
    );
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let r = alice.iq(&format!("<iq type='get' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>")).await;
    assert!(
        xml(&r).contains("Team\nRoom"),
        "owner and name kept: {}",
        xml(&r)
    );
    // Destroying removes it from storage too.
    let r = alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy/></query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"));
    s.restart().await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    let r = bob.iq("<iq type='get' id='{id}' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(!xml(&r).contains(ROOM));
}

on_both_backends!(persistent_room_survives_restart => persistent_room_survives_restart_sqlite, persistent_room_survives_restart_postgres);

#[tokio::test]
async fn members_who_were_away_catch_up_from_the_room_archive() {
    let s = TestServer::start().await;
    let mut c = users(&s, &["alice", "bob"]).await;
    let mut bob = c.pop().unwrap();
    let mut alice = c.pop().unwrap();
    let me = join(&mut alice, "Alice", "").await;
    assert!(
        codes(&me).contains(&"170".into()),
        "the room says it is archived"
    );
    join(&mut bob, "Bob", "").await;
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='m0'><body>before</body></message>"
    ))
    .await;
    let seen = bob.recv_until(|e| e.attr("id") == Some("m0")).await;
    let last_id = seen
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .unwrap()
        .attr("id")
        .unwrap()
        .to_string();
    // Bob goes away; Alice keeps talking.
    bob.send(&format!("<presence to='{ROOM}/Bob' type='unavailable'/>"))
        .await;
    bob.recv_until(|e| {
        e.attr("type") == Some("unavailable") && e.attr("from") == Some(&format!("{ROOM}/Bob"))
    })
    .await;
    for i in 1..4 {
        alice.send(&format!("<message to='{ROOM}' type='groupchat' id='m{i}'><body>while away {i}</body></message>")).await;
    }
    alice.recv_until(|e| e.attr("id") == Some("m3")).await;
    alice.sync().await;
    // Bob asks the room for everything after the last id he saw (bounded wait for the writer).
    let mut got = Vec::new();
    for _ in 0..50 {
        let id = bob.id();
        bob.send(&format!(
            "<iq type='set' id='{id}' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='q'><set xmlns='http://jabber.org/protocol/rsm'><after>{last_id}</after></set></query></iq>"
        ))
        .await;
        got.clear();
        loop {
            let e = bob
                .recv_until(|e| {
                    e.has_child("result", "urn:xmpp:mam:2") || e.attr("id") == Some(id.as_str())
                })
                .await;
            if e.name() == "iq" {
                // Archived before delivered: the id Bob saw is always known.
                assert_eq!(e.attr("type"), Some("result"), "{}", xml(&e));
                break;
            }
            let m = e
                .get_child("result", "urn:xmpp:mam:2")
                .unwrap()
                .get_child("forwarded", "urn:xmpp:forward:0")
                .unwrap()
                .get_child("message", "jabber:client")
                .unwrap()
                .clone();
            assert_eq!(e.attr("from"), Some(ROOM));
            got.push(m);
        }
        if got.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ids: Vec<_> = got
        .iter()
        .map(|m| m.attr("id").unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["m1", "m2", "m3"]);
    assert_eq!(got[0].attr("from"), Some(format!("{ROOM}/Alice").as_str()));
    // Outsiders of a members-only room may not read it.
    let form = "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field></x>";
    alice.iq(&format!("<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query></iq>")).await;
    let r = bob
        .iq(&format!(
            "<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>"
        ))
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn rooms_per_user_are_limited() {
    let s = TestServer::start_with(Backend::Sqlite, |c| c.modules.muc.max_rooms_per_user = 2).await;
    let mut c = users(&s, &["alice"]).await;
    let mut alice = c.pop().unwrap();
    for r in ["r1", "r2"] {
        alice
            .send(&format!(
                "<presence to='{r}@conference.localhost/A'><x xmlns='{MUC}'/></presence>"
            ))
            .await;
        alice
            .recv_until(|e| e.attr("from") == Some(&format!("{r}@conference.localhost/A")))
            .await;
    }
    alice
        .send(&format!(
            "<presence to='r3@conference.localhost/A'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    let e = alice.recv_until(|e| e.attr("type") == Some("error")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-allowed"));
}

#[tokio::test]
async fn shutdown_tells_occupants_332() {
    let mut s = TestServer::start().await;
    let mut c = users(&s, &["alice"]).await;
    let mut alice = c.pop().unwrap();
    join(&mut alice, "Alice", "").await;
    s.running.take().unwrap().shutdown().await;
    let p = alice
        .recv_until(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    assert!(codes(&p).contains(&"332".into()), "{}", xml(&p));
}

/// XEP-0249 direct invitations are client-to-client messages: the server
/// passes the `jabber:x:conference` payload on unchanged, also to an offline
/// invitee (offline storage), so a room invitation is never lost.
#[tokio::test]
async fn direct_invitations_reach_the_invitee() {
    let s = TestServer::start().await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw").await;
    }
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let invite = "<x xmlns='jabber:x:conference' jid='den@conference.localhost' password='cauldronburn' reason='Hey Bob, come to the den'/>";
    alice
        .send(&format!(
            "<message to='bob@localhost' id='inv1'>{invite}</message>"
        ))
        .await;
    alice.sync().await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    let m = bob
        .recv_until(|e| e.name() == "message" && e.attr("id") == Some("inv1"))
        .await;
    let x = m.get_child("x", "jabber:x:conference").expect("invitation");
    assert_eq!(x.attr("jid"), Some("den@conference.localhost"));
    assert_eq!(x.attr("password"), Some("cauldronburn"));
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
}
