//! XEP-0092 Software Version of the server.

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::xml::{BuilderExt, el, ns};
use async_trait::async_trait;
use minidom::Element;
use std::sync::Arc;

pub struct Version;

#[async_trait]
impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Server(_) => vec![ns::VERSION],
            _ => vec![],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if !matches!(req.target, Target::Server(_)) {
            return error_reply(req.iq, "service-unavailable", None);
        }
        if req.iq.attr("type") != Some("get") {
            return error_reply(req.iq, "bad-request", None);
        }
        let mut q = el("query", ns::VERSION)
            .c(el("name", ns::VERSION).t("xmppd").build())
            .c(el("version", ns::VERSION)
                .t(env!("CARGO_PKG_VERSION"))
                .build());
        if !server.config.modules.version.hide_os {
            q = q.c(el("os", ns::VERSION).t(std::env::consts::OS).build());
        }
        Some(iq_result(req.iq, Some(q.build())))
    }
}
