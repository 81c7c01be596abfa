//! Server state shared by all connections, and start-up of the listeners.

use crate::c2s::auth_limit::AuthLimiter;
use crate::config::{Config, TlsMode};
use crate::router::{Kill, Registry};
use crate::storage::Storage;
use crate::xep::Modules;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Server {
    pub config: Config,
    pub storage: Storage,
    pub registry: Registry,
    pub modules: Modules,
    pub tls: Arc<rustls::ServerConfig>,
    /// Our certificates by name (also presented as the client of s2s streams).
    pub certificates: Arc<crate::tls::Certificates>,
    pub auth_limiter: AuthLimiter,
    pub resumptions: crate::xep::sm::Resumptions,
    pub blocks: crate::xep::blocking::BlockCache,
    pub muc: crate::xep::muc::MucService,
    pub upload: crate::xep::upload::UploadService,
    pub metrics: crate::metrics::Metrics,
    pub bosh: crate::xep::bosh::BoshSessions,
    pub caps: crate::xep::caps::CapsCache,
    /// XEP-0313 preferences, cached for the message path.
    pub mam_prefs: crate::xep::mam::PrefsCache,
    pub components: crate::component::Components,
    /// Federation: outgoing links and the dialback secret.
    pub s2s: crate::s2s::S2s,
    /// Group-committed archive writes (XEP-0313).
    pub archive_writer: crate::storage::group_commit::ArchiveWriter,
    /// Serialises read-modify-write of each account's roster rows.
    roster_locks: Vec<tokio::sync::Mutex<()>>,
    /// XEP-0160 deliveries in progress, one per account at a time.
    pub offline_deliveries: crate::xep::offline::Deliveries,
    pub started: Instant,
    connections: Mutex<HashMap<IpAddr, usize>>,
}

const ROSTER_LOCK_STRIPES: usize = 256;

impl Server {
    /// The lock for an account's roster (striped: unrelated accounts rarely share one,
    /// and no code holds one while taking another).
    pub fn roster_lock(&self, owner: &jid::BareJid) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(owner.as_str()) as usize;
        &self.roster_locks[h % ROSTER_LOCK_STRIPES]
    }
}

/// A running server: its bound addresses and a way to stop it.
pub struct Running {
    pub server: Arc<Server>,
    /// (mode, address) of each listener, with real ports when 0 was configured.
    pub listeners: Vec<(TlsMode, SocketAddr)>,
    /// (tls, address) of each HTTP listener.
    pub http_listeners: Vec<(bool, SocketAddr)>,
    /// Where external components connect (XEP-0114), when any are configured.
    pub component_listener: Option<SocketAddr>,
    /// Where other servers connect, when federation is on.
    pub s2s_listener: Option<SocketAddr>,
    /// The direct-TLS s2s listener (XEP-0368), when configured.
    pub s2s_tls_listener: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Writers that must finish (not be aborted) on shutdown.
    drain: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn addr(&self, mode: TlsMode) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, a)| *a)
    }

    /// Stop accepting, end every session with `system-shutdown`.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        // Occupants hear the rooms close (status 332) before their sessions end.
        self.server.muc.shutdown(&self.server);
        for h in self.server.registry.all() {
            h.kill(Kill::Shutdown);
        }
        self.server.muc.close_persistence();
        for t in self.drain {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
        }
        // Give sessions a moment to send their stream errors.
        for _ in 0..50 {
            if self.server.registry.count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Their last activity included.
        self.server.storage.flush().await;
    }
}

/// Open storage, load certificates, bind listeners and start accepting.
pub async fn start(config: Config) -> Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let storage = Storage::open(&config.storage_url(), config.storage.pool_size)
        .await
        .with_context(|| format!("opening storage {}", redact(&config.storage_url())))?;
    tracing::info!(backend = storage.backend, "storage ready");
    let certificates = crate::tls::load_certificates(&config)?;
    let tls = crate::tls::server_config(certificates.clone())?;
    let modules = Modules::load(&config.modules.enabled);
    let (archive_writer, archive_task) =
        crate::storage::group_commit::ArchiveWriter::spawn(storage.archive.clone());
    let server = Arc::new(Server {
        storage,
        registry: Registry::default(),
        modules,
        tls,
        certificates,
        auth_limiter: AuthLimiter::default(),
        resumptions: Default::default(),
        blocks: Default::default(),
        muc: crate::xep::muc::MucService::new(&config),
        upload: crate::xep::upload::UploadService::new(&config)
            .context("preparing the upload directory")?,
        metrics: Default::default(),
        bosh: Default::default(),
        caps: Default::default(),
        mam_prefs: Default::default(),
        components: Default::default(),
        s2s: Default::default(),
        archive_writer,
        offline_deliveries: Default::default(),
        roster_locks: (0..ROSTER_LOCK_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
        started: Instant::now(),
        connections: Mutex::new(HashMap::new()),
        config,
    });
    let (tx, rx) = watch::channel(false);
    let mut listeners = Vec::new();
    let mut tasks = Vec::new();
    if server.modules.enabled("offline") {
        tasks.push(crate::xep::offline::spawn_expiry(server.clone()));
    }
    tasks.push(server.storage.watch_external_changes());
    let mut component_listener = None;
    if !server.config.components.services.is_empty() {
        let c = &server.config.components;
        let addr = format!("{}:{}", c.address, c.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("component listener on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, "component listener");
        component_listener = Some(local);
        let srv = server.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        tokio::spawn(crate::component::serve(srv.clone(), tcp, peer));
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
        }));
    }
    let mut http_listeners = Vec::new();
    for l in &server.config.http.listeners {
        let addr = format!("{}:{}", l.address, l.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("HTTP listening on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, tls = l.tls, "HTTP listening");
        http_listeners.push((l.tls, local));
        tasks.push(tokio::spawn(crate::http::serve(
            server.clone(),
            listener,
            l.tls,
        )));
    }
    let base = server.config.http.public_url.clone().or_else(|| {
        let host = &server.config.hosts[0];
        let pick = http_listeners
            .iter()
            .find(|(tls, _)| *tls)
            .or(http_listeners.first());
        pick.map(|(tls, a)| {
            format!(
                "{}://{host}:{}",
                if *tls { "https" } else { "http" },
                a.port()
            )
        })
    });
    if let Some(b) = base {
        let _ = server
            .upload
            .base_url
            .set(b.trim_end_matches('/').to_string());
    }
    if !server.upload.domains().is_empty() {
        tasks.push(crate::xep::upload::UploadService::spawn_cleanup(
            server.clone(),
        ));
    }
    // Aborted at shutdown like the others: a batch cut short is not acknowledged to anyone.
    tasks.push(archive_task);
    let mut drain = Vec::new();
    if let Some(t) = crate::xep::muc::MucService::start(&server).await? {
        drain.push(t);
    }
    for l in &server.config.listeners {
        let addr = format!("{}:{}", l.address, l.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, tls = ?l.tls, hosts = ?server.config.hosts, "c2s listening");
        listeners.push((l.tls, local));
        tasks.push(tokio::spawn(accept_loop(
            server.clone(),
            listener,
            l.tls,
            rx.clone(),
        )));
    }
    let mut s2s_listener = None;
    let mut s2s_tls_listener = None;
    if server.config.s2s.enabled {
        server.s2s.init(&server);
        let c = &server.config.s2s;
        let (listener, local) = s2s_listen(&server, &c.address, c.port, false).await?;
        tasks.push(listener);
        s2s_listener = Some(local);
        if let Some(port) = c.direct_tls_port {
            let (listener, local) = s2s_listen(&server, &c.address, port, true).await?;
            tasks.push(listener);
            s2s_tls_listener = Some(local);
        }
    }
    Ok(Running {
        server,
        listeners,
        http_listeners,
        component_listener,
        s2s_listener,
        s2s_tls_listener,
        shutdown: tx,
        tasks,
        drain,
    })
}

/// A server-to-server listener (STARTTLS, or direct TLS); connections
/// count against the same per-address limits as clients'.
async fn s2s_listen(
    server: &Arc<Server>,
    address: &str,
    port: u16,
    direct_tls: bool,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let addr = format!("{address}:{port}");
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("s2s listening on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, direct_tls, "s2s listening");
    let srv = server.clone();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let Some(guard) = ConnectionGuard::new(&srv, peer.ip()) else {
                        tracing::warn!(%peer, "s2s: too many connections from this address");
                        continue;
                    };
                    let srv = srv.clone();
                    tokio::spawn(async move {
                        crate::s2s::serve(srv, tcp, peer, direct_tls).await;
                        drop(guard);
                    });
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    });
    Ok((task, local))
}

async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    mode: TlsMode,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let Some(guard) = ConnectionGuard::new(&server, peer.ip()) else {
                        tracing::warn!(%peer, "too many connections from this address");
                        continue;
                    };
                    let server = server.clone();
                    let session = crate::c2s::serve(server, tcp, peer, mode);
                    // Every connection holds its task's state: keep it small (BENCHMARKS.md).
                    tracing::trace!(bytes = std::mem::size_of_val(&session), "c2s task state");
                    tokio::spawn(async move {
                        session.await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Counts connections per source address while a connection lives.
struct ConnectionGuard {
    server: Arc<Server>,
    ip: IpAddr,
}

impl ConnectionGuard {
    fn new(server: &Arc<Server>, ip: IpAddr) -> Option<Self> {
        let mut m = server.connections.lock().unwrap();
        let n = m.entry(ip).or_insert(0);
        if *n >= server.config.limits.max_connections_per_ip {
            return None;
        }
        *n += 1;
        crate::metrics::Metrics::inc(&server.metrics.connections_opened);
        crate::metrics::Metrics::inc(&server.metrics.connections_open);
        Some(ConnectionGuard {
            server: server.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.server
            .metrics
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.server.connections.lock().unwrap();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Hide a password in a database URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
