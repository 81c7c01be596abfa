//! Minimal c2s client: TCP, STARTTLS or direct TLS, SASL SCRAM-SHA-1, bind,
//! initial presence. No XML tree: the server's bytes are scanned for the
//! few markers we need, which keeps the tool cheap next to the server.

use crate::scram::{KeyCache, ScramClient};
use anyhow::{Context, Result, anyhow, bail};
use memchr::memmem;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    Starttls,
    Direct,
}

/// Where and how to connect; cheap to clone.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub domain: String,
    pub mode: TlsMode,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    pub login_timeout: Duration,
    pub wait_presence: bool,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        domain: &str,
        mode: TlsMode,
        resume: bool,
        login_timeout: Duration,
        wait_presence: bool,
    ) -> Result<Target> {
        Ok(Target {
            addr,
            domain: domain.to_string(),
            mode,
            connector: TlsConnector::from(tls_config(resume, mode == TlsMode::Direct)?),
            server_name: ServerName::try_from(domain.to_string())
                .map_err(|e| anyhow!("bad domain for SNI: {e}"))?,
            login_timeout,
            wait_presence,
        })
    }
}

/// Accepts any certificate: the servers under test use self-signed ones.
#[derive(Debug)]
struct AcceptAny(Vec<rustls::SignatureScheme>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone()
    }
}

fn tls_config(resume: bool, alpn: bool) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)))
        .with_no_client_auth();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Ok(Arc::new(cfg))
}

/// A stream plus the unconsumed bytes read from it.
pub struct Conn<S> {
    pub io: S,
    pub buf: Vec<u8>,
    pub start: usize,
}

pub enum Stanza {
    /// name range and whole stanza range, both in `buf`
    Element {
        name: (usize, usize),
        all: (usize, usize),
    },
    /// `</stream:stream>`
    Close,
}

impl<S> Conn<S> {
    pub fn new(io: S) -> Self {
        Conn {
            io,
            buf: Vec::with_capacity(4096),
            start: 0,
        }
    }

    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn into_parts(self) -> (S, Vec<u8>) {
        let rest = self.buf[self.start..].to_vec();
        (self.io, rest)
    }
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Read more bytes; EOF is an error.
    pub async fn fill(&mut self) -> Result<()> {
        if self.start > 0 && (self.start == self.buf.len() || self.start > 16384) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8192);
        }
        let n = self.io.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("connection closed by server{}", self.snippet());
        }
        Ok(())
    }

    fn snippet(&self) -> String {
        let p = self.pending();
        if p.is_empty() {
            String::new()
        } else {
            let s = String::from_utf8_lossy(&p[..p.len().min(300)]);
            format!(" (pending: {s})")
        }
    }

    /// Read until `pat` is in the buffer; consume through it and return the
    /// consumed bytes. Stream errors are reported as errors.
    pub async fn read_until(&mut self, pat: &[u8]) -> Result<Vec<u8>> {
        self.read_until_any(&[pat]).await
    }

    /// Read until one of `pats` is in the buffer (the earliest wins).
    pub async fn read_until_any(&mut self, pats: &[&[u8]]) -> Result<Vec<u8>> {
        loop {
            let p = self.pending();
            let hit = pats
                .iter()
                .filter_map(|pat| memmem::find(p, pat).map(|i| i + pat.len()))
                .min();
            if let Some(end) = hit {
                let out = p[..end].to_vec();
                self.start += end;
                return Ok(out);
            }
            if memmem::find(p, b"<stream:error").is_some()
                || memmem::find(p, b"</stream:stream>").is_some()
            {
                // give the server a moment to finish the error text
                let _ = tokio::time::timeout(Duration::from_millis(100), self.fill()).await;
                bail!("stream error{}", self.snippet());
            }
            self.fill().await?;
        }
    }

    /// Next complete top-level element (after whitespace) in the buffer, if any.
    pub fn next_stanza(&mut self) -> Option<Stanza> {
        let p = &self.buf[self.start..];
        let ws = p.iter().take_while(|b| b.is_ascii_whitespace()).count();
        self.start += ws;
        let p = &self.buf[self.start..];
        if p.is_empty() {
            return None;
        }
        if p.starts_with(b"</") {
            let gt = memchr::memchr(b'>', p)?;
            self.start += gt + 1;
            return Some(Stanza::Close);
        }
        let name_len = p[1..]
            .iter()
            .take_while(|b| !(b.is_ascii_whitespace() || **b == b'>' || **b == b'/'))
            .count();
        let gt = memchr::memchr(b'>', p)?;
        let end = if p[gt - 1] == b'/' {
            gt + 1
        } else {
            let mut close = Vec::with_capacity(name_len + 3);
            close.extend_from_slice(b"</");
            close.extend_from_slice(&p[1..1 + name_len]);
            close.push(b'>');
            memmem::find(&p[gt..], &close)? + gt + close.len()
        };
        let s = self.start;
        self.start += end;
        Some(Stanza::Element {
            name: (s + 1, s + 1 + name_len),
            all: (s, s + end),
        })
    }
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Next top-level element as (name, whole element), copied out, reading
    /// as needed until `deadline`. A stream close is an error.
    pub async fn next_element(
        &mut self,
        deadline: std::time::Instant,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        loop {
            match self.next_stanza() {
                Some(Stanza::Element { name, all }) => {
                    let all = self.buf[all.0..all.1].to_vec();
                    if &self.buf[name.0..name.1] == b"stream:error" {
                        bail!("stream error: {}", String::from_utf8_lossy(&all));
                    }
                    return Ok((self.buf[name.0..name.1].to_vec(), all));
                }
                Some(Stanza::Close) => bail!("stream closed by server"),
                None => {}
            }
            tokio::time::timeout_at(deadline.into(), self.fill())
                .await
                .map_err(|_| anyhow!("timed out waiting for the server{}", self.snippet()))??;
        }
    }
}

impl<S: AsyncWrite + Unpin> Conn<S> {
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.io.write_all(data).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// `</stream:features>` (ejabberd, Prosody) or `</features>` with the stream
/// namespace as default (xmppd): both are the same XML.
const FEATURES_END: &[&[u8]] = &[b"</stream:features>", b"</features>"];

fn header(domain: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0' xml:lang='en'>"
    )
    .into_bytes()
}

pub async fn tcp_connect(addr: SocketAddr, src: Option<IpAddr>) -> Result<TcpStream> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = src {
        // Defer the port choice to connect(): bind(ip, 0) would search for a
        // free port among all bound ones, which gets slow with many sessions.
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: valid fd and option buffer; failure only loses the optimisation.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let s = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// TCP + TLS (STARTTLS or direct), ending with the stream features after TLS
/// read (returned).
pub async fn connect_tls(t: &Target, src: Option<IpAddr>) -> Result<(Conn<Tls>, Vec<u8>)> {
    let tcp = tcp_connect(t.addr, src).await?;
    let tcp = match t.mode {
        TlsMode::Direct => tcp,
        TlsMode::Starttls => {
            let mut c = Conn::new(tcp);
            c.send(&header(&t.domain)).await?;
            c.read_until_any(FEATURES_END).await?;
            c.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            c.read_until(b"<proceed").await?;
            let (tcp, rest) = c.into_parts();
            // anything after <proceed .../> other than its own end is unexpected
            if rest.contains(&b'<') {
                bail!("data after <proceed/>: {}", String::from_utf8_lossy(&rest));
            }
            tcp
        }
    };
    let tls = t
        .connector
        .connect(t.server_name.clone(), tcp)
        .await
        .context("TLS handshake")?;
    let mut c = Conn::new(tls);
    c.send(&header(&t.domain)).await?;
    let features = c.read_until_any(FEATURES_END).await?;
    Ok((c, features))
}

/// Text content of the first `<tag ...>TEXT</tag>` in `hay`.
pub fn element_text<'a>(hay: &'a [u8], open: &[u8], close: &[u8]) -> Option<&'a [u8]> {
    let i = memmem::find(hay, open)?;
    let gt = memchr::memchr(b'>', &hay[i..])? + i;
    if hay[gt - 1] == b'/' {
        return Some(&[]);
    }
    let j = memmem::find(&hay[gt..], close)? + gt;
    Some(&hay[gt + 1..j])
}

pub fn is_result(stanza: &[u8]) -> bool {
    memmem::find(stanza, b"type='result'").is_some()
        || memmem::find(stanza, b"type=\"result\"").is_some()
}

/// Full login: connect, TLS, SCRAM-SHA-1, bind `resource`, initial presence,
/// and (if `t.wait_presence`) wait for the server's echo of it.
pub async fn login(
    t: &Target,
    user: &str,
    pass: &str,
    resource: &str,
    src: Option<IpAddr>,
    cache: &KeyCache,
) -> Result<Conn<Tls>> {
    tokio::time::timeout(
        t.login_timeout,
        login_inner(t, user, pass, resource, src, cache),
    )
    .await
    .map_err(|_| anyhow!("login timed out after {:?}", t.login_timeout))?
}

async fn login_inner(
    t: &Target,
    user: &str,
    pass: &str,
    resource: &str,
    src: Option<IpAddr>,
    cache: &KeyCache,
) -> Result<Conn<Tls>> {
    let (mut c, _) = authenticate(t, user, pass, src, cache).await?;
    bind(&mut c, resource).await?;
    c.send(b"<presence/>").await?;
    if t.wait_presence {
        // the server's broadcast of our presence to our own resource
        loop {
            match c.next_stanza() {
                Some(Stanza::Element { name, .. }) if &c.buf[name.0..name.1] == b"presence" => {
                    break;
                }
                Some(Stanza::Close) => bail!("stream closed after presence"),
                Some(_) => {}
                None => c.fill().await?,
            }
        }
    }
    Ok(c)
}

/// Login up to a bound resource, without initial presence (the caller sends it).
pub async fn login_bound(
    t: &Target,
    user: &str,
    pass: &str,
    resource: &str,
    cache: &KeyCache,
) -> Result<Conn<Tls>> {
    tokio::time::timeout(t.login_timeout, async {
        let (mut c, _) = authenticate(t, user, pass, None, cache).await?;
        bind(&mut c, resource).await?;
        Ok(c)
    })
    .await
    .map_err(|_| anyhow!("login timed out after {:?}", t.login_timeout))?
}

/// Connect, TLS, SCRAM-SHA-1 and the stream restart; returns the connection
/// and the post-authentication stream features (bind, sm, ...).
pub async fn authenticate(
    t: &Target,
    user: &str,
    pass: &str,
    src: Option<IpAddr>,
    cache: &KeyCache,
) -> Result<(Conn<Tls>, Vec<u8>)> {
    let (mut c, features) = connect_tls(t, src).await?;
    if memmem::find(&features, b"SCRAM-SHA-1<").is_none() {
        bail!(
            "SCRAM-SHA-1 not offered: {}",
            String::from_utf8_lossy(&features)
        );
    }
    let (mut scram, first) = ScramClient::start(user);
    c.send(
        format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{first}</auth>"
        )
        .as_bytes(),
    )
    .await?;
    let ch = read_sasl(&mut c, b"</challenge>").await?;
    let text = element_text(&ch, b"<challenge", b"</challenge>").context("no challenge text")?;
    let resp = scram.respond(text, user, pass, cache)?;
    c.send(
        format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{resp}</response>").as_bytes(),
    )
    .await?;
    let ok = read_sasl(&mut c, b"</success>").await?;
    let text = element_text(&ok, b"<success", b"</success>").context("no success text")?;
    scram.verify_success(text)?;
    c.send(&header(&t.domain)).await?;
    let features = c.read_until_any(FEATURES_END).await?;
    Ok((c, features))
}

/// Resource binding (RFC 6120 §7) on an authenticated stream.
pub async fn bind(c: &mut Conn<Tls>, resource: &str) -> Result<()> {
    c.send(
        format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        )
        .as_bytes(),
    )
    .await?;
    let iq = c.read_until(b"</iq>").await?;
    if !is_result(&iq) {
        bail!("bind failed: {}", String::from_utf8_lossy(&iq));
    }
    Ok(())
}

/// Value of attribute `name` in the start tag of `stanza` (either quote).
pub fn attr<'a>(stanza: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head = &stanza[..memchr::memchr(b'>', stanza).unwrap_or(stanza.len())];
    for q in [b'\'', b'"'] {
        let mut pat = Vec::with_capacity(name.len() + 3);
        pat.push(b' ');
        pat.extend_from_slice(name);
        pat.push(b'=');
        pat.push(q);
        if let Some(i) = memmem::find(head, &pat) {
            let v = &head[i + pat.len()..];
            let j = memchr::memchr(q, v)?;
            return Some(&v[..j]);
        }
    }
    None
}

/// Drop the connection abruptly: TCP reset (SO_LINGER 0), no `</stream:stream>`,
/// no TLS close_notify. Also leaves no TIME_WAIT socket behind.
pub fn abort(c: Conn<Tls>) {
    let _ = c.io.get_ref().0.set_zero_linger();
    drop(c);
}

/// Read a SASL answer ending in `end`; a `<failure>` is an error.
async fn read_sasl(c: &mut Conn<Tls>, end: &[u8]) -> Result<Vec<u8>> {
    loop {
        let p = c.pending();
        if let Some(i) = memmem::find(p, end) {
            let out = p[..i + end.len()].to_vec();
            c.start += i + end.len();
            return Ok(out);
        }
        if memmem::find(p, b"<failure").is_some() {
            if memmem::find(p, b"</failure>").is_some() || memmem::find(p, b"/>").is_some() {
                bail!("SASL failure: {}", String::from_utf8_lossy(p));
            }
        } else if memmem::find(p, b"<stream:error").is_some() {
            bail!("stream error: {}", String::from_utf8_lossy(p));
        }
        c.fill().await?;
    }
}

/// Polite close: `</stream:stream>`, wait briefly for the server's, then TLS
/// close_notify.
pub async fn close(mut c: Conn<Tls>) {
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        if c.send(b"</stream:stream>").await.is_err() {
            return;
        }
        loop {
            if memmem::find(c.pending(), b"</stream:stream>").is_some() {
                break;
            }
            c.start = c.buf.len().saturating_sub(20); // keep a tail for split markers
            if c.fill().await.is_err() {
                break;
            }
        }
        let _ = c.io.shutdown().await;
    })
    .await;
}

/// XEP-0077 in-band registration of `user`/`pass` on a fresh connection.
/// Ok(true) = created, Ok(false) = already existed.
pub async fn register(t: &Target, user: &str, pass: &str) -> Result<bool> {
    tokio::time::timeout(t.login_timeout, register_inner(t, user, pass))
        .await
        .map_err(|_| anyhow!("registration timed out after {:?}", t.login_timeout))?
}

async fn register_inner(t: &Target, user: &str, pass: &str) -> Result<bool> {
    let (mut c, features) = connect_tls(t, None).await?;
    let _ = features;
    c.send(
        format!(
            "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>\
             <username>{user}</username><password>{pass}</password></query></iq>"
        )
        .as_bytes(),
    )
    .await?;
    let res = loop {
        match c.next_stanza() {
            Some(Stanza::Element { name, all }) if &c.buf[name.0..name.1] == b"iq" => {
                break c.buf[all.0..all.1].to_vec();
            }
            Some(Stanza::Close) => bail!("stream closed during registration"),
            Some(_) => {}
            None => c.fill().await?,
        }
    };
    close(c).await;
    if is_result(&res) {
        Ok(true)
    } else if memmem::find(&res, b"<conflict").is_some() {
        Ok(false)
    } else {
        bail!("registration refused: {}", String::from_utf8_lossy(&res))
    }
}
