//! XEP-0054 vcard-temp: each account sets its own vCard; anyone may read it.

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::xml::{ElementExt, el, ns};
use async_trait::async_trait;
use minidom::Element;
use std::sync::Arc;

pub struct VCard;

#[async_trait]
impl Module for VCard {
    fn name(&self) -> &'static str {
        "vcard"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::VCARD]
    }
    fn features(&self, _t: &Target) -> Vec<&'static str> {
        vec![ns::VCARD]
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if !req.payload.is("vCard", ns::VCARD) {
            return error_reply(req.iq, "bad-request", None);
        }
        let (jid, own) = match req.target {
            Target::Account { jid, own } => (jid, *own),
            Target::Server(_) => {
                return if req.iq.attr("type") == Some("get") {
                    Some(iq_result(req.iq, Some(el("vCard", ns::VCARD).build())))
                } else {
                    error_reply(req.iq, "forbidden", None)
                };
            }
        };
        match req.iq.attr("type") {
            Some("get") => {
                let stored = match server.storage.vcards.vcard(jid.as_str()).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(error = %e, "vcard load failed");
                        return error_reply(req.iq, "internal-server-error", None);
                    }
                };
                let card = stored
                    .and_then(|x| x.parse::<Element>().ok())
                    .unwrap_or_else(|| el("vCard", ns::VCARD).build());
                Some(iq_result(req.iq, Some(card)))
            }
            Some("set") if own => {
                let xml = String::from_utf8(req.payload.to_bytes()).unwrap_or_default();
                if let Err(e) = server.storage.vcards.set_vcard(jid.as_str(), &xml).await {
                    tracing::error!(error = %e, "vcard save failed");
                    return error_reply(req.iq, "internal-server-error", None);
                }
                Some(iq_result(req.iq, None))
            }
            _ => error_reply(req.iq, "forbidden", None),
        }
    }
}
