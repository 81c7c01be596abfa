//! Incoming server-to-server streams: STARTTLS (required), then SASL
//! EXTERNAL (a certificate valid for the peer's domain) or XEP-0220
//! dialback (unless the policy requires valid certificates). Stanzas are
//! accepted only from domains this stream authenticated, and only for
//! domains we serve.

use super::{DIALBACK_FEATURE, DIALBACK_NS, NS};
use crate::c2s::conn::XmlConn;
use crate::net::Transport;
use crate::server::Server;
use crate::xml::{BuilderExt, StreamEvent, el, escape, ns};
use jid::Jid;
use minidom::Element;
use rustls::pki_types::CertificateDer;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

type Refusal = (&'static str, Option<String>);

/// Serve one incoming stream; `direct_tls`: TLS from the first byte (XEP-0368).
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let _ = tcp.set_nodelay(true);
    let mut conn = XmlConn::new(Transport::Plain(tcp), &server.config.limits);
    let mut local = server.config.hosts[0].clone();
    match run(&server, &mut conn, &mut local, direct_tls).await {
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

/// What an incoming stream knows about its peer.
struct Peer {
    /// Our stream id (dialback keys are bound to it); new after a restart.
    id: String,
    /// The domain the peer named in its stream header (RFC 6120 §4.7.1).
    from: Option<String>,
    /// The certificate chain the peer presented in the TLS handshake.
    chain: Option<Vec<CertificateDer<'static>>>,
    /// Domains this stream proved it speaks for.
    authed: HashSet<String>,
    /// SASL is done (one authentication per stream; dialback may add domains).
    sasl_done: bool,
    /// Refused SASL attempts; a few are allowed, then the stream ends.
    auth_failures: u32,
}

impl Peer {
    fn cert_valid_for(&self, server: &Server, domain: &str) -> bool {
        server.s2s.tls().valid_for(self.chain.as_deref(), domain)
    }
}

/// Read the peer's header and answer with ours; returns the peer's `from`.
async fn open(
    server: &Server,
    conn: &mut XmlConn,
    local: &mut String,
    id: &str,
) -> Result<Option<String>, Refusal> {
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
    Ok(h.from.map(|f| f.to_lowercase()))
}

/// After TLS: SASL EXTERNAL when the peer's certificate is valid for the
/// domain it named, dialback unless the policy wants valid certificates.
async fn features(server: &Server, conn: &mut XmlConn, peer: &Peer) -> Result<(), Refusal> {
    let mut f = el("features", ns::STREAM);
    let external = !peer.sasl_done
        && peer
            .from
            .as_deref()
            .is_some_and(|d| peer.cert_valid_for(server, d));
    if external {
        f = f.c(el("mechanisms", ns::SASL)
            .c(el("mechanism", ns::SASL).t("EXTERNAL").build())
            .build());
    }
    if !server.config.s2s.require_valid_certificates {
        f = f.c(el("dialback", DIALBACK_FEATURE)
            .c(el("errors", DIALBACK_FEATURE).build())
            .build());
    }
    conn.send_features(&f.build())
        .await
        .map_err(|_| ("internal-server-error", None))
}

async fn run(
    server: &Arc<Server>,
    conn: &mut XmlConn,
    local: &mut String,
    direct_tls: bool,
) -> Result<(), Refusal> {
    let timeout = Duration::from_secs(server.config.s2s.connect_timeout.max(1));
    let tls = async {
        if direct_tls {
            accept_tls(server, conn).await
        } else {
            starttls(server, conn, local).await
        }
    };
    let chain = tokio::time::timeout(timeout, tls)
        .await
        .map_err(|_| ("connection-timeout", None))??;
    let id = crate::c2s::new_id();
    let from = tokio::time::timeout(timeout, open(server, conn, local, &id))
        .await
        .map_err(|_| ("connection-timeout", None))??;
    let mut peer = Peer {
        id,
        from,
        chain,
        authed: HashSet::new(),
        sasl_done: false,
        auth_failures: 0,
    };
    if server.config.s2s.require_valid_certificates
        && !peer
            .from
            .as_deref()
            .is_some_and(|d| peer.cert_valid_for(server, d))
    {
        // Neither EXTERNAL nor dialback could succeed: say so at once.
        return Err((
            "policy-violation",
            Some("a certificate valid for the sending domain is required".into()),
        ));
    }
    features(server, conn, &peer).await?;

    // Dialback verifications run in tasks (they need our own stream to the
    // peer); their answers come back here to be written in order.
    let (vtx, mut vrx) = mpsc::channel::<(String, bool, String)>(16);
    let idle = Duration::from_secs(server.config.s2s.idle_timeout.max(1));
    let mut last = Instant::now();
    loop {
        tokio::select! {
            Some((domain, valid, reply)) = vrx.recv() => {
                if valid {
                    crate::metrics::Metrics::inc(&server.metrics.s2s_in_dialback);
                    tracing::info!(domain, "s2s: incoming stream authenticated (dialback)");
                    peer.authed.insert(domain);
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
                        StreamEvent::Stanza(e) if e.is("auth", ns::SASL) => {
                            // On success the stream restarted (new header and features sent).
                            if sasl_external(server, conn, local, &mut peer, &e).await? {
                                break;
                            }
                        }
                        StreamEvent::Stanza(e) => {
                            element(server, conn, &peer, &vtx, e).await?;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(last + idle) => return Ok(()),
        }
    }
}

/// Before TLS: the header, then nothing but `<starttls/>`. Returns the
/// certificate chain the peer presented, if any.
async fn starttls(
    server: &Server,
    conn: &mut XmlConn,
    local: &mut String,
) -> Result<Option<Vec<CertificateDer<'static>>>, Refusal> {
    open(server, conn, local, &crate::c2s::new_id()).await?;
    let f = el("features", ns::STREAM)
        .c(el("starttls", ns::TLS)
            .c(el("required", ns::TLS).build())
            .build())
        .build();
    conn.send_features(&f)
        .await
        .map_err(|_| ("internal-server-error", None))?;
    match conn.next().await {
        Ok(StreamEvent::Stanza(e)) if e.is("starttls", ns::TLS) => {}
        _ => return Err(("policy-violation", Some("STARTTLS is required".into()))),
    }
    conn.write(format!("<proceed xmlns='{}'/>", ns::TLS).as_bytes())
        .await
        .map_err(|_| ("internal-server-error", None))?;
    accept_tls(server, conn).await
}

/// The TLS handshake (our certificate, theirs requested); returns the
/// chain the peer presented, if any.
async fn accept_tls(
    server: &Server,
    conn: &mut XmlConn,
) -> Result<Option<Vec<CertificateDer<'static>>>, Refusal> {
    let Transport::Plain(tcp) = std::mem::replace(&mut conn.io, Transport::Gone) else {
        return Err(("internal-server-error", None));
    };
    let handshake = crate::tls_stream::accept(tcp, server.s2s.tls().server.clone());
    let tls = handshake.await.map_err(|e| {
        tracing::info!(error = %e, "s2s: TLS handshake failed");
        ("policy-violation", Some("TLS handshake failed".into()))
    })?;
    let chain = tls
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect());
    conn.io = Transport::Tls(Box::new(tls));
    conn.restart();
    Ok(chain)
}

/// RFC 6120 §6 with XEP-0178: SASL EXTERNAL succeeds when the certificate
/// is valid for the domain the peer authenticates as (its stream `from`,
/// or the authorization identity it names). On success the stream restarts
/// (returns true); on failure the peer may still try dialback.
async fn sasl_external(
    server: &Server,
    conn: &mut XmlConn,
    local: &mut String,
    peer: &mut Peer,
    auth: &Element,
) -> Result<bool, Refusal> {
    use base64::Engine;
    let failure = |cond: &str| format!("<failure xmlns='{}'><{cond}/></failure>", ns::SASL);
    let text = auth.text();
    let text = text.trim();
    let authzid = match text {
        "" | "=" => peer.from.clone(),
        b64 => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|d| d.to_lowercase()),
    };
    let verdict = if peer.sasl_done {
        Err("not-authorized")
    } else if auth.attr("mechanism") != Some("EXTERNAL") {
        Err("invalid-mechanism")
    } else {
        match authzid {
            // Nobody speaks for our own domains but us.
            Some(d) if !super::is_remote(server, &d) => Err("not-authorized"),
            Some(d) if peer.cert_valid_for(server, &d) => Ok(d),
            Some(_) => Err("not-authorized"),
            None => Err("invalid-authzid"),
        }
    };
    let domain = match verdict {
        Ok(d) => d,
        Err(cond) => {
            peer.auth_failures += 1;
            if peer.auth_failures > 3 {
                return Err((
                    "policy-violation",
                    Some("too many authentication attempts".into()),
                ));
            }
            conn.write(failure(cond).as_bytes())
                .await
                .map_err(|_| ("connection-timeout", None))?;
            return Ok(false);
        }
    };
    conn.write(format!("<success xmlns='{}'/>", ns::SASL).as_bytes())
        .await
        .map_err(|_| ("connection-timeout", None))?;
    crate::metrics::Metrics::inc(&server.metrics.s2s_in_external);
    tracing::info!(domain, "s2s: incoming stream authenticated (SASL EXTERNAL)");
    peer.authed.insert(domain);
    peer.sasl_done = true;
    conn.restart();
    peer.id = crate::c2s::new_id();
    let id = peer.id.clone();
    let timeout = Duration::from_secs(server.config.s2s.connect_timeout.max(1));
    tokio::time::timeout(timeout, async {
        open(server, conn, local, &id).await?;
        features(server, conn, peer).await
    })
    .await
    .map_err(|_| ("connection-timeout", None))??;
    Ok(true)
}

async fn element(
    server: &Arc<Server>,
    conn: &mut XmlConn,
    peer: &Peer,
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
        if Jid::new(&from).is_err() || !super::is_remote(server, &from) {
            return Err(("invalid-from", None));
        }
        if server.config.s2s.require_valid_certificates {
            // XEP-0220 §2.4: refused by policy, told as a dialback error.
            let reply = format!(
                "<db:result from='{}' to='{}' type='error'><error type='cancel'><policy-violation xmlns='{}'/><text xmlns='{}'>a valid certificate is required</text></error></db:result>",
                escape(&to),
                escape(&from),
                ns::STANZA_ERRORS,
                ns::STANZA_ERRORS
            );
            return conn
                .write(reply.as_bytes())
                .await
                .map_err(|_| ("connection-timeout", None));
        }
        let (server, id, vtx, key) = (server.clone(), peer.id.clone(), vtx.clone(), e.text());
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
    if !from_domain.as_ref().is_ok_and(|d| peer.authed.contains(d)) {
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
