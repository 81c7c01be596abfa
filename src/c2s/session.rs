//! A bound client session: reads stanzas, stamps and routes them, writes what
//! the router queued for it, pings it when silent, and cleans up on any end.

use super::Bound;
use super::conn::{ConnError, XmlConn};
use crate::im::{self, presence::PresenceState};
use crate::router::{Kill, SessionHandle};
use crate::server::Server;
use crate::stanza::{error_reply, is_stanza};
use crate::xep::{IqRequest, Target};
use crate::xml::{BuilderExt, ElementExt, StreamEvent, el, ns};
use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Stanzas written per flush at most.
const WRITE_BATCH: usize = 64;

enum End {
    /// The client closed its stream: answer with ours.
    Closed,
    /// The connection broke.
    Lost,
    StreamError(&'static str, Option<String>),
}

struct Session {
    server: Arc<Server>,
    jid: FullJid,
    bare: BareJid,
    handle: SessionHandle,
    presence: PresenceState,
    /// Id of our outstanding ping, if any.
    ping_id: Option<String>,
}

pub async fn run(server: Arc<Server>, mut conn: XmlConn, bound: Bound) {
    let Bound { handle, mut rx } = bound;
    let mut s = Session {
        jid: handle.jid.clone(),
        bare: handle.jid.to_bare(),
        server: server.clone(),
        handle: handle.clone(),
        presence: PresenceState::default(),
        ping_id: None,
    };
    let ping_interval = Duration::from_secs(server.config.c2s.ping_interval.max(1));
    let ping_timeout = Duration::from_secs(server.config.c2s.ping_timeout.max(1));
    let mut last_read = Instant::now();
    let mut out: Vec<u8> = Vec::new();

    let end = 'run: loop {
        while let Some(ev) = conn.pop() {
            match ev {
                StreamEvent::Stanza(e) => {
                    if let Err(end) = s.stanza(e).await {
                        break 'run end;
                    }
                }
                StreamEvent::Close => break 'run End::Closed,
                StreamEvent::Header(_) => break 'run End::StreamError("not-well-formed", None),
            }
        }
        let deadline = match s.ping_id {
            Some(_) => last_read + ping_interval + ping_timeout,
            None => last_read + ping_interval,
        };
        tokio::select! {
            biased;
            k = handle.shared.killed() => {
                break End::StreamError(k.condition(), Some(match k {
                    Kill::Conflict => "replaced by a new connection with the same resource".into(),
                    Kill::Overflow => "too many stanzas waiting to be read".into(),
                    Kill::Revoked => "account credentials changed".into(),
                    Kill::Shutdown => "server shutting down".into(),
                }));
            }
            Some(first) = rx.recv() => {
                out.clear();
                out.extend_from_slice(&first);
                for _ in 1..WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(b) => out.extend_from_slice(&b),
                        Err(_) => break,
                    }
                }
                // A client that stops reading blocks this write; a kill (queue
                // overflow, conflict) must still end the session promptly.
                let written = tokio::select! {
                    r = conn.write(&out) => r.is_ok(),
                    _ = handle.shared.killed() => false,
                };
                if !written {
                    break End::Lost;
                }
                if out.capacity() > 64 * 1024 {
                    out = Vec::new();
                }
            }
            r = conn.read_some() => match r {
                Ok(()) => {
                    last_read = Instant::now();
                    s.ping_id = None;
                }
                Err(ConnError::Xml(x)) => break End::StreamError(x.condition(), Some(x.text().to_string())),
                Err(_) => break End::Lost,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if s.ping_id.is_some() {
                    tracing::info!(jid = %s.jid, "no answer to ping; dropping session");
                    break End::StreamError("connection-timeout", Some("no answer to ping".into()));
                }
                let id = format!("ping-{}", super::new_id());
                let ping = el("iq", ns::CLIENT)
                    .a("type", "get").a("id", id.as_str())
                    .a("from", s.bare.domain().as_str()).a("to", s.jid.as_str())
                    .c(el("ping", ns::PING).build()).build();
                s.ping_id = Some(id);
                if conn.write(&ping.to_bytes()).await.is_err() {
                    break End::Lost;
                }
            }
        }
    };

    // Leave the registry first so nothing new is queued, then tell contacts.
    server.registry.unbind(&s.jid, handle.id);
    if let Err(e) =
        im::presence::broadcast_unavailable(&server, &handle, &mut s.presence, None).await
    {
        tracing::warn!(error = %e, "unavailable broadcast failed");
    }
    // Flush what was queued (e.g. our own replies) when the stream is still usable.
    if !matches!(end, End::Lost) {
        out.clear();
        while let Ok(b) = rx.try_recv() {
            out.extend_from_slice(&b);
        }
        if !out.is_empty() {
            let _ = conn.write(&out).await;
        }
    }
    match end {
        End::Closed => {
            let _ = conn.write(b"</stream:stream>").await;
            conn.close().await;
        }
        End::Lost => {}
        End::StreamError(cond, text) => {
            conn.stream_error(cond, text.as_deref(), s.bare.domain().as_str())
                .await;
        }
    }
    tracing::info!(jid = %s.jid, "session ended");
}

impl Session {
    fn send(&self, el: &Element) {
        self.handle.send(Bytes::from(el.to_bytes()));
    }

    fn reply_error(&self, stanza: &Element, condition: &str, text: Option<&str>) {
        if let Some(mut r) = error_reply(stanza, condition, text) {
            r.set("to", self.jid.as_str());
            self.send(&r);
        }
    }

    async fn stanza(&mut self, mut e: Element) -> Result<(), End> {
        if !is_stanza(&e) {
            if e.ns() == ns::CLIENT || e.ns() == ns::STREAM {
                return Err(End::StreamError("unsupported-stanza-type", None));
            }
            return Err(End::StreamError(
                "unsupported-stanza-type",
                Some(format!("{} is not supported", e.ns())),
            ));
        }
        // RFC 6120 §8.1.2.1: a client cannot speak as anyone else.
        if let Some(from) = e.attr("from") {
            let ok = Jid::new(from)
                .is_ok_and(|j| j.as_str() == self.jid.as_str() || j.as_str() == self.bare.as_str());
            if !ok {
                return Err(End::StreamError("invalid-from", None));
            }
        }
        e.set("from", self.jid.as_str());
        let to = match e.attr("to").map(Jid::new) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(_)) => {
                self.reply_error(&e, "jid-malformed", None);
                return Ok(());
            }
        };
        let result = match e.name() {
            "message" => {
                let to = to.unwrap_or_else(|| Jid::from(self.bare.clone()));
                im::message::from_session(&self.server, &self.jid, e, to).await;
                Ok(())
            }
            "presence" => {
                im::presence::outbound(&self.server, &self.handle, &mut self.presence, e, to).await
            }
            _ => {
                self.iq(e, to).await;
                Ok(())
            }
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "storage failure while handling a stanza");
        }
        Ok(())
    }

    async fn iq(&mut self, iq: Element, to: Option<Jid>) {
        let kind = iq.attr("type").unwrap_or("");
        if iq.attr("id").is_none() || !matches!(kind, "get" | "set" | "result" | "error") {
            self.reply_error(
                &iq,
                "bad-request",
                Some("an IQ needs an id and a valid type"),
            );
            return;
        }
        let request = matches!(kind, "get" | "set");
        if request && iq.children().count() != 1 {
            self.reply_error(
                &iq,
                "bad-request",
                Some("an IQ request carries exactly one payload"),
            );
            return;
        }
        let server = self.server.clone();
        let target = match &to {
            None => Target::Account {
                jid: self.bare.clone(),
                own: true,
            },
            Some(j) if !server.config.serves(j.domain().as_str()) => {
                if request {
                    self.reply_error(&iq, "remote-server-not-found", None);
                }
                return;
            }
            Some(j) if j.node().is_none() && j.resource().is_none() => {
                Target::Server(j.domain().to_string())
            }
            Some(j) => match j.try_as_full() {
                Ok(full) => {
                    match server.registry.session(full) {
                        Some(h) => {
                            h.send(Bytes::from(iq.to_bytes()));
                        }
                        None if request => self.reply_error(&iq, "service-unavailable", None),
                        None => {}
                    }
                    return;
                }
                Err(bare) => Target::Account {
                    own: bare == &self.bare,
                    jid: bare.clone(),
                },
            },
        };
        if !request {
            // Answers to the server (e.g. our pings) need nothing more.
            return;
        }
        let payload = iq.first_child().expect("checked above");
        if payload.is("session", ns::SESSION) && kind == "set" {
            // RFC 3921 session establishment: a no-op that older clients still send after bind.
            let mut reply = crate::stanza::iq_result(&iq, None);
            reply.set("to", self.jid.as_str());
            self.send(&reply);
            return;
        }
        if let Target::Account { own: true, .. } = target
            && payload.is("query", ns::ROSTER)
        {
            let mut reply = im::roster::handle_iq(&server, &self.jid, &iq, payload).await;
            reply.set("to", self.jid.as_str());
            self.send(&reply);
            return;
        }
        if let Target::Account { jid, own: false } = &target
            && !server
                .storage
                .accounts
                .account_exists(jid.as_str())
                .await
                .unwrap_or(false)
        {
            self.reply_error(&iq, "service-unavailable", None);
            return;
        }
        let req = IqRequest {
            from: &self.jid,
            target: &target,
            iq: &iq,
            payload,
        };
        match server.modules.handle_iq(&server, &req).await {
            Some(mut reply) => {
                reply.set("to", self.jid.as_str());
                self.send(&reply);
            }
            None => self.reply_error(&iq, "service-unavailable", None),
        }
    }
}
