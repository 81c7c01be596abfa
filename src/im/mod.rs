//! RFC 6121 instant messaging: roster, subscriptions, presence, messages.
//! Core behaviour, not a pluggable module.

pub mod message;
pub mod presence;
pub mod roster;
pub mod subscription;

use crate::router::to_bytes;
use crate::server::Server;
use jid::{BareJid, Jid};
use minidom::Element;

/// Send a stanza to every available resource of a local account.
pub fn to_available(server: &Server, bare: &BareJid, el: &Element) -> usize {
    let sessions = server.registry.available_priorities(bare);
    if sessions.is_empty() {
        return 0;
    }
    let bytes = to_bytes(el);
    sessions
        .iter()
        .filter(|(h, _)| h.send(bytes.clone()))
        .count()
}

/// Deliver to a full JID if bound, or to all available resources of a bare JID.
pub fn to_jid(server: &Server, to: &Jid, el: &Element) -> usize {
    if server.components.deliver(to.domain().as_str(), el) {
        return 1;
    }
    if crate::s2s::is_remote(server, to.domain().as_str()) {
        crate::s2s::send(server, el.clone());
        return 1;
    }
    if server.muc.handles(to.domain().as_str()) {
        server.muc.handle(server, el.clone());
        return 1;
    }
    match to.try_as_full() {
        Ok(full) => match server.registry.session(full) {
            Some(h) => h.send(to_bytes(el)) as usize,
            None => 0,
        },
        Err(bare) => to_available(server, bare, el),
    }
}

/// Presence for a contact: its available resources here, or its server.
pub fn to_contact(server: &Server, contact: &BareJid, el: &Element) {
    if crate::s2s::is_remote(server, contact.domain().as_str()) {
        crate::s2s::send(server, el.clone());
    } else if server.config.serves(contact.domain().as_str()) {
        to_available(server, contact, el);
    }
}

/// Send an error reply for `stanza` back to its sender's session(s).
pub fn bounce(server: &Server, stanza: &Element, condition: &str, text: Option<&str>) {
    let Some(reply) = crate::stanza::error_reply(stanza, condition, text) else {
        return;
    };
    if let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) {
        to_jid(server, &to, &reply);
    }
}
