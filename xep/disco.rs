//! XEP-0030 Service Discovery for the server and for accounts.

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::xml::{BuilderExt, el, ns};
use async_trait::async_trait;
use minidom::Element;
use std::sync::Arc;

pub struct Disco;

#[async_trait]
impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }
    fn features(&self, _t: &Target) -> Vec<&'static str> {
        vec![ns::DISCO_INFO, ns::DISCO_ITEMS]
    }

    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if req.iq.attr("type") != Some("get") {
            return error_reply(req.iq, "bad-request", None);
        }
        if req.payload.attr("node").is_some() {
            return error_reply(req.iq, "item-not-found", None);
        }
        if req.payload.is("query", ns::DISCO_ITEMS) {
            let mut items = el("query", ns::DISCO_ITEMS);
            if let Target::Server(domain) = req.target {
                let suffix = format!(".{domain}");
                let upload = server
                    .upload
                    .domains()
                    .iter()
                    .map(|d| (d, "HTTP File Upload"));
                let muc = server.muc.domains().iter().map(|d| (d, "Chatrooms"));
                for (d, name) in muc.chain(upload).filter(|(d, _)| d.ends_with(&suffix)) {
                    items = items.c(el("item", ns::DISCO_ITEMS)
                        .a("jid", d.as_str())
                        .a("name", name)
                        .build());
                }
            }
            return Some(iq_result(req.iq, Some(items.build())));
        }
        let mut q = el("query", ns::DISCO_INFO);
        q = match req.target {
            Target::Server(_) => q.c(el("identity", ns::DISCO_INFO)
                .a("category", "server")
                .a("type", "im")
                .a("name", "xmppd")
                .build()),
            Target::Account { .. } => {
                let q = q.c(el("identity", ns::DISCO_INFO)
                    .a("category", "account")
                    .a("type", "registered")
                    .build());
                if server.modules.enabled("pep") {
                    q.c(el("identity", ns::DISCO_INFO)
                        .a("category", "pubsub")
                        .a("type", "pep")
                        .build())
                } else {
                    q
                }
            }
        };
        let mut features = server.modules.features(req.target);
        if matches!(req.target, Target::Server(_)) {
            features.push(ns::ROSTER_VER);
            features.push(ns::PRE_APPROVAL);
        }
        features.sort_unstable();
        features.dedup();
        for f in features {
            q = q.c(el("feature", ns::DISCO_INFO).a("var", f).build());
        }
        if matches!(req.target, Target::Server(_))
            && !server.config.modules.contact_addresses.is_empty()
        {
            q = q.c(contact_addresses(server));
        }
        Some(iq_result(req.iq, Some(q.build())))
    }
}

/// XEP-0157 server information form (contact addresses).
fn contact_addresses(server: &Server) -> Element {
    let mut x = el("x", ns::DATA_FORMS)
        .a("type", "result")
        .c(el("field", ns::DATA_FORMS)
            .a("var", "FORM_TYPE")
            .a("type", "hidden")
            .c(el("value", ns::DATA_FORMS)
                .t("http://jabber.org/network/serverinfo")
                .build())
            .build());
    for (kind, uris) in &server.config.modules.contact_addresses {
        let mut f = el("field", ns::DATA_FORMS)
            .a("var", format!("{kind}-addresses"))
            .a("type", "list-multi");
        for u in uris {
            f = f.c(el("value", ns::DATA_FORMS).t(u).build());
        }
        x = x.c(f.build());
    }
    x.build()
}
