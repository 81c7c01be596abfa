//! Test harness: the server in-process on free ports, and a small raw XMPP
//! client that speaks over real sockets (STARTTLS or direct TLS, SCRAM, bind).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xmppd::config::{Config, ListenerConfig, TlsMode};
use xmppd::sasl::HashAlg;
use xmppd::sasl::scram::client as scram;
use xmppd::storage::AccountCredentials;
use xmppd::xml::{ElementExt, StreamEvent, StreamParser};

/// Define two tests running the same scenario on SQLite and on PostgreSQL.
macro_rules! on_both_backends {
    ($scenario:ident => $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $scenario(Backend::Sqlite).await;
        }

        #[tokio::test]
        async fn $postgres() {
            $scenario(Backend::Postgres).await;
        }
    };
}
pub(crate) use on_both_backends;

pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const DOMAIN: &str = "localhost";

/// Which database a test server uses.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub running: Option<xmppd::Running>,
    /// Holds the data directory until the server is dropped.
    pub _dir: tempfile::TempDir,
    pub config: Config,
}

/// A fresh PostgreSQL database for one test (the test command ensures a server).
pub async fn pg_database() -> String {
    let base = std::env::var("XMPPD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("xmppd_it_{}", hex(&xmppd::random::bytes(6)));
    let admin = sqlx::PgPool::connect(&base).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {base} is needed for this test (./test.sh starts one): {e}")
    });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    match base.rfind('/') {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => format!("{base}/{name}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Backend::Sqlite, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        config.storage.url = Some(match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("xmppd.db").display()),
            Backend::Postgres => pg_database().await,
        });
        config.listeners = vec![
            ListenerConfig {
                address: "127.0.0.1".into(),
                port: 0,
                tls: TlsMode::Starttls,
            },
            ListenerConfig {
                address: "127.0.0.1".into(),
                port: 0,
                tls: TlsMode::Direct,
            },
        ];
        config.http.listeners = vec![xmppd::config::HttpListenerConfig {
            address: "127.0.0.1".into(),
            port: 0,
            tls: false,
        }];
        // Federation listens on a free port (5269 may be taken by a real server).
        config.s2s.address = "127.0.0.1".into();
        config.s2s.port = 0;
        tweak(&mut config);
        let running = xmppd::start(config.clone()).await.expect("server starts");
        TestServer {
            running: Some(running),
            _dir: dir,
            config,
        }
    }

    pub fn running(&self) -> &xmppd::Running {
        self.running.as_ref().unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.running().addr(TlsMode::Starttls).unwrap()
    }

    /// The plain HTTP listener (upload, metrics).
    pub fn http_addr(&self) -> SocketAddr {
        self.running().http_listeners[0].1
    }

    pub fn direct_addr(&self) -> SocketAddr {
        self.running().addr(TlsMode::Direct).unwrap()
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        let creds = AccountCredentials::from_password(password);
        let jid = format!("{user}@{}", self.config.hosts[0]);
        assert!(
            self.running()
                .server
                .storage
                .accounts
                .create_account(&jid, &creds)
                .await
                .unwrap()
        );
    }

    /// Stop and start again on the same data (new ports).
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        // Listeners are rebound on fresh ports.
        let mut config = self.config.clone();
        for l in &mut config.listeners {
            l.port = 0;
        }
        self.running = Some(xmppd::start(config).await.expect("server restarts"));
    }

    pub async fn login(&self, user: &str, password: &str, resource: &str) -> Client {
        Client::login(self.addr(), user, password, resource).await
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(xmppd::tls::unverified_client_config())
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

/// A raw XMPP client for tests.
pub struct Client {
    io: Io,
    parser: StreamParser,
    events: VecDeque<StreamEvent>,
    /// Elements skipped by `recv_until`, offered again to later calls.
    stash: VecDeque<Element>,
    pub jid: String,
    next_id: u32,
    /// The domain streams are opened to.
    pub domain: String,
    /// The last SCRAM server-first-message received.
    pub server_first: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Client::new(Io::Plain(tcp))
    }

    pub async fn connect_direct(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let tls = tls_connector()
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .expect("direct TLS handshake");
        Client::new(Io::Tls(Box::new(tls)))
    }

    fn new(io: Io) -> Client {
        Client {
            io,
            parser: StreamParser::new(1 << 20, 64),
            events: VecDeque::new(),
            stash: VecDeque::new(),
            jid: String::new(),
            next_id: 0,
            domain: DOMAIN.into(),
            server_first: String::new(),
        }
    }

    pub async fn send(&mut self, data: &str) {
        self.send_bytes(data.as_bytes()).await
    }

    pub async fn send_bytes(&mut self, data: &[u8]) {
        let r = match &mut self.io {
            Io::Plain(s) => s.write_all(data).await,
            Io::Tls(s) => match s.write_all(data).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
            Io::Gone => panic!("no transport"),
        };
        r.expect("write");
    }

    /// Next event; `None` when the connection closed.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(TIMEOUT, async {
                match &mut self.io {
                    Io::Plain(s) => s.read(&mut buf).await,
                    Io::Tls(s) => s.read(&mut buf).await,
                    Io::Gone => Ok(0),
                }
            })
            .await
            .expect("timed out waiting for the server")
            .unwrap_or(0);
            if n == 0 {
                return None;
            }
            let mut out = Vec::new();
            self.parser
                .feed(&buf[..n], &mut out)
                .expect("server sent valid XML");
            self.events.extend(out);
        }
    }

    /// Next top-level element (stanza or nonza), stashed ones first.
    pub async fn recv(&mut self) -> Element {
        if let Some(e) = self.stash.pop_front() {
            return e;
        }
        self.recv_new().await
    }

    async fn recv_new(&mut self) -> Element {
        loop {
            match self.next_event().await {
                Some(StreamEvent::Stanza(e)) => return e,
                Some(StreamEvent::Header(_)) => continue,
                Some(StreamEvent::Close) => panic!("stream closed while waiting for a stanza"),
                None => panic!("connection closed while waiting for a stanza"),
            }
        }
    }

    /// The first element (stashed or new) that matches; others are stashed.
    pub async fn recv_until(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).unwrap();
        }
        for _ in 0..500 {
            let e = self.recv_new().await;
            if pred(&e) {
                return e;
            }
            self.stash.push_back(e);
        }
        panic!("no matching element in 500 received");
    }

    /// Whether something received but not yet asked for matches.
    pub fn stash_has(&self, pred: impl Fn(&Element) -> bool) -> bool {
        self.stash.iter().any(pred)
    }

    /// Take every element received but not yet asked for that matches, in order.
    pub fn stash_all(&mut self, pred: impl Fn(&Element) -> bool) -> Vec<Element> {
        let (hit, keep): (VecDeque<Element>, VecDeque<Element>) = std::mem::take(&mut self.stash)
            .into_iter()
            .partition(|e| pred(e));
        self.stash = keep;
        hit.into_iter().collect()
    }

    /// Forget everything received but not yet asked for.
    pub fn clear(&mut self) {
        self.stash.clear();
    }

    /// Wait for the stream error and return its condition.
    pub async fn stream_error(&mut self) -> String {
        loop {
            match self.next_event().await {
                Some(StreamEvent::Stanza(e))
                    if e.name() == "error" && e.ns() == xmppd::xml::ns::STREAM =>
                {
                    return e
                        .children()
                        .find(|c| c.ns() == xmppd::xml::ns::STREAM_ERRORS && c.name() != "text")
                        .map(|c| c.name().to_string())
                        .unwrap_or_default();
                }
                None | Some(StreamEvent::Close) => panic!("closed without a stream error"),
                Some(_) => continue,
            }
        }
    }

    /// Wait until the server closes the stream or connection.
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.next_event().await {
                None | Some(StreamEvent::Close) => return true,
                Some(_) => continue,
            }
        }
    }

    pub fn id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    /// Send an IQ (with `id` placeholder `{id}`) and wait for its answer.
    pub async fn iq(&mut self, xml: &str) -> Element {
        let id = self.id();
        self.send(&xml.replace("{id}", &id)).await;
        self.recv_until(|e| {
            e.name() == "iq"
                && e.attr("id") == Some(id.as_str())
                && matches!(e.attr("type"), Some("result" | "error"))
        })
        .await
    }

    pub async fn open(&mut self) -> Element {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
            self.domain
        );
        self.send(&header).await;
        self.recv().await // features
    }

    pub async fn starttls(&mut self) {
        self.open().await;
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.recv().await;
        assert_eq!(p.name(), "proceed");
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            panic!()
        };
        let tls = tls_connector()
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .expect("STARTTLS handshake");
        self.io = Io::Tls(Box::new(tls));
        self.parser = StreamParser::new(1 << 20, 64);
        self.events.clear();
    }

    fn channel_binding(&self) -> Vec<u8> {
        let Io::Tls(t) = &self.io else {
            panic!("not TLS")
        };
        t.get_ref()
            .1
            .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .unwrap()
    }

    /// SCRAM on an opened TLS stream (features already read). Returns the outcome element.
    pub async fn scram(&mut self, mech: &str, user: &str, password: &str) -> Element {
        let alg = if mech.starts_with("SCRAM-SHA-256") {
            HashAlg::Sha256
        } else {
            HashAlg::Sha1
        };
        let plus = mech.ends_with("-PLUS");
        let gs2 = if plus { "p=tls-exporter,," } else { "n,," };
        let bare = format!("n={user},r=clientnonce{}", self.next_id);
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
            B64.encode(format!("{gs2}{bare}"))
        ))
        .await;
        let ch = self.recv().await;
        if ch.name() != "challenge" {
            return ch;
        }
        let server_first = String::from_utf8(B64.decode(ch.text()).unwrap()).unwrap();
        self.server_first = server_first.clone();
        let (salt, iter) = scram::parse_server_first(&server_first).unwrap();
        let keys = scram::keys(alg, password, &salt, iter);
        let mut cb = gs2.as_bytes().to_vec();
        if plus {
            cb.extend(self.channel_binding());
        }
        let (fin, sig) = scram::final_message(alg, &keys, &bare, &server_first, &cb);
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(fin)
        ))
        .await;
        let out = self.recv().await;
        if out.name() == "success" {
            let v = String::from_utf8(B64.decode(out.text()).unwrap()).unwrap();
            assert_eq!(
                v,
                format!("v={}", B64.encode(sig)),
                "server signature verifies"
            );
        }
        out
    }

    /// SASL2 (XEP-0388) SCRAM on an opened TLS stream; `inline` goes inside
    /// `<authenticate/>` (user-agent, bind, resume, request-token). Returns
    /// the outcome (`success` verified, or `failure`).
    pub async fn sasl2_scram(
        &mut self,
        mech: &str,
        user: &str,
        password: &str,
        inline: &str,
    ) -> Element {
        const NS: &str = "urn:xmpp:sasl:2";
        let alg = if mech.starts_with("SCRAM-SHA-256") {
            HashAlg::Sha256
        } else {
            HashAlg::Sha1
        };
        let bare = format!("n={user},r=clientnonce{}", self.next_id);
        self.send(&format!(
            "<authenticate xmlns='{NS}' mechanism='{mech}'><initial-response>{}</initial-response>{inline}</authenticate>",
            B64.encode(format!("n,,{bare}"))
        ))
        .await;
        let ch = self.recv().await;
        if ch.name() != "challenge" {
            return ch;
        }
        assert_eq!(ch.ns(), NS, "SASL2 challenge namespace");
        let server_first = String::from_utf8(B64.decode(ch.text()).unwrap()).unwrap();
        self.server_first = server_first.clone();
        let (salt, iter) = scram::parse_server_first(&server_first).unwrap();
        let keys = scram::keys(alg, password, &salt, iter);
        let (fin, sig) = scram::final_message(alg, &keys, &bare, &server_first, b"n,,");
        self.send(&format!(
            "<response xmlns='{NS}'>{}</response>",
            B64.encode(fin)
        ))
        .await;
        let out = self.recv().await;
        if out.name() == "success" {
            let data = out
                .get_child("additional-data", NS)
                .expect("additional-data");
            let v = String::from_utf8(B64.decode(data.text()).unwrap()).unwrap();
            assert_eq!(
                v,
                format!("v={}", B64.encode(sig)),
                "server signature verifies"
            );
            self.take_sasl2_jid(&out);
        }
        out
    }

    /// SASL2 login with a XEP-0484 token (HT-SHA-256-NONE).
    pub async fn sasl2_fast(&mut self, user: &str, token: &str, inline: &str) -> Element {
        use hmac::{KeyInit, Mac};
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).unwrap();
        m.update(b"Initiator");
        let mut msg = format!("{user}\0").into_bytes();
        msg.extend(m.finalize().into_bytes());
        self.send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>{inline}</authenticate>",
            B64.encode(msg)
        ))
        .await;
        let out = self.recv().await;
        if out.name() == "success" {
            let data = out
                .get_child("additional-data", "urn:xmpp:sasl:2")
                .expect("additional-data");
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).unwrap();
            m.update(b"Responder");
            assert_eq!(
                B64.decode(data.text()).unwrap(),
                m.finalize().into_bytes().to_vec(),
                "server proves it knows the token"
            );
            self.take_sasl2_jid(&out);
        }
        out
    }

    fn take_sasl2_jid(&mut self, success: &Element) {
        self.jid = success
            .get_child("authorization-identifier", "urn:xmpp:sasl:2")
            .expect("authorization-identifier")
            .text();
    }

    /// After SASL success: restart the stream and read the new features.
    pub async fn reopen(&mut self) -> Element {
        self.parser = StreamParser::new(1 << 20, 64);
        self.events.clear();
        self.open().await
    }

    /// After SASL success: restart and bind.
    pub async fn bind(&mut self, resource: &str) -> Element {
        self.parser = StreamParser::new(1 << 20, 64);
        self.events.clear();
        let features = self.open().await;
        assert!(features.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
        let res = if resource.is_empty() {
            String::new()
        } else {
            format!("<resource>{resource}</resource>")
        };
        let r = self
            .iq(&format!("<iq type='set' id='{{id}}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"))
            .await;
        if r.attr("type") == Some("result") {
            self.jid = r
                .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
                .unwrap()
                .get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind")
                .unwrap()
                .text();
        }
        r
    }

    /// STARTTLS + SCRAM-SHA-256 + bind.
    pub async fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Client {
        Client::login_to(addr, DOMAIN, user, password, resource).await
    }

    /// `login` on a server that serves `domain`.
    pub async fn login_to(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Client {
        let mut c = Client::connect(addr).await;
        c.domain = domain.into();
        c.starttls().await;
        c.open().await;
        let r = c.scram("SCRAM-SHA-256", user, password).await;
        assert_eq!(
            r.name(),
            "success",
            "login of {user}: {}",
            String::from_utf8_lossy(&r.to_bytes())
        );
        let b = c.bind(resource).await;
        assert_eq!(b.attr("type"), Some("result"));
        c
    }

    /// Login and send initial presence; drains our own presence echo.
    pub async fn online(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Client {
        let mut c = Client::login(addr, user, password, resource).await;
        c.send("<presence/>").await;
        let me = c.jid.clone();
        c.recv_until(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
            .await;
        c
    }

    /// Ping the server and wait for the answer: everything sent before has been processed.
    pub async fn sync(&mut self) {
        let r = self
            .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        assert_eq!(r.attr("type"), Some("result"));
    }

    pub async fn close(mut self) {
        self.send("</stream:stream>").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.closed()).await;
    }

    /// The client side of the TLS connection (tests of the TLS layer).
    pub fn tls(&mut self) -> &mut tokio_rustls::client::TlsStream<TcpStream> {
        match &mut self.io {
            Io::Tls(t) => t,
            _ => panic!("not TLS"),
        }
    }

    /// Drop the TCP connection without closing the stream.
    pub fn drop_connection(self) {
        drop(self)
    }
}

pub fn error_condition(e: &Element) -> Option<String> {
    e.get_child("error", "jabber:client")?
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
        .map(|c| c.name().to_string())
}

pub fn xml(e: &Element) -> String {
    String::from_utf8(e.to_bytes()).unwrap()
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A minimal HTTP/1.1 client (Connection: close).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        && (method == "PUT" || !body.is_empty())
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}
