//! A bound client session: reads stanzas, stamps and routes them, writes what
//! the router queued for it, pings it when silent, counts and resends for
//! stream management (XEP-0198), and cleans up on any end: what the client
//! never received is routed again rather than lost.

use super::Bound;
use super::conn::{ConnError, XmlConn};
use crate::im::{self, presence::PresenceState};
use crate::router::{Kill, SessionHandle};
use crate::server::Server;
use crate::stanza::{error_reply, is_stanza};
use crate::util::Bare;
use crate::xep::blocking;
use crate::xep::csi::{self, Csi};
use crate::xep::sm::{self, AckError, Resume, SmState};
use crate::xep::{IqRequest, Target};
use crate::xml::{BuilderExt, ElementExt, StreamEvent, el, ns};
use bytes::Bytes;
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Stanzas written per flush at most.
const WRITE_BATCH: usize = 64;
/// At most this many messages handled as one group (one archive commit).
const MESSAGE_GROUP: usize = 64;
/// Ask the client for an ack once this many stanzas are unacknowledged.
const REQUEST_ACK_AFTER: usize = 5;

enum End {
    /// The client closed its stream: answer with ours.
    Closed,
    /// The connection broke (and the session was not resumable, or resumption timed out).
    Lost,
    StreamError(&'static str, Option<String>),
    /// Ended from outside (see `Kill`).
    Killed(Kill),
}

impl End {
    /// Whether what is still queued can be written to the client, or must be
    /// routed elsewhere: a client that does not read gets nothing more, and a
    /// replaced session's stanzas belong to its successor.
    fn flushes(&self) -> bool {
        match self {
            End::Closed | End::StreamError(..) => true,
            End::Killed(k) => matches!(k, Kill::Revoked | Kill::Shutdown),
            End::Lost => false,
        }
    }
}

/// What ended the handling of one element.
enum Flow {
    Continue,
    End(End),
}

struct Session {
    server: Arc<Server>,
    /// The session's bare JID (its full JID is `handle.jid`).
    bare: BareJid,
    handle: SessionHandle,
    presence: PresenceState,
    /// Id of our outstanding ping, if any.
    ping_id: Option<String>,
    sm: Option<SmState>,
    resume_rx: Option<mpsc::Receiver<Resume>>,
    csi: Csi,
}

/// What ended an idle session's wait.
enum Wake {
    Killed(Kill),
    Resume(Resume),
    Batch(Vec<Bytes>),
    Read(Result<(), ConnError>),
    Timer,
}

async fn read(conn: &mut Option<Box<XmlConn>>) -> Result<(), ConnError> {
    match conn {
        Some(c) => c.read_some().await,
        None => std::future::pending().await,
    }
}

async fn resumption(rx: &mut Option<mpsc::Receiver<Resume>>) -> Option<Resume> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// `conn` is boxed so that the connection is not one more copy inside this
/// future, whose every slot each idle session pays for (idle memory).
pub async fn run(server: Arc<Server>, conn: Box<XmlConn>, bound: Bound) {
    let Bound {
        handle,
        rx,
        sm,
        inactive,
    } = bound;
    let resume_rx = sm
        .as_ref()
        .and_then(|sm| sm.id.as_deref())
        .map(|id| server.resumptions.register(id, handle.jid.clone()));
    // Everything here lives as long as the session: what the loop needs is
    // kept once (in `s`), not also in locals (idle memory).
    let mut s = Session {
        bare: handle.jid.bare(),
        server,
        handle,
        presence: PresenceState::default(),
        ping_id: None,
        resume_rx,
        sm,
        csi: Csi::default(),
    };
    s.csi.inactive = inactive;
    let mut conn = Some(conn);
    // When the connection broke (hibernating, waiting for a resumption).
    let mut lost_at: Option<Instant> = None;
    let mut last_read = Instant::now();
    // Without SM: the batch being written, until the write completes.
    let mut inflight: Vec<Bytes> = Vec::new();

    let end = 'run: loop {
        if let Some(c) = conn.as_mut().filter(|c| c.has_events())
            && let Some(end) = Box::pin(s.handle_events(c)).await
        {
            break 'run end;
        }
        let deadline = s.deadline(lost_at, last_read);
        // A broken connection: hibernate if resumable, else end.
        let mut broken = false;
        // Only the waiting happens inside select!: its futures are dropped
        // before any handler runs, so the session future does not keep
        // room for both (idle memory).
        let wake = tokio::select! {
            biased;
            // A kill comes first; the queue's wait reports it too.
            batch = rx.recv_batch(WRITE_BATCH) => match batch {
                Ok(batch) => Wake::Batch(batch),
                Err(k) => Wake::Killed(k),
            },
            Some(r) = resumption(&mut s.resume_rx) => Wake::Resume(r),
            r = read(&mut conn) => Wake::Read(r),
            _ = tokio::time::sleep_until(deadline) => Wake::Timer,
        };
        match wake {
            Wake::Killed(k) => break End::Killed(k),
            Wake::Resume(r) => match Box::pin(s.resume(r)).await {
                Some(c) => {
                    conn = Some(c);
                    lost_at = None;
                    last_read = Instant::now();
                    s.ping_id = None;
                }
                None => broken = conn.is_none(),
            },
            Wake::Batch(batch) => {
                match Box::pin(s.write_batch(batch, &mut conn, &mut inflight)).await {
                    Ok(b) => broken = b,
                    Err(end) => break end,
                }
            }
            Wake::Read(r) => match r {
                Ok(()) => {
                    last_read = Instant::now();
                    s.ping_id = None;
                }
                Err(ConnError::Xml(x)) => {
                    break End::StreamError(x.condition(), Some(x.text().to_string()));
                }
                Err(_) => broken = true,
            },
            Wake::Timer => match Box::pin(s.on_timer(&mut conn, lost_at.is_some())).await {
                Ok(b) => broken = b,
                Err(end) => break end,
            },
        }
        if broken {
            if !s.resumable() {
                break End::Lost;
            }
            if lost_at.is_none() {
                tracing::info!(jid = %s.handle.jid, "connection lost; session hibernates for resumption");
                lost_at = Some(Instant::now());
            }
            conn = None;
        }
    };

    Box::pin(s.finish(end, conn, rx, inflight)).await;
}

impl Session {
    fn resumable(&self) -> bool {
        self.sm.as_ref().is_some_and(|sm| sm.id.is_some())
    }

    fn send(&self, el: &Element) {
        self.handle.send(Bytes::from(el.to_bytes()));
    }

    fn reply_error(&self, stanza: &Element, condition: &str, text: Option<&str>) {
        if let Some(mut r) = error_reply(stanza, condition, text) {
            r.set("to", self.handle.jid.as_str());
            self.send(&r);
        }
    }

    /// When the session's timer fires: resumption given up (hibernating
    /// since `lost_at`), or a ping due or unanswered.
    fn deadline(&self, lost_at: Option<Instant>, last_read: Instant) -> Instant {
        let config = &self.server.config;
        let secs = |s: u64| Duration::from_secs(s.max(1));
        match (lost_at, &self.ping_id) {
            (Some(t), _) => {
                // A device registered for push may sleep long: keep its session longer.
                if self.handle.shared.push.lock().unwrap().is_empty() {
                    t + secs(config.c2s.resume_timeout)
                } else {
                    t + secs(config.modules.push.resume_timeout)
                }
            }
            (None, Some(_)) => {
                last_read + secs(config.c2s.ping_interval) + secs(config.c2s.ping_timeout)
            }
            (None, None) => last_read + secs(config.c2s.ping_interval),
        }
    }

    /// Write a batch from the outbound queue; `Ok(true)` when the
    /// connection broke. Boxed by the caller, like every handler here.
    async fn write_batch(
        &mut self,
        batch: Vec<Bytes>,
        conn: &mut Option<Box<XmlConn>>,
        inflight: &mut Vec<Bytes>,
    ) -> Result<bool, End> {
        let max_unacked = self.server.config.limits.outbound_queue * 4;
        inflight.clear();
        let server = &self.server;
        if conn.is_none() && server.modules.enabled("push") {
            // Hibernated: the device only learns of messages through its push service.
            let regs = self.handle.shared.push.lock().unwrap().clone();
            for b in &batch {
                crate::xep::push::hibernated_message(server, &self.bare, &regs, b);
            }
        }
        let batch = self.csi.filter(batch);
        server
            .metrics
            .stanzas_out
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut frames: Vec<Bytes> = Vec::with_capacity(batch.len() + 1);
        for b in batch {
            frames.push(b.clone());
            match self.sm.as_mut() {
                Some(sm) => sm.record_sent(b),
                None => inflight.push(b),
            }
        }
        if let Some(sm) = self.sm.as_mut() {
            if sm.unacked.len() > max_unacked {
                return Err(End::StreamError(
                    "policy-violation",
                    Some("too many unacknowledged stanzas".into()),
                ));
            }
            if sm.unacked.len() >= REQUEST_ACK_AFTER && !sm.requested {
                sm.requested = true;
                frames.push(Bytes::from(format!("<r xmlns='{}'/>", sm::NS)));
            }
        }
        let Some(c) = conn.as_mut().filter(|_| !frames.is_empty()) else {
            return Ok(false);
        };
        let refs: Vec<&[u8]> = frames.iter().map(|b| &b[..]).collect();
        // A client that stops reading blocks this write; a kill (queue
        // overflow, conflict) must still end the session promptly.
        let written = tokio::select! {
            r = c.write_frames(&refs) => r.is_ok(),
            _ = self.handle.shared.killed() => false,
        };
        if written {
            *inflight = Vec::new(); // no capacity kept while idle
        }
        Ok(!written)
    }

    /// The session's timer fired: resumption over, or ping due or unanswered.
    /// `Ok(true)` when the connection is to be treated as broken.
    async fn on_timer(
        &mut self,
        conn: &mut Option<Box<XmlConn>>,
        hibernating: bool,
    ) -> Result<bool, End> {
        if hibernating {
            tracing::info!(jid = %self.handle.jid, "stream management: resumption timed out");
            return Err(End::Lost);
        }
        if self.ping_id.is_some() {
            tracing::info!(jid = %self.handle.jid, "no answer to ping");
            if self.resumable() {
                return Ok(true);
            }
            return Err(End::StreamError(
                "connection-timeout",
                Some("no answer to ping".into()),
            ));
        }
        let id = format!("ping-{}", super::new_id());
        let ping = el("iq", ns::CLIENT)
            .a("type", "get")
            .a("id", id.as_str())
            .a("from", self.bare.domain().as_str())
            .a("to", self.handle.jid.as_str())
            .c(el("ping", ns::PING).build())
            .build();
        self.ping_id = Some(id);
        let bytes = Bytes::from(ping.to_bytes());
        if let Some(sm) = self.sm.as_mut() {
            sm.record_sent(bytes.clone());
        }
        match conn.as_mut() {
            Some(c) => Ok(c.write(&bytes).await.is_err()),
            None => Ok(false),
        }
    }

    /// Handle the events parsed so far; `Some` when one ends the session.
    /// Boxed by the caller: its state exists only while events are handled.
    async fn handle_events(&mut self, c: &mut XmlConn) -> Option<End> {
        while let Some(ev) = c.pop() {
            let flow = match ev {
                // Messages parsed from the same read are handled as a group
                // (one storage commit for all of them), in order.
                StreamEvent::Stanza(e) if is_client_message(&e) && c.next_is(is_client_message) => {
                    let mut group = vec![e];
                    while group.len() < MESSAGE_GROUP && c.next_is(is_client_message) {
                        if let Some(StreamEvent::Stanza(m)) = c.pop() {
                            group.push(m);
                        }
                    }
                    Box::pin(self.messages(group)).await
                }
                // Boxed: handlers (storage, modules) need large futures
                // only while they run.
                StreamEvent::Stanza(e) => Box::pin(self.element(c, e)).await,
                StreamEvent::Close => Flow::End(End::Closed),
                StreamEvent::Header(_) => Flow::End(End::StreamError("not-well-formed", None)),
            };
            if let Flow::End(end) = flow {
                return Some(end);
            }
        }
        None
    }

    /// A new connection resumes this session: ack, answer, resend the unacked.
    async fn resume(&mut self, r: Resume) -> Option<Box<XmlConn>> {
        let Resume { mut conn, h, sasl2 } = r;
        let sm = self.sm.as_mut()?;
        let id = sm.id.clone().unwrap_or_default();
        if let Err(AckError::TooHigh { h, sent }) = sm.ack(h) {
            conn.stream_error(
                "undefined-condition",
                Some(&format!("handled-count-too-high: h={h}, sent={sent}")),
                self.bare.domain().as_str(),
            )
            .await;
            return None;
        }
        let mut resumed = format!(
            "<resumed xmlns='{}' previd='{}' h='{}'/>",
            sm::NS,
            id,
            sm.h_in
        );
        if let Some(success) = sasl2 {
            // XEP-0198 inside SASL2: `<resumed/>` is one of the success results.
            let r: Element = resumed.parse().expect("well-formed");
            resumed = String::from_utf8(
                success
                    .to_element(self.handle.jid.as_str(), vec![r])
                    .to_bytes(),
            )
            .expect("utf-8");
        }
        let mut frames: Vec<&[u8]> = vec![resumed.as_bytes()];
        frames.extend(sm.unacked.iter().map(|b| &b[..]));
        sm.requested = !sm.unacked.is_empty();
        let request = format!("<r xmlns='{}'/>", sm::NS);
        if sm.requested {
            frames.push(request.as_bytes());
        }
        if conn.write_frames(&frames).await.is_err() {
            return None;
        }
        tracing::info!(jid = %self.handle.jid, resent = sm.unacked.len(), "stream resumed");
        Some(conn)
    }

    /// Handle one top-level element from the client.
    async fn element(&mut self, conn: &mut XmlConn, e: Element) -> Flow {
        if e.has_ns(sm::NS) {
            return self.sm_element(conn, e).await;
        }
        if e.has_ns(csi::NS) {
            match e.name() {
                "active" => {
                    self.csi.inactive = false;
                    // Held stanzas are older than anything still queued: write them now.
                    let held = self.csi.take();
                    if let Some(sm) = self.sm.as_mut() {
                        held.iter().for_each(|b| sm.record_sent(b.clone()));
                    }
                    let frames: Vec<&[u8]> = held.iter().map(|b| &b[..]).collect();
                    if !frames.is_empty() && conn.write_frames(&frames).await.is_err() {
                        return Flow::End(End::Lost);
                    }
                }
                "inactive" => self.csi.inactive = true,
                _ => return Flow::End(End::StreamError("unsupported-stanza-type", None)),
            }
            return Flow::Continue;
        }
        if let Err(end) = self.stanza(e).await {
            return Flow::End(end);
        }
        if let Some(sm) = self.sm.as_mut() {
            // Counted once fully handled: stored or queued for delivery.
            sm.h_in = sm.h_in.wrapping_add(1);
        }
        Flow::Continue
    }

    async fn sm_element(&mut self, conn: &mut XmlConn, e: Element) -> Flow {
        match e.name() {
            "enable" => {
                if self.sm.is_some() {
                    let _ = conn.write(&sm::failed("unexpected-request")).await;
                    return Flow::Continue;
                }
                let wants_resume = matches!(e.attr("resume"), Some("true") | Some("1"));
                let id = wants_resume.then(super::new_id);
                let mut reply = format!("<enabled xmlns='{}'", sm::NS);
                if let Some(id) = &id {
                    self.resume_rx = Some(
                        self.server
                            .resumptions
                            .register(id, self.handle.jid.clone()),
                    );
                    reply.push_str(&format!(
                        " id='{id}' resume='true' max='{}'",
                        self.server.config.c2s.resume_timeout
                    ));
                }
                reply.push_str("/>");
                self.sm = Some(SmState::new(id));
                if conn.write(reply.as_bytes()).await.is_err() {
                    return Flow::End(End::Lost);
                }
                Flow::Continue
            }
            "r" => match &self.sm {
                Some(sm) => {
                    let a = sm.ack_element();
                    if conn.write(a.as_bytes()).await.is_err() {
                        return Flow::End(End::Lost);
                    }
                    Flow::Continue
                }
                None => Flow::End(End::StreamError(
                    "unsupported-stanza-type",
                    Some("stream management is not enabled".into()),
                )),
            },
            "a" => {
                let Some(sm) = self.sm.as_mut() else {
                    return Flow::End(End::StreamError(
                        "unsupported-stanza-type",
                        Some("stream management is not enabled".into()),
                    ));
                };
                let Some(h) = sm::parse_h(&e) else {
                    return Flow::End(End::StreamError(
                        "bad-format",
                        Some("<a/> needs a numeric h".into()),
                    ));
                };
                match sm.ack(h) {
                    Ok(()) => Flow::Continue,
                    Err(AckError::TooHigh { h, sent }) => Flow::End(End::StreamError(
                        "undefined-condition",
                        Some(format!("handled-count-too-high: h={h}, sent={sent}")),
                    )),
                }
            }
            _ => {
                let _ = conn.write(&sm::failed("unexpected-request")).await;
                Flow::Continue
            }
        }
    }

    /// Leave: registry, presence, undelivered stanzas, then the stream.
    /// `inflight`: a batch whose write did not complete (it may not have arrived).
    async fn finish(
        mut self,
        end: End,
        mut conn: Option<Box<XmlConn>>,
        rx: crate::router::QueueReader,
        inflight: Vec<Bytes>,
    ) {
        let server = self.server.clone();
        if let Some(id) = self.sm.as_ref().and_then(|sm| sm.id.clone()) {
            server.resumptions.remove(&id);
        }
        // Leave the registry first so nothing new is queued, then tell contacts.
        server.registry.unbind(&self.handle.jid, self.handle.id);
        if let Err(e) =
            im::presence::broadcast_unavailable(&server, &self.handle, &mut self.presence, None)
                .await
        {
            tracing::warn!(error = %e, "unavailable broadcast failed");
        }
        // What never reached the client: stanzas it did not acknowledge (SM)
        // and whatever is still queued.
        let had_sm = self.sm.is_some();
        let mut undelivered: Vec<Bytes> = self
            .sm
            .take()
            .map(|sm| sm.unacked.into())
            .unwrap_or_default();
        // A write that did not complete may not have arrived: better twice than never
        // (archive ids let clients drop duplicates).
        undelivered.extend(inflight);
        let mut queued = self.csi.take();
        // Closed first: a bulk feeder (offline backlog) stops instead of
        // filling a queue nobody drains any more.
        rx.close();
        queued.extend(rx.take_all());
        if conn.is_some() && end.flushes() && !had_sm {
            // Without stream management, a stream that closes cleanly gets what was queued.
            let frames: Vec<&[u8]> = queued.iter().map(|b| &b[..]).collect();
            if !frames.is_empty()
                && let Some(c) = conn.as_mut()
            {
                let _ = c.write_frames(&frames).await;
            }
        } else {
            undelivered.extend(queued);
        }
        reroute(&server, &undelivered).await;
        if let Some(mut c) = conn {
            match end {
                End::Closed => c.end_stream_and_close().await,
                End::Lost | End::Killed(Kill::Overflow) => {}
                End::StreamError(cond, text) => {
                    c.stream_error(cond, text.as_deref(), self.bare.domain().as_str())
                        .await;
                }
                End::Killed(k) => {
                    let text = match k {
                        Kill::Conflict => "replaced by a new connection with the same resource",
                        Kill::Revoked => "account credentials changed",
                        Kill::Shutdown => "server shutting down",
                        Kill::Overflow => "too many stanzas waiting to be read",
                    };
                    c.stream_error(k.condition(), Some(text), self.bare.domain().as_str())
                        .await;
                }
            }
        }
        tracing::info!(jid = %self.handle.jid, "session ended");
    }

    /// Consecutive client messages that arrived together: checked in order,
    /// then handled as one group (their archive rows share one commit).
    async fn messages(&mut self, group: Vec<Element>) -> Flow {
        let mut ready = Vec::with_capacity(group.len());
        let mut handled: u32 = 0;
        let mut end = None;
        for mut e in group {
            match self.preamble(&mut e) {
                Err(x) => {
                    end = Some(x);
                    break;
                }
                Ok(None) => {}
                Ok(Some(to)) => {
                    let to = to.unwrap_or_else(|| Jid::from(self.bare.clone()));
                    ready.push((e, to));
                }
            }
            handled += 1;
        }
        if !ready.is_empty() {
            im::message::from_session_many(&self.server, &self.handle.jid, ready).await;
        }
        if let Some(sm) = self.sm.as_mut() {
            // Counted once fully handled: stored or queued for delivery.
            sm.h_in = sm.h_in.wrapping_add(handled);
        }
        match end {
            Some(x) => Flow::End(x),
            None => Flow::Continue,
        }
    }

    /// What every stanza from the client goes through first: a stream error
    /// for what cannot be a stanza or claims another sender, `from` stamped,
    /// and `to` parsed. `Ok(None)`: already answered with an error.
    fn preamble(&self, e: &mut Element) -> Result<Option<Option<Jid>>, End> {
        if !is_stanza(e) {
            if e.ns() == ns::CLIENT || e.ns() == ns::STREAM {
                return Err(End::StreamError("unsupported-stanza-type", None));
            }
            return Err(End::StreamError(
                "unsupported-stanza-type",
                Some(format!("{} is not supported", e.ns())),
            ));
        }
        // One pass over the attributes for both addresses (each lookup by
        // name is a tree search comparing namespaces).
        let (mut from, mut to) = (None, None);
        for ((ns, name), value) in e.attrs() {
            if ns.is_none() {
                match name.as_str() {
                    "from" => from = Some(value.as_str()),
                    "to" => to = Some(Jid::new(value)),
                    _ => {}
                }
            }
        }
        // RFC 6120 §8.1.2.1: a client cannot speak as anyone else.
        if let Some(from) = from {
            let ok = from == self.handle.jid.as_str()
                || Jid::new(from).is_ok_and(|j| {
                    j.as_str() == self.handle.jid.as_str() || j.as_str() == self.bare.as_str()
                });
            if !ok {
                return Err(End::StreamError("invalid-from", None));
            }
        }
        e.set("from", self.handle.jid.as_str());
        self.server.metrics.stanza_in(e.name());
        match to {
            None => Ok(Some(None)),
            Some(Ok(j)) => Ok(Some(Some(j))),
            Some(Err(_)) => {
                self.reply_error(e, "jid-malformed", None);
                Ok(None)
            }
        }
    }

    async fn stanza(&mut self, mut e: Element) -> Result<(), End> {
        let Some(to) = self.preamble(&mut e)? else {
            return Ok(());
        };
        let result = match e.name() {
            "message" => {
                let to = to.unwrap_or_else(|| Jid::from(self.bare.clone()));
                im::message::from_session(&self.server, &self.handle.jid, e, to).await;
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
        if let Some(j) = &to
            && j.node().is_some()
            && j.bare() != self.bare
        {
            if blocking::blocks(&server, &self.bare, j).await {
                if let Some(mut r) = blocking::blocked_reply(&iq) {
                    r.set("to", self.handle.jid.as_str());
                    self.send(&r);
                }
                return;
            }
            if blocking::blocks(&server, &j.bare(), &Jid::from(self.handle.jid.clone())).await {
                if request {
                    self.reply_error(&iq, "service-unavailable", None);
                }
                return;
            }
        }
        if let Some(j) = &to
            && server.components.handles(j.domain().as_str())
        {
            if !server.components.deliver(j.domain().as_str(), &iq) && request {
                self.reply_error(&iq, "service-unavailable", None);
            }
            return;
        }
        if let Some(j) = &to
            && server.upload.handles(j.domain().as_str())
        {
            if let Some(mut r) = server
                .upload
                .handle_iq(&server, &iq, &self.handle.jid)
                .await
            {
                r.set("to", self.handle.jid.as_str());
                self.send(&r);
            }
            return;
        }
        if let Some(j) = &to
            && server.muc.handles(j.domain().as_str())
        {
            if j.node().is_some()
                && j.resource().is_none()
                && iq
                    .first_child()
                    .is_some_and(|q| q.is("query", crate::xep::mam::NS))
                && kind == "set"
            {
                if let Some(mut r) = server.muc.mam_query(&server, &iq, &self.handle.jid).await {
                    r.set("to", self.handle.jid.as_str());
                    self.send(&r);
                }
                return;
            }
            server.muc.handle(&server, iq);
            return;
        }
        let target = match &to {
            None => Target::Account {
                jid: self.bare.clone(),
                own: true,
            },
            Some(j) if !server.config.serves(j.domain().as_str()) => {
                crate::s2s::send(&server, iq);
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
            // Answers to the server: our caps queries feed PEP; pings need nothing more.
            if matches!(target, Target::Server(_)) && crate::xep::caps::on_result(&server, &iq) {
                crate::xep::pep::send_last_items(&server, &self.handle).await;
            }
            return;
        }
        let payload = iq.first_child().expect("checked above");
        if payload.is("session", ns::SESSION) && kind == "set" {
            // RFC 3921 session establishment: a no-op that older clients still send after bind.
            let mut reply = crate::stanza::iq_result(&iq, None);
            reply.set("to", self.handle.jid.as_str());
            self.send(&reply);
            return;
        }
        if let Target::Account { own: true, .. } = target
            && payload.is("query", ns::ROSTER)
        {
            let mut reply = im::roster::handle_iq(&server, &self.handle.jid, &iq, payload).await;
            reply.set("to", self.handle.jid.as_str());
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
            from: &self.handle.jid,
            target: &target,
            iq: &iq,
            payload,
        };
        match server.modules.handle_iq(&server, &req).await {
            Some(mut reply) => {
                reply.set("to", self.handle.jid.as_str());
                self.send(&reply);
            }
            None => self.reply_error(&iq, "service-unavailable", None),
        }
    }
}

/// Route again the messages a session never delivered: to another resource
/// of the account, or offline storage. Copies (carbons) and non-messages are
/// not resent; an unanswered IQ request gets an error back.
async fn reroute(server: &Server, stanzas: &[Bytes]) {
    for b in stanzas {
        let Ok(text) = std::str::from_utf8(b) else {
            continue;
        };
        let Ok(e) = text.parse::<Element>() else {
            continue;
        };
        match e.name() {
            "message" => {
                if e.has_child("sent", crate::xep::carbons::NS)
                    || e.has_child("received", crate::xep::carbons::NS)
                {
                    continue;
                }
                let Some(to) = e.attr("to").and_then(|t| Jid::new(t).ok()) else {
                    continue;
                };
                im::message::route(server, e, to).await;
            }
            "iq" if matches!(e.attr("type"), Some("get" | "set")) => {
                im::bounce(server, &e, "service-unavailable", None);
            }
            _ => {}
        }
    }
}

fn is_client_message(e: &Element) -> bool {
    e.name() == "message" && e.has_ns(ns::CLIENT)
}
