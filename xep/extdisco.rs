//! XEP-0215 External Service Discovery: configured STUN/TURN servers, with
//! time-limited TURN credentials from a shared secret (the "TURN REST API"
//! scheme coturn and others implement: username `<expiry>:<user>`, password
//! base64(HMAC-SHA1(secret, username))), so audio/video calls work.

use super::{IqRequest, Module, Target};
use crate::config::ExternalService;
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::util::Bare;
use crate::util::xmpp_datetime;
use crate::xml::{BuilderExt, el};
use async_trait::async_trait;
use base64::Engine;
use hmac::{KeyInit, Mac};
use minidom::Element;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NS: &str = "urn:xmpp:extdisco:2";

pub struct ExtDisco;

/// The TURN REST credentials for `user`, valid until `expires` (unix seconds).
pub fn turn_credentials(secret: &str, user: &str, expires: u64) -> (String, String) {
    let username = format!("{expires}:{user}");
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

fn service_element(s: &ExternalService, user: &str) -> Element {
    let mut b = el("service", NS)
        .a("type", s.kind.as_str())
        .a("host", s.host.as_str())
        .a("port", s.port.to_string())
        .a("transport", s.transport.as_str());
    if let Some(secret) = &s.secret {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expires = now + s.ttl;
        let (username, password) = turn_credentials(secret, user, expires);
        b = b
            .a("restricted", "1")
            .a("username", username)
            .a("password", password)
            .a(
                "expires",
                xmpp_datetime(UNIX_EPOCH + Duration::from_secs(expires)),
            );
    }
    b.build()
}

#[async_trait]
impl Module for ExtDisco {
    fn name(&self) -> &'static str {
        "extdisco"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Server(_) => vec![NS],
            _ => vec![],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        if !matches!(req.target, Target::Server(_)) || req.iq.attr("type") != Some("get") {
            return error_reply(req.iq, "bad-request", None);
        }
        let want = req.payload.attr("type");
        let user = req.from.bare().to_string();
        let mut q = el("services", NS);
        for s in server
            .config
            .modules
            .extdisco
            .services
            .iter()
            .filter(|s| want.is_none_or(|w| w == s.kind))
        {
            q = q.c(service_element(s, &user));
        }
        Some(iq_result(req.iq, Some(q.build())))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn turn_rest_credentials() {
        // HMAC-SHA1("secret", "1700000000:alice@localhost"), base64.
        let (u, p) = super::turn_credentials("secret", "alice@localhost", 1_700_000_000);
        assert_eq!(u, "1700000000:alice@localhost");
        assert_eq!(p.len(), 28);
        assert_eq!(
            super::turn_credentials("secret", "alice@localhost", 1_700_000_000).1,
            p
        );
        assert_ne!(
            super::turn_credentials("other", "alice@localhost", 1_700_000_000).1,
            p
        );
    }
}
