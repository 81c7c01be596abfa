//! XEP-0202 Entity Time, answered in UTC.

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::util::xmpp_datetime;
use crate::xml::{BuilderExt, el, ns};
use async_trait::async_trait;
use minidom::Element;
use std::sync::Arc;

pub struct Time;

#[async_trait]
impl Module for Time {
    fn name(&self) -> &'static str {
        "time"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::TIME]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Server(_) => vec![ns::TIME],
            _ => vec![],
        }
    }
    async fn handle_iq(&self, _server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if !matches!(req.target, Target::Server(_)) {
            return error_reply(req.iq, "service-unavailable", None);
        }
        if req.iq.attr("type") != Some("get") {
            return error_reply(req.iq, "bad-request", None);
        }
        let t = el("time", ns::TIME)
            .c(el("tzo", ns::TIME).t("+00:00").build())
            .c(el("utc", ns::TIME)
                .t(&xmpp_datetime(std::time::SystemTime::now()))
                .build())
            .build();
        Some(iq_result(req.iq, Some(t)))
    }
}
