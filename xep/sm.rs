//! XEP-0198 Stream Management: stanza acknowledgements and resumption.
//!
//! Counting is done by the session loop (c2s/session.rs): every stanza written
//! to the client is kept in `unacked` until the client's `<a h/>` covers it.
//! A resumable session whose connection breaks hibernates: it stays bound and
//! keeps queueing until the client resumes on a new connection (handed over
//! through `Resumptions`) or the timeout passes; then what was never acked is
//! routed again (to another resource or offline storage), not lost.

use crate::c2s::conn::XmlConn;
use crate::util::Bare;
use bytes::Bytes;
use jid::FullJid;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::mpsc;

pub const NS: &str = "urn:xmpp:sm:3";

/// A new connection taking over a hibernated (or stale) session.
pub struct Resume {
    pub conn: Box<XmlConn>,
    /// Stanzas the client says it handled.
    pub h: u32,
    /// Resumed inside SASL2: answer with this `<success/>` around `<resumed/>`.
    pub sasl2: Option<crate::xep::sasl2::Success>,
}

struct Slot {
    jid: FullJid,
    tx: mpsc::Sender<Resume>,
}

/// Resumable sessions by stream management id.
#[derive(Default)]
pub struct Resumptions {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Resumptions {
    pub fn register(&self, id: &str, jid: FullJid) -> mpsc::Receiver<Resume> {
        let (tx, rx) = mpsc::channel(1);
        self.slots
            .lock()
            .unwrap()
            .insert(id.to_string(), Slot { jid, tx });
        rx
    }

    pub fn remove(&self, id: &str) {
        self.slots.lock().unwrap().remove(id);
    }

    /// Hand `conn` to the session `id` if it belongs to `owner`. On failure
    /// the connection comes back so the client can bind normally.
    pub fn take_over(
        &self,
        id: &str,
        owner: &jid::BareJid,
        resume: Resume,
    ) -> Result<FullJid, Box<Resume>> {
        let slot = {
            let slots = self.slots.lock().unwrap();
            match slots.get(id) {
                Some(s) if &s.jid.bare() == owner => (s.jid.clone(), s.tx.clone()),
                _ => return Err(Box::new(resume)),
            }
        };
        slot.1.try_send(resume).map(|_| slot.0).map_err(|e| {
            Box::new(match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            })
        })
    }
}

/// Per-session counters once `<enable/>` succeeded.
pub struct SmState {
    /// Set when resumption was granted.
    pub id: Option<String>,
    /// Stanzas received from the client and fully handled.
    pub h_in: u32,
    /// Highest `h` the client acknowledged.
    acked: u32,
    /// Stanzas written since enable, not yet acknowledged (oldest first).
    pub unacked: VecDeque<Bytes>,
    /// An `<r/>` is outstanding.
    pub requested: bool,
}

pub enum AckError {
    /// The client acknowledged more than was sent.
    TooHigh { h: u32, sent: u32 },
}

impl SmState {
    pub fn new(id: Option<String>) -> Self {
        SmState {
            id,
            h_in: 0,
            acked: 0,
            unacked: VecDeque::new(),
            requested: false,
        }
    }

    pub fn sent(&self) -> u32 {
        self.acked.wrapping_add(self.unacked.len() as u32)
    }

    pub fn record_sent(&mut self, stanza: Bytes) {
        self.unacked.push_back(stanza);
    }

    /// Apply an `h` from the client (`<a/>` or `<resume/>`).
    pub fn ack(&mut self, h: u32) -> Result<(), AckError> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(AckError::TooHigh {
                h,
                sent: self.sent(),
            });
        }
        self.unacked.drain(..newly);
        self.acked = h;
        self.requested = false;
        Ok(())
    }

    pub fn ack_element(&self) -> String {
        format!("<a xmlns='{NS}' h='{}'/>", self.h_in)
    }
}

/// `<failed/>` with a stanza error condition (XEP-0198 §4, §5).
pub fn failed(condition: &str) -> Vec<u8> {
    format!(
        "<failed xmlns='{NS}'><{condition} xmlns='{}'/></failed>",
        crate::xml::ns::STANZA_ERRORS
    )
    .into_bytes()
}

/// Parse the `h` attribute of `<a/>` or `<resume/>`.
pub fn parse_h(e: &minidom::Element) -> Option<u32> {
    e.attr("h")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_drop_exactly_what_was_handled_and_wrap() {
        let mut s = SmState::new(None);
        for i in 0..5 {
            s.record_sent(Bytes::from(format!("<m{i}/>")));
        }
        assert!(s.ack(2).is_ok());
        assert_eq!(s.unacked.front().unwrap(), &Bytes::from("<m2/>"));
        assert!(matches!(s.ack(9), Err(AckError::TooHigh { h: 9, sent: 5 })));
        assert!(s.ack(5).is_ok());
        assert!(s.unacked.is_empty());
        // Counters wrap at 2^32 (XEP-0198 §5).
        let mut w = SmState::new(None);
        w.acked = u32::MAX - 1;
        w.record_sent(Bytes::from("a"));
        w.record_sent(Bytes::from("b"));
        w.record_sent(Bytes::from("c"));
        assert!(w.ack(0).is_ok());
        assert_eq!(w.unacked.len(), 1);
    }
}
