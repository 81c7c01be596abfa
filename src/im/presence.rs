//! Presence (RFC 6121 §4): broadcast to subscribers, probes on initial
//! presence, directed presence, and unavailable on session end.

use crate::im::{subscription, to_available, to_jid};
use crate::router::{Available, SessionHandle};
use crate::server::Server;
use crate::storage::Result;
use crate::util::Bare;
use crate::xep::blocking;
use crate::xml::{BuilderExt, ElementExt, el, ns};
use jid::{BareJid, Jid};
use minidom::Element;
use std::collections::HashSet;
use std::sync::Arc;

/// Per-session presence state kept by the session task.
#[derive(Default)]
pub struct PresenceState {
    /// Entities that got directed available presence and must hear of our leaving.
    pub directed: HashSet<Jid>,
}

fn priority(p: &Element) -> i8 {
    p.get_child("priority", ns::CLIENT)
        .and_then(|e| e.text().trim().parse::<i32>().ok())
        .map(|v| v.clamp(-128, 127) as i8)
        .unwrap_or(0)
}

/// A presence stanza from the user's session (`from` already stamped).
pub async fn outbound(
    server: &Arc<Server>,
    h: &SessionHandle,
    st: &mut PresenceState,
    mut p: Element,
    to: Option<Jid>,
) -> Result<()> {
    let kind = p.attr("type").unwrap_or("available").to_string();
    let user = h.jid.bare();
    if kind == "available" {
        // XEP-0153 avatar hash, for broadcast and directed presence (MUC joins) alike.
        crate::xep::vcard::stamp_presence(server, &user, &mut p).await;
    }
    match (to, kind.as_str()) {
        (None, "available") => broadcast_available(server, h, p).await,
        (None, "unavailable") => broadcast_unavailable(server, h, st, Some(p)).await,
        (Some(to), "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => {
            let contact = to.bare();
            if contact == user || blocking::between(server, &user, &to).await {
                return Ok(());
            }
            subscription::outbound(server, &user, &kind, &contact, &p).await
        }
        (Some(to), "available" | "unavailable") => {
            directed(server, &user, st, p, to, kind == "available").await;
            Ok(())
        }
        (Some(to), "error") => {
            to_jid(server, &to, &p);
            Ok(())
        }
        // Probes are the server's business; anything else is ignored (RFC 6121 §4.3).
        _ => Ok(()),
    }
}

async fn broadcast_available(
    server: &Arc<Server>,
    h: &SessionHandle,
    mut p: Element,
) -> Result<()> {
    let user = h.jid.bare();
    p.unset("to");
    let initial = h.shared.available().is_none();
    let old_caps = h.shared.caps.lock().unwrap().clone();
    let caps_known = server.modules.enabled("pep") && crate::xep::caps::on_presence(server, h, &p);
    let caps_changed = *h.shared.caps.lock().unwrap() != old_caps;
    h.shared
        .set_available(Some(Available::new(priority(&p), &p)));
    let (_, roster) = server.storage.roster.roster(user.as_str()).await?;
    for item in roster.iter().filter(|i| i.subscription.has_from()) {
        if let Ok(contact) = BareJid::new(&item.contact) {
            if blocking::between(server, &user, &Jid::from(contact.clone())).await {
                continue;
            }
            let mut q = p.clone();
            q.set("to", contact.as_str());
            deliver_local(server, &contact, &q);
        }
    }
    // All of the user's own available resources, the sender included (RFC 6121 §4.2.2).
    to_available(server, &user, &p);
    if caps_known && (initial || caps_changed) {
        // XEP-0163 §6: the last items of the nodes this client wants.
        crate::xep::pep::send_last_items(server, h).await;
    }
    if initial {
        if priority(&p) >= 0 && server.modules.enabled("offline") {
            crate::xep::offline::deliver(server, h).await;
        }
        for item in roster.iter() {
            let Ok(contact) = BareJid::new(&item.contact) else {
                continue;
            };
            if blocking::between(server, &user, &Jid::from(contact.clone())).await {
                continue;
            }
            if item.subscription.has_to() {
                probe(server, h, &contact).await?;
            }
            if item.pending_in {
                // Redeliver subscription requests that arrived while offline (RFC 6121 §3.1.3).
                let mut req = el("presence", ns::CLIENT)
                    .a("type", "subscribe")
                    .a("from", contact.as_str())
                    .a("to", user.as_str());
                if let Some(s) = &item.pending_in_status {
                    req = req.c(el("status", ns::CLIENT).t(s).build());
                }
                h.send(crate::router::to_bytes(&req.build()));
            }
        }
        // Our other resources' presence, so this one sees them too.
        for (other, avail) in server.registry.available(&user) {
            if other.id != h.id {
                h.send(avail.addressed(h.jid.as_str()));
            }
        }
    }
    Ok(())
}

/// Answer a probe from `h`'s user for `contact` with the contact's presence.
async fn probe(server: &Server, h: &SessionHandle, contact: &BareJid) -> Result<()> {
    if !server.config.serves(contact.domain().as_str()) {
        if crate::s2s::is_remote(server, contact.domain().as_str()) {
            // RFC 6121 §4.3: the contact's server answers with its presence.
            let p = el("presence", ns::CLIENT)
                .a("type", "probe")
                .a("from", h.jid.bare().as_str())
                .a("to", contact.as_str())
                .build();
            crate::s2s::send(server, p);
        }
        return Ok(());
    }
    let user = h.jid.bare();
    let allowed = server
        .storage
        .roster
        .roster_item(contact.as_str(), user.as_str())
        .await?
        .is_some_and(|i| i.subscription.has_from());
    if !allowed {
        return Ok(());
    }
    for (_, avail) in server.registry.available(contact) {
        h.send(avail.addressed(h.jid.as_str()));
    }
    Ok(())
}

/// Broadcast unavailable: to subscribers, our own resources, and directed recipients.
pub async fn broadcast_unavailable(
    server: &Server,
    h: &SessionHandle,
    st: &mut PresenceState,
    p: Option<Element>,
) -> Result<()> {
    let user = h.jid.bare();
    let previous = h.shared.available();
    let was_available = previous.is_some();
    h.shared.set_available(None);
    let mut p = p.unwrap_or_else(|| el("presence", ns::CLIENT).a("type", "unavailable").build());
    p.set("from", h.jid.as_str());
    p.unset("to");
    let directed: Vec<Jid> = st.directed.drain().collect();
    for to in &directed {
        let mut q = p.clone();
        q.set("to", to.as_str());
        to_jid(server, to, &q);
    }
    if !was_available {
        return Ok(());
    }
    if server.modules.enabled("last") && server.registry.available_priorities(&user).is_empty() {
        // The status given when leaving, else the last one shown (a dropped connection says nothing).
        let status = match p.get_child("status", ns::CLIENT) {
            Some(s) => s.text(),
            None => previous
                .and_then(|a| a.element())
                .and_then(|e| e.get_child("status", ns::CLIENT).map(|s| s.text()))
                .unwrap_or_default(),
        };
        crate::xep::last::record(server, &user, &status).await;
    }
    let (_, roster) = server.storage.roster.roster(user.as_str()).await?;
    for item in roster.iter().filter(|i| i.subscription.has_from()) {
        if let Ok(contact) = BareJid::new(&item.contact) {
            if directed.iter().any(|d| d.bare() == contact)
                || blocking::between(server, &user, &Jid::from(contact.clone())).await
            {
                continue;
            }
            let mut q = p.clone();
            q.set("to", contact.as_str());
            deliver_local(server, &contact, &q);
        }
    }
    to_available(server, &user, &p);
    Ok(())
}

async fn directed(
    server: &Server,
    user: &BareJid,
    st: &mut PresenceState,
    mut p: Element,
    to: Jid,
    available: bool,
) {
    if blocking::between(server, user, &to).await {
        return;
    }
    p.set("to", to.as_str());
    if available {
        st.directed.insert(to.clone());
    } else {
        st.directed.remove(&to);
    }
    let domain = to.domain().as_str();
    if server.components.handles(domain)
        || crate::s2s::is_remote(server, domain)
        || ((server.config.serves(domain) || server.muc.handles(domain)) && to.node().is_some())
    {
        to_jid(server, &to, &p);
    }
}

fn deliver_local(server: &Server, contact: &BareJid, p: &Element) {
    crate::im::to_contact(server, contact, p);
}
