//! Avatars: XEP-0084 (PEP) and vCard PHOTO kept in step by the server
//! (XEP-0398), and the vCard avatar hash in presence (XEP-0153).

use crate::common::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use sha1::Digest;

const PS: &str = "http://jabber.org/protocol/pubsub";
const EV: &str = "http://jabber.org/protocol/pubsub#event";
const DATA: &str = "urn:xmpp:avatar:data";
const META: &str = "urn:xmpp:avatar:metadata";
const VCARD: &str = "vcard-temp";
const UPDATE: &str = "vcard-temp:x:update";
const CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";

/// A PNG header saying 2×3 pixels, then bytes that differ by `seed`.
fn image(seed: u8) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x02\0\0\0\x03\x08\x06\0\0\0".to_vec();
    b.extend((0..=255u8).map(|i| i.wrapping_mul(seed)));
    b
}

fn sha1_hex(b: &[u8]) -> String {
    sha1::Sha1::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Bob subscribes to Alice's presence and she accepts; both queues drained.
async fn bob_follows_alice(alice: &mut Client, bob: &mut Client) {
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
    for c in [alice, bob] {
        c.sync().await;
        c.clear();
    }
}

/// Announce caps with `node+notify` and answer the server's disco#info query.
async fn announce_notify(c: &mut Client, ver: &str, node: &str) {
    c.send(&format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org/client' ver='{ver}'/></presence>")).await;
    let q = c
        .recv_until(|e| {
            e.name() == "iq" && e.has_child("query", "http://jabber.org/protocol/disco#info")
        })
        .await;
    c.send(&format!(
        "<iq type='result' id='{}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc'/><feature var='{node}+notify'/></query></iq>",
        q.attr("id").unwrap()
    ))
    .await;
    c.sync().await;
    c.clear();
}

/// Publish data then metadata as XEP-0084 says; returns the id.
async fn publish_avatar(c: &mut Client, img: &[u8], mime: &str) -> String {
    let id = sha1_hex(img);
    let r = c
        .iq(&format!(
            "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{DATA}'><item id='{id}'>\
             <data xmlns='{DATA}'>{}</data></item></publish></pubsub></iq>",
            B64.encode(img)
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    let r = c
        .iq(&format!(
            "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{META}'><item id='{id}'>\
             <metadata xmlns='{META}'><info id='{id}' bytes='{}' type='{mime}'/></metadata></item></publish></pubsub></iq>",
            img.len()
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    id
}

/// XEP-0084 "disable": metadata without `<info/>`.
async fn disable_avatar(c: &mut Client) {
    let r = c
        .iq(&format!(
            "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{META}'><item>\
             <metadata xmlns='{META}'/></item></publish></pubsub></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
}

/// A vCard set with a name and maybe a photo (BINVAL wrapped as vCards do).
async fn set_vcard(c: &mut Client, name: &str, photo: Option<(&str, &[u8])>) {
    let photo = photo
        .map(|(mime, b)| {
            let enc = B64.encode(b);
            let lines: Vec<&str> = enc
                .as_bytes()
                .chunks(76)
                .map(|l| std::str::from_utf8(l).unwrap())
                .collect();
            format!(
                "<PHOTO><TYPE>{mime}</TYPE><BINVAL>{}</BINVAL></PHOTO>",
                lines.join("\n")
            )
        })
        .unwrap_or_default();
    let r = c
        .iq(&format!(
            "<iq type='set' id='{{id}}'><vCard xmlns='{VCARD}'><FN>{name}</FN>{photo}</vCard></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
}

async fn vcard_of(c: &mut Client, owner: &str) -> Element {
    let r = c
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{owner}'><vCard xmlns='{VCARD}'/></iq>"
        ))
        .await;
    r.get_child("vCard", VCARD)
        .unwrap_or_else(|| panic!("vCard result: {}", xml(&r)))
        .clone()
}

fn fn_of(card: &Element) -> String {
    card.get_child("FN", VCARD)
        .map(|f| f.text())
        .unwrap_or_default()
}

/// (TYPE, decoded BINVAL) of the vCard's PHOTO.
fn photo_of(card: &Element) -> Option<(String, Vec<u8>)> {
    let p = card.get_child("PHOTO", VCARD)?;
    let mime = p.get_child("TYPE", VCARD).map(|t| t.text())?;
    let bin: String = p
        .get_child("BINVAL", VCARD)?
        .text()
        .split_whitespace()
        .collect();
    Some((mime, B64.decode(bin).expect("BINVAL is base64")))
}

async fn items(c: &mut Client, owner: &str, node: &str) -> Vec<Element> {
    let r = c
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{owner}'><pubsub xmlns='{PS}'><items node='{node}'/></pubsub></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    r.get_child("pubsub", PS)
        .and_then(|p| p.get_child("items", PS))
        .map(|i| i.children().cloned().collect())
        .unwrap_or_default()
}

/// The next available presence from `from` (a full JID).
async fn presence_from(c: &mut Client, from: &str) -> Element {
    c.recv_until(|e| {
        e.name() == "presence" && e.attr("from") == Some(from) && e.attr("type").is_none()
    })
    .await
}

/// The `<photo/>` texts of a presence's vcard-temp:x:update elements.
fn photos(p: &Element) -> Vec<String> {
    p.children()
        .filter(|x| x.is("x", UPDATE))
        .flat_map(|x| x.children().filter(|c| c.is("photo", UPDATE)))
        .map(|c| c.text())
        .collect()
}

async fn pep_avatar_shows_in_vcard(backend: Backend) {
    let s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    bob_follows_alice(&mut alice, &mut bob).await;
    // The account advertises the conversion.
    let r = alice.iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(xml(&r).contains(CONVERSION), "{}", xml(&r));

    set_vcard(&mut alice, "Alice", None).await;
    let img = image(3);
    publish_avatar(&mut alice, &img, "image/jpeg").await;
    // The owner and a contact both see the PEP avatar as the vCard PHOTO, the
    // type taken from the metadata; the rest of the vCard is kept.
    for (c, to) in [
        (&mut alice, "alice@localhost"),
        (&mut bob, "alice@localhost"),
    ] {
        let card = vcard_of(c, to).await;
        assert_eq!(
            photo_of(&card),
            Some(("image/jpeg".to_string(), img.clone())),
            "{}",
            xml(&card)
        );
        assert_eq!(fn_of(&card), "Alice");
    }
    // A new avatar replaces the photo.
    let img2 = image(7);
    publish_avatar(&mut alice, &img2, "image/png").await;
    let card = vcard_of(&mut bob, "alice@localhost").await;
    assert_eq!(photo_of(&card), Some(("image/png".to_string(), img2)));
    assert_eq!(card.children().filter(|c| c.name() == "PHOTO").count(), 1);

    // Disabling the PEP avatar removes the photo, nothing else.
    disable_avatar(&mut alice).await;
    let card = vcard_of(&mut bob, "alice@localhost").await;
    assert_eq!(photo_of(&card), None, "{}", xml(&card));
    assert!(!card.has_child("PHOTO", VCARD), "{}", xml(&card));
    assert_eq!(fn_of(&card), "Alice");
}

on_both_backends!(pep_avatar_shows_in_vcard => pep_avatar_shows_in_vcard_sqlite, pep_avatar_shows_in_vcard_postgres);

async fn vcard_photo_published_to_pep(backend: Backend) {
    let s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    bob_follows_alice(&mut alice, &mut bob).await;
    announce_notify(&mut bob, "ver-avatar", META).await;

    let img = image(5);
    let id = sha1_hex(&img);
    set_vcard(&mut alice, "Alice", Some(("image/png", &img))).await;
    // Bob is notified of the metadata, with the image's SHA-1 as id.
    let ev = bob
        .recv_until(|e| e.has_child("event", EV) && xml(e).contains(META))
        .await;
    assert_eq!(ev.attr("from"), Some("alice@localhost"));
    let item = ev
        .get_child("event", EV)
        .and_then(|e| e.get_child("items", EV))
        .and_then(|i| i.get_child("item", EV))
        .unwrap_or_else(|| panic!("an item: {}", xml(&ev)));
    assert_eq!(item.attr("id"), Some(id.as_str()), "{}", xml(&ev));
    let info = item
        .get_child("metadata", META)
        .and_then(|m| m.get_child("info", META))
        .unwrap_or_else(|| panic!("metadata info: {}", xml(&ev)));
    assert_eq!(info.attr("id"), Some(id.as_str()));
    assert_eq!(info.attr("type"), Some("image/png"));
    assert_eq!(info.attr("bytes"), Some(img.len().to_string().as_str()));
    assert_eq!(
        (info.attr("width"), info.attr("height")),
        (Some("2"), Some("3"))
    );
    // The data node serves the image under that id.
    let data = items(&mut bob, "alice@localhost", DATA).await;
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(data[0].attr("id"), Some(id.as_str()));
    let b64 = data[0]
        .get_child("data", DATA)
        .map(|d| d.text())
        .expect("avatar data");
    assert_eq!(B64.decode(b64.trim()).unwrap(), img);

    // The same photo again (a client changing only its name) publishes nothing.
    set_vcard(&mut alice, "Alice A.", Some(("image/png", &img))).await;
    let ping = bob.id();
    bob.send(&format!(
        "<iq type='get' id='{ping}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let next = bob
        .recv_until(|e| e.has_child("event", EV) || e.attr("id") == Some(ping.as_str()))
        .await;
    assert_eq!(
        next.attr("id"),
        Some(ping.as_str()),
        "no new event: {}",
        xml(&next)
    );

    // A vCard without photo disables the PEP avatar and removes its data.
    set_vcard(&mut alice, "Alice", None).await;
    let ev = bob
        .recv_until(|e| e.has_child("event", EV) && xml(e).contains(META))
        .await;
    let metadata = ev
        .get_child("event", EV)
        .and_then(|e| e.get_child("items", EV))
        .and_then(|i| i.get_child("item", EV))
        .and_then(|i| i.get_child("metadata", META))
        .unwrap_or_else(|| panic!("metadata: {}", xml(&ev)));
    assert!(!metadata.has_child("info", META), "{}", xml(&ev));
    assert!(items(&mut bob, "alice@localhost", DATA).await.is_empty());
    let meta = items(&mut alice, "alice@localhost", META).await;
    assert!(meta.iter().all(|i| !xml(i).contains("<info")), "{meta:?}");
}

on_both_backends!(vcard_photo_published_to_pep => vcard_photo_published_to_pep_sqlite, vcard_photo_published_to_pep_postgres);

async fn presence_carries_avatar_hash(backend: Backend) {
    let mut s = TestServer::start_with(backend, |_| {}).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    bob_follows_alice(&mut alice, &mut bob).await;
    // No avatar yet: nothing added.
    alice.send("<presence><show>away</show></presence>").await;
    let p = presence_from(&mut bob, "alice@localhost/r").await;
    assert!(photos(&p).is_empty(), "{}", xml(&p));

    let img = image(9);
    let hash = sha1_hex(&img);
    set_vcard(&mut alice, "Alice", Some(("image/png", &img))).await;
    alice.send("<presence/>").await;
    let p = presence_from(&mut bob, "alice@localhost/r").await;
    assert_eq!(photos(&p), vec![hash.clone()], "{}", xml(&p));
    // The client's own statement stands (an empty photo: "no avatar")…
    alice
        .send(&format!(
            "<presence><x xmlns='{UPDATE}'><photo/></x></presence>"
        ))
        .await;
    let p = presence_from(&mut bob, "alice@localhost/r").await;
    assert_eq!(photos(&p), vec![String::new()], "{}", xml(&p));
    // …but an x without photo ("not ready") is filled in.
    alice
        .send(&format!("<presence><x xmlns='{UPDATE}'/></presence>"))
        .await;
    let p = presence_from(&mut bob, "alice@localhost/r").await;
    assert_eq!(photos(&p), vec![hash.clone()], "{}", xml(&p));
    assert_eq!(p.children().filter(|x| x.is("x", UPDATE)).count(), 1);

    // After a restart the hash comes from storage.
    drop((alice, bob));
    s.restart().await;
    let mut bob = Client::online(s.addr(), "bob", "pw", "r").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let p = presence_from(&mut bob, "alice@localhost/r").await;
    assert_eq!(photos(&p), vec![hash.clone()], "{}", xml(&p));

    // An avatar published via PEP changes the hash; disabling it removes it.
    let img2 = image(11);
    let hash2 = publish_avatar(&mut alice, &img2, "image/png").await;
    alice.send("<presence/>").await;
    let p = presence_from(&mut bob, "alice@localhost/r").await;
    assert_eq!(photos(&p), vec![hash2], "{}", xml(&p));
    disable_avatar(&mut alice).await;
    alice.send("<presence/>").await;
    let p = presence_from(&mut bob, "alice@localhost/r").await;
    assert!(photos(&p).is_empty(), "{}", xml(&p));
}

on_both_backends!(presence_carries_avatar_hash => presence_carries_avatar_hash_sqlite, presence_carries_avatar_hash_postgres);

#[tokio::test]
async fn no_conversion_without_pep() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.modules.enabled.retain(|m| m != "pep");
    })
    .await;
    s.add_user("alice", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    let r = alice.iq("<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(!xml(&r).contains(CONVERSION), "{}", xml(&r));
    // vCard avatars alone still put the hash in presence.
    let img = image(13);
    set_vcard(&mut alice, "Alice", Some(("image/png", &img))).await;
    alice.send("<presence/>").await;
    let p = presence_from(&mut alice, "alice@localhost/r").await;
    assert_eq!(photos(&p), vec![sha1_hex(&img)], "{}", xml(&p));
}
