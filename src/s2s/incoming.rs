//! Incoming server-to-server streams: STARTTLS (required), then XEP-0220
//! dialback. Stanzas are accepted only from domains this stream
//! authenticated, and only for domains we serve.

use super::{DIALBACK_FEATURE, DIALBACK_NS, NS};
use crate::c2s::conn::XmlConn;
use crate::net::Transport;
use crate::server::Server;
use crate::xml::{BuilderExt, StreamEvent, el, escape, ns};
use jid::Jid;
use minidom::Element;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

type Refusal = (&'static str, Option<String>);

pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut conn = XmlConn::new(Transport::Plain(tcp), &server.config.limits);
    let mut local = server.config.hosts[0].clone();
    match run(&server, &mut conn, &mut local).await {
        Ok(()) => {
            let _ = conn.end_stream().await;
            conn.close().await;
        }
        Err((condition, text)) => {
            tracing::info!(%peer, condition, "s2s: incoming stream refused");
            if !conn.header_sent {
                let _ = send_header(&mut conn, &local, &crate::c2s::new_id()).await;
            }
            conn.stream_error(condition, text.as_deref(), &local).await;
        }
    }
}

async fn send_header(conn: &mut XmlConn, local: &str, id: &str) -> std::io::Result<()> {
    conn.header_sent = true;
    let h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS}' xmlns:stream='{}' xmlns:db='{DIALBACK_NS}' id='{id}' from='{}' version='1.0'>",
        ns::STREAM,
        escape(local)
    );
    conn.write(h.as_bytes()).await
}

/// Read the peer's header, answer with ours and the features of this stage.
async fn open(
    server: &Server,
    conn: &mut XmlConn,
    local: &mut String,
    id: &str,
) -> Result<(), Refusal> {
    let h = match conn.next().await {
        Ok(StreamEvent::Header(h)) => h,
        _ => return Err(("not-well-formed", None)),
    };
    if !crate::xml::is_stream_root(&h) {
        return Err(("invalid-namespace", None));
    }
    let to = h.to.unwrap_or_default().to_lowercase();
    if !server.config.serves(&to) && !server.muc.handles(&to) {
        return Err(("host-unknown", Some(format!("{to} is not served here"))));
    }
    *local = to;
    send_header(conn, local, id)
        .await
        .map_err(|_| ("internal-server-error", None))?;
    let mut f = el("features", ns::STREAM);
    if conn.io.is_tls() {
        f = f.c(el("dialback", DIALBACK_FEATURE)
            .c(el("errors", DIALBACK_FEATURE).build())
            .build());
    } else {
        f = f.c(el("starttls", ns::TLS)
            .c(el("required", ns::TLS).build())
            .build());
    }
    conn.send_features(&f.build())
        .await
        .map_err(|_| ("internal-server-error", None))
}

async fn run(server: &Arc<Server>, conn: &mut XmlConn, local: &mut String) -> Result<(), Refusal> {
    let timeout = Duration::from_secs(server.config.s2s.connect_timeout.max(1));
    tokio::time::timeout(timeout, starttls(server, conn, local))
        .await
        .map_err(|_| ("connection-timeout", None))??;
    let id = crate::c2s::new_id();
    open(server, conn, local, &id).await?;

    // Domains this stream proved it speaks for.
    let mut authed: HashSet<String> = HashSet::new();
    // Dialback verifications run in tasks (they need our own stream to the
    // peer); their answers come back here to be written in order.
    let (vtx, mut vrx) = mpsc::channel::<(String, bool, String)>(16);
    let idle = Duration::from_secs(server.config.s2s.idle_timeout.max(1));
    let mut last = Instant::now();
    loop {
        tokio::select! {
            Some((domain, valid, reply)) = vrx.recv() => {
                if valid {
                    tracing::info!(domain, "s2s: incoming stream authenticated (dialback)");
                    authed.insert(domain);
                }
                conn.write(reply.as_bytes()).await.map_err(|_| ("connection-timeout", None))?;
            }
            r = conn.read_some() => {
                if r.is_err() {
                    return Err(("connection-timeout", None));
                }
                last = Instant::now();
                while let Some(ev) = conn.pop() {
                    match ev {
                        StreamEvent::Close => return Ok(()),
                        StreamEvent::Header(_) => return Err(("not-well-formed", None)),
                        StreamEvent::Stanza(e) => {
                            element(server, conn, &id, &authed, &vtx, e).await?;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(last + idle) => return Ok(()),
        }
    }
}

/// Before TLS: the header, then nothing but `<starttls/>`.
async fn starttls(server: &Server, conn: &mut XmlConn, local: &mut String) -> Result<(), Refusal> {
    open(server, conn, local, &crate::c2s::new_id()).await?;
    match conn.next().await {
        Ok(StreamEvent::Stanza(e)) if e.is("starttls", ns::TLS) => {}
        _ => return Err(("policy-violation", Some("STARTTLS is required".into()))),
    }
    conn.write(format!("<proceed xmlns='{}'/>", ns::TLS).as_bytes())
        .await
        .map_err(|_| ("internal-server-error", None))?;
    let Transport::Plain(tcp) = std::mem::replace(&mut conn.io, Transport::Gone) else {
        return Err(("internal-server-error", None));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(server));
    let tls = acceptor.accept(tcp).await.map_err(|e| {
        tracing::info!(error = %e, "s2s: TLS handshake failed");
        ("policy-violation", Some("TLS handshake failed".into()))
    })?;
    conn.io = Transport::Tls(Box::new(tls));
    conn.restart();
    Ok(())
}

async fn element(
    server: &Arc<Server>,
    conn: &mut XmlConn,
    id: &str,
    authed: &HashSet<String>,
    vtx: &mpsc::Sender<(String, bool, String)>,
    e: Element,
) -> Result<(), Refusal> {
    let from = e.attr("from").unwrap_or_default().to_lowercase();
    let to = e.attr("to").unwrap_or_default().to_lowercase();
    if e.is("result", DIALBACK_NS) && e.attr("type").is_none() {
        // The peer claims `from`: check the key with from's authoritative server.
        if !server.config.serves(&to) && !server.muc.handles(&to) {
            return Err(("host-unknown", None));
        }
        if Jid::new(&from).is_err() {
            return Err(("invalid-from", None));
        }
        let (server, id, vtx, key) = (server.clone(), id.to_string(), vtx.clone(), e.text());
        tokio::spawn(async move {
            let valid = server.s2s.verify(&to, &from, &id, &key).await;
            let reply = format!(
                "<db:result from='{}' to='{}' type='{}'/>",
                escape(&to),
                escape(&from),
                if valid { "valid" } else { "invalid" }
            );
            let _ = vtx.send((from, valid, reply)).await;
        });
        return Ok(());
    }
    if e.is("verify", DIALBACK_NS) && e.attr("type").is_none() {
        // Another server asks whether we issued this key: answer from our secret.
        let stream = e.attr("id").unwrap_or_default();
        let valid = super::dialback::matches(&server.s2s.key(&to, &from, stream), &e.text());
        let reply = format!(
            "<db:verify from='{}' to='{}' id='{}' type='{}'/>",
            escape(&to),
            escape(&from),
            escape(stream),
            if valid { "valid" } else { "invalid" }
        );
        return conn
            .write(reply.as_bytes())
            .await
            .map_err(|_| ("connection-timeout", None));
    }
    if e.ns() != NS || !matches!(e.name(), "message" | "presence" | "iq") {
        return Err(("unsupported-stanza-type", None));
    }
    // RFC 6120 §13.7.1.3: only from domains this stream authenticated.
    let from_domain = Jid::new(&from).map(|j| j.domain().to_string());
    if !from_domain.as_ref().is_ok_and(|d| authed.contains(d)) {
        return Err((
            "invalid-from",
            Some("the sending domain was not authenticated on this stream".into()),
        ));
    }
    let to_domain = Jid::new(&to).map(|j| j.domain().to_string());
    match to_domain {
        Ok(d) if !super::is_remote(server, &d) => {}
        _ => return Err(("host-unknown", None)),
    }
    let Some(stanza) = crate::component::renamespace(&e, NS, ns::CLIENT) else {
        return Err(("not-well-formed", None));
    };
    super::inbound(server, stanza).await;
    Ok(())
}

/// The c2s TLS configuration (certificates by SNI) with the s2s ALPN name:
/// peers offering "xmpp-server" must not meet our "xmpp-client" only.
fn tls_config(server: &Server) -> Arc<rustls::ServerConfig> {
    server
        .s2s
        .tls
        .get_or_init(|| {
            let mut c = (*server.tls).clone();
            c.alpn_protocols = vec![b"xmpp-server".to_vec()];
            Arc::new(c)
        })
        .clone()
}
