//! XEP-0199 XMPP Ping: the server answers; the session loop also pings
//! silent clients to find dead connections (see c2s/session.rs).

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::xml::ns;
use async_trait::async_trait;
use minidom::Element;
use std::sync::Arc;

pub struct Ping;

#[async_trait]
impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    fn features(&self, _t: &Target) -> Vec<&'static str> {
        vec![ns::PING]
    }
    async fn handle_iq(&self, _server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if req.iq.attr("type") != Some("get") {
            return error_reply(req.iq, "bad-request", None);
        }
        Some(iq_result(req.iq, None))
    }
}
