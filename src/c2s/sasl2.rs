//! The SASL2 side of negotiation (XEP-0388): the stream feature, token
//! logins (XEP-0484 FAST) and what happens once authenticated — inline
//! resumption (XEP-0198), Bind2 (XEP-0386) or, without either, classic
//! resource binding on the same stream (SASL2 never restarts it).

use super::{Abort, Bound, Negotiation, XmlConn};
use crate::net::Transport;
use crate::sasl::{SaslFailure, ht};
use crate::xep::sasl2::{self, Success};
use crate::xep::sm::{self, Resume, SmState};
use crate::xep::{bind2, fast};
use crate::xml::{BuilderExt, ElementExt, el};
use jid::FullJid;
use minidom::Element;
use std::sync::atomic::Ordering;

impl Negotiation {
    fn fast_enabled(&self) -> bool {
        self.server
            .config
            .modules
            .enabled
            .iter()
            .any(|m| m == "fast")
    }

    /// `<authentication/>` with the same mechanisms as SASL and what a
    /// client may inline: Bind2, resumption, FAST.
    pub(super) fn sasl2_feature(&self, conn: &XmlConn) -> Element {
        let cb = conn.io.can_bind_channel();
        let mut inline = vec![bind2::feature(&self.server), el("sm", sm::NS).build()];
        if self.fast_enabled() {
            inline.push(fast::feature(cb));
        }
        sasl2::feature(&self.mechanisms(conn), inline)
    }

    /// An HT-* mechanism: log in with a FAST token. `true` once authenticated.
    pub(super) async fn fast_auth(&mut self, conn: &mut XmlConn) -> Result<bool, Abort> {
        let req = self.sasl2.clone().expect("SASL2 request");
        let cb_data = conn.io.channel_binding();
        let Some(cb) =
            ht::binding_for(&req.mechanism, cb_data.as_deref()).filter(|_| self.fast_enabled())
        else {
            return self
                .fail(conn, SaslFailure::InvalidMechanism, None)
                .await
                .map(|_| false);
        };
        self.throttle().await;
        let msg = req.initial_response.clone().unwrap_or_default();
        let (user, proof) = match ht::parse_initial(&msg) {
            Ok(p) => p,
            Err(f) => return self.fail(conn, f, None).await.map(|_| false),
        };
        // Tokens belong to one installation: no user-agent id, no token.
        let (Some(jid), Some(agent)) = (self.user_jid(&user), req.user_agent.id.clone()) else {
            return self
                .fail(conn, SaslFailure::NotAuthorized, None)
                .await
                .map(|_| false);
        };
        let count = req.fast.as_ref().and_then(|f| f.count);
        match fast::verify(
            &self.server,
            jid.as_str(),
            &agent,
            &req.mechanism,
            proof,
            cb,
            count,
        )
        .await
        {
            Ok((token, answer)) => {
                tracing::debug!(jid = %jid, mech = %req.mechanism, "FAST token login");
                if let Some(r) = self.sasl2.as_mut() {
                    r.used_token = Some(token.token);
                }
                self.succeed(conn, jid, Some(answer)).await.map(|_| true)
            }
            Err(f) => self.fail(conn, f, Some(&jid)).await.map(|_| false),
        }
    }

    /// Authenticated by SASL2: tokens, then resume, Bind2, or classic bind.
    pub(super) async fn after_sasl2(
        &mut self,
        conn: &mut XmlConn,
        mut success: Success,
    ) -> Result<Bound, Abort> {
        let req = self.sasl2.take().expect("SASL2 request");
        let bare = self.authed.clone().expect("authenticated");
        let agent = req.user_agent.id.as_deref();
        if let Some(agent) = agent
            && self.fast_enabled()
        {
            if req.fast.as_ref().is_some_and(|f| f.invalidate) {
                // Logging out of this client: its tokens end here.
                self.server
                    .storage
                    .fast
                    .delete_fast_tokens(bare.as_str(), Some(agent))
                    .await
                    .map_err(internal)?;
            } else if let Some(mech) = req
                .request_token
                .as_deref()
                .filter(|m| ht::mechanisms(conn.io.can_bind_channel()).contains(m))
            {
                let token = fast::issue(
                    &self.server,
                    bare.as_str(),
                    agent,
                    mech,
                    req.used_token.as_deref(),
                )
                .await
                .map_err(internal)?;
                success.extra.push(token);
            }
        }

        let mut results = Vec::new();
        if let Some((previd, h)) = &req.resume {
            let taken = std::mem::replace(
                conn,
                XmlConn::new(Transport::Gone, &self.server.config.limits),
            );
            let resume = Resume {
                conn: Box::new(taken),
                h: *h,
                sasl2: Some(success.clone()),
            };
            match self.server.resumptions.take_over(previd, &bare, resume) {
                Ok(jid) => {
                    tracing::info!(jid = %jid, "resuming stream (SASL2)");
                    return Err(Abort::Resumed);
                }
                Err(back) => {
                    *conn = *back.conn;
                    let failed: Element = String::from_utf8(sm::failed("item-not-found"))
                        .expect("utf-8")
                        .parse()
                        .expect("well-formed");
                    results.push(failed);
                }
            }
        }

        let Some(bind) = req.bind.as_ref() else {
            // No Bind2: the client binds with the RFC 6120 IQ on this stream.
            conn.write(&success.to_element(bare.as_str(), results).to_bytes())
                .await?;
            return self.bind(conn).await;
        };
        let bind = bind2::Request::parse(bind);
        let resource = bind2::resource(&bare, bind.tag.as_deref(), agent);
        let full = FullJid::new(&format!("{bare}/{resource}"))
            .or_else(|_| FullJid::new(&format!("{bare}/{}", bind2::resource(&bare, None, agent))))
            .map_err(|_| Abort::StreamError("internal-server-error", None))?;
        let Some((handle, rx)) = self.bind_session(&full) else {
            // Nothing was bound: the login fails as a whole, and may be retried.
            self.authed = None;
            conn.write(&sasl2::failure(
                SaslFailure::TemporaryAuthFailure,
                Some("too many resources"),
            ))
            .await?;
            return Err(Abort::StreamError(
                "policy-violation",
                Some("too many resources".into()),
            ));
        };
        if bind.carbons && self.server.modules.enabled("carbons") {
            handle.shared.carbons.store(true, Ordering::Relaxed);
        }
        let mut bound = el("bound", bind2::NS);
        let sm_state = match bind.sm {
            Some(resume) => {
                let id = resume.then(super::new_id);
                let mut enabled = el("enabled", sm::NS);
                if let Some(id) = &id {
                    let max = self.server.config.c2s.resume_timeout.to_string();
                    enabled = enabled
                        .a("id", id.as_str())
                        .a("resume", "true")
                        .a("max", max);
                }
                bound = bound.c(enabled.build());
                Some(SmState::new(id))
            }
            None => None,
        };
        results.push(bound.build());
        conn.write(&success.to_element(full.as_str(), results).to_bytes())
            .await?;
        tracing::info!(jid = %full, "bound (Bind2)");
        Ok(Bound {
            handle,
            rx,
            sm: sm_state,
            inactive: bind.inactive,
        })
    }
}

fn internal(e: impl std::fmt::Display) -> Abort {
    tracing::error!(error = %e, "SASL2 storage failure");
    Abort::StreamError("internal-server-error", None)
}
