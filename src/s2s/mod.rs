//! Federation: server-to-server streams (RFC 6120) as a route of the router.
//!
//! Stanzas for a domain that is not ours go to `send`, which queues them on
//! the outgoing link to that domain (one task per (local, remote) pair:
//! resolve, connect, STARTTLS, XEP-0220 dialback, then write). A link that
//! cannot be set up bounces what it holds (`remote-server-not-found` or
//! `remote-server-timeout`); one remote domain's trouble stays in its task.
//!
//! Incoming streams (incoming.rs) authenticate the remote domain by dialback
//! (asking that domain's authoritative server through our own link to it)
//! and accept stanzas only from domains they authenticated.

mod certs;
pub mod dialback;
mod incoming;
mod outgoing;
mod resolve;

pub use incoming::serve;

use crate::server::Server;
use crate::util::Bare;
use crate::xml::ElementExt;
use jid::{BareJid, Jid};
use minidom::Element;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::{mpsc, oneshot};

pub const NS: &str = "jabber:server";
pub const DIALBACK_NS: &str = "jabber:server:dialback";
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// Work for an outgoing link.
enum Out {
    Stanza(Element),
    /// XEP-0220 `<db:verify/>`: ask the remote (authoritative) server whether
    /// it issued `key` for the stream `id` it opened to us.
    Verify {
        id: String,
        key: String,
        reply: oneshot::Sender<bool>,
    },
}

struct Link {
    serial: u64,
    tx: mpsc::Sender<Out>,
}

pub struct S2s {
    /// Dialback keys are HMACs under this (per process) secret.
    secret: [u8; 32],
    links: Mutex<HashMap<(String, String), Link>>,
    serial: AtomicU64,
    server: OnceLock<Weak<Server>>,
    /// TLS both ways, and certificate checks (certs.rs).
    tls: OnceLock<certs::PeerTls>,
}

impl Default for S2s {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&crate::random::bytes(32));
        S2s {
            secret,
            links: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            server: OnceLock::new(),
            tls: OnceLock::new(),
        }
    }
}

impl S2s {
    /// Called once the server exists: links are tasks that need it.
    pub fn init(&self, server: &Arc<Server>) {
        let _ = self.server.set(Arc::downgrade(server));
        let _ = self.tls.set(certs::PeerTls::new(
            &server.config.s2s,
            server.certificates.clone(),
        ));
    }

    fn tls(&self) -> &certs::PeerTls {
        self.tls.get().expect("S2s::init ran")
    }

    /// The link from `local` to `remote`, started if there is none.
    fn link(&self, local: &str, remote: &str) -> Option<mpsc::Sender<Out>> {
        let server = self.server.get()?.upgrade()?;
        let key = (local.to_string(), remote.to_string());
        let mut links = self.links.lock().unwrap();
        if let Some(l) = links.get(&key)
            && !l.tx.is_closed()
        {
            return Some(l.tx.clone());
        }
        let (tx, rx) = mpsc::channel(server.config.s2s.queue.max(1));
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        links.insert(
            key.clone(),
            Link {
                serial,
                tx: tx.clone(),
            },
        );
        tokio::spawn(async move {
            let leftover = outgoing::run(&server, &key.0, &key.1, rx).await;
            server.s2s.forget(&key, serial);
            // The stream ended with work queued: a new link takes it.
            for out in leftover {
                match out {
                    Out::Stanza(st) => send(&server, st),
                    other => outgoing::fail(&server, other, "remote-server-timeout"),
                }
            }
        });
        Some(tx)
    }

    fn forget(&self, key: &(String, String), serial: u64) {
        let mut links = self.links.lock().unwrap();
        if links.get(key).is_some_and(|l| l.serial == serial) {
            links.remove(key);
        }
    }

    /// Ask `remote` (through our link to it) whether it issued `key` for
    /// its stream `id` to `local`.
    async fn verify(&self, local: &str, remote: &str, id: &str, key: &str) -> bool {
        let Some(tx) = self.link(local, remote) else {
            return false;
        };
        let (reply, rx) = oneshot::channel();
        let out = Out::Verify {
            id: id.to_string(),
            key: key.to_string(),
            reply,
        };
        if tx.send(out).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Our dialback key for a stream `id` from `local` to `remote`.
    fn key(&self, local: &str, remote: &str, id: &str) -> String {
        dialback::key(&self.secret, remote, local, id)
    }
}

/// Route a stanza to a remote domain (its `to` is not ours). Its `from`
/// must be a JID of ours; the sender gets an error if it cannot be queued.
pub fn send(server: &Server, stanza: Element) {
    let from = stanza.attr("from").and_then(|f| Jid::new(f).ok());
    let to = stanza.attr("to").and_then(|t| Jid::new(t).ok());
    let (Some(from), Some(to)) = (from, to) else {
        return;
    };
    if !server.config.s2s.enabled {
        crate::im::bounce(server, &stanza, "remote-server-not-found", None);
        return;
    }
    let local = from.domain().as_str();
    if !server.config.serves(local) && !server.muc.handles(local) {
        return;
    }
    let Some(tx) = server.s2s.link(local, to.domain().as_str()) else {
        return;
    };
    if let Err(e) = tx.try_send(Out::Stanza(stanza)) {
        let stanza = match e {
            mpsc::error::TrySendError::Full(Out::Stanza(s))
            | mpsc::error::TrySendError::Closed(Out::Stanza(s)) => s,
            _ => return,
        };
        crate::im::bounce(server, &stanza, "remote-server-timeout", Some("queue full"));
    }
}

/// Whether a domain is somebody else's (not hosted, no component, no MUC).
pub fn is_remote(server: &Server, domain: &str) -> bool {
    !server.config.serves(domain)
        && !server.components.handles(domain)
        && !server.muc.handles(domain)
        && !server.upload.handles(domain)
}

/// A stanza from an authenticated remote domain, re-namespaced to
/// `jabber:client`: deliver it as local code would one from a local user.
async fn inbound(server: &Arc<Server>, stanza: Element) {
    let from = stanza.attr("from").and_then(|f| Jid::new(f).ok());
    let to = stanza.attr("to").and_then(|t| Jid::new(t).ok());
    let (Some(from), Some(to)) = (from, to) else {
        return;
    };
    let result = match stanza.name() {
        "message" => {
            let mut msg = stanza;
            // Durable before delivered, as for local senders (XEP-0313).
            if crate::xep::mam::archive_message(server, &from.bare(), &to, &mut msg).await {
                crate::im::message::route(server, msg, to).await;
            } else {
                let text = Some("could not store the message");
                crate::im::bounce(server, &msg, "internal-server-error", text);
            }
            Ok(())
        }
        "presence" => inbound_presence(server, stanza, &from, &to).await,
        _ => {
            inbound_iq(server, stanza, &from, &to).await;
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "storage failure on a stanza from a remote server");
    }
}

async fn inbound_presence(
    server: &Arc<Server>,
    stanza: Element,
    from: &Jid,
    to: &Jid,
) -> crate::storage::Result<()> {
    use crate::im::subscription as sub;
    let (fb, tb): (BareJid, BareJid) = (from.bare(), to.bare());
    match stanza.attr("type") {
        Some("subscribe") => sub::inbound_subscribe(server, &fb, &tb, stanza).await,
        Some("subscribed") => sub::inbound_subscribed(server, &fb, &tb, stanza).await,
        Some("unsubscribe") => sub::inbound_unsubscribe(server, &fb, &tb, stanza).await,
        Some("unsubscribed") => sub::inbound_unsubscribed(server, &fb, &tb, stanza).await,
        Some("probe") => {
            let item = server
                .storage
                .roster
                .roster_item(tb.as_str(), fb.as_str())
                .await?;
            if item.is_some_and(|i| i.subscription.has_from()) {
                sub::send_current_presence(server, &tb, &fb);
            }
            Ok(())
        }
        _ => {
            if server.muc.handles(to.domain().as_str()) {
                server.muc.handle(server, stanza);
            } else if to.node().is_some() {
                crate::im::to_jid(server, to, &stanza);
            }
            Ok(())
        }
    }
}

async fn inbound_iq(server: &Arc<Server>, iq: Element, from: &Jid, to: &Jid) {
    let request = matches!(iq.attr("type"), Some("get" | "set"));
    let domain = to.domain().as_str();
    if server.muc.handles(domain) {
        server.muc.handle(server, iq);
        return;
    }
    if to.resource().is_some() {
        if crate::im::to_jid(server, to, &iq) == 0 && request {
            reply_error(server, &iq, "service-unavailable");
        }
        return;
    }
    if !request {
        return;
    }
    let target = match to.node() {
        None => crate::xep::Target::Server(domain.to_string()),
        Some(_) => crate::xep::Target::Account {
            jid: to.bare(),
            own: false,
        },
    };
    // Modules answer requests from full JIDs; a server's own requests
    // (e.g. a ping from the domain) get the ping answer or an error.
    let reply = match (from.try_as_full(), iq.children().next()) {
        (Ok(full), Some(payload)) => {
            let req = crate::xep::IqRequest {
                from: full,
                target: &target,
                iq: &iq,
                payload,
            };
            server.modules.handle_iq(server, &req).await
        }
        (Err(_), Some(p)) if p.is("ping", crate::xml::ns::PING) => {
            Some(crate::stanza::iq_result(&iq, None))
        }
        _ => None,
    };
    match reply {
        Some(r) => send(server, r),
        None => reply_error(server, &iq, "service-unavailable"),
    }
}

fn reply_error(server: &Server, stanza: &Element, condition: &str) {
    if let Some(r) = crate::stanza::error_reply(stanza, condition, None) {
        send(server, r);
    }
}

/// Serialize for a server stream: stanzas travel in `jabber:server`.
fn wire(stanza: &Element) -> Vec<u8> {
    let bytes = stanza.to_bytes();
    let client = format!("xmlns='{}'", crate::xml::ns::CLIENT);
    match std::str::from_utf8(&bytes) {
        Ok(t) if t.contains(&client) => t
            .replacen(&client, &format!("xmlns='{NS}'"), 1)
            .into_bytes(),
        _ => bytes,
    }
}
