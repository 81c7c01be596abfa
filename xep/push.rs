//! XEP-0357 Push Notifications: a device registers its app server (usually an
//! external component) and a node; when a message arrives while that device's
//! session is hibernated (stream management) or the account is offline, the
//! server publishes a summary (count, last sender, optionally the body) to it.

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::PushRegistration;
use crate::xml::{BuilderExt, ElementExt, el, ns};
use async_trait::async_trait;
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;

pub const NS: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

pub struct Push;

/// Publish one notification to each registration.
pub fn notify(
    server: &Server,
    owner: &BareJid,
    regs: &[PushRegistration],
    sender: Option<&str>,
    body: Option<&str>,
) {
    for r in regs {
        let Ok(service) = Jid::new(&r.service) else {
            continue;
        };
        let field = |var: &str, v: &str| {
            el("field", ns::DATA_FORMS)
                .a("var", var)
                .c(el("value", ns::DATA_FORMS).t(v).build())
                .build()
        };
        let mut x = el("x", ns::DATA_FORMS)
            .a("type", "submit")
            .c(field("FORM_TYPE", "urn:xmpp:push:summary"))
            .c(field("message-count", "1"));
        if let Some(s) = sender {
            x = x.c(field("last-message-sender", s));
        }
        if let (Some(b), true) = (body, server.config.modules.push.include_body) {
            x = x.c(field("last-message-body", b));
        }
        let mut pubsub = el("pubsub", PUBSUB).c(el("publish", PUBSUB)
            .a("node", r.node.as_str())
            .c(el("item", PUBSUB)
                .c(el("notification", NS).c(x.build()).build())
                .build())
            .build());
        if let Ok(opts) = r.options.parse::<Element>() {
            pubsub = pubsub.c(el("publish-options", PUBSUB).c(opts).build());
        }
        let iq = el("iq", ns::CLIENT)
            .a("type", "set")
            .a("id", format!("push-{}", crate::c2s::new_id()))
            .a("from", owner.as_str())
            .a("to", service.as_str())
            .c(pubsub.build())
            .build();
        crate::im::to_jid(server, &service, &iq);
    }
}

/// A message for an account with no session to take it (stored offline).
pub async fn offline_message(server: &Server, owner: &BareJid, msg: &Element) {
    if !server.modules.enabled("push") || !msg.has_child("body", ns::CLIENT) {
        return;
    }
    let regs = server
        .storage
        .push
        .push_registrations(owner.as_str())
        .await
        .unwrap_or_default();
    let body = msg.get_child("body", ns::CLIENT).map(|b| b.text());
    notify(server, owner, &regs, msg.attr("from"), body.as_deref());
}

/// A stanza queued for a hibernated session: push if it is a message with content.
pub fn hibernated_message(
    server: &Server,
    owner: &BareJid,
    regs: &[PushRegistration],
    stanza: &[u8],
) {
    if regs.is_empty() || !stanza.starts_with(b"<message") {
        return;
    }
    let Ok(text) = std::str::from_utf8(stanza) else {
        return;
    };
    let Ok(m) = text.parse::<Element>() else {
        return;
    };
    if !m.has_child("body", ns::CLIENT) {
        return;
    }
    let body = m.get_child("body", ns::CLIENT).map(|b| b.text());
    notify(server, owner, regs, m.attr("from"), body.as_deref());
}

#[async_trait]
impl Module for Push {
    fn name(&self) -> &'static str {
        "push"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Account { .. } => vec![NS],
            Target::Server(_) => vec![],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        let owner = match req.target {
            Target::Account { jid, own: true } => jid.clone(),
            _ => return error_reply(req.iq, "forbidden", None),
        };
        if req.iq.attr("type") != Some("set") {
            return error_reply(req.iq, "bad-request", None);
        }
        let p = req.payload;
        let Some(service) = p.attr("jid").and_then(|j| Jid::new(j).ok()) else {
            return error_reply(
                req.iq,
                "bad-request",
                Some("a push service jid is required"),
            );
        };
        let store = &server.storage.push;
        let session = server.registry.session(req.from);
        match p.name() {
            "enable" => {
                let Some(node) = p.attr("node").filter(|n| !n.is_empty()) else {
                    return error_reply(req.iq, "bad-request", Some("a node is required"));
                };
                let options = p
                    .get_child("x", ns::DATA_FORMS)
                    .map(|x| String::from_utf8(x.to_bytes()).unwrap_or_default())
                    .unwrap_or_default();
                let reg = PushRegistration {
                    service: service.to_string(),
                    node: node.to_string(),
                    options,
                };
                if store.add_push(owner.as_str(), &reg).await.is_err() {
                    return error_reply(req.iq, "internal-server-error", None);
                }
                if let Some(h) = session {
                    let mut mine = h.shared.push.lock().unwrap();
                    mine.retain(|r| !(r.service == reg.service && r.node == reg.node));
                    mine.push(reg);
                }
                Some(iq_result(req.iq, None))
            }
            "disable" => {
                let node = p.attr("node");
                if store
                    .remove_push(owner.as_str(), service.as_str(), node)
                    .await
                    .is_err()
                {
                    return error_reply(req.iq, "internal-server-error", None);
                }
                if let Some(h) = session {
                    h.shared.push.lock().unwrap().retain(|r| {
                        !(r.service == service.as_str() && node.is_none_or(|n| n == r.node))
                    });
                }
                Some(iq_result(req.iq, None))
            }
            _ => error_reply(req.iq, "bad-request", None),
        }
    }
}
