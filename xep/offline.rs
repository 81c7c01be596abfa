//! XEP-0160 offline storage: chat and normal messages to an account with no
//! available resource are stored (with a XEP-0203 delay stamp) and delivered,
//! in order, when a resource sends initial presence with non-negative priority.
//! Over the per-user cap the sender gets an error; nothing is dropped silently.

use super::{IqRequest, Module, Target};
use crate::router::SessionHandle;
use crate::server::Server;
use crate::storage::now_unix;
use crate::util::Bare;
use crate::util::xmpp_datetime;
use crate::xml::{BuilderExt, ElementExt, el, ns};
use async_trait::async_trait;
use bytes::Bytes;
use jid::BareJid;
use minidom::Element;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Offline;

#[async_trait]
impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Server(_) => vec!["msgoffline"],
            _ => vec![],
        }
    }
    async fn handle_iq(&self, _server: &Arc<Server>, _req: &IqRequest<'_>) -> Option<Element> {
        None
    }
}

pub enum Stored {
    Yes,
    /// The owner's store is at its cap.
    Full,
    /// Not a kind of message we keep (headline, groupchat, error).
    NotStorable,
    Failed,
}

/// Chat and normal messages are kept; headline, groupchat and error are not.
pub fn storable(msg: &Element) -> bool {
    matches!(msg.attr("type"), None | Some("normal") | Some("chat"))
}

pub async fn store(server: &Server, owner: &BareJid, msg: &Element) -> Stored {
    if !storable(msg) {
        return Stored::NotStorable;
    }
    let mut copy = msg.clone();
    // Stored as it will be sent: addressed to the account (RFC 6121 §8.5.2:
    // any resource may get it) and stamped, so delivery writes the stored
    // bytes without parsing them again.
    copy.set("to", owner.as_str());
    copy.append_child(
        el("delay", ns::DELAY)
            .a("from", owner.domain().as_str())
            .a("stamp", xmpp_datetime(SystemTime::now()))
            .build(),
    );
    let xml = String::from_utf8(copy.to_bytes()).unwrap_or_default();
    let max = server.config.modules.offline.max_per_user;
    let started = std::time::Instant::now();
    let stored = server
        .storage
        .offline
        .store_offline(owner.as_str(), &xml, max)
        .await;
    server.metrics.storage_write(started);
    match stored {
        Ok(true) => {
            crate::metrics::Metrics::inc(&server.metrics.offline_stored);
            Stored::Yes
        }
        Ok(false) => Stored::Full,
        Err(e) => {
            tracing::error!(error = %e, "offline store failed");
            crate::metrics::Metrics::inc(&server.metrics.storage_errors);
            Stored::Failed
        }
    }
}

/// Stored messages are read a small page first (so the first arrive at
/// once, however large the backlog), then in large pages (few queries).
const FIRST_PAGE: i64 = 128;
const PAGE: i64 = 2048;

/// Send everything stored for the session's account to it, oldest first.
/// The start of the first page goes into the session's queue at once; the
/// rest (further pages included) is fed by a task that waits for room as the
/// session writes (the session's own task cannot wait for its queue to
/// drain). Stored messages are deleted only once all of them are queued.
pub async fn deliver(server: &Arc<Server>, h: &SessionHandle) {
    let owner = h.jid.bare();
    let Some(claim) = claim(server, &owner, h).await else {
        return; // a live session of the account is being given the backlog
    };
    let Some(first) = page(server, &owner, 0, FIRST_PAGE).await else {
        return;
    };
    if first.is_empty() {
        return;
    }
    let at_once = (server.config.limits.outbound_queue / 2).max(1);
    let mut more = first.len() as i64 >= FIRST_PAGE;
    let mut last = 0;
    let mut rest = first.into_iter();
    for (id, xml) in rest.by_ref().take(at_once) {
        last = id;
        if let Some(b) = wire(xml)
            && !h.send(b)
        {
            return; // the session went away: keep everything for the next one
        }
    }
    let mut pending: Vec<(i64, String)> = rest.collect();
    if pending.is_empty() && !more {
        delete_upto(server, &owner, last).await;
        return;
    }
    let (server, h) = (server.clone(), h.clone());
    tokio::spawn(async move {
        let _claim = claim; // held until the delivered messages are deleted
        loop {
            for (id, xml) in pending {
                last = id;
                if let Some(b) = wire(xml)
                    && !h.send_wait(b).await
                {
                    return;
                }
            }
            if !more {
                break;
            }
            match page(&server, &owner, last, PAGE).await {
                Some(p) => {
                    more = p.len() as i64 >= PAGE;
                    pending = p;
                }
                None => return,
            }
        }
        delete_upto(&server, &owner, last).await;
    });
}

/// Offline deliveries in progress, by account. A delivery deletes what it
/// sent only after queueing all of it, so a second delivery for the same
/// account must not read the store meanwhile: a client that received its
/// backlog and logged straight in again would get it twice. While the
/// delivering session lives, it is the one that gets the backlog (XEP-0160:
/// the account's messages, not a resource's); once it has gone, the next
/// delivery waits for the earlier one to finish (deleting, or giving up
/// when its queue closed).
#[derive(Default)]
pub struct Deliveries {
    running: std::sync::Mutex<HashMap<String, Running>>,
}

struct Running {
    session: SessionHandle,
    done: Arc<tokio::sync::Notify>,
    /// A later session that was refused because this one was live: if this
    /// delivery gives up (its session died mid-backlog), that one gets what
    /// is left instead of waiting for its next login.
    successor: Option<SessionHandle>,
}

/// This session delivers the account's backlog; released when dropped.
struct Claim {
    server: Arc<Server>,
    owner: String,
    done: Arc<tokio::sync::Notify>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut running = self.server.offline_deliveries.running.lock().unwrap();
        let successor = if running
            .get(&self.owner)
            .is_some_and(|r| Arc::ptr_eq(&r.done, &self.done))
        {
            running.remove(&self.owner).and_then(|r| r.successor)
        } else {
            None
        };
        drop(running);
        self.done.notify_waiters();
        // A delivery that completed leaves nothing to read: the successor's
        // pass then finds an empty store.
        if let Some(next) = successor.filter(|n| !n.is_gone()) {
            let server = self.server.clone();
            tokio::spawn(async move { deliver(&server, &next).await });
        }
    }
}

/// Claim the delivery of `owner`'s backlog for session `h`; `None` when a
/// live session of the account is already being given it.
async fn claim(server: &Arc<Server>, owner: &BareJid, h: &SessionHandle) -> Option<Claim> {
    loop {
        let wait = {
            let mut running = server.offline_deliveries.running.lock().unwrap();
            match running.get_mut(owner.as_str()) {
                Some(r) if !r.session.is_gone() => {
                    r.successor = Some(h.clone());
                    return None;
                }
                // Created under the lock, so it cannot miss the release.
                Some(r) => r.done.clone().notified_owned(),
                None => {
                    let done = Arc::new(tokio::sync::Notify::new());
                    let running_entry = Running {
                        session: h.clone(),
                        done: done.clone(),
                        successor: None,
                    };
                    running.insert(owner.to_string(), running_entry);
                    return Some(Claim {
                        server: server.clone(),
                        owner: owner.to_string(),
                        done,
                    });
                }
            }
        };
        wait.await;
    }
}

async fn delete_upto(server: &Server, owner: &BareJid, last: i64) {
    if let Err(e) = server
        .storage
        .offline
        .delete_offline(owner.as_str(), last)
        .await
    {
        tracing::error!(error = %e, "deleting delivered offline messages failed");
    }
}

async fn page(
    server: &Server,
    owner: &BareJid,
    after: i64,
    limit: i64,
) -> Option<Vec<(i64, String)>> {
    match server
        .storage
        .offline
        .offline_messages(owner.as_str(), after, limit)
        .await
    {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %e, "loading offline messages failed");
            None
        }
    }
}

/// A stored message as it goes on the wire: it was serialized by us, to
/// the account's bare JID, when it was stored.
fn wire(xml: String) -> Option<Bytes> {
    (!xml.is_empty()).then(|| Bytes::from(xml))
}

/// Drop messages older than the retention period, hourly.
pub fn spawn_expiry(server: Arc<Server>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let retention = server.config.modules.offline.retention_days as i64 * 86_400;
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match server
                .storage
                .offline
                .expire_offline(now_unix() - retention)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "expired offline messages"),
                Err(e) => tracing::warn!(error = %e, "offline expiry failed"),
            }
        }
    })
}
