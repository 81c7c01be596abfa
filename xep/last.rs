//! XEP-0012 Last Activity: the server's uptime, and for an account how long
//! ago its last resource went offline ("last seen") with its last status.
//! Only the account itself and contacts it shares presence with may ask.

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::now_unix;
use crate::util::Bare;
use crate::xml::{BuilderExt, el};
use async_trait::async_trait;
use jid::BareJid;
use minidom::Element;
use std::sync::Arc;

pub const NS: &str = "jabber:iq:last";

pub struct Last;

fn answer(iq: &Element, seconds: u64, status: &str) -> Element {
    let mut q = el("query", NS).a("seconds", seconds.to_string());
    if !status.is_empty() {
        q = q.t(status);
    }
    iq_result(iq, Some(q.build()))
}

/// Record that the account's last resource went offline (called from presence).
pub async fn record(server: &Server, owner: &BareJid, status: &str) {
    if let Err(e) = server
        .storage
        .last
        .set_last_activity(owner.as_str(), now_unix(), status)
        .await
    {
        tracing::warn!(error = %e, "saving last activity failed");
    }
}

#[async_trait]
impl Module for Last {
    fn name(&self) -> &'static str {
        "last"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn features(&self, _t: &Target) -> Vec<&'static str> {
        vec![NS]
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if req.iq.attr("type") != Some("get") {
            return error_reply(req.iq, "bad-request", None);
        }
        let (jid, own) = match req.target {
            Target::Server(_) => {
                return Some(answer(req.iq, server.started.elapsed().as_secs(), ""));
            }
            Target::Account { jid, own } => (jid, *own),
        };
        let requester = req.from.bare();
        let allowed = own
            || server
                .storage
                .roster
                .roster_item(jid.as_str(), requester.as_str())
                .await
                .ok()
                .flatten()
                .is_some_and(|i| i.subscription.has_from());
        if !allowed {
            return error_reply(req.iq, "forbidden", None);
        }
        if !server.registry.available_priorities(jid).is_empty() {
            return Some(answer(req.iq, 0, ""));
        }
        match server.storage.last.last_activity(jid.as_str()).await {
            Ok(Some((seen, status))) => {
                Some(answer(req.iq, (now_unix() - seen).max(0) as u64, &status))
            }
            Ok(None) => error_reply(req.iq, "item-not-found", None),
            Err(e) => {
                tracing::error!(error = %e, "loading last activity failed");
                error_reply(req.iq, "internal-server-error", None)
            }
        }
    }
}
