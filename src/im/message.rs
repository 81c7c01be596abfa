//! Message routing (RFC 6121 §8.5) for local recipients, with carbons
//! (XEP-0280) and offline storage (XEP-0160) where those modules are on.

use crate::im::bounce;
use crate::router::to_bytes;
use crate::server::Server;
use crate::util::Bare;
use crate::xep::{blocking, carbons, mam, offline};
use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;

/// A message from one of our sessions (`from` already stamped).
pub async fn from_session(server: &Server, sender: &FullJid, msg: Element, to: Jid) {
    from_session_many(server, sender, vec![(msg, to)]).await;
}

/// Consecutive messages from one session, handled in order. Their archive
/// rows share one commit, so a client that sends several at once waits for
/// storage once, not once per message.
pub async fn from_session_many(server: &Server, sender: &FullJid, msgs: Vec<(Element, Jid)>) {
    let sender_bare = sender.bare();
    let mut ready = Vec::with_capacity(msgs.len());
    let mut rows = Vec::new();
    for (mut msg, to) in msgs {
        if blocking::blocks(server, &sender_bare, &to).await {
            if let Some(r) = blocking::blocked_reply(&msg) {
                crate::im::to_jid(server, &Jid::from(sender.clone()), &r);
            }
            continue;
        }
        let (r, wire) = mam::archive_rows(server, &sender_bare, &to, &mut msg).await;
        rows.extend(r);
        ready.push((msg, to, wire));
    }
    // Durable before delivered: archived (both sides) first, then routed.
    if !mam::store_rows(server, rows).await {
        for (msg, _, _) in ready {
            bounce(
                server,
                &msg,
                "internal-server-error",
                Some("could not store the message"),
            );
        }
        return;
    }
    for (msg, to, wire) in ready {
        carbons::copy_sent(server, sender, &sender_bare, &msg);
        route_serialized(server, msg, to, wire).await;
    }
}

/// Route a message to `to`, whatever its origin.
pub async fn route(server: &Server, msg: Element, to: Jid) {
    route_serialized(server, msg, to, None).await;
}

/// [`route`], with the message already serialized when the caller has it.
async fn route_serialized(server: &Server, msg: Element, to: Jid, wire: Option<Bytes>) {
    if server.components.handles(to.domain().as_str()) {
        if !server.components.deliver(to.domain().as_str(), &msg) {
            bounce(server, &msg, "service-unavailable", None);
        }
        return;
    }
    if server.muc.handles(to.domain().as_str()) {
        server.muc.handle_message(server, msg).await;
        return;
    }
    // RFC 6121 §5.2.2: an unknown type is handled as normal.
    let kind = match msg.attr("type") {
        Some("chat") => "chat",
        Some("groupchat") => "groupchat",
        Some("headline") => "headline",
        Some("error") => "error",
        _ => "normal",
    };
    if !server.config.serves(to.domain().as_str()) {
        crate::s2s::send(server, msg);
        return;
    }
    if to.node().is_none() {
        // Messages to the server itself: nothing handles them yet.
        if !matches!(kind, "error" | "headline") {
            bounce(server, &msg, "service-unavailable", None);
        }
        return;
    }
    let bare = to.bare();
    if server.modules.enabled("blocking")
        && let Some(from) = msg.attr("from").and_then(|f| Jid::new(f).ok())
        && blocking::blocks(server, &bare, &from).await
    {
        // XEP-0191 §3.5: the blocked sender learns nothing more than this.
        if kind != "error" {
            bounce(server, &msg, "service-unavailable", None);
        }
        return;
    }
    // A session that refuses it is going away (its queue overflowed): fall through.
    if let Ok(full) = to.try_as_full()
        && let Some(h) = server.registry.session(full)
        && h.send(wire.clone().unwrap_or_else(|| to_bytes(&msg)))
    {
        carbons::copy_received(server, &bare, &[h.id], &msg);
        return;
    }
    if to.resource().is_some() && !matches!(kind, "chat" | "normal") {
        // RFC 6121 §8.5.3.2.1: only chat/normal fall back to the bare JID.
        if kind == "groupchat" {
            bounce(server, &msg, "service-unavailable", None);
        }
        return;
    }
    deliver_bare(server, msg, kind, &bare, wire).await;
}

async fn deliver_bare(
    server: &Server,
    msg: Element,
    kind: &str,
    bare: &BareJid,
    wire: Option<Bytes>,
) {
    let available = server.registry.available_priorities(bare);
    let targets: Vec<_> = match kind {
        "groupchat" => {
            bounce(server, &msg, "service-unavailable", None);
            return;
        }
        "error" => return,
        "headline" => available.iter().filter(|(_, p)| *p >= 0).collect(),
        _ => {
            let best = available.iter().map(|(_, p)| *p).max().unwrap_or(-1);
            if best < 0 {
                Vec::new()
            } else {
                available.iter().filter(|(_, p)| *p == best).collect()
            }
        }
    };
    if !targets.is_empty() {
        let bytes = wire.unwrap_or_else(|| to_bytes(&msg));
        let delivered: Vec<u64> = targets
            .iter()
            .filter(|(h, _)| h.send(bytes.clone()))
            .map(|(h, _)| h.id)
            .collect();
        if !delivered.is_empty() {
            carbons::copy_received(server, bare, &delivered, &msg);
            return;
        }
        // Every target refused it (overflowing sessions): keep it offline.
    }
    if kind == "headline" {
        return;
    }
    let exists = match server.storage.accounts.account_exists(bare.as_str()).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            bounce(server, &msg, "internal-server-error", None);
            return;
        }
    };
    if !exists {
        bounce(server, &msg, "service-unavailable", None);
        return;
    }
    if !server.modules.enabled("offline") {
        bounce(
            server,
            &msg,
            "service-unavailable",
            Some("recipient is offline"),
        );
        return;
    }
    match offline::store(server, bare, &msg).await {
        offline::Stored::Yes => crate::xep::push::offline_message(server, bare, &msg).await,
        offline::Stored::NotStorable => {}
        offline::Stored::Full => bounce(
            server,
            &msg,
            "service-unavailable",
            Some("the recipient's offline storage is full"),
        ),
        offline::Stored::Failed => bounce(server, &msg, "internal-server-error", None),
    }
}
