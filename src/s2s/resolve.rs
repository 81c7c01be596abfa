//! Where a remote domain's server listens: a static route from the config,
//! else the domain's addresses on port 5269 (RFC 6120 §3.2.2 fallback),
//! looked up through the system resolver (so /etc/hosts applies).
//! DNS SRV records (`_xmpp-server._tcp`, XEP-0368 `_xmpps-server._tcp`)
//! are not consulted yet.

use crate::config::S2sConfig;
use std::net::SocketAddr;

pub async fn addresses(cfg: &S2sConfig, domain: &str) -> Vec<SocketAddr> {
    let target = match cfg.routes.get(domain) {
        Some(r) => r.clone(),
        None => format!("{domain}:5269"),
    };
    match tokio::net::lookup_host(target.as_str()).await {
        Ok(a) => a.collect(),
        Err(e) => {
            tracing::info!(domain, error = %e, "s2s: cannot resolve");
            Vec::new()
        }
    }
}
