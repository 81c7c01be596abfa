//! XEP-0114 external components (`jabber:component:accept`): gateways, bots
//! and push app servers connect with a shared secret and then own a domain.
//! Stanzas to that domain go to the component; stanzas from it must come from
//! it, and are routed like anyone else's.

use crate::c2s::conn::{ConnError, XmlConn};
use crate::net::Transport;
use crate::server::Server;
use crate::stanza::error_reply;
use crate::xml::{ElementExt, StreamEvent, StreamParser, ns};
use bytes::Bytes;
use jid::Jid;
use minidom::Element;
use sha1::Digest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub const NS: &str = "jabber:component:accept";
const QUEUE: usize = 4096;

/// Connected components by domain.
#[derive(Default)]
pub struct Components {
    connected: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
}

impl Components {
    pub fn handles(&self, domain: &str) -> bool {
        self.connected.lock().unwrap().contains_key(domain)
    }

    /// Send a stanza to the component owning `domain`; `false` if none is connected.
    pub fn deliver(&self, domain: &str, stanza: &Element) -> bool {
        let Some(tx) = self.connected.lock().unwrap().get(domain).cloned() else {
            return false;
        };
        let Some(out) = renamespace(stanza, ns::CLIENT, NS) else {
            return false;
        };
        tx.try_send(Bytes::from(out.to_bytes())).is_ok()
    }
}

/// The same stanza in another default namespace (client ↔ component streams).
pub(crate) fn renamespace(e: &Element, from: &str, to: &str) -> Option<Element> {
    if e.ns() != from {
        return Some(e.clone());
    }
    let text = String::from_utf8(e.to_bytes()).ok()?.replacen(
        &format!("xmlns='{from}'"),
        &format!("xmlns='{to}'"),
        1,
    );
    let mut p = StreamParser::new(usize::MAX / 2, 256);
    let mut out = Vec::new();
    p.feed(format!("<r xmlns='{to}'>{text}</r>").as_bytes(), &mut out)
        .ok()?;
    out.into_iter().find_map(|ev| {
        if let StreamEvent::Stanza(s) = ev {
            Some(s)
        } else {
            None
        }
    })
}

/// Serve one component connection.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut conn = XmlConn::new(Transport::Plain(tcp), &server.config.limits);
    let domain = match tokio::time::timeout(
        std::time::Duration::from_secs(30),
        handshake(&server, &mut conn),
    )
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err((cond, from))) => {
            raw_error(&mut conn, cond, &from).await;
            return;
        }
        Err(_) => {
            raw_error(&mut conn, "connection-timeout", "").await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let taken = {
        let mut c = server.components.connected.lock().unwrap();
        let taken = c.contains_key(&domain);
        if !taken {
            c.insert(domain.clone(), tx);
        }
        taken
    };
    if taken {
        raw_error(&mut conn, "conflict", &domain).await;
        return;
    }
    if conn.write(b"<handshake/>").await.is_err() {
        server.components.connected.lock().unwrap().remove(&domain);
        return;
    }
    tracing::info!(%domain, %peer, "component connected");
    let end: Option<&'static str> = 'run: loop {
        while let Some(ev) = conn.pop() {
            match ev {
                StreamEvent::Stanza(e) => {
                    if let Err(cond) = route_from(&server, &domain, e).await {
                        break 'run Some(cond);
                    }
                }
                StreamEvent::Close => break 'run None,
                StreamEvent::Header(_) => break 'run Some("not-well-formed"),
            }
        }
        tokio::select! {
            Some(first) = rx.recv() => {
                let mut frames = vec![first];
                while frames.len() < 64 {
                    match rx.try_recv() {
                        Ok(b) => frames.push(b),
                        Err(_) => break,
                    }
                }
                let refs: Vec<&[u8]> = frames.iter().map(|b| &b[..]).collect();
                if conn.write_frames(&refs).await.is_err() {
                    break None;
                }
            }
            r = conn.read_some() => match r {
                Ok(()) => {}
                Err(ConnError::Xml(x)) => break Some(x.condition()),
                Err(_) => break None,
            },
        }
    };
    server.components.connected.lock().unwrap().remove(&domain);
    if let Some(cond) = end {
        raw_error(&mut conn, cond, &domain).await;
    } else {
        let _ = conn.write(b"</stream:stream>").await;
        conn.close().await;
    }
    tracing::info!(%domain, "component disconnected");
}

async fn raw_error(conn: &mut XmlConn, cond: &str, from: &str) {
    if !conn.header_sent {
        let _ = send_header(conn, from, &crate::c2s::new_id()).await;
    }
    let _ = conn
        .write(&crate::stanza::stream_error_bytes(cond, None))
        .await;
    conn.close().await;
}

async fn send_header(conn: &mut XmlConn, from: &str, id: &str) -> std::io::Result<()> {
    conn.header_sent = true;
    let h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS}' xmlns:stream='{}' id='{id}' from='{}'>",
        ns::STREAM,
        crate::xml::escape(from)
    );
    conn.write(h.as_bytes()).await
}

/// Header, then `<handshake>` = hex(SHA-1(stream id + secret)); the domain on
/// success (the caller acknowledges once the domain is registered).
async fn handshake(server: &Server, conn: &mut XmlConn) -> Result<String, (&'static str, String)> {
    let h = match conn.next().await {
        Ok(StreamEvent::Header(h)) => h,
        _ => return Err(("not-well-formed", String::new())),
    };
    if !crate::xml::is_stream_root(&h) {
        return Err(("invalid-namespace", String::new()));
    }
    let domain = h.to.unwrap_or_default().to_lowercase();
    let Some(svc) = server
        .config
        .components
        .services
        .iter()
        .find(|s| s.domain == domain)
    else {
        return Err(("host-unknown", domain));
    };
    let id = crate::c2s::new_id();
    send_header(conn, &domain, &id)
        .await
        .map_err(|_| ("internal-server-error", domain.clone()))?;
    let e = match conn.next().await {
        Ok(StreamEvent::Stanza(e)) if e.is("handshake", NS) => e,
        _ => return Err(("not-authorized", domain)),
    };
    let expected: String = sha1::Sha1::digest(format!("{id}{}", svc.secret).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let given = e.text().trim().to_ascii_lowercase();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        given.as_bytes(),
    )) {
        return Err(("not-authorized", domain));
    }
    Ok(domain)
}

/// A stanza from the component: check its addresses, then route it.
async fn route_from(server: &Server, domain: &str, e: Element) -> Result<(), &'static str> {
    if e.ns() != NS || !matches!(e.name(), "message" | "presence" | "iq") {
        return Err("unsupported-stanza-type");
    }
    let from = e.attr("from").and_then(|f| Jid::new(f).ok());
    if from.as_ref().is_none_or(|f| f.domain().as_str() != domain) {
        return Err("invalid-from");
    }
    let Some(to) = e.attr("to").and_then(|t| Jid::new(t).ok()) else {
        return Err("improper-addressing");
    };
    let Some(stanza) = renamespace(&e, NS, ns::CLIENT) else {
        return Err("not-well-formed");
    };
    if stanza.name() == "iq"
        && matches!(stanza.attr("type"), Some("result" | "error"))
        && to.resource().is_none()
    {
        // Answers to the server's own requests (e.g. push notifications): nothing to forward.
        return Ok(());
    }
    let dom = to.domain().as_str().to_string();
    if server.components.handles(&dom) {
        server.components.deliver(&dom, &stanza);
    } else if server.config.serves(&dom) || server.muc.handles(&dom) {
        match stanza.name() {
            "message" => crate::im::message::route(server, stanza, to).await,
            _ => {
                if to.node().is_none() && server.config.serves(&dom) {
                    // The server itself answers nothing to components yet.
                    if let Some(r) = error_reply(&stanza, "service-unavailable", None) {
                        server.components.deliver(domain, &r);
                    }
                } else if crate::im::to_jid(server, &to, &stanza) == 0
                    && matches!(stanza.attr("type"), Some("get" | "set"))
                    && let Some(r) = error_reply(&stanza, "service-unavailable", None)
                {
                    server.components.deliver(domain, &r);
                }
            }
        }
    } else if let Some(r) = error_reply(&stanza, "remote-server-not-found", None) {
        server.components.deliver(domain, &r);
    }
    Ok(())
}
