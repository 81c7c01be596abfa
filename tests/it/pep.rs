//! XEP-0163 PEP: publish, access models, +notify through XEP-0115 caps, last item, retract, config.

use crate::common::*;
use minidom::Element;

const PS: &str = "http://jabber.org/protocol/pubsub";
const EV: &str = "http://jabber.org/protocol/pubsub#event";
const DEVICES: &str = "eu.siacs.conversations.axolotl.devicelist";
const AVATAR: &str = "urn:xmpp:avatar:metadata";

fn publish(node: &str, id: &str, payload: &str, options: &str) -> String {
    let opts = if options.is_empty() {
        String::new()
    } else {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>http://jabber.org/protocol/pubsub#publish-options</value></field>{options}</x></publish-options>"
        )
    };
    format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>{opts}</pubsub></iq>"
    )
}

fn field(var: &str, v: &str) -> String {
    format!("<field var='{var}'><value>{v}</value></field>")
}

async fn items(c: &mut Client, owner: &str, node: &str) -> Element {
    c.iq(&format!("<iq type='get' id='{{id}}' to='{owner}'><pubsub xmlns='{PS}'><items node='{node}'/></pubsub></iq>")).await
}

/// Announce caps and answer the server's disco#info query with these +notify features.
async fn announce_caps(c: &mut Client, ver: &str, notify: &[&str]) {
    c.send(&format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org/client' ver='{ver}'/></presence>")).await;
    let q = c
        .recv_until(|e| {
            e.name() == "iq" && e.has_child("query", "http://jabber.org/protocol/disco#info")
        })
        .await;
    assert_eq!(
        q.get_child("query", "http://jabber.org/protocol/disco#info")
            .unwrap()
            .attr("node"),
        Some(format!("https://example.org/client#{ver}").as_str())
    );
    let feats: String = notify
        .iter()
        .map(|n| format!("<feature var='{n}+notify'/>"))
        .collect();
    c.send(&format!(
        "<iq type='result' id='{}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc'/>{feats}</query></iq>",
        q.attr("id").unwrap()
    ))
    .await;
}

#[tokio::test]
async fn omemo_style_open_nodes_and_presence_nodes() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut carol = s.login("carol", "pw", "r").await;
    // Account disco shows PEP.
    let r = alice.iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(
        xml(&r).contains("pubsub#publish-options") && xml(&r).contains("type='pep'"),
        "{}",
        xml(&r)
    );

    // OMEMO device list with open access: a stranger can fetch it.
    let devices = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1234'/></list>";
    let r = alice
        .iq(&publish(
            DEVICES,
            "current",
            devices,
            &field("pubsub#access_model", "open"),
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let r = items(&mut carol, "alice@localhost", DEVICES).await;
    assert!(xml(&r).contains("device id='1234'"), "{}", xml(&r));
    // The same options again are fine; contradicting ones are a failed precondition.
    let r = alice
        .iq(&publish(
            DEVICES,
            "current",
            devices,
            &field("pubsub#access_model", "open"),
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = alice
        .iq(&publish(
            DEVICES,
            "current",
            devices,
            &field("pubsub#access_model", "presence"),
        ))
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("conflict"));
    assert!(xml(&r).contains("precondition-not-met"));

    // A presence-access node: not for strangers.
    let r = alice.iq(&publish(AVATAR, "av1", "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='av1' bytes='10' type='image/png'/></metadata>", "")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = items(&mut carol, "alice@localhost", AVATAR).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-authorized"));
    assert!(xml(&r).contains("presence-subscription-required"));
    // Nobody else may publish to Alice's nodes; unknown nodes are item-not-found.
    let r = carol.iq(&format!("<iq type='set' id='{{id}}' to='alice@localhost'><pubsub xmlns='{PS}'><publish node='x'><item><x xmlns='y'/></item></publish></pubsub></iq>")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    let r = items(&mut carol, "alice@localhost", "nope").await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));

    // Bob subscribes to Alice's presence; with +notify in his caps he gets the last item, then new ones.
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    alice
        .recv_until(|e| e.attr("type") == Some("subscribe"))
        .await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    bob.recv_until(|e| e.attr("type") == Some("subscribed"))
        .await;
    announce_caps(&mut bob, "ver-bob-1", &[AVATAR]).await;
    let ev = bob.recv_until(|e| e.has_child("event", EV)).await;
    assert_eq!(ev.attr("from"), Some("alice@localhost"));
    assert!(
        xml(&ev).contains("item id='av1'"),
        "last published item: {}",
        xml(&ev)
    );
    let r = items(&mut bob, "alice@localhost", AVATAR).await;
    assert!(xml(&r).contains("av1"));
    alice.iq(&publish(AVATAR, "av2", "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='av2' bytes='12' type='image/png'/></metadata>", "")).await;
    let ev = bob.recv_until(|e| e.has_child("event", EV)).await;
    assert!(xml(&ev).contains("item id='av2'"));
    // Default max_items is 1: only the newest remains.
    let r = items(&mut bob, "alice@localhost", AVATAR).await;
    assert!(
        xml(&r).contains("av2") && !xml(&r).contains("'av1'"),
        "{}",
        xml(&r)
    );
    // Retraction with notify, then node deletion, reach Bob too.
    let r = alice.iq(&format!("<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><retract node='{AVATAR}' notify='true'><item id='av2'/></retract></pubsub></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let ev = bob.recv_until(|e| e.has_child("event", EV)).await;
    assert!(xml(&ev).contains("retract id='av2'"));
    let r = alice.iq(&format!("<iq type='set' id='{{id}}'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{AVATAR}'/></pubsub></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let ev = bob.recv_until(|e| e.has_child("event", EV)).await;
    assert!(xml(&ev).contains("delete node="));
}

#[tokio::test]
async fn no_notify_no_event_and_node_configuration() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut desk = Client::online(s.addr(), "alice", "pw", "desk").await;
    let mut phone = Client::login(s.addr(), "alice", "pw", "phone").await;
    announce_caps(&mut phone, "ver-phone", &["urn:xmpp:bookmarks:1"]).await;
    // A bookmarks-style whitelist node with unlimited items.
    let opts = format!(
        "{}{}",
        field("pubsub#access_model", "whitelist"),
        field("pubsub#max_items", "max")
    );
    for room in ["a", "b", "c"] {
        let r = desk
            .iq(&publish(
                "urn:xmpp:bookmarks:1",
                &format!("{room}@conference.localhost"),
                "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'/>",
                &opts,
            ))
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
        // The phone asked for +notify; the desk did not (no caps): only the phone is told.
        let ev = phone.recv_until(|e| e.has_child("event", EV)).await;
        assert!(xml(&ev).contains(room));
    }
    let r = items(&mut desk, "alice@localhost", "urn:xmpp:bookmarks:1").await;
    assert_eq!(
        r.get_child("pubsub", PS)
            .unwrap()
            .get_child("items", PS)
            .unwrap()
            .children()
            .count(),
        3
    );
    let id = desk.id();
    desk.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let next = desk
        .recv_until(|e| e.has_child("event", EV) || e.attr("id") == Some(id.as_str()))
        .await;
    assert_eq!(
        next.attr("id"),
        Some(id.as_str()),
        "no event without +notify: {}",
        xml(&next)
    );
    // Node configuration.
    let r = desk.iq("<iq type='get' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:xmpp:bookmarks:1'/></pubsub></iq>").await;
    assert!(
        xml(&r).contains("whitelist") && xml(&r).contains(">max<"),
        "{}",
        xml(&r)
    );
    let r = desk
        .iq("<iq type='set' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:xmpp:bookmarks:1'><x xmlns='jabber:x:data' type='submit'><field var='pubsub#max_items'><value>2</value></field></x></configure></pubsub></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
}

#[tokio::test]
async fn private_storage_and_bookmarks_in_both_formats() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut old = Client::online(s.addr(), "alice", "pw", "old").await;
    let mut new = Client::online(s.addr(), "alice", "pw", "new").await;
    // Plain private storage.
    let r = old.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:private'><prefs xmlns='x:prefs'><theme>dark</theme></prefs></query></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = old.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:private'><prefs xmlns='x:prefs'/></query></iq>").await;
    assert!(xml(&r).contains("<theme>dark</theme>"), "{}", xml(&r));
    let r = old.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:private'><none xmlns='x:none'/></query></iq>").await;
    assert!(xml(&r).contains("x:none"));
    let r = old.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query></iq>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
    // The account advertises the bookmarks bridge.
    let r = new.iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(xml(&r).contains("urn:xmpp:bookmarks:1#compat"));

    // An old client writes XEP-0048 bookmarks: a new client reads them as XEP-0402.
    let r = old
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
             <conference jid='team@conference.localhost' name='Team' autojoin='true'><nick>al</nick></conference>\
             <url name='site' url='https://example.org/'/></storage></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = items(&mut new, "alice@localhost", "urn:xmpp:bookmarks:1").await;
    let x = xml(&r);
    assert!(
        x.contains("id='team@conference.localhost'")
            && x.contains("autojoin='true'")
            && x.contains("<nick>al</nick>"),
        "{x}"
    );
    // A new client adds one via PEP: the old client sees both (and keeps its URL).
    let r = new
        .iq(&publish(
            "urn:xmpp:bookmarks:1",
            "lobby@conference.localhost",
            "<conference xmlns='urn:xmpp:bookmarks:1' name='Lobby'/>",
            "",
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let r = old.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>").await;
    let x = xml(&r);
    assert!(
        x.contains("team@conference.localhost")
            && x.contains("lobby@conference.localhost")
            && x.contains("https://example.org/"),
        "{x}"
    );
    // Removing it on the old side removes it from the new side.
    old.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference jid='lobby@conference.localhost' name='Lobby'/></storage></query></iq>").await;
    let r = items(&mut new, "alice@localhost", "urn:xmpp:bookmarks:1").await;
    assert!(!xml(&r).contains("team@"), "{}", xml(&r));
}

/// XEP-0115 §5.4: a client whose disco#info does not hash to the `ver` it
/// announced cannot make the server believe that of other clients with the
/// same `ver`: they are asked themselves, and answers that verify are shared.
#[tokio::test]
async fn caps_that_do_not_verify_poison_nobody() {
    let s = TestServer::start().await;
    for u in ["alice", "mallory", "bob"] {
        s.add_user(u, "pw").await;
    }
    let honest: Element = format!(
        "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc'/><feature var='{AVATAR}+notify'/></query>"
    )
    .parse()
    .unwrap();
    let ver = xmppd::xep::caps::verification_hash(&honest, "sha-1").unwrap();
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    // Mallory announces that ver and answers without the +notify feature.
    let mut mallory = Client::online(s.addr(), "mallory", "pw", "r").await;
    announce_caps(&mut mallory, &ver, &[]).await;
    mallory.sync().await;

    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    alice
        .recv_until(|e| e.attr("type") == Some("subscribe"))
        .await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    bob.recv_until(|e| e.attr("type") == Some("subscribed"))
        .await;
    // Bob is asked (announce_caps waits for the query): Mallory's answer was not cached for him.
    announce_caps(&mut bob, &ver, &[AVATAR]).await;
    bob.sync().await;
    alice.iq(&publish(AVATAR, "av1", "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='av1' bytes='12' type='image/png'/></metadata>", "")).await;
    let ev = bob.recv_until(|e| e.has_child("event", EV)).await;
    assert!(xml(&ev).contains("item id='av1'"), "{}", xml(&ev));
}

/// XEP-0223: private data in PEP, published with the options the XEP names
/// (persist_items, whitelist access); it survives a restart and only the
/// owner reads it.
#[tokio::test]
async fn xep0223_private_pep_storage() {
    let mut s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let node = "urn:xmpp:example:private";
    let opts = format!(
        "{}{}",
        field("pubsub#persist_items", "true"),
        field("pubsub#access_model", "whitelist")
    );
    let mut alice = s.login("alice", "pw", "r").await;
    let r = alice
        .iq(&publish(
            node,
            "current",
            "<secret xmlns='urn:xmpp:example'>42</secret>",
            &opts,
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    alice.close().await;
    s.restart().await;
    let mut alice = s.login("alice", "pw", "r").await;
    let r = items(&mut alice, "alice@localhost", node).await;
    assert!(xml(&r).contains(">42<"), "{}", xml(&r));
    let mut bob = s.login("bob", "pw", "r").await;
    let r = items(&mut bob, "alice@localhost", node).await;
    assert_eq!(r.attr("type"), Some("error"), "{}", xml(&r));
    assert!(!xml(&r).contains(">42<"));
}
