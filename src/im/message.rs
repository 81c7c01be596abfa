//! Message routing (RFC 6121 §8.5) for local recipients.

use crate::im::bounce;
use crate::router::to_bytes;
use crate::server::Server;
use jid::{BareJid, Jid};
use minidom::Element;

/// Route a message from a local session (`from` already stamped).
pub async fn route(server: &Server, msg: Element, to: Jid) {
    let kind = msg.attr("type").unwrap_or("normal").to_string();
    let kind = kind.as_str();
    if !server.config.serves(to.domain().as_str()) {
        // Federation is not there yet.
        bounce(server, &msg, "remote-server-not-found", None);
        return;
    }
    if to.node().is_none() {
        // Messages to the server itself: nothing handles them yet.
        if !matches!(kind, "error" | "headline") {
            bounce(server, &msg, "service-unavailable", None);
        }
        return;
    }
    if let Ok(full) = to.try_as_full()
        && let Some(h) = server.registry.session(full)
    {
        h.send(to_bytes(&msg));
        return;
    }
    let bare = to.to_bare();
    if to.resource().is_some() && !matches!(kind, "chat" | "normal") {
        // RFC 6121 §8.5.3.2.1: only chat/normal fall back to the bare JID.
        if kind == "groupchat" {
            bounce(server, &msg, "service-unavailable", None);
        }
        return;
    }
    deliver_bare(server, msg, kind, &bare).await;
}

async fn deliver_bare(server: &Server, msg: Element, kind: &str, bare: &BareJid) {
    let available = server.registry.available(bare);
    let targets: Vec<_> = match kind {
        "groupchat" => {
            bounce(server, &msg, "service-unavailable", None);
            return;
        }
        "error" => return,
        "headline" => available.iter().filter(|(_, a)| a.priority >= 0).collect(),
        _ => {
            let best = available
                .iter()
                .map(|(_, a)| a.priority)
                .max()
                .unwrap_or(-1);
            if best < 0 {
                Vec::new()
            } else {
                available
                    .iter()
                    .filter(|(_, a)| a.priority == best)
                    .collect()
            }
        }
    };
    if !targets.is_empty() {
        let bytes = to_bytes(&msg);
        for (h, _) in targets {
            h.send(bytes.clone());
        }
        return;
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
    if exists {
        // No offline storage module yet (issue 4): tell the sender it was not delivered.
        bounce(
            server,
            &msg,
            "service-unavailable",
            Some("recipient is offline"),
        );
    } else {
        bounce(server, &msg, "service-unavailable", None);
    }
}
