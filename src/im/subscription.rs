//! The presence subscription state machine (RFC 6121 §3 and Appendix A).
//!
//! `outbound` applies the user's side of a subscription stanza and routes it;
//! the `inbound_*` functions apply the contact's side on delivery. Both sides
//! are local for now; federation will route the stamped stanza to s2s instead.
//!
//! Every change to a roster row is a read-modify-write under that account's
//! lock (`update`), and no lock is held while the other side is handled, so
//! crossing requests (a pre-approval racing a request) converge and two
//! accounts never wait on each other.

use crate::im::to_available;
use crate::server::Server;
use crate::storage::{Result, RosterItem};
use crate::xml::{BuilderExt, ElementExt, el, ns};
use jid::BareJid;
use minidom::Element;

/// Apply `change` to `owner`'s row for `contact` under the owner's lock; the
/// row is saved only if `change` returns `true`, and pushed when what the
/// user sees of it changed. Returns the row as it was and as it is now.
pub async fn update(
    server: &Server,
    owner: &BareJid,
    contact: &BareJid,
    change: impl FnOnce(&mut RosterItem) -> bool,
) -> Result<(RosterItem, RosterItem)> {
    update_row(server, owner, contact, false, change).await
}

/// `update`, always pushing the result (a roster set is always echoed, RFC 6121 §2.3.2).
pub async fn update_row(
    server: &Server,
    owner: &BareJid,
    contact: &BareJid,
    always_push: bool,
    change: impl FnOnce(&mut RosterItem) -> bool,
) -> Result<(RosterItem, RosterItem)> {
    let _guard = server.roster_lock(owner).lock().await;
    let before = server
        .storage
        .roster
        .roster_item(owner.as_str(), contact.as_str())
        .await?
        .unwrap_or_else(|| RosterItem::new(contact.as_str()));
    let mut after = before.clone();
    if change(&mut after) {
        let version = server
            .storage
            .roster
            .put_roster_item(owner.as_str(), &after)
            .await?;
        if after.in_roster && (always_push || !looks_the_same(&before, &after)) {
            crate::im::roster::push(server, owner, &after, false, version);
        }
    }
    Ok((before, after))
}

/// Whether the user would see the same roster item (pending requests are not shown).
fn looks_the_same(a: &RosterItem, b: &RosterItem) -> bool {
    a.in_roster == b.in_roster
        && a.name == b.name
        && a.subscription == b.subscription
        && a.ask == b.ask
        && a.approved == b.approved
        && a.groups == b.groups
}

/// The subscription stanza as routed: from the user's bare JID, to the contact's bare JID.
fn stamped(kind: &str, from: &BareJid, to: &BareJid, original: Option<&Element>) -> Element {
    let mut p = el("presence", ns::CLIENT)
        .a("type", kind)
        .a("from", from.as_str())
        .a("to", to.as_str())
        .build();
    if let Some(o) = original {
        for c in o.children() {
            p.append_child(c.clone());
        }
    }
    p
}

fn is_local(server: &Server, jid: &BareJid) -> bool {
    server.config.serves(jid.domain().as_str())
}

/// Handle `<presence type='subscribe|subscribed|unsubscribe|unsubscribed' to='contact'/>` from the user.
pub async fn outbound(
    server: &Server,
    user: &BareJid,
    kind: &str,
    contact: &BareJid,
    original: &Element,
) -> Result<()> {
    match kind {
        "subscribe" => {
            update(server, user, contact, |it| {
                if it.subscription.has_to() || (it.ask && it.in_roster) {
                    return false;
                }
                it.ask = true;
                it.in_roster = true;
                true
            })
            .await?;
            route(server, user, kind, contact, original).await
        }
        "subscribed" => {
            let (before, _) = update(server, user, contact, |it| {
                if it.pending_in {
                    it.subscription = it.subscription.with_from(true);
                    it.pending_in = false;
                    it.pending_in_status = None;
                    it.in_roster = true;
                    true
                } else if !it.subscription.has_from() && !it.approved {
                    // Pre-approval (RFC 6121 §3.4): remembered, not routed.
                    it.approved = true;
                    it.in_roster = true;
                    true
                } else {
                    false
                }
            })
            .await?;
            if before.pending_in {
                route(server, user, kind, contact, original).await?;
                send_current_presence(server, user, contact);
            }
            Ok(())
        }
        "unsubscribe" => {
            update(server, user, contact, |it| {
                if !(it.subscription.has_to() || it.ask) {
                    return false;
                }
                it.subscription = it.subscription.with_to(false);
                it.ask = false;
                true
            })
            .await?;
            route(server, user, kind, contact, original).await
        }
        "unsubscribed" => {
            let (before, _) = update(server, user, contact, |it| {
                if !(it.subscription.has_from() || it.pending_in || it.approved) {
                    return false;
                }
                it.subscription = it.subscription.with_from(false);
                it.pending_in = false;
                it.pending_in_status = None;
                it.approved = false;
                true
            })
            .await?;
            route(server, user, kind, contact, original).await?;
            if before.subscription.has_from() {
                send_unavailable(server, user, contact);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Route a subscription stanza to the contact's server (here: apply it locally).
async fn route(
    server: &Server,
    from: &BareJid,
    kind: &str,
    to: &BareJid,
    original: &Element,
) -> Result<()> {
    let stanza = stamped(kind, from, to, Some(original));
    if !is_local(server, to) {
        // A gateway component gets subscriptions for its users; other domains by s2s.
        if !server.components.deliver(to.domain().as_str(), &stanza) {
            crate::s2s::send(server, stanza);
        }
        return Ok(());
    }
    match kind {
        "subscribe" => inbound_subscribe(server, from, to, stanza).await,
        "subscribed" => inbound_subscribed(server, from, to, stanza).await,
        "unsubscribe" => inbound_unsubscribe(server, from, to, stanza).await,
        "unsubscribed" => inbound_unsubscribed(server, from, to, stanza).await,
        _ => Ok(()),
    }
}

/// A subscription request reaches the contact `to` from `from`.
pub async fn inbound_subscribe(
    server: &Server,
    from: &BareJid,
    to: &BareJid,
    stanza: Element,
) -> Result<()> {
    if !server.storage.accounts.account_exists(to.as_str()).await? {
        // RFC 6121 §3.1.3: no such user, the request is refused.
        let reply = stamped("unsubscribed", to, from, None);
        // Boxed: route() may come back here for a local contact.
        return Box::pin(route(server, to, "unsubscribed", from, &reply)).await;
    }
    let status = stanza.get_child("status", ns::CLIENT).map(|s| s.text());
    let (before, _) = update(server, to, from, |it| {
        if it.subscription.has_from() {
            false
        } else if it.approved {
            it.subscription = it.subscription.with_from(true);
            it.approved = false;
            true
        } else {
            // Kept and redelivered at the next login until answered.
            it.pending_in = true;
            it.pending_in_status = status;
            true
        }
    })
    .await?;
    if before.subscription.has_from() || before.approved {
        // Already subscribed, or pre-approved: answered on the contact's behalf.
        let reply = stamped("subscribed", to, from, None);
        Box::pin(route(server, to, "subscribed", from, &reply)).await?;
        if before.approved {
            send_current_presence(server, to, from);
        }
        return Ok(());
    }
    to_available(server, to, &stanza);
    Ok(())
}

pub async fn inbound_subscribed(
    server: &Server,
    from: &BareJid,
    to: &BareJid,
    stanza: Element,
) -> Result<()> {
    let (before, _) = update(server, to, from, |it| {
        if !it.ask {
            return false;
        }
        it.subscription = it.subscription.with_to(true);
        it.ask = false;
        true
    })
    .await?;
    if before.ask {
        to_available(server, to, &stanza);
    }
    Ok(())
}

pub async fn inbound_unsubscribe(
    server: &Server,
    from: &BareJid,
    to: &BareJid,
    stanza: Element,
) -> Result<()> {
    let (before, _) = update(server, to, from, |it| {
        if !it.subscription.has_from() && !it.pending_in {
            return false;
        }
        it.subscription = it.subscription.with_from(false);
        it.pending_in = false;
        it.pending_in_status = None;
        true
    })
    .await?;
    if !before.subscription.has_from() && !before.pending_in {
        return Ok(());
    }
    to_available(server, to, &stanza);
    if before.subscription.has_from() {
        send_unavailable(server, to, from);
    }
    Ok(())
}

pub async fn inbound_unsubscribed(
    server: &Server,
    from: &BareJid,
    to: &BareJid,
    stanza: Element,
) -> Result<()> {
    let (before, _) = update(server, to, from, |it| {
        if !it.subscription.has_to() && !it.ask {
            return false;
        }
        it.subscription = it.subscription.with_to(false);
        it.ask = false;
        true
    })
    .await?;
    if before.subscription.has_to() || before.ask {
        to_available(server, to, &stanza);
    }
    Ok(())
}

/// Send `user`'s current presence (every available resource) to `contact`.
pub fn send_current_presence(server: &Server, user: &BareJid, contact: &BareJid) {
    for (_, avail) in server.registry.available(user) {
        if let Some(mut p) = avail.element() {
            p.set("to", contact.as_str());
            crate::im::to_contact(server, contact, &p);
        }
    }
}

/// Tell `contact` that every resource of `user` is gone (subscription ended).
pub fn send_unavailable(server: &Server, user: &BareJid, contact: &BareJid) {
    for (h, _) in server.registry.available_priorities(user) {
        let p = el("presence", ns::CLIENT)
            .a("type", "unavailable")
            .a("from", h.jid.as_str())
            .a("to", contact.as_str())
            .build();
        crate::im::to_contact(server, contact, &p);
    }
}

/// Roster removal (RFC 6121 §2.5.2): cancel both directions, then delete.
pub async fn remove_contact(
    server: &Server,
    owner: &BareJid,
    contact: &BareJid,
    it: RosterItem,
) -> Result<()> {
    let blank = el("presence", ns::CLIENT).build();
    if it.subscription.has_to() || it.ask {
        route(server, owner, "unsubscribe", contact, &blank).await?;
    }
    if it.subscription.has_from() || it.pending_in {
        route(server, owner, "unsubscribed", contact, &blank).await?;
        if it.subscription.has_from() {
            send_unavailable(server, owner, contact);
        }
    }
    let version = {
        let _guard = server.roster_lock(owner).lock().await;
        server
            .storage
            .roster
            .delete_roster_item(owner.as_str(), contact.as_str())
            .await?
    };
    crate::im::roster::push(server, owner, &it, true, version);
    Ok(())
}
