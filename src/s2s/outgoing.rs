//! One outgoing server-to-server stream (local domain → remote domain):
//! connect (resolve.rs), TLS (STARTTLS, or direct TLS per XEP-0368),
//! authenticate by SASL EXTERNAL or else dialback, then write queued
//! stanzas and dialback verification requests until idle.

use super::{DIALBACK_NS, NS, Out, resolve, wire};
use crate::c2s::conn::XmlConn;
use crate::net::Transport;
use crate::server::Server;
use crate::xml::{StreamEvent, escape, ns};
use minidom::Element;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

type Failure = &'static str;

pub(super) async fn run(
    server: &Arc<Server>,
    local: &str,
    remote: &str,
    mut rx: mpsc::Receiver<Out>,
) -> Vec<Out> {
    let timeout = Duration::from_secs(server.config.s2s.connect_timeout.max(1));
    let deadline = Instant::now() + timeout;
    let opened = match tokio::time::timeout(timeout, establish(server, local, remote)).await {
        Ok(r) => r,
        Err(_) => Err("remote-server-timeout"),
    };
    let (mut conn, external) = match opened {
        Ok(c) => c,
        Err(condition) => {
            tracing::info!(local, remote, condition, "s2s: no stream to remote server");
            // Everything waiting for this link fails now; later stanzas try again.
            rx.close();
            while let Ok(out) = rx.try_recv() {
                fail(server, out, condition);
            }
            return Vec::new();
        }
    };
    // Our <db:result/> is out. Until it is accepted stanzas wait, but
    // verification requests go at once: the remote server may be waiting
    // for one before it answers ours (each side verifies the other).
    let mut authed = external;
    let mut held: Vec<Out> = Vec::new();
    let idle = Duration::from_secs(server.config.s2s.idle_timeout.max(1));
    let mut last = Instant::now();
    let mut verifies: HashMap<String, oneshot::Sender<bool>> = HashMap::new();
    let mut leftover = Vec::new();
    let mut failure: Option<Failure> = None;
    'pump: loop {
        let wake = if authed { last + idle } else { deadline };
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break };
                last = Instant::now();
                if !authed && matches!(out, Out::Stanza(_)) {
                    held.push(out);
                    continue;
                }
                if let Err(out) = write(&mut conn, local, remote, out, &mut verifies).await {
                    leftover.push(out);
                    break;
                }
            }
            r = conn.read_some() => {
                if r.is_err() {
                    break;
                }
                last = Instant::now();
                while let Some(ev) = conn.pop() {
                    match ev {
                        StreamEvent::Stanza(e) if e.is("verify", DIALBACK_NS) => {
                            let valid = e.attr("type") == Some("valid");
                            if let Some(tx) = e.attr("id").and_then(|id| verifies.remove(id)) {
                                let _ = tx.send(valid);
                            }
                        }
                        StreamEvent::Stanza(e) if e.is("result", DIALBACK_NS) && !authed => {
                            if e.attr("type") != Some("valid") {
                                failure = Some("remote-server-not-found");
                                break 'pump;
                            }
                            authed = true;
                            crate::metrics::Metrics::inc(&server.metrics.s2s_out_dialback);
                            tracing::info!(local, remote, "s2s: outgoing stream authenticated (dialback)");
                            for out in std::mem::take(&mut held) {
                                if let Err(out) = write(&mut conn, local, remote, out, &mut verifies).await {
                                    leftover.push(out);
                                    break 'pump;
                                }
                            }
                        }
                        StreamEvent::Close | StreamEvent::Header(_) => break 'pump,
                        // Nothing else is expected on a stream we opened.
                        _ => {}
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if !authed {
                    failure = Some("remote-server-timeout");
                } else {
                    tracing::debug!(local, remote, "s2s: closing idle outgoing stream");
                }
                break;
            }
        }
    }
    let _ = conn.end_stream().await;
    conn.close().await;
    rx.close();
    leftover.extend(held);
    while let Ok(out) = rx.try_recv() {
        leftover.push(out);
    }
    if !authed {
        let condition = failure.unwrap_or("remote-server-not-found");
        tracing::info!(
            local,
            remote,
            condition,
            "s2s: dialback with remote server failed"
        );
        leftover
            .into_iter()
            .for_each(|o| fail(server, o, condition));
        return Vec::new();
    }
    leftover
}

/// Write a stanza or a verification request; the item back if it failed.
async fn write(
    conn: &mut XmlConn,
    local: &str,
    remote: &str,
    out: Out,
    verifies: &mut HashMap<String, oneshot::Sender<bool>>,
) -> Result<(), Out> {
    let bytes = match &out {
        Out::Stanza(s) => wire(s),
        Out::Verify { id, key, .. } => format!(
            "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
            escape(local),
            escape(remote),
            escape(id),
            escape(key)
        )
        .into_bytes(),
    };
    if conn.write(&bytes).await.is_err() {
        return Err(out);
    }
    if let Out::Verify { id, reply, .. } = out {
        verifies.insert(id, reply);
    }
    Ok(())
}

/// What a link could not do: stanzas bounce, verifications fail.
pub(super) fn fail(server: &Server, out: Out, condition: Failure) {
    match out {
        Out::Stanza(s) => crate::im::bounce(server, &s, condition, None),
        Out::Verify { reply, .. } => {
            let _ = reply.send(false);
        }
    }
}

/// A stream to `remote`, and whether SASL EXTERNAL already authenticated
/// it (else our dialback key is on its way).
async fn establish(
    server: &Arc<Server>,
    local: &str,
    remote: &str,
) -> Result<(XmlConn, bool), Failure> {
    let targets = resolve::targets(&server.config.s2s, remote).await;
    let mut failure = "remote-server-not-found";
    // Each target gets a share of the link's time, so one address that
    // swallows packets does not keep the others from being tried.
    let per_target = Duration::from_secs((server.config.s2s.connect_timeout / 3).max(2));
    for t in targets {
        let tcp = match tokio::time::timeout(per_target, TcpStream::connect(t.addr)).await {
            Ok(Ok(tcp)) => tcp,
            _ => {
                tracing::debug!(remote, addr = %t.addr, "s2s: connect failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tracing::debug!(remote, addr = %t.addr, direct_tls = t.direct_tls, "s2s: connected");
        // A target that fails TLS or authentication: the next one may do better.
        match tokio::time::timeout(
            per_target,
            negotiate(server, tcp, local, remote, t.direct_tls),
        )
        .await
        {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(f)) => failure = f,
            Err(_) => failure = "remote-server-timeout",
        }
    }
    Err(failure)
}

async fn negotiate(
    server: &Arc<Server>,
    tcp: TcpStream,
    local: &str,
    remote: &str,
    direct_tls: bool,
) -> Result<(XmlConn, bool), Failure> {
    let mut conn = XmlConn::new(Transport::Plain(tcp), &server.config.limits);
    if !direct_tls {
        let (_, features) = open(&mut conn, local, remote).await?;
        // Encryption is required: a server that offers no STARTTLS gets nothing.
        if !features.has_child("starttls", ns::TLS) {
            return Err("remote-server-not-found");
        }
        conn.write(format!("<starttls xmlns='{}'/>", ns::TLS).as_bytes())
            .await
            .map_err(|_| "remote-server-not-found")?;
        match conn.next().await {
            Ok(StreamEvent::Stanza(p)) if p.is("proceed", ns::TLS) => {}
            _ => return Err("remote-server-not-found"),
        }
    }
    let Transport::Plain(tcp) = std::mem::replace(&mut conn.io, Transport::Gone) else {
        return Err("remote-server-not-found");
    };
    let name = rustls::pki_types::ServerName::try_from(remote.to_string())
        .map_err(|_| "remote-server-not-found")?;
    let peer = server.s2s.tls();
    let tls = tokio_rustls::TlsConnector::from(peer.client(local))
        .connect(name, tcp)
        .await
        .map_err(|_| "remote-server-not-found")?;
    let valid = peer.valid_for(tls.get_ref().1.peer_certificates(), remote);
    if !valid && server.config.s2s.require_valid_certificates {
        tracing::info!(
            local,
            remote,
            "s2s: the remote certificate is not valid for its domain (refused by policy)"
        );
        return Err("remote-server-not-found");
    }
    conn.io = Transport::TlsClient(Box::new(tls));
    conn.restart();
    let (id, features) = open(&mut conn, local, remote).await?;
    // RFC 6120 §6 / XEP-0178: a remote server that accepts our certificate
    // offers EXTERNAL; that authenticates us without a dialback round trip.
    if offers_external(&features) && sasl_external(&mut conn, local).await? {
        conn.restart();
        open(&mut conn, local, remote).await?;
        crate::metrics::Metrics::inc(&server.metrics.s2s_out_external);
        tracing::info!(
            local,
            remote,
            "s2s: outgoing stream authenticated (SASL EXTERNAL)"
        );
        return Ok((conn, true));
    }
    // XEP-0220: prove we are `local` by a key the remote server checks with us.
    let key = server.s2s.key(local, remote, &id);
    conn.write(
        format!(
            "<db:result from='{}' to='{}'>{key}</db:result>",
            escape(local),
            escape(remote)
        )
        .as_bytes(),
    )
    .await
    .map_err(|_| "remote-server-not-found")?;
    Ok((conn, false))
}

fn offers_external(features: &Element) -> bool {
    features.get_child("mechanisms", ns::SASL).is_some_and(|m| {
        m.children()
            .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
    })
}

/// SASL EXTERNAL as `local`: true on success, false when refused (dialback
/// may still work on the same stream).
async fn sasl_external(conn: &mut XmlConn, local: &str) -> Result<bool, Failure> {
    use base64::Engine;
    let authzid = base64::engine::general_purpose::STANDARD.encode(local);
    let auth = format!(
        "<auth xmlns='{}' mechanism='EXTERNAL'>{authzid}</auth>",
        ns::SASL
    );
    conn.write(auth.as_bytes())
        .await
        .map_err(|_| "remote-server-not-found")?;
    match conn.next().await {
        Ok(StreamEvent::Stanza(e)) if e.is("success", ns::SASL) => Ok(true),
        Ok(StreamEvent::Stanza(e)) if e.is("failure", ns::SASL) => {
            tracing::info!(local, "s2s: SASL EXTERNAL refused; trying dialback");
            Ok(false)
        }
        _ => Err("remote-server-not-found"),
    }
}

/// Send our header; read theirs and the features. Returns (stream id, features).
async fn open(conn: &mut XmlConn, local: &str, remote: &str) -> Result<(String, Element), Failure> {
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS}' xmlns:stream='{}' xmlns:db='{DIALBACK_NS}' from='{}' to='{}' version='1.0'>",
        ns::STREAM,
        escape(local),
        escape(remote)
    );
    conn.header_sent = true;
    conn.write(header.as_bytes())
        .await
        .map_err(|_| "remote-server-not-found")?;
    let id = match conn.next().await {
        Ok(StreamEvent::Header(h)) => h.id.unwrap_or_default(),
        _ => return Err("remote-server-not-found"),
    };
    match conn.next().await {
        Ok(StreamEvent::Stanza(f)) if f.is("features", ns::STREAM) => Ok((id, f)),
        _ => Err("remote-server-not-found"),
    }
}
