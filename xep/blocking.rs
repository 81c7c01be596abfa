//! XEP-0191 Blocking Command: a blocked entity can neither message the user
//! nor see their presence (nor ask their last activity or vCard); the user
//! cannot talk to it by mistake either. Lists are cached per account since
//! every message and presence is checked.

use super::{IqRequest, Module, Target};
use crate::router::to_bytes;
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::util::Bare;
use crate::xml::{BuilderExt, el, ns};
use async_trait::async_trait;
use jid::{BareJid, Jid};
use minidom::Element;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const NS: &str = "urn:xmpp:blocking";
pub const ERRORS: &str = "urn:xmpp:blocking:errors";
const CACHE_MAX: usize = 100_000;

/// Blocklists of accounts, loaded on first use and replaced on change.
#[derive(Default)]
pub struct BlockCache {
    lists: Mutex<HashMap<String, Arc<Vec<String>>>>,
}

impl BlockCache {
    async fn get(&self, server: &Server, owner: &BareJid) -> Arc<Vec<String>> {
        if let Some(l) = self.lists.lock().unwrap().get(owner.as_str()) {
            return l.clone();
        }
        let list = Arc::new(
            server
                .storage
                .blocks
                .blocklist(owner.as_str())
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "loading blocklist failed");
                    Vec::new()
                }),
        );
        let mut m = self.lists.lock().unwrap();
        if m.len() >= CACHE_MAX {
            m.clear();
        }
        m.insert(owner.to_string(), list.clone());
        list
    }

    fn forget(&self, owner: &BareJid) {
        self.lists.lock().unwrap().remove(owner.as_str());
    }
}

/// Whether `item` (a bare, full or domain JID from a blocklist) covers `jid`.
fn covers(item: &str, jid: &Jid) -> bool {
    item == jid.as_str() || item == jid.bare().as_str() || item == jid.domain().as_str()
}

/// Does the account `owner` block `other`?
pub async fn blocks(server: &Server, owner: &BareJid, other: &Jid) -> bool {
    if !server.modules.enabled("blocking") || !server.config.serves(owner.domain().as_str()) {
        return false;
    }
    let list = server.blocks.get(server, owner).await;
    !list.is_empty() && list.iter().any(|i| covers(i, other))
}

/// Either side blocks the other (`a` is an account; `b` may be remote).
pub async fn between(server: &Server, a: &BareJid, b: &Jid) -> bool {
    blocks(server, a, b).await
        || (b.node().is_some() && blocks(server, &b.bare(), &Jid::from(a.clone())).await)
}

/// The error for a stanza the user sends to someone they block.
pub fn blocked_reply(stanza: &Element) -> Option<Element> {
    let mut r = error_reply(stanza, "not-acceptable", None)?;
    if let Some(e) = r.get_child_mut("error", ns::CLIENT) {
        e.append_child(el("blocked", ERRORS).build());
    }
    Some(r)
}

pub struct Blocking;

fn items(q: &Element) -> Result<Vec<Jid>, ()> {
    q.children()
        .filter(|c| c.is("item", NS))
        .map(|c| c.attr("jid").and_then(|j| Jid::new(j).ok()).ok_or(()))
        .collect()
}

fn push(server: &Server, owner: &BareJid, kind: &str, jids: &[Jid]) {
    for h in server.registry.sessions(owner) {
        let mut q = el(kind, NS);
        for j in jids {
            q = q.c(el("item", NS).a("jid", j.as_str()).build());
        }
        let iq = el("iq", ns::CLIENT)
            .a("type", "set")
            .a("id", format!("block-{}", crate::c2s::new_id()))
            .a("to", h.jid.as_str())
            .c(q.build())
            .build();
        h.send(to_bytes(&iq));
    }
}

/// Presence consequences of (un)blocking: the blocked side sees us go away,
/// or comes back to seeing what the subscription allows.
async fn presence_after(server: &Server, owner: &BareJid, jids: &[Jid], blocked: bool) {
    use crate::im::subscription::{send_current_presence, send_unavailable};
    for j in jids {
        let contact = j.bare();
        if j.node().is_none() || !server.config.serves(contact.domain().as_str()) {
            continue;
        }
        let roster = &server.storage.roster;
        let ours = roster
            .roster_item(owner.as_str(), contact.as_str())
            .await
            .ok()
            .flatten();
        if blocked {
            send_unavailable(server, owner, &contact);
        } else if ours.is_some_and(|i| i.subscription.has_from())
            && !blocks(server, &contact, &Jid::from(owner.clone())).await
        {
            send_current_presence(server, owner, &contact);
            let theirs = roster
                .roster_item(contact.as_str(), owner.as_str())
                .await
                .ok()
                .flatten();
            if theirs.is_some_and(|i| i.subscription.has_from()) {
                send_current_presence(server, &contact, owner);
            }
        }
    }
}

#[async_trait]
impl Module for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
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
        let owner = match req.target {
            Target::Account { jid, own: true } => jid.clone(),
            _ => return error_reply(req.iq, "forbidden", None),
        };
        let q = req.payload;
        match (req.iq.attr("type"), q.name()) {
            (Some("get"), "blocklist") => {
                let mut b = el("blocklist", NS);
                for j in server.blocks.get(server, &owner).await.iter() {
                    b = b.c(el("item", NS).a("jid", j.as_str()).build());
                }
                Some(iq_result(req.iq, Some(b.build())))
            }
            (Some("set"), kind @ ("block" | "unblock")) => {
                let Ok(jids) = items(q) else {
                    return error_reply(req.iq, "jid-malformed", None);
                };
                if kind == "block" && jids.is_empty() {
                    return error_reply(req.iq, "bad-request", Some("block at least one JID"));
                }
                let strings: Vec<String> = jids.iter().map(|j| j.to_string()).collect();
                let stored = if kind == "block" {
                    server.storage.blocks.block(owner.as_str(), &strings).await
                } else {
                    server
                        .storage
                        .blocks
                        .unblock(owner.as_str(), &strings)
                        .await
                };
                // Unblocking everything concerns every JID that was on the list.
                let affected: Vec<Jid> = if kind == "unblock" && jids.is_empty() {
                    server
                        .blocks
                        .get(server, &owner)
                        .await
                        .iter()
                        .filter_map(|j| Jid::new(j).ok())
                        .collect()
                } else {
                    jids.clone()
                };
                server.blocks.forget(&owner);
                if let Err(e) = stored {
                    tracing::error!(error = %e, "saving blocklist failed");
                    return error_reply(req.iq, "internal-server-error", None);
                }
                push(server, &owner, kind, &jids);
                presence_after(server, &owner, &affected, kind == "block").await;
                Some(iq_result(req.iq, None))
            }
            _ => error_reply(req.iq, "bad-request", None),
        }
    }
}
