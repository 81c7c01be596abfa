//! Client-to-server streams (RFC 6120): header and features, STARTTLS, SASL,
//! resource binding; then the bound session loop in `session`. SASL2 with
//! Bind2 and FAST (one round trip, no restart) continues in `sasl2`.

pub mod auth_limit;
pub mod conn;
mod sasl2;
pub mod session;

use crate::config::TlsMode;
use crate::net::Transport;
use crate::router::{Kill, SessionHandle};
use crate::sasl::{self, HashAlg, SaslFailure, ScramServer};
use crate::util::Bare;

/// XEP-0440 channel-binding types we announce (TLS 1.3 streams only).
const CB_TYPES: &[&str] = &["tls-exporter"];
use crate::server::Server;
use crate::stanza;
use crate::xml::{BuilderExt, ElementExt, StreamEvent, StreamHeader, el, ns};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use conn::{ConnError, XmlConn};
use jid::{BareJid, FullJid};
use minidom::Element;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_RESOURCES_PER_ACCOUNT: usize = 64;

/// A random stream or stanza id.
pub fn new_id() -> String {
    let b = crate::random::bytes(9);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Negotiation ended in something other than a bound session.
#[derive(Debug)]
pub(crate) enum Abort {
    /// Send this stream error, then close.
    StreamError(&'static str, Option<String>),
    /// The peer went away or closed its stream: just close.
    Closed,
    /// The connection was handed to a resumed session (XEP-0198).
    Resumed,
}

impl From<ConnError> for Abort {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Xml(x) => Abort::StreamError(x.condition(), Some(x.text().to_string())),
            ConnError::Io(_) | ConnError::Eof => Abort::Closed,
        }
    }
}

impl From<std::io::Error> for Abort {
    fn from(_: std::io::Error) -> Self {
        Abort::Closed
    }
}

/// Serve one accepted TCP connection until it ends.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, mode: TlsMode) {
    // Two boxed phases: what the TLS handshake and the negotiation needed is
    // freed once the session is bound, so the task itself stays tiny.
    let Some(conn) = Box::pin(accept(server.clone(), tcp, peer, mode)).await else {
        return;
    };
    Box::pin(run(server, Box::new(conn), peer)).await;
}

/// TCP to an `XmlConn`: direct TLS handshake where the listener wants it.
async fn accept(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: TlsMode,
) -> Option<XmlConn> {
    let _ = tcp.set_nodelay(true);
    let io = match mode {
        TlsMode::Starttls => Transport::Plain(tcp),
        TlsMode::Direct => {
            let handshake = crate::tls_stream::accept(tcp, server.tls.clone());
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => return None,
            }
        }
    };
    Some(XmlConn::new(io, &server.config.limits))
}

/// Serve a connection on an already prepared transport (BOSH) until it ends.
pub async fn serve_transport(server: Arc<Server>, io: Transport, peer: SocketAddr) {
    let conn = Box::new(XmlConn::new(io, &server.config.limits));
    let m = server.clone();
    crate::metrics::Metrics::inc(&m.metrics.bosh_opened);
    crate::metrics::Metrics::inc(&m.metrics.bosh_open);
    run(server, conn, peer).await;
    m.metrics
        .bosh_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Serve an XMPP-over-WebSocket connection (RFC 7395) until it ends.
pub async fn serve_websocket(
    server: Arc<Server>,
    ws: axum::extract::ws::WebSocket,
    peer: SocketAddr,
    secure: bool,
) {
    let io = Transport::WebSocket {
        ws: Box::new(ws),
        secure,
    };
    let conn = Box::new(XmlConn::new(io, &server.config.limits));
    let m = server.clone();
    crate::metrics::Metrics::inc(&m.metrics.websocket_opened);
    crate::metrics::Metrics::inc(&m.metrics.websocket_open);
    run(server, conn, peer).await;
    m.metrics
        .websocket_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Negotiate, then run the session, on any transport.
async fn run(server: Arc<Server>, conn: Box<XmlConn>, peer: SocketAddr) {
    // The connection stays boxed from here on: this future and the session's
    // then hold a pointer, not one more copy each (idle memory).
    // The negotiation's result is moved into the session within one
    // statement, so this future keeps no room for it while the session runs.
    let session = match Box::pin(negotiate(server.clone(), conn, peer)).await {
        Some((mut conn, bound)) => {
            conn.io.forget_channel_binding();
            Box::pin(session::run(server, conn, bound))
        }
        None => return,
    };
    tracing::trace!(
        bytes = std::mem::size_of_val(&*session),
        conn = std::mem::size_of::<XmlConn>(),
        "bound session state"
    );
    session.await
}

/// Stream negotiation up to a bound session; on failure the stream is ended here.
async fn negotiate(
    server: Arc<Server>,
    mut conn: Box<XmlConn>,
    peer: SocketAddr,
) -> Option<(Box<XmlConn>, Bound)> {
    let mut neg = Negotiation {
        server: server.clone(),
        peer,
        domain: server.config.hosts[0].clone(),
        authed: None,
        failures: 0,
        proto: Proto::Sasl,
        sasl2: None,
        sasl2_success: None,
    };
    let login_timeout = Duration::from_secs(server.config.c2s.login_timeout);
    let outcome = match tokio::time::timeout(login_timeout, neg.run(&mut conn)).await {
        Ok(r) => r,
        Err(_) => Err(Abort::StreamError(
            "connection-timeout",
            Some("login took too long".into()),
        )),
    };
    match outcome {
        Ok(bound) => return Some((conn, bound)),
        Err(Abort::StreamError(cond, text)) => {
            let domain = neg.domain.clone();
            conn.stream_error(cond, text.as_deref(), &domain).await;
        }
        Err(Abort::Resumed) => {}
        Err(Abort::Closed) => {
            if conn.header_sent {
                conn.end_stream_and_close().await;
            } else {
                conn.close().await;
            }
        }
    }
    None
}

/// What a successful negotiation hands to the session loop.
pub struct Bound {
    pub handle: SessionHandle,
    pub rx: crate::router::QueueReader,
    /// Stream management already enabled (Bind2 inline).
    pub sm: Option<crate::xep::sm::SmState>,
    /// Start inactive (XEP-0352 via Bind2 inline).
    pub inactive: bool,
}

struct Negotiation {
    server: Arc<Server>,
    peer: SocketAddr,
    domain: String,
    authed: Option<BareJid>,
    failures: u32,
    /// Which SASL profile the current attempt uses.
    proto: Proto,
    /// The current SASL2 `<authenticate/>`.
    sasl2: Option<crate::xep::sasl2::Request>,
    /// SASL2 succeeded: what goes into `<success/>` (written once binding is decided).
    sasl2_success: Option<crate::xep::sasl2::Success>,
}

/// RFC 6120 SASL (success restarts the stream) or XEP-0388 SASL2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Sasl,
    Sasl2,
}

impl Proto {
    fn ns(self) -> &'static str {
        match self {
            Proto::Sasl => ns::SASL,
            Proto::Sasl2 => crate::xep::sasl2::NS,
        }
    }
}

enum Sasl {
    Idle,
    Scram(Box<ScramServer>, HashAlg),
}

impl Negotiation {
    async fn run(&mut self, conn: &mut XmlConn) -> Result<Bound, Abort> {
        loop {
            self.open_stream(conn).await?;
            if !conn.io.is_tls() {
                self.pre_tls(conn).await?;
                continue;
            }
            if self.authed.is_none() {
                self.authenticate(conn).await?;
                if let Some(success) = self.sasl2_success.take() {
                    // SASL2: no restart; bind inline or on this stream.
                    return self.after_sasl2(conn, success).await;
                }
                continue;
            }
            return self.bind(conn).await;
        }
    }

    /// Read the client's header, answer with ours and the features of this stage.
    async fn open_stream(&mut self, conn: &mut XmlConn) -> Result<(), Abort> {
        let hdr = match conn.next().await? {
            StreamEvent::Header(h) => h,
            _ => return Err(Abort::StreamError("not-well-formed", None)),
        };
        self.check_header(&hdr)?;
        conn.send_header(&self.domain, &new_id()).await?;
        let features = self.features(conn);
        conn.send_features(&features).await?;
        Ok(())
    }

    fn check_header(&mut self, h: &StreamHeader) -> Result<(), Abort> {
        if !crate::xml::is_stream_root(h) {
            return Err(Abort::StreamError("invalid-namespace", None));
        }
        if let Some(to) = &h.to {
            let to = to.to_lowercase();
            if !self.server.config.serves(&to) {
                return Err(Abort::StreamError(
                    "host-unknown",
                    Some(format!("{to} is not served here")),
                ));
            }
            if self.authed.is_some() && to != self.domain {
                return Err(Abort::StreamError(
                    "host-unknown",
                    Some("domain changed after authentication".into()),
                ));
            }
            self.domain = to;
        }
        match h.version.as_deref().and_then(|v| v.split_once('.')) {
            Some((major, _)) if major.parse::<u32>().is_ok_and(|m| m >= 1) => Ok(()),
            _ => Err(Abort::StreamError(
                "unsupported-version",
                Some("XMPP 1.0 streams only".into()),
            )),
        }
    }

    fn features(&self, conn: &XmlConn) -> Element {
        let mut f = el("features", ns::STREAM);
        if !conn.io.is_tls() {
            let mut tls = el("starttls", ns::TLS);
            if self.server.config.c2s.require_tls {
                tls = tls.c(el("required", ns::TLS).build());
            }
            f = f.c(tls.build());
        }
        if self.authed.is_none() && (conn.io.is_tls() || !self.server.config.c2s.require_tls) {
            let mut mechs = el("mechanisms", ns::SASL);
            for m in self.mechanisms(conn) {
                mechs = mechs.c(el("mechanism", ns::SASL).t(m).build());
            }
            f = f.c(mechs.build());
            if conn.io.can_bind_channel() {
                let mut cb = el("sasl-channel-binding", ns::SASL_CB);
                for t in CB_TYPES {
                    cb = cb.c(el("channel-binding", ns::SASL_CB).a("type", *t).build());
                }
                f = f.c(cb.build());
            }
            if conn.io.is_tls() {
                f = f.c(self.sasl2_feature(conn));
            }
            if self.server.config.registration.open {
                f = f.c(el("register", ns::REGISTER_FEATURE).build());
            }
        }
        if self.authed.is_some() {
            f = f
                .c(el("bind", ns::BIND).build())
                .c(el("session", ns::SESSION)
                    .c(el("optional", ns::SESSION).build())
                    .build())
                .c(el("sm", crate::xep::sm::NS).build())
                .c(el("csi", crate::xep::csi::NS).build())
                .c(el("ver", ns::ROSTER_VER).build())
                .c(el("sub", ns::PRE_APPROVAL).build());
        }
        f.build()
    }

    fn mechanisms(&self, conn: &XmlConn) -> Vec<&'static str> {
        let mut m = Vec::new();
        if conn.io.can_bind_channel() {
            m.extend(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]);
        }
        m.extend(["SCRAM-SHA-256", "SCRAM-SHA-1"]);
        if conn.io.is_tls() {
            m.push("PLAIN");
        }
        m
    }

    /// Before TLS: only STARTTLS (and nothing else when TLS is required).
    async fn pre_tls(&mut self, conn: &mut XmlConn) -> Result<(), Abort> {
        loop {
            let ev = conn.next().await?;
            let StreamEvent::Stanza(e) = ev else {
                return Err(Abort::Closed);
            };
            if e.is("starttls", ns::TLS) {
                conn.write(format!("<proceed xmlns='{}'/>", ns::TLS).as_bytes())
                    .await?;
                let Transport::Plain(tcp) = std::mem::replace(&mut conn.io, Transport::Gone) else {
                    return Err(Abort::Closed);
                };
                let handshake = crate::tls_stream::accept(tcp, self.server.tls.clone());
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(t)) => t,
                    _ => return Err(Abort::Closed),
                };
                conn.io = Transport::Tls(Box::new(tls));
                conn.restart();
                return Ok(());
            }
            if self.server.config.c2s.require_tls {
                if e.is("auth", ns::SASL) {
                    conn.write(
                        format!(
                            "<failure xmlns='{}'><encryption-required/></failure>",
                            ns::SASL
                        )
                        .as_bytes(),
                    )
                    .await?;
                    continue;
                }
                return Err(Abort::StreamError(
                    if stanza::is_stanza(&e) {
                        "not-authorized"
                    } else {
                        "policy-violation"
                    },
                    Some("STARTTLS is required first".into()),
                ));
            }
            // TLS optional (configured off): fall through to authentication on this stream.
            return self
                .auth_element(conn, e, &mut Sasl::Idle)
                .await
                .map(|_| ());
        }
    }

    /// SASL until success (which restarts the stream).
    async fn authenticate(&mut self, conn: &mut XmlConn) -> Result<(), Abort> {
        let mut state = Sasl::Idle;
        loop {
            let ev = conn.next().await?;
            let StreamEvent::Stanza(e) = ev else {
                return Err(Abort::Closed);
            };
            if self.auth_element(conn, e, &mut state).await? {
                return Ok(());
            }
        }
    }

    /// Handle one element during authentication; `true` once authenticated.
    async fn auth_element(
        &mut self,
        conn: &mut XmlConn,
        e: Element,
        state: &mut Sasl,
    ) -> Result<bool, Abort> {
        if e.is("auth", ns::SASL) {
            self.proto = Proto::Sasl;
            let mech = e.attr("mechanism").unwrap_or_default().to_string();
            let data = match decode_sasl_text(&e) {
                Ok(d) => d,
                Err(f) => return self.fail(conn, f, None).await.map(|_| false),
            };
            return self.start_mechanism(conn, &mech, data, state).await;
        }
        if e.is("authenticate", crate::xep::sasl2::NS) && conn.io.is_tls() {
            self.proto = Proto::Sasl2;
            *state = Sasl::Idle;
            let req = match crate::xep::sasl2::Request::parse(&e) {
                Ok(r) => r,
                Err(f) => return self.fail(conn, f, None).await.map(|_| false),
            };
            let mech = req.mechanism.clone();
            let data = req.initial_response.clone();
            self.sasl2 = Some(req);
            if mech.starts_with("HT-") {
                return self.fast_auth(conn).await;
            }
            return self.start_mechanism(conn, &mech, data, state).await;
        }
        if e.is("response", self.proto.ns()) {
            let Sasl::Scram(scram, alg) = std::mem::replace(state, Sasl::Idle) else {
                return self
                    .fail(conn, SaslFailure::MalformedRequest, None)
                    .await
                    .map(|_| false);
            };
            let data = match decode_sasl_text(&e) {
                Ok(d) => d.unwrap_or_default(),
                Err(f) => return self.fail(conn, f, None).await.map(|_| false),
            };
            let mut scram = scram;
            let jid = self.user_jid(&scram.username);
            return match scram.client_final(&data) {
                Ok(server_final) => {
                    let Some(jid) = jid else {
                        return self
                            .fail(conn, SaslFailure::NotAuthorized, None)
                            .await
                            .map(|_| false);
                    };
                    if let Some(a) = &scram.authzid
                        && !authzid_matches(a, &jid)
                    {
                        return self
                            .fail(conn, SaslFailure::InvalidAuthzid, Some(&jid))
                            .await
                            .map(|_| false);
                    }
                    tracing::debug!(jid = %jid, mech = alg.name(), "SCRAM success");
                    self.succeed(conn, jid, Some(server_final))
                        .await
                        .map(|_| true)
                }
                Err(f) => self.fail(conn, f, jid.as_ref()).await.map(|_| false),
            };
        }
        if e.is("abort", self.proto.ns()) {
            *state = Sasl::Idle;
            let failure = match self.proto {
                Proto::Sasl => {
                    format!("<failure xmlns='{}'><aborted/></failure>", ns::SASL).into_bytes()
                }
                Proto::Sasl2 => crate::xep::sasl2::failure(SaslFailure::Aborted, None),
            };
            conn.write(&failure).await?;
            return Ok(false);
        }
        if e.is("iq", ns::CLIENT)
            && self.server.config.registration.open
            && e.first_child().is_some_and(|c| c.is("query", ns::REGISTER))
        {
            let reply = crate::xep::register::pre_auth(&self.server, &self.domain, &e).await;
            conn.write(&reply.to_bytes()).await?;
            return Ok(false);
        }
        if stanza::is_stanza(&e) {
            return Err(Abort::StreamError(
                "not-authorized",
                Some("authenticate first".into()),
            ));
        }
        Err(Abort::StreamError("unsupported-stanza-type", None))
    }

    async fn start_mechanism(
        &mut self,
        conn: &mut XmlConn,
        mech: &str,
        data: Option<Vec<u8>>,
        state: &mut Sasl,
    ) -> Result<bool, Abort> {
        if !self.mechanisms(conn).contains(&mech) {
            return self
                .fail(conn, SaslFailure::InvalidMechanism, None)
                .await
                .map(|_| false);
        }
        self.throttle().await;
        if mech == "PLAIN" {
            let Some(data) = data else {
                // Empty challenge; the client then sends its response.
                conn.write(&self.challenge(&[])).await?;
                let ev = conn.next().await?;
                let StreamEvent::Stanza(r) = ev else {
                    return Err(Abort::Closed);
                };
                if !r.is("response", self.proto.ns()) {
                    return self
                        .fail(conn, SaslFailure::Aborted, None)
                        .await
                        .map(|_| false);
                }
                let d = decode_sasl_text(&r).ok().flatten().unwrap_or_default();
                return self.plain(conn, &d).await;
            };
            return self.plain(conn, &data).await;
        }
        let (alg, plus) = match mech {
            "SCRAM-SHA-1" => (HashAlg::Sha1, false),
            "SCRAM-SHA-256" => (HashAlg::Sha256, false),
            "SCRAM-SHA-1-PLUS" => (HashAlg::Sha1, true),
            "SCRAM-SHA-256-PLUS" => (HashAlg::Sha256, true),
            _ => {
                return self
                    .fail(conn, SaslFailure::InvalidMechanism, None)
                    .await
                    .map(|_| false);
            }
        };
        let cb = conn.io.channel_binding();
        let offered_plus = cb.is_some();
        // XEP-0474: SASL and SASL2 advertise the same mechanisms; XEP-0440
        // types are announced where the stream can bind.
        let h = sasl::ssdp::hash(
            alg,
            &self.mechanisms(conn),
            offered_plus.then_some(CB_TYPES),
        );
        let mut scram = ScramServer::new(alg, plus, cb, offered_plus).with_downgrade_hash(h);
        let Some(first) = data.filter(|d| !d.is_empty()) else {
            return self
                .fail(conn, SaslFailure::MalformedRequest, None)
                .await
                .map(|_| false);
        };
        let user = match scram.client_first(&first) {
            Ok(u) => u,
            Err(f) => return self.fail(conn, f, None).await.map(|_| false),
        };
        let creds = match self.user_jid(&user) {
            Some(jid) => {
                let c = self
                    .server
                    .storage
                    .accounts
                    .credentials(jid.as_str())
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "credential lookup failed");
                        Abort::StreamError("internal-server-error", None)
                    })?;
                c.map(|c| match alg {
                    HashAlg::Sha1 => c.sha1,
                    HashAlg::Sha256 => c.sha256,
                })
            }
            None => None,
        };
        let server_first = match scram.server_first(creds) {
            Ok(s) => s,
            Err(f) => return self.fail(conn, f, None).await.map(|_| false),
        };
        conn.write(&self.challenge(&server_first)).await?;
        *state = Sasl::Scram(Box::new(scram), alg);
        Ok(false)
    }

    async fn plain(&mut self, conn: &mut XmlConn, data: &[u8]) -> Result<bool, Abort> {
        let (authz, user, pass) = match sasl::parse_plain(data) {
            Ok(t) => t,
            Err(f) => return self.fail(conn, f, None).await.map(|_| false),
        };
        let Some(jid) = self.user_jid(&user) else {
            return self
                .fail(conn, SaslFailure::NotAuthorized, None)
                .await
                .map(|_| false);
        };
        if !authz.is_empty() && !authzid_matches(&authz, &jid) {
            return self
                .fail(conn, SaslFailure::InvalidAuthzid, Some(&jid))
                .await
                .map(|_| false);
        }
        let creds = self
            .server
            .storage
            .accounts
            .credentials(jid.as_str())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "credential lookup failed");
                Abort::StreamError("internal-server-error", None)
            })?;
        // Deriving keys is CPU-heavy: keep it off the reactor threads.
        let ok = match creds {
            Some(c) => tokio::task::spawn_blocking(move || {
                c.sha256.verify_password(HashAlg::Sha256, &pass)
            })
            .await
            .unwrap_or(false),
            None => false,
        };
        if ok {
            self.succeed(conn, jid, None).await.map(|_| true)
        } else {
            self.fail(conn, SaslFailure::NotAuthorized, Some(&jid))
                .await
                .map(|_| false)
        }
    }

    /// The account JID for a SASL username on this stream's domain.
    fn user_jid(&self, user: &str) -> Option<BareJid> {
        if user.contains('@') || user.contains('/') {
            return None;
        }
        BareJid::new(&format!("{user}@{}", self.domain)).ok()
    }

    async fn succeed(
        &mut self,
        conn: &mut XmlConn,
        jid: BareJid,
        data: Option<Vec<u8>>,
    ) -> Result<(), Abort> {
        self.server.auth_limiter.success(jid.as_str());
        crate::metrics::Metrics::inc(&self.server.metrics.auth_success);
        if self.proto == Proto::Sasl2 {
            // Written with the results of what the request inlined (after_sasl2).
            tracing::info!(jid = %jid, peer = %self.peer, "authenticated (SASL2)");
            self.sasl2_success = Some(crate::xep::sasl2::Success {
                additional_data: data,
                extra: Vec::new(),
            });
            self.authed = Some(jid);
            return Ok(());
        }
        let body = data.map(|d| B64.encode(d)).unwrap_or_default();
        conn.write(format!("<success xmlns='{}'>{body}</success>", ns::SASL).as_bytes())
            .await?;
        tracing::info!(jid = %jid, peer = %self.peer, "authenticated");
        self.authed = Some(jid);
        conn.restart();
        Ok(())
    }

    async fn fail(
        &mut self,
        conn: &mut XmlConn,
        f: SaslFailure,
        jid: Option<&BareJid>,
    ) -> Result<(), Abort> {
        self.failures += 1;
        crate::metrics::Metrics::inc(&self.server.metrics.auth_failure);
        let delay = self
            .server
            .auth_limiter
            .failure(self.peer.ip(), jid.map(|j| j.as_str()));
        tracing::info!(peer = %self.peer, jid = ?jid.map(|j| j.to_string()), condition = f.condition(), "authentication failed");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let failure = match self.proto {
            Proto::Sasl => format!(
                "<failure xmlns='{}'><{}/></failure>",
                ns::SASL,
                f.condition()
            )
            .into_bytes(),
            Proto::Sasl2 => crate::xep::sasl2::failure(f, None),
        };
        conn.write(&failure).await?;
        if self.failures >= self.server.config.limits.auth_attempts_per_stream {
            return Err(Abort::StreamError(
                "policy-violation",
                Some("too many authentication attempts".into()),
            ));
        }
        Ok(())
    }

    /// After SASL: resource binding (and the legacy session IQ).
    async fn bind(&mut self, conn: &mut XmlConn) -> Result<Bound, Abort> {
        let bare = self.authed.clone().expect("authenticated");
        loop {
            let ev = conn.next().await?;
            let StreamEvent::Stanza(e) = ev else {
                return Err(Abort::Closed);
            };
            if e.is("resume", crate::xep::sm::NS) {
                self.resume(conn, &bare, &e).await?;
                continue;
            }
            if !e.is("iq", ns::CLIENT) {
                return Err(Abort::StreamError(
                    "not-authorized",
                    Some("bind a resource first".into()),
                ));
            }
            let child = e.first_child();
            if e.attr("type") == Some("set") && child.is_some_and(|c| c.is("bind", ns::BIND)) {
                let requested = child
                    .and_then(|c| c.get_child("resource", ns::BIND))
                    .map(|r| r.text())
                    .filter(|r| !r.is_empty());
                let resource = requested.unwrap_or_else(|| format!("xmppd-{}", new_id()));
                let Ok(full) = FullJid::new(&format!("{bare}/{resource}")) else {
                    let reply = stanza::error_reply(&e, "bad-request", Some("invalid resource"))
                        .expect("iq");
                    conn.write(&reply.to_bytes()).await?;
                    continue;
                };
                let Some((handle, rx)) = self.bind_session(&full) else {
                    let reply =
                        stanza::error_reply(&e, "resource-constraint", Some("too many resources"))
                            .expect("iq");
                    conn.write(&reply.to_bytes()).await?;
                    continue;
                };
                let payload = el("bind", ns::BIND)
                    .c(el("jid", ns::BIND).t(full.as_str()).build())
                    .build();
                let mut reply = stanza::iq_result(&e, Some(payload));
                reply.unset("to");
                reply.unset("from");
                conn.write(&reply.to_bytes()).await?;
                tracing::info!(jid = %full, "bound");
                return Ok(Bound {
                    handle,
                    rx,
                    sm: None,
                    inactive: false,
                });
            }
            if e.attr("type") == Some("set") && child.is_some_and(|c| c.is("session", ns::SESSION))
            {
                let mut reply = stanza::iq_result(&e, None);
                reply.unset("to");
                conn.write(&reply.to_bytes()).await?;
                continue;
            }
            return Err(Abort::StreamError(
                "not-authorized",
                Some("bind a resource first".into()),
            ));
        }
    }
}

impl Negotiation {
    /// Register a session for `full`, replacing one with the same resource;
    /// `None` when the account has too many resources already.
    fn bind_session(&self, full: &FullJid) -> Option<(SessionHandle, crate::router::QueueReader)> {
        let existing = self.server.registry.sessions(&full.bare());
        if existing.len() >= MAX_RESOURCES_PER_ACCOUNT && !existing.iter().any(|h| &h.jid == full) {
            return None;
        }
        let (handle, rx) =
            SessionHandle::new(full.clone(), self.server.config.limits.outbound_queue);
        if let Some(old) = self.server.registry.bind(handle.clone()) {
            tracing::info!(jid = %full, "resource conflict: replacing the older session");
            old.kill(Kill::Conflict);
        }
        Some((handle, rx))
    }

    /// Before checking credentials: wait out this address's failure penalty.
    async fn throttle(&self) {
        let penalty = self.server.auth_limiter.penalty(self.peer.ip(), None);
        if !penalty.is_zero() {
            tokio::time::sleep(penalty).await;
        }
    }

    /// A SASL challenge in the current profile's namespace.
    fn challenge(&self, data: &[u8]) -> Vec<u8> {
        if data.is_empty() {
            return format!("<challenge xmlns='{}'>=</challenge>", self.proto.ns()).into_bytes();
        }
        match self.proto {
            Proto::Sasl => format!(
                "<challenge xmlns='{}'>{}</challenge>",
                ns::SASL,
                B64.encode(data)
            )
            .into_bytes(),
            Proto::Sasl2 => crate::xep::sasl2::challenge(data),
        }
    }

    /// XEP-0198 `<resume/>` instead of bind: hand this connection to the
    /// hibernated session. Returns only when resumption failed (the client may bind).
    async fn resume(
        &mut self,
        conn: &mut XmlConn,
        bare: &BareJid,
        e: &Element,
    ) -> Result<(), Abort> {
        use crate::xep::sm::{Resume, parse_h};
        let (Some(previd), Some(h)) = (e.attr("previd"), parse_h(e)) else {
            conn.write(&crate::xep::sm::failed("bad-request")).await?;
            return Ok(());
        };
        let taken = std::mem::replace(
            conn,
            XmlConn::new(Transport::Gone, &self.server.config.limits),
        );
        match self.server.resumptions.take_over(
            previd,
            bare,
            Resume {
                conn: Box::new(taken),
                h,
                sasl2: None,
            },
        ) {
            Ok(jid) => {
                tracing::info!(jid = %jid, "resuming stream");
                Err(Abort::Resumed)
            }
            Err(back) => {
                *conn = *back.conn;
                conn.write(&crate::xep::sm::failed("item-not-found"))
                    .await?;
                Ok(())
            }
        }
    }
}

fn authzid_matches(authzid: &str, jid: &BareJid) -> bool {
    BareJid::new(authzid).is_ok_and(|a| &a == jid)
}

/// SASL element text: base64, `=` for empty, absent for none.
fn decode_sasl_text(e: &Element) -> Result<Option<Vec<u8>>, SaslFailure> {
    let t = e.text();
    let t = t.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t == "=" {
        return Ok(Some(Vec::new()));
    }
    B64.decode(t)
        .map(Some)
        .map_err(|_| SaslFailure::IncorrectEncoding)
}
