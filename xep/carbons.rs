//! XEP-0280 Message Carbons: every device of a user sees both sides of its
//! one-to-one conversations. Sessions opt in; copies are wrapped in
//! `<sent/>` or `<received/>` with a XEP-0297 `<forwarded/>`.

use super::{IqRequest, Module, Target};
use crate::router::{SessionHandle, to_bytes};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::xml::{BuilderExt, el, ns};
use async_trait::async_trait;
use jid::BareJid;
use minidom::Element;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub const NS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";
const RECEIPTS: &str = "urn:xmpp:receipts";
const MARKERS: &str = "urn:xmpp:chat-markers:0";

pub struct Carbons;

#[async_trait]
impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Server(_) => vec![NS],
            _ => vec![],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        let on = match req.payload.name() {
            "enable" => true,
            "disable" => false,
            _ => return error_reply(req.iq, "bad-request", None),
        };
        if req.iq.attr("type") != Some("set") {
            return error_reply(req.iq, "bad-request", None);
        }
        match server.registry.session(req.from) {
            Some(h) => h.shared.carbons.store(on, Ordering::Relaxed),
            None => return error_reply(req.iq, "not-allowed", None),
        }
        Some(iq_result(req.iq, None))
    }
}

/// XEP-0280 §6.1: chat messages, and normal ones with a body, receipt or marker.
pub fn eligible(msg: &Element) -> bool {
    if msg.has_child("private", NS) || msg.has_child("no-copy", HINTS) {
        return false;
    }
    if msg.has_child("sent", NS) || msg.has_child("received", NS) {
        return false;
    }
    match msg.attr("type") {
        Some("chat") => true,
        None | Some("normal") => {
            msg.has_child("body", ns::CLIENT)
                || msg
                    .children()
                    .any(|c| c.has_ns(RECEIPTS) || c.has_ns(MARKERS))
        }
        _ => false,
    }
}

fn wrap(kind: &str, owner: &BareJid, to: &str, msg: &Element) -> Element {
    let mut b = el("message", ns::CLIENT)
        .a("from", owner.as_str())
        .a("to", to);
    if let Some(t) = msg.attr("type") {
        b = b.a("type", t);
    }
    b.c(el(kind, NS)
        .c(el("forwarded", FORWARD).c(msg.clone()).build())
        .build())
        .build()
}

/// Copy a message a user sent to their other opted-in resources.
/// `owner`: the sender's bare JID.
pub fn copy_sent(server: &Server, sender: &jid::FullJid, owner: &BareJid, msg: &Element) {
    if !server.modules.enabled("carbons") {
        return;
    }
    let wants = |h: &SessionHandle| &h.jid != sender && h.shared.carbons.load(Ordering::Relaxed);
    // Most users have no other opted-in resource: answered without copying handles.
    if !server.registry.any_session(owner, wants) {
        return;
    }
    let mut targets = server
        .registry
        .sessions(owner)
        .into_iter()
        .filter(|h| wants(h))
        .peekable();
    if targets.peek().is_none() || !eligible(msg) {
        return;
    }
    for h in targets {
        h.send(to_bytes(&wrap("sent", owner, h.jid.as_str(), msg)));
    }
}

/// Copy a message a user received to their opted-in resources that did not get it.
pub fn copy_received(server: &Server, owner: &BareJid, delivered: &[u64], msg: &Element) {
    if !server.modules.enabled("carbons") {
        return;
    }
    let opted_in =
        |h: &SessionHandle| h.shared.carbons.load(Ordering::Relaxed) && !delivered.contains(&h.id);
    if !server.registry.any_session(owner, opted_in) {
        return;
    }
    let mut targets = server
        .registry
        .available_priorities(owner)
        .into_iter()
        .filter(|(h, priority)| *priority >= 0 && opted_in(h))
        .peekable();
    if targets.peek().is_none() || !eligible(msg) {
        return;
    }
    for (h, _) in targets {
        h.send(to_bytes(&wrap("received", owner, h.jid.as_str(), msg)));
    }
}
