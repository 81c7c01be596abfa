//! The session registry and local delivery.
//!
//! Sessions are indexed by bare JID in shards (no global lock on the hot path).
//! Each bound session has a bounded outbound queue of serialized stanzas: a
//! stanza fanned out to several resources is serialized once and shared
//! (`Bytes`). A session whose queue is full is not read from fast enough; it is
//! cut off rather than allowed to grow server memory.

use crate::outbox::{Outbox, PushError};
use crate::util::Bare;
use bytes::Bytes;
use jid::{BareJid, FullJid};
use minidom::Element;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Why a session is being terminated from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// Another session bound the same full JID (RFC 6120 §7.7.2.2).
    Conflict,
    /// The session did not drain its queue.
    Overflow,
    /// The account was deleted or its password changed by an admin.
    Revoked,
    /// Server shutdown.
    Shutdown,
}

impl Kill {
    pub fn condition(self) -> &'static str {
        match self {
            Kill::Conflict => "conflict",
            Kill::Overflow => "policy-violation",
            Kill::Revoked => "not-authorized",
            Kill::Shutdown => "system-shutdown",
        }
    }
}

/// A session's available presence, as last broadcast.
#[derive(Debug, Clone)]
pub struct Available {
    pub priority: i8,
    /// The presence stanza, `from` stamped, without `to`, serialized: every
    /// session keeps one, and a parsed tree costs several times its text
    /// (idle memory, BENCHMARKS.md).
    pub stanza: Bytes,
}

impl Available {
    pub fn new(priority: i8, stanza: &Element) -> Self {
        debug_assert!(stanza.attr("to").is_none());
        // Kept for the whole session: no spare capacity.
        let mut bytes = crate::xml::ElementExt::to_bytes(stanza);
        bytes.shrink_to_fit();
        Available {
            priority,
            stanza: Bytes::from(bytes),
        }
    }

    /// The stanza addressed to `to`, as bytes to queue.
    pub fn addressed(&self, to: &str) -> Bytes {
        const OPEN: &[u8] = b"<presence";
        let s = &self.stanza;
        let Some(rest) = s.strip_prefix(OPEN) else {
            // Not written by our serializer (never the case): go through a tree.
            return self
                .element()
                .map(|mut e| {
                    crate::xml::ElementExt::set(&mut e, "to", to);
                    to_bytes(&e)
                })
                .unwrap_or_default();
        };
        let to = crate::xml::escape(to);
        let mut out = Vec::with_capacity(s.len() + to.len() + 6);
        out.extend_from_slice(OPEN);
        out.extend_from_slice(b" to='");
        out.extend_from_slice(to.as_bytes());
        out.push(b'\'');
        out.extend_from_slice(rest);
        Bytes::from(out)
    }

    /// The stanza as a tree (for the rare paths that edit it or go to s2s).
    pub fn element(&self) -> Option<Element> {
        std::str::from_utf8(&self.stanza).ok()?.parse().ok()
    }
}

#[derive(Debug)]
pub struct SessionShared {
    /// Serialized stanzas waiting to be written to the client.
    outbox: Outbox,
    available: Mutex<Option<Available>>,
    /// Requested the roster, so receives roster pushes (RFC 6121 §2.1.6).
    pub interested: AtomicBool,
    /// Opted in to XEP-0280 carbons.
    pub carbons: AtomicBool,
    /// XEP-0115 `ver` of the client's capabilities.
    pub caps: Mutex<Option<String>>,
    /// XEP-0357 push registrations this session enabled.
    pub push: Mutex<Vec<crate::storage::PushRegistration>>,
    kill: Notify,
    kill_reason: Mutex<Option<Kill>>,
}

impl SessionShared {
    fn new(queue: usize) -> Self {
        SessionShared {
            outbox: Outbox::new(queue),
            available: Mutex::default(),
            interested: AtomicBool::default(),
            carbons: AtomicBool::default(),
            caps: Mutex::default(),
            push: Mutex::default(),
            kill: Notify::new(),
            kill_reason: Mutex::default(),
        }
    }

    pub fn available(&self) -> Option<Available> {
        self.available.lock().unwrap().clone()
    }
    /// The priority of the session's available presence (`None`: not available).
    pub fn priority(&self) -> Option<i8> {
        self.available.lock().unwrap().as_ref().map(|a| a.priority)
    }
    pub fn set_available(&self, a: Option<Available>) {
        *self.available.lock().unwrap() = a;
    }
    pub fn kill_reason(&self) -> Option<Kill> {
        *self.kill_reason.lock().unwrap()
    }
    /// Resolves once someone asked this session to end.
    pub async fn killed(&self) -> Kill {
        loop {
            let notified = self.kill.notified();
            if let Some(k) = self.kill_reason() {
                return k;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub jid: FullJid,
    pub id: u64,
    pub shared: Arc<SessionShared>,
}

/// The session task's end of its outbound queue; closes the queue when dropped.
pub struct QueueReader(Arc<SessionShared>);

impl QueueReader {
    /// Up to `max` queued stanzas, waiting for the first (cancel-safe);
    /// or why the session was killed, which comes first.
    pub async fn recv_batch(&self, max: usize) -> Result<Vec<Bytes>, Kill> {
        let shared = &self.0;
        shared
            .outbox
            .recv_batch_or(max, || shared.kill_reason())
            .await
    }
    /// Whatever is queued, without waiting.
    pub fn take_all(&self) -> Vec<Bytes> {
        self.0.outbox.take(usize::MAX)
    }
    /// No more stanzas are accepted; what is queued can still be taken.
    pub fn close(&self) {
        self.0.outbox.close();
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        self.0.outbox.close();
    }
}

impl SessionHandle {
    pub fn new(jid: FullJid, queue: usize) -> (SessionHandle, QueueReader) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let shared = Arc::new(SessionShared::new(queue));
        let h = SessionHandle {
            jid,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            shared: shared.clone(),
        };
        (h, QueueReader(shared))
    }

    /// Queue a serialized stanza; never waits. A full queue kills the session.
    pub fn send(&self, data: Bytes) -> bool {
        match self.shared.outbox.push(data) {
            Ok(()) => true,
            Err(PushError::Full(_)) => {
                tracing::warn!(jid = %self.jid, "outbound queue full; disconnecting slow session");
                self.kill(Kill::Overflow);
                false
            }
            Err(PushError::Closed(_)) => false,
        }
    }

    /// Queue a serialized stanza, waiting for room; `false` once the session
    /// is gone. Only for senders other than the session's own task (which
    /// would wait for itself): bulk deliveries such as a large offline backlog.
    pub async fn send_wait(&self, data: Bytes) -> bool {
        // Half the queue stays free for live stanzas (presence, messages),
        // which would otherwise find it full and end the session. Without
        // waiting while there is room: the session then writes large batches.
        let outbox = &self.shared.outbox;
        let reserve = outbox.max_capacity() / 2;
        let mut data = data;
        loop {
            if outbox.capacity() > reserve {
                match outbox.push(data) {
                    Ok(()) => return true,
                    Err(PushError::Full(d)) => data = d,
                    Err(PushError::Closed(_)) => return false,
                }
            } else if outbox.is_closed() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    pub fn kill(&self, reason: Kill) {
        let mut r = self.shared.kill_reason.lock().unwrap();
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.shared.kill.notify_waiters();
        self.shared.kill.notify_one();
        // The idle session waits on its queue (QueueReader::recv_batch).
        self.shared.outbox.wake();
    }

    /// The session has ended (its queue takes nothing more).
    pub fn is_gone(&self) -> bool {
        self.shared.outbox.is_closed()
    }

    /// Stanzas waiting in the queue (for metrics).
    pub fn queued(&self) -> usize {
        self.shared.outbox.len()
    }
}

const SHARDS: usize = 64;

pub struct Registry {
    shards: Vec<Mutex<HashMap<BareJid, Vec<SessionHandle>>>>,
    hasher: RandomState,
    count: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            count: AtomicU64::new(0),
        }
    }
}

impl Registry {
    fn shard(&self, bare: &BareJid) -> &Mutex<HashMap<BareJid, Vec<SessionHandle>>> {
        let h = self.hasher.hash_one(bare) as usize;
        &self.shards[h % SHARDS]
    }

    /// Register a bound session. Returns the session it replaces (same full JID).
    pub fn bind(&self, handle: SessionHandle) -> Option<SessionHandle> {
        let bare = handle.jid.bare();
        let mut shard = self.shard(&bare).lock().unwrap();
        // Most accounts have one session: no room for four.
        let list = shard.entry(bare).or_insert_with(|| Vec::with_capacity(1));
        let old = list
            .iter()
            .position(|h| h.jid == handle.jid)
            .map(|i| list.swap_remove(i));
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        list.push(handle);
        old
    }

    /// Remove a session, if it is still the one registered under its JID.
    pub fn unbind(&self, jid: &FullJid, id: u64) -> bool {
        let bare = jid.bare();
        let mut shard = self.shard(&bare).lock().unwrap();
        let Some(list) = shard.get_mut(&bare) else {
            return false;
        };
        let Some(i) = list.iter().position(|h| h.id == id) else {
            return false;
        };
        list.swap_remove(i);
        if list.is_empty() {
            shard.remove(&bare);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        true
    }

    pub fn sessions(&self, bare: &BareJid) -> Vec<SessionHandle> {
        self.shard(bare)
            .lock()
            .unwrap()
            .get(bare)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether any session of `bare` satisfies `pred`, without copying handles.
    pub fn any_session(&self, bare: &BareJid, pred: impl Fn(&SessionHandle) -> bool) -> bool {
        self.shard(bare)
            .lock()
            .unwrap()
            .get(bare)
            .is_some_and(|list| list.iter().any(pred))
    }

    pub fn session(&self, full: &FullJid) -> Option<SessionHandle> {
        let bare = full.bare();
        self.shard(&bare)
            .lock()
            .unwrap()
            .get(&bare)
            .and_then(|l| l.iter().find(|h| &h.jid == full).cloned())
    }

    /// Sessions that sent available presence, with their priorities (without
    /// copying their presence stanzas, unlike [`Self::available`]).
    pub fn available_priorities(&self, bare: &BareJid) -> Vec<(SessionHandle, i8)> {
        self.sessions(bare)
            .into_iter()
            .filter_map(|h| h.shared.priority().map(|p| (h, p)))
            .collect()
    }

    /// Sessions that sent available presence.
    pub fn available(&self, bare: &BareJid) -> Vec<(SessionHandle, Available)> {
        self.sessions(bare)
            .into_iter()
            .filter_map(|h| h.shared.available().map(|a| (h, a)))
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn all(&self) -> Vec<SessionHandle> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap()
                    .values()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Serialize once for sharing among recipients.
pub fn to_bytes(el: &Element) -> Bytes {
    use crate::xml::ElementExt;
    Bytes::from(el.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{BuilderExt, el, ns};

    #[test]
    fn available_presence_is_addressed_without_a_tree() {
        let p = el("presence", ns::CLIENT)
            .a("from", "a@x/r")
            .c(el("status", ns::CLIENT).t("out & about").build())
            .c(el("priority", ns::CLIENT).t("5").build())
            .build();
        let a = Available::new(5, &p);
        let sent = a.addressed("b@x/'q'");
        let parsed: Element = std::str::from_utf8(&sent).unwrap().parse().unwrap();
        assert_eq!(parsed.attr("to"), Some("b@x/'q'"));
        assert_eq!(parsed.attr("from"), Some("a@x/r"));
        let status = parsed.get_child("status", ns::CLIENT).unwrap();
        assert_eq!(status.text(), "out & about");
        assert_eq!(a.element().unwrap().attr("to"), None);
    }
}
