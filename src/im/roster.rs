//! Roster management (RFC 6121 §2) with versioning (XEP-0237) and pushes.

use crate::router::to_bytes;
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::RosterItem;
use crate::util::Bare;
use crate::xml::{BuilderExt, el, ns};
use jid::{BareJid, FullJid};
use minidom::Element;
use std::sync::atomic::Ordering;

/// The `<item/>` for a roster row (`remove` renders the deletion push).
pub fn item_element(item: &RosterItem, remove: bool) -> Element {
    let mut b = el("item", ns::ROSTER).a("jid", item.contact.as_str());
    if remove {
        return b.a("subscription", "remove").build();
    }
    if let Some(n) = &item.name {
        b = b.a("name", n.as_str());
    }
    b = b.a("subscription", item.subscription.as_str());
    if item.ask {
        b = b.a("ask", "subscribe");
    }
    if item.approved {
        b = b.a("approved", "true");
    }
    for g in &item.groups {
        b = b.c(el("group", ns::ROSTER).t(g).build());
    }
    b.build()
}

/// Push a changed item to every interested resource of `owner` (RFC 6121 §2.1.6).
pub fn push(server: &Server, owner: &BareJid, item: &RosterItem, remove: bool, version: i64) {
    for h in server.registry.sessions(owner) {
        if !h.shared.interested.load(Ordering::Relaxed) {
            continue;
        }
        let iq = el("iq", ns::CLIENT)
            .a("type", "set")
            .a("id", format!("push-{}", crate::c2s::new_id()))
            .a("to", h.jid.as_str())
            .c(el("query", ns::ROSTER)
                .a("ver", version.to_string())
                .c(item_element(item, remove))
                .build())
            .build();
        h.send(to_bytes(&iq));
    }
}

/// Handle a roster IQ from the account's own session.
pub async fn handle_iq(
    server: &Server,
    session: &FullJid,
    iq: &Element,
    query: &Element,
) -> Element {
    let owner = session.bare();
    let result = match iq.attr("type") {
        Some("get") => get(server, session, &owner, iq, query).await,
        Some("set") => set(server, &owner, iq, query).await,
        _ => Err("bad-request"),
    };
    result.unwrap_or_else(|cond| error_reply(iq, cond, None).expect("iq request"))
}

async fn get(
    server: &Server,
    session: &FullJid,
    owner: &BareJid,
    iq: &Element,
    query: &Element,
) -> Result<Element, &'static str> {
    if let Some(h) = server.registry.session(session) {
        h.shared.interested.store(true, Ordering::Relaxed);
    }
    let (version, items) = server
        .storage
        .roster
        .roster(owner.as_str())
        .await
        .map_err(db_err)?;
    let ver = version.to_string();
    if query.attr("ver") == Some(ver.as_str()) {
        // XEP-0237: unchanged since the client's copy; changes would come as pushes.
        return Ok(iq_result(iq, None));
    }
    let mut q = el("query", ns::ROSTER).a("ver", ver);
    for item in items.iter().filter(|i| i.in_roster) {
        q = q.c(item_element(item, false));
    }
    Ok(iq_result(iq, Some(q.build())))
}

async fn set(
    server: &Server,
    owner: &BareJid,
    iq: &Element,
    query: &Element,
) -> Result<Element, &'static str> {
    let items: Vec<&Element> = query
        .children()
        .filter(|c| c.is("item", ns::ROSTER))
        .collect();
    if items.len() != 1 {
        return Err("bad-request");
    }
    let item = items[0];
    let contact = item
        .attr("jid")
        .and_then(|j| BareJid::new(j).ok())
        .ok_or("bad-request")?;
    if &contact == owner && item.attr("subscription") != Some("remove") {
        return Err("not-allowed");
    }
    let existing = server
        .storage
        .roster
        .roster_item(owner.as_str(), contact.as_str())
        .await
        .map_err(db_err)?;
    if item.attr("subscription") == Some("remove") {
        let Some(existing) = existing.filter(|e| e.in_roster || e.pending_in) else {
            return Err("item-not-found");
        };
        crate::im::subscription::remove_contact(server, owner, &contact, existing)
            .await
            .map_err(db_err)?;
        return Ok(iq_result(iq, None));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", ns::ROSTER)) {
        let name = g.text();
        if name.is_empty() {
            return Err("not-acceptable");
        }
        if groups.contains(&name) {
            return Err("bad-request");
        }
        groups.push(name);
    }
    if existing.is_none() {
        let (_, all) = server
            .storage
            .roster
            .roster(owner.as_str())
            .await
            .map_err(db_err)?;
        if all.len() >= server.config.limits.max_roster_items {
            return Err("not-allowed");
        }
    }
    let name = item.attr("name").map(String::from);
    crate::im::subscription::update_row(server, owner, &contact, true, |it| {
        it.in_roster = true;
        it.name = name;
        it.groups = groups;
        true
    })
    .await
    .map_err(db_err)?;
    Ok(iq_result(iq, None))
}

fn db_err(e: crate::storage::StorageError) -> &'static str {
    tracing::error!(error = %e, "roster storage failed");
    "internal-server-error"
}
