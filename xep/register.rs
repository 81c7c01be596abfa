//! XEP-0077 In-Band Registration: new accounts before authentication (only
//! when `[registration] open = true`), and password change or account removal
//! for a logged-in user (always).

use super::{IqRequest, Module, Target};
use crate::router::Kill;
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::AccountCredentials;
use crate::util::Bare;
use crate::xml::{BuilderExt, ElementExt, el, ns};
use async_trait::async_trait;
use jid::BareJid;
use minidom::Element;
use std::sync::Arc;

pub struct Register;

fn field(q: &Element, name: &str) -> Option<String> {
    q.get_child(name, ns::REGISTER).map(|e| e.text())
}

/// Derive SCRAM keys (PBKDF2) off the reactor threads.
async fn credentials(password: String) -> AccountCredentials {
    tokio::task::spawn_blocking(move || AccountCredentials::from_password(&password))
        .await
        .expect("key derivation")
}

/// Registration IQ on a stream that has not authenticated yet.
pub async fn pre_auth(server: &Arc<Server>, domain: &str, iq: &Element) -> Element {
    let mut reply = match iq.first_child() {
        Some(q) => match iq.attr("type") {
            Some("get") => iq_result(
                iq,
                Some(
                    el("query", ns::REGISTER)
                        .c(el("instructions", ns::REGISTER)
                            .t("Choose a username and password.")
                            .build())
                        .c(el("username", ns::REGISTER).build())
                        .c(el("password", ns::REGISTER).build())
                        .build(),
                ),
            ),
            Some("set") => create(server, domain, iq, q).await,
            _ => error_reply(iq, "bad-request", None).expect("iq"),
        },
        None => error_reply(iq, "bad-request", None).expect("iq"),
    };
    reply.unset("to");
    reply.unset("from");
    reply
}

async fn create(server: &Arc<Server>, domain: &str, iq: &Element, q: &Element) -> Element {
    let (Some(user), Some(pass)) = (field(q, "username"), field(q, "password")) else {
        return error_reply(
            iq,
            "not-acceptable",
            Some("username and password are required"),
        )
        .expect("iq");
    };
    let Ok(jid) = BareJid::new(&format!("{user}@{domain}")) else {
        return error_reply(iq, "jid-malformed", Some("invalid username")).expect("iq");
    };
    if user.contains('@') || user.contains('/') || pass.is_empty() {
        return error_reply(iq, "not-acceptable", None).expect("iq");
    }
    let creds = credentials(pass).await;
    match server
        .storage
        .accounts
        .create_account(jid.as_str(), &creds)
        .await
    {
        Ok(true) => {
            tracing::info!(jid = %jid, "account registered in-band");
            iq_result(iq, None)
        }
        Ok(false) => error_reply(iq, "conflict", Some("username taken")).expect("iq"),
        Err(e) => {
            tracing::error!(error = %e, "registration failed");
            error_reply(iq, "internal-server-error", None).expect("iq")
        }
    }
}

#[async_trait]
impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::REGISTER]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Server(_) => vec![ns::REGISTER],
            _ => vec![],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        // A logged-in user manages their own account, addressed to the server or to itself.
        let own = req.from.bare();
        match req.target {
            Target::Server(d) if d == own.domain().as_str() => {}
            Target::Account { own: true, .. } => {}
            _ => return error_reply(req.iq, "not-allowed", None),
        }
        let iq = req.iq;
        let q = req.payload;
        match iq.attr("type") {
            Some("get") => Some(iq_result(
                iq,
                Some(
                    el("query", ns::REGISTER)
                        .c(el("registered", ns::REGISTER).build())
                        .c(el("username", ns::REGISTER)
                            .t(own.node().map(|n| n.as_str()).unwrap_or(""))
                            .build())
                        .c(el("password", ns::REGISTER).build())
                        .build(),
                ),
            )),
            Some("set") if q.has_child("remove", ns::REGISTER) => {
                if let Err(e) = server.storage.accounts.delete_account(own.as_str()).await {
                    tracing::error!(error = %e, "account removal failed");
                    return error_reply(iq, "internal-server-error", None);
                }
                tracing::info!(jid = %own, "account removed in-band");
                // Its archive preferences and avatar are gone with it.
                server.mam_prefs.put(&own, None);
                server.modules.avatars.forget(&own);
                server.storage.roster.forget(own.as_str());
                server.storage.last.forget(own.as_str());
                // Every session of the account ends; the requester's own queue is
                // flushed (with this result) before its stream closes.
                for h in server.registry.sessions(&own) {
                    h.kill(Kill::Revoked);
                }
                Some(iq_result(iq, None))
            }
            Some("set") => {
                let (Some(user), Some(pass)) = (field(q, "username"), field(q, "password")) else {
                    return error_reply(
                        iq,
                        "bad-request",
                        Some("username and password are required"),
                    );
                };
                if Some(user.to_lowercase().as_str()) != own.node().map(|n| n.as_str())
                    || pass.is_empty()
                {
                    return error_reply(
                        iq,
                        "not-allowed",
                        Some("you can only change your own password"),
                    );
                }
                let creds = credentials(pass).await;
                match server
                    .storage
                    .accounts
                    .set_credentials(own.as_str(), &creds)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(jid = %own, "password changed");
                        Some(iq_result(iq, None))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "password change failed");
                        error_reply(iq, "internal-server-error", None)
                    }
                }
            }
            _ => error_reply(iq, "bad-request", None),
        }
    }
}
