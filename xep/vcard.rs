//! XEP-0054 vcard-temp: each account sets its own vCard; anyone may read it.
//!
//! Avatars on top of it: the server stamps the hash of the vCard PHOTO into
//! the user's available presence (XEP-0153, as XEP-0398 §4 asks of servers),
//! and, with PEP on, converts between the vCard PHOTO and the XEP-0084 nodes
//! (XEP-0398 §3). Each direction writes the other side through storage, never
//! through the other's IQ handler, so a conversion cannot trigger the reverse.

use super::{IqRequest, Module, Target, pep};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::{PepItem, Result};
use crate::xml::{BuilderExt, ElementExt, el, ns};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use jid::BareJid;
use minidom::Element;
use sha1::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const NS_UPDATE: &str = "vcard-temp:x:update";
/// XEP-0398 feature on the account.
pub const CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
pub const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";

pub struct VCard;

/// An avatar image and its content type.
struct Photo {
    bytes: Vec<u8>,
    mime: String,
}

/// What a vCard says about the avatar.
enum CardPhoto {
    None,
    Image(Photo),
    /// A PHOTO we cannot turn into bytes (EXTVAL, bad base64): no conversion.
    Unusable,
}

impl CardPhoto {
    fn hash(&self) -> Option<String> {
        match self {
            CardPhoto::Image(p) => Some(sha1_hex(&p.bytes)),
            _ => None,
        }
    }
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    // vCards wrap BINVAL lines (XEP-0153) and XEP-0084 must accept line feeds.
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(clean).ok().filter(|b| !b.is_empty())
}

fn card_photo(card: &Element) -> CardPhoto {
    let Some(photo) = card.get_child("PHOTO", ns::VCARD) else {
        return CardPhoto::None;
    };
    let Some(bytes) = photo
        .get_child("BINVAL", ns::VCARD)
        .and_then(|b| decode_b64(&b.text()))
    else {
        return CardPhoto::Unusable;
    };
    let given = photo
        .get_child("TYPE", ns::VCARD)
        .map(|t| t.text().trim().to_string());
    CardPhoto::Image(Photo {
        mime: content_type(given.as_deref(), &bytes),
        bytes,
    })
}

/// XEP-0084 ids and XEP-0153 hashes: SHA-1 of the image bytes, lowercase hex.
fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The declared type, else one recognised from the image (the type is
/// required by XEP-0084, optional in a vCard).
fn content_type(given: Option<&str>, b: &[u8]) -> String {
    if let Some(t) = given.filter(|t| !t.is_empty()) {
        return t.to_string();
    }
    let sniffed = if b.starts_with(b"GIF8") {
        "image/gif"
    } else if b.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "image/png"
    };
    sniffed.to_string()
}

/// Width and height where the header states them (PNG, GIF); XEP-0084 only
/// recommends them.
fn dimensions(b: &[u8]) -> Option<(u32, u32)> {
    if b.starts_with(PNG) && b.len() >= 24 && &b[12..16] == b"IHDR" {
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        return Some((be(16), be(20)));
    }
    if b.starts_with(b"GIF8") && b.len() >= 10 {
        let le = |i: usize| u32::from(u16::from_le_bytes([b[i], b[i + 1]]));
        return Some((le(6), le(8)));
    }
    None
}

/// The avatar hash of each account (SHA-1 of its vCard PHOTO), so presence
/// broadcast need not load vCards. Loaded on first use; every vCard write
/// (the IQ, the PEP conversion) and account removal update it.
#[derive(Default)]
pub struct AvatarCache {
    map: Mutex<HashMap<String, Option<String>>>,
}

const AVATAR_CACHE_MAX: usize = 100_000;

impl AvatarCache {
    async fn hash(&self, server: &Server, owner: &BareJid) -> Option<String> {
        if let Some(h) = self.map.lock().unwrap().get(owner.as_str()) {
            return h.clone();
        }
        // A storage error is not cached (this presence goes without a hash).
        let stored = server.storage.vcards.vcard(owner.as_str()).await.ok()?;
        let hash = stored
            .and_then(|x| x.parse::<Element>().ok())
            .and_then(|card| card_photo(&card).hash());
        let mut m = self.map.lock().unwrap();
        if m.len() >= AVATAR_CACHE_MAX {
            m.clear();
        }
        // A write that landed while we were loading is newer than what we read.
        m.entry(owner.to_string()).or_insert(hash).clone()
    }

    fn put(&self, owner: &BareJid, hash: Option<String>) {
        let mut m = self.map.lock().unwrap();
        if m.len() >= AVATAR_CACHE_MAX {
            m.clear();
        }
        m.insert(owner.to_string(), hash);
    }

    /// The account is gone; a new one of that name starts without an avatar.
    pub fn forget(&self, owner: &BareJid) {
        self.map.lock().unwrap().remove(owner.as_str());
    }
}

/// XEP-0398 §4: the avatar hash in an available presence of the user. A
/// `<photo/>` the client put there (even empty: "no avatar") is kept; an
/// `<x/>` without one ("not ready") is filled in.
pub async fn stamp_presence(server: &Server, user: &BareJid, p: &mut Element) {
    if !server.modules.enabled("vcard")
        || p.get_child("x", NS_UPDATE)
            .is_some_and(|x| x.has_child("photo", NS_UPDATE))
    {
        return;
    }
    let Some(hash) = server.modules.avatars.hash(server, user).await else {
        return;
    };
    let photo = el("photo", NS_UPDATE).t(&hash).build();
    match p.get_child_mut("x", NS_UPDATE) {
        Some(x) => {
            x.append_child(photo);
        }
        None => {
            p.append_child(el("x", NS_UPDATE).c(photo).build());
        }
    }
}

/// Replace the vCard's PHOTO, or remove it, keeping every other field.
async fn write_photo(server: &Server, owner: &BareJid, photo: Option<Photo>) -> Result<()> {
    let store = &server.storage.vcards;
    let mut card = store
        .vcard(owner.as_str())
        .await?
        .and_then(|x| x.parse::<Element>().ok())
        .unwrap_or_else(|| el("vCard", ns::VCARD).build());
    let unchanged = match (card_photo(&card), &photo) {
        (CardPhoto::None, None) => true,
        (CardPhoto::Image(old), Some(new)) => old.bytes == new.bytes && old.mime == new.mime,
        _ => false,
    };
    let hash = photo.as_ref().map(|p| sha1_hex(&p.bytes));
    if !unchanged {
        while card.remove_child("PHOTO", ns::VCARD).is_some() {}
        if let Some(p) = photo {
            card.append_child(
                el("PHOTO", ns::VCARD)
                    .c(el("TYPE", ns::VCARD).t(&p.mime).build())
                    .c(el("BINVAL", ns::VCARD).t(&B64.encode(&p.bytes)).build())
                    .build(),
            );
        }
        let xml = String::from_utf8(card.to_bytes()).unwrap_or_default();
        store.set_vcard(owner.as_str(), &xml).await?;
    }
    server.modules.avatars.put(owner, hash);
    Ok(())
}

/// The `<metadata/>` of the newest item of the owner's metadata node.
async fn current_metadata(server: &Server, owner: &BareJid) -> Result<Option<Element>> {
    let items = server
        .storage
        .pep
        .pep_items(owner.as_str(), AVATAR_METADATA, &[], Some(1))
        .await?;
    Ok(items.last().and_then(|i| i.payload.parse::<Element>().ok()))
}

fn infos(metadata: &Option<Element>) -> Vec<&Element> {
    metadata
        .iter()
        .flat_map(|m| m.children())
        .filter(|c| c.is("info", AVATAR_METADATA))
        .collect()
}

/// XEP-0398 §3.1, after the owner's metadata node changed (publish, retract,
/// delete): the vCard PHOTO becomes the image of the first `<info/>` served
/// by the data node (not an external URL) whose data matches its SHA-1 id.
/// No `<info/>` (avatar disabled, no item left) removes the PHOTO.
pub(crate) async fn pep_to_vcard(server: &Server, owner: &BareJid) {
    if !server.modules.enabled("vcard") {
        return;
    }
    if let Err(e) = sync_from_pep(server, owner).await {
        // The publish itself stands; the next one converts again.
        tracing::error!(error = %e, "avatar to vCard conversion failed");
    }
}

async fn sync_from_pep(server: &Server, owner: &BareJid) -> Result<()> {
    let metadata = current_metadata(server, owner).await?;
    let infos = infos(&metadata);
    if infos.is_empty() {
        return write_photo(server, owner, None).await;
    }
    for info in infos.iter().filter(|i| i.attr("url").is_none()) {
        let Some(id) = info.attr("id") else { continue };
        let data = server
            .storage
            .pep
            .pep_items(owner.as_str(), AVATAR_DATA, &[id.to_string()], None)
            .await?;
        let Some(bytes) = data
            .last()
            .and_then(|d| d.payload.parse::<Element>().ok())
            .filter(|d| d.is("data", AVATAR_DATA))
            .and_then(|d| decode_b64(&d.text()))
        else {
            continue;
        };
        // vCard clients check the hash they are given against the image.
        if !sha1_hex(&bytes).eq_ignore_ascii_case(id) {
            tracing::debug!(%owner, id, "avatar data does not match its id; not converted");
            continue;
        }
        let mime = content_type(info.attr("type"), &bytes);
        return write_photo(server, owner, Some(Photo { bytes, mime })).await;
    }
    // Only external URLs, or data not published: the vCard keeps what it has.
    Ok(())
}

fn item(owner: &BareJid, id: String, payload: Element) -> PepItem {
    PepItem {
        item_id: id,
        payload: String::from_utf8(payload.to_bytes()).unwrap_or_default(),
        publisher: owner.to_string(),
    }
}

/// XEP-0398 §3.2, after the client set its vCard: a PHOTO is published as
/// data, then metadata (both with the SHA-1 as id, subscribers notified); no
/// PHOTO disables the PEP avatar (XEP-0084: metadata without `<info/>`) and
/// retracts its data. Nothing is published when PEP already says as much.
async fn vcard_to_pep(server: &Server, owner: &BareJid, photo: &CardPhoto) -> Result<()> {
    let current = current_metadata(server, owner).await?;
    let current_ids: Vec<&str> = infos(&current)
        .iter()
        .filter_map(|i| i.attr("id"))
        .collect();
    match photo {
        CardPhoto::Unusable => Ok(()),
        CardPhoto::None => {
            if current_ids.is_empty() {
                return Ok(());
            }
            let store = &server.storage.pep;
            for old in store
                .pep_items(owner.as_str(), AVATAR_DATA, &[], None)
                .await?
            {
                store
                    .retract_pep_item(owner.as_str(), AVATAR_DATA, &old.item_id)
                    .await?;
            }
            let metadata = el("metadata", AVATAR_METADATA).build();
            pep::publish_item(
                server,
                owner,
                AVATAR_METADATA,
                item(owner, crate::c2s::new_id(), metadata),
            )
            .await
        }
        CardPhoto::Image(p) => {
            let id = sha1_hex(&p.bytes);
            if current_ids.first() == Some(&id.as_str()) {
                return Ok(());
            }
            let data = el("data", AVATAR_DATA).t(&B64.encode(&p.bytes)).build();
            pep::publish_item(server, owner, AVATAR_DATA, item(owner, id.clone(), data)).await?;
            let mut info = el("info", AVATAR_METADATA)
                .a("id", id.as_str())
                .a("bytes", p.bytes.len().to_string())
                .a("type", p.mime.as_str());
            if let Some((w, h)) = dimensions(&p.bytes) {
                info = info.a("width", w.to_string()).a("height", h.to_string());
            }
            let metadata = el("metadata", AVATAR_METADATA).c(info.build()).build();
            pep::publish_item(server, owner, AVATAR_METADATA, item(owner, id, metadata)).await
        }
    }
}

#[async_trait]
impl Module for VCard {
    fn name(&self) -> &'static str {
        "vcard"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::VCARD]
    }
    fn features(&self, _t: &Target) -> Vec<&'static str> {
        vec![ns::VCARD]
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if !req.payload.is("vCard", ns::VCARD) {
            return error_reply(req.iq, "bad-request", None);
        }
        let (jid, own) = match req.target {
            Target::Account { jid, own } => (jid, *own),
            Target::Server(_) => {
                return if req.iq.attr("type") == Some("get") {
                    Some(iq_result(req.iq, Some(el("vCard", ns::VCARD).build())))
                } else {
                    error_reply(req.iq, "forbidden", None)
                };
            }
        };
        match req.iq.attr("type") {
            Some("get") => {
                let stored = match server.storage.vcards.vcard(jid.as_str()).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(error = %e, "vcard load failed");
                        return error_reply(req.iq, "internal-server-error", None);
                    }
                };
                let card = stored
                    .and_then(|x| x.parse::<Element>().ok())
                    .unwrap_or_else(|| el("vCard", ns::VCARD).build());
                Some(iq_result(req.iq, Some(card)))
            }
            Some("set") if own => {
                let xml = String::from_utf8(req.payload.to_bytes()).unwrap_or_default();
                if let Err(e) = server.storage.vcards.set_vcard(jid.as_str(), &xml).await {
                    tracing::error!(error = %e, "vcard save failed");
                    return error_reply(req.iq, "internal-server-error", None);
                }
                let photo = card_photo(req.payload);
                server.modules.avatars.put(jid, photo.hash());
                if server.modules.enabled("pep")
                    && let Err(e) = vcard_to_pep(server, jid, &photo).await
                {
                    // The vCard is saved; the next set converts again.
                    tracing::error!(error = %e, "vCard to avatar conversion failed");
                }
                Some(iq_result(req.iq, None))
            }
            _ => error_reply(req.iq, "forbidden", None),
        }
    }
}
