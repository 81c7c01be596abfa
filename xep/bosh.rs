//! XEP-0206 XMPP over BOSH (XEP-0124) at `/http-bind`.
//!
//! Each BOSH session runs the ordinary c2s negotiation and session loop on a
//! `Transport::Bosh`: request bodies are parsed (with the usual limits) into
//! stream events for it, and what it writes is collected into response
//! bodies. One request is held open for up to `wait` seconds; a newer request
//! releases it (hold = 1). A session no client polls for `inactivity` seconds
//! is dropped like a broken connection (so stream management can resume it).

use crate::server::Server;
use crate::xml::{StreamEvent, StreamHeader, StreamParser, ns};
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

pub const NS: &str = "http://jabber.org/protocol/httpbind";
const XBOSH: &str = "urn:xmpp:xbosh";
const MAX_WAIT: u64 = 60;
const INACTIVITY: u64 = 60;
/// Elements a session may have waiting for the client's next request.
const OUT_QUEUE: usize = 256;

/// What the session loop hands to the HTTP side.
pub enum BoshOut {
    Frame(Bytes),
    /// The stream ended (`</stream:stream>`).
    End,
}

struct BoshSession {
    inbound: mpsc::Sender<StreamEvent>,
    outbound: tokio::sync::Mutex<mpsc::Receiver<BoshOut>>,
    /// The rid the next request must carry.
    next_rid: Mutex<u64>,
    wait: u64,
    domain: String,
    last_seen: Mutex<Instant>,
    /// Bumped by every request; an older held request sees it and returns.
    generation: AtomicU64,
    newer: Notify,
    ended: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
pub struct BoshSessions {
    sessions: Mutex<HashMap<String, Arc<BoshSession>>>,
}

impl BoshSessions {
    /// Drop sessions nobody polled for a while, every few seconds.
    pub fn spawn_janitor(server: Arc<Server>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let mut m = server.bosh.sessions.lock().unwrap();
                m.retain(|_, s| {
                    let idle = s.last_seen.lock().unwrap().elapsed()
                        > Duration::from_secs(INACTIVITY + s.wait);
                    !idle && !s.ended.load(Ordering::Relaxed)
                });
            }
        })
    }
}

fn body(attrs: &str, content: &str) -> Response {
    let xml = format!("<body xmlns='{NS}'{attrs}>{content}</body>");
    (
        [
            (header::CONTENT_TYPE, "text/xml; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        xml,
    )
        .into_response()
}

fn terminate(condition: &str) -> Response {
    body(&format!(" type='terminate' condition='{condition}'"), "")
}

pub async fn options() -> Response {
    (
        StatusCode::OK,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"),
        ],
    )
        .into_response()
}

/// Parse a request `<body/>`: its attributes and the elements inside, each
/// put in `jabber:client` when the client left them in the BOSH namespace.
fn parse(text: &str, max: usize, depth: usize) -> Option<(StreamHeader, Vec<minidom::Element>)> {
    let mut p = StreamParser::new(max, depth);
    let mut out = Vec::new();
    p.feed(text.as_bytes(), &mut out).ok()?;
    let mut it = out.into_iter();
    let Some(StreamEvent::Header(h)) = it.next() else {
        return None;
    };
    if h.ns != NS || h.name != "body" {
        return None;
    }
    let mut elements = Vec::new();
    for ev in it {
        let StreamEvent::Stanza(e) = ev else { continue };
        if e.ns() == NS {
            use crate::xml::ElementExt;
            let fixed = String::from_utf8_lossy(&e.to_bytes()).replacen(
                &format!("xmlns='{NS}'"),
                &format!("xmlns='{}'", ns::CLIENT),
                1,
            );
            let mut q = StreamParser::new(max, depth);
            let mut o = Vec::new();
            q.feed(
                format!("<r xmlns='{}'>{fixed}</r>", ns::CLIENT).as_bytes(),
                &mut o,
            )
            .ok()?;
            elements.extend(o.into_iter().filter_map(|x| {
                if let StreamEvent::Stanza(s) = x {
                    Some(s)
                } else {
                    None
                }
            }));
        } else {
            elements.push(e);
        }
    }
    Some((h, elements))
}

fn attr<'a>(h: &'a StreamHeader, ns: &str, name: &str) -> Option<&'a str> {
    h.attrs
        .iter()
        .find(|(a, n, _)| a == ns && n == name)
        .map(|(_, _, v)| v.as_str())
}

pub async fn request(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(crate::http::Secure(tls)): axum::Extension<crate::http::Secure>,
    text: String,
) -> Response {
    let limits = &server.config.limits;
    let Some((h, elements)) = parse(&text, limits.max_stanza_bytes + 4096, limits.max_depth) else {
        return terminate("bad-request");
    };
    let Some(rid) = attr(&h, "", "rid").and_then(|r| r.parse::<u64>().ok()) else {
        return terminate("bad-request");
    };
    match attr(&h, "", "sid") {
        None => create(server, peer, tls, &h, rid).await,
        Some(sid) => {
            let session = server.bosh.sessions.lock().unwrap().get(sid).cloned();
            match session {
                Some(s) => continue_session(&server, sid, s, &h, rid, elements).await,
                None => terminate("item-not-found"),
            }
        }
    }
}

async fn create(
    server: Arc<Server>,
    peer: SocketAddr,
    tls: bool,
    h: &StreamHeader,
    rid: u64,
) -> Response {
    let Some(to) = h.to.clone().map(|t| t.to_lowercase()) else {
        return terminate("improper-addressing");
    };
    if !server.config.serves(&to) {
        return terminate("host-unknown");
    }
    let wait = attr(h, "", "wait")
        .and_then(|w| w.parse().ok())
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let sid = crate::c2s::new_id();
    let session = Arc::new(BoshSession {
        inbound: in_tx,
        outbound: tokio::sync::Mutex::new(out_rx),
        next_rid: Mutex::new(rid + 1),
        wait,
        domain: to.clone(),
        last_seen: Mutex::new(Instant::now()),
        generation: AtomicU64::new(0),
        newer: Notify::new(),
        ended: Default::default(),
    });
    server
        .bosh
        .sessions
        .lock()
        .unwrap()
        .insert(sid.clone(), session.clone());
    // Loopback counts as secure, like WebSocket (a local proxy or development).
    let secure = tls || peer.ip().is_loopback();
    let io = crate::net::Transport::Bosh {
        inbound: in_rx,
        outbound: out_tx,
        secure,
    };
    tokio::spawn(crate::c2s::serve_transport(server.clone(), io, peer));
    let version = attr(h, XBOSH, "version").unwrap_or("1.0").to_string();
    let _ = session.inbound.send(header_for(&to, &version)).await;
    let (content, ended) = collect(&session, 0, Duration::from_secs(10)).await;
    let attrs = format!(
        " sid='{sid}' wait='{wait}' requests='2' hold='1' inactivity='{INACTIVITY}' polling='2' ver='1.11' from='{}' secure='{secure}' \
         xmpp:version='1.0' xmlns:xmpp='{XBOSH}' xmlns:stream='{}'{}",
        crate::xml::escape(&to),
        ns::STREAM,
        if ended {
            " type='terminate' condition='remote-stream-error'"
        } else {
            ""
        }
    );
    body(&attrs, &content)
}

fn header_for(to: &str, version: &str) -> StreamEvent {
    StreamEvent::Header(StreamHeader {
        to: Some(to.to_string()),
        from: None,
        version: Some(version.to_string()),
        lang: None,
        id: None,
        ns: ns::STREAM.into(),
        name: "stream".into(),
        attrs: Vec::new(),
    })
}

async fn continue_session(
    server: &Server,
    sid: &str,
    s: Arc<BoshSession>,
    h: &StreamHeader,
    rid: u64,
    elements: Vec<minidom::Element>,
) -> Response {
    {
        let mut next = s.next_rid.lock().unwrap();
        // In order (or the one request that may overtake a held one).
        if rid != *next && rid != *next + 1 {
            drop(next);
            server.bosh.sessions.lock().unwrap().remove(sid);
            return terminate("item-not-found");
        }
        *next = (*next).max(rid + 1);
    }
    *s.last_seen.lock().unwrap() = Instant::now();
    let generation = s.generation.fetch_add(1, Ordering::SeqCst) + 1;
    s.newer.notify_waiters();
    if attr(h, XBOSH, "restart") == Some("true") {
        let _ = s.inbound.send(header_for(&s.domain, "1.0")).await;
    }
    for e in elements {
        if s.inbound.send(StreamEvent::Stanza(e)).await.is_err() {
            break;
        }
    }
    if attr(h, "", "type") == Some("terminate") {
        let _ = s.inbound.send(StreamEvent::Close).await;
        let _ = collect(&s, generation, Duration::from_secs(2)).await;
        server.bosh.sessions.lock().unwrap().remove(sid);
        return body(" type='terminate'", "");
    }
    let (content, ended) = collect(&s, generation, Duration::from_secs(s.wait)).await;
    *s.last_seen.lock().unwrap() = Instant::now();
    if ended {
        server.bosh.sessions.lock().unwrap().remove(sid);
        let cond = if content.contains("<stream:error") {
            " condition='remote-stream-error'"
        } else {
            ""
        };
        return body(
            &format!(" type='terminate'{cond} xmlns:stream='{}'", ns::STREAM),
            &content,
        );
    }
    body("", &content)
}

/// Wait up to `wait` for output, then take everything ready. Returns the
/// elements and whether the stream ended. A newer request ends the wait.
async fn collect(s: &BoshSession, generation: u64, wait: Duration) -> (String, bool) {
    let mut out = String::new();
    let mut rx = tokio::select! {
        rx = s.outbound.lock() => rx,
        _ = s.newer.notified() => return (out, false),
    };
    let first = tokio::select! {
        item = tokio::time::timeout(wait, rx.recv()) => item,
        _ = s.newer.notified(), if generation != 0 => return (out, false),
    };
    // Appends a frame; `true` when the stream ended.
    let push = |item: Option<BoshOut>, out: &mut String| match item {
        Some(BoshOut::Frame(b)) => {
            out.push_str(&String::from_utf8_lossy(&b));
            false
        }
        Some(BoshOut::End) | None => true,
    };
    let mut ended = match first {
        Ok(item) => push(item, &mut out),
        Err(_) => return (out, false),
    };
    // Whatever else is ready goes in the same response.
    while !ended {
        ended = match rx.try_recv() {
            Ok(item) => push(Some(item), &mut out),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => true,
        };
    }
    if ended {
        s.ended.store(true, Ordering::Relaxed);
    }
    (out, ended)
}
